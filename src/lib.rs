//! A thread-per-core perpetual-futures exchange core.
//!
//! - [`engine`]: the pure matching engine (books, positions, margin, snapshots).
//! - [`accounts`]: users, keys, balances, margin locks (the risk step).
//! - [`shard`]: one core's share: its books, its accounts, the order path.
//! - [`server`]: executors, the channel mesh, HTTP.
//! - [`api`]: request parsing, errors, JSON shapes.
//! - [`config`], [`shard_map`], [`ids`], [`numbering`], [`metrics`].

pub mod accounts;
pub mod api;
pub mod cold;
pub mod config;
pub mod engine;
pub mod health;
pub mod ids;
pub mod metrics;
pub mod numbering;
pub mod ports;
pub mod process;
pub mod redis_state;
pub mod server;
pub mod shard;
pub mod shard_map;
pub mod wire;
