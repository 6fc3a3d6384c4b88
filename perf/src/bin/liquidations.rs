//! Mass liquidation: thousands of positions underwater after one index move, while
//! orders keep arriving on the same symbol.
//!
//! `cargo build --release && cargo run --release -p perf --bin liquidations [-- --positions 10000]`
//!
//! Starts the release exchange (embedded journal, two cores), posts an index price of
//! 50,000 and opens `--positions` longs of 0.001 BTC at 50x (liquidation price about
//! 49,197) against one large resting short. Then, twice, an open-loop one-lot order load
//! on BTC-PERP (`--rate` orders/s for `--seconds`):
//! - quiet: nothing else happens — the baseline ack latency;
//! - during: one second in, an index price 3 % lower makes every long due. Measured: the
//!   time from that index's answer until `exchange_liquidations_total` has counted every
//!   one and `exchange_liquidations_due` is 0, and the load's ack latency over the same
//!   window as the quiet run.
//!
//! Then the books must balance (`GET /admin/v1/summary`). The last line is
//! `liquidations: <N> closed in <X> ms; ack p99 quiet <Q> ms, during <D> ms (<R>x)`.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use perf::load::{self, call, connect, LoadArgs, Mix};
use perf::stack::{http_get, start_exchange};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    positions: usize,
    /// Orders per second of the load on the same symbol.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, default_value = "target/release/exchange")]
    exchange: PathBuf,
}

const ADMIN: &str = "bench-admin";

/// Sums a metric's series (every shard) in a `/metrics` text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{')).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Creates `count` users named `prefix-i`, funds each with `amount` and sends each
/// `order` (if any), over `connections` connections at once.
async fn users(addr: &str, prefix: &str, count: usize, amount: &str, order: Option<&str>, connections: usize) -> Vec<String> {
    let per = count.div_ceil(connections);
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let (addr, prefix, amount, order) = (addr.to_owned(), prefix.to_owned(), amount.to_owned(), order.map(str::to_owned));
            tokio::task::spawn_local(async move {
                let mut conn = connect(&addr).await;
                let mut keys = Vec::new();
                for i in c * per..((c + 1) * per).min(count) {
                    let name = format!("{prefix}-{i}");
                    let admin = [("x-admin-key", ADMIN)];
                    let (status, body) = call(&mut conn, "POST", "/admin/v1/users", &admin, format!(r#"{{"userId":"{name}"}}"#)).await;
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let key = v["apiKey"].as_str().unwrap_or_default().to_owned();
                    let deposit = format!(r#"{{"userId":"{name}","currency":"USDT","amount":"{amount}","transferId":"t-{name}"}}"#);
                    let (status, body) = call(&mut conn, "POST", "/admin/v1/deposits", &admin, deposit).await;
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                    if let Some(order) = &order {
                        let (status, body) = call(&mut conn, "POST", "/v1/orders", &[("x-api-key", &key)], order.clone()).await;
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                        assert!(status == 200 && v["status"] == "FILLED", "{name}: {status} {v}");
                    }
                    keys.push(key);
                }
                keys
            })
        })
        .collect();
    let mut keys = Vec::with_capacity(count);
    for t in tasks {
        keys.extend(t.await.unwrap_or_default());
    }
    keys
}

fn index(addr: &str, price: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
    tokio::task::LocalSet::new().block_on(&runtime, async {
        let mut conn = connect(addr).await;
        let body = format!(r#"{{"symbol":"BTC-PERP","price":"{price}"}}"#);
        let (status, reply) = call(&mut conn, "POST", "/admin/v1/index-prices", &[("x-admin-key", ADMIN)], body).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    });
}

fn main() {
    let a = Args::parse();
    let data = std::env::temp_dir().join(format!("liquidations-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (_exchange, addr) = start_exchange(&a.exchange, &[], 2, &data);
    index(&addr, "50000");

    let setup = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
    let local = tokio::task::LocalSet::new();
    let positions = a.positions;
    local.block_on(&runtime, async {
        let whale_qty = format!("{}", positions as f64 / 1000.0);
        let short = format!(r#"{{"symbol":"BTC-PERP","side":"SELL","type":"LIMIT","price":"50000","quantity":"{whale_qty}","leverage":1}}"#);
        let whale = users(&addr, "whale", 1, "1000000000", None, 1).await;
        let mut conn = connect(&addr).await;
        let (status, body) = call(&mut conn, "POST", "/v1/orders", &[("x-api-key", &whale[0])], short).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let long = r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"50000","quantity":"0.001","leverage":50,"timeInForce":"IOC"}"#;
        let longs = Rc::new(users(&addr, "long", positions, "1.1", Some(long), 32).await);
        assert_eq!(longs.len(), positions);
    });
    println!("setup: {positions} longs of 0.001 BTC at 50x in {:.1} s", setup.elapsed().as_secs_f64());

    let load = |seed: u64| LoadArgs {
        addr: addr.clone(),
        admin_key: ADMIN.to_owned(),
        connections: 16,
        users: 100,
        rate: a.rate,
        duration: a.seconds,
        symbols: "BTC-PERP=50000:0.1:0.001".to_owned(),
        seed,
        mix: Mix::OneLot,
    };
    let quiet = load::run(&load(1));
    println!("quiet: {:.0} orders/s, ack p50 {:.2} ms, p99 {:.2} ms, errors {}", quiet.per_second(), quiet.ms(0.5), quiet.ms(0.99), quiet.errors);

    let (window_tx, window_rx) = std::sync::mpsc::channel();
    let during = {
        let args = load(2);
        std::thread::spawn(move || load::run_with(&args, move |from, _| window_tx.send(from).unwrap_or(())))
    };
    let measure_from = window_rx.recv().unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep((measure_from + Duration::from_secs(1)).saturating_duration_since(Instant::now()));
    let before = metric(&http_get(&addr, "/metrics").unwrap_or_default(), "exchange_liquidations_total");
    index(&addr, "48500");
    let dropped = Instant::now();
    let closed_in = loop {
        let text = http_get(&addr, "/metrics").unwrap_or_default();
        let ended = metric(&text, "exchange_liquidations_total") - before;
        if ended >= positions as f64 && metric(&text, "exchange_liquidations_due") == 0.0 {
            break dropped.elapsed();
        }
        assert!(dropped.elapsed() < Duration::from_secs(120), "only {ended} of {positions} liquidated after 120 s");
        std::thread::sleep(Duration::from_millis(2));
    };
    let during = during.join().unwrap_or_else(|_| panic!("the load thread failed"));
    println!("during: {:.0} orders/s, ack p50 {:.2} ms, p99 {:.2} ms, errors {}", during.per_second(), during.ms(0.5), during.ms(0.99), during.errors);
    for (status, (n, body)) in &during.failures {
        println!("  {n} x {status}: {body}");
    }
    // The summary needs the admin key: asked with a header of its own.
    let balanced = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap_or_else(|e| panic!("{e}"));
        let _ = write!(s, "GET /admin/v1/summary HTTP/1.1\r\nhost: x\r\nx-admin-key: {ADMIN}\r\nconnection: close\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.contains(r#""balanced":true"#)
    };
    assert!(balanced, "the books do not balance after the liquidations");
    println!(
        "liquidations: {positions} closed in {:.0} ms; ack p99 quiet {:.2} ms, during {:.2} ms ({:.2}x)",
        closed_in.as_secs_f64() * 1000.0,
        quiet.ms(0.99),
        during.ms(0.99),
        during.ms(0.99) / quiet.ms(0.99)
    );
    let _ = std::fs::remove_dir_all(&data);
}
