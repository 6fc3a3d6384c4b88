//! Accounts: users, keys, balances, margin locks, and each user's orders and fills.
//!
//! Accounts are split into [`PARTITIONS`] partitions by user name; each partition is
//! owned by one shard (`partition % shards`) and reached by message, the way
//! exchange-core shards its risk engine by user. The owner is the only writer of its
//! users' balances, so "check available, lock margin, count the rate limit" is one step
//! on one core with no lock at all, even when the user trades symbols on other cores.
//!
//! Balances are a function of the logs: `total` = transfers (from the partition's own
//! log) + Σ over symbols of (realized PnL − fees) (from the symbol logs), and `locked` =
//! Σ open-order locks + Σ position margin. The shard keeps them up to date as results
//! arrive, and rebuilds them at start by replaying the logs.
//!
//! Nothing here does I/O; the shard logs what [`Accounts`] prepares and applies it once
//! it is durable.

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::engine::units::Units;

mod snapshot;
use snapshot::{AccountRef, PartitionStateRef};
use crate::engine::{CancelReason, ClientOrderId, Event, NewOrder, OrderId, OrderType, PositionState, Side, UserId};

/// Account partitions. Part of the data layout: changing it re-homes every user.
pub const PARTITIONS: u32 = 64;
/// Closed orders kept per user for lookups and clientOrderId idempotency.
pub const CLOSED_ORDERS_KEPT: usize = 500;
/// Fills kept per user in hot state for `/v1/fills` (older ones belong to cold storage).
pub const FILLS_KEPT: usize = 500;

pub fn partition_of_name(name: &str) -> u32 {
    let h = name.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    h % PARTITIONS
}

pub fn partition_of(user: UserId) -> u32 {
    (user.0 >> 32) as u32 % PARTITIONS
}

/// A record of an account partition's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountRecord {
    UserCreated { name: String, user: UserId, key_hash: [u8; 32] },
    /// A deposit (positive) or withdrawal (negative), idempotent by `transfer_id`.
    Transfer { user: UserId, transfer_id: String, amount: Units, timestamp: i64 },
    /// The record at `offset` reached the log after its request was answered 503: it
    /// does not count (see the symbol streams' voids).
    Voided { offset: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    New,
    PartiallyFilled,
    Filled,
    Cancelled,
    Rejected,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "NEW",
            Self::PartiallyFilled => "PARTIALLY_FILLED",
            Self::Filled => "FILLED",
            Self::Cancelled => "CANCELLED",
            Self::Rejected => "REJECTED",
        }
    }

    pub fn is_open(self) -> bool {
        matches!(self, Self::New | Self::PartiallyFilled)
    }
}

/// An order as its owner sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrderView {
    pub id: OrderId,
    pub symbol: usize,
    pub client_order_id: Option<ClientOrderId>,
    pub side: Side,
    pub kind: OrderType,
    pub quantity: i64,
    pub filled: i64,
    /// Σ price × quantity of fills, in ticks·lots (for the average fill price).
    pub filled_value: i128,
    pub status: OrderStatus,
    pub reason: Option<CancelReason>,
    pub created_at: i64,
    pub updated_at: i64,
    /// False between the margin lock and the log's confirmation.
    pub logged: bool,
    /// What the risk step locked for it (only needed until it is logged).
    pub reserved: i64,
}

impl OrderView {
    /// A new order, before any result of it is known.
    pub fn new(order: &NewOrder, symbol: usize, logged: bool) -> Self {
        Self {
            id: order.id,
            symbol,
            client_order_id: order.client_order_id,
            side: order.side,
            kind: order.kind,
            quantity: order.quantity,
            filled: 0,
            filled_value: 0,
            status: OrderStatus::New,
            reason: None,
            created_at: order.timestamp,
            updated_at: order.timestamp,
            logged,
            reserved: order.locked_margin,
        }
    }
}

/// One of the user's fills.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fill {
    pub trade_seq: u64,
    pub order_id: OrderId,
    pub symbol: usize,
    pub side: Side,
    pub price: i64,
    pub quantity: i64,
    pub fee: Units,
    pub pnl: Units,
    pub maker: bool,
    pub time: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    key_hash: [u8; 32],
    /// Deposits minus withdrawals plus realized PnL minus fees.
    pub total: i128,
    pub locked: i128,
    pub positions: BTreeMap<usize, PositionState>,
    pub orders: FxHashMap<OrderId, OrderView>,
    client_ids: FxHashMap<ClientOrderId, OrderId>,
    closed: VecDeque<OrderId>,
    pub fills: VecDeque<Fill>,
    rate_window: i64,
    rate_count: u32,
}

impl Account {
    pub fn available(&self) -> i128 {
        self.total - self.locked
    }

    /// Open orders, oldest first.
    pub fn open_orders(&self, symbol: Option<usize>) -> Vec<&OrderView> {
        let mut open: Vec<&OrderView> = self
            .orders
            .values()
            .filter(|o| o.logged && o.status.is_open() && symbol.is_none_or(|s| s == o.symbol))
            .collect();
        open.sort_by_key(|o| (o.created_at, o.id));
        open
    }

    pub fn order(&self, id: OrderId) -> Option<&OrderView> {
        self.orders.get(&id).filter(|o| o.logged)
    }

    pub fn order_by_client_id(&self, cid: &ClientOrderId) -> Option<&OrderView> {
        self.client_ids.get(cid).and_then(|id| self.order(*id))
    }

    fn close(&mut self, id: OrderId) {
        self.closed.push_back(id);
        while self.closed.len() > CLOSED_ORDERS_KEPT {
            if let Some(old) = self.closed.pop_front()
                && let Some(view) = self.orders.remove(&old)
                && let Some(cid) = view.client_order_id
            {
                self.client_ids.remove(&cid);
            }
        }
    }
}

/// Why the risk step refused an order.
#[derive(Debug, PartialEq, Eq)]
pub enum RiskError {
    Unauthorized,
    RateLimited,
    /// The clientOrderId is taken: the original order, to be returned unchanged.
    Duplicate(OrderId),
    InsufficientMargin,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AdminError {
    InvalidName,
    UserExists,
    UnknownUser,
    /// The transferId was used for a different transfer.
    TransferConflict,
    InsufficientBalance,
    InvalidAmount,
}

/// What a transfer request turned into.
#[derive(Debug)]
pub enum TransferPlan {
    /// Log this record (a transfer of this user), then apply it.
    Log(UserId, AccountRecord),
    /// Already done: answer as the first time.
    Done(UserId),
}

/// The account partitions one shard owns.
pub struct Accounts {
    users: FxHashMap<UserId, Account>,
    names: FxHashMap<String, UserId>,
    next_number: FxHashMap<u32, u32>,
    transfers: FxHashMap<String, (UserId, Units)>,
    rate_limit: u32,
    /// Order numbers are `partition << 52 | counter`; the counter starts at the clock in
    /// microseconds, so numbers minted after a restart never repeat earlier ones.
    order_counter: u64,
    /// Per symbol: the log offset after the last command whose results were applied.
    applied: FxHashMap<usize, u64>,
    /// Per (partition, symbol): results below this offset are already in the partition's
    /// snapshot and are skipped on replay.
    floors: FxHashMap<(u32, usize), u64>,
}

/// One account partition's state, as snapshotted.
#[derive(Serialize, Deserialize)]
pub struct PartitionState {
    /// Offset in the partition's own log up to which records are included.
    pub log_offset: u64,
    /// Per symbol name: offset in its command log up to which results are included.
    pub applied: Vec<(String, u64)>,
    pub next_number: u32,
    pub users: Vec<(UserId, Account)>,
    pub transfers: Vec<(String, (UserId, Units))>,
}

impl Accounts {
    pub fn new(rate_limit: u32, now_micros: u64) -> Self {
        Self {
            users: FxHashMap::default(),
            names: FxHashMap::default(),
            next_number: FxHashMap::default(),
            transfers: FxHashMap::default(),
            rate_limit,
            order_counter: now_micros,
            applied: FxHashMap::default(),
            floors: FxHashMap::default(),
        }
    }



    /// Whether results of `symbol` at `offset` are new for `user` (not in a snapshot).
    fn fresh(&self, user: UserId, symbol: usize, offset: u64) -> bool {
        self.floors.get(&(partition_of(user), symbol)).is_none_or(|floor| offset >= *floor)
    }



    pub fn user_by_name(&self, name: &str) -> Option<UserId> {
        self.names.get(name).copied()
    }








    fn track(account: &mut Account, order: &NewOrder, symbol: usize, logged: bool) {
        if let Some(cid) = order.client_order_id {
            account.client_ids.insert(cid, order.id);
        }
        account.orders.insert(order.id, OrderView::new(order, symbol, logged));
    }





    fn view(&mut self, user: UserId, id: OrderId) -> Option<&mut OrderView> {
        self.users.get_mut(&user)?.orders.get_mut(&id)
    }

}

/// Hot state: balances, margin locks, positions, open orders and rate-limit counters,
/// with the one atomic risk step. The in-process [`Accounts`] is the implementation the
/// embedded mode uses; the shard sees only this trait.
pub trait HotState {
    /// One partition's state as snapshot bytes (the encoding of [`PartitionState`]),
    /// written straight from the live state: no copy of the accounts is made.
    fn partition_snapshot(&self, partition: u32, log_offset: u64, symbols: &[String], out: &mut Vec<u8>);

    /// Installs a partition's snapshot; its results floors make replay skip what it holds.
    fn install(&mut self, partition: u32, state: PartitionState, symbol_index: &dyn Fn(&str) -> Option<usize>);

    /// Records that a symbol's results up to `offset` (inclusive) have been applied here.
    fn mark_applied(&mut self, symbol: usize, offset: u64);

    fn user(&self, user: UserId) -> Option<&Account>;

    /// Checks an API key of the form `<user hex>.<secret hex>` in constant time.
    fn authenticate(&self, key: &str) -> Option<UserId>;

    /// Prepares a new user: the record to log and the API key to hand out once.
    ///
    /// # Errors
    /// An invalid or taken name.
    fn create_user(&mut self, name: &str, secret: [u8; 24]) -> Result<(AccountRecord, String), AdminError>;

    /// Forgets a prepared user whose record could not be logged.
    fn release_user(&mut self, name: &str);

    /// Prepares a deposit or withdrawal. A withdrawal takes effect at once (so no order
    /// can lock the same money meanwhile) and is undone by [`Self::release_transfer`].
    ///
    /// # Errors
    /// Unknown user, a reused transferId, or a withdrawal beyond `available`.
    fn transfer(&mut self, name: &str, transfer_id: &str, amount: Units, now: i64) -> Result<TransferPlan, AdminError>;

    /// Undoes a prepared transfer whose record could not be logged.
    fn release_transfer(&mut self, record: &AccountRecord);

    /// Applies a logged record. `live` says it was prepared by this process (a
    /// withdrawal already took effect); on replay it is false.
    fn apply(&mut self, record: &AccountRecord, live: bool);

    /// The risk step: rate limit, idempotency, available check and margin lock, in one
    /// go. Returns the new order's number.
    ///
    /// # Errors
    /// [`RiskError`]; then nothing changed.
    fn reserve(&mut self, user: UserId, order: &mut NewOrder, symbol: usize, now_ms: i64) -> Result<(), RiskError>;

    /// The order reached the log.
    fn confirm(&mut self, user: UserId, id: OrderId);

    /// The order could not be logged: unlock its margin and forget it.
    fn release(&mut self, order: &NewOrder);

    /// A logged order replayed at start: lock and track it as the risk step did.
    fn replay_order(&mut self, order: &NewOrder, symbol: usize, offset: u64);

    /// Applies a symbol's result events (of the command at `offset`) to the users owned
    /// here, skipping those a snapshot already holds.
    fn apply_events(&mut self, symbol: usize, offset: u64, events: &[Event]);

    /// The users of these partitions.
    fn users_in(&self, partitions: &[u32]) -> Vec<UserId>;

    /// Per symbol, the offset after the last command whose results are applied here.
    fn applied_offsets(&self) -> Vec<(usize, u64)>;
}

impl HotState for Accounts {
    fn users_in(&self, partitions: &[u32]) -> Vec<UserId> {
        let mut users: Vec<UserId> = self.users.keys().copied().filter(|u| partitions.contains(&partition_of(*u))).collect();
        users.sort_unstable();
        users
    }

    fn applied_offsets(&self) -> Vec<(usize, u64)> {
        self.applied.iter().map(|(s, o)| (*s, *o)).collect()
    }

    /// One partition's state as snapshot bytes (the encoding of [`PartitionState`]),
    /// written straight from the live state: no copy of the accounts is made.
    fn partition_snapshot(&self, partition: u32, log_offset: u64, symbols: &[String], out: &mut Vec<u8>) {
        let mut users: Vec<(UserId, AccountRef<'_>)> = self
            .users
            .iter()
            .filter(|(u, _)| partition_of(**u) == partition)
            .map(|(u, a)| (*u, AccountRef(a)))
            .collect();
        users.sort_unstable_by_key(|(u, _)| *u);
        let mut transfers: Vec<(&String, &(UserId, Units))> =
            self.transfers.iter().filter(|(_, (u, _))| partition_of(*u) == partition).collect();
        transfers.sort_unstable();
        let applied: Vec<(&String, u64)> =
            self.applied.iter().filter_map(|(s, o)| symbols.get(*s).map(|n| (n, *o))).collect();
        let state = PartitionStateRef {
            log_offset,
            applied,
            next_number: self.next_number.get(&partition).copied().unwrap_or(1),
            users,
            transfers,
        };
        // Serializing into a Vec cannot fail.
        postcard::to_io(&state, out).map(|_| ()).unwrap_or_else(|e| unreachable!("postcard: {e}"));
    }

    /// Installs a partition's snapshot; its results floors make replay skip what it holds.
    fn install(&mut self, partition: u32, state: PartitionState, symbol_index: &dyn Fn(&str) -> Option<usize>) {
        self.next_number.insert(partition, state.next_number);
        for (name, offset) in state.applied {
            if let Some(s) = symbol_index(&name) {
                self.floors.insert((partition, s), offset);
            }
        }
        for (t, v) in state.transfers {
            self.transfers.insert(t, v);
        }
        for (user, account) in state.users {
            self.names.insert(account.name.clone(), user);
            self.users.insert(user, account);
        }
    }

    /// Records that a symbol's results up to `offset` (inclusive) have been applied here.
    fn mark_applied(&mut self, symbol: usize, offset: u64) {
        let next = self.applied.entry(symbol).or_insert(0);
        *next = (*next).max(offset + 1);
    }

    fn user(&self, user: UserId) -> Option<&Account> {
        self.users.get(&user)
    }

    /// Checks an API key of the form `<user hex>.<secret hex>` in constant time.
    fn authenticate(&self, key: &str) -> Option<UserId> {
        let user = user_of_key(key)?;
        let account = self.users.get(&user)?;
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        bool::from(hash.ct_eq(&account.key_hash)).then_some(user)
    }

    /// Prepares a new user: the record to log and the API key to hand out once.
    ///
    /// # Errors
    /// An invalid or taken name.
    fn create_user(&mut self, name: &str, secret: [u8; 24]) -> Result<(AccountRecord, String), AdminError> {
        let valid = (1..=64).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
        if !valid {
            return Err(AdminError::InvalidName);
        }
        if self.names.contains_key(name) {
            return Err(AdminError::UserExists);
        }
        let partition = partition_of_name(name);
        let number = self.next_number.entry(partition).or_insert(1);
        let user = UserId(u64::from(partition) << 32 | u64::from(*number));
        *number += 1;
        let key = format!("{:016x}.{}", user.0, hex::encode(secret));
        let key_hash = Sha256::digest(key.as_bytes()).into();
        // Reserve the name until the record is applied (or released on failure).
        self.names.insert(name.to_owned(), user);
        Ok((AccountRecord::UserCreated { name: name.to_owned(), user, key_hash }, key))
    }

    /// Forgets a prepared user whose record could not be logged.
    fn release_user(&mut self, name: &str) {
        if let Some(user) = self.names.get(name)
            && !self.users.contains_key(user)
        {
            self.names.remove(name);
        }
    }

    /// Prepares a deposit or withdrawal. A withdrawal takes effect at once (so no order
    /// can lock the same money meanwhile) and is undone by [`Self::release_transfer`].
    ///
    /// # Errors
    /// Unknown user, a reused transferId, or a withdrawal beyond `available`.
    fn transfer(&mut self, name: &str, transfer_id: &str, amount: Units, now: i64) -> Result<TransferPlan, AdminError> {
        let user = self.user_by_name(name).filter(|u| self.users.contains_key(u)).ok_or(AdminError::UnknownUser)?;
        if transfer_id.is_empty() || transfer_id.len() > 64 {
            return Err(AdminError::InvalidAmount);
        }
        if let Some(&(u, a)) = self.transfers.get(transfer_id) {
            return if (u, a) == (user, amount) { Ok(TransferPlan::Done(user)) } else { Err(AdminError::TransferConflict) };
        }
        if amount == 0 {
            return Err(AdminError::InvalidAmount);
        }
        let account = self.users.get_mut(&user).ok_or(AdminError::UnknownUser)?;
        if amount < 0 {
            if account.available() < -i128::from(amount) {
                return Err(AdminError::InsufficientBalance);
            }
            account.total += i128::from(amount);
        }
        self.transfers.insert(transfer_id.to_owned(), (user, amount));
        Ok(TransferPlan::Log(user, AccountRecord::Transfer { user, transfer_id: transfer_id.to_owned(), amount, timestamp: now }))
    }

    /// Undoes a prepared transfer whose record could not be logged.
    fn release_transfer(&mut self, record: &AccountRecord) {
        if let AccountRecord::Transfer { user, transfer_id, amount, .. } = record {
            self.transfers.remove(transfer_id);
            if *amount < 0
                && let Some(a) = self.users.get_mut(user)
            {
                a.total -= i128::from(*amount);
            }
        }
    }

    /// Applies a logged record. `live` says it was prepared by this process (a
    /// withdrawal already took effect); on replay it is false.
    fn apply(&mut self, record: &AccountRecord, live: bool) {
        match record {
            AccountRecord::UserCreated { name, user, key_hash } => {
                let partition = partition_of(*user);
                let next = self.next_number.entry(partition).or_insert(1);
                *next = (*next).max((user.0 as u32).saturating_add(1));
                self.names.insert(name.clone(), *user);
                self.users.insert(*user, Account { name: name.clone(), key_hash: *key_hash, ..Account::default() });
            }
            AccountRecord::Transfer { user, transfer_id, amount, .. } => {
                self.transfers.insert(transfer_id.clone(), (*user, *amount));
                if let Some(a) = self.users.get_mut(user)
                    && !(live && *amount < 0)
                {
                    a.total += i128::from(*amount);
                }
            }
            AccountRecord::Voided { .. } => {}
        }
    }

    /// The risk step: rate limit, idempotency, available check and margin lock, in one
    /// go. Returns the new order's number.
    ///
    /// # Errors
    /// [`RiskError`]; then nothing changed.
    fn reserve(&mut self, user: UserId, order: &mut NewOrder, symbol: usize, now_ms: i64) -> Result<(), RiskError> {
        let limit = self.rate_limit;
        let account = self.users.get_mut(&user).ok_or(RiskError::Unauthorized)?;
        if let Some(cid) = &order.client_order_id
            && let Some(&existing) = account.client_ids.get(cid)
        {
            return Err(RiskError::Duplicate(existing));
        }
        let window = now_ms.div_euclid(1000);
        if limit > 0 {
            if account.rate_window != window {
                account.rate_window = window;
                account.rate_count = 0;
            }
            if account.rate_count >= limit {
                return Err(RiskError::RateLimited);
            }
        }
        if account.available() < i128::from(order.locked_margin) {
            return Err(RiskError::InsufficientMargin);
        }
        account.rate_count += 1;
        account.locked += i128::from(order.locked_margin);
        self.order_counter += 1;
        order.id = OrderId(u64::from(partition_of(user)) << 52 | (self.order_counter & ((1 << 52) - 1)));
        order.user = user;
        Self::track(account, order, symbol, false);
        Ok(())
    }

    /// The order reached the log.
    fn confirm(&mut self, user: UserId, id: OrderId) {
        if let Some(view) = self.users.get_mut(&user).and_then(|a| a.orders.get_mut(&id)) {
            view.logged = true;
        }
    }

    /// The order could not be logged: unlock its margin and forget it.
    fn release(&mut self, order: &NewOrder) {
        if let Some(account) = self.users.get_mut(&order.user) {
            account.locked -= i128::from(order.locked_margin);
            account.orders.remove(&order.id);
            if let Some(cid) = order.client_order_id {
                account.client_ids.remove(&cid);
            }
        }
    }

    /// A logged order replayed at start: lock and track it as the risk step did.
    fn replay_order(&mut self, order: &NewOrder, symbol: usize, offset: u64) {
        if !self.fresh(order.user, symbol, offset) {
            return;
        }
        if let Some(account) = self.users.get_mut(&order.user) {
            account.locked += i128::from(order.locked_margin);
            Self::track(account, order, symbol, true);
        }
    }

    /// Applies a symbol's result events (of the command at `offset`) to the users owned
    /// here, skipping those a snapshot already holds.
    fn apply_events(&mut self, symbol: usize, offset: u64, events: &[Event]) {
        for event in events {
            match event {
                Event::OrderPlaced(p) if !self.fresh(p.user, symbol, offset) => {}
                Event::OrderCancelled(c) if !self.fresh(c.user, symbol, offset) => {}
                Event::OrderPlaced(p) => {
                    if let Some(view) = self.view(p.user, p.order_id) {
                        view.status = if p.filled > 0 { OrderStatus::PartiallyFilled } else { OrderStatus::New };
                        view.updated_at = p.timestamp;
                    }
                }
                Event::TradeExecuted(t) => {
                    for (update, side) in [(&t.buyer, Side::Buy), (&t.seller, Side::Sell)] {
                        if !self.fresh(update.user, symbol, offset) {
                            continue;
                        }
                        let maker = side != t.taker_side;
                        let Some(account) = self.users.get_mut(&update.user) else { continue };
                        account.total += i128::from(update.pnl) - i128::from(update.fee);
                        account.locked -= i128::from(update.margin_released);
                        account.positions.insert(symbol, update.position);
                        account.fills.push_front(Fill {
                            trade_seq: t.seq,
                            order_id: update.order_id,
                            symbol,
                            side,
                            price: t.price,
                            quantity: t.quantity,
                            fee: update.fee,
                            pnl: update.pnl,
                            maker,
                            time: t.timestamp,
                        });
                        account.fills.truncate(FILLS_KEPT);
                        let mut closed = false;
                        if let Some(view) = account.orders.get_mut(&update.order_id) {
                            view.filled += t.quantity;
                            view.filled_value += i128::from(t.price) * i128::from(t.quantity);
                            view.updated_at = t.timestamp;
                            if view.filled == view.quantity {
                                view.status = OrderStatus::Filled;
                                closed = true;
                            } else {
                                view.status = OrderStatus::PartiallyFilled;
                            }
                        }
                        if closed {
                            account.close(update.order_id);
                        }
                    }
                }
                Event::OrderCancelled(c) => {
                    let Some(account) = self.users.get_mut(&c.user) else { continue };
                    account.locked -= i128::from(c.released_margin);
                    if c.reason == CancelReason::DuplicateOrderId {
                        continue;
                    }
                    if let Some(view) = account.orders.get_mut(&c.order_id) {
                        view.status = if c.reason.is_rejection() { OrderStatus::Rejected } else { OrderStatus::Cancelled };
                        view.reason = Some(c.reason);
                        view.updated_at = c.timestamp;
                        account.close(c.order_id);
                    }
                }
            }
        }
    }
}


/// The user a key claims to be (checked by [`Accounts::authenticate`] on the owner).
pub fn user_of_key(key: &str) -> Option<UserId> {
    let (user, secret) = key.split_once('.')?;
    if user.len() != 16 || secret.len() != 48 {
        return None;
    }
    u64::from_str_radix(user, 16).ok().map(UserId)
}


#[cfg(test)]
mod tests;
