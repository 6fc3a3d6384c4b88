//! Binance's JSON shapes (BINANCE.md, section 5.1) and error codes (section 4), rendered
//! from the native answers.

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde_json::{json, Value};

use super::decimal;
use super::sign::SignError;
use crate::api::error::ApiError;
use crate::api::render::{entry_price, CandleView};
use crate::api::HttpReply;
use crate::engine::perp::liquidation_price;
use crate::engine::symbol::units_to_usdt;
use crate::accounts::{Fill, Income, IncomeKind, OrderStatus, OrderView};
use crate::engine::{CancelReason, Conditional, ConditionalKind, ConditionalStatus, Health, OrderType, PositionState, SymbolSpec, TimeInForce};
use crate::shard::protocol::{Candle, Interval, MarketPrices, PublicTrade};
use crate::shard_map::ShardMap;

pub use crate::api::render::ok;

/// `{code, msg}` with its HTTP status.
#[derive(Clone, Debug)]
pub struct Error {
    status: u16,
    pub code: i32,
    msg: std::borrow::Cow<'static, str>,
    retry_after: Option<u32>,
}

impl Error {
    pub const fn fixed(status: u16, code: i32, msg: &'static str) -> Self {
        Self { status, code, msg: std::borrow::Cow::Borrowed(msg), retry_after: None }
    }

    pub fn new(status: u16, code: i32, msg: String) -> Self {
        Self { status, code, msg: std::borrow::Cow::Owned(msg), retry_after: None }
    }

    pub const UNKNOWN_ORDER: Self = Self::fixed(400, -2011, "Unknown order sent.");
    pub const NO_SUCH_ORDER: Self = Self::fixed(400, -2013, "Order does not exist.");
    pub const BAD_KEY: Self = Self::fixed(401, -2015, "Invalid API-key, IP, or permissions for action.");
    pub const INVALID_SYMBOL: Self = Self::fixed(400, -1121, "Invalid symbol.");

    pub fn missing(name: &str) -> Self {
        Self::new(400, -1102, format!("Mandatory parameter '{name}' was not sent, was empty/null, or malformed."))
    }

    pub fn invalid_value(name: &str) -> Self {
        Self::new(400, -1130, format!("Invalid data sent for a parameter: {name}."))
    }

    pub fn unknown_path(method: &str, path: &str) -> Self {
        Self::new(404, -5000, format!("Path {path}, Method {method} is invalid"))
    }

    pub fn internal() -> Self {
        Self::fixed(503, -1001, "Internal error; unable to process your request. Please try again.")
    }

    /// `{code, msg}`.
    pub fn body(&self) -> Value {
        json!({ "code": self.code, "msg": self.msg })
    }

    pub fn reply(&self) -> HttpReply {
        HttpReply {
            status: self.status,
            body: self.body().to_string().into_bytes(),
            retry_after: self.retry_after,
            close: false,
            content_type: crate::api::JSON,
        }
    }
}

impl From<SignError> for Error {
    fn from(e: SignError) -> Self {
        match e {
            SignError::Missing(name) => Self::missing(name),
            SignError::Malformed(name) => Self::new(400, -1100, format!("Illegal characters found in parameter '{name}'.")),
            SignError::RecvWindow => Self::fixed(400, -1130, "Invalid data sent for a parameter: recvWindow must be 1 to 60000."),
            SignError::OutsideWindow => Self::fixed(400, -1021, "Timestamp for this request is outside of the recvWindow."),
            SignError::BadSignature => Self::fixed(400, -1022, "Signature for this request is not valid."),
        }
    }
}

/// The Binance error of a native one (BINANCE.md, section 4).
pub fn error_of(e: &ApiError) -> Error {
    let mut error = match e {
        ApiError::Unauthorized => Error::BAD_KEY,
        ApiError::UnknownSymbol => Error::INVALID_SYMBOL,
        ApiError::InvalidRequest(m) | ApiError::HeadersTooLarge(m) => Error::new(400, -1130, m.clone()),
        ApiError::BodyTooLarge(_) => Error::new(413, -1130, e.message()),
        ApiError::NotFound => Error::fixed(400, -2013, "Order does not exist."),
        ApiError::OrderNotOpen => Error::fixed(400, -2011, "Unknown order sent."),
        ApiError::InsufficientMargin | ApiError::InsufficientBalance => {
            Error::fixed(400, -2019, "Account has insufficient balance for requested action.")
        }
        ApiError::ReduceOnlyRejected => Error::fixed(400, -2022, "ReduceOnly Order is rejected."),
        ApiError::TooManyOpenOrders => Error::fixed(400, -2025, "Reach max open order limit."),
        ApiError::PriceOutOfBand => Error::new(400, -4014, format!("PRICE_FILTER: {}", e.message())),
        ApiError::PositionLimit => Error::new(400, -2027, e.message()),
        ApiError::RateLimited | ApiError::StreamsPerAddress(_) => Error::fixed(429, -1003, "Too many requests; please use the websocket for live updates."),
        ApiError::Unavailable(_) | ApiError::UserExists | ApiError::TransferConflict | ApiError::FundingRefused(_) => Error::internal(),
        ApiError::StatusUnknown(_) => Error::fixed(
            504,
            -1007,
            "Timeout waiting for response from backend server. Send status unknown; execution status unknown.",
        ),
        ApiError::MethodNotAllowed => Error::new(405, -5000, e.message()),
        ApiError::AmendRefused(crate::engine::AmendRefusal::Unchanged) => Error::fixed(400, -5027, "No need to modify the order."),
        ApiError::AmendRefused(_) => Error::new(400, -1130, e.message()),
        ApiError::WouldTrigger => Error::fixed(400, -2021, "Order would immediately trigger."),
        ApiError::TooManyConditionals => Error::fixed(400, -4045, "Reach max stop order limit."),
    };
    if matches!(e, ApiError::RateLimited | ApiError::StreamsPerAddress(_)) {
        error.retry_after = Some(1);
    }
    error
}

/// `BTC-PERP` → `BTCUSDT`; the base asset.
pub fn name(spec: &SymbolSpec) -> (String, &str) {
    let base = spec.name.strip_suffix("-PERP").unwrap_or(&spec.name);
    (format!("{base}USDT"), base)
}

/// Decimal places of a step (`0.01` → 2).
fn places(step: Decimal) -> u32 {
    step.normalize().scale()
}

pub fn exchange_info(map: &ShardMap, now: i64) -> Value {
    let symbols: Vec<Value> = map
        .symbols
        .iter()
        .map(|s| {
            let (symbol, base) = name(s);
            let (tick, lot) = (decimal(s.tick_size), decimal(s.lot_size));
            let max_qty = decimal(s.lots_to_quantity(s.max_position));
            json!({
                "symbol": symbol,
                "pair": symbol,
                "contractType": "PERPETUAL",
                "deliveryDate": 4_133_404_800_000_i64,
                "onboardDate": 1_569_398_400_000_i64,
                "status": "TRADING",
                "maintMarginPercent": decimal(s.maintenance_margin_rate * Decimal::ONE_HUNDRED),
                "requiredMarginPercent": decimal(Decimal::ONE_HUNDRED / Decimal::from(s.max_leverage.max(1))),
                "baseAsset": base,
                "quoteAsset": "USDT",
                "marginAsset": "USDT",
                "pricePrecision": places(s.tick_size),
                "quantityPrecision": places(s.lot_size),
                "baseAssetPrecision": 8,
                "quotePrecision": 8,
                "underlyingType": "COIN",
                "underlyingSubType": [],
                "triggerProtect": "0.0500",
                "liquidationFee": "0",
                "marketTakeBound": decimal(s.protection_band),
                "filters": [
                    { "filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": decimal(s.ticks_to_price(crate::engine::units::MAX_TICKS)), "tickSize": tick },
                    { "filterType": "LOT_SIZE", "minQty": lot, "maxQty": max_qty, "stepSize": lot },
                    { "filterType": "MARKET_LOT_SIZE", "minQty": lot, "maxQty": max_qty, "stepSize": lot },
                    { "filterType": "MAX_NUM_ORDERS", "limit": 1000 },
                    { "filterType": "MAX_NUM_ALGO_ORDERS", "limit": crate::engine::conditional::MAX_CONDITIONALS_PER_USER },
                    { "filterType": "PERCENT_PRICE", "multiplierUp": decimal(s.price_band_up), "multiplierDown": decimal(s.price_band_down), "multiplierDecimal": "4" },
                ],
                "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"],
                "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
            })
        })
        .collect();
    json!({
        "timezone": "UTC",
        "serverTime": now,
        "futuresType": "U_MARGINED",
        "rateLimits": [],
        "exchangeFilters": [],
        "assets": [{ "asset": "USDT", "marginAvailable": true, "autoAssetExchange": "0" }],
        "symbols": symbols,
    })
}

pub fn depth(spec: &SymbolSpec, seq: u64, bids: &[(i64, i64)], asks: &[(i64, i64)], now: i64) -> Value {
    let levels = |side: &[(i64, i64)]| side.iter().map(|(p, q)| [decimal(spec.ticks_to_price(*p)), decimal(spec.lots_to_quantity(*q))]).collect::<Vec<_>>();
    json!({ "lastUpdateId": seq, "E": now, "T": now, "bids": levels(bids), "asks": levels(asks) })
}

/// The native balance, in units.
pub struct Balance {
    pub total: i128,
    pub available: i128,
    pub locked: i128,
}

/// An open position with its symbol's prices, as the account's owner answers it.
pub type Position = (usize, PositionState, MarketPrices);

fn usdt(units: i128) -> String {
    units_to_usdt(units).to_string()
}

/// Unrealized PnL and maintenance margin at the valuation price.
fn health(spec: &SymbolSpec, p: &PositionState, prices: MarketPrices) -> (i128, i128) {
    prices.valuation().map(|px| Health::of(spec, p, px)).map_or((0, 0), |h| (h.unrealized, h.maintenance))
}

/// The USDT asset of `v3/account` and `v3/balance` (`updateTime` must not be 0: ccxt
/// skips such an asset). Native `locked` holds both the positions' and the open orders'
/// margin.
pub fn asset(map: &ShardMap, b: &Balance, positions: &[Position], now: i64) -> Value {
    let (mut unrealized, mut maintenance, mut position_margin) = (0, 0, 0);
    for (s, p, prices) in positions {
        let (pnl, maint) = health(&map.symbols[*s], p, *prices);
        unrealized += pnl;
        maintenance += maint;
        position_margin += p.margin;
    }
    json!({
        "asset": "USDT",
        "accountAlias": "",
        "walletBalance": usdt(b.total),
        "balance": usdt(b.total),
        "unrealizedProfit": usdt(unrealized),
        "crossUnPnl": "0",
        "marginBalance": usdt(b.total + unrealized),
        "availableBalance": usdt(b.available),
        "maxWithdrawAmount": usdt(b.available),
        "initialMargin": usdt(b.locked),
        "maintMargin": usdt(maintenance),
        "positionInitialMargin": usdt(position_margin),
        "openOrderInitialMargin": usdt((b.locked - position_margin).max(0)),
        "crossWalletBalance": usdt(b.total),
        "marginAvailable": true,
        "updateTime": now,
    })
}

/// `v3/account`: the totals, the one asset, and the open positions in short form.
pub fn account(map: &ShardMap, b: &Balance, positions: &[Position], now: i64) -> Value {
    let asset = asset(map, b, positions, now);
    json!({
        "totalInitialMargin": asset["initialMargin"],
        "totalMaintMargin": asset["maintMargin"],
        "totalWalletBalance": asset["walletBalance"],
        "totalUnrealizedProfit": asset["unrealizedProfit"],
        "totalMarginBalance": asset["marginBalance"],
        "totalPositionInitialMargin": asset["positionInitialMargin"],
        "totalOpenOrderInitialMargin": asset["openOrderInitialMargin"],
        "totalCrossWalletBalance": asset["crossWalletBalance"],
        "totalCrossUnPnl": "0",
        "availableBalance": asset["availableBalance"],
        "maxWithdrawAmount": asset["maxWithdrawAmount"],
        "canTrade": true,
        "canDeposit": true,
        "canWithdraw": true,
        "feeTier": 0,
        "multiAssetsMargin": false,
        "updateTime": now,
        "assets": [asset],
        "positions": position_risk(map, positions, None, now),
    })
}

/// `v3/positionRisk`: each open position (one-way: `positionSide` BOTH, signed amounts).
pub fn position_risk(map: &ShardMap, positions: &[Position], only: Option<usize>, now: i64) -> Vec<Value> {
    positions
        .iter()
        .filter(|(s, p, _)| p.size != 0 && only.is_none_or(|o| o == *s))
        .map(|(s, p, prices)| {
            let spec = &map.symbols[*s];
            let (unrealized, maintenance) = health(spec, p, *prices);
            let entry = entry_price(spec, p);
            let mark = prices.valuation().map_or(Decimal::ZERO, |t| spec.ticks_to_price(t));
            let amount = spec.lots_to_quantity(p.size);
            json!({
                "symbol": name(spec).0,
                "positionSide": "BOTH",
                "positionAmt": decimal(amount),
                "entryPrice": decimal(entry),
                "breakEvenPrice": decimal(entry),
                "markPrice": decimal(mark),
                "unRealizedProfit": usdt(unrealized),
                "liquidationPrice": decimal(liquidation_price(spec, p).map_or(Decimal::ZERO, |t| spec.ticks_to_price(t))),
                "leverage": p.leverage.to_string(),
                "maxNotionalValue": usdt(spec.max_position_notional.into()),
                "marginType": "isolated",
                "isolatedMargin": usdt(p.margin + unrealized),
                "isolatedWallet": usdt(p.margin),
                "initialMargin": usdt(p.margin),
                "maintMargin": usdt(maintenance),
                "isAutoAddMargin": "false",
                "notional": decimal((amount * mark).round_dp(8)),
                "marginAsset": "USDT",
                "adl": 0,
                "updateTime": now,
            })
        })
        .collect()
}

/// `v1/leverageBracket`: one bracket per symbol, its whole range at one maintenance rate.
pub fn leverage_brackets(map: &ShardMap, only: Option<usize>) -> Value {
    let bracket = |s: &SymbolSpec| {
        json!({
            "symbol": name(s).0,
            "brackets": [{
                "bracket": 1,
                "initialLeverage": s.max_leverage,
                "notionalCap": units_to_usdt(s.max_position_notional).trunc().to_u64().unwrap_or(u64::MAX),
                "notionalFloor": 0,
                "maintMarginRatio": s.maintenance_margin_rate.normalize().to_string().parse::<serde_json::Number>().ok(),
                "cum": 0,
            }],
        })
    };
    match only {
        Some(s) => bracket(&map.symbols[s]),
        None => Value::Array(map.symbols.iter().map(bracket).collect()),
    }
}

/// The error a rejected order is answered with: Binance records no order then.
pub fn rejection(reason: Option<CancelReason>) -> Error {
    match reason {
        Some(CancelReason::WouldTake) => Error::fixed(400, -5022, "Due to the order could not be executed as maker, the Post Only order will be rejected. The order will not be recorded in the order history"),
        Some(CancelReason::FokUnfillable) => Error::fixed(400, -5021, "Due to the order could not be filled immediately, the FOK order has been rejected. The order will not be recorded in the order history"),
        Some(CancelReason::NoLiquidity) => Error::fixed(400, -2020, "Unable to fill."),
        Some(CancelReason::ReduceOnlyRejected) => Error::fixed(400, -2022, "ReduceOnly Order is rejected."),
        Some(CancelReason::InsufficientMargin) => Error::fixed(400, -2019, "Account has insufficient balance for requested action."),
        Some(CancelReason::PriceOutOfBand) => Error::fixed(400, -4014, "Price out of the allowed band (PRICE_FILTER)."),
        Some(r) => Error::new(400, -1130, format!("Order rejected: {}", r.as_str())),
        None => Error::new(400, -1130, "Order rejected".to_owned()),
    }
}

/// An order's `orderId`: its number among its owner's orders (below 2^52, so exact in
/// every JSON reader). The engine's id adds the account partition above it, which the
/// key that asks names again.
pub fn order_id(id: crate::engine::OrderId) -> u64 {
    id.0 & crate::accounts::ORDER_NUMBER_MASK
}

/// An order in Binance's shape.
pub fn order(map: &ShardMap, v: &OrderView) -> Value {
    let spec = &map.symbols[v.symbol];
    let price = |t| decimal(spec.ticks_to_price(t));
    let (limit, tif, kind) = match v.kind {
        OrderType::Limit { price: p, .. } if v.terms.good_till != 0 => (price(p), "GTD", "LIMIT"),
        OrderType::Limit { price: p, tif } => (price(p), tif_name(tif), "LIMIT"),
        OrderType::Market | OrderType::MarketWithin { .. } => ("0".to_owned(), "GTC", "MARKET"),
        OrderType::Liquidation { price: p } => (price(p), "IOC", "LIQUIDATION"),
    };
    let quote = Decimal::try_from_i128_with_scale(v.filled_value, 0).unwrap_or(Decimal::ZERO) * spec.tick_size * spec.lot_size;
    let average = if v.filled > 0 { (quote / spec.lots_to_quantity(v.filled)).round_dp(8) } else { Decimal::ZERO };
    let status = match (v.status, v.reason) {
        // The countdown cancels on the user's own standing instruction.
        (OrderStatus::Cancelled, Some(CancelReason::UserRequest | CancelReason::Countdown) | None) => "CANCELED",
        (OrderStatus::Cancelled, _) => "EXPIRED",
        (s, _) => s.as_str(),
    };
    let client_order_id = v.client_order_id.map_or_else(|| crate::api::render::order_uuid(spec, v.id).to_string(), |c| c.as_str().to_owned());
    json!({
        "orderId": order_id(v.id),
        "symbol": name(spec).0,
        "status": status,
        "clientOrderId": client_order_id,
        "price": limit,
        "avgPrice": decimal(average),
        "origQty": decimal(spec.lots_to_quantity(v.quantity)),
        "executedQty": decimal(spec.lots_to_quantity(v.filled)),
        "cumQty": decimal(spec.lots_to_quantity(v.filled)),
        "cumQuote": decimal(quote),
        "timeInForce": tif,
        "type": kind,
        "origType": kind,
        "reduceOnly": v.terms.reduce_only,
        "closePosition": false,
        "side": v.side.as_str(),
        "positionSide": "BOTH",
        "stopPrice": "0",
        "workingType": "CONTRACT_PRICE",
        "priceProtect": false,
        "priceMatch": "NONE",
        "selfTradePreventionMode": v.terms.stp.as_str(),
        "goodTillDate": v.terms.good_till,
        "time": v.created_at,
        "updateTime": v.updated_at,
    })
}

/// How many symbols an [`algo_id`] can tell apart.
const ALGO_SYMBOLS: u64 = 1024;

/// An algo order's `algoId`: its conditional order's number on its symbol × 1,024 + the
/// symbol's place in the shard map, so that the id alone names it (Binance's
/// `GET v1/algoOrder` needs no symbol). Below 2^53 while the number is below 2^43.
pub fn algo_id(symbol: usize, id: u64) -> u64 {
    id.saturating_mul(ALGO_SYMBOLS) + symbol as u64
}

/// The symbol and number an [`algo_id`] names (the symbol may not exist).
pub fn algo_of(algo_id: u64) -> (usize, u64) {
    ((algo_id % ALGO_SYMBOLS) as usize, algo_id / ALGO_SYMBOLS)
}

/// A conditional order as Binance's AlgoOrder.
pub fn algo_order(map: &ShardMap, symbol: usize, c: &Conditional) -> Value {
    let spec = &map.symbols[symbol];
    let o = &c.order;
    let price = |t| decimal(spec.ticks_to_price(t));
    let status = match c.status {
        ConditionalStatus::New => "NEW",
        ConditionalStatus::Triggering => "TRIGGERING",
        ConditionalStatus::Triggered => "TRIGGERED",
        ConditionalStatus::Cancelled => "CANCELED",
        ConditionalStatus::Rejected => "REJECTED",
    };
    let client_algo_id = o.client_order_id.map_or_else(|| crate::api::render::conditional_uuid(spec, c.id), |c| c.as_str().to_owned());
    let mut algo = json!({
        "algoId": algo_id(symbol, c.id),
        "clientAlgoId": client_algo_id,
        "algoType": "CONDITIONAL",
        "orderType": o.type_name(),
        "symbol": name(spec).0,
        "side": o.side.as_str(),
        "positionSide": "BOTH",
        "timeInForce": tif_name(o.tif),
        "quantity": decimal(spec.lots_to_quantity(o.quantity)),
        "algoStatus": status,
        "triggerPrice": price(o.trigger),
        "price": o.price.map_or_else(|| "0".to_owned(), price),
        "icebergQuantity": null,
        "selfTradePreventionMode": spec.self_trade_prevention.as_str(),
        "workingType": o.working.as_str(),
        "priceMatch": "NONE",
        "closePosition": o.close_position,
        "priceProtect": false,
        "reduceOnly": o.reduces(),
        "createTime": o.timestamp,
        "updateTime": c.updated,
        "triggerTime": if c.status == ConditionalStatus::Triggered { c.updated } else { 0 },
        "goodTillDate": 0,
        "actualOrderId": c.order_id.map(|id| order_id(id).to_string()).unwrap_or_default(),
    });
    if o.kind == ConditionalKind::Trailing {
        // The activation price (none: active from the start) and the callback rate.
        algo["triggerPrice"] = "0".into();
        algo["activatePrice"] = if o.trigger == 0 { Value::Null } else { price(o.trigger).into() };
        algo["priceRate"] = crate::engine::conditional::callback_percent(o.callback).to_string().into();
    }
    algo
}

fn tif_name(tif: TimeInForce) -> &'static str {
    match tif {
        TimeInForce::Gtc => "GTC",
        TimeInForce::Ioc => "IOC",
        TimeInForce::Fok => "FOK",
        TimeInForce::PostOnly => "GTX",
    }
}

/// A fill in `v1/userTrades`' shape; `id` is the trade's sequence number on its symbol.
pub fn user_trade(map: &ShardMap, f: &Fill) -> Value {
    let spec = &map.symbols[f.symbol];
    let (price, qty) = (spec.ticks_to_price(f.price), spec.lots_to_quantity(f.quantity));
    json!({
        "symbol": name(spec).0,
        "id": f.trade_seq,
        "orderId": order_id(f.order_id),
        "side": f.side.as_str(),
        "price": decimal(price),
        "qty": decimal(qty),
        "quoteQty": decimal(price * qty),
        "realizedPnl": usdt(f.pnl),
        "commission": usdt(f.fee),
        "commissionAsset": "USDT",
        "time": f.time,
        "positionSide": "BOTH",
        "buyer": f.side == crate::engine::Side::Buy,
        "maker": f.maker,
    })
}

/// Binance's name of a kind of income, and back.
const INCOME_KINDS: [(IncomeKind, &str); 5] = [
    (IncomeKind::RealizedPnl, "REALIZED_PNL"),
    (IncomeKind::Commission, "COMMISSION"),
    (IncomeKind::FundingFee, "FUNDING_FEE"),
    (IncomeKind::Liquidation, "INSURANCE_CLEAR"),
    (IncomeKind::Transfer, "TRANSFER"),
];

pub fn income_kind(name: &str) -> Option<IncomeKind> {
    INCOME_KINDS.iter().find(|(_, n)| *n == name).map(|(k, _)| *k)
}

/// A money movement in `v1/income`'s shape. `tranId` is made from what identifies the
/// movement (its trade, or its time) and its kind, so it is the same on every call.
pub fn income(map: &ShardMap, i: &Income) -> Value {
    let spec = i.symbol.and_then(|s| map.symbols.get(s));
    let kind = INCOME_KINDS.iter().position(|(k, _)| *k == i.kind).unwrap_or(0);
    let base = i.trade_seq.map_or(i.time.unsigned_abs(), |t| t);
    json!({
        "symbol": spec.map_or_else(String::new, |s| name(s).0),
        "incomeType": INCOME_KINDS[kind].1,
        "income": usdt(i.amount),
        "asset": "USDT",
        "info": INCOME_KINDS[kind].1,
        "time": i.time,
        "tranId": (base.wrapping_mul(8).wrapping_add(kind as u64).wrapping_mul(64).wrapping_add(i.symbol.map_or(0, |s| s as u64 + 1))) & ((1 << 53) - 1),
        "tradeId": i.trade_seq.map_or_else(String::new, |t| t.to_string()),
    })
}

/// `v1/premiumIndex`: never null (no index yet: `"0"`).
pub fn premium_index(spec: &SymbolSpec, index: Option<i64>, mark: Option<i64>, rate: i64, time: i64, next_funding: i64) -> Value {
    let price = |t: Option<i64>| t.map_or_else(|| "0".to_owned(), |t| decimal(spec.ticks_to_price(t)));
    let rate = decimal(crate::wire::rate_decimal(rate));
    json!({
        "symbol": name(spec).0,
        "markPrice": price(mark),
        "indexPrice": price(index),
        "estimatedSettlePrice": price(index),
        "lastFundingRate": rate,
        "interestRate": "0",
        "nextFundingTime": next_funding,
        "time": time,
    })
}

/// A public trade in `v1/trades`' shape; `isBuyerMaker`: the taker sold.
pub fn trade(spec: &SymbolSpec, t: &PublicTrade) -> Value {
    let (price, qty) = (spec.ticks_to_price(t.price), spec.lots_to_quantity(t.quantity));
    json!({
        "id": t.seq,
        "price": decimal(price),
        "qty": decimal(qty),
        "quoteQty": decimal(price * qty),
        "time": t.time,
        "isBuyerMaker": t.taker_side == crate::engine::Side::Sell,
    })
}

/// A public trade in `v1/aggTrades`' shape (each trade its own aggregate).
pub fn agg_trade(spec: &SymbolSpec, t: &PublicTrade) -> Value {
    json!({
        "a": t.seq,
        "p": decimal(spec.ticks_to_price(t.price)),
        "q": decimal(spec.lots_to_quantity(t.quantity)),
        "f": t.seq,
        "l": t.seq,
        "T": t.time,
        "m": t.taker_side == crate::engine::Side::Sell,
    })
}

/// `v1/ticker/bookTicker`: the best level of each side (`"0"` for an empty side).
pub fn book_ticker(spec: &SymbolSpec, seq: u64, bid: Option<&(i64, i64)>, ask: Option<&(i64, i64)>, now: i64) -> Value {
    let level = |l: Option<&(i64, i64)>| {
        l.map_or_else(|| ("0".to_owned(), "0".to_owned()), |(p, q)| (decimal(spec.ticks_to_price(*p)), decimal(spec.lots_to_quantity(*q))))
    };
    let ((bid_price, bid_qty), (ask_price, ask_qty)) = (level(bid), level(ask));
    json!({
        "symbol": name(spec).0,
        "bidPrice": bid_price,
        "bidQty": bid_qty,
        "askPrice": ask_price,
        "askQty": ask_qty,
        "lastUpdateId": seq,
        "time": now,
    })
}

/// `v2/ticker/price`: the last trade's price (`"0"` before the first trade).
pub fn price_ticker(spec: &SymbolSpec, last: Option<&PublicTrade>, now: i64) -> Value {
    json!({
        "symbol": name(spec).0,
        "price": last.map_or_else(|| "0".to_owned(), |t| decimal(spec.ticks_to_price(t.price))),
        "time": last.map_or(now, |t| t.time),
    })
}

/// `v1/klines`: `[openTime, open, high, low, close, volume, closeTime, quoteVolume,
/// trades, takerBuyVolume, takerBuyQuoteVolume, "0"]` per candle, oldest first.
pub fn kline(spec: &SymbolSpec, interval: Interval, c: &Candle) -> Value {
    let v = CandleView::of(spec, c);
    json!([
        c.open_time,
        v.open.to_string(),
        v.high.to_string(),
        v.low.to_string(),
        v.close.to_string(),
        v.volume.to_string(),
        interval.next(c.open_time) - 1,
        v.quote_volume.to_string(),
        c.trades,
        v.taker_buy_volume.to_string(),
        v.taker_buy_quote_volume.to_string(),
        "0",
    ])
}

/// `v1/ticker/24hr`: the last 24 hours' trades. With none, the prices are the last
/// trade's (or `"0"`) and the volumes zero.
pub fn day_ticker(spec: &SymbolSpec, day: Option<&Candle>, last: Option<&PublicTrade>, now: i64) -> Value {
    let last_price = last.map_or(Decimal::ZERO, |t| spec.ticks_to_price(t.price).normalize());
    let v = day.map(|d| CandleView::of(spec, d));
    let open = v.as_ref().map_or(last_price, |v| v.open);
    let change = last_price - open;
    let percent = if open.is_zero() { Decimal::ZERO } else { (change * Decimal::ONE_HUNDRED / open).round_dp(3) };
    let average = v.as_ref().filter(|v| !v.volume.is_zero()).map_or(last_price, |v| {
        (v.quote_volume / v.volume).round_dp(places(spec.tick_size) + 2).normalize()
    });
    json!({
        "symbol": name(spec).0,
        "priceChange": decimal(change),
        "priceChangePercent": decimal(percent),
        "weightedAvgPrice": decimal(average),
        "lastPrice": decimal(last_price),
        "lastQty": last.map_or(Decimal::ZERO, |t| spec.lots_to_quantity(t.quantity)).normalize().to_string(),
        "openPrice": decimal(open),
        "highPrice": decimal(v.as_ref().map_or(last_price, |v| v.high)),
        "lowPrice": decimal(v.as_ref().map_or(last_price, |v| v.low)),
        "volume": decimal(v.as_ref().map_or(Decimal::ZERO, |v| v.volume)),
        "quoteVolume": decimal(v.as_ref().map_or(Decimal::ZERO, |v| v.quote_volume)),
        "openTime": day.map_or(now - 24 * 3_600_000, |d| d.open_time),
        "closeTime": now,
        "firstId": day.map_or(-1, |d| d.first_seq as i64),
        "lastId": day.map_or(-1, |d| d.last_seq as i64),
        "count": day.map_or(0, |d| d.trades),
    })
}

/// `POST v1/leverage`'s answer: the setting, and the largest position the symbol allows.
pub fn leverage(spec: &SymbolSpec, leverage: u32) -> Value {
    json!({
        "leverage": leverage,
        "maxNotionalValue": usdt(spec.max_position_notional.into()),
        "symbol": name(spec).0,
    })
}

/// `v1/fundingRate`: one settled round.
pub fn funding_rate(spec: &SymbolSpec, f: &crate::shard::protocol::FundingRate) -> Value {
    json!({
        "symbol": name(spec).0,
        "fundingRate": decimal(crate::wire::rate_decimal(f.rate)),
        "fundingTime": f.time,
        "markPrice": f.mark.map_or_else(String::new, |t| decimal(spec.ticks_to_price(t))),
    })
}

/// `v1/symbolConfig`: one symbol's settings for the caller (isolated margin only).
pub fn symbol_config(spec: &SymbolSpec, leverage: u32) -> Value {
    json!({
        "symbol": name(spec).0,
        "marginType": "ISOLATED",
        "isAutoAddMargin": "false",
        "leverage": leverage,
        "maxNotionalValue": usdt(spec.max_position_notional.into()),
    })
}
