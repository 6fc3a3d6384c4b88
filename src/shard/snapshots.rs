//! Snapshots, so that a restart replays only the tail of each log.
//!
//! - A symbol is snapshotted by its owner every `snapshot_every` commands: the market's
//!   state (versioned, see [`crate::engine::snapshot`]) and its recent public trades, at
//!   the offset of the next command. Right after, the owner tells every shard, in order
//!   with the results it already sent, that it got that far.
//! - On that word, each shard snapshots its account partitions (one file per partition,
//!   so a change in the number of cores re-homes them freely). A partition snapshot
//!   records, per symbol, the offset up to which results are included.
//! - At start, account partitions load first. A symbol then restores its newest snapshot
//!   that no partition is behind, and replays from there; each partition skips results
//!   its snapshot already holds.
//!
//! Files are written on a helper thread (write, fsync, rename, fsync directory) so the
//! shard never blocks on the disk; the newest few are kept. Logs are never truncated:
//! they are the history; snapshots only shorten the replay.

use std::path::PathBuf;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::protocol::Request;
use super::stream::{PublicTrade, SymbolStream};
use super::Shard;
use crate::accounts::{PartitionState, PARTITIONS};
use crate::ports::{self, files, Checkpoint, Kind, ACCOUNT_MAGIC};

const SYMBOL_MAGIC: &[u8; 6] = b"EXSYMS";
const KEEP: usize = 3;

#[derive(Serialize, Deserialize)]
pub struct SymbolSnapshot {
    /// Offset of the first command not included.
    pub offset: u64,
    pub market: Vec<u8>,
    pub trades: Vec<PublicTrade>,
    /// The log's epoch floor at `offset` (see [`crate::wire::EpochFloor`]); written after
    /// the rest, absent (zero) in older files.
    #[serde(skip)]
    pub epoch: crate::wire::EpochFloor,
}

pub fn symbol_dir(shard: &Shard, name: &str) -> PathBuf {
    Kind::Symbol.dir(&shard.config.data_dir, name)
}

pub fn partition_dir(shard: &Shard, partition: u32) -> PathBuf {
    Kind::Account.dir(&shard.config.data_dir, &partition_name(partition))
}

fn partition_name(partition: u32) -> String {
    format!("{partition:02}")
}

/// Writes a snapshot durably on a helper thread (off the shard's core) and prunes old ones; with cold storage,
/// hands it over as a checkpoint too.
fn write(shard: &Shard, kind: Kind, name: String, file: String, bytes: Vec<u8>) {
    let dir = kind.dir(&shard.config.data_dir, &name);
    let checkpoints = shard.checkpoints.clone();
    let written = exchange_io::offcore::spawn("snapshot", move || {
        let result = ports::write_file(&dir, &file, &bytes).map(|()| {
            for old in files(&dir).into_iter().skip(KEEP) {
                let _ = std::fs::remove_file(old);
            }
        });
        match result {
            Err(e) => tracing::error!(dir = %dir.display(), error = %e, "snapshot write failed"),
            Ok(()) => {
                if let Some(checkpoints) = checkpoints {
                    checkpoints.store(Checkpoint { kind, name, file, state: bytes });
                }
            }
        }
    });
    if let Err(e) = written {
        tracing::error!(error = %e, "no thread to write a snapshot on");
    }
}

/// Takes a symbol snapshot and tells every shard.
pub async fn snapshot_symbol(shard: &Rc<Shard>, stream: &Rc<SymbolStream>) {
    let offset = stream.next.get();
    stream.snapshot_at.set(offset);
    let snapshot = SymbolSnapshot {
        offset,
        market: stream.market.borrow().snapshot(),
        trades: stream.trades.borrow().iter().copied().collect(),
        epoch: stream.epoch.get(),
    };
    let name = shard.map.symbols[stream.index].name.clone();
    let (file, bytes) = (format!("{offset:020}.snap"), encode_symbol(&snapshot));
    match &shard.kafka {
        None => write(shard, Kind::Symbol, name.clone(), file, bytes),
        // Written once the results of every command it covers are in Kafka: a restart
        // from it replays (and publishes again) only what comes after.
        Some(kafka) => {
            let (undelivered, mark, writer) = (kafka.undelivered(), kafka.undelivered().mark(), shard.clone());
            let name = name.clone();
            glommio::spawn_local(async move {
                while !undelivered.delivered_before(mark) {
                    glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                }
                write(&writer, Kind::Symbol, name, file, bytes);
            })
            .detach();
        }
    }
    tracing::info!(symbol = name, offset, "symbol snapshot");
    for to in 0..shard.shards {
        let req = Request::Apply {
            symbol: stream.index,
            offset: offset.saturating_sub(1),
            logged: None,
            replayed: false,
            events: Vec::new(),
            snapshot: true,
        };
        if to == shard.id {
            super::handlers::apply(shard, stream.index, offset.saturating_sub(1), None, false, &[]);
            snapshot_accounts_soon(shard);
        } else {
            drop(shard.rpc.send(to, req));
        }
    }
}

/// Snapshots the account partitions owned here, unless one is already being taken.
pub fn snapshot_accounts_soon(shard: &Rc<Shard>) {
    if shard.snapshotting.replace(true) {
        return;
    }
    let shard = shard.clone();
    glommio::spawn_local(async move {
        snapshot_accounts(&shard).await;
        shard.snapshotting.set(false);
    })
    .detach();
}

/// Each partition is snapshotted on its own, under its log's lock (so no admin change is
/// half-done in it) and with its own offsets; the shard serves requests in between, so a
/// snapshot never stalls it for more than one partition's worth.
async fn snapshot_accounts(shard: &Rc<Shard>) {
    let mut logs: Vec<(u32, Rc<glommio::sync::RwLock<super::Log>>)> =
        shard.account_logs.borrow().iter().map(|(p, j)| (*p, j.clone())).collect();
    logs.sort_unstable_by_key(|(p, _)| *p);
    let symbols: Vec<String> = shard.map.symbols.iter().map(|s| s.name.clone()).collect();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    let started = std::time::Instant::now();
    let mut bytes_total = 0;
    for (partition, log) in &logs {
        let Ok(guard) = log.write().await else { return };
        let mut bytes = ports::header(ACCOUNT_MAGIC);
        shard.accounts.borrow().partition_snapshot(*partition, guard.next_offset(), &symbols, &mut bytes);
        drop(guard);
        bytes_total += bytes.len();
        write(shard, Kind::Account, partition_name(*partition), format!("{stamp:024}.snap"), bytes);
        futures_lite::future::yield_now().await;
    }
    tracing::info!(
        shard = shard.id,
        partitions = logs.len(),
        bytes = bytes_total,
        ms = started.elapsed().as_millis() as u64,
        "account snapshot"
    );
}

/// The newest readable account snapshot of a partition.
pub fn load_partition(shard: &Shard, partition: u32) -> Option<PartitionState> {
    debug_assert!(partition < PARTITIONS);
    files(&partition_dir(shard, partition)).iter().find_map(|f| ports::decode_partition( &std::fs::read(f).ok()?))
}

/// The newest readable symbol snapshot at or before `offset`.
pub fn load_symbol(shard: &Shard, name: &str, at_most: u64) -> Option<SymbolSnapshot> {
    files(&symbol_dir(shard, name))
        .iter()
        .filter_map(|f| decode_symbol(&std::fs::read(f).ok()?))
        .find(|s| s.offset <= at_most)
}

/// A symbol snapshot file's contents, if its magic and version match.
pub fn decode_symbol(bytes: &[u8]) -> Option<SymbolSnapshot> {
    let (mut snapshot, rest): (SymbolSnapshot, _) = ports::unframe_first(SYMBOL_MAGIC, bytes)?;
    if !rest.is_empty() {
        snapshot.epoch = postcard::from_bytes(rest).ok()?;
    }
    Some(snapshot)
}

/// A symbol snapshot file's bytes.
pub fn encode_symbol(snapshot: &SymbolSnapshot) -> Vec<u8> {
    let mut bytes = ports::frame(SYMBOL_MAGIC, snapshot);
    bytes.extend_from_slice(&postcard::to_allocvec(&snapshot.epoch).unwrap_or_default());
    bytes
}
