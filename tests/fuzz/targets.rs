//! The fuzz targets: each takes arbitrary bytes to one surface where bytes from outside
//! reach the exchange, and must return (a value or an error) without panicking. Shared by
//! the coverage-guided fuzzer (`fuzz/`, cargo-fuzz) and by `tests/fuzz_corpus.rs`, which
//! replays the kept corpus and a short mutation run of each target in CI.

#![allow(dead_code)]

use exchange::api::parse::{route, Input, Limits};
use exchange::engine::{Command, Market, SymbolSpec};
use exchange::shard_map::ShardMap;
use exchange::wire::{self, StreamRecord};
use exchange_io::kafka::Located;

/// A fuzz target: arbitrary bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every target, by name (the name of its corpus directory and fuzz target).
pub const TARGETS: &[(&str, Target)] = &[
    ("http_request", http_request),
    ("order_json", order_json),
    ("journal_segment", journal_segment),
    ("snapshot", snapshot),
    ("kafka_record", kafka_record),
];

fn map() -> &'static ShardMap {
    static MAP: std::sync::OnceLock<ShardMap> = std::sync::OnceLock::new();
    MAP.get_or_init(|| ShardMap::parse(include_str!("../../shards/default.toml"), "shards/default.toml").unwrap())
}

fn spec() -> SymbolSpec {
    map().symbols[0].clone()
}

const ADMIN: &str = "admin-key";

/// A raw HTTP/1.1 request: its head parsed as hyper parses it (httparse), then routed
/// and validated as the accepting core does.
pub fn http_request(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = request.parse(data) else { return };
    let (Some(method), Some(target)) = (request.method, request.path) else { return };
    let header = |name: &str| {
        request.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut body = data[head..].to_vec();
    let input = Input { method, path, query, api_key: header("x-api-key"), admin_key: header("x-admin-key"), body: &mut body };
    let _ = route(input, &Limits { map: map(), admin_key: Some(ADMIN), max_json_depth: 8 });
}

/// A body for each endpoint that takes one.
pub fn order_json(data: &[u8]) {
    let key = "0000000100000001.000000000000000000000000000000000000000000000000";
    for (method, path, admin) in [
        ("POST", "/v1/orders", None),
        ("POST", "/admin/v1/users", Some(ADMIN)),
        ("POST", "/admin/v1/deposits", Some(ADMIN)),
    ] {
        let mut body = data.to_vec();
        let input = Input { method, path, query: None, api_key: Some(key), admin_key: admin, body: &mut body };
        let _ = route(input, &Limits { map: map(), admin_key: Some(ADMIN), max_json_depth: 8 });
    }
}

/// A journal segment as read at start: its records, each decoded as a command or an
/// account record, and every command decoded executed by a fresh book (the engine must
/// refuse what the risk step would never have let through, not panic on it).
pub fn journal_segment(data: &[u8]) {
    let (records, _) = exchange_io::journal::decode_segment(data);
    let mut market = Market::new(spec());
    let mut events = Vec::new();
    for record in records {
        let _ = postcard::from_bytes::<exchange::accounts::AccountRecord>(record);
        if let Ok(StreamRecord::Command(command)) = postcard::from_bytes::<StreamRecord>(record) {
            events.clear();
            let _ = market.execute(&command, &mut events);
        }
    }
    let _ = market.snapshot();
}

/// Snapshot files as read at start: a symbol's (its book inside), an account
/// partition's; a restored book must then execute commands without panicking.
pub fn snapshot(data: &[u8]) {
    let book = exchange::shard::log::files::decode_symbol(data).map_or_else(|| data.to_vec(), |s| s.market);
    if let Ok(mut market) = Market::restore(spec(), &book) {
        let mut events = Vec::new();
        let _ = market.execute(&Command::CancelAll { user: exchange::engine::UserId(1), timestamp: 0 }, &mut events);
        let _ = market.snapshot();
    }
    if let Some(state) = exchange::ports::decode_partition(data) {
        use exchange::accounts::HotState;
        let mut accounts = exchange::accounts::Accounts::new(0, 1_000, 1);
        accounts.install(0, state, &|name| map().symbols.iter().position(|s| s.name == name));
    }
}

/// A record read from Kafka: by the exchange at start (commands, account records) and by
/// the cold-storage writer (every topic).
pub fn kafka_record(data: &[u8]) {
    let spec = spec();
    if let Ok(StreamRecord::Command(command)) = wire::decode_command(&spec, data) {
        let mut market = Market::new(spec);
        let _ = market.execute(&command, &mut Vec::new());
    }
    let _ = wire::decode_account(data);
    for topic in wire::TOPICS {
        let record = Located { topic: topic.to_owned(), partition: 0, offset: 0, timestamp_ms: None, payload: data.to_vec() };
        let _ = exchange::cold::records::read(wire::COMMANDS_TOPIC, &record);
    }
}
