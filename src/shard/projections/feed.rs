//! Live streams, the shard's side: each durable result reaches every core's stream
//! connections once, in log order, without the order path waiting for any of them.
//!
//! The symbol's owner hands each command's public trades to [`Feed::market`] on every
//! core (its own directly, the others by a one-way [`Notice`] that joins the core's next
//! mesh batch) after executing it, which is after the log confirmed it, and only while
//! some core follows that symbol's trades; its depth is read from the book at most once a
//! flush tick, and only while some core follows it. The account owner hands what it just
//! applied to [`Feed::accounts`], which turns it into each user's messages (it has their
//! orders and balances) and delivers them to every core the same way. Notices are the
//! one thing a core may drop for a peer that far behind (see `shard::rpc`). What a
//! connection does with them (channels, queues, framing) is the HTTP layer's: it
//! installs the [`Feed`] at start.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Projections;
use crate::engine::{Event, UserId};
use crate::shard::protocol::{MarketNews, Notice, UserMessages};

pub use crate::shard::protocol::Levels;

pub trait Feed {
    /// What some core follows of a symbol, on every core; `at` is when the symbol's owner
    /// handed it over.
    fn market(&self, out: &Projections, news: &MarketNews, at: Instant);
    /// Results just applied to the accounts owned by this core.
    fn accounts(&self, out: &Projections, symbol: usize, events: &[Event]);
    /// A deposit (positive) or withdrawal just logged for `user`, owned by this core.
    fn transfer(&self, out: &Projections, user: UserId, amount: i128);
    /// A user's messages (rendered by the account's owner at `at`), for this core's
    /// connections.
    fn user(&self, user: UserId, messages: &UserMessages, at: Instant);
    /// Notices for this core were dropped: its connections cannot be told everything.
    fn lost(&self);
}

/// Installs the HTTP layer's [`Feed`] on this core.
pub fn install(out: &Rc<Projections>, feed: Rc<dyn Feed>) {
    *out.feed.borrow_mut() = Some(feed);
}

/// How many levels a side the depth channel carries.
pub const DEPTH_LEVELS: usize = 20;

/// Depth is read from a book at most this often (the stream side's flush tick).
pub const DEPTH_EVERY: Duration = Duration::from_millis(1);

/// A book's changed levels are read at most this often (Binance's `@depth@100ms`).
pub const DIFF_EVERY: Duration = Duration::from_millis(100);

/// Whether any core has a stream connection.
pub fn wanted(out: &Projections) -> bool {
    out.health.stream_clients.load(Ordering::Acquire) > 0 && out.feed.borrow().is_some()
}

fn feed(out: &Projections) -> Option<Rc<dyn Feed>> {
    out.feed.borrow().clone()
}

/// Hands a notice to every other core (each gets its own), and to this core's feed.
fn everywhere(out: &Projections, notice: impl Fn() -> Notice, here: impl FnOnce(&dyn Feed)) {
    let Some(feed) = feed(out) else { return };
    for to in (0..out.shards).filter(|to| *to != out.id) {
        out.rpc.notify(to, notice());
    }
    here(&*feed);
}

/// On the symbol's owner, after a command executed (not during replay), or when its
/// depth is due: what some core follows.
pub fn market(out: &Projections, news: MarketNews) {
    if news.is_empty() {
        return;
    }
    let at = Instant::now();
    everywhere(out, || Notice::Market(news.clone(), at), |feed| feed.market(out, &news, at));
}

/// On an account owner, after results were applied (not during replay).
pub fn accounts(out: &Projections, symbol: usize, events: &[Event]) {
    if wanted(out)
        && let Some(feed) = feed(out)
    {
        feed.accounts(out, symbol, events);
    }
}

/// On an account owner, after a deposit or withdrawal was logged.
pub fn transfer(out: &Projections, user: UserId, amount: i128) {
    if wanted(out)
        && let Some(feed) = feed(out)
    {
        feed.transfer(out, user, amount);
    }
}

/// Delivers a user's messages on every core.
pub fn user(out: &Projections, user: UserId, messages: UserMessages) {
    let at = Instant::now();
    everywhere(out, || Notice::User { user, messages: messages.clone(), at }, |feed| feed.user(user, &messages, at));
}

/// A notice from another core.
pub fn delivered(out: &Projections, notice: Notice) {
    let Some(feed) = feed(out) else { return };
    match notice {
        Notice::Market(news, at) => feed.market(out, &news, at),
        Notice::User { user, messages, at } => feed.user(user, &messages, at),
        Notice::Lost => feed.lost(),
    }
}
