//! One writer at a time on a set of Kafka topics.
//!
//! A process that starts on the exchange's topics first appends a claim to a control
//! topic (one record, partition 0), and only then its start epochs on the command logs
//! (see the exchange's `wire::EpochFloor`): from that epoch on, every record an older
//! process appends counts for no reader. The older process must therefore stop
//! acknowledging before its records can fall behind that epoch, and it does so exactly:
//! a batch is acknowledged only after a check *started after its delivery report* finds
//! no claim after the process's own. A claim appended later than that check was
//! appended after the batch, and the newer process's epochs come after its claim, so
//! every acknowledged batch precedes them and is replayed by the newer process.
//!
//! The check is a high-watermark query of the control partition (one small request;
//! one check serves every batch delivered before it started). Most batches need none:
//! a newer process's epoch on a partition is a record this process did not write, so
//! while every offset of a partition since the last check is one of this process's own
//! records ([`Track`], fed by the delivery reports of every core), no newer epoch can
//! precede the batch there. A check is made for the first batch on each partition (a
//! newer process may have fenced it before this one did) and whenever a batch finds a
//! gap that this process's own records do not fill.
//!
//! Once a newer claim is found the tenancy is lost for good: the log refuses every
//! record, and batches delivered but not checked are reported as in doubt (the newer
//! process's replay decides them; a client's retry with its `clientOrderId` gets that
//! answer).

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::Producer as _;

use crate::kafka::{self, Producer};

/// This process's claim on the topics (see the module documentation).
pub struct Tenancy {
    state: Mutex<State>,
    /// `state.lost` is set: read on every append without taking the lock.
    gone: std::sync::atomic::AtomicBool,
    /// Per topic and partition, what is known of its offsets.
    tracks: Mutex<Vec<(String, i32, Arc<Mutex<Track>>)>>,
    wanted: Condvar,
    /// Where this process's claim is in the control partition.
    pub claim_offset: u64,
    pub topic: String,
}

#[derive(Default)]
struct State {
    /// Checks started so far; a check is numbered when it starts.
    started: u64,
    /// The newest check that found no later claim.
    passed: u64,
    /// A batch waits for a check that has not started yet.
    wanted: bool,
    /// Why the tenancy is lost, once it is.
    lost: Option<String>,
    waiting: Vec<Waker>,
}

impl Tenancy {
    /// Appends this process's claim (`who`: a JSON description of it) to partition 0 of
    /// `topic` and starts checking on demand, on a thread of its own. `lost` is called
    /// once, from that thread, when a newer claim is found. Blocking: call before the
    /// shards start.
    ///
    /// # Errors
    /// The broker did not take the claim, or no thread could be started.
    pub fn claim(
        brokers: &str,
        topic: &str,
        who: &[u8],
        patience: Duration,
        lost: impl FnOnce(&str) + Send + 'static,
    ) -> Result<Arc<Self>, String> {
        let client: Producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", patience.as_millis().to_string())
            .create()
            .map_err(|e| format!("kafka client for {brokers}: {e}"))?;
        let report = kafka::send(&client, topic, 0, "claim", who)?;
        let claim_offset = match futures_lite::future::block_on(report) {
            Ok(Ok(delivery)) => u64::try_from(delivery.offset).map_err(|e| e.to_string())?,
            Ok(Err((e, _))) => return Err(format!("{topic}: claim: {e}")),
            Err(_) => return Err(format!("{topic}: claim: producer closed")),
        };
        let this = Arc::new(Self {
            state: Mutex::default(),
            gone: std::sync::atomic::AtomicBool::new(false),
            tracks: Mutex::default(),
            wanted: Condvar::new(),
            claim_offset,
            topic: topic.to_owned(),
        });
        let checker = this.clone();
        crate::offcore::spawn("kafka-tenancy", move || checker.check_on_demand(&client, patience, lost))
            .map_err(|e| format!("no tenancy thread: {e}"))?;
        Ok(this)
    }

    /// The track of a partition, shared by every log of this process that writes it.
    pub fn track(&self, topic: &str, partition: i32) -> Arc<Mutex<Track>> {
        let mut tracks = self.tracks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, _, t)) = tracks.iter().find(|(t, p, _)| t == topic && *p == partition) {
            return t.clone();
        }
        let track = Arc::new(Mutex::new(Track::default()));
        tracks.push((topic.to_owned(), partition, track.clone()));
        track
    }

    /// Resolves once the records at `offsets` of the partition `track` follows are known
    /// to precede any newer process's epoch there: at once when every offset below them
    /// since the last check is this process's own, else after a check.
    ///
    /// # Errors
    /// The tenancy is lost.
    pub async fn cleared(&self, track: &Mutex<Track>, offsets: &[u64]) -> Result<(), String> {
        let Some(last) = offsets.iter().max().copied() else { return Ok(()) };
        let lock = || track.lock().unwrap_or_else(PoisonError::into_inner);
        if lock().note(offsets) {
            return Ok(());
        }
        // The records in between are often another core's, its report on its way.
        glommio::timer::sleep(Duration::from_micros(200)).await;
        if lock().covers(last) {
            return Ok(());
        }
        self.confirmed().await?;
        lock().checked_through(last);
        Ok(())
    }

    /// Why the tenancy is lost, if it is: no record may be appended then.
    pub fn lost(&self) -> Option<String> {
        if !self.gone.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        self.lock().lost.clone()
    }

    /// Resolves once a check that started after this call found no newer claim: every
    /// record delivered before the call then precedes any newer process's epoch.
    ///
    /// # Errors
    /// The tenancy is lost: a newer process may have started before those records.
    pub fn confirmed(&self) -> impl Future<Output = Result<(), String>> + '_ {
        let needed = {
            let mut state = self.lock();
            state.wanted = true;
            self.wanted.notify_one();
            state.started + 1
        };
        std::future::poll_fn(move |cx| {
            let mut state = self.lock();
            if let Some(why) = &state.lost {
                return Poll::Ready(Err(why.clone()));
            }
            if state.passed >= needed {
                return Poll::Ready(Ok(()));
            }
            state.waiting.push(cx.waker().clone());
            Poll::Pending
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_on_demand(&self, client: &Producer, patience: Duration, lost: impl FnOnce(&str)) {
        let mut lost = Some(lost);
        loop {
            let round = {
                let mut state = self.wanted.wait_while(self.lock(), |s| !s.wanted).unwrap_or_else(PoisonError::into_inner);
                state.wanted = false;
                state.started += 1;
                state.started
            };
            let found = client.client().fetch_watermarks(&self.topic, 0, patience);
            let mut state = self.lock();
            match found {
                // The claim is a batch of its own, so the end is exact (a broker that
                // reports the last batch's base offset + 1 reports it too).
                Ok((_, end)) if u64::try_from(end).unwrap_or(0) <= self.claim_offset + 1 => state.passed = round,
                Ok((_, end)) => {
                    let why = format!(
                        "another process claimed the event log's topics (claim at {} of {}; this process's at {})",
                        end - 1,
                        self.topic,
                        self.claim_offset
                    );
                    tracing::error!(reason = why, "this process no longer writes the event log: stopping");
                    state.lost = Some(why.clone());
                    self.gone.store(true, std::sync::atomic::Ordering::Release);
                    if let Some(lost) = lost.take() {
                        drop(state);
                        lost(&why);
                        state = self.lock();
                    }
                }
                Err(e) => {
                    // Waiting batches time out on their own; the next one asks again.
                    tracing::warn!(topic = self.topic, error = %e, "could not check the event log's tenancy");
                    state.wanted = true;
                    drop(state);
                    std::thread::sleep(Duration::from_millis(50));
                    state = self.lock();
                }
            }
            for waker in state.waiting.drain(..) {
                waker.wake();
            }
            if state.lost.is_some() {
                return;
            }
        }
    }
}

/// What a process knows of one partition's offsets: everything below `cleared` is either
/// its own record or was there before a check that found no newer claim; `own` holds
/// its own records above that, delivered out of order.
#[derive(Default)]
pub struct Track {
    cleared: Option<u64>,
    own: std::collections::BTreeSet<u64>,
}

impl Track {
    /// Notes this process's records at `offsets`; whether they are now all cleared.
    fn note(&mut self, offsets: &[u64]) -> bool {
        let floor = self.cleared.unwrap_or(0);
        self.own.extend(offsets.iter().filter(|o| **o >= floor));
        self.advance();
        offsets.iter().all(|o| self.covers(*o))
    }

    fn covers(&self, offset: u64) -> bool {
        self.cleared.is_some_and(|c| offset < c)
    }

    /// A check that started after the record at `last` was delivered found no newer claim.
    fn checked_through(&mut self, last: u64) {
        let cleared = self.cleared.unwrap_or(0).max(last + 1);
        self.cleared = Some(cleared);
        self.own = self.own.split_off(&cleared);
        self.advance();
    }

    fn advance(&mut self) {
        let Some(mut cleared) = self.cleared else { return };
        while self.own.first() == Some(&cleared) {
            self.own.pop_first();
            cleared += 1;
        }
        self.cleared = Some(cleared);
    }
}

#[cfg(test)]
mod tests {
    use super::Track;

    #[test]
    fn only_a_partition_of_own_records_since_the_last_check_is_cleared_without_one() {
        let mut t = Track::default();
        assert!(!t.note(&[10, 11]), "the first batch on a partition needs a check");
        t.checked_through(11);
        assert!(t.note(&[12, 13]), "right after: nothing in between");
        assert!(!t.note(&[16]), "14 and 15 are not ours (yet)");
        assert!(t.note(&[14, 15]), "another core's report fills the gap");
        assert!(t.covers(16));
        assert!(!t.note(&[20]), "a gap nobody fills: someone else wrote 17-19");
        t.checked_through(20);
        assert!(t.note(&[21]));
        assert!(!t.covers(22));
    }
}
