//! Live streams, the shard's side: each durable result reaches every core's stream
//! connections once, in log order, without the order path waiting for any of them.
//!
//! The symbol's owner hands each command's results to [`Feed::market`] on every core (its
//! own directly, the others by one mesh message each) after executing it, which is after
//! the log confirmed it; the account owner hands what it just applied to
//! [`Feed::accounts`], which turns it into each user's messages (it has their orders and
//! balances) and delivers them to every core by [`Request::User`]. Nothing is sent while
//! no core has a stream connection. What a connection does with them (channels, queues,
//! framing) is the HTTP layer's: it installs the [`Feed`] at start.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use futures_channel::mpsc;
use futures_lite::StreamExt;

use super::protocol::Request;
use super::Shard;
use crate::engine::{Event, UserId};

/// The installed [`Feed`], and the queue of what goes to other cores: one task sends it
/// in order, so every core sees a symbol's results (and a user's messages) in log order.
pub struct Installed {
    pub feed: Rc<dyn Feed>,
    out: mpsc::UnboundedSender<(usize, Request)>,
}

/// Installs the HTTP layer's [`Feed`] on this core.
pub fn install(shard: &Rc<Shard>, feed: Rc<dyn Feed>) {
    let (out, mut queue) = mpsc::unbounded::<(usize, Request)>();
    let sender = shard.clone();
    glommio::spawn_local(async move {
        while let Some((to, request)) = queue.next().await {
            drop(sender.rpc.send(to, request));
        }
    })
    .detach();
    *shard.feed.borrow_mut() = Some(Installed { feed, out });
}

/// Up to 20 price levels a side (ticks, lots), best first.
pub type Levels = Vec<(i64, i64)>;

pub trait Feed {
    /// A symbol's results and its book's top levels after them, on every core.
    fn market(&self, shard: &Shard, symbol: usize, events: &[Event], bids: &Levels, asks: &Levels);
    /// Results just applied to the accounts owned by this core.
    fn accounts(&self, shard: &Shard, symbol: usize, events: &[Event]);
    /// A user's messages (rendered by the account's owner), for this core's connections.
    fn user(&self, user: UserId, messages: &[String]);
}

/// How many levels a side the depth channel carries.
pub const DEPTH_LEVELS: usize = 20;

/// Whether any core has a stream connection.
pub fn wanted(shard: &Shard) -> bool {
    shard.health.stream_clients.load(Ordering::Acquire) > 0 && shard.feed.borrow().is_some()
}

fn send_others(shard: &Shard, request: impl Fn() -> Request) {
    if let Some(installed) = shard.feed.borrow().as_ref() {
        for to in (0..shard.shards).filter(|to| *to != shard.id) {
            let _ = installed.out.unbounded_send((to, request()));
        }
    }
}

fn feed(shard: &Shard) -> Option<Rc<dyn Feed>> {
    shard.feed.borrow().as_ref().map(|i| i.feed.clone())
}

/// On the symbol's owner, after a command executed (not during replay).
pub fn market(shard: &Shard, symbol: usize, events: &[Event], bids: Levels, asks: Levels) {
    if !wanted(shard) {
        return;
    }
    send_others(shard, || Request::Market { symbol, events: events.to_vec(), bids: bids.clone(), asks: asks.clone() });
    if let Some(feed) = feed(shard) {
        feed.market(shard, symbol, events, &bids, &asks);
    }
}

/// On an account owner, after results were applied (not during replay).
pub fn accounts(shard: &Shard, symbol: usize, events: &[Event]) {
    if wanted(shard)
        && let Some(feed) = feed(shard)
    {
        feed.accounts(shard, symbol, events);
    }
}

/// Delivers a user's messages on every core.
pub fn user(shard: &Shard, user: UserId, messages: Vec<String>) {
    send_others(shard, || Request::User { user, messages: messages.clone() });
    if let Some(feed) = feed(shard) {
        feed.user(user, &messages);
    }
}

/// A message from another core.
pub fn delivered(shard: &Shard, request: Request) {
    let Some(feed) = feed(shard) else { return };
    match request {
        Request::Market { symbol, events, bids, asks } => feed.market(shard, symbol, &events, &bids, &asks),
        Request::User { user, messages } => feed.user(user, &messages),
        _ => {}
    }
}
