//! A thread-per-core perpetual-futures exchange core.
//!
//! - [`engine`]: the pure matching engine (books, positions, margin, snapshots).
//! - [`shard_map`]: the listed symbols and their owning shards.
//! - [`ids`]: the public UUIDs minted from engine numbers.

pub mod engine;
pub mod ids;
pub mod shard_map;
