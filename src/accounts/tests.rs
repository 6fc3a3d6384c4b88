//! The account rules, one case each.

use super::*;
use crate::engine::{ClientOrderId, OrderType, Side, TimeInForce};

#[test]
fn partition_snapshots_round_trip_without_pending_reservations() {
    let (mut a, user, key) = with_user(0);
    let mut kept = order(1, 100, Some("kept"));
    a.reserve(user, &mut kept, 0, 0).unwrap();
    a.confirm(user, kept.id);
    let mut pending = order(1, 50, Some("pending"));
    a.reserve(user, &mut pending, 0, 0).unwrap();
    let mut bytes = Vec::new();
    a.partition_snapshot(partition_of(user), 7, &["BTC-PERP".into()], &mut bytes);
    let state: PartitionState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(state.log_offset, 7);
    let mut b = Accounts::new(0, 1_000, 0);
    b.install(partition_of(user), state, &|_| Some(0));
    let restored = b.user(user).unwrap();
    assert_eq!(b.authenticate(&key), Some(user));
    assert_eq!((restored.total, restored.locked), (1_000, 100), "only the logged order's lock");
    assert!(restored.order(kept.id).is_some());
    assert!(restored.order_by_client_id(&ClientOrderId::new("pending").unwrap()).is_none());
    assert!(b.transfer("alice", "t-1", 1_000, 0).is_ok_and(|p| matches!(p, TransferPlan::Done(_))));
}

fn order(qty: i64, lock: Units, cid: Option<&str>) -> NewOrder {
    NewOrder {
        id: OrderId(0),
        user: UserId(0),
        side: Side::Buy,
        kind: OrderType::Limit { price: 100, tif: TimeInForce::Gtc },
        quantity: qty,
        leverage: 1,
        reduce_only: false,
        client_order_id: cid.map(|c| ClientOrderId::new(c).unwrap()),
        locked_margin: lock,
        timestamp: 1,
    }
}

fn with_user(rate: u32) -> (Accounts, UserId, String) {
    let mut a = Accounts::new(rate, 1_000, 1_000_000);
    let (rec, key) = a.create_user("alice", [7; 24]).unwrap();
    a.apply(&rec, true);
    let TransferPlan::Log(_, t) = a.transfer("alice", "t-1", 1_000, 0).unwrap() else { panic!() };
    a.apply(&t, true);
    let user = a.user_by_name("alice").unwrap();
    (a, user, key)
}

#[test]
fn keys_authenticate_only_their_user() {
    let (a, user, key) = with_user(0);
    assert_eq!(a.authenticate(&key), Some(user));
    let mut wrong = key.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    assert_eq!(a.authenticate(&wrong), None);
    assert_eq!(a.authenticate("nonsense"), None);
    assert_eq!(a.authenticate(""), None);
}

#[test]
fn reserve_checks_locks_and_is_idempotent_by_client_id() {
    let (mut a, user, _) = with_user(0);
    let mut o = order(1, 600, Some("c1"));
    a.reserve(user, &mut o, 0, 0).unwrap();
    assert_eq!(a.user(user).unwrap().available(), 400);
    let mut again = order(1, 1, Some("c1"));
    assert_eq!(a.reserve(user, &mut again, 0, 0), Err(RiskError::Duplicate(o.id)));
    let mut big = order(1, 401, None);
    assert_eq!(a.reserve(user, &mut big, 0, 0), Err(RiskError::InsufficientMargin));
    assert_eq!(a.user(user).unwrap().locked, 600, "a refusal changes nothing");
    a.release(&o);
    assert_eq!(a.user(user).unwrap().locked, 0);
    assert!(a.user(user).unwrap().order(o.id).is_none());
}

#[test]
fn rate_limit_counts_per_second() {
    let (mut a, user, _) = with_user(2);
    for _ in 0..2 {
        a.reserve(user, &mut order(1, 1, None), 0, 5_000).unwrap();
    }
    assert_eq!(a.reserve(user, &mut order(1, 1, None), 0, 5_999), Err(RiskError::RateLimited));
    a.reserve(user, &mut order(1, 1, None), 0, 6_000).unwrap();
}

#[test]
fn transfers_are_idempotent_and_withdrawals_bounded() {
    let (mut a, user, _) = with_user(0);
    assert!(matches!(a.transfer("alice", "t-1", 1_000, 0), Ok(TransferPlan::Done(u)) if u == user));
    assert_eq!(a.transfer("alice", "t-1", 5, 0).unwrap_err(), AdminError::TransferConflict);
    assert_eq!(a.transfer("alice", "w-1", -1_001, 0).unwrap_err(), AdminError::InsufficientBalance);
    let TransferPlan::Log(_, w) = a.transfer("alice", "w-2", -300, 0).unwrap() else { panic!() };
    assert_eq!(a.user(user).unwrap().total, 700, "a withdrawal holds the money at once");
    a.release_transfer(&w);
    assert_eq!(a.user(user).unwrap().total, 1_000);
    assert_eq!(a.transfer("bob", "t-9", 1, 0).unwrap_err(), AdminError::UnknownUser);
}

#[test]
fn names_are_unique_and_numbers_survive_replay() {
    let (mut a, _, _) = with_user(0);
    assert_eq!(a.create_user("alice", [1; 24]).unwrap_err(), AdminError::UserExists);
    assert_eq!(a.create_user("", [1; 24]).unwrap_err(), AdminError::InvalidName);
    assert_eq!(a.create_user("a b", [1; 24]).unwrap_err(), AdminError::InvalidName);
}
