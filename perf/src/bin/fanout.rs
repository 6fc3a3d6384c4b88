//! Stream fan-out: order acknowledgement with and without many WebSocket clients on
//! `trades:BTC-PERP`, and how fast each trade reaches every one of them.
//!
//! `cargo run --release -p perf --bin fanout -- [--clients 10000] [--rate 10000] [--seconds 5] [--depth]`
//!
//! One exchange (`target/release/exchange`, embedded journal, 2 shards). Run 1 (baseline):
//! open-loop one-lot orders at `--rate` (about half trade) with no stream client. Run 2:
//! the same load with `--clients` connections subscribed to `trades:BTC-PERP` (a glommio
//! executor on its own thread reads them all), plus a marker trade every 100 ms placed by
//! this process (a distinctive quantity): each client notes when each marker arrives,
//! and the delay is arrival − the marker's acknowledgement. With `--depth` every client also
//! follows `depth:BTC-PERP`. Reported: the exchange's resident memory per idle connection
//! (after the clients subscribed, before the load), ack p50/p99 of both
//! runs and their ratio, the marker delays (p50/p99/max over every client), how many
//! clients got every trade and how many were cut off, and the exchange's CPU time beyond
//! the baseline run's per message delivered (the fan-out's cost per message per client).
//!
//! `FANOUT_IDLE_CLIENTS=1`: the clients follow only the markers' `trades:ETH-PERP` (ten
//! messages a second each); `FANOUT_IDLE_CLIENTS=quiet`: they follow nothing, so what
//! is measured is the cost of the connections alone.
//!
//! The server's own part of delivery is read from the exchange's
//! `exchange_stream_delay_seconds` (per write: from its oldest message's result reaching
//! the core's stream side to the write's completion, interpolated in its buckets): with the clients on
//! the same cores, the marker delay also holds the time their thread waits for a core.
//!
//! The last line is `fanout: <C> clients, ack p99 <B> ms -> <W> ms (<R>x), delivery p99 <D> ms
//! (server's part <S> ms), <G>/<C> got every trade, <N> ns CPU per message`.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use clap::Parser;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use perf::load::{self, LoadArgs, Mix};
use perf::stack::start_exchange;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Orders per second (about half of them trade).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, default_value = "target/release/exchange")]
    exchange: PathBuf,
    /// The clients' thread's nice value. They stand in for machines elsewhere, yet their
    /// CPU comes out of the same two cores: at 19 they take what the exchange leaves (as
    /// remote readers would), at 0 they compete with it as equals.
    #[arg(long, default_value_t = 19)]
    client_nice: i32,
    /// Clients also follow `depth:BTC-PERP` (every client: trades and depth of one symbol).
    #[arg(long)]
    depth: bool,
    /// Marker delivery is also reported per window of this many seconds (by the marker's
    /// acknowledgement), so that a long run shows whether delivery drifts.
    #[arg(long, default_value_t = 60)]
    window_secs: u64,
    /// Length of the baseline run (no clients); `--seconds` when not given.
    #[arg(long)]
    baseline_seconds: Option<u64>,
}

/// A plain HTTP/1.1 request on a new connection; status and body.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn funded(addr: &str, name: &str) -> String {
    let admin = [("x-admin-key", "bench-admin")];
    let (_, body) = http(addr, "POST", "/admin/v1/users", &admin, &format!(r#"{{"userId":"{name}"}}"#));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let key = v["apiKey"].as_str().unwrap_or_else(|| panic!("creating {name}: {body}")).to_owned();
    let deposit = format!(r#"{{"userId":"{name}","currency":"USDT","amount":"100000000","transferId":"f-{name}"}}"#);
    http(addr, "POST", "/admin/v1/deposits", &admin, &deposit);
    key
}

/// The server's part of delivery from `/metrics`: `exchange_stream_delay_seconds` over
/// every shard, as (each quantile in `qs`, in ms, interpolated within its bucket as
/// Prometheus does; writes counted).
fn server_delay(metrics: &str, qs: &[f64]) -> (Vec<f64>, u64) {
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for line in metrics.lines().filter(|l| l.starts_with("exchange_stream_delay_seconds_bucket{")) {
        let le = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or_default();
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
        let count: u64 = line.rsplit(' ').next().and_then(|c| c.parse().ok()).unwrap_or(0);
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => buckets.push((le, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0, |b| b.1);
    // As Prometheus' histogram_quantile: linear within the bucket that holds the rank.
    let at = |q: f64| {
        let rank = q * total as f64;
        let k = buckets.iter().position(|(_, c)| *c as f64 >= rank)?;
        let (lo, below) = if k == 0 { (0.0, 0) } else { buckets[k - 1] };
        let (hi, count) = buckets[k];
        if hi.is_infinite() {
            return Some(lo * 1e3);
        }
        Some((lo + (hi - lo) * (rank - below as f64) / (count - below).max(1) as f64) * 1e3)
    };
    let at = |q: f64| at(q).unwrap_or(f64::NAN);
    (qs.iter().map(|q| at(*q)).collect(), total)
}

/// The process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0) + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// What `FANOUT_IDLE_CLIENTS` asks of the clients: nothing (unset), to follow only the
/// markers' symbol (any value), or to follow nothing at all (`quiet`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Idle {
    No,
    Markers,
    Quiet,
}

fn idle() -> Idle {
    match std::env::var("FANOUT_IDLE_CLIENTS") {
        Err(_) => Idle::No,
        Ok(v) if v == "quiet" => Idle::Quiet,
        Ok(_) => Idle::Markers,
    }
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// Per client, when each marker trade arrived.
    markers: Vec<Vec<Instant>>,
    /// Per client, the highest trades `seq` received, and whether it was cut off.
    last_seq: Vec<u64>,
    cut: Vec<bool>,
    /// Per client, depth messages received.
    depth: Vec<u64>,
}

fn clients(addr: String, n: usize, nice: i32, depth: bool, ready: Arc<AtomicU64>, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            // SAFETY: plain syscalls on this thread's own id.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, nice);
            }
            let local = Rc::new(RefCell::new(Seen { markers: vec![Vec::new(); n], last_seq: vec![0; n], cut: vec![false; n], depth: vec![0; n] }));
            let mut tasks = Vec::new();
            for i in 0..n {
                let (addr, ready, stop, local) = (addr.clone(), ready.clone(), stop.clone(), local.clone());
                tasks.push(glommio::spawn_local(async move {
                    let Ok(tcp) = glommio::net::TcpStream::connect(addr.as_str()).await else {
                        local.borrow_mut().cut[i] = true;
                        ready.fetch_add(1, Ordering::AcqRel);
                        return;
                    };
                    let Ok((mut ws, _)) = async_tungstenite::client_async(format!("ws://{addr}/v1/stream"), tcp).await else {
                        local.borrow_mut().cut[i] = true;
                        ready.fetch_add(1, Ordering::AcqRel);
                        return;
                    };
                    // FANOUT_IDLE_CLIENTS: connected but following only the markers' symbol, to
                    // tell the cost of connections from the cost of messages; `quiet`:
                    // connected and following nothing (pinged, never sent a message).
                    let channels = match idle() {
                        Idle::Quiet => None,
                        Idle::Markers => Some(r#"["trades:ETH-PERP"]"#),
                        Idle::No if depth => Some(r#"["trades:BTC-PERP","depth:BTC-PERP","trades:ETH-PERP"]"#),
                        Idle::No => Some(r#"["trades:BTC-PERP","trades:ETH-PERP"]"#),
                    };
                    if let Some(channels) = channels {
                        let _ = ws.send(Message::text(format!(r#"{{"op":"subscribe","channels":{channels}}}"#))).await;
                        let _ = ws.next().await;
                    }
                    ready.fetch_add(1, Ordering::AcqRel);
                    loop {
                        let next = futures_lite::future::or(async { Some(ws.next().await) }, async {
                            glommio::timer::sleep(Duration::from_millis(200)).await;
                            None
                        })
                        .await;
                        match next {
                            None if stop.load(Ordering::Acquire) => break,
                            None => {}
                            Some(Some(Ok(Message::Text(t)))) => {
                                let now = Instant::now();
                                let text = t.as_str();
                                // Cheap field picks: the seq, and the marker's quantity.
                                let seq = text.split("\"seq\":").nth(1).and_then(|r| r.split(',').next()).and_then(|s| s.parse().ok()).unwrap_or(0);
                                let mut l = local.borrow_mut();
                                if text.starts_with(r#"{"channel":"trades:ETH-PERP""#) {
                                    l.markers[i].push(now);
                                } else if text.starts_with(r#"{"channel":"depth:"#) {
                                    l.depth[i] += 1;
                                } else {
                                    l.last_seq[i] = l.last_seq[i].max(seq);
                                }
                            }
                            Some(Some(Ok(_))) => {}
                            Some(_) => {
                                local.borrow_mut().cut[i] = true;
                                break;
                            }
                        }
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
            let l = Rc::try_unwrap(local).ok().map(RefCell::into_inner).unwrap_or_default();
            *seen.lock().unwrap() = l;
        })
        .unwrap()
        .join()
        .unwrap();
}

fn run_load(addr: &str, rate: u64, seconds: u64, seed: u64) -> load::Report {
    load::run(&LoadArgs {
        addr: addr.to_owned(),
        admin_key: "bench-admin".into(),
        connections: 64,
        users: 200,
        rate,
        duration: seconds,
        symbols: "BTC-PERP=50000:0.1:0.001".into(),
        seed,
        mix: Mix::OneLot,
    })
}

fn main() {
    let a = Args::parse();
    let data = std::env::temp_dir().join(format!("fanout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    // Every client comes from this one address: it may hold them all.
    let env = vec![
        ("EXCHANGE_MAX_CONNECTIONS".to_owned(), (a.clients + 1_000).to_string()),
        ("EXCHANGE_STREAM_PER_ADDRESS".to_owned(), a.clients.to_string()),
    ];
    let (exchange, addr) = start_exchange(&a.exchange, &env, 2, &data);
    let pid = exchange.0.id();

    let cpu_start = cpu_ticks(pid);
    let baseline = run_load(&addr, a.rate, a.baseline_seconds.unwrap_or(a.seconds), 1);
    let cpu_baseline = cpu_ticks(pid) - cpu_start;
    let rss_before = rss_kib(pid);

    let (ready, stop, seen) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Seen::default())));
    let reader = {
        let (addr, ready, stop, seen) = (addr.clone(), ready.clone(), stop.clone(), seen.clone());
        std::thread::spawn(move || clients(addr, a.clients, a.client_nice, a.depth, ready, stop, seen))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.load(Ordering::Acquire) < a.clients as u64 {
        assert!(Instant::now() < deadline, "only {} clients connected", ready.load(Ordering::Acquire));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Connected, subscribed and idle: what each connection holds.
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle = rss_kib(pid);
    let (maker, taker) = (funded(&addr, "marker-maker"), funded(&addr, "marker-taker"));
    let markers_stop = Arc::new(AtomicBool::new(false));
    let marker_thread = {
        let (addr, stop) = (addr.clone(), markers_stop.clone());
        std::thread::spawn(move || {
            let mut acks = Vec::new();
            let order = |key: &str, side: &str| {
                let body = format!(r#"{{"symbol":"ETH-PERP","side":"{side}","type":"LIMIT","price":"3000","quantity":"0.07","leverage":10}}"#);
                http(&addr, "POST", "/v1/orders", &[("x-api-key", key)], &body)
            };
            while !stop.load(Ordering::Acquire) {
                order(&maker, "SELL");
                let (status, _) = order(&taker, "BUY");
                if status == 200 {
                    acks.push(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            acks
        })
    };
    let cpu_before = cpu_ticks(pid);
    let with = run_load(&addr, a.rate, a.seconds, 2);
    let cpu = cpu_ticks(pid) - cpu_before;
    markers_stop.store(true, Ordering::Release);
    let acks = marker_thread.join().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let (_, trades) = http(&addr, "GET", "/v1/trades?symbol=BTC-PERP&limit=1", &[], "");
    let (server, writes) = server_delay(&http(&addr, "GET", "/metrics", &[], "").1, &[0.5, 0.99]);
    stop.store(true, Ordering::Release);
    reader.join().unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());

    let newest_seq = seen.last_seq.iter().copied().max().unwrap_or(0);
    let complete = seen.last_seq.iter().zip(&seen.cut).filter(|(s, c)| **s == newest_seq && !**c).count();
    let cut = seen.cut.iter().filter(|c| **c).count();
    let histogram = || Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).unwrap();
    let mut delay = histogram();
    let window = Duration::from_secs(a.window_secs.max(1));
    let mut windows: Vec<Histogram<u64>> = Vec::new();
    let mut missing = 0u64;
    for arrivals in &seen.markers {
        for (k, ack) in acks.iter().enumerate() {
            match arrivals.get(k) {
                Some(t) => {
                    let ns = t.saturating_duration_since(*ack).as_nanos().max(1) as u64;
                    delay.record(ns).unwrap();
                    let w = (ack.saturating_duration_since(acks[0]).as_secs() / window.as_secs()) as usize;
                    while windows.len() <= w {
                        windows.push(histogram());
                    }
                    windows[w].record(ns).unwrap();
                }
                None => missing += 1,
            }
        }
    }
    let delivered: u64 = seen.last_seq.iter().sum();
    let hz = 100.0; // USER_HZ
    // The fan-out's own cost: the exchange's CPU beyond what the same load took without clients.
    // At the baseline's rate of CPU: the two runs may differ in length.
    let base_secs = a.baseline_seconds.unwrap_or(a.seconds).max(1);
    let extra = cpu.saturating_sub(cpu_baseline * a.seconds / base_secs);
    let ns_per_message = if delivered > 0 { extra as f64 / hz * 1e9 / delivered as f64 } else { 0.0 };
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e6;
    let followed = match idle() {
        Idle::Quiet => "nothing (connected only)",
        Idle::Markers => "only the markers' trades:ETH-PERP",
        Idle::No if a.depth => "trades:BTC-PERP and depth:BTC-PERP",
        Idle::No => "trades:BTC-PERP",
    };
    println!("clients: {} subscribed to {followed} (their thread at nice {}); load: {} orders/s open loop, one lot, {} s", a.clients, a.client_nice, a.rate, a.seconds);
    println!(
        "exchange RSS: {rss_before} KiB before the clients, {rss_idle} KiB with them connected and idle: {:.1} KiB a connection",
        rss_idle.saturating_sub(rss_before) as f64 / a.clients.max(1) as f64
    );
    if a.depth {
        let depth: u64 = seen.depth.iter().sum();
        println!("depth messages: {:.1} a client on average", depth as f64 / a.clients.max(1) as f64);
    }
    println!("baseline (no clients): {:.0} orders/s, ack p50 {:.2} ms, p99 {:.2} ms", baseline.per_second(), baseline.ms(0.5), baseline.ms(0.99));
    println!("with clients:          {:.0} orders/s, ack p50 {:.2} ms, p99 {:.2} ms", with.per_second(), with.ms(0.5), with.ms(0.99));
    println!("newest trade on the wire: seq {newest_seq} (GET /v1/trades: {})", trades.chars().take(80).collect::<String>());
    println!("clients with every trade: {complete}; cut off: {cut}; markers: {} acked, {missing} (client, marker) pairs missing", acks.len());
    println!(
        "marker delivery delay after its ack: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} deliveries",
        ms(&delay, 0.5),
        ms(&delay, 0.99),
        delay.max() as f64 / 1e6,
        delay.len()
    );
    println!(
        "the server's part (exchange_stream_delay_seconds: result on the core's stream side -> its write done, each write's oldest message; interpolated in 1.5x buckets): p50 {:.2} ms, p99 {:.2} ms over {writes} writes",
        server[0], server[1]
    );
    if windows.len() > 1 {
        for (w, h) in windows.iter().enumerate() {
            let from = w as u64 * window.as_secs();
            println!("  markers acknowledged {from}-{} s: delivery p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms", from + window.as_secs(), ms(h, 0.5), ms(h, 0.99), h.max() as f64 / 1e6);
        }
    }
    println!(
        "exchange CPU: {:.2} s in {base_secs} s without clients, {:.2} s in {} s with; beyond the baseline's rate, over {delivered} messages delivered: {ns_per_message:.0} ns a message",
        cpu_baseline as f64 / hz,
        cpu as f64 / hz,
        a.seconds
    );
    println!(
        "fanout: {} clients, ack p99 {:.2} ms -> {:.2} ms ({:.2}x), delivery p99 {:.2} ms (server's part {:.2} ms), {complete}/{} got every trade, {ns_per_message:.0} ns CPU per message",
        a.clients,
        baseline.ms(0.99),
        with.ms(0.99),
        with.ms(0.99) / baseline.ms(0.99).max(1e-9),
        ms(&delay, 0.99),
        server[1],
        a.clients
    );
    drop(exchange);
    let _ = std::fs::remove_dir_all(&data);
}
