//! What the shard layer and the side processes beside it (cold storage, the synchronous
//! baseline) share, defined below both so that neither imports the other: the snapshot
//! files (where they live, how they are framed, how one is written durably), the sink
//! that copies each one out of the process as a checkpoint, and the synchronous store.
//! The server plugs the implementations in; the shard sees only these traits.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::accounts::{OrderView, PartitionState};
use crate::engine::units::Units;
use crate::engine::{Event, NewOrder, SymbolSpec, UserId};

/// Version of the snapshot framing (after the six-byte magic).
const VERSION: u16 = 1;
/// The magic of an account partition's snapshot.
pub const ACCOUNT_MAGIC: &[u8; 6] = b"EXACCT";

/// What a snapshot is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// An account partition (`name`: its number, two digits).
    Account,
    /// A symbol's market (`name`: the symbol).
    Symbol,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::Symbol => "symbol",
        }
    }

    /// Where its snapshot files live under the data directory.
    pub fn dir(self, data_dir: &Path, name: &str) -> PathBuf {
        let kind = match self {
            Self::Account => "accounts",
            Self::Symbol => "symbols",
        };
        data_dir.join("snapshots").join(kind).join(name)
    }
}

/// One snapshot file, as it is also kept outside the process.
pub struct Checkpoint {
    pub kind: Kind,
    pub name: String,
    pub file: String,
    pub state: Vec<u8>,
}

/// Where the shards hand every snapshot they wrote (cold storage keeps them as
/// checkpoints). Must never block.
pub trait CheckpointSink: Send + Sync {
    fn store(&self, checkpoint: Checkpoint);
}

/// The start of a snapshot file: magic and version.
pub fn header(magic: &[u8; 6]) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    out
}

/// A snapshot file's bytes: header, then `value` (postcard).
pub fn frame<T: Serialize>(magic: &[u8; 6], value: &T) -> Vec<u8> {
    let mut out = header(magic);
    // Plain owned data into a Vec: cannot fail.
    postcard::to_io(value, &mut out).map(|_| ()).unwrap_or_else(|e| unreachable!("postcard: {e}"));
    out
}

/// What [`frame`] wrote, if the magic and version match.
pub fn unframe<T: for<'de> Deserialize<'de>>(magic: &[u8; 6], bytes: &[u8]) -> Option<T> {
    postcard::from_bytes(body(magic, bytes)?).ok()
}

/// What [`frame`] wrote, and the bytes after it (fields added later, appended).
pub fn unframe_first<'a, T: Deserialize<'a>>(magic: &[u8; 6], bytes: &'a [u8]) -> Option<(T, &'a [u8])> {
    postcard::take_from_bytes(body(magic, bytes)?).ok()
}

fn body<'a>(magic: &[u8; 6], bytes: &'a [u8]) -> Option<&'a [u8]> {
    let rest = bytes.strip_prefix(magic.as_slice())?;
    let (version, body) = rest.split_first_chunk::<2>()?;
    (u16::from_le_bytes(*version) == VERSION).then_some(body)
}

/// An account snapshot file's state: the partition, then (if the file has them) the
/// users' money movements.
pub fn decode_partition(bytes: &[u8]) -> Option<PartitionState> {
    let (mut state, rest) = postcard::take_from_bytes::<PartitionState>(body(ACCOUNT_MAGIC, bytes)?).ok()?;
    if !rest.is_empty() {
        let (income, rest) = postcard::take_from_bytes(rest).ok()?;
        state.income = income;
        if !rest.is_empty() {
            state.terms = postcard::from_bytes(rest).ok()?;
        }
    }
    Some(state)
}

/// Snapshot files of a directory, newest first. Leftovers of writes a crash interrupted
/// (`.tmp`) are removed on the way.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "tmp") && e.metadata().is_ok_and(|m| m.modified().is_ok_and(|t| t.elapsed().is_ok_and(|a| a.as_secs() > 60))) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "snap")).collect())
        .unwrap_or_default();
    found.sort();
    found.reverse();
    found
}

/// Writes a snapshot file durably: write, fsync, rename, fsync the directory.
///
/// # Errors
/// The disk failing.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// A future awaited on the shard's own executor.
pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// The synchronous baseline's store (`EXCHANGE_PERSISTENCE=sync`): every command's
/// results, and every transfer, written and committed before the answer.
pub trait SyncStore {
    /// Writes a command's results on `spec`'s book (`placed`: the order it placed, as
    /// the results left it; `None` for a cancel) and waits for the commit.
    fn order<'a>(&'a self, spec: &SymbolSpec, placed: Option<(&NewOrder, &OrderView)>, events: &[Event]) -> LocalFuture<'a, Result<(), String>>;

    /// Credits (or debits) a user's balance and waits for the commit.
    fn deposit(&self, user: UserId, amount: Units) -> LocalFuture<'_, Result<(), String>>;
}
