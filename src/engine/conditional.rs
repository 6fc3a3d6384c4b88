//! Conditional orders: stop-loss and take-profit orders that wait, outside the book and
//! holding no margin, for a price to reach their trigger.
//!
//! A conditional order is placed by a logged command ([`Command::PlaceConditional`]); its
//! trigger is evaluated by [`super::Market::execute`] after every command, against the
//! last trade price or the mark price, so a replay triggers the same orders at the same
//! command. Triggering only marks it [`ConditionalStatus::Triggering`]: the order it
//! becomes needs a margin lock, which the risk step on the account's owner takes like
//! any order's, so the symbol's owner then logs either [`Command::PlaceTriggered`] (the
//! order, placed at once; the conditional is `Triggered`) or [`Command::RefuseTriggered`]
//! (`Rejected`, with the reason). Whatever crashes in between, the conditional stays
//! `Triggering` in the market's state until one of the two is logged, and only the first
//! of them counts: it triggers once.
//!
//! The trigger queues are ordered sets keyed by trigger price, four of them (last or mark
//! price, firing on a rise or on a fall): a command that moves no price past a trigger
//! costs four lookups of a set's end, however many orders wait.
//!
//! [`Command::PlaceConditional`]: super::Command::PlaceConditional
//! [`Command::PlaceTriggered`]: super::Command::PlaceTriggered
//! [`Command::RefuseTriggered`]: super::Command::RefuseTriggered

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::command::{ClientOrderId, OrderId, Side, TimeInForce, UserId};
use super::event::CancelReason;
use super::units::{Lots, Ticks};

/// Stop (fires when the price moves against the side's position: a buy on a rise, a
/// sell on a fall) or take-profit (the other way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConditionalKind {
    Stop,
    TakeProfit,
}

/// The price a trigger watches (Binance's `workingType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkingPrice {
    /// The last trade (`CONTRACT_PRICE`).
    Last,
    /// The mark price (`MARK_PRICE`).
    Mark,
}

/// A conditional order as logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewConditional {
    pub user: UserId,
    pub side: Side,
    pub kind: ConditionalKind,
    pub trigger: Ticks,
    pub working: WorkingPrice,
    /// `None`: a MARKET order once triggered; else a LIMIT order at this price.
    pub price: Option<Ticks>,
    /// The LIMIT order's time in force.
    pub tif: TimeInForce,
    /// 0 with `close_position`: the whole position at trigger time.
    pub quantity: Lots,
    pub close_position: bool,
    pub reduce_only: bool,
    pub client_order_id: Option<ClientOrderId>,
    pub timestamp: i64,
}

impl WorkingPrice {
    /// Binance's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Last => "CONTRACT_PRICE",
            Self::Mark => "MARK_PRICE",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Last, Self::Mark].into_iter().find(|w| w.as_str() == text)
    }
}

impl ConditionalStatus {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "NEW",
            Self::Triggering => "TRIGGERING",
            Self::Triggered => "TRIGGERED",
            Self::Cancelled => "CANCELLED",
            Self::Rejected => "REJECTED",
        }
    }
}

impl NewConditional {
    /// The order type's name: `STOP_MARKET`, `TAKE_PROFIT_MARKET`, `STOP`, `TAKE_PROFIT`.
    pub fn type_name(&self) -> &'static str {
        match (self.kind, self.price.is_some()) {
            (ConditionalKind::Stop, false) => "STOP_MARKET",
            (ConditionalKind::TakeProfit, false) => "TAKE_PROFIT_MARKET",
            (ConditionalKind::Stop, true) => "STOP",
            (ConditionalKind::TakeProfit, true) => "TAKE_PROFIT",
        }
    }

    /// The kind a type name gives, and whether it is limited (a LIMIT order once triggered).
    pub fn parse_type(text: &str) -> Option<(ConditionalKind, bool)> {
        match text {
            "STOP_MARKET" => Some((ConditionalKind::Stop, false)),
            "TAKE_PROFIT_MARKET" => Some((ConditionalKind::TakeProfit, false)),
            "STOP" => Some((ConditionalKind::Stop, true)),
            "TAKE_PROFIT" => Some((ConditionalKind::TakeProfit, true)),
            _ => None,
        }
    }

    /// Whether it fires when the price rises to its trigger (else when it falls to it).
    pub fn fires_on_rise(&self) -> bool {
        matches!((self.kind, self.side), (ConditionalKind::Stop, Side::Buy) | (ConditionalKind::TakeProfit, Side::Sell))
    }

    /// Whether `price` is at or past the trigger.
    pub fn fires_at(&self, price: Ticks) -> bool {
        if self.fires_on_rise() { price >= self.trigger } else { price <= self.trigger }
    }

    /// The order it becomes closes (part of) a position: it may not open one.
    pub fn reduces(&self) -> bool {
        self.reduce_only || self.close_position
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConditionalStatus {
    /// Waiting for its trigger.
    New,
    /// Triggered; its order is being placed.
    Triggering,
    /// Its order was placed (`order_id`).
    Triggered,
    Cancelled,
    /// Triggered, but its order could not be placed (`reason`).
    Rejected,
}

impl ConditionalStatus {
    pub fn is_open(self) -> bool {
        matches!(self, Self::New | Self::Triggering)
    }
}

/// A conditional order and what became of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conditional {
    /// The symbol's sequence number of the event that accepted it: unique on the symbol.
    pub id: u64,
    pub order: NewConditional,
    pub status: ConditionalStatus,
    /// When its status last changed (ms).
    pub updated: i64,
    /// The order it became.
    pub order_id: Option<OrderId>,
    /// Why it was cancelled or rejected.
    pub reason: Option<CancelReason>,
}

/// Why a conditional order was not accepted. Nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionalRefusal {
    /// Its trigger is already reached (Binance's -2021).
    WouldTrigger,
    TooMany,
    DuplicateClientOrderId,
    Invalid,
}

/// Conditional orders a user may have waiting on one symbol.
pub const MAX_CONDITIONALS_PER_USER: u32 = 100;

/// Closed conditional orders a market remembers (for queries), newest last.
pub const CLOSED_KEPT: usize = 1_000;

/// The conditional orders of one market.
#[derive(Clone, Debug, Default)]
pub struct Conditionals {
    /// Open ones (`New` and `Triggering`) by id.
    open: BTreeMap<u64, Conditional>,
    /// `New` ones by trigger: `[watching the mark][fires on a rise]` → (trigger, id).
    queues: [[BTreeSet<(Ticks, u64)>; 2]; 2],
    /// Each queue's nearest trigger (the lowest of those that fire on a rise, the highest
    /// of those that fire on a fall): what every command compares its prices with, kept
    /// beside the sets so that the check reads no tree.
    edges: [[Option<Ticks>; 2]; 2],
    /// `Triggering` ones by id: what the placer looks at, without walking the waiting ones.
    triggering: BTreeSet<u64>,
    client_ids: FxHashMap<(UserId, ClientOrderId), u64>,
    per_user: FxHashMap<UserId, u32>,
    closed: VecDeque<Conditional>,
}

impl Conditionals {
    /// Files (`add`) or takes out a `New` one's trigger, keeping its queue's edge.
    fn file(&mut self, c: &NewConditional, id: u64, add: bool) {
        let (mark, rise) = (usize::from(c.working == WorkingPrice::Mark), usize::from(c.fires_on_rise()));
        let queue = &mut self.queues[mark][rise];
        if add {
            queue.insert((c.trigger, id));
        } else {
            queue.remove(&(c.trigger, id));
        }
        let edge = if rise == 1 { queue.first() } else { queue.last() };
        self.edges[mark][rise] = edge.map(|(t, _)| *t);
    }

    /// Accepts `order` as conditional order `id` if `reference` (the price it watches,
    /// now) does not already trigger it.
    pub fn place(&mut self, id: u64, order: NewConditional, reference: Option<Ticks>) -> Result<Conditional, ConditionalRefusal> {
        let valid = (1..=super::units::MAX_TICKS).contains(&order.trigger)
            && order.price.is_none_or(|p| (1..=super::units::MAX_TICKS).contains(&p))
            && if order.close_position { order.quantity == 0 } else { (1..=super::units::MAX_LOTS).contains(&order.quantity) };
        if !valid {
            return Err(ConditionalRefusal::Invalid);
        }
        if reference.is_some_and(|p| order.fires_at(p)) {
            return Err(ConditionalRefusal::WouldTrigger);
        }
        if self.per_user.get(&order.user).copied().unwrap_or(0) >= MAX_CONDITIONALS_PER_USER {
            return Err(ConditionalRefusal::TooMany);
        }
        if let Some(cid) = order.client_order_id
            && self.client_ids.contains_key(&(order.user, cid))
        {
            return Err(ConditionalRefusal::DuplicateClientOrderId);
        }
        let c = Conditional { id, order, status: ConditionalStatus::New, updated: order.timestamp, order_id: None, reason: None };
        self.insert(c);
        Ok(c)
    }

    /// Files an open conditional order (accepted, or restored from a snapshot).
    fn insert(&mut self, c: Conditional) {
        match c.status {
            ConditionalStatus::New => self.file(&c.order, c.id, true),
            ConditionalStatus::Triggering => {
                self.triggering.insert(c.id);
            }
            _ => {}
        }
        if let Some(cid) = c.order.client_order_id {
            self.client_ids.insert((c.order.user, cid), c.id);
        }
        *self.per_user.entry(c.order.user).or_default() += 1;
        self.open.insert(c.id, c);
    }

    pub fn get(&self, id: u64) -> Option<&Conditional> {
        self.open.get(&id).or_else(|| self.closed.iter().rev().find(|c| c.id == id))
    }

    /// The user's conditional order with this client id: the open one, else the latest closed.
    pub fn by_client_id(&self, user: UserId, cid: ClientOrderId) -> Option<&Conditional> {
        match self.client_ids.get(&(user, cid)) {
            Some(id) => self.open.get(id),
            None => self.closed.iter().rev().find(|c| c.order.user == user && c.order.client_order_id == Some(cid)),
        }
    }

    /// The user's open conditional orders, oldest first.
    pub fn open_of(&self, user: UserId) -> impl Iterator<Item = &Conditional> {
        self.open.values().filter(move |c| c.order.user == user)
    }

    /// The user's open and remembered closed conditional orders, oldest first.
    pub fn all_of(&self, user: UserId) -> Vec<Conditional> {
        let mut all: Vec<Conditional> = self.closed.iter().chain(self.open.values()).filter(|c| c.order.user == user).copied().collect();
        all.sort_unstable_by_key(|c| c.id);
        all
    }

    /// Every open one, oldest first.
    pub fn open(&self) -> impl Iterator<Item = &Conditional> {
        self.open.values()
    }

    /// The `Triggering` ones (triggered, their order not yet placed or refused), oldest first.
    pub fn triggering(&self) -> impl Iterator<Item = &Conditional> {
        self.triggering.iter().filter_map(|id| self.open.get(id))
    }

    /// Those waiting for their trigger.
    pub fn waiting(&self) -> usize {
        self.queues.iter().flatten().map(BTreeSet::len).sum()
    }

    /// The ids of the `New` ones that `last` and `mark` trigger, oldest first.
    pub fn due(&self, last: Option<Ticks>, mark: Option<Ticks>) -> Vec<u64> {
        let mut due = Vec::new();
        for (watching_mark, price) in [(false, last), (true, mark)] {
            let Some(price) = price else { continue };
            let i = usize::from(watching_mark);
            let [falls, rises] = &self.queues[i];
            let [fall_edge, rise_edge] = self.edges[i];
            if rise_edge.is_some_and(|t| t <= price) {
                due.extend(rises.iter().take_while(|(t, _)| *t <= price).map(|(_, id)| *id));
            }
            if fall_edge.is_some_and(|t| t >= price) {
                due.extend(falls.iter().rev().take_while(|(t, _)| *t >= price).map(|(_, id)| *id));
            }
        }
        due.sort_unstable();
        due
    }

    /// Marks a `New` one `Triggering`; its copy as it is now.
    pub fn trigger(&mut self, id: u64, now: i64) -> Option<Conditional> {
        let c = self.open.get(&id).copied().filter(|c| c.status == ConditionalStatus::New)?;
        self.file(&c.order, id, false);
        let c = self.open.get_mut(&id)?;
        c.status = ConditionalStatus::Triggering;
        c.updated = now;
        self.triggering.insert(id);
        Some(*c)
    }

    /// Closes an open one of `user`'s in `wanted` status, `end` saying how (its status,
    /// order, reason); its final copy.
    pub fn close(&mut self, id: u64, user: UserId, wanted: ConditionalStatus, now: i64, end: impl FnOnce(&mut Conditional)) -> Option<Conditional> {
        let c = self.open.get(&id).filter(|c| c.order.user == user && c.status == wanted)?;
        let mut c = *c;
        self.open.remove(&id);
        match c.status {
            ConditionalStatus::New => self.file(&c.order, id, false),
            _ => {
                self.triggering.remove(&id);
            }
        }
        if let Some(cid) = c.order.client_order_id {
            self.client_ids.remove(&(c.order.user, cid));
        }
        if let Some(n) = self.per_user.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&user);
            }
        }
        c.updated = now;
        end(&mut c);
        self.remember(c);
        Some(c)
    }

    fn remember(&mut self, c: Conditional) {
        if self.closed.len() == CLOSED_KEPT {
            self.closed.pop_front();
        }
        self.closed.push_back(c);
    }

    /// What a snapshot keeps: the open ones and the remembered closed ones, oldest first.
    pub fn parts(&self) -> (Vec<Conditional>, Vec<Conditional>) {
        (self.open.values().copied().collect(), self.closed.iter().copied().collect())
    }

    /// Rebuilt from [`Self::parts`].
    pub fn from_parts(open: Vec<Conditional>, closed: Vec<Conditional>) -> Result<Self, String> {
        let mut all = Self::default();
        for c in open {
            if !c.status.is_open() || all.open.contains_key(&c.id) {
                return Err(format!("conditional order {} is inconsistent", c.id));
            }
            all.insert(c);
        }
        for c in closed.into_iter().rev().take(CLOSED_KEPT).collect::<Vec<_>>().into_iter().rev() {
            all.remember(c);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop(side: Side, trigger: Ticks) -> NewConditional {
        NewConditional {
            user: UserId(1),
            side,
            kind: ConditionalKind::Stop,
            trigger,
            working: WorkingPrice::Last,
            price: None,
            tif: TimeInForce::Gtc,
            quantity: 1,
            close_position: false,
            reduce_only: false,
            client_order_id: None,
            timestamp: 0,
        }
    }

    /// The nearest trigger of each queue follows every acceptance, trigger and cancel.
    #[test]
    fn due_follows_the_nearest_trigger_as_orders_come_and_go() {
        let mut all = Conditionals::default();
        for (id, trigger) in [(1, 90), (2, 95), (3, 100)] {
            all.place(id, stop(Side::Sell, trigger), Some(101)).unwrap();
        }
        all.place(4, stop(Side::Buy, 110), Some(101)).unwrap();
        assert_eq!(all.due(Some(101), None), Vec::<u64>::new());
        assert!(all.close(3, UserId(1), ConditionalStatus::New, 1, |c| c.status = ConditionalStatus::Cancelled).is_some());
        assert_eq!(all.due(Some(97), None), Vec::<u64>::new(), "the cancelled 100 no longer fires");
        assert_eq!(all.due(Some(95), None), [2]);
        assert!(all.trigger(2, 2).is_some());
        assert_eq!(all.due(Some(95), None), Vec::<u64>::new(), "a triggered one is out of its queue");
        assert_eq!(all.due(Some(80), Some(200)), [1], "the mark watches none of them");
        assert_eq!(all.due(Some(110), None), [4]);
        assert!(all.trigger(1, 3).is_some() && all.trigger(4, 3).is_some());
        assert_eq!((all.due(Some(1), None), all.due(Some(1_000), None)), (vec![], vec![]));
        let ids = |all: &Conditionals| all.triggering().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(ids(&all), [1, 2, 4], "the triggered ones, and only they, await their placer");
        assert!(all.close(2, UserId(1), ConditionalStatus::Triggering, 4, |c| c.status = ConditionalStatus::Triggered).is_some());
        assert_eq!(ids(&all), [1, 4]);
        let (open, closed) = all.parts();
        let back = Conditionals::from_parts(open, closed).unwrap();
        assert_eq!(back.waiting(), 0);
        assert_eq!(ids(&back), [1, 4], "a snapshot keeps them");
    }
}
