//! No bytes from outside make the exchange panic: the HTTP router and every decoder of
//! what comes from disk or Kafka (log records, result records, market and account
//! snapshots) answer arbitrary input with a value or an error, never a panic.
//!
//! Inputs are random, JSON shaped with the field names the exchange uses, and valid
//! records with bytes changed at random places, so that parsing gets past its first
//! check. Cases per property: `PROPTEST_CASES` (the suite runs 2,000).

use exchange::api::parse::{route, Input, Limits};
use exchange::engine::{Command, Market, NewOrder, OrderId, OrderType, Side, SymbolSpec, TimeInForce, UserId};
use exchange::shard_map::ShardMap;
use exchange::wire::{self, StreamRecord};
use exchange_io::kafka::Located;
use proptest::prelude::*;

fn map() -> ShardMap {
    ShardMap::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shards/default.toml")).unwrap()
}

fn spec() -> SymbolSpec {
    map().symbols[0].clone()
}

/// Everything that reads bytes the exchange did not necessarily write.
fn decode_everything(bytes: &[u8]) {
    let spec = spec();
    let _ = wire::decode_record(&spec, bytes);
    let _ = wire::decode_account(bytes);
    for topic in wire::TOPICS {
        let record = Located { topic: topic.to_owned(), partition: 0, offset: 0, timestamp_ms: None, payload: bytes.to_vec() };
        let _ = exchange::cold::records::read(wire::COMMANDS_TOPIC, &record);
    }
    let _ = Market::restore(spec, bytes);
    let _ = exchange::ports::decode_partition(bytes);
}

/// JSON values built from the exchange's own field names and edge-case values.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let key = prop::sample::select(vec![
        "eventType", "eventId", "orderId", "clientOrderId", "userId", "symbol", "side", "type", "timeInForce", "price",
        "quantity", "leverage", "reduceOnly", "lockedMargin", "timestamp", "voidedOffset", "tradeId", "buyer", "seller",
        "fee", "realizedPnl", "amount", "transferId", "name", "keyHash", "reason", "filledQuantity", "seq", "takerSide",
    ]);
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        prop::sample::select(vec![
            "OrderSubmitted", "CommandVoided", "OrderPlaced", "OrderCancelled", "TradeExecuted", "UserCreated", "Transfer",
            "BUY", "SELL", "LIMIT", "MARKET", "GTC", "IOC", "FOK", "POST_ONLY", "BTC-PERP", "ETH-PERP", "0", "-1",
            "0.1", "1e400", "99999999999999999999999999999", "0.000000000000000000000000000001", "",
            "0e018470-b6b2-8000-8126-61a13d902a35", "0000000100000001", "\u{0}",
        ])
        .prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 48, 12, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..12)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

/// A valid command record of the default map's first symbol.
fn command(price: i64, quantity: i64, market: bool, void: Option<u64>) -> Vec<u8> {
    let record = match void {
        Some(offset) => StreamRecord::Void(offset),
        None => StreamRecord::Command(Command::Place(NewOrder {
            id: OrderId(1 << 52 | 7),
            user: UserId(0x0000_0001_0000_0001),
            side: Side::Buy,
            kind: if market { OrderType::Market } else { OrderType::Limit { price, tif: TimeInForce::Gtc } },
            quantity,
            leverage: 10,
            reduce_only: false,
            client_order_id: None,
            locked_margin: 1_000,
            timestamp: 1,
            stp: Default::default(),
            good_till: 0,
        })),
    };
    wire::encode_command(&spec(), &record, 1)
}

/// `bytes` with `changes` (position, value) applied.
fn mutated(mut bytes: Vec<u8>, changes: &[(usize, u8)]) -> Vec<u8> {
    for &(at, value) in changes {
        if !bytes.is_empty() {
            let at = at % bytes.len();
            bytes[at] = value;
        }
    }
    bytes
}

proptest! {
    #[test]
    fn random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        decode_everything(&bytes);
    }

    #[test]
    fn json_shaped_records(value in json()) {
        decode_everything(&serde_json::to_vec(&value).unwrap());
    }

    #[test]
    fn valid_records_and_snapshots_with_bytes_changed(
        price in 1..1_000_000_i64,
        quantity in 1..1_000_000_i64,
        market in any::<bool>(),
        void in prop::option::of(any::<u64>()),
        changes in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
    ) {
        decode_everything(&mutated(command(price, quantity, market, void), &changes));
        let mut m = Market::new(spec());
        let mut events = Vec::new();
        for i in 0..3 {
            let order = NewOrder {
                id: OrderId(i + 1),
                user: UserId(i + 1),
                side: if i % 2 == 0 { Side::Buy } else { Side::Sell },
                kind: OrderType::Limit { price: price + i as i64 * 1_000, tif: TimeInForce::Gtc },
                quantity,
                leverage: 10,
                reduce_only: false,
                client_order_id: None,
                locked_margin: i64::MAX / 4,
                timestamp: 1,
                stp: Default::default(),
                good_till: 0,
            };
            let _ = m.execute(&Command::Place(order), &mut events);
        }
        decode_everything(&mutated(m.snapshot(), &changes));
    }

    #[test]
    fn requests(
        method in prop::sample::select(vec!["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", ""]),
        path in prop_oneof![
            "(/[a-z0-9%.:_-]{0,12}){0,5}",
            prop::sample::select(vec!["/v1/orders", "/v1/orders/by-client-id/%2F%FF", "/admin/v1/deposits", "/admin/v1/users", "/v1/depth", "/v1/orders/history"]).prop_map(str::to_owned),
        ],
        query in prop::option::of("[a-zA-Z=&%0-9.-]{0,40}"),
        api_key in prop::option::of(prop_oneof![".{0,70}", Just("0000000100000001.000000000000000000000000000000000000000000000000".to_owned())]),
        admin_key in prop::option::of(prop_oneof![".{0,8}", Just("admin".to_owned())]),
        body in prop_oneof![json().prop_map(|v| serde_json::to_vec(&v).unwrap()), prop::collection::vec(any::<u8>(), 0..300)],
    ) {
        let map = map();
        let mut body = body;
        let input = Input {
            method,
            path: &path,
            query: query.as_deref(),
            api_key: api_key.as_deref(),
            admin_key: admin_key.as_deref(),
            body: &mut body,
        };
        let _ = route(input, &Limits { map: &map, admin_key: Some("admin"), max_json_depth: 16 });
    }
}
