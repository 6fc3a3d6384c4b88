//! Accounts: users, keys, balances, margin locks, and each user's orders and fills.
//!
//! Accounts are split into [`PARTITIONS`] partitions by user name; each partition is
//! owned by one shard (`partition % shards`) and reached by message, the way
//! exchange-core shards its risk engine by user. The owner is the only writer of its
//! users' balances, so "check available, lock margin, count the rate limit" is one step
//! on one core with no lock at all, even when the user trades symbols on other cores.
//!
//! Balances are a function of the logs: `total` = transfers (from the partition's own
//! log) + Σ over symbols of (realized PnL − fees + funding − liquidated margin left to
//! the insurance fund) (from the symbol logs), and `locked` = Σ open-order locks + Σ
//! position margin. The shard keeps them up to date as results
//! arrive, and rebuilds them at start by replaying the logs.
//!
//! Nothing here does I/O; the shard logs what [`Accounts`] prepares and applies it once
//! it is durable. The types of one user's state are in `account.rs`; the ledger's
//! changes (the risk step, records and results applied) in `ledger.rs`.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::engine::units::Units;

mod account;
mod ledger;
pub mod secret;
mod snapshot;
pub use account::{Account, Fill, Income, IncomeKind, OpenOn, OrderStatus, OrderTerms, OrderView};
use crate::engine::{ClientOrderId, Event, NewOrder, OrderId, UserId};

/// Account partitions. Part of the data layout: changing it re-homes every user.
pub const PARTITIONS: u32 = 64;
/// The bits of an order id below its partition: the number [`Accounts`] counts up.
pub const ORDER_NUMBER_MASK: u64 = (1 << 52) - 1;
/// Closed orders kept per user for lookups and clientOrderId idempotency.
pub const CLOSED_ORDERS_KEPT: usize = 500;
/// Fills kept per user in hot state for `/v1/fills` (older ones belong to cold storage).
pub const FILLS_KEPT: usize = 500;
/// Money movements kept per user for `/v1/income`.
pub const INCOME_KEPT: usize = 1_000;

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

/// The money of the users of some partitions, summed (`GET /admin/v1/summary`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Net transfers: deposits less withdrawals.
    pub deposits: i128,
    /// Σ `total`.
    pub balances: i128,
    /// Σ fees paid (net of maker rebates), over every position ever held.
    pub fees: i128,
    /// Per symbol: Σ position size and Σ signed cost (long +, short −), which with one
    /// price give the Σ of unrealized PnL.
    pub positions: Vec<(usize, i128, i128)>,
}

impl Totals {
    pub fn add(&mut self, other: Totals) {
        self.deposits += other.deposits;
        self.balances += other.balances;
        self.fees += other.fees;
        for (symbol, size, cost) in other.positions {
            match self.positions.iter_mut().find(|(s, _, _)| *s == symbol) {
                Some(p) => {
                    p.1 += size;
                    p.2 += cost;
                }
                None => self.positions.push((symbol, size, cost)),
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
    /// The user has the most open orders allowed on the symbol.
    TooManyOpenOrders,
    /// Filled, the order and the user's open orders could take the position past the
    /// symbol's limit in size or in value.
    PositionLimit,
}

/// Largest `total` an account may reach by deposits: 10^12 USDT. With the position
/// limits it keeps every amount far inside `i128` and a decimal's 28 digits.
pub const MAX_BALANCE: i128 = 1_000_000_000_000 * crate::engine::units::UNITS_PER_USDT as i128;

/// How large a user's position on one symbol may grow, counting every open order on its
/// side as filled: checked by the risk step, before the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PositionLimit {
    pub max_lots: i128,
    /// Largest value (Σ lots × price), in ticks·lots.
    pub max_value: i128,
    /// Money units of one tick × one lot: a position's cost over this is its value.
    pub units_per_tick_lot: i128,
}

impl PositionLimit {
    pub fn of(spec: &crate::engine::SymbolSpec) -> Self {
        let units_per_tick_lot = i128::from(spec.units_per_tick_lot);
        Self {
            max_lots: i128::from(spec.max_position),
            max_value: i128::from(spec.max_position_notional) / units_per_tick_lot,
            units_per_tick_lot,
        }
    }
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
    /// The deposit would take the balance past [`MAX_BALANCE`].
    BalanceLimit,
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
    /// Open orders allowed per user and symbol.
    max_open_orders: u32,
    /// Per symbol index; a symbol past the end has none.
    position_limits: Vec<PositionLimit>,
    /// Closed orders the ledger stopped keeping since the last [`HotState::take_forgotten`],
    /// when someone takes them (Redis deletes their keys); `None`: not collected.
    forgotten: Option<Vec<(UserId, OrderId, Option<ClientOrderId>)>>,
    /// Order numbers are `partition << 52 | counter`. The counter starts where
    /// [`crate::numbering`] says this run may, and above every order a snapshot or the
    /// log replayed holds, so numbers minted after a restart never repeat earlier ones.
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
    /// Each user's money movements. Encoded after the rest (a second postcard value), so
    /// a snapshot written before they existed still reads, with none.
    #[serde(skip)]
    pub income: Vec<(UserId, Vec<Income>)>,
    /// Each order's [`OrderTerms`], encoded after the income (absent in older snapshots:
    /// their orders show default terms).
    #[serde(skip)]
    pub terms: Vec<(UserId, Vec<(OrderId, OrderTerms)>)>,
}

impl Accounts {
    pub fn new(rate_limit: u32, max_open_orders: u32, first_number: u64) -> Self {
        Self {
            max_open_orders,
            users: FxHashMap::default(),
            names: FxHashMap::default(),
            next_number: FxHashMap::default(),
            transfers: FxHashMap::default(),
            rate_limit,
            position_limits: Vec::new(),
            forgotten: None,
            order_counter: first_number,
            applied: FxHashMap::default(),
            floors: FxHashMap::default(),
        }
    }



    /// The position limits, per symbol index.
    #[must_use]
    pub fn with_position_limits(mut self, limits: Vec<PositionLimit>) -> Self {
        self.position_limits = limits;
        self
    }

    /// Collects the closed orders the ledger forgets, for [`HotState::take_forgotten`].
    #[must_use]
    pub fn collecting_forgotten(mut self) -> Self {
        self.forgotten = Some(Vec::new());
        self
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
        let view = OrderView::new(order, symbol, logged);
        account.track_open(&view);
        account.orders.insert(order.id, view);
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
    /// [`RiskError`]; then nothing changed but the rate limit's count, which counts
    /// every order request once its key is known (API.md, "Limits"). A request is
    /// counted at `now_ms`; an order the exchange places for the user (a triggered
    /// conditional order: `None`) is not.
    fn reserve(&mut self, user: UserId, order: &mut NewOrder, symbol: usize, now_ms: Option<i64>) -> Result<(), RiskError>;

    /// Counts a cancel request against the user's rate limit (orders are counted by
    /// [`Self::reserve`]).
    ///
    /// # Errors
    /// [`RiskError::RateLimited`] past the limit; [`RiskError::Unauthorized`] for no user.
    fn count_request(&mut self, user: UserId, now_ms: i64) -> Result<(), RiskError>;

    /// The order reached the log.
    fn confirm(&mut self, user: UserId, id: OrderId);

    /// The log did not confirm the order and may still have it (a 504): its lock and
    /// clientOrderId are kept, out of [`Self::release_orphans`]' reach, until the
    /// symbol's stream has voided it in the log and [`Self::release`]s it (or a restart's
    /// replay finds out whether it is there).
    fn hold(&mut self, user: UserId, id: OrderId);

    /// The order could not be logged: unlock its margin and forget it.
    fn release(&mut self, order: &NewOrder);

    /// The risk step of an amendment: rate limit, and `added` (what the amended order
    /// must lock beyond its lock now) locked from the available balance, held on the
    /// order as not yet logged until [`Self::settle_amend`].
    ///
    /// # Errors
    /// [`RiskError`]; then nothing changed. `Unauthorized` also for an order that is not
    /// an open, logged order of the user's.
    fn reserve_amend(&mut self, user: UserId, id: OrderId, added: Units, now_ms: i64) -> Result<(), RiskError>;

    /// The amendment's command was executed (its event moved the lock) or will never be:
    /// the reservation ends.
    fn settle_amend(&mut self, user: UserId, id: OrderId, added: Units);

    /// Releases the margin of orders reserved before `before_ms` and still not logged:
    /// no request is waiting for them any more (every path to the log ends in a confirm
    /// or a release well within that time), so their locks are orphaned. Returns them.
    fn release_orphans(&mut self, partitions: &[u32], before_ms: i64) -> Vec<(UserId, OrderView)>;

    /// A logged order replayed at start: lock and track it as the risk step did.
    fn replay_order(&mut self, order: &NewOrder, symbol: usize, offset: u64);

    /// Applies a symbol's result events (of the command at `offset`) to the users owned
    /// here, skipping those a snapshot already holds.
    fn apply_events(&mut self, symbol: usize, offset: u64, events: &[Event]);

    /// The users of these partitions.
    fn users_in(&self, partitions: &[u32]) -> Vec<UserId>;

    /// Per symbol, the offset after the last command whose results are applied here.
    fn applied_offsets(&self) -> Vec<(usize, u64)>;

    /// The money of the users of these partitions, summed.
    fn totals(&self, partitions: &[u32]) -> Totals;

    /// The closed orders forgotten since the last call (only when collecting them).
    fn take_forgotten(&mut self) -> Vec<(UserId, OrderId, Option<ClientOrderId>)>;
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
