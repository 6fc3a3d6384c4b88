//! Cold storage write throughput: the DB writer's batches (binary COPY into staging
//! tables, upserts, status recomputation, offsets; one transaction per 1,000 records)
//! against a baseline in the same run: the same rows inserted one statement per row
//! (prepared), one transaction per batch.
//!
//! `cargo run --release -p perf --bin cold_copy -- [--records 200000] [--url postgres://postgres@127.0.0.1:5432/test]`
//!
//! Works in a database of its own (`exchange_bench_copy`, dropped and made again).

use std::time::Instant;

use exchange::engine::{Command, Event, FillUpdate, NewOrder, OrderId, OrderType, PositionState, Side, TimeInForce, Trade, UserId};
use exchange::wire::{COMMANDS_TOPIC, TRADES_TOPIC};
use exchange::wire::{self, StreamRecord};
use exchange_io::kafka::Located;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// Half new orders, half trades between them, on two symbols in partitions 0 and 1 (an
/// order and its trades in the same one, as the exchange keys them).
fn records(n: usize) -> Vec<Located> {
    let map = exchange::shard_map::ShardMap::load(std::path::Path::new("shards/default.toml")).expect("run from the repository root");
    let now = 1_795_000_000_000_i64;
    (0..n)
        .map(|i| {
            let k = i as u64 / 2;
            let (spec, partition, offset) = (&map.symbols[(k % 2) as usize], (k % 2) as i32, (k / 2) as i64);
            if i.is_multiple_of(2) {
                let order = NewOrder {
                    id: OrderId(k + 1),
                    user: UserId(k % 1_000),
                    side: if k.is_multiple_of(2) { Side::Buy } else { Side::Sell },
                    kind: OrderType::Limit { price: 500_000 + (k % 100) as i64, tif: TimeInForce::Gtc },
                    quantity: 10,
                    leverage: 10,
                    reduce_only: false,
                    client_order_id: None,
                    locked_margin: 1_000,
                    timestamp: now + i as i64,
                    stp: Default::default(),
                    good_till: 0,
                };
                let payload = wire::encode_command(spec, &StreamRecord::Command(Command::Place(order)), k);
                Located { topic: COMMANDS_TOPIC.into(), partition, offset, timestamp_ms: None, payload }
            } else {
                let update = |user: u64, order: u64| FillUpdate {
                    user: UserId(user),
                    order_id: OrderId(order),
                    pnl: 0,
                    fee: 250,
                    margin_released: 0,
                    position: PositionState::default(),
                };
                let trade = Event::TradeExecuted(Trade {
                    seq: k + 1,
                    price: 500_000,
                    quantity: 5,
                    taker_side: Side::Buy,
                    adl: false,
                    buyer: update(k % 1_000, k + 1),
                    // The order of the iteration before last: the same symbol.
                    seller: update((k + 1) % 1_000, if k >= 2 { k - 1 } else { k + 1 }),
                    timestamp: now + i as i64,
                });
                let (_, payload) = wire::encode_event(spec, &trade);
                Located { topic: TRADES_TOPIC.into(), partition, offset, timestamp_ms: None, payload }
            }
        })
        .collect()
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("PostgreSQL");
    tokio::spawn(connection);
    client
}

/// The baseline: one prepared INSERT per row.
async fn insert_rows(client: &mut tokio_postgres::Client, batch: &[Located]) {
    let tx = client.transaction().await.unwrap();
    let order = tx
        .prepare(
            "INSERT INTO orders (id, user_id, symbol, client_order_id, side, type, time_in_force, price, quantity, leverage,
             reduce_only, created_at, updated_at, kafka_partition, kafka_offset)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13, $14) ON CONFLICT (id) DO NOTHING",
        )
        .await
        .unwrap();
    let trade = tx
        .prepare(
            "INSERT INTO trades VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ON CONFLICT (id) DO NOTHING",
        )
        .await
        .unwrap();
    let at = |ms: i64| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    for row in batch.iter().flat_map(|r| exchange::cold::records::read(COMMANDS_TOPIC, r)) {
        if let Ok(exchange::cold::records::Row::Order(o)) = row {
            tx.execute(
                &order,
                &[&o.id, &o.user_id, &o.symbol, &o.client_order_id, &o.side, &o.kind, &o.time_in_force, &o.price, &o.quantity,
                  &o.leverage, &o.reduce_only, &at(o.created_ms), &o.partition, &o.offset],
            )
            .await
            .unwrap();
        } else if let Ok(exchange::cold::records::Row::Trade(t)) = row {
            tx.execute(
                &trade,
                &[&t.id, &t.symbol, &t.seq, &t.price, &t.quantity, &t.taker_side, &t.buyer_id, &t.buyer_order_id, &t.buyer_fee,
                  &t.buyer_pnl, &t.seller_id, &t.seller_order_id, &t.seller_fee, &t.seller_pnl, &at(t.executed_ms)],
            )
            .await
            .unwrap();
        }
    }
    tx.commit().await.unwrap();
}

fn main() {
    let n: usize = arg("--records").and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let admin = arg("--url").unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    let url = format!("{}/exchange_bench_copy", admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let batch = records(n);
    rt.block_on(async {
        let c = connect(&admin).await;
        c.batch_execute("DROP DATABASE IF EXISTS exchange_bench_copy").await.unwrap();
        c.batch_execute("CREATE DATABASE exchange_bench_copy").await.unwrap();
        let mut cold = exchange::cold::writer::ColdStore::new(connect(&url).await).await.unwrap();
        let mut client = connect(&url).await;
        // Like the writer's connection, so that the ratio is the method's alone.
        client.batch_execute("SET synchronous_commit = off").await.unwrap();
        let mut results = Vec::new();
        for (name, copy) in [("one INSERT per row (baseline)", false), ("writer: binary COPY + upsert", true)] {
            client.batch_execute("TRUNCATE orders, trades, order_closures, pending_order_changes, writer_offsets").await.unwrap();
            let started = Instant::now();
            for chunk in batch.chunks(1_000) {
                if copy {
                    cold.store("", chunk).await.unwrap();
                } else {
                    insert_rows(&mut client, chunk).await;
                }
            }
            let secs = started.elapsed().as_secs_f64();
            let rows: i64 = client.query_one("SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM trades)", &[]).await.unwrap().get(0);
            results.push((name, rows as f64 / secs, rows, secs));
        }
        // The exchange's writers: one connection per share of the partitions, at once.
        client.batch_execute("TRUNCATE orders, trades, order_closures, pending_order_changes, writer_offsets").await.unwrap();
        let started = Instant::now();
        std::thread::scope(|scope| {
            for share in 0..2 {
                let (url, batch) = (&url, &batch);
                scope.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    rt.block_on(async {
                        let mut cold = exchange::cold::writer::ColdStore::new(connect(url).await).await.unwrap();
                        let mine: Vec<Located> = batch.iter().filter(|r| r.partition == share).cloned().collect();
                        for chunk in mine.chunks(1_000) {
                            cold.store("", chunk).await.unwrap();
                        }
                    });
                });
            }
        });
        let secs = started.elapsed().as_secs_f64();
        let rows: i64 = client.query_one("SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM trades)", &[]).await.unwrap().get(0);
        results.push(("2 writers, a partition each", rows as f64 / secs, rows, secs));
        let pending: i64 = client.query_one("SELECT count(*) FROM pending_order_changes", &[]).await.unwrap().get(0);
        assert_eq!(pending, 0, "every fill found its order");
        let base = results[0].1;
        println!("{:<32} {:>10} {:>9} {:>12} {:>6}", "method", "rows", "seconds", "rows/s", "ratio");
        for (name, rate, rows, secs) in results {
            println!("{name:<32} {rows:>10} {secs:>9.2} {rate:>12.0} {:>6.2}", rate / base);
        }
        // Of the writer's time, what reading the JSON records takes (no PostgreSQL).
        let started = Instant::now();
        let parsed = batch.iter().flat_map(|r| exchange::cold::records::read(COMMANDS_TOPIC, r)).filter(Result::is_ok).count();
        println!("reading the {parsed} records' JSON alone: {:.2} s", started.elapsed().as_secs_f64());
        drop(client);
        let _ = c.batch_execute("DROP DATABASE IF EXISTS exchange_bench_copy WITH (FORCE)").await;
    });
}
