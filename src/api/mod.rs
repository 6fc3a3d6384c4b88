//! The HTTP API: parsing and validation on the accepting core ([`parse`]), answering a
//! request by asking the shard that owns its answer ([`service`]), the one mapping from
//! errors to status and code ([`error`]), and the JSON shapes ([`render`]); beside it, the
//! Binance USDⓈ-M dialect over the same requests ([`binance`]).

pub mod admission;
pub mod binance;
pub mod error;
pub mod parse;
pub mod render;
pub mod service;
pub mod stream;

/// `GET /`: the live market page, one self-contained file (no build step, no outside assets).
pub const PAGE: &str = include_str!("page.html");

/// A response ready for the client: status, JSON body, `Retry-After` for 429, and
/// whether the connection closes after it (the request's framing cannot be trusted).
#[derive(Clone, Debug)]
pub struct HttpReply {
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after: Option<u32>,
    pub close: bool,
    pub content_type: &'static str,
}

/// The content type of every API answer but the metrics and the page.
pub const JSON: &str = "application/json";

impl HttpReply {
    /// The connection is closed after this reply.
    #[must_use]
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}
