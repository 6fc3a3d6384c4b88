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
use exchange_io::journal::{recover, Journal};

use super::stream::{self, SymbolStream};
use super::snapshots;
use super::Shard;
use crate::accounts::{AccountRecord, PARTITIONS};
use crate::engine::{Command, Market};

pub async fn recover_accounts(shard: &Rc<Shard>) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut records = 0usize;
    for partition in (0..PARTITIONS).filter(|p| shard.owns_partition(*p)) {
        let dir = shard.config.data_dir.join("accounts").join(format!("{partition:02}"));
        let found = recover(&dir)?;
        if found.cut_bytes > 0 {
            tracing::warn!(partition, cut_bytes = found.cut_bytes, "cut a torn tail from the account log");
        }
        let mut from = found.first_offset;
        let mut applied = None;
        if let Some(state) = snapshots::load_partition(shard, partition) {
            from = state.log_offset;
            applied = Some(state.applied.clone());
            let map = &shard.map;
            shard.accounts.borrow_mut().install(partition, state, &|name| map.symbols.iter().position(|s| s.name == name));
        }
        shard.health.record_applied(partition, applied);
        let skip = usize::try_from(from.saturating_sub(found.first_offset)).unwrap_or(usize::MAX);
        for bytes in found.records.iter().skip(skip) {
            let record: AccountRecord = postcard::from_bytes(bytes)
                .with_context(|| format!("{}: undecodable account record", dir.display()))?;
            shard.accounts.borrow_mut().apply(&record, false);
        }
        records += found.records.len().saturating_sub(skip);
        let journal: super::Log = Box::new(Journal::open(&dir, found.first_offset + found.records.len() as u64).await?);
        shard.account_logs.borrow_mut().insert(partition, Rc::new(glommio::sync::RwLock::new(journal)));
    }
    tracing::info!(shard = shard.id, records, ms = started.elapsed().as_millis() as u64, "account logs replayed");
    Ok(())
}

pub async fn recover_symbols(shard: &Rc<Shard>) -> anyhow::Result<()> {
    for (index, spec) in shard.map.symbols.iter().enumerate() {
        if shard.symbol_owner(index) != shard.id {
            continue;
        }
        let started = Instant::now();
        let dir = shard.config.data_dir.join("symbols").join(&spec.name);
        let found = recover(&dir)?;
        if found.cut_bytes > 0 {
            tracing::warn!(symbol = spec.name, cut_bytes = found.cut_bytes, "cut a torn tail from the command log");
        }
        let covered = shard.health.applied_everywhere(&spec.name);
        let (market, from, trades) = match snapshots::load_symbol(shard, &spec.name, covered) {
            Some(snap) => {
                let market = Market::restore(spec.clone(), &snap.market)
                    .with_context(|| format!("{}: snapshot at {}", spec.name, snap.offset))?;
                (market, snap.offset, snap.trades)
            }
            None => (Market::new(spec.clone()), found.first_offset, Vec::new()),
        };
        let (stream, jobs) = SymbolStream::new(index, market);
        stream.next.set(from);
        stream.snapshot_at.set(from);
        stream.trades.borrow_mut().extend(trades);
        let skip = usize::try_from(from.saturating_sub(found.first_offset)).unwrap_or(usize::MAX);
        let mut acks = Vec::new();
        for (i, bytes) in found.records.iter().enumerate().skip(skip) {
            let command: Command = postcard::from_bytes(bytes)
                .with_context(|| format!("{}: undecodable command", dir.display()))?;
            let offset = found.first_offset + i as u64;
            acks.extend(stream.execute(shard, &command, offset, true).await.applied);
            if acks.len() >= 1024 {
                for ack in acks.drain(..) {
                    let _ = ack.await;
                }
            }
        }
        for ack in acks {
            let _ = ack.await;
        }
        let journal: super::Log = Box::new(Journal::open(&dir, found.first_offset + found.records.len() as u64).await?);
        shard.streams.borrow_mut().insert(index, stream.clone());
        glommio::spawn_local(stream::run(shard.clone(), stream, journal, jobs)).detach();
        tracing::info!(
            shard = shard.id,
            symbol = spec.name,
            snapshot_offset = from,
            replayed = found.records.len().saturating_sub(skip),
            ms = started.elapsed().as_millis() as u64,
            "command log replayed"
        );
    }
    Ok(())
}
