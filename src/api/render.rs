//! JSON shapes of the API (camelCase, decimals as strings), rendered from engine and
//! account state.

use rust_decimal::Decimal;
use serde::Serialize;

use crate::accounts::{Fill, OrderView};
use crate::engine::symbol::units_to_usdt;
use crate::engine::{OrderType, PositionState, SymbolSpec};
use crate::ids::{self, IdKind};
use super::HttpReply;
use crate::shard::protocol::Answer;
use crate::shard_map::ShardMap;

pub fn ok(body: &impl Serialize) -> HttpReply {
    HttpReply { status: 200, body: serde_json::to_vec(body).unwrap_or_default(), retry_after: None, close: false }
}

pub fn order_uuid(spec: &SymbolSpec, id: crate::engine::OrderId) -> String {
    ids::encode(IdKind::Order, spec.key, id.0).to_string()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderJson {
    order_id: String,
    client_order_id: Option<String>,
    symbol: String,
    side: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    time_in_force: Option<&'static str>,
    price: Option<String>,
    quantity: String,
    filled_quantity: String,
    avg_fill_price: Option<String>,
    status: &'static str,
    reason: Option<&'static str>,
    created_at: i64,
    updated_at: i64,
}

pub fn order(map: &ShardMap, v: &OrderView) -> OrderJson {
    let spec = &map.symbols[v.symbol];
    let (price, time_in_force, kind) = match v.kind {
        OrderType::Limit { price, tif: t } => (Some(spec.ticks_to_price(price).to_string()), Some(t.as_str()), "LIMIT"),
        OrderType::Market | OrderType::MarketWithin { .. } => (None, None, "MARKET"),
    };
    let avg_fill_price = (v.filled > 0).then(|| {
        let ticks = Decimal::from_i128_with_scale(v.filled_value, 0) / Decimal::from(v.filled);
        (ticks * spec.tick_size).round_dp(8).normalize().to_string()
    });
    OrderJson {
        order_id: order_uuid(spec, v.id),
        client_order_id: v.client_order_id.map(|c| c.as_str().to_owned()),
        symbol: spec.name.clone(),
        side: v.side.as_str(),
        kind,
        time_in_force,
        price,
        quantity: spec.lots_to_quantity(v.quantity).to_string(),
        filled_quantity: spec.lots_to_quantity(v.filled).to_string(),
        avg_fill_price,
        status: v.status.as_str(),
        reason: v.reason.map(|r| r.as_str()),
        created_at: v.created_at,
        updated_at: v.updated_at,
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

pub fn position(spec: &SymbolSpec, p: &PositionState, last: Option<i64>) -> serde_json::Value {
    let size = p.size.abs();
    // Cost ÷ (units per tick·lot × size), in ticks; a flat position has no entry price.
    let entry_ticks = Decimal::try_from_i128_with_scale(p.cost, 0)
        .ok()
        .zip(Decimal::try_from_i128_with_scale(size * i128::from(spec.units_per_tick_lot()), 0).ok())
        .and_then(|(cost, per_tick)| cost.checked_div(per_tick))
        .unwrap_or(Decimal::ZERO);
    let unrealized = last.map_or(0, |px| {
        let value = i128::from(px) * size * i128::from(spec.units_per_tick_lot());
        if p.size > 0 { value - p.cost } else { p.cost - value }
    });
    serde_json::json!({
        "symbol": spec.name,
        "side": if p.size > 0 { "LONG" } else { "SHORT" },
        "size": spec.lots_to_quantity(size).to_string(),
        "entryPrice": entry_ticks.checked_mul(spec.tick_size).unwrap_or(Decimal::ZERO).round_dp(8).normalize().to_string(),
        "leverage": p.leverage,
        "margin": units_to_usdt(p.margin).to_string(),
        "unrealizedPnl": units_to_usdt(unrealized).to_string(),
        "realizedPnl": units_to_usdt(p.realized_pnl).to_string(),
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
        "liquidity": if f.maker { "MAKER" } else { "TAKER" },
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
/// at its last trade price (`last`), which makes it exactly the negative of the realized
/// PnL still inside the balances.
pub fn summary(map: &ShardMap, totals: &crate::accounts::Totals, last: &[(usize, Option<i64>)]) -> serde_json::Value {
    let unrealized: i128 = totals
        .positions
        .iter()
        .map(|(symbol, size, signed_cost)| {
            let price = last.iter().find(|(s, _)| s == symbol).and_then(|(_, p)| *p).unwrap_or(0);
            size * i128::from(price) * i128::from(map.symbols[*symbol].units_per_tick_lot()) - signed_cost
        })
        .sum();
    let insurance_fund = 0;
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

/// A shard's answer, as the API shows it.
pub fn answer(map: &ShardMap, answer: &Answer) -> HttpReply {
    match answer {
        Answer::Order(v) => ok(&order(map, v)),
        Answer::Orders(list) => ok(&list.iter().map(|v| order(map, v)).collect::<Vec<_>>()),
        Answer::Fills(list) => ok(&list.iter().map(|f| fill(map, f)).collect::<Vec<_>>()),
        Answer::Balance { total, available, locked } => ok(&balance(*total, *available, *locked)),
        Answer::Positions(list) => ok(&list.iter().map(|(s, p, last)| position(&map.symbols[*s], p, *last)).collect::<Vec<_>>()),
        Answer::Depth { symbol, seq, bids, asks } => {
            let spec = &map.symbols[*symbol];
            let levels = |side: &[(i64, i64)]| {
                side.iter().map(|(p, q)| [spec.ticks_to_price(*p).to_string(), spec.lots_to_quantity(*q).to_string()]).collect::<Vec<_>>()
            };
            ok(&serde_json::json!({ "symbol": spec.name, "seq": seq, "bids": levels(bids), "asks": levels(asks) }))
        }
        Answer::Trades { symbol, trades } => {
            let spec = &map.symbols[*symbol];
            let trades: Vec<_> = trades
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "tradeId": ids::encode(IdKind::Trade, spec.key, t.seq).to_string(),
                        "price": spec.ticks_to_price(t.price).to_string(),
                        "quantity": spec.lots_to_quantity(t.quantity).to_string(),
                        "takerSide": t.taker_side.as_str(),
                        "time": t.time,
                    })
                })
                .collect();
            ok(&trades)
        }
        Answer::Cancelled(list) => {
            let cancelled: Vec<String> = list.iter().map(|(s, id)| order_uuid(&map.symbols[*s], *id)).collect();
            ok(&serde_json::json!({ "cancelled": cancelled }))
        }
        Answer::UserCreated { name, api_key } => ok(&serde_json::json!({ "userId": name, "apiKey": api_key })),
        Answer::User(user) => ok(&serde_json::json!({ "userId": crate::wire::account_id(*user) })),
    }
}
