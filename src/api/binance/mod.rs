//! The Binance USDⓈ-M dialect (`/fapi/...`, BINANCE.md): a second surface over the same
//! requests as the native API. It parses Binance's parameters into the native
//! [`SymbolRequest`]s and [`AccountRequest`]s, asks the shards exactly as `/v1` does,
//! and renders their answers in Binance's shapes and error codes ([`shapes`]); it owns
//! no state but the listen keys' lifetimes ([`stream::ListenKeys`]) and reaches nothing
//! below the shard protocol.
//!
//! Signed calls carry the native API key in `X-MBX-APIKEY` and an HMAC-SHA256 of their
//! parameters made with the key's API secret ([`sign`]).

pub mod sign;
mod shapes;
pub mod stream;

use rust_decimal::Decimal;

use crate::api::error::ApiError;
use crate::api::service::Service;
use crate::api::HttpReply;
use crate::accounts::{OrderStatus, ORDER_NUMBER_MASK};
use crate::api::parse::{ConditionalBody, OrderBody, MAX_BATCH};
use crate::shard::protocol::{AccountRequest, Answer, ApiRequest, ConditionalRef, Interval, KlinePrice, OrderRef, SymbolRequest};
use crate::shard_map::ShardMap;
use shapes::{Error, ok};

/// Where the dialect's paths start.
pub const PREFIX: &str = "/fapi/";

/// One `/fapi` request as the edge received it.
pub struct Input<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub body: &'a [u8],
    /// `X-MBX-APIKEY`.
    pub api_key: Option<&'a str>,
}

/// `BTCUSDT` ↔ `BTC-PERP`: the symbol's index in the map.
fn symbol_of(map: &ShardMap, name: &str) -> Option<usize> {
    let base = name.strip_suffix("USDT")?;
    map.symbols.iter().position(|s| s.name.strip_suffix("-PERP") == Some(base))
}

/// A parameter of the query string or form body.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: &str, body: &[u8]) -> Self {
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        pairs.extend(form_urlencoded::parse(body).into_owned());
        Self(pairs)
    }

    /// One order of `batchOrders`: its fields as parameters (strings as they are,
    /// booleans and numbers as their text).
    fn of_json(fields: &serde_json::Map<String, serde_json::Value>) -> Self {
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Self(fields.iter().map(|(k, v)| (k.clone(), text(v))).collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    /// A time in ms, if sent.
    fn time(&self, name: &str) -> Result<Option<i64>, Error> {
        self.get(name).map(|t| t.parse::<i64>().map_err(|_| Error::invalid_value(name))).transpose()
    }

    fn symbol(&self, map: &ShardMap) -> Result<Option<usize>, Error> {
        self.get("symbol").map(|s| symbol_of(map, s).ok_or(Error::INVALID_SYMBOL)).transpose()
    }

    /// The symbol asked for, or every symbol when none is.
    fn symbols(&self, map: &ShardMap) -> Result<Vec<usize>, Error> {
        Ok(match self.symbol(map)? {
            Some(s) => vec![s],
            None => (0..map.symbols.len()).collect(),
        })
    }

    /// The answer for [`Self::symbols`]: one object when a symbol was asked for, else a list.
    fn one_or_all(&self, mut all: Vec<serde_json::Value>) -> serde_json::Value {
        if self.get("symbol").is_some() && all.len() == 1 { all.swap_remove(0) } else { serde_json::Value::Array(all) }
    }

    fn required_symbol(&self, map: &ShardMap) -> Result<usize, Error> {
        self.symbol(map)?.ok_or_else(|| Error::missing("symbol"))
    }
}

/// Answers a `/fapi` request.
pub async fn answer(service: &Service, input: Input<'_>) -> HttpReply {
    match route(service, &input).await {
        Ok(reply) => reply,
        Err(e) => e.reply(),
    }
}

async fn route(service: &Service, input: &Input<'_>) -> Result<HttpReply, Error> {
    let shard = &service.shard;
    let map = &*shard.map;
    let path = input.path.strip_prefix(PREFIX).unwrap_or_default().trim_end_matches('/');
    let params = Params::parse(input.query, input.body);
    let now = crate::shard::core::now_ms();
    match (input.method, path) {
        ("GET", "v1/ping") => Ok(ok(&serde_json::json!({}))),
        ("GET", "v1/time") => Ok(ok(&serde_json::json!({ "serverTime": now }))),
        ("POST" | "PUT" | "DELETE", "v1/listenKey") => listen_key(service, input, now).await,
        ("GET", "v1/exchangeInfo") => Ok(ok(&shapes::exchange_info(map, now))),
        ("GET", "v1/depth") => {
            let symbol = params.required_symbol(map)?;
            let limit = match params.get("limit") {
                None => 500,
                Some(l) => l.parse().ok().filter(|l| [5, 10, 20, 50, 100, 500, 1000].contains(l)).ok_or_else(|| Error::invalid_value("limit"))?,
            };
            match ask(service, shard.symbol_owner(symbol), ApiRequest::Symbol(SymbolRequest::Depth { symbol, limit })).await? {
                Answer::Depth { symbol, seq, bids, asks } => Ok(ok(&shapes::depth(&map.symbols[symbol], seq, &bids, &asks, now))),
                _ => Err(Error::internal()),
            }
        }
        ("GET", "v2/account" | "v3/account") => {
            let caller = signed(service, input, now)?;
            let (balance, positions) = account(service, caller).await?;
            Ok(ok(&shapes::account(map, &balance, &positions, now)))
        }
        ("GET", "v2/balance" | "v3/balance") => {
            let caller = signed(service, input, now)?;
            let (balance, positions) = account(service, caller).await?;
            Ok(ok(&[shapes::asset(map, &balance, &positions, now)]))
        }
        ("GET", "v2/positionRisk" | "v3/positionRisk") => {
            let caller = signed(service, input, now)?;
            let only = params.symbol(map)?;
            let (_, positions) = account(service, caller).await?;
            Ok(ok(&shapes::position_risk(map, &positions, only, now)))
        }
        ("POST", "v1/leverage") => {
            let Caller { key, .. } = signed(service, input, now)?;
            let symbol = params.required_symbol(map)?;
            let spec = &map.symbols[symbol];
            let asked = params.get("leverage").ok_or_else(|| Error::missing("leverage"))?;
            let leverage = asked
                .parse::<u32>()
                .ok()
                .filter(|l| (1..=spec.max_leverage).contains(l))
                .ok_or_else(|| Error::new(400, -4028, format!("Leverage {asked} is not valid")))?;
            match ask(service, shard.symbol_owner(symbol), ApiRequest::Symbol(SymbolRequest::SetLeverage { key, symbol, leverage })).await? {
                Answer::Leverage { symbol, leverage } => Ok(ok(&shapes::leverage(&map.symbols[symbol], leverage))),
                _ => Err(Error::internal()),
            }
        }
        // Each symbol's settings for the caller (ccxt's fetch_leverages reads it).
        ("GET", "v1/symbolConfig") => {
            let caller = signed(service, input, now)?;
            let mut all = Vec::new();
            for symbol in params.symbols(map)? {
                match ask(service, shard.symbol_owner(symbol), ApiRequest::Symbol(SymbolRequest::Leverage { symbol, user: caller.user })).await? {
                    Answer::Leverage { symbol, leverage } => all.push(shapes::symbol_config(&map.symbols[symbol], leverage)),
                    _ => return Err(Error::internal()),
                }
            }
            Ok(ok(&all))
        }
        ("POST", "v1/countdownCancelAll") => {
            let Caller { key, .. } = signed(service, input, now)?;
            let symbol = params.required_symbol(map)?;
            let asked = params.get("countdownTime").ok_or_else(|| Error::missing("countdownTime"))?;
            let after_ms = asked
                .parse::<i64>()
                .ok()
                .filter(|t| (0..=crate::engine::MAX_COUNTDOWN_MS).contains(t))
                .ok_or_else(|| Error::invalid_value("countdownTime"))?;
            match ask(service, shard.symbol_owner(symbol), ApiRequest::Symbol(SymbolRequest::Countdown { key, symbol, after_ms })).await? {
                Answer::Countdown { symbol, after_ms } => {
                    Ok(ok(&serde_json::json!({ "symbol": shapes::name(&map.symbols[symbol]).0, "countdownTime": after_ms.to_string() })))
                }
                _ => Err(Error::internal()),
            }
        }
        ("GET", "v1/leverageBracket") => {
            signed(service, input, now)?;
            Ok(ok(&shapes::leverage_brackets(map, params.symbol(map)?)))
        }
        ("POST", "v1/order") => {
            let caller = signed(service, input, now)?;
            let (symbol, order) = new_order(map, &params)?;
            let placed = place(service, shard.symbol_owner(symbol), ApiRequest::Symbol(SymbolRequest::PlaceOrder { key: caller.key, symbol, order })).await?;
            Ok(ok(&placed))
        }
        ("GET" | "DELETE", "v1/order") => {
            let caller = signed(service, input, now)?;
            let symbol = params.required_symbol(map)?;
            let Caller { key, user, owner } = caller;
            let mut target = order_ref(map, symbol, user, &params)?;
            let get = input.method == "GET";
            let not_found = if get { Error::NO_SUCH_ORDER } else { Error::UNKNOWN_ORDER };
            let found = |answer| on_symbol(answer, symbol, &not_found);
            // A clientOrderId names an order of the user's on any symbol: found first,
            // so that a cancel never reaches an order on another symbol.
            if let OrderRef::Client(_) = target {
                let v = found(ask(service, owner, ApiRequest::Account(AccountRequest::GetOrder { key: key.clone(), target })).await)?;
                if get {
                    return Ok(ok(&shapes::order(map, &v)));
                }
                target = OrderRef::Id(v.id, map.symbols[symbol].key);
            }
            let req = if get { AccountRequest::GetOrder { key, target } } else { AccountRequest::CancelOrder { key, target } };
            let v = found(ask(service, owner, ApiRequest::Account(req)).await)?;
            Ok(ok(&shapes::order(map, &v)))
        }
        // Amend: the order is read first (its symbol and side must be the ones named), then
        // changed by its id.
        ("PUT", "v1/order") => {
            let Caller { key, user, owner } = signed(service, input, now)?;
            let symbol = params.required_symbol(map)?;
            let target = order_ref(map, symbol, user, &params)?;
            let side = params.get("side").ok_or_else(|| Error::missing("side"))?;
            let number = |name: &str| -> Result<Decimal, Error> {
                params.get(name).ok_or_else(|| Error::missing(name))?.parse::<Decimal>().map_err(|_| Error::invalid_value(name))
            };
            let (quantity, price) = (number("quantity")?, number("price")?);
            let found = ask(service, owner, ApiRequest::Account(AccountRequest::GetOrder { key: key.clone(), target })).await;
            let v = on_symbol(found, symbol, &Error::UNKNOWN_ORDER)?;
            if v.side.as_str() != side {
                return Err(Error::fixed(400, -4061, "The order's side does not match the side sent."));
            }
            let target = OrderRef::Id(v.id, map.symbols[symbol].key);
            let req = AccountRequest::AmendOrder { key, target, price: Some(price), quantity: Some(quantity) };
            match ask(service, owner, ApiRequest::Account(req)).await? {
                Answer::Order(v) => Ok(ok(&shapes::order(map, &v))),
                _ => Err(Error::internal()),
            }
        }
        ("GET", "v1/allOrders") => {
            let caller = signed(service, input, now)?;
            let symbol = params.required_symbol(map)?;
            let limit = limit(&params, 500, 1000)?;
            let (start, end) = (params.time("startTime")?, params.time("endTime")?);
            let from = params.get("orderId").map(|id| id.parse::<u64>().map_err(|_| Error::invalid_value("orderId"))).transpose()?;
            match ask(service, caller.owner, ApiRequest::Account(AccountRequest::AllOrders { key: caller.key, symbol: Some(symbol) })).await? {
                Answer::Orders(list) => {
                    // Binance records no order it rejects (the refusal is the answer).
                    let kept = list.iter().filter(|v| {
                        v.status != OrderStatus::Rejected
                            && from.is_none_or(|f| shapes::order_id(v.id) >= f)
                            && start.is_none_or(|t| v.created_at >= t)
                            && end.is_none_or(|t| v.created_at <= t)
                    });
                    Ok(ok(&kept.take(limit).map(|v| shapes::order(map, v)).collect::<Vec<_>>()))
                }
                _ => Err(Error::internal()),
            }
        }
        ("GET", "v1/openOrders") => {
            let caller = signed(service, input, now)?;
            let symbol = params.symbol(map)?;
            match ask(service, caller.owner, ApiRequest::Account(AccountRequest::OpenOrders { key: caller.key, symbol })).await? {
                Answer::Orders(list) => Ok(ok(&list.iter().map(|v| shapes::order(map, v)).collect::<Vec<_>>())),
                _ => Err(Error::internal()),
            }
        }
        ("DELETE", "v1/allOpenOrders") => {
            let caller = signed(service, input, now)?;
            let symbol = params.required_symbol(map)?;
            let Caller { key, owner, .. } = caller;
            ask(service, owner, ApiRequest::Account(AccountRequest::CancelAll { key, symbol: Some(symbol) })).await?;
            Ok(ok(&serde_json::json!({ "code": 200, "msg": "The operation of cancel all open order is done." })))
        }
        // Up to 10 cancels, by `orderIdList` or `origClientOrderIdList` (JSON arrays), each
        // answered on its own, in order.
        ("DELETE", "v1/batchOrders") => {
            let Caller { key, user, owner } = signed(service, input, now)?;
            let symbol = params.required_symbol(map)?;
            let ids: Vec<Params> = match (params.get("orderIdList"), params.get("origClientOrderIdList")) {
                (Some(list), None) => serde_json::from_str::<Vec<u64>>(list)
                    .map_err(|_| Error::invalid_value("orderIdList"))?
                    .into_iter()
                    .map(|id| Params(vec![("orderId".to_owned(), id.to_string())]))
                    .collect(),
                (None, Some(list)) => serde_json::from_str::<Vec<String>>(list)
                    .map_err(|_| Error::invalid_value("origClientOrderIdList"))?
                    .into_iter()
                    .map(|id| Params(vec![("origClientOrderId".to_owned(), id)]))
                    .collect(),
                _ => return Err(Error::missing("orderIdList")),
            };
            if ids.is_empty() || ids.len() > 10 {
                return Err(Error::new(400, -1130, "Invalid data sent for a parameter: 1 to 10 orders.".to_owned()));
            }
            let mut answers = Vec::with_capacity(ids.len());
            for one in &ids {
                let cancelled = async {
                    let target = order_ref(map, symbol, user, one)?;
                    // Found first: a clientOrderId names an order on any symbol.
                    let found = ask(service, owner, ApiRequest::Account(AccountRequest::GetOrder { key: key.clone(), target })).await;
                    let v = on_symbol(found, symbol, &Error::UNKNOWN_ORDER)?;
                    let target = OrderRef::Id(v.id, map.symbols[symbol].key);
                    match ask(service, owner, ApiRequest::Account(AccountRequest::CancelOrder { key: key.clone(), target })).await? {
                        Answer::Order(v) => Ok(shapes::order(map, &v)),
                        _ => Err(Error::internal()),
                    }
                };
                answers.push(cancelled.await.unwrap_or_else(|e| e.body()));
            }
            Ok(ok(&answers))
        }
        ("POST", "v1/batchOrders") => {
            let caller = signed(service, input, now)?;
            let list = params.get("batchOrders").ok_or_else(|| Error::missing("batchOrders"))?;
            let orders: Vec<serde_json::Map<String, serde_json::Value>> =
                serde_json::from_str(list).map_err(|_| Error::invalid_value("batchOrders"))?;
            if orders.is_empty() || orders.len() > MAX_BATCH {
                return Err(Error::new(400, -1130, format!("Invalid data sent for a parameter: batchOrders holds 1 to {MAX_BATCH} orders.")));
            }
            // Each answered on its own, in order; one refused does not stop the others.
            let mut answers = Vec::with_capacity(orders.len());
            for fields in orders {
                let params = Params::of_json(&fields);
                let placed = async {
                    let (symbol, order) = new_order(map, &params)?;
                    let req = ApiRequest::Symbol(SymbolRequest::PlaceOrder { key: caller.key.clone(), symbol, order });
                    place(service, shard.symbol_owner(symbol), req).await
                };
                answers.push(placed.await.unwrap_or_else(|e| e.body()));
            }
            Ok(ok(&answers))
        }
        ("POST", "v1/algoOrder") => {
            let Caller { key, .. } = signed(service, input, now)?;
            match params.get("algoType") {
                Some("CONDITIONAL") => {}
                Some(_) => return Err(Error::invalid_value("algoType")),
                None => return Err(Error::missing("algoType")),
            }
            let (symbol, order) = new_conditional(map, &params)?;
            match ask(service, shard.symbol_owner(symbol), ApiRequest::Symbol(SymbolRequest::PlaceConditional { key, symbol, order })).await? {
                Answer::Conditional { symbol, conditional } => Ok(ok(&shapes::algo_order(map, symbol, &conditional))),
                _ => Err(Error::internal()),
            }
        }
        ("GET" | "DELETE", "v1/algoOrder") => {
            let Caller { key, .. } = signed(service, input, now)?;
            let get = input.method == "GET";
            let not_found = if get { Error::NO_SUCH_ORDER } else { Error::UNKNOWN_ORDER };
            let (symbol, found) = find_algo(service, &key, &params, &not_found).await?;
            if get {
                return Ok(ok(&shapes::algo_order(map, symbol, &found)));
            }
            let req = SymbolRequest::CancelConditional { key, symbol, target: Some(ConditionalRef::Id(found.id)) };
            match ask(service, shard.symbol_owner(symbol), ApiRequest::Symbol(req)).await {
                Ok(Answer::Conditional { symbol, conditional }) => {
                    let algo = shapes::algo_order(map, symbol, &conditional);
                    Ok(ok(&serde_json::json!({ "algoId": algo["algoId"], "clientAlgoId": algo["clientAlgoId"], "code": "200", "msg": "success" })))
                }
                Ok(_) => Err(Error::internal()),
                Err(Error { code: -2011 | -2013, .. }) => Err(not_found),
                Err(e) => Err(e),
            }
        }
        ("GET", "v1/openAlgoOrders" | "v1/allAlgoOrders") => {
            let Caller { key, .. } = signed(service, input, now)?;
            let closed = path == "v1/allAlgoOrders";
            let (start, end) = (params.time("startTime")?, params.time("endTime")?);
            let limit = limit(&params, 500, 1000)?;
            let mut all = Vec::new();
            for symbol in params.symbols(map)? {
                match ask(service, shard.symbol_owner(symbol), ApiRequest::Symbol(SymbolRequest::Conditionals { key: key.clone(), symbol, closed })).await? {
                    Answer::Conditionals { symbol, list } => all.extend(
                        list.iter()
                            .filter(|c| start.is_none_or(|t| c.order.timestamp >= t) && end.is_none_or(|t| c.order.timestamp <= t))
                            .map(|c| (c.order.timestamp, shapes::algo_order(map, symbol, c))),
                    ),
                    _ => return Err(Error::internal()),
                }
            }
            all.sort_by_key(|(time, _)| *time);
            Ok(ok(&all.into_iter().map(|(_, v)| v).take(limit).collect::<Vec<_>>()))
        }
        ("DELETE", "v1/algoOpenOrders") => {
            let Caller { key, .. } = signed(service, input, now)?;
            let symbol = params.required_symbol(map)?;
            let req = SymbolRequest::CancelConditional { key, symbol, target: None };
            ask(service, shard.symbol_owner(symbol), ApiRequest::Symbol(req)).await?;
            Ok(ok(&serde_json::json!({ "code": 200, "msg": "success" })))
        }
        ("GET", "v1/userTrades") => {
            let caller = signed(service, input, now)?;
            let symbol = params.required_symbol(map)?;
            let limit = limit(&params, 500, 1000)?;
            let Caller { key, owner, .. } = caller;
            match ask(service, owner, ApiRequest::Account(AccountRequest::Fills { key, symbol: Some(symbol), limit })).await? {
                // Oldest first, as Binance lists them.
                Answer::Fills(fills) => Ok(ok(&fills.iter().rev().map(|f| shapes::user_trade(map, f)).collect::<Vec<_>>())),
                _ => Err(Error::internal()),
            }
        }
        ("GET", "v1/income") => {
            let caller = signed(service, input, now)?;
            let symbol = params.symbol(map)?;
            let kind = match params.get("incomeType") {
                None => None,
                Some(t) => Some(shapes::income_kind(t).ok_or_else(|| Error::invalid_value("incomeType"))?),
            };
            let limit = limit(&params, 100, 1000)?;
            let Caller { key, owner, .. } = caller;
            match ask(service, owner, ApiRequest::Account(AccountRequest::Income { key, symbol, kind, limit })).await? {
                Answer::Income(list) => Ok(ok(&list.iter().rev().map(|i| shapes::income(map, i)).collect::<Vec<_>>())),
                _ => Err(Error::internal()),
            }
        }
        ("GET", "v1/premiumIndex") => {
            let mut all = Vec::new();
            for symbol in params.symbols(map)? {
                match ask(service, shard.symbol_owner(symbol), ApiRequest::Symbol(SymbolRequest::PremiumIndex { symbol })).await? {
                    Answer::PremiumIndex { symbol, index, mark, last_funding_rate, time, next_funding } => {
                        all.push(shapes::premium_index(&map.symbols[symbol], index, mark, last_funding_rate, time, next_funding));
                    }
                    _ => return Err(Error::internal()),
                }
            }
            Ok(ok(&params.one_or_all(all)))
        }
        ("GET", "v1/trades" | "v1/aggTrades") => {
            let symbol = params.required_symbol(map)?;
            let limit = limit(&params, 500, 1000)?;
            match ask(service, shard.symbol_owner(symbol), ApiRequest::Symbol(SymbolRequest::Trades { symbol, limit })).await? {
                // Oldest first, as Binance lists them; each trade is its own aggregate.
                Answer::Trades { symbol, trades } => {
                    let spec = &map.symbols[symbol];
                    let render = if path == "v1/trades" { shapes::trade } else { shapes::agg_trade };
                    Ok(ok(&trades.iter().rev().map(|t| render(spec, t)).collect::<Vec<_>>()))
                }
                _ => Err(Error::internal()),
            }
        }
        ("GET", "v1/klines" | "v1/markPriceKlines" | "v1/indexPriceKlines") => {
            let (symbol, price) = match path {
                "v1/markPriceKlines" => (params.required_symbol(map)?, KlinePrice::Mark),
                // Named by its pair.
                "v1/indexPriceKlines" => {
                    let pair = params.get("pair").ok_or_else(|| Error::missing("pair"))?;
                    (symbol_of(map, pair).ok_or(Error::INVALID_SYMBOL)?, KlinePrice::Index)
                }
                _ => (params.required_symbol(map)?, KlinePrice::Trade),
            };
            let interval = params.get("interval").ok_or_else(|| Error::missing("interval"))?;
            let interval = Interval::parse(interval).ok_or_else(|| Error::new(400, -1120, "Invalid interval.".to_owned()))?;
            let (start, end) = (params.time("startTime")?, params.time("endTime")?);
            let req = SymbolRequest::Klines { symbol, price, interval, start, end, limit: limit(&params, 500, 1500)? };
            match ask(service, shard.symbol_owner(symbol), ApiRequest::Symbol(req)).await? {
                Answer::Klines { symbol, interval, candles } => {
                    Ok(ok(&candles.iter().map(|c| shapes::kline(&map.symbols[symbol], interval, c)).collect::<Vec<_>>()))
                }
                _ => Err(Error::internal()),
            }
        }
        ("GET", "v1/fundingRate") => {
            let (start, end) = (params.time("startTime")?, params.time("endTime")?);
            let limit = limit(&params, 100, 1000)?;
            let mut all = Vec::new();
            for symbol in params.symbols(map)? {
                match ask(service, shard.symbol_owner(symbol), ApiRequest::Symbol(SymbolRequest::FundingHistory { symbol, start, end, limit })).await? {
                    Answer::FundingHistory { symbol, rounds } => all.extend(rounds.iter().map(|f| (f.time, shapes::funding_rate(&map.symbols[symbol], f)))),
                    _ => return Err(Error::internal()),
                }
            }
            all.sort_by_key(|(time, _)| *time);
            Ok(ok(&all.into_iter().map(|(_, v)| v).take(limit).collect::<Vec<_>>()))
        }
        ("GET", "v1/ticker/24hr") => {
            let mut all = Vec::new();
            for symbol in params.symbols(map)? {
                match ask(service, shard.symbol_owner(symbol), ApiRequest::Symbol(SymbolRequest::Ticker { symbol })).await? {
                    Answer::Ticker { symbol, day, last, time } => all.push(shapes::day_ticker(&map.symbols[symbol], day.as_ref(), last.as_ref(), time)),
                    _ => return Err(Error::internal()),
                }
            }
            Ok(ok(&params.one_or_all(all)))
        }
        ("GET", "v1/ticker/bookTicker") => {
            let mut all = Vec::new();
            for symbol in params.symbols(map)? {
                match ask(service, shard.symbol_owner(symbol), ApiRequest::Symbol(SymbolRequest::Depth { symbol, limit: 1 })).await? {
                    Answer::Depth { symbol, seq, bids, asks } => all.push(shapes::book_ticker(&map.symbols[symbol], seq, bids.first(), asks.first(), now)),
                    _ => return Err(Error::internal()),
                }
            }
            Ok(ok(&params.one_or_all(all)))
        }
        ("GET", "v1/ticker/price" | "v2/ticker/price") => {
            let mut all = Vec::new();
            for symbol in params.symbols(map)? {
                match ask(service, shard.symbol_owner(symbol), ApiRequest::Symbol(SymbolRequest::Trades { symbol, limit: 1 })).await? {
                    Answer::Trades { symbol, trades } => all.push(shapes::price_ticker(&map.symbols[symbol], trades.first(), now)),
                    _ => return Err(Error::internal()),
                }
            }
            Ok(ok(&params.one_or_all(all)))
        }
        ("GET", "v1/commissionRate") => {
            signed(service, input, now)?;
            let spec = &map.symbols[params.required_symbol(map)?];
            Ok(ok(&serde_json::json!({
                "symbol": shapes::name(spec).0,
                "makerCommissionRate": decimal(spec.maker_fee),
                "takerCommissionRate": decimal(spec.taker_fee),
            })))
        }
        // One-way positions, isolated margin, USDT only: settings that can only be what
        // they are, answered as Binance answers a setting already in place.
        ("GET", "v1/positionSide/dual") => {
            signed(service, input, now)?;
            Ok(ok(&serde_json::json!({ "dualSidePosition": false })))
        }
        ("POST", "v1/positionSide/dual") => {
            signed(service, input, now)?;
            match params.get("dualSidePosition") {
                Some("false") => Ok(ok(&serde_json::json!({ "code": 200, "msg": "success" }))),
                Some(_) => Err(Error::new(400, -1130, "Invalid data sent for a parameter: only one-way positions (dualSidePosition false) are offered.".to_owned())),
                None => Err(Error::missing("dualSidePosition")),
            }
        }
        ("GET", "v1/multiAssetsMargin") => {
            signed(service, input, now)?;
            Ok(ok(&serde_json::json!({ "multiAssetsMargin": false })))
        }
        ("POST", "v1/marginType") => {
            signed(service, input, now)?;
            params.required_symbol(map)?;
            match params.get("marginType") {
                Some("ISOLATED" | "isolated") => Ok(ok(&serde_json::json!({ "code": 200, "msg": "success" }))),
                Some(_) => Err(Error::new(400, -1130, "Invalid data sent for a parameter: only ISOLATED margin is offered.".to_owned())),
                None => Err(Error::missing("marginType")),
            }
        }
        _ => Err(Error::unknown_path(input.method, input.path)),
    }
}

/// Binance's `POST v1/order` parameters as a native order, at the user's leverage setting
/// for the symbol (`POST v1/leverage`; the symbol's owner reads it).
fn new_order(map: &ShardMap, params: &Params) -> Result<(usize, crate::engine::NewOrder), Error> {
    let symbol = params.required_symbol(map)?;
    let spec = &map.symbols[symbol];
    one_way(params)?;
    let required = |name: &str| params.get(name).map(str::to_owned).ok_or_else(|| Error::missing(name));
    let kind = required("type")?;
    if crate::engine::NewConditional::parse_type(&kind).is_some() {
        return Err(Error::fixed(400, -4120, "Order type not supported for this endpoint. Please use the Algo Order API endpoints instead."));
    }
    let time_in_force = match (kind.as_str(), params.get("timeInForce")) {
        ("LIMIT", Some("GTX")) => Some("POST_ONLY".to_owned()),
        ("LIMIT", Some(t @ ("GTC" | "IOC" | "FOK" | "GTD"))) => Some(t.to_owned()),
        ("LIMIT", None) => return Err(Error::missing("timeInForce")),
        ("LIMIT", Some(_)) => return Err(Error::invalid_value("timeInForce")),
        // Binance ignores it on MARKET orders.
        _ => None,
    };
    let reduce_only = flag(params, "reduceOnly")?;
    let body = OrderBody {
        symbol: spec.name.clone(),
        side: required("side")?,
        price: if kind == "LIMIT" { Some(required("price")?) } else { None },
        kind,
        quantity: required("quantity")?,
        // Validated as a native order would be, then left to the setting.
        leverage: Some(1),
        time_in_force,
        reduce_only: Some(reduce_only),
        client_order_id: params.get("newClientOrderId").map(str::to_owned),
        good_till_date: match params.get("goodTillDate") {
            None => None,
            Some(t) => Some(t.parse::<i64>().map_err(|_| Error::invalid_value("goodTillDate"))?),
        },
        self_trade_prevention_mode: match params.get("selfTradePreventionMode") {
            Some("NONE") => {
                return Err(Error::fixed(400, -4000, "selfTradePreventionMode NONE is not offered: a user never trades with themself."));
            }
            other => other.map(str::to_owned),
        },
    };
    let (symbol, mut order) = body.validate(map).map_err(filter_error)?;
    order.leverage = crate::engine::LEVERAGE_OF_SETTING;
    Ok((symbol, order))
}

/// Binance's `POST v1/algoOrder` parameters as a native conditional order.
fn new_conditional(map: &ShardMap, params: &Params) -> Result<(usize, crate::engine::NewConditional), Error> {
    let symbol = params.required_symbol(map)?;
    one_way(params)?;
    let required = |name: &str| params.get(name).map(str::to_owned).ok_or_else(|| Error::missing(name));
    let kind = required("type")?;
    let limited = matches!(kind.as_str(), "STOP" | "TAKE_PROFIT");
    let time_in_force = match (limited, params.get("timeInForce")) {
        (true, Some("GTX")) => Some("POST_ONLY".to_owned()),
        (true, Some(t @ ("GTC" | "IOC" | "FOK"))) => Some(t.to_owned()),
        (true, Some(_)) => return Err(Error::invalid_value("timeInForce")),
        // Binance ignores it on the MARKET types.
        (_, _) => None,
    };
    let body = ConditionalBody {
        symbol: map.symbols[symbol].name.clone(),
        side: required("side")?,
        price: if limited { Some(required("price")?) } else { None },
        trigger_price: if kind == "TRAILING_STOP_MARKET" { None } else { Some(required("triggerPrice")?) },
        // `activatePrice` on the algo API, `activationPrice` on the order API before it.
        activation_price: params.get("activatePrice").or_else(|| params.get("activationPrice")).map(str::to_owned),
        callback_rate: params.get("callbackRate").map(str::to_owned),
        kind,
        working_type: params.get("workingType").map(str::to_owned),
        time_in_force,
        quantity: params.get("quantity").map(str::to_owned),
        reduce_only: Some(flag(params, "reduceOnly")?),
        close_position: Some(flag(params, "closePosition")?),
        client_order_id: params.get("clientAlgoId").map(str::to_owned),
    };
    body.validate(map).map_err(filter_error)
}

/// The caller's conditional order named by `algoId`, or by `clientAlgoId` on `symbol`
/// (or on any symbol when none is sent).
async fn find_algo(service: &Service, key: &str, params: &Params, not_found: &Error) -> Result<(usize, crate::engine::Conditional), Error> {
    let map = &*service.shard.map;
    let (symbols, target) = match (params.get("algoId"), params.get("clientAlgoId")) {
        (Some(id), _) => {
            let (symbol, n) = shapes::algo_of(id.parse::<u64>().map_err(|_| Error::invalid_value("algoId"))?);
            if symbol >= map.symbols.len() {
                return Err(not_found.clone());
            }
            (vec![symbol], ConditionalRef::Id(n))
        }
        (None, Some(cid)) => {
            let cid = crate::engine::ClientOrderId::new(cid).map_err(|_| Error::invalid_value("clientAlgoId"))?;
            (params.symbols(map)?, ConditionalRef::Client(cid))
        }
        (None, None) => return Err(Error::missing("algoId")),
    };
    for symbol in symbols {
        let req = SymbolRequest::GetConditional { key: key.to_owned(), symbol, target };
        match ask(service, service.shard.symbol_owner(symbol), ApiRequest::Symbol(req)).await {
            Ok(Answer::Conditional { symbol, conditional }) => return Ok((symbol, conditional)),
            Ok(_) => return Err(Error::internal()),
            Err(Error { code: -2013, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Err(not_found.clone())
}

/// `true` or `false` (absent: false).
fn flag(params: &Params, name: &str) -> Result<bool, Error> {
    match params.get(name) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(_) => Err(Error::invalid_value(name)),
    }
}

/// Positions are one-way: `positionSide` may only be `BOTH`.
fn one_way(params: &Params) -> Result<(), Error> {
    if params.get("positionSide").is_some_and(|s| s != "BOTH") {
        return Err(Error::fixed(400, -4061, "Order's position side does not match user's setting."));
    }
    Ok(())
}

/// A native refusal of an order's values, as the filter a client's rounding rules know
/// (ccxt: InvalidOrder by substring).
fn filter_error(e: ApiError) -> Error {
    match e {
        ApiError::InvalidRequest(m) if m.starts_with("price") || m.starts_with("triggerPrice") => {
            Error::new(400, -4014, format!("Price not increased by tick size (PRICE_FILTER): {m}"))
        }
        ApiError::InvalidRequest(m) if m.starts_with("quantity") => Error::new(400, -1013, format!("Filter failure: LOT_SIZE ({m})")),
        e => Error::from(e),
    }
}

/// Places an order; its answer in Binance's shape, or the error it is refused with.
async fn place(service: &Service, owner: usize, req: ApiRequest) -> Result<serde_json::Value, Error> {
    match ask(service, owner, req).await? {
        Answer::Order(v) if v.status == OrderStatus::Rejected => Err(shapes::rejection(v.reason)),
        Answer::Order(v) => Ok(shapes::order(&service.shard.map, &v)),
        _ => Err(Error::internal()),
    }
}

/// `limit`, between 1 and `max`.
fn limit(params: &Params, default: usize, max: usize) -> Result<usize, Error> {
    match params.get("limit") {
        None => Ok(default),
        Some(l) => l.parse().ok().filter(|l| (1..=max).contains(l)).ok_or_else(|| Error::invalid_value("limit")),
    }
}

/// The order an answer holds, if it is on `symbol`; `not_found` if it is not there
/// (Binance says -2013 to a read, -2011 to a change).
fn on_symbol(answer: Result<Answer, Error>, symbol: usize, not_found: &Error) -> Result<crate::accounts::OrderView, Error> {
    match answer {
        Ok(Answer::Order(v)) if v.symbol == symbol => Ok(v),
        Ok(Answer::Order(_)) | Err(Error { code: -2013 | -2011, .. }) => Err(not_found.clone()),
        Ok(_) => Err(Error::internal()),
        Err(e) => Err(e),
    }
}

/// `orderId` (see [`shapes::order_id`]) or `origClientOrderId`, of `user`'s orders.
fn order_ref(map: &ShardMap, symbol: usize, user: crate::engine::UserId, params: &Params) -> Result<OrderRef, Error> {
    if let Some(id) = params.get("orderId") {
        let n = id.parse::<u64>().ok().filter(|n| *n <= ORDER_NUMBER_MASK).ok_or_else(|| Error::invalid_value("orderId"))?;
        let id = crate::engine::OrderId(u64::from(crate::accounts::partition_of(user)) << 52 | n);
        return Ok(OrderRef::Id(id, map.symbols[symbol].key));
    }
    let cid = params.get("origClientOrderId").ok_or_else(|| Error::missing("orderId"))?;
    // A client id of ours, or the order's UUID (what an order placed without one shows).
    match crate::engine::ClientOrderId::new(cid) {
        Ok(c) if cid.parse::<uuid::Uuid>().is_err() => Ok(OrderRef::Client(c)),
        _ => Ok(crate::api::parse::order_ref(cid)),
    }
}

/// Who sent a signed request: its key (checked by the account's owner when asked), the
/// user the key names, and the shard that owns that user's account.
struct Caller {
    key: String,
    user: crate::engine::UserId,
    owner: usize,
}

/// The caller of a signed request whose signature and timestamp hold.
fn signed(service: &Service, input: &Input<'_>, now: i64) -> Result<Caller, Error> {
    let key = input.api_key.ok_or(Error::BAD_KEY)?;
    let user = crate::accounts::user_of_key(key).ok_or(Error::BAD_KEY)?;
    let signing = service.shard.config.signing_secret.as_deref().unwrap_or_default();
    let secret = crate::accounts::secret::secret_of(signing.as_bytes(), key);
    let body = std::str::from_utf8(input.body).map_err(|_| Error::from(sign::SignError::BadSignature))?;
    sign::verify(&secret, input.query, body, now)?;
    Ok(Caller { key: key.to_owned(), user, owner: service.shard.account_owner(user) })
}

/// `POST`, `PUT` and `DELETE v1/listenKey`: the caller's user data stream key (the API
/// key alone names the caller here, unsigned, as on Binance). One key per user
/// ([`stream::listen_key`]); `PUT` of a closed or expired one is -1125.
async fn listen_key(service: &Service, input: &Input<'_>, now: i64) -> Result<HttpReply, Error> {
    let key = input.api_key.ok_or(Error::BAD_KEY)?;
    let user = crate::accounts::user_of_key(key).ok_or(Error::BAD_KEY)?;
    match ask(service, service.shard.account_owner(user), ApiRequest::authenticate(key)).await {
        Ok(Answer::User(u)) if u == user => {}
        Ok(_) | Err(Error { code: -2015, .. }) => return Err(Error::BAD_KEY),
        Err(e) => return Err(e),
    }
    let signing = service.shard.config.signing_secret.as_deref().unwrap_or_default();
    let listen = serde_json::json!({ "listenKey": stream::listen_key(signing.as_bytes(), user) });
    let keys = &service.listen_keys;
    match input.method {
        "POST" => keys.open(user, now),
        "PUT" if !keys.keep_alive(user, now) => return Err(Error::fixed(400, -1125, "This listenKey does not exist.")),
        "PUT" => {}
        _ => {
            keys.close(user);
            return Ok(ok(&serde_json::json!({})));
        }
    }
    Ok(ok(&listen))
}

/// The account's balance and open positions (one owner, two questions).
async fn account(service: &Service, Caller { key, owner, .. }: Caller) -> Result<(shapes::Balance, Vec<shapes::Position>), Error> {
    let Answer::Balance { total, available, locked } = ask(service, owner, ApiRequest::Account(AccountRequest::Balance { key: key.to_owned() })).await?
    else {
        return Err(Error::internal());
    };
    let Answer::Positions(positions) = ask(service, owner, ApiRequest::Account(AccountRequest::Positions { key: key.to_owned() })).await? else {
        return Err(Error::internal());
    };
    Ok((shapes::Balance { total, available, locked }, positions))
}

async fn ask(service: &Service, to: usize, req: ApiRequest) -> Result<Answer, Error> {
    service.ask(to, req).await.map_err(Error::from)
}

/// A decimal as Binance writes it: a string, without trailing zeros.
fn decimal(d: Decimal) -> String {
    d.normalize().to_string()
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        shapes::error_of(&e)
    }
}
