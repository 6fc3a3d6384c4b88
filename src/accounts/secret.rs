//! API secrets for request signing (the Binance dialect's HMAC-SHA256).
//!
//! A key's secret is derived, not stored: HMAC-SHA256(the server's signing secret, key),
//! in hex. Nothing is added to the accounts, their log or their snapshots; changing the
//! server's signing secret changes every user's API secret (README, "Binance dialect").

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The API secret of `key` under the server's `signing_secret`: 64 lowercase hex digits.
#[must_use]
pub fn secret_of(signing_secret: &[u8], key: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(signing_secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(key.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_has_its_own_secret() {
        let (a, b) = (secret_of(b"server", "0000000000000001.x"), secret_of(b"server", "0000000000000002.x"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(a, secret_of(b"server", "0000000000000001.x"));
    }
}
