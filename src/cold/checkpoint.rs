//! Checkpoints: every snapshot the shards write to their disk is also kept in
//! PostgreSQL, so that a node that lost its disk, or a new one, starts from the newest
//! checkpoint plus the log's tail after it, never from a history Kafka may no longer
//! keep (its retention is finite; cold storage's is not).
//!
//! - Storing: the shards hand each snapshot file to [`Checkpoints`] (a [`CheckpointSink`]) (it never
//!   blocks them); a thread of its own (tokio, one connection) stores the newest one per
//!   partition or symbol, retrying every second while PostgreSQL is away, and keeps the
//!   newest [`KEEP`]. An account partition's checkpoint is also written out readably:
//!   `accounts` (balances), `positions` and `checkpoint_offsets` (where in each log it
//!   stands), replaced for that partition in the same transaction.
//! - Restoring: at start, before recovery, [`restore`] writes every newest checkpoint the
//!   data directory lacks into it as a snapshot file. Recovery then works as always (the
//!   newest snapshot, then the log after it): the checkpoint is simply found.
//!
//! Checkpoints are keyed by the topic prefix, since that names whose logs they are.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use rust_decimal::Decimal;

use crate::engine::symbol::units_to_usdt;
use crate::ports::{Checkpoint, CheckpointSink, Kind};
use crate::shard_map::ShardMap;

/// Checkpoints kept per partition or symbol.
pub const KEEP: i64 = 3;

/// The shards' handle on the checkpoint thread.
#[derive(Clone)]
pub struct Checkpoints {
    tx: mpsc::Sender<Checkpoint>,
}

impl Checkpoints {
    /// Starts the thread that stores checkpoints in PostgreSQL at `url`.
    ///
    /// # Errors
    /// No thread.
    pub fn start(url: String, prefix: String, map: Arc<ShardMap>) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new().name("checkpoints".into()).spawn(move || run(&url, &prefix, &map, &rx))?;
        Ok(Self { tx })
    }

}

impl CheckpointSink for Checkpoints {
    /// Hands a snapshot over to be stored; never waits.
    fn store(&self, checkpoint: Checkpoint) {
        let _ = self.tx.send(checkpoint);
    }
}

fn run(url: &str, prefix: &str, map: &ShardMap, rx: &mpsc::Receiver<Checkpoint>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        tracing::error!("no tokio runtime for checkpoints");
        return;
    };
    let mut pending = Pending::default();
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        let wait = if pending.is_empty() { Duration::from_secs(3600) } else { Duration::from_secs(1) };
        match rx.recv_timeout(wait) {
            Ok(c) => {
                pending.offer(c);
                while let Ok(c) = rx.try_recv() {
                    pending.offer(c);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) if pending.is_empty() => return,
            // Stopping with checkpoints still unstored: keep trying, at the same pace.
            Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_secs(1)),
        }
        while let Some(((kind, name), c)) = pending.pop() {
            // The timer needs the runtime, so it is made inside it.
            let stored = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), store(url, &mut client, prefix, map, &c)).await });
            let stored = stored.unwrap_or_else(|_| Err(anyhow::anyhow!("PostgreSQL did not answer")));
            match stored {
                Ok(()) => tracing::info!(kind = kind.as_str(), name, file = c.file, bytes = c.state.len(), "checkpoint stored"),
                Err(e) => {
                    if client.is_some() {
                        tracing::warn!(kind = kind.as_str(), name, error = format!("{e:#}"), "checkpoint not stored; retrying");
                    }
                    client = None;
                    // A newer one that arrived meanwhile wins.
                    pending.put_back(c);
                    break;
                }
            }
        }
    }
}

/// The checkpoints not yet stored: the newest per partition or symbol. Snapshot files
/// are written on threads of their own, so two of one partition can arrive in either
/// order; one older than a checkpoint already handed over is dropped, or it would take
/// the newer one's place before that was stored, and the newest checkpoint (and the
/// readable tables) would stay behind the state until the next snapshot. File names
/// sort by age (a zero-padded log offset or time).
#[derive(Default)]
struct Pending {
    waiting: BTreeMap<(Kind, String), Checkpoint>,
    /// The newest file handed over so far, per partition or symbol.
    newest: BTreeMap<(Kind, String), String>,
}

impl Pending {
    fn offer(&mut self, c: Checkpoint) {
        let key = (c.kind, c.name.clone());
        if self.newest.get(&key).is_some_and(|file| *file >= c.file) {
            return;
        }
        self.newest.insert(key.clone(), c.file.clone());
        self.waiting.insert(key, c);
    }

    fn pop(&mut self) -> Option<((Kind, String), Checkpoint)> {
        self.waiting.pop_first()
    }

    /// One that could not be stored waits again, unless a newer one came meanwhile.
    fn put_back(&mut self, c: Checkpoint) {
        self.waiting.entry((c.kind, c.name.clone())).or_insert(c);
    }

    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// A connection with the schema applied (the tables it writes may be new).
async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut client = super::connect(url).await?;
    super::migrate_client(&mut client).await?;
    Ok(client)
}

async fn store(url: &str, client: &mut Option<tokio_postgres::Client>, prefix: &str, map: &ShardMap, c: &Checkpoint) -> anyhow::Result<()> {
    if client.is_none() {
        *client = Some(connect(url).await?);
    }
    let client = client.as_mut().context("no connection")?;
    let tx = client.transaction().await?;
    let kind = c.kind.as_str();
    tx.execute(
        "INSERT INTO checkpoints (log_prefix, kind, name, file, state) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        &[&prefix, &kind, &c.name, &c.file, &c.state],
    )
    .await?;
    tx.execute(
        "DELETE FROM checkpoints WHERE log_prefix = $1 AND kind = $2 AND name = $3 AND file NOT IN (
             SELECT file FROM checkpoints WHERE log_prefix = $1 AND kind = $2 AND name = $3 ORDER BY file DESC LIMIT $4)",
        &[&prefix, &kind, &c.name, &KEEP],
    )
    .await?;
    let newest: String = tx
        .query_one("SELECT max(file) FROM checkpoints WHERE log_prefix = $1 AND kind = $2 AND name = $3", &[&prefix, &kind, &c.name])
        .await?
        .get(0);
    if c.kind == Kind::Account && newest == c.file {
        readable(&tx, map, c).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The `positions` rows of a checkpoint, column by column (for `unnest`).
#[derive(Default)]
struct PositionColumns {
    users: Vec<String>,
    symbols: Vec<String>,
    sizes: Vec<Decimal>,
    costs: Vec<Decimal>,
    margins: Vec<Decimal>,
    pnls: Vec<Decimal>,
    fees: Vec<Decimal>,
    leverages: Vec<i32>,
}

/// Replaces the partition's rows of `accounts`, `positions` and `checkpoint_offsets`
/// with the checkpoint's.
async fn readable(tx: &tokio_postgres::Transaction<'_>, map: &ShardMap, c: &Checkpoint) -> anyhow::Result<()> {
    let partition: i32 = c.name.parse().context("partition number")?;
    let state = crate::ports::decode_partition(&c.state).context("unreadable account snapshot")?;
    let log_offset = i64::try_from(state.log_offset).unwrap_or(i64::MAX);
    let (mut users, mut totals, mut locked) = (Vec::new(), Vec::new(), Vec::new());
    let mut positions = PositionColumns::default();
    for (user, account) in &state.users {
        let id = crate::wire::account_id(*user);
        users.push(id.clone());
        totals.push(units_to_usdt(account.total));
        locked.push(units_to_usdt(account.locked));
        for (symbol, p) in &account.positions {
            let Some(spec) = map.symbols.get(*symbol) else { continue };
            if p.size == 0 && p.realized_pnl == 0 && p.fees == 0 {
                continue;
            }
            positions.users.push(id.clone());
            positions.symbols.push(spec.name.clone());
            positions.sizes.push(spec.lots_to_quantity(p.size));
            positions.costs.push(units_to_usdt(p.cost));
            positions.margins.push(units_to_usdt(p.margin));
            positions.pnls.push(units_to_usdt(p.realized_pnl));
            positions.fees.push(units_to_usdt(p.fees));
            positions.leverages.push(i32::try_from(p.leverage).unwrap_or(i32::MAX));
        }
    }
    for table in ["accounts", "positions", "checkpoint_offsets"] {
        tx.execute(&format!("DELETE FROM {table} WHERE account_partition = $1"), &[&partition]).await?;
    }
    tx.execute(
        "INSERT INTO accounts (user_id, currency, total, locked, updated_at, account_partition, log_offset)
         SELECT u, 'USDT', t, l, now(), $4, $5 FROM unnest($1::text[], $2::numeric[], $3::numeric[]) x(u, t, l)",
        &[&users, &totals, &locked, &partition, &log_offset],
    )
    .await?;
    tx.execute(
        "INSERT INTO positions (user_id, symbol, size, entry_cost, margin, realized_pnl, fees, leverage, account_partition)
         SELECT *, $9 FROM unnest($1::text[], $2::text[], $3::numeric[], $4::numeric[], $5::numeric[], $6::numeric[],
                                  $7::numeric[], $8::int4[])",
        &[
            &positions.users, &positions.symbols, &positions.sizes, &positions.costs, &positions.margins, &positions.pnls,
            &positions.fees, &positions.leverages, &partition,
        ],
    )
    .await?;
    let (symbols, offsets): (Vec<&str>, Vec<i64>) =
        state.applied.iter().map(|(s, o)| (s.as_str(), i64::try_from(*o).unwrap_or(i64::MAX))).unzip();
    tx.execute(
        "INSERT INTO checkpoint_offsets (account_partition, symbol, log_offset)
         SELECT $1, s, o FROM unnest($2::text[], $3::int8[]) x(s, o)",
        &[&partition, &symbols, &offsets],
    )
    .await?;
    Ok(())
}

/// Writes into `data_dir` every newest checkpoint of `prefix`'s logs that it does not
/// have; returns how many. Waits for PostgreSQL at most `patience`.
///
/// # Errors
/// PostgreSQL unreachable or failing, or the data directory not writable.
pub fn restore(url: &str, prefix: &str, data_dir: &Path, patience: Duration) -> anyhow::Result<usize> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let rows = rt.block_on(async {
        tokio::time::timeout(patience, async {
            let client = connect(url).await?;
            let rows = client
                .query(
                    "SELECT DISTINCT ON (kind, name) kind, name, file, state FROM checkpoints WHERE log_prefix = $1
                     ORDER BY kind, name, file DESC",
                    &[&prefix],
                )
                .await?;
            anyhow::Ok(rows)
        })
        .await
        .map_err(|_| anyhow::anyhow!("PostgreSQL did not answer within {patience:?}"))?
    })?;
    let mut written = 0;
    for row in rows {
        let kind = match row.get::<_, &str>(0) {
            "account" => Kind::Account,
            "symbol" => Kind::Symbol,
            _ => continue,
        };
        let (name, file, state): (&str, &str, &[u8]) = (row.get(1), row.get(2), row.get(3));
        // Names come from the exchange itself; anything else is not followed.
        if [name, file].iter().any(|s| s.is_empty() || s.contains(['/', '\\']) || s.starts_with('.')) {
            continue;
        }
        let dir = kind.dir(data_dir, name);
        if dir.join(file).exists() {
            continue;
        }
        crate::ports::write_file(&dir, file, state).with_context(|| format!("writing {}", dir.display()))?;
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(kind: Kind, name: &str, file: &str) -> Checkpoint {
        Checkpoint { kind, name: name.into(), file: file.into(), state: file.as_bytes().to_vec() }
    }

    #[test]
    fn an_older_snapshot_that_arrives_late_never_takes_the_newer_ones_place() {
        let mut pending = Pending::default();
        pending.offer(checkpoint(Kind::Account, "03", "000000000000000000000002.snap"));
        pending.offer(checkpoint(Kind::Account, "03", "000000000000000000000001.snap"));
        pending.offer(checkpoint(Kind::Symbol, "BTC-PERP", "00000000000000000007.snap"));
        let ((_, _), first) = pending.pop().unwrap();
        assert_eq!(first.file, "000000000000000000000002.snap");
        let ((_, name), second) = pending.pop().unwrap();
        assert_eq!((name.as_str(), second.file.as_str()), ("BTC-PERP", "00000000000000000007.snap"));
        assert!(pending.pop().is_none());
        // Once stored, an older one is still refused; a newer one, and a failed one
        // put back, wait again.
        pending.offer(checkpoint(Kind::Account, "03", "000000000000000000000001.snap"));
        assert!(pending.is_empty());
        pending.offer(checkpoint(Kind::Account, "03", "000000000000000000000003.snap"));
        pending.put_back(checkpoint(Kind::Account, "03", "000000000000000000000002.snap"));
        assert_eq!(pending.pop().unwrap().1.file, "000000000000000000000003.snap");
    }
}
