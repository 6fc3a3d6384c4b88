//! Rewriting a core's users into Redis from the ledger, and knowing when that is needed:
//! the partition markers a watchdog checks, the marks a clean stop leaves so the next
//! start can skip the rewrite, and the rewrite itself, chunked so the core keeps serving.

use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use exchange_io::redis::Op;

use super::{check, connection, rebuild_user, RedisHot, READY, REBUILDING, STALE};
use crate::redis_state::WRITE;
use crate::shard::projections::Projections;

/// How long one user's rewrite may take, queue included, before a rebuild counts as
/// failed.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(30);

/// Redis answers, and has the scripts (a restarted Redis has none).
async fn prepare(out: &Projections, hot: &RedisHot) -> Result<(), String> {
    connection(out, hot).call::<redis::Value>(exchange_io::redis::load_script(WRITE)).await.map(|_| ())
}

/// Rewrites every user of the partitions owned here from the ledger, then sets their
/// markers. Trading goes on meanwhile; results keep being written, queued behind each
/// user's rewrite, so nothing that happens during the rebuild is lost.
///
/// # Errors
/// Redis unreachable, or a write failed: the state stays stale.
pub async fn rebuild(out: &Rc<Projections>) -> Result<usize, String> {
    let Some(hot) = &out.redis else { return Ok(0) };
    let started = Instant::now();
    prepare(out, hot).await?;
    out.health.hot[out.id].store(REBUILDING, Ordering::Release);
    hot.rebuild_failed.store(false, Ordering::Release);
    let partitions: Vec<u32> = out.owned_partitions().collect();
    let users = out.ledger.borrow().users_in(&partitions);
    let pending = Arc::new(AtomicUsize::new(0));
    for chunk in users.chunks(256) {
        {
            let accounts = out.ledger.borrow();
            for user in chunk {
                let Some(account) = accounts.user(*user) else { continue };
                let writes = rebuild_user(out, &hot.keys, *user, account);
                pending.fetch_add(1, Ordering::AcqRel);
                let (pending, failed) = (pending.clone(), hot.rebuild_failed.clone());
                // Queued behind each other: a deadline for the bulk, not for one call.
                connection(out, hot).submit_within::<i64, _>(writes.into_op(), REBUILD_TIMEOUT, move |r| {
                    if r.is_err() {
                        failed.store(true, Ordering::Release);
                    }
                    pending.fetch_sub(1, Ordering::AcqRel);
                });
            }
        }
        // Let the shard serve between chunks, and keep the queue to Redis short.
        while pending.load(Ordering::Acquire) > 512 {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        glommio::yield_if_needed().await;
    }
    while pending.load(Ordering::Acquire) > 0 {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let markers: Vec<_> =
        partitions.iter().map(|p| connection(out, hot).call::<()>(Op::Cmd(redis::Cmd::set(hot.keys.marker(*p), 1)))).collect();
    for m in markers {
        m.await?;
    }
    if hot.rebuild_failed.load(Ordering::Acquire) {
        out.health.hot[out.id].store(STALE, Ordering::Release);
        return Err("a write of the rebuild failed".into());
    }
    if out.health.hot[out.id].compare_exchange(REBUILDING, READY, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return Err("hot state lost again during the rebuild".into());
    }
    out.metrics.hot_rebuilds.inc();
    tracing::info!(shard = out.id, users = users.len(), ms = started.elapsed().as_millis() as u64, "hot state rebuilt in Redis");
    Ok(users.len())
}

/// What the ledger of the partitions owned here has applied: equal fingerprints at a
/// clean stop and at the next start mean Redis already holds what the logs say.
fn fingerprint(out: &Projections) -> String {
    let accounts = out.ledger.borrow();
    let mut applied = accounts.applied_offsets();
    applied.sort_unstable();
    let partitions: Vec<u32> = out.owned_partitions().collect();
    let users = accounts.users_in(&partitions).len();
    let offsets: Vec<String> = applied.iter().map(|(s, o)| format!("{}={o}", out.map.symbols[*s].name)).collect();
    format!("shards={} users={users} {}", out.shards, offsets.join(","))
}

/// At a clean stop, with everything written: leaves the fingerprint for the next start.
pub async fn mark_clean(out: &Projections) {
    let Some(hot) = &out.redis else { return };
    if out.hot_state(out.id) != READY {
        return;
    }
    let print = fingerprint(out);
    let sets: Vec<_> = out
        .owned_partitions()
        .map(|p| connection(out, hot).call::<()>(Op::Cmd(redis::Cmd::set(hot.keys.clean(p), &print))))
        .collect();
    for s in sets {
        if let Err(e) = s.await {
            tracing::warn!(shard = out.id, error = e, "could not mark the hot state clean; the next start rebuilds it");
            return;
        }
    }
}

/// At start: whether Redis is as a clean stop left it, with the same logs behind it. The
/// marks are consumed either way, so a crash after this start never reuses them.
async fn resume_clean(out: &Projections, hot: &RedisHot) -> bool {
    if prepare(out, hot).await.is_err() {
        return false;
    }
    let print = fingerprint(out);
    let mut whole = true;
    for p in out.owned_partitions() {
        let clean = connection(out, hot).call::<Option<String>>(Op::Cmd(redis::Cmd::get_del(hot.keys.clean(p))));
        let marker = connection(out, hot).call::<bool>(Op::Cmd(redis::Cmd::exists(hot.keys.marker(p))));
        let same = matches!(clean.await, Ok(Some(c)) if c == print);
        whole &= same && matches!(marker.await, Ok(true));
    }
    whole && out.health.hot[out.id].compare_exchange(STALE, READY, Ordering::AcqRel, Ordering::Acquire).is_ok()
}

/// Checks the partition markers; rebuilds when the state is stale; runs the consistency
/// check every `EXCHANGE_CHECK_INTERVAL_SECS` (0: never).
pub async fn watch(out: Rc<Projections>) {
    let Some(hot) = &out.redis else { return };
    let interval = Duration::from_secs(out.config.check_interval_secs);
    let mut last_check = Instant::now();
    if resume_clean(&out, hot).await {
        tracing::info!(shard = out.id, "hot state in Redis is as the last clean stop left it: no rebuild");
    }
    let mut last_error = String::new();
    while !out.health.stopping.load(Ordering::Acquire) {
        glommio::timer::sleep(Duration::from_millis(250)).await;
        match out.hot_state(out.id) {
            STALE => match rebuild(&out).await {
                Ok(_) => last_error.clear(),
                Err(e) => {
                    if e != last_error {
                        tracing::warn!(shard = out.id, error = e, "hot state rebuild failed; retrying");
                        last_error = e;
                    }
                }
            },
            READY => {
                let checks: Vec<_> = out
                    .owned_partitions()
                    .map(|p| connection(&out, hot).call::<bool>(Op::Cmd(redis::Cmd::exists(hot.keys.marker(p)))))
                    .collect();
                for c in checks {
                    match c.await {
                        Ok(true) => {}
                        Ok(false) => out.hot_lost("a partition marker is gone (Redis emptied or restarted)"),
                        Err(e) => out.hot_lost(&e),
                    }
                }
                if !interval.is_zero() && last_check.elapsed() >= interval {
                    last_check = Instant::now();
                    match check(&out).await {
                        Ok(r) => tracing::info!(shard = out.id, users = r.users, repaired = r.repaired.len(), "consistency check"),
                        Err(e) => tracing::warn!(shard = out.id, error = e, "consistency check failed"),
                    }
                }
            }
            _ => {}
        }
    }
}
