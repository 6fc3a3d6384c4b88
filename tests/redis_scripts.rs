//! The Redis hot state's scripts against a real Redis (`EXCHANGE_TEST_REDIS_URL`,
//! default `redis://127.0.0.1:6379`; unreachable is a failure, not a skip).

use exchange::engine::{OrderId, UserId};
use exchange::redis_state::{Keys, Writes};
use exchange_io::redis::Op;
use redis::Commands;

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

fn keys() -> Keys {
    Keys::new("test:")
}

fn balance(c: &mut redis::Connection, user: UserId) -> (i64, i64, i64) {
    let (t, a, l): (Option<i64>, Option<i64>, Option<i64>) =
        redis::cmd("HMGET").arg(keys().balance(user)).arg("total").arg("available").arg("locked").query(c).unwrap();
    (t.unwrap_or(0), a.unwrap_or(0), l.unwrap_or(0))
}

fn run(c: &mut redis::Connection, writes: Writes) -> i64 {
    run_op(c, writes.into_op())
}

fn run_op(c: &mut redis::Connection, op: Op) -> i64 {
    let Op::Script { script, keys, args } = op else { unreachable!() };
    let mut inv = script.prepare_invoke();
    for k in keys {
        inv.key(k);
    }
    for a in args {
        inv.arg(a);
    }
    inv.invoke(c).unwrap()
}

/// Credits `amount` to total and available (creating the balance).
fn deposit(c: &mut redis::Connection, user: UserId, amount: i64) {
    let mut w = Writes::new(&keys(), user);
    w.op("HINCRBY", keys().balance(user), ["total".to_owned(), amount.to_string()]);
    w.op("HINCRBY", keys().balance(user), ["available".to_owned(), amount.to_string()]);
    w.op("HINCRBY", keys().balance(user), ["locked", "0"]);
    assert_eq!(run(c, w), 1);
}

fn lock(c: &mut redis::Connection, user: UserId, order: u64, amount: i64) -> i64 {
    run(c, Writes::lock_margin(&keys(), user, OrderId(order), amount))
}

#[test]
fn a_lock_moves_exactly_and_never_to_a_lost_user() {
    let mut c = connection();
    let user = fresh_user();
    assert_eq!(lock(&mut c, user, 1, 1), -1, "no balance: the user's hot state is missing");
    assert!(!c.exists::<_, bool>(keys().lock(user, OrderId(1))).unwrap(), "nothing half-written");
    deposit(&mut c, user, 1_000);
    assert_eq!(lock(&mut c, user, 1, 600), 1);
    assert_eq!(balance(&mut c, user), (1_000, 400, 600));
    let held: i64 = c.get(keys().lock(user, OrderId(1))).unwrap();
    assert_eq!(held, 600);
    let open: Vec<u64> = c.smembers(keys().active(user)).unwrap();
    assert_eq!(open, vec![1]);
    assert_eq!(lock(&mut c, user, 3, 0), 1, "a reduce-only order locks nothing");
    assert_eq!(balance(&mut c, user), (1_000, 400, 600));
}

#[test]
fn settlement_applies_each_offset_once_and_never_to_a_lost_user() {
    let mut c = connection();
    let user = fresh_user();
    let settle = |c: &mut redis::Connection, offset: u64| {
        let mut w = Writes::new(&keys(), user).guarded("BTC-PERP", offset).requiring(keys().balance(user));
        w.op("HINCRBY", keys().balance(user), ["total", "-5"]);
        w.op("HINCRBY", keys().balance(user), ["locked", "-55"]);
        w.op("HINCRBY", keys().balance(user), ["available", "50"]);
        w.op("HSET", keys().position(user, "BTC-PERP"), ["size", "10"]);
        run(c, w)
    };
    assert_eq!(settle(&mut c, 3), -1, "a user whose balance is gone is not written");
    assert!(!c.exists::<_, bool>(keys().position(user, "BTC-PERP")).unwrap(), "nothing half-written");
    deposit(&mut c, user, 10_000);
    assert_eq!(lock(&mut c, user, 7, 1_050), 1);
    assert_eq!(settle(&mut c, 3), 1);
    assert_eq!(settle(&mut c, 3), 0, "a replayed write changes nothing");
    assert_eq!(settle(&mut c, 2), 0, "nor does an older one");
    assert_eq!(balance(&mut c, user), (9_995, 9_000, 995));
    let size: String = c.hget(keys().position(user, "BTC-PERP"), "size").unwrap();
    assert_eq!(size, "10");
    assert_eq!(settle(&mut c, 4), 1, "the next offset applies");
}

#[test]
fn amounts_beyond_double_precision_stay_exact() {
    let mut c = connection();
    let user = fresh_user();
    let big = (1_i64 << 60) + 1; // not representable as a double
    deposit(&mut c, user, big);
    assert_eq!(lock(&mut c, user, 1, 1), 1);
    assert_eq!(balance(&mut c, user), (big, big - 1, 1));
    assert_eq!(lock(&mut c, user, 2, big - 1), 1);
    assert_eq!(balance(&mut c, user), (big, 0, big), "every unit moved, none rounded");
}

#[test]
fn every_key_of_a_user_shares_one_cluster_slot() {
    let user = UserId(0xabc);
    let k = keys();
    let cid = exchange::engine::ClientOrderId::new("c-1").unwrap();
    let all = [
        k.balance(user),
        k.lock(user, OrderId(1)),
        k.applied(user),
        k.position(user, "X"),
        k.active(user),
        k.order(user, OrderId(2)),
        k.client_order(user, &cid),
        k.fills(user),
    ];
    let tag = |k: &String| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
    assert!(all.iter().all(|k| tag(k) == "{u:0000000000000abc}" && k.starts_with("test:")), "{all:?}");
}

#[test]
fn a_rebuild_forgets_open_orders_the_log_does_not_know() {
    let mut c = connection();
    let user = fresh_user();
    let k = keys();
    let cid = exchange::engine::ClientOrderId::new("gone-1").unwrap();
    let _: () = c.set(k.order(user, OrderId(9)), r#"{"client_order_id":"gone-1"}"#).unwrap();
    let _: () = c.set(k.client_order(user, &cid), 9).unwrap();
    let _: () = c.set(k.lock(user, OrderId(9)), 100).unwrap();
    let _: () = c.sadd(k.active(user), 9).unwrap();
    let mut w = Writes::new(&k, user);
    w.op("FORGET_OPEN", k.active(user), [k.order_prefix(user), k.lock_prefix(user), k.client_order_prefix(user)]);
    w.op("SADD", k.active(user), [10]);
    assert_eq!(run(&mut c, w), 1);
    for gone in [k.order(user, OrderId(9)), k.client_order(user, &cid), k.lock(user, OrderId(9))] {
        assert!(!c.exists::<_, bool>(&gone).unwrap(), "{gone} is left over");
    }
    let open: Vec<u64> = c.smembers(k.active(user)).unwrap();
    assert_eq!(open, vec![10]);
}

#[test]
fn one_call_applies_many_lists_each_on_its_own_terms() {
    let mut c = connection();
    let (a, b, lost) = (fresh_user(), fresh_user(), fresh_user());
    deposit(&mut c, a, 100);
    deposit(&mut c, b, 100);
    let credit = |user: UserId, offset: u64| {
        let mut w = Writes::new(&keys(), user).guarded("BTC-PERP", offset).requiring(keys().balance(user));
        w.op("HINCRBY", keys().balance(user), ["total", "1"]);
        w
    };
    let op = Writes::into_one_op(vec![credit(a, 5), credit(b, 5), credit(a, 5), credit(a, 6)]);
    assert_eq!(run_op(&mut c, op), 3, "the repeated offset is skipped, the rest written");
    assert_eq!(balance(&mut c, a).0, 102);
    assert_eq!(balance(&mut c, b).0, 101);
    let op = Writes::into_one_op(vec![credit(lost, 1), credit(b, 6)]);
    assert_eq!(run_op(&mut c, op), -1, "a lost user is reported");
    assert_eq!(balance(&mut c, b).0, 102, "and the others are written all the same");
    assert!(!c.exists::<_, bool>(keys().balance(lost)).unwrap(), "nothing made up for the lost one");
}
