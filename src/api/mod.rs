//! The HTTP API: parsing and validation on the accepting core ([`parse`]), the one
//! mapping from errors to status and code ([`error`]), and the JSON shapes ([`render`]).

pub mod error;
pub mod parse;
pub mod render;
