//! A symbol's command stream on its owner shard: group commit, then matching in log order.
//!
//! Requests hand their command to the stream's committer task and wait. The committer
//! takes everything that queued up while the previous batch was being written, appends
//! it to the journal, commits once (one write + one fdatasync for the whole batch), and
//! only then executes the commands against the book, in log order, and forwards their
//! results to the account owners, in the same order. A command the log did not accept
//! is never executed.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use futures_channel::{mpsc, oneshot};
use futures_lite::StreamExt;

use super::rpc::Pending;
use super::Shard;
use crate::engine::{Command, CommandError, Event, Market, Side};
use crate::wire::StreamRecord;

/// A public trade for `/v1/trades`.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct PublicTrade {
    pub seq: u64,
    pub price: i64,
    pub quantity: i64,
    pub taker_side: Side,
    pub time: i64,
}

pub const RECENT_TRADES: usize = 1_000;

/// What happened to a command.
pub struct Outcome {
    pub result: Result<(), CommandError>,
    pub events: Vec<Event>,
    /// Acknowledgements of the account owners that applied the events.
    pub applied: Vec<Pending>,
}

pub struct Job {
    pub command: Command,
    pub done: oneshot::Sender<Result<Outcome, String>>,
}

pub struct SymbolStream {
    pub index: usize,
    pub market: RefCell<Market>,
    pub trades: RefCell<VecDeque<PublicTrade>>,
    /// Log offset of the next command to execute.
    pub next: Cell<u64>,
    /// Offset of the last snapshot taken.
    pub snapshot_at: Cell<u64>,
    queue: mpsc::UnboundedSender<Job>,
}

impl SymbolStream {
    pub fn new(index: usize, market: Market) -> (Rc<Self>, mpsc::UnboundedReceiver<Job>) {
        let (queue, rx) = mpsc::unbounded();
        let stream = Rc::new(Self {
            index,
            market: RefCell::new(market),
            trades: RefCell::default(),
            next: Cell::new(0),
            snapshot_at: Cell::new(0),
            queue,
        });
        (stream, rx)
    }

    /// Logs and executes a command; resolves once it is durable and executed.
    pub async fn submit(&self, command: Command) -> Result<Outcome, String> {
        let (done, rx) = oneshot::channel();
        self.queue.unbounded_send(Job { command, done }).map_err(|_| "shard is stopping".to_owned())?;
        rx.await.map_err(|_| "shard is stopping".to_owned())?
    }

    /// Executes one logged command (at log `offset`) and forwards its results, at start
    /// and at run time.
    pub async fn execute(&self, shard: &Rc<Shard>, command: &Command, offset: u64, replayed: bool) -> Outcome {
        let mut events = Vec::new();
        self.next.set(offset + 1);
        let result = self.market.borrow_mut().execute(command, &mut events);
        self.remember_trades(&events);
        if let Some(kafka) = &shard.kafka {
            kafka.publish(&shard.map.symbols[self.index], &events);
        }
        let logged = match command {
            Command::Place(o) => Some(*o),
            _ => None,
        };
        let applied = shard.forward_results(self.index, offset, logged, replayed, &events).await;
        Outcome { result, events, applied }
    }

    fn remember_trades(&self, events: &[Event]) {
        let mut trades = self.trades.borrow_mut();
        for e in events {
            if let Event::TradeExecuted(t) = e {
                trades.push_front(PublicTrade {
                    seq: t.seq,
                    price: t.price,
                    quantity: t.quantity,
                    taker_side: t.taker_side,
                    time: t.timestamp,
                });
            }
        }
        trades.truncate(RECENT_TRADES);
    }
}

/// The committer task of one stream.
///
/// After a failed commit the records sent may still have reached the log (a broker can
/// persist a batch whose acknowledgement never arrived). Their clients were told 503,
/// so before anything else is logged the stream reads back what the log holds past the
/// last command it executed and appends a void for each such record: replays skip them,
/// and the book never holds an order its client was told failed. Until that succeeds
/// the stream answers 503 and the health check says degraded.
pub async fn run(shard: Rc<Shard>, stream: Rc<SymbolStream>, mut journal: super::Log, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut in_doubt: Option<u64> = None;
    while let Some(first) = jobs.next().await {
        let mut batch = vec![first];
        while let Ok(job) = jobs.try_recv() {
            batch.push(job);
        }
        shard.metrics.queue_depth.set(batch.len() as i64);
        if let Some(from) = in_doubt {
            match settle(&shard, &stream, &mut journal, from).await {
                Ok(()) => {
                    in_doubt = None;
                    shard.health.event_log_down.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    tracing::info!(symbol = stream.index, "event log back; in-doubt records voided");
                }
                Err(e) => {
                    for job in batch {
                        let _ = job.done.send(Err(format!("event log unavailable: {e}")));
                    }
                    continue;
                }
            }
        }
        let mut accepted = Vec::with_capacity(batch.len());
        for job in batch {
            let record = StreamRecord::Command(job.command);
            match journal.append(&shard.encode_command(stream.index, &record)).map_err(|e| e.to_string()) {
                Ok(()) => accepted.push(job),
                Err(e) => {
                    let _ = job.done.send(Err(e));
                }
            }
        }
        let started = Instant::now();
        let committed = journal.commit().await;
        shard.metrics.fsync_seconds.observe(started.elapsed().as_secs_f64());
        match committed {
            Ok(offsets) if offsets.len() == accepted.len() => {
                for (job, offset) in accepted.into_iter().zip(offsets) {
                    let outcome = stream.execute(&shard, &job.command, offset, false).await;
                    let _ = job.done.send(Ok(outcome));
                }
                if stream.next.get() - stream.snapshot_at.get() >= shard.config.snapshot_every.max(1) {
                    super::snapshots::snapshot_symbol(&shard, &stream).await;
                }
            }
            failed => {
                let e = failed.map_or_else(|e| e.to_string(), |o| format!("log returned {} offsets for {} records", o.len(), accepted.len()));
                tracing::error!(symbol = stream.index, error = %e, "event log commit failed");
                if in_doubt.is_none() {
                    in_doubt = Some(stream.next.get());
                    shard.health.event_log_down.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                }
                for job in accepted {
                    let _ = job.done.send(Err(format!("event log unavailable: {e}")));
                }
            }
        }
        shard.metrics.queue_depth.set(0);
    }
}

/// Voids every command the log holds at or after `from` that was never executed.
async fn settle(shard: &Rc<Shard>, stream: &Rc<SymbolStream>, journal: &mut super::Log, from: u64) -> Result<(), String> {
    let patience = std::time::Duration::from_millis(shard.config.kafka.timeout_ms.max(100));
    let found = journal.read_back(from, patience).await.map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    for (offset, bytes) in &found {
        records.push((*offset, shard.decode_command(stream.index, bytes)?));
    }
    let voided: Vec<u64> = records.iter().filter_map(|(_, r)| if let StreamRecord::Void(o) = r { Some(*o) } else { None }).collect();
    let doubtful: Vec<u64> = records
        .iter()
        .filter(|(o, r)| matches!(r, StreamRecord::Command(_)) && !voided.contains(o))
        .map(|(o, _)| *o)
        .collect();
    for offset in &doubtful {
        journal.append(&shard.encode_command(stream.index, &StreamRecord::Void(*offset))).map_err(|e| e.to_string())?;
    }
    let offsets = journal.commit().await.map_err(|e| e.to_string())?;
    let last = records.iter().map(|(o, _)| *o).chain(offsets).max();
    if let Some(last) = last {
        stream.next.set(stream.next.get().max(last + 1));
    }
    if !doubtful.is_empty() {
        tracing::warn!(symbol = stream.index, voided = doubtful.len(), "voided commands the log took after reporting failure");
    }
    Ok(())
}
