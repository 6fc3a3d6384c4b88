//! Durable voids on local disk: what makes a 503 after a Kafka timeout honest.
//!
//! When Kafka does not confirm a batch in time, its records may still land (a broker can
//! persist a request it never answered). The stream voids them in the log itself before
//! it logs anything new (`symbols::stream::settle`), but that needs the broker back, and the client
//! is owed an answer now. So the records' digests are first appended here, on the
//! node's own disk, and synced; only then is the client told 503. Every replay of the log
//! on this node skips a record whose digest is here, so "never lands, now or after any
//! crash" holds even if the process dies before the broker returns. If the digests
//! cannot be made durable, the answer is 504 `STATUS_UNKNOWN` instead.
//!
//! A record's payload is unique (it carries its own sequence number and timestamp), so
//! its digest names it. The file only grows on failures; it is a few lines a year.
//!
//! Blocking on purpose: a write and an fsync on the failure path only, where the shard
//! has nothing better to do than tell its clients the truth.

use std::io::Write;
use std::path::PathBuf;

use rustc_hash::FxHashSet;
use sha2::{Digest, Sha256};

use super::{LogRoom, Stream};
use crate::shard::protocol::NotLogged;

/// What names a record: the first 16 bytes of its payload's SHA-256.
pub type RecordDigest = [u8; 16];

pub fn digest(payload: &[u8]) -> RecordDigest {
    let full = Sha256::digest(payload);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

fn file(room: &LogRoom, stream: Stream<'_>) -> PathBuf {
    let name = match stream {
        Stream::Symbol(name) => format!("symbol-{name}"),
        Stream::Accounts(p) => format!("accounts-{p:02}"),
    };
    room.config.data_dir.join("voids").join(name)
}

/// Makes the void of these records durable.
///
/// # Errors
/// The disk refused the write or the sync.
pub fn record(room: &LogRoom, stream: Stream<'_>, payloads: &[Vec<u8>]) -> std::io::Result<()> {
    let path = file(room, stream);
    let dir = path.parent().unwrap_or(&room.config.data_dir);
    let created = !dir.exists();
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    let mut text = String::with_capacity(payloads.len() * 33);
    for p in payloads {
        text.push_str(&hex::encode(digest(p)));
        text.push('\n');
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    if created {
        std::fs::File::open(dir)?.sync_all()?;
        std::fs::File::open(&room.config.data_dir)?.sync_all()?;
    }
    Ok(())
}

/// The digests of every record voided on this node for `stream`.
pub fn load(room: &LogRoom, stream: Stream<'_>) -> FxHashSet<RecordDigest> {
    let Ok(text) = std::fs::read_to_string(file(room, stream)) else { return FxHashSet::default() };
    text.lines()
        .filter_map(|l| hex::decode(l.trim()).ok())
        .filter_map(|b| <RecordDigest>::try_from(b.as_slice()).ok())
        .collect()
}

/// The answer owed for records the log did not confirm and that may still land: 503
/// once their void is durable here, 504 if it cannot be made so.
pub fn refuse(room: &LogRoom, stream: Stream<'_>, payloads: &[Vec<u8>], why: &str) -> NotLogged {
    match record(room, stream, payloads) {
        Ok(()) => NotLogged::Refused(format!("event log unavailable: {why}")),
        Err(e) => {
            tracing::error!(error = %e, "could not void unconfirmed records on local disk: answering 504");
            NotLogged::Unknown(format!("event log did not confirm: {why}"))
        }
    }
}
