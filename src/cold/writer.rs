//! The DB writer: follows the event log (Kafka) and stores orders and trades in
//! PostgreSQL, exactly once.
//!
//! It runs on threads of its own ([`WRITERS`], each a tokio runtime with a connection
//! and a share of the partitions), never on the order path: PostgreSQL down or slow
//! changes nothing for trading. Each batch (≤ 1,000
//! records, or what arrived within 1 s) is one transaction: binary `COPY` into
//! temporary staging tables, then one pipelined round trip that upserts from them
//! (`ON CONFLICT DO NOTHING`, so a record read twice adds nothing), adds the trades
//! and closings actually inserted to their orders' running sums and status, and
//! stores the next offset of every partition read, all committed together. After any
//! crash the writer resumes from the offsets committed with the rows: no row twice,
//! none missing. A batch that fails is retried (after reconnecting) until it commits;
//! the log keeps what the writer has not stored.
//!
//! The work per batch does not grow with the history: nothing is summed again from
//! `trades`, and the only lookups are by primary key.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use exchange_io::kafka::{Located, Share, Tail};
use futures_lite::future::try_zip;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};
use rust_decimal::Decimal;
use uuid::Uuid;

use anyhow::Context;

use super::records::{self, Row};
use crate::engine::CancelReason;
use crate::metrics::Metrics;
use crate::health::Health;
use crate::wire::{EpochFloor, CANCELLED_TOPIC, COMMANDS_TOPIC, CONDITIONAL_TOPIC, FUNDING_TOPIC, LIQUIDATIONS_TOPIC, PRICES_TOPIC, TRADES_TOPIC};

pub use crate::health::cold::{DISABLED, DOWN, LAGGING, OK};

/// Behind the log by more than this, cold storage is `lagging` in `/health`.
pub const LAGGING_MS: i64 = 5_000;

/// A batch that has not committed by then counts as failed (connection dropped and
/// retried): a PostgreSQL that hangs is as down as one that refuses.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

const BATCH: usize = 1_000;
const BATCH_WAIT: Duration = Duration::from_secs(1);

/// Writers, each with a connection and a share of the partitions of its own: an order
/// and its results share a partition number, so no two writers touch the same order.
pub const WRITERS: usize = 2;

/// What each writer last reported, combined into `/health` (the worst) and
/// `exchange_cold_store_lag_milliseconds` (the largest).
struct Reports {
    state: [AtomicU8; WRITERS],
    lag: [AtomicI64; WRITERS],
}

impl Reports {
    fn set(&self, writer: usize, state: u8, lag: i64, health: &Health, metrics: &Metrics) {
        self.state[writer].store(state, Ordering::Release);
        self.lag[writer].store(lag, Ordering::Release);
        let rank = |s: u8| match s {
            DOWN => 3,
            LAGGING => 2,
            OK => 1,
            _ => 0,
        };
        let worst = self.state.iter().map(|s| s.load(Ordering::Acquire)).max_by_key(|s| rank(*s)).unwrap_or(DOWN);
        health.cold.store(worst, Ordering::Release);
        metrics.cold_lag_ms.set(self.lag.iter().map(|l| l.load(Ordering::Acquire)).max().unwrap_or(0));
    }
}

/// Starts the writer threads.
///
/// # Errors
/// No thread.
pub fn start(brokers: String, topic_prefix: String, url: String, health: Arc<Health>, metrics: Metrics) -> anyhow::Result<()> {
    let reports = Arc::new(Reports { state: std::array::from_fn(|_| AtomicU8::new(DOWN)), lag: std::array::from_fn(|_| AtomicI64::new(0)) });
    for index in 0..WRITERS {
        let (brokers, prefix, url, health, metrics, reports) =
            (brokers.clone(), topic_prefix.clone(), url.clone(), health.clone(), metrics.clone(), reports.clone());
        let writer = Writer { share: Share { index, of: WRITERS }, brokers, prefix, url, health, metrics, reports };
        std::thread::Builder::new().name(format!("cold-writer-{index}")).spawn(move || writer.run())?;
    }
    Ok(())
}

struct Writer {
    share: Share,
    brokers: String,
    prefix: String,
    url: String,
    health: Arc<Health>,
    metrics: Metrics,
    reports: Arc<Reports>,
}

impl Writer {
    fn report(&self, state: u8, lag: i64) {
        self.reports.set(self.share.index, state, lag, &self.health, &self.metrics);
    }

    fn run(&self) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            tracing::error!("no tokio runtime for the cold-storage writer");
            return;
        };
        let mut warned = false;
        loop {
            if self.health.stopping.load(Ordering::Acquire) {
                return;
            }
            match rt.block_on(self.follow()) {
                Ok(()) => return,
                Err(e) => {
                    self.report(DOWN, 0);
                    if !warned {
                        tracing::warn!(writer = self.share.index, error = format!("{e:#}"), "cold storage writer stopped; retrying");
                        warned = true;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    /// Connects, then stores batch after batch until stopped or an error.
    async fn follow(&self) -> anyhow::Result<()> {
        let topics: Vec<String> = [COMMANDS_TOPIC, TRADES_TOPIC, CANCELLED_TOPIC, FUNDING_TOPIC, LIQUIDATIONS_TOPIC, PRICES_TOPIC, CONDITIONAL_TOPIC]
            .iter()
            .map(|t| format!("{}{t}", self.prefix))
            .collect();
        let mut cold = ColdStore::new(super::connect(&self.url).await?).await?;
        let stored = cold.offsets().await?;
        let from = |topic: &str, partition: i32| stored.iter().find(|(t, p, _)| t == topic && *p == partition).map(|(_, _, o)| *o);
        let tail = Tail::new(&self.brokers, &topics, &from, Duration::from_secs(5), self.share).map_err(anyhow::Error::msg)?;
        self.report(OK, 0);
        tracing::info!(writer = self.share.index, "cold storage writer following the event log");
        while !self.health.stopping.load(Ordering::Acquire) {
            let batch = tail.next_batch(BATCH, BATCH_WAIT).map_err(anyhow::Error::msg)?;
            if batch.is_empty() {
                self.report(OK, 0);
                continue;
            }
            // A batch that does not commit ends this connection: the next one starts again
            // from the offsets committed with the rows, so the batch is read again.
            tokio::time::timeout(STORE_TIMEOUT, cold.store(&self.prefix, &batch)).await.context("PostgreSQL did not answer")??;
            self.metrics.cold_records.inc_by(batch.len() as u64);
            let newest = batch.iter().filter_map(|r| r.timestamp_ms).max().unwrap_or(0);
            let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(0);
            let lag = if newest > 0 { (now - newest).max(0) } else { 0 };
            self.report(if lag > LAGGING_MS { LAGGING } else { OK }, lag);
        }
        Ok(())
    }
}

/// A connection ready to store batches: schema applied, staging tables made, the
/// statements prepared.
pub struct ColdStore {
    client: Client,
    voids: Statement,
    fold: Statement,
    offsets: Statement,
    epochs: Statement,
    /// Per command topic, each symbol's epoch floor as stored.
    floors: HashMap<String, Floors>,
}

/// Each symbol's [`EpochFloor`].
type Floors = HashMap<String, EpochFloor>;

impl ColdStore {
    /// Applies the schema, creates this connection's staging tables, and turns off
    /// waiting for the WAL flush at commit.
    ///
    /// `synchronous_commit = off` loses nothing: a PostgreSQL crash can forget the last
    /// batches it confirmed, but each batch's offsets are in its own transaction, so they
    /// are forgotten together and the writer reads those records from the log again.
    ///
    /// # Errors
    /// PostgreSQL failing.
    pub async fn new(mut client: Client) -> anyhow::Result<Self> {
        super::migrate_client(&mut client).await?;
        client
            .batch_execute(
                "SET synchronous_commit = off;
                 CREATE TEMP TABLE IF NOT EXISTS stage_orders (LIKE orders INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
                 CREATE TEMP TABLE IF NOT EXISTS stage_trades (LIKE trades) ON COMMIT DELETE ROWS;
                 CREATE TEMP TABLE IF NOT EXISTS stage_closures (LIKE order_closures) ON COMMIT DELETE ROWS;
                 CREATE TEMP TABLE IF NOT EXISTS stage_changes (LIKE pending_order_changes) ON COMMIT DELETE ROWS;",
            )
            .await?;
        let voids = client
            .prepare(
                "DELETE FROM orders o USING unnest($1::int4[], $2::int8[]) v(p, o)
                 WHERE o.kafka_partition = v.p AND o.kafka_offset = v.o",
            )
            .await?;
        let fold = client.prepare(&fold()).await?;
        let offsets = client
            .prepare(
                "INSERT INTO writer_offsets (topic, kafka_partition, next_offset)
                 SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[])
                 ON CONFLICT (topic, kafka_partition) DO UPDATE
                 SET next_offset = GREATEST(writer_offsets.next_offset, EXCLUDED.next_offset)",
            )
            .await?;
        let epochs = client
            .prepare(
                "INSERT INTO epoch_floors (topic, symbol, seq) SELECT $1, * FROM unnest($2::text[], $3::int8[])
                 ON CONFLICT (topic, symbol) DO UPDATE SET seq = GREATEST(epoch_floors.seq, EXCLUDED.seq)",
            )
            .await?;
        let mut floors: HashMap<String, Floors> = HashMap::new();
        for row in client.query("SELECT topic, symbol, seq FROM epoch_floors", &[]).await? {
            let seq: i64 = row.get(2);
            floors.entry(row.get(0)).or_default().insert(row.get(1), EpochFloor(u64::try_from(seq).unwrap_or(0)));
        }
        Ok(Self { client, voids, fold, offsets, epochs, floors })
    }

    /// Where the writer is: (topic, partition, next offset) of every partition stored.
    ///
    /// # Errors
    /// PostgreSQL failing.
    pub async fn offsets(&self) -> anyhow::Result<Vec<(String, i32, i64)>> {
        let rows = self.client.query("SELECT topic, kafka_partition, next_offset FROM writer_offsets", &[]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }
}

fn time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// What one batch stores, read from its records.
#[derive(Default)]
struct Rows {
    orders: Vec<records::OrderRow>,
    trades: Vec<records::TradeRow>,
    closures: Vec<records::ClosureRow>,
    voids: Vec<(i32, i64)>,
    /// The command topic's epoch floors after this batch, and whether it moved any.
    floors: Floors,
    epochs_moved: bool,
    funding: Vec<records::FundingRow>,
    liquidations: Vec<records::LiquidationRow>,
    /// Each conditional order's newest change in the batch.
    conditionals: Vec<records::ConditionalRow>,
    /// Per symbol, the newest prices and the newest fund the batch says.
    prices: Vec<records::MarketRow>,
    funds: Vec<records::MarketRow>,
}

impl Rows {
    fn read(commands: &str, floors: Floors, batch: &[Located]) -> Self {
        let mut rows = Self { floors, ..Self::default() };
        // Empty records are fences (`exchange_io::kafka::fence`): nothing to store.
        for r in batch.iter().filter(|r| !r.payload.is_empty()) {
            for row in records::read(commands, r) {
                match row {
                    Ok(Row::Order(o)) => {
                        if rows.floors.get(&o.symbol).copied().unwrap_or_default().admits(false, o.seq) {
                            rows.orders.push(o);
                        } else {
                            tracing::warn!(topic = r.topic, partition = r.partition, offset = r.offset, "a command older than its log's epoch landed late: not stored");
                        }
                    }
                    Ok(Row::Epoch { symbol, seq }) => {
                        rows.floors.entry(symbol).or_default().admits(true, seq);
                        rows.epochs_moved = true;
                    }
                    Ok(Row::Trade(t)) => rows.trades.push(t),
                    // Like the accounts: a duplicate-id refusal says nothing of the order it names.
                    Ok(Row::Closure(c)) if c.reason != CancelReason::DuplicateOrderId.as_str() => rows.closures.push(c),
                    Ok(Row::Voided { symbol, seq, partition, offset }) => {
                        if rows.floors.get(&symbol).copied().unwrap_or_default().admits(false, seq) {
                            rows.voids.push((partition, offset));
                        } else {
                            tracing::warn!(topic = r.topic, partition = r.partition, offset = r.offset, "a void older than its log's epoch landed late: ignored");
                        }
                    }
                    Ok(Row::Funding(f)) => rows.funding.push(f),
                    Ok(Row::Liquidation(l, m)) => {
                        rows.liquidations.push(l);
                        rows.market(m);
                    }
                    Ok(Row::Market(m)) => rows.market(m),
                    Ok(Row::Conditional(c)) => match rows.conditionals.iter_mut().find(|x| x.id == c.id) {
                        Some(x) if x.seq < c.seq => *x = c,
                        Some(_) => {}
                        None => rows.conditionals.push(c),
                    },
                    Ok(_) => {}
                    Err(e) => tracing::error!(
                        topic = r.topic,
                        partition = r.partition,
                        offset = r.offset,
                        error = e,
                        "unreadable record skipped"
                    ),
                }
            }
        }
        rows
    }
}

impl Rows {
    fn market(&mut self, m: records::MarketRow) {
        let newest = |list: &mut Vec<records::MarketRow>, m: records::MarketRow| match list.iter_mut().find(|x| x.symbol == m.symbol) {
            Some(x) if x.seq < m.seq => *x = m,
            Some(_) => {}
            None => list.push(m),
        };
        if m.mark.is_some() {
            newest(&mut self.prices, m.clone());
        }
        if m.fund.is_some() {
            newest(&mut self.funds, m);
        }
    }

    /// Stores the perpetual's rows (few: funding times, liquidations, one row per symbol)
    /// and the conditional orders' changes.
    async fn store_perpetual(&self, tx: &tokio_postgres::Transaction<'_>) -> anyhow::Result<()> {
        if !self.funding.is_empty() {
            let f = &self.funding;
            let ids: Vec<Uuid> = f.iter().map(|r| r.event_id).collect();
            let users: Vec<&str> = f.iter().map(|r| r.user_id.as_str()).collect();
            let symbols: Vec<&str> = f.iter().map(|r| r.symbol.as_str()).collect();
            let amounts: Vec<Decimal> = f.iter().map(|r| r.amount).collect();
            let rates: Vec<Decimal> = f.iter().map(|r| r.rate).collect();
            let marks: Vec<Decimal> = f.iter().map(|r| r.mark).collect();
            let at: Vec<SystemTime> = f.iter().map(|r| time(r.paid_ms)).collect();
            tx.execute(
                "INSERT INTO funding_payments SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::numeric[], \
                 $5::numeric[], $6::numeric[], $7::timestamptz[]) ON CONFLICT (event_id) DO NOTHING",
                &[&ids, &users, &symbols, &amounts, &rates, &marks, &at],
            )
            .await?;
        }
        if !self.liquidations.is_empty() {
            let l = &self.liquidations;
            let ids: Vec<Uuid> = l.iter().map(|r| r.order_id).collect();
            let users: Vec<&str> = l.iter().map(|r| r.user_id.as_str()).collect();
            let symbols: Vec<&str> = l.iter().map(|r| r.symbol.as_str()).collect();
            let sides: Vec<&str> = l.iter().map(|r| r.side.as_str()).collect();
            let quantities: Vec<Decimal> = l.iter().map(|r| r.quantity).collect();
            let filled: Vec<Decimal> = l.iter().map(|r| r.filled).collect();
            let deleveraged: Vec<Decimal> = l.iter().map(|r| r.deleveraged).collect();
            let to_fund: Vec<Decimal> = l.iter().map(|r| r.to_fund).collect();
            let at: Vec<SystemTime> = l.iter().map(|r| time(r.at_ms)).collect();
            tx.execute(
                "INSERT INTO liquidations SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::numeric[], \
                 $6::numeric[], $7::numeric[], $8::numeric[], $9::timestamptz[]) ON CONFLICT (order_id) DO NOTHING",
                &[&ids, &users, &symbols, &sides, &quantities, &filled, &deleveraged, &to_fund, &at],
            )
            .await?;
        }
        if !self.conditionals.is_empty() {
            let c = &self.conditionals;
            let text = |f: fn(&records::ConditionalRow) -> &str| c.iter().map(f).collect::<Vec<&str>>();
            let ids: Vec<Uuid> = c.iter().map(|r| r.id).collect();
            let triggers: Vec<Decimal> = c.iter().map(|r| r.trigger).collect();
            let prices: Vec<Option<Decimal>> = c.iter().map(|r| r.price).collect();
            let quantities: Vec<Option<Decimal>> = c.iter().map(|r| r.quantity).collect();
            let callbacks: Vec<Option<Decimal>> = c.iter().map(|r| r.callback_rate).collect();
            let closes: Vec<bool> = c.iter().map(|r| r.close_position).collect();
            let reduces: Vec<bool> = c.iter().map(|r| r.reduce_only).collect();
            let client_ids: Vec<Option<&str>> = c.iter().map(|r| r.client_order_id.as_deref()).collect();
            let orders: Vec<Option<Uuid>> = c.iter().map(|r| r.order_id).collect();
            let reasons: Vec<Option<&str>> = c.iter().map(|r| r.reason.as_deref()).collect();
            let seqs: Vec<i64> = c.iter().map(|r| r.seq).collect();
            let at: Vec<SystemTime> = c.iter().map(|r| time(r.at_ms)).collect();
            // A row is made by the first change read (its time: created_at) and updated by
            // newer ones only.
            tx.execute(
                "INSERT INTO conditional_orders SELECT *, u.at FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], \
                 $5::text[], $6::numeric[], $7::text[], $8::numeric[], $9::numeric[], $10::numeric[], $11::bool[], $12::bool[], \
                 $13::text[], $14::text[], $15::uuid[], $16::text[], $17::bigint[], $18::timestamptz[]) AS u(id, user_id, symbol, \
                 side, type, trigger_price, working_type, price, quantity, callback_rate, close_position, reduce_only, \
                 client_order_id, status, order_id, reason, seq, at)
                 ON CONFLICT (conditional_id) DO UPDATE SET status = EXCLUDED.status, order_id = EXCLUDED.order_id,
                     reason = EXCLUDED.reason, seq = EXCLUDED.seq, updated_at = EXCLUDED.updated_at
                 WHERE conditional_orders.seq < EXCLUDED.seq",
                &[
                    &ids,
                    &text(|r| &r.user_id),
                    &text(|r| &r.symbol),
                    &text(|r| &r.side),
                    &text(|r| &r.kind),
                    &triggers,
                    &text(|r| &r.working_type),
                    &prices,
                    &quantities,
                    &callbacks,
                    &closes,
                    &reduces,
                    &client_ids,
                    &text(|r| &r.status),
                    &orders,
                    &reasons,
                    &seqs,
                    &at,
                ],
            )
            .await?;
        }
        for m in &self.prices {
            tx.execute(
                "INSERT INTO markets (symbol, price_seq, index_price, mark_price, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (symbol) DO UPDATE SET price_seq = EXCLUDED.price_seq, index_price = EXCLUDED.index_price,
                     mark_price = EXCLUDED.mark_price, updated_at = EXCLUDED.updated_at
                 WHERE markets.price_seq < EXCLUDED.price_seq",
                &[&m.symbol, &m.seq, &m.index, &m.mark, &time(m.at_ms)],
            )
            .await?;
        }
        for m in &self.funds {
            tx.execute(
                "INSERT INTO markets (symbol, fund_seq, insurance_fund, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (symbol) DO UPDATE SET fund_seq = EXCLUDED.fund_seq, insurance_fund = EXCLUDED.insurance_fund,
                     updated_at = EXCLUDED.updated_at
                 WHERE markets.fund_seq < EXCLUDED.fund_seq",
                &[&m.symbol, &m.seq, &m.fund, &time(m.at_ms)],
            )
            .await?;
        }
        Ok(())
    }
}

/// Binary `COPY` of `rows` into a staging table (nothing sent for no rows). Each row
/// has one point in time, `at(row)`, lent to `values` with the row.
async fn copy<T, const N: usize>(
    tx: &tokio_postgres::Transaction<'_>,
    statement: &str,
    types: &[Type; N],
    rows: &[T],
    at: impl Fn(&T) -> i64,
    values: impl for<'a> Fn(&'a T, &'a SystemTime) -> [&'a (dyn ToSql + Sync); N],
) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let writer = BinaryCopyInWriter::new(tx.copy_in(statement).await?, types);
    futures_lite::pin!(writer);
    for row in rows {
        let time = time(at(row));
        writer.as_mut().write(&values(row, &time)).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Turns the batch's inserted rows into changes to their orders (`stage_changes`): the
/// trades and closings actually inserted (so results republished by a replay add
/// nothing), and whatever was pending for the orders staged in this batch.
const APPLY: &str = "
WITH t AS (INSERT INTO trades SELECT * FROM stage_trades ON CONFLICT (id) DO NOTHING
           RETURNING buyer_order_id, seller_order_id, price, quantity, executed_at)
INSERT INTO stage_changes (order_id, filled, notional, at)
SELECT buyer_order_id, quantity, price * quantity, executed_at FROM t
UNION ALL SELECT seller_order_id, quantity, price * quantity, executed_at FROM t;

WITH c AS (INSERT INTO order_closures SELECT * FROM stage_closures ON CONFLICT (order_id) DO NOTHING
           RETURNING order_id, reason, closed_at)
INSERT INTO stage_changes SELECT order_id, 0, 0, closed_at, reason FROM c;

WITH taken AS (DELETE FROM pending_order_changes p USING stage_orders s WHERE p.order_id = s.id RETURNING p.*)
INSERT INTO stage_changes SELECT * FROM taken;
";

/// An order's status from its closing reason, filled and ordered quantity ($1: the
/// reasons that make a closing a rejection).
fn status(reason: &str, filled: &str, quantity: &str) -> String {
    format!(
        "CASE WHEN {reason} = ANY($1) THEN 'REJECTED' WHEN {reason} IS NOT NULL THEN 'CANCELLED' \
         WHEN {filled} >= {quantity} THEN 'FILLED' WHEN {filled} > 0 THEN 'PARTIALLY_FILLED' ELSE 'NEW' END"
    )
}

/// Applies `stage_changes`: the batch's new orders are inserted with their changes
/// already folded in, orders stored before are updated (found by primary key), and
/// what finds no order yet waits in `pending_order_changes`. The running sums never
/// re-read `trades`, so a batch costs the same however long the history is.
fn fold() -> String {
    let staged = status("COALESCE(c.reason, s.reason)", "(s.filled_quantity + COALESCE(c.filled, 0))", "s.quantity");
    let stored = status("COALESCE(a.reason, o.reason)", "(o.filled_quantity + a.filled)", "o.quantity");
    format!(
        "WITH c AS MATERIALIZED (
             SELECT order_id, sum(filled) AS filled, sum(notional) AS notional, max(at) AS at, max(reason) AS reason
             FROM stage_changes GROUP BY order_id),
         new AS (
             INSERT INTO orders (id, user_id, symbol, client_order_id, side, type, time_in_force, price, quantity,
                 filled_quantity, filled_notional, leverage, reduce_only, status, reason, created_at, updated_at,
                 kafka_partition, kafka_offset)
             SELECT s.id, s.user_id, s.symbol, s.client_order_id, s.side, s.type, s.time_in_force, s.price, s.quantity,
                 s.filled_quantity + COALESCE(c.filled, 0), s.filled_notional + COALESCE(c.notional, 0), s.leverage,
                 s.reduce_only, {staged}, COALESCE(c.reason, s.reason), s.created_at, GREATEST(s.updated_at, c.at),
                 s.kafka_partition, s.kafka_offset
             FROM stage_orders s LEFT JOIN c ON c.order_id = s.id
             ON CONFLICT (id) DO NOTHING
             RETURNING id),
         a AS MATERIALIZED (SELECT * FROM c WHERE order_id NOT IN (SELECT id FROM new)),
         upd AS (
             UPDATE orders o SET
                 filled_quantity = o.filled_quantity + a.filled,
                 filled_notional = o.filled_notional + a.notional,
                 reason = COALESCE(a.reason, o.reason),
                 status = {stored},
                 updated_at = GREATEST(o.updated_at, a.at)
             -- The id list steers the planner to the primary key: its row estimates of
             -- the growing table lag, and it would otherwise hash all of `orders`.
             FROM a WHERE o.id = a.order_id AND o.id = ANY(ARRAY(SELECT order_id FROM a))
             RETURNING o.id)
         INSERT INTO pending_order_changes
         SELECT s.* FROM stage_changes s
         WHERE s.order_id NOT IN (SELECT id FROM new) AND NOT EXISTS (SELECT 1 FROM upd WHERE upd.id = s.order_id)"
    )
}

/// The closing reasons that mean an order was refused rather than ended.
fn rejections() -> Vec<&'static str> {
    CancelReason::ALL.iter().filter(|r| r.is_rejection()).map(|r| r.as_str()).collect()
}

const COPY_ORDERS: &str = "COPY stage_orders (id, user_id, symbol, client_order_id, side, type, time_in_force, price, \
    quantity, leverage, reduce_only, created_at, updated_at, kafka_partition, kafka_offset) FROM STDIN BINARY";
const ORDER_TYPES: [Type; 15] = [
    Type::UUID, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT, Type::NUMERIC, Type::NUMERIC,
    Type::INT4, Type::BOOL, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ, Type::INT4, Type::INT8,
];
const COPY_TRADES: &str = "COPY stage_trades (id, symbol, seq, price, quantity, taker_side, buyer_id, buyer_order_id, \
    buyer_fee, buyer_pnl, seller_id, seller_order_id, seller_fee, seller_pnl, executed_at) FROM STDIN BINARY";
const TRADE_TYPES: [Type; 15] = [
    Type::UUID, Type::TEXT, Type::INT8, Type::NUMERIC, Type::NUMERIC, Type::TEXT, Type::TEXT, Type::UUID, Type::NUMERIC,
    Type::NUMERIC, Type::TEXT, Type::UUID, Type::NUMERIC, Type::NUMERIC, Type::TIMESTAMPTZ,
];

const COPY_CLOSURES: &str = "COPY stage_closures (order_id, reason, closed_at) FROM STDIN BINARY";
const CLOSURE_TYPES: [Type; 3] = [Type::UUID, Type::TEXT, Type::TIMESTAMPTZ];

impl ColdStore {
    /// One batch, one transaction.
    ///
    /// # Errors
    /// PostgreSQL failing; nothing of the batch is then stored.
    pub async fn store(&mut self, prefix: &str, batch: &[Located]) -> anyhow::Result<()> {
        let commands = format!("{prefix}{COMMANDS_TOPIC}");
        // A copy: a batch that fails is read again from the floors it started from.
        let mut rows = Rows::read(&commands, self.floors.get(&commands).cloned().unwrap_or_default(), batch);
        let tx = self.client.transaction().await?;
        if rows.epochs_moved {
            let (symbols, seqs): (Vec<&str>, Vec<i64>) =
                rows.floors.iter().map(|(s, f)| (s.as_str(), i64::try_from(f.0).unwrap_or(i64::MAX))).unzip();
            tx.execute(&self.epochs, &[&commands, &symbols, &seqs]).await?;
        }
        let (orders, trades) = (&rows.orders, &rows.trades);
        copy(&tx, COPY_ORDERS, &ORDER_TYPES, orders, |o| o.created_ms, |o, at| {
            [
                &o.id, &o.user_id, &o.symbol, &o.client_order_id, &o.side, &o.kind, &o.time_in_force, &o.price, &o.quantity,
                &o.leverage, &o.reduce_only, at, at, &o.partition, &o.offset,
            ]
        })
        .await?;
        copy(&tx, COPY_TRADES, &TRADE_TYPES, trades, |t| t.executed_ms, |t, at| {
            [
                &t.id, &t.symbol, &t.seq, &t.price, &t.quantity, &t.taker_side, &t.buyer_id, &t.buyer_order_id, &t.buyer_fee,
                &t.buyer_pnl, &t.seller_id, &t.seller_order_id, &t.seller_fee, &t.seller_pnl, at,
            ]
        })
        .await?;
        copy(&tx, COPY_CLOSURES, &CLOSURE_TYPES, &rows.closures, |c| c.closed_ms, |c, at| [&c.order_id, &c.reason, at]).await?;
        rows.store_perpetual(&tx).await?;
        let mut next: Vec<(&str, i32, i64)> = Vec::new();
        for r in batch {
            match next.iter_mut().find(|(t, p, _)| *t == r.topic && *p == r.partition) {
                Some(entry) => entry.2 = entry.2.max(r.offset + 1),
                None => next.push((&r.topic, r.partition, r.offset + 1)),
            }
        }
        let (topics, (partitions, offsets)): (Vec<&str>, (Vec<i32>, Vec<i64>)) =
            next.into_iter().map(|(t, p, o)| (t, (p, o))).unzip();
        let (void_partitions, void_offsets): (Vec<i32>, Vec<i64>) = rows.voids.iter().copied().unzip();
        let rejections = rejections();
        let (void_params, fold_params): ([&(dyn ToSql + Sync); 2], [&(dyn ToSql + Sync); 1]) =
            ([&void_partitions, &void_offsets], [&rejections]);
        let offset_params: [&(dyn ToSql + Sync); 3] = [&topics, &partitions, &offsets];
        // Sent together (tokio-postgres pipelines what is awaited together) and executed
        // in this order: one round trip for the whole batch after the copies. A void
        // (rare: only after the broker timed out) is deleted once the orders are in, in
        // a round trip of its own.
        let apply = tx.batch_execute(APPLY);
        let fold = tx.execute(&self.fold, &fold_params);
        let offsets = tx.execute(&self.offsets, &offset_params);
        if rows.voids.is_empty() {
            try_zip(apply, try_zip(fold, offsets)).await?;
        } else {
            try_zip(apply, fold).await?;
            tx.execute(&self.voids, &void_params).await?;
            offsets.await?;
        }
        tx.commit().await?;
        self.floors.insert(commands, std::mem::take(&mut rows.floors));
        Ok(())
    }
}
