//! What one user has, as the ledger keeps it and the API shows it: balance, positions,
//! orders (open, and the latest closed ones) and the latest fills.

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::{CLOSED_ORDERS_KEPT};
use crate::engine::{CancelReason, ClientOrderId, NewOrder, OrderId, OrderType, PositionState, SelfTradePrevention, Side};

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
    /// Not logged, and the log may still have it (504): its lock and clientOrderId stay
    /// until the log says which (never released as an orphan).
    #[serde(skip)]
    pub in_doubt: bool,
    /// Snapshotted after the partition's state (see [`super::PartitionState::terms`]).
    #[serde(skip)]
    pub terms: OrderTerms,
    /// Margin an amendment's risk step locked for it, not yet settled: left out of
    /// snapshots, as an unlogged order's lock is.
    #[serde(skip)]
    pub amending: i64,
}

/// What an order was placed with beyond its price and quantity, for showing it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderTerms {
    pub leverage: u32,
    pub reduce_only: bool,
    pub stp: SelfTradePrevention,
    /// Good till (ms; 0: no expiry).
    pub good_till: i64,
}

impl OrderTerms {
    pub fn of(order: &NewOrder) -> Self {
        Self { leverage: order.leverage, reduce_only: order.reduce_only, stp: order.stp, good_till: order.good_till }
    }
}

impl OrderView {
    /// The price it may fill up to, in ticks: a LIMIT's price, a priced MARKET's band
    /// limit, 0 for a MARKET logged before MARKET orders were priced.
    pub fn limit_price(&self) -> i64 {
        match self.kind {
            OrderType::Limit { price, .. } | OrderType::MarketWithin { limit: price } | OrderType::Liquidation { price } => price,
            OrderType::Market => 0,
        }
    }

    /// The exchange's order closing a liquidated position: not the user's, not counted
    /// among their open orders.
    pub fn is_liquidation(&self) -> bool {
        matches!(self.kind, OrderType::Liquidation { .. })
    }

    fn unfilled(&self) -> i64 {
        self.quantity - self.filled
    }
}

/// A user's orders open (or not logged yet) on one symbol: how many, and how much they
/// could add to a position on each side if every one of them filled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenOn {
    pub count: u32,
    /// Unfilled lots, `[buy, sell]`.
    pub lots: [i128; 2],
    /// Unfilled lots × limit price (ticks·lots), `[buy, sell]`.
    pub value: [i128; 2],
}

impl OpenOn {
    fn add(&mut self, side: Side, lots: i64, price: i64, sign: i128) {
        let i = side_index(side);
        self.lots[i] += sign * i128::from(lots);
        self.value[i] += sign * i128::from(lots) * i128::from(price);
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Buy => 0,
        Side::Sell => 1,
    }
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
            in_doubt: false,
            terms: OrderTerms::of(order),
            amending: 0,
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
    pub fee: i128,
    pub pnl: i128,
    pub maker: bool,
    pub time: i64,
}

/// What moved a user's money (`GET /v1/income`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IncomeKind {
    RealizedPnl,
    Commission,
    FundingFee,
    Liquidation,
    Transfer,
}

impl IncomeKind {
    pub const ALL: [Self; 5] = [Self::RealizedPnl, Self::Commission, Self::FundingFee, Self::Liquidation, Self::Transfer];

    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RealizedPnl => "REALIZED_PNL",
            Self::Commission => "COMMISSION",
            Self::FundingFee => "FUNDING_FEE",
            Self::Liquidation => "LIQUIDATION",
            Self::Transfer => "TRANSFER",
        }
    }
}

/// One movement of a user's money, in units (negative: paid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Income {
    pub symbol: Option<usize>,
    pub kind: IncomeKind,
    pub amount: i128,
    pub time: i64,
    /// The trade's sequence number on its symbol, for PnL and commissions.
    pub trade_seq: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    pub(super) key_hash: [u8; 32],
    /// Deposits minus withdrawals plus realized PnL minus fees.
    pub total: i128,
    pub locked: i128,
    pub positions: BTreeMap<usize, PositionState>,
    pub orders: FxHashMap<OrderId, OrderView>,
    pub(super) client_ids: FxHashMap<ClientOrderId, OrderId>,
    pub(super) closed: VecDeque<OrderId>,
    pub fills: VecDeque<Fill>,
    pub(super) rate_window: i64,
    pub(super) rate_count: u32,
    /// Per symbol, the orders of `orders` open or not logged yet (the cap of
    /// `EXCHANGE_MAX_OPEN_ORDERS`, and the position limits). Not in snapshots: counted
    /// again when one is loaded.
    #[serde(skip)]
    pub(super) open_on: FxHashMap<usize, OpenOn>,
    /// Money movements, newest first, at most [`super::INCOME_KEPT`]. Snapshotted after
    /// the partition's state (see [`super::PartitionState::income`]).
    #[serde(skip)]
    pub income: VecDeque<Income>,
}

impl Account {
    pub fn available(&self) -> i128 {
        self.total - self.locked
    }

    /// Records a movement of money (nothing for a zero amount).
    pub(super) fn record(&mut self, symbol: Option<usize>, kind: IncomeKind, amount: i128, time: i64, trade_seq: Option<u64>) {
        if amount != 0 {
            self.income.push_front(Income { symbol, kind, amount, time, trade_seq });
            self.income.truncate(super::INCOME_KEPT);
        }
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

    /// The open orders and the latest closed ones ([`CLOSED_ORDERS_KEPT`]), oldest first.
    pub fn all_orders(&self, symbol: Option<usize>) -> Vec<&OrderView> {
        let mut all: Vec<&OrderView> = self.orders.values().filter(|o| o.logged && symbol.is_none_or(|s| s == o.symbol)).collect();
        all.sort_by_key(|o| (o.created_at, o.id));
        all
    }

    pub fn order(&self, id: OrderId) -> Option<&OrderView> {
        self.orders.get(&id).filter(|o| o.logged)
    }

    pub fn order_by_client_id(&self, cid: &ClientOrderId) -> Option<&OrderView> {
        self.client_ids.get(cid).and_then(|id| self.order(*id))
    }

    /// Counts one request in the current second's window (`limit` 0: no limit).
    pub(super) fn count_request(&mut self, limit: u32, now_ms: i64) -> Result<(), super::RiskError> {
        if limit == 0 {
            return Ok(());
        }
        let window = now_ms.div_euclid(1000);
        if self.rate_window != window {
            self.rate_window = window;
            self.rate_count = 0;
        }
        if self.rate_count >= limit {
            return Err(super::RiskError::RateLimited);
        }
        self.rate_count += 1;
        Ok(())
    }

    /// Orders open (or not logged yet) on `symbol`.
    pub fn open_on(&self, symbol: usize) -> OpenOn {
        self.open_on.get(&symbol).copied().unwrap_or_default()
    }

    /// Counts `open_on` again from the orders (after a snapshot is loaded).
    pub(super) fn count_open(&mut self) {
        self.open_on.clear();
        let open: Vec<(usize, Side, i64, i64)> = self
            .orders
            .values()
            .filter(|o| o.status.is_open() || !o.logged)
            .map(|o| (o.symbol, o.side, o.unfilled(), o.limit_price()))
            .collect();
        for (symbol, side, lots, price) in open {
            let on = self.open_on.entry(symbol).or_default();
            on.count += 1;
            on.add(side, lots, price, 1);
        }
    }

    /// A new order is open (or on its way to the log).
    pub(super) fn track_open(&mut self, view: &OrderView) {
        if view.is_liquidation() {
            return;
        }
        let on = self.open_on.entry(view.symbol).or_default();
        on.count += 1;
        on.add(view.side, view.unfilled(), view.limit_price(), 1);
    }

    /// `lots` of an open order filled.
    pub(super) fn filled_open(&mut self, view: &OrderView, lots: i64) {
        if view.is_liquidation() {
            return;
        }
        if let Some(on) = self.open_on.get_mut(&view.symbol) {
            on.add(view.side, lots, view.limit_price(), -1);
        }
    }

    /// An order no longer open: `open_on` forgets it.
    pub(super) fn forget_open(&mut self, view: &OrderView) {
        if view.is_liquidation() {
            return;
        }
        if let Some(on) = self.open_on.get_mut(&view.symbol) {
            on.count = on.count.saturating_sub(1);
            on.add(view.side, view.unfilled(), view.limit_price(), -1);
        }
    }

    /// An order closed: it joins the kept closed orders, and the oldest of those past
    /// [`CLOSED_ORDERS_KEPT`] are forgotten. Returns those.
    pub(super) fn close(&mut self, id: OrderId) -> Vec<(OrderId, Option<ClientOrderId>)> {
        if let Some(view) = self.orders.get(&id).cloned() {
            self.forget_open(&view);
        }
        self.closed.push_back(id);
        let mut forgotten = Vec::new();
        while self.closed.len() > CLOSED_ORDERS_KEPT {
            if let Some(old) = self.closed.pop_front()
                && let Some(view) = self.orders.remove(&old)
            {
                if let Some(cid) = view.client_order_id {
                    self.client_ids.remove(&cid);
                }
                forgotten.push((old, view.client_order_id));
            }
        }
        forgotten
    }
}
