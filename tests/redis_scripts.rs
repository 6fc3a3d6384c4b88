//! The Redis hot state's scripts against a real Redis (`EXCHANGE_TEST_REDIS_URL`,
//! default `redis://127.0.0.1:6379`; unreachable is a failure, not a skip).

use exchange::engine::{OrderId, UserId};
use exchange::redis_state::*;
use redis::{Commands, Script};

fn connection() -> redis::Connection {
    let url = std::env::var("EXCHANGE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| panic!("Redis at {url} is required for these tests: {e}"))
}

/// A user no other test (or earlier run) touches: the clock for runs, a counter for
/// the tests of this run (two of them can read the same clock value).
fn fresh_user() -> UserId {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
    UserId((micros << 8) | N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

fn balance(c: &mut redis::Connection, user: UserId) -> (i64, i64, i64) {
    let (t, a, l): (Option<i64>, Option<i64>, Option<i64>) =
        redis::cmd("HMGET").arg(balance_key(user)).arg("total").arg("available").arg("locked").query(c).unwrap();
    (t.unwrap_or(0), a.unwrap_or(0), l.unwrap_or(0))
}

fn transfer(c: &mut redis::Connection, user: UserId, id: &str, amount: i64) -> i64 {
    Script::new(TRANSFER).key(balance_key(user)).key(transfer_key(user, id)).arg(amount.to_string()).invoke(c).unwrap()
}

fn reserve(c: &mut redis::Connection, user: UserId, order: u64, limit: u32, amount: i64) -> i64 {
    Script::new(RESERVE)
        .key(balance_key(user))
        .key(rate_key(user, 1))
        .key(lock_key(user, OrderId(order)))
        .arg(limit)
        .arg(amount.to_string())
        .invoke(c)
        .unwrap()
}

#[test]
fn reserve_locks_exactly_and_refusals_change_nothing() {
    let mut c = connection();
    let user = fresh_user();
    assert_eq!(transfer(&mut c, user, "t-1", 1_000), 0);
    assert_eq!(transfer(&mut c, user, "t-1", 1_000), 1, "a repeated transfer changes nothing");
    assert_eq!(reserve(&mut c, user, 1, 0, 600), 0);
    assert_eq!(balance(&mut c, user), (1_000, 400, 600));
    assert_eq!(reserve(&mut c, user, 1, 0, 1), 3, "the same order twice");
    assert_eq!(reserve(&mut c, user, 2, 0, 401), 2);
    assert_eq!(balance(&mut c, user), (1_000, 400, 600), "a refusal changes nothing");
    let lock: i64 = c.get(lock_key(user, OrderId(1))).unwrap();
    assert_eq!(lock, 600);
    assert_eq!(transfer(&mut c, user, "w-1", -401), 2);
    assert_eq!(balance(&mut c, user), (1_000, 400, 600));
    assert_eq!(transfer(&mut c, user, "w-2", -400), 0);
    assert_eq!(balance(&mut c, user), (600, 0, 600));
}

#[test]
fn the_rate_limit_counts_only_accepted_orders() {
    let mut c = connection();
    let user = fresh_user();
    transfer(&mut c, user, "t", 100);
    let _: () = c.del(rate_key(user, 1)).unwrap();
    assert_eq!(reserve(&mut c, user, 1, 2, 500), 2, "refused for margin: not counted");
    assert_eq!(reserve(&mut c, user, 2, 2, 1), 0);
    assert_eq!(reserve(&mut c, user, 3, 2, 1), 0);
    assert_eq!(reserve(&mut c, user, 4, 2, 1), 1);
    assert_eq!(balance(&mut c, user), (100, 98, 2));
}

#[test]
fn settlement_applies_each_event_once() {
    let mut c = connection();
    let user = fresh_user();
    transfer(&mut c, user, "t", 10_000);
    reserve(&mut c, user, 7, 0, 1_050);
    let apply = |c: &mut redis::Connection, seq: u64| -> i64 {
        Script::new(APPLY)
            .key(balance_key(user))
            .key(applied_key(user))
            .key(lock_key(user, OrderId(7)))
            .key(position_key(user, "BTC-PERP"))
            .arg("BTC-PERP")
            .arg(seq)
            .arg("-5") // pnl - fee
            .arg("55") // margin released
            .arg("1050") // the order's whole lock consumed
            .arg("10")
            .arg("10000")
            .arg("995")
            .arg("0")
            .arg("5")
            .arg("1")
            .invoke(c)
            .unwrap()
    };
    assert_eq!(apply(&mut c, 3), 1);
    assert_eq!(apply(&mut c, 3), 0, "a replayed event changes nothing");
    assert_eq!(apply(&mut c, 2), 0, "nor does an older one");
    // total 9,995; locked 1,050 - 55 = 995 (the position's margin); available the rest.
    assert_eq!(balance(&mut c, user), (9_995, 9_000, 995));
    assert!(!c.exists::<_, bool>(lock_key(user, OrderId(7))).unwrap(), "a fully consumed lock is gone");
    let size: String = c.hget(position_key(user, "BTC-PERP"), "size").unwrap();
    assert_eq!(size, "10");
}

#[test]
fn amounts_beyond_double_precision_stay_exact() {
    let mut c = connection();
    let user = fresh_user();
    let big = (1_i64 << 60) + 1; // not representable as a double
    assert_eq!(transfer(&mut c, user, "t", big), 0);
    assert_eq!(reserve(&mut c, user, 1, 0, 1), 0);
    assert_eq!(balance(&mut c, user), (big, big - 1, 1));
    assert_eq!(reserve(&mut c, user, 2, 0, big), 2, "one unit short, and the check sees it");
    assert_eq!(balance(&mut c, user), (big, big - 1, 1));
}

#[test]
fn every_key_of_a_user_shares_one_cluster_slot() {
    let user = UserId(0xabc);
    let tag = |k: String| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
    let keys = [balance_key(user), rate_key(user, 5), lock_key(user, OrderId(1)), applied_key(user), position_key(user, "X"), transfer_key(user, "t")];
    assert!(keys.iter().all(|k| tag(k.clone()) == "{u:0000000000000abc}"), "{keys:?}");
}
