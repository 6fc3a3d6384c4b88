//! What the README promises an operator, shown on a running exchange: a configuration
//! file under the environment, SIGTERM draining what is in flight, the retention limits
//! of hot state, and the periodic consistency check.

mod common;

use std::time::{Duration, Instant};

use common::{Broker, Server};

#[test]
fn a_config_file_applies_and_the_environment_overrides_it() {
    let dir = std::env::temp_dir().join(format!("exchange-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("exchange.toml");
    // The harness sets EXCHANGE_RATE_LIMIT=0, which must win over the file's 2.
    std::fs::write(&file, "max_open_orders = 2\nrate_limit = 2\n").unwrap();
    let s = Server::start_with_args(&[], &["--config", file.to_str().unwrap()]);
    let alice = s.funded("alice", "1000");
    for price in ["40000", "40001"] {
        s.limit(&alice, "BUY", price, "0.001");
    }
    let (status, reply) = s.order(&alice, r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40002","quantity":"0.001"}"#);
    assert_eq!((status, reply["code"].as_str()), (422, Some("TOO_MANY_OPEN_ORDERS")), "the file's max_open_orders applies: {reply}");
    for _ in 0..5 {
        let (status, _) = s.get(&alice, "/v1/balance");
        assert_eq!(status, 200);
        assert_ne!(s.delete(&alice, "/v1/orders?symbol=ETH-PERP").0, 429, "the environment's rate limit (none) wins");
    }

    // A file with a mistake stops the start, naming the file.
    std::fs::write(&file, "max_open_orders = \"many\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_exchange"))
        .args(["serve", "--config", file.to_str().unwrap()])
        .env("EXCHANGE_DATA_DIR", dir.join("data"))
        .env("EXCHANGE_HTTP_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("exchange.toml"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[allow(clippy::result_large_err)] // ureq's error, in a test thread
fn sigterm_answers_what_is_in_flight_before_the_process_exits() {
    let broker = Broker::start();
    let mut s = Server::start_kafka(&broker.addr, &[("EXCHANGE_KAFKA_TIMEOUT_MS", "2000")]);
    let alice = s.funded("alice", "1000");
    // The broker frozen, an order waits in the log for its answer...
    broker.freeze(true);
    let started = Instant::now();
    let url = s.url("/v1/orders");
    let answer = std::thread::scope(|scope| {
        let pending = scope.spawn(|| {
            let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(20)).build();
            agent
                .post(&url)
                .set("x-api-key", &alice)
                .send_string(r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.001"}"#)
        });
        std::thread::sleep(Duration::from_millis(500));
        // ...when SIGTERM comes. The process stops taking connections, answers it, exits.
        let status = s.terminate();
        let answer = pending.join().unwrap();
        assert!(status.success(), "{status:?}");
        answer
    });
    let answered = match answer {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("the in-flight request was cut off instead of answered: {e}"),
    };
    assert_eq!(answered, 503, "the log never confirmed it: refused, and it says so");
    assert!(started.elapsed() >= Duration::from_millis(1_500), "it waited for the log's answer");
    broker.freeze(false);
}

#[test]
fn hot_state_keeps_the_last_500_closed_orders_and_fills_per_user() {
    let s = Server::start();
    let alice = s.funded("alice", "100000");
    let bob = s.funded("bob", "100000");
    // 505 trades: alice rests, bob takes.
    let mut first = None;
    for _ in 0..505 {
        let resting = s.limit(&alice, "SELL", "40000", "0.001");
        first.get_or_insert(resting["orderId"].as_str().unwrap().to_owned());
        let (status, taken) = s.order(&bob, r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.001","timeInForce":"IOC"}"#);
        assert_eq!((status, taken["status"].as_str()), (200, Some("FILLED")), "{taken}");
    }
    let (_, fills) = s.get(&alice, "/v1/fills?limit=10000");
    assert_eq!(fills.as_array().unwrap().len(), 500, "the last 500 fills are kept");
    // The oldest closed orders are forgotten by hot state; the newest are there.
    let first = first.unwrap();
    assert_eq!(s.get(&alice, &format!("/v1/orders/{first}")).0, 404, "the oldest of 505 closed orders is gone");
    let (_, last) = s.get(&bob, "/v1/fills?limit=1");
    let last_order = last[0]["orderId"].as_str().unwrap();
    assert_eq!(s.get(&bob, &format!("/v1/orders/{last_order}")).0, 200);
}

#[test]
fn the_consistency_check_runs_by_itself_every_interval() {
    let s = Server::start_with(&[("EXCHANGE_CHECK_INTERVAL_SECS", "1")]);
    let checks = || {
        let (_, text) = s.request("GET", "/metrics", &[], None);
        let text = text.as_str().unwrap_or_default().to_owned();
        text.lines()
            .filter(|l| l.starts_with("exchange_consistency_checks"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while checks() < 4.0 {
        assert!(Instant::now() < deadline, "no periodic check ran: {}", checks());
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_funding_interval_can_be_set_for_every_symbol_at_once() {
    let s = Server::start_with(&[("EXCHANGE_FUNDING_INTERVAL_SECS", "60")]);
    let (_, symbols) = s.request("GET", "/v1/symbols", &[], None);
    let intervals: Vec<&serde_json::Value> = symbols.as_array().unwrap().iter().map(|s| &s["fundingIntervalSecs"]).collect();
    assert_eq!(intervals, [&serde_json::json!(60), &serde_json::json!(60)]);
}
