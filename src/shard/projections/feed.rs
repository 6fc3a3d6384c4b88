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

use crate::shard::protocol::Request;
use super::Projections;
use crate::engine::{Event, UserId};

/// The installed [`Feed`], and the queue of what goes to other cores: one task sends it
/// in order, so every core sees a symbol's results (and a user's messages) in log order.
pub struct Installed {
    pub feed: Rc<dyn Feed>,
    others: mpsc::UnboundedSender<(usize, Request)>,
}

/// Installs the HTTP layer's [`Feed`] on this core.
pub fn install(out: &Rc<Projections>, feed: Rc<dyn Feed>) {
    let (others, mut queue) = mpsc::unbounded::<(usize, Request)>();
    let sender = out.core.clone();
    glommio::spawn_local(async move {
        while let Some((to, request)) = queue.next().await {
            drop(sender.rpc.send(to, request));
        }
    })
    .detach();
    *out.feed.borrow_mut() = Some(Installed { feed, others });
}

pub use crate::shard::protocol::Levels;

pub trait Feed {
    /// A symbol's results and its book's top levels after them, on every core.
    fn market(&self, out: &Projections, symbol: usize, events: &[Event], bids: &Levels, asks: &Levels);
    /// Results just applied to the accounts owned by this core.
    fn accounts(&self, out: &Projections, symbol: usize, events: &[Event]);
    /// A user's messages (rendered by the account's owner), for this core's connections.
    fn user(&self, user: UserId, messages: &[String]);
}

/// How many levels a side the depth channel carries.
pub const DEPTH_LEVELS: usize = 20;

/// Whether any core has a stream connection.
pub fn wanted(out: &Projections) -> bool {
    out.health.stream_clients.load(Ordering::Acquire) > 0 && out.feed.borrow().is_some()
}

fn send_others(out: &Projections, request: impl Fn() -> Request) {
    if let Some(installed) = out.feed.borrow().as_ref() {
        for to in (0..out.shards).filter(|to| *to != out.id) {
            let _ = installed.others.unbounded_send((to, request()));
        }
    }
}

fn feed(out: &Projections) -> Option<Rc<dyn Feed>> {
    out.feed.borrow().as_ref().map(|i| i.feed.clone())
}

/// On the symbol's owner, after a command executed (not during replay).
pub fn market(out: &Projections, symbol: usize, events: &[Event], bids: Levels, asks: Levels) {
    if !wanted(out) {
        return;
    }
    send_others(out, || Request::Market { symbol, events: events.to_vec(), bids: bids.clone(), asks: asks.clone() });
    if let Some(feed) = feed(out) {
        feed.market(out, symbol, events, &bids, &asks);
    }
}

/// On an account owner, after results were applied (not during replay).
pub fn accounts(out: &Projections, symbol: usize, events: &[Event]) {
    if wanted(out)
        && let Some(feed) = feed(out)
    {
        feed.accounts(out, symbol, events);
    }
}

/// Delivers a user's messages on every core.
pub fn user(out: &Projections, user: UserId, messages: Vec<String>) {
    send_others(out, || Request::User { user, messages: messages.clone() });
    if let Some(feed) = feed(out) {
        feed.user(user, &messages);
    }
}

/// A message from another core.
pub fn delivered(out: &Projections, request: Request) {
    let Some(feed) = feed(out) else { return };
    match request {
        Request::Market { symbol, events, bids, asks } => feed.market(out, symbol, &events, &bids, &asks),
        Request::User { user, messages } => feed.user(user, &messages),
        _ => {}
    }
}
