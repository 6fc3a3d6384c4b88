//! The HTTP edge against requests that break its limits, spoken over raw TCP so that
//! nothing on the client side tidies them up: each gets its status (431, 413, 400) with
//! the API's JSON error where the request reached the exchange, the connection is closed
//! after it, nothing changes, and the server goes on serving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Server;

/// A response as read off the wire, and whether the server closed the connection after it.
struct Raw {
    status: u16,
    head: String,
    body: String,
    closed: bool,
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
}

/// Reads one response, then whether the connection is closed within a second.
fn read_response(stream: &mut TcpStream) -> Raw {
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let (head_end, length) = loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
            break (end + 4, content_length(&head).unwrap_or(0));
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => panic!("connection ended before a response: {:?}", String::from_utf8_lossy(&bytes)),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    };
    while bytes.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let body = String::from_utf8_lossy(&bytes[head_end..]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let closed = matches!(stream.read(&mut buf), Ok(0) | Err(_)) && {
        // A timeout is "still open"; EOF or reset is closed.
        stream.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        !matches!(stream.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    };
    Raw { status, head, body, closed }
}

fn send(s: &Server, request: &[u8]) -> Raw {
    let mut stream = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(request);
    read_response(&mut stream)
}

fn json_error(raw: &Raw) -> serde_json::Value {
    let value: serde_json::Value = serde_json::from_str(&raw.body).unwrap_or_else(|e| panic!("{e}: {:?}", raw.body));
    assert_eq!(value["code"], "INVALID_REQUEST", "{value}");
    assert!(value["message"].as_str().is_some_and(|m| !m.is_empty()), "{value}");
    value
}

fn order_request(key: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /v1/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const ORDER: &str = r#"{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.001"}"#;

#[test]
fn oversized_and_ill_framed_requests_get_their_status_and_change_nothing() {
    let s = Server::start();
    let alice = s.funded("alice", "1000");
    s.limit(&alice, "BUY", "39000", "0.001");
    let state = || (s.get(&alice, "/v1/balance").1, s.get(&alice, "/v1/orders").1, s.request("GET", "/v1/depth?symbol=BTC-PERP", &[], None).1);
    let before = state();

    // Too many headers, within hyper's buffer: ours, with the JSON error.
    let many: String = (0..80).map(|i| format!("X-H{i}: v\r\n")).collect();
    let raw = send(&s, &order_request(&alice, &many, ORDER));
    assert_eq!(raw.status, 431, "{}", raw.head);
    json_error(&raw);
    assert!(raw.closed, "the connection is closed after a 431");

    // Headers too large in total, within hyper's buffer.
    let big = format!("X-Big: {}\r\n", "a".repeat(10_000));
    let raw = send(&s, &order_request(&alice, &big, ORDER));
    assert_eq!(raw.status, 431, "{}", raw.head);
    json_error(&raw);
    assert!(raw.closed);

    // Past hyper's own limits (its 16 KiB buffer, 100 headers): its bare 431, then closed.
    let huge = format!("X-Huge: {}\r\n", "a".repeat(40_000));
    let raw = send(&s, &order_request(&alice, &huge, ORDER));
    assert_eq!(raw.status, 431, "{}", raw.head);
    assert!(raw.closed);
    let too_many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let raw = send(&s, &order_request(&alice, &too_many, ORDER));
    assert_eq!(raw.status, 431, "{}", raw.head);
    assert!(raw.closed);

    // A chunked body: refused, connection closed.
    let chunked = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: {alice}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{ORDER}\r\n0\r\n\r\n",
        ORDER.len()
    );
    let raw = send(&s, chunked.as_bytes());
    assert_eq!(raw.status, 400, "{}", raw.head);
    json_error(&raw);
    assert!(raw.closed);

    // A body past the limit (64 KiB): 413, read to its end so the client sees the answer.
    let padded = format!(r#"{{"symbol":"BTC-PERP","side":"BUY","type":"LIMIT","price":"40000","quantity":"0.001","pad":"{}"}}"#, "x".repeat(100_000));
    let raw = send(&s, &order_request(&alice, "", &padded));
    assert_eq!(raw.status, 413, "{}", raw.head);
    json_error(&raw);
    assert!(raw.closed);

    // A body declared far past it is refused without being read.
    let claimed = format!("POST /v1/orders HTTP/1.1\r\nHost: x\r\nX-API-Key: {alice}\r\nContent-Length: 10000000000\r\n\r\n{ORDER}");
    let raw = send(&s, claimed.as_bytes());
    assert_eq!(raw.status, 413, "{}", raw.head);
    json_error(&raw);
    assert!(raw.closed);

    assert_eq!(state(), before, "nothing changed");
    assert_eq!(s.request("GET", "/health", &[], None).0, 200, "still serving");
}

#[test]
fn a_keep_alive_connection_whose_body_came_late_is_not_cut_by_the_header_timer() {
    let s = Server::start_with(&[("EXCHANGE_HEADER_TIMEOUT_SECS", "1"), ("EXCHANGE_IDLE_TIMEOUT_SECS", "30")]);
    let alice = s.funded("alice", "1000");
    let mut stream = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let request = order_request(&alice, "", ORDER);
    let split = request.len() - ORDER.len();
    // The headers, then the body a moment later (within the body's own deadline).
    stream.write_all(&request[..split]).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    stream.write_all(&request[split..]).unwrap();
    let first = read_response(&mut stream);
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(!first.closed);
    // Quiet for longer than the header timeout, well within the idle timeout: the
    // connection is idle, not a request that started and stalled.
    std::thread::sleep(Duration::from_millis(2_500));
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let second = read_response(&mut stream);
    assert_eq!(second.status, 200, "{}", second.body);
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn out_of_descriptors_the_accept_loop_backs_off_and_serving_resumes() {
    let s = Server::start();
    let pid = s.pid();
    // Room for a few more descriptors only.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
    let mut was = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    assert_eq!(unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut was) }, 0);
    let limit = libc::rlimit { rlim_cur: open + 8, rlim_max: was.rlim_max };
    assert_eq!(unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) }, 0);
    // More connections than that: the kernel completes them; accept fails (EMFILE).
    let held: Vec<TcpStream> = (0..40).filter_map(|_| TcpStream::connect(("127.0.0.1", s.port)).ok()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_seconds(pid) - before;
    assert!(spent < 0.5, "{spent:.2} CPU seconds in 2 s: the accept loop spins on its errors");
    // Descriptors back: the waiting connections are served, and new ones too.
    assert_eq!(unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &was, std::ptr::null_mut()) }, 0);
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.request("GET", "/health", &[], None).0 != 200 {
        assert!(std::time::Instant::now() < deadline, "not serving again");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn past_the_connection_cap_health_is_still_served_and_everything_else_answered_503() {
    // One core, four slots; reserved slots wait at most a second for a request.
    let s = Server::start_with(&[("EXCHANGE_CORES", "0"), ("EXCHANGE_MAX_CONNECTIONS", "4"), ("EXCHANGE_HEADER_TIMEOUT_SECS", "1")]);
    let key = s.funded("alice", "100000");
    let connect = || TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    // Every slot taken by connections that say nothing (for up to the idle timeout).
    let silent: Vec<TcpStream> = (0..4).map(|_| connect()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let health = send(&s, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(health.closed, "a reserved slot serves one request");
    assert_eq!(send(&s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").status, 200);
    let order = send(&s, &order_request(&key, "", ORDER));
    assert_eq!(order.status, 503, "{}", order.head);
    let error: serde_json::Value = serde_json::from_str(&order.body).unwrap();
    assert_eq!(error["code"], "UNAVAILABLE", "{error}");
    assert!(order.closed);
    // Past the reserve as well: answered at once, not dropped.
    let mut flood: Vec<TcpStream> = (0..40).map(|_| connect()).collect();
    let last = flood.last_mut().unwrap();
    let refused = read_response(last);
    assert_eq!((refused.status, refused.closed), (503, true), "{}", refused.head);
    drop((silent, flood));
    // Once the slots are free again, orders are served.
    let started = std::time::Instant::now();
    loop {
        let (status, body) = s.order(&key, ORDER);
        if status == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
