//! The account room: the ledger of the account partitions this core owns, and every step
//! that reads or changes it.
//!
//! On the order path it is the risk step ([`AccountRoom::reserve`]: authenticate,
//! rate-limit, check and lock in one uninterrupted step, which also numbers the order)
//! and the settlement of results ([`AccountRoom::apply`]: a symbol's results in log
//! order). Beside it: the account reads of the API, cancels (asked of the symbol's owner
//! by a [`Request`]), admin changes on the partitions' own logs ([`admin`]), and the
//! partitions' snapshots and recovery ([`partitions`]).
//!
//! It uses the rooms below it — the log (partition logs, numbering) and the projections
//! (Redis, streams) — and reaches the symbol rooms only by requests through the core.

pub mod admin;
pub mod partitions;

pub use partitions::{recover_accounts, snapshot_accounts_soon};

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use rustc_hash::FxHashMap;

use super::core::{now_ms, Core};
use super::log::{Log, LogRoom};
use super::projections::{feed, hot, Ledger, Projections};
use super::protocol::{AccountRequest, Answer, OrderRef, Refusal, Reply, Request, ReserveError};
use crate::accounts::{OrderView, RiskError};
use crate::engine::{Event, NewOrder, UserId};

pub struct AccountRoom {
    pub core: Rc<Core>,
    log: Rc<LogRoom>,
    out: Rc<Projections>,
    pub ledger: Ledger,
    /// Account partition logs owned here. Admin writes are rare: one commit per request.
    logs: RefCell<FxHashMap<u32, Rc<glommio::sync::RwLock<Log>>>>,
    /// Account partitions whose last log write failed, with the offset it may have
    /// reached the log at: settled before the partition logs anything new.
    in_doubt: RefCell<FxHashMap<u32, u64>>,
    /// An account snapshot is being written.
    snapshotting: Cell<bool>,
    /// A symbol got further while a snapshot was being written: take another after it.
    snapshot_again: Cell<bool>,
}

impl std::ops::Deref for AccountRoom {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl AccountRoom {
    pub fn new(log: Rc<LogRoom>, out: Rc<Projections>) -> Self {
        Self {
            core: log.core.clone(),
            ledger: out.ledger.clone(),
            log,
            out,
            logs: RefCell::default(),
            in_doubt: RefCell::default(),
            snapshotting: Cell::new(false),
            snapshot_again: Cell::new(false),
        }
    }

    /// The risk step, in the ledger of the account's owner: one uninterrupted step (it
    /// also numbers the order). Redis, when configured, is told behind it.
    /// `key: None`: an order the exchange places for `order.user` (a triggered
    /// conditional order), neither authenticated nor counted against the rate limit.
    pub fn reserve(&self, key: Option<&str>, mut order: NewOrder, symbol: usize) -> Result<NewOrder, ReserveError> {
        self.reserve_in_ledger(key, &mut order, symbol)?;
        self.log.numbered(order.id.0 & crate::accounts::ORDER_NUMBER_MASK);
        hot::reserved(&self.out, &order);
        Ok(order)
    }

    fn reserve_in_ledger(&self, key: Option<&str>, order: &mut NewOrder, symbol: usize) -> Result<(), ReserveError> {
        let mut accounts = self.ledger.borrow_mut();
        let (user, counted) = match key {
            Some(key) => (accounts.authenticate(key).ok_or(ReserveError::Unauthorized)?, Some(order.timestamp)),
            None => (order.user, None),
        };
        match accounts.reserve(user, order, symbol, counted) {
            Ok(()) => Ok(()),
            Err(RiskError::Unauthorized) => Err(ReserveError::Unauthorized),
            Err(RiskError::RateLimited) => Err(ReserveError::RateLimited),
            Err(RiskError::InsufficientMargin) => Err(ReserveError::InsufficientMargin),
            Err(RiskError::TooManyOpenOrders) => Err(ReserveError::TooManyOpenOrders),
            Err(RiskError::PositionLimit) => Err(ReserveError::PositionLimit),
            Err(RiskError::Duplicate(id)) => {
                Err(ReserveError::Duplicate(accounts.user(user).and_then(|a| a.order(id)).cloned().map(Box::new)))
            }
        }
    }

    /// An amendment's risk step (see [`crate::accounts::HotState::reserve_amend`]).
    pub fn reserve_amend(&self, user: UserId, id: crate::engine::OrderId, added: crate::engine::units::Units) -> Result<(), ReserveError> {
        let result = self.ledger.borrow_mut().reserve_amend(user, id, added, now_ms());
        hot::balance_changed(&self.out, user, false);
        result.map_err(|e| match e {
            RiskError::RateLimited => ReserveError::RateLimited,
            RiskError::InsufficientMargin => ReserveError::InsufficientMargin,
            _ => ReserveError::Unauthorized,
        })
    }

    pub fn settle_amend(&self, user: UserId, id: crate::engine::OrderId, added: crate::engine::units::Units) {
        self.ledger.borrow_mut().settle_amend(user, id, added);
        hot::balance_changed(&self.out, user, false);
    }

    /// The order could not be logged: unlock.
    pub fn release(&self, order: &NewOrder) {
        self.ledger.borrow_mut().release(order);
        hot::release(&self.out, order);
    }

    /// The log may still have the order (504): keep its lock until a release or a restart.
    pub fn hold(&self, user: UserId, id: crate::engine::OrderId) {
        self.ledger.borrow_mut().hold(user, id);
    }

    /// Applies a symbol's results to the accounts owned here. Synchronous on purpose:
    /// results must be applied in the order they arrive.
    pub fn apply(&self, symbol: usize, offset: u64, logged: Option<NewOrder>, replayed: bool, events: &[Event]) {
        let forgotten = {
            let mut accounts = self.ledger.borrow_mut();
            if let Some(o) = logged {
                if replayed { accounts.replay_order(&o, symbol, offset) } else { accounts.confirm(o.user, o.id) }
            }
            accounts.apply_events(symbol, offset, events);
            accounts.mark_applied(symbol, offset);
            accounts.take_forgotten()
        };
        hot::settle(&self.out, symbol, logged.as_ref(), events);
        hot::forgotten(&self.out, &forgotten);
        if !replayed {
            feed::accounts(&self.out, symbol, events);
        }
    }

    /// The money of the users owned here, summed.
    pub fn totals(&self) -> crate::accounts::Totals {
        let partitions: Vec<u32> = self.owned_partitions().collect();
        self.ledger.borrow().totals(&partitions)
    }

    /// The API requests about an account, on the owner of its partition.
    pub async fn answer(self: &Rc<Self>, req: AccountRequest) -> Result<Answer, Refusal> {
        match req {
            AccountRequest::CreateUser { name } => admin::create_user(self, &name).await,
            AccountRequest::Transfer { name, amount, transfer_id } => {
                let user = admin::transfer(self, &name, amount, &transfer_id).await?;
                self.balance(user)
            }
            AccountRequest::CancelOrder { key, target } => self.cancel_order(&key, target).await,
            AccountRequest::AmendOrder { key, target, price, quantity } => self.amend_order(&key, target, price, quantity).await,
            AccountRequest::CancelAll { key, symbol } => self.cancel_all(&key, symbol).await,
            AccountRequest::GetOrder { key, target } => {
                let user = self.authenticate(&key)?;
                self.find(user, target).map(Answer::Order)
            }
            AccountRequest::OpenOrders { key, symbol } => self.orders(&key, |a| a.open_orders(symbol)),
            AccountRequest::AllOrders { key, symbol } => self.orders(&key, |a| a.all_orders(symbol)),
            AccountRequest::Fills { key, symbol, limit } => {
                let user = self.authenticate(&key)?;
                let mut fills: Vec<crate::accounts::Fill> = {
                    let accounts = self.ledger.borrow();
                    let account = accounts.user(user).ok_or(Refusal::Unauthorized)?;
                    account.fills.iter().filter(|f| symbol.is_none_or(|s| s == f.symbol)).cloned().collect()
                };
                // Newest first. Kept per user in arrival order, which a restart (replaying
                // one symbol's log after another) does not reproduce across symbols.
                fills.sort_by_key(|f| std::cmp::Reverse((f.time, f.symbol, f.trade_seq)));
                fills.truncate(limit);
                Ok(Answer::Fills(fills))
            }
            AccountRequest::Balance { key } => {
                let user = self.authenticate(&key)?;
                self.balance(user)
            }
            AccountRequest::Authenticate { key } => self.authenticate(&key).map(Answer::User),
            AccountRequest::Positions { key } => self.positions(&key).await,
            AccountRequest::Income { key, symbol, kind, limit } => {
                let user = self.authenticate(&key)?;
                let accounts = self.ledger.borrow();
                let account = accounts.user(user).ok_or(Refusal::Unauthorized)?;
                let income = account
                    .income
                    .iter()
                    .filter(|i| symbol.is_none_or(|s| i.symbol == Some(s)) && kind.is_none_or(|k| i.kind == k))
                    .take(limit)
                    .copied()
                    .collect();
                Ok(Answer::Income(income))
            }
        }
    }

    async fn cancel_order(&self, key: &str, target: OrderRef) -> Result<Answer, Refusal> {
        let user = self.authenticate(key)?;
        self.count_request(user)?;
        let view = self.find(user, target)?;
        if !view.status.is_open() {
            return Err(Refusal::OrderNotOpen);
        }
        let owner = self.symbol_owner(view.symbol);
        match self.ask(owner, Request::Cancel { symbol: view.symbol, user, id: view.id }).await {
            Some(Reply::Cancelled(Ok(Some(_)))) => {}
            Some(Reply::Cancelled(Ok(None))) => return Err(Refusal::OrderNotOpen),
            Some(Reply::Cancelled(Err(e))) => return Err(e.into()),
            _ => return Err(Refusal::Unavailable("symbol owner unavailable".into())),
        }
        self.find(user, OrderRef::Id(view.id, self.map.symbols[view.symbol].key)).map(Answer::Order)
    }

    async fn amend_order(&self, key: &str, target: OrderRef, price: Option<rust_decimal::Decimal>, quantity: Option<rust_decimal::Decimal>) -> Result<Answer, Refusal> {
        let user = self.authenticate(key)?;
        let view = self.find(user, target)?;
        if !view.status.is_open() {
            return Err(Refusal::OrderNotOpen);
        }
        if !matches!(view.kind, crate::engine::OrderType::Limit { .. }) {
            return Err(Refusal::Invalid("only LIMIT orders are amended".into()));
        }
        let spec = &self.map.symbols[view.symbol];
        let price = price.map(|p| spec.price_to_ticks(p).map_err(|e| Refusal::Invalid(format!("price {e}")))).transpose()?;
        let quantity = quantity.map(|q| spec.quantity_to_lots(q).map_err(|e| Refusal::Invalid(format!("quantity {e}")))).transpose()?;
        let owner = self.symbol_owner(view.symbol);
        match self.ask(owner, Request::Amend { symbol: view.symbol, user, id: view.id, price, quantity }).await {
            Some(Reply::Amended(Ok(()))) => {}
            Some(Reply::Amended(Err(e))) => return Err(e),
            _ => return Err(Refusal::Unavailable("symbol owner unavailable".into())),
        }
        self.find(user, OrderRef::Id(view.id, spec.key)).map(Answer::Order)
    }

    async fn cancel_all(&self, key: &str, symbol: Option<usize>) -> Result<Answer, Refusal> {
        let user = self.authenticate(key)?;
        self.count_request(user)?;
        let symbols: Vec<usize> = match symbol {
            Some(s) => vec![s],
            None => {
                let accounts = self.ledger.borrow();
                let mut s: Vec<usize> =
                    accounts.user(user).map(|a| a.open_orders(None).iter().map(|o| o.symbol).collect()).unwrap_or_default();
                s.sort_unstable();
                s.dedup();
                s
            }
        };
        let mut cancelled = Vec::new();
        for s in symbols {
            match self.ask(self.symbol_owner(s), Request::CancelAll { symbol: s, user }).await {
                Some(Reply::Cancelled(Ok(ids))) => cancelled.extend(ids.unwrap_or_default().into_iter().map(|id| (s, id))),
                Some(Reply::Cancelled(Err(e))) => return Err(e.into()),
                _ => return Err(Refusal::Unavailable("symbol owner unavailable".into())),
            }
        }
        Ok(Answer::Cancelled(cancelled))
    }

    /// Open positions, each with its symbol's prices as the symbol's owner has them.
    async fn positions(&self, key: &str) -> Result<Answer, Refusal> {
        let user = self.authenticate(key)?;
        let positions: Vec<(usize, crate::engine::PositionState)> = {
            let accounts = self.ledger.borrow();
            let account = accounts.user(user).ok_or(Refusal::Unauthorized)?;
            account.positions.iter().filter(|(_, p)| p.size != 0).map(|(s, p)| (*s, *p)).collect()
        };
        let mut owners: Vec<usize> = positions.iter().map(|(s, _)| self.symbol_owner(*s)).collect();
        owners.sort_unstable();
        owners.dedup();
        let mut prices = Vec::new();
        for owner in owners {
            if let Some(Reply::Prices(p)) = self.ask(owner, Request::Prices).await {
                prices.extend(p);
            }
        }
        let price_of = |s: usize| prices.iter().find(|(i, _)| *i == s).map(|(_, p)| *p).unwrap_or_default();
        Ok(Answer::Positions(positions.into_iter().map(|(s, p)| (s, p, price_of(s))).collect()))
    }

    /// Some of the key's user's orders.
    fn orders(&self, key: &str, which: impl Fn(&crate::accounts::Account) -> Vec<&OrderView>) -> Result<Answer, Refusal> {
        let user = self.authenticate(key)?;
        let accounts = self.ledger.borrow();
        let account = accounts.user(user).ok_or(Refusal::Unauthorized)?;
        Ok(Answer::Orders(which(account).into_iter().cloned().collect()))
    }

    /// The key's user.
    fn authenticate(&self, key: &str) -> Result<UserId, Refusal> {
        self.ledger.borrow().authenticate(key).ok_or(Refusal::Unauthorized)
    }

    /// A cancel counted against the user's rate limit.
    fn count_request(&self, user: UserId) -> Result<(), Refusal> {
        self.ledger.borrow_mut().count_request(user, now_ms()).map_err(|e| match e {
            RiskError::RateLimited => Refusal::RateLimited,
            _ => Refusal::Unauthorized,
        })
    }

    fn balance(&self, user: UserId) -> Result<Answer, Refusal> {
        let accounts = self.ledger.borrow();
        let a = accounts.user(user).ok_or(Refusal::NotFound)?;
        Ok(Answer::Balance { total: a.total, available: a.available(), locked: a.locked })
    }

    fn find(&self, user: UserId, target: OrderRef) -> Result<OrderView, Refusal> {
        let view = {
            let accounts = self.ledger.borrow();
            let account = accounts.user(user).ok_or(Refusal::Unauthorized)?;
            match target {
                OrderRef::Id(id, _) => account.order(id),
                OrderRef::Client(cid) => account.order_by_client_id(&cid),
            }
            .cloned()
        };
        let key_matches = |v: &OrderView| match target {
            OrderRef::Id(_, key) => self.map.symbols[v.symbol].key == key,
            OrderRef::Client(_) => true,
        };
        view.filter(|v| v.logged && key_matches(v)).ok_or(Refusal::NotFound)
    }
}
