//! Adapters to the outside world, with no knowledge of the exchange's domain.
//!
//! The exchange crate owns every trading rule; this crate owns the plumbing that talks
//! to other systems: the embedded journal and the glommio HTTP glue (later: Kafka, Redis
//! and PostgreSQL). Keeping them here means the domain code can be read, tested and
//! benchmarked without any of them, and an adapter can be swapped without touching a
//! trading rule.

pub mod http;
pub mod journal;
pub mod kafka;
pub mod offcore;
pub mod ports;
pub mod redis;
pub mod tenancy;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A service URL (Redis, PostgreSQL) without its password, for logs and messages:
/// `scheme://user:secret@host` becomes `scheme://user:***@host`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(super::redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(super::redact("redis://:secret@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(super::redact("rediss://default:s3cr@t@h"), "rediss://default:***@h");
        assert_eq!(super::redact("postgres://h/db"), "postgres://h/db");
    }
}

/// Records read back from a log: `(offset, payload)`.
pub type ReadBack<'a> = Pin<Box<dyn Future<Output = Result<Vec<(u64, Vec<u8>)>, journal::JournalError>> + 'a>>;

/// The confirmation of a batch already sent: its records' offsets once durable. It
/// borrows nothing from the log, so the next batch can be sent while it is pending.
pub type Confirmation = Pin<Box<dyn Future<Output = Result<Vec<u64>, journal::JournalError>>>>;

/// An append-only, durable log of one stream (a symbol's commands, an account
/// partition's records). The shard appends, commits once per batch, and acknowledges
/// nothing a commit has not returned for. Implemented by the embedded
/// [`journal::Journal`]; a Kafka producer is the other implementation the design plans.
pub trait EventLog {
    /// Buffers a record; nothing is durable yet.
    ///
    /// # Errors
    /// When the record cannot be logged at all (too large).
    fn append(&mut self, payload: &[u8]) -> Result<(), journal::JournalError>;

    /// Makes every appended record durable and returns their offsets, in append order
    /// (consecutive in a file journal; a shared Kafka partition may interleave others).
    ///
    /// # Errors
    /// When the log cannot accept writes; then none of the pending records may be
    /// acknowledged.
    fn commit(&mut self) -> Pin<Box<dyn Future<Output = Result<Vec<u64>, journal::JournalError>> + '_>>;

    /// Sends every appended record and returns their confirmation without waiting for
    /// it, so that several batches can be in flight. The caller executes batches strictly
    /// in the order sent and treats every batch after a failed one as failed too.
    /// `None`: this log confirms one batch at a time (use [`Self::commit`]).
    fn send(&mut self) -> Option<Confirmation> {
        None
    }

    /// The offset the next appended record will get.
    fn next_offset(&self) -> u64;

    /// How long the writer should gather records before it sends the next batch, if at
    /// all: a busy stream on Kafka sends fewer, larger batches (see
    /// `kafka::Commands`); the journal's group commit batches by itself.
    fn gathering(&self) -> Option<std::time::Duration> {
        None
    }

    /// This stream's records from offset `from` on, as `(offset, payload)`: after a
    /// failed commit, what the log holds anyway. A file journal finds none (its next
    /// commit overwrites a failed one's bytes, and a torn tail is cut at start).
    ///
    /// # Errors
    /// When the log cannot be read within `patience`.
    fn read_back(&mut self, from: u64, patience: Duration) -> ReadBack<'_> {
        let _ = (from, patience);
        Box::pin(async { Ok(Vec::new()) })
    }
}

impl EventLog for journal::Journal {
    fn append(&mut self, payload: &[u8]) -> Result<(), journal::JournalError> {
        journal::Journal::append(self, payload).map(|_| ())
    }

    fn commit(&mut self) -> Pin<Box<dyn Future<Output = Result<Vec<u64>, journal::JournalError>> + '_>> {
        Box::pin(async move {
            let first = journal::Journal::next_offset(self);
            journal::Journal::commit(self).await?;
            Ok((first..journal::Journal::next_offset(self)).collect())
        })
    }

    fn next_offset(&self) -> u64 {
        journal::Journal::next_offset(self)
    }
}
