//! The matching workload, in the style of exchange-core's published benchmark: one
//! symbol, about 1,000 users and about 1,000 resting orders in steady state, with a mix
//! of passive GTC orders, aggressive GTC and IOC orders that trade, cancels, and
//! cancel-replace moves.
//!
//! The stream is generated once by running it through our engine (to know which orders
//! are still live when a cancel or move picks one), then replayed identically through
//! every engine under test.

use exchange::engine::*;
use rustc_hash::FxHashMap;

use crate::rng::Rng;

#[derive(Clone, Copy, Debug)]
pub enum Op {
    Place { id: u64, user: u64, side: Side, price: i64, qty: i64, ioc: bool, lock: i64 },
    Cancel { id: u64, user: u64 },
}

pub struct Workload {
    pub ops: Vec<Op>,
    /// How many of the ops are the prefill that builds the initial book.
    pub prefill: usize,
    pub users: u64,
}

pub const MID: i64 = 100_000;

pub fn spec() -> SymbolSpec {
    let d = |s: &str| s.parse().unwrap_or_default();
    SymbolSpec::new("BTC-PERP", d("0.1"), d("0.001"), 100, d("0.0002"), d("0.0005"), d("0.05"), 0)
        .unwrap_or_else(|e| panic!("benchmark spec: {e}"))
}

pub fn command(op: &Op) -> Command {
    match *op {
        Op::Place { id, user, side, price, qty, ioc, lock } => Command::Place(NewOrder {
            id: OrderId(id),
            user: UserId(user),
            side,
            kind: OrderType::Limit { price, tif: if ioc { TimeInForce::Ioc } else { TimeInForce::Gtc } },
            quantity: qty,
            leverage: 10,
            reduce_only: false,
            client_order_id: None,
            locked_margin: lock,
            timestamp: id as i64,
            stp: Default::default(),
            good_till: 0,
        }),
        Op::Cancel { id, user } => Command::Cancel { id: OrderId(id), user: UserId(user), timestamp: 0 },
    }
}

struct Live {
    ids: Vec<(u64, u64, Side, i64)>,
    at: FxHashMap<u64, usize>,
}

impl Live {
    fn add(&mut self, id: u64, user: u64, side: Side, qty: i64) {
        self.at.insert(id, self.ids.len());
        self.ids.push((id, user, side, qty));
    }

    fn remove(&mut self, id: u64) {
        if let Some(i) = self.at.remove(&id) {
            self.ids.swap_remove(i);
            if let Some(moved) = self.ids.get(i) {
                self.at.insert(moved.0, i);
            }
        }
    }
}

/// Generates `count` ops after a prefill of `resting` orders.
pub fn generate(count: usize, resting: usize, users: u64, seed: u64) -> Workload {
    let spec = spec();
    let mut rng = Rng::new(seed);
    let mut market = Market::new(spec.clone());
    let mut live = Live { ids: Vec::new(), at: FxHashMap::default() };
    let mut ops = Vec::with_capacity(count + resting);
    let mut events = Vec::new();
    let mut next_id = 0u64;
    let mut mid = MID;

    let mut place = |ops: &mut Vec<Op>, side: Side, price: i64, qty: i64, ioc: bool, user: u64| {
        next_id += 1;
        let lock = spec.margin(price, qty, 10) as i64;
        ops.push(Op::Place { id: next_id, user, side, price, qty, ioc, lock });
    };
    let passive = |rng: &mut Rng, mid: i64, side: Side| {
        // Most passive orders near the touch, a tail farther out.
        let offset = if rng.chance(80) { rng.range(1, 16) } else { rng.range(17, 200) };
        if side == Side::Buy { mid - offset } else { mid + offset }
    };

    let mut run = |ops: &mut Vec<Op>, from: usize, market: &mut Market, live: &mut Live| {
        for op in &ops[from..] {
            events.clear();
            let _ = market.execute(&command(op), &mut events);
            for e in &events {
                match e {
                    Event::OrderPlaced(p) => live.add(p.order_id.0, p.user.0, p.side, p.quantity - p.filled),
                    Event::OrderCancelled(c) => live.remove(c.order_id.0),
                    Event::TradeExecuted(t) => {
                        let maker = t.maker().order_id.0;
                        if market.book().get(OrderId(maker)).is_none() {
                            live.remove(maker);
                        }
                    }
                    _ => {}
                }
            }
        }
    };

    while ops.len() < resting {
        let side = if rng.chance(50) { Side::Buy } else { Side::Sell };
        let price = passive(&mut rng, mid, side);
        let (qty, user) = (rng.range(1, 20), rng.range(1, users as i64) as u64);
        place(&mut ops, side, price, qty, false, user);
    }
    run(&mut ops, 0, &mut market, &mut live);
    let prefill = ops.len();

    while ops.len() < prefill + count {
        let from = ops.len();
        let user = rng.range(1, users as i64) as u64;
        let side = if rng.chance(50) { Side::Buy } else { Side::Sell };
        if rng.chance(2) {
            mid += rng.range(-2, 2);
        }
        let roll = if live.ids.len() < resting * 9 / 10 { 0 } else { rng.below(100) };
        match roll {
            0..=39 => {
                let price = passive(&mut rng, mid, side);
                let qty = rng.range(1, 20);
                place(&mut ops, side, price, qty, false, user);
            }
            40..=49 => {
                // Aggressive GTC: crosses a little, may rest the remainder.
                let price = if side == Side::Buy { mid + rng.range(0, 3) } else { mid - rng.range(0, 3) };
                let qty = rng.range(1, 20);
                place(&mut ops, side, price, qty, false, user);
            }
            50..=69 => {
                let price = if side == Side::Buy { mid + 10 } else { mid - 10 };
                let qty = rng.range(1, 30);
                place(&mut ops, side, price, qty, true, user);
            }
            70..=84 => {
                let (id, owner, _, _) = live.ids[rng.below(live.ids.len() as u64) as usize];
                ops.push(Op::Cancel { id, user: owner });
            }
            _ => {
                // Move: cancel and replace at a new passive price.
                let (id, owner, side, qty) = live.ids[rng.below(live.ids.len() as u64) as usize];
                ops.push(Op::Cancel { id, user: owner });
                let price = passive(&mut rng, mid, side);
                place(&mut ops, side, price, qty, false, owner);
            }
        }
        run(&mut ops, from, &mut market, &mut live);
    }
    Workload { ops, prefill, users }
}
