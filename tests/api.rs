//! Black-box tests of the HTTP API against the real binary (embedded mode).

mod common;

use common::{dec, Server, ADMIN};
use rust_decimal::Decimal;

const BUY: &str = r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"50000","quantity":"0.010","leverage":10,"clientOrderId":"buy-1"}"#;

#[test]
fn every_endpoint_answers_as_documented() {
    let s = Server::start();
    let alice = s.funded("alice", "10000");
    let bob = s.funded("bob", "10000");

    let (status, symbols) = s.request("GET", "/v1/symbols", &[], None);
    assert_eq!(status, 200);
    assert_eq!(symbols[0]["symbol"], "BTC-PERP");
    assert_eq!(symbols[0]["tickSize"], "0.1");
    assert_eq!(symbols[1]["lotSize"], "0.01");
    assert_eq!((symbols[0]["maintenanceMarginRate"].as_str(), symbols[1]["maintenanceMarginRate"].as_str()), (Some("0.004"), Some("0.005")));
    assert_eq!(symbols[0]["fundingIntervalSecs"], 28800);

    // A resting buy, then a sell that crosses it partly.
    let (status, placed) = s.order(&alice, BUY);
    assert_eq!(status, 200, "{placed}");
    assert_eq!(placed["status"], "NEW");
    assert_eq!(placed["clientOrderId"], "buy-1");
    let id = placed["orderId"].as_str().unwrap().to_owned();
    let sell = s.limit(&bob, "SELL", "49990", "0.004");
    assert_eq!(sell["status"], "FILLED");
    assert_eq!(sell["avgFillPrice"], "50000", "trades at the maker's price");

    let (_, order) = s.get(&alice, &format!("/v1/orders/{id}"));
    assert_eq!((order["status"].as_str(), order["filledQuantity"].as_str()), (Some("PARTIALLY_FILLED"), Some("0.004")));
    let (_, by_cid) = s.get(&alice, "/v1/orders/by-client-id/buy-1");
    assert_eq!(by_cid["orderId"], id.as_str());
    let (_, open) = s.get(&alice, "/v1/orders?symbol=BTC-PERP");
    assert_eq!(open.as_array().unwrap().len(), 1);

    let (_, depth) = s.request("GET", "/v1/depth?symbol=BTC-PERP&limit=5", &[], None);
    assert_eq!(depth["bids"], serde_json::json!([["50000.0", "0.006"]]));
    assert_eq!(depth["asks"], serde_json::json!([]));
    let (_, trades) = s.request("GET", "/v1/trades?symbol=BTC-PERP", &[], None);
    assert_eq!(trades[0]["takerSide"], "SELL");
    assert_eq!(trades[0]["quantity"], "0.004");

    let (_, fills) = s.get(&alice, "/v1/fills");
    assert_eq!(fills[0]["liquidity"], "MAKER");
    assert_eq!(fills[0]["fee"], "0.04"); // 200 USDT × 0.0002
    let (_, fills) = s.get(&bob, "/v1/fills?symbol=BTC-PERP&limit=1");
    assert_eq!(fills[0]["liquidity"], "TAKER");
    assert_eq!(fills[0]["fee"], "0.1");

    let (_, positions) = s.get(&alice, "/v1/positions");
    assert_eq!(positions[0]["side"], "LONG");
    assert_eq!(positions[0]["size"], "0.004");
    assert_eq!(positions[0]["entryPrice"], "50000");
    let (_, positions) = s.get(&bob, "/v1/positions");
    assert_eq!(positions[0]["side"], "SHORT");

    let (_, balance) = s.get(&alice, "/v1/balance");
    assert_eq!(dec(&balance["total"]), dec(&balance["available"]) + dec(&balance["locked"]));
    assert_eq!(dec(&balance["total"]), Decimal::from(10000) - "0.04".parse::<Decimal>().unwrap());

    let (status, cancelled) = s.delete(&alice, &format!("/v1/orders/{id}"));
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "CANCELLED");
    let (status, again) = s.delete(&alice, &format!("/v1/orders/{id}"));
    assert_eq!((status, again["code"].as_str()), (409, Some("ORDER_NOT_OPEN")));

    // Cancel by client id, and cancel-all.
    let (_, o) = s.order(&alice, &BUY.replace("buy-1", "buy-2").replace("50000", "49000"));
    assert_eq!(o["status"], "NEW");
    let (status, c) = s.delete(&alice, "/v1/orders/by-client-id/buy-2");
    assert_eq!((status, c["status"].as_str()), (200, Some("CANCELLED")));
    let a = s.limit(&alice, "BUY", "48000", "0.001");
    let b = s.limit(&alice, "BUY", "48001", "0.001");
    let (status, all) = s.delete(&alice, "/v1/orders?symbol=BTC-PERP");
    assert_eq!(status, 200);
    let mut ids: Vec<&str> = all["cancelled"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    ids.sort_unstable();
    let mut want = vec![a["orderId"].as_str().unwrap(), b["orderId"].as_str().unwrap()];
    want.sort_unstable();
    assert_eq!(ids, want);
    let (_, open) = s.get(&alice, "/v1/orders");
    assert_eq!(open, serde_json::json!([]));
    let (_, balance) = s.get(&alice, "/v1/balance");
    let (_, positions) = s.get(&alice, "/v1/positions");
    assert_eq!(dec(&balance["locked"]), dec(&positions[0]["margin"]), "only the position holds margin now");

    let (status, history) = s.get(&alice, "/v1/orders/history");
    assert_eq!((status, history["code"].as_str()), (503, Some("UNAVAILABLE")));
    let (status, health) = s.request("GET", "/health", &[], None);
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, metrics) = s.request("GET", "/metrics", &[], None);
    assert_eq!(status, 200);
    let text = metrics.as_str().unwrap();
    assert!(text.contains("exchange_orders_total"), "{text}");
    assert!(text.contains("exchange_log_fsync_seconds_bucket"));
    assert!(text.contains("exchange_shard_queue_depth"));
    assert!(text.contains("exchange_shard_lingering_streams"));
    // Every command the test sent went to the log in some batch.
    let batched: f64 = text
        .lines()
        .filter(|l| l.starts_with("exchange_log_batch_commands_sum"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(batched >= 6.0, "{text}");
}

/// An answer means the results are in every account they touch, whichever core the
/// client's next request lands on: each read here comes on a new connection right after
/// the answer (users spread over the account owners, connections over the cores).
#[test]
fn an_answered_fill_or_cancel_is_in_the_accounts_on_any_core_at_once() {
    let s = Server::start();
    let maker = s.funded("maker", "1000000");
    for i in 0..24 {
        let name = format!("taker-{i}");
        let taker = s.funded(&name, "100000");
        let resting = s.limit(&maker, "SELL", "50000", "0.002");
        let bought = s.limit(&taker, "BUY", "50000", "0.001");
        assert_eq!(bought["status"], "FILLED", "{bought}");
        let (status, fills) = s.get_on_new_connection(&taker, "/v1/fills");
        assert_eq!(status, 200, "{fills}");
        assert_eq!(fills[0]["orderId"], bought["orderId"], "taker {i}: the fill is not in yet: {fills}");
        let (_, fills) = s.get_on_new_connection(&maker, "/v1/fills?limit=1000");
        assert_eq!(fills.as_array().map(Vec::len), Some(i + 1), "maker after taker {i}: {fills}");
        let id = resting["orderId"].as_str().unwrap();
        assert_eq!(s.delete(&maker, &format!("/v1/orders/{id}")).0, 200);
        let (_, order) = s.get_on_new_connection(&maker, &format!("/v1/orders/{id}"));
        assert_eq!(order["status"], "CANCELLED", "maker's order after taker {i}: {order}");
        let (_, open) = s.get_on_new_connection(&maker, "/v1/orders");
        assert_eq!(open.as_array().map(Vec::len), Some(0), "maker after taker {i}: {open}");
    }
}

#[test]
fn keys_are_required_and_orders_are_private() {
    let s = Server::start();
    let alice = s.funded("alice", "1000");
    let bob = s.funded("bob", "1000");
    let (_, order) = s.order(&alice, &BUY.replace("0.010", "0.001"));
    let id = order["orderId"].as_str().unwrap();
    for key in ["", "nonsense", "0000000000000001.000000000000000000000000000000000000000000000000"] {
        for (method, path) in [
            ("GET", "/v1/balance"),
            ("GET", "/v1/positions"),
            ("GET", "/v1/fills"),
            ("GET", "/v1/orders"),
            ("DELETE", "/v1/orders"),
            ("GET", &format!("/v1/orders/{id}") as &str),
        ] {
            let headers: &[(&str, &str)] = if key.is_empty() { &[] } else { &[("x-api-key", key)] };
            let (status, body) = s.request(method, path, headers, None);
            assert_eq!((status, body["code"].as_str()), (401, Some("UNAUTHORIZED")), "{method} {path} with {key:?}");
        }
        let headers: &[(&str, &str)] = if key.is_empty() { &[] } else { &[("x-api-key", key)] };
        assert_eq!(s.request("POST", "/v1/orders", headers, Some(BUY)).0, 401);
        // The key is judged before the body: a wrong key with a bad body is still 401.
        for bad in ["{", r#"{"symbol":"DOGE-PERP","side":"BUY","type":"MARKET","quantity":"1"}"#, &BUY.replace("0.010", "0.0105")] {
            let (status, body) = s.request("POST", "/v1/orders", headers, Some(bad));
            assert_eq!((status, body["code"].as_str()), (401, Some("UNAUTHORIZED")), "{bad} with {key:?}");
        }
        let (status, _) = s.request("GET", "/v1/fills?limit=0", headers, None);
        assert_eq!(status, 401, "a bad query with {key:?}");
    }
    // With a valid key the same requests get what is wrong with them.
    assert_eq!(s.order(&alice, "{").0, 400);
    assert_eq!(s.order(&alice, r#"{"symbol":"DOGE-PERP","side":"BUY","type":"MARKET","quantity":"1"}"#).0, 400);
    assert_eq!(s.get(&alice, "/v1/fills?limit=0").0, 400);
    // Another user's order is indistinguishable from an unknown one.
    let (status, body) = s.get(&bob, &format!("/v1/orders/{id}"));
    assert_eq!((status, body["code"].as_str()), (404, Some("NOT_FOUND")));
    assert_eq!(s.delete(&bob, &format!("/v1/orders/{id}")).0, 404);
    assert_eq!(s.get(&bob, "/v1/orders/by-client-id/buy-1").0, 404);
    assert_eq!(s.get(&bob, "/v1/orders/0e018470-b6b2-8000-8276-61226b83fb19").0, 404);
    assert_eq!(s.get(&bob, "/v1/orders/not-a-uuid").0, 404);
    let (_, still) = s.get(&alice, &format!("/v1/orders/{id}"));
    assert_eq!(still["status"], "NEW", "bob's cancel did nothing");
    // Admin endpoints want the admin key.
    for headers in [&[][..], &[("x-admin-key", "wrong")][..], &[("x-api-key", alice.as_str())][..]] {
        let (status, _) = s.request("POST", "/admin/v1/users", headers, Some(r#"{"userId":"mallory"}"#));
        assert_eq!(status, 401);
    }
}

#[test]
fn client_order_id_makes_resubmission_idempotent() {
    let s = Server::start();
    let alice = s.funded("alice", "10000");
    let (_, first) = s.order(&alice, BUY);
    let (status, second) = s.order(&alice, &BUY.replace("50000", "40000"));
    assert_eq!(status, 200);
    assert_eq!(second, first, "the original order, unchanged");
    let (_, open) = s.get(&alice, "/v1/orders");
    assert_eq!(open.as_array().unwrap().len(), 1, "no second order");
    // Still the same after it is closed.
    s.delete(&alice, &format!("/v1/orders/{}", first["orderId"].as_str().unwrap()));
    let (_, third) = s.order(&alice, BUY);
    assert_eq!(third["orderId"], first["orderId"]);
    assert_eq!(third["status"], "CANCELLED");
}

/// How many answers were `answered` (one of those statuses) and how many 429
/// `RATE_LIMITED`; any other answer fails the test.
fn tally_rate_limited(answered: &[u16], replies: impl Iterator<Item = (u16, serde_json::Value)>) -> (usize, usize) {
    let (mut accepted, mut limited) = (0, 0);
    for (status, reply) in replies {
        if answered.contains(&status) {
            accepted += 1;
        } else {
            assert_eq!((status, reply["code"].as_str()), (429, Some("RATE_LIMITED")), "{reply}");
            limited += 1;
        }
    }
    (accepted, limited)
}

#[test]
fn rate_limit_answers_429_with_retry_after() {
    let s = Server::start_with(&[("EXCHANGE_RATE_LIMIT", "5")]);
    let alice = s.funded("alice", "100000");
    let started = std::time::Instant::now();
    let (accepted, limited) = tally_rate_limited(&[200], (0..20).map(|i| {
        let body = BUY.replace("buy-1", &format!("r-{i}")).replace("50000", "40000");
        s.order(&alice, &body)
    }));
    let seconds = started.elapsed().as_secs() + 1;
    assert!(limited > 0, "20 orders at 5/s must hit the limit");
    assert!(accepted <= 5 * (seconds as usize + 1), "{accepted} accepted in {seconds}s");
    let response = ureq::post(&s.url("/v1/orders"))
        .set("x-api-key", &alice)
        .send_string(&BUY.replace("buy-1", "r-x").replace("50000", "40000"));
    if let Err(ureq::Error::Status(429, r)) = response {
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    let (_, open) = s.get(&alice, "/v1/orders");
    assert!(open.as_array().unwrap().len() <= accepted + 1);
}

#[test]
fn malformed_requests_get_json_errors_and_change_nothing() {
    let s = Server::start();
    let alice = s.funded("alice", "1000");
    s.limit(&alice, "BUY", "40000", "0.001");
    let before = (s.get(&alice, "/v1/balance").1, s.get(&alice, "/v1/orders").1, s.request("GET", "/v1/depth?symbol=BTC-PERP", &[], None).1);
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let bodies = [
        "not json",
        "{",
        "[]",
        "null",
        r#"{"symbol":"BTC-PERP"}"#,
        r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000.05","quantity":"0.001"}"#,
        r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.0001"}"#,
        r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":40000,"quantity":"0.001"}"#,
        r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":0.001}"#,
        r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.001","leverage":"10"}"#,
        r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.001","leverage":0}"#,
        r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.001","leverage":-1}"#,
        r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.001","leverage":99999999999999999999}"#,
        r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"1e400","quantity":"0.001"}"#,
        r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"99999999999999999999999999999999999999","quantity":"0.001"}"#,
        r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"999999999999999"}"#,
        r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"-40000","quantity":"0.001"}"#,
        r#"{"symbol":"BTC-PERP","side":"BUY","type":"STOP","price":"40000","quantity":"0.001"}"#,
        r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.001","timeInForce":"GTD"}"#,
        r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.001","clientOrderId":""}"#,
        r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.001","reduceOnly":"yes"}"#,
        deep.as_str(),
    ];
    for body in bodies {
        let (status, reply) = s.order(&alice, body);
        assert_eq!(status, 400, "{}: {reply}", &body[..body.len().min(80)]);
        assert_eq!(reply["code"], "INVALID_REQUEST");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, reply) = s.order(&alice, r#"{"symbol":"XRP-PERP","side":"BUY","type":"MARKET","quantity":"1"}"#);
    assert_eq!((status, reply["code"].as_str()), (400, Some("UNKNOWN_SYMBOL")));
    let (status, reply) = s.order(&alice, r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"1","leverage":1}"#);
    assert_eq!((status, reply["code"].as_str()), (422, Some("INSUFFICIENT_MARGIN")));
    let reads = [
        ("GET", "/nowhere"),
        ("GET", "/v1/depth?symbol=BTC-PERP&limit=0"),
        ("GET", "/v1/depth"),
        ("PUT", "/v1/orders"),
        ("GET", "/v1/candles?symbol=BTC-PERP"),
        ("GET", "/v1/candles?symbol=BTC-PERP&interval=7m"),
        ("GET", "/v1/candles?symbol=BTC-PERP&interval=1m&limit=1501"),
        ("GET", "/v1/candles?symbol=BTC-PERP&interval=1m&startTime=soon"),
        ("GET", "/v1/candles?interval=1m"),
        ("GET", "/v1/ticker"),
        ("GET", "/v1/ticker?symbol=XRP-PERP"),
    ];
    for (method, path) in reads {
        let (status, reply) = s.request(method, path, &[("x-api-key", alice.as_str())], None);
        assert!((400..500).contains(&status), "{method} {path}: {status}");
        assert!(reply["code"].is_string(), "{method} {path}: {reply}");
    }
    let after = (s.get(&alice, "/v1/balance").1, s.get(&alice, "/v1/orders").1, s.request("GET", "/v1/depth?symbol=BTC-PERP", &[], None).1);
    assert_eq!(before, after);
}

#[test]
fn admin_users_and_transfers() {
    let s = Server::start();
    s.user("carol");
    let (status, body) = s.request("POST", "/admin/v1/users", &[("x-admin-key", ADMIN)], Some(r#"{"userId":"carol"}"#));
    assert_eq!((status, body["code"].as_str()), (409, Some("USER_EXISTS")));
    let (status, first) = s.deposit("carol", "100.5", "t-1");
    assert_eq!((status, first["total"].as_str()), (200, Some("100.5")));
    let (status, again) = s.deposit("carol", "100.5", "t-1");
    assert_eq!((status, &again), (200, &first), "a repeated transfer changes nothing");
    assert_eq!(s.deposit("carol", "5", "t-1").0, 409);
    let (status, body) = s.deposit("carol", "-200", "w-1");
    assert_eq!((status, body["code"].as_str()), (422, Some("INSUFFICIENT_BALANCE")));
    let (status, body) = s.deposit("carol", "-0.5", "w-2");
    assert_eq!((status, body["available"].as_str()), (200, Some("100")));
    assert_eq!(s.deposit("dave", "1", "t-9").0, 404);
    assert_eq!(s.deposit("carol", "0.000000001", "t-10").0, 400);
}

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[test]
fn money_invariants_hold_after_a_random_stream() {
    let s = Server::start();
    let users: Vec<(String, String)> = (0..4).map(|i| (format!("u{i}"), s.funded(&format!("u{i}"), "2000"))).collect();
    let mut rng = Lcg(7);
    for i in 0..400 {
        let (_, key) = &users[rng.next(4) as usize];
        let symbol = if rng.next(2) == 0 { ("BTC-PERP", 50_000, "0.1", "0.001") } else { ("ETH-PERP", 3_000, "0.01", "0.01") };
        let side = if rng.next(2) == 0 { "BUY" } else { "SELL" };
        let ticks = rng.next(200) as i64 - 100; // within ±0.2% (BTC) / ±0.03% (ETH)
        let price = Decimal::from(symbol.1) + Decimal::from(ticks) * symbol.2.parse::<Decimal>().unwrap();
        let qty = Decimal::from(rng.next(5) + 1) * symbol.3.parse::<Decimal>().unwrap();
        let leverage = rng.next(5) + 1;
        let body = match rng.next(10) {
            0 => format!(r#"{{"symbol":"{}","side":"{side}","type":"MARKET","quantity":"{qty}","leverage":{leverage}}}"#, symbol.0),
            1 => format!(r#"{{"symbol":"{}","side":"{side}","type":"LIMIT","price":"{price}","quantity":"{qty}","leverage":{leverage},"timeInForce":"IOC"}}"#, symbol.0),
            2 => {
                s.delete(key, &format!("/v1/orders?symbol={}", symbol.0));
                continue;
            }
            _ => format!(r#"{{"symbol":"{}","side":"{side}","type":"LIMIT","price":"{price}","quantity":"{qty}","leverage":{leverage}}}"#, symbol.0),
        };
        let (status, reply) = s.order(key, &body);
        assert!(status == 200 || (status == 422 && reply["code"] == "INSUFFICIENT_MARGIN"), "order {i}: {status} {reply}");
    }
    let mut fees_total = Decimal::ZERO;
    for (name, key) in &users {
        let (_, b) = s.get(key, "/v1/balance");
        let (total, available, locked) = (dec(&b["total"]), dec(&b["available"]), dec(&b["locked"]));
        assert_eq!(total, available + locked, "{name}: {b}");
        assert!(available >= Decimal::ZERO && locked >= Decimal::ZERO, "{name}: {b}");
        let (_, fills) = s.get(key, "/v1/fills?limit=10000");
        let fills = fills.as_array().unwrap();
        let pnl: Decimal = fills.iter().map(|f| dec(&f["realizedPnl"])).sum();
        let fees: Decimal = fills.iter().map(|f| dec(&f["fee"])).sum();
        fees_total += fees;
        assert_eq!(total, Decimal::from(2000) + pnl - fees, "{name}: total = deposits + realized PnL - fees");
        // Locked = open orders' reserves + position margin: with no open orders, only margin.
        s.delete(key, "/v1/orders");
        let (_, b) = s.get(key, "/v1/balance");
        let (_, positions) = s.get(key, "/v1/positions");
        let margin: Decimal = positions.as_array().unwrap().iter().map(|p| dec(&p["margin"])).sum();
        assert_eq!(dec(&b["locked"]), margin, "{name}: {b} {positions}");
    }
    assert!(fees_total > Decimal::ZERO, "the stream traded");
    // The exchange's own books say the same, to the last unit.
    let (status, summary) = s.request("GET", "/admin/v1/summary", &[("x-admin-key", ADMIN)], None);
    assert_eq!(status, 200, "{summary}");
    assert_eq!(dec(&summary["deposits"]), Decimal::from(2000 * users.len() as i64), "{summary}");
    assert_eq!(dec(&summary["fees"]), fees_total, "{summary}");
    let identity = dec(&summary["balances"]) + dec(&summary["unrealizedPnl"]) + dec(&summary["fees"]) + dec(&summary["insuranceFund"]);
    assert_eq!(dec(&summary["deposits"]), identity, "{summary}");
    assert_eq!(summary["balanced"], true, "{summary}");
    assert_eq!(s.request("GET", "/admin/v1/summary", &[], None).0, 401);
}

#[test]
fn sigterm_stops_cleanly() {
    let mut s = Server::start();
    let alice = s.funded("alice", "1000");
    s.limit(&alice, "BUY", "40000", "0.001");
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
}

/// Whether the server closes the connection within `within` (reads until EOF or reset).
fn closed_within(stream: &mut std::net::TcpStream, within: std::time::Duration) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn idle_and_slow_connections_are_closed() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let s = Server::start_with(&[("EXCHANGE_IDLE_TIMEOUT_SECS", "1"), ("EXCHANGE_HEADER_TIMEOUT_SECS", "2")]);
    let addr = format!("127.0.0.1:{}", s.port);
    // Idle: connects and says nothing.
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    assert!(closed_within(&mut idle, Duration::from_secs(5)), "an idle connection is closed");
    // Slowloris: keeps sending header bytes, never finishing the request.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in b"GET /health HTTP/1.1\r\nX-Slow: ".iter().chain([b'a'; 64].iter()) {
        if slow.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    assert!(closed || closed_within(&mut slow, Duration::from_secs(1)), "a trickling request is cut off");
    assert!(started.elapsed() < Duration::from_secs(8));
    // A normal client is unaffected.
    assert_eq!(s.request("GET", "/health", &[], None).0, 200);
}

#[test]
fn open_orders_are_capped_per_user_and_symbol_and_the_cap_survives_a_restart() {
    // Snapshots every two commands: the restart loads one, then replays the rest.
    let mut s = Server::start_with(&[("EXCHANGE_MAX_OPEN_ORDERS", "3"), ("EXCHANGE_SNAPSHOT_EVERY", "2")]);
    let alice = s.funded("alice", "100000");
    let order = |price: &str| format!(r#"{{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"{price}","quantity":"0.001","leverage":10}}"#);
    let mut ids = Vec::new();
    for price in ["40000", "40001", "40002"] {
        let (status, body) = s.order(&alice, &order(price));
        assert_eq!(status, 200, "{body}");
        ids.push(body["orderId"].as_str().unwrap().to_owned());
    }
    let (_, before) = s.get(&alice, "/v1/balance");
    let (status, body) = s.order(&alice, &order("40003"));
    assert_eq!((status, body["code"].as_str()), (422, Some("TOO_MANY_OPEN_ORDERS")), "{body}");
    assert_eq!(s.get(&alice, "/v1/balance").1, before, "a refused order locks nothing");
    assert_eq!(s.get(&alice, "/v1/orders").1.as_array().unwrap().len(), 3);
    // Another symbol has a cap of its own; an order that trades at once never rests.
    let eth = r#"{"symbol":"ETH-PERP","side":"BUY","type":"LIMIT","price":"3000","quantity":"0.1","leverage":5}"#;
    assert_eq!(s.order(&alice, eth).0, 200);
    // A cancelled order frees its place.
    assert_eq!(s.delete(&alice, &format!("/v1/orders/{}", ids[0])).0, 200);
    assert_eq!(s.order(&alice, &order("40004")).0, 200);
    assert_eq!(s.order(&alice, &order("40005")).0, 422);
    // Counted again from the logs after a restart.
    s.restart();
    assert_eq!(s.order(&alice, &order("40006")).0, 422);
    assert_eq!(s.delete(&alice, &format!("/v1/orders/{}", ids[1])).0, 200);
    assert_eq!(s.order(&alice, &order("40007")).0, 200);
    assert_eq!(s.order(&alice, &order("40008")).0, 422);
}

#[test]
fn cancels_count_against_the_rate_limit_too() {
    let s = Server::start_with(&[("EXCHANGE_RATE_LIMIT", "3")]);
    let alice = s.funded("alice", "100000");
    let started = std::time::Instant::now();
    let (accepted, limited) = tally_rate_limited(&[200, 404], (0..20).map(|i| {
        if i % 2 == 0 { s.delete(&alice, "/v1/orders") } else { s.delete(&alice, "/v1/orders/0e018470-b6b2-8000-8276-61226b83fb19") }
    }));
    let seconds = started.elapsed().as_secs() + 1;
    assert!(limited > 0, "20 cancels at 3/s must hit the limit");
    assert!(accepted <= 3 * (seconds as usize + 1), "{accepted} answered in {seconds}s");
}

#[test]
fn a_client_order_id_with_a_slash_is_read_and_cancelled_percent_encoded() {
    let s = Server::start();
    let alice = s.funded("alice", "100000");
    let (status, placed) = s.order(&alice, &BUY.replace("buy-1", "desk/7:a.1").replace("50000", "40000"));
    assert_eq!(status, 200, "{placed}");
    let path = "/v1/orders/by-client-id/desk%2F7:a.1";
    let (status, found) = s.get(&alice, path);
    assert_eq!((status, &found["orderId"], found["clientOrderId"].as_str()), (200, &placed["orderId"], Some("desk/7:a.1")));
    let (status, cancelled) = s.delete(&alice, path);
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("CANCELLED")), "{cancelled}");
    // Unencoded, the slash splits the path: no such route, and nothing changed.
    assert_eq!(s.get(&alice, "/v1/orders/by-client-id/desk/7:a.1").0, 404);
    assert_eq!(s.get(&alice, "/v1/orders/by-client-id/%FF").0, 400);
}

/// The dead man's switch: orders on a symbol are cancelled (reason `COUNTDOWN`) when the
/// countdown is not renewed in time; renewals and `0` keep them; a countdown that runs
/// out while the process is down fires once it is back.
#[test]
fn a_countdown_not_renewed_cancels_the_users_orders_on_its_symbol() {
    let mut s = Server::start();
    let alice = s.funded("alice", "10000");
    let bob = s.funded("bob", "10000");
    let countdown = |key: &str, symbol: &str, ms: i64| s.post(key, "/v1/countdown", &format!(r#"{{"symbol":"{symbol}","countdownTime":{ms}}}"#));
    let status_of = |s: &Server, key: &str, order: &serde_json::Value| s.get(key, &format!("/v1/orders/{}", order["orderId"].as_str().unwrap())).1;
    for (body, why) in [
        (r#"{"symbol":"BTC-PERP","countdownTime":-1}"#, "negative"),
        (r#"{"symbol":"BTC-PERP","countdownTime":86400001}"#, "past a day"),
        (r#"{"symbol":"BTC-PERP","countdownTime":"5"}"#, "a string"),
        (r#"{"symbol":"BTC-PERP"}"#, "missing"),
    ] {
        let (status, reply) = s.post(&alice, "/v1/countdown", body);
        assert_eq!((status, reply["code"].as_str()), (400, Some("INVALID_REQUEST")), "{why}: {reply}");
    }
    assert_eq!(countdown(&alice, "DOGE-PERP", 100).0, 400);
    assert_eq!(s.post("nobody", "/v1/countdown", r#"{"symbol":"BTC-PERP","countdownTime":100}"#).0, 401);

    let btc = s.limit(&alice, "BUY", "40000", "0.001");
    let (status, eth) = s.order(&alice, r#"{"symbol":"ETH-PERP","side":"BUY","type":"LIMIT","price":"2000","quantity":"0.01","leverage":10}"#);
    assert_eq!(status, 200, "{eth}");
    let other = s.limit(&bob, "BUY", "40000", "0.001");
    // Renewed every 200 ms, a 3 s countdown does not run out in 2 s (a wide margin: the
    // suite runs on a loaded machine).
    for _ in 0..10 {
        let (status, reply) = countdown(&alice, "BTC-PERP", 3_000);
        assert_eq!((status, reply["countdownTime"].as_i64()), (200, Some(3_000)), "{reply}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(status_of(&s, &alice, &btc)["status"], "NEW");
    // Not renewed: alice's BTC order goes, not her ETH order, not bob's.
    common::eventually("alice's countdown never fired", 15, || status_of(&s, &alice, &btc)["status"] != "NEW");
    let gone = status_of(&s, &alice, &btc);
    assert_eq!((gone["status"].as_str(), gone["reason"].as_str()), (Some("CANCELLED"), Some("COUNTDOWN")), "{gone}");
    assert_eq!(status_of(&s, &alice, &eth)["status"], "NEW");
    assert_eq!(status_of(&s, &bob, &other)["status"], "NEW");
    // Turned off, it fires no more.
    let kept = s.limit(&alice, "BUY", "40000", "0.001");
    assert_eq!(countdown(&alice, "BTC-PERP", 2_000).0, 200);
    assert_eq!(countdown(&alice, "BTC-PERP", 0).0, 200);
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    assert_eq!(status_of(&s, &alice, &kept)["status"], "NEW");
    // Set, then the process dies before it runs out: it fires once the exchange is back.
    assert_eq!(countdown(&bob, "BTC-PERP", 1_500).0, 200);
    s.kill9();
    s.restart();
    common::eventually("bob's countdown never fired after the restart", 10, || status_of(&s, &bob, &other)["status"] != "NEW");
    assert_eq!(status_of(&s, &bob, &other)["reason"], "COUNTDOWN");
    assert_eq!(status_of(&s, &alice, &kept)["status"], "NEW", "alice's countdown is off, restart or not");
}

/// Self-trade prevention modes: the taker's (default the symbol's EXPIRE_TAKER) decides.
#[test]
fn self_trade_prevention_modes_choose_which_side_is_cancelled() {
    let s = Server::start();
    let alice = s.funded("alice", "100000");
    let bob = s.funded("bob", "100000");
    let order = |key: &str, side: &str, price: &str, qty: &str, mode: Option<&str>| {
        let mode = mode.map_or(String::new(), |m| format!(r#","selfTradePreventionMode":"{m}""#));
        s.order(key, &format!(r#"{{"symbol":"BTC-PERP","side":"{side}","type":"LIMIT","price":"{price}","quantity":"{qty}","leverage":10{mode}}}"#))
    };
    let get = |key: &str, o: &serde_json::Value| s.get(key, &format!("/v1/orders/{}", o["orderId"].as_str().unwrap())).1;
    let (status, reply) = order(&alice, "BUY", "40000", "0.001", Some("NONE"));
    assert_eq!((status, reply["code"].as_str()), (400, Some("INVALID_REQUEST")), "a user never trades with themself: {reply}");
    // alice's ask at 50000 before bob's at 50001.
    let (_, own) = order(&alice, "SELL", "50000", "0.001", None);
    let (_, bobs) = order(&bob, "SELL", "50001", "0.001", None);
    // EXPIRE_TAKER (the default): alice's buy stops at her own ask.
    let (_, taker) = order(&alice, "BUY", "50001", "0.002", None);
    assert_eq!((taker["status"].as_str(), taker["reason"].as_str()), (Some("CANCELLED"), Some("SELF_TRADE")), "{taker}");
    assert_eq!(get(&alice, &own)["status"], "NEW");
    // EXPIRE_MAKER: her ask goes, her buy fills from bob.
    let (_, taker) = order(&alice, "BUY", "50001", "0.001", Some("EXPIRE_MAKER"));
    assert_eq!(taker["status"], "FILLED", "{taker}");
    let gone = get(&alice, &own);
    assert_eq!((gone["status"].as_str(), gone["reason"].as_str()), (Some("CANCELLED"), Some("SELF_TRADE")), "{gone}");
    assert_eq!(get(&bob, &bobs)["status"], "FILLED");
    // EXPIRE_BOTH: both go.
    let (_, own) = order(&alice, "SELL", "50000", "0.001", None);
    let (_, taker) = order(&alice, "BUY", "50000", "0.001", Some("EXPIRE_BOTH"));
    assert_eq!((taker["status"].as_str(), taker["reason"].as_str()), (Some("CANCELLED"), Some("SELF_TRADE")), "{taker}");
    assert_eq!(get(&alice, &own)["status"], "CANCELLED");
    let (_, depth) = s.request("GET", "/v1/depth?symbol=BTC-PERP", &[], None);
    assert_eq!(depth["asks"], serde_json::json!([]), "{depth}");
}

/// Good-till-date orders rest until their date, then are cancelled (reason `EXPIRED`),
/// also when the date comes while the process is down.
#[test]
fn a_good_till_date_order_expires_at_its_date() {
    let mut s = Server::start();
    let alice = s.funded("alice", "100000");
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let gtd = |till: Option<i64>, tif: &str| {
        let till = till.map_or(String::new(), |t| format!(r#","goodTillDate":{t}"#));
        s.order(&alice, &format!(r#"{{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.001","timeInForce":"{tif}"{till}}}"#))
    };
    for (till, tif, why) in [(None, "GTD", "no date"), (Some(now() - 1_000), "GTD", "a past date"), (Some(now() + 60_000), "GTC", "a date without GTD")] {
        let (status, reply) = gtd(till, tif);
        assert_eq!((status, reply["code"].as_str()), (400, Some("INVALID_REQUEST")), "{why}: {reply}");
    }
    let get = |s: &Server, o: &serde_json::Value| s.get(&alice, &format!("/v1/orders/{}", o["orderId"].as_str().unwrap())).1;
    let (status, soon) = gtd(Some(now() + 3_000), "GTD");
    assert_eq!(status, 200, "{soon}");
    assert_eq!((soon["timeInForce"].as_str(), soon["status"].as_str()), (Some("GTD"), Some("NEW")), "{soon}");
    assert!(soon["goodTillDate"].is_i64(), "{soon}");
    let (_, later) = gtd(Some(now() + 3_600_000), "GTD");
    common::eventually("never expired", 10, || get(&s, &soon)["status"] != "NEW");
    let gone = get(&s, &soon);
    assert_eq!((gone["status"].as_str(), gone["reason"].as_str()), (Some("CANCELLED"), Some("EXPIRED")), "{gone}");
    assert_eq!(get(&s, &later)["status"], "NEW", "an hour away");
    // Its date comes while the process is down.
    let (_, during) = gtd(Some(now() + 3_000), "GTD");
    assert_eq!(get(&s, &during)["status"], "NEW", "{during}");
    s.kill9();
    std::thread::sleep(std::time::Duration::from_millis(3_200));
    s.restart();
    common::eventually("never expired after the restart", 10, || get(&s, &during)["status"] != "NEW");
    assert_eq!(get(&s, &during)["reason"], "EXPIRED");
    let kept = get(&s, &later);
    assert_eq!((kept["status"].as_str(), kept["timeInForce"].as_str()), (Some("NEW"), Some("GTD")), "{kept}");
    assert_eq!(s.get(&alice, "/v1/orders").1.as_array().unwrap().len(), 1, "only the hour-long order is open");
}

/// Amend (`PATCH /v1/orders/{id}`): same price and a smaller quantity keep the queue
/// place, anything else goes to the back; the lock follows; refusals change nothing; a
/// restart replays the amendments to the same state.
#[test]
fn an_order_is_amended_in_place_or_requeued_and_its_lock_follows() {
    let mut s = Server::start_with(&[("EXCHANGE_SNAPSHOT_EVERY", "7")]);
    let alice = s.funded("alice", "100000");
    let bob = s.funded("bob", "100000");
    let carol = s.funded("carol", "100000");
    let locked = |s: &Server, key: &str| dec(&s.get(key, "/v1/balance").1["locked"]);
    let amend = |s: &Server, key: &str, order: &serde_json::Value, body: &str| {
        s.request("PATCH", &format!("/v1/orders/{}", order["orderId"].as_str().unwrap()), &[("x-api-key", key)], Some(body))
    };
    let mine = s.limit(&alice, "BUY", "40000", "0.005");
    let _bobs = s.limit(&bob, "BUY", "40000", "0.001");
    let before = locked(&s, &alice);
    // Smaller, same price: kept in front of bob, and less locked.
    let (status, amended) = amend(&s, &alice, &mine, r#"{"quantity":"0.003"}"#);
    assert_eq!(status, 200, "{amended}");
    assert_eq!((amended["quantity"].as_str(), amended["price"].as_str(), amended["status"].as_str()), (Some("0.003"), Some("40000.0"), Some("NEW")), "{amended}");
    let after = locked(&s, &alice);
    assert!(after < before && after > Decimal::ZERO, "the lock follows: {before} -> {after}");
    let (_, sold) = s.order(&carol, r#"{"symbol":"BTC-PERP","side":"SELL","type":"LIMIT","price":"40000","quantity":"0.001","leverage":10}"#);
    assert_eq!(sold["status"], "FILLED");
    let get = |s: &Server, key: &str, o: &serde_json::Value| s.get(key, &format!("/v1/orders/{}", o["orderId"].as_str().unwrap())).1;
    assert_eq!(get(&s, &alice, &mine)["filledQuantity"], "0.001", "alice kept her place");
    // Larger: to the back, behind bob.
    let (status, _) = amend(&s, &alice, &mine, r#"{"quantity":"0.004"}"#);
    assert_eq!(status, 200);
    s.order(&carol, r#"{"symbol":"BTC-PERP","side":"SELL","type":"LIMIT","price":"40000","quantity":"0.001","leverage":10}"#);
    assert_eq!(get(&s, &bob, &_bobs)["status"], "FILLED", "bob was first now");
    assert_eq!(get(&s, &alice, &mine)["filledQuantity"], "0.001");
    // A new price: moved, and a buy higher locks more.
    let before = locked(&s, &alice);
    let (status, moved) = amend(&s, &alice, &mine, r#"{"price":"40100"}"#);
    assert_eq!(status, 200, "{moved}");
    assert_eq!((moved["price"].as_str(), moved["quantity"].as_str()), (Some("40100.0"), Some("0.004")));
    assert!(locked(&s, &alice) > before);
    // Refused, changing nothing.
    let (_, ask) = s.order(&carol, r#"{"symbol":"BTC-PERP","side":"SELL","type":"LIMIT","price":"40500","quantity":"0.001","leverage":10}"#);
    // (A refused amendment is an event too: the book's seq moves, its levels do not.)
    let state = |s: &Server| {
        let depth = s.request("GET", "/v1/depth?symbol=BTC-PERP", &[], None).1;
        (get(s, &alice, &mine), locked(s, &alice), depth["bids"].clone(), depth["asks"].clone())
    };
    let unchanged = state(&s);
    for (body, code, why) in [
        (r#"{"price":"40100"}"#, "INVALID_REQUEST", "the same price and quantity"),
        (r#"{"price":"40500"}"#, "INVALID_REQUEST", "it would trade with the ask"),
        (r#"{"quantity":"0.001"}"#, "INVALID_REQUEST", "not above what is filled"),
        (r#"{"price":"40100.05"}"#, "INVALID_REQUEST", "off the tick"),
        (r#"{"quantity":"500"}"#, "INSUFFICIENT_MARGIN", "more than the balance pays"),
        (r#"{}"#, "INVALID_REQUEST", "nothing to change"),
        (r#"{"price":40100}"#, "INVALID_REQUEST", "a number, not a decimal string"),
    ] {
        let (status, reply) = amend(&s, &alice, &mine, body);
        assert_eq!(reply["code"], code, "{why}: {status} {reply}");
    }
    let (status, _) = amend(&s, &bob, &mine, r#"{"quantity":"0.002"}"#);
    assert_eq!(status, 404, "another user's order");
    let (status, reply) = amend(&s, &carol, &sold, r#"{"quantity":"0.002"}"#);
    assert_eq!((status, reply["code"].as_str()), (409, Some("ORDER_NOT_OPEN")), "a filled order");
    assert_eq!(state(&s), unchanged, "refusals change nothing");
    let _ = ask;
    // The amendments are in the log: a crash and a replay give the same state.
    s.kill9();
    s.restart();
    assert_eq!(state(&s), unchanged);
    let (status, _) = amend(&s, &alice, &mine, r#"{"quantity":"0.002"}"#);
    assert_eq!(status, 200, "and it goes on after");
    // The books balance and the hot state (Redis, when the suite runs with it) agrees.
    let (_, summary) = s.request("GET", "/admin/v1/summary", &[("x-admin-key", ADMIN)], None);
    assert_eq!(summary["balanced"], true, "{summary}");
    let (status, check) = s.request("POST", "/admin/v1/check", &[("x-admin-key", ADMIN)], None);
    assert_eq!((status, &check["clean"]), (200, &serde_json::Value::Bool(true)), "{check}");
}

/// `POST /v1/orders/batch`: up to five orders, each placed and answered on its own, in order.
#[test]
fn a_batch_of_orders_is_answered_order_by_order() {
    let s = Server::start();
    let alice = s.funded("alice", "1000");
    let batch = r#"[
        {"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.001","leverage":10},
        {"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000.05","quantity":"0.001"},
        {"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"1"},
        {"symbol":"ETH-PERP","side":"SELL","type":"LIMIT","price":"3000","quantity":"0.01","leverage":5}
    ]"#;
    let (status, answers) = s.post(&alice, "/v1/orders/batch", batch);
    assert_eq!(status, 200, "{answers}");
    assert_eq!(answers[0]["status"], "NEW", "{answers}");
    assert_eq!(answers[1]["code"], "INVALID_REQUEST", "off the tick: {answers}");
    assert_eq!(answers[2]["code"], "INSUFFICIENT_MARGIN", "{answers}");
    assert_eq!((answers[3]["status"].as_str(), answers[3]["symbol"].as_str()), (Some("NEW"), Some("ETH-PERP")), "{answers}");
    let (_, open) = s.get(&alice, "/v1/orders");
    assert_eq!(open.as_array().unwrap().len(), 2);
    let six = format!("[{}]", vec![r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.001"}"#; 6].join(","));
    for (body, why) in [(six.as_str(), "six orders"), ("[]", "none"), ("{}", "not a list")] {
        let (status, reply) = s.post(&alice, "/v1/orders/batch", body);
        assert_eq!((status, reply["code"].as_str()), (400, Some("INVALID_REQUEST")), "{why}: {reply}");
    }
    assert_eq!(s.post("nobody", "/v1/orders/batch", batch).0, 401);
    let (_, open) = s.get(&alice, "/v1/orders");
    assert_eq!(open.as_array().unwrap().len(), 2, "refused batches placed nothing");
}

/// A trailing stop: active at once, it follows the highest trade price, fires when the
/// price comes back by its callback rate, and keeps what it followed across a kill -9.
#[test]
fn a_trailing_stop_follows_the_best_price_and_fires_on_its_callback() {
    let mut s = Server::start();
    let alice = s.funded("alice", "100000");
    let bob = s.funded("bob", "100000");
    let carol = s.funded("carol", "100000");
    s.limit(&bob, "SELL", "50000", "0.004");
    s.limit(&alice, "BUY", "50000", "0.004");
    let trail = |body: &str| s.post(&alice, "/v1/conditional-orders", body);
    for (body, why) in [
        (r#"{"symbol":"BTC-PERP","side":"SELL","type":"TRAILING_STOP_MARKET","quantity":"0.004"}"#, "no callbackRate"),
        (r#"{"symbol":"BTC-PERP","side":"SELL","type":"TRAILING_STOP_MARKET","callbackRate":"10.1","quantity":"0.004"}"#, "above 10 %"),
        (r#"{"symbol":"BTC-PERP","side":"SELL","type":"TRAILING_STOP_MARKET","callbackRate":"0.15","quantity":"0.004"}"#, "not a step of 0.1"),
        (r#"{"symbol":"BTC-PERP","side":"SELL","type":"TRAILING_STOP_MARKET","callbackRate":"1","triggerPrice":"50000","quantity":"0.004"}"#, "a triggerPrice"),
        (r#"{"symbol":"BTC-PERP","side":"SELL","type":"TRAILING_STOP_MARKET","callbackRate":"1","closePosition":true}"#, "closePosition"),
        (r#"{"symbol":"BTC-PERP","side":"SELL","type":"STOP_MARKET","triggerPrice":"49000","callbackRate":"1","quantity":"0.004"}"#, "callbackRate on a stop"),
    ] {
        let (status, reply) = trail(body);
        assert_eq!((status, reply["code"].as_str()), (400, Some("INVALID_REQUEST")), "{why}: {reply}");
    }
    let (status, reply) = trail(r#"{"symbol":"BTC-PERP","side":"BUY","type":"TRAILING_STOP_MARKET","callbackRate":"1","activationPrice":"50100","quantity":"0.001"}"#);
    assert_eq!((status, reply["code"].as_str()), (400, Some("WOULD_TRIGGER_IMMEDIATELY")), "a buy activated above the price: {reply}");
    let (status, t) = trail(r#"{"symbol":"BTC-PERP","side":"SELL","type":"TRAILING_STOP_MARKET","callbackRate":"1","quantity":"0.004","reduceOnly":true}"#);
    assert_eq!(status, 200, "{t}");
    assert_eq!(
        (t["type"].as_str(), t["callbackRate"].as_str(), &t["activationPrice"], &t["triggerPrice"], t["trailingPrice"].as_str()),
        (Some("TRAILING_STOP_MARKET"), Some("1"), &serde_json::Value::Null, &serde_json::Value::Null, Some("50000.0")),
        "{t}"
    );
    let id = t["conditionalId"].as_str().unwrap().to_owned();
    let get = |s: &Server| s.get(&alice, &format!("/v1/conditional-orders/{id}")).1;
    // The price rises to 51000: the stop follows it.
    s.limit(&bob, "SELL", "51000", "0.001");
    s.limit(&carol, "BUY", "51000", "0.001");
    assert_eq!(get(&s)["trailingPrice"], "51000.0");
    s.restart();
    assert_eq!(get(&s)["trailingPrice"], "51000.0", "what it followed is kept across a crash");
    // 50500 is less than 1 % back from 51000; 50490 is 1 %.
    s.limit(&bob, "SELL", "50500", "0.001");
    s.limit(&carol, "BUY", "50500", "0.001");
    assert_eq!(get(&s)["status"], "NEW");
    s.limit(&carol, "BUY", "50400", "0.004");
    s.limit(&bob, "SELL", "50490", "0.001");
    s.limit(&carol, "BUY", "50490", "0.001");
    common::eventually("the trailing stop never closed the position", 10, || s.get(&alice, "/v1/positions").1 == serde_json::json!([]));
    assert_eq!(get(&s)["status"], "TRIGGERED");
}

/// Conditional orders: accepted while their trigger is not reached, placed through the
/// risk step once it is (a stop that the account cannot pay for ends REJECTED), cancelled
/// by id or clientOrderId, and kept across a kill -9.
#[test]
fn conditional_orders_trigger_through_the_risk_step_and_survive_a_restart() {
    let mut s = Server::start();
    let alice = s.funded("alice", "10000");
    let bob = s.funded("bob", "10000");
    let poor = s.funded("poor", "50");
    let conditional = |key: &str, body: &str| s.post(key, "/v1/conditional-orders", body);
    let carol = s.funded("carol", "10000");
    // A last price of 50000, bob long 0.004, the book empty.
    s.limit(&alice, "SELL", "50000", "0.004");
    s.limit(&bob, "BUY", "50000", "0.004");

    for (body, why) in [
        (r#"{"symbol":"BTC-PERP","side":"SELL","type":"STOP_MARKET","triggerPrice":"49000"}"#, "no quantity"),
        (r#"{"symbol":"BTC-PERP","side":"SELL","type":"STOP_MARKET","triggerPrice":"49000","quantity":"0.001","price":"1"}"#, "a price on a MARKET stop"),
        (r#"{"symbol":"BTC-PERP","side":"SELL","type":"STOP","triggerPrice":"49000","quantity":"0.001"}"#, "no price on a LIMIT stop"),
        (r#"{"symbol":"BTC-PERP","side":"SELL","type":"STOP","triggerPrice":"49000","price":"49000","closePosition":true}"#, "closePosition on a LIMIT stop"),
        (r#"{"symbol":"BTC-PERP","side":"SELL","type":"STOP_MARKET","triggerPrice":"49000","quantity":"0.001","closePosition":true}"#, "quantity with closePosition"),
        (r#"{"symbol":"BTC-PERP","side":"SELL","type":"STOP_MARKET","triggerPrice":"49000.05","quantity":"0.001"}"#, "off tick"),
        (r#"{"symbol":"BTC-PERP","side":"SELL","type":"STOP_MARKET","triggerPrice":"49000","quantity":"0.001","workingType":"INDEX"}"#, "working type"),
        (r#"{"symbol":"BTC-PERP","side":"SELL","type":"TRAILING","triggerPrice":"49000","quantity":"0.001"}"#, "type"),
    ] {
        let (status, reply) = conditional(&bob, body);
        assert_eq!((status, reply["code"].as_str()), (400, Some("INVALID_REQUEST")), "{why}: {reply}");
    }
    // A sell stop at or above the last price would fire at once.
    let (status, reply) = conditional(&bob, r#"{"symbol":"BTC-PERP","side":"SELL","type":"STOP_MARKET","triggerPrice":"50000","closePosition":true}"#);
    assert_eq!((status, reply["code"].as_str()), (400, Some("WOULD_TRIGGER_IMMEDIATELY")), "{reply}");
    assert_eq!(conditional("nobody", r#"{"symbol":"BTC-PERP","side":"SELL","type":"STOP_MARKET","triggerPrice":"1","quantity":"1"}"#).0, 401);

    let (status, stop) = conditional(&bob, r#"{"symbol":"BTC-PERP","side":"SELL","type":"STOP_MARKET","triggerPrice":"49900","closePosition":true,"clientOrderId":"sl-1"}"#);
    assert_eq!(status, 200, "{stop}");
    assert_eq!((stop["status"].as_str(), stop["reduceOnly"].as_bool(), stop["quantity"].as_str()), (Some("NEW"), Some(true), None), "{stop}");
    let (status, dup) = conditional(&bob, r#"{"symbol":"BTC-PERP","side":"SELL","type":"STOP_MARKET","triggerPrice":"49800","quantity":"0.001","clientOrderId":"sl-1"}"#);
    assert_eq!(status, 400, "a second open sl-1: {dup}");
    let (_, tp) = conditional(&bob, r#"{"symbol":"BTC-PERP","side":"SELL","type":"TAKE_PROFIT","triggerPrice":"52000","price":"51900","quantity":"0.001","reduceOnly":true,"clientOrderId":"tp-1"}"#);
    assert_eq!(tp["timeInForce"], "GTC", "{tp}");
    // A buy stop the poor account cannot pay for, and one it can.
    let (_, big) = conditional(&poor, r#"{"symbol":"BTC-PERP","side":"BUY","type":"STOP_MARKET","triggerPrice":"50100","quantity":"1"}"#);
    let (_, small) = conditional(&poor, r#"{"symbol":"BTC-PERP","side":"BUY","type":"STOP_MARKET","triggerPrice":"50100","quantity":"0.001"}"#);
    let open = s.get(&bob, "/v1/conditional-orders?symbol=BTC-PERP").1;
    assert_eq!(open.as_array().map(Vec::len), Some(2), "{open}");
    assert_eq!(s.get(&alice, "/v1/conditional-orders").1, serde_json::json!([]), "only the user's own");

    // Kept across a kill -9; nothing locked while waiting.
    s.kill9();
    s.restart();
    let by_cid = s.get(&bob, "/v1/conditional-orders/by-client-id/sl-1?symbol=BTC-PERP").1;
    assert_eq!(by_cid["conditionalId"], stop["conditionalId"], "{by_cid}");
    assert_eq!(s.get(&poor, "/v1/balance").1["locked"], "0");

    // The take-profit, cancelled by clientOrderId: once, then it is not open.
    let (status, cancelled) = s.delete(&bob, "/v1/conditional-orders/by-client-id/tp-1?symbol=BTC-PERP");
    assert_eq!((status, cancelled["status"].as_str(), cancelled["reason"].as_str()), (200, Some("CANCELLED"), Some("USER_REQUEST")), "{cancelled}");
    assert_eq!(s.delete(&bob, "/v1/conditional-orders/by-client-id/tp-1?symbol=BTC-PERP").0, 409);

    // A trade at 50100 fires the poor user's stops; one at 49900 fires bob's.
    s.limit(&carol, "SELL", "50100", "0.002");
    s.limit(&alice, "BUY", "50100", "0.001");
    let path = |c: &serde_json::Value| format!("/v1/conditional-orders/{}", c["conditionalId"].as_str().unwrap());
    common::eventually("the poor user's stops were not placed", 10, || {
        [&big, &small].iter().all(|c| !matches!(s.get(&poor, &path(c)).1["status"].as_str(), Some("NEW" | "TRIGGERING")))
    });
    let big = s.get(&poor, &path(&big)).1;
    assert_eq!((big["status"].as_str(), big["reason"].as_str(), big["orderId"].as_str()), (Some("REJECTED"), Some("INSUFFICIENT_MARGIN"), None), "{big}");
    let small = s.get(&poor, &path(&small)).1;
    assert_eq!(small["status"], "TRIGGERED", "{small}");
    let placed = s.get(&poor, &format!("/v1/orders/{}", small["orderId"].as_str().unwrap())).1;
    assert_eq!((placed["type"].as_str(), placed["status"].as_str()), (Some("MARKET"), Some("FILLED")), "{placed}");
    assert_eq!(s.get(&poor, "/v1/positions").1[0]["size"], "0.001");

    s.limit(&alice, "BUY", "49900", "0.005");
    s.limit(&carol, "SELL", "49900", "0.001");
    common::eventually("bob's stop-loss was not placed", 10, || s.get(&bob, &path(&stop)).1["status"] == "TRIGGERED");
    // closePosition: bob's whole long (0.004) sold at once against alice's bid.
    let positions = s.get(&bob, "/v1/positions").1;
    assert_eq!(positions, serde_json::json!([]), "bob is flat: {positions}");
    let all = s.get(&bob, "/v1/conditional-orders?symbol=BTC-PERP&closed=true").1;
    let statuses: Vec<&str> = all.as_array().unwrap().iter().map(|c| c["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["TRIGGERED", "CANCELLED"], "{all}");
    let (_, check) = s.request("POST", "/admin/v1/check", &[("x-admin-key", ADMIN)], None);
    assert_eq!(check["clean"], true, "{check}");
}
