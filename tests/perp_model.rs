//! The perpetual's money rules under random orders, index moves and funding ticks.
//!
//! A ledger kept apart from the engine plays the account side exactly as the exchange
//! does (a deposit per user, the risk step's lock checked against `available`, every
//! result applied), and after every command checks what API.md and DESIGN.md promise:
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
const DEPOSIT: i128 = 200 * 100_000_000;

fn spec() -> SymbolSpec {
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    SymbolSpec::new("BTC-PERP", d("0.1"), d("0.001"), 100, d("0.0002"), d("0.0005"), d("0.05"), 0)
        .unwrap()
        .with_perpetual(Some(d("0.004")), Some(3600))
        .unwrap()
}

#[derive(Clone, Debug)]
enum Op {
    Place { user: u64, side: Side, offset: i64, qty: i64, leverage: u32, ioc: bool },
    CancelAll { user: u64 },
    /// Moves the index by `bps` basis points of the current one.
    Index { bps: i64 },
    Funding,
}

fn op() -> impl Strategy<Value = Op> {
    let side = prop_oneof![Just(Side::Buy), Just(Side::Sell)];
    let leverage = prop_oneof![Just(1u32), Just(5), Just(20), Just(50), Just(100)];
    prop_oneof![
        8 => (1..=USERS, side, -40..=40i64, 1..=30i64, leverage, any::<bool>())
            .prop_map(|(user, side, offset, qty, leverage, ioc)| Op::Place { user, side, offset, qty, leverage, ioc }),
        1 => (1..=USERS).prop_map(|user| Op::CancelAll { user }),
        3 => prop_oneof![4 => -60..=60i64, 1 => -1500..=1500i64].prop_map(|bps| Op::Index { bps }),
        1 => Just(Op::Funding),
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
                Event::LiquidationEnded(l) => *self.total.entry(l.user).or_default() -= l.to_fund,
                Event::FundingPaid(f) => {
                    *self.total.entry(f.user).or_default() += f.amount;
                    *self.locked.entry(f.user).or_default() += f.margin_change;
                }
                Event::OrderPlaced(_) | Event::PriceUpdated(_) | Event::LiquidationStarted(_) | Event::FundingSettled(_) => {}
            }
        }
    }

    fn available(&self, u: UserId) -> i128 {
        self.total[&u] - self.locked.get(&u).copied().unwrap_or(0)
    }
}

fn check(m: &Market, ledger: &Ledger) -> Result<(), TestCaseError> {
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
    prop_assert_eq!(DEPOSIT * i128::from(USERS as u32), balances + unrealized + fees + perp.fund, "the books balance");
    if let Some(mark) = perp.mark {
        for (u, p) in &positions {
            let h = Health::of(m.spec(), p, mark);
            prop_assert!(!h.liquidatable(), "{u:?} at or below maintenance at {mark}: {p:?} {h:?}");
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
            ledger.total.insert(UserId(u), DEPOSIT);
        }
        let mut index: i64 = 500_000;
        let mut log = Vec::new();
        for (n, op) in ops.iter().enumerate() {
            let ts = 1_700_000_000_000 + n as i64;
            let reference = m.perp().mark.or(m.last_price()).unwrap_or(index);
            let command = match *op {
                Op::Place { user, side, offset, qty, leverage, ioc } => {
                    let price = (reference + offset * 50).max(1);
                    let spec = m.spec();
                    let lock = spec.margin(price, qty, leverage) + spec.fee(spec.notional(price, qty), false);
                    // The risk step: refused when the lock is more than is available.
                    if lock > ledger.available(UserId(user)) {
                        continue;
                    }
                    *ledger.locked.entry(UserId(user)).or_default() += lock;
                    let tif = if ioc { TimeInForce::Ioc } else { TimeInForce::Gtc };
                    Command::Place(NewOrder {
                        id: OrderId(n as u64 + 1),
                        user: UserId(user),
                        side,
                        kind: OrderType::Limit { price, tif },
                        quantity: qty,
                        leverage,
                        reduce_only: false,
                        client_order_id: None,
                        locked_margin: i64::try_from(lock).unwrap(),
                        timestamp: ts,
                    })
                }
                Op::CancelAll { user } => Command::CancelAll { user: UserId(user), timestamp: ts },
                Op::Index { bps } => {
                    index = (index + index * bps / 10_000).max(1_000);
                    Command::IndexPrice { price: index, timestamp: ts }
                }
                Op::Funding => Command::Funding { timestamp: ts },
            };
            let mut events = Vec::new();
            let _ = m.execute(&command, &mut events);
            prop_assert!(!m.perp().pending, "a handful of positions never hits the bound");
            if std::env::var_os("PERP_DEBUG").is_some() {
                eprintln!("{command:?}\n  -> {events:?}\n  mark {:?} positions {:?}", m.perp().mark, m.positions());
            }
            ledger.apply(&events);
            log.push(command);
            check(&m, &ledger)?;
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
