//! The event log's JSON records as the rows cold storage keeps. The records' shapes are
//! `wire`'s, the same types the log writers serialize; this only turns what the tables
//! need into rows (decimals and ids parsed exactly).

use rust_decimal::Decimal;
use uuid::Uuid;

use crate::wire::{CommandJson, ResultJson};

/// A new order (`OrderSubmitted` on `orders.submitted`), with its place in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderRow {
    pub id: Uuid,
    pub user_id: String,
    pub symbol: String,
    pub client_order_id: Option<String>,
    pub side: String,
    pub kind: String,
    pub time_in_force: Option<String>,
    pub price: Option<Decimal>,
    pub quantity: Decimal,
    pub leverage: i32,
    pub reduce_only: bool,
    pub created_ms: i64,
    pub partition: i32,
    pub offset: i64,
    /// The command record's number (see [`crate::wire::EpochFloor`]).
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TradeRow {
    pub id: Uuid,
    pub symbol: String,
    pub seq: i64,
    pub price: Decimal,
    pub quantity: Decimal,
    pub taker_side: String,
    pub buyer_id: String,
    pub buyer_order_id: Uuid,
    pub buyer_fee: Decimal,
    pub buyer_pnl: Decimal,
    pub seller_id: String,
    pub seller_order_id: Uuid,
    pub seller_fee: Decimal,
    pub seller_pnl: Decimal,
    pub executed_ms: i64,
}

/// An order that left the book (or never entered it) unfilled or partly filled.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosureRow {
    pub order_id: Uuid,
    pub reason: String,
    pub closed_ms: i64,
}

/// One position's funding payment (`FundingPaid`).
#[derive(Debug, Clone, PartialEq)]
pub struct FundingRow {
    pub event_id: Uuid,
    pub user_id: String,
    pub symbol: String,
    pub amount: Decimal,
    pub rate: Decimal,
    pub mark: Decimal,
    pub paid_ms: i64,
}

/// A liquidation's end (`PositionLiquidated`).
#[derive(Debug, Clone, PartialEq)]
pub struct LiquidationRow {
    pub order_id: Uuid,
    pub user_id: String,
    pub symbol: String,
    pub side: String,
    pub quantity: Decimal,
    pub filled: Decimal,
    pub deleveraged: Decimal,
    pub to_fund: Decimal,
    pub at_ms: i64,
}

/// A conditional order as one of its status changes left it (`ConditionalOrderUpdated`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionalRow {
    pub id: Uuid,
    pub user_id: String,
    pub symbol: String,
    pub side: String,
    pub kind: String,
    pub trigger: Decimal,
    pub working_type: String,
    pub price: Option<Decimal>,
    pub quantity: Option<Decimal>,
    pub callback_rate: Option<Decimal>,
    pub close_position: bool,
    pub reduce_only: bool,
    pub client_order_id: Option<String>,
    pub status: String,
    pub order_id: Option<Uuid>,
    pub reason: Option<String>,
    pub seq: i64,
    pub at_ms: i64,
}

/// What a result says of its symbol's prices and insurance fund (absent: unchanged).
#[derive(Debug, Clone, PartialEq)]
pub struct MarketRow {
    pub symbol: String,
    pub seq: i64,
    pub index: Option<Decimal>,
    pub mark: Option<Decimal>,
    pub fund: Option<Decimal>,
    pub at_ms: i64,
}

/// What one record means for cold storage.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Order(OrderRow),
    /// The command at this offset of this partition of `orders.submitted` never counted
    /// (if the void itself counts: see [`crate::wire::EpochFloor`]).
    Voided { symbol: String, seq: u64, partition: i32, offset: i64 },
    /// A writer's epoch starts on a symbol's log: commands numbered below `seq` that
    /// come after it never count ([`crate::wire::EpochFloor`]).
    Epoch { symbol: String, seq: u64 },
    Trade(TradeRow),
    Closure(ClosureRow),
    Funding(FundingRow),
    /// A liquidation, and the fund after it.
    Liquidation(LiquidationRow, MarketRow),
    Market(MarketRow),
    Conditional(ConditionalRow),
    /// Nothing to store (a cancel request, a placement).
    Nothing,
}

/// Reads a record as its topic says: `commands` (the prefixed `orders.submitted`) or a
/// results topic: a row for each command or result of the record (one a line, see
/// [`crate::wire::lines`]); an error for each that is not what the exchange writes.
pub fn read(commands: &str, record: &exchange_io::kafka::Located) -> Vec<Result<Row, String>> {
    let lines = crate::wire::lines(&record.payload);
    if record.topic == commands {
        lines.map(|line| command(line, record.partition, record.offset)).collect()
    } else {
        lines.map(result).collect()
    }
}

/// Reads one command of a record of `orders.submitted` (`partition`, `offset`: where the
/// record was read; every command of a record shares them).
///
/// # Errors
/// A record the exchange did not write.
pub fn command(bytes: &[u8], partition: i32, offset: i64) -> Result<Row, String> {
    Ok(match serde_json::from_slice::<CommandJson>(bytes).map_err(|e| e.to_string())? {
        CommandJson::OrderSubmitted {
            order_id,
            user_id,
            symbol,
            side,
            kind,
            price,
            quantity,
            leverage,
            timestamp,
            time_in_force,
            reduce_only,
            client_order_id,
            seq,
            ..
        } => Row::Order(OrderRow {
            id: uuid(&order_id)?,
            user_id,
            symbol,
            client_order_id,
            side,
            kind,
            time_in_force,
            price: price.as_deref().map(decimal).transpose()?,
            quantity: decimal(&quantity)?,
            leverage: i32::try_from(leverage).map_err(|e| format!("leverage {leverage}: {e}"))?,
            reduce_only,
            created_ms: timestamp,
            partition,
            offset,
            seq,
        }),
        CommandJson::EpochStarted { symbol, seq, .. } => Row::Epoch { symbol, seq },
        CommandJson::CancelRequested { .. }
        | CommandJson::IndexPriceSet { .. }
        | CommandJson::FundingTick { .. }
        | CommandJson::LiquidationSweep { .. }
        | CommandJson::LeverageSet { .. }
        | CommandJson::CountdownSet { .. }
        | CommandJson::CountdownDue { .. }
        | CommandJson::ExpiryDue { .. }
        | CommandJson::OrderAmendRequested { .. }
        | CommandJson::ConditionalOrderSubmitted { .. }
        | CommandJson::ConditionalCancelRequested { .. }
        | CommandJson::ConditionalRefused { .. } => Row::Nothing,
        CommandJson::CommandVoided { voided_offset, symbol, seq, .. } => Row::Voided {
            symbol,
            seq,
            partition,
            offset: i64::try_from(voided_offset).map_err(|e| format!("voidedOffset {voided_offset}: {e}"))?,
        },
    })
}

/// Reads a record of `trades.executed`, `orders.cancelled` or `orders.placed`.
///
/// # Errors
/// A record the exchange did not write.
pub fn result(bytes: &[u8]) -> Result<Row, String> {
    Ok(match serde_json::from_slice::<ResultJson>(bytes).map_err(|e| e.to_string())? {
        ResultJson::TradeExecuted { seq, timestamp, trade, buyer_update: b, seller_update: s, .. } => Row::Trade(TradeRow {
            id: uuid(&trade.trade_id)?,
            symbol: trade.symbol,
            seq: i64::try_from(seq).map_err(|e| format!("seq {seq}: {e}"))?,
            price: decimal(&trade.price)?,
            quantity: decimal(&trade.quantity)?,
            taker_side: trade.taker_side,
            buyer_order_id: uuid(&b.order_id)?,
            buyer_fee: decimal(&b.fee)?,
            buyer_pnl: decimal(&b.pnl)?,
            buyer_id: b.user_id,
            seller_order_id: uuid(&s.order_id)?,
            seller_fee: decimal(&s.fee)?,
            seller_pnl: decimal(&s.pnl)?,
            seller_id: s.user_id,
            executed_ms: timestamp,
        }),
        ResultJson::OrderCancelled { order_id, reason, timestamp, .. } => {
            Row::Closure(ClosureRow { order_id: uuid(&order_id)?, reason, closed_ms: timestamp })
        }
        ResultJson::FundingPaid { event_id, symbol, timestamp, user_id, amount, funding_rate, mark_price, .. } => Row::Funding(FundingRow {
            event_id: uuid(&event_id)?,
            user_id,
            symbol,
            amount: decimal(&amount)?,
            rate: decimal(&funding_rate)?,
            mark: decimal(&mark_price)?,
            paid_ms: timestamp,
        }),
        ResultJson::PositionLiquidated {
            symbol,
            seq,
            timestamp,
            order_id,
            user_id,
            side,
            quantity,
            filled_quantity,
            deleveraged_quantity,
            to_insurance_fund,
            insurance_fund,
            ..
        } => Row::Liquidation(
            LiquidationRow {
                order_id: uuid(&order_id)?,
                user_id,
                symbol: symbol.clone(),
                side,
                quantity: decimal(&quantity)?,
                filled: decimal(&filled_quantity)?,
                deleveraged: decimal(&deleveraged_quantity)?,
                to_fund: decimal(&to_insurance_fund)?,
                at_ms: timestamp,
            },
            MarketRow { symbol, seq: seq_of(seq)?, index: None, mark: None, fund: Some(decimal(&insurance_fund)?), at_ms: timestamp },
        ),
        ResultJson::MarkPriceUpdated { symbol, seq, timestamp, index_price, mark_price, .. } => Row::Market(MarketRow {
            symbol,
            seq: seq_of(seq)?,
            index: Some(decimal(&index_price)?),
            mark: Some(decimal(&mark_price)?),
            fund: None,
            at_ms: timestamp,
        }),
        ResultJson::FundingSettled { symbol, seq, timestamp, insurance_fund, .. } => Row::Market(MarketRow {
            symbol,
            seq: seq_of(seq)?,
            index: None,
            mark: None,
            fund: Some(decimal(&insurance_fund)?),
            at_ms: timestamp,
        }),
        ResultJson::ConditionalOrderUpdated {
            symbol,
            seq,
            timestamp,
            conditional_id,
            user_id,
            terms:
                crate::wire::ConditionalTermsJson {
                    side, kind, trigger_price, working_type, price, quantity, close_position, reduce_only, client_order_id, callback_rate,
                },
            status,
            order_id,
            reason,
            ..
        } => Row::Conditional(ConditionalRow {
            id: uuid(&conditional_id)?,
            user_id,
            symbol,
            side,
            kind,
            trigger: decimal(&trigger_price)?,
            working_type,
            price: price.as_deref().map(decimal).transpose()?,
            quantity: quantity.as_deref().map(decimal).transpose()?,
            callback_rate: callback_rate.as_deref().map(decimal).transpose()?,
            close_position,
            reduce_only,
            client_order_id,
            status,
            order_id: order_id.as_deref().map(uuid).transpose()?,
            reason,
            seq: seq_of(seq)?,
            at_ms: timestamp,
        }),
        // An amendment's price and quantity stay in the log: the orders table keeps what
        // was submitted (see README, "Amend").
        ResultJson::OrderPlaced { .. } | ResultJson::LiquidationStarted { .. } | ResultJson::OrderAmended { .. } => Row::Nothing,
    })
}

fn seq_of(seq: u64) -> Result<i64, String> {
    i64::try_from(seq).map_err(|e| format!("seq {seq}: {e}"))
}

fn uuid(text: &str) -> Result<Uuid, String> {
    text.parse().map_err(|e| format!("id {text:?}: {e}"))
}

fn decimal(text: &str) -> Result<Decimal, String> {
    text.parse().map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{
        CancelReason, Cancelled, Command, Event, FillUpdate, NewOrder, OrderId, OrderType, PositionState, Side, TimeInForce,
        Trade, UserId,
    };
    use crate::shard_map::ShardMap;
    use crate::wire::{self, StreamRecord};

    fn spec() -> crate::engine::SymbolSpec {
        ShardMap::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/shards/default.toml"))).unwrap().symbols[0].clone()
    }

    #[test]
    fn an_order_submitted_reads_back_exactly() {
        let spec = spec();
        let order = NewOrder {
            id: OrderId(77),
            user: UserId(0xab),
            side: Side::Buy,
            kind: OrderType::Limit { price: 500_005, tif: TimeInForce::Gtc },
            quantity: 12,
            leverage: 10,
            reduce_only: false,
            client_order_id: Some(crate::engine::ClientOrderId::new("c-1").unwrap()),
            locked_margin: 1,
            timestamp: 1_700_000_000_123,
            stp: Default::default(),
            good_till: 0,
        };
        let bytes = wire::encode_command(&spec, &StreamRecord::Command(Command::Place(order)), 5);
        let Row::Order(row) = command(&bytes, 3, 41).unwrap() else { panic!("not an order") };
        assert_eq!(row.id, crate::ids::encode(crate::ids::IdKind::Order, spec.key, 77));
        assert_eq!(row.user_id, "00000000000000ab");
        assert_eq!(row.price, Some(spec.ticks_to_price(500_005)));
        assert_eq!(row.quantity, spec.lots_to_quantity(12));
        assert_eq!((row.partition, row.offset, row.created_ms), (3, 41, 1_700_000_000_123));
        assert_eq!(row.client_order_id.as_deref(), Some("c-1"));
        let void = wire::encode_command(&spec, &StreamRecord::Void(41), 6);
        assert_eq!(command(&void, 3, 42).unwrap(), Row::Voided { symbol: spec.name.clone(), seq: 6, partition: 3, offset: 41 });

        // A record of a batch: a row for each of its commands, all at the record's place,
        // and an error for the line that is not the exchange's, not for the others.
        let mut batch = Vec::new();
        let second = NewOrder { id: OrderId(78), client_order_id: None, ..order };
        for (n, o) in [order, second].into_iter().enumerate() {
            wire::append_command(&spec, &StreamRecord::Command(Command::Place(o)), 7 + n as u64, &mut batch);
        }
        batch.extend_from_slice(b"\n{\"eventType\":\"OrderSubmitted\"}");
        let record = exchange_io::kafka::Located { topic: "x.orders.submitted".into(), partition: 3, offset: 50, timestamp_ms: None, payload: batch };
        let rows = read("x.orders.submitted", &record);
        assert_eq!(rows.len(), 3);
        let ids: Vec<_> = rows[..2].iter().map(|r| match r {
            Ok(Row::Order(o)) => (o.id, o.seq, o.partition, o.offset),
            other => panic!("not an order: {other:?}"),
        }).collect();
        let id = |n| crate::ids::encode(crate::ids::IdKind::Order, spec.key, n);
        assert_eq!(ids, [(id(77), 7, 3, 50), (id(78), 8, 3, 50)]);
        assert!(rows[2].is_err());
    }

    #[test]
    fn trades_and_closures_read_back_exactly() {
        let spec = spec();
        let update = |user, order, fee| FillUpdate {
            user: UserId(user),
            order_id: OrderId(order),
            pnl: -250,
            fee,
            margin_released: 0,
            position: PositionState::default(),
        };
        let trade = Event::TradeExecuted(Trade {
            seq: 9,
            price: 500_000,
            quantity: 3,
            taker_side: Side::Sell,
            adl: false,
            buyer: update(1, 10, 2_000),
            seller: update(2, 11, 5_000),
            timestamp: 5,
        });
        let (_, bytes) = wire::encode_event(&spec, &trade);
        let Row::Trade(row) = result(&bytes).unwrap() else { panic!("not a trade") };
        assert_eq!(row.id, crate::ids::encode(crate::ids::IdKind::Trade, spec.key, 9));
        assert_eq!(row.buyer_fee, Decimal::new(2_000, 8));
        assert_eq!(row.seller_pnl, Decimal::new(-250, 8));
        assert_eq!(row.quantity, spec.lots_to_quantity(3));
        assert_eq!(row.taker_side, "SELL");
        let cancel = Event::OrderCancelled(Cancelled {
            seq: 10,
            order_id: OrderId(10),
            user: UserId(1),
            side: Side::Buy,
            quantity: 5,
            filled: 3,
            released_margin: 7,
            reason: CancelReason::UserRequest,
            timestamp: 6,
        });
        let (_, bytes) = wire::encode_event(&spec, &cancel);
        let Row::Closure(row) = result(&bytes).unwrap() else { panic!("not a closure") };
        assert_eq!(row.reason, CancelReason::UserRequest.as_str());
        assert_eq!(row.closed_ms, 6);

        // A result record of a turn: a row for each of its results, in order.
        let mut record = Vec::new();
        for seq in [9, 11] {
            let Event::TradeExecuted(t) = &trade else { unreachable!() };
            let _ = wire::append_event(&spec, &Event::TradeExecuted(Trade { seq, ..*t }), &mut record);
            record.push(b'\n');
        }
        record.pop();
        let located = exchange_io::kafka::Located { topic: "x.trades.executed".into(), partition: 0, offset: 3, timestamp_ms: None, payload: record };
        let seqs: Vec<i64> = read("x.orders.submitted", &located)
            .into_iter()
            .map(|r| match r {
                Ok(Row::Trade(t)) => t.seq,
                other => panic!("not a trade: {other:?}"),
            })
            .collect();
        assert_eq!(seqs, [9, 11]);
    }
}
