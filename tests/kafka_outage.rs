//! Kafka unavailable: bounded 503s with nothing changed, degraded health, and a resume
//! with no restart; after it, no order answered 503 shows up, even after a replay, and
//! even when the exchange is killed right after answering 503 and the command did reach
//! the broker.

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

/// The records of the symbol's command partition, as text.
fn commands_logged(s: &Server, brokers: &str) -> Vec<String> {
    let topic = format!("{}orders.submitted", s.env_var("EXCHANGE_KAFKA_TOPIC_PREFIX").unwrap_or_default());
    let partition = exchange_io::kafka::partition_for(b"BTC-PERP", 8);
    let (records, _) = exchange_io::kafka::read_partition(brokers, &topic, partition, 0, Duration::from_secs(10)).unwrap();
    records.into_iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect()
}

#[test]
fn a_503_holds_after_a_kill_even_when_the_broker_took_the_command() {
    let broker = Broker::start();
    let mut s = Server::start_kafka(&broker.addr, &[("EXCHANGE_KAFKA_TIMEOUT_MS", "1000")]);
    let alice = s.funded("alice", "1000");
    assert_eq!(s.order(&alice, &ORDER.replace("CID", "before")).0, 200);
    let (_, balance_before) = s.get(&alice, "/v1/balance");

    broker.freeze(true);
    // Several at once, so that more than one batch is in flight when the broker stops.
    let answers: Vec<(u16, serde_json::Value)> = std::thread::scope(|scope| {
        let sent: Vec<_> = (0..4).map(|i| {
            let (s, alice) = (&s, &alice);
            scope.spawn(move || s.order(alice, &ORDER.replace("CID", &format!("during-{i}"))))
        }).collect();
        sent.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, reply) in &answers {
        assert_eq!((*status, reply["code"].as_str()), (503, Some("UNAVAILABLE")), "{reply}");
    }
    // Killed at once: the exchange never got to void the commands in the log.
    s.kill9();
    broker.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    let landed = loop {
        let landed = commands_logged(&s, &broker.addr).iter().filter(|r| r.contains("during-")).count();
        if landed > 0 || Instant::now() > deadline {
            break landed;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(landed > 0, "the frozen broker took none of the commands: this test shows nothing");

    s.restart();
    for i in 0..4 {
        assert_eq!(s.get(&alice, &format!("/v1/orders/by-client-id/during-{i}")).0, 404, "order {i} answered 503 came back");
    }
    assert_eq!(s.get(&alice, "/v1/balance").1, balance_before);
    let (_, depth) = s.request("GET", "/v1/depth?symbol=BTC-PERP", &[], None);
    assert_eq!(depth["bids"], serde_json::json!([["40000.0", "0.001"]]));
    // Trading goes on, and the voids reach the log itself.
    assert_eq!(s.order(&alice, &ORDER.replace("CID", "after")).0, 200);
    let voids = commands_logged(&s, &broker.addr).iter().filter(|r| r.contains("CommandVoided")).count();
    assert!(voids >= landed, "{voids} voids for {landed} commands in the log");
    s.restart();
    assert_eq!(s.get(&alice, "/v1/orders/by-client-id/during-0").0, 404);
    assert_eq!(s.get(&alice, "/v1/orders/by-client-id/after").0, 200);
}

#[test]
fn a_dead_broker_answers_503_within_the_timeout() {
    let mut broker = Broker::start();
    let s = Server::start_kafka(&broker.addr, &[("EXCHANGE_KAFKA_TIMEOUT_MS", "1000")]);
    let alice = s.funded("alice", "1000");
    assert_eq!(s.order(&alice, &ORDER.replace("CID", "before")).0, 200);
    broker.kill();
    for i in 0..3 {
        let started = Instant::now();
        let (status, reply) = s.order(&alice, &ORDER.replace("CID", &format!("dead-{i}")));
        let took = started.elapsed();
        assert_eq!((status, reply["code"].as_str()), (503, Some("UNAVAILABLE")), "{reply}");
        assert!(took < Duration::from_millis(1_300), "503 number {i} took {took:?} with a 1 s timeout");
    }
}

#[test]
fn results_that_never_reached_a_broker_are_sent_again_until_one_has_them() {
    let mut broker = Broker::start();
    // Results linger long enough that the broker dies before they are sent.
    let s = Server::start_kafka(&broker.addr, &[("EXCHANGE_KAFKA_TIMEOUT_MS", "1000"), ("EXCHANGE_KAFKA_RESULTS_LINGER_MS", "800")]);
    let alice = s.funded("alice", "10000");
    let bob = s.funded("bob", "10000");
    let sell = r#"{"symbol":"BTC-PERP","side":"SELL","type":"LIMIT","price":"50000","quantity":"0.010","leverage":10}"#;
    assert_eq!(s.order(&alice, sell).0, 200);
    std::thread::sleep(Duration::from_millis(1_500));
    let buy = r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"50000","quantity":"0.001","leverage":10}"#;
    for _ in 0..5 {
        assert_eq!(s.order(&bob, buy).0, 200);
    }
    // Killed with the trades still lingering in the producer: they never reach it.
    broker.kill();
    std::thread::sleep(Duration::from_secs(3));
    // A new, empty broker where it was: the results must end up there.
    let broker = Broker::start_at(&broker.addr);
    let prefix = s.env_var("EXCHANGE_KAFKA_TOPIC_PREFIX").unwrap_or_default();
    let topics: Vec<String> = ["orders.submitted", "orders.placed", "orders.cancelled", "trades.executed", "accounts.adjusted"]
        .iter()
        .map(|t| format!("{prefix}{t}"))
        .collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    futures_lite::future::block_on(exchange_io::kafka::ensure_topics(&broker.addr, &names, &exchange::config::Kafka::default().topic_settings())).unwrap();
    let topic = format!("{prefix}trades.executed");
    let partition = exchange_io::kafka::partition_for(b"BTC-PERP", 8);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (records, _) = exchange_io::kafka::read_partition(&broker.addr, &topic, partition, 0, Duration::from_secs(10)).unwrap();
        let mut ids: Vec<String> = records
            .iter()
            .flat_map(|r| r.payload.split(|b| *b == b'\n'))
            .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
            .filter_map(|v| v["eventId"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids.dedup();
        if ids.len() == 5 {
            break;
        }
        assert!(ids.len() < 5, "{ids:?}");
        assert!(Instant::now() < deadline, "only {} of 5 trades reached the new broker", ids.len());
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn orders_whose_clients_left_during_an_outage_leave_no_margin_locked() {
    use std::io::Write;
    let broker = Broker::start();
    let s = Server::start_kafka(&broker.addr, &[("EXCHANGE_KAFKA_TIMEOUT_MS", "1000")]);
    let alice = s.funded("alice", "1000");
    broker.freeze(true);
    // Several connections, so that some land on the core that owns the symbol (where
    // the order path would otherwise run inside the request's own future) and some not.
    for n in 0..8 {
        let body = ORDER.replace("CID", &format!("gone-{n}"));
        let request = format!(
            "POST /v1/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: {alice}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut client = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        client.write_all(request.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // Gone before the log could answer.
        drop(client);
    }
    std::thread::sleep(Duration::from_millis(2_500));
    broker.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.deposit("alice", "1", "t-after").0 != 200 {
        assert!(Instant::now() < deadline, "writes did not resume");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Whatever became of each order, the margin locked is exactly that of the open ones.
    let (_, open) = s.get(&alice, "/v1/orders");
    let open = open.as_array().unwrap().len();
    let (_, balance) = s.get(&alice, "/v1/balance");
    let locked = common::dec(&balance["locked"]);
    let per_order: rust_decimal::Decimal = "4.02".parse().unwrap(); // 40 USDT ÷ 10 + the taker fee
    assert_eq!(locked, per_order * rust_decimal::Decimal::from(open), "{balance}, {open} open");
    assert_eq!(balance["total"], "1001", "{balance}");
}

/// A 504 keeps the order's margin and clientOrderId: the log may still have the order,
/// so a retry with the same clientOrderId cannot make a second one. Once the broker is
/// back and the command is void in the log, both are free and the retry places it, once.
#[test]
fn a_504_keeps_the_client_order_id_until_the_log_says_the_order_is_void() {
    let broker = Broker::start();
    let mut s = Server::start_kafka(&broker.addr, &[("EXCHANGE_KAFKA_TIMEOUT_MS", "1000")]);
    let alice = s.funded("alice", "1000");
    // Voids cannot be made durable on this node, so a timeout is answered 504, not 503.
    std::fs::write(s.data.join("voids"), b"not a directory").unwrap();
    broker.freeze(true);
    let order = ORDER.replace("CID", "in-doubt");
    let (status, reply) = s.order(&alice, &order);
    assert_eq!((status, reply["code"].as_str()), (504, Some("STATUS_UNKNOWN")), "{reply}");
    let (_, balance) = s.get(&alice, "/v1/balance");
    assert_eq!(balance["locked"], "4.02", "the log may have the order: its margin stays locked: {balance}");
    let (status, reply) = s.order(&alice, &order);
    assert_eq!((status, reply["code"].as_str()), (503, Some("UNAVAILABLE")), "a retry while in doubt: {reply}");

    broker.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, reply) = s.order(&alice, &order);
        if status == 200 {
            assert_eq!(reply["status"], "NEW", "{reply}");
            break;
        }
        assert_eq!(status, 503, "{reply}");
        assert!(Instant::now() < deadline, "the order answered 504 was never settled");
        std::thread::sleep(Duration::from_millis(200));
    }
    for round in 0..2 {
        let (_, open) = s.get(&alice, "/v1/orders");
        assert_eq!(open.as_array().unwrap().len(), 1, "round {round}: {open}");
        let (_, balance) = s.get(&alice, "/v1/balance");
        assert_eq!(balance["locked"], "4.02", "round {round}: {balance}");
        let (_, depth) = s.request("GET", "/v1/depth?symbol=BTC-PERP", &[], None);
        assert_eq!(depth["bids"], serde_json::json!([["40000.0", "0.001"]]), "round {round}");
        s.restart();
    }
}

/// A second process started on the same topics (a second node by mistake, a unit
/// restarted while the old process hangs) takes them over: the first stops acknowledging
/// at once and exits with status 4, and every order it acknowledged is in the second
/// one's book. Without the claim check, the first went on acknowledging orders that the
/// second's start epoch made void for every reader.
#[test]
fn a_second_process_on_the_same_topics_takes_over_and_the_first_stops() {
    let broker = Broker::start();
    let topics = [("EXCHANGE_KAFKA_TOPIC_PREFIX", "takeover."), ("EXCHANGE_MAX_OPEN_ORDERS", "100000")];
    let mut first = Server::start_kafka(&broker.addr, &topics);
    let alice = first.funded("alice", "1000000");
    let url = first.url("/v1/orders");
    let placing = std::thread::spawn(move || {
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
        let (mut acked, mut answers) = (Vec::new(), std::collections::BTreeMap::<u16, usize>::new());
        for n in 0.. {
            let body = ORDER.replace("CID", &format!("o{n}"));
            let status = match agent.post(&url).set("x-api-key", &alice).set("content-type", "application/json").send_string(&body) {
                Ok(r) => {
                    let reply: serde_json::Value = r.into_json().unwrap();
                    acked.push(reply["orderId"].as_str().unwrap().to_owned());
                    200
                }
                Err(ureq::Error::Status(code, _)) => code,
                Err(_) => break, // the first process is gone
            };
            *answers.entry(status).or_default() += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        (alice, acked, answers)
    });
    std::thread::sleep(Duration::from_millis(500));
    let second = Server::start_kafka(&broker.addr, &topics);
    let status = first.wait_exit(Duration::from_secs(20)).expect("the first process stops");
    assert_eq!(status.code(), Some(4), "superseded: {status}");
    let (alice, acked, answers) = placing.join().unwrap();
    assert!(acked.len() > 10, "orders were acknowledged before the takeover: {answers:?}");
    for id in &acked {
        let (status, order) = second.get(&alice, &format!("/v1/orders/{id}"));
        assert_eq!(status, 200, "order {id} acknowledged by the first process is missing in the second ({answers:?}): {order}");
    }
    let (_, open) = second.get(&alice, "/v1/orders?symbol=BTC-PERP");
    let open = open.as_array().map_or(0, Vec::len);
    // Orders answered 504 (delivered, unconfirmed at the takeover) may count; none other.
    let in_doubt = answers.get(&504).copied().unwrap_or(0);
    assert!(open >= acked.len() && open <= acked.len() + in_doubt, "{open} open, {} acknowledged, {answers:?}", acked.len());
    let (_, health) = second.request("GET", "/health", &[], None);
    assert_eq!(health["status"], "ok", "{health}");
}

/// A reader whose broker connections all drop in the middle of a replay (librdkafka
/// reports `AllBrokersDown`) goes on once they come back, and reads every record, in
/// order: a start-up must not fail on a broker that was away for a moment.
#[test]
fn a_replay_reads_on_through_a_dropped_broker_connection() {
    use exchange_io::kafka;
    // The broker tells clients to come back through the proxy, so cutting the proxy
    // drops every connection the reader has, bootstrap and partition leader alike.
    let proxy_port = common::free_port();
    let broker = Broker::start_advertising(&format!("127.0.0.1:{}", common::free_port()), &format!("127.0.0.1:{proxy_port}"));
    let proxy = common::Proxy::start_on(proxy_port, &broker.addr);
    let brokers = format!("127.0.0.1:{proxy_port}");
    let topic = format!("replay-drop-{}", std::process::id());
    let settings = kafka::TopicSettings { partitions: 1, replication_factor: 1, min_insync_replicas: 1, retention_ms: 3_600_000 };
    futures_lite::future::block_on(kafka::ensure_topics(&brokers, &[&topic], &settings)).unwrap();
    let producer = kafka::producer(&brokers, Duration::from_secs(10)).unwrap();
    let send = |range: std::ops::Range<u32>| {
        let reports: Vec<_> = range.map(|i| kafka::send(&producer, &topic, 0, "k", format!("r{i}").as_bytes()).unwrap()).collect();
        for r in reports {
            futures_lite::future::block_on(kafka::delivered(r)).unwrap();
        }
    };
    send(0..500);
    // Reading up to offset 1000 makes the reader wait, polling, for records not sent yet.
    let reader = {
        let (brokers, topic) = (brokers.clone(), topic.clone());
        std::thread::spawn(move || kafka::read_partition_to(&brokers, &topic, 0, 0, 1000, Duration::from_secs(20)))
    };
    let gave_up = |reader: std::thread::JoinHandle<Result<(Vec<kafka::Record>, u64), String>>, when: &str| {
        panic!("the reader gave up {when}: {:?}", reader.join().unwrap().map(|r| r.1));
    };
    std::thread::sleep(Duration::from_secs(2));
    if reader.is_finished() {
        gave_up(reader, "before the drop");
    }
    proxy.cut();
    std::thread::sleep(Duration::from_secs(2));
    if reader.is_finished() {
        gave_up(reader, "on the drop");
    }
    proxy.restore();
    send(500..1000);
    let (records, end) = reader.join().unwrap().expect("the reader reads on once the broker is back");
    assert_eq!(end, 1000);
    let payloads: Vec<String> = records.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect();
    assert_eq!(payloads, (0..1000).map(|i| format!("r{i}")).collect::<Vec<_>>());
    assert!(records.iter().enumerate().all(|(i, r)| r.offset == i as u64));
}

/// A stream whose commands queue behind unconfirmed batches gathers its next batches
/// (`exchange_shard_lingering_streams` counts it); once it goes quiet it stops, and the
/// gauge says so without waiting for another command.
#[test]
fn a_stream_that_gathered_while_the_broker_stalled_stops_gathering_when_quiet() {
    let broker = Broker::start();
    let s = Server::start_kafka(&broker.addr, &[("EXCHANGE_KAFKA_TIMEOUT_MS", "5000")]);
    let keys: Vec<String> = (0..15).map(|i| s.funded(&format!("u{i}"), "1000")).collect();
    let gathering = || s.metric("exchange_shard_lingering_streams", "");
    // Commands a few ms apart, each a batch that stays in flight: a stream gathers once
    // about four of its batches are unconfirmed on average, while it sends at least every
    // 10 ms. No more are sent once it gathers (fewer than its sixteen batches in flight):
    // the stream then waits, quiet, and stops gathering. Batches that merge or a pause
    // of the sender can keep a round from gathering at all: up to ten rounds.
    for round in 0..10 {
        let since = Instant::now();
        while gathering() != 0 {
            assert!(since.elapsed() < Duration::from_secs(2), "round {round}: the stream still gathers from the last round");
            std::thread::sleep(Duration::from_millis(20));
        }
        broker.freeze(true);
        let (gathered, still, answers) = std::thread::scope(|scope| {
            let mut sent = Vec::new();
            let mut gathered = false;
            for (i, key) in keys.iter().enumerate() {
                let s = &s;
                sent.push(scope.spawn(move || s.order(key, &ORDER.replace("CID", &format!("c{round}-{i}"))).0));
                std::thread::sleep(Duration::from_millis(3));
                gathered = gathering() == 1;
                if gathered {
                    break;
                }
            }
            let quiet = Instant::now();
            let mut still = gathered;
            while still && quiet.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(20));
                still = gathering() != 0;
            }
            broker.freeze(false);
            (gathered, still, sent.into_iter().map(|t| t.join().unwrap()).collect::<Vec<u16>>())
        });
        assert!(answers.iter().all(|a| *a == 200), "{answers:?}");
        if gathered {
            assert!(!still, "a quiet stream still counted as gathering");
            return;
        }
    }
    panic!("in ten rounds of up to 15 batches in flight, the stream never gathered");
}
