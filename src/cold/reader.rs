//! Reads from cold storage for the API (`/v1/orders/history`), on a thread of its own
//! with one PostgreSQL connection (tokio-postgres needs tokio; the shards run glommio).
//! Queries run one at a time; the connection is opened on first use and again after a
//! failure, so PostgreSQL coming and going only makes those requests answer 503.

use std::time::Duration;

use anyhow::Context;
use futures_channel::{mpsc, oneshot};
use futures_lite::StreamExt;
use rust_decimal::Decimal;

/// How long a history request may wait for PostgreSQL.
const TIMEOUT: Duration = Duration::from_secs(3);

pub struct HistoryQuery {
    /// Account id: the 16 hex digits of the API key.
    pub user_id: String,
    pub symbol: Option<String>,
    pub limit: usize,
    /// Only orders created before this time (ms).
    pub before: Option<i64>,
}

type Job = (HistoryQuery, oneshot::Sender<Result<Vec<serde_json::Value>, String>>);

#[derive(Clone)]
pub struct ColdReader {
    tx: mpsc::UnboundedSender<Job>,
}

impl ColdReader {
    /// # Errors
    /// No thread.
    pub fn start(url: String) -> anyhow::Result<Self> {
        let (tx, mut rx) = mpsc::unbounded::<Job>();
        std::thread::Builder::new().name("cold-reader".into()).spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                let mut client: Option<tokio_postgres::Client> = None;
                while let Some((query, reply)) = rx.next().await {
                    let result = match tokio::time::timeout(TIMEOUT, history(&url, &mut client, &query)).await {
                        Ok(Ok(rows)) => Ok(rows),
                        Ok(Err(e)) => Err(format!("{e:#}")),
                        Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
                    };
                    if result.is_err() {
                        client = None;
                    }
                    let _ = reply.send(result);
                }
            });
        })?;
        Ok(Self { tx })
    }

    /// The user's orders, newest first, as the API renders them.
    ///
    /// # Errors
    /// PostgreSQL unreachable or failing.
    pub async fn history(&self, query: HistoryQuery) -> Result<Vec<serde_json::Value>, String> {
        let (reply, answer) = oneshot::channel();
        self.tx.unbounded_send((query, reply)).map_err(|_| "cold storage reader stopped".to_owned())?;
        answer.await.unwrap_or_else(|_| Err("cold storage reader stopped".into()))
    }
}

async fn history(url: &str, client: &mut Option<tokio_postgres::Client>, q: &HistoryQuery) -> anyhow::Result<Vec<serde_json::Value>> {
    if client.is_none() {
        *client = Some(super::connect(url).await?);
    }
    let c = client.as_ref().context("no connection")?;
    let before = q.before.unwrap_or(i64::MAX);
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let rows = c
        .query(
            "SELECT o.id, o.client_order_id, o.symbol, o.side, o.type, o.time_in_force, o.price::text, o.quantity::text,
                    o.filled_quantity::text,
                    (o.filled_notional / nullif(o.filled_quantity, 0))::text,
                    o.status, o.reason,
                    (extract(epoch FROM o.created_at) * 1000)::int8, (extract(epoch FROM o.updated_at) * 1000)::int8
             FROM orders o
             WHERE o.user_id = $1 AND ($2::text IS NULL OR o.symbol = $2)
               AND o.created_at < timestamptz 'epoch' + $3::int8 * interval '1 millisecond'
             ORDER BY o.created_at DESC, o.id DESC
             LIMIT $4",
            &[&q.user_id, &q.symbol, &before.min(i64::MAX / 1_000_000), &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let id: uuid::Uuid = r.get(0);
            let avg: Option<String> = r.get(9);
            let avg = avg.and_then(|a| a.parse::<Decimal>().ok()).map(|a| a.round_dp(8).normalize().to_string());
            let filled: String = r.get(8);
            serde_json::json!({
                "orderId": id.to_string(),
                "clientOrderId": r.get::<_, Option<String>>(1),
                "symbol": r.get::<_, String>(2),
                "side": r.get::<_, String>(3),
                "type": r.get::<_, String>(4),
                "timeInForce": r.get::<_, Option<String>>(5),
                "price": r.get::<_, Option<String>>(6),
                "quantity": r.get::<_, String>(7),
                "filledQuantity": filled.parse::<Decimal>().map_or(filled.clone(), |d| if d.is_zero() { "0".into() } else { d.to_string() }),
                "avgFillPrice": avg,
                "status": r.get::<_, String>(10),
                "reason": r.get::<_, Option<String>>(11),
                "createdAt": r.get::<_, i64>(12),
                "updatedAt": r.get::<_, i64>(13),
            })
        })
        .collect())
}
