//! The JSON form of the log's records on Kafka, readable by any Kafka tool.
//!
//! Money, prices and quantities are decimal strings, as in the HTTP API; ids are the
//! API's UUIDs; `userId` is the account id (16 hex digits, as in the API key) and
//! `accounts.adjusted` maps it to the user's name. Commands round-trip exactly: every
//! decimal is the exact image of an engine integer, and reading one back refuses
//! anything that is not.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::accounts::AccountRecord;
use crate::engine::symbol::{units_to_usdt, usdt_to_units};
use crate::engine::{ClientOrderId, Command, Event, FillUpdate, NewOrder, OrderId, OrderType, SelfTradePrevention, Side, SymbolSpec, TimeInForce, UserId};
use crate::ids::{self, IdKind};

/// Commands of every symbol, keyed by symbol: the log of record.
pub const COMMANDS_TOPIC: &str = "orders.submitted";
/// Account records (users, transfers), keyed by partition.
pub const ACCOUNTS_TOPIC: &str = "accounts.adjusted";
/// Results, for readers: orders that rest, cancellations, trades.
pub const PLACED_TOPIC: &str = "orders.placed";
pub const CANCELLED_TOPIC: &str = "orders.cancelled";
pub const TRADES_TOPIC: &str = "trades.executed";
/// Index prices posted and the mark prices computed from them.
pub const PRICES_TOPIC: &str = "prices.updated";
/// Liquidations: each `LIQUIDATION` order's start and end (its fills are trades).
pub const LIQUIDATIONS_TOPIC: &str = "positions.liquidated";
/// Conditional orders: every change of one's status.
pub const CONDITIONAL_TOPIC: &str = "orders.conditional";
/// Funding payments, one per position, and each round's settlement.
pub const FUNDING_TOPIC: &str = "funding.settled";
/// Claims of the processes that write the topics, newest last: one writer at a time
/// (see [`exchange_io::tenancy`]).
pub const CLAIMS_TOPIC: &str = "exchange.claims";
pub const TOPICS: [&str; 10] = [
    COMMANDS_TOPIC,
    PLACED_TOPIC,
    CONDITIONAL_TOPIC,
    CANCELLED_TOPIC,
    TRADES_TOPIC,
    ACCOUNTS_TOPIC,
    PRICES_TOPIC,
    LIQUIDATIONS_TOPIC,
    FUNDING_TOPIC,
    CLAIMS_TOPIC,
];

/// Every topic the exchange uses, with a prefix.
pub fn topics(prefix: &str) -> Vec<String> {
    TOPICS.iter().map(|t| format!("{prefix}{t}")).collect()
}

/// A record of a symbol's command log: a command, or the voiding of an earlier record
/// whose fate was in doubt (sent while the log failed, then found in it: the client was
/// told 503, so it must count as never logged). Replays skip voided records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamRecord {
    Command(Command),
    Void(u64),
    /// A writer's epoch starts (Kafka only): see [`EpochFloor`].
    Epoch,
}

/// The rule every reader of a symbol's command log applies, in log order: a command or
/// a void numbered (`seq`) below the newest `EpochStarted` read before it does not count.
/// (A void from a process that another one superseded could otherwise void a command of
/// the newer process at an offset it read back.)
///
/// Records are numbered by their writer in the order it makes them, and a later run (or
/// a second process) numbers above every earlier one ([`crate::numbering`]). The exchange
/// starts an epoch when it starts and each time it has voided what a failed write may
/// have left: a record made before that and landing only after it (a request a broker
/// persisted late, a producer's retry, a second process still writing) then counts for
/// no reader, although no one could void it by its offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochFloor(pub u64);

impl EpochFloor {
    /// Whether a record read next counts; an epoch raises the floor for those after it.
    pub fn admits(&mut self, epoch: bool, seq: u64) -> bool {
        if epoch {
            self.0 = self.0.max(seq);
            return true;
        }
        seq >= self.0
    }
}

/// An `orders.submitted` record, as written and as every reader reads it.
// Built or read one record at a time, like `ResultJson`: the order variant's size costs
// nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "eventType", rename_all_fields = "camelCase")]
pub enum CommandJson {
    EpochStarted {
        event_id: String,
        symbol: String,
        seq: u64,
    },
    CommandVoided {
        event_id: String,
        symbol: String,
        voided_offset: u64,
        seq: u64,
    },
    OrderSubmitted {
        event_id: String,
        order_id: String,
        user_id: String,
        symbol: String,
        side: String,
        #[serde(rename = "type")]
        kind: String,
        price: Option<String>,
        quantity: String,
        leverage: u32,
        timestamp: i64,
        time_in_force: Option<String>,
        reduce_only: bool,
        client_order_id: Option<String>,
        locked_margin: String,
        /// MARKET: the band price the margin was locked at, which it never fills beyond.
        /// Absent in records written before it existed (the band applies as it executes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protection_price: Option<String>,
        /// Present unless `EXPIRE_TAKER` (the mode of every record written before it
        /// existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        self_trade_prevention_mode: Option<String>,
        /// Present for a good-till-date order (ms).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        good_till_date: Option<i64>,
        /// Present for the order a conditional order became once triggered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conditional_id: Option<String>,
        seq: u64,
    },
    CancelRequested {
        event_id: String,
        /// `None`: every open order of the user on the symbol.
        order_id: Option<String>,
        user_id: String,
        symbol: String,
        timestamp: i64,
        seq: u64,
    },
    IndexPriceSet {
        event_id: String,
        symbol: String,
        price: String,
        timestamp: i64,
        seq: u64,
    },
    FundingTick {
        event_id: String,
        symbol: String,
        timestamp: i64,
        seq: u64,
    },
    LiquidationSweep {
        event_id: String,
        symbol: String,
        timestamp: i64,
        seq: u64,
    },
    /// A user's leverage setting for the symbol (Binance's `POST /fapi/v1/leverage`).
    LeverageSet {
        event_id: String,
        user_id: String,
        symbol: String,
        leverage: u32,
        timestamp: i64,
        seq: u64,
    },
    /// A user's countdown (dead man's switch) set, renewed or (0) turned off.
    CountdownSet {
        event_id: String,
        user_id: String,
        symbol: String,
        countdown_time: i64,
        timestamp: i64,
        seq: u64,
    },
    /// The orders of the users whose countdowns ran out by `timestamp` are cancelled.
    CountdownDue {
        event_id: String,
        symbol: String,
        timestamp: i64,
        seq: u64,
    },
    /// The resting orders good till `timestamp` or before are cancelled.
    ExpiryDue {
        event_id: String,
        symbol: String,
        timestamp: i64,
        seq: u64,
    },
    /// A conditional order (stop-loss, take-profit) to wait for its trigger. `quantity`
    /// is absent with `closePosition`; `price` and `timeInForce` only for STOP and
    /// TAKE_PROFIT. Its id is minted when it is accepted: the `ConditionalOrderUpdated`
    /// result says it.
    ConditionalOrderSubmitted {
        event_id: String,
        user_id: String,
        symbol: String,
        #[serde(flatten)]
        terms: ConditionalTermsJson,
        time_in_force: Option<String>,
        timestamp: i64,
        seq: u64,
    },
    /// Cancel a waiting conditional order of the user's (`None`: all on the symbol).
    ConditionalCancelRequested {
        event_id: String,
        conditional_id: Option<String>,
        user_id: String,
        symbol: String,
        timestamp: i64,
        seq: u64,
    },
    /// A triggered conditional order whose order the risk step refused.
    ConditionalRefused {
        event_id: String,
        conditional_id: String,
        user_id: String,
        symbol: String,
        reason: String,
        timestamp: i64,
        seq: u64,
    },
    /// A resting order to be changed to `price` and a total `quantity`; `addedMargin`:
    /// what the risk step locked for it.
    OrderAmendRequested {
        event_id: String,
        order_id: String,
        user_id: String,
        symbol: String,
        price: String,
        quantity: String,
        added_margin: String,
        timestamp: i64,
        seq: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "eventType", rename_all_fields = "camelCase")]
enum AccountJson {
    UserCreated { event_id: String, user_id: String, account_id: String, key_hash: String },
    BalanceAdjusted { event_id: String, account_id: String, transfer_id: String, currency: String, amount: String, timestamp: i64 },
    RecordVoided { event_id: String, voided_offset: u64 },
}

/// A user's account id as records and cold storage name it: 16 hex digits.
pub fn account_id(user: UserId) -> String {
    format!("{:016x}", user.0)
}

fn parse_account(text: &str) -> Result<UserId, String> {
    u64::from_str_radix(text, 16).map(UserId).map_err(|e| format!("userId {text:?}: {e}"))
}

fn decimal(text: &str) -> Result<Decimal, String> {
    text.parse().map_err(|e| format!("{text:?}: {e}"))
}

/// A command log record as an `orders.submitted` record; `seq` numbers the symbol's.
pub fn encode_command(spec: &SymbolSpec, record: &StreamRecord, seq: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    append_command(spec, record, seq, &mut bytes);
    bytes
}

/// Adds a command to an `orders.submitted` record being built: a record holds the
/// commands of one batch of a symbol's stream, one JSON object per line, in the order
/// they execute (see [`lines`]).
pub fn append_command(spec: &SymbolSpec, record: &StreamRecord, seq: u64, bytes: &mut Vec<u8>) {
    if !bytes.is_empty() {
        bytes.push(b'\n');
    }
    // Writing into a Vec fails only on a type serde cannot write, which these are not.
    let _ = serde_json::to_writer(bytes, &command_json(spec, record, seq));
}

/// The commands of an `orders.submitted` record, or the results of a result record: one
/// JSON object per line (serde_json writes no raw newline, so one inside a string is
/// always escaped).
pub fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|b| *b == b'\n')
}

fn command_json(spec: &SymbolSpec, record: &StreamRecord, seq: u64) -> CommandJson {
    let event_id = ids::encode(IdKind::Command, spec.key, seq).to_string();
    let command = match *record {
        StreamRecord::Command(c) => c,
        StreamRecord::Void(offset) => return CommandJson::CommandVoided { event_id, symbol: spec.name.clone(), voided_offset: offset, seq },
        StreamRecord::Epoch => return CommandJson::EpochStarted { event_id, symbol: spec.name.clone(), seq },
    };
    let conditional = |n: u64| ids::encode(IdKind::Conditional, spec.key, n).to_string();
    match command {
        Command::Place(o) | Command::PlaceTriggered { order: o, .. } => {
            let (kind, price, time_in_force) = match o.kind {
                OrderType::Limit { price, tif: t } => ("LIMIT", Some(spec.ticks_to_price(price).to_string()), Some(t.as_str().to_owned())),
                OrderType::Market | OrderType::MarketWithin { .. } => ("MARKET", None, None),
                OrderType::Liquidation { price } => ("LIQUIDATION", Some(spec.ticks_to_price(price).to_string()), None),
            };
            let protection_price = match o.kind {
                OrderType::MarketWithin { limit } => Some(spec.ticks_to_price(limit).to_string()),
                _ => None,
            };
            CommandJson::OrderSubmitted {
                event_id,
                order_id: ids::encode(IdKind::Order, spec.key, o.id.0).to_string(),
                user_id: account_id(o.user),
                symbol: spec.name.clone(),
                side: o.side.as_str().to_owned(),
                kind: kind.to_owned(),
                price,
                quantity: spec.lots_to_quantity(o.quantity).to_string(),
                leverage: o.leverage,
                timestamp: o.timestamp,
                time_in_force,
                reduce_only: o.reduce_only,
                client_order_id: o.client_order_id.map(|c| c.as_str().to_owned()),
                locked_margin: units_to_usdt(o.locked_margin).to_string(),
                protection_price,
                self_trade_prevention_mode: (o.stp != SelfTradePrevention::ExpireTaker).then(|| o.stp.as_str().to_owned()),
                good_till_date: (o.good_till != 0).then_some(o.good_till),
                conditional_id: match command {
                    Command::PlaceTriggered { conditional: n, .. } => Some(conditional(n)),
                    _ => None,
                },
                seq,
            }
        }
        Command::PlaceConditional(c) => CommandJson::ConditionalOrderSubmitted {
            event_id,
            user_id: account_id(c.user),
            symbol: spec.name.clone(),
            terms: ConditionalTermsJson::of(spec, &c),
            time_in_force: c.price.map(|_| c.tif.as_str().to_owned()),
            timestamp: c.timestamp,
            seq,
        },
        Command::CancelConditional { id, user, timestamp } => CommandJson::ConditionalCancelRequested {
            event_id,
            conditional_id: id.map(conditional),
            user_id: account_id(user),
            symbol: spec.name.clone(),
            timestamp,
            seq,
        },
        Command::RefuseTriggered { conditional: n, user, reason, timestamp } => CommandJson::ConditionalRefused {
            event_id,
            conditional_id: conditional(n),
            user_id: account_id(user),
            symbol: spec.name.clone(),
            reason: reason.as_str().to_owned(),
            timestamp,
            seq,
        },
        Command::Cancel { id, user, timestamp } => CommandJson::CancelRequested {
            event_id,
            order_id: Some(ids::encode(IdKind::Order, spec.key, id.0).to_string()),
            user_id: account_id(user),
            symbol: spec.name.clone(),
            timestamp,
            seq,
        },
        Command::CancelAll { user, timestamp } => CommandJson::CancelRequested {
            event_id,
            order_id: None,
            user_id: account_id(user),
            symbol: spec.name.clone(),
            timestamp,
            seq,
        },
        Command::IndexPrice { price, timestamp } => {
            CommandJson::IndexPriceSet { event_id, symbol: spec.name.clone(), price: spec.ticks_to_price(price).to_string(), timestamp, seq }
        }
        Command::Funding { timestamp } => CommandJson::FundingTick { event_id, symbol: spec.name.clone(), timestamp, seq },
        Command::Liquidate { timestamp } => CommandJson::LiquidationSweep { event_id, symbol: spec.name.clone(), timestamp, seq },
        Command::SetLeverage { user, leverage, timestamp } => {
            CommandJson::LeverageSet { event_id, user_id: account_id(user), symbol: spec.name.clone(), leverage, timestamp, seq }
        }
        Command::Countdown { user, after_ms, timestamp } => {
            CommandJson::CountdownSet { event_id, user_id: account_id(user), symbol: spec.name.clone(), countdown_time: after_ms, timestamp, seq }
        }
        Command::CountdownDue { timestamp } => CommandJson::CountdownDue { event_id, symbol: spec.name.clone(), timestamp, seq },
        Command::ExpireDue { timestamp } => CommandJson::ExpiryDue { event_id, symbol: spec.name.clone(), timestamp, seq },
        Command::Amend { id, user, price, quantity, added_margin, timestamp } => CommandJson::OrderAmendRequested {
            event_id,
            order_id: ids::encode(IdKind::Order, spec.key, id.0).to_string(),
            user_id: account_id(user),
            symbol: spec.name.clone(),
            price: spec.ticks_to_price(price).to_string(),
            quantity: spec.lots_to_quantity(quantity).to_string(),
            added_margin: units_to_usdt(added_margin).to_string(),
            timestamp,
            seq,
        },
    }
}

/// Reads an `orders.submitted` record of one command back into what it was made from.
///
/// # Errors
/// A message saying which field is not what the exchange writes.
pub fn decode_command(spec: &SymbolSpec, bytes: &[u8]) -> Result<StreamRecord, String> {
    decode_numbered(spec, bytes).map(|(record, _)| record)
}

impl CommandJson {
    /// The record's number in its writer's sequence.
    pub fn seq(&self) -> u64 {
        match self {
            Self::EpochStarted { seq, .. }
            | Self::CommandVoided { seq, .. }
            | Self::OrderSubmitted { seq, .. }
            | Self::CancelRequested { seq, .. }
            | Self::IndexPriceSet { seq, .. }
            | Self::FundingTick { seq, .. }
            | Self::LiquidationSweep { seq, .. }
            | Self::LeverageSet { seq, .. }
            | Self::CountdownSet { seq, .. }
            | Self::CountdownDue { seq, .. }
            | Self::ExpiryDue { seq, .. }
            | Self::OrderAmendRequested { seq, .. }
            | Self::ConditionalOrderSubmitted { seq, .. }
            | Self::ConditionalCancelRequested { seq, .. }
            | Self::ConditionalRefused { seq, .. } => *seq,
        }
    }
}

/// [`decode_command`], with the record's `seq` (for [`EpochFloor`]).
///
/// # Errors
/// As [`decode_command`].
pub fn decode_numbered(spec: &SymbolSpec, bytes: &[u8]) -> Result<(StreamRecord, u64), String> {
    let json = serde_json::from_slice::<CommandJson>(bytes).map_err(|e| e.to_string())?;
    let seq = json.seq();
    decode_json(spec, json).map(|record| (record, seq))
}

/// Every command of an `orders.submitted` record (see [`append_command`]), in order,
/// each with its `seq`.
///
/// # Errors
/// As [`decode_command`], for any line of the record.
pub fn decode_record(spec: &SymbolSpec, bytes: &[u8]) -> Result<Vec<(StreamRecord, u64)>, String> {
    lines(bytes).map(|line| decode_numbered(spec, line)).collect()
}

fn decode_json(spec: &SymbolSpec, json: CommandJson) -> Result<StreamRecord, String> {
    let order_number = |text: &str| -> Result<OrderId, String> {
        let uuid: uuid::Uuid = text.parse().map_err(|e| format!("orderId {text:?}: {e}"))?;
        match ids::decode(IdKind::Order, &uuid) {
            Some((key, n)) if key == spec.key => Ok(OrderId(n)),
            _ => Err(format!("orderId {text} is not an order of {}", spec.name)),
        }
    };
    let conditional_number = |text: &str| -> Result<u64, String> {
        let uuid: uuid::Uuid = text.parse().map_err(|e| format!("conditionalId {text:?}: {e}"))?;
        match ids::decode(IdKind::Conditional, &uuid) {
            Some((key, n)) if key == spec.key => Ok(n),
            _ => Err(format!("conditionalId {text} is not a conditional order of {}", spec.name)),
        }
    };
    let side_of = |s: &str| match s {
        "BUY" => Ok(Side::Buy),
        "SELL" => Ok(Side::Sell),
        other => Err(format!("side {other:?}")),
    };
    let command = match json {
        CommandJson::EpochStarted { .. } => return Ok(StreamRecord::Epoch),
        CommandJson::CommandVoided { voided_offset, .. } => return Ok(StreamRecord::Void(voided_offset)),
        CommandJson::OrderSubmitted {
            order_id,
            user_id,
            side: s,
            kind,
            price,
            quantity,
            leverage,
            timestamp,
            time_in_force,
            reduce_only,
            client_order_id,
            locked_margin,
            protection_price,
            self_trade_prevention_mode,
            good_till_date,
            conditional_id,
            ..
        } => {
            let side = side_of(&s)?;
            let kind = match (kind.as_str(), price, time_in_force.as_deref()) {
                ("MARKET", None, _) => match protection_price {
                    Some(p) => OrderType::MarketWithin {
                        limit: spec.price_to_ticks(decimal(&p)?).map_err(|e| format!("protectionPrice {p}: {e}"))?,
                    },
                    None => OrderType::Market,
                },
                ("LIMIT", Some(p), Some(t)) => OrderType::Limit {
                    price: spec.price_to_ticks(decimal(&p)?).map_err(|e| format!("price {p}: {e}"))?,
                    tif: TimeInForce::parse(t).ok_or_else(|| format!("timeInForce {t:?}"))?,
                },
                (other, _, _) => return Err(format!("type {other:?} with its price and timeInForce")),
            };
            let order = NewOrder {
                id: order_number(&order_id)?,
                user: parse_account(&user_id)?,
                side,
                kind,
                quantity: spec.quantity_to_lots(decimal(&quantity)?).map_err(|e| format!("quantity {quantity}: {e}"))?,
                leverage,
                reduce_only,
                client_order_id: client_order_id.map(|c| ClientOrderId::new(&c)).transpose().map_err(|e| e.to_string())?,
                locked_margin: usdt_to_units(decimal(&locked_margin)?).ok_or_else(|| format!("lockedMargin {locked_margin}"))?,
                timestamp,
                stp: match self_trade_prevention_mode {
                    None => SelfTradePrevention::ExpireTaker,
                    Some(m) => SelfTradePrevention::parse(&m).ok_or_else(|| format!("selfTradePreventionMode {m:?}"))?,
                },
                good_till: good_till_date.unwrap_or(0),
            };
            match conditional_id {
                Some(id) => Command::PlaceTriggered { conditional: conditional_number(&id)?, order },
                None => Command::Place(order),
            }
        }
        CommandJson::ConditionalOrderSubmitted {
            user_id,
            terms:
                ConditionalTermsJson {
                    side, kind, trigger_price, working_type, price, quantity, close_position, reduce_only, client_order_id, callback_rate,
                },
            time_in_force,
            timestamp,
            ..
        } => {
            let (kind, limited) = crate::engine::NewConditional::parse_type(&kind).ok_or_else(|| format!("type {kind:?}"))?;
            let ticks = |p: &str| -> Result<crate::engine::units::Ticks, String> {
                spec.price_to_ticks(decimal(p)?).map_err(|e| format!("price {p}: {e}"))
            };
            let (price, tif) = match (limited, price, time_in_force) {
                (true, Some(p), Some(t)) => (Some(ticks(&p)?), TimeInForce::parse(&t).ok_or_else(|| format!("timeInForce {t:?}"))?),
                (false, None, None) => (None, TimeInForce::Gtc),
                _ => return Err("price and timeInForce go with STOP and TAKE_PROFIT only".to_owned()),
            };
            let quantity = match (close_position, quantity) {
                (true, None) => 0,
                (false, Some(q)) => spec.quantity_to_lots(decimal(&q)?).map_err(|e| format!("quantity {q}: {e}"))?,
                _ => return Err("quantity goes with closePosition false only".to_owned()),
            };
            Command::PlaceConditional(crate::engine::NewConditional {
                user: parse_account(&user_id)?,
                side: side_of(&side)?,
                kind,
                trigger: if decimal(&trigger_price)?.is_zero() { 0 } else { ticks(&trigger_price)? },
                working: crate::engine::WorkingPrice::parse(&working_type).ok_or_else(|| format!("workingType {working_type:?}"))?,
                price,
                tif,
                quantity,
                close_position,
                reduce_only,
                client_order_id: client_order_id.map(|c| ClientOrderId::new(&c)).transpose().map_err(|e| e.to_string())?,
                timestamp,
                callback: match callback_rate {
                    None => 0,
                    Some(r) => crate::engine::conditional::callback_of(decimal(&r)?).ok_or_else(|| format!("callbackRate {r:?}"))?,
                },
            })
        }
        CommandJson::ConditionalCancelRequested { conditional_id, user_id, timestamp, .. } => Command::CancelConditional {
            id: conditional_id.as_deref().map(conditional_number).transpose()?,
            user: parse_account(&user_id)?,
            timestamp,
        },
        CommandJson::ConditionalRefused { conditional_id, user_id, reason, timestamp, .. } => Command::RefuseTriggered {
            conditional: conditional_number(&conditional_id)?,
            user: parse_account(&user_id)?,
            reason: crate::engine::CancelReason::parse(&reason).ok_or_else(|| format!("reason {reason:?}"))?,
            timestamp,
        },
        CommandJson::CancelRequested { order_id: Some(id), user_id, timestamp, .. } => {
            Command::Cancel { id: order_number(&id)?, user: parse_account(&user_id)?, timestamp }
        }
        CommandJson::CancelRequested { order_id: None, user_id, timestamp, .. } => {
            Command::CancelAll { user: parse_account(&user_id)?, timestamp }
        }
        CommandJson::IndexPriceSet { price, timestamp, .. } => Command::IndexPrice {
            price: spec.price_to_ticks(decimal(&price)?).map_err(|e| format!("price {price}: {e}"))?,
            timestamp,
        },
        CommandJson::FundingTick { timestamp, .. } => Command::Funding { timestamp },
        CommandJson::LiquidationSweep { timestamp, .. } => Command::Liquidate { timestamp },
        CommandJson::LeverageSet { user_id, leverage, timestamp, .. } => {
            Command::SetLeverage { user: parse_account(&user_id)?, leverage, timestamp }
        }
        CommandJson::CountdownSet { user_id, countdown_time, timestamp, .. } => {
            Command::Countdown { user: parse_account(&user_id)?, after_ms: countdown_time, timestamp }
        }
        CommandJson::CountdownDue { timestamp, .. } => Command::CountdownDue { timestamp },
        CommandJson::ExpiryDue { timestamp, .. } => Command::ExpireDue { timestamp },
        CommandJson::OrderAmendRequested { order_id, user_id, price, quantity, added_margin, timestamp, .. } => Command::Amend {
            id: order_number(&order_id)?,
            user: parse_account(&user_id)?,
            price: spec.price_to_ticks(decimal(&price)?).map_err(|e| format!("price {price}: {e}"))?,
            quantity: spec.quantity_to_lots(decimal(&quantity)?).map_err(|e| format!("quantity {quantity}: {e}"))?,
            added_margin: usdt_to_units(decimal(&added_margin)?).ok_or_else(|| format!("addedMargin {added_margin}"))?,
            timestamp,
        },
    };
    Ok(StreamRecord::Command(command))
}

/// An account record as an `accounts.adjusted` record; `seq` numbers the partition's.
pub fn encode_account(record: &AccountRecord, partition: u32, seq: u64) -> Vec<u8> {
    let event_id = ids::encode(IdKind::Account, partition, seq).to_string();
    let json = match record {
        AccountRecord::UserCreated { name, user, key_hash } => {
            AccountJson::UserCreated { event_id, user_id: name.clone(), account_id: account_id(*user), key_hash: hex::encode(key_hash) }
        }
        AccountRecord::Transfer { user, transfer_id, amount, timestamp } => AccountJson::BalanceAdjusted {
            event_id,
            account_id: account_id(*user),
            transfer_id: transfer_id.clone(),
            currency: "USDT".into(),
            amount: units_to_usdt(*amount).to_string(),
            timestamp: *timestamp,
        },
        AccountRecord::Voided { offset } => AccountJson::RecordVoided { event_id, voided_offset: *offset },
    };
    serde_json::to_vec(&json).unwrap_or_default()
}

/// Reads an `accounts.adjusted` record back.
///
/// # Errors
/// A message saying which field is not what the exchange writes.
pub fn decode_account(bytes: &[u8]) -> Result<AccountRecord, String> {
    match serde_json::from_slice::<AccountJson>(bytes).map_err(|e| e.to_string())? {
        AccountJson::UserCreated { user_id, account_id, key_hash, .. } => {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&key_hash, &mut hash).map_err(|e| format!("keyHash: {e}"))?;
            Ok(AccountRecord::UserCreated { name: user_id, user: parse_account(&account_id)?, key_hash: hash })
        }
        AccountJson::BalanceAdjusted { account_id, transfer_id, amount, timestamp, .. } => Ok(AccountRecord::Transfer {
            user: parse_account(&account_id)?,
            transfer_id,
            amount: usdt_to_units(decimal(&amount)?).ok_or_else(|| format!("amount {amount}"))?,
            timestamp,
        }),
        AccountJson::RecordVoided { voided_offset, .. } => Ok(AccountRecord::Voided { offset: voided_offset }),
    }
}

/// A record of `orders.placed`, `orders.cancelled` or `trades.executed`, as written and as
/// every reader (cold storage) reads it. Decimals are strings, ids the API's.
// Built or read one record at a time: the trade variant's size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "eventType", rename_all_fields = "camelCase")]
pub enum ResultJson {
    OrderPlaced {
        event_id: String,
        symbol: String,
        seq: u64,
        timestamp: i64,
        order_id: String,
        user_id: String,
        side: String,
        price: String,
        quantity: String,
        filled_quantity: String,
        locked_margin: String,
        leverage: u32,
        reduce_only: bool,
        client_order_id: Option<String>,
    },
    OrderCancelled {
        event_id: String,
        symbol: String,
        seq: u64,
        timestamp: i64,
        order_id: String,
        user_id: String,
        side: String,
        quantity: String,
        filled_quantity: String,
        released_margin: String,
        reason: String,
    },
    /// On `orders.placed`: a resting order's new price and total quantity, or (with
    /// `refused`) why they did not change.
    OrderAmended {
        event_id: String,
        symbol: String,
        seq: u64,
        timestamp: i64,
        order_id: String,
        user_id: String,
        side: String,
        price: String,
        quantity: String,
        filled_quantity: String,
        locked_margin: String,
        added_margin: String,
        released_margin: String,
        kept_priority: bool,
        refused: Option<String>,
    },
    /// On `orders.conditional`: a conditional order accepted (`NEW`), triggered
    /// (`TRIGGERING`), placed as `orderId` (`TRIGGERED`), cancelled or rejected (`reason`).
    ConditionalOrderUpdated {
        event_id: String,
        symbol: String,
        seq: u64,
        timestamp: i64,
        conditional_id: String,
        user_id: String,
        #[serde(flatten)]
        terms: ConditionalTermsJson,
        status: String,
        order_id: Option<String>,
        reason: Option<String>,
    },
    TradeExecuted {
        event_id: String,
        symbol: String,
        seq: u64,
        timestamp: i64,
        trade: TradeJson,
        buyer_update: UpdateJson,
        seller_update: UpdateJson,
    },
    MarkPriceUpdated {
        event_id: String,
        symbol: String,
        seq: u64,
        timestamp: i64,
        index_price: String,
        mark_price: String,
    },
    LiquidationStarted {
        event_id: String,
        symbol: String,
        seq: u64,
        timestamp: i64,
        order_id: String,
        user_id: String,
        side: String,
        quantity: String,
        bankruptcy_price: String,
        mark_price: String,
    },
    PositionLiquidated {
        event_id: String,
        symbol: String,
        seq: u64,
        timestamp: i64,
        order_id: String,
        user_id: String,
        side: String,
        quantity: String,
        filled_quantity: String,
        deleveraged_quantity: String,
        to_insurance_fund: String,
        insurance_fund: String,
    },
    FundingPaid {
        event_id: String,
        symbol: String,
        seq: u64,
        timestamp: i64,
        user_id: String,
        amount: String,
        margin_change: String,
        funding_rate: String,
        mark_price: String,
        position: PositionJson,
    },
    FundingSettled {
        event_id: String,
        symbol: String,
        seq: u64,
        timestamp: i64,
        funding_rate: String,
        mark_price: Option<String>,
        positions: u64,
        to_insurance_fund: String,
        insurance_fund: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TradeJson {
    pub trade_id: String,
    pub symbol: String,
    pub price: String,
    pub quantity: String,
    pub buyer_order_id: String,
    pub seller_order_id: String,
    pub taker_side: String,
    pub timestamp: i64,
    /// Auto-deleveraging: a liquidation closed against a position, not a book trade.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adl: bool,
}

/// What a trade did to one side.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateJson {
    pub user_id: String,
    pub order_id: String,
    pub pnl: String,
    pub fee: String,
    pub margin_released: String,
    pub position: PositionJson,
}

/// A position after a trade.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PositionJson {
    pub size: String,
    pub cost: String,
    pub margin: String,
    pub realized_pnl: String,
    pub fees: String,
    pub leverage: u32,
}

fn update_json(spec: &SymbolSpec, u: &FillUpdate) -> UpdateJson {
    UpdateJson {
        user_id: account_id(u.user),
        order_id: ids::encode(IdKind::Order, spec.key, u.order_id.0).to_string(),
        pnl: units_to_usdt(u.pnl).to_string(),
        fee: units_to_usdt(u.fee).to_string(),
        margin_released: units_to_usdt(u.margin_released).to_string(),
        position: position_json(spec, &u.position),
    }
}

fn position_json(spec: &SymbolSpec, p: &crate::engine::PositionState) -> PositionJson {
    PositionJson {
        size: spec.lots_to_quantity(p.size).to_string(),
        cost: units_to_usdt(p.cost).to_string(),
        margin: units_to_usdt(p.margin).to_string(),
        realized_pnl: units_to_usdt(p.realized_pnl).to_string(),
        fees: units_to_usdt(p.fees).to_string(),
        leverage: p.leverage,
    }
}

/// A rate in parts of 1e8 as a decimal.
/// A conditional order's terms, as both its command (`ConditionalOrderSubmitted`) and
/// its status changes (`ConditionalOrderUpdated`) carry them. `quantity` is absent with
/// `closePosition`, `price` for the MARKET types; `callbackRate` (percent) is a trailing
/// stop's, whose `triggerPrice` is its activation price (0: none).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionalTermsJson {
    pub side: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub trigger_price: String,
    pub working_type: String,
    pub price: Option<String>,
    pub quantity: Option<String>,
    pub close_position: bool,
    pub reduce_only: bool,
    pub client_order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_rate: Option<String>,
}

impl ConditionalTermsJson {
    fn of(spec: &SymbolSpec, c: &crate::engine::NewConditional) -> Self {
        Self {
            side: c.side.as_str().to_owned(),
            kind: c.type_name().to_owned(),
            trigger_price: spec.ticks_to_price(c.trigger).to_string(),
            working_type: c.working.as_str().to_owned(),
            price: c.price.map(|p| spec.ticks_to_price(p).to_string()),
            quantity: (!c.close_position).then(|| spec.lots_to_quantity(c.quantity).to_string()),
            close_position: c.close_position,
            reduce_only: c.reduce_only,
            client_order_id: c.client_order_id.map(|c| c.as_str().to_owned()),
            callback_rate: (c.callback != 0).then(|| crate::engine::conditional::callback_percent(c.callback).to_string()),
        }
    }
}

pub fn rate_decimal(rate: i64) -> Decimal {
    Decimal::new(rate, 8).normalize()
}

/// A result event as JSON, with the topic it belongs to. Ids derive from the symbol's
/// sequence, so a result republished after a restart is recognisably the same event.
pub fn encode_event(spec: &SymbolSpec, event: &Event) -> (&'static str, Vec<u8>) {
    let mut bytes = Vec::new();
    let topic = append_event(spec, event, &mut bytes);
    (topic, bytes)
}

/// Writes a result event as JSON at the end of `bytes` (see [`encode_event`]) and
/// returns the topic it belongs to.
pub fn append_event(spec: &SymbolSpec, event: &Event, bytes: &mut Vec<u8>) -> &'static str {
    let event_id = ids::encode(IdKind::Event, spec.key, event.seq()).to_string();
    let order = |id: OrderId| ids::encode(IdKind::Order, spec.key, id.0).to_string();
    let symbol = spec.name.clone();
    let (topic, record) = match event {
        Event::OrderPlaced(p) => (
            PLACED_TOPIC,
            ResultJson::OrderPlaced {
                event_id,
                symbol,
                seq: p.seq,
                timestamp: p.timestamp,
                order_id: order(p.order_id),
                user_id: account_id(p.user),
                side: p.side.as_str().to_owned(),
                price: spec.ticks_to_price(p.price).to_string(),
                quantity: spec.lots_to_quantity(p.quantity).to_string(),
                filled_quantity: spec.lots_to_quantity(p.filled).to_string(),
                locked_margin: units_to_usdt(p.locked_margin).to_string(),
                leverage: p.leverage,
                reduce_only: p.reduce_only,
                client_order_id: p.client_order_id.map(|c| c.as_str().to_owned()),
            },
        ),
        Event::OrderAmended(a) => (
            PLACED_TOPIC,
            ResultJson::OrderAmended {
                event_id,
                symbol,
                seq: a.seq,
                timestamp: a.timestamp,
                order_id: order(a.order_id),
                user_id: account_id(a.user),
                side: a.side.as_str().to_owned(),
                price: spec.ticks_to_price(a.price).to_string(),
                quantity: spec.lots_to_quantity(a.quantity).to_string(),
                filled_quantity: spec.lots_to_quantity(a.filled).to_string(),
                locked_margin: units_to_usdt(a.locked_margin).to_string(),
                added_margin: units_to_usdt(a.added_margin).to_string(),
                released_margin: units_to_usdt(a.released_margin).to_string(),
                kept_priority: a.kept_priority,
                refused: a.refused.map(|r| r.as_str().to_owned()),
            },
        ),
        Event::Conditional(u) => {
            let c = &u.conditional;
            let o = &c.order;
            (
                CONDITIONAL_TOPIC,
                ResultJson::ConditionalOrderUpdated {
                    event_id,
                    symbol,
                    seq: u.seq,
                    timestamp: c.updated,
                    conditional_id: ids::encode(IdKind::Conditional, spec.key, c.id).to_string(),
                    user_id: account_id(o.user),
                    terms: ConditionalTermsJson::of(spec, o),
                    status: c.status.as_str().to_owned(),
                    order_id: c.order_id.map(order),
                    reason: c.reason.map(|r| r.as_str().to_owned()),
                },
            )
        }
        Event::OrderCancelled(c) => (
            CANCELLED_TOPIC,
            ResultJson::OrderCancelled {
                event_id,
                symbol,
                seq: c.seq,
                timestamp: c.timestamp,
                order_id: order(c.order_id),
                user_id: account_id(c.user),
                side: c.side.as_str().to_owned(),
                quantity: spec.lots_to_quantity(c.quantity).to_string(),
                filled_quantity: spec.lots_to_quantity(c.filled).to_string(),
                released_margin: units_to_usdt(c.released_margin).to_string(),
                reason: c.reason.as_str().to_owned(),
            },
        ),
        Event::TradeExecuted(t) => (
            TRADES_TOPIC,
            ResultJson::TradeExecuted {
                event_id,
                symbol: symbol.clone(),
                seq: t.seq,
                timestamp: t.timestamp,
                trade: TradeJson {
                    trade_id: ids::encode(IdKind::Trade, spec.key, t.seq).to_string(),
                    symbol,
                    price: spec.ticks_to_price(t.price).to_string(),
                    quantity: spec.lots_to_quantity(t.quantity).to_string(),
                    buyer_order_id: order(t.buyer.order_id),
                    seller_order_id: order(t.seller.order_id),
                    taker_side: t.taker_side.as_str().to_owned(),
                    timestamp: t.timestamp,
                    adl: t.adl,
                },
                buyer_update: update_json(spec, &t.buyer),
                seller_update: update_json(spec, &t.seller),
            },
        ),
        Event::PriceUpdated(p) => (
            PRICES_TOPIC,
            ResultJson::MarkPriceUpdated {
                event_id,
                symbol,
                seq: p.seq,
                timestamp: p.timestamp,
                index_price: spec.ticks_to_price(p.index).to_string(),
                mark_price: spec.ticks_to_price(p.mark).to_string(),
            },
        ),
        Event::LiquidationStarted(l) => (
            LIQUIDATIONS_TOPIC,
            ResultJson::LiquidationStarted {
                event_id,
                symbol,
                seq: l.seq,
                timestamp: l.timestamp,
                order_id: order(l.order_id),
                user_id: account_id(l.user),
                side: l.side.as_str().to_owned(),
                quantity: spec.lots_to_quantity(l.quantity).to_string(),
                bankruptcy_price: spec.ticks_to_price(l.price).to_string(),
                mark_price: spec.ticks_to_price(l.mark).to_string(),
            },
        ),
        Event::LiquidationEnded(l) => (
            LIQUIDATIONS_TOPIC,
            ResultJson::PositionLiquidated {
                event_id,
                symbol,
                seq: l.seq,
                timestamp: l.timestamp,
                order_id: order(l.order_id),
                user_id: account_id(l.user),
                side: l.side.as_str().to_owned(),
                quantity: spec.lots_to_quantity(l.quantity).to_string(),
                filled_quantity: spec.lots_to_quantity(l.filled).to_string(),
                deleveraged_quantity: spec.lots_to_quantity(l.deleveraged).to_string(),
                to_insurance_fund: units_to_usdt(l.to_fund).to_string(),
                insurance_fund: units_to_usdt(l.fund).to_string(),
            },
        ),
        Event::FundingPaid(f) => (
            FUNDING_TOPIC,
            ResultJson::FundingPaid {
                event_id,
                symbol,
                seq: f.seq,
                timestamp: f.timestamp,
                user_id: account_id(f.user),
                amount: units_to_usdt(f.amount).to_string(),
                margin_change: units_to_usdt(f.margin_change).to_string(),
                funding_rate: rate_decimal(f.rate).to_string(),
                mark_price: spec.ticks_to_price(f.mark).to_string(),
                position: position_json(spec, &f.position),
            },
        ),
        Event::FundingSettled(r) => (
            FUNDING_TOPIC,
            ResultJson::FundingSettled {
                event_id,
                symbol,
                seq: r.seq,
                timestamp: r.timestamp,
                funding_rate: rate_decimal(r.rate).to_string(),
                mark_price: r.mark.map(|m| spec.ticks_to_price(m).to_string()),
                positions: r.positions,
                to_insurance_fund: units_to_usdt(r.to_fund).to_string(),
                insurance_fund: units_to_usdt(r.fund).to_string(),
            },
        ),
    };
    // Writing into a Vec fails only on a type serde cannot write, which these are not.
    let _ = serde_json::to_writer(bytes, &record);
    topic
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reduce-only sell stop-market on the mark at 4 ticks.
    fn stop(user: UserId) -> crate::engine::NewConditional {
        crate::engine::NewConditional {
            user,
            side: Side::Sell,
            kind: crate::engine::ConditionalKind::Stop,
            trigger: 4,
            working: crate::engine::WorkingPrice::Mark,
            price: None,
            tif: TimeInForce::Gtc,
            quantity: 3,
            close_position: false,
            reduce_only: true,
            client_order_id: Some(ClientOrderId::new("sl-1").unwrap()),
            timestamp: 12,
            callback: 0,
        }
    }
    use crate::engine::symbol::btc;

    #[test]
    fn commands_round_trip_exactly() {
        let spec = btc();
        let order = NewOrder {
            id: OrderId((7 << 52) | 123_456),
            user: UserId((5 << 32) | 9),
            side: Side::Sell,
            kind: OrderType::Limit { price: 500_005, tif: TimeInForce::PostOnly },
            quantity: 10,
            leverage: 20,
            reduce_only: true,
            client_order_id: Some(ClientOrderId::new("my-1").unwrap()),
            locked_margin: 25_000_250,
            timestamp: 1_764_100_000_000,
            stp: Default::default(),
            good_till: 0,
        };
        let market = NewOrder { kind: OrderType::Market, client_order_id: None, ..order };
        let priced = NewOrder { kind: OrderType::MarketWithin { limit: 525_000 }, ..market };
        let commands = [
            Command::Place(order),
            Command::Place(market),
            Command::Place(priced),
            Command::Place(NewOrder { stp: SelfTradePrevention::ExpireBoth, ..order }),
            Command::Place(NewOrder { good_till: order.timestamp + 60_000, ..order }),
            Command::ExpireDue { timestamp: 13 },
            Command::Cancel { id: order.id, user: order.user, timestamp: 5 },
            Command::CancelAll { user: order.user, timestamp: 6 },
            Command::IndexPrice { price: 500_001, timestamp: 7 },
            Command::Funding { timestamp: 8 },
            Command::Liquidate { timestamp: 9 },
            Command::SetLeverage { user: order.user, leverage: 7, timestamp: 10 },
            Command::Countdown { user: order.user, after_ms: 5_000, timestamp: 11 },
            Command::CountdownDue { timestamp: 12 },
            Command::PlaceConditional(stop(order.user)),
            Command::PlaceConditional(crate::engine::NewConditional { close_position: true, quantity: 0, price: Some(9), tif: TimeInForce::PostOnly, ..stop(order.user) }),
            Command::CancelConditional { id: Some(7), user: order.user, timestamp: 14 },
            Command::CancelConditional { id: None, user: order.user, timestamp: 15 },
            Command::PlaceTriggered { conditional: 7, order: market },
            Command::RefuseTriggered { conditional: 7, user: order.user, reason: crate::engine::CancelReason::ReduceOnlyRejected, timestamp: 16 },
        ];
        for command in commands {
            let bytes = encode_command(&spec, &StreamRecord::Command(command), 42);
            assert_eq!(decode_command(&spec, &bytes), Ok(StreamRecord::Command(command)), "{}", String::from_utf8_lossy(&bytes));
        }
        // A batch in one record: every command, in order, each with its own number.
        let mut record = Vec::new();
        let numbered: Vec<(StreamRecord, u64)> = commands.iter().zip(100..).map(|(c, seq)| (StreamRecord::Command(*c), seq)).collect();
        for (command, seq) in &numbered {
            append_command(&spec, command, *seq, &mut record);
        }
        assert_eq!(lines(&record).count(), commands.len());
        assert_eq!(decode_record(&spec, &record), Ok(numbered));
        record.extend_from_slice(b"\n{}");
        assert!(decode_record(&spec, &record).is_err(), "one line that is not a command spoils the record");
        let void = encode_command(&spec, &StreamRecord::Void(17), 43);
        assert_eq!(decode_command(&spec, &void), Ok(StreamRecord::Void(17)));
        let epoch = encode_command(&spec, &StreamRecord::Epoch, 44);
        assert_eq!(decode_numbered(&spec, &epoch), Ok((StreamRecord::Epoch, 44)));
        let text = String::from_utf8(encode_command(&spec, &StreamRecord::Command(Command::Place(order)), 42)).unwrap();
        for field in [r#""eventType":"OrderSubmitted""#, r#""price":"50000.5""#, r#""quantity":"0.010""#, r#""lockedMargin":"0.2500025""#, r#""seq":42"#] {
            assert!(text.contains(field), "{text} lacks {field}");
        }
        let text = String::from_utf8(encode_command(&spec, &StreamRecord::Command(Command::Place(priced)), 44)).unwrap();
        assert!(text.contains(r#""type":"MARKET""#) && text.contains(r#""protectionPrice":"52500.0""#), "{text}");
        assert!(decode_command(&spec, br#"{"eventType":"OrderSubmitted"}"#).is_err());
    }

    #[test]
    fn trades_carry_the_seed_fields() {
        let spec = btc();
        let mut market = crate::engine::Market::new(spec.clone());
        let mut events = Vec::new();
        for (id, user, side) in [(1, 1, Side::Sell), (2, 2, Side::Buy)] {
            let order = NewOrder {
                id: OrderId(id),
                user: UserId(user),
                side,
                kind: OrderType::Limit { price: 1000, tif: TimeInForce::Gtc },
                quantity: 2,
                leverage: 1,
                reduce_only: false,
                client_order_id: None,
                locked_margin: 30_000,
                timestamp: 7,
                stp: Default::default(),
                good_till: 0,
            };
            market.execute(&Command::Place(order), &mut events).unwrap();
        }
        let (topic, bytes) = encode_event(&spec, &events[1]);
        assert_eq!(topic, "trades.executed");
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        for path in ["/trade/tradeId", "/trade/price", "/trade/buyerOrderId", "/trade/sellerOrderId", "/buyerUpdate/pnl", "/sellerUpdate/marginReleased", "/buyerUpdate/position/size", "/seq"] {
            assert!(v.pointer(path).is_some(), "{path} missing in {v}");
        }
        assert_eq!(v["trade"]["price"], "100.0");
        let (again, _) = encode_event(&spec, &events[1]);
        assert_eq!(again, topic);
        assert_eq!(encode_event(&spec, &events[1]).1, bytes, "same event, same bytes and id");
    }

    #[test]
    fn account_records_round_trip() {
        for record in [
            AccountRecord::UserCreated { name: "alice".into(), user: UserId(1 << 32 | 1), key_hash: [9; 32] },
            AccountRecord::Transfer { user: UserId(3), transfer_id: "t-1".into(), amount: -150_000_000, timestamp: 1 },
            AccountRecord::Voided { offset: 12 },
        ] {
            assert_eq!(decode_account(&encode_account(&record, 1, 2)), Ok(record));
        }
    }

    /// The top-level fields of a JSON record, and of its objects one level down.
    fn layout(bytes: &[u8]) -> Vec<String> {
        let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let mut fields = Vec::new();
        for (k, v) in value.as_object().unwrap() {
            fields.push(k.clone());
            if let Some(inner) = v.as_object() {
                fields.extend(inner.keys().map(|i| format!("{k}.{i}")));
            }
        }
        fields.sort();
        fields
    }

    fn fields(list: &str) -> Vec<String> {
        let mut fields: Vec<String> = list.split_whitespace().map(str::to_owned).collect();
        fields.sort();
        fields
    }

    /// A record made before an epoch and read after it counts for no reader; records
    /// made after it, and everything before it, do.
    #[test]
    fn records_numbered_below_an_epoch_read_after_it_are_void() {
        let mut floor = EpochFloor::default();
        let read: Vec<bool> = [(false, 10), (false, 11), (true, 20), (false, 12), (false, 21), (true, 15), (false, 19), (false, 22)]
            .into_iter()
            .map(|(epoch, seq)| floor.admits(epoch, seq))
            .collect();
        assert_eq!(read, [true, true, true, false, true, true, false, true]);
        assert_eq!(floor, EpochFloor(20), "an older epoch read late does not lower the floor");
    }

    /// Every record type on every topic has exactly the fields README "Kafka" lists.
    #[test]
    fn every_record_type_has_the_documented_fields() {
        let spec = btc();
        let order = NewOrder {
            id: OrderId((7 << 52) | 1),
            user: UserId((5 << 32) | 9),
            side: Side::Buy,
            kind: OrderType::Limit { price: 500_000, tif: TimeInForce::Gtc },
            quantity: 10,
            leverage: 20,
            reduce_only: false,
            client_order_id: Some(ClientOrderId::new("c").unwrap()),
            locked_margin: 25_000_250,
            timestamp: 1,
            stp: Default::default(),
            good_till: 0,
        };
        let market = NewOrder { kind: OrderType::MarketWithin { limit: 525_000 }, ..order };
        let submitted = "eventId eventType orderId userId symbol side type price quantity leverage timestamp timeInForce reduceOnly clientOrderId lockedMargin seq";
        let cases: Vec<(Vec<u8>, String)> = vec![
            (encode_command(&spec, &StreamRecord::Command(Command::Place(order)), 1), submitted.to_owned()),
            (encode_command(&spec, &StreamRecord::Command(Command::Place(market)), 1), format!("{submitted} protectionPrice")),
            (
                encode_command(&spec, &StreamRecord::Command(Command::Cancel { id: order.id, user: order.user, timestamp: 2 }), 2),
                "eventId eventType orderId userId symbol timestamp seq".to_owned(),
            ),
            (encode_command(&spec, &StreamRecord::Void(3), 3), "eventId eventType symbol voidedOffset seq".to_owned()),
            (encode_command(&spec, &StreamRecord::Epoch, 3), "eventId eventType symbol seq".to_owned()),
            (
                encode_command(&spec, &StreamRecord::Command(Command::IndexPrice { price: 5, timestamp: 3 }), 3),
                "eventId eventType symbol price timestamp seq".to_owned(),
            ),
            (encode_command(&spec, &StreamRecord::Command(Command::Funding { timestamp: 3 }), 3), "eventId eventType symbol timestamp seq".to_owned()),
            (encode_command(&spec, &StreamRecord::Command(Command::Liquidate { timestamp: 3 }), 3), "eventId eventType symbol timestamp seq".to_owned()),
            (
                encode_command(&spec, &StreamRecord::Command(Command::SetLeverage { user: order.user, leverage: 5, timestamp: 3 }), 3),
                "eventId eventType userId symbol leverage timestamp seq".to_owned(),
            ),
            (
                encode_command(&spec, &StreamRecord::Command(Command::Countdown { user: order.user, after_ms: 5, timestamp: 3 }), 3),
                "eventId eventType userId symbol countdownTime timestamp seq".to_owned(),
            ),
            (encode_command(&spec, &StreamRecord::Command(Command::CountdownDue { timestamp: 3 }), 3), "eventId eventType symbol timestamp seq".to_owned()),
            (encode_command(&spec, &StreamRecord::Command(Command::ExpireDue { timestamp: 3 }), 3), "eventId eventType symbol timestamp seq".to_owned()),
            (
                encode_command(&spec, &StreamRecord::Command(Command::Amend { id: order.id, user: order.user, price: 5, quantity: 1, added_margin: 0, timestamp: 3 }), 3),
                "eventId eventType orderId userId symbol price quantity addedMargin timestamp seq".to_owned(),
            ),
            (
                encode_command(&spec, &StreamRecord::Command(Command::Place(NewOrder { good_till: 9, stp: SelfTradePrevention::ExpireMaker, ..order })), 1),
                format!("{submitted} selfTradePreventionMode goodTillDate"),
            ),
            (
                encode_command(&spec, &StreamRecord::Command(Command::PlaceTriggered { conditional: 4, order: market }), 1),
                format!("{submitted} protectionPrice conditionalId"),
            ),
            (
                encode_command(&spec, &StreamRecord::Command(Command::PlaceConditional(stop(order.user))), 1),
                "eventId eventType userId symbol side type triggerPrice workingType price timeInForce quantity closePosition reduceOnly clientOrderId timestamp seq".to_owned(),
            ),
            (
                encode_command(&spec, &StreamRecord::Command(Command::CancelConditional { id: Some(4), user: order.user, timestamp: 3 }), 1),
                "eventId eventType conditionalId userId symbol timestamp seq".to_owned(),
            ),
            (
                encode_command(
                    &spec,
                    &StreamRecord::Command(Command::RefuseTriggered { conditional: 4, user: order.user, reason: crate::engine::CancelReason::InsufficientMargin, timestamp: 3 }),
                    1,
                ),
                "eventId eventType conditionalId userId symbol reason timestamp seq".to_owned(),
            ),
            (
                encode_account(&AccountRecord::UserCreated { name: "alice".into(), user: order.user, key_hash: [1; 32] }, 5, 4),
                "eventId eventType userId accountId keyHash".to_owned(),
            ),
            (
                encode_account(&AccountRecord::Transfer { user: order.user, transfer_id: "t".into(), amount: 5, timestamp: 6 }, 5, 5),
                "eventId eventType accountId transferId currency amount timestamp".to_owned(),
            ),
            (encode_account(&AccountRecord::Voided { offset: 1 }, 5, 6), "eventId eventType voidedOffset".to_owned()),
        ];
        let mut m = crate::engine::Market::new(spec.clone());
        let mut events = Vec::new();
        let sell = NewOrder { id: OrderId((7 << 52) | 2), user: UserId((6 << 32) | 1), side: Side::Sell, client_order_id: None, ..order };
        m.execute(&Command::Place(sell), &mut events).unwrap();
        m.execute(&Command::Place(NewOrder { quantity: 4, ..order }), &mut events).unwrap();
        m.execute(&Command::Cancel { id: sell.id, user: sell.user, timestamp: 9 }, &mut events).unwrap();
        m.execute(&Command::IndexPrice { price: 5, timestamp: 10 }, &mut events).unwrap();
        m.execute(&Command::Funding { timestamp: 11 }, &mut events).unwrap();
        m.execute(&Command::PlaceConditional(stop(order.user)), &mut events).unwrap();
        let position = crate::engine::PositionState::default();
        let (user, order_id) = (order.user, OrderId(crate::engine::ENGINE_ORDER | 30));
        events.extend([
            Event::LiquidationStarted(crate::engine::LiquidationOrder { seq: 30, order_id, user, side: Side::Sell, quantity: 1, price: 1, mark: 1, timestamp: 12 }),
            Event::LiquidationEnded(crate::engine::Liquidated {
                seq: 31, order_id, user, side: Side::Sell, quantity: 1, filled: 1, deleveraged: 0, to_fund: 1, fund: 1, timestamp: 12,
            }),
            Event::FundingPaid(crate::engine::FundingPayment { seq: 32, user, amount: -1, margin_change: -1, rate: 1, mark: 1, position, timestamp: 13 }),
            Event::OrderAmended(crate::engine::Amended {
                seq: 33, order_id, user, side: Side::Buy, price: 5, quantity: 2, filled: 1, locked_margin: 3, added_margin: 1,
                released_margin: 0, kept_priority: false, refused: Some(crate::engine::AmendRefusal::WouldTake), timestamp: 14,
            }),
        ]);
        let update = "userId orderId pnl fee marginReleased position";
        let position = "position.size position.cost position.margin position.realizedPnl position.fees position.leverage";
        let result_fields = |e: &Event| match e {
            Event::OrderPlaced(_) => "eventId eventType symbol seq timestamp orderId userId side price quantity filledQuantity lockedMargin leverage reduceOnly clientOrderId".to_owned(),
            Event::OrderCancelled(_) => "eventId eventType symbol seq timestamp orderId userId side quantity filledQuantity releasedMargin reason".to_owned(),
            Event::OrderAmended(_) => {
                "eventId eventType symbol seq timestamp orderId userId side price quantity filledQuantity lockedMargin addedMargin releasedMargin keptPriority refused".to_owned()
            }
            Event::TradeExecuted(t) => format!(
                "eventId eventType symbol seq timestamp trade buyerUpdate sellerUpdate {}{} {} {}",
                "trade.tradeId trade.symbol trade.price trade.quantity trade.buyerOrderId trade.sellerOrderId trade.takerSide trade.timestamp",
                if t.adl { " trade.adl" } else { "" },
                update.split(' ').map(|f| format!("buyerUpdate.{f}")).collect::<Vec<_>>().join(" "),
                update.split(' ').map(|f| format!("sellerUpdate.{f}")).collect::<Vec<_>>().join(" "),
            ),
            Event::PriceUpdated(_) => "eventId eventType symbol seq timestamp indexPrice markPrice".to_owned(),
            Event::LiquidationStarted(_) => {
                "eventId eventType symbol seq timestamp orderId userId side quantity bankruptcyPrice markPrice".to_owned()
            }
            Event::LiquidationEnded(_) => "eventId eventType symbol seq timestamp orderId userId side quantity filledQuantity deleveragedQuantity toInsuranceFund insuranceFund".to_owned(),
            Event::FundingPaid(_) => format!("eventId eventType symbol seq timestamp userId amount marginChange fundingRate markPrice position {position}"),
            Event::FundingSettled(_) => "eventId eventType symbol seq timestamp fundingRate markPrice positions toInsuranceFund insuranceFund".to_owned(),
            Event::Conditional(_) => "eventId eventType symbol seq timestamp conditionalId userId side type triggerPrice workingType price quantity closePosition reduceOnly clientOrderId status orderId reason".to_owned(),
        };
        let mut kinds = std::collections::BTreeSet::new();
        let results: Vec<(Vec<u8>, String)> = events.iter().map(|e| (encode_event(&spec, e).1, result_fields(e))).collect();
        for (bytes, expected) in cases.into_iter().chain(results) {
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            kinds.insert(value["eventType"].as_str().unwrap().to_owned());
            assert_eq!(layout(&bytes), fields(&expected), "{}", String::from_utf8_lossy(&bytes));
        }
        let all = [
            "OrderSubmitted", "CancelRequested", "CommandVoided", "EpochStarted", "IndexPriceSet", "FundingTick", "LiquidationSweep", "LeverageSet", "CountdownSet", "CountdownDue", "ExpiryDue", "OrderAmendRequested", "ConditionalOrderSubmitted", "ConditionalCancelRequested", "ConditionalRefused", "UserCreated", "BalanceAdjusted",
            "RecordVoided", "OrderPlaced", "OrderAmended", "OrderCancelled", "TradeExecuted", "MarkPriceUpdated", "LiquidationStarted", "PositionLiquidated",
            "FundingPaid", "FundingSettled", "ConditionalOrderUpdated",
        ];
        assert_eq!(kinds, all.iter().map(|k| (*k).to_owned()).collect(), "every record type was looked at");
    }
}
