//! The Redis hot state's writes (the script and plain commands) against a real Redis (`EXCHANGE_TEST_REDIS_URL`,
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

/// Writes a user's balance as absolute values.
fn balance_writes(user: UserId, (t, a, l): (i64, i64, i64)) -> Writes {
    let mut w = Writes::new();
    w.op("HSET", keys().balance(user), ("total", t, "available", a, "locked", l));
    w
}

#[test]
fn plain_commands_carry_every_argument_in_order() {
    let mut c = connection();
    let user = fresh_user();
    let mut w = balance_writes(user, (1_000, 400, 600));
    w.op("SET", keys().lock(user, OrderId(1)), 600);
    w.op("SADD", keys().active(user), (1, 2));
    let mut pipe = redis::pipe();
    for cmd in w.into_cmds() {
        pipe.add_command(cmd);
    }
    let _: () = pipe.query(&mut c).unwrap();
    assert_eq!(balance(&mut c, user), (1_000, 400, 600));
    let held: i64 = c.get(keys().lock(user, OrderId(1))).unwrap();
    assert_eq!(held, 600);
    let mut open: Vec<u64> = c.smembers(keys().active(user)).unwrap();
    open.sort_unstable();
    assert_eq!(open, vec![1, 2]);
}

#[test]
fn amounts_beyond_double_precision_stay_exact() {
    let mut c = connection();
    let user = fresh_user();
    let big = (1_i64 << 60) + 1; // not representable as a double
    assert_eq!(run(&mut c, balance_writes(user, (big, big - 1, 1))), 1);
    assert_eq!(balance(&mut c, user), (big, big - 1, 1), "every unit written by the script, none rounded");
}

#[test]
fn every_key_of_a_user_shares_one_cluster_slot() {
    let user = UserId(0xabc);
    let k = keys();
    let cid = exchange::engine::ClientOrderId::new("c-1").unwrap();
    let all = [
        k.balance(user),
        k.lock(user, OrderId(1)),
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
    let mut w = Writes::new();
    w.op("FORGET_OPEN", k.active(user), (k.order_prefix(user), k.lock_prefix(user), k.client_order_prefix(user)));
    w.op("SADD", k.active(user), 10);
    assert_eq!(run(&mut c, w), 1);
    for gone in [k.order(user, OrderId(9)), k.client_order(user, &cid), k.lock(user, OrderId(9))] {
        assert!(!c.exists::<_, bool>(&gone).unwrap(), "{gone} is left over");
    }
    let open: Vec<u64> = c.smembers(k.active(user)).unwrap();
    assert_eq!(open, vec![10]);
}

#[test]
fn one_call_applies_many_lists_in_order() {
    let mut c = connection();
    let (a, b) = (fresh_user(), fresh_user());
    let op = Writes::into_one_op(vec![balance_writes(a, (101, 101, 0)), balance_writes(b, (102, 100, 2)), balance_writes(a, (103, 103, 0))]);
    assert_eq!(run_op(&mut c, op), 3);
    assert_eq!(balance(&mut c, a), (103, 103, 0), "the later list of a user wins");
    assert_eq!(balance(&mut c, b), (102, 100, 2));
}
