//! The consistency check: margin locks no request is waiting for any more are released,
//! then Redis (when it is the hot state) is read back and compared with the ledger, user
//! by user; a user that differs is rewritten.

use std::rc::Rc;

use exchange_io::redis::Op;

use super::{connection, CheckReport, Repair, READY};
use crate::engine::PositionState;
use crate::shard::projections::Projections;

/// A position hash as Redis returns it (`None`: no hash).
fn parse_position(fields: &[(String, String)]) -> Option<PositionState> {
    if fields.is_empty() {
        return None;
    }
    let get = |name: &str| fields.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.parse::<i128>().ok()).unwrap_or(0);
    Some(PositionState {
        size: get("size"),
        cost: get("cost"),
        margin: get("margin"),
        realized_pnl: get("realizedPnl"),
        fees: get("fees"),
        leverage: u32::try_from(get("leverage")).unwrap_or(0),
    })
}

/// How long a margin lock may wait for its order to be logged. Every path from the risk
/// step to the log ends in a confirm or a release within the log's own timeouts (seconds);
/// a lock older than this has no request behind it.
pub const ORPHAN_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

/// Releases orphaned margin locks (see [`ORPHAN_AFTER`]) of the users owned here.
fn release_orphans(out: &Projections, partitions: &[u32]) -> Vec<Repair> {
    let before = crate::shard::core::now_ms() - ORPHAN_AFTER.as_millis() as i64;
    let released = out.ledger.borrow_mut().release_orphans(partitions, before);
    released
        .into_iter()
        .map(|(user, view)| {
            let account = crate::wire::account_id(user);
            let found = vec![format!("margin lock {} of an order never logged (reserved at {} ms): released", view.reserved, view.created_at)];
            tracing::warn!(shard = out.id, user = account, found = ?found, "orphaned margin lock released");
            if let Some(hot) = out.writing() {
                hot.touch(user, |t| t.order(view.id, false));
            }
            out.all_metrics.consistency_repairs.inc();
            Repair { user: account, found }
        })
        .collect()
}

/// Without Redis: the consistency check (orphaned locks only) every
/// `EXCHANGE_CHECK_INTERVAL_SECS` (0: never). With Redis, [`super::watch`] runs it.
pub async fn periodically(out: Rc<Projections>) {
    let interval = std::time::Duration::from_secs(out.config.check_interval_secs);
    if interval.is_zero() {
        return;
    }
    while !out.health.stopping.load(std::sync::atomic::Ordering::Acquire) {
        glommio::timer::sleep(interval).await;
        if let Ok(r) = check(&out).await {
            tracing::info!(shard = out.id, users = r.users, repaired = r.repaired.len(), "consistency check");
        }
    }
}

type Balance = (Option<i64>, Option<i64>, Option<i64>);

/// One consistency check of the users owned here: Redis against the ledger (the logs'
/// truth). Each user's Redis reads are issued in the same step as the ledger is read, so
/// they see exactly the writes issued before: a user in the middle of trading is not a
/// false alarm. A user that differs is logged, counted and rewritten from the ledger;
/// that also removes margin locks of orders the log never got (a crash between the
/// risk step and the log), which stay in the user's open-order set.
///
/// # Errors
/// No Redis, the hot state not ready, or Redis failing.
pub async fn check(out: &Rc<Projections>) -> Result<CheckReport, String> {
    if out.redis.is_some() && out.hot_state(out.id) != READY {
        return Err("the hot state is not ready".into());
    }
    let partitions: Vec<u32> = out.owned_partitions().collect();
    let users = out.ledger.borrow().users_in(&partitions);
    let mut report = CheckReport { users: users.len(), repaired: release_orphans(out, &partitions) };
    let Some(hot) = &out.redis else {
        out.all_metrics.consistency_checks.inc();
        return Ok(report);
    };
    for chunk in users.chunks(256) {
        let mut pending = Vec::with_capacity(chunk.len());
        {
            let accounts = out.ledger.borrow();
            for &user in chunk {
                let Some(a) = accounts.user(user) else { continue };
                let mut open: Vec<u64> = a.orders.values().filter(|v| !v.logged || v.status.is_open()).map(|v| v.id.0).collect();
                open.sort_unstable();
                let ledger_positions: Vec<Option<PositionState>> =
                    (0..out.map.symbols.len()).map(|s| a.positions.get(&s).copied()).collect();
                let cmd = redis::cmd("HMGET").arg(hot.keys.balance(user)).arg("total").arg("available").arg("locked").to_owned();
                let balance = connection(out, hot).call::<Balance>(Op::Cmd(cmd));
                let active = connection(out, hot).call::<Vec<u64>>(Op::Cmd(redis::Cmd::smembers(hot.keys.active(user))));
                let positions: Vec<_> = out
                    .map
                    .symbols
                    .iter()
                    .map(|s| connection(out, hot).call::<Vec<(String, String)>>(Op::Cmd(redis::Cmd::hgetall(hot.keys.position(user, &s.name)))))
                    .collect();
                let expected = ((a.total, a.available(), a.locked), open, ledger_positions);
                pending.push((user, expected, balance, active, positions));
            }
        }
        for (user, (ledger_balance, ledger_open, ledger_positions), balance, active, positions) in pending {
            let mut found = Vec::new();
            let (t, a, l) = balance.await?;
            let redis_balance = (t.map(i128::from), a.map(i128::from), l.map(i128::from));
            let (lt, la, ll) = ledger_balance;
            if redis_balance != (Some(lt), Some(la), Some(ll)) {
                found.push(format!("balance (total, available, locked): Redis {redis_balance:?}, log {:?}", (lt, la, ll)));
            }
            let mut open = active.await?;
            open.sort_unstable();
            if open != ledger_open {
                let leaked: Vec<u64> = open.iter().filter(|id| !ledger_open.contains(id)).copied().collect();
                found.push(format!("open orders: Redis {open:?}, log {ledger_open:?} (unknown to the log: {leaked:?})"));
            }
            for ((symbol, call), ledger) in positions.into_iter().enumerate().zip(ledger_positions) {
                let redis = parse_position(&call.await?);
                if redis != ledger {
                    found.push(format!("position {}: Redis {redis:?}, log {ledger:?}", out.map.symbols[symbol].name));
                }
            }
            if found.is_empty() {
                continue;
            }
            let account = crate::wire::account_id(user);
            tracing::warn!(shard = out.id, user = account, found = ?found, "hot state differs from the log: repaired");
            hot.touch(user, |t| t.rewrite = true);
            out.all_metrics.consistency_repairs.inc();
            report.repaired.push(Repair { user: account, found });
        }
    }
    out.all_metrics.consistency_checks.inc();
    Ok(report)
}
