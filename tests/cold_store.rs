//! The PostgreSQL schema, applied by `exchange migrate` to a real PostgreSQL
//! (`EXCHANGE_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`;
//! unreachable is a failure, not a skip). Each test works in a database of its own.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

fn admin_url() -> String {
    std::env::var("EXCHANGE_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is required for these tests: {e}"));
    tokio::spawn(connection);
    client
}

/// A database of the test's own, dropped at the end.
struct Database {
    name: String,
    url: String,
}

impl Database {
    fn create() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("exchange_test_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let admin = admin_url();
        runtime().block_on(async {
            let c = connect(&admin).await;
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).await.unwrap();
            c.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        });
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b).to_owned();
        Self { url: format!("{base}/{name}"), name }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let admin = admin_url();
        let name = self.name.clone();
        runtime().block_on(async move {
            let c = connect(&admin).await;
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        });
    }
}

fn migrate(url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_exchange"))
        .arg("migrate")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("EXCHANGE_POSTGRES_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run exchange migrate")
}

#[test]
fn migrate_creates_the_schema_once() {
    let db = Database::create();
    let first = migrate(&db.url);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains("applied V1__cold_storage"), "{first:?}");
    let second = migrate(&db.url);
    assert!(second.status.success());
    assert_eq!(String::from_utf8_lossy(&second.stdout).trim(), "schema up to date");
    runtime().block_on(async {
        let c = connect(&db.url).await;
        for table in ["orders", "trades", "accounts", "positions", "writer_offsets", "checkpoints", "checkpoint_offsets", "epoch_floors"] {
            let n: i64 = c
                .query_one("SELECT count(*) FROM information_schema.tables WHERE table_name = $1", &[&table])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 1, "table {table}");
        }
        // Money and quantities are exact.
        for (table, column) in [("orders", "price"), ("orders", "filled_quantity"), ("trades", "buyer_fee"), ("accounts", "total")] {
            let t: String = c
                .query_one(
                    "SELECT data_type FROM information_schema.columns WHERE table_name = $1 AND column_name = $2",
                    &[&table, &column],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(t, "numeric", "{table}.{column}");
        }
    });
}

#[test]
fn migrate_without_postgres_fails_clearly() {
    let out = migrate("postgres://postgres@127.0.0.1:1/none");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connecting to PostgreSQL"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_exchange")).arg("migrate").env_remove("EXCHANGE_POSTGRES_URL").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("EXCHANGE_POSTGRES_URL"));
    // Unless told that PostgreSQL is optional (as the systemd unit does).
    let out = Command::new(env!("CARGO_BIN_EXE_exchange"))
        .args(["migrate", "--if-configured"])
        .env_remove("EXCHANGE_POSTGRES_URL")
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("no schema to apply"), "{out:?}");
}

mod common;

/// The broker the writer tests read from (the suite's; unreachable is a failure).
fn broker() -> String {
    let addr = std::env::var("EXCHANGE_KAFKA_TEST_BROKER").unwrap_or_else(|_| "127.0.0.1:9092".into());
    assert!(
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), std::time::Duration::from_secs(2)).is_ok(),
        "a Kafka broker at {addr} is required (scripts/kafka-broker.sh)"
    );
    addr
}

fn count(db: &Database, sql: &str) -> i64 {
    runtime().block_on(async { connect(&db.url).await.query_one(sql, &[]).await.unwrap().get(0) })
}

/// Waits until PostgreSQL holds `orders` orders and `trades` trades.
fn wait_for_rows(db: &Database, orders: i64, trades: i64) {
    let started = std::time::Instant::now();
    loop {
        let got = (count(db, "SELECT count(*) FROM orders"), count(db, "SELECT count(*) FROM trades"));
        if got == (orders, trades) {
            return;
        }
        assert!(got.0 <= orders && got.1 <= trades, "more rows than acknowledged: {got:?} > {:?}", (orders, trades));
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "rows {got:?}, expected {:?}", (orders, trades));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn the_writer_stores_every_acknowledged_order_and_trade_exactly_once() {
    let db = Database::create();
    let mut s = common::Server::start_kafka(&broker(), &[("EXCHANGE_POSTGRES_URL", &db.url)]);
    let alice = s.funded("alice", "1000000");
    let bob = s.funded("bob", "1000000");
    let mut acked = 0;
    let trade = |s: &common::Server, round: usize| {
        for i in 0..10 {
            let price = 50_000 - (i % 4) * 10;
            s.limit(&alice, "BUY", &price.to_string(), "0.002");
            s.limit(&bob, "SELL", "49990", if (i + round).is_multiple_of(3) { "0.003" } else { "0.001" });
        }
        20
    };
    acked += trade(&s, 0);
    let open = s.get(&alice, "/v1/orders").1;
    let cancelled = open[0]["orderId"].as_str().unwrap().to_owned();
    assert_eq!(s.delete(&alice, &format!("/v1/orders/{cancelled}")).0, 200);
    let trades = |s: &common::Server| s.get(&alice, "/v1/fills?limit=1000").1.as_array().unwrap().len() as i64;
    wait_for_rows(&db, acked, trades(&s));
    let status = |id: &str| -> String {
        runtime().block_on(async {
            let c = connect(&db.url).await;
            let id: uuid::Uuid = id.parse().unwrap();
            c.query_one("SELECT status FROM orders WHERE id = $1", &[&id]).await.unwrap().get(0)
        })
    };
    // Every order's status agrees with the API once the writer has caught up with the
    // closings and trades (read from their own topics).
    let agree = |s: &common::Server| {
        [&alice, &bob].iter().all(|key| {
            s.get(key, "/v1/orders").1.as_array().unwrap().iter().all(|o| status(o["orderId"].as_str().unwrap()) == o["status"])
        }) && status(&cancelled) == "CANCELLED"
    };
    let started = std::time::Instant::now();
    while !agree(&s) {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "statuses in PostgreSQL differ from the API");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The history endpoint answers from these rows: newest first, as the API shows orders.
    let (status_code, history) = s.get(&alice, "/v1/orders/history?limit=1000");
    assert_eq!(status_code, 200, "{history}");
    let history = history.as_array().unwrap().clone();
    assert_eq!(history.len(), 10, "alice placed 10 orders");
    assert!(history.windows(2).all(|w| w[0]["createdAt"].as_i64() >= w[1]["createdAt"].as_i64()), "newest first");
    for h in &history {
        let (_, now) = s.get(&alice, &format!("/v1/orders/{}", h["orderId"].as_str().unwrap()));
        for field in ["orderId", "symbol", "side", "type", "price", "quantity", "filledQuantity", "avgFillPrice", "status", "createdAt"] {
            assert_eq!(h[field], now[field], "{field}: history {h} vs API {now}");
        }
    }
    assert_eq!(s.get(&alice, "/v1/orders/history?limit=3").1.as_array().unwrap().len(), 3);
    assert_eq!(s.get(&alice, "/v1/orders/history?symbol=ETH-PERP").1, serde_json::json!([]));
    let oldest = history.last().unwrap()["createdAt"].as_i64().unwrap();
    let before = s.get(&alice, &format!("/v1/orders/history?before={oldest}")).1;
    assert_eq!(before, serde_json::json!([]), "nothing before the first order");
    assert_eq!(s.get(&alice, "/v1/orders/history?before=soon").0, 400);
    let filled = count(&db, "SELECT count(*) FROM orders WHERE status = 'FILLED'");
    assert!(filled > 0, "some orders filled");
    // A crash of the exchange (and of its writer) mid-stream, then more trading: still
    // exactly one row per acknowledged order and per trade.
    s.kill9();
    s.restart();
    acked += trade(&s, 1);
    wait_for_rows(&db, acked, trades(&s));
    assert_eq!(count(&db, "SELECT count(DISTINCT id) FROM orders"), acked);
}

#[test]
fn funding_payments_liquidations_and_the_fund_reach_postgres() {
    let db = Database::create();
    let s = common::Server::start_kafka(&broker(), &[("EXCHANGE_POSTGRES_URL", &db.url), ("EXCHANGE_FUNDING_INTERVAL_SECS", "86400")]);
    let admin = [("x-admin-key", common::ADMIN)];
    let post = |path: &str, body: &str| {
        let (status, body) = s.request("POST", path, &admin, Some(body));
        assert_eq!(status, 200, "{path}: {body}");
    };
    let order = |key: &str, side: &str, price: &str, qty: &str, leverage: u32| {
        let body = format!(r#"{{"symbol":"BTC-PERP","side":"{side}","type":"LIMIT","price":"{price}","quantity":"{qty}","leverage":{leverage}}}"#);
        assert_eq!(s.order(key, &body).0, 200);
    };
    post("/admin/v1/index-prices", r#"{"symbol":"BTC-PERP","price":"50000"}"#);
    let long = s.funded("long", "1000");
    let short = s.funded("short", "10000");
    let maker = s.funded("maker", "100000");
    order(&short, "SELL", "50100", "0.1", 10);
    order(&long, "BUY", "50100", "0.1", 50);
    order(&maker, "BUY", "50080", "0.01", 10);
    order(&maker, "SELL", "50200", "0.01", 10);
    post("/admin/v1/index-prices", r#"{"symbol":"BTC-PERP","price":"50000"}"#);
    post("/admin/v1/funding", r#"{"symbol":"BTC-PERP"}"#);
    // The long falls through its liquidation price into the maker's bid.
    order(&maker, "BUY", "49150", "0.1", 10);
    post("/admin/v1/index-prices", r#"{"symbol":"BTC-PERP","price":"49000"}"#);
    assert!(s.get(&long, "/v1/positions").1.as_array().unwrap().is_empty(), "liquidated");
    let fund = s.request("GET", "/v1/insurance-fund", &[], None).1["balance"].as_str().unwrap().to_owned();
    // The mark is the exchange's: 49,000 or a tick above, by the funding basis the
    // settlement left (its rate depends on how long the maker's quotes stood).
    let mark = s.request("GET", "/v1/premium-index?symbol=BTC-PERP", &[], None).1["markPrice"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let stored = || {
        runtime().block_on(async {
            let c = connect(&db.url).await;
            let funding: i64 = c.query_one("SELECT count(*) FROM funding_payments", &[]).await.unwrap().get(0);
            let sum: Option<rust_decimal::Decimal> = c.query_one("SELECT sum(amount) FROM funding_payments", &[]).await.unwrap().get(0);
            let liquidations: i64 = c.query_one("SELECT count(*) FROM liquidations", &[]).await.unwrap().get(0);
            let market = c.query_opt("SELECT mark_price, insurance_fund FROM markets WHERE symbol = 'BTC-PERP'", &[]).await.unwrap();
            let market = market.map(|r| (r.get::<_, rust_decimal::Decimal>(0), r.get::<_, rust_decimal::Decimal>(1)));
            (funding, sum, liquidations, market)
        })
    };
    loop {
        let (funding, sum, liquidations, market) = stored();
        let fund_now: rust_decimal::Decimal = fund.parse().unwrap();
        let mark: rust_decimal::Decimal = mark.parse().unwrap();
        if funding == 2 && liquidations == 1 && market == Some((mark, fund_now)) {
            // Zero-sum up to the residue the fund took (none here: two equal positions).
            assert_eq!(sum, Some(rust_decimal::Decimal::ZERO));
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", stored());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn conditional_orders_reach_postgres_as_their_latest_status() {
    let db = Database::create();
    let s = common::Server::start_kafka(&broker(), &[("EXCHANGE_POSTGRES_URL", &db.url)]);
    let long = s.funded("cond-long", "100000");
    let maker = s.funded("cond-maker", "100000");
    s.limit(&maker, "SELL", "50000", "0.002");
    s.limit(&long, "BUY", "50000", "0.002");
    let conditional = |body: &str| {
        let (status, c) = s.post(&long, "/v1/conditional-orders", body);
        assert_eq!(status, 200, "{c}");
        c["conditionalId"].as_str().unwrap().to_owned()
    };
    let stop = conditional(r#"{"symbol":"BTC-PERP","side":"SELL","type":"STOP_MARKET","triggerPrice":"49000","closePosition":true}"#);
    let take = conditional(r#"{"symbol":"BTC-PERP","side":"SELL","type":"TAKE_PROFIT","triggerPrice":"52000","price":"52000","quantity":"0.001","clientOrderId":"tp-1"}"#);
    let waiting = conditional(r#"{"symbol":"BTC-PERP","side":"SELL","type":"STOP_MARKET","triggerPrice":"40000","quantity":"0.001","reduceOnly":true}"#);
    assert_eq!(s.delete(&long, &format!("/v1/conditional-orders/{take}")).0, 200);
    // A trade at 49000 fires the stop.
    let buyer = s.funded("cond-buyer", "100000");
    s.limit(&buyer, "BUY", "49000", "0.003");
    s.limit(&maker, "SELL", "49000", "0.001");
    common::eventually("the stop never closed the position", 10, || s.get(&long, "/v1/positions").1 == serde_json::json!([]));
    let order = s.get(&long, &format!("/v1/conditional-orders/{stop}")).1["orderId"].as_str().unwrap().to_owned();
    let stored = || {
        runtime().block_on(async {
            let c = connect(&db.url).await;
            let rows = c
                .query("SELECT conditional_id::text, status, order_id::text, reason, type, trigger_price::text, client_order_id FROM conditional_orders ORDER BY seq", &[])
                .await
                .unwrap();
            rows.iter()
                .map(|r| {
                    let text = |i: usize| r.get::<_, Option<String>>(i).unwrap_or_default();
                    [text(0), text(1), text(2), text(3), text(4), text(5), text(6)].join(" ")
                })
                .collect::<Vec<String>>()
        })
    };
    let want = vec![
        format!("{waiting} NEW   STOP_MARKET 40000.0 "),
        format!("{take} CANCELLED  USER_REQUEST TAKE_PROFIT 52000.0 tp-1"),
        format!("{stop} TRIGGERED {order}  STOP_MARKET 49000.0 "),
    ];
    common::eventually(&format!("PostgreSQL never held {want:?}: {:?}", stored()), 30, || stored() == want);
}

/// An exchange whose PostgreSQL is reached through a proxy (to cut or freeze), with
/// cold storage up, and two funded users.
fn behind_a_proxy() -> (Database, common::Proxy, common::Server, String, String) {
    let db = Database::create();
    let proxy = common::Proxy::start("127.0.0.1:5432");
    let url = db.url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    let s = common::Server::start_kafka(&broker(), &[("EXCHANGE_POSTGRES_URL", &url)]);
    let alice = s.funded("alice", "1000000");
    let bob = s.funded("bob", "1000000");
    let started = std::time::Instant::now();
    while cold(&s) != "ok" {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "cold storage never came up");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (db, proxy, s, alice, bob)
}

/// What `/health` says of cold storage.
fn cold(s: &common::Server) -> String {
    s.request("GET", "/health", &[], None).1["components"]["coldStore"].as_str().unwrap().to_owned()
}

#[test]
fn postgres_down_for_30_s_fails_no_order_and_the_tables_catch_up() {
    let (db, proxy, s, alice, bob) = behind_a_proxy();
    proxy.cut();
    // Trading goes on for 30 s with PostgreSQL unreachable: every order is acknowledged.
    let mut acked = 0;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < until {
        s.limit(&alice, "BUY", "50000", "0.001");
        s.limit(&bob, "SELL", "50000", "0.001");
        acked += 2;
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(cold(&s), "down");
    assert_eq!(count(&db, "SELECT count(*) FROM orders"), 0, "nothing reached PostgreSQL through the cut");
    proxy.restore();
    // Each pair is one trade of one lot; counted from alice's position, since hot state
    // keeps only a user's latest fills.
    let trades = acked / 2;
    let positions = s.get(&alice, "/v1/positions").1;
    let size = common::dec(&positions[0]["size"]);
    assert_eq!(size, rust_decimal::Decimal::new(trades, 3), "every pair traded: {positions}");
    wait_for_rows(&db, acked, trades);
    let (_, metrics) = s.request("GET", "/metrics", &[], None);
    assert!(metrics.as_str().unwrap().contains("exchange_cold_store_records_total"), "{metrics}");
}

#[test]
fn a_hanging_postgres_delays_no_order_and_the_tables_catch_up() {
    let (db, proxy, s, alice, bob) = behind_a_proxy();
    // PostgreSQL stops answering, its connections open: every order is still answered
    // at once, and health says cold storage is behind.
    proxy.freeze(true);
    let mut acked = 0;
    let mut slowest = std::time::Duration::ZERO;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(12);
    while std::time::Instant::now() < until {
        let t = std::time::Instant::now();
        s.limit(&alice, "BUY", "50000", "0.001");
        s.limit(&bob, "SELL", "50000", "0.001");
        slowest = slowest.max(t.elapsed());
        acked += 2;
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Far less than the 12 s PostgreSQL hangs: nothing on the order path waits for it.
    assert!(slowest < std::time::Duration::from_secs(5), "an order waited {slowest:?} for a hanging PostgreSQL");
    let health = cold(&s);
    assert!(health == "lagging" || health == "down", "coldStore {health} while PostgreSQL hangs");
    proxy.freeze(false);
    wait_for_rows(&db, acked, acked / 2);
    let started = std::time::Instant::now();
    while cold(&s) != "ok" {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "cold storage did not recover: {}", cold(&s));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Alice and bob each send `per_side` one-lot orders at one price from two threads each:
/// every buy meets a sell, so `per_side` trades.
fn trade_pairs(s: &common::Server, alice: &str, bob: &str, per_side: usize) {
    std::thread::scope(|scope| {
        for (key, side) in [(alice, "BUY"), (alice, "BUY"), (bob, "SELL"), (bob, "SELL")] {
            scope.spawn(move || {
                for _ in 0..per_side / 2 {
                    s.limit(key, side, "50000", "0.001");
                }
            });
        }
    });
}

#[test]
fn the_writer_killed_while_catching_up_resumes_exactly() {
    let db = Database::create();
    let proxy = common::Proxy::start("127.0.0.1:5432");
    let url = db.url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    let mut s = common::Server::start_kafka(&broker(), &[("EXCHANGE_POSTGRES_URL", &url)]);
    let alice = s.funded("alice", "10000000");
    let bob = s.funded("bob", "10000000");
    let (mut orders, mut trades) = (0, 0);
    let mut interrupted = 0;
    // A backlog builds while PostgreSQL is cut off; the exchange (and its writer) is
    // killed as soon as some of it, not all, is stored: between or inside batches.
    for _ in 0..3 {
        let before = orders;
        proxy.cut();
        trade_pairs(&s, &alice, &bob, 800);
        orders += 1_600;
        trades += 800;
        proxy.restore();
        let started = std::time::Instant::now();
        let stored = loop {
            let n = count(&db, "SELECT count(*) FROM orders");
            if n > before {
                break n;
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "the writer never resumed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        s.kill9();
        if stored < orders {
            interrupted += 1;
        }
        s.restart();
        wait_for_rows(&db, orders, trades);
        assert_eq!(count(&db, "SELECT count(DISTINCT id) FROM orders"), orders);
        assert_eq!(count(&db, "SELECT count(*) FROM orders WHERE status <> 'FILLED'"), 0, "every order filled");
        if interrupted > 0 {
            break;
        }
    }
    assert!(interrupted > 0, "the writer was never caught with part of the backlog stored");
    let positions = s.get(&alice, "/v1/positions").1;
    assert_eq!(common::dec(&positions[0]["size"]), rust_decimal::Decimal::new(trades, 3), "{positions}");
}

mod writer {
    //! The writer's batches against a real PostgreSQL, records built as the exchange
    //! writes them: out of order across topics, replayed, voided.
    use exchange::cold::writer::ColdStore;
    use exchange::engine::{
        CancelReason, Cancelled, Command, Event, FillUpdate, NewOrder, OrderId, OrderType, PositionState, Side, TimeInForce,
        Trade, UserId,
    };
    use exchange::wire::{CANCELLED_TOPIC, COMMANDS_TOPIC, TRADES_TOPIC};
    use exchange::wire::{self, StreamRecord};
    use exchange_io::kafka::Located;
    use rust_decimal::Decimal;

    fn spec() -> exchange::engine::SymbolSpec {
        let map = exchange::shard_map::ShardMap::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/shards/default.toml"
        )));
        map.unwrap().symbols[0].clone()
    }

    fn at(topic: &str, offset: i64, payload: Vec<u8>) -> Located {
        Located { topic: topic.into(), partition: 0, offset, timestamp_ms: None, payload }
    }

    fn order(id: u64, side: Side, quantity: i64, tif: TimeInForce, offset: i64) -> Located {
        let spec = spec();
        let o = NewOrder {
            id: OrderId(id),
            user: UserId(id % 2),
            side,
            kind: OrderType::Limit { price: 500_000, tif },
            quantity,
            leverage: 10,
            reduce_only: false,
            client_order_id: None,
            locked_margin: 1,
            timestamp: 1_795_000_000_000 + offset,
            stp: Default::default(),
            good_till: 0,
        };
        at(COMMANDS_TOPIC, offset, wire::encode_command(&spec, &StreamRecord::Command(Command::Place(o)), id))
    }

    /// `buyer` buys `quantity` lots at `price` ticks from `seller`.
    fn trade(seq: u64, buyer: u64, seller: u64, price: i64, quantity: i64, offset: i64) -> Located {
        let update = |order: u64| FillUpdate {
            user: UserId(order % 2),
            order_id: OrderId(order),
            pnl: 0,
            fee: 1,
            margin_released: 0,
            position: PositionState::default(),
        };
        let t = Event::TradeExecuted(Trade {
            seq,
            price,
            quantity,
            taker_side: Side::Buy,
            adl: false,
            buyer: update(buyer),
            seller: update(seller),
            timestamp: 1_795_000_001_000 + offset,
        });
        at(TRADES_TOPIC, offset, wire::encode_event(&spec(), &t).1)
    }

    fn closed(seq: u64, id: u64, reason: CancelReason, offset: i64) -> Located {
        let c = Event::OrderCancelled(Cancelled {
            seq,
            order_id: OrderId(id),
            user: UserId(id % 2),
            side: Side::Buy,
            quantity: 1,
            filled: 0,
            released_margin: 0,
            reason,
            timestamp: 1_795_000_002_000 + offset,
        });
        at(CANCELLED_TOPIC, offset, wire::encode_event(&spec(), &c).1)
    }

    #[test]
    fn results_before_their_orders_replays_and_voids_end_exactly() {
        let db = super::Database::create();
        super::runtime().block_on(async {
            let mut cold = ColdStore::new(super::connect(&db.url).await).await.unwrap();
            let (a, b, c, d, e, f, v) = (1, 2, 3, 4, 5, 6, 7);
            // Results read before the orders they belong to.
            let results = [trade(1, a, b, 500_000, 4, 0), trade(2, a, c, 500_010, 6, 1)];
            let closings = [closed(3, d, CancelReason::Unfilled, 0)];
            cold.store("", &[results[0].clone(), closings[0].clone(), results[1].clone()]).await.unwrap();
            // Then the orders, a void of one of them, and a trade of orders just stored.
            let tif = TimeInForce::Gtc;
            cold.store(
                "",
                &[
                    order(a, Side::Buy, 10, tif, 0),
                    order(b, Side::Sell, 4, tif, 1),
                    order(c, Side::Sell, 6, tif, 2),
                    order(d, Side::Buy, 5, TimeInForce::Ioc, 3),
                    order(e, Side::Buy, 1, TimeInForce::PostOnly, 4),
                    order(f, Side::Sell, 8, tif, 5),
                    order(v, Side::Buy, 1, tif, 6),
                    at(COMMANDS_TOPIC, 7, wire::encode_command(&spec(), &StreamRecord::Void(6), 8)),
                    trade(4, d, f, 500_000, 3, 2),
                    closed(5, e, CancelReason::WouldTake, 1),
                ],
            )
            .await
            .unwrap();
            // A replay republishes the same results at later offsets: nothing changes.
            let replayed = [trade(1, a, b, 500_000, 4, 3), trade(2, a, c, 500_010, 6, 4), trade(4, d, f, 500_000, 3, 5)];
            let mut again = replayed.to_vec();
            again.push(closed(3, d, CancelReason::Unfilled, 2));
            again.push(closed(5, e, CancelReason::WouldTake, 3));
            cold.store("", &again).await.unwrap();

            let client = super::connect(&db.url).await;
            let rows = client
                .query("SELECT id, status, filled_quantity, filled_notional / nullif(filled_quantity, 0) FROM orders", &[])
                .await
                .unwrap();
            let spec = spec();
            let get = |id: u64| {
                let uuid = exchange::ids::encode(exchange::ids::IdKind::Order, spec.key, id);
                rows.iter()
                    .find(|r| r.get::<_, uuid::Uuid>(0) == uuid)
                    .map(|r| (r.get::<_, String>(1), r.get::<_, Decimal>(2), r.get::<_, Option<Decimal>>(3)))
            };
            let lots = |n| spec.lots_to_quantity(n);
            let avg_a = (spec.ticks_to_price(500_000) * Decimal::from(4) + spec.ticks_to_price(500_010) * Decimal::from(6))
                / Decimal::from(10);
            let (status, filled, avg) = get(a).unwrap();
            assert_eq!((status.as_str(), filled), ("FILLED", lots(10)));
            assert_eq!(avg.unwrap().normalize(), avg_a.normalize());
            assert_eq!(get(b).unwrap().0, "FILLED");
            assert_eq!(get(c).unwrap().0, "FILLED");
            assert_eq!(get(d).unwrap().0, "CANCELLED", "an IOC rest closed before its order was read");
            assert_eq!(get(d).unwrap().1, lots(3));
            assert_eq!(get(e).unwrap().0, "REJECTED");
            assert_eq!((get(f).unwrap().0.as_str(), get(f).unwrap().1), ("PARTIALLY_FILLED", lots(3)));
            assert_eq!(get(v), None, "a voided command is no order");
            assert_eq!(rows.len(), 6);
            // Created when submitted; updated by its last trade or its closing.
            let times = |id: u64| {
                let uuid = exchange::ids::encode(exchange::ids::IdKind::Order, spec.key, id);
                let client = &client;
                async move {
                    let sql = "SELECT (extract(epoch FROM created_at) * 1000)::int8, (extract(epoch FROM updated_at) * 1000)::int8
                               FROM orders WHERE id = $1";
                    let r = client.query_one(sql, &[&uuid]).await.unwrap();
                    (r.get::<_, i64>(0), r.get::<_, i64>(1))
                }
            };
            assert_eq!(times(d).await, (1_795_000_000_003, 1_795_000_002_000), "d: closed after its trade");
            assert_eq!(times(f).await, (1_795_000_000_005, 1_795_000_001_002), "f: its trade");
            assert_eq!(times(b).await, (1_795_000_000_001, 1_795_000_001_000), "b: filled before it was read");
            let count = |sql: &'static str| {
                let client = &client;
                async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
            };
            assert_eq!(count("SELECT count(*) FROM trades").await, 3);
            assert_eq!(count("SELECT count(*) FROM pending_order_changes").await, 0, "everything found its order");
            let offsets = cold.offsets().await.unwrap();
            let next = |topic: &str| offsets.iter().find(|(t, _, _)| t == topic).map(|o| o.2);
            assert_eq!((next(COMMANDS_TOPIC), next(TRADES_TOPIC), next(CANCELLED_TOPIC)), (Some(8), Some(6), Some(4)));
        });
    }
}

#[test]
fn a_node_that_lost_its_disk_starts_from_the_postgres_checkpoint() {
    let db = Database::create();
    // A snapshot after every command, so the last one holds the last trade whatever
    // else shares the partition's offsets (start-up fences, say).
    let env = [("EXCHANGE_POSTGRES_URL", db.url.as_str()), ("EXCHANGE_SNAPSHOT_EVERY", "1")];
    let mut s = common::Server::start_kafka(&broker(), &env);
    let alice = s.funded("alice", "1000000");
    let bob = s.funded("bob", "1000000");
    for _ in 0..15 {
        s.limit(&alice, "BUY", "50000", "0.002");
        s.limit(&bob, "SELL", "50000", "0.001");
    }
    let state = |s: &common::Server| {
        [&alice, &bob].map(|key| {
            let orders: Vec<serde_json::Value> = s.get(key, "/v1/orders").1.as_array().unwrap().clone();
            (s.get(key, "/v1/balance").1, s.get(key, "/v1/positions").1, orders)
        })
    };
    let before = state(&s);
    // The checkpoints catch up with the last snapshots: the symbol's, and the accounts'
    // with alice's balance and position as the API shows them.
    let account = &alice[..16];
    let total = common::dec(&before[0].0["total"]);
    let size = common::dec(&before[0].1[0]["size"]);
    let started = std::time::Instant::now();
    loop {
        let stored = runtime().block_on(async {
            let c = connect(&db.url).await;
            let total = c.query_opt("SELECT total FROM accounts WHERE user_id = $1", &[&account]).await.unwrap();
            let size = c.query_opt("SELECT size FROM positions WHERE user_id = $1 AND symbol = 'BTC-PERP'", &[&account]).await.unwrap();
            (total.map(|r| r.get::<_, rust_decimal::Decimal>(0)), size.map(|r| r.get::<_, rust_decimal::Decimal>(0)))
        });
        if stored == (Some(total), Some(size)) && count(&db, "SELECT count(*) FROM checkpoints WHERE kind = 'symbol'") > 0 {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "checkpoint {stored:?}, API {:?}", (total, size));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(count(&db, "SELECT count(*) FROM checkpoint_offsets WHERE symbol = 'BTC-PERP' AND log_offset > 0") > 0);
    // The node loses its disk: a start with an empty data directory finds the
    // checkpoints in PostgreSQL, starts from them, and has the same state.
    s.kill9();
    std::fs::remove_dir_all(&s.data).unwrap();
    s.restart();
    let restored = |kind: &str| std::fs::read_dir(s.data.join("snapshots").join(kind)).map_or(0, |d| d.count());
    assert!(restored("symbols") > 0 && restored("accounts") > 0, "snapshots restored from PostgreSQL");
    assert_eq!(state(&s), before);
    // And trading goes on from there.
    s.limit(&bob, "SELL", "50000", "0.001");
    let after = common::dec(&s.get(&alice, "/v1/positions").1[0]["size"]);
    assert_eq!(after, size + rust_decimal::Decimal::new(1, 3));
}

/// `EXCHANGE_PERSISTENCE=sync`, the baseline the benchmarks compare against: every order
/// is in PostgreSQL when it is answered, with balances and positions that agree with the
/// exchange's to the unit.
#[test]
fn the_synchronous_baseline_writes_each_order_before_its_answer() {
    let db = Database::create();
    let s = common::Server::start_embedded(&[("EXCHANGE_PERSISTENCE", "sync"), ("EXCHANGE_POSTGRES_URL", &db.url)]);
    let alice = s.funded("alice", "10000");
    let bob = s.funded("bob", "10000");
    let (status, sell) = s.order(&alice, r#"{"symbol":"BTC-PERP","side":"SELL","type":"LIMIT","price":"50000","quantity":"0.010","leverage":10}"#);
    assert_eq!(status, 200, "{sell}");
    let (status, buy) = s.order(&bob, r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"50000.5","quantity":"0.004","leverage":10}"#);
    assert_eq!(status, 200, "{buy}");
    // No waiting: the answers came after the commits.
    assert_eq!(count(&db, "SELECT count(*) FROM sync_orders"), 2);
    assert_eq!(count(&db, "SELECT count(*) FROM sync_trades"), 1);
    assert_eq!(count(&db, "SELECT count(*) FROM sync_orders WHERE filled_quantity = 0.004"), 2);
    let (status, _) = s.request("DELETE", &format!("/v1/orders/{}", sell["orderId"].as_str().unwrap()), &[("x-api-key", &alice)], None);
    assert_eq!(status, 200);
    assert_eq!(count(&db, "SELECT count(*) FROM sync_orders WHERE status = 'CANCELLED'"), 1);
    let row = |user: &str| -> (rust_decimal::Decimal, rust_decimal::Decimal) {
        let id = user[..16].to_owned();
        runtime().block_on(async {
            let r = connect(&db.url).await.query_one("SELECT total, locked FROM sync_balances WHERE user_id = $1", &[&id]).await.unwrap();
            (r.get(0), r.get(1))
        })
    };
    for key in [&alice, &bob] {
        let (_, api) = s.get(key, "/v1/balance");
        assert_eq!(row(key), (common::dec(&api["total"]), common::dec(&api["locked"])), "{api}");
    }
    let size: rust_decimal::Decimal = runtime().block_on(async {
        connect(&db.url).await.query_one("SELECT size FROM sync_positions WHERE user_id = $1", &[&bob[..16].to_owned()]).await.unwrap().get(0)
    });
    assert_eq!(size, rust_decimal::Decimal::new(4, 3));
}

/// A command made before an epoch of its log and landing after it — a request a broker
/// persisted only after the exchange voided what it could see, or a record of an older
/// process still writing — counts for no reader: not a replay of the exchange, not cold
/// storage.
#[test]
fn a_command_that_lands_after_a_newer_epoch_counts_for_no_reader() {
    use std::time::{Duration, Instant};
    let db = Database::create();
    let brokers = broker();
    let mut s = common::Server::start_kafka(&brokers, &[("EXCHANGE_POSTGRES_URL", &db.url)]);
    let alice = s.funded("alice", "1000");
    let order = r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.001","leverage":10,"clientOrderId":"first"}"#;
    assert_eq!(s.order(&alice, order).0, 200);
    let topic = format!("{}orders.submitted", s.env_var("EXCHANGE_KAFKA_TOPIC_PREFIX").unwrap());
    let partitions: i32 = s.env_var("EXCHANGE_KAFKA_PARTITIONS").unwrap().parse().unwrap();
    let partition = exchange_io::kafka::partition_for(b"BTC-PERP", partitions);
    let read = || exchange_io::kafka::read_partition(&brokers, &topic, partition, 0, Duration::from_secs(10)).unwrap().0;
    let first = read().into_iter().find(|r| String::from_utf8_lossy(&r.payload).contains("\"first\"")).expect("the order's record");
    // A restart starts a new epoch on every symbol's log.
    s.restart();
    // The first run's order once more, as a request of that run landing only now: its
    // own number (seq), another order id and clientOrderId.
    let mut late: serde_json::Value = serde_json::from_slice(&first.payload).unwrap();
    let id = late["orderId"].as_str().unwrap().to_owned();
    let last = u8::from_str_radix(&id[id.len() - 1..], 16).unwrap() ^ 0x8;
    late["orderId"] = format!("{}{last:x}", &id[..id.len() - 1]).into();
    late["clientOrderId"] = "late".into();
    let producer = exchange_io::kafka::producer(&brokers, Duration::from_secs(5)).unwrap();
    let report = exchange_io::kafka::send(&producer, &topic, partition, "BTC-PERP", &serde_json::to_vec(&late).unwrap()).unwrap();
    futures_lite::future::block_on(exchange_io::kafka::delivered(report)).unwrap();
    let late_offset = read().iter().find(|r| String::from_utf8_lossy(&r.payload).contains("\"late\"")).expect("the late record").offset;
    let epochs = read().iter().filter(|r| r.offset < late_offset && String::from_utf8_lossy(&r.payload).contains("EpochStarted")).count();
    assert!(epochs >= 2, "each start begins an epoch before the late record: {epochs}");

    // Cold storage reads past it and stores one order.
    let started = Instant::now();
    loop {
        let stored = runtime().block_on(async {
            connect(&db.url)
                .await
                .query_opt("SELECT next_offset FROM writer_offsets WHERE topic = $1 AND kafka_partition = $2", &[&topic, &partition])
                .await
                .unwrap()
                .map_or(0, |r| r.get::<_, i64>(0))
        });
        if stored > i64::try_from(late_offset).unwrap() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the writer did not read past the late record");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(count(&db, "SELECT count(*) FROM orders"), 1);
    assert_eq!(count(&db, "SELECT count(*) FROM orders WHERE client_order_id = 'late'"), 0);
    // Nor does a replay of the log execute it.
    s.restart();
    assert_eq!(s.get(&alice, "/v1/orders/by-client-id/late").0, 404);
    assert_eq!(s.get(&alice, "/v1/orders/by-client-id/first").0, 200);
    let (_, balance) = s.get(&alice, "/v1/balance");
    assert_eq!(balance["locked"], "4.02", "{balance}");
}
