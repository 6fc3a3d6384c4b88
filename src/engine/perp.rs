//! What makes the market a perpetual: index and mark price, liquidation with the
//! insurance fund and auto-deleveraging, and funding. Like the rest of the engine, every
//! step is a function of the market's state and a logged command (an index price, a
//! funding time), so a replay reproduces every mark, liquidation and payment exactly.
//!
//! **Mark price** (Binance's design). When an index price is posted, the mark is the
//! median of three prices, clamped to the symbol's `mark_band` around the index:
//! 1. the index with the funding basis: `index × (1 + last funding rate × time to the
//!    next funding ÷ interval)`;
//! 2. the index plus a moving average of the book's basis `mid − index` (0 while a side
//!    is empty): the basis is integrated over time between index prices (every command
//!    notes the mid it leaves), and the average of each interval enters an exponential
//!    average with weight `interval ÷ mark_basis_window_secs` (at most 1);
//! 3. the last trade price if a trade happened since the previous index price, else the
//!    index.
//!
//! Trades and quotes of one party move only (2) and (3), and (2) only by the time they
//! hold: the median then lies between (1) and (2), so a burst of any size held for a few
//! seconds moves the mark by a few seconds' share of the window (0.5 % is 10 seconds of
//! a book quoted 15 % off the index in a 5-minute window). With no quotes and no trades
//! it is the index.
//!
//! **Liquidation.** A position's equity is its margin plus its unrealized PnL at the mark;
//! its maintenance margin is `size × mark × maintenanceMarginRate`, rounded up. At or
//! below it, the user's open orders on the symbol are cancelled and the position is
//! closed by a `LIQUIDATION` order (no fee) against the book: no worse than the
//! bankruptcy price (where equity is zero), and beyond it, down to the protection band
//! around the mark, only as far as the insurance fund pays the loss past the margin.
//! What the book cannot absorb is closed at the bankruptcy price against the opposite
//! positions ranked by profit × leverage (auto-deleveraging). The margin left over goes to
//! the fund. So the position never loses more than its margin, and the fund never pays
//! more than it holds.
//!
//! Due positions are liquidated in passes: a mark move (an index price, a funding round)
//! starts a pass over every due position, in user order starting after the last one
//! attempted, so that no position waits behind the same others twice; each command
//! liquidates at most [`MAX_LIQUIDATIONS`] and the rest wait for a logged
//! [`Command::Liquidate`](super::Command::Liquidate) the shard appends at once. A position
//! a pass could not close (an empty book, no one to deleverage against) is tried again
//! in the next pass, never in a loop. An index older than `index_max_age_secs` (by the
//! command's timestamp) pauses liquidation and funding.
//!
//! **Funding.** A funding command settles the first funding time at or after its
//! timestamp (a multiple of the interval since the epoch), once: a manual settlement
//! before the hour takes the scheduled one's place. The rate is the average premium
//! `(mark − index) ÷ index` over the index prices posted since the last funding, plus
//! `clamp(interest − premium, ±0.05 %)`, clamped to ±0.75 %; the interest is 0.01 % per
//! 8 hours of the funding interval. Each paying position pays `size × mark × |rate|`
//! (rounded up) out of its margin, but never so much that it would be at or below
//! maintenance; what it cannot pay is the insurance fund's. Each receiving one gets its
//! share (rounded down) in its available balance, scaled down only if the fund cannot
//! pay the shortfall; the rounding residue goes to the fund: funding is zero-sum.

use serde::{Deserialize, Serialize};

use super::book::Resting;
use super::command::{NewOrder, OrderId, OrderType, Side, UserId};
use super::event::{CancelReason, Event, FundingPayment, FundingRound, LiquidationOrder, Liquidated, PositionState, PriceUpdate};
use super::market::{CommandError, Market, ADL_ORDER, ENGINE_ORDER};
use super::position::Role;
use super::symbol::SymbolSpec;
use super::units::{div_ceil, div_floor, narrow, Lots, Ticks, MAX_TICKS, RATE_ONE};

/// Positions liquidated per command at most: one price jump cannot stall the shard.
pub const MAX_LIQUIDATIONS: usize = 64;
/// Funding rates are clamped to ±0.75 %.
pub const FUNDING_CAP: i64 = 750_000;
/// The interest part of the funding rate: 0.01 % per 8 hours.
const INTEREST_PER_8H: i128 = 10_000;
/// The premium's pull towards the interest rate is clamped to ±0.05 %.
const PREMIUM_BAND: i128 = 50_000;

/// The perpetual's state beside the book.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perp {
    pub index: Option<Ticks>,
    /// When the index was posted (the command's timestamp).
    pub index_time: i64,
    pub mark: Option<Ticks>,
    pub traded_since_index: bool,
    /// The insurance fund's share held by this symbol, in units. Never negative.
    pub fund: i128,
    /// Σ premium samples (parts of RATE_ONE) since the last funding, and how many.
    pub premium_sum: i128,
    pub premium_samples: u64,
    pub last_funding_rate: i64,
    /// The last funding time settled (a multiple of the interval).
    pub last_funding_time: i64,
    /// The mark's moving average of the book's basis, in ticks × RATE_ONE.
    pub basis_average: i128,
    /// The basis the book has now (ticks), since when, and its integral (ticks × ms)
    /// since the last index price.
    pub basis_now: i64,
    pub basis_since: i64,
    pub basis_area: i128,
    /// Due positions this pass has still to liquidate, in order.
    pub queue: std::collections::VecDeque<UserId>,
    /// The last user a pass attempted: the next pass starts after it.
    pub cursor: Option<UserId>,
    /// The pass's auto-deleveraging rankings: the opposite positions to shorts' and to
    /// longs' liquidations, best first, made at the first deleveraging of the pass, and
    /// how far they are used up. Dropped when the pass ends.
    pub adl: [Option<(Vec<UserId>, usize)>; 2],
}

/// Which positions a command checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pass {
    /// The mark (or margins) moved: a new pass over every position.
    New,
    /// A logged sweep: go on with the pass.
    Continue,
    /// An order: the users the events from this one on traded for.
    Traded(usize),
}

/// A position measured at a price.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    pub notional: i128,
    pub unrealized: i128,
    pub equity: i128,
    pub maintenance: i128,
}

impl Health {
    pub fn of(spec: &SymbolSpec, p: &PositionState, mark: Ticks) -> Self {
        let notional = i128::from(mark) * p.size.abs() * i128::from(spec.units_per_tick_lot);
        let unrealized = if p.size >= 0 { notional - p.cost } else { p.cost - notional };
        let maintenance = div_ceil(notional * i128::from(spec.maintenance_rate), i128::from(RATE_ONE));
        Self { notional, unrealized, equity: p.margin + unrealized, maintenance }
    }

    /// At or below maintenance, with something open.
    pub fn liquidatable(&self) -> bool {
        self.notional > 0 && self.equity <= self.maintenance
    }
}

/// The price at which the position's equity is zero, rounded so that closing there loses
/// at most the margin (up for a long, down for a short).
pub fn bankruptcy_price(spec: &SymbolSpec, p: &PositionState) -> Ticks {
    let per_tick = p.size.abs() * i128::from(spec.units_per_tick_lot);
    if per_tick == 0 {
        return 1;
    }
    let price = if p.size > 0 { div_ceil(p.cost - p.margin, per_tick) } else { div_floor(p.cost + p.margin, per_tick) };
    narrow(price.clamp(1, i128::from(MAX_TICKS)))
}

/// The mark price at which the position would be liquidated (for display).
pub fn liquidation_price(spec: &SymbolSpec, p: &PositionState) -> Option<Ticks> {
    let per_tick = p.size.abs() * i128::from(spec.units_per_tick_lot);
    if per_tick == 0 {
        return None;
    }
    let rate = i128::from(spec.maintenance_rate);
    let one = i128::from(RATE_ONE);
    let price = if p.size > 0 {
        div_floor((p.cost - p.margin) * one, (one - rate) * per_tick)
    } else {
        div_ceil((p.cost + p.margin) * one, (one + rate) * per_tick)
    };
    (price > 0).then(|| narrow(price.min(i128::from(MAX_TICKS))))
}

/// The first funding time after `now_ms`: the next multiple of the interval since the
/// epoch, in milliseconds.
pub fn next_funding_time(now_ms: i64, interval_secs: u64) -> i64 {
    let interval = i64::try_from(interval_secs).unwrap_or(i64::MAX).saturating_mul(1000).max(1);
    now_ms.div_euclid(interval).saturating_add(1).saturating_mul(interval)
}

fn median(a: Ticks, b: Ticks, c: Ticks) -> Ticks {
    a.max(b).min(a.min(b).max(c))
}

impl Perp {
    /// Liquidations a bounded pass left for the next [`super::Command::Liquidate`].
    pub fn pending(&self) -> bool {
        !self.queue.is_empty()
    }
}

impl Market {
    pub fn perp(&self) -> &Perp {
        &self.perp
    }

    /// Whether the index is older than the symbol allows at `now`: liquidation and
    /// funding wait for a fresh one.
    pub fn index_stale(&self, now: i64) -> bool {
        let max_age = i64::try_from(self.spec.index_max_age_secs).unwrap_or(i64::MAX).saturating_mul(1000);
        self.perp.index.is_some() && now.saturating_sub(self.perp.index_time) > max_age
    }

    /// The book's mid price, when both sides have one.
    fn mid(&self) -> Option<Ticks> {
        let bid = self.book.best_price(Side::Buy)?;
        let ask = self.book.best_price(Side::Sell)?;
        Some(bid + (ask - bid) / 2)
    }

    /// Notes the basis (mid − index) the command left the book with, adding the one it
    /// replaces to the interval's integral. Runs after every command: cheap, and it is
    /// what makes a quote count for the time it stands, not for being there at the
    /// moment an index price arrives.
    pub(super) fn follow_basis(&mut self, now: i64) {
        let Some(index) = self.perp.index else { return };
        let basis = self.mid().map_or(0, |mid| mid - index);
        if basis != self.perp.basis_now {
            let held = now.saturating_sub(self.perp.basis_since).max(0);
            self.perp.basis_area += i128::from(self.perp.basis_now) * i128::from(held);
            self.perp.basis_since = self.perp.basis_since.max(now);
            self.perp.basis_now = basis;
        }
    }

    /// The funding rate the market's state gives now, in parts of RATE_ONE.
    pub fn funding_rate(&self) -> i64 {
        let premium = match (self.perp.premium_samples, self.perp.mark, self.perp.index) {
            (0, Some(mark), Some(index)) => premium(mark, index),
            (0, _, _) => 0,
            (n, _, _) => self.perp.premium_sum / i128::from(n),
        };
        let interest = INTEREST_PER_8H * i128::from(self.spec.funding_interval_secs) / (8 * 3600);
        let rate = premium + (interest - premium).clamp(-PREMIUM_BAND, PREMIUM_BAND);
        narrow(rate.clamp(-i128::from(FUNDING_CAP), i128::from(FUNDING_CAP)))
    }

    pub(super) fn post_index(&mut self, price: Ticks, timestamp: i64, events: &mut Vec<Event>) {
        let price = price.clamp(1, MAX_TICKS);
        let one = i128::from(RATE_ONE);
        if self.perp.index.is_some() {
            // The interval since the last index price: its time-weighted basis enters the
            // moving average with the interval's share of the window.
            let span = timestamp.saturating_sub(self.perp.index_time).max(0);
            let held = timestamp.saturating_sub(self.perp.basis_since).max(0);
            let area = self.perp.basis_area + i128::from(self.perp.basis_now) * i128::from(held);
            let average = if span > 0 { area * one / i128::from(span) } else { i128::from(self.perp.basis_now) * one };
            let window = i128::from(self.spec.mark_basis_window_secs.max(1)) * 1000;
            let weight = i128::from(span).min(window);
            self.perp.basis_average += (average - self.perp.basis_average) * weight / window;
        }
        self.perp.index = Some(price);
        self.perp.index_time = timestamp;
        self.perp.basis_area = 0;
        self.perp.basis_since = timestamp;
        self.perp.basis_now = self.mid().map_or(0, |mid| mid - price);
        let interval = i128::from(self.spec.funding_interval_secs.max(1)) * 1000;
        let to_funding = i128::from(next_funding_time(timestamp, self.spec.funding_interval_secs) - timestamp);
        let index = i128::from(price);
        let with_funding = index + index * i128::from(self.perp.last_funding_rate) * to_funding / (interval * one);
        let with_basis = index + self.perp.basis_average / one;
        let last = if self.perp.traded_since_index { self.last_price.unwrap_or(price) } else { price };
        let clamp = |v: i128| narrow(v.clamp(1, i128::from(MAX_TICKS)));
        let (low, high) = self.spec.mark_range(price);
        let mark = median(clamp(with_funding), clamp(with_basis), last).clamp(low, high);
        self.perp.mark = Some(mark);
        self.perp.traded_since_index = false;
        self.perp.premium_sum += premium(mark, price);
        self.perp.premium_samples += 1;
        let seq = self.next_seq();
        events.push(Event::PriceUpdated(PriceUpdate { seq, index: price, mark, timestamp }));
    }

    pub(super) fn settle_funding(&mut self, timestamp: i64, events: &mut Vec<Event>) -> Result<(), CommandError> {
        // The funding time this settles: the first at or after the command.
        let slot = next_funding_time(timestamp.saturating_sub(1), self.spec.funding_interval_secs);
        if slot <= self.perp.last_funding_time {
            return Err(CommandError::FundingSettled);
        }
        if self.index_stale(timestamp) {
            return Err(CommandError::IndexStale);
        }
        let rate = self.funding_rate();
        self.perp.last_funding_time = slot;
        self.perp.last_funding_rate = rate;
        self.perp.premium_sum = 0;
        self.perp.premium_samples = 0;
        let mark = self.perp.mark;
        let mut round = FundingRound { seq: 0, rate, mark, positions: 0, to_fund: 0, fund: self.perp.fund, timestamp };
        if let Some(mark) = mark.filter(|_| rate != 0) {
            let payer_sign = if rate > 0 { 1 } else { -1 };
            let magnitude = i128::from(rate).abs();
            let one = i128::from(RATE_ONE);
            let open = self.positions();
            let mut owed = 0;
            let mut collected = 0;
            let mut paid = Vec::new();
            for (user, p) in open.iter().filter(|(_, p)| p.size.signum() == payer_sign) {
                let h = Health::of(&self.spec, p, mark);
                let due = div_ceil(h.notional * magnitude, one);
                // Never so much that the payment alone would make the position due for
                // liquidation, and never more than its margin.
                let can = (h.equity - h.maintenance - 1).min(p.margin).max(0);
                let pay = due.min(can);
                owed += due;
                collected += pay;
                paid.push((*user, -pay));
            }
            let notional = |p: &PositionState| i128::from(mark) * p.size.abs() * i128::from(self.spec.units_per_tick_lot);
            let receivers: Vec<(UserId, i128)> = open
                .iter()
                .filter(|(_, p)| p.size.signum() == -payer_sign)
                .map(|(u, p)| (*u, div_floor(notional(p) * magnitude, one)))
                .collect();
            let to_receive: i128 = receivers.iter().map(|(_, r)| r).sum();
            // What the payers could not pay is the fund's, as far as it holds; past that
            // the receivers share what there is (scaled in parts of 1e8, rounded down).
            let funds = collected + self.perp.fund.min((owed - collected).max(0));
            let scale = (to_receive > funds).then(|| funds * one / to_receive);
            let mut received = 0;
            for (user, r) in receivers {
                let r = scale.map_or(r, |s| r * s / one);
                received += r;
                paid.push((user, r));
            }
            paid.sort_unstable_by_key(|(u, _)| *u);
            for (user, amount) in paid {
                let margin_change = amount.min(0);
                let position = self.positions.get_mut(&user).map(|p| {
                    p.margin += margin_change;
                    *p
                });
                let Some(position) = position else { continue };
                let seq = self.next_seq();
                events.push(Event::FundingPaid(FundingPayment { seq, user, amount, margin_change, rate, mark, position, timestamp }));
                round.positions += 1;
            }
            round.to_fund = collected - received;
            self.perp.fund += round.to_fund;
            round.fund = self.perp.fund;
        }
        round.seq = self.next_seq();
        events.push(Event::FundingSettled(round));
        Ok(())
    }

    /// Liquidates positions at or below maintenance at the mark, as `pass` says (see the
    /// module doc): at most [`MAX_LIQUIDATIONS`] per command.
    pub(super) fn check_positions(&mut self, pass: Pass, now: i64, events: &mut Vec<Event>) {
        let Some(mark) = self.perp.mark else { return };
        if self.index_stale(now) {
            return;
        }
        match pass {
            Pass::New => {
                let mut due: Vec<UserId> =
                    self.positions.iter().filter(|(_, p)| Health::of(&self.spec, p, mark).liquidatable()).map(|(u, _)| *u).collect();
                due.sort_unstable();
                let start = self.perp.cursor.map_or(0, |c| due.partition_point(|u| *u <= c));
                due.rotate_left(start);
                self.perp.queue = due.into();
                self.perp.adl = [None, None];
            }
            Pass::Continue => {}
            Pass::Traded(first) => {
                let due: Vec<UserId> = traded_users(&events[first..]).into_iter().filter(|u| self.liquidatable(*u, mark)).collect();
                for user in due.into_iter().rev() {
                    self.perp.queue.push_front(user);
                }
            }
        }
        // Up to the bound, the due positions of this command: their orders are cancelled
        // in one pass over the book, then each is closed.
        let mut batch = Vec::with_capacity(MAX_LIQUIDATIONS.min(self.perp.queue.len()));
        while batch.len() < MAX_LIQUIDATIONS {
            let Some(user) = self.perp.queue.pop_front() else { break };
            if self.liquidatable(user, mark) && !batch.contains(&user) {
                batch.push(user);
            }
        }
        self.cancel_all_of_users(&batch, CancelReason::Liquidation, now, events);
        for &user in &batch {
            let start = events.len();
            self.liquidate(user, mark, now, events);
            self.perp.cursor = Some(user);
            // The makers it traded with may now be due themselves.
            for u in traded_users(&events[start..]) {
                if u != user && self.liquidatable(u, mark) {
                    self.perp.queue.push_back(u);
                }
            }
        }
        if self.perp.queue.is_empty() {
            self.perp.adl = [None, None];
        }
    }

    fn liquidatable(&self, user: UserId, mark: Ticks) -> bool {
        self.positions.get(&user).is_some_and(|p| Health::of(&self.spec, p, mark).liquidatable())
    }

    /// Closes `user`'s position (its orders are already cancelled).
    fn liquidate(&mut self, user: UserId, mark: Ticks, timestamp: i64, events: &mut Vec<Event>) {
        let before = self.position(user);
        if before.size == 0 {
            return;
        }
        let side = if before.size > 0 { Side::Sell } else { Side::Buy };
        let quantity = narrow(before.size.abs());
        let price = bankruptcy_price(&self.spec, &before);
        let seq = self.next_seq();
        let order_id = OrderId(ENGINE_ORDER | seq);
        events.push(Event::LiquidationStarted(LiquidationOrder { seq, order_id, user, side, quantity, price, mark, timestamp }));
        let order = NewOrder {
            id: order_id,
            user,
            side,
            kind: OrderType::Liquidation { price },
            quantity,
            leverage: before.leverage.max(1),
            reduce_only: true,
            client_order_id: None,
            locked_margin: 0,
            timestamp,
            stp: Default::default(),
            good_till: 0,
        };
        // Past the bankruptcy price, down to the protection band around the mark, the
        // book takes it only as far as the insurance fund pays the difference.
        let limit = match side {
            Side::Sell => price.min(self.spec.band_limit(mark, false)),
            Side::Buy => price.max(self.spec.band_limit(mark, true)),
        };
        let (after_book, _, _) = self.match_order(&order, limit, 0, events);
        let left = if after_book > 0 { self.deleverage(&order, after_book, price, mark, events) } else { 0 };
        let after = self.position(user);
        let margin_used = before.margin - after.margin;
        let realized = after.realized_pnl - before.realized_pnl;
        // Negative: the loss past the margin, which the fund pays (the fills past the
        // bankruptcy price went only as far as it could; a partial close at the
        // bankruptcy price may round a unit or two past it, paid as far as it can).
        let to_fund = (margin_used + realized).max(-self.perp.fund);
        self.perp.fund += to_fund;
        let seq = self.next_seq();
        events.push(Event::LiquidationEnded(Liquidated {
            seq,
            order_id,
            user,
            side,
            quantity,
            filled: quantity - after_book,
            deleveraged: after_book - left,
            to_fund,
            fund: self.perp.fund,
            timestamp,
        }));
    }

    /// Closes `remaining` of the liquidation `order` at `price` against opposite
    /// positions, highest profit × leverage first. Returns what could not be closed.
    ///
    /// The ranking is made once per pass and side ([`Perp::adl`]), at the mark, of the
    /// positions not due for liquidation then; later liquidations of the pass go on from
    /// where the last one stopped (positions it closed are passed over), so a pass costs
    /// one sort, not one per liquidation or per command. A position opened after it was
    /// made waits for the next pass.
    fn deleverage(&mut self, order: &NewOrder, mut remaining: Lots, price: Ticks, mark: Ticks, events: &mut Vec<Event>) -> Lots {
        let their_side = order.side.opposite();
        let sign = order.side.sign();
        let slot = usize::from(sign > 0);
        if self.perp.adl[slot].is_none() {
            let mut list: Vec<(i128, UserId)> = self
                .positions
                .iter()
                .filter(|(_, p)| p.size.signum() == sign)
                .filter_map(|(u, p)| {
                    let h = Health::of(&self.spec, p, mark);
                    (!h.liquidatable()).then(|| (adl_score(p, &h), *u))
                })
                .collect();
            list.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            self.perp.adl[slot] = Some((list.into_iter().map(|(_, u)| u).collect(), 0));
        }
        let Some((list, next)) = self.perp.adl[slot].take() else { return remaining };
        let mut at = next;
        while remaining > 0 && at < list.len() {
            let user = list[at];
            let p = self.position(user);
            if p.size.signum() != sign || user == order.user {
                at += 1;
                continue;
            }
            let qty = remaining.min(narrow(p.size.abs()));
            let their_leg = self.leg(user, their_side, price, qty, p.leverage, 0, Role::Free);
            if self.check_leg(&their_leg).is_err() {
                at += 1;
                continue;
            }
            let counter = Resting {
                id: OrderId(ENGINE_ORDER | ADL_ORDER | (self.seq() + 1)),
                user,
                price,
                remaining: qty,
                filled: 0,
                locked: 0,
                timestamp: order.timestamp,
                leverage: p.leverage.max(1),
                side: their_side,
                reduce_only: true,
                has_client_order_id: false,
            };
            let liquidated_leg = self.leg(order.user, order.side, price, qty, order.leverage, 0, Role::Free);
            self.trade(order, &counter, qty, their_leg, liquidated_leg, events);
            remaining -= qty;
        }
        // Positions before `at` are closed, on the other side, or could not pay: the next
        // liquidation of this pass starts after them.
        self.perp.adl[slot] = Some((list, at));
        remaining
    }
}

/// Profit × leverage, for ranking auto-deleveraging: the PnL ratio (to the margin) times
/// the effective leverage (notional to equity) when in profit; the ratio divided by it
/// when at a loss. Fixed point, saturating: it only orders positions.
fn adl_score(p: &PositionState, h: &Health) -> i128 {
    const ONE: i128 = 1_000_000;
    let ratio = h.unrealized.saturating_mul(ONE) / p.margin.max(1);
    let leverage = h.notional.saturating_mul(ONE) / h.equity.max(1);
    if ratio >= 0 { ratio.saturating_mul(leverage) } else { ratio.saturating_mul(ONE) / leverage.max(1) }
}

/// `(mark − index) ÷ index` in parts of RATE_ONE, rounded towards zero.
fn premium(mark: Ticks, index: Ticks) -> i128 {
    (i128::from(mark) - i128::from(index)) * i128::from(RATE_ONE) / i128::from(index.max(1))
}

fn traded_users(events: &[Event]) -> Vec<UserId> {
    let mut users = Vec::new();
    for e in events {
        if let Event::TradeExecuted(t) = e {
            for u in [t.buyer.user, t.seller.user] {
                if !users.contains(&u) {
                    users.push(u);
                }
            }
        }
    }
    users
}

#[cfg(test)]
#[path = "perp_tests.rs"]
mod tests;
