//! Turning an HTTP request into an [`ApiRequest`] and the shard that must answer it.
//!
//! Runs on whichever shard accepted the connection. Everything that can be checked
//! without state is checked here (JSON shape, decimals against tick and lot, leverage,
//! ids), so a bad request is answered before it costs another core anything.

use rust_decimal::Decimal;
use serde::Deserialize;
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::error::{invalid, ApiError};
use rust_decimal::prelude::ToPrimitive;

use crate::accounts::{partition_of, partition_of_name, user_of_key, IncomeKind};
use crate::engine::symbol::usdt_to_units;
use crate::engine::units::{MAX_NOTIONAL, MAX_TICKS};
use crate::engine::{ClientOrderId, NewConditional, NewOrder, OrderId, OrderType, SelfTradePrevention, Side, TimeInForce, UserId, WorkingPrice};
use crate::ids::{self, IdKind};
use crate::shard::protocol::{AccountRequest, ConditionalRef, Interval, KlinePrice, OrderRef, SymbolRequest};
use crate::shard_map::ShardMap;

/// Where a request must be answered.
#[derive(Debug)]
pub enum Routed {
    /// By the owner of a symbol.
    Symbol(usize, SymbolRequest),
    /// By the owner of an account partition.
    Partition(u32, AccountRequest),
    /// Asked of each symbol's owner in turn; their lists answer together
    /// (`GET`/`DELETE /v1/conditional-orders` with no symbol: every symbol).
    EachSymbol(Vec<(usize, SymbolRequest)>),
    /// Orders placed one after another, each answered on its own (`POST /v1/orders/batch`).
    Batch { key: String, orders: Vec<Result<(usize, NewOrder), ApiError>> },
    /// From cold storage, once the partition's owner has authenticated the key;
    /// `before`: only orders created before this time (ms).
    History { partition: u32, key: String, symbol: Option<usize>, limit: usize, before: Option<i64> },
    Symbols,
    /// `GET /`: the live market page.
    Page,
    Health,
    Metrics,
    /// A consistency check on every shard.
    Check,
    Summary,
    InsuranceFund,
}

pub struct Input<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub api_key: Option<&'a str>,
    pub admin_key: Option<&'a str>,
    pub body: &'a mut [u8],
}

pub struct Limits<'a> {
    pub map: &'a ShardMap,
    pub admin_key: Option<&'a str>,
    pub max_json_depth: usize,
}

/// # Errors
/// The [`ApiError`] to answer with.
pub fn route(input: Input<'_>, limits: &Limits<'_>) -> Result<Routed, ApiError> {
    // The path's segments, on the stack: no route has more than five. A longer path keeps
    // its first ones and ends in "/", which no segment can be: it is answered as it would
    // be whole (a route that takes any rest asks for a key first, then finds nothing).
    let mut parts = [""; MAX_SEGMENTS];
    let mut n = 0;
    for segment in input.path.trim_end_matches('/').split('/').skip(1) {
        if n == MAX_SEGMENTS {
            parts[MAX_SEGMENTS - 1] = "/";
            break;
        }
        parts[n] = segment;
        n += 1;
    }
    let segments = &parts[..n];
    let query = Query::parse(input.query);
    let map = limits.map;
    let method = input.method;
    let private = || -> Result<(String, u32), ApiError> {
        let key = input.api_key.ok_or(ApiError::Unauthorized)?;
        let user = user_of_key(key).ok_or(ApiError::Unauthorized)?;
        Ok((key.to_owned(), partition_of(user)))
    };
    let routed = match (method, segments) {
        ("GET", []) => Routed::Page,
        ("GET", ["health"]) => Routed::Health,
        ("GET", ["metrics"]) => Routed::Metrics,
        ("GET", ["v1", "symbols"]) => Routed::Symbols,
        ("GET", ["v1", "depth"]) => {
            let symbol = query.symbol(map)?.ok_or_else(|| invalid("symbol is required"))?;
            Routed::Symbol(symbol, SymbolRequest::Depth { symbol, limit: query.limit(50, 1_000)? })
        }
        ("GET", ["v1", "trades"]) => {
            let symbol = query.symbol(map)?.ok_or_else(|| invalid("symbol is required"))?;
            Routed::Symbol(symbol, SymbolRequest::Trades { symbol, limit: query.limit(100, 1_000)? })
        }
        ("GET", ["v1", "candles" | "funding-rates"]) => {
            let symbol = query.symbol(map)?.ok_or_else(|| invalid("symbol is required"))?;
            let time = |name: &str| match query.get(name) {
                None => Ok(None),
                Some(v) => v.parse::<i64>().map(Some).map_err(|_| invalid(format!("{name} must be a time in ms"))),
            };
            let (start, end) = (time("startTime")?, time("endTime")?);
            if segments[1] == "funding-rates" {
                return Ok(Routed::Symbol(symbol, SymbolRequest::FundingHistory { symbol, start, end, limit: query.limit(100, 1_000)? }));
            }
            let interval = query.get("interval").ok_or_else(|| invalid("interval is required"))?;
            let interval = Interval::parse(interval).ok_or_else(|| invalid("interval must be one of 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M"))?;
            let price = match query.get("price") {
                None | Some("trade") => KlinePrice::Trade,
                Some("mark") => KlinePrice::Mark,
                Some("index") => KlinePrice::Index,
                Some(_) => return Err(invalid("price must be trade, mark or index")),
            };
            Routed::Symbol(symbol, SymbolRequest::Klines { symbol, price, interval, start, end, limit: query.limit(500, 1_500)? })
        }
        ("GET", ["v1", "ticker"]) => {
            let symbol = query.symbol(map)?.ok_or_else(|| invalid("symbol is required"))?;
            Routed::Symbol(symbol, SymbolRequest::Ticker { symbol })
        }
        ("POST", ["v1", "countdown"]) => {
            let (key, _) = private()?;
            check_depth(input.body, limits.max_json_depth)?;
            let body: CountdownBody = parse_json(input.body)?;
            let symbol = map.symbols.iter().position(|s| s.name == body.symbol).ok_or(ApiError::UnknownSymbol)?;
            if !(0..=crate::engine::MAX_COUNTDOWN_MS).contains(&body.countdown_time) {
                return Err(invalid("countdownTime must be between 0 and 86400000 ms"));
            }
            Routed::Symbol(symbol, SymbolRequest::Countdown { key, symbol, after_ms: body.countdown_time })
        }
        ("POST", ["v1", "orders", "batch"]) => {
            let (key, _) = private()?;
            check_depth(input.body, limits.max_json_depth)?;
            let list: Vec<serde_json::Value> = parse_json(input.body)?;
            if list.is_empty() || list.len() > MAX_BATCH {
                return Err(invalid(format!("a batch holds 1 to {MAX_BATCH} orders")));
            }
            let orders = list
                .into_iter()
                .map(|v| serde_json::from_value::<OrderBody>(v).map_err(|e| invalid(format!("invalid order: {e}")))?.validate(map))
                .collect();
            Routed::Batch { key, orders }
        }
        ("POST", ["v1", "orders"]) => {
            let (key, _) = private()?;
            check_depth(input.body, limits.max_json_depth)?;
            let body: OrderBody = parse_json(input.body)?;
            let (symbol, order) = body.validate(map)?;
            Routed::Symbol(symbol, SymbolRequest::PlaceOrder { key, symbol, order })
        }
        ("POST", ["v1", "conditional-orders"]) => {
            let (key, _) = private()?;
            check_depth(input.body, limits.max_json_depth)?;
            let body: ConditionalBody = parse_json(input.body)?;
            let (symbol, order) = body.validate(map)?;
            Routed::Symbol(symbol, SymbolRequest::PlaceConditional { key, symbol, order })
        }
        ("GET" | "DELETE", ["v1", "conditional-orders"]) => {
            let (key, _) = private()?;
            let symbols: Vec<usize> = match query.symbol(map)? {
                Some(symbol) => vec![symbol],
                None => (0..map.symbols.len()).collect(),
            };
            let closed = match query.get("closed") {
                None | Some("false") => false,
                Some("true") if method == "GET" => true,
                Some(_) => return Err(invalid("closed must be true or false, and only for GET")),
            };
            let ask = |symbol| match method {
                "GET" => SymbolRequest::Conditionals { key: key.clone(), symbol, closed },
                _ => SymbolRequest::CancelConditional { key: key.clone(), symbol, target: None },
            };
            Routed::EachSymbol(symbols.into_iter().map(|s| (s, ask(s))).collect())
        }
        ("GET" | "DELETE", ["v1", "conditional-orders", rest @ ..]) => {
            let (key, _) = private()?;
            let (symbol, target) = match rest {
                ["by-client-id", cid] => {
                    let symbol = query.symbol(map)?.ok_or_else(|| invalid("symbol is required with a clientOrderId"))?;
                    (symbol, ConditionalRef::Client(client_id_in_path(cid)?))
                }
                [id] => {
                    let absent = if method == "GET" { ApiError::NotFound } else { ApiError::OrderNotOpen };
                    let (symbol_key, n) = id.parse::<uuid::Uuid>().ok().and_then(|u| ids::decode(IdKind::Conditional, &u)).ok_or(absent.clone())?;
                    (map.symbols.iter().position(|s| s.key == symbol_key).ok_or(absent)?, ConditionalRef::Id(n))
                }
                _ => return Err(ApiError::NotFound),
            };
            let req = match method {
                "GET" => SymbolRequest::GetConditional { key, symbol, target },
                _ => SymbolRequest::CancelConditional { key, symbol, target: Some(target) },
            };
            Routed::Symbol(symbol, req)
        }
        ("GET", ["v1", "orders", "history"]) => {
            let (key, p) = private()?;
            let before = match query.get("before") {
                None => None,
                Some(v) => Some(v.parse::<i64>().ok().filter(|ms| *ms > 0).ok_or_else(|| invalid("before must be a time in ms"))?),
            };
            Routed::History { partition: p, key, symbol: query.symbol(map)?, limit: query.limit(100, 1_000)?, before }
        }
        ("GET", ["v1", "orders"]) => {
            let (key, p) = private()?;
            Routed::Partition(p, AccountRequest::OpenOrders { key, symbol: query.symbol(map)? })
        }
        ("DELETE", ["v1", "orders"]) => {
            let (key, p) = private()?;
            Routed::Partition(p, AccountRequest::CancelAll { key, symbol: query.symbol(map)? })
        }
        ("GET" | "DELETE" | "PATCH", ["v1", "orders", rest @ ..]) => {
            let (key, p) = private()?;
            let target = match rest {
                // Percent-decoded: a clientOrderId may hold `/`, sent as `%2F`.
                ["by-client-id", cid] => OrderRef::Client(client_id_in_path(cid)?),
                [id] => order_ref(id),
                _ => return Err(ApiError::NotFound),
            };
            let req = match method {
                "GET" => AccountRequest::GetOrder { key, target },
                "DELETE" => AccountRequest::CancelOrder { key, target },
                _ => {
                    check_depth(input.body, limits.max_json_depth)?;
                    let body: AmendBody = parse_json(input.body)?;
                    if body.price.is_none() && body.quantity.is_none() {
                        return Err(invalid("price or quantity is required"));
                    }
                    let price = body.price.as_deref().map(|p| decimal(p, "price")).transpose()?;
                    let quantity = body.quantity.as_deref().map(|q| decimal(q, "quantity")).transpose()?;
                    AccountRequest::AmendOrder { key, target, price, quantity }
                }
            };
            Routed::Partition(p, req)
        }
        ("GET", ["v1", "fills"]) => {
            let (key, p) = private()?;
            Routed::Partition(p, AccountRequest::Fills { key, symbol: query.symbol(map)?, limit: query.limit(100, 10_000)? })
        }
        ("GET", ["v1", "premium-index"]) => {
            let symbol = query.symbol(map)?.ok_or_else(|| invalid("symbol is required"))?;
            Routed::Symbol(symbol, SymbolRequest::PremiumIndex { symbol })
        }
        ("GET", ["v1", "insurance-fund"]) => Routed::InsuranceFund,
        ("GET", ["v1", "income"]) => {
            let (key, p) = private()?;
            let kind = match query.get("type") {
                None => None,
                Some(t) => Some(
                    IncomeKind::ALL
                        .into_iter()
                        .find(|k| k.as_str() == t)
                        .ok_or_else(|| invalid("type must be REALIZED_PNL, COMMISSION, FUNDING_FEE, LIQUIDATION or TRANSFER"))?,
                ),
            };
            Routed::Partition(p, AccountRequest::Income { key, symbol: query.symbol(map)?, kind, limit: query.limit(100, 1_000)? })
        }
        ("POST", ["admin", "v1", "index-prices"]) => {
            admin(input.admin_key, limits.admin_key)?;
            check_depth(input.body, limits.max_json_depth)?;
            let body: IndexPriceBody = parse_json(input.body)?;
            let symbol = map.symbols.iter().position(|x| x.name == body.symbol).ok_or(ApiError::UnknownSymbol)?;
            let spec = &map.symbols[symbol];
            let price = decimal(&body.price, "price")?;
            if price <= Decimal::ZERO {
                return Err(invalid("price must be greater than zero"));
            }
            // Off-tick prices are rounded to the nearest tick.
            let ticks = (price / spec.tick_size).round().to_i64().filter(|t| (1..=MAX_TICKS).contains(t));
            let price = ticks.ok_or_else(|| invalid("price is out of range"))?;
            Routed::Symbol(symbol, SymbolRequest::IndexPrice { symbol, price })
        }
        ("POST", ["admin", "v1", "funding"]) => {
            admin(input.admin_key, limits.admin_key)?;
            check_depth(input.body, limits.max_json_depth)?;
            let body: SymbolBody = parse_json(input.body)?;
            let symbol = map.symbols.iter().position(|x| x.name == body.symbol).ok_or(ApiError::UnknownSymbol)?;
            Routed::Symbol(symbol, SymbolRequest::Funding { symbol })
        }
        ("GET", ["v1", "balance"]) => {
            let (key, p) = private()?;
            Routed::Partition(p, AccountRequest::Balance { key })
        }
        ("GET", ["v1", "positions"]) => {
            let (key, p) = private()?;
            Routed::Partition(p, AccountRequest::Positions { key })
        }
        ("POST", ["admin", "v1", "check"]) => {
            admin(input.admin_key, limits.admin_key)?;
            Routed::Check
        }
        ("GET", ["admin", "v1", "summary"]) => {
            admin(input.admin_key, limits.admin_key)?;
            Routed::Summary
        }
        ("POST", ["admin", "v1", "users"]) => {
            admin(input.admin_key, limits.admin_key)?;
            check_depth(input.body, limits.max_json_depth)?;
            let body: UserBody = parse_json(input.body)?;
            Routed::Partition(partition_of_name(&body.user_id), AccountRequest::CreateUser { name: body.user_id })
        }
        ("POST", ["admin", "v1", "deposits"]) => {
            admin(input.admin_key, limits.admin_key)?;
            check_depth(input.body, limits.max_json_depth)?;
            let body: DepositBody = parse_json(input.body)?;
            if body.currency != "USDT" {
                return Err(invalid("currency must be USDT"));
            }
            let amount = decimal(&body.amount, "amount")?;
            let amount = usdt_to_units(amount).ok_or_else(|| invalid("amount has more than 8 decimals or is too large"))?;
            if amount == 0 {
                return Err(invalid("amount must not be zero"));
            }
            if body.transfer_id.is_empty() || body.transfer_id.len() > 64 {
                return Err(invalid("transferId must be 1-64 characters"));
            }
            let p = partition_of_name(&body.user_id);
            Routed::Partition(p, AccountRequest::Transfer { name: body.user_id, amount, transfer_id: body.transfer_id })
        }
        (_, ["health" | "metrics"] | ["v1", ..] | ["admin", ..]) if known_path(segments) => {
            return Err(ApiError::MethodNotAllowed);
        }
        _ => return Err(ApiError::NotFound),
    };
    Ok(routed)
}

fn known_path(segments: &[&str]) -> bool {
    matches!(
        segments,
        ["health"] | ["metrics"]
            | ["v1", "symbols" | "depth" | "trades" | "orders" | "conditional-orders" | "fills" | "balance" | "positions" | "premium-index" | "insurance-fund" | "income"]
            | ["v1", "orders" | "conditional-orders", ..]
            | ["admin", "v1", "users" | "deposits" | "summary" | "check" | "index-prices" | "funding"]
    )
}

/// A clientOrderId in a path, percent-decoded (it may hold `/`, sent as `%2F`).
fn client_id_in_path(text: &str) -> Result<ClientOrderId, ApiError> {
    let cid = percent_encoding::percent_decode_str(text).decode_utf8().map_err(|_| invalid("clientOrderId is not UTF-8"))?;
    ClientOrderId::new(&cid).map_err(|e| invalid(e.to_string()))
}

/// The admin key check. An empty or blank key never grants admin, whatever is
/// configured; the two keys are compared as SHA-256 digests in constant time, so neither
/// the time nor an early exit on length tells anything about the configured one.
fn admin(given: Option<&str>, configured: Option<&str>) -> Result<(), ApiError> {
    let (Some(given), Some(configured)) = (given, configured.filter(|c| !c.trim().is_empty())) else {
        return Err(ApiError::Unauthorized);
    };
    let digest = |key: &str| -> [u8; 32] { sha2::Sha256::digest(key.as_bytes()).into() };
    let ok: bool = digest(given).ct_eq(&digest(configured)).into();
    if ok { Ok(()) } else { Err(ApiError::Unauthorized) }
}

/// An order id from a URL; one that is not ours becomes an id that matches nothing.
pub(crate) fn order_ref(text: &str) -> OrderRef {
    text.parse::<uuid::Uuid>()
        .ok()
        .and_then(|u| ids::decode(IdKind::Order, &u))
        .map_or(OrderRef::Id(OrderId(u64::MAX), 0), |(key, n)| OrderRef::Id(OrderId(n), key))
}

/// Refuses JSON nested deeper than `max` before any parser sees it.
fn check_depth(body: &[u8], max: usize) -> Result<(), ApiError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(invalid(format!("JSON nested deeper than {max}")));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

thread_local! {
    /// simd-json's working buffers, reused by every body this thread (a core) parses:
    /// parsing never waits, so one set serves them all, grown at most to the body limit.
    static JSON_BUFFERS: std::cell::RefCell<simd_json::Buffers> = std::cell::RefCell::new(simd_json::Buffers::default());
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &mut [u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(invalid("a JSON body is required"));
    }
    JSON_BUFFERS
        .with_borrow_mut(|buffers| simd_json::serde::from_slice_with_buffers(body, buffers))
        .map_err(|e| invalid(format!("invalid JSON body: {e}")))
}

fn decimal(text: &str, field: &str) -> Result<Decimal, ApiError> {
    let ok = !text.is_empty() && text.len() <= 40 && text.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
    // Exactly as written, or refused: a value with more digits than a decimal holds is
    // never rounded into one that passes.
    let value = if ok { Decimal::from_str_exact(text).ok() } else { None };
    value.ok_or_else(|| invalid(format!("{field} must be a decimal string of at most 28 significant digits")))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserBody {
    user_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexPriceBody {
    symbol: String,
    price: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SymbolBody {
    symbol: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DepositBody {
    user_id: String,
    currency: String,
    amount: String,
    transfer_id: String,
}

/// `PATCH /v1/orders/{id}`: a new price and/or total quantity.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmendBody {
    price: Option<String>,
    quantity: Option<String>,
}

/// `POST /v1/countdown`: the user's dead man's switch on a symbol.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CountdownBody {
    symbol: String,
    countdown_time: i64,
}

/// Segments of a path that routing looks at (see [`route`]).
const MAX_SEGMENTS: usize = 8;

/// Orders one `POST /v1/orders/batch` may carry (as Binance's `batchOrders`).
pub(crate) const MAX_BATCH: usize = 5;

/// The latest `goodTillDate` (Binance's: 9999-12-31T23:59:59Z).
const MAX_GOOD_TILL: i64 = 253_402_300_799_000;

/// A new order as `POST /v1/orders` takes it (and the Binance dialect builds it).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OrderBody {
    pub symbol: String,
    pub side: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub price: Option<String>,
    pub quantity: String,
    pub leverage: Option<u32>,
    pub time_in_force: Option<String>,
    pub reduce_only: Option<bool>,
    pub client_order_id: Option<String>,
    pub self_trade_prevention_mode: Option<String>,
    /// With `timeInForce` GTD: good till this time (ms since the epoch).
    pub good_till_date: Option<i64>,
}

impl OrderBody {
    pub(crate) fn validate(self, map: &ShardMap) -> Result<(usize, NewOrder), ApiError> {
        let symbol = map.symbols.iter().position(|s| s.name == self.symbol).ok_or(ApiError::UnknownSymbol)?;
        let spec = &map.symbols[symbol];
        let side = side(&self.side)?;
        let quantity = spec
            .quantity_to_lots(decimal(&self.quantity, "quantity")?)
            .map_err(|e| invalid(format!("quantity {e}")))?;
        let leverage = self.leverage.unwrap_or(1);
        if !(1..=spec.max_leverage).contains(&leverage) {
            return Err(invalid(format!("leverage must be between 1 and {}", spec.max_leverage)));
        }
        let kind = match (self.kind.as_str(), self.price, self.time_in_force.as_deref()) {
            ("LIMIT", None, _) => return Err(invalid("price is required for LIMIT orders")),
            ("LIMIT", Some(price), tif) => {
                let price = spec.price_to_ticks(decimal(&price, "price")?).map_err(|e| invalid(format!("price {e}")))?;
                let tif = match tif.unwrap_or("GTC") {
                    // A GTC order with an expiry (`good_till`, below).
                    "GTC" | "GTD" => TimeInForce::Gtc,
                    "IOC" => TimeInForce::Ioc,
                    "FOK" => TimeInForce::Fok,
                    "POST_ONLY" => TimeInForce::PostOnly,
                    _ => return Err(invalid("timeInForce must be GTC, GTD, IOC, FOK or POST_ONLY")),
                };
                if spec.notional(price, quantity) > i128::from(MAX_NOTIONAL) {
                    return Err(invalid("order notional is too large"));
                }
                OrderType::Limit { price, tif }
            }
            ("MARKET", None, None) => OrderType::Market,
            ("MARKET", Some(_), _) => return Err(invalid("price is not allowed for MARKET orders")),
            ("MARKET", None, Some(_)) => return Err(invalid("timeInForce is not allowed for MARKET orders")),
            _ => return Err(invalid("type must be LIMIT or MARKET")),
        };
        let good_till = match (self.time_in_force.as_deref(), self.good_till_date) {
            (Some("GTD"), None) => return Err(invalid("goodTillDate is required for timeInForce GTD")),
            (Some("GTD"), Some(t)) if t <= crate::shard::core::now_ms() || t > MAX_GOOD_TILL => {
                return Err(invalid("goodTillDate must be a time in ms in the future (at most 253402300799000)"));
            }
            (Some("GTD"), Some(t)) => t,
            (_, Some(_)) => return Err(invalid("goodTillDate is only for timeInForce GTD")),
            (_, None) => 0,
        };
        let stp = match self.self_trade_prevention_mode.as_deref() {
            None => spec.self_trade_prevention,
            Some(mode) => SelfTradePrevention::parse(mode)
                .ok_or_else(|| invalid("selfTradePreventionMode must be EXPIRE_TAKER, EXPIRE_MAKER or EXPIRE_BOTH (a user never trades with themself)"))?,
        };
        let client_order_id = self
            .client_order_id
            .map(|c| ClientOrderId::new(&c))
            .transpose()
            .map_err(|e| invalid(e.to_string()))?;
        Ok((
            symbol,
            NewOrder {
                id: OrderId(0),
                user: UserId(0),
                side,
                kind,
                quantity,
                leverage,
                reduce_only: self.reduce_only.unwrap_or(false),
                client_order_id,
                locked_margin: 0,
                timestamp: 0,
                stp,
                good_till,
            },
        ))
    }
}

fn side(text: &str) -> Result<Side, ApiError> {
    match text {
        "BUY" => Ok(Side::Buy),
        "SELL" => Ok(Side::Sell),
        _ => Err(invalid("side must be BUY or SELL")),
    }
}

/// A conditional order as `POST /v1/conditional-orders` takes it (and the Binance
/// dialect builds it).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConditionalBody {
    pub symbol: String,
    pub side: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub trigger_price: Option<String>,
    /// A trailing stop's: the price that activates it (else it is active at once), and
    /// how far back (in percent) from its best price it fires.
    pub activation_price: Option<String>,
    pub callback_rate: Option<String>,
    pub working_type: Option<String>,
    pub price: Option<String>,
    pub time_in_force: Option<String>,
    pub quantity: Option<String>,
    pub reduce_only: Option<bool>,
    pub close_position: Option<bool>,
    pub client_order_id: Option<String>,
}

impl ConditionalBody {
    pub(crate) fn validate(self, map: &ShardMap) -> Result<(usize, NewConditional), ApiError> {
        let symbol = map.symbols.iter().position(|s| s.name == self.symbol).ok_or(ApiError::UnknownSymbol)?;
        let spec = &map.symbols[symbol];
        let side = side(&self.side)?;
        let (kind, limited) = NewConditional::parse_type(&self.kind)
            .ok_or_else(|| invalid("type must be STOP_MARKET, TAKE_PROFIT_MARKET, STOP, TAKE_PROFIT or TRAILING_STOP_MARKET"))?;
        let ticks = |text: &str, field: &str| spec.price_to_ticks(decimal(text, field)?).map_err(|e| invalid(format!("{field} {e}")));
        let trailing = kind == crate::engine::ConditionalKind::Trailing;
        let (trigger, callback) = match (trailing, self.trigger_price.as_deref(), self.activation_price.as_deref(), self.callback_rate.as_deref()) {
            (false, Some(t), None, None) => (ticks(t, "triggerPrice")?, 0),
            (false, None, _, _) => return Err(invalid("triggerPrice is required")),
            (false, Some(_), _, _) => return Err(invalid("activationPrice and callbackRate are for TRAILING_STOP_MARKET only")),
            (true, Some(_), _, _) => return Err(invalid("a TRAILING_STOP_MARKET has an activationPrice, not a triggerPrice")),
            (true, None, _, None) => return Err(invalid("callbackRate is required for TRAILING_STOP_MARKET")),
            (true, None, activation, Some(rate)) => {
                let callback = crate::engine::conditional::callback_of(decimal(rate, "callbackRate")?)
                    .ok_or_else(|| invalid("callbackRate must be 0.1 to 10 (percent) in steps of 0.1"))?;
                (activation.map(|a| ticks(a, "activationPrice")).transpose()?.unwrap_or(0), callback)
            }
        };
        let working = match self.working_type.as_deref() {
            None => WorkingPrice::Last,
            Some(w) => WorkingPrice::parse(w).ok_or_else(|| invalid("workingType must be CONTRACT_PRICE or MARK_PRICE"))?,
        };
        let (price, tif) = match (limited, self.price.as_deref(), self.time_in_force.as_deref()) {
            (true, None, _) => return Err(invalid("price is required for STOP and TAKE_PROFIT")),
            (true, Some(p), tif) => {
                let tif = match tif {
                    None => TimeInForce::Gtc,
                    Some(t) => TimeInForce::parse(t).ok_or_else(|| invalid("timeInForce must be GTC, IOC, FOK or POST_ONLY"))?,
                };
                (Some(ticks(p, "price")?), tif)
            }
            (false, Some(_), _) => return Err(invalid("price is not allowed for STOP_MARKET and TAKE_PROFIT_MARKET")),
            (false, None, Some(_)) => return Err(invalid("timeInForce is not allowed for STOP_MARKET and TAKE_PROFIT_MARKET")),
            (false, None, None) => (None, TimeInForce::Gtc),
        };
        let close_position = self.close_position.unwrap_or(false);
        let reduce_only = self.reduce_only.unwrap_or(false);
        let quantity = match (close_position, self.quantity.as_deref()) {
            (true, _) if limited || trailing => return Err(invalid("closePosition is only for STOP_MARKET and TAKE_PROFIT_MARKET")),
            (true, Some(_)) => return Err(invalid("quantity is not allowed with closePosition (the whole position closes)")),
            (true, None) if reduce_only => return Err(invalid("reduceOnly is not allowed with closePosition (it always reduces)")),
            (true, None) => 0,
            (false, None) => return Err(invalid("quantity is required (or closePosition)")),
            (false, Some(q)) => spec.quantity_to_lots(decimal(q, "quantity")?).map_err(|e| invalid(format!("quantity {e}")))?,
        };
        if price.is_some_and(|p| spec.notional(p, quantity) > i128::from(MAX_NOTIONAL)) {
            return Err(invalid("order notional is too large"));
        }
        let client_order_id = self.client_order_id.map(|c| ClientOrderId::new(&c)).transpose().map_err(|e| invalid(e.to_string()))?;
        let order = NewConditional {
            user: UserId(0),
            side,
            kind,
            trigger,
            working,
            price,
            tif,
            quantity,
            close_position,
            reduce_only,
            client_order_id,
            timestamp: 0,
            callback,
        };
        Ok((symbol, order))
    }
}

struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Self { pairs: q.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default() }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    fn symbol(&self, map: &ShardMap) -> Result<Option<usize>, ApiError> {
        self.get("symbol")
            .map(|s| map.symbols.iter().position(|x| x.name == s).ok_or(ApiError::UnknownSymbol))
            .transpose()
    }

    fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| invalid(format!("limit must be between 1 and {max}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ShardMap {
        ShardMap::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shards/default.toml")).unwrap()
    }

    fn post(body: &str) -> Result<Routed, ApiError> {
        let mut bytes = body.as_bytes().to_vec();
        let map = map();
        let input = Input {
            method: "POST",
            path: "/v1/orders",
            query: None,
            api_key: Some("0000000100000001.000000000000000000000000000000000000000000000000"),
            admin_key: None,
            body: &mut bytes,
        };
        route(input, &Limits { map: &map, admin_key: None, max_json_depth: 8 })
    }

    fn error(body: &str) -> ApiError {
        post(body).unwrap_err()
    }

    #[test]
    fn orders_are_validated_at_the_edge() {
        let ok = r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"50000.5","quantity":"0.010","leverage":10}"#;
        assert!(matches!(post(ok), Ok(Routed::Symbol(0, SymbolRequest::PlaceOrder { .. }))));
        for bad in [
            r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"50000.55","quantity":"0.010"}"#,
            r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"50000.5","quantity":"0.0105"}"#,
            r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":50000.5,"quantity":"0.010"}"#,
            r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","quantity":"0.010"}"#,
            r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"1","quantity":"0"}"#,
            r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"1","quantity":"-1"}"#,
            r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"1","quantity":"0.001","leverage":101}"#,
            r#"{"symbol":"BTC-PERP","side":"HOLD","type":"LIMIT","price":"1","quantity":"0.001"}"#,
            r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"99999999999999999999999999999","quantity":"0.001"}"#,
            r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"1e5","quantity":"0.001"}"#,
            // Rounds to 50000.5 and 0.010 if read inexactly.
            r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"50000.50000000000000000000000001","quantity":"0.010"}"#,
            r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"50000.5","quantity":"0.0100000000000000000000000000001"}"#,
            r#"{"symbol":"BTC-PERP","side":"BUY","type":"MARKET","price":"1","quantity":"0.001"}"#,
            r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"1","quantity":"0.001","clientOrderId":"no spaces"}"#,
            r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"1000000000","quantity":"1000000"}"#,
            r#"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["#,
            r#"{"symbol":"BTC-PERP""#,
            "",
        ] {
            assert!(matches!(error(bad), ApiError::InvalidRequest(_)), "{bad}: {:?}", error(bad));
        }
        assert_eq!(error(r#"{"symbol":"DOGE-PERP","side":"BUY","type":"MARKET","quantity":"1"}"#), ApiError::UnknownSymbol);
    }

    #[test]
    fn a_blank_admin_key_never_grants_admin() {
        assert!(admin(Some("secret"), Some("secret")).is_ok());
        for (given, configured) in [(Some(""), Some("")), (Some(" "), Some(" ")), (Some("\t"), Some("\t")), (None, Some("secret")), (Some("secret"), None)] {
            assert_eq!(admin(given, configured), Err(ApiError::Unauthorized), "{given:?} against {configured:?}");
        }
        for wrong in ["secre", "secret ", "secrets", "SECRET", ""] {
            assert_eq!(admin(Some(wrong), Some("secret")), Err(ApiError::Unauthorized), "{wrong}");
        }
    }

    #[test]
    fn a_path_longer_than_routing_looks_at_is_answered_as_it_would_be_whole() {
        let map = map();
        let key = "0000000100000001.000000000000000000000000000000000000000000000000";
        let answer = |method, path: &str, api_key| {
            let mut body = Vec::new();
            let input = Input { method, path, query: None, api_key, admin_key: None, body: &mut body };
            route(input, &Limits { map: &map, admin_key: None, max_json_depth: 8 }).err()
        };
        let long = format!("/v1/orders{}", "/a".repeat(20));
        assert_eq!(answer("GET", long.as_str(), None), Some(ApiError::Unauthorized), "a key first");
        assert_eq!(answer("GET", long.as_str(), Some(key)), Some(ApiError::NotFound));
        assert_eq!(answer("PUT", long.as_str(), Some(key)), Some(ApiError::MethodNotAllowed));
        assert_eq!(answer("GET", format!("/v2{}", "/a".repeat(20)).as_str(), Some(key)), Some(ApiError::NotFound));
        // Just within: the same answers.
        let seven = format!("/v1/orders{}", "/a".repeat(6));
        assert_eq!(answer("GET", seven.as_str(), None), Some(ApiError::Unauthorized));
        assert_eq!(answer("GET", seven.as_str(), Some(key)), Some(ApiError::NotFound));
    }

    #[test]
    fn nesting_is_measured_outside_strings() {
        assert!(check_depth(br#"{"a":"[[[[[[[[[[[[[[[[[[[["}"#, 2).is_ok());
        assert!(check_depth(br#"{"a":[[1]]}"#, 2).is_err());
        assert!(check_depth(br#"{"a":"\"[[[["}"#, 1).is_ok());
    }
}
