//! Request/reply over glommio's channel mesh.
//!
//! Every pair of shards has a bounded single-producer ring in each direction. A request
//! carries an id; the receiver answers with a `Reply` on its own ring back; the caller
//! parks on a oneshot until it arrives. Messages between two shards stay in order, which
//! the order path relies on (a symbol's results reach an account owner in log order).

use std::cell::{Cell, RefCell};

use futures_channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use rustc_hash::FxHashMap;

use super::protocol::{Message, Reply, Request};

pub struct Rpc {
    senders: Senders<Message>,
    pending: RefCell<FxHashMap<u64, oneshot::Sender<Reply>>>,
    next_id: Cell<u64>,
}

/// A reply still on its way.
pub type Pending = oneshot::Receiver<Reply>;

impl Rpc {
    pub fn new(senders: Senders<Message>) -> Self {
        Self { senders, pending: RefCell::default(), next_id: Cell::new(0) }
    }

    pub fn me(&self) -> usize {
        self.senders.peer_id()
    }

    /// Sends a request now (in order with earlier sends to the same shard) and returns
    /// the reply to await later.
    pub async fn send(&self, to: usize, body: Request) -> Pending {
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        if self.senders.send_to(to, Message::Request { from: self.me(), id, body }).await.is_err() {
            // Shard gone (shutting down): the dropped sender makes the caller see `None`.
            self.pending.borrow_mut().remove(&id);
        }
        rx
    }

    pub async fn call(&self, to: usize, body: Request) -> Option<Reply> {
        self.send(to, body).await.await.ok()
    }

    pub async fn reply(&self, to: usize, id: u64, body: Reply) {
        let _ = self.senders.send_to(to, Message::Reply { id, body }).await;
    }

    pub fn complete(&self, id: u64, body: Reply) {
        if let Some(tx) = self.pending.borrow_mut().remove(&id) {
            let _ = tx.send(body);
        }
    }
}
