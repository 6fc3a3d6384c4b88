//! Load generator: many keep-alive HTTP/1.1 connections sending a realistic order mix.
//!
//! `cargo run --release -p perf --bin load -- --help`
//!
//! Open loop (`--rate N`): requests are scheduled at a fixed arrival rate and a request
//! that had to wait for its connection's previous answer is timed from its *scheduled*
//! time, so a stalled server is charged for every request it delayed (coordinated
//! omission corrected). Closed loop (`--rate 0`):
//! every connection sends its next request as soon as the last one is answered, which
//! measures maximum throughput.
//!
//! The server must run with `EXCHANGE_ADMIN_KEY` set and `EXCHANGE_RATE_LIMIT=0`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use perf::rng::Rng;
use tokio::net::TcpStream;

#[derive(Parser, Clone)]
#[command(about = "Order load generator for the exchange HTTP API")]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Admin key the server was started with.
    #[arg(long, default_value = "bench-admin")]
    admin_key: String,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Distinct users (accounts) sending orders.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Orders per second to schedule (open loop); 0 sends as fast as answers come back.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds to measure (after a one-second warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Symbols to trade (comma-separated), with their mid prices as SYMBOL=PRICE:TICK:LOT.
    #[arg(long, default_value = "BTC-PERP=50000:0.1:0.001,ETH-PERP=3000:0.01:0.01")]
    symbols: String,
    /// Random seed, for a workload that can be replayed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

struct Symbol {
    name: String,
    mid: f64,
    tick: f64,
    lot_decimals: usize,
    tick_decimals: usize,
}

/// Prices are generated as whole ticks and printed with the tick's decimals; floats only
/// build the request text of a benchmark, never an amount the exchange computes with.
fn symbols(spec: &str) -> Vec<Symbol> {
    spec.split(',')
        .filter_map(|s| {
            let (name, rest) = s.split_once('=')?;
            let mut parts = rest.split(':');
            let (mid, tick, lot) = (parts.next()?, parts.next()?, parts.next()?);
            let decimals = |t: &str| t.split_once('.').map_or(0, |(_, d)| d.len());
            Some(Symbol {
                name: name.to_owned(),
                mid: mid.parse().ok()?,
                tick: tick.parse().ok()?,
                lot_decimals: decimals(lot),
                tick_decimals: decimals(tick),
            })
        })
        .collect()
}

type Conn = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: &str) -> Conn {
    let stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_nodelay(true).ok();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (send, conn) = http1::handshake(io).await.unwrap_or_else(|e| panic!("handshake: {e}"));
    tokio::task::spawn_local(conn);
    send
}

async fn call(conn: &mut Conn, method: &str, path: &str, headers: &[(&str, &str)], body: String) -> (u16, Bytes) {
    let mut req = Request::builder().method(method).uri(path).header("host", "bench").header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap_or_else(|e| panic!("request: {e}"));
    match conn.send_request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            (status, body)
        }
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

/// The next order of the mix: 45 % passive GTC near the touch, 35 % IOC crossing the
/// spread, 20 % cancels of this connection's earlier resting orders.
fn next_order(rng: &mut Rng, syms: &[Symbol], resting: &mut Vec<(usize, String)>, user: usize) -> (usize, String, String, String) {
    let roll = rng.below(100);
    if roll >= 80 && !resting.is_empty() {
        let i = rng.below(resting.len() as u64) as usize;
        let (owner, id) = resting.swap_remove(i);
        return (owner, "DELETE".into(), format!("/v1/orders/{id}"), String::new());
    }
    let s = &syms[rng.below(syms.len() as u64) as usize];
    let buy = rng.chance(50);
    let offset = if roll < 45 { -(rng.range(1, 20) as f64) } else { rng.range(0, 10) as f64 };
    let signed = if buy { offset } else { -offset };
    let price = s.mid + signed * s.tick;
    let qty = rng.range(1, 10) as f64 * 10f64.powi(-(s.lot_decimals as i32));
    let tif = if roll < 45 { "GTC" } else { "IOC" };
    let body = format!(
        r#"{{"symbol":"{}","side":"{}","type":"LIMIT","price":"{:.pd$}","quantity":"{:.ld$}","leverage":10,"timeInForce":"{tif}"}}"#,
        s.name,
        if buy { "BUY" } else { "SELL" },
        price,
        qty,
        pd = s.tick_decimals,
        ld = s.lot_decimals,
    );
    (user, "POST".into(), "/v1/orders".into(), body)
}

fn order_id(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    (v["status"] == "NEW" || v["status"] == "PARTIALLY_FILLED").then(|| v["orderId"].as_str().map(str::to_owned))?
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    /// (status, first error body) per failing status.
    failures: std::collections::BTreeMap<u16, (u64, String)>,
    hist: Option<Histogram<u64>>,
}

async fn setup(args: &Args) -> Vec<String> {
    let mut conn = connect(&args.addr).await;
    let mut keys = Vec::with_capacity(args.users);
    for i in 0..args.users {
        let name = format!("load-{}-{}-{i}", args.seed, std::process::id());
        let admin = [("x-admin-key", args.admin_key.as_str())];
        let (status, body) = call(&mut conn, "POST", "/admin/v1/users", &admin, format!(r#"{{"userId":"{name}"}}"#)).await;
        if status != 200 {
            panic!("creating {name}: {status} {}", String::from_utf8_lossy(&body));
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        keys.push(v["apiKey"].as_str().unwrap_or_default().to_owned());
        let deposit = format!(r#"{{"userId":"{name}","currency":"USDT","amount":"1000000000","transferId":"load-{name}"}}"#);
        call(&mut conn, "POST", "/admin/v1/deposits", &admin, deposit).await;
    }
    keys
}

async fn worker(args: Args, index: usize, keys: Rc<Vec<String>>, start: Instant, end: Instant, measure_from: Instant) -> Tally {
    let syms = symbols(&args.symbols);
    let mut rng = Rng::new(args.seed * 1_000_003 + index as u64);
    let mut conn = connect(&args.addr).await;
    let mut resting = Vec::new();
    let mut tally = Tally { hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).ok(), ..Tally::default() };
    // Open loop: this connection's share of the schedule is every `connections`-th slot.
    let interval = (args.rate > 0).then(|| Duration::from_nanos(1_000_000_000 * args.connections as u64 / args.rate));
    let mut slot = start + interval.map_or(Duration::ZERO, |i| i.mul_f64(index as f64 / args.connections as f64));
    let mut free_at = start;
    loop {
        let scheduled = match interval {
            Some(i) => {
                let s = slot;
                slot += i;
                if s > Instant::now() {
                    tokio::time::sleep_until(s.into()).await;
                }
                // The latency clock starts at the scheduled time when this connection was
                // still busy with an earlier request then (the server held us up: that
                // wait is charged to it), and at the actual send otherwise (tokio's timer
                // wakes up to a millisecond late: that delay is ours, not the server's).
                if free_at > s { s } else { Instant::now() }
            }
            None => Instant::now(),
        };
        if scheduled >= end {
            break;
        }
        let user = rng.below(keys.len() as u64) as usize;
        let (user, method, path, body) = next_order(&mut rng, &syms, &mut resting, user);
        let (status, reply) = call(&mut conn, &method, &path, &[("x-api-key", &keys[user])], body).await;
        let done = Instant::now();
        free_at = done;
        if scheduled >= measure_from {
            if status == 200 || (method == "DELETE" && status == 409) {
                tally.ok += 1;
            } else {
                tally.errors += 1;
                let entry = tally.failures.entry(status).or_insert_with(|| (0, String::from_utf8_lossy(&reply).into_owned()));
                entry.0 += 1;
            }
            if let Some(h) = tally.hist.as_mut() {
                let _ = h.record(done.duration_since(scheduled).as_nanos() as u64);
            }
        }
        if method == "POST"
            && let Some(id) = order_id(&reply)
        {
            resting.push((user, id));
            if resting.len() > 64 {
                resting.swap_remove(0);
            }
        }
    }
    tally
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let t = Instant::now();
        let keys = Rc::new(setup(&args).await);
        println!("setup: {} users funded in {:.1}s", keys.len(), t.elapsed().as_secs_f64());
        let start = Instant::now() + Duration::from_millis(200);
        let measure_from = start + Duration::from_secs(1);
        let end = measure_from + Duration::from_secs(args.duration);
        let tasks: Vec<_> = (0..args.connections)
            .map(|i| tokio::task::spawn_local(worker(args.clone(), i, keys.clone(), start, end, measure_from)))
            .collect();
        let mut total = Tally { hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).ok(), ..Tally::default() };
        for t in tasks {
            if let Ok(tally) = t.await {
                total.ok += tally.ok;
                total.errors += tally.errors;
                for (status, (n, body)) in tally.failures {
                    let entry = total.failures.entry(status).or_insert((0, body));
                    entry.0 += n;
                }
                if let (Some(a), Some(b)) = (total.hist.as_mut(), tally.hist.as_ref()) {
                    let _ = a.add(b);
                }
            }
        }
        let secs = args.duration as f64;
        let h = total.hist.unwrap_or_else(|| Histogram::new(3).unwrap_or_else(|e| panic!("{e}")));
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "mode: {}, {} connections, {} users, {}s measured",
            if args.rate > 0 { format!("open loop at {}/s", args.rate) } else { "closed loop".into() },
            args.connections,
            args.users,
            args.duration
        );
        println!("requests ok: {}, errors: {}", total.ok, total.errors);
        for (status, (n, body)) in &total.failures {
            println!("  {n} x {status}: {body}");
        }
        println!(
            "load: {:.0} req/s, p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
            total.ok as f64 / secs,
            us(0.5),
            us(0.99),
            us(0.999),
            h.max() as f64 / 1000.0
        );
    });
}

