//! Request/reply over glommio's channel mesh, one batch per destination per turn.
//!
//! Every pair of shards has a bounded single-producer ring in each direction. A request
//! carries an id; the receiver answers with a `Reply` on its own ring back; the caller
//! parks on a oneshot until it arrives. Messages between two shards stay in order, which
//! the order path relies on (a symbol's results reach an account owner in log order).
//!
//! Sending does not touch the ring: a message joins this core's outbox for its
//! destination, and the flusher task, woken by the first message of a batch, sends each
//! destination's whole outbox as one item. The flusher runs behind every task that was
//! already runnable when it was woken, so everything the core does in one turn (the
//! requests of every connection that had bytes, the results of a whole log batch, the
//! replies to a whole received batch) crosses to each other core as one message: one
//! ring slot and at most one wakeup of the peer, instead of one per request.
//!
//! A request to this core itself takes the same way (the flusher hands its batch to this
//! core's own receiver, as it would a peer's), so that work a connection asks for is run
//! by the core's batch handler, not by the connection's task: a client that disconnects
//! drops only its wait for the reply. A reply to this core completes its caller at once.
//!
//! Notices (stream fan-out) are one way: no id, no reply. They are the only messages a
//! core may drop: while a destination's batch already holds [`NOTICES_WAITING`] of
//! them (its core is that far behind), further ones are dropped, never waited for, and
//! the batch ends with [`Notice::Lost`] so the receiver closes the stream connections
//! that missed them. Requests and replies are never dropped.

use std::cell::{Cell, RefCell};

use futures_channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use rustc_hash::FxHashMap;

use super::protocol::{Message, Notice, Reply, Request};
use crate::metrics::ShardMetrics;

/// Notices one destination's batch may hold before further ones are dropped.
pub const NOTICES_WAITING: usize = 65_536;

/// What crosses the mesh: the messages one core had for another in one turn, in order.
pub type Batch = Vec<Message>;

pub struct Rpc {
    me: usize,
    pending: RefCell<FxHashMap<u64, oneshot::Sender<Reply>>>,
    next_id: Cell<u64>,
    /// Per destination, the messages of the batch being gathered.
    outbox: RefCell<Vec<Batch>>,
    /// Wakes the flusher when a batch starts.
    turn: TurnWake,
    /// Per destination, notices in the batch being gathered, and whether one was dropped.
    notices: RefCell<Vec<(usize, bool)>>,
}

/// A reply still on its way.
pub type Pending = oneshot::Receiver<Reply>;

impl Rpc {
    /// The rpc of shard `me` among `shards`, and what wakes the flusher to run as a task
    /// of its own ([`flush`]).
    pub fn new(me: usize, shards: usize) -> (Self, LocalReceiver<()>) {
        let (turn, woken) = TurnWake::new();
        let rpc = Self {
            me,
            pending: RefCell::default(),
            next_id: Cell::new(0),
            outbox: RefCell::new((0..shards).map(|_| Vec::new()).collect()),
            turn,
            notices: RefCell::new(vec![(0, false); shards]),
        };
        (rpc, woken)
    }

    pub fn me(&self) -> usize {
        self.me
    }

    fn post(&self, to: usize, message: Message) {
        if let Some(outbox) = self.outbox.borrow_mut().get_mut(to) {
            outbox.push(message);
        }
        self.turn.raise();
    }

    /// Sends a request (in order with earlier sends to the same shard) and returns the
    /// reply to await later.
    pub fn send(&self, to: usize, body: Request) -> Pending {
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        self.post(to, Message::Request { from: self.me, id, body });
        rx
    }

    /// Sends a request that nobody waits for: its receiver handles it before anything
    /// sent to it after, as with [`Self::send`], and answers nothing.
    pub fn tell(&self, to: usize, body: Request) {
        self.post(to, Message::Tell(body));
    }

    /// Sends a notice, which nobody answers; dropped if `to` is too far behind (see the
    /// module's comment).
    pub fn notify(&self, to: usize, notice: Notice) {
        let mut notices = self.notices.borrow_mut();
        let Some((waiting, lost)) = notices.get_mut(to) else { return };
        if *waiting >= NOTICES_WAITING {
            *lost = true;
            return;
        }
        *waiting += 1;
        drop(notices);
        self.post(to, Message::Notice(notice));
    }

    pub async fn call(&self, to: usize, body: Request) -> Option<Reply> {
        self.send(to, body).await.ok()
    }

    pub fn reply(&self, to: usize, id: u64, body: Reply) {
        if to == self.me {
            self.complete(id, body);
        } else {
            self.post(to, Message::Reply { id, body });
        }
    }

    pub fn complete(&self, id: u64, body: Reply) {
        if let Some(tx) = self.pending.borrow_mut().remove(&id) {
            let _ = tx.send(body);
        }
    }

    /// Every destination's gathered batch, taken.
    fn take(&self) -> Vec<(usize, Batch)> {
        self.turn.lower();
        let mut outbox = self.outbox.borrow_mut();
        for (batch, (waiting, lost)) in outbox.iter_mut().zip(self.notices.borrow_mut().iter_mut()) {
            if std::mem::take(lost) {
                batch.push(Message::Notice(Notice::Lost));
            }
            *waiting = 0;
        }
        outbox.iter_mut().enumerate().filter(|(_, b)| !b.is_empty()).map(|(to, b)| (to, std::mem::take(b))).collect()
    }

    /// Forgets the requests sent to a shard that is gone: their callers see `None`.
    fn forget(&self, ids: &[u64]) {
        let mut pending = self.pending.borrow_mut();
        for id in ids {
            pending.remove(id);
        }
    }
}

/// Work that gathers during a turn of the core and is handed on once, by a task of its
/// own: the first [`Self::raise`] of a turn wakes that task, which then runs behind every
/// task that was runnable (everything the core does in that turn); it [`Self::lower`]s
/// before taking what gathered, so that what comes later wakes it again.
pub struct TurnWake {
    wake: LocalSender<()>,
    raised: Cell<bool>,
}

impl TurnWake {
    /// The wake and what the task waits on.
    pub fn new() -> (Self, LocalReceiver<()>) {
        let (wake, woken) = local_channel::new_unbounded();
        (Self { wake, raised: Cell::new(false) }, woken)
    }

    pub fn raise(&self) {
        if !self.raised.replace(true) {
            let _ = self.wake.try_send(());
        }
    }

    pub fn lower(&self) {
        self.raised.set(false);
    }
}

/// The flusher of one core: sends each gathered batch as one mesh item, counting the
/// mesh's batches and their messages in the shard's `metrics`, and hands this core's own
/// to `receive` (what a peer's batch is given to when it arrives). `owner` holds the
/// core's [`Rpc`].
pub async fn flush<C: AsRef<Rpc>>(owner: std::rc::Rc<C>, senders: Senders<Batch>, woken: LocalReceiver<()>, metrics: ShardMetrics, receive: impl Fn(Batch)) {
    let rpc = (*owner).as_ref();
    while woken.recv().await.is_some() {
        for (to, batch) in rpc.take() {
            if to == rpc.me {
                receive(batch);
                continue;
            }
            let ids: Vec<u64> = batch.iter().filter_map(|m| if let Message::Request { id, .. } = m { Some(*id) } else { None }).collect();
            metrics.mesh_messages.inc_by(batch.len() as u64);
            metrics.mesh_batches.inc();
            if senders.send_to(to, batch).await.is_err() {
                // Shard gone (shutting down): the dropped senders make callers see `None`.
                rpc.forget(&ids);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::UserId;
    use crate::shard::protocol::{Message, Notice, Request};
    use crate::shard::rpc::{Rpc, NOTICES_WAITING};

    fn notice() -> Notice {
        Notice::User { user: UserId(1), messages: crate::shard::protocol::UserMessages::default(), at: std::time::Instant::now() }
    }

    #[test]
    fn notices_past_the_bound_are_dropped_and_the_batch_says_so_but_requests_never_are() {
        let (rpc, _woken) = Rpc::new(0, 2);
        for _ in 0..NOTICES_WAITING + 10 {
            rpc.notify(1, notice());
        }
        let _reply = rpc.send(1, Request::Prices);
        let batches = rpc.take();
        assert_eq!(batches.len(), 1);
        let (to, batch) = &batches[0];
        assert_eq!(*to, 1);
        let users = batch.iter().filter(|m| matches!(m, Message::Notice(Notice::User { .. }))).count();
        assert_eq!(users, NOTICES_WAITING, "notices past the bound are dropped");
        assert!(batch.iter().any(|m| matches!(m, Message::Request { body: Request::Prices, .. })), "the request after them is sent");
        assert!(matches!(batch.last(), Some(Message::Notice(Notice::Lost))), "the receiver is told");
        // The next batch starts with room again, and nothing lost.
        rpc.notify(1, notice());
        let batches = rpc.take();
        assert_eq!(batches[0].1.len(), 1);
        assert!(matches!(batches[0].1[0], Message::Notice(Notice::User { .. })));
    }

    #[test]
    fn a_request_to_this_core_joins_its_own_batch_and_its_reply_completes_at_once() {
        let (rpc, _woken) = Rpc::new(0, 2);
        let mut reply = rpc.send(0, Request::Prices);
        let batches = rpc.take();
        assert!(matches!(batches.as_slice(), [(0, batch)] if matches!(batch.as_slice(), [Message::Request { from: 0, id: 1, body: Request::Prices }])));
        rpc.reply(0, 1, crate::shard::protocol::Reply::Done);
        assert!(matches!(reply.try_recv(), Ok(Some(crate::shard::protocol::Reply::Done))), "completed without a batch back");
        assert!(rpc.take().is_empty(), "nothing posted for the reply");
    }

    #[test]
    fn a_told_request_keeps_its_place_in_the_batch_and_waits_for_no_reply() {
        let (rpc, _woken) = Rpc::new(0, 2);
        let _first = rpc.send(1, Request::Prices);
        rpc.tell(1, Request::Summary);
        let _last = rpc.send(1, Request::Check);
        assert_eq!(rpc.pending.borrow().len(), 2, "only the two sent requests wait for replies");
        let batches = rpc.take();
        let kinds: Vec<&str> = batches[0]
            .1
            .iter()
            .map(|m| match m {
                Message::Request { body: Request::Prices, .. } => "prices",
                Message::Tell(Request::Summary) => "told summary",
                Message::Request { body: Request::Check, .. } => "check",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["prices", "told summary", "check"]);
    }
}
