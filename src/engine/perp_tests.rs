//! Mark price, liquidation, auto-deleveraging and funding, one case each.

use super::*;
use crate::engine::command::{Command, TimeInForce};
use crate::engine::event::Trade;
use crate::engine::symbol::btc;
use crate::engine::units::Units;

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
        self.id += 1;
        self.now += 1;
        let spec = self.m.spec();
        let lock = spec.margin(price, qty, leverage) + spec.fee(spec.notional(price, qty), false);
        let o = NewOrder {
            id: OrderId(self.id),
            user,
            side,
            kind: OrderType::Limit { price, tif },
            quantity: qty,
            leverage,
            reduce_only: false,
            client_order_id: None,
            locked_margin: lock as Units,
            timestamp: self.now,
        };
        self.run(Command::Place(o))
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
fn the_mark_is_the_index_until_the_book_and_trades_say_otherwise() {
    let mut h = H::new();
    let ev = h.index(500_000);
    assert!(matches!(ev[..], [Event::PriceUpdated(PriceUpdate { index: 500_000, mark: 500_000, .. })]));
    // A bid alone is no mid: the mark stays at the index.
    h.order(A, Side::Buy, 490_000, 10, 10, TimeInForce::Gtc);
    h.index(500_000);
    assert_eq!(h.m.perp().mark, Some(500_000));
    // Book mid 505,000, trade at 510,000: the median of 500,000, 505,000, 510,000.
    h.order(B, Side::Sell, 520_000, 10, 10, TimeInForce::Gtc);
    h.order(C, Side::Sell, 510_000, 1, 10, TimeInForce::Gtc);
    h.order(A, Side::Buy, 510_000, 1, 10, TimeInForce::Ioc);
    h.index(500_000);
    assert_eq!(h.m.perp().mark, Some(505_000));
    // No trade since the last index: the last trade no longer counts.
    h.index(500_000);
    assert_eq!(h.m.perp().mark, Some(505_000).min(Some(500_000)).max(Some(500_000)));
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
    // No index yet, so nothing liquidates A; a bid far below its bankruptcy price.
    h.order(C, Side::Buy, 400_000, 10, 10, TimeInForce::Gtc);
    let ev = h.order(A, Side::Sell, 400_000, 10, 50, TimeInForce::Ioc);
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
