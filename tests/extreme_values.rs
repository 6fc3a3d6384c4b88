//! Extreme values through the whole order path, without the network: deposits at the
//! balance limit, quantities and prices at their bounds, leverage at both ends. Every
//! order passes the edge's checks and the risk step exactly as the server runs them,
//! then the engine, then the ledger, then every JSON shape that shows the results. No
//! step may panic (a panic aborts the server), and the ledger must stay consistent.

use exchange::accounts::{Accounts, HotState, PositionLimit, TransferPlan, MAX_BALANCE};
use exchange::api::render;
use exchange::engine::units::{MAX_LOTS, MAX_NOTIONAL, MAX_TICKS};
use exchange::engine::{Command, Event, Market, NewOrder, OrderId, OrderType, Side, TimeInForce, UserId};
use exchange::shard_map::ShardMap;
use proptest::prelude::*;

const USERS: usize = 3;

#[derive(Clone, Debug)]
struct Op {
    user: usize,
    side: Side,
    kind: u8,
    price: i64,
    qty: i64,
    leverage: u32,
    reduce_only: bool,
}

/// A value at a bound, next to one, or anywhere between.
fn extreme(max: i64) -> impl Strategy<Value = i64> {
    prop_oneof![Just(1), Just(2), Just(max), Just(max - 1), Just(max / 2), 1..=max, 1..=1_000i64]
}

fn op() -> impl Strategy<Value = Op> {
    (0..USERS, prop_oneof![Just(Side::Buy), Just(Side::Sell)], 0..4u8, extreme(MAX_TICKS), extreme(MAX_LOTS), prop_oneof![Just(1u32), Just(100u32), 1..=100u32], prop::bool::weighted(0.1))
        .prop_map(|(user, side, kind, price, qty, leverage, reduce_only)| Op { user, side, kind, price, qty, leverage, reduce_only })
}

struct World {
    map: ShardMap,
    market: Market,
    accounts: Accounts,
    users: Vec<UserId>,
    next: u64,
}

impl World {
    fn new() -> Self {
        let map = ShardMap::load(std::path::Path::new("shards/default.toml")).unwrap();
        let market = Market::new(map.symbols[0].clone());
        let limits = map.symbols.iter().map(PositionLimit::of).collect();
        let mut accounts = Accounts::new(0, 1_000, 1).with_position_limits(limits);
        let mut users = Vec::new();
        for n in 0..USERS {
            let name = format!("u{n}");
            let (record, _) = accounts.create_user(&name, [n as u8; 24]).unwrap();
            accounts.apply(&record, true);
            // Deposits up to the balance limit.
            let mut deposit = 0;
            loop {
                let amount = i64::MAX;
                match accounts.transfer(&name, &format!("d-{deposit}"), amount, 0) {
                    Ok(TransferPlan::Log(_, t)) => accounts.apply(&t, true),
                    _ => break,
                }
                deposit += 1;
            }
            let user = accounts.user_by_name(&name).unwrap();
            assert!(accounts.user(user).unwrap().total <= MAX_BALANCE);
            users.push(user);
        }
        Self { map, market, accounts, users, next: 0 }
    }

    /// The order path for one request: edge checks, pricing, the risk step, the engine,
    /// the ledger, and the JSON shapes.
    fn place(&mut self, op: &Op) {
        let spec = self.map.symbols[0].clone();
        let mut kind = match op.kind {
            0 => OrderType::Limit { price: op.price, tif: TimeInForce::Gtc },
            1 => OrderType::Limit { price: op.price, tif: TimeInForce::Ioc },
            2 => OrderType::Limit { price: op.price, tif: TimeInForce::PostOnly },
            _ => OrderType::Market,
        };
        // The edge: a LIMIT's notional within the single-order bound.
        if let OrderType::Limit { price, .. } = kind
            && spec.notional(price, op.qty) > i128::from(MAX_NOTIONAL)
        {
            return;
        }
        // The symbol's owner prices a MARKET order and computes the lock.
        let lock_price = match kind {
            OrderType::Limit { price, .. } => price,
            _ => match self.market.market_limit(op.side) {
                Some(limit) => {
                    kind = OrderType::MarketWithin { limit };
                    limit
                }
                None => 1,
            },
        };
        let lock = if op.reduce_only {
            0
        } else {
            let lock = spec.margin(lock_price, op.qty, op.leverage) + spec.fee(spec.notional(lock_price, op.qty), false);
            let Ok(lock) = i64::try_from(lock) else { return };
            lock
        };
        self.next += 1;
        let mut order = NewOrder {
            id: OrderId(0),
            user: self.users[op.user],
            side: op.side,
            kind,
            quantity: op.qty,
            leverage: op.leverage,
            reduce_only: op.reduce_only,
            client_order_id: None,
            locked_margin: lock,
            timestamp: self.next as i64,
            stp: Default::default(),
            good_till: 0,
        };
        if self.accounts.reserve(order.user, &mut order, 0, Some(0)).is_err() {
            return;
        }
        self.accounts.confirm(order.user, order.id);
        let mut events = Vec::new();
        let _ = self.market.execute(&Command::Place(order), &mut events);
        self.accounts.apply_events(0, self.next, &events);
        self.accounts.mark_applied(0, self.next);
        for event in &events {
            let _ = exchange::wire::encode_event(&spec, event);
            if let Event::TradeExecuted(t) = event {
                for update in [&t.buyer, &t.seller] {
                    let _ = render::position(&spec, &update.position, exchange::shard::protocol::MarketPrices { last: Some(t.price), mark: Some(t.price), ..Default::default() });
                }
            }
        }
    }

    fn check(&self) {
        let mut locked_in_orders = 0i128;
        for &user in &self.users {
            let account = self.accounts.user(user).unwrap();
            assert!(account.locked >= 0, "{user:?} locked {}", account.locked);
            assert!(account.total <= MAX_BALANCE + MAX_BALANCE, "{user:?} total {}", account.total);
            let _ = render::balance(account.total, account.available(), account.locked);
            for view in account.orders.values() {
                let _ = render::order(&self.map, view);
                if view.status.is_open() {
                    locked_in_orders += i128::from(view.reserved);
                }
            }
            for fill in &account.fills {
                let _ = render::fill(&self.map, fill);
            }
            let position = account.positions.get(&0).copied().unwrap_or_default();
            let spec = &self.map.symbols[0];
            // Counting open orders as filled, no side may pass the symbol's limit.
            let open = account.open_on(0);
            for (i, sign) in [(0, 1i128), (1, -1i128)] {
                let held = if position.size * sign > 0 { position.size.abs() } else { 0 };
                assert!(held + open.lots[i] <= i128::from(spec.max_position) + i128::from(MAX_LOTS), "{user:?} side {i}");
            }
        }
        assert!(locked_in_orders >= 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).map_or(200, |c: u32| c / 4), ..ProptestConfig::default() })]

    #[test]
    fn no_order_at_the_bounds_can_panic_or_break_the_ledger(ops in prop::collection::vec(op(), 1..60)) {
        let mut world = World::new();
        for op in &ops {
            world.place(op);
            world.check();
        }
    }
}
