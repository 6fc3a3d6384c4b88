//! Benchmarks and the load generator. Nothing here runs in CI; results go to RESULTS.md.

pub mod alloc;
pub mod load;
pub mod rng;
pub mod stack;
pub mod workload;
