//! One symbol's market: its book, its positions, its sequence. `execute(command) → events`.
//!
//! Everything here is a function of the state and the next command: no clock (timestamps
//! come in the command), no I/O, no randomness, no iteration over hash maps that could
//! leak into the output. Replaying the same commands yields the same events, byte for byte.
//!
//! Every check that can refuse an order runs before anything is changed, so a refusal is
//! one `OrderCancelled` event (releasing the order's whole lock) and nothing else.

use rustc_hash::FxHashMap;

use super::book::{Book, Resting};
use super::command::{ClientOrderId, Command, NewOrder, OrderId, OrderType, SelfTradePrevention, Side, TimeInForce, UserId};
use super::event::{CancelReason, Cancelled, Event, FillUpdate, Placed, PositionState, Trade};
use super::perp::Perp;
use super::position::{apply_fill, reducible, FillEffect, Role};
use super::symbol::SymbolSpec;
use super::units::{div_floor, narrow, Lots, Ticks, Units, MAX_LOTS, MAX_NOTIONAL, MAX_TICKS};

/// A command that changed nothing and produced no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The order is not resting in the book for this user (unknown, closed, or another's).
    #[error("order is not open")]
    OrderNotOpen,
    /// A funding time at or before the last one settled.
    #[error("funding already settled for this time")]
    FundingSettled,
    /// The index price is older than the symbol's `index_max_age_secs`: no funding.
    #[error("the index price is stale")]
    IndexStale,
    /// A leverage setting outside `1..=max_leverage`.
    #[error("leverage is outside 1 to the symbol's maximum")]
    InvalidLeverage,
    /// A countdown below zero or past [`MAX_COUNTDOWN_MS`].
    #[error("countdown is outside 0 to a day")]
    InvalidCountdown,
    /// A conditional order not accepted.
    #[error("conditional order refused: {0:?}")]
    Conditional(super::conditional::ConditionalRefusal),
}

/// Why an order cannot be priced for the risk step; nothing is logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("price is outside the band around the mark price")]
    OutOfBand,
    #[error("order value is too large")]
    TooLarge,
}

/// One side of a fill, worked out before anything changes: the position it leaves and
/// what it does to the account's money.
#[derive(Clone, Copy, Debug)]
pub(super) struct Leg {
    pub position: PositionState,
    pub effect: FillEffect,
    /// The fill reduced a position that was open against it.
    pub closes: bool,
    /// The fill opened or added to a position.
    pub opens: bool,
}

impl Leg {
    /// What the fill moves into (positive) or takes out of (negative) the account's
    /// available balance: the locks it frees, less the fee, plus the realized PnL.
    pub fn available_change(&self) -> i128 {
        self.effect.margin_released + self.effect.pnl - self.effect.fee
    }
}

#[derive(Clone, Debug)]
pub struct Market {
    pub(super) spec: SymbolSpec,
    pub(super) book: Book,
    pub(super) positions: FxHashMap<UserId, PositionState>,
    /// Client ids of resting orders, both ways.
    pub(super) client_ids: FxHashMap<(UserId, ClientOrderId), OrderId>,
    pub(super) client_id_of: FxHashMap<OrderId, ClientOrderId>,
    pub(super) seq: u64,
    pub(super) last_price: Option<Ticks>,
    pub(super) perp: Perp,
    /// Users' leverage settings ([`Command::SetLeverage`]).
    pub(super) leverage: FxHashMap<UserId, u32>,
    /// Users' countdown deadlines ([`Command::Countdown`]), ms since the epoch.
    pub(super) countdowns: FxHashMap<UserId, i64>,
    /// Resting orders' expiry times ([`NewOrder::good_till`]).
    pub(super) expiries: FxHashMap<OrderId, i64>,
    /// Conditional orders ([`super::conditional`]).
    pub(super) conditionals: super::conditional::Conditionals,
}

/// The longest countdown a user may set: a day.
pub const MAX_COUNTDOWN_MS: i64 = 86_400_000;

impl Market {
    pub fn new(spec: SymbolSpec) -> Self {
        Self {
            spec,
            book: Book::default(),
            positions: FxHashMap::default(),
            client_ids: FxHashMap::default(),
            client_id_of: FxHashMap::default(),
            seq: 0,
            last_price: None,
            perp: Perp::default(),
            leverage: FxHashMap::default(),
            countdowns: FxHashMap::default(),
            expiries: FxHashMap::default(),
            conditionals: super::conditional::Conditionals::default(),
        }
    }

    /// The earliest expiry of a resting order, if one has one.
    pub fn next_expiry(&self) -> Option<i64> {
        self.expiries.values().min().copied()
    }

    /// The earliest countdown deadline, if any user has one.
    pub fn next_countdown(&self) -> Option<i64> {
        self.countdowns.values().min().copied()
    }

    /// The leverage `user`'s orders take when they name none: their setting, or
    /// [`super::command::DEFAULT_LEVERAGE_SETTING`] (at most the symbol's maximum).
    pub fn leverage_setting(&self, user: UserId) -> u32 {
        self.leverage.get(&user).copied().unwrap_or(super::command::DEFAULT_LEVERAGE_SETTING.min(self.spec.max_leverage))
    }

    pub fn conditionals(&self) -> &super::conditional::Conditionals {
        &self.conditionals
    }

    /// The price a conditional order watching `working` compares with its trigger now.
    pub fn working_price(&self, working: super::conditional::WorkingPrice) -> Option<Ticks> {
        match working {
            super::conditional::WorkingPrice::Last => self.last_price,
            super::conditional::WorkingPrice::Mark => self.perp.mark,
        }
    }

    pub fn spec(&self) -> &SymbolSpec {
        &self.spec
    }

    pub fn book(&self) -> &Book {
        &self.book
    }

    /// Sequence number of the last event produced.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn last_price(&self) -> Option<Ticks> {
        self.last_price
    }

    pub fn position(&self, user: UserId) -> PositionState {
        self.positions.get(&user).copied().unwrap_or_default()
    }

    /// Positions in user order (deterministic).
    pub fn positions(&self) -> Vec<(UserId, PositionState)> {
        let mut all: Vec<_> = self.positions.iter().map(|(u, p)| (*u, *p)).collect();
        all.sort_unstable_by_key(|(u, _)| *u);
        all
    }

    pub fn client_order_id(&self, id: OrderId) -> Option<ClientOrderId> {
        self.client_id_of.get(&id).copied()
    }

    /// The price a MARKET order on `side` may reach right now: the protection band around
    /// the last trade, or around the best opposite price before the first trade.
    /// `None` when there is neither. The risk step locks margin at this price.
    pub fn market_limit(&self, side: Side) -> Option<Ticks> {
        let reference = self.last_price.or_else(|| self.book.best_price(side.opposite()))?;
        Some(self.spec.band_limit(reference, side == Side::Buy))
    }

    /// The prices a LIMIT order may have now: the symbol's band around the mark, or
    /// around the last trade before the first mark; `None` (anything goes) with neither.
    pub fn price_band(&self) -> Option<(Ticks, Ticks)> {
        let reference = self.perp.mark.or(self.last_price)?;
        Some(self.spec.price_band(reference))
    }

    /// Whether a LIMIT order may have `price` now ([`Self::price_band`]).
    pub fn in_price_band(&self, price: Ticks) -> bool {
        self.perp.mark.or(self.last_price).is_none_or(|reference| self.spec.within_price_band(reference, price))
    }

    /// What an order limited at `limit` must lock to pay for its worst fill: margin,
    /// taker fee and open loss against the mark ([`super::position::open_loss`]). A buy
    /// fills at or below its limit, and all three grow with the price: its limit is the
    /// worst. A sell fills at the bid it meets, which may be far above its limit: margin
    /// and fee grow with the price and the open loss shrinks, so the worst is at one end,
    /// its limit or the best bid.
    fn lock_at(&self, order: &NewOrder, limit: Ticks) -> i128 {
        self.lock_for(order.side, order.quantity, order.leverage, limit)
    }

    /// [`Self::lock_at`] of `quantity` on `side` at `leverage`.
    fn lock_for(&self, side: Side, quantity: Lots, leverage: u32, limit: Ticks) -> i128 {
        let cost = |price: Ticks| {
            let spec = &self.spec;
            spec.margin(price, quantity, leverage)
                + spec.fee(spec.notional(price, quantity), false)
                + super::position::open_loss(spec, side, price, self.perp.mark, i128::from(quantity))
        };
        match side {
            Side::Buy => cost(limit),
            Side::Sell => match self.book.best_price(Side::Buy) {
                Some(bid) if bid > limit => cost(limit).max(cost(bid)),
                _ => cost(limit),
            },
        }
    }

    /// Prepares a new order for the risk step, by the rules every order type shares: a
    /// LIMIT price must lie in the band ([`Self::price_band`]); a MARKET order is priced
    /// at the farthest price its protection band lets it reach now (it never fills
    /// beyond); and `locked_margin` becomes what its worst fill costs (`lock_at`: margin,
    /// taker fee and open loss). A reduce-only order locks nothing: it can
    /// only release margin. What the lock cannot pay when the order executes (the book
    /// moved in between) it does not fill: see [`Self::check_leg`].
    ///
    /// # Errors
    /// [`PriceError`]; the order is then refused before it is logged.
    pub fn price_order(&self, order: &mut NewOrder) -> Result<(), PriceError> {
        let limit = match order.kind {
            OrderType::Limit { price, .. } => {
                if !self.in_price_band(price) {
                    return Err(PriceError::OutOfBand);
                }
                Some(price)
            }
            OrderType::Market => {
                let limit = self.market_limit(order.side);
                if let Some(limit) = limit {
                    order.kind = OrderType::MarketWithin { limit };
                }
                limit
            }
            OrderType::MarketWithin { limit } | OrderType::Liquidation { price: limit } => Some(limit),
        };
        order.locked_margin = match limit {
            Some(limit) if !order.reduce_only => {
                let lock = self.lock_at(order, limit);
                Units::try_from(lock).map_err(|_| PriceError::TooLarge)?
            }
            _ => 0,
        };
        Ok(())
    }

    /// Executes one command, appending its events to `events`.
    ///
    /// # Errors
    /// [`CommandError`] when the command changes nothing (no event is produced).
    pub fn execute(&mut self, command: &Command, events: &mut Vec<Event>) -> Result<(), CommandError> {
        let first = events.len();
        let result = self.execute_only(command, events);
        let now = command.timestamp();
        // Positions are checked against the mark after every command: a new pass over all
        // of them when the mark (or margins) moved, else those its trades touched; a
        // sweep goes on with the pass a bounded one left.
        match command {
            Command::Place(_) | Command::PlaceTriggered { .. } => self.check_positions(super::perp::Pass::Traded(first), now, events),
            Command::IndexPrice { .. } | Command::Funding { .. } if result.is_ok() => {
                self.check_positions(super::perp::Pass::New, now, events);
            }
            Command::Liquidate { .. } => self.check_positions(super::perp::Pass::Continue, now, events),
            Command::IndexPrice { .. }
            | Command::Funding { .. }
            | Command::Cancel { .. }
            | Command::CancelAll { .. }
            | Command::SetLeverage { .. }
            | Command::Countdown { .. }
            | Command::CountdownDue { .. }
            | Command::ExpireDue { .. }
            | Command::Amend { .. }
            | Command::PlaceConditional(_)
            | Command::CancelConditional { .. }
            | Command::RefuseTriggered { .. } => {}
        }
        self.follow_basis(now);
        self.trigger_conditionals(now, events);
        result
    }

    fn execute_only(&mut self, command: &Command, events: &mut Vec<Event>) -> Result<(), CommandError> {
        match *command {
            Command::Place(ref order) => {
                self.place(order, events);
                Ok(())
            }
            Command::IndexPrice { price, timestamp } => {
                self.post_index(price, timestamp, events);
                Ok(())
            }
            Command::Funding { timestamp } => self.settle_funding(timestamp, events),
            Command::Liquidate { .. } => Ok(()),
            Command::Cancel { id, user, timestamp } => {
                match self.book.get(id) {
                    Some(o) if o.user == user => {}
                    _ => return Err(CommandError::OrderNotOpen),
                }
                self.cancel_resting(id, CancelReason::UserRequest, timestamp, events);
                Ok(())
            }
            Command::CancelAll { user, timestamp } => {
                self.cancel_all_of(user, CancelReason::UserRequest, timestamp, events);
                Ok(())
            }
            Command::SetLeverage { user, leverage, .. } => {
                if !(1..=self.spec.max_leverage).contains(&leverage) {
                    return Err(CommandError::InvalidLeverage);
                }
                self.leverage.insert(user, leverage);
                Ok(())
            }
            Command::Countdown { user, after_ms, timestamp } => {
                if !(0..=MAX_COUNTDOWN_MS).contains(&after_ms) {
                    return Err(CommandError::InvalidCountdown);
                }
                if after_ms == 0 {
                    self.countdowns.remove(&user);
                } else {
                    self.countdowns.insert(user, timestamp + after_ms);
                }
                Ok(())
            }
            Command::CountdownDue { timestamp } => {
                let mut due: Vec<UserId> = self.countdowns.iter().filter(|(_, d)| **d <= timestamp).map(|(u, _)| *u).collect();
                due.sort_unstable();
                for user in &due {
                    self.countdowns.remove(user);
                }
                self.cancel_all_of_users(&due, CancelReason::Countdown, timestamp, events);
                Ok(())
            }
            Command::Amend { id, user, price, quantity, added_margin, timestamp } => {
                self.amend(id, user, price, quantity, added_margin, timestamp, events);
                Ok(())
            }
            Command::PlaceConditional(order) => {
                let reference = self.working_price(order.working);
                let id = self.seq + 1;
                let c = self.conditionals.place(id, order, reference).map_err(CommandError::Conditional)?;
                self.emit_conditional(c, events);
                Ok(())
            }
            Command::CancelConditional { id, user, timestamp } => {
                use super::conditional::ConditionalStatus::{Cancelled, New};
                let ids: Vec<u64> = match id {
                    Some(id) => vec![id],
                    None => self.conditionals.open_of(user).filter(|c| c.status == New).map(|c| c.id).collect(),
                };
                let mut any = false;
                for id in ids {
                    let end = |c: &mut super::conditional::Conditional| {
                        c.status = Cancelled;
                        c.reason = Some(CancelReason::UserRequest);
                    };
                    if let Some(c) = self.conditionals.close(id, user, New, timestamp, end) {
                        self.emit_conditional(c, events);
                        any = true;
                    }
                }
                if any || id.is_none() { Ok(()) } else { Err(CommandError::OrderNotOpen) }
            }
            Command::PlaceTriggered { conditional, ref order } => {
                use super::conditional::ConditionalStatus::{Triggered, Triggering};
                let end = |c: &mut super::conditional::Conditional| {
                    c.status = Triggered;
                    c.order_id = Some(order.id);
                };
                match self.conditionals.close(conditional, order.user, Triggering, order.timestamp, end) {
                    Some(c) => {
                        self.emit_conditional(c, events);
                        self.place(order, events);
                    }
                    // Placed already (a retry after a 504), or never triggered.
                    None => self.emit_cancelled(order, 0, order.locked_margin, CancelReason::InvalidOrder, events),
                }
                Ok(())
            }
            Command::RefuseTriggered { conditional, user, reason, timestamp } => {
                use super::conditional::ConditionalStatus::{Rejected, Triggering};
                let end = |c: &mut super::conditional::Conditional| {
                    c.status = Rejected;
                    c.reason = Some(reason);
                };
                let c = self.conditionals.close(conditional, user, Triggering, timestamp, end).ok_or(CommandError::OrderNotOpen)?;
                self.emit_conditional(c, events);
                Ok(())
            }
            Command::ExpireDue { timestamp } => {
                let mut due: Vec<(i64, OrderId)> = self.expiries.iter().filter(|(_, t)| **t <= timestamp).map(|(id, t)| (*t, *id)).collect();
                due.sort_unstable();
                for (_, id) in due {
                    self.cancel_resting(id, CancelReason::Expired, timestamp, events);
                }
                Ok(())
            }
        }
    }

    /// What the risk step locks for amending `user`'s resting order `id` to `price` and
    /// `quantity`: what the amended order must lock, less what it locks now (never below
    /// zero). `None`: not a resting order of the user's.
    pub fn amend_margin(&self, id: OrderId, user: UserId, price: Ticks, quantity: Lots) -> Option<i128> {
        let o = self.book.get(id).filter(|o| o.user == user)?;
        let remaining = quantity.saturating_sub(o.filled).max(1);
        let needed = if o.reduce_only { 0 } else { self.lock_for(o.side, remaining, o.leverage, price) };
        Some((needed - i128::from(o.locked)).max(0))
    }

    /// Amends a resting LIMIT order ([`Command::Amend`]): a new price and total quantity,
    /// a lock worked out as a new order's ([`Self::lock_at`]) from the old lock and the
    /// added margin, the rest released. Same price and a smaller quantity keep the
    /// order's place; anything else puts it at the back of its new level. It never
    /// trades: a price that meets the other side is refused, as is one outside the band.
    #[allow(clippy::too_many_arguments)]
    fn amend(&mut self, id: OrderId, user: UserId, price: Ticks, quantity: Lots, added: Units, timestamp: i64, events: &mut Vec<Event>) {
        let seq = self.next_seq();
        let Some(o) = self.book.get(id).copied().filter(|o| o.user == user) else {
            let refused = Some(super::event::AmendRefusal::NotOpen);
            events.push(Event::OrderAmended(super::event::Amended {
                seq, order_id: id, user, side: Side::Buy, price: 0, quantity: 0, filled: 0, locked_margin: 0,
                added_margin: added, released_margin: added, kept_priority: false, refused, timestamp,
            }));
            return;
        };
        let remaining = quantity.saturating_sub(o.filled);
        let needed = if o.reduce_only || remaining <= 0 { 0 } else { self.lock_for(o.side, remaining, o.leverage, price) };
        let have = i128::from(o.locked) + i128::from(added);
        use super::event::AmendRefusal as Refusal;
        let refused = if added < 0
            || !(1..=MAX_TICKS).contains(&price)
            || quantity <= o.filled
            || quantity > MAX_LOTS
            || self.spec.notional(price, quantity) > i128::from(MAX_NOTIONAL)
        {
            Some(Refusal::Invalid)
        } else if price == o.price && remaining == o.remaining {
            Some(Refusal::Unchanged)
        } else if price != o.price && !self.in_price_band(price) {
            Some(Refusal::PriceOutOfBand)
        } else if self.book.best_price(o.side.opposite()).is_some_and(|p| o.side.accepts(price, p)) {
            Some(Refusal::WouldTake)
        } else if needed > have {
            Some(Refusal::InsufficientMargin)
        } else {
            None
        };
        if refused.is_some() {
            events.push(Event::OrderAmended(super::event::Amended {
                seq, order_id: id, user, side: o.side, price: o.price, quantity: o.filled + o.remaining, filled: o.filled,
                locked_margin: o.locked, added_margin: added, released_margin: added, kept_priority: false, refused, timestamp,
            }));
            return;
        }
        let locked = narrow(needed);
        let kept_priority = price == o.price && remaining < o.remaining;
        if kept_priority {
            self.book.reduce(id, remaining, locked);
        } else {
            self.book.remove(id);
            self.book.insert(Resting { price, remaining, locked, timestamp, ..o });
        }
        events.push(Event::OrderAmended(super::event::Amended {
            seq, order_id: id, user, side: o.side, price, quantity, filled: o.filled, locked_margin: locked,
            added_margin: added, released_margin: narrow(have - needed), kept_priority, refused: None, timestamp,
        }));
    }

    fn place(&mut self, order: &NewOrder, events: &mut Vec<Event>) {
        let limit = match self.admit(order) {
            Ok(limit) => limit,
            Err(reason) => {
                self.emit_cancelled(order, 0, order.locked_margin, reason, events);
                return;
            }
        };

        let (remaining, lock, stopped) = self.match_order(order, limit, order.locked_margin, events);
        let filled = order.quantity - remaining;
        let rests = matches!(order.kind, OrderType::Limit { tif: TimeInForce::Gtc | TimeInForce::PostOnly, .. });
        if remaining == 0 {
            debug_assert_eq!(lock, 0);
        } else if let Some(reason) = stopped {
            self.emit_cancelled(order, filled, lock, reason, events);
        } else if rests {
            self.rest(order, limit, remaining, lock, events);
        } else {
            self.emit_cancelled(order, filled, lock, CancelReason::Unfilled, events);
        }
    }

    /// Matches `order` against the book up to `limit`, its lock `lock` paying for its
    /// fills. Returns what is left unfilled, what is left of the lock, and why it stopped
    /// early, if it did: its next fill would have met its own user's resting order
    /// (self-trade prevention, `EXPIRE_TAKER`) or cost more than its lock and its
    /// position can pay ([`Self::check_leg`]). A liquidation's fills may go past the
    /// bankruptcy price only as far as the insurance fund pays the difference.
    pub(super) fn match_order(&mut self, order: &NewOrder, limit: Ticks, mut lock: Units, events: &mut Vec<Event>) -> (Lots, Units, Option<CancelReason>) {
        let taker_side = order.side;
        let liquidation = matches!(order.kind, OrderType::Liquidation { .. });
        let taker_role = if liquidation { Role::Free } else { Role::Taker };
        // What the fund can still pay of this liquidation's loss beyond its margin.
        let mut fund_left = self.perp.fund;
        let mut remaining = order.quantity;
        while remaining > 0 {
            let Some(&maker) = self.book.best(taker_side.opposite()) else { break };
            if !taker_side.accepts(limit, maker.price) {
                break;
            }
            if maker.user == order.user {
                // Self-trade prevention, as the taker asks.
                if order.stp != SelfTradePrevention::ExpireTaker {
                    self.cancel_resting(maker.id, CancelReason::SelfTrade, order.timestamp, events);
                }
                if order.stp == SelfTradePrevention::ExpireMaker {
                    continue;
                }
                return (remaining, lock, Some(CancelReason::SelfTrade));
            }
            let room = self.room(&maker, self.position(maker.user).size);
            if room == 0 {
                // A reduce-only order whose position has shrunk away: it may not trade.
                self.cancel_resting(maker.id, CancelReason::ReduceOnly, order.timestamp, events);
                continue;
            }
            let qty = remaining.min(room);
            let taker_margin = share(lock, qty, remaining);
            let maker_margin = share(maker.locked, qty, maker.remaining);
            let maker_leg = self.leg(maker.user, maker.side, maker.price, qty, maker.leverage, maker_margin, Role::Maker);
            if let Err(reason) = self.check_leg(&maker_leg) {
                self.cancel_resting(maker.id, reason, order.timestamp, events);
                continue;
            }
            let taker_leg = self.leg(order.user, taker_side, maker.price, qty, order.leverage, taker_margin, taker_role);
            if liquidation {
                if fund_left + taker_leg.available_change() < 0 {
                    return (remaining, lock, None);
                }
                fund_left += taker_leg.available_change();
            } else if let Err(reason) = self.check_leg(&taker_leg) {
                return (remaining, lock, Some(reason));
            }
            lock -= taker_margin;
            remaining -= qty;
            let after = self.book.fill(maker.id, qty, maker_margin);
            if after.is_none_or(|o| o.remaining == 0) {
                self.forget(&maker);
            }
            self.trade(order, &maker, qty, maker_leg, taker_leg, events);
        }
        (remaining, lock, None)
    }

    /// One side of a fill of `qty` at `price`, worked out on a copy of `user`'s position:
    /// nothing changes until [`Self::trade`] commits it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn leg(&self, user: UserId, side: Side, price: Ticks, qty: Lots, leverage: u32, order_margin: Units, role: Role) -> Leg {
        let mut position = self.position(user);
        let opposes = position.size != 0 && position.size.signum() != side.sign();
        let closes = opposes;
        let opens = !opposes || i128::from(qty) > position.size.abs();
        let effect = apply_fill(&self.spec, &mut position, side, price, qty, leverage, order_margin, role, self.perp.mark);
        Leg { position, effect, closes, opens }
    }

    /// The money rule every fill obeys, written once: a fill never takes anything from
    /// the available balance. The order's lock and the margin of what it closes pay its
    /// fee, its realized loss and the margin of what it opens; so no trade takes a
    /// `total` below zero (a loss past a position's margin is not the user's debt). And
    /// what it opens must not be at or below maintenance at the mark, so no trade makes
    /// a position the next check must liquidate.
    ///
    /// # Errors
    /// The reason the fill may not happen: `BANKRUPTCY_PRICE` when it would close past
    /// what the position's margin pays (or open a position due at once),
    /// `INSUFFICIENT_MARGIN` when the order's lock does not cover it.
    pub(super) fn check_leg(&self, leg: &Leg) -> Result<(), CancelReason> {
        if leg.available_change() < 0 {
            return Err(if leg.closes { CancelReason::BankruptcyPrice } else { CancelReason::InsufficientMargin });
        }
        match self.perp.mark {
            Some(mark) if leg.opens && super::perp::Health::of(&self.spec, &leg.position, mark).liquidatable() => {
                Err(CancelReason::BankruptcyPrice)
            }
            _ => Ok(()),
        }
    }

    /// Every check that may refuse the order, before anything changes. Returns the price
    /// limit the order matches up to.
    fn admit(&self, order: &NewOrder) -> Result<Ticks, CancelReason> {
        let valid = (1..=MAX_LOTS).contains(&order.quantity)
            && (1..=self.spec.max_leverage).contains(&order.leverage)
            && order.locked_margin >= 0
            && (order.good_till == 0 || order.good_till > order.timestamp);
        if !valid {
            return Err(CancelReason::InvalidOrder);
        }
        if self.book.contains(order.id) {
            return Err(CancelReason::DuplicateOrderId);
        }
        if let Some(cid) = order.client_order_id
            && self.client_ids.contains_key(&(order.user, cid))
        {
            return Err(CancelReason::DuplicateClientOrderId);
        }
        if order.reduce_only
            && reducible(order.side, self.position(order.user).size, order.quantity) < order.quantity
        {
            return Err(CancelReason::ReduceOnlyRejected);
        }
        let limit = match order.kind {
            OrderType::Limit { price, .. } if !(1..=MAX_TICKS).contains(&price) => return Err(CancelReason::InvalidOrder),
            // The band as it is now: the mark may have moved since the risk step priced it.
            OrderType::Limit { price, .. } if !self.in_price_band(price) => {
                return Err(CancelReason::PriceOutOfBand);
            }
            OrderType::Limit { price, .. } => price,
            OrderType::Market => self.market_limit(order.side).ok_or(CancelReason::NoLiquidity)?,
            // The tighter of the locked price and today's band: never beyond what the
            // margin was locked for.
            OrderType::MarketWithin { limit } if (1..=MAX_TICKS).contains(&limit) => match self.market_limit(order.side) {
                Some(band) if order.side == Side::Buy => band.min(limit),
                Some(band) => band.max(limit),
                None => limit,
            },
            OrderType::MarketWithin { .. } | OrderType::Liquidation { .. } => return Err(CancelReason::InvalidOrder),
        };
        if self.spec.notional(limit, order.quantity) > i128::from(MAX_NOTIONAL) {
            return Err(CancelReason::InvalidOrder);
        }
        let crosses = self.book.best_price(order.side.opposite()).is_some_and(|p| order.side.accepts(limit, p));
        match order.kind {
            OrderType::Limit { tif: TimeInForce::PostOnly, .. } if crosses => Err(CancelReason::WouldTake),
            OrderType::Limit { tif: TimeInForce::Fok, .. } if self.fillable(order, limit) < order.quantity => {
                Err(CancelReason::FokUnfillable)
            }
            _ => Ok(limit),
        }
    }

    /// How much of `order` would fill now, walking the book exactly as matching would
    /// (reduce-only makers limited by their owners' positions as the fills move them).
    fn fillable(&self, order: &NewOrder, limit: Ticks) -> Lots {
        let mut moved: Vec<(UserId, i128)> = Vec::new();
        let size_of = |moved: &[(UserId, i128)], user: UserId| {
            self.position(user).size + moved.iter().filter(|(u, _)| *u == user).map(|(_, d)| d).sum::<i128>()
        };
        let mut filled = 0;
        for maker in self.book.iter(order.side.opposite()) {
            if filled == order.quantity || !order.side.accepts(limit, maker.price) {
                break;
            }
            // Self-trade prevention: matching stops at the taker's own resting order, or
            // (EXPIRE_MAKER) cancels it and goes past.
            if maker.user == order.user {
                if order.stp == SelfTradePrevention::ExpireMaker {
                    continue;
                }
                break;
            }
            // A reduce-only maker may fill in several steps when it trades with its own
            // owner (the position it reduces is moved back by the taker side), exactly as
            // the matching loop revisits it while it stays at the head of the queue.
            let mut left = *maker;
            while filled < order.quantity && left.remaining > 0 {
                let size = if maker.reduce_only { size_of(&moved, maker.user) } else { 0 };
                let qty = self.room(&left, size).min(order.quantity - filled);
                if qty == 0 {
                    break;
                }
                // Any fill moves positions, and a later reduce-only maker of the same
                // user sees the moved one.
                moved.push((maker.user, maker.side.sign() * i128::from(qty)));
                moved.push((order.user, order.side.sign() * i128::from(qty)));
                left.remaining -= qty;
                filled += qty;
            }
        }
        filled
    }

    /// What a resting order may fill given its owner's position size.
    fn room(&self, maker: &Resting, position_size: i128) -> Lots {
        if maker.reduce_only { reducible(maker.side, position_size, maker.remaining) } else { maker.remaining }
    }

    /// Commits a fill whose two legs were worked out (and checked) beforehand, each from
    /// its user's position: the two users differ (self-trade prevention).
    pub(super) fn trade(&mut self, taker: &NewOrder, maker: &Resting, qty: Lots, maker_leg: Leg, taker_leg: Leg, events: &mut Vec<Event>) {
        debug_assert_ne!(maker.user, taker.user);
        let price = maker.price;
        // An auto-deleveraging counterparty is a position, not a resting order.
        let adl = maker.id.0 & ADL_ORDER != 0;
        self.positions.insert(maker.user, maker_leg.position);
        self.positions.insert(taker.user, taker_leg.position);
        let update = |user, order_id, leg: &Leg| FillUpdate {
            user,
            order_id,
            pnl: leg.effect.pnl,
            fee: leg.effect.fee,
            margin_released: leg.effect.margin_released,
            position: leg.position,
        };
        let maker_update = update(maker.user, maker.id, &maker_leg);
        let taker_update = update(taker.user, taker.id, &taker_leg);
        let (buyer, seller) =
            if taker.side == Side::Buy { (taker_update, maker_update) } else { (maker_update, taker_update) };
        if !adl {
            self.last_price = Some(price);
            self.perp.traded_since_index = true;
        }
        let seq = self.next_seq();
        events.push(Event::TradeExecuted(Trade {
            seq,
            price,
            quantity: qty,
            taker_side: taker.side,
            adl,
            buyer,
            seller,
            timestamp: taker.timestamp,
        }));
    }

    fn rest(&mut self, order: &NewOrder, price: Ticks, remaining: Lots, lock: Units, events: &mut Vec<Event>) {
        self.book.insert(Resting {
            id: order.id,
            user: order.user,
            price,
            remaining,
            filled: order.quantity - remaining,
            locked: lock,
            timestamp: order.timestamp,
            leverage: order.leverage,
            side: order.side,
            reduce_only: order.reduce_only,
            has_client_order_id: order.client_order_id.is_some(),
        });
        if let Some(cid) = order.client_order_id {
            self.client_ids.insert((order.user, cid), order.id);
            self.client_id_of.insert(order.id, cid);
        }
        if order.good_till != 0 {
            self.expiries.insert(order.id, order.good_till);
        }
        let seq = self.next_seq();
        events.push(Event::OrderPlaced(Placed {
            seq,
            order_id: order.id,
            user: order.user,
            side: order.side,
            price,
            quantity: order.quantity,
            filled: order.quantity - remaining,
            locked_margin: lock,
            leverage: order.leverage,
            reduce_only: order.reduce_only,
            client_order_id: order.client_order_id,
            timestamp: order.timestamp,
        }));
    }

    /// Cancels every resting order of `user`, bids first, each side best first.
    pub(super) fn cancel_all_of(&mut self, user: UserId, reason: CancelReason, timestamp: i64, events: &mut Vec<Event>) {
        self.cancel_all_of_users(&[user], reason, timestamp, events);
    }

    /// Cancels every resting order of any of `users` in one walk of the book, bids
    /// first, each side best first.
    pub(super) fn cancel_all_of_users(&mut self, users: &[UserId], reason: CancelReason, timestamp: i64, events: &mut Vec<Event>) {
        if users.is_empty() {
            return;
        }
        let theirs: Vec<OrderId> = [Side::Buy, Side::Sell]
            .into_iter()
            .flat_map(|side| self.book.iter(side))
            .filter(|o| users.contains(&o.user))
            .map(|o| o.id)
            .collect();
        for id in theirs {
            self.cancel_resting(id, reason, timestamp, events);
        }
    }

    pub(super) fn cancel_resting(&mut self, id: OrderId, reason: CancelReason, timestamp: i64, events: &mut Vec<Event>) {
        let Some(o) = self.book.remove(id) else { return };
        self.forget(&o);
        let seq = self.next_seq();
        events.push(Event::OrderCancelled(Cancelled {
            seq,
            order_id: id,
            user: o.user,
            side: o.side,
            quantity: o.remaining + o.filled,
            filled: o.filled,
            released_margin: o.locked,
            reason,
            timestamp,
        }));
    }

    fn emit_cancelled(&mut self, order: &NewOrder, filled: Lots, released: Units, reason: CancelReason, events: &mut Vec<Event>) {
        let seq = self.next_seq();
        events.push(Event::OrderCancelled(Cancelled {
            seq,
            order_id: order.id,
            user: order.user,
            side: order.side,
            quantity: order.quantity,
            filled,
            released_margin: released,
            reason,
            timestamp: order.timestamp,
        }));
    }

    /// Marks `Triggering` every conditional order the last and mark prices reach now,
    /// oldest first (and moves the trailing stops on with them).
    fn trigger_conditionals(&mut self, now: i64, events: &mut Vec<Event>) {
        for c in self.conditionals.advance(self.last_price, self.perp.mark, now) {
            self.emit_conditional(c, events);
        }
    }

    fn emit_conditional(&mut self, conditional: super::conditional::Conditional, events: &mut Vec<Event>) {
        let seq = self.next_seq();
        events.push(Event::Conditional(super::event::ConditionalUpdate { seq, conditional }));
    }

    /// What is kept beside the book of an order that left it: its client id, its expiry.
    fn forget(&mut self, order: &Resting) {
        self.expiries.remove(&order.id);
        if order.has_client_order_id
            && let Some(cid) = self.client_id_of.remove(&order.id)
        {
            self.client_ids.remove(&(order.user, cid));
        }
    }

    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

/// Order ids the engine mints (liquidations, auto-deleveraging fills) have this bit set;
/// the ids the risk step mints never do (their partition is below 64).
pub const ENGINE_ORDER: u64 = 1 << 63;
/// With [`ENGINE_ORDER`]: the counterparty side of an auto-deleveraging fill.
pub const ADL_ORDER: u64 = 1 << 62;

/// The part of `lock` that `qty` of `remaining` consumes: pro rata, rounded down, and all
/// of it for the last fill, so the lock is used up exactly when the order is.
fn share(lock: Units, qty: Lots, remaining: Lots) -> Units {
    if qty == remaining { lock } else { narrow(div_floor(i128::from(lock) * i128::from(qty), i128::from(remaining))) }
}

#[cfg(test)]
#[path = "market_tests.rs"]
mod tests;
