//! The perpetual's money rules under random orders, index moves and funding ticks, and
//! under the sequences an attacker would try: limits far from the book (a sell far below
//! the bids), reduce-only closes at a loss, MARKET orders, trades with oneself, index
//! jumps, sweeps, and time passing until the index is stale.
//!
//! A ledger kept apart from the engine plays the account side exactly as the exchange
//! does (a deposit per user, the order priced by the engine's rules and its lock checked
//! against `available`, every result applied), and after every command checks what
//! API.md and DESIGN.md promise:
//! no `total` below zero, `available` and `locked` never negative, the insurance fund
//! never negative, the exchange's books balanced to the unit (deposits = balances +
//! unrealized PnL + fees + fund), every position at or below maintenance at the mark
//! liquidated, and a snapshot taken anywhere replaying to the same state.

use std::collections::BTreeMap;

use exchange::engine::perp::Health;
use exchange::engine::{Command, Event, Market, NewOrder, OrderId, OrderType, Side, SymbolSpec, TimeInForce, UserId};
use proptest::prelude::*;
use rust_decimal::Decimal;

const USERS: u64 = 6;
/// Each user's deposit: 200 USDT, in units.
/// Each user's deposit, in units: from ample (200 USDT) to a dollar, so that some
/// users stake everything they have on every order and a rule that leaks shows as a
/// `total` below zero.
const DEPOSITS: [i128; USERS as usize] = [200_00000000, 50_00000000, 20_00000000, 5_00000000, 2_00000000, 1_00000000];

fn spec() -> SymbolSpec {
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    SymbolSpec::new("BTC-PERP", d("0.1"), d("0.001"), 100, d("0.0002"), d("0.0005"), d("0.05"), 0)
        .unwrap()
        .with_perpetual(Some(d("0.004")), Some(3600))
        .unwrap()
}

#[derive(Clone, Debug)]
enum Op {
    /// `offset`: in steps of 50 ticks from the mark (or last trade, or index): near the
    /// book mostly, sometimes far past it and the price band.
    Place { user: u64, side: Side, offset: i64, qty: i64, leverage: u32, kind: Kind, reduce_only: bool },
    CancelAll { user: u64 },
    /// Moves the index by `bps` basis points of the current one.
    Index { bps: i64 },
    Funding,
    Sweep,
    /// Time passes (ms): the basis average moves, the index may go stale.
    Wait { ms: i64 },
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Limit(TimeInForce),
    Market,
}

fn op() -> impl Strategy<Value = Op> {
    let side = prop_oneof![Just(Side::Buy), Just(Side::Sell)];
    let leverage = prop_oneof![Just(1u32), Just(5), Just(20), Just(50), Just(100)];
    let offset = prop_oneof![6 => -40..=40i64, 1 => -2000..=2000i64];
    let kind = prop_oneof![
        4 => Just(Kind::Limit(TimeInForce::Gtc)),
        2 => Just(Kind::Limit(TimeInForce::Ioc)),
        1 => Just(Kind::Limit(TimeInForce::Fok)),
        1 => Just(Kind::Limit(TimeInForce::PostOnly)),
        1 => Just(Kind::Market),
    ];
    prop_oneof![
        10 => (1..=USERS, side, offset, 1..=30i64, leverage, kind, prop::bool::weighted(0.2))
            .prop_map(|(user, side, offset, qty, leverage, kind, reduce_only)| Op::Place { user, side, offset, qty, leverage, kind, reduce_only }),
        1 => (1..=USERS).prop_map(|user| Op::CancelAll { user }),
        3 => prop_oneof![4 => -60..=60i64, 1 => -1500..=1500i64].prop_map(|bps| Op::Index { bps }),
        1 => Just(Op::Funding),
        1 => Just(Op::Sweep),
        1 => prop_oneof![3 => 1..=5_000i64, 1 => 50_000..=120_000i64].prop_map(|ms| Op::Wait { ms }),
    ]
}

#[derive(Default)]
struct Ledger {
    total: BTreeMap<UserId, i128>,
    locked: BTreeMap<UserId, i128>,
}

impl Ledger {
    fn apply(&mut self, events: &[Event]) {
        for e in events {
            match e {
                Event::TradeExecuted(t) => {
                    for u in [&t.buyer, &t.seller] {
                        *self.total.entry(u.user).or_default() += u.pnl - u.fee;
                        *self.locked.entry(u.user).or_default() -= u.margin_released;
                    }
                }
                Event::OrderCancelled(c) => *self.locked.entry(c.user).or_default() -= i128::from(c.released_margin),
                // The perpetual's model sends no amendments.
                Event::OrderAmended(a) => *self.locked.entry(a.user).or_default() -= i128::from(a.released_margin) - i128::from(a.added_margin),
                Event::LiquidationEnded(l) => *self.total.entry(l.user).or_default() -= l.to_fund,
                Event::FundingPaid(f) => {
                    *self.total.entry(f.user).or_default() += f.amount;
                    *self.locked.entry(f.user).or_default() += f.margin_change;
                }
                Event::OrderPlaced(_) | Event::PriceUpdated(_) | Event::LiquidationStarted(_) | Event::FundingSettled(_) | Event::Conditional(_) => {}
            }
        }
    }

    fn available(&self, u: UserId) -> i128 {
        self.total[&u] - self.locked.get(&u).copied().unwrap_or(0)
    }
}

fn check(m: &Market, ledger: &Ledger, stale: bool, tried: &std::collections::BTreeSet<UserId>) -> Result<(), TestCaseError> {
    for u in (1..=USERS).map(UserId) {
        let (total, locked) = (ledger.total[&u], ledger.locked.get(&u).copied().unwrap_or(0));
        prop_assert!(total >= 0, "{u:?} total {total}");
        prop_assert!(locked >= 0, "{u:?} locked {locked}");
        prop_assert!(total - locked >= 0, "{u:?} available {}", total - locked);
    }
    let perp = m.perp();
    prop_assert!(perp.fund >= 0, "fund {}", perp.fund);
    // The books: at one price the positions' unrealized PnL sums to −Σ signed cost.
    let positions = m.positions();
    let balances: i128 = ledger.total.values().sum();
    let fees: i128 = positions.iter().map(|(_, p)| p.fees).sum();
    let unrealized: i128 = -positions.iter().map(|(_, p)| p.size.signum() * p.cost).sum::<i128>();
    prop_assert_eq!(positions.iter().map(|(_, p)| p.size).sum::<i128>(), 0);
    prop_assert_eq!(DEPOSITS.iter().sum::<i128>(), balances + unrealized + fees + perp.fund, "the books balance");
    // Every position at or below maintenance was liquidated, or its liquidation was tried
    // since the mark last moved and nothing could close it (no bid or ask within reach,
    // the fund empty, every opposite position unable to take it): it waits for the next
    // pass, not in a loop. Unless the index is stale: then liquidation waits for a fresh one.
    if let Some(mark) = perp.mark.filter(|_| !stale) {
        for (u, p) in &positions {
            let h = Health::of(m.spec(), p, mark);
            prop_assert!(!h.liquidatable() || tried.contains(u), "{u:?} at or below maintenance at {mark}, never tried: {p:?} {h:?}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256), ..ProptestConfig::default() })]

    #[test]
    fn the_books_balance_and_no_one_owes(ops in prop::collection::vec(op(), 1..120), snapshot_at in 0..120usize) {
        let mut m = Market::new(spec());
        let mut ledger = Ledger::default();
        for u in 1..=USERS {
            ledger.total.insert(UserId(u), DEPOSITS[u as usize - 1]);
        }
        let mut index: i64 = 500_000;
        let mut log = Vec::new();
        let mut tried = std::collections::BTreeSet::new();
        let mut ts = 1_700_000_000_000;
        for (n, op) in ops.iter().enumerate() {
            ts += 1;
            let reference = m.perp().mark.or(m.last_price()).unwrap_or(index);
            let command = match *op {
                Op::Place { user, side, offset, qty, leverage, kind, reduce_only } => {
                    let price = (reference + offset * 50).max(1);
                    let kind = match kind {
                        Kind::Limit(tif) => OrderType::Limit { price, tif },
                        Kind::Market => OrderType::Market,
                    };
                    let mut order = NewOrder {
                        id: OrderId(n as u64 + 1),
                        user: UserId(user),
                        side,
                        kind,
                        quantity: qty,
                        leverage,
                        reduce_only,
                        client_order_id: None,
                        locked_margin: 0,
                        timestamp: ts,
                        stp: Default::default(),
                        good_till: 0,
                    };
                    // The risk step: priced by the engine's rules, refused when out of
                    // the band or when the lock is more than is available.
                    if m.price_order(&mut order).is_err() || i128::from(order.locked_margin) > ledger.available(UserId(user)) {
                        continue;
                    }
                    *ledger.locked.entry(UserId(user)).or_default() += i128::from(order.locked_margin);
                    Command::Place(order)
                }
                Op::CancelAll { user } => Command::CancelAll { user: UserId(user), timestamp: ts },
                Op::Index { bps } => {
                    index = (index + index * bps / 10_000).max(1_000);
                    Command::IndexPrice { price: index, timestamp: ts }
                }
                Op::Funding => Command::Funding { timestamp: ts },
                Op::Sweep => Command::Liquidate { timestamp: ts },
                Op::Wait { ms } => {
                    ts += ms;
                    continue;
                }
            };
            let mut events = Vec::new();
            let result = m.execute(&command, &mut events);
            prop_assert!(!m.perp().pending(), "a handful of positions never hits the bound");
            if std::env::var_os("PERP_DEBUG").is_some() {
                eprintln!("{command:?}\n  -> {events:?}\n  mark {:?} positions {:?}", m.perp().mark, m.positions());
            }
            ledger.apply(&events);
            log.push(command);
            if result.is_ok() && matches!(command, Command::IndexPrice { .. } | Command::Funding { .. }) {
                tried.clear();
            }
            tried.extend(events.iter().filter_map(|e| if let Event::LiquidationStarted(l) = e { Some(l.user) } else { None }));
            check(&m, &ledger, m.index_stale(ts), &tried)?;
        }
        // Replaying the log from a snapshot taken part-way reaches the same state.
        let cut = snapshot_at.min(log.len());
        let mut first = Market::new(spec());
        let mut scratch = Vec::new();
        for c in &log[..cut] {
            let _ = first.execute(c, &mut scratch);
        }
        let mut replayed = Market::restore(spec(), &first.snapshot()).unwrap();
        for c in &log[cut..] {
            let _ = replayed.execute(c, &mut scratch);
        }
        prop_assert_eq!(replayed.snapshot(), m.snapshot());
    }
}
