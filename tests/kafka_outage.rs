//! Kafka unavailable: bounded 503s with nothing changed, degraded health, and a resume
//! with no restart; after it, no order answered 503 shows up, even after a replay.

mod common;

use std::time::{Duration, Instant};

use common::{Broker, Server};

const ORDER: &str = r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.001","leverage":10,"clientOrderId":"CID"}"#;

#[test]
fn broker_outage_answers_503_then_resumes_by_itself() {
    let broker = Broker::start();
    let mut s = Server::start_kafka(&broker.addr, &[("EXCHANGE_KAFKA_TIMEOUT_MS", "1000")]);
    let alice = s.funded("alice", "1000");
    let (status, _) = s.order(&alice, &ORDER.replace("CID", "before"));
    assert_eq!(status, 200);
    let (_, balance_before) = s.get(&alice, "/v1/balance");

    broker.freeze(true);
    let started = Instant::now();
    let (status, reply) = s.order(&alice, &ORDER.replace("CID", "during"));
    let took = started.elapsed();
    assert_eq!((status, reply["code"].as_str()), (503, Some("UNAVAILABLE")), "{reply}");
    assert!(took < Duration::from_millis(2_500), "503 took {took:?}");
    let (_, health) = s.request("GET", "/health", &[], None);
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(s.get(&alice, "/v1/balance").1, balance_before, "the refused order holds no margin");
    let (status, reply) = s.deposit("alice", "500", "t-during");
    assert_eq!((status, reply["code"].as_str()), (503, Some("UNAVAILABLE")), "{reply}");

    broker.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let (status, reply) = s.order(&alice, &ORDER.replace("CID", "after"));
        if status == 200 {
            break reply;
        }
        assert_eq!(status, 503, "{reply}");
        assert!(Instant::now() < deadline, "did not resume");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(after["status"], "NEW");
    assert_eq!(s.request("GET", "/health", &[], None).1["status"], "ok");
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.deposit("alice", "7", "t-after").0 != 200 {
        assert!(Instant::now() < deadline, "admin writes did not resume");
        std::thread::sleep(Duration::from_millis(300));
    }

    // The order answered 503 is nowhere, now or after a replay of the log.
    for round in 0..2 {
        assert_eq!(s.get(&alice, "/v1/orders/by-client-id/before").0, 200, "round {round}");
        assert_eq!(s.get(&alice, "/v1/orders/by-client-id/after").0, 200, "round {round}");
        assert_eq!(s.get(&alice, "/v1/orders/by-client-id/during").0, 404, "round {round}");
        let (_, depth) = s.request("GET", "/v1/depth?symbol=BTC-PERP", &[], None);
        assert_eq!(depth["bids"], serde_json::json!([["40000.0", "0.002"]]), "round {round}");
        let (_, balance) = s.get(&alice, "/v1/balance");
        assert_eq!(balance["total"], "1007", "the deposit answered 503 never counts (round {round})");
        s.restart();
    }
}
