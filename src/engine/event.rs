//! What the engine reports: the result events of the event log.
//!
//! Each event carries the symbol's sequence number; its id (and a trade's id) is derived
//! from that number by [`crate::ids`], so a replay mints the same ids.

use serde::{Deserialize, Serialize};

use super::command::{ClientOrderId, OrderId, Side, UserId};
use super::units::{Lots, Ticks, Units};

// Trades are the big variant and also the common one; events go into a reused buffer,
// so boxing them would add an allocation per trade to save space nobody pays for.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The order rests in the book after matching (possibly partly filled).
    OrderPlaced(Placed),
    TradeExecuted(Trade),
    /// The order left the book unfilled or partly filled, or was rejected on arrival.
    OrderCancelled(Cancelled),
}

impl Event {
    pub fn seq(&self) -> u64 {
        match self {
            Event::OrderPlaced(e) => e.seq,
            Event::TradeExecuted(e) => e.seq,
            Event::OrderCancelled(e) => e.seq,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub seq: u64,
    pub order_id: OrderId,
    pub user: UserId,
    pub side: Side,
    pub price: Ticks,
    pub quantity: Lots,
    pub filled: Lots,
    /// Margin still locked by the resting remainder.
    pub locked_margin: Units,
    pub leverage: u32,
    pub reduce_only: bool,
    pub client_order_id: Option<ClientOrderId>,
    pub timestamp: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trade {
    pub seq: u64,
    /// Always the resting (maker) order's price.
    pub price: Ticks,
    pub quantity: Lots,
    pub taker_side: Side,
    pub buyer: FillUpdate,
    pub seller: FillUpdate,
    pub timestamp: i64,
}

impl Trade {
    pub fn maker(&self) -> &FillUpdate {
        if self.taker_side == Side::Buy { &self.seller } else { &self.buyer }
    }

    pub fn taker(&self) -> &FillUpdate {
        if self.taker_side == Side::Buy { &self.buyer } else { &self.seller }
    }
}

/// What one fill did to one side's account (`buyerUpdate` / `sellerUpdate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FillUpdate {
    pub user: UserId,
    pub order_id: OrderId,
    /// Realized PnL of the part of the fill that reduced a position. Money that comes
    /// out of a position is `i128` like the position, so no fill can overflow it.
    pub pnl: i128,
    /// Fee charged (negative: a rebate), rounded up.
    pub fee: i128,
    /// Margin that left the locks: the order's share not needed by the position, plus
    /// the position margin of what was closed. The account's locked balance falls by this.
    pub margin_released: i128,
    /// The position after the fill.
    pub position: PositionState,
}

/// A one-way (net) position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionState {
    /// Signed size in lots: positive long, negative short.
    pub size: i128,
    /// Exact entry notional of the open size, in units (entry price = cost ÷ size).
    pub cost: i128,
    /// Margin held by the position, in units.
    pub margin: i128,
    /// Realized PnL accumulated on this symbol (fees excluded), in units.
    pub realized_pnl: i128,
    /// Fees paid on this symbol (negative: rebates received), in units. With
    /// `realized_pnl` this makes an account's balance a function of the logs alone:
    /// deposits + Σ over symbols of (realized PnL − fees).
    pub fees: i128,
    pub leverage: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    pub seq: u64,
    pub order_id: OrderId,
    pub user: UserId,
    pub side: Side,
    pub quantity: Lots,
    pub filled: Lots,
    /// Margin returned to the account's available balance.
    pub released_margin: Units,
    pub reason: CancelReason,
    pub timestamp: i64,
}

/// Why an order ended without filling completely.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CancelReason {
    /// The owner asked.
    UserRequest,
    /// The unfilled rest of an IOC or MARKET order.
    Unfilled,
    /// A resting reduce-only order that would now increase or flip the position.
    ReduceOnly,
    /// POST_ONLY order that would have matched on arrival.
    WouldTake,
    /// FOK order that could not fill entirely.
    FokUnfillable,
    /// MARKET order with no price to bound it: no trade yet and an empty opposite side.
    NoLiquidity,
    /// reduceOnly order that would increase or flip the position.
    ReduceOnlyRejected,
    DuplicateClientOrderId,
    DuplicateOrderId,
    /// Fields outside what the engine accepts (the edge should have caught it).
    InvalidOrder,
}

impl CancelReason {
    /// Rejected on arrival (status `REJECTED`) rather than cancelled after being accepted.
    pub fn is_rejection(self) -> bool {
        !matches!(self, Self::UserRequest | Self::Unfilled | Self::ReduceOnly)
    }

    /// The API's SCREAMING_SNAKE_CASE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserRequest => "USER_REQUEST",
            Self::Unfilled => "UNFILLED",
            Self::ReduceOnly => "REDUCE_ONLY",
            Self::WouldTake => "WOULD_TAKE",
            Self::FokUnfillable => "FOK_UNFILLABLE",
            Self::NoLiquidity => "NO_LIQUIDITY",
            Self::ReduceOnlyRejected => "REDUCE_ONLY_REJECTED",
            Self::DuplicateClientOrderId => "DUPLICATE_CLIENT_ORDER_ID",
            Self::DuplicateOrderId => "DUPLICATE_ORDER_ID",
            Self::InvalidOrder => "INVALID_ORDER",
        }
    }
}
