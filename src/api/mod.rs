//! The HTTP API: parsing and validation on the accepting core ([`parse`]), answering a
//! request by asking the shard that owns its answer ([`service`]), the one mapping from
//! errors to status and code ([`error`]), and the JSON shapes ([`render`]).

pub mod error;
pub mod parse;
pub mod render;
pub mod service;

/// A response ready for the client: status, JSON body, and `Retry-After` for 429.
#[derive(Clone, Debug)]
pub struct HttpReply {
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after: Option<u32>,
}
