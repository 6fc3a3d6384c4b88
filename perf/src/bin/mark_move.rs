//! The cost of a mark move on a symbol with many open positions.
//!
//! `cargo run --release -p perf --bin mark_move [-- POSITIONS]` (default 100,000)
//!
//! Builds one market where half the positions are long and half short, each pair opened
//! by one trade at 50,000 with a leverage from 2 to 100 by user, then times, one thread:
//! - the baseline: a plain GTC order on the same market (what any command costs);
//! - an index price that moves the mark and liquidates nobody: every position is checked;
//! - an index price 2 % lower: about half the longs are due; each command liquidates at
//!   most 64 of them (against an empty book, so all by auto-deleveraging) and the rest
//!   take `Liquidate` commands, timed one by one until none is left.
//!
//! The last line is `mark_move: <N> positions, check <X> µs (<R>x an order), liquidation
//! command p50 <Y> µs max <Z> µs, <W> µs per liquidation`.

use std::time::Instant;

use exchange::engine::{Command, Event, Market, NewOrder, OrderId, OrderType, Side, SymbolSpec, TimeInForce, UserId};

const PRICE: i64 = 500_000;

/// The benchmark symbol with BTC-PERP's maintenance margin rate.
fn spec() -> SymbolSpec {
    perf::workload::spec().with_perpetual(Some("0.004".parse().unwrap()), None).unwrap()
}

fn order(spec: &SymbolSpec, id: u64, user: u64, side: Side, price: i64, leverage: u32, tif: TimeInForce, ts: i64) -> Command {
    let lock = spec.margin(price, 1, leverage) + spec.fee(spec.notional(price, 1), false);
    Command::Place(NewOrder {
        id: OrderId(id),
        user: UserId(user),
        side,
        kind: OrderType::Limit { price, tif },
        quantity: 1,
        leverage,
        reduce_only: false,
        client_order_id: None,
        locked_margin: i64::try_from(lock).unwrap(),
        timestamp: ts,
        stp: Default::default(),
        good_till: 0,
    })
}

fn micros(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let positions: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let pairs = positions / 2;
    let spec = spec();
    let mut market = Market::new(spec.clone());
    let mut events = Vec::with_capacity(1 << 16);
    let run = |market: &mut Market, c: &Command, events: &mut Vec<Event>| {
        events.clear();
        let started = Instant::now();
        let _ = market.execute(c, events);
        started.elapsed()
    };
    let mut ts = 1_700_000_000_000;
    let mut id = 0;
    for i in 0..pairs {
        let leverage = 2 + (i % 99) as u32;
        id += 1;
        ts += 1;
        run(&mut market, &order(&spec, id, 1_000_000 + i, Side::Sell, PRICE, leverage, TimeInForce::Gtc, ts), &mut events);
        id += 1;
        run(&mut market, &order(&spec, id, i + 1, Side::Buy, PRICE, leverage, TimeInForce::Ioc, ts), &mut events);
    }
    let open = market.positions().iter().filter(|(_, p)| p.size != 0).count();
    assert_eq!(open as u64, pairs * 2, "every pair opened");

    // Baseline: an order that rests far from the touch, cancelled again.
    let mut baseline = Vec::new();
    for k in 0..1_000 {
        id += 1;
        ts += 1;
        baseline.push(run(&mut market, &order(&spec, id, 9_000_000, Side::Buy, PRICE * 9 / 10, 2, TimeInForce::Gtc, ts), &mut events));
        run(&mut market, &Command::Cancel { id: OrderId(id), user: UserId(9_000_000), timestamp: ts }, &mut events);
        let _ = k;
    }
    baseline.sort_unstable();
    let order_us = micros(baseline[baseline.len() / 2]);

    // Mark moves that liquidate nobody: ±0.1 % around the entry.
    let mut checks = Vec::new();
    for k in 0..50 {
        ts += 1;
        let price = if k % 2 == 0 { PRICE + 500 } else { PRICE - 500 };
        checks.push(run(&mut market, &Command::IndexPrice { price, timestamp: ts }, &mut events));
        assert!(!events.iter().any(|e| matches!(e, Event::LiquidationStarted(_))), "nobody is due at ±0.1 %");
    }
    checks.sort_unstable();
    let check_us = micros(checks[checks.len() / 2]);

    // A 2 % drop, then sweeps until nothing is due.
    ts += 1;
    let mut commands = vec![run(&mut market, &Command::IndexPrice { price: PRICE * 98 / 100, timestamp: ts }, &mut events)];
    let mut liquidated = events.iter().filter(|e| matches!(e, Event::LiquidationEnded(_))).count();
    while market.perp().pending() {
        ts += 1;
        commands.push(run(&mut market, &Command::Liquidate { timestamp: ts }, &mut events));
        liquidated += events.iter().filter(|e| matches!(e, Event::LiquidationEnded(_))).count();
    }
    let total: f64 = commands.iter().map(|d| micros(*d)).sum();
    commands.sort_unstable();
    let (p50, max) = (micros(commands[commands.len() / 2]), micros(*commands.last().unwrap()));
    let per = total / liquidated.max(1) as f64;
    println!("positions: {} ({pairs} long, {pairs} short), leverage 2-100", pairs * 2);
    println!("order command (baseline, p50): {order_us:.2} µs");
    println!("mark move, nobody due (p50 of 50): {check_us:.1} µs = {:.0}x an order", check_us / order_us);
    println!(
        "2 % drop: {liquidated} liquidated in {} commands (≤ 64 each), command p50 {p50:.0} µs, max {max:.0} µs, total {:.1} ms",
        commands.len(),
        total / 1000.0
    );
    println!(
        "mark_move: {} positions, check {check_us:.0} µs ({:.0}x an order), liquidation command p50 {p50:.0} µs max {max:.0} µs, {per:.1} µs per liquidation",
        pairs * 2,
        check_us / order_us
    );
}
