//! What the Binance dialect costs the exchange: CPU time per order through `/fapi`
//! (a signed form, checked and rendered in Binance's shapes) against the native API,
//! the same one-lot orders, each run on a fresh embedded exchange.
//!
//! `cargo build --release && cargo run --release -p perf --bin dialect -- --help`
//!
//! Each round measures native then Binance (open loop at `--rate`), and reads the
//! exchange's utime + stime from `/proc` over the measured window only (users are made
//! and funded before it). Prints µs of exchange CPU per order and the ratio per round
//! and their median. Target (issue): at most 1.10.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Parser;
use perf::load::{self, LoadArgs, Mix};
use perf::stack::{cpu_seconds, start_exchange};

#[derive(Parser)]
#[command(about = "Exchange CPU per order: Binance dialect vs native API")]
struct Args {
    /// The exchange binary (release).
    #[arg(long, default_value = "target/release/exchange")]
    exchange: PathBuf,
    /// Rounds of (native, Binance).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 400)]
    users: usize,
    /// Shards (cores) the exchange runs.
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Orders per second (open loop), the same for both: closed loop, the dialect whose
    /// client signs (on the same cores) gets fewer orders per wake-up of the exchange, and
    /// per-order CPU then measures batching as much as the dialect. 0: closed loop.
    #[arg(long, default_value_t = 8000)]
    rate: u64,
}

/// (orders answered 200, exchange CPU µs per order, p50 ms, p99 ms).
fn run(a: &Args, mix: Mix, round: usize) -> (u64, f64, f64, f64) {
    let data = std::env::temp_dir().join(format!("dialect-{}-{round}-{mix:?}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (exchange, addr) = start_exchange(&a.exchange, &[], a.shards, &data);
    let pid = exchange.0.id();
    let args = LoadArgs {
        addr,
        admin_key: "bench-admin".to_owned(),
        connections: a.connections,
        users: a.users,
        rate: a.rate,
        duration: a.seconds,
        symbols: "BTC-PERP=50000:0.1:0.001".to_owned(),
        seed: round as u64 + 1,
        mix,
    };
    let cpu = Arc::new(Mutex::new(None));
    let sampler = cpu.clone();
    let report = load::run_with(&args, move |from, to| {
        let handle = std::thread::spawn(move || {
            std::thread::sleep(from.saturating_duration_since(std::time::Instant::now()));
            let c0 = cpu_seconds(pid);
            std::thread::sleep(to.saturating_duration_since(std::time::Instant::now()));
            cpu_seconds(pid) - c0
        });
        if let Ok(mut s) = sampler.lock() {
            *s = Some(handle);
        }
    });
    let used = cpu.lock().ok().and_then(|mut s| s.take()).and_then(|h| h.join().ok()).unwrap_or(0.0);
    drop(exchange);
    let _ = std::fs::remove_dir_all(&data);
    if report.errors > 0 {
        eprintln!("{mix:?}: {} errors: {:?}", report.errors, report.failures);
    }
    (report.ok, used * 1e6 / report.ok.max(1) as f64, report.ms(0.5), report.ms(0.99))
}

fn main() {
    let a = Args::parse();
    println!("{} rounds, {} s each, {}/s, {} connections, {} users, {} shards", a.rounds, a.seconds, a.rate, a.connections, a.users, a.shards);
    let mut ratios = Vec::new();
    for round in 0..a.rounds {
        let native = run(&a, Mix::OneLot, round);
        let binance = run(&a, Mix::OneLotBinance, round);
        let ratio = binance.1 / native.1.max(f64::MIN_POSITIVE);
        println!(
            "round {round}: native {} orders, {:.1} µs CPU/order (p50 {:.2} ms, p99 {:.2} ms); /fapi {} orders, {:.1} µs CPU/order (p50 {:.2} ms, p99 {:.2} ms); ratio {ratio:.3}",
            native.0, native.1, native.2, native.3, binance.0, binance.1, binance.2, binance.3
        );
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    println!("median ratio /fapi ÷ native: {:.3} (target ≤ 1.10)", ratios[ratios.len() / 2]);
}
