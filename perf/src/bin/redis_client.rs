//! How should a glommio shard talk to Redis? redis-rs has no glommio runtime, so the
//! candidates put the client on a helper thread and hand requests across:
//!
//! - `tokio`: a current-thread tokio runtime on the helper thread with one multiplexed
//!   connection; each request is its own tokio task, and the connection pipelines
//!   whatever is in flight.
//! - `batch`: a plain synchronous connection on the helper thread that takes every
//!   request queued since its last round trip and sends them as one pipeline.
//!
//! Both are driven from a glommio executor by `--concurrency` tasks, each running the
//! exchange's reserve script (one round trip per order) in a closed loop.
//!
//! `cargo run --release -p perf --bin redis_client -- [--seconds 5] [--concurrency 1,16,64]`

use std::time::{Duration, Instant};

use exchange::engine::{OrderId, UserId};
use exchange::redis_state::{Keys, RESERVE};
use futures_channel::{mpsc, oneshot};
use futures_lite::StreamExt;
use hdrhistogram::Histogram;

const URL: &str = "redis://127.0.0.1:6379";

/// One reserve call: the keys and args of the script.
struct Call {
    user: UserId,
    order: u64,
    done: oneshot::Sender<i64>,
}

fn script_for(call: &Call) -> redis::ScriptInvocation<'static> {
    // A leaked script is fine in a benchmark binary: one per process.
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    let script = SCRIPT.get_or_init(|| redis::Script::new(RESERVE));
    let mut inv = script.prepare_invoke();
    let keys = Keys::new("");
    inv.key(keys.balance(call.user)).key(keys.rate(call.user, 0)).key(keys.lock(call.user, OrderId(call.order))).arg(0).arg("1").arg("-1");
    inv
}

fn tokio_client(rx: mpsc::UnboundedReceiver<Call>) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let client = redis::Client::open(URL).expect("client");
            let conn = client.get_multiplexed_async_connection().await.expect("connect");
            let mut rx = rx;
            while let Some(call) = rx.next().await {
                let mut conn = conn.clone();
                tokio::spawn(async move {
                    let r: i64 = script_for(&call).invoke_async(&mut conn).await.unwrap_or(-1);
                    let _ = call.done.send(r);
                });
            }
        });
    });
}

fn batch_client(mut rx: mpsc::UnboundedReceiver<Call>) {
    std::thread::spawn(move || {
        let mut conn = redis::Client::open(URL).and_then(|c| c.get_connection()).expect("connect");
        let script = redis::Script::new(RESERVE);
        // Load once so the pipeline can use EVALSHA.
        let _: String = redis::cmd("SCRIPT").arg("LOAD").arg(RESERVE).query(&mut conn).expect("load");
        while let Some(first) = futures_lite::future::block_on(rx.next()) {
            let mut calls = vec![first];
            while let Ok(call) = rx.try_recv() {
                calls.push(call);
            }
            let keys = Keys::new("");
            let mut pipe = redis::pipe();
            for call in &calls {
                pipe.cmd("EVALSHA")
                    .arg(script.get_hash())
                    .arg(3)
                    .arg(keys.balance(call.user))
                    .arg(keys.rate(call.user, 0))
                    .arg(keys.lock(call.user, OrderId(call.order)))
                    .arg(0)
                    .arg("1")
                    .arg("-1");
            }
            let results: Vec<i64> = pipe.query(&mut conn).unwrap_or_default();
            for (call, r) in calls.into_iter().zip(results.into_iter().chain(std::iter::repeat(-1))) {
                let _ = call.done.send(r);
            }
        }
    });
}

fn run(name: &str, concurrency: usize, seconds: u64) -> (f64, Histogram<u64>) {
    let (tx, rx) = mpsc::unbounded::<Call>();
    match name {
        "tokio" => tokio_client(rx),
        _ => batch_client(rx),
    }
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 << 10)
        .spawn(move || async move {
            let end = Instant::now() + Duration::from_secs(seconds);
            let mut tasks = Vec::new();
            for t in 0..concurrency {
                let tx = tx.clone();
                tasks.push(glommio::spawn_local(async move {
                    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
                    let user = UserId(0x0b00_0000 + t as u64);
                    let mut n = 0u64;
                    while Instant::now() < end {
                        n += 1;
                        let (done, wait) = oneshot::channel();
                        let start = Instant::now();
                        if tx.unbounded_send(Call { user, order: n, done }).is_err() {
                            break;
                        }
                        let _ = wait.await;
                        let _ = hist.record(start.elapsed().as_nanos() as u64);
                    }
                    hist
                }));
            }
            let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
            for t in tasks {
                let _ = all.add(t.await);
            }
            all
        })
        .expect("executor");
    let hist = handle.join().expect("join");
    (hist.len() as f64 / seconds as f64, hist)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let seconds: u64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(5);
    let levels: Vec<usize> =
        arg("--concurrency").unwrap_or_else(|| "1,16,64".into()).split(',').filter_map(|c| c.parse().ok()).collect();
    // Fund the benchmark users once; reserve locks 1 unit per call.
    let mut conn = redis::Client::open(URL).and_then(|c| c.get_connection()).expect("Redis at 127.0.0.1:6379");
    for t in 0..levels.iter().copied().max().unwrap_or(1) {
        let user = UserId(0x0b00_0000 + t as u64);
        let _: () = redis::cmd("HSET").arg(Keys::new("").balance(user)).arg("available").arg(i64::MAX / 2).query(&mut conn).expect("fund");
    }
    println!("{:<6} {:>11} {:>12} {:>9} {:>9} {:>9}", "client", "concurrency", "calls/s", "p50 us", "p99 us", "p99.9 us");
    for &c in &levels {
        for name in ["tokio", "batch"] {
            let (rate, h) = run(name, c, seconds);
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            println!("{name:<6} {c:>11} {rate:>12.0} {:>9.1} {:>9.1} {:>9.1}", us(0.5), us(0.99), us(0.999));
        }
    }
    // Leave no benchmark keys behind.
    let keys: Vec<String> = redis::cmd("KEYS").arg("*{u:000000000b00*").query(&mut conn).unwrap_or_default();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query(&mut conn).unwrap_or(());
    }
}
