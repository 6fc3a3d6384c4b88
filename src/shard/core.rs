//! What every room of a shard shares: which core this is, who owns what, the way to the
//! other cores, and the process-wide gauges. It owns no exchange state.
//!
//! Rooms reach each other downwards only (see the module doc of [`super`]). A room that
//! must ask a shard for something (its own included) does so by a [`Request`] through
//! [`Core::ask`]: another core's answer comes over the mesh, this core's from the
//! dispatcher that the shard installs here at start ([`Core::serve_locally`]), so no
//! room needs to know the rooms above it.

use std::cell::OnceCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use super::protocol::{Reply, Request};
use super::rpc::Rpc;
use crate::accounts::{partition_of, PARTITIONS};
use crate::config::Config;
use crate::engine::UserId;
use crate::metrics::{Metrics, ShardMetrics};
use crate::shard_map::ShardMap;

/// This core's answer to a request, as the shard's dispatcher gives it.
pub type Answering = Pin<Box<dyn Future<Output = Reply>>>;

pub struct Core {
    pub id: usize,
    pub shards: usize,
    pub map: Arc<ShardMap>,
    pub config: Arc<Config>,
    pub rpc: Rpc,
    pub metrics: ShardMetrics,
    pub all_metrics: Metrics,
    pub health: Arc<crate::health::Health>,
    /// The synchronous baseline's store (`EXCHANGE_PERSISTENCE=sync`).
    pub sync: Option<Rc<dyn crate::ports::SyncStore>>,
    local: OnceCell<Box<dyn Fn(Request) -> Answering>>,
}

impl Core {
    pub fn new(
        (id, shards): (usize, usize),
        map: Arc<ShardMap>,
        config: Arc<Config>,
        rpc: Rpc,
        all_metrics: Metrics,
        health: Arc<crate::health::Health>,
        sync: Option<Rc<dyn crate::ports::SyncStore>>,
    ) -> Self {
        Self { id, shards, map, config, rpc, metrics: all_metrics.shard(id), all_metrics, health, sync, local: OnceCell::new() }
    }

    /// Installs the dispatcher that answers this core's own requests (once).
    pub fn serve_locally(&self, answer: Box<dyn Fn(Request) -> Answering>) {
        let _ = self.local.set(answer);
    }

    pub fn symbol_owner(&self, symbol: usize) -> usize {
        self.map.symbols[symbol].shard % self.shards
    }

    pub fn partition_owner(&self, partition: u32) -> usize {
        partition as usize % self.shards
    }

    pub fn account_owner(&self, user: UserId) -> usize {
        self.partition_owner(partition_of(user))
    }

    pub fn owns_partition(&self, partition: u32) -> bool {
        partition < PARTITIONS && self.partition_owner(partition) == self.id
    }

    /// The account partitions this shard owns.
    pub fn owned_partitions(&self) -> impl Iterator<Item = u32> + '_ {
        (0..PARTITIONS).filter(|p| self.owns_partition(*p))
    }

    /// Asks the shard `to` (this one included) and waits for the answer; `None` if it
    /// is gone (shutting down).
    pub async fn ask(&self, to: usize, req: Request) -> Option<Reply> {
        if to == self.id {
            let answering = (self.local.get()?)(req);
            Some(answering.await)
        } else {
            self.rpc.call(to, req).await
        }
    }
}

impl AsRef<Rpc> for Core {
    fn as_ref(&self) -> &Rpc {
        &self.rpc
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
