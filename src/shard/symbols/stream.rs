//! A symbol's command stream on its owner shard: batches sent to the log, then executed
//! against the book strictly in log order.
//!
//! Requests hand their command to the stream's committer task and wait. The committer
//! sends everything that queued up while the previous batch was being sent as one batch
//! (one write + one fdatasync in the journal, one record in Kafka), and the
//! executor task executes each batch once the log has confirmed it, in the order sent,
//! and forwards the results to the account owners in the same order. A command the log
//! did not confirm is never executed.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use exchange_io::Confirmation;
use futures_channel::{mpsc, oneshot};
use glommio::channels::local_channel::LocalReceiver;
use futures_lite::StreamExt;

use super::SymbolRoom;
use crate::engine::{Command, CommandError, ConditionalStatus, Event, Market, NewOrder, Side};
use crate::shard::core::now_ms;
use crate::shard::log::{voids, Log, Stream};
use crate::shard::projections::{feed, hot};
use crate::shard::protocol::{BookDiff, Depth, MarketNews, MarketPrices, NotLogged, PublicTrade, Request};
use crate::shard::rpc::Pending;
use crate::wire::StreamRecord;

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
    /// The core the command's answer goes to over the mesh (see
    /// [`SymbolRoom::forward_results`]).
    pub answered_on: Option<usize>,
    pub done: oneshot::Sender<Result<Outcome, NotLogged>>,
}

pub struct SymbolStream {
    pub index: usize,
    pub market: RefCell<Market>,
    pub trades: RefCell<VecDeque<PublicTrade>>,
    pub candles: RefCell<crate::shard::tape::Candles>,
    pub history: RefCell<crate::shard::tape::PriceHistory>,
    /// Log offset of the next command to execute.
    pub next: Cell<u64>,
    /// Commands executed since the last snapshot (or the one a recovery started from):
    /// on Kafka a record holds a batch and a partition several symbols, so offsets do
    /// not count commands.
    pub since_snapshot: Cell<u64>,
    /// The floor of the log's latest epoch (Kafka): what a replay starting from a
    /// snapshot must know of the log before it.
    pub epoch: Cell<crate::wire::EpochFloor>,
    /// A [`Command::Liquidate`] is on its way to the log.
    sweeping: Cell<bool>,
    /// Due positions the symbol's liquidation pass has still to take (for the gauge).
    due: Cell<i64>,
    /// Orders answered 504: the log may have them, so their locks are held until
    /// [`settle`] has voided them in the log.
    in_doubt: RefCell<Vec<NewOrder>>,
    /// The streams' depth read is scheduled (at most one a tick).
    depth_due: Cell<bool>,
    /// The diff depth: the book as its last diff left it, and whether a read is scheduled.
    diffs: super::diffs::Diffs,
    diff_due: Cell<bool>,
    queue: mpsc::UnboundedSender<Job>,
}

impl SymbolStream {
    pub fn new(index: usize, market: Market) -> (Rc<Self>, mpsc::UnboundedReceiver<Job>) {
        let (queue, rx) = mpsc::unbounded();
        let stream = Rc::new(Self {
            index,
            market: RefCell::new(market),
            trades: RefCell::default(),
            candles: RefCell::default(),
            history: RefCell::default(),
            next: Cell::new(0),
            since_snapshot: Cell::new(0),
            epoch: Cell::default(),
            sweeping: Cell::new(false),
            due: Cell::new(0),
            in_doubt: RefCell::default(),
            depth_due: Cell::new(false),
            diffs: super::diffs::Diffs::default(),
            diff_due: Cell::new(false),
            queue,
        });
        (stream, rx)
    }

    /// Logs and executes a command; resolves once it is durable and executed.
    pub async fn submit(&self, command: Command) -> Result<Outcome, NotLogged> {
        self.submit_for(command, None).await
    }

    /// [`Self::submit`] for a request whose answer goes to core `answered_on` over the
    /// mesh: that core's results are not waited for.
    pub async fn submit_for(&self, command: Command, answered_on: Option<usize>) -> Result<Outcome, NotLogged> {
        let (done, rx) = oneshot::channel();
        let stopping = || NotLogged::Refused("shard is stopping".to_owned());
        self.queue.unbounded_send(Job { command, answered_on, done }).map_err(|_| stopping())?;
        rx.await.map_err(|_| stopping())?
    }

    /// Executes one logged command (at log `offset`) and forwards its results, at start
    /// and at run time.
    pub fn execute(&self, room: &SymbolRoom, command: &Command, offset: u64, replayed: bool, answered_on: Option<usize>) -> Outcome {
        let mut events = Vec::new();
        self.next.set(offset + 1);
        self.since_snapshot.set(self.since_snapshot.get() + 1);
        let result = self.market.borrow_mut().execute(command, &mut events);
        self.remember_trades(&events);
        if events.iter().any(|e| matches!(e, Event::PriceUpdated(_) | Event::LiquidationEnded(_) | Event::FundingSettled(_))) {
            hot::market_changed(&room.out, self.index, self.prices());
        }
        if let Command::IndexPrice { timestamp, .. } = command {
            room.health.index_posted(self.index, *timestamp);
        }
        let ended = events.iter().filter(|e| matches!(e, Event::LiquidationEnded(_))).count();
        if ended > 0 {
            room.metrics.liquidations.inc_by(ended as u64);
        }
        let due_before = self.due.replace(self.market.borrow().perp().queue.len() as i64);
        if due_before != self.due.get() {
            room.metrics.liquidations_due.inc_by(self.due.get() - due_before);
        }
        if !replayed {
            self.stream_market(room, &events);
            let triggered = |e: &Event| matches!(e, Event::Conditional(c) if c.conditional.status == ConditionalStatus::Triggering);
            if events.iter().any(triggered) {
                room.triggers.wake(self.index);
            }
        }
        // Liquidations a bounded pass left: logged as a command of their own, at once.
        if !replayed
            && self.market.borrow().perp().pending()
            && !self.sweeping.replace(true)
            && let Some(stream) = room.stream(self.index)
        {
            glommio::spawn_local(async move {
                // Sweeps follow each other until the pass is done; one that takes nothing
                // (a stale index pauses liquidation) or that the log refuses ends them,
                // and the next command that leaves work starts them again.
                loop {
                    let due = stream.market.borrow().perp().queue.len();
                    let swept = match stream.submit(Command::Liquidate { timestamp: now_ms() }).await {
                        // The next sweep waits until the account owners have applied
                        // this one: orders in between wait behind one sweep's results,
                        // not behind a backlog of them.
                        Ok(outcome) => {
                            for ack in outcome.applied {
                                let _ = ack.await;
                            }
                            true
                        }
                        Err(_) => false,
                    };
                    let left = stream.market.borrow().perp().queue.len();
                    if !swept || left == 0 || left >= due {
                        break;
                    }
                }
                stream.sweeping.set(false);
            })
            .detach();
        }
        if let Some(kafka) = &room.log.kafka {
            kafka.publish(&room.map.symbols[self.index], &events);
        }
        let logged = command.order().copied();
        let applied = room.forward_results(self.index, offset, logged, replayed, &events, answered_on);
        Outcome { result, events, applied }
    }

    /// Hands the streams what some core follows of this symbol: its public trades now,
    /// its depth at most once a tick and its changed levels at most once every
    /// [`feed::DIFF_EVERY`] (read from the book then: the latest state wins).
    fn stream_market(&self, room: &SymbolRoom, events: &[Event]) {
        let [trades_followed, depth_followed, diffs_followed, prices_followed] = room.health.market_streamed(self.index);
        let mut news = MarketNews { symbol: self.index, ..MarketNews::default() };
        if trades_followed {
            news.trades = events.iter().filter_map(PublicTrade::of).collect();
        }
        if prices_followed && events.iter().any(|e| matches!(e, Event::PriceUpdated(_) | Event::FundingSettled(_))) {
            news.prices = Some(super::mark_prices(self, now_ms()));
        }
        feed::market(&room.out, news);
        if !diffs_followed {
            self.diffs.forget();
        }
        let changed = events.iter().any(|e| matches!(e, Event::OrderPlaced(_) | Event::OrderCancelled(_) | Event::TradeExecuted(_) | Event::OrderAmended(_)));
        if !changed {
            return;
        }
        let later = |due: &Cell<bool>, after: Duration, read: fn(&SymbolStream) -> (Option<Depth>, Option<BookDiff>)| {
            if due.replace(true) {
                return;
            }
            let Some(stream) = room.stream(self.index) else { return };
            let out = room.out.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(after).await;
                let (depth, diff) = read(&stream);
                feed::market(&out, MarketNews { symbol: stream.index, depth, diff, ..MarketNews::default() });
            })
            .detach();
        };
        if depth_followed {
            later(&self.depth_due, feed::DEPTH_EVERY, |stream| {
                stream.depth_due.set(false);
                let market = stream.market.borrow();
                let top = |side| market.book().depth(side).take(feed::DEPTH_LEVELS).collect::<Vec<_>>();
                (Some(Depth { seq: market.seq(), bids: top(Side::Buy), asks: top(Side::Sell) }), None)
            });
        }
        if diffs_followed {
            later(&self.diff_due, feed::DIFF_EVERY, |stream| {
                stream.diff_due.set(false);
                (None, stream.diffs.read(&stream.market.borrow(), now_ms()))
            });
        }
    }

    /// The symbol's prices and insurance fund now.
    pub fn prices(&self) -> MarketPrices {
        let market = self.market.borrow();
        let perp = market.perp();
        MarketPrices { last: market.last_price(), index: perp.index, mark: perp.mark, fund: perp.fund }
    }

    fn remember_trades(&self, events: &[Event]) {
        let mut trades = self.trades.borrow_mut();
        let mut candles = self.candles.borrow_mut();
        let mut history = self.history.borrow_mut();
        for e in events {
            history.record(e);
            if let Some(t) = PublicTrade::of(e) {
                candles.record(&t);
                trades.push_front(t);
            }
        }
        trades.truncate(RECENT_TRADES);
    }
}

/// Batches a stream may have sent to a pipelined log (Kafka) and not yet executed.
/// Measured with 64 closed-loop clients against a local broker: 16 gave 15.6k orders/s,
/// 2 gave 12.1k: with few in flight, every batch also waits for the ones before it.
const IN_FLIGHT: usize = 16;

/// How long a gathering stream waits for its next command before it looks again whether
/// it still gathers (it stops 10 ms after its last batch; see `exchange_io::kafka`).
const GATHERING_RECHECK: Duration = Duration::from_millis(50);

/// How often a stream whose log failed tries to settle when no command asks it to.
const SETTLE_RETRY: Duration = Duration::from_millis(250);

/// A batch handed to the log, waiting for its confirmation.
struct Sent {
    jobs: Vec<Job>,
    /// The records as logged, to void them if the batch fails.
    payloads: Vec<Vec<u8>>,
    /// How many of the jobs each record holds, in order.
    spans: Vec<usize>,
    confirmation: Confirmation,
    started: Instant,
    /// Whether later batches were sent before this one was confirmed.
    pipelined: bool,
}

/// What the committer and the executor of one stream share.
struct Pipeline {
    /// Set by the first failed batch of a pipelined log: the offset from which the log
    /// may hold records whose clients were told they failed. Cleared once they are voided.
    failed_from: Cell<Option<u64>>,
    in_flight: Cell<usize>,
    /// Told when the last batch in flight has been executed (see [`Pipeline::drained`]).
    drain: RefCell<Option<oneshot::Sender<()>>>,
    /// The log refuses records as they are appended (a producer that failed for good,
    /// being replaced): `/health` says so until it takes one again.
    refusing: Cell<bool>,
    /// Wakes the committer when a batch fails, so that it settles at once.
    failed: mpsc::UnboundedSender<()>,
}

impl Pipeline {
    /// A batch sent is executed (or refused).
    fn done(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
        if self.in_flight.get() == 0
            && let Some(drained) = self.drain.borrow_mut().take()
        {
            let _ = drained.send(());
        }
    }

    /// Once every batch sent has been executed.
    async fn drained(&self) {
        if self.in_flight.get() > 0 {
            let (tx, rx) = oneshot::channel();
            *self.drain.borrow_mut() = Some(tx);
            let _ = rx.await;
        }
    }
}

/// The committer task of one stream.
///
/// It takes everything that queued up while the previous batch was being sent, appends
/// it to the log and sends it as one batch. With Kafka it does not wait for the broker:
/// up to [`IN_FLIGHT`] batches are on their way at once, and a second task executes them
/// strictly in the order they were sent, each once its confirmation is in. The embedded
/// journal confirms one batch at a time (its group commit is the batching), and the
/// executor runs a batch while the next one is being written.
///
/// When a batch of a pipelined log fails, it and every batch sent after it fail: their
/// records may still land (a broker can persist a batch whose acknowledgement never
/// arrived), so they are voided on local disk before their clients hear 503 (see
/// [`crate::shard::log::voids`]); and before anything else is logged, the committer waits for every
/// batch in flight to come back, reads what the log holds past the last command it
/// executed and appends a void for each such record: replays skip them, and the book
/// never holds an order its client was told failed. Until that succeeds the stream
/// answers 503 and the health check says degraded.
pub async fn run(room: Rc<SymbolRoom>, stream: Rc<SymbolStream>, mut journal: Log, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let (failed, mut failures) = mpsc::unbounded();
    let pipeline = Rc::new(Pipeline { failed_from: Cell::new(None), in_flight: Cell::new(0), drain: RefCell::default(), refusing: Cell::new(false), failed });
    let (to_executor, sent) = glommio::channels::local_channel::new_bounded(IN_FLIGHT);
    glommio::spawn_local(execute_in_order(room.clone(), stream.clone(), pipeline.clone(), sent)).detach();
    // Whether the stream gathers its batches now (for the metrics).
    let mut gathering = false;
    loop {
        // After a failure the stream settles without waiting for a command to log: the
        // orders answered 504 are released only then, and their clients' retries (same
        // clientOrderId) are refused before they reach the log until it has happened.
        let recheck = gathering;
        let wake = async {
            if pipeline.failed_from.get().is_some() {
                glommio::timer::sleep(SETTLE_RETRY).await;
            } else if recheck {
                // A gathering stream that goes quiet stops gathering (the log's `gathering`):
                // it wakes to say so, or the gauge would hold it until its next command.
                futures_lite::future::or(async { failures.next().await.unwrap_or_default() }, glommio::timer::sleep(GATHERING_RECHECK)).await;
            } else {
                let _ = failures.next().await;
            }
            Some(None)
        };
        let Some(first) = futures_lite::future::or(async { jobs.next().await.map(Some) }, wake).await else { break };
        let mut batch: Vec<Job> = first.into_iter().collect();
        while let Ok(job) = jobs.try_recv() {
            batch.push(job);
        }
        room.metrics.queue_depth.set(batch.len() as i64);
        if let Some(from) = pipeline.failed_from.get() {
            let recover = async {
                pipeline.drained().await;
                settle(&room, &stream, &mut journal, from).await
            };
            // Commands that arrive meanwhile are answered at once (a dead broker would
            // otherwise hold each for a read-back's patience); they were never logged.
            let refuse_meanwhile = async {
                while let Some(job) = jobs.next().await {
                    let _ = job.done.send(Err(NotLogged::Refused("event log unavailable: recovering from a failed write".into())));
                }
                std::future::pending().await
            };
            match futures_lite::future::or(recover, refuse_meanwhile).await {
                Ok(()) => {
                    pipeline.failed_from.set(None);
                    room.health.event_log_down.fetch_sub(1, Ordering::AcqRel);
                    tracing::info!(symbol = stream.index, "event log back; in-doubt records voided");
                    release_in_doubt(&room, &stream);
                }
                Err(e) => {
                    for job in batch {
                        let _ = job.done.send(Err(NotLogged::Refused(format!("event log unavailable: {e}"))));
                    }
                    continue;
                }
            }
        }
        let linger = journal.gathering();
        if linger.is_some() != gathering {
            gathering = !gathering;
            if gathering { room.metrics.lingering_streams.inc() } else { room.metrics.lingering_streams.dec() };
        }
        if batch.is_empty() {
            continue;
        }
        if let Some(linger) = linger {
            // Busy (Kafka: batches queue behind each other): the batch waits a moment
            // for the commands behind it, and they go out together, in one record.
            glommio::timer::sleep(linger).await;
            while let Ok(job) = jobs.try_recv() {
                batch.push(job);
            }
        }
        // The batch as log records (one on Kafka, one a command in the journal, see
        // `LogRoom::has_room`); a record the log refuses is refused to its commands.
        let mut accepted = Vec::with_capacity(batch.len());
        let (mut payloads, mut spans) = (Vec::new(), Vec::new());
        let mut batch = batch.into_iter().peekable();
        while batch.peek().is_some() {
            let (first, mut bytes) = (accepted.len(), Vec::new());
            while let Some(job) = batch.next_if(|_| room.log.has_room(&bytes)) {
                room.log.append_command(stream.index, &StreamRecord::Command(job.command), &mut bytes);
                accepted.push(job);
            }
            let appended = journal.append(&bytes);
            if appended.is_ok() == pipeline.refusing.get() {
                pipeline.refusing.set(appended.is_err());
                if appended.is_err() {
                    room.health.event_log_down.fetch_add(1, Ordering::AcqRel);
                } else {
                    room.health.event_log_down.fetch_sub(1, Ordering::AcqRel);
                }
            }
            match appended {
                Ok(()) => {
                    spans.push(accepted.len() - first);
                    payloads.push(bytes);
                }
                Err(e) => {
                    for job in accepted.drain(first..) {
                        let _ = job.done.send(Err(NotLogged::Refused(format!("event log unavailable: {e}"))));
                    }
                }
            }
        }
        if accepted.is_empty() {
            continue;
        }
        room.metrics.batch_commands.observe(accepted.len() as f64);
        let started = Instant::now();
        let (confirmation, pipelined) = match journal.send() {
            Some(c) => (c, true),
            None => {
                let committed = journal.commit().await;
                (Box::pin(async move { committed }) as Confirmation, false)
            }
        };
        pipeline.in_flight.set(pipeline.in_flight.get() + 1);
        let sent = Sent { jobs: accepted, payloads, spans, confirmation, started, pipelined };
        if to_executor.send(sent).await.is_err() {
            break;
        }
        room.metrics.queue_depth.set(0);
    }
}

/// Executes confirmed batches in the order they were sent (see [`run`]).
async fn execute_in_order(room: Rc<SymbolRoom>, stream: Rc<SymbolStream>, pipeline: Rc<Pipeline>, sent: LocalReceiver<Sent>) {
    let mut journal_down = false;
    while let Some(Sent { jobs, payloads, spans, confirmation, started, pipelined }) = sent.recv().await {
        if pipelined && pipeline.failed_from.get().is_some() {
            refuse(&room, &stream, jobs, &payloads, "an earlier batch was not confirmed");
            let _ = confirmation.await;
            pipeline.done();
            continue;
        }
        let confirmed = confirmation.await;
        room.metrics.fsync_seconds.observe(started.elapsed().as_secs_f64());
        match confirmed {
            Ok(offsets) if offsets.len() == payloads.len() => {
                if std::mem::take(&mut journal_down) {
                    room.health.event_log_down.fetch_sub(1, Ordering::AcqRel);
                }
                let mut jobs = jobs.into_iter();
                for (offset, span) in offsets.into_iter().zip(spans) {
                    for job in jobs.by_ref().take(span) {
                        let outcome = stream.execute(&room, &job.command, offset, false, job.answered_on);
                        let _ = job.done.send(Ok(outcome));
                    }
                }
                if stream.since_snapshot.get() >= room.config.snapshot_every.max(1) {
                    room.snapshot_symbol(&stream);
                }
            }
            Err(exchange_io::journal::JournalError::Superseded(why)) => {
                // Delivered, but a newer process may have started before the records
                // landed: its replay decides them. Nothing more is written here, so no
                // void and no settling; the process is stopping.
                for job in jobs {
                    let _ = job.done.send(Err(NotLogged::Unknown(why.clone())));
                }
            }
            failed => {
                // The journal could not cut what the failed write left: those records may
                // be read back at the next start, so they are voided like Kafka's.
                let in_doubt = matches!(failed, Err(exchange_io::journal::JournalError::InDoubt(_)));
                let e = failed.map_or_else(|e| e.to_string(), |o| format!("log returned {} offsets for {} records", o.len(), payloads.len()));
                tracing::error!(symbol = stream.index, error = %e, "event log commit failed");
                if in_doubt {
                    if !std::mem::replace(&mut journal_down, true) {
                        room.health.event_log_down.fetch_add(1, Ordering::AcqRel);
                    }
                    refuse(&room, &stream, jobs, &payloads, &e);
                } else if pipelined {
                    pipeline.failed_from.set(Some(stream.next.get()));
                    let _ = pipeline.failed.unbounded_send(());
                    room.health.event_log_down.fetch_add(1, Ordering::AcqRel);
                    refuse(&room, &stream, jobs, &payloads, &e);
                } else {
                    // The journal cut what the failed commit wrote: it is certainly not logged.
                    if !std::mem::replace(&mut journal_down, true) {
                        room.health.event_log_down.fetch_add(1, Ordering::AcqRel);
                    }
                    for job in jobs {
                        let _ = job.done.send(Err(NotLogged::Refused(format!("event log unavailable: {e}"))));
                    }
                }
            }
        }
        pipeline.done();
    }
}

/// Answers the jobs of a batch that may still land (see [`voids::refuse`]).
fn refuse(room: &SymbolRoom, stream: &SymbolStream, jobs: Vec<Job>, payloads: &[Vec<u8>], why: &str) {
    let name = &room.map.symbols[stream.index].name;
    let answer = voids::refuse(&room.log, Stream::Symbol(name), payloads, why);
    if let NotLogged::Unknown(_) = answer {
        let orders = jobs.iter().filter_map(|j| j.command.order().copied());
        stream.in_doubt.borrow_mut().extend(orders);
    }
    for job in jobs {
        let _ = job.done.send(Err(answer.clone()));
    }
}

/// Releases the orders answered 504 once [`settle`] has voided them in the log: they
/// are certainly not in effect now, nor after any restart.
fn release_in_doubt(room: &Rc<SymbolRoom>, stream: &SymbolStream) {
    let orders = stream.in_doubt.take();
    if orders.is_empty() {
        return;
    }
    tracing::info!(symbol = stream.index, orders = orders.len(), "orders answered 504 are void in the log: their margin and clientOrderIds are free");
    let room = room.clone();
    glommio::spawn_local(async move {
        for order in orders {
            let _ = room.ask(room.account_owner(order.user), Request::Release { order }).await;
        }
    })
    .detach();
}

/// Voids every command the log holds at or after `from` that was never executed.
async fn settle(room: &Rc<SymbolRoom>, stream: &Rc<SymbolStream>, journal: &mut Log, from: u64) -> Result<(), String> {
    let patience = std::time::Duration::from_millis(room.config.kafka.timeout_ms.max(100));
    let found = journal.read_back(from, patience).await.map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    let mut floor = stream.epoch.get();
    for (offset, bytes) in &found {
        for (record, seq) in room.log.decode_commands(stream.index, bytes)? {
            // As every reader: below the floor, a command needs no void and a void counts not.
            let counts = seq.is_none_or(|seq| floor.admits(record == StreamRecord::Epoch, seq));
            records.push((*offset, record, counts));
        }
    }
    let voided: Vec<u64> =
        records.iter().filter_map(|(_, r, counts)| if let (StreamRecord::Void(o), true) = (r, counts) { Some(*o) } else { None }).collect();
    let mut doubtful: Vec<u64> = records
        .iter()
        .filter(|(o, r, counts)| *counts && matches!(r, StreamRecord::Command(_)) && !voided.contains(o))
        .map(|(o, _, _)| *o)
        .collect();
    // A record of several commands is voided once.
    doubtful.dedup();
    for offset in &doubtful {
        journal.append(&room.log.encode_command(stream.index, &StreamRecord::Void(*offset))).map_err(|e| e.to_string())?;
    }
    // And for what is not there yet: a record of the failed batches that lands after
    // this one counts for no reader.
    let (epoch, floor) = room.log.epoch_record(stream.index);
    journal.append(&epoch).map_err(|e| e.to_string())?;
    let offsets = journal.commit().await.map_err(|e| e.to_string())?;
    stream.epoch.set(floor);
    let last = records.iter().map(|(o, _, _)| *o).chain(offsets).max();
    if let Some(last) = last {
        stream.next.set(stream.next.get().max(last + 1));
    }
    if !doubtful.is_empty() {
        tracing::warn!(symbol = stream.index, voided = doubtful.len(), "voided commands the log took after reporting failure");
    }
    Ok(())
}
