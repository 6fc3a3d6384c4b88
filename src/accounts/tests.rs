//! The account rules, one case each.

use super::*;
use crate::engine::{ClientOrderId, OrderType, Side, TimeInForce};

#[test]
fn partition_snapshots_round_trip_without_pending_reservations() {
    let (mut a, user, key) = with_user(0);
    let mut kept = order(1, 100, Some("kept"));
    a.reserve(user, &mut kept, 0, Some(0)).unwrap();
    a.confirm(user, kept.id);
    let mut pending = order(1, 50, Some("pending"));
    a.reserve(user, &mut pending, 0, Some(0)).unwrap();
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
        stp: Default::default(),
        good_till: 0,
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
    a.reserve(user, &mut o, 0, Some(0)).unwrap();
    assert_eq!(a.user(user).unwrap().available(), 400);
    let mut again = order(1, 1, Some("c1"));
    assert_eq!(a.reserve(user, &mut again, 0, Some(0)), Err(RiskError::Duplicate(o.id)));
    let mut big = order(1, 401, None);
    assert_eq!(a.reserve(user, &mut big, 0, Some(0)), Err(RiskError::InsufficientMargin));
    assert_eq!(a.user(user).unwrap().locked, 600, "a refusal changes nothing");
    a.release(&o);
    assert_eq!(a.user(user).unwrap().locked, 0);
    assert!(a.user(user).unwrap().order(o.id).is_none());
}

#[test]
fn rate_limit_counts_per_second() {
    let (mut a, user, _) = with_user(2);
    for _ in 0..2 {
        a.reserve(user, &mut order(1, 1, None), 0, Some(5_000)).unwrap();
    }
    assert_eq!(a.reserve(user, &mut order(1, 1, None), 0, Some(5_999)), Err(RiskError::RateLimited));
    a.reserve(user, &mut order(1, 1, None), 0, Some(6_000)).unwrap();
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

#[test]
fn positions_are_limited_counting_open_orders_as_filled() {
    let limit = PositionLimit { max_lots: 10, max_value: 1_000, units_per_tick_lot: 1 };
    let (a, user, _) = with_user(0);
    let mut a = a.with_position_limits(vec![limit]);
    // Six lots at 100 (value 600) then four more: at the limit in lots and in value.
    let mut six = NewOrder { quantity: 6, ..order(6, 6, None) };
    a.reserve(user, &mut six, 0, Some(0)).unwrap();
    let mut four = order(4, 4, None);
    a.reserve(user, &mut four, 0, Some(0)).unwrap();
    let mut one = order(1, 1, None);
    assert_eq!(a.reserve(user, &mut one, 0, Some(0)), Err(RiskError::PositionLimit));
    // The other side is a separate exposure, and reduce-only orders are never refused.
    let mut sell = NewOrder { side: Side::Sell, ..order(10, 10, None) };
    a.reserve(user, &mut sell, 0, Some(0)).unwrap();
    let mut reduce = NewOrder { reduce_only: true, side: Side::Sell, ..order(1, 0, None) };
    a.reserve(user, &mut reduce, 0, Some(0)).unwrap();
    // Value counts too: two lots at 600 are 1200 > 1000.
    let mut pricey = NewOrder { kind: OrderType::Limit { price: 600, tif: TimeInForce::Gtc }, side: Side::Sell, ..order(2, 2, None) };
    a.release(&sell);
    assert_eq!(a.reserve(user, &mut pricey, 0, Some(0)), Err(RiskError::PositionLimit));
    // Released orders free their room.
    a.release(&four);
    a.reserve(user, &mut one, 0, Some(0)).unwrap();
    assert_eq!(a.user(user).unwrap().open_on(0).lots, [7, 1], "the reduce-only sell counts on its side");
}

#[test]
fn orphaned_locks_are_released_and_logged_ones_kept() {
    let (mut a, user, _) = with_user(0);
    let mut logged = order(1, 100, None);
    a.reserve(user, &mut logged, 0, Some(0)).unwrap();
    a.confirm(user, logged.id);
    let mut orphan = order(1, 250, Some("orphan"));
    orphan.timestamp = 1_000;
    a.reserve(user, &mut orphan, 0, Some(0)).unwrap();
    let mut recent = order(1, 50, None);
    recent.timestamp = 9_000;
    a.reserve(user, &mut recent, 0, Some(0)).unwrap();
    assert_eq!(a.user(user).unwrap().locked, 400);
    let released = a.release_orphans(&[partition_of(user)], 5_000);
    assert_eq!(released.iter().map(|(u, v)| (*u, v.id)).collect::<Vec<_>>(), [(user, orphan.id)]);
    let account = a.user(user).unwrap();
    assert_eq!(account.locked, 150);
    assert_eq!(account.open_on(0).count, 2);
    // Its clientOrderId is free again.
    let mut again = order(1, 1, Some("orphan"));
    a.reserve(user, &mut again, 0, Some(0)).unwrap();
}

#[test]
fn deposits_stop_at_the_balance_limit() {
    let (mut a, _, _) = with_user(0);
    let near = i64::try_from(MAX_BALANCE / 100).unwrap();
    for n in 0..99 {
        let TransferPlan::Log(_, t) = a.transfer("alice", &format!("big-{n}"), near, 0).unwrap() else { panic!() };
        a.apply(&t, true);
    }
    assert_eq!(a.transfer("alice", "one-too-many", near, 0).unwrap_err(), AdminError::BalanceLimit);
}

#[test]
fn order_numbers_start_above_every_order_replayed_or_restored() {
    let (mut a, user, _) = with_user(0);
    let mut o = order(1, 0, None);
    a.reserve(user, &mut o, 0, Some(0)).unwrap();
    // A run whose numbering starts lower (the clock stepped back, the mark lost) replays
    // the first run's order, then numbers above it.
    let mut b = Accounts::new(0, 1_000, 5);
    let (rec, _) = b.create_user("alice", [7; 24]).unwrap();
    b.apply(&rec, false);
    b.replay_order(&o, 0, 0);
    let mut next = order(1, 0, None);
    b.reserve(user, &mut next, 0, Some(0)).unwrap();
    assert!(next.id.0 & ORDER_NUMBER_MASK > o.id.0 & ORDER_NUMBER_MASK, "{next:?} after {o:?}");
}
