//! What the exchange publishes on Kafka: JSON any client reads, and results that carry
//! the same ids when a replay publishes them again.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Broker, Server};
use serde_json::Value;

fn read_topic(brokers: &str, topic: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for partition in 0..2 {
        let (records, _) = exchange_io::kafka::read_partition(brokers, topic, partition, 0, Duration::from_secs(10)).unwrap();
        out.extend(
            records
                .iter()
                .filter(|r| r.key != exchange_io::kafka::FENCE_KEY.as_bytes())
                .map(|r| serde_json::from_slice::<Value>(&r.payload).expect("JSON record")),
        );
    }
    out
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

    let submitted = read_topic(&broker.addr, "x.orders.submitted");
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
