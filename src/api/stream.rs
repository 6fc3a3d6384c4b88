//! `GET /v1/stream`: the WebSocket API (API.md, "Streams").
//!
//! hyper answers the upgrade (on any request of a keep-alive connection: [`upgrade`]) with
//! 101 and hands the socket back (`without_shutdown`: its own upgrade path needs a `Send`
//! socket, which glommio's are not); `async-tungstenite` then frames the session on the
//! core that accepted it ([`serve`]). Each core has one [`Hub`]: the [`Feed`] the
//! shard layer hands every durable result to (see `shard::projections::feed`). A result is rendered
//! once per core, not once per connection; each subscriber of its channel gets the
//! rendered text with its own next `seq` appended to its queue (a copy, no allocation).
//!
//! All stream work runs in its own task queue with a tenth of the order path's share. Queues are written at most
//! once a millisecond (the hub's flush tick wakes the connections that have something);
//! when the core has little to spare the ticks come later and each write carries more,
//! so a busy core writes less often instead of falling behind message by message.
//!
//! A connection's queue is bounded in bytes (`EXCHANGE_STREAM_QUEUE_BYTES`, 4 MiB): a
//! consumer that falls that far behind is cut off (a close frame, then the socket), never
//! waited for, so it slows neither the matching path nor the other consumers. A
//! connection nothing was heard from for `EXCHANGE_STREAM_PING_SECS` is pinged, and one
//! that has sent nothing (not even a pong) for twice that is closed.
//!
//! Channels: `trades:<symbol>` (each public trade, as in `GET /v1/trades`),
//! `depth:<symbol>` (the top 20 levels as in `GET /v1/depth` after a change, coalesced to
//! at most one a millisecond), `user` (the user's order updates in the REST shape, fills,
//! balance, position and funding, each `data` with a `type`; needs the upgrade's
//! `X-API-Key` or an `auth` message).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Message, Utf8Bytes};
use async_tungstenite::WebSocketStream;
use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request as HttpRequest, Response};
use futures_util::{SinkExt, StreamExt};
use rustc_hash::FxHashMap;
use serde::Deserialize;

use super::admission::Admitted;
use super::binance::stream as binance;
use super::error::{invalid, ApiError};
use super::render;
use super::service::Service;
use crate::engine::{Event, UserId};
use crate::health::{Followed, Health};
use crate::metrics::{Metrics, ReasonLabel};
use crate::shard::projections::feed::Feed;
use crate::shard::projections::Projections;
use crate::shard::protocol::{Answer, ApiRequest, Depth, MarketNews, MarketPrices, Reply, Request, UserMessages};
use crate::shard::Shard;
use crate::shard_map::ShardMap;

/// The largest message a client may send (subscriptions are small).
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

/// tungstenite's read buffer per connection.
const READ_BUFFER: usize = 4 * 1024;

/// The stream endpoint's path.
pub const PATH: &str = "/v1/stream";

/// A stream upgrade the HTTP side answered 101: the key it came with and its admission
/// slot, held for the session's life.
pub struct Upgrade {
    api_key: Option<String>,
    /// A Binance-dialect session: its connection, already in the hub with what its path
    /// named (streams, a listen key's user stream) before the 101 is sent, so that the
    /// client gets everything from its 101 on.
    binance: Option<Registered>,
    _admitted: Admitted,
}

/// Whether a request is for a stream: [`PATH`], or one of the Binance dialect's
/// WebSocket paths ([`binance::connect`]).
pub fn is_stream(uri: &hyper::Uri) -> bool {
    uri.path() == PATH || binance::connect(uri.path(), uri.query().unwrap_or_default()).is_some()
}

/// Answers a request for [`PATH`], on any request of a connection: 101 with the
/// WebSocket accept key (RFC 6455) when it is an upgrade and admission lets it in (see
/// [`super::admission`]), the API's JSON error otherwise. The session starts once hyper
/// has sent the 101 and handed the socket back ([`serve`]).
pub fn upgrade(service: &Service, req: &HttpRequest<Incoming>, peer: IpAddr) -> Result<(Response<Full<Bytes>>, Upgrade), ApiError> {
    if service.hub.is_none() {
        return Err(ApiError::NotFound);
    }
    if req.method() != hyper::Method::GET {
        return Err(ApiError::MethodNotAllowed);
    }
    let uri = req.uri();
    let binance = match binance::connect(uri.path(), uri.query().unwrap_or_default()).filter(|_| uri.path() != PATH) {
        None => None,
        Some(connect) => {
            let listener = match &connect.listen_key {
                None => None,
                Some(key) => {
                    let signing = service.shard.config.signing_secret.as_deref().unwrap_or_default();
                    let user = binance::listen_user(signing.as_bytes(), key)
                        .filter(|u| service.listen_keys.valid(*u, crate::shard::core::now_ms()))
                        .ok_or_else(|| invalid("unknown or expired listenKey"))?;
                    Some((user, key.clone()))
                }
            };
            Some((connect, listener))
        }
    };
    let headers = req.headers();
    let lists = |name: &str, token: &str| {
        headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    let key = headers.get("sec-websocket-key").map(|k| k.as_bytes());
    let version = headers.get("sec-websocket-version").and_then(|v| v.to_str().ok());
    let Some(key) = key.filter(|_| lists("connection", "upgrade") && lists("upgrade", "websocket") && version == Some("13")) else {
        return Err(invalid("a stream is a WebSocket: it needs Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key"));
    };
    let admitted = service.admission.admit_stream(peer, service.shard.id)?;
    let binance = match (binance, &service.hub) {
        (Some((connect, listener)), Some(hub)) => Some(hub.register_binance(&connect, listener)),
        _ => None,
    };
    let switching = Response::builder()
        .status(hyper::StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key))
        .body(Full::new(Bytes::new()))
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok((switching, Upgrade { api_key, binance, _admitted: admitted }))
}

/// The WebSocket session of an upgraded connection, on the core that accepted it
/// (framing and masking by `async-tungstenite`); the admission slot is given back when
/// it ends.
pub async fn serve<S>(service: Rc<Service>, socket: S, mut upgrade: Upgrade)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let Some(hub) = service.hub.clone() else { return };
    let socket = Counted { inner: socket, writes: hub.metrics.stream_writes.clone() };
    // tungstenite zeroes a read buffer's worth before every read attempt: clients send
    // little, so a small one (its default is 128 KiB).
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
        .read_buffer_size(READ_BUFFER);
    let mut ws = WebSocketStream::from_raw_socket(socket, Role::Server, Some(config)).await;
    let shard = service.shard.clone();
    if let Some(registered) = upgrade.binance.take() {
        let session = session(hub.clone(), ws, registered, Dialect::Binance);
        match glommio::spawn_local_into(session, hub.queue) {
            Ok(task) => task.await,
            Err(e) => tracing::error!(error = %e, "stream session not started"),
        }
        return;
    }
    let user = match &upgrade.api_key {
        Some(k) => match authenticate(&shard, k).await {
            Some(user) => Some(user),
            None => {
                let refused = serde_json::json!({ "op": "error", "code": "UNAUTHORIZED", "message": "missing or invalid key" });
                let _ = ws.send(Message::text(refused.to_string())).await;
                let _ = ws.close(None).await;
                return;
            }
        },
        None => None,
    };
    // The session runs in the stream task queue; this task (the connection's) waits for it.
    match glommio::spawn_local_into(native_session(hub.clone(), shard, ws, user), hub.queue) {
        Ok(task) => task.await,
        Err(e) => tracing::error!(error = %e, "stream session not started"),
    }
    drop(upgrade);
}

async fn authenticate(shard: &Rc<Shard>, key: &str) -> Option<UserId> {
    let user = crate::accounts::user_of_key(key)?;
    match shard.ask(shard.account_owner(user), Request::Api(ApiRequest::authenticate(key))).await {
        Some(Reply::Api(Ok(Answer::User(u)))) => Some(u),
        _ => None,
    }
}

/// A wake-up one task waits for: [`Signal::notify`] sets it and wakes the waiter; a
/// notify with nobody waiting is kept for the next wait.
#[derive(Default)]
struct Signal {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// A public channel (`trades:S`, `depth:S`) on one core: its recent messages, rendered
/// once for every subscriber. A subscriber is a cursor into the log; only the `seq` is
/// its own, written as its messages are copied out. Publishing a message is the same
/// work for one subscriber or ten thousand.
struct Channel {
    name: String,
    /// The symbol it follows, and what of it.
    symbol: usize,
    followed: Followed,
    /// A Binance stream: its messages are whole events, sent as they are or, on a
    /// combined connection, wrapped after `head`.
    binance: bool,
    /// `{"channel":"<name>","seq":` (native), `{"stream":"<name>","data":` (Binance).
    head: String,
    /// Rendered messages after their `seq`: `,"data":{...}}`; `log[0]` is number `first`.
    log: RefCell<VecDeque<Bytes>>,
    first: Cell<u64>,
    bytes: Cell<usize>,
    subscribers: RefCell<Vec<Rc<Conn>>>,
    /// Has messages its subscribers were not yet woken for.
    dirty: Cell<bool>,
    /// When the oldest of those reached this core's stream side.
    since: Cell<Option<Instant>>,
}

impl Channel {
    fn end(&self) -> u64 {
        self.first.get() + self.log.borrow().len() as u64
    }
}

/// A connection's place in a public channel: the next message to send, and the number
/// of the message before its first (`seq` = number − `base`).
struct Cursor {
    channel: Rc<Channel>,
    next: Cell<u64>,
    base: u64,
}

/// One connection's side of the hub.
struct Conn {
    id: u64,
    /// A Binance connection of the combined form (`/stream?streams=`).
    combined: bool,
    /// A Binance user data stream: its user and listen key.
    listener: Option<(UserId, String)>,
    user: Cell<Option<UserId>>,
    cursors: RefCell<Vec<Cursor>>,
    /// Subscribed to its user's `user` channel (the hub holds that subscription).
    user_channel: Cell<bool>,
    /// Its own messages not yet written (answers, `user`), back to back, and where
    /// each ends.
    out: RefCell<BytesMut>,
    ends: RefCell<Vec<usize>>,
    limit: usize,
    /// Bytes its writer has taken from the queue and not yet handed to the socket: they
    /// count against `limit` with the queue until the write finishes.
    in_flight: Cell<usize>,
    /// When the write round in progress started (`None`: not writing).
    writing_since: Cell<Option<Instant>>,
    /// To be closed, and why; nothing more is queued once set.
    ended: Cell<Option<Why>>,
    ping_due: Cell<bool>,
    /// In the hub's list of connections with messages of their own to write.
    dirty: Cell<bool>,
    /// When the oldest message it has not yet written reached this core's stream side.
    since: Cell<Option<Instant>>,
    last_heard: Cell<Instant>,
    last_ping: Cell<Instant>,
    /// Something to write or to close: the writer's wake-up (the hub's flush tick).
    ready: Signal,
    /// Told when the connection is cut, so a writer stuck on a full socket stops.
    cut_off: Signal,
}

/// Why the server closes a stream connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    /// More than its bound queued, or behind a channel's retained messages.
    Behind,
    /// A write that did not finish within the write deadline (a peer that does not read
    /// and whose window is shut).
    Stalled,
    /// Nothing heard for two ping intervals.
    Silent,
    /// The core fell so far behind that messages for it were dropped (see
    /// `shard::rpc`): the client reconnects and starts afresh.
    Overloaded,
    /// A Binance user data stream whose listen key expired or was closed.
    Expired,
}

impl Why {
    fn label(self) -> &'static str {
        match self {
            Self::Behind => "behind",
            Self::Stalled => "stalled",
            Self::Silent => "silent",
            Self::Overloaded => "overloaded",
            Self::Expired => "expired",
        }
    }

    /// The Close frame that says so: 1008 for a reader too slow, 1001 for a silent one.
    fn frame(self, hub: &Hub) -> CloseFrame {
        match self {
            Self::Behind => CloseFrame { code: CloseCode::Policy, reason: format!("too far behind: more than {} bytes queued", hub.queue_bytes).into() },
            Self::Stalled => CloseFrame { code: CloseCode::Policy, reason: format!("not reading: a write waited {} ms", hub.write_deadline.as_millis()).into() },
            Self::Silent => CloseFrame { code: CloseCode::Away, reason: "no answer to pings".into() },
            Self::Overloaded => CloseFrame { code: CloseCode::Again, reason: "messages were lost: reconnect".into() },
            Self::Expired => CloseFrame { code: CloseCode::Normal, reason: "listenKey expired".into() },
        }
    }
}

impl Conn {
    /// Marks the connection to be closed: its queue is freed now, its writer woken (and
    /// stopped if stuck on a full socket).
    fn cut_now(&self, why: Why) {
        if self.ended.get().is_none() {
            self.ended.set(Some(why));
            *self.out.borrow_mut() = BytesMut::new();
            *self.ends.borrow_mut() = Vec::new();
            self.cut_off.notify();
            self.ready.notify();
        }
    }

    /// Queues one message of its own, its text in `parts`; `false` if the connection is
    /// cut off (now or before). The queue past its bound cuts the connection: it is
    /// never waited for.
    fn push(&self, parts: &[&[u8]]) -> bool {
        if self.ended.get().is_some() {
            return false;
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut out = self.out.borrow_mut();
        if out.len() + self.in_flight.get() + len > self.limit {
            drop(out);
            self.cut_now(Why::Behind);
            return false;
        }
        for p in parts {
            out.extend_from_slice(p);
        }
        self.ends.borrow_mut().push(out.len());
        true
    }

    /// What there is to write, up to about `WRITE_BATCH` bytes: its own messages, then
    /// each channel's new ones, as messages sharing one buffer; and whether more is left.
    fn take(&self) -> (Vec<Utf8Bytes>, bool) {
        let mut out = self.out.borrow_mut();
        let mut ends = self.ends.borrow_mut();
        let mut digits = itoa::Buffer::new();
        let mut more = false;
        for cursor in self.cursors.borrow().iter() {
            let channel = &cursor.channel;
            let (log, first, end) = (channel.log.borrow(), channel.first.get(), channel.end());
            let mut n = cursor.next.get().max(first);
            while n < end && out.len() < WRITE_BATCH {
                let message = &log[(n - first) as usize];
                match (channel.binance, self.combined) {
                    (false, _) => {
                        out.extend_from_slice(channel.head.as_bytes());
                        out.extend_from_slice(digits.format(n - cursor.base).as_bytes());
                        out.extend_from_slice(message);
                    }
                    (true, true) => {
                        out.extend_from_slice(channel.head.as_bytes());
                        out.extend_from_slice(message);
                        out.extend_from_slice(b"}");
                    }
                    (true, false) => out.extend_from_slice(message),
                }
                ends.push(out.len());
                n += 1;
            }
            cursor.next.set(n);
            more |= n < end;
        }
        let buf = out.split().freeze();
        let mut start = 0;
        let mut messages = Vec::with_capacity(ends.len());
        for end in ends.drain(..) {
            // Whole messages of UTF-8 text: the check cannot fail.
            if let Ok(text) = Utf8Bytes::try_from(buf.slice(start..end)) {
                messages.push(text);
            }
            start = end;
        }
        (messages, more)
    }

    fn cursor_next(&self, channel: &Channel) -> Option<u64> {
        self.cursors.borrow().iter().find(|c| std::ptr::eq(&*c.channel, channel)).map(|c| c.next.get())
    }
}

/// A connection's subscription to its user's `user` channel (native: with the last `seq`
/// sent), or its Binance user data stream.
struct Sub {
    conn: Rc<Conn>,
    seq: u64,
    binance: bool,
}

/// One core's stream connections.
pub struct Hub {
    map: Arc<ShardMap>,
    health: Arc<Health>,
    metrics: Metrics,
    /// This core's `exchange_stream_delay_seconds`.
    delay: prometheus_client::metrics::histogram::Histogram,
    queue_bytes: usize,
    /// How long one write round may wait for the socket before the peer counts as not
    /// reading.
    write_deadline: Duration,
    ping: Duration,
    listen_keys: Arc<binance::ListenKeys>,
    next_id: Cell<u64>,
    conns: RefCell<Vec<Rc<Conn>>>,
    /// Public channels with a subscriber on this core.
    channels: RefCell<FxHashMap<String, Rc<Channel>>>,
    /// Subscribers of each user's `user` channel.
    users: RefCell<FxHashMap<UserId, Vec<Sub>>>,
    /// Channels and connections with something new since the last flush tick.
    dirty_channels: RefCell<Vec<Rc<Channel>>>,
    dirty: RefCell<Vec<Rc<Conn>>>,
    tick: Signal,
    /// Per symbol, the book after its latest change since the last tick: depth goes out
    /// at most once a tick.
    depth: RefCell<FxHashMap<usize, (Depth, Instant)>>,
    /// Results handed over by the shard, not yet fanned out: the order path only queues
    /// them; the publisher task renders and distributes them.
    inbox: RefCell<VecDeque<Item>>,
    inbox_ready: Signal,
    /// The task queue all stream work runs in: a small share of the core, below the
    /// order path's, so fan-out takes what the order path leaves and never the reverse.
    queue: glommio::TaskQueueHandle,
}

/// What the publisher has to fan out.
enum Item {
    Market(MarketNews, Instant),
    User { user: UserId, messages: UserMessages, at: Instant },
}

/// Keeps the earlier of `cell` and `at`.
fn earliest(cell: &Cell<Option<Instant>>, at: Option<Instant>) {
    if let Some(at) = at {
        cell.set(Some(cell.get().map_or(at, |t| t.min(at))));
    }
}

/// The stream task queue's share of its core against the default queue's 1,000.
const STREAM_SHARES: usize = 100;
/// Connections are written at most once a tick: messages that arrive meanwhile go out
/// in one write. Ticks are this far apart, or further when the last one's writes took
/// more than `1 / STREAM_BUDGET_INVERSE` of the time (up to `MAX_FLUSH_EVERY`).
const FLUSH_EVERY: Duration = Duration::from_millis(1);
const STREAM_BUDGET_INVERSE: u32 = 3;
const MAX_FLUSH_EVERY: Duration = Duration::from_millis(250);
/// About how much one write round of a connection carries (half its socket's send
/// buffer).
const WRITE_BATCH: usize = 32 * 1024;

/// Spaces the flush ticks by what stream work took since the previous one (the writes it
/// started, with the kernel's sends they made): fan-out keeps to about a third of the
/// core, and more connections mean fewer, larger writes. The stream queue's runtime is
/// cumulative, so each tick takes the difference from the last: spacing by the total
/// would stretch the ticks to their ceiling after a while of any load, and keep them
/// there for good.
#[derive(Default)]
struct Pacing {
    /// The stream queue's cumulative runtime at the last tick.
    ran: Duration,
}

impl Pacing {
    /// The spacing after a tick, given the stream queue's cumulative runtime now.
    fn next(&mut self, ran: Duration) -> Duration {
        let spent = ran.saturating_sub(self.ran);
        self.ran = ran;
        FLUSH_EVERY.max(spent * STREAM_BUDGET_INVERSE).min(MAX_FLUSH_EVERY)
    }
}

impl Hub {
    /// The hub of this core (call on its executor): starts its publisher, flush and ping
    /// tasks.
    pub fn new(shard: &Shard, listen_keys: Arc<binance::ListenKeys>) -> Rc<Self> {
        let queue = glommio::executor().create_task_queue(glommio::Shares::Static(STREAM_SHARES), glommio::Latency::NotImportant, "streams");
        let hub = Rc::new(Self {
            map: shard.map.clone(),
            health: shard.health.clone(),
            metrics: shard.all_metrics.clone(),
            delay: shard.metrics.stream_delay_seconds.clone(),
            queue_bytes: shard.config.limits.stream_queue_bytes,
            write_deadline: Duration::from_millis(shard.config.limits.stream_write_timeout_ms.max(1)),
            ping: Duration::from_secs(shard.config.limits.stream_ping_secs.max(1)),
            listen_keys,
            next_id: Cell::new(0),
            conns: RefCell::default(),
            channels: RefCell::default(),
            users: RefCell::default(),
            dirty_channels: RefCell::default(),
            dirty: RefCell::default(),
            tick: Signal::default(),
            depth: RefCell::default(),
            inbox: RefCell::default(),
            inbox_ready: Signal::default(),
            queue,
        });
        let weak = Rc::downgrade(&hub);
        hub.spawn(async move {
            loop {
                let Some(hub) = weak.upgrade() else { return };
                hub.inbox_ready.wait().await;
                loop {
                    let item = hub.inbox.borrow_mut().pop_front();
                    let Some(item) = item else { break };
                    match item {
                        Item::Market(news, at) => hub.publish_market(news, at),
                        Item::User { user, messages, at } => hub.publish_user(user, &messages, at),
                    }
                    glommio::yield_if_needed().await;
                }
            }
        });
        let weak = Rc::downgrade(&hub);
        hub.spawn(async move {
            let (mut last, mut every, mut pacing) = (Instant::now(), FLUSH_EVERY, Pacing::default());
            loop {
                let Some(hub) = weak.upgrade() else { return };
                hub.tick.wait().await;
                let since = last.elapsed();
                if since < every {
                    glommio::timer::sleep(every - since).await;
                }
                last = Instant::now();
                hub.flush();
                let ran = glommio::executor().task_queue_stats(hub.queue).map(|s| s.runtime()).unwrap_or_default();
                every = pacing.next(ran);
            }
        });
        let weak = Rc::downgrade(&hub);
        // One timer for every connection's ping and write deadlines: glommio's timers
        // are costly to cancel with many sockets polled, so none is armed per write. A
        // stuck write is found at most a tenth of its deadline late (a pass over 10,000
        // connections is a few tens of microseconds).
        let every = (hub.ping / 4).min(hub.write_deadline / 10).min(Duration::from_secs(1));
        hub.spawn(async move {
            loop {
                glommio::timer::sleep(every).await;
                let Some(hub) = weak.upgrade() else { return };
                hub.check_deadlines();
            }
        });
        hub
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + 'static) {
        match glommio::spawn_local_into(task, self.queue) {
            Ok(t) => drop(t.detach()),
            Err(e) => tracing::error!(error = %e, "stream task not started"),
        }
    }

    fn post(&self, item: Item) {
        self.inbox.borrow_mut().push_back(item);
        self.inbox_ready.notify();
    }

    /// The flush tick: depth rendered, every connection with something new woken, and
    /// each channel's log cut to what a subscriber still needs (and to its bound: a
    /// subscriber behind that is cut off).
    fn flush(&self) {
        self.publish_depth();
        for ch in std::mem::take(&mut *self.dirty_channels.borrow_mut()) {
            ch.dirty.set(false);
            let since = ch.since.take();
            let subscribers = ch.subscribers.borrow();
            let needed = subscribers.iter().filter_map(|c| c.cursor_next(&ch)).min().unwrap_or(ch.end());
            let mut log = ch.log.borrow_mut();
            while ch.first.get() < needed || ch.bytes.get() > self.queue_bytes {
                let Some(m) = log.pop_front() else { break };
                ch.bytes.set(ch.bytes.get() - m.len());
                ch.first.set(ch.first.get() + 1);
            }
            drop(log);
            for c in subscribers.iter() {
                if c.cursor_next(&ch).is_some_and(|next| next < ch.first.get()) {
                    c.cut_now(Why::Behind);
                }
                earliest(&c.since, since);
                c.ready.notify();
            }
        }
        for c in std::mem::take(&mut *self.dirty.borrow_mut()) {
            c.dirty.set(false);
            c.ready.notify();
        }
    }

    /// Appends a message to a public channel, if anyone here follows it.
    /// `at`: when the result it renders reached this core's stream side.
    fn broadcast(&self, channel: &str, at: Instant, data: impl FnOnce() -> String) {
        let Some(ch) = self.channels.borrow().get(channel).cloned() else { return };
        let tail = if ch.binance { Bytes::from(data()) } else { Bytes::from(format!(r#","data":{}}}"#, data())) };
        ch.bytes.set(ch.bytes.get() + tail.len());
        ch.log.borrow_mut().push_back(tail);
        earliest(&ch.since, Some(at));
        if !ch.dirty.replace(true) {
            self.dirty_channels.borrow_mut().push(ch);
            self.tick.notify();
        }
    }

    /// A connection's own message (answers to its control messages).
    fn reply(&self, conn: &Rc<Conn>, text: &str) {
        if conn.push(&[text.as_bytes()]) {
            self.mark(conn);
        }
    }

    fn mark(&self, conn: &Rc<Conn>) {
        if !conn.dirty.replace(true) {
            self.dirty.borrow_mut().push(conn.clone());
            self.tick.notify();
        }
    }

    fn publish_market(&self, news: MarketNews, at: Instant) {
        let MarketNews { symbol, trades, depth, diff, prices } = news;
        let spec = &self.map.symbols[symbol];
        let lower = binance::lower(spec);
        if !trades.is_empty() {
            let (channel, now) = (format!("trades:{}", spec.name), crate::shard::core::now_ms());
            let (plain, agg) = (format!("{lower}@trade"), format!("{lower}@aggTrade"));
            for trade in &trades {
                self.broadcast(&channel, at, || render::public_trade(spec, trade).to_string());
                self.broadcast(&plain, at, || binance::trade(spec, trade, now));
                self.broadcast(&agg, at, || binance::agg_trade(spec, trade, now));
            }
        }
        if let Some(diff) = diff {
            for name in binance::names(&lower, binance::Kind::Depth) {
                self.broadcast(&name, at, || binance::depth_update(spec, &diff));
            }
        }
        if let Some(prices) = prices {
            for name in binance::names(&lower, binance::Kind::MarkPrice) {
                self.broadcast(&name, at, || binance::mark_price_update(spec, &prices));
            }
        }
        if let Some(depth) = depth {
            // The latest book, since the first change not yet sent.
            let mut pending = self.depth.borrow_mut();
            let since = pending.get(&symbol).map_or(at, |(_, t)| *t);
            pending.insert(symbol, (depth, since));
            self.tick.notify();
        }
    }

    /// The latest depth of each symbol that changed since the last tick.
    fn publish_depth(&self) {
        let pending = std::mem::take(&mut *self.depth.borrow_mut());
        for (symbol, (depth, at)) in pending {
            let spec = &self.map.symbols[symbol];
            self.broadcast(&format!("depth:{}", spec.name), at, || render::depth(spec, depth.seq, &depth.bids, &depth.asks).to_string());
            let now = crate::shard::core::now_ms();
            self.broadcast(&format!("{}@bookTicker", binance::lower(spec)), at, || binance::book_ticker(spec, &depth, now));
        }
    }

    fn publish_user(&self, user: UserId, messages: &UserMessages, at: Instant) {
        let mut users = self.users.borrow_mut();
        let Some(subs) = users.get_mut(&user) else { return };
        let mut digits = itoa::Buffer::new();
        for m in &messages.native {
            let tail = format!(r#","data":{m}}}"#);
            for s in subs.iter_mut().filter(|s| !s.binance) {
                s.seq += 1;
                if s.conn.push(&[br#"{"channel":"user","seq":"#, digits.format(s.seq).as_bytes(), tail.as_bytes()]) {
                    earliest(&s.conn.since, Some(at));
                    self.mark(&s.conn);
                }
            }
        }
        for m in &messages.binance {
            for s in subs.iter_mut().filter(|s| s.binance) {
                if s.conn.push(&[m.as_bytes()]) {
                    earliest(&s.conn.since, Some(at));
                    self.mark(&s.conn);
                }
            }
        }
    }

    /// Cuts connections whose write waits past its deadline, pings connections silent
    /// for a ping interval and cuts those silent for two.
    fn check_deadlines(&self) {
        let now = crate::shard::core::now_ms();
        for c in self.conns.borrow().iter() {
            let silent = c.last_heard.get().elapsed();
            if let Some((user, key)) = c.listener.as_ref().filter(|(user, _)| !self.listen_keys.valid(*user, now)) {
                // Said once, then closed (Binance's listenKeyExpired).
                tracing::debug!(user = user.0, "listen key expired");
                c.push(&[binance::listen_key_expired(key, now).as_bytes()]);
                self.mark(c);
                c.ended.set(Some(Why::Expired));
                c.cut_off.notify();
                c.ready.notify();
            } else if c.writing_since.get().is_some_and(|t| t.elapsed() > self.write_deadline) {
                c.cut_now(Why::Stalled);
            } else if silent > self.ping * 2 {
                c.cut_now(Why::Silent);
            } else if silent >= self.ping && c.last_ping.get().elapsed() >= self.ping {
                c.ping_due.set(true);
                c.ready.notify();
            }
        }
    }

    fn subscribe(&self, conn: &Rc<Conn>, channel: &str) {
        if channel == "user" {
            let Some(user) = conn.user.get() else { return };
            if !conn.user_channel.replace(true) {
                let binance = conn.listener.is_some();
                self.users.borrow_mut().entry(user).or_default().push(Sub { conn: conn.clone(), seq: 0, binance });
                self.health.user_stream(user.0, binance, true);
            }
            return;
        }
        let Some((kind, name)) = channel.split_once(':') else { return };
        let Some(symbol) = self.map.symbols.iter().position(|s| s.name == name) else { return };
        let followed = if kind == "depth" { Followed::Depth } else { Followed::Trades };
        self.follow(conn, channel, symbol, followed, false);
    }

    /// Adds a public channel (native, or a Binance stream) to a connection.
    fn follow(&self, conn: &Rc<Conn>, channel: &str, symbol: usize, followed: Followed, binance: bool) {
        if conn.cursors.borrow().iter().any(|c| c.channel.name == channel) {
            return;
        }
        let ch = self
            .channels
            .borrow_mut()
            .entry(channel.to_owned())
            .or_insert_with(|| {
                // This core follows it now: the symbol's owner starts handing it over.
                self.health.market_stream(symbol, followed, true);
                Rc::new(Channel {
                    name: channel.to_owned(),
                    symbol,
                    followed,
                    binance,
                    head: if binance { format!(r#"{{"stream":"{channel}","data":"#) } else { format!(r#"{{"channel":"{channel}","seq":"#) },
                    log: RefCell::default(),
                    first: Cell::new(1),
                    bytes: Cell::new(0),
                    subscribers: RefCell::default(),
                    dirty: Cell::new(false),
                    since: Cell::new(None),
                })
            })
            .clone();
        ch.subscribers.borrow_mut().push(conn.clone());
        let next = ch.end();
        conn.cursors.borrow_mut().push(Cursor { channel: ch, next: Cell::new(next), base: next - 1 });
    }

    /// Ends a subscription; for `user`, its `seq` so far.
    fn unsubscribe(&self, conn: &Conn, channel: &str) -> Option<u64> {
        if channel == "user" {
            let user = conn.user.get()?;
            if !conn.user_channel.replace(false) {
                return None;
            }
            let mut users = self.users.borrow_mut();
            let subs = users.get_mut(&user)?;
            let seq = subs.iter().position(|s| s.conn.id == conn.id).map(|i| subs.swap_remove(i).seq);
            if subs.is_empty() {
                users.remove(&user);
            }
            self.health.user_stream(user.0, conn.listener.is_some(), false);
            return seq;
        }
        let mut cursors = conn.cursors.borrow_mut();
        let i = cursors.iter().position(|c| c.channel.name == channel)?;
        let ch = cursors.swap_remove(i).channel;
        ch.subscribers.borrow_mut().retain(|c| c.id != conn.id);
        if ch.subscribers.borrow().is_empty() {
            self.channels.borrow_mut().remove(channel);
            self.health.market_stream(ch.symbol, ch.followed, false);
        }
        None
    }

    /// The connection now acts for `user`: a `user` subscription follows it, `seq` and all.
    fn authenticated(&self, conn: &Rc<Conn>, user: UserId) {
        let moved = self.unsubscribe(conn, "user");
        conn.user.set(Some(user));
        if let Some(seq) = moved {
            self.subscribe(conn, "user");
            if let Some(sub) = self.users.borrow_mut().get_mut(&user).and_then(|subs| subs.iter_mut().find(|s| s.conn.id == conn.id)) {
                sub.seq = seq;
            }
        }
    }

    fn opened(&self, user: Option<UserId>, combined: bool, listener: Option<(UserId, String)>) -> Rc<Conn> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let now = Instant::now();
        let conn = Rc::new(Conn {
            id,
            combined,
            listener,
            user: Cell::new(user),
            cursors: RefCell::default(),
            user_channel: Cell::new(false),
            out: RefCell::default(),
            ends: RefCell::default(),
            limit: self.queue_bytes,
            in_flight: Cell::new(0),
            writing_since: Cell::new(None),
            ended: Cell::new(None),
            ping_due: Cell::new(false),
            dirty: Cell::new(false),
            since: Cell::new(None),
            last_heard: Cell::new(now),
            last_ping: Cell::new(now),
            ready: Signal::default(),
            cut_off: Signal::default(),
        });
        self.conns.borrow_mut().push(conn.clone());
        self.health.stream_clients.fetch_add(1, Ordering::AcqRel);
        self.metrics.streams_open.inc();
        self.metrics.streams_opened.inc();
        conn
    }

    fn closed(&self, conn: &Conn) {
        let channels: Vec<String> = conn.cursors.borrow().iter().map(|c| c.channel.name.clone()).collect();
        for channel in channels.iter().map(String::as_str).chain(["user"]) {
            self.unsubscribe(conn, channel);
        }
        self.conns.borrow_mut().retain(|c| c.id != conn.id);
        self.dirty.borrow_mut().retain(|c| c.id != conn.id);
        self.health.stream_clients.fetch_sub(1, Ordering::AcqRel);
        self.metrics.streams_open.dec();
    }
}

/// Removes a connection from its hub however its session ends.
struct Registered {
    hub: Rc<Hub>,
    conn: Rc<Conn>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.hub.closed(&self.conn);
    }
}

/// The hub as the shard layer sees it (`Rc` so depth flushes can hold it).
pub struct HubFeed(pub Rc<Hub>);

impl Feed for HubFeed {
    fn market(&self, _shard: &Projections, news: &MarketNews, at: Instant) {
        self.0.post(Item::Market(news.clone(), at));
    }

    fn lost(&self) {
        for c in self.0.conns.borrow().iter() {
            c.cut_now(Why::Overloaded);
        }
    }

    fn accounts(&self, shard: &Projections, symbol: usize, events: &[Event]) {
        let mut users: Vec<(UserId, [bool; 2])> = Vec::new();
        for u in events.iter().flat_map(Event::users).flatten() {
            if shard.account_owner(u) == shard.id && !users.iter().any(|(v, _)| *v == u) {
                let dialects = shard.health.user_streamed(u.0);
                if dialects.contains(&true) {
                    users.push((u, dialects));
                }
            }
        }
        for (user, [native, binance]) in users {
            let messages = {
                let accounts = shard.ledger.borrow();
                let Some(account) = accounts.user(user) else { continue };
                UserMessages {
                    native: if native { native_user_messages(&self.0.map, account, user, symbol, events) } else { Vec::new() },
                    binance: if binance { binance_user_messages(&self.0.map, account, user, symbol, events) } else { Vec::new() },
                }
            };
            if !messages.native.is_empty() || !messages.binance.is_empty() {
                crate::shard::projections::feed::user(shard, user, messages);
            }
        }
    }

    fn user(&self, user: UserId, messages: &UserMessages, at: Instant) {
        self.0.post(Item::User { user, messages: messages.clone(), at });
    }

    fn transfer(&self, shard: &Projections, user: UserId, amount: i128) {
        let [native, binance] = shard.health.user_streamed(user.0);
        if !native && !binance {
            return;
        }
        let messages = {
            let accounts = shard.ledger.borrow();
            let Some(account) = accounts.user(user) else { return };
            UserMessages {
                native: if native { vec![typed("balance", render::balance(account.total, account.available(), account.locked))] } else { Vec::new() },
                binance: if binance { vec![binance::balance_update(account, amount, crate::shard::core::now_ms())] } else { Vec::new() },
            }
        };
        crate::shard::projections::feed::user(shard, user, messages);
    }
}

/// A fill of `user`'s in `t`, as the account recorded it.
fn fill_of<'a>(account: &'a crate::accounts::Account, symbol: usize, t: &crate::engine::Trade, order: crate::engine::OrderId) -> Option<&'a crate::accounts::Fill> {
    account.fills.iter().find(|f| f.trade_seq == t.seq && f.symbol == symbol && f.order_id == order)
}

/// A native user message: `value` with its `type`.
fn typed(kind: &str, mut value: serde_json::Value) -> String {
    if let Some(o) = value.as_object_mut() {
        o.insert("type".to_owned(), kind.into());
    }
    value.to_string()
}

/// `user`'s messages on the native `user` channel for events just applied: order updates
/// first (each order once, as it is now), then fills, funding, conditional orders, and the
/// position and balance when money moved.
fn native_user_messages(map: &ShardMap, account: &crate::accounts::Account, user: UserId, symbol: usize, events: &[Event]) -> Vec<String> {
    let spec = &map.symbols[symbol];
    let mut out = Vec::new();
    let mut orders = Vec::new();
    let mut money = false;
    for e in events {
        match e {
            Event::OrderPlaced(p) if p.user == user => orders.push(p.order_id),
            Event::OrderAmended(a) if a.user == user && a.refused.is_none() => orders.push(a.order_id),
            Event::OrderCancelled(c) if c.user == user => {
                orders.push(c.order_id);
                money = true;
            }
            Event::LiquidationStarted(l) if l.user == user => orders.push(l.order_id),
            Event::LiquidationEnded(l) if l.user == user => {
                orders.push(l.order_id);
                money = true;
            }
            Event::TradeExecuted(t) => {
                for side in [&t.buyer, &t.seller].into_iter().filter(|s| s.user == user) {
                    orders.push(side.order_id);
                    money = true;
                    if let Some(f) = fill_of(account, symbol, t, side.order_id) {
                        out.push(typed("fill", render::fill(map, f)));
                    }
                }
            }
            Event::FundingPaid(f) if f.user == user => {
                money = true;
                out.push(typed(
                    "funding",
                    serde_json::json!({
                        "symbol": spec.name,
                        "amount": crate::engine::symbol::units_to_usdt(f.amount).to_string(),
                        "fundingRate": crate::wire::rate_decimal(f.rate).to_string(),
                        "markPrice": spec.ticks_to_price(f.mark).to_string(),
                        "time": f.timestamp,
                    }),
                ));
            }
            Event::Conditional(c) if c.conditional.order.user == user => {
                out.push(typed("conditional", serde_json::to_value(render::conditional(spec, &c.conditional)).unwrap_or_default()));
            }
            _ => {}
        }
    }
    // Order updates first, in the order their events came.
    let mut seen = Vec::with_capacity(orders.len());
    for id in orders {
        if seen.contains(&id) {
            continue;
        }
        if let Some(view) = account.order(id) {
            out.insert(seen.len(), typed("order", serde_json::to_value(render::order(map, view)).unwrap_or_default()));
        }
        seen.push(id);
    }
    if money {
        if let Some(p) = account.positions.get(&symbol) {
            let mut position = render::position(spec, p, MarketPrices::default());
            if let Some(o) = position.as_object_mut() {
                // Valued where the account is, which has no mark: only what it holds.
                for field in ["unrealizedPnl", "markPrice", "maintenanceMargin"] {
                    o.remove(field);
                }
            }
            out.push(typed("position", position));
        }
        out.push(typed("balance", render::balance(account.total, account.available(), account.locked)));
    }
    out
}

/// `user`'s Binance user-data events for events just applied, in their order:
/// `ORDER_TRADE_UPDATE` per order event (a trade's with its fill), `ALGO_UPDATE` per
/// conditional order change, and an `ACCOUNT_UPDATE` after them when money moved.
fn binance_user_messages(map: &ShardMap, account: &crate::accounts::Account, user: UserId, symbol: usize, events: &[Event]) -> Vec<String> {
    use binance::Execution;
    let now = crate::shard::core::now_ms();
    let mut out = Vec::new();
    // Each order's filled quantity before these events: what it has now less their fills.
    let mut filled: FxHashMap<crate::engine::OrderId, i64> = FxHashMap::default();
    for e in events {
        if let Event::TradeExecuted(t) = e {
            for side in [&t.buyer, &t.seller].into_iter().filter(|s| s.user == user) {
                *filled.entry(side.order_id).or_insert_with(|| account.order(side.order_id).map_or(0, |v| v.filled)) -= t.quantity;
            }
        }
    }
    let mut reason = None;
    let mut order = |id, execution, fill: Option<&crate::accounts::Fill>, out: &mut Vec<String>| {
        let Some(view) = account.order(id) else { return };
        let now_filled = filled.entry(id).or_insert(view.filled);
        if let Some(f) = fill {
            *now_filled += f.quantity;
        }
        out.push(binance::order_trade_update(map, view, execution, fill, *now_filled, now));
    };
    for e in events {
        match e {
            Event::OrderPlaced(p) if p.user == user => order(p.order_id, Execution::New, None, &mut out),
            Event::OrderAmended(a) if a.user == user && a.refused.is_none() => order(a.order_id, Execution::Amendment, None, &mut out),
            Event::OrderCancelled(c) if c.user == user => {
                order(c.order_id, Execution::Gone, None, &mut out);
                reason.get_or_insert("ORDER");
            }
            Event::TradeExecuted(t) => {
                for side in [&t.buyer, &t.seller].into_iter().filter(|s| s.user == user) {
                    order(side.order_id, Execution::Trade, fill_of(account, symbol, t, side.order_id), &mut out);
                    reason.get_or_insert("ORDER");
                }
            }
            Event::FundingPaid(f) if f.user == user => {
                reason = Some("FUNDING_FEE");
            }
            Event::Conditional(c) if c.conditional.order.user == user => out.push(binance::algo_update(map, symbol, &c.conditional, now)),
            _ => {}
        }
    }
    if let Some(reason) = reason {
        out.push(binance::account_update(map, account, symbol, reason, now));
    }
    out
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Control {
    op: String,
    #[serde(default)]
    channels: Vec<String>,
    api_key: Option<String>,
}

/// Whose control messages a session reads.
enum Dialect {
    Native(Rc<Shard>),
    Binance,
}

impl Hub {
    /// A Binance-dialect connection (BINANCE.md, section 7), in the hub before its 101:
    /// the streams its path named and a listen key's user data stream follow it from the
    /// start; its `SUBSCRIBE` messages add more.
    fn register_binance(self: &Rc<Self>, connect: &binance::Connect, listener: Option<(UserId, String)>) -> Registered {
        let user = listener.as_ref().map(|(user, _)| *user);
        let conn = self.opened(user, connect.combined, listener);
        for topic in connect.streams.iter().filter_map(|name| binance::topic(&self.map, name)) {
            self.follow(&conn, &topic.name, topic.symbol, topic.kind.followed(), true);
        }
        if user.is_some() {
            self.subscribe(&conn, "user");
        }
        Registered { hub: self.clone(), conn }
    }
}

/// A Binance control message: `SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, answered
/// always (ccxt asks for the book only once it has the answer).
fn binance_control(hub: &Hub, conn: &Rc<Conn>, text: &str) {
    let reply = match binance::control(&hub.map, text) {
        Err(refused) => refused,
        Ok((asked, id)) => {
            let result = match asked {
                binance::Control::Subscribe(topics) => {
                    for t in topics {
                        hub.follow(conn, &t.name, t.symbol, t.kind.followed(), true);
                    }
                    serde_json::Value::Null
                }
                binance::Control::Unsubscribe(names) => {
                    for name in names {
                        hub.unsubscribe(conn, &name);
                    }
                    serde_json::Value::Null
                }
                binance::Control::List => conn.cursors.borrow().iter().map(|c| c.channel.name.clone()).collect(),
                binance::Control::Property => serde_json::Value::Null,
            };
            binance::result(result, &id)
        }
    };
    hub.reply(conn, &reply);
}

async fn native_session<S>(hub: Rc<Hub>, shard: Rc<Shard>, ws: WebSocketStream<S>, user: Option<UserId>)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let conn = hub.opened(user, false, None);
    session(hub.clone(), ws, Registered { hub, conn }, Dialect::Native(shard)).await;
}

/// A session's reader and writer, for a connection registered in the hub, until it ends
/// (which takes it out of the hub).
async fn session<S>(hub: Rc<Hub>, ws: WebSocketStream<S>, registered: Registered, dialect: Dialect)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let conn = registered.conn.clone();
    let (mut sink, mut incoming) = ws.split();
    // The reader is a task of its own, so waking the writer does not poll the socket.
    let reader = {
        let (hub, conn) = (hub.clone(), conn.clone());
        async move {
            while let Some(Ok(message)) = incoming.next().await {
                conn.last_heard.set(Instant::now());
                match message {
                    Message::Text(text) => match &dialect {
                        Dialect::Native(shard) => control(&hub, shard, &conn, text.as_str()).await,
                        Dialect::Binance => binance_control(&hub, &conn, text.as_str()),
                    },
                    Message::Close(_) => return true,
                    _ => {}
                }
            }
            false
        }
    };
    let reader = match glommio::spawn_local_into(reader, hub.queue) {
        Ok(task) => task,
        Err(e) => return tracing::error!(error = %e, "stream reader not started"),
    };
    let writer = async {
        loop {
            // Woken by the flush tick, a cut-off or the silence check.
            conn.ready.wait().await;
            if let Some(why) = conn.ended.get() {
                hub.metrics.streams_cut.get_or_create(&ReasonLabel { reason: why.label() }).inc();
                // With the reason; a peer that does not read may never take even the
                // Close frame, so it gets a second at most.
                let close = async {
                    if why == Why::Expired {
                        // Its last words (listenKeyExpired) go out before the Close.
                        for m in conn.take().0 {
                            let _ = sink.feed(Message::Text(m)).await;
                        }
                    }
                    drop(sink.send(Message::Close(Some(why.frame(&hub)))).await)
                };
                futures_lite::future::or(close, glommio::timer::sleep(Duration::from_secs(1))).await;
                break;
            }
            let (pending, more) = conn.take();
            let since = conn.since.take();
            if more {
                // The rest at the next tick: the ticks' spacing is what keeps fan-out
                // within its share of the core. (Its delay is counted from this
                // write's oldest message: an upper bound.)
                earliest(&conn.since, since);
                hub.mark(&conn);
            }
            if !pending.is_empty() {
                // Raced against being cut off (by its bound, or by the hub's deadline
                // check when it waits too long): a consumer that does not read leaves the
                // socket full, and the write would wait for it for ever. Until it ends,
                // what it holds counts against the connection's bound.
                conn.in_flight.set(pending.iter().map(|m| m.len()).sum());
                let sent = pending.len() as u64;
                conn.writing_since.set(Some(Instant::now()));
                let write = async {
                    for m in pending {
                        sink.feed(Message::Text(m)).await?;
                    }
                    sink.flush().await.map(|()| true)
                };
                let stopped = async {
                    conn.cut_off.wait().await;
                    Ok(false)
                };
                let written = futures_lite::future::or(write, stopped).await;
                conn.writing_since.set(None);
                conn.in_flight.set(0);
                match written {
                    Ok(true) => {
                        hub.metrics.stream_messages.inc_by(sent);
                        if let Some(since) = since {
                            hub.delay.observe(since.elapsed().as_secs_f64());
                        }
                    }
                    // Cut off or stalled: the next turn sends the Close frame.
                    Ok(false) => continue,
                    Err(_) => return,
                }
            }
            if conn.ping_due.replace(false) {
                conn.last_ping.set(Instant::now());
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
        }
    };
    let closed_by_peer = futures_lite::future::or(reader, async {
        writer.await;
        false
    })
    .await;
    if closed_by_peer {
        // Answered with a Close: tungstenite queued it when the client's arrived (and
        // refuses to send another), so a flush sends it; within a second.
        futures_lite::future::or(async { drop(sink.flush().await) }, glommio::timer::sleep(Duration::from_secs(1))).await;
    }
}

/// A stream connection's socket, counting the writes that reach it (`exchange_stream_writes`).
struct Counted<S> {
    inner: S,
    writes: prometheus_client::metrics::counter::Counter,
}

impl<S: futures_lite::AsyncRead + Unpin> futures_lite::AsyncRead for Counted<S> {
    fn poll_read(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: futures_lite::AsyncWrite + Unpin> futures_lite::AsyncWrite for Counted<S> {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(_)) = written {
            self.writes.inc();
        }
        written
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A client's control message: subscribe, unsubscribe, auth.
async fn control(hub: &Hub, shard: &Rc<Shard>, conn: &Rc<Conn>, text: &str) {
    let error = |code: &str, message: &str| hub.reply(conn, &serde_json::json!({ "op": "error", "code": code, "message": message }).to_string());
    let Ok(c) = serde_json::from_str::<Control>(text) else {
        error("INVALID_REQUEST", "expected {\"op\": \"subscribe\"|\"unsubscribe\"|\"auth\", ...}");
        return;
    };
    match c.op.as_str() {
        "auth" => match c.api_key {
            Some(key) => match authenticate(shard, &key).await {
                Some(user) => {
                    hub.authenticated(conn, user);
                    hub.reply(conn, &serde_json::json!({ "op": "authenticated" }).to_string());
                }
                None => error("UNAUTHORIZED", "missing or invalid key"),
            },
            None => error("INVALID_REQUEST", "auth needs apiKey"),
        },
        "subscribe" => {
            let mut accepted = Vec::new();
            for channel in c.channels.iter().take(64) {
                let known = match channel.split_once(':') {
                    Some(("trades" | "depth", symbol)) => hub.map.symbols.iter().any(|s| s.name == symbol),
                    None => channel == "user",
                    _ => false,
                };
                if !known {
                    error("INVALID_REQUEST", &format!("unknown channel {channel:?}"));
                } else if channel == "user" && conn.user.get().is_none() {
                    error("UNAUTHORIZED", "the user channel needs X-API-Key on the upgrade or an auth message first");
                } else {
                    hub.subscribe(conn, channel);
                    accepted.push(channel.clone());
                }
            }
            if !accepted.is_empty() {
                hub.reply(conn, &serde_json::json!({ "op": "subscribed", "channels": accepted }).to_string());
            }
        }
        "unsubscribe" => {
            for channel in c.channels.iter().take(64) {
                hub.unsubscribe(conn, channel);
            }
            hub.reply(conn, &serde_json::json!({ "op": "unsubscribed", "channels": c.channels }).to_string());
        }
        other => error("INVALID_REQUEST", &format!("unknown op {other:?}")),
    }
}

#[cfg(test)]
mod pacing_tests {
    use super::*;

    #[test]
    fn ticks_follow_the_last_ticks_cost_not_the_total_so_far() {
        let mut pacing = Pacing::default();
        let mut ran = Duration::ZERO;
        // Ten minutes of ticks at 1 ms, each costing 0.2 ms: the spacing stays at 1 ms.
        for _ in 0..600_000 {
            ran += Duration::from_micros(200);
            assert_eq!(pacing.next(ran), FLUSH_EVERY);
        }
        // A heavy tick (10 ms of writes) spaces the next by three times its cost, and the
        // spacing comes back once the work is light again.
        ran += Duration::from_millis(10);
        assert_eq!(pacing.next(ran), Duration::from_millis(30));
        ran += Duration::from_secs(1);
        assert_eq!(pacing.next(ran), MAX_FLUSH_EVERY);
        ran += Duration::from_micros(100);
        assert_eq!(pacing.next(ran), FLUSH_EVERY);
    }
}
