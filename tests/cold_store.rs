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
        for table in ["orders", "trades", "accounts", "positions", "writer_offsets"] {
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
fn postgres_down_for_30_s_fails_no_order_and_the_tables_catch_up() {
    let db = Database::create();
    let proxy = common::Proxy::start("127.0.0.1:5432");
    let url = db.url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    let s = common::Server::start_kafka(&broker(), &[("EXCHANGE_POSTGRES_URL", &url)]);
    let alice = s.funded("alice", "1000000");
    let bob = s.funded("bob", "1000000");
    let cold = |s: &common::Server| s.request("GET", "/health", &[], None).1["components"]["coldStore"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    while cold(&s) != "ok" {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "cold storage never came up");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
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
