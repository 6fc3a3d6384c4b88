//! The symbol room: the books (and the perpetual's state) of the symbols this core owns,
//! each behind its command stream ([`stream`]), and the order path that runs here.
//!
//! The order path, for `POST /v1/orders` accepted on any core (the edge, `api`, sends it
//! to the symbol's owner):
//! 1. [`SymbolRoom::place_order`] prices the order by the engine's rules and asks the
//!    user's account owner to reserve (auth, rate limit, available check, margin lock:
//!    one step on one core, [`super::accounts`]);
//! 2. the symbol's stream appends the command to its log; group commit makes it durable;
//! 3. the stream executes it, in log order, and sends the results to the account owners
//!    of everyone involved, in log order ([`SymbolRoom::forward_results`]), which apply
//!    them;
//! 4. once they have, the client gets the order as matched. The core the answer goes to
//!    (the edge that asked) is not waited for: its results travel ahead of the answer on
//!    the same ring and apply on arrival, so they are in before the client has its
//!    answer; only the other cores' acknowledgements cost a round trip.
//!
//! If step 2 fails, the lock is released and the client gets 503.
//!
//! It uses every room below it: the log, the projections, and this core's account room
//! directly (results for accounts owned here are applied without a message).

pub mod deadlines;
pub mod diffs;
pub mod funding;
pub mod recover;
pub mod stream;
pub mod triggers;

use std::cell::RefCell;
use std::rc::Rc;

use rustc_hash::FxHashMap;

use super::accounts::AccountRoom;
use super::core::{now_ms, Core};
use super::log::{files, LogRoom};
use super::projections::Projections;
use super::protocol::{Answer, ConditionalRef, KlinePrice, MarketPrices, NotLogged, Refusal, Reply, Request, ReserveError, SymbolRequest};
use super::rpc::Pending;
use crate::accounts::{OrderStatus, OrderView};
use crate::engine::{CancelReason, Command, Conditional, Event, NewConditional, NewOrder, OrderId, UserId, LEVERAGE_OF_SETTING};
use stream::SymbolStream;

pub struct SymbolRoom {
    pub core: Rc<Core>,
    log: Rc<LogRoom>,
    out: Rc<Projections>,
    accounts: Rc<AccountRoom>,
    streams: RefCell<FxHashMap<usize, Rc<SymbolStream>>>,
    pub triggers: triggers::Triggers,
    /// [`Self::forward_results`]'s list of owners, kept between calls.
    owners: std::cell::Cell<Vec<usize>>,
}

impl std::ops::Deref for SymbolRoom {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl SymbolRoom {
    pub fn new(log: Rc<LogRoom>, out: Rc<Projections>, accounts: Rc<AccountRoom>) -> Self {
        Self { core: log.core.clone(), log, out, accounts, streams: RefCell::default(), triggers: triggers::Triggers::default(), owners: Default::default() }
    }

    pub fn stream(&self, symbol: usize) -> Option<Rc<SymbolStream>> {
        self.streams.borrow().get(&symbol).cloned()
    }

    /// The streams of the symbols owned here.
    pub fn streams(&self) -> Vec<Rc<SymbolStream>> {
        self.streams.borrow().values().cloned().collect()
    }

    /// Prices and insurance funds of the symbols owned here.
    pub fn prices(&self) -> Vec<(usize, MarketPrices)> {
        self.streams.borrow().iter().map(|(i, s)| (*i, s.prices())).collect()
    }

    /// The core that `from`'s answer goes to over the mesh, if not this one: the results
    /// of the command it asked for need not wait for that core's acknowledgement.
    fn answered_on(&self, from: usize) -> Option<usize> {
        (from != self.id).then_some(from)
    }

    /// The API requests about a symbol, on its owner; `from` the core that asked.
    pub async fn answer(self: &Rc<Self>, from: usize, req: SymbolRequest) -> Result<Answer, Refusal> {
        match req {
            SymbolRequest::PlaceOrder { key, symbol, order } => self.place_order(from, key, symbol, order).await.map(Answer::Order),
            SymbolRequest::Depth { symbol, limit } => {
                let stream = self.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
                let market = stream.market.borrow();
                let side = |s| market.book().depth(s).take(limit).collect::<Vec<_>>();
                Ok(Answer::Depth { symbol, seq: market.seq(), bids: side(crate::engine::Side::Buy), asks: side(crate::engine::Side::Sell) })
            }
            SymbolRequest::Trades { symbol, limit } => {
                let stream = self.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
                let trades = stream.trades.borrow().iter().take(limit).copied().collect();
                Ok(Answer::Trades { symbol, trades })
            }
            SymbolRequest::Klines { symbol, price, interval, start, end, limit } => {
                let stream = self.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
                let now = now_ms();
                let candles = match price {
                    KlinePrice::Trade => stream.candles.borrow().klines(interval, start, end, limit, now),
                    KlinePrice::Mark => stream.history.borrow().marks.klines(interval, start, end, limit, now),
                    KlinePrice::Index => stream.history.borrow().indexes.klines(interval, start, end, limit, now),
                };
                Ok(Answer::Klines { symbol, interval, candles })
            }
            SymbolRequest::FundingHistory { symbol, start, end, limit } => {
                let stream = self.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
                let rounds = stream.history.borrow().funding(start, end, limit);
                Ok(Answer::FundingHistory { symbol, rounds })
            }
            SymbolRequest::Ticker { symbol } => {
                let stream = self.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
                let time = now_ms();
                let day = stream.candles.borrow().day(time);
                Ok(Answer::Ticker { symbol, day, last: stream.trades.borrow().front().copied(), time })
            }
            SymbolRequest::SetLeverage { key, symbol, leverage } => {
                let setting = |user, timestamp| Command::SetLeverage { user, leverage, timestamp };
                self.set(&key, symbol, setting).await.map_err(|e| e.unwrap_or(Refusal::InvalidLeverage))?;
                Ok(Answer::Leverage { symbol, leverage })
            }
            SymbolRequest::Leverage { symbol, user } => {
                let stream = self.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
                let leverage = stream.market.borrow().leverage_setting(user);
                Ok(Answer::Leverage { symbol, leverage })
            }
            SymbolRequest::Countdown { key, symbol, after_ms } => {
                let setting = |user, timestamp| Command::Countdown { user, after_ms, timestamp };
                self.set(&key, symbol, setting).await.map_err(|e| e.unwrap_or(Refusal::InvalidCountdown))?;
                Ok(Answer::Countdown { symbol, after_ms })
            }
            SymbolRequest::PremiumIndex { symbol } => {
                let stream = self.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
                Ok(premium_index(&stream, now_ms()))
            }
            SymbolRequest::IndexPrice { symbol, price } => {
                let stream = self.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
                let time = now_ms();
                stream.submit(Command::IndexPrice { price, timestamp: time }).await?;
                Ok(premium_index(&stream, time))
            }
            SymbolRequest::Funding { symbol } => {
                let stream = self.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
                // Settles the coming funding time now: the scheduled tick then finds it done.
                settle_funding(&stream, now_ms()).await
            }
            SymbolRequest::PlaceConditional { key, symbol, order } => {
                let stream = self.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
                let user = self.authenticate(&key).await?;
                let order = NewConditional { user, timestamp: now_ms(), ..order };
                let outcome = stream.submit(Command::PlaceConditional(order)).await?;
                match outcome.result {
                    Err(crate::engine::CommandError::Conditional(refusal)) => Err(Refusal::Conditional(refusal)),
                    Err(e) => Err(Refusal::Invalid(e.to_string())),
                    Ok(()) => {
                        let mut changed = conditionals_in(&outcome.events);
                        // Accepted is the first; a trigger in the same step cannot follow
                        // (one that would trigger at once is refused).
                        changed.next().map(|conditional| Answer::Conditional { symbol, conditional }).ok_or_else(|| Refusal::Unavailable("no result".into()))
                    }
                }
            }
            SymbolRequest::Conditionals { key, symbol, closed } => {
                let stream = self.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
                let user = self.authenticate(&key).await?;
                let market = stream.market.borrow();
                let list = if closed { market.conditionals().all_of(user) } else { market.conditionals().open_of(user).collect() };
                Ok(Answer::Conditionals { symbol, list })
            }
            SymbolRequest::GetConditional { key, symbol, target } => {
                let stream = self.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
                let user = self.authenticate(&key).await?;
                let conditional = find_conditional(&stream, user, target, false).ok_or(Refusal::NotFound)?;
                Ok(Answer::Conditional { symbol, conditional })
            }
            SymbolRequest::CancelConditional { key, symbol, target } => {
                let stream = self.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
                let user = self.authenticate(&key).await?;
                let id = match target {
                    Some(target) => Some(find_conditional(&stream, user, target, true).ok_or(Refusal::OrderNotOpen)?.id),
                    None => None,
                };
                let outcome = stream.submit(Command::CancelConditional { id, user, timestamp: now_ms() }).await?;
                outcome.result.map_err(|_| Refusal::OrderNotOpen)?;
                let list: Vec<_> = conditionals_in(&outcome.events).collect();
                match (target, list.first()) {
                    (Some(_), Some(c)) => Ok(Answer::Conditional { symbol, conditional: *c }),
                    (Some(_), None) => Err(Refusal::OrderNotOpen),
                    (None, _) => Ok(Answer::Conditionals { symbol, list }),
                }
            }
        }
    }

    /// Logs and executes a user's setting on a symbol (leverage, countdown). `Err(None)`:
    /// the engine refused its value.
    async fn set(&self, key: &str, symbol: usize, setting: impl FnOnce(UserId, i64) -> Command) -> Result<(), Option<Refusal>> {
        let stream = self.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
        let user = self.authenticate(key).await?;
        let outcome = stream.submit(setting(user, now_ms())).await.map_err(Refusal::from)?;
        outcome.result.map_err(|_| None)
    }

    /// The key's user, as their account's owner knows them.
    async fn authenticate(&self, key: &str) -> Result<UserId, Refusal> {
        let user = crate::accounts::user_of_key(key).ok_or(Refusal::Unauthorized)?;
        match self.ask(self.account_owner(user), Request::Api(crate::shard::protocol::ApiRequest::authenticate(key))).await {
            Some(Reply::Api(Ok(Answer::User(user)))) => Ok(user),
            Some(Reply::Api(Err(e))) => Err(e),
            _ => Err(Refusal::Unavailable("account owner unavailable".into())),
        }
    }

    /// The order path on the symbol's owner (see the module doc).
    async fn place_order(&self, from: usize, key: String, symbol: usize, mut order: NewOrder) -> Result<OrderView, Refusal> {
        let started = std::time::Instant::now();
        let stream = self.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
        order.timestamp = now_ms();
        let spec = &self.map.symbols[symbol];
        let user = crate::accounts::user_of_key(&key).ok_or(Refusal::Unauthorized)?;
        {
            let market = stream.market.borrow();
            // The key's user's setting (the key is checked by the risk step next; a wrong
            // one is refused there, whatever leverage it found here).
            if order.leverage == LEVERAGE_OF_SETTING {
                order.leverage = market.leverage_setting(user);
            }
            // Priced by the engine's rules (band, MARKET limit, the lock that covers the
            // worst fill); the price travels with the command and the engine never fills
            // beyond what the lock pays.
            market.price_order(&mut order).map_err(|e| match e {
                crate::engine::PriceError::OutOfBand => Refusal::PriceOutOfBand,
                crate::engine::PriceError::TooLarge => Refusal::TooLarge,
            })?;
        }
        let order = match self.ask(self.account_owner(user), Request::Reserve { key: Some(key), order, symbol }).await {
            Some(Reply::Reserved(Ok(order))) => order,
            Some(Reply::Reserved(Err(e))) => {
                return match e {
                    ReserveError::Unauthorized => Err(Refusal::Unauthorized),
                    ReserveError::RateLimited => Err(Refusal::RateLimited),
                    ReserveError::InsufficientMargin => Err(Refusal::InsufficientMargin),
                    ReserveError::TooManyOpenOrders => Err(Refusal::TooManyOpenOrders),
                    ReserveError::PositionLimit => Err(Refusal::PositionLimit),
                    ReserveError::Duplicate(Some(original)) => Ok(*original),
                    ReserveError::Duplicate(None) => Err(Refusal::Unavailable("order is being placed; retry".into())),
                };
            }
            _ => return Err(Refusal::Unavailable("account owner unavailable".into())),
        };
        let outcome = match stream.submit_for(Command::Place(order), self.answered_on(from)).await {
            Ok(outcome) => outcome,
            Err(e @ NotLogged::Refused(_)) => {
                // Not executed, and never will be.
                let _ = self.ask(self.account_owner(order.user), Request::Release { order }).await;
                return Err(e.into());
            }
            Err(e @ NotLogged::Unknown(_)) => {
                // The log may still have it: its lock and clientOrderId stay (a retry with
                // the same clientOrderId cannot make a second order) until the stream has
                // voided it in the log and releases it, or a restart's replay finds it there.
                let _ = self.ask(self.account_owner(order.user), Request::Hold { user: order.user, id: order.id }).await;
                return Err(e.into());
            }
        };
        for ack in outcome.applied {
            let _ = ack.await;
        }
        let view = taker_view(symbol, &order, &outcome.events);
        if let Some(sync) = &self.sync {
            sync.order(spec, Some((&order, &view)), &outcome.events)
                .await
                .map_err(|e| Refusal::Unavailable(format!("PostgreSQL (synchronous baseline): {e}")))?;
        }
        self.metrics.orders.inc();
        self.metrics.ack_seconds.observe(started.elapsed().as_secs_f64());
        // Refusals the engine made when the order executed (the market moved after it was
        // priced) answer as the same refusals made before the log would.
        match view.reason {
            Some(CancelReason::ReduceOnlyRejected) => return Err(Refusal::ReduceOnlyRejected),
            Some(CancelReason::PriceOutOfBand) => return Err(Refusal::PriceOutOfBand),
            Some(CancelReason::InsufficientMargin) if view.filled == 0 => return Err(Refusal::InsufficientMargin),
            _ => {}
        }
        Ok(view)
    }

    /// An amendment on the symbol's owner: priced by the engine's rules (what the amended
    /// order must lock beyond its lock now), that margin reserved by the account's owner,
    /// then logged and executed. The reservation is settled once the results are applied
    /// (or the log refused the command); after a 504 it stays held, which only over-locks,
    /// until a restart's replay settles the account from the log.
    pub async fn amend(&self, from: usize, symbol: usize, user: UserId, id: OrderId, price: Option<i64>, quantity: Option<i64>) -> Result<(), Refusal> {
        let stream = self.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
        let (price, quantity, added) = {
            let market = stream.market.borrow();
            let o = market.book().get(id).filter(|o| o.user == user).ok_or(Refusal::OrderNotOpen)?;
            let (price, quantity) = (price.unwrap_or(o.price), quantity.unwrap_or(o.filled + o.remaining));
            let added = market.amend_margin(id, user, price, quantity).ok_or(Refusal::OrderNotOpen)?;
            (price, quantity, crate::engine::units::Units::try_from(added).map_err(|_| Refusal::TooLarge)?)
        };
        let owner = self.account_owner(user);
        match self.ask(owner, Request::ReserveAmend { user, id, added }).await {
            Some(Reply::AmendReserved(Ok(()))) => {}
            Some(Reply::AmendReserved(Err(ReserveError::RateLimited))) => return Err(Refusal::RateLimited),
            Some(Reply::AmendReserved(Err(ReserveError::InsufficientMargin))) => return Err(Refusal::InsufficientMargin),
            Some(Reply::AmendReserved(Err(_))) => return Err(Refusal::OrderNotOpen),
            _ => return Err(Refusal::Unavailable("account owner unavailable".into())),
        }
        let amend = Command::Amend { id, user, price, quantity, added_margin: added, timestamp: now_ms() };
        let outcome = match stream.submit_for(amend, self.answered_on(from)).await {
            Ok(outcome) => outcome,
            Err(e @ NotLogged::Refused(_)) => {
                let _ = self.ask(owner, Request::SettleAmend { user, id, added }).await;
                return Err(e.into());
            }
            Err(e @ NotLogged::Unknown(_)) => return Err(e.into()),
        };
        for ack in outcome.applied {
            let _ = ack.await;
        }
        let _ = self.ask(owner, Request::SettleAmend { user, id, added }).await;
        if let Some(sync) = &self.sync {
            sync.order(&self.map.symbols[symbol], None, &outcome.events)
                .await
                .map_err(|e| Refusal::Unavailable(format!("PostgreSQL (synchronous baseline): {e}")))?;
        }
        match outcome.events.iter().find_map(|e| if let Event::OrderAmended(a) = e { Some(a.refused) } else { None }) {
            Some(None) => Ok(()),
            Some(Some(refusal)) => Err(Refusal::AmendRefused(refusal)),
            None => Err(Refusal::Unavailable("the amendment left no result".into())),
        }
    }

    /// Logs and executes a cancel (one order, or all of a user's on the symbol); the ids
    /// cancelled, or `None` if there was nothing open to cancel.
    pub async fn cancel(&self, from: usize, symbol: usize, user: UserId, id: Option<OrderId>) -> Result<Option<Vec<OrderId>>, NotLogged> {
        let stream = self.stream(symbol).ok_or_else(|| NotLogged::Refused("symbol not owned here".into()))?;
        let timestamp = now_ms();
        let command = match id {
            Some(id) => Command::Cancel { id, user, timestamp },
            None => Command::CancelAll { user, timestamp },
        };
        let outcome = stream.submit_for(command, self.answered_on(from)).await?;
        for ack in outcome.applied {
            let _ = ack.await;
        }
        if let Some(sync) = &self.sync {
            sync.order(&self.map.symbols[symbol], None, &outcome.events)
                .await
                .map_err(|e| NotLogged::Refused(format!("PostgreSQL (synchronous baseline): {e}")))?;
        }
        Ok(outcome.result.ok().map(|()| {
            outcome
                .events
                .iter()
                .filter_map(|e| match e {
                    Event::OrderCancelled(c) => Some(c.order_id),
                    _ => None,
                })
                .collect()
        }))
    }

    /// Sends a symbol's results to the account owners involved, in log order. Applies
    /// them at once when the owner is this core; otherwise returns the pending
    /// acknowledgements, except that of `answered_on`, the core the command's answer
    /// goes to: the results reach it on the same ring ahead of the answer and apply on
    /// arrival, so its client cannot read its account before they are in.
    pub fn forward_results(&self, symbol: usize, offset: u64, logged: Option<NewOrder>, replayed: bool, events: &[Event], answered_on: Option<usize>) -> Vec<Pending> {
        // The owners involved, in order of first appearance, in a list kept between calls.
        let mut owners = self.owners.take();
        owners.clear();
        let mut add = |user: UserId| {
            let owner = self.account_owner(user);
            if !owners.contains(&owner) {
                owners.push(owner);
            }
        };
        if let Some(o) = &logged {
            add(o.user);
        }
        for user in events.iter().flat_map(Event::users).flatten() {
            add(user);
        }
        let mut pending = Vec::new();
        for &owner in &owners {
            let ours = |u: UserId| self.account_owner(u) == owner;
            let logged = logged.filter(|o| ours(o.user));
            if owner == self.id {
                self.accounts.apply(symbol, offset, logged, replayed, events);
            } else {
                let events = events.to_vec();
                let req = Request::Apply { symbol, offset, logged, replayed, events, snapshot: false };
                if answered_on == Some(owner) {
                    self.rpc.tell(owner, req);
                } else {
                    pending.push(self.rpc.send(owner, req));
                }
            }
        }
        self.owners.set(owners);
        pending
    }

    /// Takes a symbol snapshot and tells every shard, in order with the results already
    /// sent, that the symbol got that far: time for each to snapshot its accounts.
    pub fn snapshot_symbol(&self, stream: &SymbolStream) {
        let offset = stream.next.get();
        stream.since_snapshot.set(0);
        let snapshot = files::SymbolSnapshot {
            offset,
            market: stream.market.borrow().snapshot(),
            trades: stream.trades.borrow().iter().copied().collect(),
            epoch: stream.epoch.get(),
            candles: stream.candles.borrow().clone(),
            history: stream.history.borrow().clone(),
        };
        let name = self.map.symbols[stream.index].name.clone();
        files::write_symbol(&self.log, name.clone(), offset, files::encode_symbol(&snapshot));
        tracing::info!(symbol = name, offset, "symbol snapshot");
        let at = offset.saturating_sub(1);
        for to in 0..self.shards {
            if to == self.id {
                self.accounts.apply(stream.index, at, None, false, &[]);
                super::accounts::snapshot_accounts_soon(&self.accounts);
            } else {
                let req = Request::Apply { symbol: stream.index, offset: at, logged: None, replayed: false, events: Vec::new(), snapshot: true };
                self.rpc.tell(to, req);
            }
        }
    }
}

/// The conditional orders a command's events changed, as they are after it.
fn conditionals_in(events: &[Event]) -> impl Iterator<Item = Conditional> + '_ {
    events.iter().filter_map(|e| if let Event::Conditional(c) = e { Some(c.conditional) } else { None })
}

/// The user's conditional order named by `target` (`open`: only one still open).
fn find_conditional(stream: &SymbolStream, user: UserId, target: ConditionalRef, open: bool) -> Option<Conditional> {
    let market = stream.market.borrow();
    let all = market.conditionals();
    let found = match target {
        ConditionalRef::Id(id) => all.get(id),
        ConditionalRef::Client(cid) => all.by_client_id(user, cid),
    };
    found.filter(|c| c.order.user == user && (!open || c.status.is_open()))
}

/// The symbol's index, mark and funding as they are at `time`.
fn premium_index(stream: &SymbolStream, time: i64) -> Answer {
    let p = mark_prices(stream, time);
    Answer::PremiumIndex { symbol: stream.index, index: p.index, mark: p.mark, last_funding_rate: p.last_funding_rate, time, next_funding: p.next_funding }
}

/// The symbol's index, mark and funding as they are at `time`.
pub(crate) fn mark_prices(stream: &SymbolStream, time: i64) -> crate::shard::protocol::MarkPrices {
    let market = stream.market.borrow();
    let perp = market.perp();
    let interval = market.spec().funding_interval_secs;
    let next_funding = crate::engine::perp::next_funding_time(time.max(perp.last_funding_time), interval);
    crate::shard::protocol::MarkPrices { index: perp.index, mark: perp.mark, last_funding_rate: perp.last_funding_rate, next_funding, time }
}

/// Logs a funding tick for `time` and says what it settled.
pub async fn settle_funding(stream: &SymbolStream, time: i64) -> Result<Answer, Refusal> {
    let outcome = stream.submit(Command::Funding { timestamp: time }).await?;
    match outcome.result {
        Err(crate::engine::CommandError::IndexStale) => return Err(Refusal::IndexStale),
        Err(_) => return Err(Refusal::FundingSettled),
        Ok(()) => {}
    }
    let round = outcome.events.iter().find_map(|e| if let Event::FundingSettled(r) = e { Some(*r) } else { None });
    let round = round.ok_or(Refusal::FundingSettled)?;
    Ok(Answer::Funding { symbol: stream.index, rate: round.rate, mark: round.mark, time: round.timestamp, positions: round.positions })
}

/// The taker's order as its command's events left it.
fn taker_view(symbol: usize, order: &NewOrder, events: &[Event]) -> OrderView {
    let mut view = OrderView::new(order, symbol, true);
    for e in events {
        match e {
            Event::TradeExecuted(t) if t.taker().order_id == order.id => {
                view.filled += t.quantity;
                view.filled_value += i128::from(t.price) * i128::from(t.quantity);
            }
            Event::OrderCancelled(c) if c.order_id == order.id => {
                view.status = if c.reason.is_rejection() { OrderStatus::Rejected } else { OrderStatus::Cancelled };
                view.reason = Some(c.reason);
            }
            _ => {}
        }
    }
    if view.reason.is_none() {
        view.status = if view.filled == view.quantity {
            OrderStatus::Filled
        } else if view.filled > 0 {
            OrderStatus::PartiallyFilled
        } else {
            OrderStatus::New
        };
    }
    view
}
