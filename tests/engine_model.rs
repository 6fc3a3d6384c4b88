//! Property tests of the matching engine against a naive reference model.
//!
//! The model below is written separately from the engine and as plainly as possible:
//! orders in a flat list, the best maker found by scanning all of them, FOK decided by
//! trying the match on a copy. Thousands of random command streams must produce the
//! same events from both, and after every command the engine's state must satisfy the
//! invariants traders rely on.

use std::collections::BTreeMap;

use exchange::engine::units::{MAX_LOTS, MAX_NOTIONAL, MAX_TICKS};
use exchange::engine::*;
use proptest::prelude::*;
use rust_decimal::Decimal;

// ---------------------------------------------------------------- the reference model

/// BTC-PERP: 0.1 × 0.001 USDT per tick·lot = 10,000 units.
const UNIT: i128 = 10_000;
const MAKER_RATE: i128 = 20_000; // 0.0002 in 1e-8
const TAKER_RATE: i128 = 50_000; // 0.0005
const MAX_LEVERAGE: u32 = 100;

#[derive(Clone, Debug)]
struct RefOrder {
    o: NewOrder,
    price: i64,
    remaining: i64,
    filled: i64,
    locked: i64,
    arrival: u64,
}

#[derive(Clone, Debug, Default)]
struct RefModel {
    resting: Vec<RefOrder>,
    positions: BTreeMap<UserId, PositionState>,
    seq: u64,
    last_price: Option<i64>,
    arrivals: u64,
    /// Leverage settings.
    leverage: BTreeMap<UserId, u32>,
    /// Countdown deadlines.
    countdowns: BTreeMap<UserId, i64>,
}

fn ceil_div(a: i128, b: i128) -> i128 {
    -((-a).div_euclid(b))
}

impl RefModel {
    fn pos(&self, u: UserId) -> PositionState {
        self.positions.get(&u).copied().unwrap_or_default()
    }

    fn best_maker(&self, taker: Side) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, r) in self.resting.iter().enumerate() {
            if r.o.side == taker {
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => {
                    let b = &self.resting[b];
                    let price_better = if taker == Side::Buy { r.price < b.price } else { r.price > b.price };
                    price_better || (r.price == b.price && r.arrival < b.arrival)
                }
            };
            if better {
                best = Some(i);
            }
        }
        best
    }

    /// The farthest price a MARKET order on `side` may trade at: ±5 % of the reference.
    fn band(&self, side: Side) -> Option<i64> {
        let reference = self.last_price.or(self.best_price(side.opposite()))?;
        let reach = reference * 5 / 100;
        Some(match side {
            Side::Buy => reference + reach,
            Side::Sell => (reference - reach).max(1),
        })
    }

    fn best_price(&self, side: Side) -> Option<i64> {
        self.best_maker(side.opposite()).map(|i| self.resting[i].price)
    }

    fn room(&self, r: &RefOrder) -> i64 {
        if !r.o.reduce_only {
            return r.remaining;
        }
        let size = self.pos(r.o.user).size;
        let can = match r.o.side {
            Side::Sell => size.max(0),
            Side::Buy => (-size).max(0),
        };
        can.min(i128::from(r.remaining)) as i64
    }

    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn cancelled(&mut self, o: &NewOrder, quantity: i64, filled: i64, released: i64, reason: CancelReason, ts: i64) -> Event {
        Event::OrderCancelled(Cancelled {
            seq: self.next(),
            order_id: o.id,
            user: o.user,
            side: o.side,
            quantity,
            filled,
            released_margin: released,
            reason,
            timestamp: ts,
        })
    }

    fn execute(&mut self, c: &Command, out: &mut Vec<Event>) -> Result<(), CommandError> {
        match *c {
            Command::Place(o) => {
                self.place(o, out);
                Ok(())
            }
            Command::Cancel { id, user, timestamp } => {
                let i = self
                    .resting
                    .iter()
                    .position(|r| r.o.id == id && r.o.user == user)
                    .ok_or(CommandError::OrderNotOpen)?;
                let r = self.resting.remove(i);
                let e = self.cancelled(&r.o, r.o.quantity, r.filled, r.locked, CancelReason::UserRequest, timestamp);
                out.push(e);
                Ok(())
            }
            Command::CancelAll { user, timestamp } => {
                self.cancel_all_of(&[user], CancelReason::UserRequest, timestamp, out);
                Ok(())
            }
            Command::Countdown { user, after_ms, timestamp } => {
                if !(0..=exchange::engine::MAX_COUNTDOWN_MS).contains(&after_ms) {
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
                let due: Vec<UserId> = self.countdowns.iter().filter(|(_, d)| **d <= timestamp).map(|(u, _)| *u).collect();
                for user in &due {
                    self.countdowns.remove(user);
                }
                self.cancel_all_of(&due, CancelReason::Countdown, timestamp, out);
                Ok(())
            }
            Command::SetLeverage { user, leverage, .. } => {
                if !(1..=MAX_LEVERAGE).contains(&leverage) {
                    return Err(CommandError::InvalidLeverage);
                }
                self.leverage.insert(user, leverage);
                Ok(())
            }
            Command::Amend { id, user, price, quantity, added_margin, timestamp } => {
                out.push(Event::OrderAmended(self.amend(id, user, price, quantity, added_margin, timestamp)));
                Ok(())
            }
            Command::ExpireDue { timestamp } => {
                let mut due: Vec<(i64, OrderId)> =
                    self.resting.iter().filter(|r| r.o.good_till != 0 && r.o.good_till <= timestamp).map(|r| (r.o.good_till, r.o.id)).collect();
                due.sort_unstable();
                for (_, id) in due {
                    let i = self.resting.iter().position(|r| r.o.id == id).unwrap();
                    let r = self.resting.remove(i);
                    let e = self.cancelled(&r.o, r.o.quantity, r.filled, r.locked, CancelReason::Expired, timestamp);
                    out.push(e);
                }
                Ok(())
            }
            Command::IndexPrice { .. } | Command::Funding { .. } | Command::Liquidate { .. } => {
                unreachable!("the model covers matching; the perpetual's commands have their own")
            }
            Command::PlaceConditional(_) | Command::CancelConditional { .. } | Command::PlaceTriggered { .. } | Command::RefuseTriggered { .. } => {
                unreachable!("the model covers matching; conditional orders have their own tests")
            }
        }
    }

    /// An amendment, by the rules the engine documents (`Market::amend`).
    fn amend(&mut self, id: OrderId, user: UserId, price: i64, quantity: i64, added: i64, ts: i64) -> Amended {
        let seq = self.next();
        let Some(i) = self.resting.iter().position(|r| r.o.id == id && r.o.user == user) else {
            return Amended {
                seq, order_id: id, user, side: Side::Buy, price: 0, quantity: 0, filled: 0, locked_margin: 0,
                added_margin: added, released_margin: added, kept_priority: false, refused: Some(AmendRefusal::NotOpen), timestamp: ts,
            };
        };
        let r = self.resting[i].clone();
        let remaining = quantity - r.filled;
        let spec = spec();
        let needed = if r.o.reduce_only || remaining <= 0 {
            0
        } else {
            spec.margin(price, remaining, r.o.leverage) + spec.fee(spec.notional(price, remaining), false)
        };
        let have = i128::from(r.locked) + i128::from(added);
        let in_band = self.last_price.is_none_or(|last| {
            (ceil_div(i128::from(last) * 85, 100)..=i128::from(last) * 115 / 100).contains(&i128::from(price))
        });
        let crosses = self.best_price(r.o.side.opposite()).is_some_and(|p| match r.o.side {
            Side::Buy => p <= price,
            Side::Sell => p >= price,
        });
        let refused = if added < 0 || !(1..=MAX_TICKS).contains(&price) || quantity <= r.filled || quantity > MAX_LOTS
            || i128::from(price) * i128::from(quantity) * UNIT > i128::from(MAX_NOTIONAL)
        {
            Some(AmendRefusal::Invalid)
        } else if price == r.price && remaining == r.remaining {
            Some(AmendRefusal::Unchanged)
        } else if price != r.price && !in_band {
            Some(AmendRefusal::PriceOutOfBand)
        } else if crosses {
            Some(AmendRefusal::WouldTake)
        } else if needed > have {
            Some(AmendRefusal::InsufficientMargin)
        } else {
            None
        };
        if refused.is_some() {
            return Amended {
                seq, order_id: id, user, side: r.o.side, price: r.price, quantity: r.filled + r.remaining, filled: r.filled,
                locked_margin: r.locked, added_margin: added, released_margin: added, kept_priority: false, refused, timestamp: ts,
            };
        }
        let kept_priority = price == r.price && remaining < r.remaining;
        let o = &mut self.resting[i];
        o.o.quantity = quantity;
        o.price = price;
        o.remaining = remaining;
        o.locked = needed as i64;
        if !kept_priority {
            self.arrivals += 1;
            o.arrival = self.arrivals;
        }
        Amended {
            seq, order_id: id, user, side: r.o.side, price, quantity, filled: r.filled, locked_margin: needed as i64,
            added_margin: added, released_margin: (have - needed) as i64, kept_priority, refused: None, timestamp: ts,
        }
    }

    /// Cancels every resting order of `users`: bids first, each side best first.
    fn cancel_all_of(&mut self, users: &[UserId], reason: CancelReason, timestamp: i64, out: &mut Vec<Event>) {
        let mut theirs: Vec<RefOrder> = self.resting.iter().filter(|r| users.contains(&r.o.user)).cloned().collect();
        theirs.sort_by_key(|r| match r.o.side {
            Side::Buy => (0, -r.price, r.arrival),
            Side::Sell => (1, r.price, r.arrival),
        });
        for r in theirs {
            self.resting.retain(|x| x.o.id != r.o.id);
            let e = self.cancelled(&r.o, r.o.quantity, r.filled, r.locked, reason, timestamp);
            out.push(e);
        }
    }

    fn refusal(&self, o: &NewOrder) -> Result<i64, CancelReason> {
        if o.quantity < 1
            || o.quantity > MAX_LOTS
            || o.leverage < 1
            || o.leverage > MAX_LEVERAGE
            || o.locked_margin < 0
            || (o.good_till != 0 && o.good_till <= o.timestamp)
        {
            return Err(CancelReason::InvalidOrder);
        }
        if self.resting.iter().any(|r| r.o.id == o.id) {
            return Err(CancelReason::DuplicateOrderId);
        }
        if o.client_order_id.is_some()
            && self.resting.iter().any(|r| r.o.user == o.user && r.o.client_order_id == o.client_order_id)
        {
            return Err(CancelReason::DuplicateClientOrderId);
        }
        if o.reduce_only {
            let size = self.pos(o.user).size;
            let q = i128::from(o.quantity);
            let ok = match o.side {
                Side::Sell => size >= q,
                Side::Buy => -size >= q,
            };
            if !ok {
                return Err(CancelReason::ReduceOnlyRejected);
            }
        }
        let limit = match o.kind {
            OrderType::Limit { price, .. } => {
                if !(1..=MAX_TICKS).contains(&price) {
                    return Err(CancelReason::InvalidOrder);
                }
                // The price band: ×0.85 to ×1.15 of the last trade (there is no mark here).
                if let Some(last) = self.last_price {
                    let (low, high) = (ceil_div(i128::from(last) * 85, 100), i128::from(last) * 115 / 100);
                    if !(low..=high).contains(&i128::from(price)) {
                        return Err(CancelReason::PriceOutOfBand);
                    }
                }
                price
            }
            OrderType::Market => self.band(o.side).ok_or(CancelReason::NoLiquidity)?,
            OrderType::Liquidation { .. } => return Err(CancelReason::InvalidOrder),
            OrderType::MarketWithin { limit } => {
                if !(1..=MAX_TICKS).contains(&limit) {
                    return Err(CancelReason::InvalidOrder);
                }
                match (self.band(o.side), o.side) {
                    (Some(band), Side::Buy) => band.min(limit),
                    (Some(band), Side::Sell) => band.max(limit),
                    (None, _) => limit,
                }
            }
        };
        if i128::from(limit) * i128::from(o.quantity) * UNIT > i128::from(MAX_NOTIONAL) {
            return Err(CancelReason::InvalidOrder);
        }
        if let OrderType::Limit { tif: TimeInForce::PostOnly, .. } = o.kind {
            let crosses = self.best_price(o.side.opposite()).is_some_and(|p| match o.side {
                Side::Buy => p <= limit,
                Side::Sell => p >= limit,
            });
            if crosses {
                return Err(CancelReason::WouldTake);
            }
        }
        if let OrderType::Limit { tif: TimeInForce::Fok, .. } = o.kind {
            let mut trial = self.clone();
            let mut scratch = Vec::new();
            // Whether it can fill counts the book only, not the bankruptcy stop below.
            let (remaining, _, _) = trial.sweep(o, limit, false, &mut scratch);
            if remaining > 0 {
                return Err(CancelReason::FokUnfillable);
            }
        }
        Ok(limit)
    }

    fn place(&mut self, o: NewOrder, out: &mut Vec<Event>) {
        let limit = match self.refusal(&o) {
            Ok(l) => l,
            Err(reason) => {
                let e = self.cancelled(&o, o.quantity, 0, o.locked_margin, reason, o.timestamp);
                out.push(e);
                return;
            }
        };
        let (remaining, lock, stopped) = self.sweep(&o, limit, true, out);
        let filled = o.quantity - remaining;
        if remaining == 0 {
            return;
        }
        if let Some(reason) = stopped {
            let e = self.cancelled(&o, o.quantity, filled, lock, reason, o.timestamp);
            out.push(e);
            return;
        }
        let rests = matches!(o.kind, OrderType::Limit { tif: TimeInForce::Gtc | TimeInForce::PostOnly, .. });
        if rests {
            self.arrivals += 1;
            self.resting.push(RefOrder { o, price: limit, remaining, filled, locked: lock, arrival: self.arrivals });
            out.push(Event::OrderPlaced(Placed {
                seq: self.next(),
                order_id: o.id,
                user: o.user,
                side: o.side,
                price: limit,
                quantity: o.quantity,
                filled,
                locked_margin: lock,
                leverage: o.leverage,
                reduce_only: o.reduce_only,
                client_order_id: o.client_order_id,
                timestamp: o.timestamp,
            }));
        } else {
            let e = self.cancelled(&o, o.quantity, filled, lock, CancelReason::Unfilled, o.timestamp);
            out.push(e);
        }
    }

    /// Why `user` may not fill `q` at `price` on `side` with `part` of its order's lock,
    /// if it may not: the fill would take something from the available balance (its fee,
    /// its realized loss and the margin it opens are more than the lock part and the
    /// margin of what it closes). Closing: `BANKRUPTCY_PRICE`; else `INSUFFICIENT_MARGIN`.
    #[allow(clippy::too_many_arguments)]
    fn refused(&self, user: UserId, id: OrderId, side: Side, price: i64, q: i64, lev: u32, part: i64, maker: bool) -> Option<CancelReason> {
        let closes = self.pos(user).size * if side == Side::Buy { 1 } else { -1 } < 0;
        let mut trial = self.clone();
        let u = trial.account(user, id, side, price, q, lev, part, maker);
        (u.margin_released + u.pnl - u.fee < 0).then_some(if closes { CancelReason::BankruptcyPrice } else { CancelReason::InsufficientMargin })
    }

    /// Matches `o` up to `limit`; returns (unfilled quantity, unused lock, why it stopped
    /// early). `checked`: stop at the taker's own resting order (self-trade prevention)
    /// and where a fill would take from the available balance, and drop makers whose
    /// fill would; unchecked, it only walks the book (as FOK's "fills entirely" does, but
    /// for its own orders).
    fn sweep(&mut self, o: &NewOrder, limit: i64, checked: bool, out: &mut Vec<Event>) -> (i64, i64, Option<CancelReason>) {
        let mut remaining = o.quantity;
        let mut lock = o.locked_margin;
        while remaining > 0 {
            let Some(i) = self.best_maker(o.side) else { break };
            let m = self.resting[i].clone();
            let acceptable = match o.side {
                Side::Buy => m.price <= limit,
                Side::Sell => m.price >= limit,
            };
            if !acceptable {
                break;
            }
            if m.o.user == o.user {
                if o.stp != SelfTradePrevention::ExpireTaker {
                    self.resting.remove(i);
                    let e = self.cancelled(&m.o, m.o.quantity, m.filled, m.locked, CancelReason::SelfTrade, o.timestamp);
                    out.push(e);
                }
                if o.stp == SelfTradePrevention::ExpireMaker {
                    continue;
                }
                return (remaining, lock, Some(CancelReason::SelfTrade));
            }
            let room = self.room(&m);
            if room == 0 {
                self.resting.remove(i);
                let e = self.cancelled(&m.o, m.o.quantity, m.filled, m.locked, CancelReason::ReduceOnly, o.timestamp);
                out.push(e);
                continue;
            }
            let q = remaining.min(room);
            let portion = |lock: i64, rem: i64| if q == rem { lock } else { (i128::from(lock) * i128::from(q) / i128::from(rem)) as i64 };
            let taker_part = portion(lock, remaining);
            let maker_part = portion(m.locked, m.remaining);
            if checked && let Some(reason) = self.refused(m.o.user, m.o.id, m.o.side, m.price, q, m.o.leverage, maker_part, true) {
                self.resting.remove(i);
                let e = self.cancelled(&m.o, m.o.quantity, m.filled, m.locked, reason, o.timestamp);
                out.push(e);
                continue;
            }
            if checked && let Some(reason) = self.refused(o.user, o.id, o.side, m.price, q, o.leverage, taker_part, false) {
                return (remaining, lock, Some(reason));
            }
            lock -= taker_part;
            remaining -= q;
            {
                let r = &mut self.resting[i];
                r.remaining -= q;
                r.filled += q;
                r.locked -= maker_part;
                if r.remaining == 0 {
                    self.resting.remove(i);
                }
            }
            let maker = self.account(m.o.user, m.o.id, m.o.side, m.price, q, m.o.leverage, maker_part, true);
            let taker = self.account(o.user, o.id, o.side, m.price, q, o.leverage, taker_part, false);
            let (buyer, seller) = if o.side == Side::Buy { (taker, maker) } else { (maker, taker) };
            self.last_price = Some(m.price);
            out.push(Event::TradeExecuted(Trade {
                seq: self.next(),
                price: m.price,
                quantity: q,
                taker_side: o.side,
                adl: false,
                buyer,
                seller,
                timestamp: o.timestamp,
            }));
        }
        (remaining, lock, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn account(&mut self, user: UserId, id: OrderId, side: Side, price: i64, q: i64, lev: u32, part: i64, maker: bool) -> FillUpdate {
        let p = self.positions.entry(user).or_default();
        let dir: i128 = if side == Side::Buy { 1 } else { -1 };
        let q = i128::from(q);
        let value = |lots: i128| i128::from(price) * lots * UNIT;
        let mut pnl = 0;
        let mut released = 0;
        let mut open = q;
        if p.size * dir < 0 {
            let close = q.min(p.size.abs());
            open = q - close;
            let (cost_part, margin_part) = closed_share(p, close);
            pnl = if p.size > 0 { value(close) - cost_part } else { cost_part - value(close) };
            p.size += dir * close;
            p.cost -= cost_part;
            p.margin -= margin_part;
            p.realized_pnl += pnl;
            released += margin_part;
        }
        let fee = ceil_div(value(q) * if maker { MAKER_RATE } else { TAKER_RATE }, 100_000_000);
        let mut kept = 0;
        if open > 0 {
            kept = ceil_div(value(open), i128::from(lev)).min((i128::from(part) - fee).max(0));
            p.size += dir * open;
            p.cost += value(open);
            p.margin += kept;
            p.leverage = lev;
        }
        released += i128::from(part) - kept;
        p.fees += fee;
        FillUpdate {
            user,
            order_id: id,
            pnl,
            fee,
            margin_released: released,
            position: *p,
        }
    }
}

/// The entry cost and margin that closing `close` of `p` takes: pro rata, the cost
/// rounded against the trader, the margin down; all of both on the last close.
fn closed_share(p: &PositionState, close: i128) -> (i128, i128) {
    let open = p.size.abs();
    if close == open {
        return (p.cost, p.margin);
    }
    let cost = if p.size > 0 { ceil_div(p.cost * close, open) } else { (p.cost * close).div_euclid(open) };
    (cost, (p.margin * close).div_euclid(open))
}

// ---------------------------------------------------------------- command streams

fn spec() -> SymbolSpec {
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    SymbolSpec::new("BTC-PERP", d("0.1"), d("0.001"), MAX_LEVERAGE, d("0.0002"), d("0.0005"), d("0.05"), 0).unwrap()
}

#[derive(Clone, Debug)]
enum Op {
    Place { user: u64, side: Side, kind: u8, price: i64, qty: i64, leverage: u32, reduce_only: bool, cid: Option<u8>, lock_bias: i8, stp: u8, gtd: u8 },
    Cancel { user: u64, id: u64 },
    CancelAll { user: u64 },
    Invalid { field: u8 },
    SetLeverage { user: u64, leverage: u32 },
    Countdown { user: u64, after: i64 },
    CountdownDue,
    ExpireDue,
    Amend { user: u64, id: u64, price: i64, qty: i64, added: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    let side = prop_oneof![Just(Side::Buy), Just(Side::Sell)];
    let place = (1..=4u64, side, 0..7u8, 95..=105i64, 1..=6i64, 1..=3u32, prop::bool::weighted(0.2), prop::option::weighted(0.2, 0..3u8), -1..=1i8, 0..3u8, prop_oneof![4 => Just(0u8), 1 => 1..=6u8])
        .prop_map(|(user, side, kind, price, qty, leverage, reduce_only, cid, lock_bias, stp, gtd)| Op::Place {
            user, side, kind, price, qty, leverage, reduce_only, cid, lock_bias, stp, gtd,
        });
    prop_oneof![
        10 => place,
        2 => (1..=4u64, 1..=60u64).prop_map(|(user, id)| Op::Cancel { user, id }),
        1 => (1..=4u64).prop_map(|user| Op::CancelAll { user }),
        1 => (0..4u8).prop_map(|field| Op::Invalid { field }),
        1 => (1..=4u64, 0..=MAX_LEVERAGE + 1).prop_map(|(user, leverage)| Op::SetLeverage { user, leverage }),
        1 => (1..=4u64, prop_oneof![-1..=8i64, Just(exchange::engine::MAX_COUNTDOWN_MS + 1)])
            .prop_map(|(user, after)| Op::Countdown { user, after }),
        1 => Just(Op::CountdownDue),
        1 => Just(Op::ExpireDue),
        3 => (1..=4u64, 1..=60u64, 95..=105i64, 0..=7i64, prop_oneof![Just(0i64), -1..=3_000_000i64, Just(1_000_000_000i64)])
            .prop_map(|(user, id, price, qty, added)| Op::Amend { user, id, price, qty, added }),
    ]
}

/// Turns generated ops into commands, locking margin the way the risk step would
/// (at the limit price, or the band price for MARKET as the engine reports it now).
fn command(op: &Op, n: u64, market: &Market) -> Command {
    let ts = 1_700_000_000_000 + n as i64;
    match *op {
        Op::Place { user, side, kind, price, qty, leverage, reduce_only, cid, lock_bias, stp, gtd } => {
            let kind = match kind {
                0 => OrderType::Limit { price, tif: TimeInForce::Ioc },
                1 => OrderType::Limit { price, tif: TimeInForce::Fok },
                2 => OrderType::Limit { price, tif: TimeInForce::PostOnly },
                3 => OrderType::Market,
                // Priced at a random limit, which may be inside or outside today's band.
                4 => OrderType::MarketWithin { limit: price },
                _ => OrderType::Limit { price, tif: TimeInForce::Gtc },
            };
            let lock_price = match kind {
                OrderType::Limit { price, .. } | OrderType::MarketWithin { limit: price } | OrderType::Liquidation { price } => price,
                OrderType::Market => market.market_limit(side).unwrap_or(price),
            };
            let lock = market.spec().margin(lock_price, qty, leverage) as i64 + i64::from(lock_bias);
            Command::Place(NewOrder {
                id: OrderId(n),
                user: UserId(user),
                side,
                kind,
                quantity: qty,
                leverage,
                reduce_only,
                client_order_id: cid.map(|c| ClientOrderId::new(&format!("c{c}")).unwrap()),
                locked_margin: lock.max(0),
                timestamp: ts,
                stp: [SelfTradePrevention::ExpireTaker, SelfTradePrevention::ExpireMaker, SelfTradePrevention::ExpireBoth][usize::from(stp)],
                // 1: its own time (refused); 2..: a few commands later.
                good_till: if gtd == 0 { 0 } else { ts + i64::from(gtd) - 1 },
            })
        }
        Op::Cancel { user, id } => Command::Cancel { id: OrderId(id), user: UserId(user), timestamp: ts },
        Op::CancelAll { user } => Command::CancelAll { user: UserId(user), timestamp: ts },
        Op::SetLeverage { user, leverage } => Command::SetLeverage { user: UserId(user), leverage, timestamp: ts },
        Op::Countdown { user, after } => Command::Countdown { user: UserId(user), after_ms: after, timestamp: ts },
        Op::CountdownDue => Command::CountdownDue { timestamp: ts },
        Op::ExpireDue => Command::ExpireDue { timestamp: ts },
        Op::Amend { user, id, price, qty, added } => {
            Command::Amend { id: OrderId(id), user: UserId(user), price, quantity: qty, added_margin: added, timestamp: ts }
        }
        Op::Invalid { field } => {
            let mut o = NewOrder {
                id: OrderId(n),
                user: UserId(1),
                side: Side::Buy,
                kind: OrderType::Limit { price: 100, tif: TimeInForce::Gtc },
                quantity: 1,
                leverage: 1,
                reduce_only: false,
                client_order_id: None,
                locked_margin: 100,
                timestamp: ts,
                stp: Default::default(),
                good_till: 0,
            };
            match field {
                0 => o.quantity = 0,
                1 => o.leverage = 101,
                2 => o.kind = OrderType::Limit { price: 0, tif: TimeInForce::Ioc },
                _ => o.id = OrderId(n.saturating_sub(1).max(1)),
            }
            Command::Place(o)
        }
    }
}

// ---------------------------------------------------------------- invariants

/// Per-user locked balance and per-order quantity, as an outside observer of the events
/// would track them.
#[derive(Default)]
struct Ledger {
    locked: BTreeMap<UserId, i128>,
    /// order → (quantity, filled by trades, closed)
    orders: BTreeMap<OrderId, (i64, i64, bool)>,
}

impl Ledger {
    fn apply(&mut self, command: &Command, events: &[Event]) {
        if let Command::Place(o) = command {
            let existing = self.orders.get(&o.id).is_some_and(|e| !e.2);
            *self.locked.entry(o.user).or_default() += i128::from(o.locked_margin);
            if !existing {
                self.orders.insert(o.id, (o.quantity, 0, false));
            }
        }
        if let Command::Amend { user, added_margin, .. } = command {
            *self.locked.entry(*user).or_default() += i128::from(*added_margin);
        }
        for e in events {
            match e {
                Event::TradeExecuted(t) => {
                    for side in [&t.buyer, &t.seller] {
                        *self.locked.entry(side.user).or_default() -= side.margin_released;
                        let entry = self.orders.get_mut(&side.order_id).expect("traded order is known");
                        entry.1 += t.quantity;
                        if entry.1 == entry.0 {
                            entry.2 = true;
                        }
                    }
                }
                Event::OrderCancelled(c) => {
                    *self.locked.entry(c.user).or_default() -= i128::from(c.released_margin);
                    if c.reason != CancelReason::DuplicateOrderId
                        && let Some(entry) = self.orders.get_mut(&c.order_id)
                    {
                        assert_eq!(entry.1, c.filled, "cancel reports what trades filled");
                        entry.2 = true;
                    }
                }
                Event::OrderPlaced(p) => {
                    assert_eq!(self.orders[&p.order_id].1, p.filled);
                }
                Event::OrderAmended(a) => {
                    *self.locked.entry(a.user).or_default() -= i128::from(a.released_margin);
                    if a.refused.is_none() {
                        let entry = self.orders.get_mut(&a.order_id).expect("an amended order is known");
                        assert_eq!(entry.1, a.filled, "amendment reports what trades filled");
                        entry.0 = a.quantity;
                    }
                }
                other => panic!("no index price was posted, yet {other:?}"),
            }
        }
    }
}

fn check_invariants(m: &Market, ledger: &Ledger, events: &[Event]) {
    let book = m.book();
    // Never crossed.
    if let (Some(bid), Some(ask)) = (book.best_price(Side::Buy), book.best_price(Side::Sell)) {
        assert!(bid < ask, "crossed book: {bid} >= {ask}");
    }
    for side in [Side::Buy, Side::Sell] {
        let orders: Vec<&Resting> = book.iter(side).collect();
        for pair in orders.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            // Price priority, then FIFO (timestamps grow with arrival in these streams).
            let better = if side == Side::Buy { a.price > b.price } else { a.price < b.price };
            assert!(better || (a.price == b.price && a.timestamp < b.timestamp), "priority broken: {a:?} then {b:?}");
        }
        // Level totals are the sum of their orders.
        for (price, total) in book.depth(side) {
            let sum: i64 = orders.iter().filter(|o| o.price == price).map(|o| o.remaining).sum();
            assert_eq!(sum, total);
        }
    }
    // Quantity conserved: every open order's filled + remaining is its quantity as logged.
    for side in [Side::Buy, Side::Sell] {
        for o in book.iter(side) {
            let (qty, filled, closed) = ledger.orders[&o.id];
            assert!(!closed && o.remaining > 0);
            assert_eq!((o.filled, o.filled + o.remaining), (filled, qty));
        }
    }
    // Locked margin: what the events say is locked equals open order locks + position margin.
    for (user, locked) in &ledger.locked {
        let orders: i128 = [Side::Buy, Side::Sell]
            .into_iter()
            .flat_map(|s| book.iter(s))
            .filter(|o| o.user == *user)
            .map(|o| i128::from(o.locked))
            .sum();
        assert!(*locked >= 0);
        assert_eq!(*locked, orders + m.position(*user).margin, "locked margin of {user:?}");
    }
    // Fees: the rate applied to the decimal notional, rounded up to 1e-8 USDT.
    let spec = m.spec();
    for e in events {
        if let Event::TradeExecuted(t) = e {
            let notional = spec.ticks_to_price(t.price) * spec.lots_to_quantity(t.quantity);
            for (update, rate) in [(t.maker(), spec.maker_fee), (t.taker(), spec.taker_fee)] {
                let fee = (notional * rate * Decimal::from(100_000_000)).ceil();
                assert_eq!(Decimal::from(update.fee), fee);
            }
        }
    }
}

fn run(ops: &[Op]) -> (Market, Vec<Command>, Vec<Vec<Event>>) {
    let mut market = Market::new(spec());
    let mut model = RefModel::default();
    let mut ledger = Ledger::default();
    let mut commands = Vec::new();
    let mut all = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let c = command(op, i as u64 + 1, &market);
        let mut got = Vec::new();
        let mut want = Vec::new();
        let r1 = market.execute(&c, &mut got);
        let r2 = model.execute(&c, &mut want);
        assert_eq!(r1, r2, "command {i}: {c:?}");
        assert_eq!(got, want, "command {i}: {c:?}");
        ledger.apply(&c, &got);
        check_invariants(&market, &ledger, &got);
        assert_eq!(market.seq(), model.seq);
        for user in 1..=4 {
            let want = model.leverage.get(&UserId(user)).copied().unwrap_or(exchange::engine::DEFAULT_LEVERAGE_SETTING);
            assert_eq!(market.leverage_setting(UserId(user)), want, "command {i}: user {user}'s setting");
        }
        commands.push(c);
        all.push(got);
    }
    (market, commands, all)
}

proptest! {
    #![proptest_config(ProptestConfig { max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_reference_model(ops in prop::collection::vec(op(), 1..200)) {
        run(&ops);
    }

    #[test]
    fn snapshot_of_any_prefix_plus_replay_is_identical(ops in prop::collection::vec(op(), 1..150), cut in 0.0..1.0f64) {
        let (full, commands, events) = run(&ops);
        let k = ((commands.len() as f64) * cut) as usize;
        let mut prefix = Market::new(spec());
        let mut scratch = Vec::new();
        for c in &commands[..k] {
            let _ = prefix.execute(c, &mut scratch);
        }
        let mut restored = Market::restore(spec(), &prefix.snapshot()).unwrap();
        for (c, expected) in commands[k..].iter().zip(&events[k..]) {
            let mut got = Vec::new();
            let _ = restored.execute(c, &mut got);
            // Byte-identical events, not only equal values.
            let bytes = |e: &Vec<Event>| postcard::to_allocvec(e).unwrap();
            prop_assert_eq!(bytes(&got), bytes(expected));
        }
        prop_assert_eq!(restored.snapshot(), full.snapshot());
    }
}
