//! The HTTP load generator: many keep-alive HTTP/1.1 connections sending orders, closed
//! or open loop, used by the `load` and `compare` binaries.
//!
//! Open loop (`rate > 0`): requests are scheduled at a fixed arrival rate and a request
//! that had to wait for its connection's previous answer is timed from its *scheduled*
//! time, so a stalled server is charged for every request it delayed (coordinated
//! omission corrected). Closed loop (`rate == 0`): every connection sends its next
//! request as soon as the last one is answered, which measures maximum throughput.
//!
//! The server must run with `EXCHANGE_ADMIN_KEY` set and `EXCHANGE_RATE_LIMIT=0`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use tokio::net::TcpStream;

use crate::rng::Rng;

/// What the connections send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// 45 % passive GTC near the touch, 35 % IOC crossing the spread, 20 % cancels of
    /// earlier resting orders, over every symbol given.
    Realistic,
    /// One-lot GTC limit orders around one price on the first symbol (a buy or sell at
    /// the mid or one tick off it): about half of them trade.
    OneLot,
    /// The same orders through the Binance dialect: a form `POST /fapi/v1/order` with
    /// `timestamp` and an HMAC-SHA256 `signature` (made here, as clients do), the key in
    /// `X-MBX-APIKEY`.
    OneLotBinance,
}

/// One load run.
#[derive(Clone, Debug)]
pub struct LoadArgs {
    pub addr: String,
    pub admin_key: String,
    pub connections: usize,
    pub users: usize,
    /// Orders per second to schedule (open loop); 0: closed loop.
    pub rate: u64,
    /// Seconds measured, after a one-second warm-up.
    pub duration: u64,
    /// SYMBOL=PRICE:TICK:LOT,...
    pub symbols: String,
    pub seed: u64,
    pub mix: Mix,
}

/// What a run measured.
pub struct Report {
    pub ok: u64,
    pub errors: u64,
    /// Per failing status: how many, and the first body.
    pub failures: std::collections::BTreeMap<u16, (u64, String)>,
    /// Latency in nanoseconds.
    pub latency: Histogram<u64>,
    pub seconds: f64,
}

impl Report {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    /// A latency quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1e6
    }
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

pub type Conn = http1::SendRequest<Full<Bytes>>;

pub async fn connect(addr: &str) -> Conn {
    let stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_nodelay(true).ok();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (send, conn) = http1::handshake(io).await.unwrap_or_else(|e| panic!("handshake: {e}"));
    tokio::task::spawn_local(conn);
    send
}

pub async fn call(conn: &mut Conn, method: &str, path: &str, headers: &[(&str, &str)], body: String) -> (u16, Bytes) {
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
fn next_realistic(rng: &mut Rng, syms: &[Symbol], resting: &mut Vec<(usize, String)>, user: usize) -> (usize, String, String, String) {
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

/// [`next_one_lot`] as a signed Binance order (`BTC-PERP` is `BTCUSDT` there).
fn next_one_lot_binance(rng: &mut Rng, s: &Symbol, user: usize, secret: &str) -> (usize, String, String, String) {
    use hmac::Mac;
    let buy = rng.chance(50);
    let price = s.mid + rng.range(-1, 1) as f64 * s.tick;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let params = format!(
        "symbol={}USDT&side={}&type=LIMIT&timeInForce=GTC&price={:.pd$}&quantity={:.ld$}&timestamp={now}",
        s.name.trim_end_matches("-PERP"),
        if buy { "BUY" } else { "SELL" },
        price,
        10f64.powi(-(s.lot_decimals as i32)),
        pd = s.tick_decimals,
        ld = s.lot_decimals,
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    mac.update(params.as_bytes());
    let signature: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    (user, "POST".into(), "/fapi/v1/order".into(), format!("{params}&signature={signature}"))
}

/// A one-lot GTC at the mid or one tick off it, either side.
fn next_one_lot(rng: &mut Rng, s: &Symbol, user: usize) -> (usize, String, String, String) {
    let buy = rng.chance(50);
    let price = s.mid + rng.range(-1, 1) as f64 * s.tick;
    let body = format!(
        r#"{{"symbol":"{}","side":"{}","type":"LIMIT","price":"{:.pd$}","quantity":"{:.ld$}","leverage":10}}"#,
        s.name,
        if buy { "BUY" } else { "SELL" },
        price,
        10f64.powi(-(s.lot_decimals as i32)),
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

/// Funds `users` users; their API keys and secrets.
pub async fn setup(args: &LoadArgs) -> Vec<(String, String)> {
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
        keys.push((v["apiKey"].as_str().unwrap_or_default().to_owned(), v["apiSecret"].as_str().unwrap_or_default().to_owned()));
        let deposit = format!(r#"{{"userId":"{name}","currency":"USDT","amount":"1000000000","transferId":"load-{name}"}}"#);
        call(&mut conn, "POST", "/admin/v1/deposits", &admin, deposit).await;
    }
    keys
}

async fn worker(args: LoadArgs, index: usize, keys: Rc<Vec<(String, String)>>, start: Instant, end: Instant, measure_from: Instant) -> Tally {
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
        let (user, method, path, body) = match args.mix {
            Mix::Realistic => next_realistic(&mut rng, &syms, &mut resting, user),
            Mix::OneLot => next_one_lot(&mut rng, &syms[0], user),
            Mix::OneLotBinance => next_one_lot_binance(&mut rng, &syms[0], user, &keys[user].1),
        };
        let key = if args.mix == Mix::OneLotBinance { "x-mbx-apikey" } else { "x-api-key" };
        let (status, reply) = call(&mut conn, &method, &path, &[(key, &keys[user].0)], body).await;
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


/// Funds the users, then runs the load; on a current-thread tokio runtime of its own.
pub fn run(args: &LoadArgs) -> Report {
    run_with(args, |_, _| {})
}

/// [`run`], telling `window` when the measured window starts and ends, once the users
/// are funded and before the first order (to sample other counters over the same time).
pub fn run_with(args: &LoadArgs, window: impl FnOnce(Instant, Instant)) -> Report {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
    let local = tokio::task::LocalSet::new();
    let args = args.clone();
    local.block_on(&runtime, async move {
        let keys = Rc::new(setup(&args).await);
        let start = Instant::now() + Duration::from_millis(200);
        let measure_from = start + Duration::from_secs(1);
        let end = measure_from + Duration::from_secs(args.duration);
        window(measure_from, end);
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
        Report {
            ok: total.ok,
            errors: total.errors,
            failures: total.failures,
            latency: total.hist.unwrap_or_else(|| Histogram::new(3).unwrap_or_else(|e| panic!("{e}"))),
            seconds: args.duration as f64,
        }
    })
}
