//! The Binance dialect's WebSocket (BINANCE.md, section 7): which paths open a session,
//! the stream names, the control messages, listen keys, and the events' shapes. Sessions,
//! their queues, bounds and fan-out are the native streams' (`api::stream`), which ask
//! this module only to parse and to render. The one piece of state here is the listen
//! keys' lifetimes ([`ListenKeys`]), made once by the server and shared by its cores.

use std::sync::Mutex;

use hmac::Mac;

use rustc_hash::FxHashMap;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{decimal, shapes};
use crate::accounts::{Account, Fill, OrderStatus, OrderView};
use crate::api::render::entry_price;
use crate::engine::symbol::units_to_usdt;
use crate::engine::{Conditional, SymbolSpec, UserId};
use crate::health::Followed;
use crate::shard::protocol::{BookDiff, Depth, MarkPrices, PublicTrade};
use crate::shard_map::ShardMap;

/// A stream a connection may follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Trade,
    AggTrade,
    /// Diff depth (`<s>@depth`, `@depth@100ms`, ...).
    Depth,
    BookTicker,
    /// `<s>@markPrice`: sent when the index price or funding moves the prices.
    MarkPrice,
}

impl Kind {
    /// What the symbol's owner must hand over for it.
    pub fn followed(self) -> Followed {
        match self {
            Self::Trade | Self::AggTrade => Followed::Trades,
            Self::Depth => Followed::Diffs,
            Self::BookTicker => Followed::Depth,
            Self::MarkPrice => Followed::Prices,
        }
    }
}

/// The names each kind is followed by, after `<symbol>@`. Every diff-depth name carries
/// the same diffs, made at most once every 100 ms.
const NAMES: [(&str, Kind); 10] = [
    ("trade", Kind::Trade),
    ("aggTrade", Kind::AggTrade),
    ("depth", Kind::Depth),
    ("depth@100ms", Kind::Depth),
    ("depth@250ms", Kind::Depth),
    ("depth@500ms", Kind::Depth),
    ("depth@0ms", Kind::Depth),
    ("bookTicker", Kind::BookTicker),
    ("markPrice", Kind::MarkPrice),
    ("markPrice@1s", Kind::MarkPrice),
];

/// A stream name the server serves: as Binance writes it (symbol in lower case).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topic {
    pub name: String,
    pub symbol: usize,
    pub kind: Kind,
}

/// `btcusdt` for `BTC-PERP`.
pub fn lower(spec: &SymbolSpec) -> String {
    shapes::name(spec).0.to_ascii_lowercase()
}

/// The stream `name` names, if the server serves it (`BTCUSDT@aggTrade` as well as
/// `btcusdt@aggTrade`).
pub fn topic(map: &ShardMap, name: &str) -> Option<Topic> {
    let (symbol, rest) = name.split_once('@')?;
    let symbol = symbol.to_ascii_lowercase();
    let index = map.symbols.iter().position(|s| lower(s) == symbol)?;
    let (suffix, kind) = NAMES.iter().find(|(n, _)| *n == rest)?;
    Some(Topic { name: format!("{symbol}@{suffix}"), symbol: index, kind: *kind })
}

/// Every name under which `kind` of the symbol `lower` is followed.
pub fn names(lower: &str, kind: Kind) -> impl Iterator<Item = String> + '_ {
    NAMES.iter().filter(move |(_, k)| *k == kind).map(move |(n, _)| format!("{lower}@{n}"))
}

/// What a WebSocket request's path and query ask for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Connect {
    /// `/stream?streams=`: each message wrapped as `{"stream": name, "data": event}`.
    pub combined: bool,
    /// Streams named by the path, followed from the start (unknown ones are ignored).
    pub streams: Vec<String>,
    /// A user data stream's listen key.
    pub listen_key: Option<String>,
}

/// Whether `path` (with `query`) is one of the dialect's WebSocket endpoints: `/ws`,
/// `/public/ws`, `/market/ws`, `/private/ws`, each with an optional `/<segment>` (a
/// stream, a listen key, or ccxt's connection number), `?listenKey=`, and the combined
/// `/stream?streams=a/b` under the same prefixes.
pub fn connect(path: &str, query: &str) -> Option<Connect> {
    let path = ["/public", "/market", "/private"].iter().find_map(|p| path.strip_prefix(p)).unwrap_or(path);
    let (combined, rest) = if let Some(rest) = path.strip_prefix("/ws") {
        (false, rest)
    } else {
        (true, path.strip_prefix("/stream")?)
    };
    let segment = match rest {
        "" | "/" => "",
        r => r.strip_prefix('/').filter(|s| !s.contains('/'))?,
    };
    let mut connect = Connect { combined, ..Connect::default() };
    let mut take = |name: &str| {
        if is_listen_key(name) {
            connect.listen_key = Some(name.to_owned());
        } else if name.contains('@') {
            connect.streams.push(name.to_owned());
        }
    };
    take(segment);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "listenKey" => take(&v),
            "streams" => v.split('/').for_each(&mut take),
            _ => {}
        }
    }
    Some(connect)
}

fn is_listen_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A control message: `{"method": "SUBSCRIBE", "params": [...], "id": 1}`.
#[derive(Deserialize)]
struct Request {
    method: String,
    #[serde(default)]
    params: Vec<Value>,
    #[serde(default)]
    id: Value,
}

/// What a control message asks.
#[derive(Debug, PartialEq)]
pub enum Control {
    Subscribe(Vec<Topic>),
    Unsubscribe(Vec<String>),
    List,
    /// `SET_PROPERTY` / `GET_PROPERTY` (`combined`): answered, changing nothing.
    Property,
}

/// Parses a control message: what it asks and its `id`, or the error reply to send.
pub fn control(map: &ShardMap, text: &str) -> Result<(Control, Value), String> {
    let request: Request = serde_json::from_str(text).map_err(|_| error(3, "Invalid JSON: expected {\"method\", \"params\", \"id\"}", &Value::Null))?;
    let id = request.id;
    let names = || -> Result<Vec<String>, String> {
        request.params.iter().take(200).map(|p| p.as_str().map(str::to_owned).ok_or_else(|| error(1, "Invalid value type: expected a stream name", &id))).collect()
    };
    let asked = match request.method.as_str() {
        "SUBSCRIBE" => {
            let mut topics = Vec::new();
            for name in names()? {
                topics.push(topic(map, &name).ok_or_else(|| error(2, &format!("Invalid request: unknown stream {name:?}"), &id))?);
            }
            Control::Subscribe(topics)
        }
        "UNSUBSCRIBE" => Control::Unsubscribe(names()?.iter().map(|n| topic(map, n).map_or_else(|| n.clone(), |t| t.name)).collect()),
        "LIST_SUBSCRIPTIONS" => Control::List,
        "SET_PROPERTY" | "GET_PROPERTY" => Control::Property,
        other => return Err(error(2, &format!("Invalid request: unknown method {other:?}"), &id)),
    };
    Ok((asked, id))
}

/// The answer to a control message.
pub fn result(result: Value, id: &Value) -> String {
    json!({ "result": result, "id": id }).to_string()
}

fn error(code: i32, msg: &str, id: &Value) -> String {
    json!({ "error": { "code": code, "msg": msg }, "id": id }).to_string()
}

// ----- Listen keys

/// How long a listen key lives without a keep-alive (ms).
pub const LISTEN_KEY_LIFE: i64 = 60 * 60 * 1000;

/// A user's listen key: the user's number and an HMAC of it under the server's signing
/// secret, 64 hex digits. One per user, derived rather than stored, so that it names the
/// user by itself and stays valid across a restart.
pub fn listen_key(signing_secret: &[u8], user: UserId) -> String {
    let mac = super::sign::mac(signing_secret, format!("listenKey {}", user.0).as_bytes()).finalize().into_bytes();
    format!("{:016x}{}", user.0, &hex::encode(mac)[..48])
}

/// The user a listen key belongs to, if it is one of the server's (checked in constant time).
pub fn listen_user(signing_secret: &[u8], key: &str) -> Option<UserId> {
    if !is_listen_key(key) {
        return None;
    }
    let user = UserId(u64::from_str_radix(&key[..16], 16).ok()?);
    let mac = super::sign::mac(signing_secret, format!("listenKey {}", user.0).as_bytes());
    let tail = hex::decode(&key[16..]).ok()?;
    mac.verify_truncated_left(&tail).is_ok().then_some(user)
}

/// The listen keys' lives, process-wide: until when each user's is valid, or that it was
/// closed. A key the process has not seen (one made before a restart) is valid until it
/// is kept alive or closed.
#[derive(Default)]
pub struct ListenKeys {
    until: Mutex<FxHashMap<UserId, Option<i64>>>,
}

impl ListenKeys {
    /// `POST`: (re)opens the user's key for [`LISTEN_KEY_LIFE`].
    pub fn open(&self, user: UserId, now: i64) {
        self.lock().insert(user, Some(now + LISTEN_KEY_LIFE));
    }

    /// `PUT`: extends an open key; `false` if it was closed or has expired.
    pub fn keep_alive(&self, user: UserId, now: i64) -> bool {
        let mut until = self.lock();
        match until.get(&user).copied() {
            Some(None) => false,
            Some(Some(t)) if t < now => false,
            _ => {
                until.insert(user, Some(now + LISTEN_KEY_LIFE));
                true
            }
        }
    }

    /// `DELETE`: closes the key; its streams end.
    pub fn close(&self, user: UserId) {
        self.lock().insert(user, None);
    }

    /// Whether the user's key may carry a stream now.
    pub fn valid(&self, user: UserId, now: i64) -> bool {
        match self.lock().get(&user) {
            None => true,
            Some(until) => until.is_some_and(|t| t >= now),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<UserId, Option<i64>>> {
        self.until.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `{"e": "listenKeyExpired", ...}`: the last message of a stream whose key expired or was closed.
pub fn listen_key_expired(key: &str, now: i64) -> String {
    json!({ "e": "listenKeyExpired", "E": now, "listenKey": key }).to_string()
}

// ----- Public events

/// `<s>@trade`.
pub fn trade(spec: &SymbolSpec, t: &PublicTrade, now: i64) -> String {
    json!({
        "e": "trade", "E": now, "T": t.time, "s": shapes::name(spec).0, "t": t.seq,
        "p": decimal(spec.ticks_to_price(t.price)), "q": decimal(spec.lots_to_quantity(t.quantity)),
        "X": "MARKET", "m": t.taker_side == crate::engine::Side::Sell,
    })
    .to_string()
}

/// `<s>@aggTrade` (each trade its own aggregate, as in `GET v1/aggTrades`).
pub fn agg_trade(spec: &SymbolSpec, t: &PublicTrade, now: i64) -> String {
    let mut event = shapes::agg_trade(spec, t);
    if let Some(o) = event.as_object_mut() {
        o.insert("e".to_owned(), "aggTrade".into());
        o.insert("E".to_owned(), now.into());
        o.insert("s".to_owned(), shapes::name(spec).0.into());
    }
    event.to_string()
}

fn levels(spec: &SymbolSpec, levels: &[(i64, i64)]) -> Vec<[String; 2]> {
    levels.iter().map(|(p, q)| [decimal(spec.ticks_to_price(*p)), decimal(spec.lots_to_quantity(*q))]).collect()
}

/// `<s>@depth`: the levels that changed, `"0"` for those gone.
pub fn depth_update(spec: &SymbolSpec, d: &BookDiff) -> String {
    json!({
        "e": "depthUpdate", "E": d.time, "T": d.time, "s": shapes::name(spec).0,
        "U": d.first, "u": d.last, "pu": d.previous, "b": levels(spec, &d.bids), "a": levels(spec, &d.asks),
    })
    .to_string()
}

/// `<s>@bookTicker`, from a depth read.
pub fn book_ticker(spec: &SymbolSpec, depth: &Depth, now: i64) -> String {
    let ticker = shapes::book_ticker(spec, depth.seq, depth.bids.first(), depth.asks.first(), now);
    json!({
        "e": "bookTicker", "u": depth.seq, "E": now, "T": now, "s": ticker["symbol"],
        "b": ticker["bidPrice"], "B": ticker["bidQty"], "a": ticker["askPrice"], "A": ticker["askQty"],
    })
    .to_string()
}

/// `<s>@markPrice`: the mark and index price, the funding rate (the last settled one)
/// and the next funding time, as `GET v1/premiumIndex` has them.
pub fn mark_price_update(spec: &SymbolSpec, p: &MarkPrices) -> String {
    let premium = shapes::premium_index(spec, p.index, p.mark, p.last_funding_rate, p.time, p.next_funding);
    json!({
        "e": "markPriceUpdate", "E": p.time, "s": premium["symbol"], "p": premium["markPrice"], "i": premium["indexPrice"],
        "P": premium["estimatedSettlePrice"], "r": premium["lastFundingRate"], "T": premium["nextFundingTime"],
    })
    .to_string()
}

// ----- The user data stream

/// What happened to an order, for `ORDER_TRADE_UPDATE`'s `x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Execution {
    New,
    Trade,
    Gone,
    Amendment,
}

/// `ORDER_TRADE_UPDATE`: the order as `GET v1/order` shows it, with `filled` its filled
/// quantity just after this execution (a batch's later fills are not in it yet).
pub fn order_trade_update(map: &ShardMap, v: &OrderView, execution: Execution, fill: Option<&Fill>, filled: i64, now: i64) -> String {
    let spec = &map.symbols[v.symbol];
    let order = shapes::order(map, v);
    let qty = |lots: i64| decimal(spec.lots_to_quantity(lots));
    let status = match execution {
        Execution::New => "NEW".into(),
        Execution::Trade if filled < v.quantity => "PARTIALLY_FILLED".into(),
        Execution::Trade => "FILLED".into(),
        Execution::Amendment => if filled > 0 { "PARTIALLY_FILLED" } else { "NEW" }.into(),
        Execution::Gone => order["status"].clone(),
    };
    let x = match execution {
        Execution::New => "NEW".into(),
        Execution::Trade => "TRADE".into(),
        Execution::Amendment => "AMENDMENT".into(),
        Execution::Gone if v.status == OrderStatus::Filled => "TRADE".into(),
        Execution::Gone => order["status"].clone(),
    };
    let f = fill;
    json!({
        "e": "ORDER_TRADE_UPDATE", "E": now, "T": f.map_or(v.updated_at, |f| f.time),
        "o": {
            "s": order["symbol"], "c": order["clientOrderId"], "S": order["side"], "o": order["type"],
            "f": order["timeInForce"], "q": order["origQty"], "p": order["price"], "ap": order["avgPrice"],
            "sp": "0", "x": x, "X": status, "i": order["orderId"],
            "l": qty(f.map_or(0, |f| f.quantity)), "z": qty(filled),
            "L": f.map_or_else(|| "0".to_owned(), |f| decimal(spec.ticks_to_price(f.price))),
            "n": f.map_or_else(|| "0".to_owned(), |f| units_to_usdt(f.fee).to_string()), "N": "USDT",
            "T": f.map_or(v.updated_at, |f| f.time), "t": f.map_or(0, |f| f.trade_seq),
            "b": "0", "a": "0", "m": f.is_some_and(|f| f.maker), "R": order["reduceOnly"],
            "wt": "CONTRACT_PRICE", "ot": order["origType"], "ps": "BOTH", "cp": false,
            "rp": f.map_or_else(|| "0".to_owned(), |f| units_to_usdt(f.pnl).to_string()),
            "V": order["selfTradePreventionMode"], "pm": "NONE", "gtd": order["goodTillDate"],
        },
    })
    .to_string()
}

/// `ACCOUNT_UPDATE`: the wallet and the position on `symbol`, after `reason` (`ORDER`,
/// `FUNDING_FEE`). The account's owner holds no mark price, so `up` (unrealized PnL) is
/// left out rather than made up; `GET v3/positionRisk` has it.
pub fn account_update(map: &ShardMap, account: &Account, symbol: usize, reason: &str, now: i64) -> String {
    let spec = &map.symbols[symbol];
    let p = account.positions.get(&symbol).copied().unwrap_or_default();
    let entry = entry_price(spec, &p);
    json!({
        "e": "ACCOUNT_UPDATE", "E": now, "T": now,
        "a": {
            "m": reason,
            "B": [{ "a": "USDT", "wb": units_to_usdt(account.total).to_string(), "cw": units_to_usdt(account.total).to_string(), "bc": "0" }],
            "P": [{
                "s": shapes::name(spec).0, "pa": decimal(spec.lots_to_quantity(p.size)), "ep": decimal(entry), "bep": decimal(entry),
                "cr": units_to_usdt(p.realized_pnl).to_string(), "mt": "isolated", "iw": units_to_usdt(p.margin).to_string(),
                "ps": "BOTH", "ma": "USDT",
            }],
        },
    })
    .to_string()
}

/// `ACCOUNT_UPDATE` after a deposit (`amount` > 0) or a withdrawal: the wallet, its
/// change (`bc`), no position.
pub fn balance_update(account: &Account, amount: i128, now: i64) -> String {
    let wallet = units_to_usdt(account.total).to_string();
    json!({
        "e": "ACCOUNT_UPDATE", "E": now, "T": now,
        "a": {
            "m": if amount >= 0 { "DEPOSIT" } else { "WITHDRAW" },
            "B": [{ "a": "USDT", "wb": wallet, "cw": wallet, "bc": units_to_usdt(amount).to_string() }],
            "P": [],
        },
    })
    .to_string()
}

/// `ALGO_UPDATE`: a conditional order (as `GET v1/algoOrder` shows it) that changed.
pub fn algo_update(map: &ShardMap, symbol: usize, c: &Conditional, now: i64) -> String {
    let a = shapes::algo_order(map, symbol, c);
    json!({
        "e": "ALGO_UPDATE", "T": c.updated, "E": now,
        "o": {
            "caid": a["clientAlgoId"], "aid": a["algoId"], "at": a["algoType"], "o": a["orderType"], "s": a["symbol"],
            "S": a["side"], "ps": "BOTH", "f": a["timeInForce"], "q": a["quantity"], "X": a["algoStatus"],
            "ai": a["actualOrderId"], "ap": "0", "aq": "0", "act": "0", "tp": a["triggerPrice"], "p": a["price"],
            "wt": a["workingType"], "pm": "NONE", "cp": a["closePosition"], "pP": false, "R": a["reduceOnly"],
            "tt": a["triggerTime"], "gtd": 0, "rm": c.reason.map_or("", |r| r.as_str()),
        },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_ccxt_and_python_binance_open() {
        assert_eq!(connect("/ws", ""), Some(Connect::default()));
        assert_eq!(connect("/public/ws/3", ""), Some(Connect::default()));
        let market = connect("/market/ws/btcusdt@aggTrade", "").unwrap();
        assert_eq!(market.streams, ["btcusdt@aggTrade"]);
        let key = "00000000000000071234567890abcdef1234567890abcdef1234567890abcdef";
        assert_eq!(connect("/private/ws", &format!("listenKey={key}")).unwrap().listen_key.as_deref(), Some(key));
        assert_eq!(connect(&format!("/ws/{key}"), "").unwrap().listen_key.as_deref(), Some(key));
        let combined = connect("/stream", "streams=btcusdt@trade/ethusdt@depth").unwrap();
        assert!(combined.combined);
        assert_eq!(combined.streams, ["btcusdt@trade", "ethusdt@depth"]);
        assert_eq!(connect("/v1/stream", ""), None);
        assert_eq!(connect("/wsx", ""), None);
        assert_eq!(connect("/ws/a/b", ""), None);
    }

    #[test]
    fn a_listen_key_names_its_user_and_only_the_server_makes_one() {
        let key = listen_key(b"server", UserId(42));
        assert_eq!(key.len(), 64);
        assert_eq!(listen_user(b"server", &key), Some(UserId(42)));
        assert_eq!(listen_user(b"other", &key), None);
        let forged = format!("{:016x}{}", 43, &key[16..]);
        assert_eq!(listen_user(b"server", &forged), None);
        let keys = ListenKeys::default();
        assert!(keys.valid(UserId(42), 0), "a key from before a restart");
        keys.open(UserId(42), 0);
        assert!(keys.valid(UserId(42), LISTEN_KEY_LIFE) && !keys.valid(UserId(42), LISTEN_KEY_LIFE + 1));
        assert!(keys.keep_alive(UserId(42), 10));
        assert!(keys.valid(UserId(42), LISTEN_KEY_LIFE + 10));
        keys.close(UserId(42));
        assert!(!keys.valid(UserId(42), 11) && !keys.keep_alive(UserId(42), 11));
    }
}
