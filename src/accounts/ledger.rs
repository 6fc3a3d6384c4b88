//! The ledger's one writer: the risk step (authenticate, rate-limit, check available,
//! lock margin), admin changes prepared for the log, and every logged record and symbol
//! result applied, in log order. Kept apart from the types it works on because this is
//! where the money rules live and change.

use std::collections::VecDeque;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::snapshot::{AccountRef, PartitionStateRef};
use super::{
    partition_of, partition_of_name, user_of_key, Account, AccountRecord, Accounts, AdminError, Fill, HotState, Income, IncomeKind, OrderStatus, PartitionState,
    OrderTerms, OrderView, PositionLimit, RiskError, Totals, TransferPlan, FILLS_KEPT, MAX_BALANCE, ORDER_NUMBER_MASK,
};
use crate::engine::units::Units;
use crate::engine::{CancelReason, ClientOrderId, Event, NewOrder, OrderId, OrderType, Side, UserId};

impl HotState for Accounts {
    fn users_in(&self, partitions: &[u32]) -> Vec<UserId> {
        let mut users: Vec<UserId> = self.users.keys().copied().filter(|u| partitions.contains(&partition_of(*u))).collect();
        users.sort_unstable();
        users
    }

    fn applied_offsets(&self) -> Vec<(usize, u64)> {
        self.applied.iter().map(|(s, o)| (*s, *o)).collect()
    }

    fn take_forgotten(&mut self) -> Vec<(UserId, OrderId, Option<ClientOrderId>)> {
        self.forgotten.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn totals(&self, partitions: &[u32]) -> Totals {
        let mut totals = Totals {
            deposits: self.transfers.values().filter(|(u, _)| partitions.contains(&partition_of(*u))).map(|(_, a)| i128::from(*a)).sum(),
            ..Totals::default()
        };
        for (_, account) in self.users.iter().filter(|(u, _)| partitions.contains(&partition_of(**u))) {
            totals.balances += account.total;
            let mut mine = Totals::default();
            for (symbol, p) in &account.positions {
                mine.fees += p.fees;
                mine.positions.push((*symbol, p.size, p.size.signum() * p.cost));
            }
            totals.add(mine);
        }
        totals
    }

    /// One partition's state as snapshot bytes (the encoding of [`PartitionState`]),
    /// written straight from the live state: no copy of the accounts is made.
    fn partition_snapshot(&self, partition: u32, log_offset: u64, symbols: &[String], out: &mut Vec<u8>) {
        let mut users: Vec<(UserId, AccountRef<'_>)> = self
            .users
            .iter()
            .filter(|(u, _)| partition_of(**u) == partition)
            .map(|(u, a)| (*u, AccountRef(a)))
            .collect();
        users.sort_unstable_by_key(|(u, _)| *u);
        let mut transfers: Vec<(&String, &(UserId, Units))> =
            self.transfers.iter().filter(|(_, (u, _))| partition_of(*u) == partition).collect();
        transfers.sort_unstable();
        let applied: Vec<(&String, u64)> =
            self.applied.iter().filter_map(|(s, o)| symbols.get(*s).map(|n| (n, *o))).collect();
        let income: Vec<(UserId, &VecDeque<Income>)> = users.iter().map(|(u, a)| (*u, &a.0.income)).collect();
        let terms: Vec<(UserId, Vec<(OrderId, OrderTerms)>)> = users
            .iter()
            .map(|(u, a)| {
                let mut terms: Vec<(OrderId, OrderTerms)> = a.0.orders.values().filter(|v| v.logged).map(|v| (v.id, v.terms)).collect();
                terms.sort_unstable_by_key(|(id, _)| *id);
                (*u, terms)
            })
            .collect();
        let state = PartitionStateRef {
            log_offset,
            applied,
            next_number: self.next_number.get(&partition).copied().unwrap_or(1),
            users,
            transfers,
        };
        // Serializing into a Vec cannot fail.
        postcard::to_io(&state, &mut *out).map(|_| ()).unwrap_or_else(|e| unreachable!("postcard: {e}"));
        postcard::to_io(&income, &mut *out).map(|_| ()).unwrap_or_else(|e| unreachable!("postcard: {e}"));
        postcard::to_io(&terms, out).map(|_| ()).unwrap_or_else(|e| unreachable!("postcard: {e}"));
    }

    /// Installs a partition's snapshot; its results floors make replay skip what it holds.
    fn install(&mut self, partition: u32, state: PartitionState, symbol_index: &dyn Fn(&str) -> Option<usize>) {
        self.next_number.insert(partition, state.next_number);
        for (name, offset) in state.applied {
            if let Some(s) = symbol_index(&name) {
                self.floors.insert((partition, s), offset);
            }
        }
        for (t, v) in state.transfers {
            self.transfers.insert(t, v);
        }
        let mut income: rustc_hash::FxHashMap<UserId, Vec<Income>> = state.income.into_iter().collect();
        let mut terms: rustc_hash::FxHashMap<UserId, Vec<(OrderId, OrderTerms)>> = state.terms.into_iter().collect();
        for (user, mut account) in state.users {
            account.income = income.remove(&user).unwrap_or_default().into();
            for (id, t) in terms.remove(&user).unwrap_or_default() {
                if let Some(view) = account.orders.get_mut(&id) {
                    view.terms = t;
                }
            }
            account.count_open();
            let highest = account.orders.keys().map(|id| id.0 & ORDER_NUMBER_MASK).max().unwrap_or(0);
            self.order_counter = self.order_counter.max(highest);
            self.names.insert(account.name.clone(), user);
            self.users.insert(user, account);
        }
    }

    /// Records that a symbol's results up to `offset` (inclusive) have been applied here.
    fn mark_applied(&mut self, symbol: usize, offset: u64) {
        let next = self.applied.entry(symbol).or_insert(0);
        *next = (*next).max(offset + 1);
    }

    fn user(&self, user: UserId) -> Option<&Account> {
        self.users.get(&user)
    }

    /// Checks an API key of the form `<user hex>.<secret hex>` in constant time.
    fn authenticate(&self, key: &str) -> Option<UserId> {
        let user = user_of_key(key)?;
        let account = self.users.get(&user)?;
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        bool::from(hash.ct_eq(&account.key_hash)).then_some(user)
    }

    /// Prepares a new user: the record to log and the API key to hand out once.
    ///
    /// # Errors
    /// An invalid or taken name.
    fn create_user(&mut self, name: &str, secret: [u8; 24]) -> Result<(AccountRecord, String), AdminError> {
        let valid = (1..=64).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
        if !valid {
            return Err(AdminError::InvalidName);
        }
        if self.names.contains_key(name) {
            return Err(AdminError::UserExists);
        }
        let partition = partition_of_name(name);
        let number = self.next_number.entry(partition).or_insert(1);
        let user = UserId(u64::from(partition) << 32 | u64::from(*number));
        *number += 1;
        let key = format!("{:016x}.{}", user.0, hex::encode(secret));
        let key_hash = Sha256::digest(key.as_bytes()).into();
        // Reserve the name until the record is applied (or released on failure).
        self.names.insert(name.to_owned(), user);
        Ok((AccountRecord::UserCreated { name: name.to_owned(), user, key_hash }, key))
    }

    /// Forgets a prepared user whose record could not be logged.
    fn release_user(&mut self, name: &str) {
        if let Some(user) = self.names.get(name)
            && !self.users.contains_key(user)
        {
            self.names.remove(name);
        }
    }

    /// Prepares a deposit or withdrawal. A withdrawal takes effect at once (so no order
    /// can lock the same money meanwhile) and is undone by [`Self::release_transfer`].
    ///
    /// # Errors
    /// Unknown user, a reused transferId, or a withdrawal beyond `available`.
    fn transfer(&mut self, name: &str, transfer_id: &str, amount: Units, now: i64) -> Result<TransferPlan, AdminError> {
        let user = self.user_by_name(name).filter(|u| self.users.contains_key(u)).ok_or(AdminError::UnknownUser)?;
        if transfer_id.is_empty() || transfer_id.len() > 64 {
            return Err(AdminError::InvalidAmount);
        }
        if let Some(&(u, a)) = self.transfers.get(transfer_id) {
            return if (u, a) == (user, amount) { Ok(TransferPlan::Done(user)) } else { Err(AdminError::TransferConflict) };
        }
        if amount == 0 {
            return Err(AdminError::InvalidAmount);
        }
        let account = self.users.get_mut(&user).ok_or(AdminError::UnknownUser)?;
        if amount < 0 {
            if account.available() < -i128::from(amount) {
                return Err(AdminError::InsufficientBalance);
            }
            account.total += i128::from(amount);
        } else if account.total + i128::from(amount) > MAX_BALANCE {
            return Err(AdminError::BalanceLimit);
        }
        self.transfers.insert(transfer_id.to_owned(), (user, amount));
        Ok(TransferPlan::Log(user, AccountRecord::Transfer { user, transfer_id: transfer_id.to_owned(), amount, timestamp: now }))
    }

    /// Undoes a prepared transfer whose record could not be logged.
    fn release_transfer(&mut self, record: &AccountRecord) {
        if let AccountRecord::Transfer { user, transfer_id, amount, .. } = record {
            self.transfers.remove(transfer_id);
            if *amount < 0
                && let Some(a) = self.users.get_mut(user)
            {
                a.total -= i128::from(*amount);
            }
        }
    }

    /// Applies a logged record. `live` says it was prepared by this process (a
    /// withdrawal already took effect); on replay it is false.
    fn apply(&mut self, record: &AccountRecord, live: bool) {
        match record {
            AccountRecord::UserCreated { name, user, key_hash } => {
                let partition = partition_of(*user);
                let next = self.next_number.entry(partition).or_insert(1);
                *next = (*next).max((user.0 as u32).saturating_add(1));
                self.names.insert(name.clone(), *user);
                self.users.insert(*user, Account { name: name.clone(), key_hash: *key_hash, ..Account::default() });
            }
            AccountRecord::Transfer { user, transfer_id, amount, timestamp } => {
                self.transfers.insert(transfer_id.clone(), (*user, *amount));
                if let Some(a) = self.users.get_mut(user) {
                    if !(live && *amount < 0) {
                        a.total += i128::from(*amount);
                    }
                    a.record(None, IncomeKind::Transfer, i128::from(*amount), *timestamp, None);
                }
            }
            AccountRecord::Voided { .. } => {}
        }
    }

    /// The risk step: rate limit, idempotency, available check and margin lock, in one
    /// go. Returns the new order's number.
    ///
    /// # Errors
    /// [`RiskError`]; then nothing changed.
    fn reserve(&mut self, user: UserId, order: &mut NewOrder, symbol: usize, now_ms: Option<i64>) -> Result<(), RiskError> {
        let limit = self.rate_limit;
        let account = self.users.get_mut(&user).ok_or(RiskError::Unauthorized)?;
        if let Some(cid) = &order.client_order_id
            && let Some(&existing) = account.client_ids.get(cid)
        {
            return Err(RiskError::Duplicate(existing));
        }
        if let Some(now_ms) = now_ms {
            account.count_request(limit, now_ms)?;
        }
        if account.open_on(symbol).count >= self.max_open_orders {
            return Err(RiskError::TooManyOpenOrders);
        }
        if !order.reduce_only
            && let Some(limit) = self.position_limits.get(symbol)
            && !within_limit(account, symbol, order, limit)
        {
            return Err(RiskError::PositionLimit);
        }
        if account.available() < i128::from(order.locked_margin) {
            return Err(RiskError::InsufficientMargin);
        }
        account.locked += i128::from(order.locked_margin);
        self.order_counter += 1;
        order.id = OrderId(u64::from(partition_of(user)) << 52 | (self.order_counter & ORDER_NUMBER_MASK));
        order.user = user;
        Self::track(account, order, symbol, false);
        Ok(())
    }

    fn count_request(&mut self, user: UserId, now_ms: i64) -> Result<(), RiskError> {
        let limit = self.rate_limit;
        self.users.get_mut(&user).ok_or(RiskError::Unauthorized)?.count_request(limit, now_ms)
    }

    /// The order reached the log.
    fn confirm(&mut self, user: UserId, id: OrderId) {
        if let Some(view) = self.users.get_mut(&user).and_then(|a| a.orders.get_mut(&id)) {
            view.logged = true;
        }
    }

    fn hold(&mut self, user: UserId, id: OrderId) {
        if let Some(view) = self.users.get_mut(&user).and_then(|a| a.orders.get_mut(&id)) {
            view.in_doubt = !view.logged;
        }
    }

    /// The order could not be logged: unlock its margin and forget it.
    fn release(&mut self, order: &NewOrder) {
        if let Some(account) = self.users.get_mut(&order.user) {
            account.locked -= i128::from(order.locked_margin);
            if let Some(view) = account.orders.remove(&order.id) {
                account.forget_open(&view);
            }
            if let Some(cid) = order.client_order_id {
                account.client_ids.remove(&cid);
            }
        }
    }

    fn reserve_amend(&mut self, user: UserId, id: OrderId, added: Units, now_ms: i64) -> Result<(), RiskError> {
        let limit = self.rate_limit;
        let account = self.users.get_mut(&user).ok_or(RiskError::Unauthorized)?;
        if !account.orders.get(&id).is_some_and(|v| v.logged && v.status.is_open()) || added < 0 {
            return Err(RiskError::Unauthorized);
        }
        account.count_request(limit, now_ms)?;
        if account.available() < i128::from(added) {
            return Err(RiskError::InsufficientMargin);
        }
        account.locked += i128::from(added);
        if let Some(view) = account.orders.get_mut(&id) {
            view.amending += added;
        }
        Ok(())
    }

    fn settle_amend(&mut self, user: UserId, id: OrderId, added: Units) {
        let Some(account) = self.users.get_mut(&user) else { return };
        account.locked -= i128::from(added);
        if let Some(view) = account.orders.get_mut(&id) {
            view.amending -= added;
        }
    }

    fn release_orphans(&mut self, partitions: &[u32], before_ms: i64) -> Vec<(UserId, OrderView)> {
        let mut released = Vec::new();
        for (user, account) in self.users.iter_mut().filter(|(u, _)| partitions.contains(&partition_of(**u))) {
            let orphans: Vec<OrderId> =
                account.orders.values().filter(|v| !v.logged && !v.in_doubt && v.created_at < before_ms).map(|v| v.id).collect();
            for id in orphans {
                let Some(view) = account.orders.remove(&id) else { continue };
                account.locked -= i128::from(view.reserved);
                account.forget_open(&view);
                if let Some(cid) = view.client_order_id {
                    account.client_ids.remove(&cid);
                }
                released.push((*user, view));
            }
        }
        released
    }

    /// A logged order replayed at start: lock and track it as the risk step did.
    fn replay_order(&mut self, order: &NewOrder, symbol: usize, offset: u64) {
        self.order_counter = self.order_counter.max(order.id.0 & ORDER_NUMBER_MASK);
        if !self.fresh(order.user, symbol, offset) {
            return;
        }
        if let Some(account) = self.users.get_mut(&order.user) {
            account.locked += i128::from(order.locked_margin);
            Self::track(account, order, symbol, true);
        }
    }

    /// Applies a symbol's result events (of the command at `offset`) to the users owned
    /// here, skipping those a snapshot already holds.
    fn apply_events(&mut self, symbol: usize, offset: u64, events: &[Event]) {
        for event in events {
            match event {
                Event::OrderPlaced(p) if !self.fresh(p.user, symbol, offset) => {}
                Event::OrderCancelled(c) if !self.fresh(c.user, symbol, offset) => {}
                Event::OrderAmended(a) if self.fresh(a.user, symbol, offset) => {
                    let Some(account) = self.users.get_mut(&a.user) else { continue };
                    // Net of the margin its risk step added: that stays locked until the
                    // reservation is settled (live), and a replay never reserved it.
                    account.locked -= i128::from(a.released_margin) - i128::from(a.added_margin);
                    if a.refused.is_none()
                        && let Some(mut view) = account.orders.get(&a.order_id).cloned()
                    {
                        account.forget_open(&view);
                        let tif = match view.kind {
                            OrderType::Limit { tif, .. } => tif,
                            _ => crate::engine::TimeInForce::Gtc,
                        };
                        view.kind = OrderType::Limit { price: a.price, tif };
                        view.quantity = a.quantity;
                        view.updated_at = a.timestamp;
                        account.track_open(&view);
                        account.orders.insert(a.order_id, view);
                    }
                }
                Event::OrderAmended(_) => {}
                Event::OrderPlaced(p) => {
                    if let Some(view) = self.view(p.user, p.order_id) {
                        view.status = if p.filled > 0 { OrderStatus::PartiallyFilled } else { OrderStatus::New };
                        view.updated_at = p.timestamp;
                    }
                }
                Event::TradeExecuted(t) => {
                    for (update, side) in [(&t.buyer, Side::Buy), (&t.seller, Side::Sell)] {
                        if !self.fresh(update.user, symbol, offset) {
                            continue;
                        }
                        let maker = side != t.taker_side;
                        let Some(account) = self.users.get_mut(&update.user) else { continue };
                        account.total += update.pnl - update.fee;
                        account.locked -= update.margin_released;
                        account.record(Some(symbol), IncomeKind::RealizedPnl, update.pnl, t.timestamp, Some(t.seq));
                        account.record(Some(symbol), IncomeKind::Commission, -update.fee, t.timestamp, Some(t.seq));
                        account.positions.insert(symbol, update.position);
                        account.fills.push_front(Fill {
                            trade_seq: t.seq,
                            order_id: update.order_id,
                            symbol,
                            side,
                            price: t.price,
                            quantity: t.quantity,
                            fee: update.fee,
                            pnl: update.pnl,
                            maker,
                            time: t.timestamp,
                        });
                        account.fills.truncate(FILLS_KEPT);
                        let mut closed = false;
                        if let Some(view) = account.orders.get(&update.order_id).cloned() {
                            account.filled_open(&view, t.quantity);
                        }
                        if let Some(view) = account.orders.get_mut(&update.order_id) {
                            view.filled += t.quantity;
                            view.filled_value += i128::from(t.price) * i128::from(t.quantity);
                            view.updated_at = t.timestamp;
                            if view.filled == view.quantity {
                                view.status = OrderStatus::Filled;
                                closed = true;
                            } else {
                                view.status = OrderStatus::PartiallyFilled;
                            }
                        }
                        if closed {
                            let forgotten = account.close(update.order_id);
                            if let Some(all) = self.forgotten.as_mut() {
                                all.extend(forgotten.into_iter().map(|(id, cid)| (update.user, id, cid)));
                            }
                        }
                    }
                }
                Event::LiquidationStarted(l) if self.fresh(l.user, symbol, offset) => {
                    let Some(account) = self.users.get_mut(&l.user) else { continue };
                    account.orders.insert(l.order_id, OrderView {
                        id: l.order_id,
                        symbol,
                        client_order_id: None,
                        side: l.side,
                        kind: OrderType::Liquidation { price: l.price },
                        quantity: l.quantity,
                        filled: 0,
                        filled_value: 0,
                        status: OrderStatus::New,
                        reason: None,
                        created_at: l.timestamp,
                        updated_at: l.timestamp,
                        logged: true,
                        reserved: 0,
                        in_doubt: false,
                        terms: OrderTerms { reduce_only: true, ..OrderTerms::default() },
                        amending: 0,
                    });
                }
                Event::LiquidationEnded(l) if self.fresh(l.user, symbol, offset) => {
                    let Some(account) = self.users.get_mut(&l.user) else { continue };
                    account.total -= l.to_fund;
                    account.record(Some(symbol), IncomeKind::Liquidation, -l.to_fund, l.timestamp, None);
                    // Not all of it could be closed: the order ends, the rest stays open.
                    if let Some(view) = account.orders.get_mut(&l.order_id)
                        && view.status.is_open()
                    {
                        view.status = OrderStatus::Cancelled;
                        view.reason = Some(CancelReason::Liquidation);
                        view.updated_at = l.timestamp;
                        let forgotten = account.close(l.order_id);
                        if let Some(all) = self.forgotten.as_mut() {
                            all.extend(forgotten.into_iter().map(|(id, cid)| (l.user, id, cid)));
                        }
                    }
                }
                Event::FundingPaid(f) if self.fresh(f.user, symbol, offset) => {
                    let Some(account) = self.users.get_mut(&f.user) else { continue };
                    account.total += f.amount;
                    account.locked += f.margin_change;
                    account.positions.insert(symbol, f.position);
                    account.record(Some(symbol), IncomeKind::FundingFee, f.amount, f.timestamp, None);
                }
                Event::LiquidationStarted(_)
                | Event::LiquidationEnded(_)
                | Event::FundingPaid(_)
                | Event::PriceUpdated(_)
                | Event::FundingSettled(_)
                | Event::Conditional(_) => {}
                Event::OrderCancelled(c) => {
                    let Some(account) = self.users.get_mut(&c.user) else { continue };
                    account.locked -= i128::from(c.released_margin);
                    if c.reason == CancelReason::DuplicateOrderId {
                        continue;
                    }
                    if let Some(view) = account.orders.get_mut(&c.order_id) {
                        view.status = if c.reason.is_rejection() { OrderStatus::Rejected } else { OrderStatus::Cancelled };
                        view.reason = Some(c.reason);
                        view.updated_at = c.timestamp;
                        let forgotten = account.close(c.order_id);
                        if let Some(all) = self.forgotten.as_mut() {
                            all.extend(forgotten.into_iter().map(|(id, cid)| (c.user, id, cid)));
                        }
                    }
                }
            }
        }
    }
}

/// Whether the position on `symbol` stays within `limit` on the order's side if the
/// order and every open order on that side filled at their limit prices.
fn within_limit(account: &Account, symbol: usize, order: &NewOrder, limit: &PositionLimit) -> bool {
    let position = account.positions.get(&symbol).copied().unwrap_or_default();
    let open = account.open_on(symbol);
    let (i, same_side) = match order.side {
        Side::Buy => (0, position.size > 0),
        Side::Sell => (1, position.size < 0),
    };
    let (held, cost) = if same_side { (position.size.abs(), position.cost / limit.units_per_tick_lot) } else { (0, 0) };
    let price = match order.kind {
        OrderType::Limit { price, .. } | OrderType::MarketWithin { limit: price } | OrderType::Liquidation { price } => price,
        OrderType::Market => 0,
    };
    let lots = held + open.lots[i] + i128::from(order.quantity);
    let value = cost + open.value[i] + i128::from(order.quantity) * i128::from(price);
    lots <= limit.max_lots && value <= limit.max_value
}
