//! Load generator: many keep-alive HTTP/1.1 connections sending orders (see
//! [`perf::load`]).
//!
//! `cargo run --release -p perf --bin load -- --help`
//!
//! The server must run with `EXCHANGE_ADMIN_KEY` set and `EXCHANGE_RATE_LIMIT=0`.

use clap::Parser;
use perf::load::{self, LoadArgs, Mix};

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
    /// What to send.
    #[arg(long, value_enum, default_value_t = Mix::Realistic)]
    mix: Mix,
}

fn main() {
    let a = Args::parse();
    let args = LoadArgs {
        addr: a.addr,
        admin_key: a.admin_key,
        connections: a.connections,
        users: a.users,
        rate: a.rate,
        duration: a.duration,
        symbols: a.symbols,
        seed: a.seed,
        mix: a.mix,
    };
    let started = std::time::Instant::now();
    let r = load::run(&args);
    println!(
        "mode: {}, {} connections, {} users, {}s measured ({:.1}s with setup)",
        if args.rate > 0 { format!("open loop at {}/s", args.rate) } else { "closed loop".into() },
        args.connections,
        args.users,
        args.duration,
        started.elapsed().as_secs_f64()
    );
    println!("requests ok: {}, errors: {}", r.ok, r.errors);
    for (status, (n, body)) in &r.failures {
        println!("  {n} x {status}: {body}");
    }
    println!(
        "load: {:.0} req/s, p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
        r.per_second(),
        r.ms(0.5) * 1000.0,
        r.ms(0.99) * 1000.0,
        r.ms(0.999) * 1000.0,
        r.latency.max() as f64 / 1000.0
    );
}
