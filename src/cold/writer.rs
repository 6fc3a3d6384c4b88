//! The DB writer: follows the event log (Kafka) and stores orders and trades in
//! PostgreSQL, exactly once.
//!
//! It runs on a thread of its own (the sidecar's tokio runtime), never on the order
//! path: PostgreSQL down or slow changes nothing for trading. Each batch (≤ 1,000
//! records, or what arrived within 1 s) is one transaction: binary `COPY` into
//! temporary staging tables, upserts from them (`ON CONFLICT DO NOTHING`, so a record
//! read twice adds nothing), the affected orders' filled quantity and status recomputed
//! from their trades and closing, and the next offset of every partition read, all
//! committed together. After any crash the writer resumes from the offsets committed
//! with the rows: no row twice, none missing. A batch that fails is retried (after
//! reconnecting) until it commits; the log keeps what the writer has not stored.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use exchange_io::kafka::{Located, Tail};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use anyhow::Context;

use super::records::{self, Row};
use crate::metrics::Metrics;
use crate::engine::CancelReason;
use crate::server::Health;
use crate::shard::logs::{CANCELLED_TOPIC, COMMANDS_TOPIC, TRADES_TOPIC};

/// Cold storage state for `/health`.
pub const DISABLED: u8 = 0;
pub const DOWN: u8 = 1;
pub const OK: u8 = 2;
/// Storing, but more than [`LAGGING_MS`] behind the log.
pub const LAGGING: u8 = 3;
pub const LAGGING_MS: i64 = 5_000;

/// A batch that has not committed by then counts as failed (connection dropped and
/// retried): a PostgreSQL that hangs is as down as one that refuses.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

const BATCH: usize = 1_000;
const BATCH_WAIT: Duration = Duration::from_secs(1);

/// Starts the writer thread.
///
/// # Errors
/// No thread.
pub fn start(brokers: String, topic_prefix: String, url: String, health: Arc<Health>, metrics: Metrics) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("cold-writer".into())
        .spawn(move || run(&brokers, &topic_prefix, &url, &health, &metrics))?;
    Ok(())
}

fn run(brokers: &str, prefix: &str, url: &str, health: &Health, metrics: &Metrics) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        tracing::error!("no tokio runtime for the cold-storage writer");
        return;
    };
    let topics: Vec<String> = [COMMANDS_TOPIC, TRADES_TOPIC, CANCELLED_TOPIC].iter().map(|t| format!("{prefix}{t}")).collect();
    let mut warned = false;
    loop {
        if health.stopping.load(Ordering::Acquire) {
            return;
        }
        match rt.block_on(follow(brokers, &topics, prefix, url, health, metrics)) {
            Ok(()) => return,
            Err(e) => {
                health.cold.store(DOWN, Ordering::Release);
                if !warned {
                    tracing::warn!(error = format!("{e:#}"), "cold storage writer stopped; retrying");
                    warned = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Connects, then stores batch after batch until stopped or an error.
async fn follow(brokers: &str, topics: &[String], prefix: &str, url: &str, health: &Health, metrics: &Metrics) -> anyhow::Result<()> {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    prepare(&mut client).await?;
    let rows = client.query("SELECT topic, kafka_partition, next_offset FROM writer_offsets", &[]).await?;
    let stored: Vec<(String, i32, i64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let from = |topic: &str, partition: i32| stored.iter().find(|(t, p, _)| t == topic && *p == partition).map(|(_, _, o)| *o);
    let tail = Tail::new(brokers, topics, &from, Duration::from_secs(5)).map_err(anyhow::Error::msg)?;
    health.cold.store(OK, Ordering::Release);
    tracing::info!("cold storage writer following the event log");
    while !health.stopping.load(Ordering::Acquire) {
        let batch = tail.next_batch(BATCH, BATCH_WAIT).map_err(anyhow::Error::msg)?;
        if batch.is_empty() {
            metrics.cold_lag_ms.set(0);
            health.cold.store(OK, Ordering::Release);
            continue;
        }
        // A batch that does not commit ends this connection: the next one starts again
        // from the offsets committed with the rows, so the batch is read again.
        tokio::time::timeout(STORE_TIMEOUT, store(&mut client, prefix, &batch)).await.context("PostgreSQL did not answer")??;
        metrics.cold_records.inc_by(batch.len() as u64);
        let newest = batch.iter().filter_map(|r| r.timestamp_ms).max().unwrap_or(0);
        let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(0);
        let lag = if newest > 0 { (now - newest).max(0) } else { 0 };
        metrics.cold_lag_ms.set(lag);
        health.cold.store(if lag > LAGGING_MS { LAGGING } else { OK }, Ordering::Release);
    }
    Ok(())
}

/// Applies the schema and creates this connection's staging tables.
///
/// # Errors
/// PostgreSQL failing.
pub async fn prepare(client: &mut Client) -> anyhow::Result<()> {
    super::migrate_client(client).await?;
    client
        .batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS stage_orders (LIKE orders INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS stage_trades (LIKE trades) ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS stage_closures (LIKE order_closures) ON COMMIT DELETE ROWS;",
        )
        .await?;
    Ok(())
}

fn time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// One batch, one transaction (the staging tables of [`prepare`] must exist).
pub async fn store(client: &mut Client, prefix: &str, batch: &[Located]) -> anyhow::Result<()> {
    let commands = format!("{prefix}{COMMANDS_TOPIC}");
    let mut orders = Vec::new();
    let mut trades = Vec::new();
    let mut closures = Vec::new();
    let mut voids = Vec::new();
    for r in batch {
        let row = if r.topic == commands { records::command(&r.payload, r.partition, r.offset) } else { records::result(&r.payload) };
        match row {
            Ok(Row::Order(o)) => orders.push(o),
            Ok(Row::Trade(t)) => trades.push(t),
            // Like the accounts: a duplicate-id refusal says nothing of the order it names.
            Ok(Row::Closure(c)) if c.reason != CancelReason::DuplicateOrderId.as_str() => closures.push(c),
            Ok(Row::Voided { partition, offset }) => voids.push((partition, offset)),
            Ok(_) => {}
            Err(e) => tracing::error!(topic = r.topic, partition = r.partition, offset = r.offset, error = e, "unreadable record skipped"),
        }
    }
    let tx = client.transaction().await?;
    let sink = tx
        .copy_in(
            "COPY stage_orders (id, user_id, symbol, client_order_id, side, type, time_in_force, price, quantity, leverage, \
             reduce_only, created_at, updated_at, kafka_partition, kafka_offset) FROM STDIN BINARY",
        )
        .await?;
    let types = [
        Type::UUID, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT, Type::NUMERIC, Type::NUMERIC,
        Type::INT4, Type::BOOL, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ, Type::INT4, Type::INT8,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures_lite::pin!(writer);
    for o in &orders {
        let at = time(o.created_ms);
        let row: [&(dyn ToSql + Sync); 15] = [
            &o.id, &o.user_id, &o.symbol, &o.client_order_id, &o.side, &o.kind, &o.time_in_force, &o.price, &o.quantity,
            &o.leverage, &o.reduce_only, &at, &at, &o.partition, &o.offset,
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    let sink = tx
        .copy_in(
            "COPY stage_trades (id, symbol, seq, price, quantity, taker_side, buyer_id, buyer_order_id, buyer_fee, buyer_pnl, \
             seller_id, seller_order_id, seller_fee, seller_pnl, executed_at) FROM STDIN BINARY",
        )
        .await?;
    let types = [
        Type::UUID, Type::TEXT, Type::INT8, Type::NUMERIC, Type::NUMERIC, Type::TEXT, Type::TEXT, Type::UUID, Type::NUMERIC,
        Type::NUMERIC, Type::TEXT, Type::UUID, Type::NUMERIC, Type::NUMERIC, Type::TIMESTAMPTZ,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures_lite::pin!(writer);
    for t in &trades {
        let at = time(t.executed_ms);
        let row: [&(dyn ToSql + Sync); 15] = [
            &t.id, &t.symbol, &t.seq, &t.price, &t.quantity, &t.taker_side, &t.buyer_id, &t.buyer_order_id, &t.buyer_fee,
            &t.buyer_pnl, &t.seller_id, &t.seller_order_id, &t.seller_fee, &t.seller_pnl, &at,
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    let sink = tx.copy_in("COPY stage_closures (order_id, reason, closed_at) FROM STDIN BINARY").await?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::UUID, Type::TEXT, Type::TIMESTAMPTZ]);
    futures_lite::pin!(writer);
    for c in &closures {
        let at = time(c.closed_ms);
        writer.as_mut().write(&[&c.order_id, &c.reason, &at]).await?;
    }
    writer.finish().await?;
    let rejections: Vec<&str> = [
        CancelReason::WouldTake,
        CancelReason::FokUnfillable,
        CancelReason::NoLiquidity,
        CancelReason::ReduceOnlyRejected,
        CancelReason::DuplicateClientOrderId,
        CancelReason::DuplicateOrderId,
        CancelReason::InvalidOrder,
    ]
    .iter()
    .filter(|r| r.is_rejection())
    .map(|r| r.as_str())
    .collect();
    tx.batch_execute(
        "INSERT INTO orders SELECT * FROM stage_orders ON CONFLICT (id) DO NOTHING;
         INSERT INTO trades SELECT * FROM stage_trades ON CONFLICT (id) DO NOTHING;
         INSERT INTO order_closures SELECT * FROM stage_closures ON CONFLICT (order_id) DO NOTHING;",
    )
    .await?;
    for (partition, offset) in &voids {
        tx.execute("DELETE FROM orders WHERE kafka_partition = $1 AND kafka_offset = $2", &[partition, offset]).await?;
    }
    tx.execute(
        // Set-based and MATERIALIZED: computed once, then joined by id (inlined, the
        // planner evaluated per-order subqueries once per pair of a nested loop).
        "WITH affected AS MATERIALIZED (
             SELECT id FROM stage_orders UNION SELECT order_id FROM stage_closures
             UNION SELECT buyer_order_id FROM stage_trades UNION SELECT seller_order_id FROM stage_trades),
         fills AS MATERIALIZED (
             SELECT a.id, COALESCE(sum(t.quantity), 0) AS filled, max(t.executed_at) AS last_fill
             FROM affected a LEFT JOIN (
                 SELECT buyer_order_id AS id, quantity, executed_at FROM trades WHERE buyer_order_id IN (SELECT id FROM affected)
                 UNION ALL
                 SELECT seller_order_id, quantity, executed_at FROM trades WHERE seller_order_id IN (SELECT id FROM affected)
             ) t ON t.id = a.id
             GROUP BY a.id)
         UPDATE orders o SET
             filled_quantity = f.filled,
             reason = c.reason,
             status = CASE
                 WHEN c.reason = ANY($1) THEN 'REJECTED'
                 WHEN c.reason IS NOT NULL THEN 'CANCELLED'
                 WHEN f.filled >= o.quantity THEN 'FILLED'
                 WHEN f.filled > 0 THEN 'PARTIALLY_FILLED'
                 ELSE 'NEW' END,
             updated_at = GREATEST(o.created_at, c.closed_at, f.last_fill)
         FROM fills f LEFT JOIN order_closures c ON c.order_id = f.id
         WHERE o.id = f.id",
        &[&rejections],
    )
    .await?;
    let mut next: Vec<(&str, i32, i64)> = Vec::new();
    for r in batch {
        match next.iter_mut().find(|(t, p, _)| *t == r.topic && *p == r.partition) {
            Some(entry) => entry.2 = entry.2.max(r.offset + 1),
            None => next.push((&r.topic, r.partition, r.offset + 1)),
        }
    }
    for (topic, partition, offset) in next {
        tx.execute(
            "INSERT INTO writer_offsets (topic, kafka_partition, next_offset) VALUES ($1, $2, $3)
             ON CONFLICT (topic, kafka_partition) DO UPDATE SET next_offset = GREATEST(writer_offsets.next_offset, EXCLUDED.next_offset)",
            &[&topic, &partition, &offset],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
