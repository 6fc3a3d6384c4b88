//! Bringing a shard's state back from its logs.
//!
//! Two phases, with every shard finishing the first before any starts the second:
//! 1. account partitions: users and transfers, from each owned partition's log;
//! 2. symbols: each owned symbol's command log is replayed through a fresh book, and
//!    the results go to the account owners exactly as they did when first executed.
//!
//! The log is the only truth: whatever was acknowledged is in it, and a torn tail (a
//! write the crash interrupted, never acknowledged) is cut before anything is replayed.

use std::rc::Rc;
use std::time::Instant;

use anyhow::Context;

use super::stream::{self, SymbolStream};
use super::logs::{self, Stream};
use super::snapshots;
use super::Shard;
use crate::accounts::AccountRecord;
use crate::engine::Market;
use crate::wire::StreamRecord;

pub async fn recover_accounts(shard: &Rc<Shard>) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut records = 0usize;
    for partition in shard.owned_partitions() {
        let mut from = 0;
        let mut applied = None;
        if let Some(state) = snapshots::load_partition(shard, partition) {
            from = state.log_offset;
            applied = Some(state.applied.clone());
            let map = &shard.map;
            shard.accounts.borrow_mut().install(partition, state, &|name| map.symbols.iter().position(|s| s.name == name));
        }
        shard.health.record_applied(partition, applied);
        let logs::Opened { records: found, log: mut journal, voided_here } = logs::open(shard, Stream::Accounts(partition), from).await?;
        let mut decoded = Vec::with_capacity(found.len());
        for (offset, bytes) in &found {
            let record: AccountRecord = shard
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
                shard.accounts.borrow_mut().apply(record, false);
            }
        }
        // Records this node answered 503 for, and voided only on its own disk: now in the
        // log too, for every other reader of it (cold storage, a node without this disk).
        let voids: Vec<Vec<u8>> = voided_here
            .iter()
            .filter(|o| !voided.contains(*o))
            .map(|o| shard.encode_account(&AccountRecord::Voided { offset: *o }, partition))
            .collect();
        logs::append_voids(&mut journal, &voids).await.with_context(|| format!("account partition {partition}: logging voids"))?;
        records += found.len();
        shard.account_logs.borrow_mut().insert(partition, Rc::new(glommio::sync::RwLock::new(journal)));
    }
    if let Some(k) = &shard.kafka {
        k.read_cache.borrow_mut().clear();
    }
    tracing::info!(shard = shard.id, records, ms = started.elapsed().as_millis() as u64, "account logs replayed");
    Ok(())
}

pub async fn recover_symbols(shard: &Rc<Shard>) -> anyhow::Result<()> {
    if let Some(k) = &shard.kafka {
        k.read_cache.borrow_mut().clear();
    }
    for (index, spec) in shard.map.symbols.iter().enumerate() {
        if shard.symbol_owner(index) != shard.id {
            continue;
        }
        let started = Instant::now();
        let covered = shard.health.applied_everywhere(&spec.name);
        let (market, from, trades, mut floor) = match snapshots::load_symbol(shard, &spec.name, covered) {
            Some(snap) => {
                let market = Market::restore(spec.clone(), &snap.market)
                    .with_context(|| format!("{}: snapshot at {}", spec.name, snap.offset))?;
                (market, snap.offset, snap.trades, snap.epoch)
            }
            None => (Market::new(spec.clone()), 0, Vec::new(), crate::wire::EpochFloor::default()),
        };
        let logs::Opened { records: found, log: mut journal, voided_here } = logs::open(shard, Stream::Symbol(&spec.name), from).await?;
        if market.perp().index.is_some() {
            shard.health.index_posted(index, market.perp().index_time);
        }
        let (stream, jobs) = SymbolStream::new(index, market);
        stream.next.set(from);
        stream.snapshot_at.set(from);
        stream.trades.borrow_mut().extend(trades);
        let mut records = Vec::with_capacity(found.len());
        for (offset, bytes) in &found {
            let (record, seq) = shard
                .decode_command(index, bytes)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{}: undecodable command at {offset}", spec.name))?;
            // Made before an epoch that precedes it in the log: void for every reader.
            if let Some(seq) = seq {
                if !floor.admits(record == StreamRecord::Epoch, seq) {
                    tracing::warn!(symbol = spec.name, offset, seq, floor = floor.0, "a record older than the log's epoch landed late: skipped");
                    continue;
                }
            }
            records.push((*offset, record));
        }
        // Records voided later in the log were never acknowledged: they do not count.
        let voided: rustc_hash::FxHashSet<u64> =
            records.iter().filter_map(|(_, r)| if let StreamRecord::Void(o) = r { Some(*o) } else { None }).collect();
        // As for the account partitions above.
        let voids: Vec<Vec<u8>> = voided_here
            .iter()
            .filter(|o| !voided.contains(*o))
            .map(|o| shard.encode_command(index, &StreamRecord::Void(*o)))
            .collect();
        // The floor now includes this run's own epoch, the fence `logs::open` wrote.
        stream.epoch.set(floor);
        logs::append_voids(&mut journal, &voids).await.with_context(|| format!("{}: logging voids", spec.name))?;
        if let Some(last) = voided_here.iter().max() {
            stream.next.set(stream.next.get().max(last + 1));
        }
        let mut acks = Vec::new();
        for (offset, record) in &records {
            let StreamRecord::Command(command) = record else {
                stream.next.set(stream.next.get().max(offset + 1));
                continue;
            };
            if voided.contains(offset) {
                stream.next.set(stream.next.get().max(offset + 1));
                continue;
            }
            acks.extend(stream.execute(shard, command, *offset, true).await.applied);
            if acks.len() >= 1024 {
                for ack in acks.drain(..) {
                    let _ = ack.await;
                }
            }
        }
        for ack in acks {
            let _ = ack.await;
        }
        shard.streams.borrow_mut().insert(index, stream.clone());
        glommio::spawn_local(stream::run(shard.clone(), stream, journal, jobs)).detach();
        tracing::info!(
            shard = shard.id,
            symbol = spec.name,
            snapshot_offset = from,
            replayed = found.len(),
            ms = started.elapsed().as_millis() as u64,
            "command log replayed"
        );
    }
    Ok(())
}
