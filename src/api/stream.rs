//! `GET /v1/stream`: the WebSocket API (API.md, "Streams").
//!
//! A connection whose first request line starts `GET /v1/stream` is handed, bytes and
//! all, to `async-tungstenite` on the core that accepted it (handshake, framing, masking:
//! not ours); every other connection goes to hyper. hyper's own upgrade path needs a
//! `Send` socket, which glommio's are not. Each
//! core has one [`Hub`]: the [`Feed`] the shard layer hands every durable result to
//! (see `shard::feed`). A result is rendered once per core, not once per connection; each
//! subscribed connection gets it in its own queue with its channel's next `seq`.
//!
//! A connection's queue is bounded in bytes (`EXCHANGE_STREAM_QUEUE_BYTES`, 4 MiB): a
//! consumer that falls that far behind is cut off (a close frame, then the socket), never
//! waited for, so it slows neither the matching path nor the other consumers. A
//! connection nothing was sent on for `EXCHANGE_STREAM_PING_SECS` is pinged, and one that
//! has sent nothing (not even a pong) for twice that is closed.
//!
//! Channels: `trades:<symbol>` (each public trade, as in `GET /v1/trades`),
//! `depth:<symbol>` (the top 20 levels as in `GET /v1/depth` after a change, coalesced to
//! at most one a millisecond), `user` (the user's order updates in the REST shape, fills,
//! balance, position and funding, each `data` with a `type`; needs the upgrade's
//! `X-API-Key` or an `auth` message).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request as HandshakeRequest, Response as HandshakeResponse};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use bytes::Bytes;
use futures_channel::mpsc;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;

use super::error::ApiError;
use super::render;
use super::service::Service;
use crate::engine::{Event, UserId};
use crate::health::Health;
use crate::shard::feed::{Feed, Levels};
use crate::shard::protocol::{Answer, ApiRequest, MarketPrices, Reply, Request};
use crate::shard::stream::PublicTrade;
use crate::shard::Shard;
use crate::shard_map::ShardMap;

/// The largest message a client may send (subscriptions are small).
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

/// The start of a stream request's first line: connections whose first bytes are this
/// are WebSockets, served here, and every other connection is hyper's.
pub const REQUEST_LINE: &[u8] = b"GET /v1/stream";

/// A connection whose first request is `GET /v1/stream`: the WebSocket handshake (done by
/// `async-tungstenite`: key, version, upgrade headers), then the session on this core.
// The handshake callback's error type is tungstenite's.
#[allow(clippy::result_large_err)]
pub async fn accept<S>(service: Rc<Service>, socket: S)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let Some(hub) = service.hub.clone() else { return };
    let api_key: Rc<RefCell<Option<String>>> = Rc::default();
    let key = api_key.clone();
    let callback = move |req: &HandshakeRequest, response: HandshakeResponse| -> Result<HandshakeResponse, ErrorResponse> {
        let path_ok = req.uri().path() == "/v1/stream";
        if !path_ok {
            let mut refused = ErrorResponse::new(Some(ApiError::NotFound.reply_text()));
            *refused.status_mut() = hyper::StatusCode::NOT_FOUND;
            return Err(refused);
        }
        *key.borrow_mut() = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok(response)
    };
    let config = WebSocketConfig::default().max_message_size(Some(MAX_CLIENT_MESSAGE)).max_frame_size(Some(MAX_CLIENT_MESSAGE));
    let Ok(ws) = async_tungstenite::accept_hdr_async_with_config(socket, callback, Some(config)).await else { return };
    let shard = service.shard.clone();
    let given = api_key.borrow_mut().take();
    let user = match given {
        Some(k) => match authenticate(&shard, &k).await {
            Some(user) => Some(user),
            None => {
                let mut ws = ws;
                let refused = serde_json::json!({ "op": "error", "code": "UNAUTHORIZED", "message": "missing or invalid key" });
                let _ = ws.send(Message::text(refused.to_string())).await;
                let _ = ws.close(None).await;
                return;
            }
        },
        None => None,
    };
    // The session runs in the stream task queue; this task (the connection's) waits for it.
    match glommio::spawn_local_into(session(hub.clone(), shard, ws, user), hub.queue) {
        Ok(task) => task.await,
        Err(e) => tracing::error!(error = %e, "stream session not started"),
    }
}

async fn authenticate(shard: &Rc<Shard>, key: &str) -> Option<UserId> {
    let user = crate::accounts::user_of_key(key)?;
    match shard.ask(shard.account_owner(user), Request::Api(ApiRequest::Authenticate { key: key.to_owned() })).await {
        Some(Reply::Api(Ok(Answer::User(u)))) => Some(u),
        _ => None,
    }
}

/// One connection's side of the hub.
struct Conn {
    user: Cell<Option<UserId>>,
    /// Subscribed channels with the last `seq` sent on each.
    channels: RefCell<Vec<(String, u64)>>,
    queue: RefCell<VecDeque<String>>,
    bytes: Cell<usize>,
    limit: usize,
    /// Past its bound: to be closed, nothing more queued.
    cut: Cell<bool>,
    wake: mpsc::UnboundedSender<()>,
    woken: Cell<bool>,
    /// Told once when the connection is cut, so a writer stuck on a full socket stops.
    cut_wake: mpsc::UnboundedSender<()>,
}

impl Conn {
    fn subscribed(&self, channel: &str) -> bool {
        self.channels.borrow().iter().any(|(c, _)| c == channel)
    }

    /// Queues a channel message (with the channel's next `seq`), if subscribed.
    fn publish(&self, channel: &str, data: &str) {
        let seq = {
            let mut channels = self.channels.borrow_mut();
            let Some((_, seq)) = channels.iter_mut().find(|(c, _)| c == channel) else { return };
            *seq += 1;
            *seq
        };
        self.send(format!(r#"{{"channel":"{channel}","seq":{seq},"data":{data}}}"#));
    }

    fn send(&self, message: String) {
        if self.cut.get() {
            return;
        }
        if self.bytes.get() + message.len() > self.limit {
            self.cut.set(true);
            self.queue.borrow_mut().clear();
            self.bytes.set(0);
            let _ = self.cut_wake.unbounded_send(());
        } else {
            self.bytes.set(self.bytes.get() + message.len());
            self.queue.borrow_mut().push_back(message);
        }
        if !self.woken.replace(true) {
            let _ = self.wake.unbounded_send(());
        }
    }
}

/// One core's stream connections.
pub struct Hub {
    map: Arc<ShardMap>,
    health: Arc<Health>,
    queue_bytes: usize,
    ping: Duration,
    conns: RefCell<Vec<Weak<Conn>>>,
    /// Depth rendered since the last flush, per symbol: sent at most once a millisecond.
    depth: RefCell<Vec<(usize, String)>>,
    flushing: Cell<bool>,
    /// Results handed over by the shard, not yet fanned out: the order path only queues
    /// them; the publisher task renders and distributes them.
    inbox: RefCell<VecDeque<Item>>,
    inbox_wake: mpsc::UnboundedSender<()>,
    inbox_woken: Cell<bool>,
    /// The task queue all stream work runs in: a small share of the core, below the
    /// order path's, so fan-out takes what the order path leaves and never the reverse.
    queue: glommio::TaskQueueHandle,
}

/// What the publisher has to fan out.
enum Item {
    Market { symbol: usize, events: Vec<Event>, bids: Levels, asks: Levels },
    User { user: UserId, messages: Vec<String> },
}

/// The stream task queue's share of its core against the default queue's 1,000.
const STREAM_SHARES: usize = 100;
/// A connection is written at most this often: messages that arrive meanwhile go out in
/// one write.
const FLUSH_EVERY: Duration = Duration::from_millis(1);

impl Hub {
    /// The hub of this core (call on its executor): starts its publisher task.
    pub fn new(shard: &Shard) -> Rc<Self> {
        let queue = glommio::executor().create_task_queue(glommio::Shares::Static(STREAM_SHARES), glommio::Latency::NotImportant, "streams");
        let (inbox_wake, mut woken) = mpsc::unbounded();
        let hub = Rc::new(Self {
            map: shard.map.clone(),
            health: shard.health.clone(),
            queue_bytes: shard.config.limits.stream_queue_bytes,
            ping: Duration::from_secs(shard.config.limits.stream_ping_secs.max(1)),
            conns: RefCell::default(),
            depth: RefCell::default(),
            flushing: Cell::new(false),
            inbox: RefCell::default(),
            inbox_wake,
            inbox_woken: Cell::new(false),
            queue,
        });
        let publisher = Rc::downgrade(&hub);
        hub.spawn(async move {
            while woken.next().await.is_some() {
                let Some(hub) = publisher.upgrade() else { return };
                hub.inbox_woken.set(false);
                loop {
                    let item = hub.inbox.borrow_mut().pop_front();
                    let Some(item) = item else { break };
                    match item {
                        Item::Market { symbol, events, bids, asks } => hub.publish_market(symbol, &events, &bids, &asks),
                        Item::User { user, messages } => hub.publish_user(user, &messages),
                    }
                }
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
        if !self.inbox_woken.replace(true) {
            let _ = self.inbox_wake.unbounded_send(());
        }
    }

    fn publish_market(self: &Rc<Self>, symbol: usize, events: &[Event], bids: &Levels, asks: &Levels) {
        let spec = &self.map.symbols[symbol];
        let trades = format!("trades:{}", spec.name);
        for e in events {
            if let Event::TradeExecuted(t) = e
                && !t.adl
            {
                let trade = PublicTrade { seq: t.seq, price: t.price, quantity: t.quantity, taker_side: t.taker_side, time: t.timestamp };
                let data = render::public_trade(spec, &trade).to_string();
                self.each(|c| c.publish(&trades, &data));
            }
        }
        let changed = events.iter().any(|e| matches!(e, Event::OrderPlaced(_) | Event::OrderCancelled(_) | Event::TradeExecuted(_)));
        if let (true, Some(last)) = (changed, events.last()) {
            let data = render::depth(spec, last.seq(), bids, asks).to_string();
            let mut depth = self.depth.borrow_mut();
            match depth.iter_mut().find(|(s, _)| *s == symbol) {
                Some(entry) => entry.1 = data,
                None => depth.push((symbol, data)),
            }
            drop(depth);
            self.flush_depth_soon();
        }
    }

    fn publish_user(&self, user: UserId, messages: &[String]) {
        self.each(|c| {
            if c.user.get() == Some(user) {
                for m in messages {
                    c.publish("user", m);
                }
            }
        });
    }

    fn each(&self, mut f: impl FnMut(&Conn)) {
        let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().filter_map(Weak::upgrade).collect();
        for c in &conns {
            f(c);
        }
    }

    fn flush_depth_soon(self: &Rc<Self>) {
        if self.flushing.replace(true) {
            return;
        }
        let hub = self.clone();
        self.spawn(async move {
            glommio::timer::sleep(Duration::from_millis(1)).await;
            hub.flushing.set(false);
            let pending = std::mem::take(&mut *hub.depth.borrow_mut());
            for (symbol, data) in pending {
                let channel = format!("depth:{}", hub.map.symbols[symbol].name);
                hub.each(|c| c.publish(&channel, &data));
            }
        });
    }
}

/// The hub as the shard layer sees it (`Rc` so depth flushes can hold it).
pub struct HubFeed(pub Rc<Hub>);

impl Feed for HubFeed {
    fn market(&self, _shard: &Shard, symbol: usize, events: &[Event], bids: &Levels, asks: &Levels) {
        self.0.post(Item::Market { symbol, events: events.to_vec(), bids: bids.clone(), asks: asks.clone() });
    }

    fn accounts(&self, shard: &Shard, symbol: usize, events: &[Event]) {
        let map = &self.0.map;
        let spec = &map.symbols[symbol];
        let mut users: Vec<UserId> = Vec::new();
        for u in events.iter().flat_map(Event::users).flatten() {
            if shard.account_owner(u) == shard.id && !users.contains(&u) {
                users.push(u);
            }
        }
        for user in users {
            let messages = {
                let accounts = shard.accounts.borrow();
                let Some(account) = accounts.user(user) else { continue };
                let mut out = Vec::new();
                let typed = |kind: &str, mut value: serde_json::Value| {
                    if let Some(o) = value.as_object_mut() {
                        o.insert("type".to_owned(), kind.into());
                    }
                    value.to_string()
                };
                let mut orders = Vec::new();
                let mut money = false;
                for e in events {
                    match e {
                        Event::OrderPlaced(p) if p.user == user => orders.push(p.order_id),
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
                                if let Some(f) = account.fills.iter().find(|f| f.trade_seq == t.seq && f.symbol == symbol && f.order_id == side.order_id) {
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
                        _ => {}
                    }
                }
                orders.dedup();
                for id in orders {
                    if let Some(view) = account.order(id) {
                        out.insert(0, typed("order", serde_json::to_value(render::order(map, view)).unwrap_or_default()));
                    }
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
            };
            if !messages.is_empty() {
                crate::shard::feed::user(shard, user, messages);
            }
        }
    }

    fn user(&self, user: UserId, messages: &[String]) {
        self.0.post(Item::User { user, messages: messages.to_vec() });
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Control {
    op: String,
    #[serde(default)]
    channels: Vec<String>,
    api_key: Option<String>,
}

async fn session<S>(hub: Rc<Hub>, shard: Rc<Shard>, ws: WebSocketStream<S>, user: Option<UserId>)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let (wake, mut woken) = mpsc::unbounded();
    let (cut_wake, mut cut) = mpsc::unbounded::<()>();
    let conn = Rc::new(Conn {
        cut_wake,
        user: Cell::new(user),
        channels: RefCell::default(),
        queue: RefCell::default(),
        bytes: Cell::new(0),
        limit: hub.queue_bytes,
        cut: Cell::new(false),
        wake,
        woken: Cell::new(false),
    });
    hub.conns.borrow_mut().retain(|c| c.strong_count() > 0);
    hub.conns.borrow_mut().push(Rc::downgrade(&conn));
    hub.health.stream_clients.fetch_add(1, Ordering::AcqRel);
    let (mut sink, mut incoming) = ws.split();
    let last_heard = Rc::new(Cell::new(Instant::now()));
    let reader = {
        let (conn, last_heard, shard, hub) = (conn.clone(), last_heard.clone(), shard.clone(), hub.clone());
        async move {
            while let Some(Ok(message)) = incoming.next().await {
                last_heard.set(Instant::now());
                match message {
                    Message::Text(text) => control(&hub, &shard, &conn, text.as_str()).await,
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        }
    };
    let writer = async {
        let mut last_ping = Instant::now();
        let mut last_write = Instant::now();
        loop {
            // Woken by a message, or at the next moment the peer's silence must be checked.
            let next_check = last_heard.get().max(last_ping) + hub.ping;
            let wait = next_check.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            let _ = futures_lite::future::or(async { woken.next().await.is_some() }, async {
                glommio::timer::sleep(wait).await;
                false
            })
            .await;
            // At most one write a millisecond: what arrives meanwhile goes in the same one.
            let since = last_write.elapsed();
            if since < FLUSH_EVERY {
                glommio::timer::sleep(FLUSH_EVERY - since).await;
            }
            conn.woken.set(false);
            if conn.cut.get() {
                let _ = sink.send(Message::Close(None)).await;
                break;
            }
            let pending: Vec<String> = conn.queue.borrow_mut().drain(..).collect();
            conn.bytes.set(0);
            if !pending.is_empty() {
                // Raced against being cut off: a consumer that does not read leaves the
                // socket full, and the write would wait for it for ever.
                let written = futures_lite::future::or(
                    async {
                        for m in pending {
                            sink.feed(Message::text(m)).await?;
                        }
                        sink.flush().await
                    },
                    async {
                        cut.next().await;
                        Err(async_tungstenite::tungstenite::Error::ConnectionClosed)
                    },
                )
                .await;
                if written.is_err() {
                    return;
                }
                last_write = Instant::now();
            }
            // A peer heard from lately is alive; one silent for a ping interval is
            // pinged (its pong is heard), and one silent for two is gone.
            let silent = last_heard.get().elapsed();
            if silent > hub.ping * 2 {
                break;
            }
            if silent >= hub.ping && last_ping.elapsed() >= hub.ping {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
                last_ping = Instant::now();
            }
        }
    };
    futures_lite::future::or(reader, writer).await;
    hub.health.stream_clients.fetch_sub(1, Ordering::AcqRel);
    drop(conn);
}

/// A client's control message: subscribe, unsubscribe, auth.
async fn control(hub: &Hub, shard: &Rc<Shard>, conn: &Conn, text: &str) {
    let error = |code: &str, message: &str| serde_json::json!({ "op": "error", "code": code, "message": message }).to_string();
    let Ok(c) = serde_json::from_str::<Control>(text) else {
        conn.send(error("INVALID_REQUEST", "expected {\"op\": \"subscribe\"|\"unsubscribe\"|\"auth\", ...}"));
        return;
    };
    match c.op.as_str() {
        "auth" => match c.api_key {
            Some(key) => match authenticate(shard, &key).await {
                Some(user) => {
                    conn.user.set(Some(user));
                    conn.send(serde_json::json!({ "op": "authenticated" }).to_string());
                }
                None => conn.send(error("UNAUTHORIZED", "missing or invalid key")),
            },
            None => conn.send(error("INVALID_REQUEST", "auth needs apiKey")),
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
                    conn.send(error("INVALID_REQUEST", &format!("unknown channel {channel:?}")));
                } else if channel == "user" && conn.user.get().is_none() {
                    conn.send(error("UNAUTHORIZED", "the user channel needs X-API-Key on the upgrade or an auth message first"));
                } else {
                    if !conn.subscribed(channel) {
                        conn.channels.borrow_mut().push((channel.clone(), 0));
                    }
                    accepted.push(channel.clone());
                }
            }
            if !accepted.is_empty() {
                conn.send(serde_json::json!({ "op": "subscribed", "channels": accepted }).to_string());
            }
        }
        "unsubscribe" => {
            conn.channels.borrow_mut().retain(|(ch, _)| !c.channels.contains(ch));
            conn.send(serde_json::json!({ "op": "unsubscribed", "channels": c.channels }).to_string());
        }
        other => conn.send(error("INVALID_REQUEST", &format!("unknown op {other:?}"))),
    }
}
