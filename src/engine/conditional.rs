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
//! A trailing stop ([`ConditionalKind::Trailing`], Binance's `TRAILING_STOP_MARKET`)
//! waits in those queues for its activation price, if it has one; once active it follows
//! the highest price since (a sell; a buy the lowest) and fires when the price comes back
//! by its callback rate. Active ones are kept in a `Trail` per watched price and side.
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
    /// A MARKET order once the price comes back `callback` from its best since activation.
    Trailing,
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
    /// A trailing stop's callback rate in tenths of a percent (1 to [`MAX_CALLBACK`]; 0
    /// for the other kinds). Its `trigger` is its activation price (0: active at once).
    pub callback: u16,
}

/// The largest callback rate, in tenths of a percent (10 %, Binance's).
pub const MAX_CALLBACK: u16 = 100;

/// A callback rate given in percent (`"1.5"`), in tenths of a percent: 0.1 to 10 in steps
/// of 0.1, else `None`.
pub fn callback_of(percent: rust_decimal::Decimal) -> Option<u16> {
    let tenths = percent * rust_decimal::Decimal::TEN;
    if tenths.fract() != rust_decimal::Decimal::ZERO {
        return None;
    }
    u16::try_from(tenths.mantissa() / 10i128.pow(tenths.scale())).ok().filter(|c| (1..=MAX_CALLBACK).contains(c))
}

/// A callback rate in percent, as the APIs write it (`"1.5"`).
pub fn callback_percent(callback: u16) -> rust_decimal::Decimal {
    rust_decimal::Decimal::new(i64::from(callback), 1).normalize()
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
            (ConditionalKind::Trailing, _) => "TRAILING_STOP_MARKET",
        }
    }

    /// The kind a type name gives, and whether it is limited (a LIMIT order once triggered).
    pub fn parse_type(text: &str) -> Option<(ConditionalKind, bool)> {
        match text {
            "STOP_MARKET" => Some((ConditionalKind::Stop, false)),
            "TAKE_PROFIT_MARKET" => Some((ConditionalKind::TakeProfit, false)),
            "STOP" => Some((ConditionalKind::Stop, true)),
            "TAKE_PROFIT" => Some((ConditionalKind::TakeProfit, true)),
            "TRAILING_STOP_MARKET" => Some((ConditionalKind::Trailing, false)),
            _ => None,
        }
    }

    /// Whether it fires when the price rises to its trigger (else when it falls to it).
    /// A trailing stop's trigger is its activation price: a sell's is reached on a rise.
    pub fn fires_on_rise(&self) -> bool {
        matches!(
            (self.kind, self.side),
            (ConditionalKind::Stop, Side::Buy) | (ConditionalKind::TakeProfit | ConditionalKind::Trailing, Side::Sell)
        )
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
    /// An active trailing stop's best price since activation (the highest for a sell,
    /// the lowest for a buy), as of this copy; `None` before activation and for the
    /// other kinds.
    pub extreme: Option<Ticks>,
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
    /// Active trailing stops: `[watching the mark][a sell]`.
    trails: [[Trail; 2]; 2],
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
        let ticks = 1..=super::units::MAX_TICKS;
        let trailing = order.kind == ConditionalKind::Trailing;
        let valid = (ticks.contains(&order.trigger) || trailing && order.trigger == 0)
            && order.price.is_none_or(|p| ticks.contains(&p))
            && if order.close_position { order.quantity == 0 } else { (1..=super::units::MAX_LOTS).contains(&order.quantity) }
            && if trailing {
                // A MARKET order of a quantity, trailing a price there is (or will be).
                (1..=MAX_CALLBACK).contains(&order.callback) && order.price.is_none() && !order.close_position && (order.trigger != 0 || reference.is_some())
            } else {
                order.callback == 0
            };
        if !valid {
            return Err(ConditionalRefusal::Invalid);
        }
        if order.trigger != 0 && reference.is_some_and(|p| order.fires_at(p)) {
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
        // Active at once: following the price from now.
        let extreme = if trailing && order.trigger == 0 { reference } else { None };
        let c = Conditional { id, order, status: ConditionalStatus::New, updated: order.timestamp, order_id: None, reason: None, extreme };
        self.insert(c);
        Ok(c)
    }

    /// Files an open conditional order (accepted, or restored from a snapshot).
    fn insert(&mut self, c: Conditional) {
        match (c.status, c.extreme) {
            (ConditionalStatus::New, Some(extreme)) => self.trail(&c.order).add(c.id, c.order.callback, extreme),
            (ConditionalStatus::New, None) => self.file(&c.order, c.id, true),
            (ConditionalStatus::Triggering, _) => {
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

    pub fn get(&self, id: u64) -> Option<Conditional> {
        self.open.get(&id).map(|c| self.now(c)).or_else(|| self.closed.iter().rev().find(|c| c.id == id).copied())
    }

    /// An open one as it is now (an active trailing stop's best price so far).
    fn now(&self, c: &Conditional) -> Conditional {
        let extreme = c.extreme.and_then(|_| self.trails[usize::from(c.order.working == WorkingPrice::Mark)][usize::from(c.order.side == Side::Sell)].extreme(c.id));
        Conditional { extreme: extreme.or(c.extreme), ..*c }
    }

    /// The trail an active trailing stop follows the price in.
    fn trail(&mut self, c: &NewConditional) -> &mut Trail {
        let (mark, sell) = (usize::from(c.working == WorkingPrice::Mark), usize::from(c.side == Side::Sell));
        let trail = &mut self.trails[mark][sell];
        trail.sign = if sell == 1 { 1 } else { -1 };
        trail
    }

    /// Takes a `New` one out of its queue or trail.
    fn unfile(&mut self, c: &Conditional) {
        if c.extreme.is_some() {
            self.trail(&c.order).remove(c.id);
        } else {
            self.file(&c.order, c.id, false);
        }
    }

    /// The user's conditional order with this client id: the open one, else the latest closed.
    pub fn by_client_id(&self, user: UserId, cid: ClientOrderId) -> Option<Conditional> {
        match self.client_ids.get(&(user, cid)) {
            Some(id) => self.open.get(id).map(|c| self.now(c)),
            None => self.closed.iter().rev().find(|c| c.order.user == user && c.order.client_order_id == Some(cid)).copied(),
        }
    }

    /// The user's open conditional orders, oldest first.
    pub fn open_of(&self, user: UserId) -> impl Iterator<Item = Conditional> + '_ {
        self.open.values().filter(move |c| c.order.user == user).map(|c| self.now(c))
    }

    /// The user's open and remembered closed conditional orders, oldest first.
    pub fn all_of(&self, user: UserId) -> Vec<Conditional> {
        let mut all: Vec<Conditional> = self.closed.iter().filter(|c| c.order.user == user).copied().chain(self.open_of(user)).collect();
        all.sort_unstable_by_key(|c| c.id);
        all
    }

    /// Every open one, oldest first.
    pub fn open(&self) -> impl Iterator<Item = Conditional> + '_ {
        self.open.values().map(|c| self.now(c))
    }

    /// The `Triggering` ones (triggered, their order not yet placed or refused), oldest first.
    pub fn triggering(&self) -> impl Iterator<Item = &Conditional> {
        self.triggering.iter().filter_map(|id| self.open.get(id))
    }

    /// Those waiting for their trigger (or, trailing, for the price to come back).
    pub fn waiting(&self) -> usize {
        self.queues.iter().flatten().map(BTreeSet::len).sum::<usize>() + self.trails.iter().flatten().map(|t| t.of.len()).sum::<usize>()
    }

    /// Moves the conditional orders on with the last and mark prices now: those whose
    /// trigger is reached are marked `Triggering` (their copies returned, oldest first);
    /// a trailing stop whose activation price is reached starts following the price; the
    /// active ones follow it, and fire when it comes back by their callback rate.
    pub fn advance(&mut self, last: Option<Ticks>, mark: Option<Ticks>, now: i64) -> Vec<Conditional> {
        let mut fired = Vec::new();
        for id in self.due(last, mark) {
            let Some(c) = self.open.get(&id).copied() else { continue };
            if c.order.kind == ConditionalKind::Trailing {
                let price = if c.order.working == WorkingPrice::Mark { mark } else { last };
                if let Some(price) = price {
                    self.file(&c.order, id, false);
                    self.trail(&c.order).add(id, c.order.callback, price);
                    if let Some(c) = self.open.get_mut(&id) {
                        c.extreme = Some(price);
                    }
                }
            } else if let Some(c) = self.trigger(id, now) {
                fired.push(c);
            }
        }
        for (mark, price) in [(0, last), (1, mark)] {
            let Some(price) = price else { continue };
            for sell in 0..2 {
                let trail = &mut self.trails[mark][sell];
                trail.follow(price);
                for (id, extreme) in trail.fire(price) {
                    if let Some(c) = self.open.get_mut(&id) {
                        c.extreme = Some(extreme);
                        c.status = ConditionalStatus::Triggering;
                        c.updated = now;
                        self.triggering.insert(id);
                        fired.push(*c);
                    }
                }
            }
        }
        fired.sort_unstable_by_key(|c| c.id);
        fired
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
        let c = self.open.get(&id).map(|c| self.now(c)).filter(|c| c.status == ConditionalStatus::New)?;
        self.unfile(&c);
        if let Some(open) = self.open.get_mut(&id) {
            open.extreme = c.extreme;
        }
        let c = self.open.get_mut(&id)?;
        c.status = ConditionalStatus::Triggering;
        c.updated = now;
        self.triggering.insert(id);
        Some(*c)
    }

    /// Closes an open one of `user`'s in `wanted` status, `end` saying how (its status,
    /// order, reason); its final copy.
    pub fn close(&mut self, id: u64, user: UserId, wanted: ConditionalStatus, now: i64, end: impl FnOnce(&mut Conditional)) -> Option<Conditional> {
        let mut c = self.open.get(&id).filter(|c| c.order.user == user && c.status == wanted).map(|c| self.now(c))?;
        self.open.remove(&id);
        match c.status {
            ConditionalStatus::New => self.unfile(&c),
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
        (self.open().collect(), self.closed.iter().copied().collect())
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

/// The active trailing stops of one watched price and side.
///
/// Prices are kept as `sign × price` (`sign` 1 for sells, which follow the highest price,
/// −1 for buys, which follow the lowest), so both follow a maximum, `top`. Stops activated
/// earlier have followed the price longer, so their tops are at least as high: a new
/// price raises the tops below it, all to that price, which makes them one group. Each
/// group (one top) keeps its stops by callback rate; its smallest rate fires first, when
/// `1000 × price ≤ top × (1000 − sign × rate)` (`rate` in tenths of a percent), which
/// [`Trail::fire`] checks against the largest such threshold over all groups. Merging a
/// smaller group into a larger moves only the smaller one's stops, so following the price
/// costs a stop O(log n) moves over its life, not one per price.
#[derive(Clone, Debug, Default)]
struct Trail {
    sign: i64,
    /// Groups by top, and each group's stops by (rate, id).
    groups: BTreeMap<i64, u64>,
    members: FxHashMap<u64, (i64, BTreeSet<(u16, u64)>)>,
    /// Each stop's group and rate.
    of: FxHashMap<u64, (u64, u16)>,
    /// Each group's threshold (× 1000) and group.
    thresholds: BTreeSet<(i128, u64)>,
    next_group: u64,
}

impl Trail {
    fn threshold(&self, group: u64) -> Option<i128> {
        let (top, stops) = self.members.get(&group)?;
        let (rate, _) = stops.first()?;
        Some(i128::from(*top) * (1000 - i128::from(self.sign) * i128::from(*rate)))
    }

    /// Updates a group's threshold after its stops or top changed (`before`: the one it had).
    fn refile(&mut self, group: u64, before: Option<i128>) {
        if let Some(t) = before {
            self.thresholds.remove(&(t, group));
        }
        match self.threshold(group) {
            Some(t) => {
                self.thresholds.insert((t, group));
            }
            None => {
                if let Some((top, _)) = self.members.remove(&group) {
                    self.groups.remove(&top);
                }
            }
        }
    }

    /// An active stop following the price from `price`.
    fn add(&mut self, id: u64, rate: u16, price: Ticks) {
        let top = self.sign * price;
        let group = match self.groups.get(&top) {
            Some(g) => *g,
            None => {
                self.next_group += 1;
                let g = self.next_group;
                self.groups.insert(top, g);
                self.members.insert(g, (top, BTreeSet::new()));
                g
            }
        };
        let before = self.threshold(group);
        if let Some((_, stops)) = self.members.get_mut(&group) {
            stops.insert((rate, id));
        }
        self.of.insert(id, (group, rate));
        self.refile(group, before);
    }

    fn remove(&mut self, id: u64) {
        let Some((group, rate)) = self.of.remove(&id) else { return };
        let before = self.threshold(group);
        if let Some((_, stops)) = self.members.get_mut(&group) {
            stops.remove(&(rate, id));
        }
        self.refile(group, before);
    }

    /// A stop's best price so far.
    fn extreme(&self, id: u64) -> Option<Ticks> {
        let (group, _) = self.of.get(&id)?;
        self.members.get(group).map(|(top, _)| self.sign * top)
    }

    /// The price is `price` now: every top below it rises to it.
    fn follow(&mut self, price: Ticks) {
        let top = self.sign * price;
        let below: Vec<(i64, u64)> = self.groups.range(..top).map(|(t, g)| (*t, *g)).collect();
        if below.is_empty() {
            return;
        }
        let mut into = self.groups.get(&top).copied();
        for (t, group) in below {
            self.groups.remove(&t);
            let before = self.threshold(group);
            if let Some(b) = before {
                self.thresholds.remove(&(b, group));
            }
            let Some(target) = into else {
                // The first group below becomes the group at `top`.
                if let Some(m) = self.members.get_mut(&group) {
                    m.0 = top;
                }
                self.groups.insert(top, group);
                into = Some(group);
                continue;
            };
            let target_before = self.threshold(target);
            let (small, large) = if self.members.get(&group).map_or(0, |m| m.1.len()) > self.members.get(&target).map_or(0, |m| m.1.len()) {
                (target, group)
            } else {
                (group, target)
            };
            let moved = self.members.remove(&small).map(|m| m.1).unwrap_or_default();
            if let Some(m) = self.members.get_mut(&large) {
                m.0 = top;
                for (rate, id) in moved {
                    m.1.insert((rate, id));
                    self.of.insert(id, (large, rate));
                }
            }
            if let Some(b) = target_before {
                self.thresholds.remove(&(b, target));
            }
            self.groups.insert(top, large);
            into = Some(large);
        }
        if let Some(group) = into {
            self.refile(group, None);
        }
    }

    /// Takes out the stops the price `price` fires, with their best price.
    fn fire(&mut self, price: Ticks) -> Vec<(u64, Ticks)> {
        let mut fired = Vec::new();
        let at = i128::from(self.sign * price) * 1000;
        while let Some(&(t, group)) = self.thresholds.last() {
            if at > t {
                break;
            }
            let Some((top, stops)) = self.members.get_mut(&group) else { break };
            let top = *top;
            if let Some((_, id)) = stops.pop_first() {
                self.of.remove(&id);
                fired.push((id, self.sign * top));
            }
            self.refile(group, Some(t));
        }
        fired
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
            callback: 0,
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

    fn trailing(side: Side, activation: Ticks, callback: u16) -> NewConditional {
        NewConditional { kind: ConditionalKind::Trailing, trigger: activation, callback, ..stop(side, 0) }
    }

    #[test]
    fn a_trailing_stop_follows_the_best_price_and_fires_on_its_callback() {
        let mut all = Conditionals::default();
        // A sell 1 % behind the highest price, active at once at 1000.
        all.place(1, trailing(Side::Sell, 0, 10), Some(1_000)).unwrap();
        // A buy 2 % behind the lowest, activated once the price reaches 990.
        all.place(2, trailing(Side::Buy, 990, 20), Some(1_000)).unwrap();
        assert_eq!(all.place(3, trailing(Side::Buy, 1_010, 20), Some(1_000)), Err(ConditionalRefusal::WouldTrigger));
        assert_eq!(all.place(3, trailing(Side::Sell, 0, 10), None), Err(ConditionalRefusal::Invalid), "nothing to trail");
        assert_eq!(all.place(3, trailing(Side::Sell, 0, 101), Some(1_000)), Err(ConditionalRefusal::Invalid));
        let fired = |all: &mut Conditionals, p| all.advance(Some(p), None, 0).iter().map(|c| (c.id, c.extreme)).collect::<Vec<_>>();
        assert_eq!(fired(&mut all, 1_050), []);
        assert_eq!(all.get(1).unwrap().extreme, Some(1_050));
        assert_eq!(fired(&mut all, 1_040), [], "1 % back from 1050 is 1039.5");
        assert_eq!(all.get(2).unwrap().extreme, None, "not active yet");
        assert_eq!(fired(&mut all, 1_039), [(1, Some(1_050))]);
        assert_eq!(fired(&mut all, 985), [], "the buy activates at 985");
        assert_eq!(fired(&mut all, 970), []);
        assert_eq!(all.get(2).unwrap().extreme, Some(970));
        assert_eq!(fired(&mut all, 989), [], "2 % up from 970 is 989.4");
        assert_eq!(fired(&mut all, 990), [(2, Some(970))]);
        assert_eq!(all.waiting(), 0);
    }

    proptest::proptest! {
        /// Trailing stops against a plain model that keeps each stop's best price: the
        /// same ones fire at the same prices, with the same best prices, in any sequence
        /// of placements, cancels and prices.
        #[test]
        fn trailing_stops_fire_as_a_plain_model_does(ops in proptest::collection::vec((0u8..10, 0u16..200, 900i64..1_100), 1..300)) {
            #[derive(Debug)]
            struct Plain { id: u64, sell: bool, rate: i128, activation: Option<i64>, extreme: Option<i64> }
            let mut all = Conditionals::default();
            let mut plain: Vec<Plain> = Vec::new();
            let mut price = 1_000i64;
            let mut next = 1u64;
            for (op, a, b) in ops {
                match op {
                    0..=2 => {
                        let (sell, callback) = (a % 2 == 0, a % 100 + 1);
                        let activation = if op == 0 { 0 } else { b };
                        let placed = all.place(next, trailing(if sell { Side::Sell } else { Side::Buy }, activation, callback), Some(price));
                        let reached = activation != 0 && if sell { price >= activation } else { price <= activation };
                        proptest::prop_assert_eq!(placed.is_ok(), !reached);
                        if placed.is_ok() {
                            plain.push(Plain { id: next, sell, rate: i128::from(callback), activation: (activation != 0).then_some(activation), extreme: (activation == 0).then_some(price) });
                        }
                        next += 1;
                    }
                    3 if !plain.is_empty() => {
                        let gone = plain.remove(usize::from(a) % plain.len());
                        proptest::prop_assert!(all.close(gone.id, UserId(1), ConditionalStatus::New, 0, |c| c.status = ConditionalStatus::Cancelled).is_some());
                    }
                    _ => {
                        price = b;
                        let mut fired = Vec::new();
                        for s in &mut plain {
                            if s.extreme.is_none() && s.activation.is_some_and(|t| if s.sell { price >= t } else { price <= t }) {
                                s.extreme = Some(price);
                            } else if let Some(e) = s.extreme {
                                s.extreme = Some(if s.sell { e.max(price) } else { e.min(price) });
                            }
                        }
                        plain.retain(|s| {
                            let Some(e) = s.extreme.map(i128::from) else { return true };
                            let p = i128::from(price) * 1000;
                            let fires = if s.sell { p <= e * (1000 - s.rate) } else { p >= e * (1000 + s.rate) };
                            if fires {
                                fired.push((s.id, s.extreme));
                            }
                            !fires
                        });
                        fired.sort_unstable();
                        let got: Vec<(u64, Option<i64>)> = all.advance(Some(price), None, 0).iter().map(|c| (c.id, c.extreme)).collect();
                        proptest::prop_assert_eq!(got, fired);
                        for s in &plain {
                            proptest::prop_assert_eq!(all.get(s.id).unwrap().extreme, s.extreme);
                        }
                    }
                }
            }
            let (open, closed) = all.parts();
            let back = Conditionals::from_parts(open, closed).unwrap();
            proptest::prop_assert_eq!(back.waiting(), plain.len());
            for s in &plain {
                proptest::prop_assert_eq!(back.get(s.id).unwrap().extreme, s.extreme);
            }
        }
    }
}
