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

use serde::{Deserialize, Serialize};

use super::LogRoom;
use crate::shard::tape::{Candles, PriceHistory, PublicTrade};
use crate::accounts::{PartitionState, PARTITIONS};
use crate::ports::{self, files, Checkpoint, Kind};

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
    /// The symbol's candles; written after the epoch, absent (none) in older files.
    #[serde(skip)]
    pub candles: Candles,
    /// Its mark and index candles and funding rounds; written after the candles.
    #[serde(skip)]
    pub history: PriceHistory,
}

pub fn symbol_dir(shard: &LogRoom, name: &str) -> PathBuf {
    Kind::Symbol.dir(&shard.config.data_dir, name)
}

pub fn partition_dir(shard: &LogRoom, partition: u32) -> PathBuf {
    Kind::Account.dir(&shard.config.data_dir, &partition_name(partition))
}

pub fn partition_name(partition: u32) -> String {
    format!("{partition:02}")
}

/// Writes a snapshot durably on a helper thread (off the shard's core) and prunes old ones; with cold storage,
/// hands it over as a checkpoint too.
pub fn write(shard: &LogRoom, kind: Kind, name: String, file: String, bytes: Vec<u8>) {
    write_to(kind.dir(&shard.config.data_dir, &name), shard.checkpoints.clone(), kind, name, file, bytes);
}

fn write_to(dir: PathBuf, checkpoints: Option<std::sync::Arc<dyn ports::CheckpointSink>>, kind: Kind, name: String, file: String, bytes: Vec<u8>) {
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

/// Writes a symbol's snapshot. On Kafka it is written once the results of every command
/// it covers are in Kafka: a restart from it replays (and publishes again) only what
/// comes after.
pub fn write_symbol(room: &LogRoom, name: String, offset: u64, bytes: Vec<u8>) {
    let file = format!("{offset:020}.snap");
    match &room.kafka {
        None => write(room, Kind::Symbol, name, file, bytes),
        Some(kafka) => {
            let (undelivered, mark) = (kafka.undelivered(), kafka.undelivered().mark());
            let (dir, checkpoints) = (Kind::Symbol.dir(&room.config.data_dir, &name), room.checkpoints.clone());
            glommio::spawn_local(async move {
                while !undelivered.delivered_before(mark) {
                    glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                }
                write_to(dir, checkpoints, Kind::Symbol, name, file, bytes);
            })
            .detach();
        }
    }
}

/// The newest readable account snapshot of a partition.
pub fn load_partition(shard: &LogRoom, partition: u32) -> Option<PartitionState> {
    debug_assert!(partition < PARTITIONS);
    files(&partition_dir(shard, partition)).iter().find_map(|f| ports::decode_partition( &std::fs::read(f).ok()?))
}

/// The newest readable symbol snapshot at or before `offset`.
pub fn load_symbol(shard: &LogRoom, name: &str, at_most: u64) -> Option<SymbolSnapshot> {
    files(&symbol_dir(shard, name))
        .iter()
        .filter_map(|f| decode_symbol(&std::fs::read(f).ok()?))
        .find(|s| s.offset <= at_most)
}

/// A symbol snapshot file's contents, if its magic and version match.
pub fn decode_symbol(bytes: &[u8]) -> Option<SymbolSnapshot> {
    let (mut snapshot, rest): (SymbolSnapshot, _) = ports::unframe_first(SYMBOL_MAGIC, bytes)?;
    if !rest.is_empty() {
        let (epoch, more) = postcard::take_from_bytes(rest).ok()?;
        snapshot.epoch = epoch;
        if !more.is_empty() {
            let (candles, more) = postcard::take_from_bytes(more).ok()?;
            snapshot.candles = candles;
            if !more.is_empty() {
                snapshot.history = postcard::from_bytes(more).ok()?;
            }
        }
    }
    Some(snapshot)
}

/// A symbol snapshot file's bytes.
pub fn encode_symbol(snapshot: &SymbolSnapshot) -> Vec<u8> {
    let mut bytes = ports::frame(SYMBOL_MAGIC, snapshot);
    bytes.extend_from_slice(&postcard::to_allocvec(&snapshot.epoch).unwrap_or_default());
    bytes.extend_from_slice(&postcard::to_allocvec(&snapshot.candles).unwrap_or_default());
    bytes.extend_from_slice(&postcard::to_allocvec(&snapshot.history).unwrap_or_default());
    bytes
}
