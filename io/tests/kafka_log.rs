//! The Kafka event log against a real broker (`EXCHANGE_KAFKA_TEST_BROKER`, which
//! `test.sh` starts): what a commit acknowledges is what a replay reads back.

use std::time::Duration;

use exchange_io::kafka::{self, KafkaLog};
use exchange_io::EventLog;

/// Runs `f` on a glommio executor, as the shards do (confirmations use its timers).
fn on_glommio<T>(f: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).io_memory(512 << 10).make().unwrap().run(f)
}

fn broker() -> String {
    std::env::var("EXCHANGE_KAFKA_TEST_BROKER").expect("EXCHANGE_KAFKA_TEST_BROKER must name the test broker (test.sh starts one)")
}

/// A new topic of one partition, named for its test.
fn one_partition_topic(brokers: &str, test: &str) -> String {
    let topic = format!("{test}-test-{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    futures_lite::future::block_on(kafka::ensure_topics(brokers, &[&topic], &kafka::TopicSettings { partitions: 1, replication_factor: 1, min_insync_replicas: 1, retention_ms: 3_600_000 })).unwrap();
    topic
}

#[test]
fn committed_records_read_back_in_order_with_their_offsets() {
    let brokers = broker();
    let topic = format!("log-test-{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    futures_lite::future::block_on(kafka::ensure_topics(&brokers, &[&topic], &kafka::TopicSettings { partitions: 2, replication_factor: 1, min_insync_replicas: 1, retention_ms: 3_600_000 })).unwrap();
    let producer = kafka::producer(&brokers, Duration::from_secs(5)).unwrap();
    let p = kafka::partition_for(b"A", 2);
    let t = Duration::from_secs(5);
    let mut a = KafkaLog::new(&brokers, t, producer.clone(), &topic, p, "A", 0);
    let mut b = KafkaLog::new(&brokers, t, producer, &topic, p, "B", 0);
    let committed = on_glommio(async {
        let mut committed = Vec::new();
        for batch in 0..20 {
            for i in 0..(batch % 7 + 1) {
                a.append(format!("a-{batch}-{i}").as_bytes()).unwrap();
                b.append(format!("b-{batch}-{i}").as_bytes()).unwrap();
            }
            let offsets = a.commit().await.unwrap();
            let other = b.commit().await.unwrap();
            assert_eq!(offsets.len(), (batch % 7 + 1) as usize);
            assert_eq!(other.len(), offsets.len());
            for (i, o) in offsets.iter().enumerate() {
                committed.push((*o, format!("a-{batch}-{i}")));
            }
        }
        // Pipelined: several batches sent before any is confirmed land in the order sent.
        let mut sent = Vec::new();
        for batch in 20..30 {
            for i in 0..3 {
                a.append(format!("a-{batch}-{i}").as_bytes()).unwrap();
            }
            sent.push((batch, a.send().expect("Kafka pipelines")));
        }
        for (batch, confirmation) in sent {
            let offsets = confirmation.await.unwrap();
            assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
            assert!(offsets[0] > committed.last().unwrap().0, "batch {batch} landed before an earlier one");
            for (i, o) in offsets.iter().enumerate() {
                committed.push((*o, format!("a-{batch}-{i}")));
            }
        }
        committed
    });
    let (records, end) = kafka::read_partition(&brokers, &topic, p, 0, Duration::from_secs(10)).unwrap();
    let mine: Vec<(u64, String)> = records
        .iter()
        .filter(|r| r.key == b"A")
        .map(|r| (r.offset, String::from_utf8(r.payload.clone()).unwrap()))
        .collect();
    assert_eq!(mine, committed);
    assert!(end > committed.last().unwrap().0);
    // Reading from the middle gives the tail.
    let from = committed[10].0;
    let (tail, _) = kafka::read_partition(&brokers, &topic, p, from, Duration::from_secs(10)).unwrap();
    let tail: Vec<u64> = tail.iter().filter(|r| r.key == b"A").map(|r| r.offset).collect();
    assert_eq!(tail, committed[10..].iter().map(|c| c.0).collect::<Vec<_>>());
    // The stream's own read-back sees only its key.
    let back = on_glommio(a.read_back(from, Duration::from_secs(10))).unwrap();
    assert_eq!(back.iter().map(|r| r.0).collect::<Vec<_>>(), tail);
}

#[test]
fn topics_get_their_retention_and_the_replication_the_cluster_can_give() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let brokers = broker();
    let topic = format!("settings-test-{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    // The production settings, on the suite's single broker: created with what it can
    // give (one copy, one in sync) instead of failing.
    let settings = kafka::TopicSettings { partitions: 2, replication_factor: 3, min_insync_replicas: 2, retention_ms: 604_800_000 };
    futures_lite::future::block_on(kafka::ensure_topics(&brokers, &[&topic], &settings)).unwrap();
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::config::ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let described =
        futures_lite::future::block_on(admin.describe_configs(&[ResourceSpecifier::Topic(&topic)], &AdminOptions::new())).unwrap();
    let config = described.into_iter().next().unwrap().unwrap();
    let get = |name: &str| config.entries.iter().find(|e| e.name == name).and_then(|e| e.value.clone());
    assert_eq!(get("retention.ms").as_deref(), Some("604800000"));
    assert_eq!(get("min.insync.replicas").as_deref(), Some("1"));
}

/// A producer that hit a fatal error (fenced, sequence lost) refuses records; the log
/// says so at once and carries on with a new producer, made off the core, and made once
/// for every stream that shared the failed one.
#[test]
fn a_producer_that_failed_for_good_is_replaced_once_for_all_its_streams() {
    let brokers = broker();
    let topic = one_partition_topic(&brokers, "fatal");
    let t = Duration::from_secs(5);
    let shared = kafka::Commands::from(kafka::producer(&brokers, t).unwrap());
    let mut logs: Vec<KafkaLog> = ["A", "B", "C"].iter().map(|key| KafkaLog::new(&brokers, t, shared.clone(), &topic, 0, key, 0)).collect();
    let refused = on_glommio(async {
        for log in &mut logs {
            log.append(b"before").unwrap();
            log.commit().await.unwrap();
        }
        let failed = logs[0].producer_id();
        logs[0].inject_fatal_error();
        let mut refused = 0;
        let started = std::time::Instant::now();
        for log in &mut logs {
            while log.append(b"after").is_err() {
                refused += 1;
                assert!(started.elapsed() < Duration::from_secs(10), "the producer was never replaced");
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(log.commit().await.unwrap().len(), 1);
        }
        assert_ne!(logs[0].producer_id(), failed);
        refused
    });
    assert!(refused > 0, "a producer with a fatal error took a record");
    let first = logs[0].producer_id();
    assert!(logs.iter().all(|log| log.producer_id() == first), "one replacement for the three streams");
    let (records, _) = kafka::read_partition(&brokers, &topic, 0, 0, Duration::from_secs(10)).unwrap();
    for key in ["A", "B", "C"] {
        let payloads: Vec<&[u8]> = records.iter().filter(|r| r.key == key.as_bytes()).map(|r| r.payload.as_slice()).collect();
        assert_eq!(payloads, [b"before".as_slice(), b"after".as_slice()], "{key}");
    }
}

/// The results' producer is shared by every core: after it failed, each core asks for a
/// replacement, one is made, and every core takes that one.
#[test]
fn a_failed_results_producer_is_replaced_once_for_every_core() {
    use rdkafka::producer::Producer as _;
    let brokers = broker();
    let topic = one_partition_topic(&brokers, "results-fatal");
    let t = Duration::from_secs(5);
    let first = kafka::Results::new(&brokers, t).unwrap();
    let cores = [first.clone(), first.clone(), first];
    let id = |r: &kafka::Results| r.producer.client().native_ptr() as usize;
    kafka::inject_fatal_error(&cores[0].producer);
    assert!(cores.iter().all(|c| kafka::is_fatal(&c.producer)), "one producer for every core");
    assert!(cores[0].newer().is_none());
    for core in &cores {
        core.renew(&brokers, t);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cores[0].newer().is_none() {
        assert!(std::time::Instant::now() < deadline, "no replacement was made");
        std::thread::sleep(Duration::from_millis(10));
    }
    let taken: Vec<kafka::Results> = cores.iter().map(|c| c.newer().expect("the replacement")).collect();
    assert!(taken.iter().all(|r| id(r) == id(&taken[0])), "one replacement for the three cores");
    assert_ne!(id(&taken[0]), id(&cores[0]));
    assert!(taken[0].newer().is_none(), "and no second one");
    let report = kafka::send(&taken[1].producer, &topic, 0, "k", b"after").unwrap();
    futures_lite::future::block_on(kafka::delivered(report)).unwrap();
}

/// A stream whose batches queue behind each other asks its writer to gather commands
/// before it sends the next batch, a quiet one does not, and every record lands in the
/// order it was sent.
#[test]
fn a_busy_stream_gathers_a_quiet_one_does_not() {
    let brokers = broker();
    let topic = one_partition_topic(&brokers, "pace");
    let t = Duration::from_secs(5);
    let commands = kafka::Commands::new(&brokers, t).unwrap();
    let linger = commands.linger.expect("EXCHANGE_KAFKA_LINGER_MS is 0 here: nothing to gather for");
    let mut log = KafkaLog::new(&brokers, t, commands, &topic, 0, "A", 0);
    let (sent, changes) = on_glommio(async {
        let mut sent = Vec::new();
        let mut changes = Vec::new();
        let mut in_flight: std::collections::VecDeque<exchange_io::Confirmation> = std::collections::VecDeque::new();
        let mut batch = 0;
        // Quiet, busy (up to twelve batches kept in flight), quiet again.
        for (phase, batches, depth) in [("quiet", 10, 0), ("busy", 60, 12), ("quiet again", 40, 0)] {
            for _ in 0..batches {
                if in_flight.len() > depth {
                    while let Some(confirmation) = in_flight.pop_front() {
                        confirmation.await.unwrap();
                    }
                }
                let before = log.gathering();
                for i in 0..3 {
                    let payload = format!("{batch}-{i}");
                    log.append(payload.as_bytes()).unwrap();
                    sent.push(payload);
                }
                in_flight.push_back(log.send().unwrap());
                if log.gathering() != before {
                    changes.push((phase, log.gathering()));
                }
                if depth == 0 {
                    in_flight.pop_front().unwrap().await.unwrap();
                }
                batch += 1;
            }
            while let Some(confirmation) = in_flight.pop_front() {
                confirmation.await.unwrap();
            }
        }
        (sent, changes)
    });
    // (A slow confirmation in the busy phase can end its gathering for a while: a
    // pause makes a stream quiet.)
    assert_eq!(changes.first(), Some(&("busy", Some(linger))), "{changes:?}");
    assert_eq!(changes.last(), Some(&("quiet again", None)), "{changes:?}");
    assert!(changes.iter().all(|c| c.0 != "quiet"), "{changes:?}");
    let (records, _) = kafka::read_partition(&brokers, &topic, 0, 0, Duration::from_secs(10)).unwrap();
    let landed: Vec<String> = records.iter().filter(|r| r.key == b"A").map(|r| String::from_utf8(r.payload.clone()).unwrap()).collect();
    assert_eq!(landed, sent);
}
