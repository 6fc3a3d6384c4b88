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
use super::command::{ClientOrderId, Command, NewOrder, OrderId, OrderType, Side, TimeInForce, UserId};
use super::event::{CancelReason, Cancelled, Event, FillUpdate, Placed, PositionState, Trade};
use super::perp::Perp;
use super::position::{apply_fill, reducible, Role};
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
}

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

    /// Executes one command, appending its events to `events`.
    ///
    /// # Errors
    /// [`CommandError`] when the command changes nothing (no event is produced).
    pub fn execute(&mut self, command: &Command, events: &mut Vec<Event>) -> Result<(), CommandError> {
        let first = events.len();
        let result = self.execute_only(command, events);
        // Positions are checked against the mark after every command: all of them when
        // the mark (or margins) moved, else those its trades touched.
        match command {
            Command::Place(_) => self.check_positions(None, first, command.timestamp(), events),
            Command::Cancel { .. } | Command::CancelAll { .. } => {}
            Command::IndexPrice { .. } | Command::Funding { .. } | Command::Liquidate { .. } => {
                self.check_positions(Some(()), first, command.timestamp(), events);
            }
        }
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
        }
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
        } else if stopped {
            self.emit_cancelled(order, filled, lock, CancelReason::BankruptcyPrice, events);
        } else if rests {
            self.rest(order, limit, remaining, lock, events);
        } else {
            self.emit_cancelled(order, filled, lock, CancelReason::Unfilled, events);
        }
    }

    /// Matches `order` against the book up to `limit`, its lock `lock` paying for its
    /// fills. Returns what is left unfilled, what is left of the lock, and whether it
    /// stopped because its next fill would close its position beyond the bankruptcy price.
    pub(super) fn match_order(&mut self, order: &NewOrder, limit: Ticks, mut lock: Units, events: &mut Vec<Event>) -> (Lots, Units, bool) {
        let taker_side = order.side;
        let liquidation = matches!(order.kind, OrderType::Liquidation { .. });
        let mut remaining = order.quantity;
        while remaining > 0 {
            let Some(&maker) = self.book.best(taker_side.opposite()) else { break };
            if !taker_side.accepts(limit, maker.price) {
                break;
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
            if !self.fill_allowed(maker.user, maker.side, maker.price, qty, maker.leverage, maker_margin, Role::Maker) {
                self.cancel_resting(maker.id, CancelReason::BankruptcyPrice, order.timestamp, events);
                continue;
            }
            if !liquidation && !self.fill_allowed(order.user, taker_side, maker.price, qty, order.leverage, taker_margin, Role::Taker) {
                return (remaining, lock, true);
            }
            lock -= taker_margin;
            remaining -= qty;
            let after = self.book.fill(maker.id, qty, maker_margin);
            if after.is_none_or(|o| o.remaining == 0) {
                self.forget_client_id(&maker);
            }
            self.trade(order, taker_margin, &maker, maker_margin, qty, events);
        }
        (remaining, lock, false)
    }

    /// Whether `user` may fill `qty` on `side` at `price` (with `order_margin` of its
    /// lock, as `role`): what it closes must lose no more than that part's margin, so a
    /// trade never takes a `total` below zero (a loss past a position's margin is not the
    /// user's debt); and what it opens must not be at or below maintenance at the mark,
    /// so no trade opens a position that would be liquidated at once.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fill_allowed(&self, user: UserId, side: Side, price: Ticks, qty: Lots, leverage: u32, order_margin: Units, role: Role) -> bool {
        let p = self.positions.get(&user).copied().unwrap_or_default();
        let opposes = p.size != 0 && p.size.signum() != side.sign();
        if opposes {
            let open = p.size.abs();
            let closing = i128::from(qty).min(open);
            // What the whole position would have left at this price. A part's share of
            // it is at most two units of rounding worse, so a clear margin needs no
            // exact (division-heavy) dry run: almost every close takes this path.
            let value = i128::from(price) * open * i128::from(self.spec.units_per_tick_lot);
            let left = p.margin + if p.size > 0 { value - p.cost } else { p.cost - value };
            if left * closing < 2 * open {
                let mut closed = p;
                let e = apply_fill(&self.spec, &mut closed, side, price, narrow(closing), p.leverage, 0, Role::Free);
                if e.pnl + e.margin_released < 0 {
                    return false;
                }
            }
        }
        let opens = !opposes || i128::from(qty) > p.size.abs();
        match self.perp.mark {
            Some(mark) if opens => {
                let mut after = p;
                apply_fill(&self.spec, &mut after, side, price, qty, leverage, order_margin, role);
                !super::perp::Health::of(&self.spec, &after, mark).liquidatable()
            }
            _ => true,
        }
    }

    /// Every check that may refuse the order, before anything changes. Returns the price
    /// limit the order matches up to.
    fn admit(&self, order: &NewOrder) -> Result<Ticks, CancelReason> {
        let valid = (1..=MAX_LOTS).contains(&order.quantity)
            && (1..=self.spec.max_leverage).contains(&order.leverage)
            && order.locked_margin >= 0;
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
            OrderType::Limit { price, .. } if (1..=MAX_TICKS).contains(&price) => price,
            OrderType::Limit { .. } => return Err(CancelReason::InvalidOrder),
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

    pub(super) fn trade(
        &mut self,
        taker: &NewOrder,
        taker_margin: Units,
        maker: &Resting,
        maker_margin: Units,
        qty: Lots,
        events: &mut Vec<Event>,
    ) {
        let price = maker.price;
        // An auto-deleveraging counterparty is a position, not a resting order.
        let adl = maker.id.0 & ADL_ORDER != 0;
        let (maker_role, taker_role) = match taker.kind {
            OrderType::Liquidation { .. } if adl => (Role::Free, Role::Free),
            OrderType::Liquidation { .. } => (Role::Maker, Role::Free),
            _ => (Role::Maker, Role::Taker),
        };
        let mut maker_update = self.fill_account(maker.user, maker.id, maker.side, price, qty, maker.leverage, maker_margin, maker_role);
        let taker_update = self.fill_account(taker.user, taker.id, taker.side, price, qty, taker.leverage, taker_margin, taker_role);
        // A user trading with themselves: both updates carry the position after the whole
        // trade, so that whichever the ledger applies last (the buyer's, then the
        // seller's) leaves it as the engine has it.
        if maker.user == taker.user {
            maker_update.position = taker_update.position;
        }
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

    #[allow(clippy::too_many_arguments)]
    fn fill_account(
        &mut self,
        user: UserId,
        order_id: OrderId,
        side: Side,
        price: Ticks,
        qty: Lots,
        leverage: u32,
        order_margin: Units,
        role: Role,
    ) -> FillUpdate {
        let position = self.positions.entry(user).or_default();
        let effect = apply_fill(&self.spec, position, side, price, qty, leverage, order_margin, role);
        FillUpdate {
            user,
            order_id,
            pnl: effect.pnl,
            fee: effect.fee,
            margin_released: effect.margin_released,
            position: *position,
        }
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
        let mine: Vec<OrderId> =
            [Side::Buy, Side::Sell].into_iter().flat_map(|side| self.book.iter(side)).filter(|o| o.user == user).map(|o| o.id).collect();
        for id in mine {
            self.cancel_resting(id, reason, timestamp, events);
        }
    }

    pub(super) fn cancel_resting(&mut self, id: OrderId, reason: CancelReason, timestamp: i64, events: &mut Vec<Event>) {
        let Some(o) = self.book.remove(id) else { return };
        self.forget_client_id(&o);
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

    fn forget_client_id(&mut self, order: &Resting) {
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
