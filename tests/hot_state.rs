//! Redis as the hot-state projection, lost in every way it can be: emptied (under load),
//! restarted, frozen, its keys deleted. Trading never stops and no order is refused or
//! slowed because of it; the exchange rewrites Redis by itself, and afterwards Redis holds
//! exactly what the ledger (and so the API) says. Each test runs its own `redis-server`,
//! except one, which deletes its own keys on the suite's Redis (`EXCHANGE_TEST_HOT_REDIS`,
//! a single server or a cluster) when there is one.

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

fn user_of(key: &str) -> exchange::engine::UserId {
    exchange::engine::UserId(u64::from_str_radix(&key[..16], 16).unwrap())
}

/// What Redis holds for these users, read straight from it: balance, open orders (each
/// order's JSON), positions, fills, and a clientOrderId's order.
fn projection(conn: &mut dyn redis::ConnectionLike, prefix: &str, keys: &[String]) -> Vec<Value> {
    let k = exchange::redis_state::Keys::new(prefix);
    let mut out = Vec::new();
    for key in keys {
        let user = user_of(key);
        let balance: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL").arg(k.balance(user)).query(conn).unwrap();
        let mut open: Vec<u64> = redis::cmd("SMEMBERS").arg(k.active(user)).query(conn).unwrap();
        open.sort_unstable();
        let orders: Vec<Option<String>> =
            open.iter().map(|id| redis::cmd("GET").arg(k.order(user, exchange::engine::OrderId(*id))).query(conn).unwrap()).collect();
        let positions: Vec<std::collections::BTreeMap<String, String>> =
            ["BTC-PERP", "ETH-PERP"].iter().map(|s| redis::cmd("HGETALL").arg(k.position(user, s)).query(conn).unwrap()).collect();
        let fills: Vec<String> = redis::cmd("LRANGE").arg(k.fills(user)).arg(0).arg(-1).query(conn).unwrap();
        let cid = exchange::engine::ClientOrderId::new("eth-1").unwrap();
        let by_cid: Option<String> = redis::cmd("GET").arg(k.client_order(user, &cid)).query(conn).unwrap();
        out.push(serde_json::json!({ "balance": balance, "open": open, "orders": orders, "positions": positions, "fills": fills, "cid": by_cid }));
    }
    out
}

/// Redis's balances are the API's (the ledger's), to the unit, and the exchange's own
/// consistency check (balances, open orders, positions of every user) finds nothing.
fn assert_redis_is_the_ledger(s: &Server, conn: &mut dyn redis::ConnectionLike, prefix: &str, keys: &[String]) {
    let k = exchange::redis_state::Keys::new(prefix);
    let usdt = |units: i64| rust_decimal::Decimal::new(units, 8).normalize().to_string();
    for key in keys {
        let (_, api) = s.get(key, "/v1/balance");
        let (t, a, l): (i64, i64, i64) =
            redis::cmd("HMGET").arg(k.balance(user_of(key))).arg("total").arg("available").arg("locked").query(conn).unwrap();
        assert_eq!([usdt(t), usdt(a), usdt(l)], [&api["total"], &api["available"], &api["locked"]].map(|v| v.as_str().unwrap().to_owned()));
    }
    let (code, report) = exchange_check(s);
    assert_eq!((code, report["clean"].as_bool()), (0, Some(true)), "{report}");
    assert!(report["users"].as_u64().unwrap() >= keys.len() as u64, "{report}");
}

/// Complete rewrites of the hot state into Redis so far, over all shards.
fn rebuilds(s: &Server) -> u64 {
    s.metric("exchange_hot_state_rebuilds_total", "") as u64
}

/// Waits until both shards have rebuilt since `before` rebuilds, then until healthy.
fn wait_rebuilt(s: &Server, before: u64) {
    wait_rebuilt_by(s, before, 2);
}

/// Waits until `shards` shards have rebuilt since `before` rebuilds, then until healthy.
fn wait_rebuilt_by(s: &Server, before: u64, shards: u64) {
    let started = Instant::now();
    while rebuilds(s) < before + shards {
        assert!(started.elapsed() < Duration::from_secs(20), "the hot state was not rebuilt: {}", s.request("GET", "/metrics", &[], None).1);
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

const ORDER: &str = r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"45000","quantity":"0.001","leverage":10}"#;

#[test]
fn a_redis_emptied_under_load_refuses_nothing_and_ends_identical_to_the_ledger() {
    let redis = RedisServer::start();
    let s = with_redis(&redis);
    let keys = trade(&s);
    let before = state(&s, &keys);
    let rebuilt = rebuilds(&s);
    let mut conn = redis.connection().unwrap();
    std::thread::scope(|scope| {
        let trader = scope.spawn(|| {
            let mut slowest = Duration::ZERO;
            for i in 0..200 {
                let (key, side, price) = if i % 2 == 0 { (&keys[0], "BUY", "48000") } else { (&keys[1], "SELL", "48000") };
                let started = Instant::now();
                let (status, body) = s.order(key, &ORDER.replace("BUY", side).replace("45000", price));
                slowest = slowest.max(started.elapsed());
                assert_eq!(status, 200, "order {i} refused: {body}");
            }
            slowest
        });
        std::thread::sleep(Duration::from_millis(100));
        let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
        let slowest = trader.join().unwrap();
        assert!(slowest < Duration::from_secs(1), "an order waited {slowest:?}");
    });
    // Noticed by a write or a watchdog (every 250 ms); both shards rewrite their users.
    wait_rebuilt(&s, rebuilt);
    assert_ne!(state(&s, &keys), before, "the load traded");
    assert_redis_is_the_ledger(&s, &mut conn, "", &keys);
    let (_, metrics) = s.request("GET", "/metrics", &[], None);
    assert!(metrics.as_str().unwrap().contains("exchange_hot_state{shard=\"0\"} 3"), "{metrics}");
}

#[test]
fn a_restarted_redis_is_rebuilt_exactly() {
    let mut redis = RedisServer::start();
    let s = with_redis(&redis);
    let keys = trade(&s);
    // Written behind: read once Redis has caught up with the last answer.
    wait_written(&s, &mut redis.connection().unwrap(), "", &keys);
    let before = projection(&mut redis.connection().unwrap(), "", &keys);
    assert!(before.iter().all(|u| !u["balance"].as_object().unwrap().is_empty()), "{before:?}");
    let rebuilt = rebuilds(&s);
    redis.restart();
    // Noticed by the partition markers within a watchdog period or two.
    wait_rebuilt(&s, rebuilt);
    let mut conn = redis.connection().unwrap();
    assert_eq!(projection(&mut conn, "", &keys), before);
    assert_redis_is_the_ledger(&s, &mut conn, "", &keys);
}

#[test]
fn a_redis_back_after_an_outage_is_used_again_within_five_seconds() {
    let mut redis = RedisServer::start();
    let s = with_redis(&redis);
    let keys = trade(&s);
    wait_healthy(&s);
    redis.stop();
    let down = Instant::now();
    loop {
        let (_, health) = s.request("GET", "/health", &[], None);
        if health["components"]["stateStore"] != "ok" {
            break;
        }
        assert!(down.elapsed() < Duration::from_secs(10), "a Redis that is gone went unnoticed: {health}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Long enough for the client's reconnection attempts to have backed off.
    std::thread::sleep(Duration::from_secs(6));
    redis.restart();
    let back = Instant::now();
    loop {
        let (_, health) = s.request("GET", "/health", &[], None);
        if health["status"] == "ok" {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(5), "Redis back for {:?} and still not used: {health}", back.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut conn = redis.connection().unwrap();
    wait_written(&s, &mut conn, "", &keys);
    assert_redis_is_the_ledger(&s, &mut conn, "", &keys);
}

#[test]
fn a_frozen_redis_neither_fails_nor_slows_an_order_and_is_caught_up() {
    let redis = RedisServer::start();
    let s = with_redis(&redis);
    let keys = trade(&s);
    let rebuilt = rebuilds(&s);
    redis.signal(libc::SIGSTOP);
    for i in 0..20 {
        let started = Instant::now();
        let (status, body) = s.order(&keys[0], ORDER);
        let waited = started.elapsed();
        assert_eq!(status, 200, "{body}");
        assert!(waited < Duration::from_millis(500), "order {i} answered after {waited:?}");
        let (status, balance) = s.get(&keys[0], "/v1/balance");
        assert_eq!(status, 200, "{balance}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The writes time out (EXCHANGE_REDIS_TIMEOUT_MS): the state store is down, the
    // exchange is not.
    let started = Instant::now();
    loop {
        let (_, health) = s.request("GET", "/health", &[], None);
        if health["components"]["stateStore"] == "down" {
            assert_eq!(health["components"]["eventLog"], "ok", "{health}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{health}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.order(&keys[1], &ORDER.replace("BUY", "SELL").replace("45000", "55000")).0, 200);
    redis.signal(libc::SIGCONT);
    // The shard whose writes timed out rebuilds; the other may have seen only a pause.
    wait_rebuilt_by(&s, rebuilt, 1);
    assert_eq!(s.get(&keys[0], "/v1/orders").1.as_array().unwrap().len(), 22);
    assert_redis_is_the_ledger(&s, &mut redis.connection().unwrap(), "", &keys);
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
    let url = s.env().iter().find(|(k, _)| k == "EXCHANGE_REDIS_URL").map(|(_, v)| v.clone()).unwrap();
    let prefix = s.env().iter().find(|(k, _)| k == "EXCHANGE_REDIS_PREFIX").map(|(_, v)| v.clone()).unwrap();
    let mut conn = common::connect_any(&url);
    wait_written(&s, conn.as_mut(), &prefix, &keys);
    let before = projection(conn.as_mut(), &prefix, &keys);
    let rebuilt = rebuilds(&s);
    // Deleting key by key is not atomic: held still meanwhile, the exchange cannot start
    // rebuilding halfway and have the rest of the deletion undo part of its work.
    s.signal(libc::SIGSTOP);
    let deleted = delete_prefixed(&url, &prefix);
    s.signal(libc::SIGCONT);
    assert!(deleted > 10, "only {deleted} keys deleted");
    wait_rebuilt(&s, rebuilt);
    assert_eq!(projection(conn.as_mut(), &prefix, &keys), before);
    assert_redis_is_the_ledger(&s, conn.as_mut(), &prefix, &keys);
}


/// Waits until the writes behind the last answers are in Redis: every user's balance
/// there is the API's (a user's keys are written together, in one script call).
fn wait_written(s: &Server, conn: &mut dyn redis::ConnectionLike, prefix: &str, keys: &[String]) {
    let started = Instant::now();
    let k = exchange::redis_state::Keys::new(prefix);
    let usdt = |units: Option<i64>| units.map(|u| rust_decimal::Decimal::new(u, 8).normalize().to_string());
    loop {
        let mut behind = None;
        for key in keys {
            let (_, api) = s.get(key, "/v1/balance");
            let (t, a, l): (Option<i64>, Option<i64>, Option<i64>) =
                redis::cmd("HMGET").arg(k.balance(user_of(key))).arg("total").arg("available").arg("locked").query(conn).unwrap();
            let redis = [usdt(t), usdt(a), usdt(l)];
            let wanted = ["total", "available", "locked"].map(|f| api[f].as_str().map(str::to_owned));
            if redis != wanted {
                behind = Some(format!("{redis:?} against {api}"));
            }
        }
        let Some(behind) = behind else { return };
        assert!(started.elapsed() < Duration::from_secs(10), "Redis never caught up: {behind}");
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let written = projection(&mut conn, "", &keys);
    let marks: Vec<Option<String>> = (0..64).map(|p| redis::cmd("GET").arg(k.clean(p)).query(&mut conn).unwrap()).collect();
    assert!(marks.iter().all(|m| m.as_deref().is_some_and(|m| m.contains("users="))), "{marks:?}");
    s.restart();
    assert_eq!(rebuilds(&s), 0, "the start found Redis as the stop left it and rewrote nothing");
    let left: Vec<Option<String>> = (0..64).map(|p| redis::cmd("GET").arg(k.clean(p)).query(&mut conn).unwrap()).collect();
    assert!(left.iter().all(Option::is_none), "a start consumes the marks, so a later crash cannot reuse them");
    assert_eq!(state(&s, &keys), before);
    assert_eq!(projection(&mut conn, "", &keys), written);
    s.limit(&keys[0], "BUY", "45000", "0.001");
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
    assert_ne!(state(&s, &keys), before);
    let k = exchange::redis_state::Keys::new("");
    let (alice, bob) = (user_of(&keys[0]), user_of(&keys[1]));
    let mut conn = redis.connection().unwrap();
    wait_written(&s, &mut conn, "", &keys);
    let before_edit = projection(&mut conn, "", &keys);
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
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(projection(&mut conn, "", &keys), before_edit, "both repaired from the log");
    assert!(!redis::cmd("EXISTS").arg(k.lock(bob, leaked)).query::<bool>(&mut conn).unwrap(), "the leaked lock is gone");
    let (code, report) = exchange_check(&s);
    assert_eq!((code, report["clean"].as_bool()), (0, Some(true)), "{report}");
    let (_, metrics) = s.request("GET", "/metrics", &[], None);
    assert!(metrics.as_str().unwrap().contains("exchange_consistency_repairs_total 2"), "{metrics}");
}

#[test]
fn a_balance_deleted_by_hand_is_noticed_by_the_next_write_and_everything_rewritten() {
    let redis = RedisServer::start();
    let s = with_redis(&redis);
    let keys = trade(&s);
    let mut conn = redis.connection().unwrap();
    wait_written(&s, &mut conn, "", &keys);
    let rebuilt = rebuilds(&s);
    let k = exchange::redis_state::Keys::new("");
    let _: () = redis::cmd("DEL").arg(k.balance(user_of(&keys[0]))).query(&mut conn).unwrap();
    // The markers are still there: only the next write for that user can tell.
    let (status, body) = s.order(&keys[0], ORDER);
    assert_eq!(status, 200, "{body}");
    wait_rebuilt_by(&s, rebuilt, 1);
    wait_written(&s, &mut conn, "", &keys);
    assert_redis_is_the_ledger(&s, &mut conn, "", &keys);
}

#[test]
fn redis_keeps_no_more_closed_orders_per_user_than_the_ledger() {
    let redis = RedisServer::start();
    let s = with_redis(&redis);
    let alice = s.funded("alice", "100000");
    // 520 orders that close at once (IOC on an empty book), each with a clientOrderId.
    for n in 0..520 {
        let body = format!(r#"{{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"45000","quantity":"0.001","timeInForce":"IOC","clientOrderId":"c-{n}"}}"#);
        let (status, reply) = s.order(&alice, &body);
        assert_eq!((status, reply["status"].as_str()), (200, Some("CANCELLED")), "{reply}");
    }
    let k = exchange::redis_state::Keys::new("");
    let user = user_of(&alice);
    let mut conn = redis.connection().unwrap();
    let count = |conn: &mut redis::Connection, pattern: String| -> usize {
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(conn).unwrap();
        keys.len()
    };
    let client_order = |conn: &mut redis::Connection, cid: &str| -> Option<String> {
        redis::cmd("GET").arg(k.client_order(user, &exchange::engine::ClientOrderId::new(cid).unwrap())).query(conn).unwrap()
    };
    // Written behind: Redis also holds 500 on its way up (the first 500 written, the last
    // 20 not yet), so the wait is for the newest to be in as well. Then, as in the
    // ledger, exactly the newest 500 are kept: the oldest are gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let orders = count(&mut conn, format!("{}*", k.order_prefix(user)));
        let cids = count(&mut conn, format!("{}*", k.client_order_prefix(user)));
        let (newest, oldest) = (client_order(&mut conn, "c-519"), client_order(&mut conn, "c-0"));
        if (orders, cids) == (500, 500) && newest.is_some() && oldest.is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{orders} orders and {cids} clientOrderIds kept in Redis (the ledger keeps 500); newest there: {}, oldest gone: {}",
            newest.is_some(),
            oldest.is_none()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.get(&alice, "/v1/orders/by-client-id/c-0").0, 404);
}
