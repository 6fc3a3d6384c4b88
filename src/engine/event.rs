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
    /// An index price was posted and the mark price computed from it.
    PriceUpdated(PriceUpdate),
    /// A position is being liquidated: its `LIQUIDATION` order opens. Its trades (against
    /// the book, then auto-deleveraging) follow, then [`Event::LiquidationEnded`].
    LiquidationStarted(LiquidationOrder),
    LiquidationEnded(Liquidated),
    /// One position's funding payment (paid: negative, received: positive).
    FundingPaid(FundingPayment),
    /// A funding round is settled; its payments precede it.
    FundingSettled(FundingRound),
    /// A resting order's price or quantity changed, or the change was refused.
    OrderAmended(Amended),
    /// A conditional order was accepted, triggered, cancelled, or became an order.
    Conditional(ConditionalUpdate),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConditionalUpdate {
    pub seq: u64,
    pub conditional: super::conditional::Conditional,
}

impl Event {
    pub fn seq(&self) -> u64 {
        match self {
            Event::OrderPlaced(e) => e.seq,
            Event::TradeExecuted(e) => e.seq,
            Event::OrderCancelled(e) => e.seq,
            Event::PriceUpdated(e) => e.seq,
            Event::LiquidationStarted(e) => e.seq,
            Event::LiquidationEnded(e) => e.seq,
            Event::FundingPaid(e) => e.seq,
            Event::FundingSettled(e) => e.seq,
            Event::OrderAmended(e) => e.seq,
            Event::Conditional(e) => e.seq,
        }
    }

    /// The user whose account the event is about, if it is about one (a trade is about two).
    pub fn users(&self) -> [Option<UserId>; 2] {
        match self {
            Event::OrderPlaced(e) => [Some(e.user), None],
            Event::OrderCancelled(e) => [Some(e.user), None],
            Event::OrderAmended(e) => [Some(e.user), None],
            Event::Conditional(e) => [Some(e.conditional.order.user), None],
            Event::TradeExecuted(t) => [Some(t.buyer.user), Some(t.seller.user)],
            Event::LiquidationStarted(e) => [Some(e.user), None],
            Event::LiquidationEnded(e) => [Some(e.user), None],
            Event::FundingPaid(e) => [Some(e.user), None],
            Event::PriceUpdated(_) | Event::FundingSettled(_) => [None, None],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceUpdate {
    pub seq: u64,
    pub index: Ticks,
    pub mark: Ticks,
    pub timestamp: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiquidationOrder {
    pub seq: u64,
    pub order_id: OrderId,
    pub user: UserId,
    pub side: Side,
    pub quantity: Lots,
    /// The bankruptcy price: the order fills no worse than it.
    pub price: Ticks,
    pub mark: Ticks,
    pub timestamp: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liquidated {
    pub seq: u64,
    pub order_id: OrderId,
    pub user: UserId,
    pub side: Side,
    pub quantity: Lots,
    /// Filled against the book.
    pub filled: Lots,
    /// Closed against opposite positions (auto-deleveraging).
    pub deleveraged: Lots,
    /// The position's margin left after the close, taken into the insurance fund
    /// (negative: a shortfall the fund paid). The account's total falls by it.
    pub to_fund: i128,
    /// The insurance fund afterwards.
    pub fund: i128,
    pub timestamp: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FundingPayment {
    pub seq: u64,
    pub user: UserId,
    /// Received (positive) or paid (negative); the account's total moves by it.
    pub amount: i128,
    /// What the payment took out of the position's margin (≤ 0); `locked` moves by it.
    pub margin_change: i128,
    /// The rate, in parts of [`super::units::RATE_ONE`].
    pub rate: i64,
    pub mark: Ticks,
    pub position: PositionState,
    pub timestamp: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FundingRound {
    pub seq: u64,
    pub rate: i64,
    /// `None` before the first index price: nothing is paid.
    pub mark: Option<Ticks>,
    pub positions: u64,
    /// Rounding residue taken into the insurance fund.
    pub to_fund: i128,
    pub fund: i128,
    pub timestamp: i64,
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
    /// Auto-deleveraging: a liquidated position closed against an opposite one at its
    /// bankruptcy price, not a trade in the book (no fee, not a public trade).
    pub adl: bool,
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

/// An amendment ([`super::Command::Amend`]). Refused, nothing changed but the release of
/// the added margin, and the fields are the order's as it is (zero when it is not open).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amended {
    pub seq: u64,
    pub order_id: OrderId,
    pub user: UserId,
    pub side: Side,
    pub price: Ticks,
    /// Total quantity, filled included.
    pub quantity: Lots,
    pub filled: Lots,
    /// What the resting order locks afterwards.
    pub locked_margin: Units,
    /// What the risk step locked for the amendment (the command's).
    pub added_margin: Units,
    /// Back to the available balance: the old lock and the added margin less the new
    /// lock (refused: the added margin).
    pub released_margin: Units,
    /// Same price, smaller quantity: it kept its place in the queue.
    pub kept_priority: bool,
    pub refused: Option<AmendRefusal>,
    pub timestamp: i64,
}

/// Why an amendment changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AmendRefusal {
    /// Not a resting order of the user's (filled, cancelled, unknown).
    NotOpen,
    /// The price and quantity it already has.
    Unchanged,
    /// A price or quantity the engine does not take (a quantity must exceed the filled).
    Invalid,
    /// A new price outside the band around the mark.
    PriceOutOfBand,
    /// The new price meets the other side: an amendment never takes liquidity.
    WouldTake,
    /// The new lock is more than the old one and the added margin.
    InsufficientMargin,
}

impl AmendRefusal {
    pub const ALL: [Self; 6] = [Self::NotOpen, Self::Unchanged, Self::Invalid, Self::PriceOutOfBand, Self::WouldTake, Self::InsufficientMargin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotOpen => "NOT_OPEN",
            Self::Unchanged => "UNCHANGED",
            Self::Invalid => "INVALID_ORDER",
            Self::PriceOutOfBand => "PRICE_OUT_OF_BAND",
            Self::WouldTake => "WOULD_TAKE",
            Self::InsufficientMargin => "INSUFFICIENT_MARGIN",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }
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
    /// The owner's position on the symbol is being liquidated.
    Liquidation,
    /// It would have closed a position at a loss beyond the position's margin.
    BankruptcyPrice,
    /// Self-trade prevention (`EXPIRE_TAKER`): the taker's next fill would have met a
    /// resting order of its own user; its remainder is cancelled.
    SelfTrade,
    /// A LIMIT price outside the symbol's band around the mark price.
    PriceOutOfBand,
    /// Its next fill would have cost more than its lock pays (the book moved after the
    /// risk step priced it): the fill stops where the money does.
    InsufficientMargin,
    /// Its owner's countdown (dead man's switch) on the symbol ran out.
    Countdown,
    /// Good till a date that came (`GTD`).
    Expired,
}

impl CancelReason {
    /// Rejected on arrival (status `REJECTED`) rather than cancelled after being accepted.
    pub fn is_rejection(self) -> bool {
        !matches!(
            self,
            Self::UserRequest
                | Self::Unfilled
                | Self::ReduceOnly
                | Self::Liquidation
                | Self::BankruptcyPrice
                | Self::SelfTrade
                | Self::InsufficientMargin
                | Self::Countdown
                | Self::Expired
        )
    }

    /// Every reason, for readers that list them (cold storage's rejections).
    pub const ALL: [Self; 17] = [
        Self::UserRequest,
        Self::Unfilled,
        Self::ReduceOnly,
        Self::WouldTake,
        Self::FokUnfillable,
        Self::NoLiquidity,
        Self::ReduceOnlyRejected,
        Self::DuplicateClientOrderId,
        Self::DuplicateOrderId,
        Self::InvalidOrder,
        Self::Liquidation,
        Self::BankruptcyPrice,
        Self::SelfTrade,
        Self::PriceOutOfBand,
        Self::InsufficientMargin,
        Self::Countdown,
        Self::Expired,
    ];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
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
            Self::Liquidation => "LIQUIDATION",
            Self::BankruptcyPrice => "BANKRUPTCY_PRICE",
            Self::SelfTrade => "SELF_TRADE",
            Self::PriceOutOfBand => "PRICE_OUT_OF_BAND",
            Self::InsufficientMargin => "INSUFFICIENT_MARGIN",
            Self::Countdown => "COUNTDOWN",
            Self::Expired => "EXPIRED",
        }
    }
}
