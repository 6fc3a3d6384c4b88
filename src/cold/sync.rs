//! The synchronous baseline (`EXCHANGE_PERSISTENCE=sync`): the design this exchange
//! replaces, in the same binary, so the two can be measured side by side on the same
//! machine, PostgreSQL and load.
//!
//! In it every order is checked against and written to PostgreSQL in one transaction
//! before its answer: the balance rows of everyone it touches locked (`SELECT … FOR
//! UPDATE`, in user order so that two orders never deadlock), the order inserted, its
//! trades inserted, the makers' orders, every balance and every position updated, and
//! the commit waited for (`synchronous_commit` as the server has it, `on` by default).
//! Deposits likewise. The matching itself is the same engine as in every other mode, so
//! what differs is only where the order waits.
//!
//! Not for production: it exists to be measured. A transaction that fails after the
//! order was matched answers 503 although the order stands (the old design rolled the
//! whole request back; ours has already logged it).
//!
//! The connections live on a thread of their own with a tokio runtime; the shards hand
//! over each transaction and await its answer.

use std::sync::Arc;

use anyhow::Context;
use futures_channel::oneshot;
use rust_decimal::Decimal;
use tokio::sync::{mpsc, Mutex};
use uuid::Uuid;

/// An order's transaction, with every amount already exact.
#[derive(Debug, Default)]
pub struct OrderTransaction {
    /// The order, when the transaction places one (a cancel does not).
    pub order: Option<OrderRow>,
    pub trades: Vec<TradeRow>,
    /// Orders that filled (`id`, quantity) or closed (`id`, status).
    pub fills: Vec<(Uuid, Decimal)>,
    pub closed: Vec<(Uuid, &'static str)>,
    /// Per user: change of total and of locked, in USDT.
    pub balances: Vec<(String, Decimal, Decimal)>,
    /// Per user and symbol: size, cost, margin, realized PnL.
    pub positions: Vec<(String, String, [Decimal; 4])>,
}

#[derive(Debug)]
pub struct OrderRow {
    pub id: Uuid,
    pub user: String,
    pub symbol: String,
    pub side: &'static str,
    pub price: Option<Decimal>,
    pub quantity: Decimal,
    pub filled: Decimal,
    pub status: &'static str,
    pub created_at_ms: i64,
}

#[derive(Debug)]
pub struct TradeRow {
    pub id: Uuid,
    pub symbol: String,
    pub price: Decimal,
    pub quantity: Decimal,
    pub buyer_order: Uuid,
    pub seller_order: Uuid,
    pub at_ms: i64,
}

enum Job {
    Order(OrderTransaction, oneshot::Sender<Result<(), String>>),
    Deposit(String, Decimal, oneshot::Sender<Result<(), String>>),
}

/// The shards' handle: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct SyncStore {
    jobs: mpsc::UnboundedSender<Job>,
}

impl SyncStore {
    /// Applies the schema, opens `connections` connections on a thread of its own.
    ///
    /// # Errors
    /// PostgreSQL unreachable or the schema not applied.
    pub fn start(url: &str, connections: usize) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let clients = rt.block_on(async {
            super::migrate(url).await?;
            let mut clients = Vec::with_capacity(connections);
            for _ in 0..connections.max(1) {
                clients.push(super::connect(url).await?);
            }
            anyhow::Ok(clients)
        })?;
        let (jobs, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        std::thread::Builder::new()
            .name("sync-baseline".into())
            .spawn(move || {
                rt.block_on(async move {
                    let workers: Vec<_> = clients.into_iter().map(|c| tokio::spawn(work(c, rx.clone()))).collect();
                    for w in workers {
                        let _ = w.await;
                    }
                });
            })
            .context("sync baseline thread")?;
        tracing::info!(connections, "persistence: synchronous, one PostgreSQL transaction per order (the baseline)");
        Ok(Self { jobs })
    }

    /// Writes one order's (or cancel's) transaction and waits for its commit.
    ///
    /// # Errors
    /// PostgreSQL refused or failed.
    pub async fn order(&self, tx: OrderTransaction) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        self.jobs.send(Job::Order(tx, done)).map_err(|_| "sync store stopped".to_owned())?;
        answer.await.unwrap_or_else(|_| Err("sync store stopped".into()))
    }

    /// Credits (or debits) a user's balance row and waits for the commit.
    ///
    /// # Errors
    /// PostgreSQL refused or failed.
    pub async fn deposit(&self, user: String, amount: Decimal) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        self.jobs.send(Job::Deposit(user, amount, done)).map_err(|_| "sync store stopped".to_owned())?;
        answer.await.unwrap_or_else(|_| Err("sync store stopped".into()))
    }
}

impl crate::ports::SyncStore for SyncStore {
    fn order<'a>(
        &'a self,
        spec: &crate::engine::SymbolSpec,
        placed: Option<(&crate::engine::NewOrder, &crate::accounts::OrderView)>,
        events: &[crate::engine::Event],
    ) -> crate::ports::LocalFuture<'a, Result<(), String>> {
        let tx = transaction(spec, placed, events);
        Box::pin(SyncStore::order(self, tx))
    }

    fn deposit(&self, user: crate::engine::UserId, amount: crate::engine::units::Units) -> crate::ports::LocalFuture<'_, Result<(), String>> {
        let amount = crate::engine::symbol::units_to_usdt(i128::from(amount));
        Box::pin(SyncStore::deposit(self, crate::wire::account_id(user), amount))
    }
}

async fn work(mut client: tokio_postgres::Client, jobs: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>) {
    loop {
        let job = jobs.lock().await.recv().await;
        match job {
            None => return,
            Some(Job::Order(tx, done)) => {
                let _ = done.send(write_order(&mut client, tx).await.map_err(|e| describe(&e)));
            }
            Some(Job::Deposit(user, amount, done)) => {
                let result = client
                    .execute(
                        "INSERT INTO sync_balances (user_id, total) VALUES ($1, $2) \
                         ON CONFLICT (user_id) DO UPDATE SET total = sync_balances.total + EXCLUDED.total",
                        &[&user, &amount],
                    )
                    .await;
                let _ = done.send(result.map(|_| ()).map_err(|e| describe(&e)));
            }
        }
    }
}

/// What PostgreSQL said, not only that it said something.
fn describe(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map_or_else(|| e.to_string(), ToString::to_string)
}

/// One transaction, in three round trips: the lock (which is the check), every write
/// at once (tokio-postgres pipelines statements polled together), and the commit. As
/// fast as this design goes over one connection, so the baseline measures the design,
/// not a slow client.
async fn write_order(client: &mut tokio_postgres::Client, tx: OrderTransaction) -> Result<(), tokio_postgres::Error> {
    let t = client.transaction().await?;
    let mut users: Vec<&String> = tx.balances.iter().map(|(u, _, _)| u).collect();
    users.sort_unstable();
    users.dedup();
    t.query("SELECT user_id, total, locked FROM sync_balances WHERE user_id = ANY($1) ORDER BY user_id FOR UPDATE", &[&users]).await?;
    let mut writes: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, tokio_postgres::Error>> + Send + '_>>> = Vec::new();
    if let Some(o) = &tx.order {
        writes.push(Box::pin(async { t.execute(
            "INSERT INTO sync_orders (id, user_id, symbol, side, price, quantity, filled_quantity, status, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[&o.id, &o.user, &o.symbol, &o.side, &o.price, &o.quantity, &o.filled, &o.status, &o.created_at_ms],
        ).await }));
    }
    for tr in &tx.trades {
        writes.push(Box::pin(async { t.execute(
            "INSERT INTO sync_trades (id, symbol, price, quantity, buyer_order_id, seller_order_id, executed_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&tr.id, &tr.symbol, &tr.price, &tr.quantity, &tr.buyer_order, &tr.seller_order, &tr.at_ms],
        ).await }));
    }
    for (id, quantity) in &tx.fills {
        writes.push(Box::pin(async { t.execute("UPDATE sync_orders SET filled_quantity = filled_quantity + $2 WHERE id = $1", &[id, quantity]).await }));
    }
    for (id, status) in &tx.closed {
        writes.push(Box::pin(async { t.execute("UPDATE sync_orders SET status = $2 WHERE id = $1", &[id, status]).await }));
    }
    for (user, total, locked) in &tx.balances {
        writes.push(Box::pin(async { t.execute(
            "INSERT INTO sync_balances (user_id, total, locked) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET total = sync_balances.total + EXCLUDED.total, locked = sync_balances.locked + EXCLUDED.locked",
            &[user, total, locked],
        ).await }));
    }
    for (user, symbol, [size, cost, margin, pnl]) in &tx.positions {
        writes.push(Box::pin(async { t.execute(
            "INSERT INTO sync_positions (user_id, symbol, size, cost, margin, realized_pnl) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (user_id, symbol) DO UPDATE SET size = EXCLUDED.size, cost = EXCLUDED.cost, margin = EXCLUDED.margin, realized_pnl = EXCLUDED.realized_pnl",
            &[user, symbol, size, cost, margin, pnl],
        ).await }));
    }
    futures_util::future::try_join_all(writes).await?;
    t.commit().await
}

/// The transaction for a command's results on `spec`'s book: `placed` is the order it
/// placed (with its state as the results left it), `None` for a cancel.
pub fn transaction(
    spec: &crate::engine::SymbolSpec,
    placed: Option<(&crate::engine::NewOrder, &crate::accounts::OrderView)>,
    events: &[crate::engine::Event],
) -> OrderTransaction {
    use crate::engine::{symbol::units_to_usdt, Event, OrderType};
    use crate::ids::{encode, IdKind};
    use crate::wire::account_id;
    let order_id = |id: crate::engine::OrderId| encode(IdKind::Order, spec.key, id.0);
    let mut tx = OrderTransaction::default();
    let balance = |tx: &mut OrderTransaction, user: crate::engine::UserId, total: i128, locked: i128| {
        tx.balances.push((account_id(user), units_to_usdt(total), units_to_usdt(locked)));
    };
    if let Some((order, view)) = placed {
        tx.order = Some(OrderRow {
            id: order_id(order.id),
            user: account_id(order.user),
            symbol: spec.name.clone(),
            side: order.side.as_str(),
            price: match order.kind {
                OrderType::Limit { price, .. } => Some(spec.ticks_to_price(price)),
                OrderType::Market | OrderType::MarketWithin { .. } | OrderType::Liquidation { .. } => None,
            },
            quantity: spec.lots_to_quantity(order.quantity),
            filled: spec.lots_to_quantity(view.filled),
            status: view.status.as_str(),
            created_at_ms: order.timestamp,
        });
        balance(&mut tx, order.user, 0, i128::from(order.locked_margin));
    }
    let taker = placed.map(|(o, _)| o.id);
    for e in events {
        match e {
            Event::TradeExecuted(t) => {
                tx.trades.push(TradeRow {
                    id: encode(IdKind::Trade, spec.key, t.seq),
                    symbol: spec.name.clone(),
                    price: spec.ticks_to_price(t.price),
                    quantity: spec.lots_to_quantity(t.quantity),
                    buyer_order: order_id(t.buyer.order_id),
                    seller_order: order_id(t.seller.order_id),
                    at_ms: t.timestamp,
                });
                for side in [&t.buyer, &t.seller] {
                    if Some(side.order_id) != taker {
                        tx.fills.push((order_id(side.order_id), spec.lots_to_quantity(t.quantity)));
                    }
                    balance(&mut tx, side.user, side.pnl - side.fee, -side.margin_released);
                    let p = side.position;
                    tx.positions.push((
                        account_id(side.user),
                        spec.name.clone(),
                        [spec.lots_to_quantity(p.size), units_to_usdt(p.cost), units_to_usdt(p.margin), units_to_usdt(p.realized_pnl)],
                    ));
                }
            }
            Event::OrderCancelled(c) => {
                balance(&mut tx, c.user, 0, -i128::from(c.released_margin));
                if Some(c.order_id) != taker {
                    tx.closed.push((order_id(c.order_id), "CANCELLED"));
                }
            }
            Event::FundingPaid(f) => balance(&mut tx, f.user, f.amount, f.margin_change),
            Event::OrderAmended(a) => balance(&mut tx, a.user, 0, i128::from(a.added_margin) - i128::from(a.released_margin)),
            Event::LiquidationEnded(l) => balance(&mut tx, l.user, -l.to_fund, 0),
            Event::OrderPlaced(_) | Event::PriceUpdated(_) | Event::LiquidationStarted(_) | Event::FundingSettled(_) | Event::Conditional(_) => {}
        }
    }
    tx
}
