//! `GET /v1/stream` over the network with a real WebSocket client (tungstenite): channels,
//! `seq` without gaps, isolation between users, authentication, and a consumer that
//! never reads cut off while orders keep their latency.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::stream::MaybeTlsStream;
use async_tungstenite::tungstenite::{self, Message, WebSocket};
use common::Server;
use serde_json::{json, Value};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

fn connect(s: &Server, key: Option<&str>) -> Ws {
    let mut request = s.url("/v1/stream").replace("http://", "ws://").into_client_request().unwrap();
    if let Some(key) = key {
        request.headers_mut().insert("x-api-key", key.parse().unwrap());
    }
    let (ws, response) = tungstenite::connect(request).unwrap();
    assert_eq!(response.status(), 101);
    if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    ws
}

fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).unwrap();
}

/// The next text message, as JSON (pings are answered by the client on the way).
fn next(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("a message within 5 s") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(_) => panic!("closed"),
            _ => {}
        }
    }
}

/// Messages until one on `channel` satisfies `done`; returns all of that channel's.
fn until(ws: &mut Ws, channel: &str, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let m = next(ws);
        if m["channel"] == channel {
            let stop = done(&m);
            seen.push(m);
            if stop {
                return seen;
            }
        }
    }
}

fn subscribe(ws: &mut Ws, channels: &[&str]) {
    send(ws, json!({ "op": "subscribe", "channels": channels }));
    let reply = next(ws);
    assert_eq!(reply, json!({ "op": "subscribed", "channels": channels }));
}

fn trade(s: &Server, maker: &str, taker: &str, price: &str) {
    s.limit(maker, "SELL", price, "0.001");
    s.limit(taker, "BUY", price, "0.001");
}

#[test]
fn trades_and_depth_arrive_in_order_with_gapless_seq() {
    let s = Server::start();
    let alice = s.funded("alice", "100000");
    let bob = s.funded("bob", "100000");
    let mut ws = connect(&s, None);
    subscribe(&mut ws, &["trades:BTC-PERP", "depth:BTC-PERP"]);
    for i in 0..20 {
        trade(&s, &alice, &bob, &(50_000 + i).to_string());
    }
    let trades = until(&mut ws, "trades:BTC-PERP", |m| m["seq"] == 20);
    let seqs: Vec<u64> = trades.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "every trade, in order, no gap");
    let prices: Vec<String> = trades.iter().map(|m| m["data"]["price"].as_str().unwrap().to_owned()).collect();
    assert_eq!(prices.last().map(|p| p.parse::<f64>().unwrap()), Some(50_019.0));
    // The data is what GET /v1/trades says.
    let (_, rest) = s.request("GET", "/v1/trades?symbol=BTC-PERP&limit=1", &[], None);
    assert_eq!(trades.last().unwrap()["data"], rest[0]);
    // Depth: a resting order shows up in the next depth message, as GET /v1/depth has it.
    s.limit(&alice, "BUY", "49000", "0.005");
    let depth = until(&mut ws, "depth:BTC-PERP", |m| m["data"]["bids"].as_array().is_some_and(|b| !b.is_empty()));
    let (_, book) = s.request("GET", "/v1/depth?symbol=BTC-PERP&limit=20", &[], None);
    assert_eq!(depth.last().unwrap()["data"]["bids"], book["bids"]);
    let seqs: Vec<u64> = depth.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1) && seqs[0] >= 1, "depth seq counts on: {seqs:?}");
}

#[test]
fn each_connection_counts_its_own_seq_from_its_subscription() {
    let s = Server::start();
    let alice = s.funded("alice", "100000");
    let bob = s.funded("bob", "100000");
    // Several connections on every core (connections land on cores in turn): the
    // channel's messages are shared, each connection's seq is its own.
    let mut early: Vec<Ws> = (0..4).map(|_| connect(&s, None)).collect();
    for ws in &mut early {
        subscribe(ws, &["trades:BTC-PERP"]);
    }
    for i in 0..5 {
        trade(&s, &alice, &bob, &(50_000 + i).to_string());
    }
    let mut late = connect(&s, None);
    // The fifth trade reached the early ones before the late one subscribes.
    for ws in &mut early {
        until(ws, "trades:BTC-PERP", |m| m["seq"] == 5);
    }
    subscribe(&mut late, &["trades:BTC-PERP"]);
    for i in 5..8 {
        trade(&s, &alice, &bob, &(50_000 + i).to_string());
    }
    let tail = until(&mut late, "trades:BTC-PERP", |m| m["seq"] == 3);
    assert_eq!(tail.iter().map(|m| m["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3], "a late subscriber starts at 1");
    for ws in &mut early {
        let rest = until(ws, "trades:BTC-PERP", |m| m["seq"] == 8);
        assert_eq!(rest.iter().map(|m| m["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [6, 7, 8]);
        assert_eq!(rest.iter().map(|m| &m["data"]).collect::<Vec<_>>(), tail.iter().map(|m| &m["data"]).collect::<Vec<_>>(), "the same trades");
    }
    // Unsubscribed, a connection gets nothing more from the channel; others still do.
    send(&mut late, json!({ "op": "unsubscribe", "channels": ["trades:BTC-PERP"] }));
    assert_eq!(next(&mut late), json!({ "op": "unsubscribed", "channels": ["trades:BTC-PERP"] }));
    trade(&s, &alice, &bob, "50010");
    until(&mut early[0], "trades:BTC-PERP", |m| m["seq"] == 9);
    subscribe(&mut late, &["depth:BTC-PERP"]);
    s.limit(&alice, "BUY", "49000", "0.001");
    let m = next(&mut late);
    assert_eq!(m["channel"], "depth:BTC-PERP", "no trade after unsubscribing: {m}");
}

#[test]
fn a_user_sees_only_their_own_events_and_needs_a_key() {
    let s = Server::start();
    let alice = s.funded("alice", "100000");
    let bob = s.funded("bob", "100000");
    // Without a key the user channel is refused; an auth message then opens it.
    let mut anonymous = connect(&s, None);
    send(&mut anonymous, json!({ "op": "subscribe", "channels": ["user"] }));
    let refused = next(&mut anonymous);
    assert_eq!((refused["op"].as_str(), refused["code"].as_str()), (Some("error"), Some("UNAUTHORIZED")));
    send(&mut anonymous, json!({ "op": "auth", "apiKey": "0000000000000001.00" }));
    assert_eq!(next(&mut anonymous)["code"], "UNAUTHORIZED");
    send(&mut anonymous, json!({ "op": "auth", "apiKey": bob }));
    assert_eq!(next(&mut anonymous)["op"], "authenticated");
    subscribe(&mut anonymous, &["user"]);
    let mut ws = connect(&s, Some(&alice));
    subscribe(&mut ws, &["user"]);
    let order = s.limit(&alice, "SELL", "50000", "0.002");
    let id = order["orderId"].as_str().unwrap();
    s.limit(&bob, "BUY", "50000", "0.002");
    // Alice: her order resting, then filled, her fill, her position and balance.
    let mine = until(&mut ws, "user", |m| m["data"]["type"] == "balance" && m["data"].get("total").is_some() && m["seq"].as_u64() > Some(2));
    let kinds: Vec<&str> = mine.iter().map(|m| m["data"]["type"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"order") && kinds.contains(&"fill") && kinds.contains(&"position"), "{kinds:?}");
    let filled = mine.iter().find(|m| m["data"]["type"] == "order" && m["data"]["status"] == "FILLED").expect("the fill's order update");
    assert_eq!(filled["data"]["orderId"], id);
    let (_, balance) = s.get(&alice, "/v1/balance");
    assert_eq!(mine.last().unwrap()["data"]["total"], balance["total"]);
    let seqs: Vec<u64> = mine.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    // Bob's connection has only Bob's: none of Alice's order ids.
    let his = until(&mut anonymous, "user", |m| m["data"]["type"] == "balance" && m["seq"].as_u64() > Some(2));
    assert!(his.iter().all(|m| m["data"]["orderId"] != id), "bob sees alice's order: {his:?}");
    assert!(his.iter().any(|m| m["data"]["type"] == "fill"));
    // A wrong key on the upgrade itself: told, then closed.
    let mut wrong = connect(&s, Some("0000000000000001.00"));
    assert_eq!(next(&mut wrong)["code"], "UNAUTHORIZED");
}

#[test]
fn a_consumer_that_never_reads_is_cut_off_and_orders_keep_their_latency() {
    let s = Server::start_with(&[("EXCHANGE_STREAM_QUEUE_BYTES", "65536")]);
    let alice = s.funded("alice", "10000000");
    let bob = s.funded("bob", "10000000");
    // A full book, so that every depth message is large.
    for level in 0..20 {
        s.limit(&alice, "BUY", &(40_000 + level * 10).to_string(), "0.001");
        s.limit(&alice, "SELL", &(60_000 - level * 10).to_string(), "0.001");
    }
    let mut reader = connect(&s, None);
    subscribe(&mut reader, &["trades:BTC-PERP"]);
    let mut stalled = connect_small(&s);
    subscribe(&mut stalled, &["trades:BTC-PERP", "depth:BTC-PERP"]);
    let mut slowest = Duration::ZERO;
    let mut seqs = Vec::new();
    let rounds: u64 = 1_500;
    for i in 0..rounds {
        let started = Instant::now();
        trade(&s, &alice, &bob, &(50_000 + i % 50).to_string());
        slowest = slowest.max(started.elapsed());
        // The reading consumer keeps up.
        loop {
            match read_now(&mut reader) {
                Ok(Message::Text(t)) => {
                    let m: Value = serde_json::from_str(t.as_str()).unwrap();
                    seqs.push(m["seq"].as_u64().unwrap());
                }
                Ok(Message::Close(c)) => panic!("the reading consumer was closed: {c:?} after {} trades", seqs.len()),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
                Err(e) => panic!("the reading consumer failed: {e} after {} trades", seqs.len()),
            }
        }
    }
    assert!(slowest < Duration::from_secs(1), "an order waited {slowest:?} behind a stalled consumer");
    while seqs.last() != Some(&rounds) {
        seqs.push(next(&mut reader)["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, (1..=rounds).collect::<Vec<_>>(), "the reading consumer got every trade");
    // The stalled one was cut off: what it can still read ends in a close or an error.
    assert_closed_by_server(&mut stalled);
}

#[test]
fn idle_connections_are_pinged_and_dead_ones_closed() {
    let s = Server::start_with(&[("EXCHANGE_STREAM_PING_SECS", "1")]);
    let mut alive = connect(&s, None);
    let mut dead = connect(&s, None);
    // The live client reads (and so answers each ping); the dead one does nothing.
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(3_500) {
        match read_now(&mut alive) {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    assert!(pings >= 2, "pinged {pings} times in 3.5 s");
    subscribe(&mut alive, &["trades:BTC-PERP"]);
    loop {
        match dead.read() {
            Ok(Message::Ping(_)) => {}
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("a client that never answered is still connected")
            }
            // Told why, in the close frame.
            Ok(Message::Close(frame)) => {
                let frame = frame.expect("a close frame with a code");
                assert_eq!(u16::from(frame.code), 1001);
                assert!(frame.reason.contains("ping"), "{}", frame.reason);
                break;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => panic!("closed without a close frame: {e}"),
        }
    }
}

/// Reads what a connection the server cut off still holds, to its end (a Close or an
/// error); fails if it is only quiet (still open) or goes on for 10 s.
fn assert_closed_by_server(ws: &mut Ws) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ws.read() {
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("the connection is still open, only quiet: it was never cut off")
            }
            Ok(Message::Close(_)) | Err(_) => return,
            Ok(_) => assert!(Instant::now() < deadline, "the connection was never cut off"),
        }
    }
}

fn read_now(ws: &mut Ws) -> tungstenite::Result<Message> {
    if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        tcp.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    }
    let m = ws.read();
    if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    m
}

/// A stream connection whose socket has a 4 KiB receive buffer, set before it connects
/// (afterwards the window is already agreed): the kernel holds little of what it is not
/// reading, so the server's queue is what fills.
fn connect_small(s: &Server) -> Ws {
    let tcp = tcp_to(s, None, Some(4096));
    let request = s.url("/v1/stream").replace("http://", "ws://").into_client_request().unwrap();
    let (ws, _) = tungstenite::client(request, MaybeTlsStream::Plain(tcp)).unwrap();
    ws
}

/// A TCP connection to the server, from the local address `from` (any of 127/8) and with
/// the receive buffer given, both set before it connects.
fn tcp_to(s: &Server, from: Option<[u8; 4]>, receive_buffer: Option<libc::c_int>) -> TcpStream {
    use std::os::fd::FromRawFd;
    let addr: std::net::SocketAddrV4 = s.url("").trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
    let sockaddr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip) },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket, an int-sized option value, and sockaddr_ins for IPv4
    // addresses; the descriptor is owned by the TcpStream from here on.
    let tcp = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        if let Some(size) = receive_buffer {
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&size as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t);
        }
        if let Some(ip) = from {
            let local = sockaddr(ip, 0);
            let rc = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len);
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        }
        let remote = sockaddr(addr.ip().octets(), addr.port());
        let rc = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    };
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp
}

/// A stream upgrade from the local address `from`: the WebSocket, or the HTTP status and
/// JSON body that refused it.
fn upgrade_from(s: &Server, from: [u8; 4]) -> Result<Ws, (u16, Value)> {
    let request = s.url("/v1/stream").replace("http://", "ws://").into_client_request().unwrap();
    match tungstenite::client(request, MaybeTlsStream::Plain(tcp_to(s, Some(from), None))) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            let body = response.body().as_deref().map(|b| serde_json::from_slice(b).unwrap()).unwrap_or(Value::Null);
            Err((response.status().as_u16(), body))
        }
        Err(e) => panic!("upgrade: {e}"),
    }
}

#[test]
fn one_address_holds_at_most_its_share_of_streams_and_others_are_served() {
    let s = Server::start_with(&[("EXCHANGE_STREAM_PER_ADDRESS", "3")]);
    let alice = s.funded("alice", "100000");
    let mut held: Vec<Ws> = (0..3).map(|_| upgrade_from(&s, [127, 0, 0, 1]).expect("within the share")).collect();
    let refused = upgrade_from(&s, [127, 0, 0, 1]).err().expect("a fourth stream from one address is refused");
    assert_eq!((refused.0, refused.1["code"].as_str()), (429, Some("RATE_LIMITED")), "{refused:?}");
    // Everyone else is unaffected: another address, /health, orders.
    let mut other = upgrade_from(&s, [127, 0, 0, 2]).expect("another address");
    subscribe(&mut other, &["trades:BTC-PERP"]);
    assert_eq!(s.request("GET", "/health", &[], None).0, 200);
    s.limit(&alice, "BUY", "50000", "0.001");
    // A stream that closes gives its slot back.
    let mut closed = held.pop().unwrap();
    closed.close(None).unwrap();
    while closed.read().is_ok() {}
    let started = Instant::now();
    let again = loop {
        match upgrade_from(&s, [127, 0, 0, 1]) {
            Ok(ws) => break ws,
            Err(e) => assert!(started.elapsed() < Duration::from_secs(5), "the slot never came back: {e:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop((held, again));
}

#[test]
fn streams_never_take_the_slots_rest_and_health_need() {
    // One core with 20 slots: streams may take 18 of them.
    let s = Server::start_with(&[("EXCHANGE_CORES", "0"), ("EXCHANGE_MAX_CONNECTIONS", "20")]);
    let alice = s.funded("alice", "100000");
    let held: Vec<Ws> = (0..18).map(|i| upgrade_from(&s, [127, 0, 1, i]).expect("within the streams' share")).collect();
    let refused = upgrade_from(&s, [127, 0, 2, 0]).err().expect("past the streams' share");
    assert_eq!((refused.0, refused.1["code"].as_str()), (503, Some("UNAVAILABLE")), "{refused:?}");
    assert_eq!(s.request("GET", "/health", &[], None).0, 200);
    s.limit(&alice, "BUY", "50000", "0.001");
    drop(held);
}

#[test]
fn an_upgrade_that_does_not_arrive_whole_within_the_header_timeout_is_closed() {
    use std::io::{Read, Write};
    let s = Server::start_with(&[("EXCHANGE_HEADER_TIMEOUT_SECS", "1")]);
    let mut tcp = tcp_to(&s, None, None);
    tcp.write_all(b"GET /v1/stream HTTP/1.1\r\nHost: exchange\r\nUpgrade: websocket\r\n").unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tcp.read(&mut buf);
    assert!(matches!(read, Ok(0)) || read.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset), "{read:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "closed only after {:?}", started.elapsed());
}

#[test]
fn a_clients_close_is_answered_with_close() {
    let s = Server::start();
    let mut ws = connect(&s, None);
    subscribe(&mut ws, &["trades:BTC-PERP"]);
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(e) => panic!("no Close in answer: {e}"),
        }
    }
}

/// A subscribe message that asks for 64 channels that do not exist: 64 error answers
/// (about 6 KiB) for 1.3 KiB sent.
fn unknown_channels() -> Value {
    json!({ "op": "subscribe", "channels": (0..64).map(|i| format!("nope:{i}")).collect::<Vec<_>>() })
}

/// Polls `/metrics` until `series` (on lines with `label`) reaches `want`.
fn wait_metric(s: &Server, series: &str, label: &str, want: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = s.metric(series, label);
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "{series}{{{label}}} is {now}, not {want}, after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn answers_past_a_connections_bound_close_it_with_1008_and_the_reason() {
    let s = Server::start_with(&[("EXCHANGE_STREAM_QUEUE_BYTES", "2048")]);
    let mut ws = connect(&s, None);
    send(&mut ws, unknown_channels());
    let mut answers = 0;
    loop {
        match ws.read() {
            Ok(Message::Text(_)) => answers += 1,
            Ok(Message::Close(frame)) => {
                let frame = frame.expect("a close frame with a code");
                assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
                assert!(frame.reason.contains("2048 bytes"), "{}", frame.reason);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("closed without a close frame after {answers} answers: {e}"),
        }
    }
    assert!(answers < 64, "all {answers} answers were sent past a 2 KiB bound");
    wait_metric(&s, "exchange_stream_connections_cut_total", "behind", 1, Duration::from_secs(2));
    wait_metric(&s, "exchange_stream_connections", "", 0, Duration::from_secs(2));
}

#[test]
fn a_peer_that_stops_reading_is_closed_at_its_write_deadline_and_others_are_served() {
    let s = Server::start_with(&[("EXCHANGE_STREAM_WRITE_TIMEOUT_MS", "500")]);
    let alice = s.funded("alice", "100000");
    let mut reader = connect(&s, None);
    subscribe(&mut reader, &["trades:BTC-PERP"]);
    // Never reads: its answers (about 600 KiB, far below the 4 MiB bound) fill its 4 KiB
    // window and the server's 64 KiB send buffer, and the writer waits on the socket.
    let mut stalled = connect_small(&s);
    for _ in 0..100 {
        send(&mut stalled, unknown_channels());
    }
    let sent = Instant::now();
    wait_metric(&s, "exchange_stream_connections_cut_total", "stalled", 1, Duration::from_secs(5));
    wait_metric(&s, "exchange_stream_connections", "", 1, Duration::from_secs(2));
    assert!(sent.elapsed() < Duration::from_secs(5), "closed {:?} after it stopped reading", sent.elapsed());
    assert_eq!(s.metric("exchange_stream_connections_cut_total", "behind"), 0, "cut by its deadline, not its bound");
    // The reading client is still served.
    let bob = s.funded("bob", "100000");
    trade(&s, &alice, &bob, "50000");
    let m = until(&mut reader, "trades:BTC-PERP", |_| true);
    let (_, rest) = s.request("GET", "/v1/trades?symbol=BTC-PERP&limit=1", &[], None);
    assert_eq!(m[0]["data"], rest[0]);
    // What the stalled one can still read ends: the server is gone.
    assert_closed_by_server(&mut stalled);
}

#[test]
fn a_keep_alive_connection_upgrades_on_a_later_request() {
    use std::io::{BufRead, BufReader, Read, Write};
    let s = Server::start();
    let alice = s.funded("alice", "100000");
    let bob = s.funded("bob", "100000");
    let mut tcp = tcp_to(&s, None, None);
    // Two plain requests on the connection first.
    for _ in 0..2 {
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: exchange\r\n\r\n").unwrap();
        let mut reader = BufReader::new(&tcp);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header == "\r\n" {
                break;
            }
            if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        assert!(reader.buffer().is_empty(), "nothing after the answer");
    }
    // Then the upgrade, on the same connection.
    let request = s.url("/v1/stream").replace("http://", "ws://").into_client_request().unwrap();
    let (mut ws, response) = tungstenite::client(request, MaybeTlsStream::Plain(tcp)).expect("upgraded on the third request");
    assert_eq!(response.status(), 101);
    subscribe(&mut ws, &["trades:BTC-PERP"]);
    trade(&s, &alice, &bob, "50000");
    let m = until(&mut ws, "trades:BTC-PERP", |_| true);
    assert_eq!(m[0]["seq"], 1);
}

#[test]
fn a_stream_request_that_is_not_an_upgrade_is_answered_with_a_clear_error() {
    let s = Server::start();
    let (status, body) = s.request("GET", "/v1/stream", &[], None);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "INVALID_REQUEST");
    assert!(body["message"].as_str().unwrap().contains("WebSocket"), "{body}");
    let (status, _) = s.request("POST", "/v1/stream", &[], Some("{}"));
    assert_eq!(status, 405);
    assert_eq!(s.metric("exchange_stream_connections_opened_total", ""), 0);
}

#[test]
fn a_users_order_updates_come_in_the_order_of_their_events() {
    let s = Server::start();
    let alice = s.funded("alice", "100000");
    let bob = s.funded("bob", "100000");
    let first = s.limit(&alice, "SELL", "50000", "0.001")["orderId"].as_str().unwrap().to_owned();
    let second = s.limit(&alice, "SELL", "50001", "0.001")["orderId"].as_str().unwrap().to_owned();
    let mut ws = connect(&s, Some(&alice));
    subscribe(&mut ws, &["user"]);
    // One taker order fills both, best price first: two trades, in that order.
    s.limit(&bob, "BUY", "50001", "0.002");
    let mine = until(&mut ws, "user", |m| m["data"]["type"] == "balance");
    let filled: Vec<&str> = mine.iter().filter(|m| m["data"]["type"] == "order").map(|m| m["data"]["orderId"].as_str().unwrap()).collect();
    assert_eq!(filled, [first.as_str(), second.as_str()], "order updates in the order of their trades");
    let fills: Vec<&str> = mine.iter().filter(|m| m["data"]["type"] == "fill").map(|m| m["data"]["orderId"].as_str().unwrap()).collect();
    assert_eq!(fills, [first.as_str(), second.as_str()]);
}

#[test]
fn a_connection_reading_many_channels_gets_each_ticks_messages_in_one_write() {
    let s = Server::start();
    let alice = s.funded("alice", "100000");
    let bob = s.funded("bob", "100000");
    for i in 0..8 {
        s.limit(&alice, "SELL", &(50_000 + i).to_string(), "0.001");
    }
    let mut ws = connect(&s, Some(&bob));
    subscribe(&mut ws, &["trades:BTC-PERP", "depth:BTC-PERP", "user"]);
    let (writes, messages) = (s.metric("exchange_stream_writes_total", ""), s.metric("exchange_stream_messages_total", ""));
    // One taker order, eight trades: each trade and each of bob's order, fill, balance
    // and position messages on three channels, from the cores that own the symbol and
    // bob's account.
    s.limit(&bob, "BUY", "50007", "0.008");
    let mut received = 0;
    let (mut trades, mut balance) = (0, false);
    while trades < 8 || !balance {
        let m = next(&mut ws);
        received += 1;
        trades += usize::from(m["channel"] == "trades:BTC-PERP");
        balance |= m["channel"] == "user" && m["data"]["type"] == "balance";
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while s.metric("exchange_stream_messages_total", "") - messages < received {
        assert!(Instant::now() < deadline, "the server counted fewer messages than were received");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = s.metric("exchange_stream_messages_total", "") - messages;
    let written = s.metric("exchange_stream_writes_total", "") - writes;
    assert!(sent >= 18, "eight trades, eight fills, order updates, balance: {sent} messages");
    assert!(written >= 1 && written * 4 <= sent, "{sent} messages took {written} socket writes, not one per tick");
}

/// `exchange_stream_delay_seconds` over every shard: (bucket bound in seconds, writes at
/// or under it), `+Inf` last.
fn delay_buckets(s: &Server) -> Vec<(f64, i64)> {
    let (_, metrics) = s.request("GET", "/metrics", &[], None);
    let mut buckets: Vec<(f64, i64)> = Vec::new();
    for line in metrics.as_str().unwrap_or_default().lines().filter(|l| l.starts_with("exchange_stream_delay_seconds_bucket{")) {
        let le = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() };
        let count: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => buckets.push((le, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

#[test]
fn each_write_reports_how_long_its_oldest_message_waited_on_the_server() {
    let s = Server::start();
    let alice = s.funded("alice", "100000");
    let bob = s.funded("bob", "100000");
    let mut ws = connect(&s, Some(&bob));
    subscribe(&mut ws, &["trades:BTC-PERP", "user"]);
    let before = delay_buckets(&s);
    assert!(!before.is_empty(), "the histogram is exported");
    // A delay counted from anything before the orders (the subscription, the last write)
    // would be a second too long.
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    trade(&s, &alice, &bob, "50000");
    let mut trades = 0;
    let mut balance = false;
    while trades < 1 || !balance {
        let m = next(&mut ws);
        trades += usize::from(m["channel"] == "trades:BTC-PERP");
        balance |= m["channel"] == "user" && m["data"]["type"] == "balance";
    }
    // The writer records its write once the socket took it: the client may read it first.
    let deadline = Instant::now() + Duration::from_secs(2);
    let writes = loop {
        let after = delay_buckets(&s);
        let writes = after.last().unwrap().1 - before.last().unwrap().1;
        if writes >= 1 || Instant::now() > deadline {
            break (after, writes);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (after, count) = writes;
    // From before the orders to after the writes were recorded: none of them can have
    // waited longer on the server.
    let bound = started.elapsed().as_secs_f64();
    assert!(count >= 1, "the writes that carried the trade and the balance were recorded");
    let within = |buckets: &[(f64, i64)]| buckets.iter().find(|(le, _)| *le >= bound).map(|b| b.1).unwrap();
    assert_eq!(within(&after) - within(&before), count, "every recorded write waited at most the {bound:.4} s the client saw");
}
