//! Redis as the hot state, lost in every way it can be: emptied, restarted, frozen, its
//! keys deleted. Each time the exchange answers 503 (never a wrong balance), rebuilds by
//! itself, and every account reads exactly as before. Each test runs its own
//! `redis-server`, except the last, which deletes its own keys on the suite's Redis
//! (`EXCHANGE_TEST_HOT_REDIS`, a single server or a cluster) when there is one.

mod common;

use std::time::{Duration, Instant};

use common::{RedisServer, Server};
use serde_json::Value;

/// Two traders with resting orders, fills and positions on both symbols.
fn trade(s: &Server) -> Vec<String> {
    let a = s.funded("alice", "100000");
    let b = s.funded("bob", "100000");
    s.limit(&a, "BUY", "50000", "0.010");
    s.limit(&a, "BUY", "49000", "0.005");
    s.limit(&b, "SELL", "50000", "0.004");
    let (status, body) = s.order(
        &b,
        r#"{"symbol":"ETH-PERP","side":"SELL","type":"LIMIT","price":"3000","quantity":"1","leverage":5,"clientOrderId":"eth-1"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.order(&a, r#"{"symbol":"ETH-PERP","side":"BUY","type":"MARKET","quantity":"0.4","leverage":5}"#);
    assert_eq!(status, 200, "{body}");
    vec![a, b]
}

/// Everything an account reads.
fn state(s: &Server, keys: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for key in keys {
        for path in ["/v1/balance", "/v1/positions", "/v1/orders", "/v1/fills", "/v1/orders/by-client-id/eth-1"] {
            let (status, body) = s.get(key, path);
            out.push(serde_json::json!({ "path": path, "status": status, "body": body }));
        }
    }
    out
}

/// Complete rewrites of the hot state into Redis so far, over all shards.
fn rebuilds(s: &Server) -> u64 {
    let (_, metrics) = s.request("GET", "/metrics", &[], None);
    metrics
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("exchange_hot_state_rebuilds_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits until both shards have rebuilt since `before` rebuilds, then until healthy.
fn wait_rebuilt(s: &Server, before: u64) {
    let started = Instant::now();
    while rebuilds(s) < before + 2 {
        assert!(started.elapsed() < Duration::from_secs(20), "the hot state was not rebuilt");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_healthy(s);
}

fn wait_healthy(s: &Server) -> Duration {
    let started = Instant::now();
    loop {
        let (_, health) = s.request("GET", "/health", &[], None);
        if health["status"] == "ok" {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "not healthy again: {health}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn with_redis(redis: &RedisServer) -> Server {
    Server::start_with(&[("EXCHANGE_REDIS_URL", &redis.url()), ("EXCHANGE_REDIS_PREFIX", "")])
}

#[test]
fn an_emptied_redis_is_noticed_and_rebuilt_exactly() {
    let redis = RedisServer::start();
    let s = with_redis(&redis);
    let keys = trade(&s);
    let before = state(&s, &keys);
    // Everything answers, but alice's lookup of bob's clientOrderId.
    assert_eq!(before.iter().filter(|v| v["status"] == 200).count(), before.len() - 1, "{before:?}");
    let rebuilt = rebuilds(&s);
    let _: () = redis::cmd("FLUSHALL").query(&mut redis.connection().unwrap()).unwrap();
    let (status, body) = s.get(&keys[0], "/v1/balance");
    assert_eq!(status, 503, "a balance that is gone is not made up: {body}");
    assert_eq!(body["code"], "UNAVAILABLE");
    // The other shard notices by its watchdog (every 250 ms); both rewrite their users.
    wait_rebuilt(&s, rebuilt);
    let (_, metrics) = s.request("GET", "/metrics", &[], None);
    assert!(metrics.as_str().unwrap().contains("exchange_hot_state{shard=\"0\"} 3"), "{metrics}");
    assert_eq!(state(&s, &keys), before);
    // And it trades on.
    s.limit(&keys[1], "SELL", "49000", "0.001");
}

#[test]
fn a_restarted_redis_is_rebuilt_exactly() {
    let mut redis = RedisServer::start();
    let s = with_redis(&redis);
    let keys = trade(&s);
    let before = state(&s, &keys);
    let rebuilt = rebuilds(&s);
    redis.restart();
    // Noticed by the partition markers within a watchdog period or two.
    wait_rebuilt(&s, rebuilt);
    assert_eq!(state(&s, &keys), before);
}

#[test]
fn an_unreachable_redis_answers_503_in_bounded_time_and_changes_nothing() {
    let redis = RedisServer::start();
    let s = with_redis(&redis);
    let keys = trade(&s);
    let before = state(&s, &keys);
    let rebuilt = rebuilds(&s);
    redis.signal(libc::SIGSTOP);
    let started = Instant::now();
    let (status, body) = s.order(&keys[0], r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.001","leverage":10}"#);
    let waited = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
    let (status, _) = s.get(&keys[1], "/v1/balance");
    assert_eq!(status, 503);
    let (_, health) = s.request("GET", "/health", &[], None);
    assert_eq!(health["components"]["stateStore"], "down", "{health}");
    redis.signal(libc::SIGCONT);
    wait_rebuilt(&s, rebuilt);
    assert_eq!(state(&s, &keys), before, "the refused order left nothing behind");
    s.limit(&keys[0], "BUY", "40000", "0.001");
}

#[test]
fn rebuild_state_writes_the_logs_into_an_empty_redis() {
    let redis = RedisServer::start();
    let mut s = with_redis(&redis);
    let keys = trade(&s);
    let before = state(&s, &keys);
    let alice_balance = before[0]["body"].clone();
    assert!(s.terminate().success());
    let mut conn = redis.connection().unwrap();
    let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_exchange"))
        .arg("rebuild-state")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("EXCHANGE_DATA_DIR", &s.data)
        .env("EXCHANGE_REDIS_URL", redis.url())
        .env("EXCHANGE_REDIS_PREFIX", "")
        .env("EXCHANGE_CORES", "0,1")
        .envs(kafka_env(&s))
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Alice's balance, read straight from Redis.
    let user = exchange::engine::UserId(u64::from_str_radix(&keys[0][..16], 16).unwrap());
    let k = exchange::redis_state::Keys::new("");
    let (total, locked): (i64, i64) = redis::cmd("HMGET").arg(k.balance(user)).arg("total").arg("locked").query(&mut conn).unwrap();
    let usdt = |units: i64| rust_decimal::Decimal::new(units, 8).normalize().to_string();
    assert_eq!(usdt(total), alice_balance["total"].as_str().unwrap());
    assert_eq!(usdt(locked), alice_balance["locked"].as_str().unwrap());
    s.restart();
    assert_eq!(state(&s, &keys), before);
}

/// The Kafka settings the server was started with (rebuild-state reads the same log).
fn kafka_env(s: &Server) -> Vec<(String, String)> {
    s.env().iter().filter(|(k, _)| k.starts_with("EXCHANGE_KAFKA")).cloned().collect()
}

#[test]
fn deleting_its_keys_on_the_suites_redis_is_repaired() {
    // On the suite's Redis (single or cluster) when it has one, else on one of our own.
    let own = common::hot_redis().is_none().then(RedisServer::start);
    let s = match &own {
        Some(redis) => Server::start_with(&[("EXCHANGE_REDIS_URL", &redis.url()), ("EXCHANGE_REDIS_PREFIX", "own:")]),
        None => Server::start(),
    };
    let keys = trade(&s);
    let before = state(&s, &keys);
    let url = s.env().iter().find(|(k, _)| k == "EXCHANGE_REDIS_URL").map(|(_, v)| v.clone()).unwrap();
    let prefix = s.env().iter().find(|(k, _)| k == "EXCHANGE_REDIS_PREFIX").map(|(_, v)| v.clone()).unwrap();
    let rebuilt = rebuilds(&s);
    // Deleting key by key is not atomic: held still meanwhile, the exchange cannot start
    // rebuilding halfway and have the rest of the deletion undo part of its work.
    s.signal(libc::SIGSTOP);
    let deleted = delete_prefixed(&url, &prefix);
    s.signal(libc::SIGCONT);
    assert!(deleted > 10, "only {deleted} keys deleted");
    wait_rebuilt(&s, rebuilt);
    assert_eq!(state(&s, &keys), before);
}

/// Deletes every key under `prefix` on every master the URL leads to.
fn delete_prefixed(url: &str, prefix: &str) -> usize {
    let mut seed = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO").arg("cluster").query(&mut seed).unwrap();
    let nodes: Vec<String> = if info.contains("cluster_enabled:1") {
        let text: String = redis::cmd("CLUSTER").arg("NODES").query(&mut seed).unwrap();
        text.lines()
            .filter(|l| l.contains("master"))
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|addr| format!("redis://{}", addr.split('@').next().unwrap()))
            .collect()
    } else {
        vec![url.to_owned()]
    };
    let mut deleted = 0;
    for node in nodes {
        let mut c = redis::Client::open(node.as_str()).unwrap().get_connection().unwrap();
        let found: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query(&mut c).unwrap();
        for key in found {
            let _: () = redis::cmd("DEL").arg(&key).query(&mut c).unwrap();
            deleted += 1;
        }
    }
    deleted
}

#[test]
fn a_clean_stop_lets_the_next_start_skip_the_rebuild() {
    let redis = RedisServer::start();
    let mut s = with_redis(&redis);
    let keys = trade(&s);
    let before = state(&s, &keys);
    assert!(s.terminate().success());
    let k = exchange::redis_state::Keys::new("");
    let mut conn = redis.connection().unwrap();
    let marks: Vec<Option<String>> = (0..64).map(|p| redis::cmd("GET").arg(k.clean(p)).query(&mut conn).unwrap()).collect();
    assert!(marks.iter().all(|m| m.as_deref().is_some_and(|m| m.contains("users="))), "{marks:?}");
    s.restart();
    let left: Vec<Option<String>> = (0..64).map(|p| redis::cmd("GET").arg(k.clean(p)).query(&mut conn).unwrap()).collect();
    assert!(left.iter().all(Option::is_none), "a start consumes the marks, so a later crash cannot reuse them");
    assert_eq!(state(&s, &keys), before);
    s.limit(&keys[0], "BUY", "40000", "0.001");
    // A crash leaves no marks: the next start rebuilds.
    s.restart();
    assert_eq!(s.get(&keys[0], "/v1/orders").1.as_array().unwrap().len(), 3);
}

/// `exchange check` against the running server: exit code and report.
fn exchange_check(s: &Server) -> (i32, Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_exchange"))
        .arg("check")
        .env("EXCHANGE_HTTP_ADDR", format!("127.0.0.1:{}", s.port))
        .env("EXCHANGE_ADMIN_KEY", common::ADMIN)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), report)
}

#[test]
fn one_check_repairs_a_hand_edited_balance_and_a_leaked_lock() {
    let redis = RedisServer::start();
    let s = with_redis(&redis);
    let keys = trade(&s);
    let before = state(&s, &keys);
    // Under steady trading a check finds nothing.
    std::thread::scope(|scope| {
        let trader = scope.spawn(|| {
            for i in 0..60 {
                let (key, side) = if i % 2 == 0 { (&keys[0], "BUY") } else { (&keys[1], "SELL") };
                s.limit(key, side, "48000", "0.001");
            }
        });
        for _ in 0..3 {
            let (code, report) = exchange_check(&s);
            assert_eq!((code, report["clean"].as_bool()), (0, Some(true)), "{report}");
        }
        trader.join().unwrap();
    });
    let before_edit = state(&s, &keys);
    assert_ne!(before_edit, before);
    let k = exchange::redis_state::Keys::new("");
    let user = |key: &str| exchange::engine::UserId(u64::from_str_radix(&key[..16], 16).unwrap());
    let (alice, bob) = (user(&keys[0]), user(&keys[1]));
    let mut conn = redis.connection().unwrap();
    // A balance edited by hand.
    let _: () = redis::cmd("HINCRBY").arg(k.balance(alice)).arg("total").arg(100_000_000).query(&mut conn).unwrap();
    let _: () = redis::cmd("HINCRBY").arg(k.balance(alice)).arg("available").arg(100_000_000).query(&mut conn).unwrap();
    // A margin lock whose order never reached the log, as a crash between the risk step
    // and the log leaves it.
    let leaked = exchange::engine::OrderId(999);
    let _: () = redis::cmd("SET").arg(k.lock(bob, leaked)).arg(500).query(&mut conn).unwrap();
    let _: () = redis::cmd("SADD").arg(k.active(bob)).arg(999).query(&mut conn).unwrap();
    let _: () = redis::cmd("HINCRBY").arg(k.balance(bob)).arg("locked").arg(500).query(&mut conn).unwrap();
    let _: () = redis::cmd("HINCRBY").arg(k.balance(bob)).arg("available").arg(-500).query(&mut conn).unwrap();
    let (code, report) = exchange_check(&s);
    assert_eq!(code, 1, "{report}");
    let repaired = report["repaired"].as_array().unwrap();
    assert_eq!(repaired.len(), 2, "{report}");
    let text = report.to_string();
    assert!(text.contains("balance") && text.contains("unknown to the log: [999]"), "{report}");
    assert_eq!(state(&s, &keys), before_edit, "both repaired from the log");
    assert!(!redis::cmd("EXISTS").arg(k.lock(bob, leaked)).query::<bool>(&mut conn).unwrap(), "the leaked lock is gone");
    let (code, report) = exchange_check(&s);
    assert_eq!((code, report["clean"].as_bool()), (0, Some(true)), "{report}");
    let (_, metrics) = s.request("GET", "/metrics", &[], None);
    assert!(metrics.as_str().unwrap().contains("exchange_consistency_repairs_total 2"), "{metrics}");
}
