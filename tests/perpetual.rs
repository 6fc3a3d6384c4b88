//! The perpetual over HTTP, against the real binary: index and mark price, liquidation
//! through the book and by auto-deleveraging, the insurance fund, funding, income, the
//! books balancing, and all of it surviving kill -9.

mod common;

use common::{dec, Server};
use rust_decimal::Decimal;
use serde_json::Value;

const ADMIN: &[(&str, &str)] = &[("x-admin-key", common::ADMIN)];

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn index(s: &Server, price: &str) -> Value {
    let (status, body) = s.request("POST", "/admin/v1/index-prices", ADMIN, Some(&format!(r#"{{"symbol":"BTC-PERP","price":"{price}"}}"#)));
    assert_eq!(status, 200, "{body}");
    body
}

fn order(s: &Server, key: &str, side: &str, price: &str, qty: &str, leverage: u32) -> Value {
    let body = format!(r#"{{"symbol":"BTC-PERP","side":"{side}","type":"LIMIT","price":"{price}","quantity":"{qty}","leverage":{leverage}}}"#);
    let (status, body) = s.order(key, &body);
    assert_eq!(status, 200, "{body}");
    body
}

fn total(s: &Server, key: &str) -> Decimal {
    dec(&s.get(key, "/v1/balance").1["total"])
}

fn fund(s: &Server) -> Decimal {
    let (status, body) = s.request("GET", "/v1/insurance-fund", &[], None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["currency"], "USDT");
    dec(&body["balance"])
}

/// The summary balances to the unit; returns it.
fn balanced(s: &Server) -> Value {
    let (status, body) = s.request("GET", "/admin/v1/summary", ADMIN, None);
    assert_eq!(status, 200, "{body}");
    let [deposits, balances, unrealized, fees, fund] =
        ["deposits", "balances", "unrealizedPnl", "fees", "insuranceFund"].map(|f| dec(&body[f]));
    assert_eq!(deposits, balances + unrealized + fees + fund, "{body}");
    assert_eq!(body["balanced"], true);
    // And the hot state (Redis, when the suite runs with it) agrees with the ledger.
    let (status, check) = s.request("POST", "/admin/v1/check", ADMIN, None);
    assert_eq!((status, &check["clean"]), (200, &Value::Bool(true)), "{check}");
    body
}

/// A user long 0.1 BTC at 50,000 with 50x (margin 100 USDT), against a short at 10x.
fn long_at_50x(s: &Server) -> (String, String) {
    let long = s.funded("long", "1000");
    let short = s.funded("short", "10000");
    order(s, &short, "SELL", "50000", "0.1", 10);
    order(s, &long, "BUY", "50000", "0.1", 50);
    (long, short)
}

/// A long and a short of 0.1 at 50,100 (10x), a maker's bid and ask around them, and the
/// index at 50,000 twice: the mark is median(50,000 index, 50,140 mid, 50,100 last
/// trade) = 50,100, above the index.
fn mark_over_index(s: &Server) -> (String, String) {
    index(s, "50000");
    let long = s.funded("long", "10000");
    let short = s.funded("short", "10000");
    let maker = s.funded("maker", "10000");
    order(s, &short, "SELL", "50100", "0.1", 10);
    order(s, &long, "BUY", "50100", "0.1", 10);
    order(s, &maker, "BUY", "50080", "0.01", 10);
    order(s, &maker, "SELL", "50200", "0.01", 10);
    assert_eq!(dec(&index(s, "50000")["markPrice"]), d("50100"));
    (long, short)
}

fn income(s: &Server, key: &str, kind: &str) -> Vec<Decimal> {
    let (status, body) = s.get(key, &format!("/v1/income?type={kind}"));
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().iter().map(|i| dec(&i["amount"])).collect()
}

#[test]
fn the_mark_price_and_the_positions_risk_fields() {
    let s = Server::start();
    let (status, body) = s.request("GET", "/v1/premium-index?symbol=BTC-PERP", &[], None);
    assert_eq!(status, 200);
    assert!(body["markPrice"].is_null() && body["indexPrice"].is_null(), "no index yet: {body}");
    let posted = index(&s, "50000.04");
    assert_eq!((dec(&posted["indexPrice"]), dec(&posted["markPrice"])), (d("50000"), d("50000")), "rounded to the tick");
    let (long, _) = long_at_50x(&s);
    let (_, positions) = s.get(&long, "/v1/positions");
    let p = &positions[0];
    assert_eq!(dec(&p["markPrice"]), d("50000"));
    // Maintenance 0.1 × 50,000 × 0.004 = 20; liquidation where 100 + 0.1 (P − 50,000) = 0.0004 P.
    assert_eq!(dec(&p["maintenanceMargin"]), d("20"));
    assert_eq!(dec(&p["liquidationPrice"]), d("49196.7"));
    assert_eq!(dec(&p["unrealizedPnl"]), d("0"));
    let (_, premium) = s.request("GET", "/v1/premium-index?symbol=BTC-PERP", &[], None);
    assert_eq!(dec(&premium["markPrice"]), d("50000"));
    assert!(premium["nextFundingTime"].as_i64().unwrap() > premium["time"].as_i64().unwrap());
    // Bad input changes nothing.
    for body in [r#"{"symbol":"BTC-PERP","price":"-1"}"#, r#"{"symbol":"NOPE","price":"1"}"#, r#"{"symbol":"BTC-PERP"}"#] {
        let (status, err) = s.request("POST", "/admin/v1/index-prices", ADMIN, Some(body));
        assert!(status == 400 || status == 404, "{body}: {status} {err}");
    }
    assert_eq!(s.request("POST", "/admin/v1/index-prices", &[], Some(r#"{"symbol":"BTC-PERP","price":"1"}"#)).0, 401);
    assert_eq!(dec(&s.request("GET", "/v1/premium-index?symbol=BTC-PERP", &[], None).1["markPrice"]), d("50000"));
}

#[test]
fn a_50x_long_is_liquidated_when_the_market_falls_through_its_liquidation_price() {
    let s = Server::start();
    index(&s, "50000");
    let (long, _) = long_at_50x(&s);
    let maker = s.funded("maker", "100000");
    // A bid between the bankruptcy price (49,000) and the liquidation price (49,196.7),
    // and a resting order of the long's that the liquidation cancels.
    order(&s, &maker, "BUY", "49100", "0.1", 10);
    order(&s, &long, "SELL", "60000", "0.05", 50);
    index(&s, "49250");
    assert_eq!(s.get(&long, "/v1/positions").1.as_array().unwrap().len(), 1, "above the liquidation price nothing happens");
    index(&s, "49150");
    assert!(s.get(&long, "/v1/positions").1.as_array().unwrap().is_empty(), "closed");
    assert!(s.get(&long, "/v1/orders").1.as_array().unwrap().is_empty(), "its open orders were cancelled");
    let (_, fills) = s.get(&long, "/v1/fills");
    let liquidation = &fills[0];
    assert_eq!((dec(&liquidation["price"]), liquidation["side"].as_str()), (d("49100"), Some("SELL")));
    assert_eq!(dec(&liquidation["fee"]), d("0"));
    let (status, order) = s.get(&long, &format!("/v1/orders/{}", liquidation["orderId"].as_str().unwrap()));
    assert_eq!(status, 200, "{order}");
    assert_eq!((order["type"].as_str(), order["status"].as_str()), (Some("LIQUIDATION"), Some("FILLED")));
    // The long lost its margin and its opening fee, no more: 1000 − 100 − 2.5.
    assert_eq!(total(&s, &long), d("897.5"));
    // The margin left after closing at 49,100 (100 − 90) went to the fund.
    assert_eq!(fund(&s), d("10"));
    assert_eq!(income(&s, &long, "LIQUIDATION"), vec![d("-10")]);
    assert_eq!(income(&s, &long, "REALIZED_PNL"), vec![d("-90")]);
    assert_eq!(income(&s, &long, "TRANSFER"), vec![d("1000")]);
    assert_eq!(dec(&balanced(&s)["insuranceFund"]), d("10"));
    // With Redis as the hot state, the symbol's mark and fund are there too.
    if let (Some(url), Some(prefix)) = (common::hot_redis(), s.env_var("EXCHANGE_REDIS_PREFIX")) {
        let mut conn = common::connect_any(&url);
        let key = format!("{prefix}market:BTC-PERP");
        let mut read = || -> Option<(String, String)> {
            let (mark, fund): (Option<String>, Option<String>) =
                redis::cmd("HMGET").arg(&key).arg("mark").arg("insuranceFund").query(conn.as_mut()).ok()?;
            Some((mark?, fund?))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // Mark 49,150 in ticks of 0.1; the fund (10 USDT) in units of 1e-8.
        loop {
            let found = read();
            if found == Some(("491500".to_owned(), "1000000000".to_owned())) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "Redis has {found:?}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

#[test]
fn a_gap_through_the_bankruptcy_price_with_an_empty_book_is_deleveraged() {
    let s = Server::start();
    index(&s, "50000");
    let (long, short) = long_at_50x(&s);
    let short_before = total(&s, &short);
    index(&s, "40000");
    assert!(s.get(&long, "/v1/positions").1.as_array().unwrap().is_empty());
    assert!(s.get(&short, "/v1/positions").1.as_array().unwrap().is_empty(), "the short was deleveraged");
    let (_, fills) = s.get(&short, "/v1/fills");
    let adl = &fills[0];
    assert_eq!((adl["liquidity"].as_str(), dec(&adl["price"]), adl["side"].as_str()), (Some("ADL"), d("49000"), Some("BUY")));
    // The short gained 0.1 × 1,000 at the long's bankruptcy price, with no fee.
    assert_eq!(total(&s, &short) - short_before, d("100"));
    assert_eq!(total(&s, &long), d("897.5"));
    assert_eq!(fund(&s), d("0"));
    // Deleveraging is not a public trade.
    let (_, trades) = s.request("GET", "/v1/trades?symbol=BTC-PERP", &[], None);
    assert_eq!(trades.as_array().unwrap().len(), 1);
    balanced(&s);
}

#[test]
fn funding_is_paid_by_longs_to_shorts_when_the_mark_is_above_the_index_and_is_zero_sum() {
    let s = Server::start();
    let (long, short) = mark_over_index(&s);
    let (before_long, before_short) = (total(&s, &long), total(&s, &short));
    let (status, settled) = s.request("POST", "/admin/v1/funding", ADMIN, Some(r#"{"symbol":"BTC-PERP"}"#));
    assert_eq!(status, 200, "{settled}");
    // The premium averaged over the two index prices since the last funding (0 and
    // 0.2 %) is 0.1 %; plus clamp(0.01 % − 0.1 %, ±0.05 %): 0.05 %.
    assert_eq!(settled["fundingRate"], "0.0005");
    assert_eq!(settled["positions"], 2);
    let paid = total(&s, &long) - before_long;
    let received = total(&s, &short) - before_short;
    // 0.1 × 50,100 × 0.0005 = 2.505.
    assert_eq!((paid, received), (d("-2.505"), d("2.505")));
    assert_eq!(income(&s, &long, "FUNDING_FEE"), vec![d("-2.505")]);
    assert_eq!(income(&s, &short, "FUNDING_FEE"), vec![d("2.505")]);
    let (_, premium) = s.request("GET", "/v1/premium-index?symbol=BTC-PERP", &[], None);
    assert_eq!(premium["lastFundingRate"], "0.0005");
    balanced(&s);
}

#[test]
fn funding_ticks_on_its_schedule() {
    let s = Server::start_with(&[("EXCHANGE_FUNDING_INTERVAL_SECS", "1")]);
    let (long, _) = mark_over_index(&s);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while income(&s, &long, "FUNDING_FEE").is_empty() {
        assert!(std::time::Instant::now() < deadline, "no funding tick came");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(income(&s, &long, "FUNDING_FEE")[0] < Decimal::ZERO, "the long pays");
    balanced(&s);
}

#[test]
fn kill_9_and_restart_reproduce_balances_positions_and_the_fund() {
    let mut s = Server::start_with(&[("EXCHANGE_FUNDING_INTERVAL_SECS", "86400")]);
    index(&s, "50000");
    let (long, short) = long_at_50x(&s);
    let maker = s.funded("maker", "100000");
    let other = s.funded("other", "10000");
    order(&s, &other, "BUY", "50000", "0.2", 5);
    order(&s, &maker, "SELL", "50000", "0.2", 5);
    order(&s, &maker, "BUY", "49100", "0.1", 10);
    index(&s, "49150");
    let (status, _) = s.request("POST", "/admin/v1/funding", ADMIN, Some(r#"{"symbol":"BTC-PERP"}"#));
    assert_eq!(status, 200);
    let read = |s: &Server| {
        let mut out = vec![s.request("GET", "/v1/insurance-fund", &[], None).1, balanced(s)];
        let mut premium = s.request("GET", "/v1/premium-index?symbol=BTC-PERP", &[], None).1;
        premium.as_object_mut().unwrap().retain(|k, _| k == "markPrice" || k == "indexPrice" || k == "lastFundingRate");
        out.push(premium);
        for key in [&long, &short, &maker, &other] {
            for path in ["/v1/balance", "/v1/positions", "/v1/income?limit=1000", "/v1/fills", "/v1/orders"] {
                out.push(s.get(key, path).1);
            }
        }
        out
    };
    let before = read(&s);
    assert!(fund(&s) > Decimal::ZERO);
    s.restart();
    assert_eq!(read(&s), before);
}
