//! Matching benchmark: one generated workload replayed through our engine and through
//! `orderbook-rs`, same commands, same order, one thread.
//!
//! `cargo run --release -p perf --bin matching [-- OPS]`
//!
//! Prints throughput (best of three runs, no per-op timing), per-command latency
//! percentiles (a separate run that times every command), and live heap bytes per
//! resting order (a counting allocator, 1,000,000 resting orders). The last line is
//! `matching: <N> ops/s, p99 <X> ns, <R>x vs orderbook-rs`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use exchange::engine::{Command, ConditionalKind, Event, Market, NewConditional, Side as OurSide, SymbolSpec, TimeInForce as OurTif, UserId, WorkingPrice};
use hdrhistogram::Histogram;
use orderbook_rs::{Id, OrderBook, Side, StubClock, TimeInForce};
use perf::alloc::{live_bytes, Counting};
use perf::workload::{self, command, Op, Workload, MID};

#[global_allocator]
static ALLOC: Counting = Counting;

/// An order book under test.
trait Engine {
    fn new(spec: &SymbolSpec) -> Self;
    /// Applies one op; returns the quantity it traded.
    fn apply(&mut self, op: &Op) -> u64;
    fn resting(&self) -> Option<usize> {
        None
    }
}

struct Ours {
    market: Market,
    events: Vec<Event>,
}

impl Engine for Ours {
    fn new(spec: &SymbolSpec) -> Self {
        Self { market: Market::new(spec.clone()), events: Vec::with_capacity(64) }
    }

    fn apply(&mut self, op: &Op) -> u64 {
        self.events.clear();
        let _ = self.market.execute(&command(op), &mut self.events);
        self.events
            .iter()
            .map(|e| if let Event::TradeExecuted(t) = e { t.quantity as u64 } else { 0 })
            .sum()
    }

    fn resting(&self) -> Option<usize> {
        Some(self.market.book().len())
    }
}

/// Ours with 100,000 conditional orders waiting far from the price (100 for each of
/// 1,000 users, half stops above, half below): what waiting triggers cost every command.
struct OursWithTriggers(Ours);

/// Conditional orders [`OursWithTriggers`] keeps waiting.
const WAITING: u64 = 100_000;

impl Engine for OursWithTriggers {
    fn new(spec: &SymbolSpec) -> Self {
        let mut ours = Ours::new(spec);
        for i in 0..WAITING {
            let above = i % 2 == 0;
            let order = NewConditional {
                user: UserId(i % 1_000 + 1),
                side: if above { OurSide::Buy } else { OurSide::Sell },
                kind: ConditionalKind::Stop,
                trigger: if above { MID * 10 + i as i64 } else { 1 + (i % 1_000) as i64 },
                working: WorkingPrice::Last,
                price: None,
                tif: OurTif::Gtc,
                quantity: 1,
                close_position: false,
                reduce_only: false,
                client_order_id: None,
                timestamp: 0,
                callback: 0,
            };
            ours.events.clear();
            ours.market.execute(&Command::PlaceConditional(order), &mut ours.events).expect("a conditional order far from the price");
        }
        assert_eq!(ours.market.conditionals().waiting() as u64, WAITING);
        Self(ours)
    }

    fn apply(&mut self, op: &Op) -> u64 {
        self.0.apply(op)
    }

    fn resting(&self) -> Option<usize> {
        assert_eq!(self.0.market.conditionals().waiting() as u64, WAITING, "none triggered");
        self.0.resting()
    }
}

struct Peer {
    book: OrderBook<()>,
}

impl Engine for Peer {
    fn new(_: &SymbolSpec) -> Self {
        let book = OrderBook::with_clock_and_namespace("BTC-PERP", Arc::new(StubClock::new()), uuid_ns());
        Self { book }
    }

    fn apply(&mut self, op: &Op) -> u64 {
        let traded = |mr: &pricelevel::MatchResult| mr.trades().as_vec().iter().map(|t| t.quantity().as_u64()).sum();
        match *op {
            Op::Place { id, side, price, qty, ioc: false, .. } => {
                match self.book.add_limit_order_with_result(Id::Sequential(id), price as u128, qty as u64, side_of(side), TimeInForce::Gtc, None) {
                    Ok((_, Some(tr))) => traded(&tr.match_result),
                    _ => 0,
                }
            }
            Op::Place { id, side, price, qty, ioc: true, .. } => {
                let order = orderbook_rs::OrderType::Standard {
                    id: Id::Sequential(id),
                    price: pricelevel::Price::new(price as u128),
                    quantity: pricelevel::Quantity::new(qty as u64),
                    side: side_of(side),
                    user_id: pricelevel::Hash32::zero(),
                    timestamp: orderbook_rs::TimestampMs::new(0),
                    time_in_force: TimeInForce::Ioc,
                    extra_fields: (),
                };
                match self.book.add_order_with_committed(order) {
                    Ok((_, Some(tr))) => traded(&tr.match_result),
                    Ok((_, None)) => 0,
                    Err(failure) => failure.committed.map_or(0, |tr| traded(&tr.match_result)),
                }
            }
            Op::Cancel { id, .. } => {
                let _ = black_box(self.book.cancel_order(Id::Sequential(id)));
                0
            }
        }
    }
}

fn side_of(side: OurSide) -> Side {
    match side {
        OurSide::Buy => Side::Buy,
        OurSide::Sell => Side::Sell,
    }
}

fn uuid_ns() -> uuid::Uuid {
    uuid::Uuid::from_u128(0x6578_6368_616e_6765_0000_0000_0000_0001)
}

struct Result {
    ops_per_sec: f64,
    hist: Histogram<u64>,
    traded: u64,
    bytes_per_order: f64,
}

fn measure<E: Engine>(w: &Workload, spec: &SymbolSpec) -> Result {
    let steady = &w.ops[w.prefill..];
    // Throughput: best of three, no per-op timing.
    let mut best = 0.0f64;
    let mut traded = 0;
    for _ in 0..3 {
        let mut e = E::new(spec);
        for op in &w.ops[..w.prefill] {
            e.apply(op);
        }
        let start = Instant::now();
        let mut t = 0;
        for op in steady {
            t += e.apply(op);
        }
        let secs = start.elapsed().as_secs_f64();
        best = best.max(steady.len() as f64 / secs);
        traded = black_box(t);
    }
    // Latency: every command timed.
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap_or_else(|e| panic!("{e}"));
    let mut e = E::new(spec);
    for op in &w.ops[..w.prefill] {
        e.apply(op);
    }
    for op in steady {
        let start = Instant::now();
        black_box(e.apply(op));
        let _ = hist.record(start.elapsed().as_nanos() as u64);
    }
    if let Some(resting) = e.resting() {
        println!("resting orders at the end of the run: {resting}");
    }
    Result { ops_per_sec: best, hist, traded, bytes_per_order: bytes_per_resting_order::<E>(spec) }
}

/// Live heap bytes per order with 1,000,000 orders resting over 4,000 price levels.
fn bytes_per_resting_order<E: Engine>(spec: &SymbolSpec) -> f64 {
    const N: u64 = 1_000_000;
    let before = live_bytes();
    let mut e = E::new(spec);
    for id in 1..=N {
        let side = if id % 2 == 0 { OurSide::Buy } else { OurSide::Sell };
        let offset = 1 + (id % 2000) as i64;
        let price = if side == OurSide::Buy { MID - offset } else { MID + offset };
        e.apply(&Op::Place { id, user: id % 1000 + 1, side, price, qty: 1, ioc: false, lock: spec.margin(price, 1, 10) as i64 });
    }
    let bytes = (live_bytes() - before) as f64 / N as f64;
    drop(black_box(e));
    bytes
}

fn main() {
    let count: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3_000_000);
    let spec = workload::spec();
    let t = Instant::now();
    let w = workload::generate(count, 1_000, 1_000, 0x5eed);
    let mix = w.ops[w.prefill..].iter().fold([0usize; 3], |mut m, op| {
        match op {
            Op::Place { ioc: false, .. } => m[0] += 1,
            Op::Place { ioc: true, .. } => m[1] += 1,
            Op::Cancel { .. } => m[2] += 1,
        }
        m
    });
    println!(
        "workload: {} commands after a {}-order prefill ({} users): {} GTC, {} IOC, {} cancels (moves are a cancel + a GTC); generated in {:.1}s",
        count, w.prefill, w.users, mix[0], mix[1], mix[2], t.elapsed().as_secs_f64()
    );

    let ours = measure::<Ours>(&w, &spec);
    let waiting = measure::<OursWithTriggers>(&w, &spec);
    let peer = measure::<Peer>(&w, &spec);
    if ours.traded != peer.traded {
        println!("WARNING: traded volume differs: ours {} lots, orderbook-rs {} lots", ours.traded, peer.traded);
    } else {
        println!("both engines traded {} lots (same workload, same outcome volume)", ours.traded);
    }
    println!("{:<14} {:>12} {:>8} {:>8} {:>8} {:>9} {:>9} {:>12}", "engine", "ops/s", "p50 ns", "p90 ns", "p99 ns", "p99.9 ns", "max ns", "B/resting");
    for (name, r) in [("ours", &ours), ("ours+100k stop", &waiting), ("orderbook-rs", &peer)] {
        println!(
            "{:<14} {:>12.0} {:>8} {:>8} {:>8} {:>9} {:>9} {:>12.1}",
            name,
            r.ops_per_sec,
            r.hist.value_at_quantile(0.5),
            r.hist.value_at_quantile(0.9),
            r.hist.value_at_quantile(0.99),
            r.hist.value_at_quantile(0.999),
            r.hist.max(),
            r.bytes_per_order
        );
    }
    println!(
        "100,000 waiting conditional orders: {:.3}x the throughput, p99 {:+} ns (B/resting counts them over the 1,000,000 orders)",
        waiting.ops_per_sec / ours.ops_per_sec,
        waiting.hist.value_at_quantile(0.99) as i64 - ours.hist.value_at_quantile(0.99) as i64
    );
    println!(
        "matching: {:.0} ops/s, p99 {} ns, {:.1}x vs orderbook-rs",
        ours.ops_per_sec,
        ours.hist.value_at_quantile(0.99),
        ours.ops_per_sec / peer.ops_per_sec
    );
}
