//! Who may hold a connection slot, so that one host cannot take the exchange off the air.
//!
//! - **Streams per address.** A client address holds at most `limits.stream_per_address`
//!   stream connections on all cores together (a process-wide count, touched only when a
//!   stream opens or closes). Past it the upgrade is answered 429 `RATE_LIMITED`.
//! - **The streams' share.** Streams take at most [`STREAM_SHARE_PERCENT`] of a core's
//!   connection slots, so REST clients always find room; past it the upgrade is answered
//!   503 `UNAVAILABLE`.
//! - **A reserve for the operator.** Past the connection cap a core still takes
//!   [`RESERVED_SLOTS`] more connections, which serve `GET /health` and `GET /metrics`
//!   only: a monitor can tell a full exchange from a dead one. Any other request there,
//!   and any connection past the reserve, is answered 503 and closed.
//!
//! Every refusal is an HTTP answer with the API's JSON error, written before the
//! connection closes: a client is never dropped without a word.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use super::error::ApiError;

/// The share of a core's connection slots that streams may take, in percent.
pub const STREAM_SHARE_PERCENT: usize = 90;

/// Connections a core takes past its cap, for `/health` and `/metrics` only.
pub const RESERVED_SLOTS: usize = 32;

pub struct Admission {
    per_address: usize,
    per_core: usize,
    by_address: Mutex<FxHashMap<IpAddr, usize>>,
    /// Streams open on each core.
    on_core: Vec<AtomicUsize>,
}

/// A stream connection's slot; given back when dropped.
pub struct Admitted {
    admission: Arc<Admission>,
    address: IpAddr,
    core: usize,
}

impl Admission {
    pub fn new(per_address: usize, max_connections_per_core: usize, cores: usize) -> Arc<Self> {
        Arc::new(Self {
            per_address,
            per_core: max_connections_per_core * STREAM_SHARE_PERCENT / 100,
            by_address: Mutex::default(),
            on_core: (0..cores).map(|_| AtomicUsize::new(0)).collect(),
        })
    }

    /// A slot for a stream from `address` on `core`, or the answer that refuses it.
    ///
    /// # Errors
    /// 429 when the address holds its share already, 503 when the core's streams do.
    pub fn admit_stream(self: &Arc<Self>, address: IpAddr, core: usize) -> Result<Admitted, ApiError> {
        let on_core = self.on_core.get(core).ok_or_else(|| ApiError::Unavailable("no such core".into()))?;
        let mut by_address = self.by_address.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let held = by_address.get(&address).copied().unwrap_or(0);
        if held >= self.per_address {
            return Err(ApiError::StreamsPerAddress(self.per_address));
        }
        if on_core.load(Ordering::Acquire) >= self.per_core {
            return Err(ApiError::Unavailable("stream connections are full; REST and /health are served".into()));
        }
        on_core.fetch_add(1, Ordering::AcqRel);
        by_address.insert(address, held + 1);
        Ok(Admitted { admission: self.clone(), address, core })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut by_address = self.admission.by_address.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(held) = by_address.get_mut(&self.address) {
            *held -= 1;
            if *held == 0 {
                by_address.remove(&self.address);
            }
        }
        if let Some(on_core) = self.admission.on_core.get(self.core) {
            on_core.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A complete HTTP/1.1 answer carrying an API error, closing the connection.
pub fn refusal(error: &ApiError) -> Vec<u8> {
    let reply = error.reply();
    let reason = match reply.status {
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let retry = reply.retry_after.map_or_else(String::new, |s| format!("Retry-After: {s}\r\n"));
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n",
        reply.status,
        reply.body.len()
    )
    .into_bytes();
    out.extend_from_slice(&reply.body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_its_share_and_gets_it_back_when_its_streams_close() {
        let a = Admission::new(2, 100, 2);
        let (one, two): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = a.admit_stream(one, 0).unwrap();
        let _second = a.admit_stream(one, 1).unwrap();
        assert_eq!(a.admit_stream(one, 0).err(), Some(ApiError::StreamsPerAddress(2)), "per address, across cores");
        assert!(a.admit_stream(two, 0).is_ok(), "another address is not affected");
        drop(first);
        assert!(a.admit_stream(one, 0).is_ok(), "a closed stream gives its slot back");
    }

    #[test]
    fn streams_never_take_more_than_their_share_of_a_core() {
        let a = Admission::new(1_000, 10, 1);
        let held: Vec<_> = (0..9).map(|i| a.admit_stream(IpAddr::from([10, 0, 0, i]), 0).unwrap()).collect();
        let refused = a.admit_stream(IpAddr::from([10, 0, 1, 0]), 0).err();
        assert!(matches!(refused, Some(ApiError::Unavailable(_))), "{refused:?}");
        drop(held);
        assert!(a.admit_stream(IpAddr::from([10, 0, 1, 0]), 0).is_ok());
    }

    #[test]
    fn a_refusal_is_a_whole_http_answer_with_the_json_error() {
        let text = String::from_utf8(refusal(&ApiError::StreamsPerAddress(50))).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}", body.len())) && head.contains("Connection: close"));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["code"], "RATE_LIMITED");
        assert!(head.contains("Retry-After: 1"), "{head}");
    }
}
