//! The projections room: what the shard's state is shown as outside the order path,
//! written behind it and never awaited by a request — Redis as the hot state
//! ([`hot`]) and the live streams' side of this core ([`feed`]). The result records on
//! Kafka are the log room's (they must be in the log before a snapshot covers them).
//!
//! It reads the ledger (the account room's, shared as [`Ledger`]) to write absolute
//! values, and changes it in one place only: the consistency check releases margin
//! locks whose orders never reached the log (see [`hot::check`]).

pub mod feed;
pub mod hot;

use std::cell::RefCell;
use std::rc::Rc;

use super::core::Core;
use crate::accounts::HotState;

/// The accounts of the partitions this core owns: changed by the account room, read by
/// the projections.
pub type Ledger = Rc<RefCell<Box<dyn HotState>>>;

pub struct Projections {
    pub core: Rc<Core>,
    pub ledger: Ledger,
    /// Redis, when it is the hot state; `None`: the ledger answers.
    pub redis: Option<hot::RedisHot>,
    /// The live streams' side of this core, once the HTTP layer installed it.
    pub feed: RefCell<Option<Rc<dyn feed::Feed>>>,
}

impl std::ops::Deref for Projections {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Projections {
    pub fn new(core: Rc<Core>, ledger: Ledger, redis: Option<hot::RedisHot>) -> Self {
        Self { core, ledger, redis, feed: RefCell::new(None) }
    }
}
