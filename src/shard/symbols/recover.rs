//! Bringing the symbols' books back from their logs, in the second phase of a start
//! (after every shard's account partitions, [`crate::shard::accounts::recover_accounts`]):
//! each owned symbol's command log is replayed through a fresh book (or its newest
//! snapshot that no partition is behind), and the results go to the account owners
//! exactly as they did when first executed.
//!
//! The log is the only truth: whatever was acknowledged is in it, and a torn tail (a
//! write the crash interrupted, never acknowledged) is cut before anything is replayed.

use std::rc::Rc;
use std::time::Instant;

use anyhow::Context;

use super::stream::{self, SymbolStream};
use super::SymbolRoom;
use crate::shard::log::{self, files, Stream};
use crate::engine::Market;
use crate::wire::StreamRecord;

pub async fn recover_symbols(room: &Rc<SymbolRoom>) -> anyhow::Result<()> {
    room.log.forget_reads();
    for (index, spec) in room.map.symbols.iter().enumerate() {
        if room.symbol_owner(index) != room.id {
            continue;
        }
        let started = Instant::now();
        let covered = room.health.applied_everywhere(&spec.name);
        let (market, from, trades, mut floor, candles) = match files::load_symbol(&room.log, &spec.name, covered) {
            Some(snap) => {
                let market = Market::restore(spec.clone(), &snap.market)
                    .with_context(|| format!("{}: snapshot at {}", spec.name, snap.offset))?;
                (market, snap.offset, snap.trades, snap.epoch, (snap.candles, snap.history))
            }
            None => (Market::new(spec.clone()), 0, Vec::new(), crate::wire::EpochFloor::default(), Default::default()),
        };
        let log::Opened { records: found, log: mut journal, voided_here } = log::open(&room.log, Stream::Symbol(&spec.name), from).await?;
        if market.perp().index.is_some() {
            room.health.index_posted(index, market.perp().index_time);
        }
        let (stream, jobs) = SymbolStream::new(index, market);
        stream.next.set(from);
        stream.trades.borrow_mut().extend(trades);
        *stream.candles.borrow_mut() = candles.0;
        *stream.history.borrow_mut() = candles.1;
        let mut records = Vec::with_capacity(found.len());
        for (offset, bytes) in &found {
            let decoded = room
                .log
                .decode_commands(index, bytes)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{}: undecodable command at {offset}", spec.name))?;
            for (record, seq) in decoded {
                // Made before an epoch that precedes it in the log: void for every reader.
                if let Some(seq) = seq
                    && !floor.admits(record == StreamRecord::Epoch, seq)
                {
                    tracing::warn!(symbol = spec.name, offset, seq, floor = floor.0, "a record older than the log's epoch landed late: skipped");
                    continue;
                }
                records.push((*offset, record));
            }
        }
        // Records voided later in the log were never acknowledged: they do not count.
        let voided: rustc_hash::FxHashSet<u64> =
            records.iter().filter_map(|(_, r)| if let StreamRecord::Void(o) = r { Some(*o) } else { None }).collect();
        // As for the account partitions above.
        let voids: Vec<Vec<u8>> = voided_here
            .iter()
            .filter(|o| !voided.contains(*o))
            .map(|o| room.log.encode_command(index, &StreamRecord::Void(*o)))
            .collect();
        // The floor now includes this run's own epoch, the fence `log::open` wrote.
        stream.epoch.set(floor);
        log::append_voids(&mut journal, &voids).await.with_context(|| format!("{}: logging voids", spec.name))?;
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
            acks.extend(stream.execute(room, command, *offset, true, None).applied);
            if acks.len() >= 1024 {
                for ack in acks.drain(..) {
                    let _ = ack.await;
                }
            }
        }
        for ack in acks {
            let _ = ack.await;
        }
        room.streams.borrow_mut().insert(index, stream.clone());
        glommio::spawn_local(stream::run(room.clone(), stream, journal, jobs)).detach();
        tracing::info!(
            shard = room.id,
            symbol = spec.name,
            snapshot_offset = from,
            replayed = records.len(),
            ms = started.elapsed().as_millis() as u64,
            "command log replayed"
        );
    }
    Ok(())
}
