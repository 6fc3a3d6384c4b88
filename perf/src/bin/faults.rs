//! The fault loop: crashes and outages under load, and after each one the proof that
//! nothing acknowledged was lost and no money appeared or vanished.
//!
//! `cargo build --release && cargo run --release -p perf --bin faults -- --help`
//!
//! Per mode (embedded, kafka, redis = Kafka + Redis, full = Kafka + Redis + PostgreSQL)
//! it starts the exchange on a data directory (and broker, Redis, database) of its own,
//! funds some users, then runs rounds. Each round puts load on it from several client
//! threads (LIMIT, IOC, MARKET orders and cancels, each order with a clientOrderId; at
//! most [`PER_USER_PER_ROUND`] to a user, which the ledger keeps readable) and then,
//! mid-load, a fault:
//! - `kill -9` of the exchange (every round), then a restart;
//! - in Kafka modes, one round freezes the broker (SIGSTOP) for 3 s;
//! - in Redis modes, one round stops Redis for 2 s and starts an empty one;
//! - in the full mode, one round cuts PostgreSQL off (a proxy drops every connection and
//!   refuses new ones) for 3 s.
//!
//! After each round, on the restarted exchange:
//! - every order acknowledged (200) in the round is found by its clientOrderId, with the
//!   orderId it was acknowledged with, exactly once (no two acknowledged clientOrderIds
//!   share an orderId, and no open order is listed twice);
//! - `GET /admin/v1/summary` balances to the unit and its deposits are what was deposited;
//! - the books match a replay: the exchange is killed again, its snapshots removed, and
//!   the state rebuilt from the logs alone must give the same depth, the same summary and
//!   the same open orders.
//!
//! In the full mode, at the end, every acknowledged order of every round is in
//! PostgreSQL (its `orders` table is keyed by orderId: at most once by construction),
//! and every one that was closed when its round was checked has exactly its filled
//! quantity in PostgreSQL's `trades` (its fills, from the results topics).
//!
//! It prints one line per round and a table per mode: rounds, orders acknowledged,
//! faults, losses (must be 0).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use perf::rng::Rng;
use perf::stack::{free_port, fresh_database, start_redis_on, start_tansu, try_start_exchange, Running};
use serde_json::Value;

#[derive(Parser, Clone)]
#[command(about = "Crashes and outages under load, each followed by proof that nothing was lost")]
struct Args {
    #[arg(long, default_value = "target/release/exchange")]
    exchange: PathBuf,
    #[arg(long, default_value = "tansu")]
    tansu: String,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres: String,
    #[arg(long, value_delimiter = ',', default_value = "embedded,kafka,redis,full")]
    modes: Vec<String>,
    /// kill -9 rounds per mode (the outage rounds come on top).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    #[arg(long, default_value_t = 16)]
    users: usize,
    /// Snapshot every this many commands, so that restarts load snapshots and replay tails.
    #[arg(long, default_value_t = 2_000)]
    snapshot_every: u64,
    /// Rounds without a kill (the load alone, then the checks): to tell a recovery
    /// problem from one of the load itself.
    #[arg(long)]
    no_kill: bool,
}

const ADMIN: &str = "bench-admin";
const DEPOSIT: i64 = 1_000_000;

/// One HTTP/1.1 exchange on a keep-alive connection: status and body.
fn call(stream: &mut TcpStream, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> std::io::Result<(u16, String)> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
            let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
            if bytes.len() >= end + 4 + length {
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                return Ok((status, String::from_utf8_lossy(&bytes[end + 4..end + 4 + length]).into_owned()));
            }
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        bytes.extend_from_slice(&buf[..n]);
    }
}

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn json(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let mut s = connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    let (status, text) = call(&mut s, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A TCP proxy to PostgreSQL that can be cut (every connection dropped, new ones refused).
struct Proxy {
    addr: String,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let (target, flag) = (target.to_owned(), cut.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if flag.load(Ordering::Acquire) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else { continue };
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
                        let mut buf = [0u8; 16384];
                        loop {
                            if flag.load(Ordering::Acquire) {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            // An end or an error on either side ends both: a peer that
                            // died (a killed exchange resets its connections) must not
                            // leave PostgreSQL a session, with its transaction and locks.
                            let done = match from.read(&mut buf) {
                                Ok(0) => true,
                                Ok(n) => to.write_all(&buf[..n]).is_err(),
                                Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
                            };
                            if done {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self { addr, cut }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    Kill,
    FreezeBroker,
    StopRedis,
    CutPostgres,
}

/// Everything a mode runs on.
struct Stack {
    args: Args,
    env: Vec<(String, String)>,
    data: PathBuf,
    exchange: Option<Running>,
    addr: String,
    broker: Option<Running>,
    redis: Option<(Running, u16)>,
    proxy: Option<Proxy>,
    database: Option<String>,
    /// Starts that failed and were tried again.
    failed_starts: usize,
}

impl Stack {
    fn start(args: &Args, mode: &str) -> Self {
        let tag = format!("faults-{mode}-{}", std::process::id());
        let data = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&data);
        let mut env = vec![
            ("EXCHANGE_SNAPSHOT_EVERY".to_owned(), args.snapshot_every.to_string()),
            ("EXCHANGE_KAFKA_TIMEOUT_MS".to_owned(), "2000".to_owned()),
            ("RUST_LOG".to_owned(), "error".to_owned()),
        ];
        let broker = (mode != "embedded").then(|| start_tansu(&args.tansu));
        if let Some((_, addr)) = &broker {
            env.push(("EXCHANGE_KAFKA_BROKERS".into(), addr.clone()));
            env.push(("EXCHANGE_KAFKA_TOPIC_PREFIX".into(), format!("{tag}-")));
        }
        let redis = matches!(mode, "redis" | "full").then(|| {
            let port = free_port();
            (start_redis_on(port), port)
        });
        if let Some((_, port)) = &redis {
            env.push(("EXCHANGE_REDIS_URL".into(), format!("redis://127.0.0.1:{port}")));
            env.push(("EXCHANGE_REDIS_PREFIX".into(), format!("{tag}:")));
        }
        let (proxy, database) = if mode == "full" {
            let url = fresh_database(&args.postgres, "exchange_faults");
            let proxy = Proxy::start("127.0.0.1:5432");
            let through = url.replacen("127.0.0.1:5432", &proxy.addr, 1);
            env.push(("EXCHANGE_POSTGRES_URL".into(), through));
            (Some(proxy), Some(url))
        } else {
            (None, None)
        };
        let mut stack = Self {
            args: args.clone(),
            env,
            data,
            exchange: None,
            addr: String::new(),
            broker: broker.map(|(b, _)| b),
            redis,
            proxy,
            database,
            failed_starts: 0,
        };
        stack.restart();
        stack
    }

    /// Starts the exchange; as systemd would, again if it exits at start (a broker that
    /// is slow to answer after an outage makes the first try fail). Counted in `restarts`.
    fn restart(&mut self) {
        for attempt in 1..=3 {
            match try_start_exchange(&self.args.exchange, &self.env, 2, &self.data) {
                Ok((running, addr)) => {
                    self.exchange = Some(running);
                    self.addr = addr;
                    return;
                }
                Err(e) if attempt < 3 => {
                    println!("  start {attempt} failed, starting again: {}", e.lines().next().unwrap_or_default());
                    self.failed_starts += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn kill9(&mut self) {
        if let Some(mut running) = self.exchange.take() {
            let _ = running.0.kill();
            let _ = running.0.wait();
            std::mem::forget(running);
        }
    }

    fn freeze_broker(&self, frozen: bool) {
        if let Some(b) = &self.broker {
            unsafe { libc::kill(b.0.id() as i32, if frozen { libc::SIGSTOP } else { libc::SIGCONT }) };
        }
    }

    fn stop_redis(&mut self) {
        if let Some((running, _)) = self.redis.as_mut() {
            let _ = running.0.kill();
            let _ = running.0.wait();
        }
    }

    fn start_redis(&mut self) {
        if let Some((running, port)) = self.redis.take() {
            std::mem::forget(running);
            self.redis = Some((start_redis_on(port), port));
        }
    }

    fn cut_postgres(&self, cut: bool) {
        if let Some(p) = &self.proxy {
            p.cut.store(cut, Ordering::Release);
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.freeze_broker(false);
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// What clients saw acknowledged in a round: clientOrderId → (user's index, orderId).
type Acked = BTreeMap<String, (usize, String)>;

/// Orders a user is sent in one round at most. The ledger keeps a user's latest
/// [`CLOSED_ORDERS_KEPT`] closed orders and forgets older ones, as the API says: with more
/// in a round, the first ones' lookups would answer 404 by design and count as lost (seen
/// with 64 clients over 16 users: about 600 orders a user in a round, the oldest hundred
/// of each "lost"). Below it, every acknowledged order must be found.
const PER_USER_PER_ROUND: u64 = exchange::accounts::CLOSED_ORDERS_KEPT as u64 * 4 / 5;

/// Load from `clients` threads until `stop`; each order has a clientOrderId of its own.
/// A user who has had [`PER_USER_PER_ROUND`] orders is not sent more; once none is left,
/// the clients wait for the round's end.
fn load(addr: &str, keys: &[String], clients: usize, round: usize, stop: &AtomicBool, sent: &AtomicU64) -> Acked {
    let acked = Mutex::new(Acked::new());
    let budget: Vec<AtomicU64> = keys.iter().map(|_| AtomicU64::new(0)).collect();
    let budget = budget.as_slice();
    std::thread::scope(|scope| {
        for client in 0..clients {
            let (acked, keys) = (&acked, keys);
            scope.spawn(move || {
                let mut rng = Rng::new((round * 1000 + client) as u64 + 1);
                let mut conn = connect(addr).ok();
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let Some(stream) = conn.as_mut() else {
                        std::thread::sleep(Duration::from_millis(20));
                        conn = connect(addr).ok();
                        continue;
                    };
                    let first = rng.below(keys.len() as u64) as usize;
                    let Some(user) = (0..keys.len())
                        .map(|i| (first + i) % keys.len())
                        .find(|&u| budget[u].fetch_add(1, Ordering::Relaxed) < PER_USER_PER_ROUND)
                    else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let key = &keys[user];
                    let btc = rng.below(2) == 0;
                    let symbol = if btc { "BTC-PERP" } else { "ETH-PERP" };
                    let side = if rng.below(2) == 0 { "BUY" } else { "SELL" };
                    // Within ±200 ticks of 50,000 (BTC, tick 0.1) or 3,000 (ETH, tick 0.01).
                    let (price, qty) = if btc {
                        let t = rng.range(500_000 - 200, 500_000 + 200);
                        (format!("{}.{}", t / 10, t % 10), format!("0.00{}", rng.below(5) + 1))
                    } else {
                        let t = rng.range(300_000 - 200, 300_000 + 200);
                        (format!("{}.{:02}", t / 100, t % 100), format!("0.0{}", rng.below(5) + 1))
                    };
                    let cid = format!("r{round}c{client}n{n}");
                    n += 1;
                    let kind = rng.below(10);
                    if kind == 0 {
                        let _ = call(stream, "DELETE", &format!("/v1/orders?symbol={symbol}"), &[("x-api-key", key)], "");
                        continue;
                    }
                    let body = match kind {
                        1 => format!(r#"{{"symbol":"{symbol}","side":"{side}","type":"MARKET","quantity":"{qty}","leverage":5,"clientOrderId":"{cid}"}}"#),
                        2 | 3 => format!(r#"{{"symbol":"{symbol}","side":"{side}","type":"LIMIT","price":"{price}","quantity":"{qty}","leverage":5,"timeInForce":"IOC","clientOrderId":"{cid}"}}"#),
                        _ => format!(r#"{{"symbol":"{symbol}","side":"{side}","type":"LIMIT","price":"{price}","quantity":"{qty}","leverage":5,"clientOrderId":"{cid}"}}"#),
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                    match call(stream, "POST", "/v1/orders", &[("x-api-key", key)], &body) {
                        Ok((200, text)) => {
                            let id = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["orderId"].as_str().map(str::to_owned));
                            if let Some(id) = id {
                                acked.lock().unwrap().insert(cid, (user, id));
                            }
                        }
                        Ok(_) => {}
                        Err(_) => conn = None,
                    }
                }
            });
        }
    });
    acked.into_inner().unwrap()
}

/// The state a replay must reproduce: depth of every symbol, the summary, open orders.
fn state(addr: &str, keys: &[String]) -> (Vec<Value>, Value, Vec<Value>) {
    let depth: Vec<Value> = ["BTC-PERP", "ETH-PERP"].iter().map(|s| json(addr, "GET", &format!("/v1/depth?symbol={s}&limit=1000"), &[], "").1).collect();
    let summary = json(addr, "GET", "/admin/v1/summary", &[("x-admin-key", ADMIN)], "").1;
    let open = keys.iter().map(|k| json(addr, "GET", "/v1/orders", &[("x-api-key", k)], "").1).collect();
    (depth, summary, open)
}

/// Every check after a round; the number of losses found (each one is printed). Adds the
/// filled quantity of each acknowledged order that is closed to `closed` (by orderId).
fn verify(stack: &Stack, keys: &[String], acked: &Acked, closed: &mut BTreeMap<String, String>) -> usize {
    let addr = &stack.addr;
    let mut losses = 0;
    let mut ids = BTreeSet::new();
    let mut conn = connect(addr).unwrap();
    for (cid, (user, id)) in acked {
        if !ids.insert(id.clone()) {
            println!("  LOSS: orderId {id} acknowledged for two clientOrderIds");
            losses += 1;
        }
        let (status, text) = call(&mut conn, "GET", &format!("/v1/orders/by-client-id/{cid}"), &[("x-api-key", &keys[*user])], "").unwrap();
        let order = serde_json::from_str::<Value>(&text).unwrap_or_default();
        let found = order["orderId"].as_str().map(str::to_owned);
        if status != 200 || found.as_deref() != Some(id.as_str()) {
            println!("  LOSS: {cid} acknowledged as {id}, found {status} {found:?}");
            losses += 1;
        } else if !matches!(order["status"].as_str(), Some("NEW" | "PARTIALLY_FILLED"))
            && let Some(filled) = order["filledQuantity"].as_str()
        {
            closed.insert(id.clone(), decimal(filled));
        }
    }
    for key in keys {
        let (_, open) = json(addr, "GET", "/v1/orders", &[("x-api-key", key)], "");
        let open: Vec<&str> = open.as_array().map(|a| a.iter().filter_map(|o| o["orderId"].as_str()).collect()).unwrap_or_default();
        let unique: BTreeSet<&&str> = open.iter().collect();
        if unique.len() != open.len() {
            println!("  LOSS: an open order is listed twice");
            losses += 1;
        }
    }
    let (status, summary) = json(addr, "GET", "/admin/v1/summary", &[("x-admin-key", ADMIN)], "");
    let deposits = format!("{}", DEPOSIT * keys.len() as i64);
    if status != 200 || summary["balanced"] != true || summary["deposits"] != deposits.as_str() {
        println!("  LOSS: the books do not balance: {summary}");
        for key in keys {
            let (_, positions) = json(addr, "GET", "/v1/positions", &[("x-api-key", key)], "");
            let (_, balance) = json(addr, "GET", "/v1/balance", &[("x-api-key", key)], "");
            println!("    {balance} {positions}");
        }
        losses += 1;
    }
    losses
}

/// Kills the exchange, removes its snapshots, restarts it from the logs alone, and
/// compares; the number of differences.
fn replay_matches(stack: &mut Stack, keys: &[String]) -> usize {
    let before = state(&stack.addr, keys);
    stack.kill9();
    let _ = std::fs::remove_dir_all(stack.data.join("snapshots"));
    stack.restart();
    let after = state(&stack.addr, keys);
    let mut differences = 0;
    for (what, same) in [("depth", before.0 == after.0), ("summary", before.1 == after.1), ("open orders", before.2 == after.2)] {
        if !same {
            println!("  LOSS: the {what} after a replay from the logs differs");
            differences += 1;
        }
    }
    if before.2 != after.2 {
        let ids = |lists: &[Value]| -> BTreeSet<String> {
            lists.iter().flat_map(|l| l.as_array().cloned().unwrap_or_default()).map(|o| format!("{} {}", o["orderId"], o["clientOrderId"])).collect()
        };
        let (b, a) = (ids(&before.2), ids(&after.2));
        println!("    only before the replay: {:?}", b.difference(&a).collect::<Vec<_>>());
        println!("    only after the replay: {:?}", a.difference(&b).collect::<Vec<_>>());
    }
    differences
}

/// A decimal without trailing zeros, to compare the API's and PostgreSQL's texts.
fn decimal(text: &str) -> String {
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text.to_owned() }
}

/// Runs `check` against PostgreSQL every half second until it finds nothing wrong or two
/// minutes have passed (the writer catching up); what it found wrong the last time. It is
/// told whether this is the last time, and reports what it finds when it finds nothing
/// wrong or it is.
fn until_postgres_agrees(url: &str, mut check: impl AsyncFnMut(&tokio_postgres::Client, bool) -> usize) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let last = Instant::now() > deadline;
            let wrong = check(&client, last).await;
            if wrong == 0 || last {
                return wrong;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

/// Whether each closed order's filled quantity is what PostgreSQL's trades add up to for
/// it; the number of orders that differ.
fn fills_in_postgres(url: &str, closed: &BTreeMap<String, String>) -> usize {
    until_postgres_agrees(url, async |client, last| {
        let sums = client
            .query(
                "SELECT o::text, sum(q)::text FROM (SELECT buyer_order_id AS o, quantity AS q FROM trades
                 UNION ALL SELECT seller_order_id, quantity FROM trades) t GROUP BY o",
                &[],
            )
            .await
            .map(|rows| rows.iter().map(|r| (r.get::<_, String>(0), decimal(&r.get::<_, String>(1)))).collect::<BTreeMap<_, _>>())
            .unwrap_or_default();
        let differ: Vec<(&String, &String, Option<&String>)> = closed
            .iter()
            .filter_map(|(id, filled)| {
                let stored = sums.get(id);
                (stored.map_or("0", String::as_str) != filled).then_some((id, filled, stored))
            })
            .collect();
        if differ.is_empty() || last {
            for (id, filled, stored) in differ.iter().take(10) {
                println!("  LOSS: order {id} filled {filled}, its trades in PostgreSQL {stored:?}");
            }
            let filled = closed.values().filter(|f| f.as_str() != "0").count();
            println!("fills: {} closed orders checked against PostgreSQL's trades, {filled} of them with fills", closed.len());
        }
        differ.len()
    })
}

/// Whether every acknowledged order is in PostgreSQL.
fn all_in_postgres(url: &str, ids: &BTreeSet<String>) -> usize {
    until_postgres_agrees(url, async |client, last| {
        let rows = client.query("SELECT id::text FROM orders", &[]).await.map(|r| r.iter().map(|r| r.get::<_, String>(0)).collect::<BTreeSet<_>>());
        let missing = rows.map_or(ids.len(), |stored| ids.difference(&stored).count());
        if missing > 0 && last {
            println!("  LOSS: {missing} acknowledged orders never reached PostgreSQL");
        }
        missing
    })
}

struct Outcome {
    mode: String,
    rounds: usize,
    orders: usize,
    faults: Vec<Fault>,
    losses: usize,
}

fn run_mode(args: &Args, mode: &str) -> Outcome {
    let mut stack = Stack::start(args, mode);
    let names: Vec<String> = (0..args.users).map(|u| format!("u{u}")).collect();
    let keys: Vec<String> = names
        .iter()
        .map(|name| {
            let (status, created) = json(&stack.addr, "POST", "/admin/v1/users", &[("x-admin-key", ADMIN)], &format!(r#"{{"userId":"{name}"}}"#));
            assert_eq!(status, 200, "{created}");
            let body = format!(r#"{{"userId":"{name}","currency":"USDT","amount":"{DEPOSIT}","transferId":"d-{name}"}}"#);
            assert_eq!(json(&stack.addr, "POST", "/admin/v1/deposits", &[("x-admin-key", ADMIN)], &body).0, 200);
            created["apiKey"].as_str().unwrap().to_owned()
        })
        .collect();
    let mut faults = vec![Fault::Kill; args.rounds];
    if mode != "embedded" {
        faults.push(Fault::FreezeBroker);
    }
    if matches!(mode, "redis" | "full") {
        faults.push(Fault::StopRedis);
    }
    if mode == "full" {
        faults.push(Fault::CutPostgres);
    }
    let (mut orders, mut losses) = (0, 0);
    let mut every = BTreeSet::new();
    let mut closed = BTreeMap::new();
    let mut rng = Rng::new(42);
    for (round, fault) in faults.iter().enumerate() {
        let stop = AtomicBool::new(false);
        let sent = AtomicU64::new(0);
        let started = Instant::now();
        let addr = stack.addr.clone();
        let acked = std::thread::scope(|scope| {
            let worker = scope.spawn(|| load(&addr, &keys, args.clients, round, &stop, &sent));
            std::thread::sleep(Duration::from_millis(300 + rng.below(1_200)));
            match fault {
                Fault::Kill if args.no_kill => {}
                Fault::Kill => stack.kill9(),
                Fault::FreezeBroker => {
                    stack.freeze_broker(true);
                    std::thread::sleep(Duration::from_secs(3));
                    stack.freeze_broker(false);
                }
                Fault::StopRedis => {
                    stack.stop_redis();
                    std::thread::sleep(Duration::from_secs(2));
                    stack.start_redis();
                }
                Fault::CutPostgres => {
                    stack.cut_postgres(true);
                    std::thread::sleep(Duration::from_secs(3));
                    stack.cut_postgres(false);
                }
            }
            std::thread::sleep(Duration::from_millis(500));
            stop.store(true, Ordering::Release);
            worker.join().unwrap()
        });
        if *fault == Fault::Kill && !args.no_kill {
            stack.restart();
        } else {
            // Back to healthy by itself (the hot state rebuilt, the writer caught up).
            let deadline = Instant::now() + Duration::from_secs(120);
            while !perf::stack::http_get(&stack.addr, "/health").is_ok_and(|h| h.contains(r#""status":"ok""#)) {
                assert!(Instant::now() < deadline, "{mode}: not healthy again after {fault:?}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let mut lost = verify(&stack, &keys, &acked, &mut closed);
        lost += replay_matches(&mut stack, &keys);
        orders += acked.len();
        losses += lost;
        every.extend(acked.values().map(|(_, id)| id.clone()));
        println!(
            "{mode} round {round:>2} {fault:?}: {} sent, {} acknowledged in {:.1} s, losses {lost}",
            sent.load(Ordering::Relaxed),
            acked.len(),
            started.elapsed().as_secs_f64()
        );
    }
    if let Some(url) = &stack.database {
        losses += all_in_postgres(url, &every);
        losses += fills_in_postgres(url, &closed);
    }
    Outcome { mode: mode.to_owned(), rounds: faults.len(), orders, faults, losses }
}

fn main() {
    let args = Args::parse();
    assert!(Path::new(&args.exchange).exists(), "{}: build it with `cargo build --release`", args.exchange.display());
    let mut outcomes = Vec::new();
    for mode in &args.modes {
        outcomes.push(run_mode(&args, mode));
    }
    println!("\n| mode | rounds | orders acknowledged | faults | losses |");
    println!("|---|---|---|---|---|");
    for o in &outcomes {
        let kills = o.faults.iter().filter(|f| **f == Fault::Kill).count();
        let others: Vec<String> = o.faults.iter().filter(|f| **f != Fault::Kill).map(|f| format!("{f:?}")).collect();
        let faults = if others.is_empty() { format!("{kills} × kill -9") } else { format!("{kills} × kill -9, {}", others.join(", ")) };
        println!("| {} | {} | {} | {faults} | {} |", o.mode, o.rounds, o.orders, o.losses);
    }
    let total: usize = outcomes.iter().map(|o| o.losses).sum();
    println!("losses: {total}");
    std::process::exit(i32::from(total > 0));
}
