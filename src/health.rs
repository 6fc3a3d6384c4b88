//! The process's health, shared by every core and the side processes: a narrow handle
//! that the shards, cold storage and the HTTP layer all hold, defined below all of them
//! so that none needs another to report or read it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use rustc_hash::FxHashMap;

/// States of a shard's hot state in Redis ([`Health::hot`]).
pub mod hot {
    /// No Redis configured: the ledger is the hot state.
    pub const DISABLED: u8 = 0;
    /// Redis is missing data or unreachable; writes are skipped until it is rebuilt.
    pub const STALE: u8 = 1;
    /// Being rewritten from the ledger; results are written, requests wait.
    pub const REBUILDING: u8 = 2;
    pub const READY: u8 = 3;
}

/// States of cold storage ([`Health::cold`]).
pub mod cold {
    pub const DISABLED: u8 = 0;
    pub const DOWN: u8 = 1;
    pub const OK: u8 = 2;
    /// Storing, but more than `cold::writer::LAGGING_MS` behind the log.
    pub const LAGGING: u8 = 3;
}

/// What a stream connection follows of a symbol, as its owner must hand it over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Followed {
    Trades,
    /// The top levels, whole, after each change.
    Depth,
    /// The levels that changed (the diff depth of the Binance dialect).
    Diffs,
    /// The index and mark price and funding, when they change.
    Prices,
}

/// Buckets of [`Health::user_streamed`].
const USER_STREAM_BUCKETS: usize = 4096;

/// Process-wide state every shard may read: health, shutdown, start barrier.
#[derive(Default)]
pub struct Health {
    pub stopping: AtomicBool,
    /// Another process claimed the event log's topics: this one writes nothing more and
    /// stops (see [`exchange_io::tenancy`]).
    pub superseded: AtomicBool,
    pub event_log_down: AtomicUsize,
    /// Copies of the event log's topics: asked for and found at start (0: no Kafka).
    pub replication_wanted: std::sync::atomic::AtomicI32,
    pub replication_actual: std::sync::atomic::AtomicI32,
    pub inflight: AtomicUsize,
    /// Open stream (WebSocket) connections on all cores: results are fanned out only
    /// while there is one.
    pub stream_clients: AtomicUsize,
    /// `user` stream subscriptions on all cores, counted per bucket of user ids: an
    /// account's owner renders a user's stream messages only while their bucket counts
    /// one, so connections that follow only public channels cost the order path nothing.
    /// Native `[0]` and Binance `[1]`.
    user_streams: [Box<[AtomicU32]>; 2],
    /// Per symbol, the cores with a `trades:<symbol>` / `depth:<symbol>` subscriber: the
    /// symbol's owner hands trades to the streams, and renders its depth, only while some
    /// core follows them.
    trade_streams: Box<[AtomicU32]>,
    depth_streams: Box<[AtomicU32]>,
    /// Likewise for the diff depth of the Binance dialect's `<symbol>@depth`, and its
    /// `<symbol>@markPrice`.
    diff_streams: Box<[AtomicU32]>,
    price_streams: Box<[AtomicU32]>,
    /// Cold storage: one of [`cold`].
    pub cold: std::sync::atomic::AtomicU8,
    /// Per shard, the state of its partitions' hot state: one of [`hot`].
    pub hot: Vec<std::sync::atomic::AtomicU8>,
    /// Per symbol, when its last index price was posted (ms; 0: never) and how old it
    /// may grow before liquidation and funding stop (ms).
    index_times: Vec<AtomicI64>,
    index_max_age_ms: i64,
    arrived: AtomicUsize,
    /// At start only: where each shard is (see [`Health::starting`]), and a count that
    /// moves with every step any shard takes.
    start_phases: std::sync::Mutex<Vec<&'static str>>,
    start_steps: std::sync::atomic::AtomicU64,
    /// At start only: per account partition, how far its snapshot holds each symbol's
    /// results (`None`: no snapshot).
    applied: std::sync::Mutex<FxHashMap<u32, Option<SymbolOffsets>>>,
}

/// One more (`true`) or one fewer.
fn count(counter: &AtomicU32, up: bool) {
    if up {
        counter.fetch_add(1, Ordering::AcqRel);
    } else {
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per symbol name, a log offset.
type SymbolOffsets = Vec<(String, u64)>;

impl Health {
    /// Health of a process with `shards` cores, their hot state starting in `hot`, and
    /// `symbols` symbols whose index goes stale after `index_max_age_secs`.
    pub fn new(shards: usize, hot: u8, symbols: usize, index_max_age_secs: u64) -> Self {
        Self {
            hot: (0..shards).map(|_| std::sync::atomic::AtomicU8::new(hot)).collect(),
            start_phases: std::sync::Mutex::new(vec!["starting the executor"; shards]),
            index_times: (0..symbols).map(|_| AtomicI64::new(0)).collect(),
            index_max_age_ms: i64::try_from(index_max_age_secs).unwrap_or(i64::MAX).saturating_mul(1000),
            user_streams: [(); 2].map(|()| (0..USER_STREAM_BUCKETS).map(|_| AtomicU32::new(0)).collect()),
            trade_streams: (0..symbols).map(|_| AtomicU32::new(0)).collect(),
            depth_streams: (0..symbols).map(|_| AtomicU32::new(0)).collect(),
            diff_streams: (0..symbols).map(|_| AtomicU32::new(0)).collect(),
            price_streams: (0..symbols).map(|_| AtomicU32::new(0)).collect(),
            ..Self::default()
        }
    }

    fn user_bucket(&self, user: u64, binance: bool) -> Option<&AtomicU32> {
        let buckets = &self.user_streams[usize::from(binance)];
        let n = buckets.len() as u64;
        (n > 0).then(|| &buckets[(user.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % n as usize])
    }

    /// Whether `user` may have a native `user` subscription, and a Binance user data
    /// stream, on some core (rarely a false yes: users share buckets).
    pub fn user_streamed(&self, user: u64) -> [bool; 2] {
        [false, true].map(|binance| self.user_bucket(user, binance).is_none_or(|b| b.load(Ordering::Acquire) > 0))
    }

    /// A user stream of `user` (Binance's, or a native `user` subscription) opened
    /// (`true`) or closed.
    pub fn user_stream(&self, user: u64, binance: bool, opened: bool) {
        if let Some(b) = self.user_bucket(user, binance) {
            count(b, opened);
        }
    }

    /// Whether some core follows `symbol`'s trades, its depth, its diff depth, its prices.
    pub fn market_streamed(&self, symbol: usize) -> [bool; 4] {
        let on = |counts: &[AtomicU32]| counts.get(symbol).is_some_and(|c| c.load(Ordering::Acquire) > 0);
        [on(&self.trade_streams), on(&self.depth_streams), on(&self.diff_streams), on(&self.price_streams)]
    }

    /// A core's first subscriber to `symbol`'s `what` came (`true`), or its last one left.
    pub fn market_stream(&self, symbol: usize, what: Followed, opened: bool) {
        let counts = match what {
            Followed::Trades => &self.trade_streams,
            Followed::Depth => &self.depth_streams,
            Followed::Diffs => &self.diff_streams,
            Followed::Prices => &self.price_streams,
        };
        if let Some(c) = counts.get(symbol) {
            count(c, opened);
        }
    }

    /// `symbol`'s index price was posted at `time` (ms).
    pub fn index_posted(&self, symbol: usize, time: i64) {
        if let Some(t) = self.index_times.get(symbol) {
            t.fetch_max(time, Ordering::AcqRel);
        }
    }

    /// The symbols whose index price is older than allowed at `now` (ms).
    pub fn stale_indexes(&self, now: i64) -> Vec<usize> {
        let stale = |t: i64| t > 0 && now.saturating_sub(t) > self.index_max_age_ms;
        self.index_times.iter().enumerate().filter(|(_, t)| stale(t.load(Ordering::Acquire))).map(|(s, _)| s).collect()
    }

    /// Shard `shard` is at `phase` of its start ("serving" when done); every call counts
    /// as progress for the start-up watchdog ([`Health::watch_start`]).
    pub fn starting(&self, shard: usize, phase: &'static str) {
        if let Ok(mut phases) = self.start_phases.lock()
            && let Some(p) = phases.get_mut(shard)
        {
            *p = phase;
        }
        self.start_steps.fetch_add(1, Ordering::AcqRel);
    }

    /// Watches the start from a thread of its own: when no shard has taken a step for
    /// `patience` and some are not serving yet, returns what each shard was doing (a
    /// start that hangs becomes an error naming where). Returns `None` once every shard
    /// serves, or the process is stopping.
    pub fn watch_start(&self, patience: Duration) -> Option<String> {
        let mut last = (self.start_steps.load(Ordering::Acquire), std::time::Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let phases = self.start_phases.lock().map(|p| p.clone()).unwrap_or_default();
            if phases.iter().all(|p| *p == "serving") || self.stopping.load(Ordering::Acquire) {
                return None;
            }
            let steps = self.start_steps.load(Ordering::Acquire);
            if steps != last.0 {
                last = (steps, std::time::Instant::now());
            } else if last.1.elapsed() > patience {
                let at: Vec<String> = phases.iter().enumerate().map(|(s, p)| format!("shard {s}: {p}")).collect();
                return Some(at.join("; "));
            }
        }
    }

    pub fn record_applied(&self, partition: u32, applied: Option<SymbolOffsets>) {
        if let Ok(mut map) = self.applied.lock() {
            map.insert(partition, applied);
        }
    }

    /// The offset of `symbol`'s log up to which every partition's snapshot holds its
    /// results: a symbol snapshot at or before it can be restored.
    pub fn applied_everywhere(&self, symbol: &str) -> u64 {
        let Ok(map) = self.applied.lock() else { return 0 };
        if map.len() < crate::accounts::PARTITIONS as usize {
            return 0;
        }
        map.values()
            .map(|a| a.as_ref().and_then(|v| v.iter().find(|(s, _)| s == symbol).map(|(_, o)| *o)).unwrap_or(0))
            .min()
            .unwrap_or(0)
    }

    /// Waits until every shard has arrived `round` times.
    ///
    /// # Errors
    /// The process is stopping (a shard failed to start): the others never arrive.
    pub async fn barrier(&self, round: usize, shards: usize) -> Result<(), &'static str> {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        while self.arrived.load(Ordering::Acquire) < round * shards {
            if self.stopping.load(Ordering::Acquire) {
                return Err("stopping before every shard started");
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_that_stops_moving_is_reported_with_where_each_shard_is() {
        let health = Health::new(2, hot::DISABLED, 1, 60);
        health.starting(0, "serving");
        health.starting(1, "reading a Kafka partition");
        let stuck = health.watch_start(Duration::from_millis(300));
        assert_eq!(stuck.as_deref(), Some("shard 0: serving; shard 1: reading a Kafka partition"));
        health.starting(1, "serving");
        assert_eq!(health.watch_start(Duration::from_millis(300)), None, "every shard serves");
    }
}
