//! Binance's request signing (BINANCE.md, section 3): HMAC-SHA256 with the key's secret
//! over the query string and body exactly as received, less the `signature` pair, with a
//! `timestamp` inside the `recvWindow`.
//!
//! A key's secret is derived, not stored ([`crate::accounts::secret`]): the request
//! carries its key in `X-MBX-APIKEY`, so the secret is recomputed per request.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A signed request's `recvWindow` when it sends none, and the largest it may ask for (ms).
pub const DEFAULT_RECV_WINDOW: i64 = 5_000;
pub const MAX_RECV_WINDOW: i64 = 60_000;

/// How far ahead of the server's clock a `timestamp` may be (ms).
const AHEAD: i64 = 1_000;

/// Why a signed request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SignError {
    /// A mandatory parameter was not sent (`timestamp`, `signature`): -1102.
    Missing(&'static str),
    /// A parameter that is not a number where one is needed: -1100.
    Malformed(&'static str),
    /// `recvWindow` above [`MAX_RECV_WINDOW`] or not positive: -1130.
    RecvWindow,
    /// -1021.
    OutsideWindow,
    /// -1022.
    BadSignature,
}

pub(crate) fn mac(secret: &[u8], payload: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(payload);
    mac
}

/// Checks a signed request: `query` (the URI's, may be empty) then `body` (a form), as
/// received; `secret` is the key's API secret ([`secret_of`]); `now_ms` the server's clock.
///
/// # Errors
/// The [`SignError`] to answer with. The signature is compared in constant time.
pub fn verify(secret: &str, query: &str, body: &str, now_ms: i64) -> Result<(), SignError> {
    let payload = if query.is_empty() || body.is_empty() { [query, body].concat() } else { format!("{query}{body}") };
    let mut signature = None;
    let mut signed = String::with_capacity(payload.len());
    for pair in payload.split('&') {
        if let Some(hex) = pair.strip_prefix("signature=") {
            signature = Some(hex);
            continue;
        }
        if !signed.is_empty() {
            signed.push('&');
        }
        signed.push_str(pair);
    }
    let signature = signature.ok_or(SignError::Missing("signature"))?;
    let signature = hex::decode(signature).map_err(|_| SignError::BadSignature)?;
    let matches = |payload: &[u8]| mac(secret.as_bytes(), payload).verify_slice(&signature).is_ok();
    // As sent; else as the client meant it before encoding it (python-binance signs
    // values unencoded and sends them encoded).
    let decoded = || percent_encoding::percent_decode_str(&signed).collect::<Vec<u8>>();
    if !matches(signed.as_bytes()) && !matches(&decoded()) {
        return Err(SignError::BadSignature);
    }
    let param = |name: &str| form_urlencoded::parse(signed.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    let timestamp: i64 =
        param("timestamp").ok_or(SignError::Missing("timestamp"))?.parse().map_err(|_| SignError::Malformed("timestamp"))?;
    let window = match param("recvWindow") {
        None => DEFAULT_RECV_WINDOW,
        Some(w) => w.parse::<i64>().map_err(|_| SignError::Malformed("recvWindow"))?,
    };
    if window <= 0 || window > MAX_RECV_WINDOW {
        return Err(SignError::RecvWindow);
    }
    if timestamp > now_ms + AHEAD || now_ms - timestamp > window {
        return Err(SignError::OutsideWindow);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::secret::secret_of;

    fn sign(secret: &str, payload: &str) -> String {
        hex::encode(mac(secret.as_bytes(), payload.as_bytes()).finalize().into_bytes())
    }

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn binances_documented_example_signs_as_binance_says() {
        // Binance's API documentation, "SIGNED Endpoint Examples for POST /fapi/v1/order".
        let secret = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9";
        let payload = "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC&recvWindow=5000&timestamp=1591702613943";
        assert_eq!(sign(secret, payload), "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9");
    }

    #[test]
    fn a_signature_over_query_or_body_is_accepted_anywhere_in_the_window() {
        let secret = secret_of(b"server", "0000000000000001.key");
        let query = format!("timestamp={NOW}&symbol=BTCUSDT&recvWindow=10000");
        let signed = format!("{query}&signature={}", sign(&secret, &query));
        assert_eq!(verify(&secret, &signed, "", NOW + 9_999), Ok(()));
        assert_eq!(verify(&secret, "", &signed, NOW - 999), Ok(()));
        assert_eq!(verify(&secret, &signed, "", NOW + 10_001), Err(SignError::OutsideWindow));
        assert_eq!(verify(&secret, &signed, "", NOW - 1_001), Err(SignError::OutsideWindow));
    }

    #[test]
    fn a_wrong_secret_or_a_changed_parameter_is_a_bad_signature() {
        let secret = secret_of(b"server", "0000000000000001.key");
        let query = format!("symbol=BTCUSDT&quantity=1&timestamp={NOW}");
        let sig = sign(&secret, &query);
        assert_eq!(verify(&secret_of(b"other", "0000000000000001.key"), &format!("{query}&signature={sig}"), "", NOW), Err(SignError::BadSignature));
        let changed = query.replace("quantity=1", "quantity=10");
        assert_eq!(verify(&secret, &format!("{changed}&signature={sig}"), "", NOW), Err(SignError::BadSignature));
        assert_eq!(verify(&secret, &format!("{query}&signature=zz"), "", NOW), Err(SignError::BadSignature));
        assert_eq!(verify(&secret, &query, "", NOW), Err(SignError::Missing("signature")));
    }

    #[test]
    fn values_signed_before_encoding_are_accepted() {
        let secret = secret_of(b"server", "k");
        let meant = format!("newClientOrderId=a:b/c&timestamp={NOW}");
        let sent = format!("newClientOrderId=a%3Ab%2Fc&timestamp={NOW}&signature={}", sign(&secret, &meant));
        assert_eq!(verify(&secret, "", &sent, NOW), Ok(()));
    }

    #[test]
    fn timestamp_and_recv_window_are_checked() {
        let secret = secret_of(b"server", "k");
        let with = |payload: &str| format!("{payload}&signature={}", sign(&secret, payload));
        assert_eq!(verify(&secret, &with("symbol=BTCUSDT"), "", NOW), Err(SignError::Missing("timestamp")));
        assert_eq!(verify(&secret, &with("timestamp=soon"), "", NOW), Err(SignError::Malformed("timestamp")));
        assert_eq!(verify(&secret, &with(&format!("timestamp={NOW}&recvWindow=60001")), "", NOW), Err(SignError::RecvWindow));
        assert_eq!(verify(&secret, &with(&format!("timestamp={NOW}&recvWindow=0")), "", NOW), Err(SignError::RecvWindow));
        assert_eq!(verify(&secret, &with(&format!("timestamp={}", NOW - 5_001)), "", NOW), Err(SignError::OutsideWindow));
        assert_eq!(verify(&secret, &with(&format!("timestamp={}", NOW - 5_000)), "", NOW), Ok(()));
    }

}
