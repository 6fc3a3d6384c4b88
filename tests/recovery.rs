//! Crash recovery, against the real binary: kill -9, torn journal tails, moving symbols.

mod common;

use std::sync::{Arc, Mutex};

use common::Server;
use serde_json::Value;

/// Everything a client can read about the users and the books.
fn state(s: &Server, keys: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for symbol in ["BTC-PERP", "ETH-PERP"] {
        out.push(s.request("GET", &format!("/v1/depth?symbol={symbol}&limit=1000"), &[], None).1);
        // The candles that had trades (quiet periods up to now grow with the clock).
        for interval in ["1m", "1h"] {
            let (_, candles) = s.request("GET", &format!("/v1/candles?symbol={symbol}&interval={interval}&limit=1500"), &[], None);
            let traded: Vec<Value> = candles.as_array().unwrap().iter().filter(|c| c["trades"] != 0).cloned().collect();
            out.push(Value::Array(traded));
        }
    }
    for key in keys {
        out.push(s.get(key, "/v1/balance").1);
        out.push(s.get(key, "/v1/positions").1);
        out.push(s.get(key, "/v1/orders").1);
        out.push(s.get(key, "/v1/fills?limit=10000").1);
    }
    out
}

#[test]
fn kill_9_mid_stream_loses_no_acknowledged_order() {
    kill_9_mid_stream(&[]);
}

#[test]
fn kill_9_mid_stream_with_frequent_snapshots() {
    let s = kill_9_mid_stream(&[("EXCHANGE_SNAPSHOT_EVERY", "25")]);
    let snaps = |dir: &str| std::fs::read_dir(s.data.join("snapshots").join(dir)).map(|d| d.count()).unwrap_or(0);
    assert!(snaps("symbols") > 0 && snaps("accounts") > 0, "snapshots were taken");
    let files = std::fs::read_dir(s.data.join("snapshots/symbols/BTC-PERP"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "snap"))
        .count();
    // Three are kept; one more may exist if the crash came between a write and its prune.
    assert!((1..=4).contains(&files), "old snapshots are pruned: {files}");
}

fn kill_9_mid_stream(env: &[(&str, &str)]) -> Server {
    let mut s = Server::start_with(env);
    let keys: Vec<String> = (0..4).map(|i| s.funded(&format!("k{i}"), "100000")).collect();
    let acked: Arc<Mutex<Vec<(usize, Value)>>> = Arc::default();
    let url = s.url("/v1/orders");
    let mut threads = Vec::new();
    for (t, key) in keys.iter().enumerate() {
        let (key, acked, url) = (key.clone(), acked.clone(), url.clone());
        threads.push(std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(5)).build();
            for i in 0..100_000u64 {
                let side = if (i + t as u64).is_multiple_of(2) { "BUY" } else { "SELL" };
                let price = 50_000 + (i * 7 + t as u64 * 13) % 40;
                let body = format!(
                    r#"{{"symbol":"BTC-PERP","side":"{side}","type":"LIMIT","price":"{price}","quantity":"0.001","leverage":5,"clientOrderId":"t{t}-{i}"}}"#
                );
                match agent.post(&url).set("x-api-key", &key).send_string(&body) {
                    Ok(r) => acked.lock().unwrap().push((t, r.into_json().unwrap())),
                    Err(ureq::Error::Status(code, r)) => panic!("{code}: {}", r.into_string().unwrap_or_default()),
                    Err(_) => return, // the server died under us
                }
            }
        }));
    }
    // Let the stream run, then crash the server in the middle of it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while acked.lock().unwrap().len() < 300 {
        assert!(std::time::Instant::now() < deadline, "only {} orders acknowledged in 60 s", acked.lock().unwrap().len());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    s.kill9();
    for t in threads {
        t.join().unwrap();
    }
    s.restart();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);
    for (t, order) in &acked {
        let id = order["orderId"].as_str().unwrap();
        let (status, now) = s.get(&keys[*t], &format!("/v1/orders/{id}"));
        assert_eq!(status, 200, "acknowledged order {id} lost");
        assert_eq!(now["clientOrderId"], order["clientOrderId"]);
        let filled_then: rust_decimal::Decimal = order["filledQuantity"].as_str().unwrap().parse().unwrap();
        let filled_now: rust_decimal::Decimal = now["filledQuantity"].as_str().unwrap().parse().unwrap();
        assert!(filled_now >= filled_then, "fills are never undone");
    }
    // And a restart with no traffic in between changes nothing at all.
    let before = state(&s, &keys);
    s.restart();
    assert_eq!(state(&s, &keys), before);
    // Nor does trading on after it and restarting again.
    for (i, key) in keys.iter().enumerate() {
        s.limit(key, if i % 2 == 0 { "BUY" } else { "SELL" }, "50020", "0.002");
    }
    let before = state(&s, &keys);
    s.restart();
    assert_eq!(state(&s, &keys), before);
    s
}

#[test]
fn a_corrupt_last_journal_record_is_cut_not_replayed() {
    // About the embedded journal's files, so on the embedded journal in every mode.
    let mut s = Server::start_embedded(&[]);
    let alice = s.funded("alice", "100000");
    let first = s.limit(&alice, "BUY", "40000", "0.001");
    let last = s.limit(&alice, "BUY", "40001", "0.001");
    s.kill9();
    let dir = s.data.join("symbols").join("BTC-PERP");
    let segment = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    // The last byte of the last record (zeros fill the segment after it).
    let end = exchange_io::journal::decode_segment(&bytes).1 - 1;
    bytes[end] ^= 0x55;
    std::fs::write(&segment, &bytes).unwrap();
    s.restart();
    assert_eq!(s.get(&alice, &format!("/v1/orders/{}", first["orderId"].as_str().unwrap())).0, 200);
    assert_eq!(s.get(&alice, &format!("/v1/orders/{}", last["orderId"].as_str().unwrap())).0, 404);
    let (_, depth) = s.request("GET", "/v1/depth?symbol=BTC-PERP", &[], None);
    assert_eq!(depth["bids"], serde_json::json!([["40000.0", "0.001"]]));
    let (_, balance) = s.get(&alice, "/v1/balance");
    let (_, open) = s.get(&alice, "/v1/orders");
    assert_eq!(open.as_array().unwrap().len(), 1);
    assert_ne!(balance["locked"], "0", "the surviving order still holds its margin");
    // The server keeps working on the repaired log.
    s.limit(&alice, "BUY", "40002", "0.001");
    s.restart();
    assert_eq!(s.get(&alice, "/v1/orders").1.as_array().unwrap().len(), 2);
}

#[test]
fn moving_a_symbol_to_another_shard_keeps_its_data() {
    let mut s = Server::start();
    let alice = s.funded("alice", "100000");
    let bob = s.funded("bob", "100000");
    s.limit(&alice, "BUY", "40000", "0.005");
    s.limit(&bob, "SELL", "40000", "0.002");
    s.limit(&bob, "SELL", "41000", "0.003");
    let keys = [alice.clone(), bob.clone()];
    let before = state(&s, &keys);
    let (_, symbols) = s.request("GET", "/v1/symbols", &[], None);
    assert_eq!(symbols[0]["shard"], 0);
    let moved = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/shards/default.toml"))
        .unwrap()
        .replacen("shard = 0", "shard = 1", 1);
    let map = s.data.with_extension("moved.toml");
    std::fs::write(&map, moved).unwrap();
    s.restart_with(&[("EXCHANGE_SHARD_MAP", map.to_str().unwrap())]);
    let moved_server = &s;
    let (_, symbols) = moved_server.request("GET", "/v1/symbols", &[], None);
    assert_eq!(symbols[0]["shard"], 1, "BTC-PERP now lives on shard 1");
    assert_eq!(state(moved_server, &keys), before);
    std::fs::remove_file(&map).ok();
}
