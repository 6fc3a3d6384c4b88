//! The fuzz targets (`tests/fuzz/targets.rs`) in CI: every input of the kept corpus
//! (`fuzz/corpus/<target>/`, grown by the coverage-guided runs of `fuzz/`), then a short
//! mutation run from it. A panic fails the test, naming the target and the input.
//! Executions per target: `FUZZ_RUNS` (default 20,000).

#[path = "fuzz/targets.rs"]
mod targets;

use std::path::Path;

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Interesting bytes for the formats the targets read.
const TOKENS: &[&[u8]] = &[b"\r\n", b"\r\n\r\n", b"\"", b"{", b"}", b"[", b"]", b":", b",", b"null", b"-1", b"0", b"1e400", b"99999999999999999999", b"\xff\xff\xff\xff", b"\x00", b"%2F", b"?", b"/", b"."];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, donor: &[u8]) {
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !input.is_empty() => {
                let at = rng.below(input.len());
                input[at] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let at = rng.below(input.len());
                input[at] = rng.next() as u8;
            }
            2 if !input.is_empty() => {
                let at = rng.below(input.len());
                let end = (at + 1 + rng.below(16)).min(input.len());
                input.drain(at..end);
            }
            3 => {
                let at = rng.below(input.len() + 1);
                let token = TOKENS[rng.below(TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            4 if !donor.is_empty() => {
                let from = rng.below(donor.len());
                let end = (from + 1 + rng.below(64)).min(donor.len());
                let at = rng.below(input.len() + 1);
                input.splice(at..at, donor[from..end].iter().copied());
            }
            _ => {
                let at = rng.below(input.len() + 1);
                input.insert(at, rng.next() as u8);
            }
        }
    }
}

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(name);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    inputs.sort();
    inputs
}

fn run(target: &str, f: fn(&[u8]), input: &[u8]) {
    let outcome = std::panic::catch_unwind(|| f(input));
    assert!(outcome.is_ok(), "{target} panicked on {:?}", String::from_utf8_lossy(input));
}

#[test]
fn every_target_survives_its_corpus_and_a_mutation_run() {
    let runs: usize = std::env::var("FUZZ_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(20_000);
    let mut total = 0;
    for &(name, target) in targets::TARGETS {
        let corpus = corpus(name);
        assert!(!corpus.is_empty(), "{name}: the corpus is empty");
        for input in &corpus {
            run(name, target, input);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        for _ in 0..runs {
            let mut input = corpus[rng.below(corpus.len())].clone();
            let donor = &corpus[rng.below(corpus.len())];
            mutate(&mut rng, &mut input, donor);
            run(name, target, &input);
        }
        total += corpus.len() + runs;
        println!("{name}: {} corpus inputs, {runs} mutations", corpus.len());
    }
    println!("{total} executions");
}

/// Writes the hand-made seeds of the corpus (valid inputs of each target, so that the
/// fuzzer starts past the first checks). Run once with
/// `cargo test --test fuzz_corpus -- --ignored write_seeds`; the fuzzer adds the rest.
#[test]
#[ignore = "writes the seed corpus"]
fn write_seeds() {
    use exchange::accounts::{Accounts, HotState, TransferPlan};
    use exchange::engine::{ClientOrderId, Command, Market, NewOrder, OrderId, OrderType, Side, TimeInForce, UserId};
    use exchange::wire::{self, StreamRecord};

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    };
    let key = "0000000100000001.000000000000000000000000000000000000000000000000";
    let orders = [
        r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"50000.5","quantity":"0.010","leverage":10,"timeInForce":"GTC","reduceOnly":false,"clientOrderId":"my-1"}"#,
        r#"{"symbol":"ETH-PERP","side":"SELL","type":"MARKET","quantity":"1.5"}"#,
        r#"{"symbol":"BTC-PERP","side":"SELL","type":"LIMIT","price":"1","quantity":"0.001","timeInForce":"POST_ONLY","reduceOnly":true}"#,
        r#"{"userId":"alice"}"#,
        r#"{"userId":"alice","amount":"1000.5","transferId":"t-1"}"#,
    ];
    for (n, body) in orders.iter().enumerate() {
        write("order_json", &n.to_string(), body.as_bytes());
    }
    let requests = [
        format!("POST /v1/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}", orders[0].len(), orders[0]),
        "GET /v1/depth?symbol=BTC-PERP&limit=5 HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        format!("DELETE /v1/orders/by-client-id/a%2Fb HTTP/1.1\r\nX-API-Key: {key}\r\n\r\n"),
        format!("GET /v1/orders/history?symbol=BTC-PERP&limit=10&before=5 HTTP/1.1\r\nX-API-Key: {key}\r\n\r\n"),
        format!("POST /admin/v1/deposits HTTP/1.1\r\nX-Admin-Key: admin-key\r\nContent-Length: {}\r\n\r\n{}", orders[4].len(), orders[4]),
        format!("DELETE /v1/orders?symbol=ETH-PERP HTTP/1.1\r\nX-API-Key: {key}\r\n\r\n"),
    ];
    for (n, r) in requests.iter().enumerate() {
        write("http_request", &n.to_string(), r.as_bytes());
    }

    // Commands, as the journal frames them, and as Kafka records.
    let spec = exchange::shard_map::ShardMap::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("shards/default.toml")).unwrap().symbols[0].clone();
    let place = |id: u64, user: u64, side, kind| NewOrder {
        id: OrderId(1 << 52 | id),
        user: UserId(1 << 32 | user),
        side,
        kind,
        quantity: 10,
        leverage: 10,
        reduce_only: false,
        client_order_id: Some(ClientOrderId::new("c-1").unwrap()),
        locked_margin: 5_000_000_000,
        timestamp: 1_764_100_000_000,
        stp: Default::default(),
        good_till: 0,
    };
    let records = [
        StreamRecord::Command(Command::Place(place(1, 1, Side::Sell, OrderType::Limit { price: 500_000, tif: TimeInForce::Gtc }))),
        StreamRecord::Command(Command::Place(place(2, 2, Side::Buy, OrderType::MarketWithin { limit: 525_000 }))),
        StreamRecord::Command(Command::Place(place(3, 2, Side::Buy, OrderType::Limit { price: 499_000, tif: TimeInForce::Fok }))),
        StreamRecord::Command(Command::Cancel { id: OrderId(1 << 52 | 1), user: UserId(1 << 32 | 1), timestamp: 5 }),
        StreamRecord::Command(Command::CancelAll { user: UserId(1 << 32 | 2), timestamp: 6 }),
        StreamRecord::Void(2),
    ];
    let mut segment = Vec::new();
    for (n, record) in records.iter().enumerate() {
        exchange_io::journal::frame(&postcard::to_allocvec(record).unwrap(), &mut segment).unwrap();
        write("kafka_record", &format!("command-{n}"), &wire::encode_command(&spec, record, n as u64));
    }
    write("journal_segment", "commands", &segment);

    // Results on Kafka, a book and its snapshot file.
    let mut market = Market::new(spec.clone());
    let mut events = Vec::new();
    for record in &records {
        if let StreamRecord::Command(c) = record {
            let _ = market.execute(c, &mut events);
        }
    }
    for (n, event) in events.iter().enumerate() {
        write("kafka_record", &format!("result-{n}"), &wire::encode_event(&spec, event).1);
    }
    write("snapshot", "book", &market.snapshot());
    let file = exchange::shard::log::files::encode_symbol(&exchange::shard::log::files::SymbolSnapshot { offset: 6, market: market.snapshot(), trades: Vec::new(), epoch: Default::default(), candles: Default::default(), history: Default::default() });
    write("snapshot", "symbol-file", &file);

    // Account records and a partition snapshot file.
    let mut accounts = Accounts::new(0, 1_000, 1);
    let (created, _) = accounts.create_user("alice", [7; 24]).unwrap();
    accounts.apply(&created, true);
    let TransferPlan::Log(user, deposit) = accounts.transfer("alice", "t-1", 100_000_000_000, 0).unwrap() else { panic!() };
    accounts.apply(&deposit, true);
    let mut segment = Vec::new();
    for (n, record) in [created, deposit, exchange::accounts::AccountRecord::Voided { offset: 1 }].iter().enumerate() {
        exchange_io::journal::frame(&postcard::to_allocvec(record).unwrap(), &mut segment).unwrap();
        write("kafka_record", &format!("account-{n}"), &wire::encode_account(record, 0, n as u64));
    }
    write("journal_segment", "accounts", &segment);
    let mut order = place(9, 1, Side::Buy, OrderType::Limit { price: 400_000, tif: TimeInForce::Gtc });
    accounts.reserve(user, &mut order, 0, Some(0)).unwrap();
    accounts.confirm(user, order.id);
    let mut file = exchange::ports::header(exchange::ports::ACCOUNT_MAGIC);
    let partition = exchange::accounts::partition_of(user);
    accounts.partition_snapshot(partition, 3, &["BTC-PERP".to_owned()], &mut file);
    write("snapshot", "partition-file", &file);
}
