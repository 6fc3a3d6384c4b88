//! Mark price, liquidation, auto-deleveraging and funding, one case each.

use super::*;
use crate::engine::command::{Command, TimeInForce};
use crate::engine::event::Trade;
use crate::engine::symbol::btc;
use crate::engine::units::{narrow, Units};
use crate::engine::market::PriceError;

const A: UserId = UserId(1);
const B: UserId = UserId(2);
const C: UserId = UserId(3);

struct H {
    m: Market,
    id: u64,
    now: i64,
}

impl H {
    fn new() -> Self {
        Self { m: Market::new(btc()), id: 0, now: 1_000 }
    }

    fn run(&mut self, c: Command) -> Vec<Event> {
        let mut ev = Vec::new();
        let _ = self.m.execute(&c, &mut ev);
        ev
    }

    fn order(&mut self, user: UserId, side: Side, price: Ticks, qty: Lots, leverage: u32, tif: TimeInForce) -> Vec<Event> {
        self.place(user, side, OrderType::Limit { price, tif }, qty, leverage, false)
    }

    /// An order locked as the risk step locks it (or, outside the band, as it would be
    /// had the band allowed it: the engine refuses it then).
    fn place(&mut self, user: UserId, side: Side, kind: OrderType, qty: Lots, leverage: u32, reduce_only: bool) -> Vec<Event> {
        self.id += 1;
        self.now += 1;
        let mut o = NewOrder {
            id: OrderId(self.id),
            user,
            side,
            kind,
            quantity: qty,
            leverage,
            reduce_only,
            client_order_id: None,
            locked_margin: 0,
            timestamp: self.now,
            stp: Default::default(),
            good_till: 0,
        };
        if self.m.price_order(&mut o).is_err()
            && let OrderType::Limit { price, .. } = kind
        {
            let spec = self.m.spec();
            o.locked_margin = (spec.margin(price, qty, leverage) + spec.fee(spec.notional(price, qty), false)) as Units;
        }
        self.run(Command::Place(o))
    }

    fn wait(&mut self, ms: i64) {
        self.now += ms;
    }

    fn index(&mut self, price: Ticks) -> Vec<Event> {
        self.now += 1;
        self.run(Command::IndexPrice { price, timestamp: self.now })
    }

    fn funding(&mut self) -> Vec<Event> {
        self.now += 1;
        self.run(Command::Funding { timestamp: self.now })
    }
}

fn trades(ev: &[Event]) -> Vec<Trade> {
    ev.iter().filter_map(|e| if let Event::TradeExecuted(t) = e { Some(*t) } else { None }).collect()
}

fn ended(ev: &[Event]) -> Vec<Liquidated> {
    ev.iter().filter_map(|e| if let Event::LiquidationEnded(l) = e { Some(*l) } else { None }).collect()
}

#[test]
fn the_mark_is_the_median_of_the_funding_basis_the_book_basis_average_and_the_last_trade() {
    let mut h = H::new();
    let ev = h.index(500_000);
    assert!(matches!(ev[..], [Event::PriceUpdated(PriceUpdate { index: 500_000, mark: 500_000, .. })]));
    // A bid alone is no mid: the mark stays at the index.
    h.order(A, Side::Buy, 490_000, 10, 10, TimeInForce::Gtc);
    h.wait(300_000);
    h.index(500_000);
    assert_eq!(h.m.perp().mark, Some(500_000));
    // A book around 505,000 for a whole window moves the basis average there, but with no
    // trade the median is still the index (funding basis 0, last = index).
    h.order(B, Side::Sell, 520_000, 10, 10, TimeInForce::Gtc);
    h.wait(300_000);
    h.index(500_000);
    assert_eq!(h.m.perp().basis_average / i128::from(RATE_ONE), 5_000 - 1, "a millisecond of no mid, rounded down");
    assert_eq!(h.m.perp().mark, Some(500_000));
    // A trade at 510,000 since: the median of 500,000, 504,999 and 510,000.
    h.order(C, Side::Sell, 510_000, 1, 10, TimeInForce::Gtc);
    h.order(A, Side::Buy, 510_000, 1, 10, TimeInForce::Ioc);
    h.index(500_000);
    assert_eq!(h.m.perp().mark, Some(504_999));
    // No trade since the last index: the last trade no longer counts.
    h.index(500_000);
    assert_eq!(h.m.perp().mark, Some(500_000));
}

#[test]
fn the_mark_stays_within_its_band_around_the_index() {
    let mut h = H::new();
    h.index(500_000);
    // A book 10 % above the index for a whole window, and trades there.
    h.order(A, Side::Buy, 549_000, 10, 10, TimeInForce::Gtc);
    h.order(B, Side::Sell, 551_000, 10, 10, TimeInForce::Gtc);
    h.wait(600_000);
    h.order(C, Side::Buy, 551_000, 1, 10, TimeInForce::Ioc);
    h.index(500_000);
    // Clamped to the index + 2 % (the default mark band).
    assert_eq!(h.m.perp().mark, Some(510_000));
}

#[test]
fn one_party_cannot_push_the_mark_for_a_few_seconds() {
    let mut h = H::new();
    // An honest short watching: 1 BTC at 20x at 50,000 (liquidated at about +4.6 %).
    h.index(500_000);
    h.order(B, Side::Sell, 500_000, 1000, 20, TimeInForce::Gtc);
    h.order(C, Side::Buy, 500_000, 1000, 20, TimeInForce::Gtc);
    for _ in 0..60 {
        h.wait(1_000);
        h.index(500_000);
    }
    assert_eq!(h.m.perp().mark, Some(500_000));
    // One party with two accounts (X, Y) quotes and trades 14 % above the index, of any
    // size, for five seconds while the index stands still.
    const X: UserId = UserId(10);
    const Y: UserId = UserId(11);
    let mut highest = 0;
    for second in 0..5 {
        h.order(Y, Side::Sell, 570_000 + second, 1, 1, TimeInForce::Gtc);
        assert_eq!(trades(&h.order(X, Side::Buy, 570_000 + second, 1, 1, TimeInForce::Gtc)).len(), 1);
        h.order(X, Side::Buy, 569_000, 100, 100, TimeInForce::Gtc);
        h.order(Y, Side::Sell, 571_000, 100, 100, TimeInForce::Gtc);
        h.wait(1_000);
        h.index(500_000);
        highest = highest.max(h.m.perp().mark.unwrap());
    }
    h.run(Command::CancelAll { user: X, timestamp: h.now });
    h.run(Command::CancelAll { user: Y, timestamp: h.now });
    for _ in 0..30 {
        h.wait(1_000);
        h.index(500_000);
        highest = highest.max(h.m.perp().mark.unwrap());
    }
    assert!(highest > 500_000, "the burst shows, a little");
    assert!(highest < 502_500, "moved less than 0.5 %: {highest}");
    assert_eq!(h.m.position(B).size, -1000, "the honest short is still open");
}

#[test]
fn a_50x_long_is_liquidated_when_the_mark_falls_through_its_liquidation_price() {
    let mut h = H::new();
    h.index(500_000);
    // A buys 10 lots at 50,000 at 50x: margin 10 USDT; B sells.
    h.order(B, Side::Sell, 500_000, 10, 50, TimeInForce::Gtc);
    h.order(A, Side::Buy, 500_000, 10, 50, TimeInForce::Gtc);
    let p = h.m.position(A);
    let liq = liquidation_price(h.m.spec(), &p).unwrap();
    let bankrupt = bankruptcy_price(h.m.spec(), &p);
    assert!(bankrupt < liq && liq < 500_000, "{bankrupt} < {liq} < 500000");
    // C bids between the liquidation and the bankruptcy price.
    h.order(C, Side::Buy, liq - 10, 10, 10, TimeInForce::Gtc);
    assert!(ended(&h.index(liq + 1)).is_empty(), "above the liquidation price nothing happens");
    let ev = h.index(liq);
    let l = ended(&ev);
    assert_eq!(l.len(), 1);
    assert_eq!((l[0].user, l[0].filled, l[0].deleveraged), (A, 10, 0));
    let t = trades(&ev);
    assert_eq!(t[0].price, liq - 10);
    assert_eq!(t[0].seller.fee, 0, "a liquidation pays no trading fee");
    // A lost exactly its margin: the realized loss plus what went to the fund.
    assert_eq!(t[0].seller.pnl - l[0].to_fund, -p.margin);
    assert!(l[0].to_fund > 0);
    assert_eq!(h.m.perp().fund, l[0].to_fund);
    assert_eq!(h.m.position(A).size, 0);
}

#[test]
fn a_gap_through_the_bankruptcy_price_with_an_empty_book_is_deleveraged() {
    let mut h = H::new();
    h.index(500_000);
    // B and C are short (B at 10x, C at 2x), A is long at 50x.
    h.order(B, Side::Sell, 500_000, 6, 10, TimeInForce::Gtc);
    h.order(C, Side::Sell, 500_000, 4, 2, TimeInForce::Gtc);
    h.order(A, Side::Buy, 500_000, 10, 50, TimeInForce::Gtc);
    let bankrupt = bankruptcy_price(h.m.spec(), &h.m.position(A));
    let ev = h.index(450_000);
    let l = ended(&ev);
    assert_eq!((l[0].filled, l[0].deleveraged), (0, 10));
    let t = trades(&ev);
    assert!(t.iter().all(|t| t.adl && t.price == bankrupt && t.buyer.fee == 0 && t.seller.fee == 0));
    // Ranked by profit × leverage: B (10x) first, then C.
    assert_eq!((t[0].buyer.user, t[0].quantity), (B, 6));
    assert_eq!((t[1].buyer.user, t[1].quantity), (C, 4));
    assert_eq!(l[0].to_fund, 0, "closed at the bankruptcy price: nothing left, nothing short");
    assert_eq!(h.m.last_price(), Some(500_000), "deleveraging is not a trade in the book");
    assert!(h.m.positions().iter().all(|(_, p)| p.size == 0));
}

#[test]
fn funding_is_paid_by_longs_when_the_mark_is_above_the_index_and_is_zero_sum() {
    let mut h = H::new();
    h.order(B, Side::Sell, 500_000, 7, 10, TimeInForce::Gtc);
    h.order(C, Side::Sell, 500_000, 3, 10, TimeInForce::Gtc);
    h.order(A, Side::Buy, 500_000, 10, 10, TimeInForce::Gtc);
    // Book: bid 500,100, ask 502,000; last trade 500,000 → mark 500,100 over index 500,000.
    h.order(A, Side::Buy, 500_100, 1, 10, TimeInForce::Gtc);
    h.order(B, Side::Sell, 502_000, 1, 10, TimeInForce::Gtc);
    h.index(500_000);
    let rate = h.m.funding_rate();
    assert!(rate > 0);
    let ev = h.funding();
    let paid: Vec<(UserId, i128)> =
        ev.iter().filter_map(|e| if let Event::FundingPaid(p) = e { Some((p.user, p.amount)) } else { None }).collect();
    let round = ev.iter().find_map(|e| if let Event::FundingSettled(r) = e { Some(*r) } else { None }).unwrap();
    assert!(paid.iter().find(|(u, _)| *u == A).unwrap().1 < 0, "the long pays");
    assert!(paid.iter().filter(|(u, _)| *u != A).all(|(_, a)| *a > 0), "the shorts receive");
    assert_eq!(paid.iter().map(|(_, a)| a).sum::<i128>() + round.to_fund, 0, "zero-sum, the residue to the fund");
    assert_eq!(round.positions, 3);
    // The same time again is refused.
    let mut ev = Vec::new();
    let now = h.now;
    assert_eq!(h.m.execute(&Command::Funding { timestamp: now }, &mut ev), Err(CommandError::FundingSettled));
}

#[test]
fn a_close_beyond_the_bankruptcy_price_does_not_trade() {
    let mut h = H::new();
    h.order(B, Side::Sell, 500_000, 10, 50, TimeInForce::Gtc);
    h.order(A, Side::Buy, 500_000, 10, 50, TimeInForce::Gtc);
    // No index yet, so nothing liquidates A; a bid below its bankruptcy price (490,000)
    // but inside the price band around the last trade.
    h.order(C, Side::Buy, 480_000, 10, 10, TimeInForce::Gtc);
    let ev = h.order(A, Side::Sell, 480_000, 10, 50, TimeInForce::Ioc);
    assert!(trades(&ev).is_empty());
    assert!(ev.iter().any(|e| matches!(e, Event::OrderCancelled(c) if c.reason == CancelReason::BankruptcyPrice)));
    assert_eq!(h.m.position(A).size, 10);
}

#[test]
fn the_perpetual_state_survives_a_snapshot() {
    let mut h = H::new();
    h.order(B, Side::Sell, 500_000, 10, 50, TimeInForce::Gtc);
    h.order(A, Side::Buy, 500_000, 10, 50, TimeInForce::Gtc);
    h.order(C, Side::Buy, 495_000, 10, 10, TimeInForce::Gtc);
    h.index(490_000);
    assert!(h.m.perp().fund > 0);
    let restored = Market::restore(h.m.spec().clone(), &h.m.snapshot()).unwrap();
    assert_eq!(restored.perp(), h.m.perp());
    assert_eq!(restored.snapshot(), h.m.snapshot());
}

fn cancel_reasons(ev: &[Event]) -> Vec<CancelReason> {
    ev.iter().filter_map(|e| if let Event::OrderCancelled(c) = e { Some(c.reason) } else { None }).collect()
}

fn started(ev: &[Event]) -> Vec<UserId> {
    ev.iter().filter_map(|e| if let Event::LiquidationStarted(l) = e { Some(l.user) } else { None }).collect()
}

#[test]
fn a_sell_locks_for_the_bid_it_meets_and_never_fills_past_its_lock() {
    let mut h = H::new();
    h.index(500_000);
    h.order(B, Side::Buy, 510_000, 10, 10, TimeInForce::Gtc);
    // A SELL limited at 490,000 fills at the bid, 510,000: the risk step locks for that.
    let mut o = NewOrder {
        id: OrderId(100),
        user: A,
        side: Side::Sell,
        kind: OrderType::Limit { price: 490_000, tif: TimeInForce::Ioc },
        quantity: 10,
        leverage: 1,
        reduce_only: false,
        client_order_id: None,
        locked_margin: 0,
        timestamp: 2_000,
        stp: Default::default(),
        good_till: 0,
    };
    h.m.price_order(&mut o).unwrap();
    let spec = h.m.spec();
    let at_bid = spec.margin(510_000, 10, 1) + spec.fee(spec.notional(510_000, 10), false);
    let at_limit = spec.margin(490_000, 10, 1) + spec.fee(spec.notional(490_000, 10), false) + 10 * 10_000 * 10_000;
    assert_eq!(i128::from(o.locked_margin), at_bid.max(at_limit));
    // A higher bid arrives between pricing and matching: the lock does not pay for a
    // fill there (its fee), so the order stops where the money does, and nothing comes
    // out of the available balance.
    let mut short = o;
    short.locked_margin = narrow(spec.fee(spec.notional(490_000, 10), false));
    short.leverage = 100;
    h.order(C, Side::Buy, 560_000, 10, 2, TimeInForce::Gtc);
    let ev = h.run(Command::Place(short));
    assert!(trades(&ev).is_empty(), "{ev:?}");
    assert_eq!(cancel_reasons(&ev), [CancelReason::InsufficientMargin]);
    // With the lock priced now, it fills at 560,000 and the lock pays for everything.
    h.m.price_order(&mut o).unwrap();
    let ev = h.run(Command::Place(o));
    let t = trades(&ev);
    assert_eq!((t[0].price, t[0].quantity), (560_000, 10));
    let seller = t[0].seller;
    assert!(seller.margin_released + seller.pnl - seller.fee >= 0, "{seller:?}");
}

#[test]
fn limit_prices_must_lie_in_the_band_around_the_mark() {
    let mut h = H::new();
    let order = |price| NewOrder {
        id: OrderId(99),
        user: A,
        side: Side::Buy,
        kind: OrderType::Limit { price, tif: TimeInForce::Gtc },
        quantity: 1,
        leverage: 1,
        reduce_only: false,
        client_order_id: None,
        locked_margin: 0,
        timestamp: 1,
        stp: Default::default(),
        good_till: 0,
    };
    // Neither mark nor trade: anything goes.
    assert!(h.m.price_order(&mut order(1)).is_ok());
    h.order(B, Side::Sell, 400_000, 1, 10, TimeInForce::Gtc);
    h.order(C, Side::Buy, 400_000, 1, 10, TimeInForce::Gtc);
    // Around the last trade before the first mark.
    assert_eq!(h.m.price_band(), Some((340_000, 460_000)));
    h.index(500_000);
    assert_eq!(h.m.price_band(), Some((425_000, 575_000)));
    assert_eq!(h.m.price_order(&mut order(424_999)), Err(PriceError::OutOfBand));
    assert_eq!(h.m.price_order(&mut order(575_001)), Err(PriceError::OutOfBand));
    assert!(h.m.price_order(&mut order(575_000)).is_ok());
    // The engine refuses it too (the mark may move after pricing), and nothing changes.
    let ev = h.order(A, Side::Buy, 600_000, 1, 10, TimeInForce::Gtc);
    assert_eq!(cancel_reasons(&ev), [CancelReason::PriceOutOfBand]);
    assert!(h.m.book().best_price(Side::Buy).is_none());
}

#[test]
fn a_reduce_only_close_pays_its_fee_from_the_position_or_does_not_trade() {
    let mut h = H::new();
    // A is long 10 lots at 500,000 with 20x: margin 5 % of the notional.
    h.order(B, Side::Sell, 500_000, 10, 20, TimeInForce::Gtc);
    h.order(A, Side::Buy, 500_000, 10, 20, TimeInForce::Gtc);
    // Closing at 475,000 loses exactly the margin; the fee on the close would come out
    // of the balance: refused.
    h.order(C, Side::Buy, 475_000, 10, 10, TimeInForce::Gtc);
    let ev = h.place(A, Side::Sell, OrderType::Limit { price: 475_000, tif: TimeInForce::Ioc }, 10, 20, true);
    assert!(trades(&ev).is_empty(), "{ev:?}");
    assert_eq!(cancel_reasons(&ev), [CancelReason::BankruptcyPrice]);
    // A little above, the margin pays loss and fee: it closes.
    h.order(C, Side::Buy, 476_000, 10, 10, TimeInForce::Gtc);
    let ev = h.place(A, Side::Sell, OrderType::Limit { price: 476_000, tif: TimeInForce::Ioc }, 10, 20, true);
    let t = trades(&ev);
    assert_eq!(t.len(), 1);
    let s = t[0].seller;
    assert!(s.margin_released + s.pnl - s.fee >= 0, "{s:?}");
    assert_eq!(h.m.position(A).size, 0);
}

/// 70 longs at 520,000 and 70 shorts at 470,000, all at 100x and opened before any
/// index: at a mark of 500,000 every one of them is due, and none can be closed (an
/// empty book, and every opposite position is due itself).
fn stuck_positions(h: &mut H) -> Vec<UserId> {
    let mut due = Vec::new();
    for i in 0..70 {
        let (long, seller, short) = (UserId(1_000 + i), UserId(2_000 + i), UserId(3_000 + i));
        h.order(seller, Side::Sell, 520_000, 1, 100, TimeInForce::Gtc);
        h.order(long, Side::Buy, 520_000, 1, 100, TimeInForce::Gtc);
        h.order(short, Side::Sell, 470_000, 1, 100, TimeInForce::Gtc);
        h.order(seller, Side::Buy, 470_000, 1, 100, TimeInForce::Gtc);
        assert_eq!(h.m.position(seller).size, 0);
        due.extend([long, short]);
    }
    due.sort_unstable();
    due
}

#[test]
fn liquidation_passes_go_round_every_due_position_once() {
    let mut h = H::new();
    let due = stuck_positions(&mut h);
    let mut attempted = started(&h.index(500_000));
    assert_eq!(attempted, due[..MAX_LIQUIDATIONS], "the first pass starts at the lowest user");
    assert!(h.m.perp().pending());
    while h.m.perp().pending() {
        h.now += 1;
        attempted.extend(started(&h.run(Command::Liquidate { timestamp: h.now })));
        assert!(attempted.len() <= due.len(), "each due position once per pass");
    }
    assert_eq!(attempted, due, "every one of them, once, in order");
    // Nothing to do until the mark moves again: no sweep loops on positions that cannot close.
    h.now += 1;
    assert!(h.run(Command::Liquidate { timestamp: h.now }).is_empty());
    assert!(h.m.positions().iter().filter(|(_, p)| p.size != 0).count() == 140);
    // A new mark starts a new pass after the last position attempted (the top, so from
    // the bottom again); interrupted part-way, the next pass goes on where it stopped.
    assert_eq!(started(&h.index(500_000)), due[..MAX_LIQUIDATIONS]);
    assert_eq!(started(&h.index(500_000)), due[MAX_LIQUIDATIONS..2 * MAX_LIQUIDATIONS]);
}

#[test]
fn the_fund_pays_a_shortfall_before_anyone_is_deleveraged() {
    let mut h = H::new();
    h.index(500_000);
    // A first liquidation leaves margin to the fund: A long at 50x, C's bid between its
    // liquidation and bankruptcy prices.
    h.order(B, Side::Sell, 500_000, 10, 10, TimeInForce::Gtc);
    h.order(A, Side::Buy, 500_000, 10, 50, TimeInForce::Gtc);
    let liq = liquidation_price(h.m.spec(), &h.m.position(A)).unwrap();
    h.order(C, Side::Buy, liq - 10, 10, 10, TimeInForce::Gtc);
    h.index(liq);
    let fund = h.m.perp().fund;
    assert!(fund > 0);
    // D long 1 lot at 490,000 with 50x (bankrupt at 480,200); the only bid is at 479,000.
    const D: UserId = UserId(4);
    const E: UserId = UserId(5);
    const F: UserId = UserId(6);
    h.order(E, Side::Sell, 490_000, 1, 10, TimeInForce::Gtc);
    h.order(D, Side::Buy, 490_000, 1, 50, TimeInForce::Gtc);
    let margin = h.m.position(D).margin;
    assert_eq!(bankruptcy_price(h.m.spec(), &h.m.position(D)), 480_200);
    h.order(F, Side::Buy, 479_000, 1, 10, TimeInForce::Gtc);
    let ev = h.index(481_000);
    let l = ended(&ev);
    assert_eq!((l[0].user, l[0].filled, l[0].deleveraged), (D, 1, 0), "the book took it, the fund paid");
    let t = trades(&ev);
    assert!(!t[0].adl && t[0].price == 479_000);
    let shortfall = i128::from(480_200 - 479_000) * 10_000;
    assert_eq!(l[0].to_fund, -shortfall);
    assert_eq!(h.m.perp().fund, fund - shortfall);
    // D lost exactly its margin.
    assert_eq!(t[0].seller.pnl - l[0].to_fund, -margin);
}

#[test]
fn without_a_fund_a_bankrupt_close_is_deleveraged_at_the_bankruptcy_price() {
    let mut h = H::new();
    h.index(490_000);
    h.order(B, Side::Sell, 490_000, 1, 10, TimeInForce::Gtc);
    h.order(A, Side::Buy, 490_000, 1, 50, TimeInForce::Gtc);
    h.order(C, Side::Buy, 479_000, 1, 10, TimeInForce::Gtc);
    let ev = h.index(481_000);
    let l = ended(&ev);
    assert_eq!((l[0].filled, l[0].deleveraged), (0, 1));
    assert!(trades(&ev).iter().all(|t| t.adl && t.price == 480_200));
    assert_eq!(h.m.perp().fund, 0);
}

#[test]
fn funding_never_takes_a_position_to_its_liquidation() {
    let mut h = H::new();
    h.index(500_000);
    // A book around 510,000 for a whole window, then trades there: the mark rises to
    // its band, 510,000, and funding is paid by longs at a high rate.
    h.order(B, Side::Buy, 509_000, 10, 10, TimeInForce::Gtc);
    h.order(C, Side::Sell, 511_000, 100, 10, TimeInForce::Gtc);
    h.wait(300_000);
    h.index(500_000);
    h.order(B, Side::Buy, 511_000, 1, 10, TimeInForce::Ioc);
    h.index(500_000);
    assert!(h.m.perp().mark >= Some(509_990), "{:?}", h.m.perp().mark);
    // A 100x long at 511,000: its margin less maintenance is less than one payment.
    h.order(A, Side::Buy, 511_000, 10, 100, TimeInForce::Ioc);
    let before = h.m.position(A);
    let mark = h.m.perp().mark.unwrap();
    let health = Health::of(h.m.spec(), &before, mark);
    let rate = h.m.funding_rate();
    let owed = div_ceil(health.notional * i128::from(rate), i128::from(RATE_ONE));
    assert!(owed > health.equity - health.maintenance, "the payment would liquidate it");
    let ev = h.funding();
    let paid = ev.iter().find_map(|e| if let Event::FundingPaid(p) = e { (p.user == A).then_some(p.amount) } else { None }).unwrap();
    assert_eq!(paid, -(health.equity - health.maintenance - 1));
    assert!(ended(&ev).is_empty(), "no one liquidated");
    assert!(!Health::of(h.m.spec(), &h.m.position(A), mark).liquidatable());
}

#[test]
fn a_refused_funding_changes_nothing_and_a_manual_one_takes_the_scheduled_ones_place() {
    let mut h = H::new();
    h.index(500_000);
    h.order(B, Side::Sell, 500_000, 10, 10, TimeInForce::Gtc);
    h.order(A, Side::Buy, 500_000, 10, 10, TimeInForce::Gtc);
    // Settled "now" (between funding times): that settles the coming funding time.
    let interval = i64::try_from(h.m.spec().funding_interval_secs).unwrap() * 1000;
    assert!(!h.funding().is_empty());
    assert_eq!(h.m.perp().last_funding_time, next_funding_time(h.now, h.m.spec().funding_interval_secs));
    let scheduled = h.m.perp().last_funding_time;
    let before = h.m.snapshot();
    let mut ev = Vec::new();
    assert_eq!(h.m.execute(&Command::Funding { timestamp: scheduled }, &mut ev), Err(CommandError::FundingSettled));
    assert!(ev.is_empty());
    assert_eq!(h.m.snapshot(), before, "a refused settlement changes nothing");
    // The next funding time is one interval on (with a fresh index by then).
    h.now = scheduled + interval;
    h.index(500_000);
    assert!(h.m.execute(&Command::Funding { timestamp: h.now }, &mut ev).is_ok());
}

#[test]
fn a_stale_index_pauses_liquidation_and_funding() {
    let mut h = H::new();
    let due = stuck_positions(&mut h);
    h.index(500_000);
    assert!(h.m.perp().pending());
    let age = i64::try_from(h.m.spec().index_max_age_secs).unwrap() * 1000;
    h.wait(age + 1);
    assert!(h.m.index_stale(h.now));
    let before = h.m.snapshot();
    assert!(h.run(Command::Liquidate { timestamp: h.now }).is_empty(), "no liquidation on a stale index");
    let mut ev = Vec::new();
    assert_eq!(h.m.execute(&Command::Funding { timestamp: h.now }, &mut ev), Err(CommandError::IndexStale));
    assert!(ev.is_empty());
    assert_eq!(h.m.snapshot(), before);
    // A fresh index resumes both.
    assert_eq!(started(&h.index(500_000)).len(), MAX_LIQUIDATIONS);
    assert!(h.funding().iter().any(|e| matches!(e, Event::FundingSettled(_))));
    assert!(due.len() > MAX_LIQUIDATIONS);
}
