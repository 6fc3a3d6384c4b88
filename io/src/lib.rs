//! Adapters to the outside world, with no knowledge of the exchange's domain.
//!
//! The exchange crate owns every trading rule; this crate owns the plumbing that talks
//! to other systems: the embedded journal, Kafka producer and consumer setup, Redis
//! scripting, PostgreSQL COPY, and the glommio HTTP glue. Keeping them here means the
//! domain code can be read, tested and benchmarked without any of them, and an adapter
//! can be swapped without touching a trading rule.
//!
//! The adapters arrive with the server; the matching engine (in the `exchange` crate)
//! needs none of them.
