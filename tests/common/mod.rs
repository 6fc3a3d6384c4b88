//! Black-box test harness: starts the real `exchange` binary on a free port with its own
//! data directory, talks HTTP to it, and cleans up after itself.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ADMIN: &str = "test-admin-key";

pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub data: PathBuf,
    env: Vec<(String, String)>,
    agent: ureq::Agent,
    /// The broker when the suite runs in Kafka mode (`EXCHANGE_TEST_KAFKA_BROKERS`).
    pub kafka: Option<String>,
    /// Command-line arguments after `serve`.
    args: Vec<String>,
}

/// The broker the suite runs against, if it runs in Kafka mode. A broker that is named
/// but not reachable fails the test rather than skipping it.
pub fn kafka_brokers() -> Option<String> {
    let brokers = std::env::var("EXCHANGE_TEST_KAFKA_BROKERS").ok().filter(|b| !b.is_empty())?;
    let reachable = brokers
        .split(',')
        .any(|b| std::net::TcpStream::connect_timeout(&b.parse().expect("broker host:port"), Duration::from_secs(2)).is_ok());
    assert!(reachable, "EXCHANGE_TEST_KAFKA_BROKERS={brokers} but no broker answers");
    Some(brokers)
}

/// The Redis the suite keeps its hot state in, if it runs in Redis mode
/// (`EXCHANGE_TEST_HOT_REDIS`: a server, or a node of a cluster). Each server gets keys
/// of its own under a prefix.
pub fn hot_redis() -> Option<String> {
    std::env::var("EXCHANGE_TEST_HOT_REDIS").ok().filter(|u| !u.is_empty())
}

static N: AtomicUsize = AtomicUsize::new(0);

pub fn free_port() -> u16 {
    exchange_io::ports::free_listen_port()
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra environment variables, in the suite's mode (embedded,
    /// or Kafka with topics of its own).
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        Self::start_in(env, kafka_brokers())
    }

    /// Starts a server on the embedded journal whatever the suite's mode.
    pub fn start_embedded(env: &[(&str, &str)]) -> Self {
        Self::start_in(env, None)
    }

    /// Starts a server with Kafka (at `brokers`) as its event log, whatever the mode.
    pub fn start_kafka(brokers: &str, env: &[(&str, &str)]) -> Self {
        Self::start_in(env, Some(brokers.to_owned()))
    }

    /// Starts a server with command-line arguments after `serve` (`--config FILE`).
    pub fn start_with_args(env: &[(&str, &str)], args: &[&str]) -> Self {
        Self::start_full(env, kafka_brokers(), args)
    }

    fn start_in(env: &[(&str, &str)], kafka: Option<String>) -> Self {
        Self::start_full(env, kafka, &[])
    }

    fn start_full(env: &[(&str, &str)], kafka: Option<String>, args: &[&str]) -> Self {
        let data = std::env::temp_dir().join(format!(
            "exchange-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&data);
        let mut server = Self {
            child: None,
            port: free_port(),
            data,
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            agent: agent(),
            kafka,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        if let Some(brokers) = server.kafka.clone() {
            let prefix = format!("{}.", server.data.file_name().and_then(|n| n.to_str()).unwrap_or("t"));
            server.env.push(("EXCHANGE_KAFKA_BROKERS".into(), brokers));
            if !server.env.iter().any(|(k, _)| k == "EXCHANGE_KAFKA_TOPIC_PREFIX") {
                server.env.push(("EXCHANGE_KAFKA_TOPIC_PREFIX".into(), prefix));
            }
            server.env.push(("EXCHANGE_KAFKA_PARTITIONS".into(), "2".into()));
        }
        if let Some(url) = hot_redis()
            && !server.env.iter().any(|(k, _)| k == "EXCHANGE_REDIS_URL")
        {
            let prefix = format!("{}:", server.data.file_name().and_then(|n| n.to_str()).unwrap_or("t"));
            server.env.push(("EXCHANGE_REDIS_URL".into(), url));
            server.env.push(("EXCHANGE_REDIS_PREFIX".into(), prefix));
        }
        server.spawn();
        server
    }

    /// Where the server's log goes: the terminal with `EXCHANGE_TEST_SERVER_LOG`, else a
    /// file beside its data (kept across restarts), shown when it fails to start.
    fn log_output(&self) -> Stdio {
        if std::env::var_os("EXCHANGE_TEST_SERVER_LOG").is_some() {
            return Stdio::inherit();
        }
        std::fs::OpenOptions::new().create(true).append(true).open(self.data.with_extension("log")).map_or_else(|_| Stdio::null(), Stdio::from)
    }

    /// The last lines of the server's log file.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Starts the exchange and waits until it is healthy. A start that fails to bind its
    /// port is tried again on a fresh one, twice at most, after saying on the terminal
    /// what holds the port then (`ss`). It happened in CI in the embedded pass (where the
    /// exchange opens no connection of its own), though the port was free when picked
    /// and is below the range the kernel gives outgoing connections: the shards bind
    /// with SO_REUSEPORT as one user, so neither they nor an earlier exchange's
    /// connections on the port conflict; some socket without it held the port, and which
    /// is not known yet (the process stops at the first shard that fails, so only that
    /// one is logged).
    fn spawn(&mut self) {
        for attempt in 1.. {
            match self.try_spawn() {
                Ok(()) => return,
                Err(log) if attempt < 3 && log.contains("Address already in use") => {
                    let held = Command::new("ss").args(["-tanpe", &format!("( sport = :{} )", self.port)]).output();
                    let held = held.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
                    let report = format!("exchange could not bind port {} (attempt {attempt}); what holds it:\n{held}\n", self.port);
                    // Straight to the terminal: the test's own output is shown only if it fails.
                    let _ = std::io::Write::write_all(&mut std::io::stderr(), report.as_bytes());
                    self.port = free_port();
                }
                Err(log) => panic!("exchange exited at start: {log}"),
            }
        }
    }

    /// One start: `Err` with its exit status and log if it exits before it is healthy.
    fn try_spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_exchange"));
        cmd.arg("serve")
            .args(&self.args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("EXCHANGE_HTTP_ADDR", format!("127.0.0.1:{}", self.port))
            .env("EXCHANGE_DATA_DIR", &self.data)
            .env("EXCHANGE_ADMIN_KEY", ADMIN)
            .env("EXCHANGE_CORES", "0,1")
            .env("EXCHANGE_RATE_LIMIT", "0")
            .env("RUST_LOG", "warn")
            .stdout(self.log_output())
            .stderr(Stdio::inherit());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start the exchange binary"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Healthy: the logs replayed and, with Redis, the hot state written.
            if let Ok(r) = self.agent.get(&self.url("/health")).call()
                && r.status() == 200
                && r.into_json::<Value>().is_ok_and(|h| h["status"] == "ok")
            {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("{status}; its log:\n{}", self.log_tail()));
            }
            assert!(Instant::now() < deadline, "exchange did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The environment the server was started with, beyond the harness's own.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The exchange's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends the exchange a signal (`SIGSTOP`/`SIGCONT` to hold it still meanwhile).
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            send_signal(c.id(), signal);
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().expect("wait")
    }

    /// Waits up to `patience` for the exchange to exit by itself; its exit status.
    pub fn wait_exit(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// The value of one of the variables the server runs with.
    pub fn env_var(&self, name: &str) -> Option<String> {
        self.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    /// Restarts on the same data (and topics) with more environment.
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.kill9();
        self.env.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        self.spawn();
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> (u16, Value) {
        self.request_through(&self.agent, method, path, headers, body)
    }

    /// [`Self::request`] through `agent` (its pool of connections).
    fn request_through(&self, agent: &ureq::Agent, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> (u16, Value) {
        let mut req = agent.request(method, &self.url(path));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let result = match body {
            Some(b) => req.set("content-type", "application/json").send_string(b),
            None => req.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = response.status();
        let text = response.into_string().unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// The sum of a `/metrics` series over the lines that carry `label` (any label set
    /// when empty), e.g. `metric("exchange_stream_connections_cut_total", "stalled")`.
    pub fn metric(&self, series: &str, label: &str) -> i64 {
        let (_, metrics) = self.request("GET", "/metrics", &[], None);
        metrics
            .as_str()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(series) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .sum()
    }

    pub fn get(&self, key: &str, path: &str) -> (u16, Value) {
        self.request("GET", path, &[("x-api-key", key)], None)
    }

    /// A GET on a connection of its own (the kernel spreads connections over the cores, so
    /// it may land on any of them).
    pub fn get_on_new_connection(&self, key: &str, path: &str) -> (u16, Value) {
        self.request_through(&agent(), "GET", path, &[("x-api-key", key)], None)
    }

    pub fn delete(&self, key: &str, path: &str) -> (u16, Value) {
        self.request("DELETE", path, &[("x-api-key", key)], None)
    }

    pub fn post(&self, key: &str, path: &str, body: &str) -> (u16, Value) {
        self.request("POST", path, &[("x-api-key", key)], Some(body))
    }

    /// Creates a user and returns its API key.
    pub fn user(&self, name: &str) -> String {
        let (status, body) = self.request("POST", "/admin/v1/users", &[("x-admin-key", ADMIN)], Some(&format!(r#"{{"userId":"{name}"}}"#)));
        assert_eq!(status, 200, "{body}");
        body["apiKey"].as_str().expect("apiKey").to_owned()
    }

    pub fn deposit(&self, name: &str, amount: &str, transfer: &str) -> (u16, Value) {
        let body = format!(r#"{{"userId":"{name}","currency":"USDT","amount":"{amount}","transferId":"{transfer}"}}"#);
        self.request("POST", "/admin/v1/deposits", &[("x-admin-key", ADMIN)], Some(&body))
    }

    /// A funded user.
    pub fn funded(&self, name: &str, amount: &str) -> String {
        let key = self.user(name);
        assert_eq!(self.deposit(name, amount, &format!("fund-{name}")).0, 200);
        key
    }

    pub fn order(&self, key: &str, body: &str) -> (u16, Value) {
        self.post(key, "/v1/orders", body)
    }

    pub fn limit(&self, key: &str, side: &str, price: &str, qty: &str) -> Value {
        let (status, body) = self.order(
            key,
            &format!(r#"{{"symbol":"BTC-PERP","side":"{side}","type":"LIMIT","price":"{price}","quantity":"{qty}","leverage":10}}"#),
        );
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// An HTTP client with a pool of connections of its own.
fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(20)).build()
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.data);
        let _ = std::fs::remove_file(self.data.with_extension("log"));
    }
}

/// A tansu broker of a test's own (so it can be frozen without disturbing others).
pub struct Broker {
    child: Child,
    pub addr: String,
}

impl Broker {
    pub fn start() -> Self {
        Self::start_at(&format!("127.0.0.1:{}", free_port()))
    }

    /// A broker on a given address (a fresh one where a killed one was).
    pub fn start_at(addr: &str) -> Self {
        Self::start_advertising(addr, addr)
    }

    /// A broker on `addr` that tells its clients to connect to `advertised` (a
    /// [`Proxy`] in front of it, say).
    pub fn start_advertising(addr: &str, advertised: &str) -> Self {
        let addr = addr.to_owned();
        let home = std::env::var("HOME").unwrap_or_default();
        let tansu = ["tansu".to_owned(), format!("{home}/.cargo/bin/tansu")]
            .into_iter()
            .find(|t| Command::new(t).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok())
            .expect("the tansu broker must be installed (scripts/kafka-broker.sh installs it)");
        let child = Command::new(tansu)
            .args(["broker", "--listener-url", &format!("tcp://{addr}"), "--advertised-listener-url", &format!("tcp://{advertised}")])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr }
    }

    /// Kills the broker for good (its in-memory log goes with it): a dead broker.
    pub fn kill(&mut self) {
        self.freeze(false);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the broker: an outage without data loss.
    pub fn freeze(&self, frozen: bool) {
        send_signal(self.child.id(), if frozen { libc::SIGSTOP } else { libc::SIGCONT });
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.freeze(false);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` to process `pid`; a `SIGSTOP` returns only once every thread of it has
/// stopped. `kill` only queues the signal: one thread is woken to start the group stop,
/// and on a loaded machine the others go on serving until it has run (a broker "frozen"
/// this way was seen acknowledging a record sent after the freeze).
pub fn send_signal(pid: u32, signal: i32) {
    unsafe { libc::kill(pid as i32, signal) };
    if signal != libc::SIGSTOP {
        return;
    }
    let stopped = || -> Option<bool> {
        let mut all = true;
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
            // The state follows the command name, which is in parentheses.
            let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
            all &= matches!(state, "T" | "t" | "Z" | "X");
        }
        Some(all)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while stopped() == Some(false) {
        assert!(Instant::now() < deadline, "process {pid} did not stop after SIGSTOP");
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn dec(v: &Value) -> rust_decimal::Decimal {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not a decimal string: {v}"))
}

/// A Redis of a test's own (so it can be emptied, frozen or restarted without disturbing
/// others): `redis-server` on a free port, without persistence.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = Self { child: None, port: free_port() };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/redis.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.connection().is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(1))
    }

    /// Kills it and starts an empty one on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) it: unreachable without losing data.
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            send_signal(c.id(), signal);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.stop();
    }
}

/// A TCP proxy to a service, which a test can cut (every connection closed, new ones
/// refused) and restore: the service is down for whoever goes through it, and nobody
/// else.
pub struct Proxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Bytes are held, in both directions, on open connections: a peer that hangs.
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<AtomicUsize>,
}

impl Proxy {
    pub fn start(target: &str) -> Self {
        Self::start_on(0, target)
    }

    /// A proxy listening on `port` (0: any free one).
    pub fn start_on(port: u16, target: &str) -> Self {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicUsize::new(0));
        let (target, flag, epoch, hold) = (target.to_owned(), cut.clone(), generation.clone(), frozen.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if flag.load(Ordering::Acquire) {
                    continue; // dropped: refused
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                let born = epoch.load(Ordering::Acquire);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    let (epoch, hold) = (epoch.clone(), hold.clone());
                    std::thread::spawn(move || {
                        let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            if epoch.load(Ordering::Acquire) != born {
                                break;
                            }
                            if hold.load(Ordering::Acquire) {
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                            match std::io::Read::read(&mut from, &mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { port, cut, frozen, generation }
    }

    /// Holds every byte, both ways, on the open connections (and new ones), until
    /// unfrozen: the peer looks alive and never answers.
    pub fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::Release);
    }

    /// Closes every connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

/// A connection to a single server, or one that follows a cluster's redirections.
pub fn connect_any(url: &str) -> Box<dyn redis::ConnectionLike> {
    let mut seed = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO").arg("cluster").query(&mut seed).unwrap();
    if info.contains("cluster_enabled:1") {
        Box::new(redis::cluster::ClusterClient::new(vec![url]).unwrap().get_connection().unwrap())
    } else {
        Box::new(seed)
    }
}

/// Polls `done` every 100 ms until it holds; fails with `what` after `secs` seconds.
#[allow(dead_code)] // not every test binary polls
pub fn eventually(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what} (after {secs} s)");
        std::thread::sleep(Duration::from_millis(100));
    }
}
