//! Adapters to the outside world, with no knowledge of the exchange's domain.
//!
//! The exchange crate owns every trading rule; this crate owns the plumbing that talks
//! to other systems: the embedded journal and the glommio HTTP glue (later: Kafka, Redis
//! and PostgreSQL). Keeping them here means the domain code can be read, tested and
//! benchmarked without any of them, and an adapter can be swapped without touching a
//! trading rule.

pub mod http;
pub mod journal;
