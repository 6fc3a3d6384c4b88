//! Redis as the hot-state projection (`EXCHANGE_REDIS_URL`): balances, margin locks,
//! positions, open orders and fills, written for readers outside the process.
//!
//! The core that owns an account partition is the authority: its in-process ledger
//! ([`crate::accounts::Accounts`]), built from the logs, runs the risk step (rate limit,
//! available check, margin lock) in one uninterrupted step and answers every account
//! read. Redis is written *behind* it, never awaited by a request:
//!
//! - every change (a lock taken or released, a command's results, a transfer) only marks
//!   which of a user's keys changed, on the core that owns the user;
//! - a writer task per core turns everything marked into writes of the ledger's current,
//!   absolute values and hands them to the core's own Redis connection as one pipeline
//!   of plain commands (in one `MULTI`/`EXEC` on a single server); the next batch gathers
//!   while that one is in flight. A user changed ten times in a batch is written once,
//!   and writing the same values twice is harmless, so no offsets need keeping;
//! - anything else sent to Redis from the core (the rebuild, the consistency check, the
//!   markers) first hands over what is marked, so it reaches Redis after those writes.
//!
//! This departs on purpose from a Redis risk script on the order path: that is racy
//! across calls and makes Redis the bottleneck and a single point of failure. Here a
//! Redis that is slow, emptied, restarted or unreachable never fails or slows an order.
//! Losing it is noticed by a failed write, a script finding a user's balance gone, or the
//! partition markers a watchdog checks every 250 ms; writes are then skipped, and as soon
//! as Redis answers every user of the core's partitions is rewritten from the ledger
//! (`/health` says `stateStore: down`, then `rebuilding`, then `ok`).
//!
//! This file is the write-behind; `rebuild.rs` is the rewrite and what triggers it, and
//! `check.rs` the consistency check.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use exchange_io::redis::{Op, RedisBridge};
use futures_channel::mpsc;
use futures_lite::StreamExt;
use rustc_hash::FxHashMap;

use super::Projections;
use crate::accounts::{Account, OrderView};
use crate::shard::protocol::MarketPrices;
use crate::engine::{CancelReason, ClientOrderId, Event, NewOrder, OrderId, PositionState, UserId};
use crate::redis_state::{Json, Keys, Writes};
use redis::ToRedisArgs;
use crate::health::Health;

pub use crate::health::hot::{DISABLED, READY, REBUILDING, STALE};
pub use check::{check, periodically as check_periodically};
pub use crate::shard::protocol::{CheckReport, Repair};
pub use rebuild::{mark_clean, rebuild, watch};

mod check;
mod rebuild;

/// How long a closed order stays readable in Redis (the ledger keeps the latest 500).
const CLOSED_TTL_SECS: u32 = 86_400;

pub struct RedisHot {
    /// This core's own connection (see [`connection`]).
    bridge: RedisBridge,
    pub keys: Keys,
    /// A write of the rebuild in progress failed.
    rebuild_failed: Arc<AtomicBool>,
    health: Arc<Health>,
    shard: usize,
    /// What changed since the last batch was handed over.
    dirty: RefCell<Dirty>,
    /// Wakes the writer task; `scheduled` while a wake-up is outstanding.
    wake: mpsc::UnboundedSender<()>,
    woken: RefCell<Option<mpsc::UnboundedReceiver<()>>>,
    scheduled: Cell<bool>,
}

/// The users changed since the last batch, in the order first changed.
#[derive(Default)]
struct Dirty {
    users: Vec<UserId>,
    touched: FxHashMap<UserId, Touched>,
    /// Symbols owned here whose prices or insurance fund changed, as they are now.
    markets: Vec<(usize, MarketPrices)>,
}

/// What changed for one user. Only *which* keys changed is kept: the batch writes them
/// from the ledger as it is when the batch is handed over, so ten changes to a balance
/// are one write of three absolute values, and a lock taken and released within one
/// batch is no write at all.
#[derive(Default)]
struct Touched {
    /// A user created since the last batch: their balance key does not exist yet.
    created: bool,
    /// Orders changed, and whether their margin lock was taken since the last batch. Such
    /// an order is new to Redis: every earlier batch, and every rewrite of the user (each
    /// hands over what is marked first), was sent before it existed, so Redis has no
    /// lock and no open-set entry of it to remove.
    orders: Vec<(OrderId, bool)>,
    /// Symbols whose position changed.
    positions: Vec<usize>,
    /// Fills added (the newest of the ledger's).
    fills: usize,
    /// Every key of the user rewritten (a repair by the consistency check).
    rewrite: bool,
    /// Closed orders the ledger stopped keeping: their keys are deleted, so Redis keeps
    /// no more closed orders per user than the ledger does.
    forgotten: Vec<(OrderId, Option<ClientOrderId>)>,
}

impl Touched {
    fn order(&mut self, id: OrderId, locked: bool) {
        match self.orders.iter_mut().find(|(o, _)| *o == id) {
            Some((_, l)) => *l |= locked,
            None => self.orders.push((id, locked)),
        }
    }
}

impl RedisHot {
    pub fn new(bridge: RedisBridge, keys: Keys, health: Arc<Health>, shard: usize) -> Self {
        let (wake, woken) = mpsc::unbounded();
        Self {
            bridge,
            keys,
            rebuild_failed: Arc::default(),
            health,
            shard,
            dirty: RefCell::default(),
            wake,
            woken: RefCell::new(Some(woken)),
            scheduled: Cell::new(false),
        }
    }

    /// Marks `user` changed (`change` says how), and wakes the writer.
    fn touch(&self, user: UserId, change: impl FnOnce(&mut Touched)) {
        let mut dirty = self.dirty.borrow_mut();
        let dirty = &mut *dirty;
        let touched = dirty.touched.entry(user).or_insert_with(|| {
            dirty.users.push(user);
            Touched::default()
        });
        change(touched);
        if !self.scheduled.replace(true) {
            let _ = self.wake.unbounded_send(());
        }
    }
}

/// The connection, for anything but the write-behind: what is changed and not written
/// yet is handed over first, so that what is sent now reaches Redis after it (a check's
/// reads see it).
fn connection<'a>(out: &Projections, hot: &'a RedisHot) -> &'a RedisBridge {
    hand_over(out, hot);
    &hot.bridge
}

/// Writes every user changed since the last batch, from the ledger, as one batch; the
/// receiver completes with its reply.
///
/// The batch is plain commands, pipelined: to a single server one pipeline, its writes in
/// one `MULTI`/`EXEC` so that readers never see a batch half-applied; to a cluster each
/// command goes to its node as it comes (a transaction must stay within one slot).
/// Each user's writes start with the balance's `HSET`, whose reply counts the fields it
/// created: any for a user Redis had before (all but a new one) means the balance was
/// gone, so Redis lost the user's state, which makes the state stale, so that a rewrite
/// of everyone follows (a separate `EXISTS` per user did the same for a sixth more
/// commands). A user to repair is rewritten by the script instead.
fn hand_over(out: &Projections, hot: &RedisHot) -> Option<futures_channel::oneshot::Receiver<()>> {
    let dirty = std::mem::take(&mut *hot.dirty.borrow_mut());
    if dirty.users.is_empty() && dirty.markets.is_empty() {
        return None;
    }
    let cluster = hot.bridge.is_cluster();
    let mut writes = Vec::new();
    // Where the replies of the balances that must have been there are, among the writes.
    let mut checked_at = Vec::new();
    {
        let accounts = out.ledger.borrow();
        for user in dirty.users {
            let (Some(account), Some(touched)) = (accounts.user(user), dirty.touched.get(&user)) else { continue };
            if touched.rewrite {
                writes.push(rebuild_user(out, &hot.keys, user, account).into_op());
                continue;
            }
            if !touched.created {
                checked_at.push(writes.len());
            }
            writes.extend(changes(out, &hot.keys, user, account, touched).into_cmds().into_iter().map(Op::Cmd));
        }
    }
    for (symbol, prices) in dirty.markets {
        let Some(spec) = out.map.symbols.get(symbol) else { continue };
        let price = |t: Option<i64>| t.map_or_else(String::new, |t| t.to_string());
        let fields = [("index", price(prices.index)), ("mark", price(prices.mark)), ("insuranceFund", prices.fund.to_string())];
        writes.push(Op::Cmd(redis::Cmd::hset_multiple(hot.keys.market(&spec.name), &fields)));
    }
    if writes.is_empty() {
        return None;
    }
    let ops = if cluster {
        writes
    } else {
        let mut ops = Vec::with_capacity(writes.len() + 2);
        ops.push(Op::Cmd(redis::cmd("MULTI")));
        ops.extend(writes);
        ops.push(Op::Cmd(redis::cmd("EXEC")));
        ops
    };
    let (done, replied) = futures_channel::oneshot::channel();
    let (health, id, failed) = (hot.health.clone(), hot.shard, hot.rebuild_failed.clone());
    hot.bridge.submit::<Vec<redis::Value>, _>(Op::Batch(ops), move |result| {
        match result {
            Ok(replies) if balance_was_gone(&replies, cluster, &checked_at) => {
                lost(&health, id, "a user's balance is missing");
            }
            Ok(_) => {}
            Err(e) => {
                failed.store(true, Ordering::Release);
                lost(&health, id, &e);
            }
        }
        let _ = done.send(());
    });
    Some(replied)
}

/// Whether one of the balance writes at `checked_at` (indexes among a batch's writes)
/// created a field. A single server's replies are `MULTI`'s, a `QUEUED` per write, and
/// `EXEC`'s array of the writes' own; a cluster's are the writes' own.
fn balance_was_gone(replies: &[redis::Value], cluster: bool, checked_at: &[usize]) -> bool {
    let writes = match (cluster, replies.last()) {
        (true, _) => replies,
        (false, Some(redis::Value::Array(executed))) => executed.as_slice(),
        (false, _) => return false,
    };
    checked_at.iter().any(|i| matches!(writes.get(*i), Some(redis::Value::Int(created)) if *created > 0))
}

/// The keys `touched` names, as the ledger has them now. Absolute values: writing them
/// twice, or after a later change was already written, leaves Redis right.
fn changes(out: &Projections, keys: &Keys, user: UserId, account: &Account, touched: &Touched) -> Writes {
    let mut w = Writes::new();
    // First: its reply tells whether the balance was there (see [`hand_over`]).
    w.op("HSET", keys.balance(user), balance_fields(account));
    for &(id, locked) in &touched.orders {
        match account.orders.get(&id) {
            Some(view) if view.logged => {
                write_order(&mut w, keys, user, view, if locked { OrderWrite::New } else { OrderWrite::Change });
                if locked && view.status.is_open() {
                    w.op("SET", keys.lock(user, id), view.reserved);
                }
            }
            // Locked, not logged yet: the lock and the open set have it, so that a lock
            // whose order never reaches the log (a crash in between) is still found by a
            // rebuild and by the consistency check.
            Some(view) => {
                w.op("SET", keys.lock(user, id), view.reserved);
                w.op("SADD", keys.active(user), id.0);
            }
            // Released (never logged), or closed so long ago the ledger forgot it; nothing
            // to remove if Redis never had it.
            None if locked => {}
            None => {
                w.op("SREM", keys.active(user), id.0);
                w.del(keys.lock(user, id));
            }
        }
    }
    for &(id, cid) in &touched.forgotten {
        w.del(keys.order(user, id));
        if let Some(cid) = cid {
            w.del(keys.client_order(user, &cid));
        }
    }
    for &symbol in &touched.positions {
        let key = keys.position(user, &out.map.symbols[symbol].name);
        match account.positions.get(&symbol) {
            Some(p) => w.op("HSET", key, position_fields(p)),
            None => w.del(key),
        };
    }
    if touched.fills > 0 {
        // The ledger's fills are newest first: pushed oldest first, they end up so.
        w.op("LPUSH", keys.fills(user), account.fills.iter().take(touched.fills).rev().map(Json).collect::<Vec<_>>());
        w.op("LTRIM", keys.fills(user), (0, crate::accounts::FILLS_KEPT as i64 - 1));
    }
    w
}

/// The writer task of a core: hands the changes to Redis as one batch, waits for its
/// reply (meanwhile the next batch gathers), and again.
pub async fn write_behind(out: Rc<Projections>) {
    let Some(hot) = &out.redis else { return };
    let Some(mut woken) = hot.woken.borrow_mut().take() else { return };
    while woken.next().await.is_some() {
        hot.scheduled.set(false);
        if let Some(replied) = hand_over(&out, hot) {
            let _ = replied.await;
        }
    }
}

/// Marks a shard's hot state lost (from any thread), once.
fn lost(health: &Health, shard: usize, why: &str) {
    if health.hot[shard].compare_exchange(READY, STALE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        tracing::warn!(shard, why, "hot state lost: Redis is rewritten from the ledger as soon as it answers");
    }
}

impl Projections {
    fn hot_state(&self, shard: usize) -> u8 {
        self.health.hot[shard].load(Ordering::Acquire)
    }

    fn hot_lost(&self, why: &str) {
        lost(&self.health, self.id, why);
    }

    /// Writes to Redis are skipped while it is stale: the rebuild will write everything.
    fn writing(&self) -> Option<&RedisHot> {
        self.redis.as_ref().filter(|_| matches!(self.hot_state(self.id), READY | REBUILDING))
    }
}

/// The lock the ledger has just taken for an order.
pub fn reserved(out: &Projections, order: &NewOrder) {
    let Some(hot) = out.writing() else { return };
    hot.touch(order.user, |t| t.order(order.id, true));
}

/// Unlocks an order that could not be logged (its reserve succeeded).
pub fn release(out: &Projections, order: &NewOrder) {
    let Some(hot) = out.writing() else { return };
    hot.touch(order.user, |t| t.order(order.id, false));
}

/// A symbol's prices or insurance fund changed (on its owner).
pub fn market_changed(out: &Projections, symbol: usize, prices: MarketPrices) {
    let Some(hot) = out.writing() else { return };
    {
        let mut dirty = hot.dirty.borrow_mut();
        match dirty.markets.iter_mut().find(|(s, _)| *s == symbol) {
            Some((_, p)) => *p = prices,
            None => dirty.markets.push((symbol, prices)),
        }
    }
    if !hot.scheduled.replace(true) {
        let _ = hot.wake.unbounded_send(());
    }
}

/// A new user's empty balance, or a logged transfer.
pub fn balance_changed(out: &Projections, user: UserId, created: bool) {
    let Some(hot) = out.writing() else { return };
    hot.touch(user, |t| t.created |= created);
}

/// Closed orders the ledger has just stopped keeping (see [`Touched::forgotten`]).
pub fn forgotten(out: &Projections, orders: &[(UserId, OrderId, Option<ClientOrderId>)]) {
    let Some(hot) = out.writing() else { return };
    for &(user, id, cid) in orders {
        hot.touch(user, |t| t.forgotten.push((id, cid)));
    }
}

/// What a command's results (already applied to the ledger) changed for the users owned
/// here.
pub fn settle(out: &Projections, symbol: usize, logged: Option<&NewOrder>, events: &[Event]) {
    let Some(hot) = out.writing() else { return };
    let mine = |user: UserId| out.account_owner(user) == out.id;
    if let Some(o) = logged.filter(|o| mine(o.user)) {
        hot.touch(o.user, |t| t.order(o.id, false));
    }
    for e in events {
        match e {
            Event::OrderPlaced(p) if mine(p.user) => hot.touch(p.user, |t| t.order(p.order_id, false)),
            Event::OrderAmended(a) if mine(a.user) && a.refused.is_none() => hot.touch(a.user, |t| t.order(a.order_id, false)),
            Event::OrderCancelled(c) if mine(c.user) && c.reason != CancelReason::DuplicateOrderId => {
                hot.touch(c.user, |t| t.order(c.order_id, false));
            }
            Event::TradeExecuted(t) => {
                for side in [&t.buyer, &t.seller] {
                    if mine(side.user) {
                        hot.touch(side.user, |touched| {
                            touched.order(side.order_id, false);
                            if !touched.positions.contains(&symbol) {
                                touched.positions.push(symbol);
                            }
                            touched.fills += 1;
                        });
                    }
                }
            }
            Event::LiquidationStarted(l) if mine(l.user) => hot.touch(l.user, |t| t.order(l.order_id, false)),
            // The balance moves (the margin left goes to the fund); the order is written.
            Event::LiquidationEnded(l) if mine(l.user) => hot.touch(l.user, |t| t.order(l.order_id, false)),
            Event::FundingPaid(f) if mine(f.user) => hot.touch(f.user, |t| {
                if !t.positions.contains(&symbol) {
                    t.positions.push(symbol);
                }
            }),
            _ => {}
        }
    }
}

fn balance_fields(account: &Account) -> impl ToRedisArgs {
    ("total", account.total, "available", account.available(), "locked", account.locked)
}

/// How an order's keys are written: what Redis may already hold of it.
#[derive(Clone, Copy, PartialEq)]
enum OrderWrite {
    /// Anything: a closed order leaves the open set and its lock is deleted.
    Change,
    /// Nothing (locked since the last batch, see [`Touched::orders`]).
    New,
    /// A rewrite of the user, which starts from no open orders: an open one's lock is
    /// written with it.
    Rebuild,
}

/// An order's keys (see [`OrderWrite`]).
fn write_order(w: &mut Writes, keys: &Keys, user: UserId, view: &OrderView, how: OrderWrite) {
    let key = keys.order(user, view.id);
    let cid = view.client_order_id.map(|c| keys.client_order(user, &c));
    if view.status.is_open() {
        w.op("SET", key, Json(view));
        if let Some(cid) = cid {
            w.op("SET", cid, view.id.0);
        }
        w.op("SADD", keys.active(user), view.id.0);
        if how == OrderWrite::Rebuild {
            w.op("SET", keys.lock(user, view.id), view.reserved);
        }
    } else {
        w.op("SET", key, (Json(view), "EX", CLOSED_TTL_SECS));
        if let Some(cid) = cid {
            w.op("SET", cid, (view.id.0, "EX", CLOSED_TTL_SECS));
        }
        if how == OrderWrite::Change {
            w.op("SREM", keys.active(user), view.id.0);
            w.del(keys.lock(user, view.id));
        }
    }
}

fn position_fields(p: &PositionState) -> impl ToRedisArgs {
    (("size", p.size), ("cost", p.cost), ("margin", p.margin), ("realizedPnl", p.realized_pnl), ("fees", p.fees), ("leverage", p.leverage))
}

/// Every key of one user, rewritten from the ledger.
fn rebuild_user(out: &Projections, keys: &Keys, user: UserId, account: &Account) -> Writes {
    let mut w = Writes::new();
    w.op("FORGET_OPEN", keys.active(user), (keys.order_prefix(user), keys.lock_prefix(user), keys.client_order_prefix(user)));
    w.del(keys.fills(user));
    w.op("HSET", keys.balance(user), balance_fields(account));
    for (symbol, spec) in out.map.symbols.iter().enumerate() {
        w.del(keys.position(user, &spec.name));
        if let Some(p) = account.positions.get(&symbol) {
            w.op("HSET", keys.position(user, &spec.name), position_fields(p));
        }
    }
    for view in account.orders.values() {
        if view.logged {
            write_order(&mut w, keys, user, view, OrderWrite::Rebuild);
        } else {
            // Locked, in flight to the log: as `changes` writes it.
            w.op("SET", keys.lock(user, view.id), view.reserved);
            w.op("SADD", keys.active(user), view.id.0);
        }
    }
    if !account.fills.is_empty() {
        w.op("RPUSH", keys.fills(user), account.fills.iter().map(Json).collect::<Vec<_>>());
    }
    w
}
