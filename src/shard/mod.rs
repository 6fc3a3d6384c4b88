//! A shard: one core's share of the exchange, as rooms.
//!
//! A shard owns the books of its symbols (`shard_map` entry modulo the number of shards)
//! and the account partitions `p` with `p % shards == id`. Nothing it owns is reachable
//! from another core except by sending it a [`protocol::Request`] over the mesh.
//!
//! Inside, each room owns one kind of state and uses only the rooms below it:
//!
//! | room | owns | file |
//! |---|---|---|
//! | [`symbols`] | the books and their command streams; the order path | `symbols/mod.rs`, `symbols/stream.rs` |
//! | [`accounts`] | the ledger of the owned partitions: risk step, results, admin | `accounts/mod.rs` |
//! | [`projections`] | Redis (hot state) and the live streams' side, written behind | `projections/` |
//! | [`log`] | the event log, record encoding, voids, snapshot files | `log/` |
//! | [`core`] | nothing: ids, owners, the mesh ([`rpc`], [`protocol`]), gauges | `core.rs` |
//! | [`tape`] | nothing: public trades and candles, as market data types | `tape.rs` |
//!
//! The edge (sockets, HTTP, WebSocket) is the `api` module above. [`Shard`] holds the
//! rooms of one core and [`dispatch`] hands each request that reaches the core to the
//! room that answers it. The architecture test (`tests/architecture.rs`) checks that
//! rooms import down, never up.

pub mod accounts;
pub mod core;
pub mod dispatch;
pub mod log;
pub mod projections;
pub mod protocol;
pub mod rpc;
pub mod symbols;
pub mod tape;

use std::rc::Rc;

pub use self::core::Core;
use accounts::AccountRoom;
use log::LogRoom;
use projections::Projections;
use symbols::SymbolRoom;

/// The rooms of one core.
pub struct Shard {
    pub core: Rc<Core>,
    pub log: Rc<LogRoom>,
    pub out: Rc<Projections>,
    pub accounts: Rc<AccountRoom>,
    pub symbols: Rc<SymbolRoom>,
}

impl std::ops::Deref for Shard {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Shard {
    /// Builds the rooms on the log and the projections given, and installs the
    /// dispatcher that answers this core's own requests.
    pub fn new(log: LogRoom, out: Projections) -> Rc<Self> {
        let (log, out) = (Rc::new(log), Rc::new(out));
        let accounts = Rc::new(AccountRoom::new(log.clone(), out.clone()));
        let symbols = Rc::new(SymbolRoom::new(log.clone(), out.clone(), accounts.clone()));
        let shard = Rc::new(Self { core: log.core.clone(), log, out, accounts, symbols });
        let weak = Rc::downgrade(&shard);
        let me = shard.core.id;
        shard.core.serve_locally(Box::new(move |req| match weak.upgrade() {
            Some(shard) => dispatch::handle(shard, me, req),
            None => Box::pin(async { protocol::Reply::Api(Err(protocol::Refusal::Unavailable("shard is stopping".into()))) }),
        }));
        shard
    }
}
