//! The account partitions' snapshots and their recovery at start.
//!
//! A partition is snapshotted when a symbol's owner says it snapshotted that symbol (see
//! [`crate::shard::log::files`]); at start each owned partition loads its newest snapshot
//! and replays its own log (users and transfers) from there, before any symbol replays
//! its results into it.

use std::rc::Rc;
use std::time::Instant;

use anyhow::Context;

use super::AccountRoom;
use crate::accounts::AccountRecord;
use crate::ports::{self, Kind, ACCOUNT_MAGIC};
use crate::shard::log::{self, files, Log, Stream};

/// Snapshots the account partitions owned here. A word that arrives while one is being
/// taken asks for one more after it (not a second at once): a snapshot that began before
/// the symbol's last results must not be the last one, or the newest checkpoint stays
/// behind the state until the next symbol snapshot, however long that takes.
pub fn snapshot_accounts_soon(room: &Rc<AccountRoom>) {
    if room.snapshotting.replace(true) {
        room.snapshot_again.set(true);
        return;
    }
    let room = room.clone();
    glommio::spawn_local(async move {
        loop {
            room.snapshot_again.set(false);
            snapshot_accounts(&room).await;
            if !room.snapshot_again.get() {
                break;
            }
        }
        room.snapshotting.set(false);
    })
    .detach();
}

/// Each partition is snapshotted on its own, under its log's lock (so no admin change is
/// half-done in it) and with its own offsets; the shard serves requests in between, so a
/// snapshot never stalls it for more than one partition's worth.
async fn snapshot_accounts(room: &Rc<AccountRoom>) {
    let mut logs: Vec<(u32, Rc<glommio::sync::RwLock<Log>>)> =
        room.logs.borrow().iter().map(|(p, j)| (*p, j.clone())).collect();
    logs.sort_unstable_by_key(|(p, _)| *p);
    let symbols: Vec<String> = room.map.symbols.iter().map(|s| s.name.clone()).collect();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    let started = std::time::Instant::now();
    let mut bytes_total = 0;
    for (partition, log) in &logs {
        let Ok(guard) = log.write().await else { return };
        let mut bytes = ports::header(ACCOUNT_MAGIC);
        room.ledger.borrow().partition_snapshot(*partition, guard.next_offset(), &symbols, &mut bytes);
        drop(guard);
        bytes_total += bytes.len();
        files::write(&room.log, Kind::Account, files::partition_name(*partition), format!("{stamp:024}.snap"), bytes);
        futures_lite::future::yield_now().await;
    }
    tracing::info!(
        shard = room.id,
        partitions = logs.len(),
        bytes = bytes_total,
        ms = started.elapsed().as_millis() as u64,
        "account snapshot"
    );
}

/// Loads each owned partition's newest snapshot and replays its log from there.
pub async fn recover_accounts(room: &Rc<AccountRoom>) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut records = 0usize;
    for partition in room.owned_partitions() {
        let mut from = 0;
        let mut applied = None;
        if let Some(state) = files::load_partition(&room.log, partition) {
            from = state.log_offset;
            applied = Some(state.applied.clone());
            let map = &room.map;
            room.ledger.borrow_mut().install(partition, state, &|name| map.symbols.iter().position(|s| s.name == name));
        }
        room.health.record_applied(partition, applied);
        let log::Opened { records: found, log: mut journal, voided_here } = log::open(&room.log, Stream::Accounts(partition), from).await?;
        let mut decoded = Vec::with_capacity(found.len());
        for (offset, bytes) in &found {
            let record: AccountRecord = room
                .log
                .decode_account(bytes)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("account partition {partition}: undecodable record at {offset}"))?;
            decoded.push((*offset, record));
        }
        let voided: rustc_hash::FxHashSet<u64> = decoded
            .iter()
            .filter_map(|(_, r)| if let AccountRecord::Voided { offset } = r { Some(*offset) } else { None })
            .collect();
        for (offset, record) in &decoded {
            if !voided.contains(offset) {
                room.ledger.borrow_mut().apply(record, false);
            }
        }
        // Records this node answered 503 for, and voided only on its own disk: now in the
        // log too, for every other reader of it (cold storage, a node without this disk).
        let voids: Vec<Vec<u8>> = voided_here
            .iter()
            .filter(|o| !voided.contains(*o))
            .map(|o| room.log.encode_account(&AccountRecord::Voided { offset: *o }, partition))
            .collect();
        log::append_voids(&mut journal, &voids).await.with_context(|| format!("account partition {partition}: logging voids"))?;
        records += found.len();
        room.logs.borrow_mut().insert(partition, Rc::new(glommio::sync::RwLock::new(journal)));
    }
    room.log.forget_reads();
    tracing::info!(shard = room.id, records, ms = started.elapsed().as_millis() as u64, "account logs replayed");
    Ok(())
}

