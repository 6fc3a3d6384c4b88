//! The same load against every persistence configuration, one after another in one run:
//! embedded journal, Kafka, Kafka + Redis, the full configuration (Kafka + Redis +
//! PostgreSQL cold storage) and the synchronous baseline (`EXCHANGE_PERSISTENCE=sync`,
//! one PostgreSQL transaction per order before its answer).
//!
//! `cargo build --release && cargo run --release -p perf --bin compare -- --help`
//!
//! It starts each exchange itself (the release binary, free port, fresh data directory),
//! and a fresh tansu broker for each Kafka mode (a broker that has served earlier runs
//! slows down as its in-memory log grows, which would charge one mode for another's
//! history), and a fresh `redis-server` for every Redis mode (`--redis URL` uses one that
//! runs). PostgreSQL must be running (it says so if it is not); each mode that writes to
//! it gets an empty database of its own there.
//!
//! Per mode it measures a closed loop (maximum throughput and its latency), then open
//! loops at fractions of that maximum (latency against throughput); over the closed
//! loop's measured window it also reads PostgreSQL's transactions and rows
//! (`pg_stat_database`), the CPU time of PostgreSQL's processes, and the exchange's own
//! CPU time. It prints a table, writes SVG plots, and ends with the line
//! `async_vs_sync: <T>x throughput, <L>x p50 latency, <D>x less db load`
//! (full configuration against sync; D is PostgreSQL CPU time per order, sync ÷ full).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use perf::load::{self, LoadArgs, Mix, Report};
use perf::stack::{cpu_seconds as cpu_of, fresh_database, start_exchange, start_redis, start_tansu, Running};
use plotters::prelude::*;

#[derive(Parser)]
#[command(about = "Every persistence mode under the same load, side by side")]
struct Args {
    /// The exchange binary (build it with `cargo build --release` first).
    #[arg(long, default_value = "target/release/exchange")]
    exchange: PathBuf,
    /// The tansu binary, started afresh for every Kafka mode.
    #[arg(long, default_value = "tansu")]
    tansu: String,
    /// `start`: a fresh `redis-server` for every measurement (a Redis that kept earlier
    /// runs' keys, with their expiry, costs more); or the URL of one to use.
    #[arg(long, default_value = "start")]
    redis: String,
    /// A PostgreSQL server; the comparison makes (and empties) a database of its own there,
    /// `exchange_compare`, so that no earlier data skews what it measures.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres: String,
    /// Modes to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "embedded,kafka,redis,kafka-redis,full,sync")]
    modes: Vec<String>,
    /// Shard counts: the full comparison runs with the last; the others get a closed
    /// loop each (orders/s per shard).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    shards: Vec<usize>,
    /// Seconds measured per closed loop.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds measured per open-loop point.
    #[arg(long, default_value_t = 5)]
    open_duration: u64,
    /// Open-loop rates as fractions of the mode's closed-loop maximum.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75")]
    fractions: Vec<f64>,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 400)]
    users: usize,
    /// Where the plots go.
    #[arg(long, default_value = "perf/plots")]
    out: PathBuf,
}

/// What one closed loop measured, with the counters over its window.
struct Measured {
    report: Report,
    pg_xacts: i64,
    pg_rows: i64,
    /// CPU seconds of each process over the window.
    cpu: Cpu,
}

/// CPU seconds (user + system, all threads) per process.
#[derive(Clone, Copy, Default)]
struct Cpu {
    exchange: f64,
    broker: f64,
    redis: f64,
    postgres: f64,
    /// This process: the load generator (its clients and the sampler).
    load: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            exchange: self.exchange - o.exchange,
            broker: self.broker - o.broker,
            redis: self.redis - o.redis,
            postgres: self.postgres - o.postgres,
            load: self.load - o.load,
        }
    }
}

/// The processes of one stack whose CPU time is measured.
#[derive(Clone, Copy)]
struct Pids {
    exchange: u32,
    broker: Option<u32>,
    redis: Option<u32>,
}

impl Pids {
    fn cpu(self) -> Cpu {
        Cpu {
            exchange: cpu_of(self.exchange),
            broker: self.broker.map_or(0.0, cpu_of),
            redis: self.redis.map_or(0.0, cpu_of),
            postgres: postgres_cpu(),
            load: cpu_of(std::process::id()),
        }
    }
}

impl Measured {
    fn per_order(&self, v: f64) -> f64 {
        v / self.report.ok.max(1) as f64
    }
}

struct ModeResult {
    mode: String,
    closed: Measured,
    /// (orders/s achieved, p50 ms, p99 ms) per open-loop point, then the closed loop.
    curve: Vec<(f64, f64, f64)>,
}

fn env_of(mode: &str, redis: &str, kafka: Option<&str>, postgres: &str, tag: &str) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let mut set = |k: &str, v: &str| env.push((k.to_owned(), v.to_owned()));
    if let Some(brokers) = kafka {
        set("EXCHANGE_KAFKA_BROKERS", brokers);
    }
    if matches!(mode, "redis" | "kafka-redis" | "full") {
        set("EXCHANGE_REDIS_URL", redis);
        set("EXCHANGE_REDIS_PREFIX", &format!("compare-{tag}:"));
    }
    if matches!(mode, "full" | "sync") {
        set("EXCHANGE_POSTGRES_URL", postgres);
    }
    if mode == "sync" {
        set("EXCHANGE_PERSISTENCE", "sync");
    }
    env
}

fn needs_kafka(mode: &str) -> bool {
    matches!(mode, "kafka" | "kafka-redis" | "full")
}

fn needs_redis(mode: &str) -> bool {
    matches!(mode, "redis" | "kafka-redis" | "full")
}

/// CPU seconds of every PostgreSQL server process now running.
fn postgres_cpu() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .map(cpu_of)
        .sum()
}

/// (transactions committed, rows inserted + updated + deleted) of the database.
fn postgres_stats(url: &str) -> (i64, i64) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e} (start it)"));
        tokio::spawn(conn);
        let row = client
            .query_one(
                "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("pg_stat_database: {e}"));
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    })
}

/// A closed loop with the counters sampled over its measured window.
fn closed_loop(postgres: &str, load: &LoadArgs, pids: Pids) -> Measured {
    let url = postgres.to_owned();
    let sampler: std::sync::Arc<std::sync::Mutex<Option<std::thread::JoinHandle<(i64, i64, Cpu)>>>> = Default::default();
    let slot = sampler.clone();
    let report = load::run_with(load, move |from, to| {
        let handle = std::thread::spawn(move || {
            std::thread::sleep(from.saturating_duration_since(Instant::now()));
            // pg_stat_database is updated when a backend's transaction ends; it lags by
            // well under the window, and the same lag applies at both ends.
            let (x0, r0) = postgres_stats(&url);
            let c0 = pids.cpu();
            std::thread::sleep(to.saturating_duration_since(Instant::now()));
            let (x1, r1) = postgres_stats(&url);
            let c1 = pids.cpu();
            // The two stats connections commit a transaction each.
            (x1 - x0 - 1, r1 - r0, c1 - c0)
        });
        if let Ok(mut s) = slot.lock() {
            *s = Some(handle);
        }
    });
    let (pg_xacts, pg_rows, cpu) =
        sampler.lock().ok().and_then(|mut s| s.take()).and_then(|h| h.join().ok()).unwrap_or((0, 0, Cpu::default()));
    Measured { report, pg_xacts, pg_rows, cpu }
}

/// One exchange with what it needs, all fresh: a broker that has served earlier runs
/// slows down as its in-memory log grows, and rows already in PostgreSQL change what a
/// write costs, so every measurement gets a stack of its own.
struct Stack {
    // Field order is drop order: the exchange stops before its broker.
    exchange: Running,
    broker: Option<Running>,
    redis: Option<Running>,
    addr: String,
    postgres: String,
    data: PathBuf,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn start_stack(args: &Args, mode: &str, shards: usize, point: usize) -> Stack {
    let tag = format!("{mode}-{shards}-{point}-{}", std::process::id());
    let broker = needs_kafka(mode).then(|| start_tansu(&args.tansu));
    let postgres = if matches!(mode, "full" | "sync") { fresh_database(&args.postgres, "exchange_compare") } else { args.postgres.clone() };
    let redis = (needs_redis(mode) && args.redis == "start").then(start_redis);
    let redis_url = redis.as_ref().map_or(args.redis.clone(), |(_, u)| u.clone());
    let mut env = env_of(mode, &redis_url, broker.as_ref().map(|(_, a)| a.as_str()), &postgres, &tag);
    if broker.is_some() {
        env.push(("EXCHANGE_KAFKA_TOPIC_PREFIX".into(), format!("{tag}-")));
    }
    let data = std::env::temp_dir().join(format!("exchange-compare-{tag}"));
    let _ = std::fs::remove_dir_all(&data);
    let (exchange, addr) = start_exchange(&args.exchange, &env, shards, &data);
    Stack { exchange, broker: broker.map(|(b, _)| b), redis: redis.map(|(r, _)| r), addr, postgres, data }
}

impl Stack {
    fn pids(&self) -> Pids {
        Pids { exchange: self.exchange.0.id(), broker: self.broker.as_ref().map(|b| b.0.id()), redis: self.redis.as_ref().map(|r| r.0.id()) }
    }
}

fn run_mode(args: &Args, mode: &str, shards: usize, curve: bool) -> ModeResult {
    let stack = start_stack(args, mode, shards, 0);
    let mut load = LoadArgs {
        addr: stack.addr.clone(),
        admin_key: "bench-admin".into(),
        connections: args.connections,
        users: args.users,
        rate: 0,
        duration: args.duration,
        symbols: "BTC-PERP=50000:0.1:0.001".into(),
        seed: 1,
        mix: Mix::OneLot,
    };
    let closed = closed_loop(&stack.postgres, &load, stack.pids());
    drop(stack);
    eprintln!(
        "{mode} ({shards} shards): {:.0} orders/s, p50 {:.2} ms, p99 {:.2} ms, errors {} {:?}",
        closed.report.per_second(),
        closed.report.ms(0.5),
        closed.report.ms(0.99),
        closed.report.errors,
        closed.report.failures.iter().map(|(s, (n, _))| (s, n)).collect::<Vec<_>>()
    );
    let mut points = Vec::new();
    if curve {
        let max = closed.report.per_second();
        for (i, f) in args.fractions.iter().enumerate() {
            let stack = start_stack(args, mode, shards, i + 1);
            load.addr = stack.addr.clone();
            load.rate = (max * f).max(1.0) as u64;
            load.duration = args.open_duration;
            load.seed = 2 + i as u64;
            let r = load::run(&load);
            eprintln!("  open loop at {}/s: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms", load.rate, r.per_second(), r.ms(0.5), r.ms(0.99));
            points.push((r.per_second(), r.ms(0.5), r.ms(0.99)));
        }
    }
    points.push((closed.report.per_second(), closed.report.ms(0.5), closed.report.ms(0.99)));
    ModeResult { mode: mode.to_owned(), closed, curve: points }
}

fn preflight(args: &Args) {
    let tcp = |url: &str| {
        let hostport = url.split("://").nth(1).unwrap_or(url).rsplit('@').next().unwrap_or("").split('/').next().unwrap_or("").to_owned();
        std::net::TcpStream::connect_timeout(&hostport.parse().unwrap_or_else(|_| ([127, 0, 0, 1], 0).into()), Duration::from_secs(1)).is_ok()
    };
    if args.redis != "start" && args.modes.iter().any(|m| needs_redis(m)) && !tcp(&args.redis) {
        panic!("Redis does not answer at {}: start it (scripts/redis.sh)", args.redis);
    }
    if args.modes.iter().any(|m| matches!(m.as_str(), "full" | "sync")) && !tcp(&args.postgres) {
        panic!("PostgreSQL does not answer at {}: start it (scripts/postgres.sh)", args.postgres);
    }
    if args.modes.iter().any(|m| needs_kafka(m)) && Command::new(&args.tansu).arg("--version").stdout(Stdio::null()).status().is_err() {
        panic!("{} not found: install it with `cargo install tansu --locked --features dynostore`", args.tansu);
    }
    assert!(args.exchange.exists(), "{} missing: build it with `cargo build --release`", args.exchange.display());
}

/// Drops and creates `exchange_compare` on the server; returns its URL. Every mode that
/// writes to PostgreSQL starts from it empty: ids start again with every fresh exchange,
/// and rows already there would be skipped (cold storage) or refused (the baseline).
fn main() {
    let args = Args::parse();
    preflight(&args);
    let most = args.shards.iter().copied().max().unwrap_or(2);
    let results: Vec<ModeResult> = args.modes.iter().map(|m| run_mode(&args, m, most, true)).collect();
    let mut per_core: Vec<(String, usize, f64)> =
        results.iter().map(|r| (r.mode.clone(), most, r.closed.report.per_second())).collect();
    for &shards in args.shards.iter().filter(|s| **s != most) {
        for m in &args.modes {
            let r = run_mode(&args, m, shards, false);
            per_core.push((m.clone(), shards, r.closed.report.per_second()));
        }
    }
    let embedded = results.iter().find(|r| r.mode == "embedded").map(|r| r.closed.report.per_second());

    println!(
        "\nclosed loop, {} connections, {} users, one-lot limit orders around one price on BTC-PERP, {} shards, {} s measured",
        args.connections, args.users, most, args.duration
    );
    println!("| mode | orders/s | ÷ embedded | p50 ms | p99 ms | p99.9 ms | errors | PG xacts/order | PG rows/order |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        let c = &r.closed;
        println!(
            "| {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.2} |",
            r.mode,
            c.report.per_second(),
            embedded.map_or("-".into(), |e| format!("{:.2}", c.report.per_second() / e)),
            c.report.ms(0.5),
            c.report.ms(0.99),
            c.report.ms(0.999),
            c.report.errors,
            c.per_order(c.pg_xacts as f64),
            c.per_order(c.pg_rows as f64),
        );
    }
    println!("\nCPU µs per order of each process over the same closed loops (user + system, all threads; `-`: not in the mode):");
    println!("| mode | exchange | broker (tansu) | Redis | PostgreSQL | load generator | all |");
    println!("|---|---|---|---|---|---|---|");
    for r in &results {
        let (c, cpu) = (&r.closed, r.closed.cpu);
        let us = |v: f64, present: bool| if present { format!("{:.1}", c.per_order(v) * 1e6) } else { "-".into() };
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.1} |",
            r.mode,
            us(cpu.exchange, true),
            us(cpu.broker, needs_kafka(&r.mode)),
            us(cpu.redis, needs_redis(&r.mode)),
            us(cpu.postgres, matches!(r.mode.as_str(), "full" | "sync")),
            us(cpu.load, true),
            c.per_order(cpu.exchange + cpu.broker + cpu.redis + cpu.postgres + cpu.load) * 1e6,
        );
    }
    println!("\nopen loop (orders/s achieved, p50 ms, p99 ms) at {:?} of each maximum, then the closed loop:", args.fractions);
    for r in &results {
        let pts: Vec<String> = r.curve.iter().map(|(t, p50, p99)| format!("({t:.0}, {p50:.2}, {p99:.2})")).collect();
        println!("- {}: {}", r.mode, pts.join(" "));
    }
    println!("\nper shard count (closed loop, orders/s; per shard):");
    for (mode, shards, rate) in &per_core {
        println!("- {mode}, {shards} shard(s): {rate:.0} ({:.0} per shard)", rate / *shards as f64);
    }
    if let Err(e) = plots(&args.out, &results, &per_core) {
        eprintln!("plots not written: {e}");
    } else {
        println!("\nplots: {0}/latency.svg, {0}/throughput_latency.svg, {0}/shards.svg", args.out.display());
    }
    let (Some(full), Some(sync)) = (results.iter().find(|r| r.mode == "full"), results.iter().find(|r| r.mode == "sync")) else {
        println!("async_vs_sync: needs both the full and the sync mode");
        return;
    };
    let (f, s) = (&full.closed, &sync.closed);
    let throughput = f.report.per_second() / s.report.per_second();
    let latency = s.report.ms(0.5) / f.report.ms(0.5);
    let db = s.per_order(s.cpu.postgres) / f.per_order(f.cpu.postgres).max(1e-9);
    println!("async_vs_sync: {throughput:.1}x throughput, {latency:.1}x p50 latency, {db:.1}x less db load");
}

const COLOURS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

fn plots(out: &Path, results: &[ModeResult], per_core: &[(String, usize, f64)]) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(out)?;
    // Latency percentiles of each closed loop.
    {
        let quantiles = [0.5, 0.9, 0.99, 0.999];
        let top = results.iter().map(|r| r.closed.report.ms(0.999)).fold(1.0, f64::max) * 2.0;
        let path = out.join("latency.svg");
        let root = SVGBackend::new(&path, (800, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Order acknowledgement latency, closed loop", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0usize..3usize, (0.1f64..top).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(4)
            .x_label_formatter(&|i| ["p50", "p90", "p99", "p99.9"].get(*i).copied().unwrap_or("").to_owned())
            .y_desc("ms")
            .draw()?;
        for (i, r) in results.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let pts: Vec<(usize, f64)> = quantiles.iter().enumerate().map(|(j, q)| (j, r.closed.report.ms(*q).max(0.1))).collect();
            chart.draw_series(LineSeries::new(pts.clone(), colour))?.label(r.mode.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, colour.filled())))?;
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        root.present()?;
    }
    // p99 against throughput.
    {
        let max_x = results.iter().flat_map(|r| r.curve.iter().map(|p| p.0)).fold(1.0, f64::max) * 1.1;
        let top = results.iter().flat_map(|r| r.curve.iter().map(|p| p.2)).fold(1.0, f64::max) * 2.0;
        let path = out.join("throughput_latency.svg");
        let root = SVGBackend::new(&path, (800, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("p99 latency against throughput (open loops, then the closed loop)", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..max_x, (0.1f64..top).log_scale())?;
        chart.configure_mesh().x_desc("orders/s").y_desc("p99 ms").draw()?;
        for (i, r) in results.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let pts: Vec<(f64, f64)> = r.curve.iter().map(|p| (p.0, p.2.max(0.1))).collect();
            chart.draw_series(LineSeries::new(pts.clone(), colour))?.label(r.mode.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, colour.filled())))?;
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        root.present()?;
    }
    // Orders/s by shard count.
    {
        let shards: Vec<usize> = {
            let mut s: Vec<usize> = per_core.iter().map(|p| p.1).collect();
            s.sort_unstable();
            s.dedup();
            s
        };
        let (lo, hi) = (shards.first().copied().unwrap_or(1), shards.last().copied().unwrap_or(2));
        let top = per_core.iter().map(|p| p.2).fold(1.0, f64::max) * 1.2;
        let path = out.join("shards.svg");
        let root = SVGBackend::new(&path, (800, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Closed-loop orders/s by shards (cores)", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..hi + 1, 0f64..top)?;
        chart.configure_mesh().x_desc("shards").y_desc("orders/s").draw()?;
        for (i, r) in results.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let mut pts: Vec<(usize, f64)> = per_core.iter().filter(|p| p.0 == r.mode).map(|p| (p.1, p.2)).collect();
            pts.sort_by_key(|p| p.0);
            chart.draw_series(LineSeries::new(pts.clone(), colour))?.label(r.mode.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, colour.filled())))?;
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        root.present()?;
    }
    Ok(())
}
