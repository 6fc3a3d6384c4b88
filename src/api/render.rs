//! JSON shapes of the API (camelCase, decimals as strings), rendered from engine and
//! account state.

use rust_decimal::Decimal;
use serde::Serialize;

use crate::accounts::{Fill, Income, OrderView};
use crate::engine::perp::liquidation_price;
use crate::engine::symbol::units_to_usdt;
use crate::engine::{Conditional, Health, OrderType, PositionState, SymbolSpec, ADL_ORDER, ENGINE_ORDER};
use crate::ids::{self, IdKind};
use crate::wire::rate_decimal;
use super::HttpReply;
use crate::shard::protocol::{Answer, MarketPrices};
use crate::shard::protocol::{Candle, PublicTrade};
use crate::shard_map::ShardMap;

pub fn ok(body: &impl Serialize) -> HttpReply {
    HttpReply { status: 200, body: serde_json::to_vec(body).unwrap_or_default(), retry_after: None, close: false, content_type: super::JSON }
}

/// An order's id as the API shows it (serialized as its text).
pub fn order_uuid(spec: &SymbolSpec, id: crate::engine::OrderId) -> uuid::Uuid {
    ids::encode(IdKind::Order, spec.key, id.0)
}

/// A value written as its `Display` text, straight into the output (no `String` first).
pub struct Shown<T>(pub T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// An order as the API shows it, borrowing what it can and writing its numbers straight
/// into the output: rendering it allocates nothing of its own.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderJson<'a> {
    order_id: uuid::Uuid,
    client_order_id: Option<&'a str>,
    symbol: &'a str,
    side: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    time_in_force: Option<&'static str>,
    price: Option<Shown<Decimal>>,
    quantity: Shown<Decimal>,
    filled_quantity: Shown<Decimal>,
    avg_fill_price: Option<Shown<Decimal>>,
    status: &'static str,
    reason: Option<&'static str>,
    created_at: i64,
    updated_at: i64,
    /// Beyond API.md: what the order was placed with (absent for orders a snapshot
    /// older than these fields holds).
    #[serde(skip_serializing_if = "Option::is_none")]
    leverage: Option<u32>,
    reduce_only: bool,
    self_trade_prevention_mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    good_till_date: Option<i64>,
}

pub fn order<'a>(map: &'a ShardMap, v: &'a OrderView) -> OrderJson<'a> {
    let spec = &map.symbols[v.symbol];
    let (price, time_in_force, kind) = match v.kind {
        OrderType::Limit { price, .. } if v.terms.good_till != 0 => (Some(Shown(spec.ticks_to_price(price))), Some("GTD"), "LIMIT"),
        OrderType::Limit { price, tif: t } => (Some(Shown(spec.ticks_to_price(price))), Some(t.as_str()), "LIMIT"),
        OrderType::Market | OrderType::MarketWithin { .. } => (None, None, "MARKET"),
        OrderType::Liquidation { price } => (Some(Shown(spec.ticks_to_price(price))), Some("IOC"), "LIQUIDATION"),
    };
    let avg_fill_price = (v.filled > 0).then(|| {
        let ticks = Decimal::from_i128_with_scale(v.filled_value, 0) / Decimal::from(v.filled);
        Shown((ticks * spec.tick_size).round_dp(8).normalize())
    });
    OrderJson {
        order_id: order_uuid(spec, v.id),
        client_order_id: v.client_order_id.as_ref().map(|c| c.as_str()),
        symbol: &spec.name,
        side: v.side.as_str(),
        kind,
        time_in_force,
        price,
        quantity: Shown(spec.lots_to_quantity(v.quantity)),
        filled_quantity: Shown(spec.lots_to_quantity(v.filled)),
        avg_fill_price,
        status: v.status.as_str(),
        reason: v.reason.map(|r| r.as_str()),
        created_at: v.created_at,
        updated_at: v.updated_at,
        leverage: (v.terms.leverage > 0).then_some(v.terms.leverage),
        reduce_only: v.terms.reduce_only,
        self_trade_prevention_mode: v.terms.stp.as_str(),
        good_till_date: (v.terms.good_till != 0).then_some(v.terms.good_till),
    }
}

pub fn balance(total: i128, available: i128, locked: i128) -> serde_json::Value {
    serde_json::json!({
        "currency": "USDT",
        "total": units_to_usdt(total).to_string(),
        "available": units_to_usdt(available).to_string(),
        "locked": units_to_usdt(locked).to_string(),
    })
}

/// A position's entry price (0 when flat).
pub fn entry_price(spec: &SymbolSpec, p: &PositionState) -> Decimal {
    // Cost ÷ (units per tick·lot × size), in ticks.
    let entry_ticks = Decimal::try_from_i128_with_scale(p.cost, 0)
        .ok()
        .zip(Decimal::try_from_i128_with_scale(p.size.abs() * i128::from(spec.units_per_tick_lot()), 0).ok())
        .and_then(|(cost, per_tick)| cost.checked_div(per_tick))
        .unwrap_or(Decimal::ZERO);
    entry_ticks.checked_mul(spec.tick_size).unwrap_or(Decimal::ZERO).round_dp(8).normalize()
}

pub fn position(spec: &SymbolSpec, p: &PositionState, prices: MarketPrices) -> serde_json::Value {
    let size = p.size.abs();
    // Measured at the mark price, or the last trade before the first index price.
    let health = prices.valuation().map(|px| Health::of(spec, p, px));
    let price = |ticks: Option<i64>| ticks.map(|t| spec.ticks_to_price(t).to_string());
    serde_json::json!({
        "symbol": spec.name,
        "side": if p.size > 0 { "LONG" } else { "SHORT" },
        "size": spec.lots_to_quantity(size).to_string(),
        "entryPrice": entry_price(spec, p).to_string(),
        "leverage": p.leverage,
        "margin": units_to_usdt(p.margin).to_string(),
        "unrealizedPnl": units_to_usdt(health.map_or(0, |h| h.unrealized)).to_string(),
        "realizedPnl": units_to_usdt(p.realized_pnl).to_string(),
        "markPrice": price(prices.mark),
        "liquidationPrice": price(liquidation_price(spec, p)),
        "maintenanceMargin": units_to_usdt(health.map_or(0, |h| h.maintenance)).to_string(),
    })
}

/// The book's top levels (`GET /v1/depth`, the `depth` channel).
pub fn depth(spec: &SymbolSpec, seq: u64, bids: &[(i64, i64)], asks: &[(i64, i64)]) -> serde_json::Value {
    let levels = |side: &[(i64, i64)]| {
        side.iter().map(|(p, q)| [spec.ticks_to_price(*p).to_string(), spec.lots_to_quantity(*q).to_string()]).collect::<Vec<_>>()
    };
    serde_json::json!({ "symbol": spec.name, "seq": seq, "bids": levels(bids), "asks": levels(asks) })
}

/// A public trade (`GET /v1/trades`, the `trades` channel).
pub fn public_trade(spec: &SymbolSpec, t: &PublicTrade) -> serde_json::Value {
    serde_json::json!({
        "tradeId": ids::encode(IdKind::Trade, spec.key, t.seq).to_string(),
        "price": spec.ticks_to_price(t.price).to_string(),
        "quantity": spec.lots_to_quantity(t.quantity).to_string(),
        "takerSide": t.taker_side.as_str(),
        "time": t.time,
    })
}

pub fn income(map: &ShardMap, i: &Income) -> serde_json::Value {
    let spec = i.symbol.and_then(|s| map.symbols.get(s));
    serde_json::json!({
        "symbol": spec.map(|s| s.name.clone()),
        "type": i.kind.as_str(),
        "amount": units_to_usdt(i.amount).to_string(),
        "asset": "USDT",
        "time": i.time,
        "tradeId": spec.zip(i.trade_seq).map(|(s, seq)| ids::encode(IdKind::Trade, s.key, seq).to_string()),
    })
}

pub fn fill(map: &ShardMap, f: &Fill) -> serde_json::Value {
    let spec = &map.symbols[f.symbol];
    serde_json::json!({
        "tradeId": ids::encode(IdKind::Trade, spec.key, f.trade_seq).to_string(),
        "orderId": order_uuid(spec, f.order_id),
        "symbol": spec.name,
        "side": f.side.as_str(),
        "price": spec.ticks_to_price(f.price).to_string(),
        "quantity": spec.lots_to_quantity(f.quantity).to_string(),
        "fee": units_to_usdt(f.fee).to_string(),
        "feeCurrency": "USDT",
        "realizedPnl": units_to_usdt(f.pnl).to_string(),
        "liquidity": if f.order_id.0 & ADL_ORDER != 0 && f.order_id.0 & ENGINE_ORDER != 0 {
            "ADL"
        } else if f.maker {
            "MAKER"
        } else {
            "TAKER"
        },
        "time": f.time,
    })
}

pub fn symbols(map: &ShardMap, shards: usize) -> serde_json::Value {
    serde_json::Value::Array(
        map.symbols
            .iter()
            .map(|s| {
                serde_json::json!({
                    "symbol": s.name,
                    "tickSize": s.tick_size.normalize().to_string(),
                    "lotSize": s.lot_size.normalize().to_string(),
                    "maxLeverage": s.max_leverage,
                    "makerFee": s.maker_fee.normalize().to_string(),
                    "takerFee": s.taker_fee.normalize().to_string(),
                    "maintenanceMarginRate": s.maintenance_margin_rate.normalize().to_string(),
                    "priceBandDown": s.price_band_down.normalize().to_string(),
                    "priceBandUp": s.price_band_up.normalize().to_string(),
                    "markBand": s.mark_band.normalize().to_string(),
                    "fundingIntervalSecs": s.funding_interval_secs,
                    "maxPosition": s.lots_to_quantity(s.max_position).normalize().to_string(),
                    "maxPositionNotional": units_to_usdt(s.max_position_notional).to_string(),
                    "shard": s.shard % shards.max(1),
                })
            })
            .collect(),
    )
}


/// `GET /admin/v1/summary`: the exchange's books. Unrealized PnL is summed per symbol
/// at one price (the mark, or else the last trade), which makes it exactly the negative
/// of the realized PnL still inside the balances: the positions of a symbol sum to zero.
pub fn summary(map: &ShardMap, totals: &crate::accounts::Totals, prices: &[(usize, MarketPrices)]) -> serde_json::Value {
    let unrealized: i128 = totals
        .positions
        .iter()
        .map(|(symbol, size, signed_cost)| {
            let price = prices.iter().find(|(s, _)| s == symbol).and_then(|(_, p)| p.valuation()).unwrap_or(0);
            size * i128::from(price) * i128::from(map.symbols[*symbol].units_per_tick_lot()) - signed_cost
        })
        .sum();
    let insurance_fund: i128 = prices.iter().map(|(_, p)| p.fund).sum();
    serde_json::json!({
        "currency": "USDT",
        "deposits": units_to_usdt(totals.deposits).to_string(),
        "balances": units_to_usdt(totals.balances).to_string(),
        "unrealizedPnl": units_to_usdt(unrealized).to_string(),
        "fees": units_to_usdt(totals.fees).to_string(),
        "insuranceFund": units_to_usdt(insurance_fund).to_string(),
        "balanced": totals.deposits == totals.balances + unrealized + totals.fees + insurance_fund,
    })
}

pub fn conditional_uuid(spec: &SymbolSpec, id: u64) -> String {
    ids::encode(IdKind::Conditional, spec.key, id).to_string()
}

/// A conditional order (`/v1/conditional-orders`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionalJson {
    conditional_id: String,
    client_order_id: Option<String>,
    symbol: String,
    side: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    /// `null` for a trailing stop, which has the three fields after it instead.
    trigger_price: Option<String>,
    /// A trailing stop's activation price (`null`: active from the start), its callback
    /// rate (percent), and its best price since activation (`null`: not active yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    activation_price: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_rate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trailing_price: Option<Option<String>>,
    working_type: &'static str,
    price: Option<String>,
    time_in_force: Option<&'static str>,
    quantity: Option<String>,
    close_position: bool,
    reduce_only: bool,
    status: &'static str,
    /// The order it placed once triggered.
    order_id: Option<uuid::Uuid>,
    reason: Option<&'static str>,
    created_at: i64,
    updated_at: i64,
}

pub fn conditional(spec: &SymbolSpec, c: &Conditional) -> ConditionalJson {
    let o = &c.order;
    let price = |t| spec.ticks_to_price(t).to_string();
    let trailing = o.kind == crate::engine::ConditionalKind::Trailing;
    ConditionalJson {
        conditional_id: conditional_uuid(spec, c.id),
        client_order_id: o.client_order_id.map(|c| c.as_str().to_owned()),
        symbol: spec.name.clone(),
        side: o.side.as_str(),
        kind: o.type_name(),
        trigger_price: (!trailing).then(|| price(o.trigger)),
        activation_price: trailing.then(|| (o.trigger != 0).then(|| price(o.trigger))),
        callback_rate: trailing.then(|| crate::engine::conditional::callback_percent(o.callback).to_string()),
        trailing_price: trailing.then(|| c.extreme.map(price)),
        working_type: o.working.as_str(),
        price: o.price.map(|p| spec.ticks_to_price(p).to_string()),
        time_in_force: o.price.map(|_| o.tif.as_str()),
        quantity: (!o.close_position).then(|| spec.lots_to_quantity(o.quantity).to_string()),
        close_position: o.close_position,
        reduce_only: o.reduces(),
        status: c.status.as_str(),
        order_id: c.order_id.map(|id| order_uuid(spec, id)),
        reason: c.reason.map(|r| r.as_str()),
        created_at: o.timestamp,
        updated_at: c.updated,
    }
}

/// A shard's answer, as the API shows it.
pub fn answer(map: &ShardMap, answer: &Answer) -> HttpReply {
    match answer {
        Answer::Conditional { symbol, conditional: c } => ok(&conditional(&map.symbols[*symbol], c)),
        Answer::Conditionals { symbol, list } => ok(&list.iter().map(|c| conditional(&map.symbols[*symbol], c)).collect::<Vec<_>>()),
        Answer::Order(v) => ok(&order(map, v)),
        Answer::Orders(list) => ok(&list.iter().map(|v| order(map, v)).collect::<Vec<_>>()),
        Answer::Fills(list) => ok(&list.iter().map(|f| fill(map, f)).collect::<Vec<_>>()),
        Answer::Balance { total, available, locked } => ok(&balance(*total, *available, *locked)),
        Answer::Positions(list) => ok(&list.iter().map(|(s, p, prices)| position(&map.symbols[*s], p, *prices)).collect::<Vec<_>>()),
        Answer::Income(list) => ok(&list.iter().map(|i| income(map, i)).collect::<Vec<_>>()),
        Answer::PremiumIndex { symbol, index, mark, last_funding_rate, time, next_funding } => {
            let spec = &map.symbols[*symbol];
            ok(&serde_json::json!({
                "symbol": spec.name,
                "indexPrice": index.map(|t| spec.ticks_to_price(t).to_string()),
                "markPrice": mark.map(|t| spec.ticks_to_price(t).to_string()),
                "lastFundingRate": rate_decimal(*last_funding_rate).to_string(),
                "nextFundingTime": next_funding,
                "time": time,
            }))
        }
        Answer::Funding { symbol, rate, mark, time, positions } => {
            let spec = &map.symbols[*symbol];
            ok(&serde_json::json!({
                "symbol": spec.name,
                "fundingRate": rate_decimal(*rate).to_string(),
                "markPrice": mark.map(|t| spec.ticks_to_price(t).to_string()),
                "time": time,
                "positions": positions,
            }))
        }
        Answer::Depth { symbol, seq, bids, asks } => ok(&depth(&map.symbols[*symbol], *seq, bids, asks)),
        Answer::Trades { symbol, trades } => {
            let spec = &map.symbols[*symbol];
            ok(&trades.iter().map(|t| public_trade(spec, t)).collect::<Vec<_>>())
        }
        Answer::Klines { symbol, interval, candles } => {
            let spec = &map.symbols[*symbol];
            ok(&candles
                .iter()
                .map(|c| {
                    let v = CandleView::of(spec, c);
                    serde_json::json!({
                        "openTime": c.open_time,
                        "open": v.open, "high": v.high, "low": v.low, "close": v.close,
                        "volume": v.volume, "quoteVolume": v.quote_volume, "trades": c.trades,
                        "takerBuyVolume": v.taker_buy_volume, "takerBuyQuoteVolume": v.taker_buy_quote_volume,
                        "closeTime": interval.next(c.open_time) - 1,
                    })
                })
                .collect::<Vec<_>>())
        }
        Answer::FundingHistory { symbol, rounds } => {
            let spec = &map.symbols[*symbol];
            ok(&rounds
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "symbol": spec.name,
                        "fundingRate": rate_decimal(f.rate).to_string(),
                        "fundingTime": f.time,
                        "markPrice": f.mark.map(|t| spec.ticks_to_price(t).to_string()),
                    })
                })
                .collect::<Vec<_>>())
        }
        Answer::Ticker { symbol, day, last, time } => {
            let spec = &map.symbols[*symbol];
            let v = day.as_ref().map(|d| CandleView::of(spec, d));
            ok(&serde_json::json!({
                "symbol": spec.name,
                "open": v.as_ref().map(|v| v.open),
                "high": v.as_ref().map(|v| v.high),
                "low": v.as_ref().map(|v| v.low),
                "last": last.map(|t| spec.ticks_to_price(t.price).normalize().to_string()),
                "volume": v.as_ref().map_or(Decimal::ZERO, |v| v.volume).to_string(),
                "quoteVolume": v.as_ref().map_or(Decimal::ZERO, |v| v.quote_volume).to_string(),
                "trades": day.map_or(0, |d| d.trades),
                "openTime": time - 24 * 3_600_000,
                "closeTime": time,
            }))
        }
        Answer::Cancelled(list) => {
            let cancelled: Vec<String> = list.iter().map(|(s, id)| order_uuid(&map.symbols[*s], *id).to_string()).collect();
            ok(&serde_json::json!({ "cancelled": cancelled }))
        }
        Answer::UserCreated { name, api_key, api_secret } => ok(&serde_json::json!({ "userId": name, "apiKey": api_key, "apiSecret": api_secret })),
        Answer::Countdown { symbol, after_ms } => ok(&serde_json::json!({ "symbol": map.symbols[*symbol].name, "countdownTime": after_ms })),
        Answer::Leverage { symbol, leverage } => ok(&serde_json::json!({ "symbol": map.symbols[*symbol].name, "leverage": leverage })),
        Answer::User(user) => ok(&serde_json::json!({ "userId": crate::wire::account_id(*user) })),
    }
}

const BIG: i128 = 10_i128.pow(26);

/// A candle's prices and volumes as decimals (prices, base quantities, USDT), for both
/// dialects.
pub struct CandleView {
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
    pub quote_volume: Decimal,
    pub taker_buy_volume: Decimal,
    pub taker_buy_quote_volume: Decimal,
}

impl CandleView {
    pub fn of(spec: &SymbolSpec, c: &Candle) -> Self {
        let price = |t: i64| spec.ticks_to_price(t).normalize();
        // A decimal holds 28 digits; no real volume comes near the clamp.
        let quantity = |lots: i128| spec.lots_to_quantity(lots.clamp(-BIG, BIG)).normalize();
        let quote = |tick_lots: i128| units_to_usdt(tick_lots.saturating_mul(i128::from(spec.units_per_tick_lot))).normalize();
        Self {
            open: price(c.open),
            high: price(c.high),
            low: price(c.low),
            close: price(c.close),
            volume: quantity(c.volume),
            quote_volume: quote(c.quote_volume),
            taker_buy_volume: quantity(c.taker_buy_volume),
            taker_buy_quote_volume: quote(c.taker_buy_quote_volume),
        }
    }
}
