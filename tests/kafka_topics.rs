//! What the exchange publishes on Kafka: JSON any client reads, and results that carry
//! the same ids when a replay publishes them again.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Broker, Server};
use serde_json::Value;

/// A topic's records, each as its JSON objects (a command record holds one a line).
fn read_records(brokers: &str, topic: &str) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    for partition in 0..2 {
        let (records, _) = exchange_io::kafka::read_partition(brokers, topic, partition, 0, Duration::from_secs(10)).unwrap();
        out.extend(records.iter().filter(|r| r.key != exchange_io::kafka::FENCE_KEY.as_bytes()).map(|r| {
            r.payload.split(|b| *b == b'\n').map(|line| serde_json::from_slice::<Value>(line).expect("JSON line")).collect()
        }));
    }
    out
}

fn read_topic(brokers: &str, topic: &str) -> Vec<Value> {
    read_records(brokers, topic).into_iter().flatten().collect()
}

/// A topic once it holds `n` records (results are published without being waited for,
/// and linger in the producer for a few milliseconds), and never more.
fn read_until(brokers: &str, topic: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = read_topic(brokers, topic);
        if found.len() >= n || std::time::Instant::now() > deadline {
            assert_eq!(found.len(), n, "{topic}");
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn results_are_json_and_republished_with_the_same_ids() {
    let broker = Broker::start();
    let mut s = Server::start_kafka(&broker.addr, &[("EXCHANGE_KAFKA_TOPIC_PREFIX", "x.")]);
    let alice = s.funded("alice", "10000");
    let bob = s.funded("bob", "10000");
    s.limit(&alice, "SELL", "50000", "0.003");
    s.limit(&bob, "BUY", "50000", "0.001");
    s.limit(&bob, "BUY", "50000", "0.001");

    let commands = read_topic(&broker.addr, "x.orders.submitted");
    // Each symbol's log starts with the start's epoch (its fence), then the orders.
    assert_eq!(commands[0]["eventType"], "EpochStarted", "{}", commands[0]);
    let epochs: Vec<&serde_json::Value> = commands.iter().filter(|r| r["eventType"] == "EpochStarted").collect();
    let symbols: std::collections::BTreeSet<&str> = epochs.iter().map(|e| e["symbol"].as_str().unwrap()).collect();
    assert_eq!(symbols.len(), epochs.len(), "one epoch per symbol per start: {epochs:?}");
    assert!(symbols.contains("BTC-PERP"), "{symbols:?}");
    let submitted: Vec<serde_json::Value> = commands.iter().filter(|r| r["eventType"] == "OrderSubmitted").cloned().collect();
    assert_eq!(submitted.len(), 3);
    for field in ["eventId", "orderId", "userId", "symbol", "side", "type", "price", "quantity", "leverage", "timestamp", "timeInForce", "reduceOnly", "lockedMargin", "seq"] {
        assert!(submitted[0].get(field).is_some(), "OrderSubmitted lacks {field}: {}", submitted[0]);
    }
    assert_eq!(submitted[0]["eventType"], "OrderSubmitted");
    assert_eq!(submitted[0]["price"], "50000.0");

    let trades = read_until(&broker.addr, "x.trades.executed", 2);
    for path in ["/trade/tradeId", "/trade/buyerOrderId", "/trade/sellerOrderId", "/buyerUpdate/fee", "/sellerUpdate/marginReleased", "/seq"] {
        assert!(trades[0].pointer(path).is_some(), "TradeExecuted lacks {path}: {}", trades[0]);
    }
    let first: BTreeMap<String, Value> = trades.iter().map(|t| (t["eventId"].as_str().unwrap().to_owned(), t.clone())).collect();
    read_until(&broker.addr, "x.orders.placed", 1);

    // A crash and a replay publish the results again: the same events, the same ids.
    s.restart();
    let again = read_until(&broker.addr, "x.trades.executed", 4);
    for t in &again {
        let id = t["eventId"].as_str().unwrap();
        assert_eq!(first.get(id), Some(t), "republished event {id} differs");
    }
}

/// Commands that queue up together are logged as one record, a line each: far fewer
/// records (and delivery reports, and broker writes) than commands. Each line is a
/// command as any reader reads it, numbered in order, and the replay after a crash
/// brings back exactly the book and the accounts they made.
#[test]
fn commands_that_queue_together_share_a_record_so_do_their_results_and_replay_exactly() {
    let broker = Broker::start();
    // A snapshot every 300 commands: 320 commands in fewer records than that still make one.
    let mut s = Server::start_kafka(&broker.addr, &[("EXCHANGE_KAFKA_TOPIC_PREFIX", "b."), ("EXCHANGE_SNAPSHOT_EVERY", "300")]);
    let keys: Vec<String> = (0..16).map(|i| s.funded(&format!("u{i}"), "100000")).collect();
    std::thread::scope(|scope| {
        for (i, key) in keys.iter().enumerate() {
            let s = &s;
            scope.spawn(move || {
                for n in 0..20 {
                    // Buys up to 50,000 and sells from it: some trade, some rest.
                    let (side, price) = if i % 2 == 0 { ("BUY", 49_990 + n % 11) } else { ("SELL", 50_000 + n % 11) };
                    s.limit(key, side, &price.to_string(), "0.001");
                }
            });
        }
    });
    let records = read_records(&broker.addr, "b.orders.submitted");
    let orders = |r: &Vec<Value>| r.iter().filter(|c| c["eventType"] == "OrderSubmitted").count();
    let holding: Vec<&Vec<Value>> = records.iter().filter(|r| orders(r) > 0).collect();
    assert_eq!(holding.iter().map(|r| orders(r)).sum::<usize>(), 320);
    assert!(holding.len() < 320 * 3 / 4, "{} records for 320 orders sent 16 at a time", holding.len());
    let seqs: Vec<u64> = records.iter().flatten().filter(|c| c["symbol"] == "BTC-PERP").map(|c| c["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "numbered in log order: {seqs:?}");
    // Their results too: what a core executes in one turn is a record per topic and
    // symbol, a result a line, in order.
    let settled = |topic: &str| {
        let mut last = read_records(&broker.addr, topic);
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = read_records(&broker.addr, topic);
            if now.len() == last.len() {
                return now;
            }
            last = now;
        }
    };
    let placed = settled("b.orders.placed");
    let results: Vec<&Value> = placed.iter().flatten().collect();
    assert!(results.len() >= 100, "{} orders placed", results.len());
    assert!(placed.len() < results.len() * 3 / 4, "{} records for {} results of orders sent 16 at a time", placed.len(), results.len());
    let seqs: Vec<u64> = results.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in log order: {seqs:?}");
    let snapshots = || std::fs::read_dir(s.data.join("snapshots/symbols/BTC-PERP")).map_or(0, |d| d.count());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while snapshots() == 0 {
        assert!(std::time::Instant::now() < deadline, "no snapshot after 320 commands in {} records", records.len());
        std::thread::sleep(Duration::from_millis(100));
    }

    let state = |s: &Server| {
        let (_, depth) = s.request("GET", "/v1/depth?symbol=BTC-PERP", &[], None);
        let accounts: Vec<(Value, Value)> = keys.iter().map(|k| (s.get(k, "/v1/balance").1, s.get(k, "/v1/positions").1)).collect();
        (depth, accounts)
    };
    let before = state(&s);
    s.restart();
    assert_eq!(state(&s), before, "the replay of the batched records");
}

/// The copies the topics really have are read at every start and shown by `/health`:
/// a one-broker cluster cannot give three, and says so after every start, not only the
/// first (which created the topics).
#[test]
fn health_shows_how_many_copies_the_log_has() {
    let broker = Broker::start();
    let mut s = Server::start_kafka(&broker.addr, &[("EXCHANGE_KAFKA_TOPIC_PREFIX", "r."), ("EXCHANGE_KAFKA_REPLICATION_FACTOR", "3")]);
    for _ in 0..2 {
        let (status, health) = s.request("GET", "/health", &[], None);
        assert_eq!(status, 200);
        assert_eq!(health["eventLogReplication"], serde_json::json!({"status": "under-replicated", "wanted": 3, "actual": 1}), "{health}");
        assert_eq!(health["status"], "ok", "fewer copies is a weaker promise, not an outage: {health}");
        s.restart();
    }
    s.restart_with(&[("EXCHANGE_KAFKA_REPLICATION_FACTOR", "1")]);
    let (_, health) = s.request("GET", "/health", &[], None);
    assert_eq!(health["eventLogReplication"], serde_json::json!({"status": "ok", "wanted": 1, "actual": 1}), "{health}");
    let embedded = Server::start_embedded(&[]);
    let (_, health) = embedded.request("GET", "/health", &[], None);
    assert!(health.get("eventLogReplication").is_none(), "{health}");
}

/// A snapshot is written only once the results of the commands it covers are in Kafka:
/// results still lingering in the producer when the process dies are published again by
/// the replay after it (from an older snapshot), never lost behind a newer one.
#[test]
fn results_not_yet_in_kafka_at_a_crash_are_published_after_it() {
    let broker = Broker::start();
    let env = [("EXCHANGE_KAFKA_TOPIC_PREFIX", "h."), ("EXCHANGE_SNAPSHOT_EVERY", "1"), ("EXCHANGE_KAFKA_RESULTS_LINGER_MS", "5000"), ("EXCHANGE_KAFKA_TIMEOUT_MS", "10000")];
    let mut s = Server::start_kafka(&broker.addr, &env);
    let alice = s.funded("alice", "10000");
    let bob = s.funded("bob", "10000");
    s.limit(&alice, "SELL", "50000", "0.001");
    s.limit(&bob, "BUY", "50000", "0.001");
    // The trade's results wait 5 s in the producer; snapshots are due after every command.
    std::thread::sleep(Duration::from_millis(500));
    assert!(read_topic(&broker.addr, "h.trades.executed").is_empty(), "the results were expected to linger");
    s.restart_with(&[("EXCHANGE_KAFKA_RESULTS_LINGER_MS", "5")]);
    let trades = read_until(&broker.addr, "h.trades.executed", 1);
    assert!(trades[0].pointer("/trade/tradeId").is_some(), "{trades:?}");
}
