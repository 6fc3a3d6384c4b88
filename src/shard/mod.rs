//! A shard: one core's share of the exchange.
//!
//! A shard owns the books of its symbols (`shard_map` entry modulo the number of shards)
//! and the account partitions `p` with `p % shards == id`. Nothing it owns is reachable
//! from another core except by sending it a [`protocol::Request`] over the mesh.
//!
//! The order path, for `POST /v1/orders` accepted on any core:
//! 1. the accepting core parses and validates, and forwards to the symbol's owner;
//! 2. the owner asks the user's account owner to reserve (auth, rate limit, available
//!    check, margin lock: one step on one core);
//! 3. the owner appends the command to the symbol's log; group commit makes it durable;
//! 4. the owner matches it, in log order, and sends the results to the account owners of
//!    everyone involved, in log order, waiting for them to be applied;
//! 5. the client gets the order as matched.
//!
//! If step 3 fails, the lock is released and the client gets 503.

pub mod admin;
pub mod feed;
pub mod funding;
pub mod handlers;
pub mod hot;
pub mod logs;
pub mod protocol;
pub mod rpc;
pub mod snapshots;
pub mod startup;
pub mod stream;
pub mod voids;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use exchange_io::EventLog;
use rustc_hash::FxHashMap;

use crate::accounts::{partition_of, AccountRecord, HotState, PARTITIONS};
use crate::wire::{self, StreamRecord};
use crate::config::Config;
use crate::engine::{Event, NewOrder, UserId};
use crate::metrics::{Metrics, ShardMetrics};
use crate::shard_map::ShardMap;
use protocol::{Reply, Request};
use rpc::{Pending, Rpc};
use stream::SymbolStream;

/// A stream's event log, whichever implementation was configured at start.
pub type Log = Box<dyn EventLog>;

pub struct Shard {
    pub id: usize,
    pub shards: usize,
    pub map: Arc<ShardMap>,
    pub config: Arc<Config>,
    pub rpc: Rpc,
    pub accounts: RefCell<Box<dyn HotState>>,
    /// Account partition logs owned here. Admin writes are rare: one commit per request.
    pub account_logs: RefCell<FxHashMap<u32, Rc<glommio::sync::RwLock<Log>>>>,
    pub streams: RefCell<FxHashMap<usize, Rc<SymbolStream>>>,
    pub metrics: ShardMetrics,
    pub all_metrics: Metrics,
    pub health: Arc<crate::health::Health>,
    /// Where snapshots are copied as checkpoints (cold storage), when configured.
    pub checkpoints: Option<Arc<dyn crate::ports::CheckpointSink>>,
    /// The synchronous baseline's store (`EXCHANGE_PERSISTENCE=sync`).
    pub sync: Option<Rc<dyn crate::ports::SyncStore>>,
    /// Redis, when it is the hot state; `None`: the ledger answers.
    pub redis: Option<hot::RedisHot>,
    /// Kafka, when it is the event log; `None`: the embedded journal.
    pub kafka: Option<logs::KafkaBackend>,
    /// Account partitions whose last log write failed, with the offset it may have
    /// reached the log at: settled before the partition logs anything new.
    pub account_in_doubt: RefCell<FxHashMap<u32, u64>>,
    /// Next number to give a record on Kafka.
    pub wire_seq: std::cell::Cell<u64>,
    /// Where the numbers handed out are reserved so they never repeat.
    pub numbering: Arc<crate::numbering::HighWater>,
    /// An account snapshot is being written.
    pub snapshotting: std::cell::Cell<bool>,
    /// The live streams' side of this core, once the HTTP layer installed it.
    pub feed: RefCell<Option<feed::Installed>>,
}

impl Shard {
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


    /// A command as its log stores it: compact postcard in the embedded journal, JSON on
    /// Kafka (where any tool may read it).
    pub fn encode_command(&self, symbol: usize, record: &StreamRecord) -> Vec<u8> {
        if self.kafka.is_some() {
            wire::encode_command(&self.map.symbols[symbol], record, self.next_wire_seq())
        } else {
            postcard::to_allocvec(record).unwrap_or_default()
        }
    }

    /// A command log record, with its `seq` on Kafka (the embedded journal's records are
    /// not numbered: it cuts what it failed to write, so nothing lands late there).
    ///
    /// # Errors
    /// A record the exchange did not write.
    pub fn decode_command(&self, symbol: usize, bytes: &[u8]) -> Result<(StreamRecord, Option<u64>), String> {
        if self.kafka.is_some() {
            wire::decode_numbered(&self.map.symbols[symbol], bytes).map(|(record, seq)| (record, Some(seq)))
        } else {
            postcard::from_bytes(bytes).map(|record| (record, None)).map_err(|e| e.to_string())
        }
    }

    /// An `EpochStarted` record for a symbol's log (Kafka only), and the floor it sets
    /// (see [`wire::EpochFloor`]).
    pub fn epoch_record(&self, symbol: usize) -> (Vec<u8>, wire::EpochFloor) {
        let seq = self.wire_seq.get();
        (self.encode_command(symbol, &StreamRecord::Epoch), wire::EpochFloor(seq))
    }

    pub fn encode_account(&self, record: &AccountRecord, partition: u32) -> Vec<u8> {
        if self.kafka.is_some() {
            wire::encode_account(record, partition, self.next_wire_seq())
        } else {
            postcard::to_allocvec(record).unwrap_or_default()
        }
    }

    /// # Errors
    /// A record the exchange did not write.
    pub fn decode_account(&self, bytes: &[u8]) -> Result<AccountRecord, String> {
        if self.kafka.is_some() { wire::decode_account(bytes) } else { postcard::from_bytes(bytes).map_err(|e| e.to_string()) }
    }

    /// Numbers records on Kafka: increasing, and never repeated by a later run
    /// ([`crate::numbering`]).
    fn next_wire_seq(&self) -> u64 {
        let n = self.wire_seq.get();
        self.wire_seq.set(n + 1);
        self.numbered(n);
        n
    }

    /// Tells the high-water mark the highest number handed out (an order number or a
    /// record's): it reserves the next block once half of this one is used.
    pub fn numbered(&self, highest: u64) {
        if highest.saturating_add(crate::numbering::BLOCK / 2) < self.numbering.reserved() {
            return;
        }
        match self.numbering.used(highest) {
            Ok(()) => tracing::info!(shard = self.id, reserved = self.numbering.reserved(), "numbering: next block reserved"),
            Err(e) => tracing::error!(shard = self.id, error = %e, "numbering: the high-water mark could not be written; numbers may repeat after a restart with the clock set back"),
        }
    }

    pub fn stream(&self, symbol: usize) -> Option<Rc<SymbolStream>> {
        self.streams.borrow().get(&symbol).cloned()
    }

    /// Asks the shard `to` (this one included) and waits for the answer.
    pub async fn ask(self: &Rc<Self>, to: usize, req: Request) -> Option<Reply> {
        if to == self.id { Some(handlers::handle(self.clone(), req).await) } else { self.rpc.call(to, req).await }
    }

    /// Sends a symbol's results to the account owners involved, in log order. Applies
    /// them at once when the owner is this shard; otherwise returns the pending
    /// acknowledgements.
    pub async fn forward_results(
        self: &Rc<Self>,
        symbol: usize,
        offset: u64,
        logged: Option<NewOrder>,
        replayed: bool,
        events: &[Event],
    ) -> Vec<Pending> {
        let mut owners: Vec<usize> = Vec::with_capacity(2);
        let mut add = |user: UserId| {
            let owner = self.account_owner(user);
            if !owners.contains(&owner) {
                owners.push(owner);
            }
        };
        if let Some(o) = &logged {
            add(o.user);
        }
        for user in events.iter().flat_map(Event::users).flatten() {
            add(user);
        }
        let mut pending = Vec::new();
        for owner in owners {
            let ours = |u: UserId| self.account_owner(u) == owner;
            let logged = logged.filter(|o| ours(o.user));
            if owner == self.id {
                handlers::apply(self, symbol, offset, logged, replayed, events);
            } else {
                let events = events.to_vec();
                let req = Request::Apply { symbol, offset, logged, replayed, events, snapshot: false };
                pending.push(self.rpc.send(owner, req));
            }
        }
        pending
    }
}
