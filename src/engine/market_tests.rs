//! The rules a trader meets, one case each.

use super::*;
use crate::engine::symbol::btc;
use crate::engine::units::narrow;

struct Harness {
    market: Market,
    next_id: u64,
}

const A: UserId = UserId(1);
const B: UserId = UserId(2);
const C: UserId = UserId(3);
const D: UserId = UserId(4);

impl Harness {
    fn new() -> Self {
        Self::with(btc())
    }

    fn with(spec: SymbolSpec) -> Self {
        Self { market: Market::new(spec), next_id: 0 }
    }

    fn order(&mut self, user: UserId, side: Side, kind: OrderType, qty: Lots) -> NewOrder {
        self.next_id += 1;
        let lock_price = match kind {
            OrderType::Limit { price, .. } => price,
            OrderType::Market => self.market.market_limit(side).unwrap_or(1),
            OrderType::MarketWithin { limit } | OrderType::Liquidation { price: limit } => limit,
        };
        NewOrder {
            id: OrderId(self.next_id),
            user,
            side,
            kind,
            quantity: qty,
            leverage: 1,
            reduce_only: false,
            client_order_id: None,
            locked_margin: narrow(self.market.spec().margin(lock_price, qty, 1)),
            timestamp: 1_000 + self.next_id as i64,
            stp: Default::default(),
            good_till: 0,
        }
    }

    fn submit(&mut self, order: NewOrder) -> Vec<Event> {
        let mut events = Vec::new();
        self.market.execute(&Command::Place(order), &mut events).unwrap();
        events
    }

    fn limit(&mut self, user: UserId, side: Side, price: Ticks, qty: Lots, tif: TimeInForce) -> Vec<Event> {
        let o = self.order(user, side, OrderType::Limit { price, tif }, qty);
        self.submit(o)
    }

    fn gtc(&mut self, user: UserId, side: Side, price: Ticks, qty: Lots) -> Vec<Event> {
        self.limit(user, side, price, qty, TimeInForce::Gtc)
    }

    fn market(&mut self, user: UserId, side: Side, qty: Lots) -> Vec<Event> {
        let o = self.order(user, side, OrderType::Market, qty);
        self.submit(o)
    }

    fn depth(&self, side: Side) -> Vec<(Ticks, Lots)> {
        self.market.book().depth(side).collect()
    }
}

fn trades(events: &[Event]) -> Vec<(Ticks, Lots, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::TradeExecuted(t) => Some((t.price, t.quantity, t.maker().order_id.0)),
            _ => None,
        })
        .collect()
}

fn cancelled(events: &[Event]) -> Vec<(u64, CancelReason, Lots)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::OrderCancelled(c) => Some((c.order_id.0, c.reason, c.filled)),
            _ => None,
        })
        .collect()
}

#[test]
fn partial_fill_across_levels_trades_at_maker_prices_in_fifo_order() {
    let mut h = Harness::new();
    h.gtc(A, Side::Sell, 101, 2); // id 1
    h.gtc(B, Side::Sell, 100, 1); // id 2
    h.gtc(C, Side::Sell, 100, 1); // id 3
    let ev = h.gtc(D, Side::Buy, 101, 5); // id 4
    assert_eq!(trades(&ev), [(100, 1, 2), (100, 1, 3), (101, 2, 1)]);
    // 1 lot left rests at the taker's price.
    assert!(matches!(ev.last(), Some(Event::OrderPlaced(p)) if p.filled == 4 && p.price == 101));
    assert_eq!(h.depth(Side::Buy), [(101, 1)]);
    assert_eq!(h.depth(Side::Sell), []);
    let seqs: Vec<u64> = ev.iter().map(Event::seq).collect();
    assert_eq!(seqs, [4, 5, 6, 7]);
}

#[test]
fn ioc_cancels_its_rest() {
    let mut h = Harness::new();
    h.gtc(A, Side::Sell, 100, 1);
    let ev = h.limit(B, Side::Buy, 100, 3, TimeInForce::Ioc);
    assert_eq!(trades(&ev), [(100, 1, 1)]);
    assert_eq!(cancelled(&ev), [(2, CancelReason::Unfilled, 1)]);
    assert!(h.market.book().is_empty());
}

#[test]
fn fok_exactly_fillable_fills_and_one_more_lot_is_rejected() {
    let mut h = Harness::new();
    h.gtc(A, Side::Sell, 100, 2);
    h.gtc(A, Side::Sell, 101, 3);
    let ev = h.limit(B, Side::Buy, 101, 6, TimeInForce::Fok);
    assert_eq!(cancelled(&ev), [(3, CancelReason::FokUnfillable, 0)]);
    assert_eq!(h.depth(Side::Sell), [(100, 2), (101, 3)], "a rejected FOK changes nothing");
    let ev = h.limit(B, Side::Buy, 101, 5, TimeInForce::Fok);
    assert_eq!(trades(&ev), [(100, 2, 1), (101, 3, 2)]);
    assert!(h.market.book().is_empty());
}

#[test]
fn post_only_touching_the_spread_is_rejected_and_inside_rests() {
    let mut h = Harness::new();
    h.gtc(A, Side::Sell, 100, 1);
    let ev = h.limit(B, Side::Buy, 100, 1, TimeInForce::PostOnly);
    assert_eq!(cancelled(&ev), [(2, CancelReason::WouldTake, 0)]);
    match &ev[0] {
        Event::OrderCancelled(c) => assert_eq!(c.released_margin, 100 * 10_000, "whole lock released"),
        other => panic!("{other:?}"),
    }
    let ev = h.limit(B, Side::Buy, 99, 1, TimeInForce::PostOnly);
    assert!(matches!(ev[..], [Event::OrderPlaced(_)]));
}

#[test]
fn market_order_stops_at_the_protection_band() {
    let mut h = Harness::new();
    h.gtc(A, Side::Sell, 1000, 1);
    h.gtc(B, Side::Buy, 1000, 1); // last trade 1000: band for buys is 1050
    h.gtc(A, Side::Sell, 1040, 1);
    h.gtc(A, Side::Sell, 1050, 1);
    h.gtc(A, Side::Sell, 1051, 1);
    let ev = h.market(C, Side::Buy, 5);
    assert_eq!(trades(&ev), [(1040, 1, 3), (1050, 1, 4)]);
    assert_eq!(cancelled(&ev), [(6, CancelReason::Unfilled, 2)]);
    assert_eq!(h.depth(Side::Sell), [(1051, 1)]);
}

#[test]
fn a_priced_market_order_never_fills_beyond_the_price_it_was_locked_at() {
    let mut h = Harness::new();
    h.gtc(A, Side::Sell, 1000, 1);
    h.gtc(B, Side::Buy, 1000, 1); // last trade 1000: band for buys is 1050
    // Priced (and locked) now, at 1050...
    let limit = h.market.market_limit(Side::Buy).unwrap();
    assert_eq!(limit, 1050);
    let priced = h.order(C, Side::Buy, OrderType::MarketWithin { limit }, 3);
    // ...but before it executes the market trades at 1040, moving the band to 1092.
    h.gtc(A, Side::Sell, 1040, 1);
    h.gtc(B, Side::Buy, 1040, 1);
    h.gtc(A, Side::Sell, 1050, 1);
    h.gtc(A, Side::Sell, 1060, 1);
    let ev = h.submit(priced);
    // It fills at 1050, not at 1060: its margin covers no more.
    assert_eq!(trades(&ev).iter().map(|t| (t.0, t.1)).collect::<Vec<_>>(), [(1050, 1)]);
    assert_eq!(h.depth(Side::Sell), [(1060, 1)]);
    // Nor beyond today's band when that is the tighter one.
    let mut h = Harness::new();
    h.gtc(A, Side::Sell, 1000, 1);
    h.gtc(B, Side::Buy, 1000, 1);
    h.gtc(A, Side::Sell, 1051, 1);
    let loose = h.order(C, Side::Buy, OrderType::MarketWithin { limit: 2000 }, 1);
    let ev = h.submit(loose);
    assert!(trades(&ev).is_empty());
}

#[test]
fn market_order_without_any_reference_price_is_rejected() {
    let mut h = Harness::new();
    let ev = h.market(A, Side::Buy, 1);
    assert_eq!(cancelled(&ev), [(1, CancelReason::NoLiquidity, 0)]);
    assert!(CancelReason::NoLiquidity.is_rejection());
    // Before the first trade the best opposite price is the reference.
    h.gtc(B, Side::Sell, 1000, 1);
    let ev = h.market(A, Side::Buy, 1);
    assert_eq!(trades(&ev), [(1000, 1, 2)]);
}

#[test]
fn flip_from_long_to_short_in_one_fill() {
    let mut h = Harness::new();
    h.gtc(A, Side::Sell, 1000, 3);
    h.gtc(B, Side::Buy, 1000, 3); // B long 3 @ 1000
    h.gtc(C, Side::Buy, 900, 5);
    let ev = h.gtc(B, Side::Sell, 900, 5); // B sells 5 @ 900: closes 3, opens short 2
    let Event::TradeExecuted(t) = ev[0] else { panic!("{ev:?}") };
    assert_eq!(t.seller.user, B);
    assert_eq!(t.seller.pnl, -3 * 100 * 10_000);
    assert_eq!(t.seller.position.size, -2);
    assert_eq!(t.seller.position.cost, 2 * 900 * 10_000);
    assert_eq!(h.market.position(B).size, -2);
}

#[test]
fn reduce_only_is_rejected_when_it_would_increase_or_flip() {
    let mut h = Harness::new();
    let mut o = h.order(A, Side::Sell, OrderType::Limit { price: 100, tif: TimeInForce::Gtc }, 1);
    o.reduce_only = true;
    assert_eq!(cancelled(&h.submit(o)), [(1, CancelReason::ReduceOnlyRejected, 0)]);
    h.gtc(B, Side::Sell, 100, 2);
    h.gtc(A, Side::Buy, 100, 2); // A long 2
    let mut flip = h.order(A, Side::Sell, OrderType::Limit { price: 100, tif: TimeInForce::Gtc }, 3);
    flip.reduce_only = true;
    assert_eq!(cancelled(&h.submit(flip)), [(4, CancelReason::ReduceOnlyRejected, 0)]);
    let mut add = h.order(A, Side::Buy, OrderType::Limit { price: 90, tif: TimeInForce::Gtc }, 1);
    add.reduce_only = true;
    assert_eq!(cancelled(&h.submit(add)), [(5, CancelReason::ReduceOnlyRejected, 0)]);
}

#[test]
fn reduce_only_after_partial_close_never_flips() {
    let mut h = Harness::new();
    h.gtc(B, Side::Sell, 100, 10);
    h.gtc(A, Side::Buy, 100, 10); // A long 10
    let mut ro = h.order(A, Side::Sell, OrderType::Limit { price: 110, tif: TimeInForce::Gtc }, 10);
    ro.reduce_only = true;
    h.submit(ro); // id 3 rests
    h.gtc(C, Side::Buy, 105, 4);
    h.gtc(A, Side::Sell, 105, 4); // A closes 4 elsewhere: long 6
    h.gtc(C, Side::Sell, 111, 5); // id 6, behind the reduce-only order
    let ev = h.gtc(B, Side::Buy, 111, 10);
    // 6 from the reduce-only order, its rest cancelled, then 4 from C.
    assert_eq!(trades(&ev), [(110, 6, 3), (111, 4, 6)]);
    assert_eq!(cancelled(&ev), [(3, CancelReason::ReduceOnly, 6)]);
    assert_eq!(h.market.position(A).size, 0);
}

#[test]
fn cancel_releases_what_is_still_locked() {
    let mut h = Harness::new();
    h.gtc(A, Side::Sell, 100, 4); // locks 400 × 10_000 at leverage 1
    h.gtc(B, Side::Buy, 100, 1);
    let mut ev = Vec::new();
    assert_eq!(
        h.market.execute(&Command::Cancel { id: OrderId(1), user: B, timestamp: 0 }, &mut ev),
        Err(CommandError::OrderNotOpen),
        "another user's order is not theirs to cancel"
    );
    h.market.execute(&Command::Cancel { id: OrderId(1), user: A, timestamp: 9 }, &mut ev).unwrap();
    let Event::OrderCancelled(c) = ev[0] else { panic!() };
    assert_eq!((c.filled, c.released_margin, c.reason), (1, 300 * 10_000, CancelReason::UserRequest));
    assert_eq!(
        h.market.execute(&Command::Cancel { id: OrderId(1), user: A, timestamp: 9 }, &mut ev),
        Err(CommandError::OrderNotOpen)
    );
}

#[test]
fn cancel_all_takes_only_the_users_orders_in_priority_order() {
    let mut h = Harness::new();
    h.gtc(A, Side::Buy, 99, 1);
    h.gtc(B, Side::Buy, 99, 1);
    h.gtc(A, Side::Buy, 100, 1);
    h.gtc(A, Side::Sell, 105, 1);
    let mut ev = Vec::new();
    h.market.execute(&Command::CancelAll { user: A, timestamp: 0 }, &mut ev).unwrap();
    let ids: Vec<u64> = cancelled(&ev).iter().map(|c| c.0).collect();
    assert_eq!(ids, [3, 1, 4]);
    assert_eq!(h.depth(Side::Buy), [(99, 1)]);
}

#[test]
fn client_order_ids_are_unique_per_user_among_open_orders() {
    let mut h = Harness::new();
    let cid = ClientOrderId::new("my-1").unwrap();
    let mut o = h.order(A, Side::Buy, OrderType::Limit { price: 90, tif: TimeInForce::Gtc }, 1);
    o.client_order_id = Some(cid);
    h.submit(o);
    let mut dup = h.order(A, Side::Buy, OrderType::Limit { price: 91, tif: TimeInForce::Gtc }, 1);
    dup.client_order_id = Some(cid);
    assert_eq!(cancelled(&h.submit(dup)), [(2, CancelReason::DuplicateClientOrderId, 0)]);
    let mut other = h.order(B, Side::Buy, OrderType::Limit { price: 91, tif: TimeInForce::Gtc }, 1);
    other.client_order_id = Some(cid);
    assert!(matches!(h.submit(other)[..], [Event::OrderPlaced(_)]), "another user may use the same id");
    // Once filled, the id is free again in the engine (the account layer remembers closed orders).
    h.gtc(C, Side::Sell, 90, 2);
    assert_eq!(h.market.client_order_id(OrderId(1)), None);
    let dup_id = h.order(A, Side::Buy, OrderType::Limit { price: 80, tif: TimeInForce::Gtc }, 1);
    let again = h.submit(dup_id);
    assert!(matches!(again[..], [Event::OrderPlaced(_)]));
    let mut same_id = h.order(A, Side::Buy, OrderType::Limit { price: 80, tif: TimeInForce::Gtc }, 1);
    same_id.id = OrderId(5);
    assert_eq!(cancelled(&h.submit(same_id)), [(5, CancelReason::DuplicateOrderId, 0)]);
}

#[test]
fn fees_are_maker_and_taker_rates_rounded_up() {
    let mut h = Harness::new();
    h.gtc(A, Side::Sell, 500_005, 7);
    let ev = h.gtc(B, Side::Buy, 500_005, 7);
    let Event::TradeExecuted(t) = ev[0] else { panic!() };
    let notional = 500_005 * 7 * 10_000_i64; // 3500.035 USDT
    assert_eq!(t.seller.fee, i128::from((notional as u64 * 2).div_ceil(10_000))); // 0.0002
    assert_eq!(t.buyer.fee, i128::from((notional as u64 * 5).div_ceil(10_000))); // 0.0005
}

#[test]
fn fees_that_do_not_come_out_even_round_up_by_a_unit() {
    // 0.025 % and 0.075 %: on an odd number of tick-lots (10,000 units each) the fee has a
    // half unit, which the exchange keeps.
    let d = |s: &str| s.parse::<rust_decimal::Decimal>().unwrap();
    let spec = SymbolSpec::new("BTC-PERP", d("0.1"), d("0.001"), 100, d("0.00025"), d("0.00075"), d("0.05"), 0).unwrap();
    let mut h = Harness::with(spec);
    h.gtc(A, Side::Sell, 500_005, 7);
    let ev = h.gtc(B, Side::Buy, 500_005, 7);
    let Event::TradeExecuted(t) = ev[0] else { panic!() };
    // 3,500,035 tick-lots: 8,750,087.5 and 26,250,262.5 units, rounded up.
    assert_eq!((t.seller.fee, t.buyer.fee), (8_750_088, 26_250_263));
}

#[test]
fn invalid_orders_are_refused_without_changing_anything() {
    let mut h = Harness::new();
    h.gtc(A, Side::Sell, 100, 1);
    for mutate in [
        (|o: &mut NewOrder| o.quantity = 0) as fn(&mut NewOrder),
        |o| o.leverage = 0,
        |o| o.leverage = 101,
        |o| o.locked_margin = -1,
        |o| o.kind = OrderType::Limit { price: 0, tif: TimeInForce::Gtc },
        |o| o.quantity = crate::engine::units::MAX_LOTS,
    ] {
        let mut o = h.order(B, Side::Buy, OrderType::Limit { price: 100, tif: TimeInForce::Gtc }, 1);
        mutate(&mut o);
        let (before, seq) = (h.market.snapshot(), h.market.seq);
        let ev = h.submit(o);
        assert!(matches!(ev[..], [Event::OrderCancelled(c)] if c.reason == CancelReason::InvalidOrder), "{ev:?}");
        // All as it was but the event sequence, which numbered the refusal.
        let mut after = Market::restore(h.market.spec().clone(), &h.market.snapshot()).unwrap();
        assert_eq!(after.seq, seq + 1);
        after.seq = seq;
        assert_eq!(after.snapshot(), before, "the book, the positions and the last price are as they were");
        assert_eq!(h.depth(Side::Sell), [(100, 1)]);
    }
}

#[test]
fn snapshot_restore_is_the_same_state() {
    let mut h = Harness::new();
    let mut o = h.order(A, Side::Buy, OrderType::Limit { price: 90, tif: TimeInForce::Gtc }, 3);
    o.client_order_id = Some(ClientOrderId::new("x").unwrap());
    h.submit(o);
    h.gtc(B, Side::Sell, 95, 2);
    h.gtc(C, Side::Buy, 95, 1);
    let bytes = h.market.snapshot();
    let restored = Market::restore(btc(), &bytes).unwrap();
    assert_eq!(restored.snapshot(), bytes);
    assert_eq!(restored.seq(), h.market.seq());
    assert_eq!(restored.client_order_id(OrderId(1)), h.market.client_order_id(OrderId(1)));

    let mut bad = bytes.clone();
    bad[6] = 9;
    assert!(matches!(Market::restore(btc(), &bad), Err(crate::engine::SnapshotError::UnsupportedVersion(9))));
    assert!(Market::restore(btc(), &bytes[..bytes.len() - 3]).is_err());
    assert!(Market::restore(btc(), b"nonsense").is_err());
}

#[test]
fn a_taker_never_trades_with_its_own_resting_order() {
    for taker_side in [Side::Buy, Side::Sell] {
        let mut h = Harness::new();
        // A rests 1 lot at the best price, B 1 lot behind it; A then takes 2 lots.
        h.gtc(A, taker_side.opposite(), 1000, 1);
        h.gtc(B, taker_side.opposite(), if taker_side == Side::Buy { 1001 } else { 999 }, 1);
        let ev = h.limit(A, taker_side, if taker_side == Side::Buy { 1001 } else { 999 }, 2, TimeInForce::Gtc);
        // Self-trade prevention (EXPIRE_TAKER): it stops at its own order, before B's.
        assert!(trades(&ev).is_empty(), "taker {taker_side:?}: {ev:?}");
        assert!(matches!(ev[..], [Event::OrderCancelled(Cancelled { reason: CancelReason::SelfTrade, filled: 0, .. })]), "{ev:?}");
        assert_eq!(h.market.book().len(), 2, "the resting orders stay");
        assert_eq!(h.market.position(A).size, 0);
        // FOK counts only what it could fill before its own order.
        let ev = h.limit(A, taker_side, if taker_side == Side::Buy { 1001 } else { 999 }, 1, TimeInForce::Fok);
        assert_eq!(cancelled(&ev), [(4, CancelReason::FokUnfillable, 0)]);
    }
}

#[test]
fn expire_maker_cancels_the_own_order_and_goes_on_expire_both_stops_too() {
    use crate::engine::SelfTradePrevention as Stp;
    for (mode, taker_fills) in [(Stp::ExpireMaker, 1), (Stp::ExpireBoth, 0)] {
        let mut h = Harness::new();
        h.gtc(A, Side::Sell, 1000, 1);
        h.gtc(B, Side::Sell, 1001, 1);
        // A FOK for 2 fills entirely only by going past its own order: never.
        let fok = NewOrder { stp: mode, ..h.order(A, Side::Buy, OrderType::Limit { price: 1001, tif: TimeInForce::Fok }, 2) };
        let ev = h.submit(fok);
        assert!(trades(&ev).is_empty() && h.market.book().len() == 2, "{mode:?}: a refused FOK cancels nothing: {ev:?}");
        let taker = NewOrder { stp: mode, ..h.order(A, Side::Buy, OrderType::Limit { price: 1001, tif: TimeInForce::Gtc }, 2) };
        let ev = h.submit(taker);
        // A's own ask is cancelled (SELF_TRADE) either way.
        assert!(
            matches!(ev[0], Event::OrderCancelled(Cancelled { order_id: OrderId(1), reason: CancelReason::SelfTrade, .. })),
            "{mode:?}: {ev:?}"
        );
        assert_eq!(trades(&ev).len(), taker_fills, "{mode:?}: {ev:?}");
        assert_eq!(h.market.position(A).size, i128::from(taker_fills as i64));
        if mode == Stp::ExpireBoth {
            assert!(matches!(ev.last(), Some(Event::OrderCancelled(Cancelled { order_id: OrderId(4), reason: CancelReason::SelfTrade, .. }))), "{ev:?}");
            assert_eq!(h.market.book().len(), 1, "B's ask stays");
        } else {
            // Filled from B, the rest rests.
            assert_eq!(h.market.book().best_price(Side::Buy), Some(1001));
        }
    }
}

fn conditional(user: UserId, side: Side, kind: crate::engine::ConditionalKind, trigger: Ticks, qty: Lots) -> crate::engine::NewConditional {
    crate::engine::NewConditional {
        user,
        side,
        kind,
        trigger,
        working: crate::engine::WorkingPrice::Last,
        price: None,
        tif: TimeInForce::Gtc,
        quantity: qty,
        close_position: false,
        reduce_only: false,
        client_order_id: None,
        timestamp: 5_000,
        callback: 0,
    }
}

fn conditional_updates(events: &[Event]) -> Vec<(u64, crate::engine::ConditionalStatus)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Conditional(u) => Some((u.conditional.id, u.conditional.status)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_stop_waits_outside_the_book_and_triggers_once_when_the_last_price_reaches_it() {
    use crate::engine::{ConditionalKind, ConditionalStatus};
    let mut h = Harness::new();
    h.gtc(B, Side::Sell, 100, 1);
    h.market(C, Side::Buy, 1); // last = 100
    let mut events = Vec::new();
    // A sell stop at 100 would fire at once: refused, nothing changes.
    let seq = h.market.seq();
    let refused = h.market.execute(&Command::PlaceConditional(conditional(A, Side::Sell, ConditionalKind::Stop, 100, 1)), &mut events);
    assert_eq!(refused, Err(CommandError::Conditional(crate::engine::conditional::ConditionalRefusal::WouldTrigger)));
    assert!(events.is_empty());
    assert_eq!(h.market.seq(), seq);
    // A buy stop at 105 and a sell take-profit at 103 wait; neither holds any margin nor rests.
    h.market.execute(&Command::PlaceConditional(conditional(A, Side::Buy, ConditionalKind::Stop, 105, 2)), &mut events).unwrap();
    h.market.execute(&Command::PlaceConditional(conditional(D, Side::Sell, ConditionalKind::TakeProfit, 103, 1)), &mut events).unwrap();
    let accepted = conditional_updates(&events);
    assert_eq!(accepted.iter().map(|(_, s)| *s).collect::<Vec<_>>(), [ConditionalStatus::New, ConditionalStatus::New]);
    assert_eq!(h.depth(Side::Buy), []);
    assert_eq!(h.market.conditionals().waiting(), 2);
    // A trade at 102 reaches neither.
    h.gtc(B, Side::Sell, 102, 1);
    let events = h.market(C, Side::Buy, 1);
    assert!(conditional_updates(&events).is_empty());
    // A trade at 104 reaches the take-profit only, once.
    h.gtc(B, Side::Sell, 104, 3);
    let events = h.market(C, Side::Buy, 1);
    assert_eq!(conditional_updates(&events), [(accepted[1].0, ConditionalStatus::Triggering)]);
    let events = h.market(C, Side::Buy, 1);
    assert!(conditional_updates(&events).is_empty(), "a triggering order does not trigger again");
    assert_eq!(h.market.conditionals().waiting(), 1);
    // Its order, risk-checked, is placed by the command that says so; a second one is refused.
    let tp = accepted[1].0;
    let order = h.order(D, Side::Sell, OrderType::Market, 1);
    let mut events = Vec::new();
    h.market.execute(&Command::PlaceTriggered { conditional: tp, order }, &mut events).unwrap();
    assert_eq!(conditional_updates(&events), [(tp, ConditionalStatus::Triggered)]);
    assert_eq!(h.market.conditionals().get(tp).unwrap().order_id, Some(order.id));
    let again = h.order(D, Side::Sell, OrderType::Market, 1);
    let mut events = Vec::new();
    h.market.execute(&Command::PlaceTriggered { conditional: tp, order: again }, &mut events).unwrap();
    assert_eq!(cancelled(&events), [(again.id.0, CancelReason::InvalidOrder, 0)]);
    // Snapshot and restore keep the waiting stop and the closed take-profit.
    let restored = Market::restore(btc(), &h.market.snapshot()).unwrap();
    assert_eq!(restored.snapshot(), h.market.snapshot());
    assert_eq!(restored.conditionals().waiting(), 1);
    assert_eq!(restored.conditionals().get(tp).unwrap().status, ConditionalStatus::Triggered);
    // Cancelling the stop takes it off the queue; cancelling it again finds nothing.
    let stop = accepted[0].0;
    let mut events = Vec::new();
    h.market.execute(&Command::CancelConditional { id: Some(stop), user: A, timestamp: 9_000 }, &mut events).unwrap();
    assert_eq!(conditional_updates(&events), [(stop, ConditionalStatus::Cancelled)]);
    assert_eq!(h.market.execute(&Command::CancelConditional { id: Some(stop), user: A, timestamp: 9_001 }, &mut events), Err(CommandError::OrderNotOpen));
    assert_eq!(h.market.conditionals().waiting(), 0);
}

#[test]
fn a_mark_price_stop_triggers_on_the_index_and_a_refused_one_is_rejected() {
    use crate::engine::{ConditionalKind, ConditionalStatus, WorkingPrice};
    let mut h = Harness::new();
    let mut events = Vec::new();
    h.market.execute(&Command::IndexPrice { price: 100, timestamp: 1 }, &mut events).unwrap();
    let stop = crate::engine::NewConditional { working: WorkingPrice::Mark, close_position: true, quantity: 0, ..conditional(A, Side::Sell, ConditionalKind::Stop, 95, 0) };
    let mut events = Vec::new();
    h.market.execute(&Command::PlaceConditional(stop), &mut events).unwrap();
    let id = conditional_updates(&events)[0].0;
    let mut events = Vec::new();
    h.market.execute(&Command::IndexPrice { price: 94, timestamp: 2 }, &mut events).unwrap();
    assert_eq!(conditional_updates(&events), [(id, ConditionalStatus::Triggering)]);
    let mut events = Vec::new();
    let refuse = Command::RefuseTriggered { conditional: id, user: A, reason: CancelReason::ReduceOnlyRejected, timestamp: 3 };
    h.market.execute(&refuse, &mut events).unwrap();
    assert_eq!(conditional_updates(&events), [(id, ConditionalStatus::Rejected)]);
    assert_eq!(h.market.execute(&refuse, &mut events), Err(CommandError::OrderNotOpen));
}
