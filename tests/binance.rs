//! The Binance USDⓈ-M dialect (`/fapi`, BINANCE.md) through unmodified clients (ccxt's
//! `binanceusdm`, python-binance), and its signing rules over plain HTTP.
//!
//! Both come from PyPI into a virtual environment (`scripts/ccxt.sh`, run by test.sh);
//! its interpreter is `EXCHANGE_TEST_CCXT_PYTHON`. Without it these tests fail, they do
//! not skip.

mod common;

use std::process::Command;
use std::str::FromStr;

use common::{Server, ADMIN};
use rust_decimal::Decimal;
use serde_json::Value;

/// A user with a deposit: key and API secret.
fn trader(s: &Server, name: &str, amount: &str) -> (String, String) {
    let (status, body) = s.request("POST", "/admin/v1/users", &[("x-admin-key", ADMIN)], Some(&format!(r#"{{"userId":"{name}"}}"#)));
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.deposit(name, amount, &format!("fund-{name}")).0, 200);
    let secret = body["apiSecret"].as_str().expect("apiSecret in the new user's answer").to_owned();
    assert_eq!(secret.len(), 64, "{secret}");
    (body["apiKey"].as_str().unwrap().to_owned(), secret)
}

/// What the ccxt script saw.
fn ccxt(script: &str, args: &[&str]) -> Value {
    let python = std::env::var("EXCHANGE_TEST_CCXT_PYTHON")
        .expect("EXCHANGE_TEST_CCXT_PYTHON: a Python with ccxt installed (scripts/ccxt.sh makes one; test.sh sets it)");
    let path = format!("{}/tests/binance/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python).arg(path).args(args).output().expect("the ccxt script runs");
    assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(v.as_str().unwrap_or_else(|| panic!("a decimal string: {v}"))).unwrap()
}

#[test]
fn an_unmodified_ccxt_client_reads_markets_balance_book_and_positions() {
    let s = Server::start();
    let (key, secret) = trader(&s, "ccxt-a", "100000");
    let maker = s.funded("ccxt-maker", "100000");
    s.limit(&maker, "BUY", "49000", "0.005");
    s.limit(&maker, "SELL", "51000", "0.002");
    // An index price: the funding rate ccxt reads has one.
    let (status, body) = s.request("POST", "/admin/v1/index-prices", &[("x-admin-key", ADMIN)], Some(r#"{"symbol":"BTC-PERP","price":"50000"}"#));
    assert_eq!(status, 200, "{body}");
    // A funding round (no one holds a position yet: no one pays).
    let (status, funded) = s.request("POST", "/admin/v1/funding", &[("x-admin-key", ADMIN)], Some(r#"{"symbol":"BTC-PERP"}"#));
    assert_eq!(status, 200, "{funded}");
    // The book as ccxt will find it: nothing changes it before its fetch_order_book.
    let (_, depth) = s.request("GET", "/v1/depth?symbol=BTC-PERP&limit=5", &[], None);
    let base = s.url("");
    let seen = ccxt("ccxt_session.py", &[&base, &key, &secret]);

    let (_, symbols) = s.request("GET", "/v1/symbols", &[], None);
    let mut ids: Vec<String> =
        symbols.as_array().unwrap().iter().map(|x| x["symbol"].as_str().unwrap().replace("-PERP", "USDT")).collect();
    ids.sort();
    assert_eq!(seen["markets"], serde_json::json!(ids), "every symbol, Binance-named");
    let btc = symbols.as_array().unwrap().iter().find(|x| x["symbol"] == "BTC-PERP").unwrap();
    assert_eq!(seen["btc"]["id"], "BTCUSDT");
    assert_eq!(seen["btc"]["settle"], "USDT");
    assert_eq!(seen["btc"]["active"], true);
    assert_eq!(seen["btc"]["linear"], true);
    assert_eq!(dec(&seen["btc"]["price_precision"]), dec(&btc["tickSize"]), "ccxt's price precision is the tick");
    assert_eq!(dec(&seen["btc"]["amount_precision"]), dec(&btc["lotSize"]));

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let time = seen["time"].as_i64().expect("fetch_time");
    assert!((now - time).abs() < 60_000, "server time {time}, here {now}");

    assert_eq!(dec(&seen["balance"]["total"]), Decimal::from(100_000), "the deposit, before any trade");
    assert_eq!(dec(&seen["balance"]["free"]), Decimal::from(100_000));
    assert_eq!(dec(&seen["balance"]["used"]), Decimal::ZERO);

    for side in ["bids", "asks"] {
        let ours: Vec<(Decimal, Decimal)> = depth[side].as_array().unwrap().iter().map(|l| (dec(&l[0]), dec(&l[1]))).collect();
        let theirs: Vec<(Decimal, Decimal)> = seen["book"][side].as_array().unwrap().iter().map(|l| (dec(&l[0]), dec(&l[1]))).collect();
        assert_eq!(theirs, ours, "{side} as GET /v1/depth has them");
        assert!(!ours.is_empty());
    }
    assert_eq!(seen["book"]["nonce"], depth["seq"], "lastUpdateId is the book's sequence");
    assert_eq!(seen["positions"], serde_json::json!([]), "no position yet");

    // Orders: one rests, is listed, fetched and cancelled; the same order natively.
    assert_eq!(seen["resting"]["status"], "open");
    assert_eq!(dec(&seen["resting"]["amount"]), Decimal::from_str("0.01").unwrap());
    let id = seen["resting"]["id"].as_str().unwrap();
    assert_eq!(seen["open"], serde_json::json!([id]));
    assert_eq!(seen["fetched"]["id"], id);
    assert_eq!(seen["fetched"]["status"], "open");
    assert_eq!(seen["cancelled"]["status"], "canceled");
    // ccxt's edit_order amends it in place (the same id).
    assert_eq!(seen["edited"]["id"], id);
    assert_eq!((dec(&seen["edited"]["amount"]), dec(&seen["edited"]["price"])), (Decimal::from_str("0.008").unwrap(), Decimal::from(52_500)));
    assert_eq!(seen["edited"]["status"], "open");
    assert_eq!(seen["open_after_cancel"], serde_json::json!([]));
    let native = seen["resting"]["clientOrderId"].as_str().unwrap();
    let (status, order) = s.get(&key, &format!("/v1/orders/by-client-id/{native}"));
    assert_eq!(status, 200, "ccxt's clientOrderId is the native one: {order}");
    assert_eq!(order["status"], "CANCELLED");
    // ccxt set leverage 5 first (its position below has it).
    assert_eq!(seen["leverage"]["leverage"], 5, "{}", seen["leverage"]);
    assert_eq!(seen["leverage"]["symbol"], "BTCUSDT");
    assert_eq!(seen["leverage_too_high"], "BadRequest");
    // fetch_leverages: the setting where one was made, the default elsewhere.
    assert_eq!(seen["leverages"]["BTC/USDT:USDT"], serde_json::json!([5, 5, "isolated"]), "{}", seen["leverages"]);
    assert_eq!(seen["leverages"]["ETH/USDT:USDT"], serde_json::json!([20, 20, "isolated"]), "{}", seen["leverages"]);
    // Refusals surface as ccxt's own classes.
    assert_eq!(seen["post_only_cross"], "InvalidOrder");
    assert_eq!(seen["oversized"], "InsufficientFunds");
    assert_eq!(seen["unknown_cancel"], "OrderNotFound");
    assert_eq!(seen["off_tick"], "InvalidOrder");
    // A market buy takes the maker's ask: a long position at its price.
    assert_eq!(seen["bought"]["status"], "closed");
    assert_eq!(dec(&seen["bought"]["filled"]), Decimal::from_str("0.002").unwrap());
    assert_eq!(dec(&seen["bought"]["average"]), Decimal::from(51000));
    let (_, positions) = s.get(&key, "/v1/positions");
    assert_eq!(positions.as_array().unwrap().len(), 1, "{positions}");
    assert_eq!(positions[0]["leverage"], 5, "the market buy took ccxt's setting: {positions}");
    assert_eq!(seen["positions_after"][0]["symbol"], "BTC/USDT:USDT");
    assert_eq!(seen["positions_after"][0]["side"], "long");
    assert_eq!(dec(&seen["positions_after"][0]["contracts"]), dec(&positions[0]["size"]));
    assert_eq!(dec(&seen["positions_after"][0]["entryPrice"]), dec(&positions[0]["entryPrice"]));
    // The balance after the fee and with the position's margin held, as natively; ccxt's
    // total is the margin balance (wallet + unrealized PnL).
    let (_, balance) = s.get(&key, "/v1/balance");
    let unrealized = dec(&positions[0]["unrealizedPnl"]);
    assert_eq!(dec(&seen["balance_after"]["total"]), dec(&balance["total"]) + unrealized);
    assert_eq!(dec(&seen["balance_after"]["free"]), dec(&balance["available"]));
    assert_eq!(dec(&seen["balance_after"]["used"]), dec(&balance["locked"]));
    assert!(dec(&balance["total"]) < Decimal::from(100_000), "the taker fee was paid: {balance}");

    // Its stop-loss went to the algo API (ccxt shows a MARKET order with a triggerPrice),
    // rested, and was cancelled, as natively.
    assert_eq!(
        (&seen["stop"]["status"], &seen["stop"]["type"], &seen["stop"]["reduceOnly"]),
        (&serde_json::json!("open"), &serde_json::json!("market"), &serde_json::json!(true)),
        "{}",
        seen["stop"]
    );
    assert_eq!(dec(&Value::String(seen["stop"]["triggerPrice"].as_str().unwrap().to_owned())), Decimal::from(45_000));
    assert_eq!(seen["stops_open"], serde_json::json!([seen["stop"]["id"]]));
    assert_eq!(seen["stop_fetched"], "open");
    assert_eq!(seen["stop_cancelled"], seen["stop"]["id"]);
    assert_eq!(seen["stops_after_cancel"], serde_json::json!([]));
    // ccxt maps -2021 to OrderImmediatelyFillable and -4120 to InvalidOrder only for
    // Binance's own hostnames; elsewhere both are its generic ExchangeError.
    // A trailing stop (trailingPercent): 1.5 % behind the best price, active at once.
    assert_eq!(seen["trailing"]["rate"], "1.5", "{}", seen["trailing"]);
    assert_eq!(seen["trailing_open"], serde_json::json!([seen["trailing"]["id"]]));
    assert_eq!(seen["trailing_cancelled"], seen["trailing"]["id"]);
    assert_eq!(seen["stop_would_trigger"], serde_json::json!(["ExchangeError", -2021]));
    assert_eq!(seen["stop_on_order_endpoint"], serde_json::json!(["ExchangeError", -4120]));
    let cid = seen["stop"]["clientOrderId"].as_str().unwrap();
    let (status, native) = s.get(&key, &format!("/v1/conditional-orders/by-client-id/{cid}?symbol=BTC-PERP"));
    assert_eq!((status, native["status"].as_str(), native["type"].as_str()), (200, Some("CANCELLED"), Some("STOP_MARKET")), "{native}");

    // Candles and the day's ticker hold that one trade, as the native candles do.
    let (_, candles) = s.request("GET", "/v1/candles?symbol=BTC-PERP&interval=1m&limit=3", &[], None);
    let ohlcv = seen["ohlcv"].as_array().unwrap();
    assert!(!ohlcv.is_empty() && ohlcv.len() <= 3, "{ohlcv:?}");
    let volume: Decimal = ohlcv.iter().map(|c| dec(&c[5])).sum();
    assert_eq!(volume, Decimal::from_str("0.002").unwrap(), "the one trade's volume: {ohlcv:?}");
    assert_eq!(dec(&ohlcv.last().unwrap()[4]), Decimal::from(51_000), "closes at the trade");
    let first = ohlcv[0][0].as_str().unwrap().parse::<i64>().unwrap();
    let native = candles.as_array().unwrap().iter().find(|c| c["openTime"] == first).expect("the same minute natively");
    assert_eq!((dec(&ohlcv[0][1]), dec(&ohlcv[0][5])), (dec(&native["open"]), dec(&native["volume"])));
    for (field, want) in [("last", "51000"), ("high", "51000"), ("low", "51000"), ("open", "51000"), ("baseVolume", "0.002"), ("quoteVolume", "102")] {
        assert_eq!(dec(&seen["ticker"][field]), Decimal::from_str(want).unwrap(), "ticker {field}: {}", seen["ticker"]);
    }
    assert_eq!(seen["tickers"].as_array().unwrap().len(), ids.len(), "a ticker per symbol");

    // Its trade, as natively; a batch answered order by order; cancel-all.
    let (_, fills) = s.get(&key, "/v1/fills?symbol=BTC-PERP");
    assert_eq!(seen["my_trades"].as_array().unwrap().len(), 1, "{}", seen["my_trades"]);
    let trade = &seen["my_trades"][0];
    assert_eq!(trade["order"], seen["bought_id"]);
    assert_eq!((dec(&trade["price"]), dec(&trade["amount"])), (dec(&fills[0]["price"]), dec(&fills[0]["quantity"])));
    assert_eq!((&trade["side"], &trade["takerOrMaker"]), (&serde_json::json!("buy"), &serde_json::json!("taker")));
    assert_eq!(dec(&trade["fee"]), dec(&fills[0]["fee"]));
    // (ccxt may send them in another order than it was given them.)
    assert_eq!(seen["public_trades"].as_array().unwrap().len(), 1, "{}", seen["public_trades"]);
    assert_eq!(seen["public_trades"][0]["side"], "buy", "the taker bought");
    assert_eq!(dec(&seen["public_trades"][0]["price"]), Decimal::from(51_000));
    let batch = seen["batch"].as_array().unwrap();
    assert_eq!(batch.len(), 3);
    let refused: Vec<&Value> = batch.iter().filter(|o| o["status"] == "rejected").collect();
    assert_eq!(refused.len(), 1, "the one past the balance alone is refused: {}", seen["batch"]);
    assert_eq!(refused[0]["info"]["code"], -2019);
    let mut placed: Vec<&str> = batch.iter().filter(|o| o["status"] == "open").map(|o| o["id"].as_str().unwrap()).collect();
    placed.sort_unstable();
    assert_eq!(seen["open_after_batch"], serde_json::json!(placed));
    assert_eq!(seen["open_after_cancel_all"], serde_json::json!([]));
    // Every order so far, closed ones included (allOrders).
    let all = seen["all_orders"].as_object().unwrap();
    assert_eq!(all[id], "canceled", "{all:?}");
    assert_eq!(all[seen["bought_id"].as_str().unwrap()], "closed", "{all:?}");
    for placed in &placed {
        assert_eq!(all[*placed], "canceled", "{all:?}");
    }
    assert_eq!(all.len(), 2 + placed.len(), "refused orders are no orders: {all:?}");
    assert_eq!(seen["closed_orders"], serde_json::json!([seen["bought_id"]]), "only the filled one is closed, to ccxt");
    assert_eq!(seen["reduce_only"], serde_json::json!({ "placed": true, "fetched": true }), "reduceOnly as placed");
    let (_, premium) = s.request("GET", "/v1/premium-index?symbol=BTC-PERP", &[], None);
    assert_eq!(dec(&seen["funding_rate"]["indexPrice"]), Decimal::from(50_000));
    assert_eq!(dec(&seen["funding_rate"]["markPrice"]), dec(&premium["markPrice"]));
    assert_eq!(seen["funding_rate"]["fundingTimestamp"], premium["nextFundingTime"]);
    assert_eq!(seen["funding_history"], serde_json::json!([[funded["time"], seen["funding_history"][0][1]]]), "{}", seen["funding_history"]);
    assert_eq!(dec(&seen["funding_history"][0][1]), dec(&funded["fundingRate"]));
    let marks = seen["mark_ohlcv"].as_array().unwrap();
    assert_eq!(dec(&marks.last().unwrap()[4]), dec(&premium["markPrice"]), "the mark's candles: {marks:?}");
    assert_eq!(seen["income_types"], serde_json::json!(["COMMISSION", "TRANSFER"]));

    assert_eq!(seen["wrong_secret"], "AuthenticationError");
    assert_eq!(seen["unknown_symbol"], "BadSymbol");
    for r in seen["requested"].as_array().unwrap() {
        let r = r.as_str().unwrap();
        assert!(r.contains(&format!("{base}/fapi/")), "every request went to /fapi here: {r}");
    }
    consistent(&s);
}

/// The books balance, and the hot state (Redis, when the suite runs with it) agrees with
/// the ledger after everything a client did through /fapi.
fn consistent(s: &Server) {
    let (_, summary) = s.request("GET", "/admin/v1/summary", &[("x-admin-key", ADMIN)], None);
    assert_eq!(summary["balanced"], true, "{summary}");
    let (status, check) = s.request("POST", "/admin/v1/check", &[("x-admin-key", ADMIN)], None);
    assert_eq!((status, &check["clean"]), (200, &Value::Bool(true)), "{check}");
}

fn signature(secret: &str, payload: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A request signed as Binance's clients sign it, parameters in the query; `(status, body)`.
fn signed(s: &Server, method: &str, path: &str, key: &str, secret: &str, params: &str) -> (u16, Value) {
    s.request(method, &format!("{path}?{params}&signature={}", signature(secret, params)), &[("x-mbx-apikey", key)], None)
}

/// The same with the parameters in the body, as a POST sends them.
fn signed_body(s: &Server, path: &str, key: &str, secret: &str, params: &str) -> (u16, Value) {
    s.request("POST", path, &[("x-mbx-apikey", key)], Some(&format!("{params}&signature={}", signature(secret, params))))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
fn signed_calls_are_refused_with_binances_codes_and_change_nothing() {
    let s = Server::start();
    let (key, secret) = trader(&s, "signer", "1000");
    let (status, body) = signed(&s, "GET", "/fapi/v3/balance", &key, &secret, &format!("timestamp={}", now_ms()));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["availableBalance"], "1000");
    let order = |ts: i64| format!("symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.001&price=49000&timestamp={ts}");
    // Stale, from the future, signed with another secret, with no key or an unknown one.
    let (status, body) = signed(&s, "POST", "/fapi/v1/order", &key, &secret, &order(now_ms() - 6_000));
    assert_eq!((status, body["code"].as_i64()), (400, Some(-1021)), "{body}");
    let (status, body) = signed(&s, "POST", "/fapi/v1/order", &key, &secret, &order(now_ms() + 5_000));
    assert_eq!((status, body["code"].as_i64()), (400, Some(-1021)), "{body}");
    let (status, body) = signed(&s, "POST", "/fapi/v1/order", &key, &"0".repeat(64), &order(now_ms()));
    assert_eq!((status, body["code"].as_i64()), (400, Some(-1022)), "{body}");
    let (status, body) = s.request("POST", &format!("/fapi/v1/order?{}&signature=00", order(now_ms())), &[], None);
    assert_eq!((status, body["code"].as_i64()), (401, Some(-2015)), "{body}");
    let stranger = format!("{}.{}", "0000000100000009", "1".repeat(48));
    let (status, body) = signed(&s, "POST", "/fapi/v1/order", &stranger, &secret, &order(now_ms()));
    assert_eq!((status, body["code"].as_i64()), (400, Some(-1022)), "another key's secret does not sign: {body}");
    let (status, body) = s.request("GET", "/fapi/v1/nope", &[], None);
    assert_eq!((status, body["code"].as_i64()), (404, Some(-5000)), "{body}");
    // A self-trade is never allowed: NONE is refused; the other modes are taken.
    let (status, body) = signed(&s, "POST", "/fapi/v1/order", &key, &secret, &format!("{}&selfTradePreventionMode=NONE", order(now_ms())));
    assert_eq!((status, body["code"].as_i64()), (400, Some(-4000)), "{body}");
    let (status, body) = signed(&s, "POST", "/fapi/v1/order", &key, &secret, &format!("{}&selfTradePreventionMode=EXPIRE_SOON", order(now_ms())));
    assert_eq!((status, body["code"].as_i64()), (400, Some(-1130)), "{body}");
    // None of them placed anything.
    let (_, open) = s.get(&key, "/v1/orders");
    assert_eq!(open, serde_json::json!([]));
    // The same order, signed in time, rests.
    let (status, body) = signed(&s, "POST", "/fapi/v1/order", &key, &secret, &order(now_ms()));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "NEW");
    assert!(body["orderId"].as_u64().is_some_and(|id| id < 1 << 53), "an integer id: {body}");
    let (_, open) = s.get(&key, "/v1/orders");
    assert_eq!(open.as_array().unwrap().len(), 1);
    // A batch, raw JSON in the form body as ccxt sends it: answered in its order, each
    // on its own.
    let batch = r#"[{"symbol":"BTCUSDT","side":"BUY","type":"LIMIT","timeInForce":"GTC","quantity":"0.001","price":"48000"},{"symbol":"BTCUSDT","side":"BUY","type":"LIMIT","timeInForce":"GTC","quantity":"0.001","price":"48000.05"},{"symbol":"BTCUSDT","side":"BUY","type":"LIMIT","timeInForce":"GTC","quantity":"0.001","price":"47000","reduceOnly":false}]"#;
    let (status, body) = signed_body(&s, "/fapi/v1/batchOrders", &key, &secret, &format!("batchOrders={batch}&timestamp={}", now_ms()));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["price"], "48000", "{body}");
    assert_eq!(body[1]["code"], -4014, "off its tick: {body}");
    assert_eq!(body[2]["price"], "47000", "{body}");
    let (_, open) = s.get(&key, "/v1/orders");
    assert_eq!(open.as_array().unwrap().len(), 3);
    // Cancelled as a batch, answered in order; an unknown id gets its own error.
    let ids = format!("[{},{},{},123]", body[0]["orderId"], body[2]["orderId"], body[0]["orderId"]);
    let (status, cancelled) = signed(&s, "DELETE", "/fapi/v1/batchOrders", &key, &secret, &format!("symbol=BTCUSDT&orderIdList={ids}&timestamp={}", now_ms()));
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!((cancelled[0]["status"].as_str(), cancelled[1]["status"].as_str()), (Some("CANCELED"), Some("CANCELED")), "{cancelled}");
    assert_eq!((cancelled[2]["code"].as_i64(), cancelled[3]["code"].as_i64()), (Some(-2011), Some(-2011)), "already cancelled, unknown: {cancelled}");
    let (_, open) = s.get(&key, "/v1/orders");
    assert_eq!(open.as_array().unwrap().len(), 1, "the first order stays");
}

/// An unmodified python-binance (its futures methods, base URL pointed here): leverage,
/// place, read, amend, cancel, market data, positions, and its error codes.
#[test]
fn an_unmodified_python_binance_client_trades_and_reads() {
    let s = Server::start();
    let (key, secret) = trader(&s, "pb", "100000");
    let maker = s.funded("pb-maker", "100000");
    s.limit(&maker, "SELL", "51000", "0.002");
    let taker = s.funded("pb-taker", "100000");
    s.limit(&taker, "BUY", "51000", "0.001");
    let seen = ccxt("python_binance_session.py", &[&s.url(""), &key, &secret]);
    assert_eq!(seen["symbols"], serde_json::json!(["BTCUSDT", "ETHUSDT"]), "{seen}");
    assert_eq!(dec(&seen["balance"]), Decimal::from(100_000));
    assert_eq!(seen["leverage"], 4);
    assert_eq!(seen["order"]["status"], "NEW");
    assert_eq!((dec(&seen["order"]["price"]), dec(&seen["order"]["origQty"])), (Decimal::from(45_000), Decimal::from_str("0.01").unwrap()));
    assert_eq!(seen["get"], "NEW");
    assert_eq!(seen["open"], serde_json::json!([seen["order"]["orderId"]]));
    assert_eq!((dec(&seen["modified"]["price"]), dec(&seen["modified"]["origQty"])), (Decimal::from(44_000), Decimal::from_str("0.02").unwrap()));
    assert_eq!(seen["cancelled"], "CANCELED");
    let klines = seen["klines"].as_array().unwrap();
    assert!(!klines.is_empty() && dec(&klines.last().unwrap()[4]) == Decimal::from(51_000), "{klines:?}");
    assert_eq!(dec(&seen["ticker"]), Decimal::from(51_000));
    assert_eq!(seen["book"]["asks"][0][0], "51000", "{}", seen["book"]);
    assert_eq!(seen["trades"], serde_json::json!(["51000"]));
    assert_eq!(seen["too_big"], -2019, "insufficient balance, Binance's code");
    assert_eq!(seen["bad_secret"], -1022, "a bad signature, Binance's code");
    let _ = seen["mark"].as_str().expect("a mark price string");
    let _ = seen["positions"].as_array().expect("positions");
    consistent(&s);
}

/// `POST /fapi/v1/leverage` is a logged command on the symbol's owner: orders sent
/// through `/fapi` take it, before and after a crash; native orders name their own.
#[test]
fn a_leverage_setting_is_logged_and_outlives_a_crash() {
    let mut s = Server::start_with(&[("EXCHANGE_SNAPSHOT_EVERY", "3")]);
    let (key, secret) = trader(&s, "lever", "100000");
    let set = |s: &Server, symbol: &str, leverage: &str| {
        signed_body(s, "/fapi/v1/leverage", &key, &secret, &format!("symbol={symbol}&leverage={leverage}&timestamp={}", now_ms()))
    };
    // The leverage an order took, from what it locked: value ÷ leverage, and the taker
    // fee (0.01 × 40000 = 400 USDT of value, 0.2 of fee; no mark, no open loss).
    let locked = |s: &Server| dec(&s.get(&key, "/v1/balance").1["locked"]);
    let place = |s: &Server| {
        let before = locked(s);
        let params = format!("symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.01&price=40000&timestamp={}", now_ms());
        let (status, body) = signed_body(s, "/fapi/v1/order", &key, &secret, &params);
        assert_eq!(status, 200, "{body}");
        let lock = locked(s) - before;
        let leverage = (1..=100).find(|l| {
            let extra = lock - Decimal::from(400) / Decimal::from(*l);
            extra >= Decimal::ZERO && extra < Decimal::ONE
        });
        leverage.unwrap_or_else(|| panic!("a lock of {lock} is no leverage's"))
    };
    assert_eq!(place(&s), 20, "Binance's default before any setting");
    for bad in ["0", "101", "-1", "5.5", "x"] {
        let (status, body) = set(&s, "BTCUSDT", bad);
        assert_eq!((status, body["code"].as_i64()), (400, Some(-4028)), "{bad}: {body}");
    }
    let (status, body) = set(&s, "NOPEUSDT", "5");
    assert_eq!((status, body["code"].as_i64()), (400, Some(-1121)), "{body}");
    assert_eq!(place(&s), 20, "refused settings changed nothing");
    let (status, body) = set(&s, "BTCUSDT", "7");
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["leverage"].as_i64(), body["symbol"].as_str()), (Some(7), Some("BTCUSDT")));
    assert_eq!(place(&s), 7);
    let before = locked(&s);
    let (status, _) = s.order(&key, r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.01"}"#);
    assert_eq!(status, 200);
    assert!(locked(&s) - before >= Decimal::from(400), "a native order without leverage keeps the native default of 1");
    // Another symbol has its own setting.
    let (status, _) = set(&s, "ETHUSDT", "3");
    assert_eq!(status, 200);
    s.kill9();
    s.restart();
    assert_eq!(place(&s), 7, "the setting came back from the log");
    let (status, _) = set(&s, "BTCUSDT", "2");
    assert_eq!(status, 200);
    s.restart();
    assert_eq!(place(&s), 2);
}

/// `countdownCancelAll` is the native countdown: not renewed, the symbol's orders go.
#[test]
fn countdown_cancel_all_cancels_when_not_renewed() {
    let s = Server::start();
    let (key, secret) = trader(&s, "dead-man", "100000");
    let params = format!("symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.01&price=40000&timestamp={}", now_ms());
    let (status, order) = signed_body(&s, "/fapi/v1/order", &key, &secret, &params);
    assert_eq!(status, 200, "{order}");
    let countdown = |ms: &str| signed_body(&s, "/fapi/v1/countdownCancelAll", &key, &secret, &format!("symbol=BTCUSDT&countdownTime={ms}&timestamp={}", now_ms()));
    for bad in ["-1", "86400001", "soon"] {
        let (status, body) = countdown(bad);
        assert_eq!((status, body["code"].as_i64()), (400, Some(-1130)), "{bad}: {body}");
    }
    let (status, body) = countdown("3000");
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["symbol"].as_str(), body["countdownTime"].as_str()), (Some("BTCUSDT"), Some("3000")));
    let open = || signed(&s, "GET", "/fapi/v1/openOrders", &key, &secret, &format!("symbol=BTCUSDT&timestamp={}", now_ms())).1;
    assert_eq!(open().as_array().unwrap().len(), 1, "it has not run out yet");
    let none_open = |what: &str| common::eventually(what, 10, || open().as_array().unwrap().is_empty());
    none_open("the countdown never fired");
    let (_, gone) = signed(&s, "GET", "/fapi/v1/order", &key, &secret, &format!("symbol=BTCUSDT&orderId={}&timestamp={}", order["orderId"], now_ms()));
    assert_eq!(gone["status"], "CANCELED", "{gone}");
    // A good-till-date order expires at its date.
    let till = now_ms() + 3_000;
    let params = format!("symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTD&goodTillDate={till}&quantity=0.01&price=40000&timestamp={}", now_ms());
    let (status, gtd) = signed_body(&s, "/fapi/v1/order", &key, &secret, &params);
    assert_eq!(status, 200, "{gtd}");
    assert_eq!((gtd["timeInForce"].as_str(), gtd["goodTillDate"].as_i64()), (Some("GTD"), Some(till)), "{gtd}");
    none_open("the GTD order never expired");
    let (_, gone) = signed(&s, "GET", "/fapi/v1/order", &key, &secret, &format!("symbol=BTCUSDT&orderId={}&timestamp={}", gtd["orderId"], now_ms()));
    assert_eq!(gone["status"], "EXPIRED", "{gone}");
}

#[test]
fn public_trades_book_ticker_and_the_fixed_settings() {
    let s = Server::start();
    let (key, secret) = trader(&s, "settings", "100000");
    let maker = s.funded("book-maker", "100000");
    s.limit(&maker, "BUY", "49000", "0.003");
    s.limit(&maker, "SELL", "50000", "0.002");
    s.limit(&key, "SELL", "49000", "0.001");
    let (status, ticker) = s.request("GET", "/fapi/v1/ticker/bookTicker?symbol=BTCUSDT", &[], None);
    assert_eq!(status, 200, "{ticker}");
    assert_eq!((&ticker["bidPrice"], &ticker["bidQty"]), (&serde_json::json!("49000"), &serde_json::json!("0.002")));
    assert_eq!((&ticker["askPrice"], &ticker["askQty"]), (&serde_json::json!("50000"), &serde_json::json!("0.002")));
    let (_, all) = s.request("GET", "/fapi/v1/ticker/bookTicker", &[], None);
    assert!(all.as_array().is_some_and(|a| a.len() >= 2), "every symbol without one: {all}");
    // The price band as exchangeInfo states it is the native one.
    let (_, info) = s.request("GET", "/fapi/v1/exchangeInfo", &[], None);
    let (_, symbols) = s.request("GET", "/v1/symbols", &[], None);
    let btc = info["symbols"].as_array().unwrap().iter().find(|x| x["symbol"] == "BTCUSDT").unwrap();
    let band = btc["filters"].as_array().unwrap().iter().find(|f| f["filterType"] == "PERCENT_PRICE").unwrap();
    let native = symbols.as_array().unwrap().iter().find(|x| x["symbol"] == "BTC-PERP").unwrap();
    assert_eq!((dec(&band["multiplierUp"]), dec(&band["multiplierDown"])), (dec(&native["priceBandUp"]), dec(&native["priceBandDown"])), "{band}");
    let (_, trades) = s.request("GET", "/fapi/v1/trades?symbol=BTCUSDT", &[], None);
    assert_eq!(trades.as_array().unwrap().len(), 1, "{trades}");
    assert_eq!((&trades[0]["price"], &trades[0]["qty"], &trades[0]["isBuyerMaker"]), (&serde_json::json!("49000"), &serde_json::json!("0.001"), &serde_json::json!(true)));
    let (_, price) = s.request("GET", "/fapi/v2/ticker/price?symbol=BTCUSDT", &[], None);
    assert_eq!((&price["symbol"], &price["price"], &price["time"]), (&serde_json::json!("BTCUSDT"), &serde_json::json!("49000"), &trades[0]["time"]));
    let (_, prices) = s.request("GET", "/fapi/v2/ticker/price", &[], None);
    let eth = prices.as_array().unwrap().iter().find(|p| p["symbol"] == "ETHUSDT").expect("every symbol");
    assert_eq!(eth["price"], "0", "no trade yet: {prices}");
    let (_, agg) = s.request("GET", "/fapi/v1/aggTrades?symbol=BTCUSDT", &[], None);
    assert_eq!((&agg[0]["a"], &agg[0]["m"]), (&trades[0]["id"], &serde_json::json!(true)));
    // One-way positions and isolated margin only: asked for, they are confirmed; the
    // other choices are refused.
    let ts = now_ms();
    let (status, body) = signed(&s, "GET", "/fapi/v1/positionSide/dual", &key, &secret, &format!("timestamp={ts}"));
    assert_eq!((status, &body["dualSidePosition"]), (200, &serde_json::json!(false)));
    let (status, body) = signed_body(&s, "/fapi/v1/positionSide/dual", &key, &secret, &format!("dualSidePosition=true&timestamp={ts}"));
    assert_eq!((status, body["code"].as_i64()), (400, Some(-1130)), "{body}");
    let (status, body) = signed_body(&s, "/fapi/v1/marginType", &key, &secret, &format!("symbol=BTCUSDT&marginType=ISOLATED&timestamp={ts}"));
    assert_eq!((status, body["code"].as_i64()), (200, Some(200)), "{body}");
    let (status, body) = signed_body(&s, "/fapi/v1/marginType", &key, &secret, &format!("symbol=BTCUSDT&marginType=CROSSED&timestamp={ts}"));
    assert_eq!((status, body["code"].as_i64()), (400, Some(-1130)), "{body}");
    let (status, body) = signed(&s, "GET", "/fapi/v1/commissionRate", &key, &secret, &format!("symbol=BTCUSDT&timestamp={ts}"));
    let (_, symbols) = s.request("GET", "/v1/symbols", &[], None);
    let btc = symbols.as_array().unwrap().iter().find(|x| x["symbol"] == "BTC-PERP").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!((dec(&body["makerCommissionRate"]), dec(&body["takerCommissionRate"])), (dec(&btc["makerFee"]), dec(&btc["takerFee"])));
}

/// Algo orders over signed HTTP: refusals with Binance's codes, a take-profit found by
/// algoId and by clientAlgoId, triggered by a trade into an order of its own.
#[test]
fn an_algo_order_is_refused_read_triggered_and_cancelled_as_binance_does() {
    let s = Server::start();
    let (key, secret) = trader(&s, "algo", "100000");
    let maker = s.funded("algo-maker", "100000");
    // A last price of 50000 and the caller long 0.002.
    s.limit(&maker, "SELL", "50000", "0.002");
    let params = format!("symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.002&timestamp={}", now_ms());
    assert_eq!(signed_body(&s, "/fapi/v1/order", &key, &secret, &params).0, 200);
    let algo = |params: &str| signed_body(&s, "/fapi/v1/algoOrder", &key, &secret, &format!("{params}&timestamp={}", now_ms()));
    for (params, code) in [
        ("symbol=BTCUSDT&side=SELL&type=TAKE_PROFIT_MARKET&triggerPrice=51000&closePosition=true", -1102),
        ("algoType=VP&symbol=BTCUSDT&side=SELL&type=TAKE_PROFIT_MARKET&triggerPrice=51000&closePosition=true", -1130),
        ("algoType=CONDITIONAL&symbol=BTCUSDT&side=SELL&type=TAKE_PROFIT_MARKET&triggerPrice=49000&closePosition=true", -2021),
        ("algoType=CONDITIONAL&symbol=BTCUSDT&side=SELL&type=TAKE_PROFIT_MARKET&triggerPrice=51000.05&closePosition=true", -4014),
        ("algoType=CONDITIONAL&symbol=BTCUSDT&side=SELL&type=TAKE_PROFIT&triggerPrice=51000&quantity=0.001", -1102),
    ] {
        let (status, body) = algo(params);
        assert_eq!((status, body["code"].as_i64()), (400, Some(code)), "{params}: {body}");
    }
    let params = format!("symbol=BTCUSDT&side=SELL&type=STOP_MARKET&stopPrice=45000&quantity=0.001&timestamp={}", now_ms());
    let (status, body) = signed_body(&s, "/fapi/v1/order", &key, &secret, &params);
    assert_eq!((status, body["code"].as_i64()), (400, Some(-4120)), "{body}");

    let (status, tp) = algo("algoType=CONDITIONAL&symbol=BTCUSDT&side=SELL&type=TAKE_PROFIT_MARKET&triggerPrice=51000&closePosition=true&clientAlgoId=tp-1");
    assert_eq!(status, 200, "{tp}");
    assert_eq!((tp["algoStatus"].as_str(), tp["orderType"].as_str(), tp["closePosition"].as_bool()), (Some("NEW"), Some("TAKE_PROFIT_MARKET"), Some(true)), "{tp}");
    let id = tp["algoId"].as_u64().expect("an integer algoId");
    let get = |params: &str| signed(&s, "GET", "/fapi/v1/algoOrder", &key, &secret, &format!("{params}&timestamp={}", now_ms()));
    assert_eq!(get(&format!("algoId={id}")).1, tp);
    assert_eq!(get("clientAlgoId=tp-1").1["algoId"], id, "found by clientAlgoId without a symbol");
    assert_eq!(get(&format!("algoId={}", id + 1024 * 1000)).1["code"], -2013);
    let (_, other) = algo("algoType=CONDITIONAL&symbol=BTCUSDT&side=SELL&type=STOP&triggerPrice=45000&price=44900&quantity=0.001&timeInForce=GTC");
    assert_eq!(other["price"], "44900", "{other}");
    let open = signed(&s, "GET", "/fapi/v1/openAlgoOrders", &key, &secret, &format!("timestamp={}", now_ms())).1;
    assert_eq!(open.as_array().map(Vec::len), Some(2), "{open}");

    // A trade at 51000 fires the take-profit: its order closes the whole long.
    let buyer = s.funded("algo-buyer", "100000");
    s.limit(&buyer, "BUY", "50900", "0.002");
    s.limit(&maker, "SELL", "51000", "0.001");
    s.limit(&buyer, "BUY", "51000", "0.001");
    common::eventually("the take-profit never triggered", 10, || get(&format!("algoId={id}")).1["algoStatus"] == "TRIGGERED");
    let done = get(&format!("algoId={id}")).1;
    let order = done["actualOrderId"].as_str().unwrap().to_owned();
    let (_, placed) = signed(&s, "GET", "/fapi/v1/order", &key, &secret, &format!("symbol=BTCUSDT&orderId={order}&timestamp={}", now_ms()));
    assert_eq!((placed["type"].as_str(), placed["status"].as_str(), placed["reduceOnly"].as_bool()), (Some("MARKET"), Some("FILLED"), Some(true)), "{placed}");
    assert_eq!(s.get(&key, "/v1/positions").1, serde_json::json!([]), "flat");

    // A trailing stop (ccxt's trailingPercent): 2 % behind the best price once 52000 is reached.
    let (status, trailing) = algo("algoType=CONDITIONAL&symbol=BTCUSDT&side=BUY&type=TRAILING_STOP_MARKET&callbackRate=2&activatePrice=52000&quantity=0.001");
    assert_eq!((status, trailing["code"].as_i64()), (400, Some(-2021)), "a buy's activation above the price (51000): {trailing}");
    let (status, trailing) = algo("algoType=CONDITIONAL&symbol=BTCUSDT&side=SELL&type=TRAILING_STOP_MARKET&callbackRate=2&activatePrice=52000&quantity=0.001");
    assert_eq!(status, 200, "{trailing}");
    assert_eq!(
        (trailing["orderType"].as_str(), trailing["priceRate"].as_str(), trailing["activatePrice"].as_str(), trailing["algoStatus"].as_str()),
        (Some("TRAILING_STOP_MARKET"), Some("2"), Some("52000"), Some("NEW")),
        "{trailing}"
    );

    // The stop and the trailing stop left are cancelled with the rest; cancelling the closed one is -2011.
    let (status, body) = signed(&s, "DELETE", "/fapi/v1/algoOpenOrders", &key, &secret, &format!("symbol=BTCUSDT&timestamp={}", now_ms()));
    assert_eq!((status, body["code"].as_i64()), (200, Some(200)), "{body}");
    let all = signed(&s, "GET", "/fapi/v1/allAlgoOrders", &key, &secret, &format!("symbol=BTCUSDT&timestamp={}", now_ms())).1;
    let statuses: Vec<&str> = all.as_array().unwrap().iter().map(|a| a["algoStatus"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["TRIGGERED", "CANCELED", "CANCELED"], "{all}");
    let (status, body) = signed(&s, "DELETE", "/fapi/v1/algoOrder", &key, &secret, &format!("algoId={id}&timestamp={}", now_ms()));
    assert_eq!((status, body["code"].as_i64()), (400, Some(-2011)), "{body}");
    consistent(&s);
}

#[test]
fn unmodified_ccxt_pro_watchers_see_book_trades_orders_fills_balance_and_position() {
    let s = Server::start();
    let (key_a, secret_a) = trader(&s, "pro-a", "100000");
    let (key_b, secret_b) = trader(&s, "pro-b", "100000");
    let maker = s.funded("pro-maker", "100000");
    s.limit(&maker, "BUY", "49000", "0.005");
    s.limit(&maker, "SELL", "51000", "0.003");
    let seen = ccxt("ccxt_pro_session.py", &[&s.url(""), &key_a, &secret_a, &key_b, &secret_b]);
    for watcher in ["book", "trades", "orders", "my_trades", "balance", "positions"] {
        assert!(seen.get(format!("{watcher}_error")).is_none(), "{watcher}: {seen}");
        let after = seen[format!("{watcher}_after")].as_f64().unwrap_or_else(|| panic!("{watcher} saw nothing: {seen}"));
        assert!(after < 2.0, "{watcher} saw it {after} s after the orders: {seen}");
    }
    assert_eq!(seen["book_first"]["bids"][0], serde_json::json!([49000.0, 0.005]), "{seen}");
    assert_eq!(seen["book_first"]["asks"][0], serde_json::json!([51000.0, 0.003]), "{seen}");
    assert_eq!(seen["book"]["bids"][0], serde_json::json!([49500.0, 0.002]), "A's bid on top once it rests: {seen}");
    assert!(seen["trades"].as_array().unwrap().iter().any(|t| t["price"] == 49500.0 && t["amount"] == 0.002 && t["side"] == "sell"), "{seen}");
    let order = seen["order_id"].as_str().unwrap();
    assert!(seen["orders"].as_array().unwrap().iter().any(|o| o["id"] == order && o["status"] == "closed" && o["filled"] == 0.002), "{seen}");
    assert_eq!(seen["my_trades"][0]["order"], order, "{seen}");
    assert_eq!((seen["my_trades"][0]["price"].as_f64(), seen["my_trades"][0]["takerOrMaker"].as_str()), (Some(49500.0), Some("maker")), "{seen}");
    let (_, balance) = s.get(&key_a, "/v1/balance");
    assert_eq!(seen["balance_total"].as_f64(), balance["total"].as_str().unwrap().parse::<f64>().ok(), "{seen} {balance}");
    assert_eq!(seen["positions"][0]["contracts"], 0.002, "{seen}");
    assert_eq!((seen["positions"][0]["side"].as_str(), seen["positions"][0]["entryPrice"].as_f64()), (Some("long"), Some(49500.0)), "{seen}");
    for request in seen["requests"].as_array().unwrap() {
        assert!(request.as_str().unwrap().contains(&s.url("/fapi/")), "only /fapi over HTTP: {request}");
    }
    consistent(&s);
}

#[test]
fn ccxts_stop_and_take_profit_outlive_a_kill_9_and_the_stop_fires_once() {
    let mut s = Server::start();
    let (key, secret) = trader(&s, "crash", "100000");
    let maker = s.funded("crash-maker", "100000");
    s.limit(&maker, "SELL", "50000", "0.002");
    let base = s.url("");
    let placed = ccxt("ccxt_restart.py", &[&base, &key, &secret, "place"]);
    assert_eq!(placed["position"], serde_json::json!([{"contracts": 0.002, "side": "long"}]), "{placed}");

    s.kill9();
    s.restart();
    let base = s.url("");
    let after = ccxt("ccxt_restart.py", &[&base, &key, &secret, "after"]);
    let open = after["open"].as_array().unwrap();
    let ids: Vec<&Value> = open.iter().map(|o| &o["id"]).collect();
    assert_eq!(ids, [&placed["stop"], &placed["take"]], "both kept across the crash: {after}");
    assert_eq!(after["open_after_cancel"].as_array().map(Vec::len), Some(1), "{after}");

    // Trades at 49000 fire the stop: its order closes the long, once (above the
    // position's bankruptcy price at 20x, 47500, below which no close is taken).
    let buyer = s.funded("crash-buyer", "100000");
    s.limit(&buyer, "BUY", "49000", "0.003");
    s.limit(&maker, "SELL", "49000", "0.001");
    common::eventually("the stop-loss never closed the position", 10, || s.get(&key, "/v1/positions").1 == serde_json::json!([]));
    // A second crash right after: replay must not fire it again.
    s.kill9();
    s.restart();
    let base = s.url("");
    let check = ccxt("ccxt_restart.py", &[&base, &key, &secret, "check"]);
    assert_eq!(check["position"], serde_json::json!([]), "{check}");
    let closed = check["closed"].as_array().unwrap();
    assert!(closed.iter().any(|o| o["id"] == placed["stop"] && o["status"] == "closed"), "the stop triggered: {check}");
    let sells: Vec<&Value> = check["orders"].as_array().unwrap().iter().filter(|o| o["side"] == "sell").collect();
    assert_eq!(sells.len(), 1, "one closing order, not two: {check}");
    assert_eq!((sells[0]["filled"].as_f64(), sells[0]["reduceOnly"].as_bool()), (Some(0.002), Some(true)), "{check}");
    consistent(&s);
}
