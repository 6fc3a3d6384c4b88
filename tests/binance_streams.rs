//! The Binance dialect's WebSocket (BINANCE.md, section 7) with a plain WebSocket client:
//! control messages, diff depth that chains to `GET /fapi/v1/depth`'s `lastUpdateId` and
//! rebuilds the book exactly, trades, and the user data stream behind a listen key.

mod common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::stream::MaybeTlsStream;
use async_tungstenite::tungstenite::{self, Message, WebSocket};
use common::{Server, ADMIN};
use serde_json::{json, Value};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

fn connect(s: &Server, path: &str) -> Ws {
    let (ws, response) = tungstenite::connect(s.url(path).replace("http://", "ws://")).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(response.status(), 101);
    if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    ws
}

/// The next text message as JSON; `None` once the server closed the connection.
fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return None,
            Ok(_) => {}
            Err(e) => panic!("no message within 5 s: {e}"),
        }
    }
}

fn ask(ws: &mut Ws, request: Value) -> Value {
    ws.send(Message::text(request.to_string())).unwrap();
    loop {
        let m = next(ws).expect("an answer");
        if m.get("id").is_some() {
            return m;
        }
    }
}

/// Applies `[price, quantity]` levels (absolute; "0" removes) to one side of a book.
fn apply(side: &mut BTreeMap<String, String>, levels: &Value) {
    for l in levels.as_array().unwrap() {
        let (p, q) = (l[0].as_str().unwrap().to_owned(), l[1].as_str().unwrap().to_owned());
        if q == "0" {
            side.remove(&p);
        } else {
            side.insert(p, q);
        }
    }
}

fn book_of(depth: &Value) -> [BTreeMap<String, String>; 2] {
    let mut book = [BTreeMap::new(), BTreeMap::new()];
    apply(&mut book[0], &depth["bids"]);
    apply(&mut book[1], &depth["asks"]);
    book
}

fn rest_depth(s: &Server) -> Value {
    let (status, depth) = s.request("GET", "/fapi/v1/depth?symbol=BTCUSDT&limit=1000", &[], None);
    assert_eq!(status, 200, "{depth}");
    depth
}

#[test]
fn diff_depth_chains_to_the_books_update_id_and_rebuilds_it_exactly() {
    let s = Server::start();
    let maker = s.funded("diff-maker", "1000000");
    let taker = s.funded("diff-taker", "1000000");
    s.limit(&maker, "BUY", "49000", "0.010");
    let mut ws = connect(&s, "/public/ws/1");
    let subscribed = json!(["btcusdt@depth@100ms", "btcusdt@aggTrade", "btcusdt@trade"]);
    assert_eq!(ask(&mut ws, json!({"method": "SUBSCRIBE", "params": subscribed, "id": 7})), json!({"result": null, "id": 7}));
    let listed = ask(&mut ws, json!({"method": "LIST_SUBSCRIPTIONS", "id": 8}));
    let mut names: Vec<&str> = listed["result"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["btcusdt@aggTrade", "btcusdt@depth@100ms", "btcusdt@trade"], "{listed}");
    let refused = ask(&mut ws, json!({"method": "SUBSCRIBE", "params": ["nosuchusdt@depth"], "id": 9}));
    assert_eq!(refused["error"]["code"], 2, "{refused}");
    assert_eq!(ask(&mut ws, json!({"method": "JUMP", "id": 10}))["error"]["code"], 2);

    // Book changes before and after a snapshot read in the middle, a trade, a cancel.
    for (i, price) in ["49100", "49200", "51000", "51100"].iter().enumerate() {
        let side = if i < 2 { "BUY" } else { "SELL" };
        s.limit(&maker, side, price, "0.003");
    }
    std::thread::sleep(Duration::from_millis(150));
    let snapshot = rest_depth(&s);
    let cancelled = s.limit(&maker, "SELL", "51200", "0.004");
    s.limit(&maker, "BUY", "49200", "0.002");
    let (status, body) = s.order(&taker, r#"{"symbol":"BTC-PERP","side":"BUY","type":"MARKET","quantity":"0.004","leverage":10}"#);
    assert_eq!(status, 200, "{body}");
    let id = cancelled["orderId"].as_str().unwrap();
    assert_eq!(s.request("DELETE", &format!("/v1/orders/{id}"), &[("x-api-key", &maker)], None).0, 200);
    let last = rest_depth(&s);
    let end = last["lastUpdateId"].as_u64().unwrap();

    // What ccxt does: skip diffs before the snapshot, start at the one holding it, then
    // each must chain to the one before.
    let start = snapshot["lastUpdateId"].as_u64().unwrap();
    let mut book = book_of(&snapshot);
    let (mut previous, mut applied, mut trades, mut aggs): (Option<u64>, usize, Vec<Value>, usize) = (None, 0, Vec::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while previous.is_none_or(|u| u < end) {
        assert!(Instant::now() < deadline, "no diff reached {end}");
        let m = next(&mut ws).expect("the stream stays open");
        match m["e"].as_str() {
            Some("trade") => trades.push(m),
            Some("aggTrade") => aggs += 1,
            Some("depthUpdate") => {
                assert_eq!(m["s"], "BTCUSDT");
                let (first, u, pu) = (m["U"].as_u64().unwrap(), m["u"].as_u64().unwrap(), m["pu"].as_u64().unwrap());
                assert_eq!(first, pu + 1, "{m}");
                if let Some(before) = previous {
                    assert_eq!(pu, before, "a gap in the diffs: {m}");
                }
                previous = Some(u);
                if u < start {
                    continue;
                }
                if applied == 0 {
                    assert!(first <= start + 1 && start <= u, "the first diff after the snapshot ({start}) holds it: {m}");
                }
                apply(&mut book[0], &m["b"]);
                apply(&mut book[1], &m["a"]);
                applied += 1;
            }
            _ => panic!("unexpected message {m}"),
        }
    }
    assert!(applied >= 1);
    assert_eq!(book, book_of(&last), "snapshot + diffs = the book now");
    assert_eq!(trades.len(), 2, "the market buy took two levels: {trades:?}");
    assert_eq!((trades[0]["p"].as_str(), trades[0]["q"].as_str(), trades[0]["m"].as_bool()), (Some("51000"), Some("0.003"), Some(false)));
    assert_eq!(aggs, 2);
}

#[test]
fn a_listen_key_carries_the_users_orders_fills_and_account_until_it_is_closed() {
    let s = Server::start();
    let (status, user) = s.request("POST", "/admin/v1/users", &[("x-admin-key", ADMIN)], Some(r#"{"userId":"listener"}"#));
    assert_eq!(status, 200, "{user}");
    assert_eq!(s.deposit("listener", "100000", "fund-listener").0, 200);
    let key = user["apiKey"].as_str().unwrap().to_owned();
    let other = s.funded("listener-other", "100000");
    let listen = |method: &str, key: &str| s.request(method, "/fapi/v1/listenKey", &[("x-mbx-apikey", key)], None);
    let (status, body) = listen("POST", &key);
    assert_eq!(status, 200, "{body}");
    let lk = body["listenKey"].as_str().unwrap().to_owned();
    assert_eq!(lk.len(), 64);
    assert_eq!(listen("POST", &key).1["listenKey"], lk.as_str(), "one key per user");
    assert_eq!(listen("PUT", &key), (200, json!({"listenKey": lk})));
    assert_eq!(listen("POST", "0000000000000001.nope").1["code"], -2015);
    assert_eq!(listen("POST", &other).1["listenKey"].as_str().map(|k| k != lk), Some(true));

    let mut ws = connect(&s, &format!("/private/ws?listenKey={lk}"));
    let placed = s.limit(&key, "BUY", "50000", "0.004");
    let update = next(&mut ws).expect("ORDER_TRADE_UPDATE");
    assert_eq!(update["e"], "ORDER_TRADE_UPDATE", "{update}");
    let o = &update["o"];
    assert_eq!((o["x"].as_str(), o["X"].as_str(), o["s"].as_str(), o["S"].as_str()), (Some("NEW"), Some("NEW"), Some("BTCUSDT"), Some("BUY")), "{update}");
    assert_eq!((o["q"].as_str(), o["p"].as_str(), o["z"].as_str()), (Some("0.004"), Some("50000"), Some("0")));
    let order_id = o["i"].as_u64().unwrap();
    let (_, fapi) = s.request("GET", "/v1/orders", &[("x-api-key", &key)], None);
    assert!(fapi.to_string().contains(placed["orderId"].as_str().unwrap()));

    // Two fills: the first partial, the second completes it; then the account.
    for qty in ["0.001", "0.003"] {
        let (status, body) = s.order(&other, &format!(r#"{{"symbol":"BTC-PERP","side":"SELL","type":"MARKET","quantity":"{qty}","leverage":10}}"#));
        assert_eq!(status, 200, "{body}");
    }
    let mut seen = Vec::new();
    while seen.iter().filter(|m: &&Value| m["e"] == "ACCOUNT_UPDATE").count() < 2 {
        seen.push(next(&mut ws).expect("updates"));
    }
    let trades: Vec<&Value> = seen.iter().filter(|m| m["e"] == "ORDER_TRADE_UPDATE").collect();
    assert_eq!(trades.len(), 2, "{seen:?}");
    let fields = |m: &Value| {
        let o = &m["o"];
        (o["i"].as_u64(), o["x"].as_str().map(str::to_owned), o["X"].as_str().map(str::to_owned), o["l"].as_str().map(str::to_owned), o["z"].as_str().map(str::to_owned), o["m"].as_bool())
    };
    let f = |x: &str| Some(x.to_owned());
    assert_eq!(fields(trades[0]), (Some(order_id), f("TRADE"), f("PARTIALLY_FILLED"), f("0.001"), f("0.001"), Some(true)));
    assert_eq!(fields(trades[1]), (Some(order_id), f("TRADE"), f("FILLED"), f("0.003"), f("0.004"), Some(true)));
    assert_eq!(trades[1]["o"]["L"], "50000");
    let account = seen.iter().rev().find(|m| m["e"] == "ACCOUNT_UPDATE").unwrap();
    assert_eq!(account["a"]["m"], "ORDER");
    assert_eq!((account["a"]["P"][0]["s"].as_str(), account["a"]["P"][0]["pa"].as_str(), account["a"]["P"][0]["ep"].as_str()), (Some("BTCUSDT"), Some("0.004"), Some("50000")), "{account}");
    let (_, balance) = s.get(&key, "/v1/balance");
    assert_eq!(account["a"]["B"][0]["wb"], balance["total"], "{account} {balance}");

    // A stop-loss (a conditional order, placed natively here): ALGO_UPDATE, with no
    // account change (it holds no margin until it triggers).
    let (status, stop) = s.post(&key, "/v1/conditional-orders", r#"{"symbol":"BTC-PERP","side":"SELL","type":"STOP_MARKET","triggerPrice":"45000","closePosition":true,"clientOrderId":"sl-1"}"#);
    assert_eq!(status, 200, "{stop}");
    let algo = next(&mut ws).expect("ALGO_UPDATE");
    assert_eq!(algo["e"], "ALGO_UPDATE", "{algo}");
    let o = &algo["o"];
    assert_eq!((o["X"].as_str(), o["o"].as_str(), o["caid"].as_str(), o["tp"].as_str(), o["cp"].as_bool()), (Some("NEW"), Some("STOP_MARKET"), Some("sl-1"), Some("45000"), Some(true)), "{algo}");

    // A deposit: ACCOUNT_UPDATE (DEPOSIT, the change and the wallet), and the native
    // user channel's balance.
    let mut request = s.url("/v1/stream").replace("http://", "ws://").into_client_request().unwrap();
    request.headers_mut().insert("x-api-key", key.parse().unwrap());
    let (mut native, _) = tungstenite::connect(request).unwrap();
    if let MaybeTlsStream::Plain(tcp) = native.get_ref() {
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    native.send(Message::text(json!({"op": "subscribe", "channels": ["user"]}).to_string())).unwrap();
    assert_eq!(next(&mut native).expect("subscribed")["op"], "subscribed");
    assert_eq!(s.deposit("listener", "500", "more-listener").0, 200);
    let deposit = next(&mut ws).expect("ACCOUNT_UPDATE");
    let (_, balance) = s.get(&key, "/v1/balance");
    assert_eq!((deposit["e"].as_str(), deposit["a"]["m"].as_str(), deposit["a"]["B"][0]["bc"].as_str()), (Some("ACCOUNT_UPDATE"), Some("DEPOSIT"), Some("500")), "{deposit}");
    assert_eq!(deposit["a"]["B"][0]["wb"], balance["total"], "{deposit} {balance}");
    let native_balance = next(&mut native).expect("a balance message");
    assert_eq!((native_balance["channel"].as_str(), native_balance["data"]["type"].as_str()), (Some("user"), Some("balance")), "{native_balance}");
    assert_eq!(native_balance["data"]["total"], balance["total"]);

    // A closed key ends the stream.
    assert_eq!(listen("DELETE", &key), (200, json!({})));
    let last = next(&mut ws).expect("listenKeyExpired");
    assert_eq!((last["e"].as_str(), last["listenKey"].as_str()), (Some("listenKeyExpired"), Some(lk.as_str())), "{last}");
    assert_eq!(next(&mut ws), None, "closed after it");
    assert_eq!(listen("PUT", &key).1["code"], -1125);
    let refused = tungstenite::connect(s.url(&format!("/ws/{lk}")).replace("http://", "ws://"));
    assert!(matches!(refused, Err(tungstenite::Error::Http(ref r)) if r.status() == 400), "a closed key opens no stream");
    let forged = format!("{}{}", &lk[..16], "0".repeat(48));
    let refused = tungstenite::connect(s.url(&format!("/private/ws?listenKey={forged}")).replace("http://", "ws://"));
    assert!(matches!(refused, Err(tungstenite::Error::Http(ref r)) if r.status() == 400), "nor does a forged one");
    // Opened again, it streams again.
    assert_eq!(listen("POST", &key).1["listenKey"], lk.as_str());
    let mut ws = connect(&s, &format!("/ws/{lk}"));
    s.limit(&key, "SELL", "52000", "0.001");
    assert_eq!(next(&mut ws).expect("an update")["o"]["x"], "NEW");
}

#[test]
fn mark_price_updates_follow_the_index_price() {
    let s = Server::start();
    let mut ws = connect(&s, "/market/ws/btcusdt@markPrice@1s");
    let index = |price: &str| {
        let (status, body) = s.request("POST", "/admin/v1/index-prices", &[("x-admin-key", ADMIN)], Some(&format!(r#"{{"symbol":"BTC-PERP","price":"{price}"}}"#)));
        assert_eq!(status, 200, "{body}");
    };
    index("50000");
    let first = next(&mut ws).expect("markPriceUpdate");
    assert_eq!((first["e"].as_str(), first["s"].as_str(), first["i"].as_str(), first["p"].as_str()), (Some("markPriceUpdate"), Some("BTCUSDT"), Some("50000"), Some("50000")), "{first}");
    let (_, premium) = s.request("GET", "/fapi/v1/premiumIndex?symbol=BTCUSDT", &[], None);
    assert_eq!((&first["r"], &first["T"]), (&premium["lastFundingRate"], &premium["nextFundingTime"]), "{first} {premium}");
    index("50100");
    let second = next(&mut ws).expect("another");
    assert_eq!(second["i"], "50100", "{second}");
}
