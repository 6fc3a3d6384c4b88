//! Redis as the hot state (`EXCHANGE_REDIS_URL`): where balances, margin locks,
//! positions, open orders, fills and rate-limit counters live, where the risk step runs,
//! and where account reads come from.
//!
//! Each account owner still keeps its partitions' *ledger* (the in-process
//! [`crate::accounts::Accounts`]): the logs replayed, kept current as results arrive. It
//! authenticates keys, hands out order numbers, and is what Redis is rebuilt from, so a
//! lost Redis never needs the log read again while the process lives (and
//! `exchange rebuild-state` replays the log into it first). Redis is never behind it for
//! a reader:
//!
//! - the risk step is one Lua script ([`RESERVE`](crate::redis_state::RESERVE)): rate
//!   limit, available check and margin lock, atomically, one round trip, awaited;
//! - results are written by the account owner with one idempotent script per user and
//!   command ([`WRITE`](crate::redis_state::WRITE), guarded by the command's offset),
//!   handed over in log order and *not* awaited: every operation reaches Redis in the
//!   order it was handed over (see [`exchange_io::redis`]) and every read of a user is
//!   handed over by the same owner, so a read issued after an acknowledgement sees it.
//!   The order path therefore waits for exactly one Redis round trip.
//!
//! Losing Redis (emptied, restarted, a cluster node gone, or unreachable) is noticed by a
//! failed or refused script, or by the partition markers a watchdog checks every 250 ms.
//! The owner then answers 503 to orders and account reads of its partitions, rewrites
//! every user of them from the ledger once Redis answers, and resumes.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use exchange_io::redis::{Op, RedisBridge};

use super::Shard;
use crate::accounts::{Account, Fill, OrderView};
use crate::api::error::ApiError;
use crate::engine::{CancelReason, Event, NewOrder, PositionState, UserId};
use crate::redis_state::{Keys, Writes, RESERVE, RESERVE_SCRIPT, WRITE};
use crate::server::Health;

/// No Redis configured: the ledger is the hot state.
pub const DISABLED: u8 = 0;
/// Redis is missing data or unreachable; writes are skipped until it is rebuilt.
pub const STALE: u8 = 1;
/// Being rewritten from the ledger; results are written, requests wait.
pub const REBUILDING: u8 = 2;
pub const READY: u8 = 3;

/// How long a closed order stays readable in Redis (the ledger keeps the latest 500).
const CLOSED_TTL_SECS: u32 = 86_400;
/// How long one user's rewrite may take, queue included, before a rebuild counts as
/// failed.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(30);

pub struct RedisHot {
    pub bridge: RedisBridge,
    pub keys: Keys,
    /// A write of the rebuild in progress failed.
    rebuild_failed: Arc<AtomicBool>,
}

impl RedisHot {
    pub fn new(bridge: RedisBridge, keys: Keys) -> Self {
        Self { bridge, keys, rebuild_failed: Arc::default() }
    }
}

/// What a risk step in Redis said.
pub enum Reserved {
    Locked,
    RateLimited,
    InsufficientMargin,
    /// Redis cannot answer for this user now: 503.
    Unavailable,
}

/// Marks a shard's hot state lost (from any thread), once.
fn lost(health: &Health, shard: usize, why: &str) {
    if health.hot[shard].compare_exchange(READY, STALE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        tracing::warn!(shard, why, "hot state lost: answering 503 until Redis is rebuilt");
    }
}

/// Reports what a write did: a lost user or a failed call makes the state stale.
fn report(health: Arc<Health>, shard: usize, failed: Arc<AtomicBool>) -> impl FnOnce(Result<i64, String>) + Send + 'static {
    move |result| match result {
        Ok(-1) => lost(&health, shard, "a user's balance is missing"),
        Ok(_) => {}
        Err(e) => {
            failed.store(true, Ordering::Release);
            lost(&health, shard, &e);
        }
    }
}

impl Shard {
    fn hot_state(&self, shard: usize) -> u8 {
        self.health.hot[shard].load(Ordering::Acquire)
    }

    /// Whether the hot state of `user`'s partition can answer now (always, without Redis).
    ///
    /// # Errors
    /// 503 while it is lost or being rebuilt.
    pub fn hot_ready(&self, user: UserId) -> Result<(), ApiError> {
        self.hot_ready_in(crate::accounts::partition_of(user))
    }

    /// [`Self::hot_ready`] for an account partition.
    ///
    /// # Errors
    /// 503 while it is lost or being rebuilt.
    pub fn hot_ready_in(&self, partition: u32) -> Result<(), ApiError> {
        match self.hot_state(self.partition_owner(partition)) {
            DISABLED | READY => Ok(()),
            REBUILDING => Err(ApiError::Unavailable("hot state is being rebuilt; retry".into())),
            _ => Err(ApiError::Unavailable("hot state (Redis) unavailable; retry".into())),
        }
    }

    fn hot_lost(&self, why: &str) {
        lost(&self.health, self.id, why);
    }

    fn submit_writes(&self, hot: &RedisHot, writes: Writes) {
        if writes.is_empty() {
            return;
        }
        hot.bridge.submit(writes.into_op(), report(self.health.clone(), self.id, hot.rebuild_failed.clone()));
    }

    /// Writes to Redis are skipped while it is stale: the rebuild will write everything.
    fn writing(&self) -> Option<&RedisHot> {
        self.redis.as_ref().filter(|_| matches!(self.hot_state(self.id), READY | REBUILDING))
    }
}

/// The risk step in Redis for an order the ledger has just reserved.
pub async fn reserve(shard: &Shard, order: &NewOrder) -> Reserved {
    let Some(hot) = &shard.redis else { return Reserved::Locked };
    let user = order.user;
    let keys = vec![
        hot.keys.balance(user),
        hot.keys.rate(user, order.timestamp.div_euclid(1000)),
        hot.keys.lock(user, order.id),
        hot.keys.active(user),
    ];
    let args = vec![
        shard.config.rate_limit.to_string(),
        order.locked_margin.to_string(),
        (-order.locked_margin).to_string(),
        order.id.0.to_string(),
    ];
    match hot.bridge.call::<i64>(Op::Script { script: &RESERVE_SCRIPT, keys, args }).await {
        Ok(0) => Reserved::Locked,
        Ok(1) => Reserved::RateLimited,
        Ok(2) => Reserved::InsufficientMargin,
        Ok(4) => {
            shard.hot_lost("a user's balance is missing");
            Reserved::Unavailable
        }
        Ok(other) => {
            shard.hot_lost(&format!("reserve answered {other}"));
            Reserved::Unavailable
        }
        Err(e) => {
            shard.hot_lost(&e);
            Reserved::Unavailable
        }
    }
}

/// Unlocks an order that could not be logged (its reserve succeeded).
pub fn release(shard: &Shard, order: &NewOrder) {
    let Some(hot) = shard.writing() else { return };
    let mut w = Writes::new(&hot.keys, order.user);
    if order.locked_margin != 0 {
        w.op("HINCRBY", hot.keys.balance(order.user), ["locked".to_owned(), (-order.locked_margin).to_string()]);
        w.op("HINCRBY", hot.keys.balance(order.user), ["available".to_owned(), order.locked_margin.to_string()]);
    }
    w.op("DEL", hot.keys.lock(order.user, order.id), [""; 0]);
    w.op("SREM", hot.keys.active(order.user), [order.id.0]);
    shard.submit_writes(hot, w);
}

/// A new user's empty balance, or a logged transfer.
pub fn balance_changed(shard: &Shard, user: UserId, amount: i64) {
    let Some(hot) = shard.writing() else { return };
    let mut w = Writes::new(&hot.keys, user);
    for field in ["total", "available", "locked"] {
        let delta = if field == "locked" { 0 } else { amount };
        w.op("HINCRBY", hot.keys.balance(user), [field.to_owned(), delta.to_string()]);
    }
    shard.submit_writes(hot, w);
}

/// The users of a command's results owned here, with their ledger balance (total,
/// locked) before the results are applied.
pub fn before(shard: &Shard, logged: Option<&NewOrder>, events: &[Event]) -> Vec<(UserId, i128, i128)> {
    if shard.writing().is_none() {
        return Vec::new();
    }
    let mut users: Vec<UserId> = logged.map(|o| o.user).into_iter().collect();
    for e in events {
        match e {
            Event::OrderPlaced(p) => users.push(p.user),
            Event::OrderCancelled(c) => users.push(c.user),
            Event::TradeExecuted(t) => users.extend([t.buyer.user, t.seller.user]),
        }
    }
    users.sort_unstable();
    users.dedup();
    let accounts = shard.accounts.borrow();
    users
        .into_iter()
        .filter(|u| shard.account_owner(*u) == shard.id)
        .filter_map(|u| accounts.user(u).map(|a| (u, a.total, a.locked)))
        .collect()
}

/// Writes what a command's results (already applied to the ledger) did to each user.
pub fn settle(shard: &Shard, symbol: usize, offset: u64, logged: Option<&NewOrder>, events: &[Event], before: &[(UserId, i128, i128)]) {
    let Some(hot) = shard.writing() else { return };
    let name = &shard.map.symbols[symbol].name;
    let accounts = shard.accounts.borrow();
    for &(user, total, locked) in before {
        let Some(account) = accounts.user(user) else { continue };
        let balance = hot.keys.balance(user);
        let mut w = Writes::new(&hot.keys, user).guarded(name, offset).requiring(balance.clone());
        let (dt, dl) = (account.total - total, account.locked - locked);
        for (field, delta) in [("total", dt), ("locked", dl), ("available", dt - dl)] {
            if delta != 0 {
                w.op("HINCRBY", balance.clone(), [field.to_owned(), delta.to_string()]);
            }
        }
        let mut orders = Vec::new();
        let mut fills = 0usize;
        if let Some(o) = logged.filter(|o| o.user == user) {
            orders.push(o.id);
        }
        for e in events {
            match e {
                Event::OrderPlaced(p) if p.user == user => orders.push(p.order_id),
                Event::OrderCancelled(c) if c.user == user && c.reason != CancelReason::DuplicateOrderId => orders.push(c.order_id),
                Event::TradeExecuted(t) => {
                    for u in [&t.buyer, &t.seller] {
                        if u.user == user {
                            orders.push(u.order_id);
                            fills += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        orders.sort_unstable();
        orders.dedup();
        for id in orders {
            match account.orders.get(&id).filter(|v| v.logged) {
                Some(view) => write_order(&mut w, &hot.keys, user, view, false),
                None => {
                    w.op("SREM", hot.keys.active(user), [id.0]);
                    w.op("DEL", hot.keys.lock(user, id), [""; 0]);
                }
            }
        }
        if fills > 0 {
            if let Some(p) = account.positions.get(&symbol) {
                w.op("HSET", hot.keys.position(user, name), position_fields(p));
            }
            // The ledger's fills are newest first: pushed oldest first, they end up so.
            w.op("LPUSH", hot.keys.fills(user), account.fills.iter().take(fills).rev().map(json));
            w.op("LTRIM", hot.keys.fills(user), [0, crate::accounts::FILLS_KEPT as i64 - 1]);
        }
        shard.submit_writes(hot, w);
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
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
fn rebuild_user(shard: &Shard, keys: &Keys, user: UserId, account: &Account, applied: &[(usize, u64)]) -> Writes {
    let mut w = Writes::new(keys, user);
    w.op("DEL", keys.applied(user), [""; 0]);
    w.op("FORGET_OPEN", keys.active(user), [keys.order_prefix(user), keys.lock_prefix(user), keys.client_order_prefix(user)]);
    w.op("DEL", keys.fills(user), [""; 0]);
    w.op(
        "HSET",
        keys.balance(user),
        ["total".to_owned(), account.total.to_string(), "available".to_owned(), account.available().to_string(), "locked".to_owned(), account.locked.to_string()],
    );
    for (symbol, spec) in shard.map.symbols.iter().enumerate() {
        w.op("DEL", keys.position(user, &spec.name), [""; 0]);
        if let Some(p) = account.positions.get(&symbol) {
            w.op("HSET", keys.position(user, &spec.name), position_fields(p));
        }
    }
    let offsets: Vec<String> = applied
        .iter()
        .filter(|(_, next)| *next > 0)
        .flat_map(|(symbol, next)| [shard.map.symbols[*symbol].name.clone(), (next - 1).to_string()])
        .collect();
    if !offsets.is_empty() {
        w.op("HSET", keys.applied(user), offsets);
    }
    for view in account.orders.values().filter(|v| v.logged) {
        write_order(&mut w, keys, user, view, true);
    }
    if !account.fills.is_empty() {
        w.op("RPUSH", keys.fills(user), account.fills.iter().map(json));
    }
    w
}

/// Redis answers, and has the scripts (a restarted Redis has none).
async fn prepare(hot: &RedisHot) -> Result<(), String> {
    let loads = [RESERVE, WRITE].map(|code| hot.bridge.call::<redis::Value>(exchange_io::redis::load_script(code)));
    for load in loads {
        load.await?;
    }
    Ok(())
}

/// Rewrites every user of the partitions owned here from the ledger, then sets their
/// markers. Requests for them wait (503) meanwhile; results keep being written, queued
/// behind each user's rewrite, so nothing that happens during the rebuild is lost.
///
/// # Errors
/// Redis unreachable, or a write failed: the state stays stale.
pub async fn rebuild(shard: &Rc<Shard>) -> Result<usize, String> {
    let Some(hot) = &shard.redis else { return Ok(0) };
    let started = Instant::now();
    prepare(hot).await?;
    shard.health.hot[shard.id].store(REBUILDING, Ordering::Release);
    hot.rebuild_failed.store(false, Ordering::Release);
    let partitions: Vec<u32> = shard.owned_partitions().collect();
    let users = shard.accounts.borrow().users_in(&partitions);
    let pending = Arc::new(AtomicUsize::new(0));
    for chunk in users.chunks(256) {
        {
            let accounts = shard.accounts.borrow();
            let applied = accounts.applied_offsets();
            for user in chunk {
                let Some(account) = accounts.user(*user) else { continue };
                let writes = rebuild_user(shard, &hot.keys, *user, account, &applied);
                pending.fetch_add(1, Ordering::AcqRel);
                let (pending, failed) = (pending.clone(), hot.rebuild_failed.clone());
                // Queued behind each other: a deadline for the bulk, not for one call.
                hot.bridge.submit_within::<i64, _>(writes.into_op(), REBUILD_TIMEOUT, move |r| {
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
        partitions.iter().map(|p| hot.bridge.call::<()>(Op::Cmd(redis::Cmd::set(hot.keys.marker(*p), 1)))).collect();
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
        .map(|p| hot.bridge.call::<()>(Op::Cmd(redis::Cmd::set(hot.keys.clean(p), &print))))
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
    if prepare(hot).await.is_err() {
        return false;
    }
    let print = fingerprint(shard);
    let mut whole = true;
    for p in shard.owned_partitions() {
        let clean = hot.bridge.call::<Option<String>>(Op::Cmd(redis::Cmd::get_del(hot.keys.clean(p))));
        let marker = hot.bridge.call::<bool>(Op::Cmd(redis::Cmd::exists(hot.keys.marker(p))));
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
                    .map(|p| hot.bridge.call::<bool>(Op::Cmd(redis::Cmd::exists(hot.keys.marker(p)))))
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

/// Reads answer from Redis; a failed read makes the state stale and answers 503.
async fn read<T: redis::FromRedisValue + Send + 'static>(shard: &Shard, op: Op) -> Result<T, ApiError> {
    let hot = shard.redis.as_ref().ok_or_else(|| ApiError::Unavailable("no Redis".into()))?;
    hot.bridge.call(op).await.map_err(|e| {
        shard.hot_lost(&e);
        ApiError::Unavailable("hot state (Redis) unavailable; retry".into())
    })
}

fn parse<T: serde::de::DeserializeOwned>(shard: &Shard, text: &str) -> Result<T, ApiError> {
    serde_json::from_str(text).map_err(|e| {
        shard.hot_lost(&format!("unreadable value in Redis: {e}"));
        ApiError::Unavailable("hot state (Redis) unreadable".into())
    })
}

/// `(total, available, locked)`.
pub async fn balance(shard: &Shard, user: UserId) -> Result<(i128, i128, i128), ApiError> {
    let keys = &shard.redis.as_ref().ok_or(ApiError::NotFound)?.keys;
    let cmd = redis::cmd("HMGET").arg(keys.balance(user)).arg("total").arg("available").arg("locked").to_owned();
    let (t, a, l): (Option<i64>, Option<i64>, Option<i64>) = read(shard, Op::Cmd(cmd)).await?;
    match (t, a, l) {
        (Some(t), Some(a), Some(l)) => Ok((t.into(), a.into(), l.into())),
        _ => {
            shard.hot_lost("a user's balance is missing");
            Err(ApiError::Unavailable("hot state (Redis) unavailable; retry".into()))
        }
    }
}

pub async fn order(shard: &Shard, user: UserId, id: crate::engine::OrderId) -> Result<Option<OrderView>, ApiError> {
    let keys = &shard.redis.as_ref().ok_or(ApiError::NotFound)?.keys;
    let text: Option<String> = read(shard, Op::Cmd(redis::Cmd::get(keys.order(user, id)))).await?;
    text.map(|t| parse(shard, &t)).transpose()
}

pub async fn order_by_client_id(shard: &Shard, user: UserId, cid: &crate::engine::ClientOrderId) -> Result<Option<OrderView>, ApiError> {
    let keys = &shard.redis.as_ref().ok_or(ApiError::NotFound)?.keys;
    let id: Option<u64> = read(shard, Op::Cmd(redis::Cmd::get(keys.client_order(user, cid)))).await?;
    match id {
        Some(id) => order(shard, user, crate::engine::OrderId(id)).await,
        None => Ok(None),
    }
}

/// Open orders, oldest first.
pub async fn open_orders(shard: &Shard, user: UserId, symbol: Option<usize>) -> Result<Vec<OrderView>, ApiError> {
    let keys = &shard.redis.as_ref().ok_or(ApiError::NotFound)?.keys;
    let ids: Vec<u64> = read(shard, Op::Cmd(redis::Cmd::smembers(keys.active(user)))).await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let order_keys: Vec<String> = ids.iter().map(|id| keys.order(user, crate::engine::OrderId(*id))).collect();
    let texts: Vec<Option<String>> = read(shard, Op::Cmd(redis::cmd("MGET").arg(order_keys).to_owned())).await?;
    let mut open = Vec::with_capacity(texts.len());
    for text in texts.into_iter().flatten() {
        let view: OrderView = parse(shard, &text)?;
        if view.status.is_open() && symbol.is_none_or(|s| s == view.symbol) {
            open.push(view);
        }
    }
    open.sort_by_key(|o| (o.created_at, o.id));
    Ok(open)
}

/// The latest fills, newest first.
pub async fn fills(shard: &Shard, user: UserId) -> Result<Vec<Fill>, ApiError> {
    let keys = &shard.redis.as_ref().ok_or(ApiError::NotFound)?.keys;
    let texts: Vec<String> = read(shard, Op::Cmd(redis::Cmd::lrange(keys.fills(user), 0, -1))).await?;
    texts.iter().map(|t| parse(shard, t)).collect()
}

/// Open positions, by symbol.
pub async fn positions(shard: &Shard, user: UserId) -> Result<Vec<(usize, PositionState)>, ApiError> {
    let hot = shard.redis.as_ref().ok_or(ApiError::NotFound)?;
    let keys = &hot.keys;
    let calls: Vec<_> = shard
        .map
        .symbols
        .iter()
        .map(|s| hot.bridge.call::<Vec<(String, String)>>(Op::Cmd(redis::Cmd::hgetall(keys.position(user, &s.name)))))
        .collect();
    let mut out = Vec::new();
    for (symbol, call) in calls.into_iter().enumerate() {
        let fields = call.await.map_err(|e| {
            shard.hot_lost(&e);
            ApiError::Unavailable("hot state (Redis) unavailable; retry".into())
        })?;
        if let Some(p) = parse_position(&fields).filter(|p| p.size != 0) {
            out.push((symbol, p));
        }
    }
    Ok(out)
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
                let balance = hot.bridge.call::<Balance>(Op::Cmd(cmd));
                let active = hot.bridge.call::<Vec<u64>>(Op::Cmd(redis::Cmd::smembers(hot.keys.active(user))));
                let positions: Vec<_> = shard
                    .map
                    .symbols
                    .iter()
                    .map(|s| hot.bridge.call::<Vec<(String, String)>>(Op::Cmd(redis::Cmd::hgetall(hot.keys.position(user, &s.name)))))
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
            {
                let accounts = shard.accounts.borrow();
                if let Some(a) = accounts.user(user) {
                    let writes = rebuild_user(shard, &hot.keys, user, a, &accounts.applied_offsets());
                    shard.submit_writes(hot, writes);
                }
            }
            shard.all_metrics.consistency_repairs.inc();
            report.repaired.push(Repair { user: account, found });
        }
    }
    shard.all_metrics.consistency_checks.inc();
    Ok(report)
}
