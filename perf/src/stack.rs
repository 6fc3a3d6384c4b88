//! Starting what a benchmark runs against, each on a free port of its own: the exchange
//! (the release binary, waited for until healthy), a tansu broker, a `redis-server`, an
//! empty PostgreSQL database. Every process is stopped when its handle is dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    exchange_io::ports::free_listen_port()
}

/// A process killed when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_tansu(bin: &str) -> (Running, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(bin)
        .args(["broker", "--listener-url", &format!("tcp://{addr}"), "--advertised-listener-url", &format!("tcp://{addr}")])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}; install it with `cargo install tansu --locked --features dynostore`"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Running(child), addr)
}

pub fn start_redis() -> (Running, String) {
    let port = free_port();
    (start_redis_on(port), format!("redis://127.0.0.1:{port}"))
}

/// A `redis-server` without persistence on `port` (again after a stop, for a fault).
pub fn start_redis_on(port: u16) -> Running {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting redis-server: {e} (install Redis, or pass --redis URL)"));
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Running(child)
}

pub fn start_exchange(exchange: &Path, env: &[(String, String)], shards: usize, data: &Path) -> (Running, String) {
    try_start_exchange(exchange, env, shards, data).unwrap_or_else(|e| panic!("{e}"))
}

/// Starts the exchange and waits until it is healthy.
///
/// # Errors
/// It exited, or was not healthy within 60 s (then it is stopped).
pub fn try_start_exchange(exchange: &Path, env: &[(String, String)], shards: usize, data: &Path) -> Result<(Running, String), String> {
    let addr = format!("127.0.0.1:{}", free_port());
    let cores: Vec<String> = (0..shards).map(|c| c.to_string()).collect();
    let child = Command::new(exchange)
        .arg("serve")
        .env("EXCHANGE_HTTP_ADDR", &addr)
        .env("EXCHANGE_DATA_DIR", data)
        .env("EXCHANGE_ADMIN_KEY", "bench-admin")
        .env("EXCHANGE_RATE_LIMIT", "0")
        .env("EXCHANGE_CHECK_INTERVAL_SECS", "0")
        .env("EXCHANGE_CORES", cores.join(","))
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e} (build it with `cargo build --release`)", exchange.display()))?;
    let mut running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(body) = http_get(&addr, "/health")
            && body.contains(r#""status":"ok""#)
        {
            return Ok((running, addr));
        }
        if let Ok(Some(status)) = running.0.try_wait() {
            return Err(format!("the exchange exited at start ({status}) with {env:?}"));
        }
        if Instant::now() > deadline {
            return Err(format!("the exchange did not become healthy on {addr} with {env:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain HTTP/1.1 GET, the whole response as text.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// An empty database `name` on the server of `url`; its URL.
pub fn fresh_database(url: &str, name: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e}"));
        tokio::spawn(conn);
        client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap_or_else(|e| panic!("{e}"));
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap_or_else(|e| panic!("{e}"));
    });
    match url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("{url}: no database name"),
    }
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces) closed by ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}
