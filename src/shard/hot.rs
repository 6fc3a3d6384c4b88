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
//!   absolute values (one list per user: a segment of a
//!   [`WRITE`](crate::redis_state::WRITE) call) and hands them to the core's own Redis
//!   connection as one script call (one per user on a cluster); the next batch gathers
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

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use exchange_io::redis::{Op, RedisBridge};
use futures_channel::mpsc;
use futures_lite::StreamExt;
use rustc_hash::FxHashMap;

use super::Shard;
use crate::accounts::{Account, OrderView};
use crate::engine::{CancelReason, Event, NewOrder, OrderId, PositionState, UserId};
use crate::redis_state::{Keys, Writes, WRITE};
use crate::health::Health;

pub use crate::health::hot::{DISABLED, READY, REBUILDING, STALE};

/// How long a closed order stays readable in Redis (the ledger keeps the latest 500).
const CLOSED_TTL_SECS: u32 = 86_400;
/// How long one user's rewrite may take, queue included, before a rebuild counts as
/// failed.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(30);

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
}

/// What changed for one user. Only *which* keys changed is kept: the batch writes them
/// from the ledger as it is when the batch is handed over, so ten changes to a balance
/// are one write of three absolute values, and a lock taken and released within one
/// batch is no write at all.
#[derive(Default)]
struct Touched {
    /// A user created since the last batch: their balance key does not exist yet.
    created: bool,
    /// Orders changed, and whether their margin lock was taken since the last batch.
    orders: Vec<(OrderId, bool)>,
    /// Symbols whose position changed.
    positions: Vec<usize>,
    /// Fills added (the newest of the ledger's).
    fills: usize,
    /// Every key of the user rewritten (a repair by the consistency check).
    rewrite: bool,
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
fn connection<'a>(shard: &Shard, hot: &'a RedisHot) -> &'a RedisBridge {
    hand_over(shard, hot);
    &hot.bridge
}

/// Writes every user changed since the last batch, from the ledger, as one batch; the
/// receiver completes with its reply. To a single server the batch is one script call;
/// to a cluster, one per user (a call's keys must share a slot).
fn hand_over(shard: &Shard, hot: &RedisHot) -> Option<futures_channel::oneshot::Receiver<()>> {
    let dirty = std::mem::take(&mut *hot.dirty.borrow_mut());
    if dirty.users.is_empty() {
        return None;
    }
    let mut writes = Vec::with_capacity(dirty.users.len());
    {
        let accounts = shard.accounts.borrow();
        for user in dirty.users {
            let (Some(account), Some(touched)) = (accounts.user(user), dirty.touched.get(&user)) else { continue };
            let w = if touched.rewrite { rebuild_user(shard, &hot.keys, user, account) } else { changes(shard, &hot.keys, user, account, touched) };
            writes.push(w);
        }
    }
    if writes.is_empty() {
        return None;
    }
    let ops = if hot.bridge.is_cluster() { writes.into_iter().map(Writes::into_op).collect() } else { vec![Writes::into_one_op(writes)] };
    let (done, replied) = futures_channel::oneshot::channel();
    let (health, id, failed) = (hot.health.clone(), hot.shard, hot.rebuild_failed.clone());
    hot.bridge.submit::<Vec<redis::Value>, _>(Op::Batch(ops), move |result| {
        match result {
            Ok(replies) if replies.iter().any(|r| matches!(r, redis::Value::Int(-1))) => {
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

/// The keys `touched` names, as the ledger has them now. Absolute values: writing them
/// twice, or after a later change was already written, leaves Redis right.
fn changes(shard: &Shard, keys: &Keys, user: UserId, account: &Account, touched: &Touched) -> Writes {
    let balance = keys.balance(user);
    let mut w = Writes::new(user);
    if !touched.created {
        // A balance that is gone means the user's hot state is lost: nothing is written,
        // and the rebuild it triggers writes everything.
        w = w.requiring(balance.clone());
    }
    w.op("HSET", balance, balance_fields(account));
    for &(id, locked) in &touched.orders {
        match account.orders.get(&id) {
            Some(view) if view.logged => {
                write_order(&mut w, keys, user, view, false);
                if locked && view.status.is_open() {
                    w.op("SET", keys.lock(user, id), [view.reserved]);
                }
            }
            // Locked, not logged yet: the lock and the open set have it, so that a lock
            // whose order never reaches the log (a crash in between) is still found by a
            // rebuild and by the consistency check.
            Some(view) => {
                w.op("SET", keys.lock(user, id), [view.reserved]);
                w.op("SADD", keys.active(user), [id.0]);
            }
            // Released (never logged), or closed so long ago the ledger forgot it.
            None => {
                w.op("SREM", keys.active(user), [id.0]);
                w.op("DEL", keys.lock(user, id), [""; 0]);
            }
        }
    }
    for &symbol in &touched.positions {
        let key = keys.position(user, &shard.map.symbols[symbol].name);
        match account.positions.get(&symbol) {
            Some(p) => w.op("HSET", key, position_fields(p)),
            None => w.op("DEL", key, [""; 0]),
        };
    }
    if touched.fills > 0 {
        // The ledger's fills are newest first: pushed oldest first, they end up so.
        w.op("LPUSH", keys.fills(user), account.fills.iter().take(touched.fills).rev().map(json));
        w.op("LTRIM", keys.fills(user), [0, crate::accounts::FILLS_KEPT as i64 - 1]);
    }
    w
}

/// The writer task of a core: hands the changes to Redis as one batch, waits for its
/// reply (meanwhile the next batch gathers), and again.
pub async fn write_behind(shard: Rc<Shard>) {
    let Some(hot) = &shard.redis else { return };
    let Some(mut woken) = hot.woken.borrow_mut().take() else { return };
    while woken.next().await.is_some() {
        hot.scheduled.set(false);
        if let Some(replied) = hand_over(&shard, hot) {
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

impl Shard {
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
pub fn reserved(shard: &Shard, order: &NewOrder) {
    let Some(hot) = shard.writing() else { return };
    hot.touch(order.user, |t| t.order(order.id, true));
}

/// Unlocks an order that could not be logged (its reserve succeeded).
pub fn release(shard: &Shard, order: &NewOrder) {
    let Some(hot) = shard.writing() else { return };
    hot.touch(order.user, |t| t.order(order.id, false));
}

/// A new user's empty balance, or a logged transfer.
pub fn balance_changed(shard: &Shard, user: UserId, created: bool) {
    let Some(hot) = shard.writing() else { return };
    hot.touch(user, |t| t.created |= created);
}

/// What a command's results (already applied to the ledger) changed for the users owned
/// here.
pub fn settle(shard: &Shard, symbol: usize, logged: Option<&NewOrder>, events: &[Event]) {
    let Some(hot) = shard.writing() else { return };
    let mine = |user: UserId| shard.account_owner(user) == shard.id;
    if let Some(o) = logged.filter(|o| mine(o.user)) {
        hot.touch(o.user, |t| t.order(o.id, false));
    }
    for e in events {
        match e {
            Event::OrderPlaced(p) if mine(p.user) => hot.touch(p.user, |t| t.order(p.order_id, false)),
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
            _ => {}
        }
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn balance_fields(account: &Account) -> [String; 6] {
    [
        "total".to_owned(),
        account.total.to_string(),
        "available".to_owned(),
        account.available().to_string(),
        "locked".to_owned(),
        account.locked.to_string(),
    ]
}

/// An order's keys. A rebuild starts from no open orders, so it neither removes one from
/// the open set nor deletes its lock.
fn write_order(w: &mut Writes, keys: &Keys, user: UserId, view: &OrderView, rebuilding: bool) {
    let key = keys.order(user, view.id);
    let cid = view.client_order_id.map(|c| keys.client_order(user, &c));
    if view.status.is_open() {
        w.op("SET", key, [json(view)]);
        if let Some(cid) = cid {
            w.op("SET", cid, [view.id.0]);
        }
        w.op("SADD", keys.active(user), [view.id.0]);
        if rebuilding {
            w.op("SET", keys.lock(user, view.id), [view.reserved]);
        }
    } else {
        let ttl = CLOSED_TTL_SECS.to_string();
        w.op("SET", key, [json(view), "EX".to_owned(), ttl.clone()]);
        if let Some(cid) = cid {
            w.op("SET", cid, [view.id.0.to_string(), "EX".to_owned(), ttl]);
        }
        if !rebuilding {
            w.op("SREM", keys.active(user), [view.id.0]);
            w.op("DEL", keys.lock(user, view.id), [""; 0]);
        }
    }
}

fn position_fields(p: &PositionState) -> Vec<String> {
    [
        ("size", p.size.to_string()),
        ("cost", p.cost.to_string()),
        ("margin", p.margin.to_string()),
        ("realizedPnl", p.realized_pnl.to_string()),
        ("fees", p.fees.to_string()),
        ("leverage", p.leverage.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_owned(), v])
    .collect()
}

/// Every key of one user, rewritten from the ledger.
fn rebuild_user(shard: &Shard, keys: &Keys, user: UserId, account: &Account) -> Writes {
    let mut w = Writes::new(user);
    w.op("FORGET_OPEN", keys.active(user), [keys.order_prefix(user), keys.lock_prefix(user), keys.client_order_prefix(user)]);
    w.op("DEL", keys.fills(user), [""; 0]);
    w.op("HSET", keys.balance(user), balance_fields(account));
    for (symbol, spec) in shard.map.symbols.iter().enumerate() {
        w.op("DEL", keys.position(user, &spec.name), [""; 0]);
        if let Some(p) = account.positions.get(&symbol) {
            w.op("HSET", keys.position(user, &spec.name), position_fields(p));
        }
    }
    for view in account.orders.values() {
        if view.logged {
            write_order(&mut w, keys, user, view, true);
        } else {
            // Locked, in flight to the log: as `changes` writes it.
            w.op("SET", keys.lock(user, view.id), [view.reserved]);
            w.op("SADD", keys.active(user), [view.id.0]);
        }
    }
    if !account.fills.is_empty() {
        w.op("RPUSH", keys.fills(user), account.fills.iter().map(json));
    }
    w
}

/// Redis answers, and has the scripts (a restarted Redis has none).
async fn prepare(shard: &Shard, hot: &RedisHot) -> Result<(), String> {
    connection(shard, hot).call::<redis::Value>(exchange_io::redis::load_script(WRITE)).await.map(|_| ())
}

/// Rewrites every user of the partitions owned here from the ledger, then sets their
/// markers. Trading goes on meanwhile; results keep being written, queued behind each
/// user's rewrite, so nothing that happens during the rebuild is lost.
///
/// # Errors
/// Redis unreachable, or a write failed: the state stays stale.
pub async fn rebuild(shard: &Rc<Shard>) -> Result<usize, String> {
    let Some(hot) = &shard.redis else { return Ok(0) };
    let started = Instant::now();
    prepare(shard, hot).await?;
    shard.health.hot[shard.id].store(REBUILDING, Ordering::Release);
    hot.rebuild_failed.store(false, Ordering::Release);
    let partitions: Vec<u32> = shard.owned_partitions().collect();
    let users = shard.accounts.borrow().users_in(&partitions);
    let pending = Arc::new(AtomicUsize::new(0));
    for chunk in users.chunks(256) {
        {
            let accounts = shard.accounts.borrow();
            for user in chunk {
                let Some(account) = accounts.user(*user) else { continue };
                let writes = rebuild_user(shard, &hot.keys, *user, account);
                pending.fetch_add(1, Ordering::AcqRel);
                let (pending, failed) = (pending.clone(), hot.rebuild_failed.clone());
                // Queued behind each other: a deadline for the bulk, not for one call.
                connection(shard, hot).submit_within::<i64, _>(writes.into_op(), REBUILD_TIMEOUT, move |r| {
                    if r.is_err() {
                        failed.store(true, Ordering::Release);
                    }
                    pending.fetch_sub(1, Ordering::AcqRel);
                });
            }
        }
        // Let the shard serve between chunks, and keep the queue to Redis short.
        while pending.load(Ordering::Acquire) > 512 {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        glommio::yield_if_needed().await;
    }
    while pending.load(Ordering::Acquire) > 0 {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let markers: Vec<_> =
        partitions.iter().map(|p| connection(shard, hot).call::<()>(Op::Cmd(redis::Cmd::set(hot.keys.marker(*p), 1)))).collect();
    for m in markers {
        m.await?;
    }
    if hot.rebuild_failed.load(Ordering::Acquire) {
        shard.health.hot[shard.id].store(STALE, Ordering::Release);
        return Err("a write of the rebuild failed".into());
    }
    if shard.health.hot[shard.id].compare_exchange(REBUILDING, READY, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return Err("hot state lost again during the rebuild".into());
    }
    shard.metrics.hot_rebuilds.inc();
    tracing::info!(shard = shard.id, users = users.len(), ms = started.elapsed().as_millis() as u64, "hot state rebuilt in Redis");
    Ok(users.len())
}

/// What the ledger of the partitions owned here has applied: equal fingerprints at a
/// clean stop and at the next start mean Redis already holds what the logs say.
fn fingerprint(shard: &Shard) -> String {
    let accounts = shard.accounts.borrow();
    let mut applied = accounts.applied_offsets();
    applied.sort_unstable();
    let partitions: Vec<u32> = shard.owned_partitions().collect();
    let users = accounts.users_in(&partitions).len();
    let offsets: Vec<String> = applied.iter().map(|(s, o)| format!("{}={o}", shard.map.symbols[*s].name)).collect();
    format!("shards={} users={users} {}", shard.shards, offsets.join(","))
}

/// At a clean stop, with everything written: leaves the fingerprint for the next start.
pub async fn mark_clean(shard: &Shard) {
    let Some(hot) = &shard.redis else { return };
    if shard.hot_state(shard.id) != READY {
        return;
    }
    let print = fingerprint(shard);
    let sets: Vec<_> = shard
        .owned_partitions()
        .map(|p| connection(shard, hot).call::<()>(Op::Cmd(redis::Cmd::set(hot.keys.clean(p), &print))))
        .collect();
    for s in sets {
        if let Err(e) = s.await {
            tracing::warn!(shard = shard.id, error = e, "could not mark the hot state clean; the next start rebuilds it");
            return;
        }
    }
}

/// At start: whether Redis is as a clean stop left it, with the same logs behind it. The
/// marks are consumed either way, so a crash after this start never reuses them.
async fn resume_clean(shard: &Shard, hot: &RedisHot) -> bool {
    if prepare(shard, hot).await.is_err() {
        return false;
    }
    let print = fingerprint(shard);
    let mut whole = true;
    for p in shard.owned_partitions() {
        let clean = connection(shard, hot).call::<Option<String>>(Op::Cmd(redis::Cmd::get_del(hot.keys.clean(p))));
        let marker = connection(shard, hot).call::<bool>(Op::Cmd(redis::Cmd::exists(hot.keys.marker(p))));
        let same = matches!(clean.await, Ok(Some(c)) if c == print);
        whole &= same && matches!(marker.await, Ok(true));
    }
    whole && shard.health.hot[shard.id].compare_exchange(STALE, READY, Ordering::AcqRel, Ordering::Acquire).is_ok()
}

/// Checks the partition markers; rebuilds when the state is stale; runs the consistency
/// check every `EXCHANGE_CHECK_INTERVAL_SECS` (0: never).
pub async fn watch(shard: Rc<Shard>) {
    let Some(hot) = &shard.redis else { return };
    let interval = Duration::from_secs(shard.config.check_interval_secs);
    let mut last_check = Instant::now();
    if resume_clean(&shard, hot).await {
        tracing::info!(shard = shard.id, "hot state in Redis is as the last clean stop left it: no rebuild");
    }
    let mut last_error = String::new();
    while !shard.health.stopping.load(Ordering::Acquire) {
        glommio::timer::sleep(Duration::from_millis(250)).await;
        match shard.hot_state(shard.id) {
            STALE => match rebuild(&shard).await {
                Ok(_) => last_error.clear(),
                Err(e) => {
                    if e != last_error {
                        tracing::warn!(shard = shard.id, error = e, "hot state rebuild failed; retrying");
                        last_error = e;
                    }
                }
            },
            READY => {
                let checks: Vec<_> = shard
                    .owned_partitions()
                    .map(|p| connection(&shard, hot).call::<bool>(Op::Cmd(redis::Cmd::exists(hot.keys.marker(p)))))
                    .collect();
                for c in checks {
                    match c.await {
                        Ok(true) => {}
                        Ok(false) => shard.hot_lost("a partition marker is gone (Redis emptied or restarted)"),
                        Err(e) => shard.hot_lost(&e),
                    }
                }
                if !interval.is_zero() && last_check.elapsed() >= interval {
                    last_check = Instant::now();
                    match check(&shard).await {
                        Ok(r) => tracing::info!(shard = shard.id, users = r.users, repaired = r.repaired.len(), "consistency check"),
                        Err(e) => tracing::warn!(shard = shard.id, error = e, "consistency check failed"),
                    }
                }
            }
            _ => {}
        }
    }
}

/// A position hash as Redis returns it (`None`: no hash).
fn parse_position(fields: &[(String, String)]) -> Option<PositionState> {
    if fields.is_empty() {
        return None;
    }
    let get = |name: &str| fields.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.parse::<i128>().ok()).unwrap_or(0);
    Some(PositionState {
        size: get("size"),
        cost: get("cost"),
        margin: get("margin"),
        realized_pnl: get("realizedPnl"),
        fees: get("fees"),
        leverage: u32::try_from(get("leverage")).unwrap_or(0),
    })
}

/// What one consistency check found and repaired.
#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub users: usize,
    pub repaired: Vec<Repair>,
}

#[derive(Debug, serde::Serialize)]
pub struct Repair {
    /// Account id (the 16 hex digits of the user's API key).
    pub user: String,
    pub found: Vec<String>,
}

type Balance = (Option<i64>, Option<i64>, Option<i64>);

/// One consistency check of the users owned here: Redis against the ledger (the logs'
/// truth). Each user's Redis reads are issued in the same step as the ledger is read, so
/// they see exactly the writes issued before: a user in the middle of trading is not a
/// false alarm. A user that differs is logged, counted and rewritten from the ledger;
/// that also removes margin locks of orders the log never got (a crash between the
/// risk step and the log), which stay in the user's open-order set.
///
/// # Errors
/// No Redis, the hot state not ready, or Redis failing.
pub async fn check(shard: &Rc<Shard>) -> Result<CheckReport, String> {
    let Some(hot) = &shard.redis else { return Err("no Redis: the hot state is the ledger itself".into()) };
    if shard.hot_state(shard.id) != READY {
        return Err("the hot state is not ready".into());
    }
    let partitions: Vec<u32> = shard.owned_partitions().collect();
    let users = shard.accounts.borrow().users_in(&partitions);
    let mut report = CheckReport { users: users.len(), repaired: Vec::new() };
    for chunk in users.chunks(256) {
        let mut pending = Vec::with_capacity(chunk.len());
        {
            let accounts = shard.accounts.borrow();
            for &user in chunk {
                let Some(a) = accounts.user(user) else { continue };
                let mut open: Vec<u64> = a.orders.values().filter(|v| !v.logged || v.status.is_open()).map(|v| v.id.0).collect();
                open.sort_unstable();
                let ledger_positions: Vec<Option<PositionState>> =
                    (0..shard.map.symbols.len()).map(|s| a.positions.get(&s).copied()).collect();
                let cmd = redis::cmd("HMGET").arg(hot.keys.balance(user)).arg("total").arg("available").arg("locked").to_owned();
                let balance = connection(shard, hot).call::<Balance>(Op::Cmd(cmd));
                let active = connection(shard, hot).call::<Vec<u64>>(Op::Cmd(redis::Cmd::smembers(hot.keys.active(user))));
                let positions: Vec<_> = shard
                    .map
                    .symbols
                    .iter()
                    .map(|s| connection(shard, hot).call::<Vec<(String, String)>>(Op::Cmd(redis::Cmd::hgetall(hot.keys.position(user, &s.name)))))
                    .collect();
                let expected = ((a.total, a.available(), a.locked), open, ledger_positions);
                pending.push((user, expected, balance, active, positions));
            }
        }
        for (user, (ledger_balance, ledger_open, ledger_positions), balance, active, positions) in pending {
            let mut found = Vec::new();
            let (t, a, l) = balance.await?;
            let redis_balance = (t.map(i128::from), a.map(i128::from), l.map(i128::from));
            let (lt, la, ll) = ledger_balance;
            if redis_balance != (Some(lt), Some(la), Some(ll)) {
                found.push(format!("balance (total, available, locked): Redis {redis_balance:?}, log {:?}", (lt, la, ll)));
            }
            let mut open = active.await?;
            open.sort_unstable();
            if open != ledger_open {
                let leaked: Vec<u64> = open.iter().filter(|id| !ledger_open.contains(id)).copied().collect();
                found.push(format!("open orders: Redis {open:?}, log {ledger_open:?} (unknown to the log: {leaked:?})"));
            }
            for ((symbol, call), ledger) in positions.into_iter().enumerate().zip(ledger_positions) {
                let redis = parse_position(&call.await?);
                if redis != ledger {
                    found.push(format!("position {}: Redis {redis:?}, log {ledger:?}", shard.map.symbols[symbol].name));
                }
            }
            if found.is_empty() {
                continue;
            }
            let account = crate::wire::account_id(user);
            tracing::warn!(shard = shard.id, user = account, found = ?found, "hot state differs from the log: repaired");
            hot.touch(user, |t| t.rewrite = true);
            shard.all_metrics.consistency_repairs.inc();
            report.repaired.push(Repair { user: account, found });
        }
    }
    shard.all_metrics.consistency_checks.inc();
    Ok(report)
}
