//! What a shard does with each request it owns the answer to.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use super::protocol::{Answer, ApiRequest, OrderRef, Refusal, Reply, Request, ReserveError};
use super::stream::NotLogged;
use super::{hot, Shard};
use crate::accounts::{OrderStatus, OrderView, RiskError};
use crate::engine::{CancelReason, Command, Event, NewOrder, OrderId, UserId};

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub fn handle(shard: Rc<Shard>, req: Request) -> Pin<Box<dyn Future<Output = Reply>>> {
    Box::pin(async move {
        match req {
            Request::Api(api) => Reply::Api(api_request(&shard, api).await),
            Request::Reserve { key, order, symbol } => Reply::Reserved(reserve(&shard, &key, order, symbol)),
            Request::Release { order } => {
                shard.accounts.borrow_mut().release(&order);
                hot::release(&shard, &order);
                Reply::Done
            }
            Request::Hold { user, id } => {
                shard.accounts.borrow_mut().hold(user, id);
                Reply::Done
            }
            Request::Apply { symbol, offset, logged, replayed, events, snapshot } => {
                apply(&shard, symbol, offset, logged, replayed, &events);
                if snapshot {
                    super::snapshots::snapshot_accounts_soon(&shard);
                }
                Reply::Done
            }
            Request::Cancel { symbol, user, id } => {
                Reply::Cancelled(cancel(&shard, symbol, Command::Cancel { id, user, timestamp: now_ms() }).await)
            }
            Request::CancelAll { symbol, user } => {
                Reply::Cancelled(cancel(&shard, symbol, Command::CancelAll { user, timestamp: now_ms() }).await)
            }
            Request::Check => Reply::Checked(hot::check(&shard).await),
            request @ (Request::Market { .. } | Request::User { .. }) => {
                super::feed::delivered(&shard, request);
                Reply::Done
            }
            Request::Prices => {
                let streams = shard.streams.borrow();
                Reply::Prices(streams.iter().map(|(i, s)| (*i, s.prices())).collect())
            }
            Request::Summary => {
                let partitions: Vec<u32> = shard.owned_partitions().collect();
                Reply::Summary(shard.accounts.borrow().totals(&partitions))
            }
        }
    })
}

/// Applies a symbol's results to the accounts owned here. Synchronous on purpose: results
/// must be applied in the order they arrive.
pub fn apply(shard: &Shard, symbol: usize, offset: u64, logged: Option<NewOrder>, replayed: bool, events: &[Event]) {
    let forgotten = {
        let mut accounts = shard.accounts.borrow_mut();
        if let Some(o) = logged {
            if replayed { accounts.replay_order(&o, symbol, offset) } else { accounts.confirm(o.user, o.id) }
        }
        accounts.apply_events(symbol, offset, events);
        accounts.mark_applied(symbol, offset);
        accounts.take_forgotten()
    };
    hot::settle(shard, symbol, logged.as_ref(), events);
    hot::forgotten(shard, &forgotten);
    if !replayed {
        super::feed::accounts(shard, symbol, events);
    }
}

/// The risk step, in the ledger of the account's owner: one uninterrupted step (it also
/// numbers the order). Redis, when configured, is told behind it.
fn reserve(shard: &Shard, key: &str, mut order: NewOrder, symbol: usize) -> Result<NewOrder, ReserveError> {
    reserve_in_ledger(shard, key, &mut order, symbol)?;
    shard.numbered(order.id.0 & crate::accounts::ORDER_NUMBER_MASK);
    hot::reserved(shard, &order);
    Ok(order)
}

fn reserve_in_ledger(shard: &Shard, key: &str, order: &mut NewOrder, symbol: usize) -> Result<(), ReserveError> {
    let mut accounts = shard.accounts.borrow_mut();
    let user = accounts.authenticate(key).ok_or(ReserveError::Unauthorized)?;
    let now = order.timestamp;
    match accounts.reserve(user, order, symbol, now) {
        Ok(()) => Ok(()),
        Err(RiskError::Unauthorized) => Err(ReserveError::Unauthorized),
        Err(RiskError::RateLimited) => Err(ReserveError::RateLimited),
        Err(RiskError::InsufficientMargin) => Err(ReserveError::InsufficientMargin),
        Err(RiskError::TooManyOpenOrders) => Err(ReserveError::TooManyOpenOrders),
        Err(RiskError::PositionLimit) => Err(ReserveError::PositionLimit),
        Err(RiskError::Duplicate(id)) => Err(ReserveError::Duplicate(accounts.user(user).and_then(|a| a.order(id)).cloned().map(Box::new))),
    }
}

async fn cancel(shard: &Rc<Shard>, symbol: usize, command: Command) -> Result<Option<Vec<OrderId>>, NotLogged> {
    let stream = shard.stream(symbol).ok_or_else(|| NotLogged::Refused("symbol not owned here".into()))?;
    let outcome = stream.submit(command).await?;
    for ack in outcome.applied {
        let _ = ack.await;
    }
    if let Some(sync) = &shard.sync {
        sync.order(&shard.map.symbols[symbol], None, &outcome.events).await.map_err(|e| NotLogged::Refused(format!("PostgreSQL (synchronous baseline): {e}")))?;
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

async fn api_request(shard: &Rc<Shard>, req: ApiRequest) -> Result<Answer, Refusal> {
    match req {
        ApiRequest::PlaceOrder { key, symbol, order } => place_order(shard, key, symbol, order).await.map(Answer::Order),
        ApiRequest::Depth { symbol, limit } => {
            let stream = shard.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
            let market = stream.market.borrow();
            let side = |s| market.book().depth(s).take(limit).collect::<Vec<_>>();
            Ok(Answer::Depth {
                symbol,
                seq: market.seq(),
                bids: side(crate::engine::Side::Buy),
                asks: side(crate::engine::Side::Sell),
            })
        }
        ApiRequest::Trades { symbol, limit } => {
            let stream = shard.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
            let trades = stream.trades.borrow().iter().take(limit).copied().collect();
            Ok(Answer::Trades { symbol, trades })
        }
        ApiRequest::CreateUser { name } => super::admin::create_user(shard, &name).await,
        ApiRequest::Transfer { name, amount, transfer_id } => {
            let user = super::admin::transfer(shard, &name, amount, &transfer_id).await?;
            balance(shard, user)
        }
        ApiRequest::CancelOrder { key, target } => {
            let user = authenticate(shard, &key)?;
            count_request(shard, user)?;
            let view = find(shard, user, target)?;
            if !view.status.is_open() {
                return Err(Refusal::OrderNotOpen);
            }
            let owner = shard.symbol_owner(view.symbol);
            match shard.ask(owner, Request::Cancel { symbol: view.symbol, user, id: view.id }).await {
                Some(Reply::Cancelled(Ok(Some(_)))) => {}
                Some(Reply::Cancelled(Ok(None))) => return Err(Refusal::OrderNotOpen),
                Some(Reply::Cancelled(Err(e))) => return Err(e.into()),
                _ => return Err(Refusal::Unavailable("symbol owner unavailable".into())),
            }
            find(shard, user, OrderRef::Id(view.id, shard.map.symbols[view.symbol].key)).map(Answer::Order)
        }
        ApiRequest::CancelAll { key, symbol } => {
            let user = authenticate(shard, &key)?;
            count_request(shard, user)?;
            let symbols: Vec<usize> = match symbol {
                Some(s) => vec![s],
                None => {
                    let accounts = shard.accounts.borrow();
                    let mut s: Vec<usize> = accounts.user(user).map(|a| a.open_orders(None).iter().map(|o| o.symbol).collect()).unwrap_or_default();
                    s.sort_unstable();
                    s.dedup();
                    s
                }
            };
            let mut cancelled = Vec::new();
            for s in symbols {
                match shard.ask(shard.symbol_owner(s), Request::CancelAll { symbol: s, user }).await {
                    Some(Reply::Cancelled(Ok(ids))) => cancelled.extend(ids.unwrap_or_default().into_iter().map(|id| (s, id))),
                    Some(Reply::Cancelled(Err(e))) => return Err(e.into()),
                    _ => return Err(Refusal::Unavailable("symbol owner unavailable".into())),
                }
            }
            Ok(Answer::Cancelled(cancelled))
        }
        ApiRequest::GetOrder { key, target } => {
            let user = authenticate(shard, &key)?;
            find(shard, user, target).map(Answer::Order)
        }
        ApiRequest::OpenOrders { key, symbol } => {
            let user = authenticate(shard, &key)?;
            let accounts = shard.accounts.borrow();
            let account = accounts.user(user).ok_or(Refusal::Unauthorized)?;
            Ok(Answer::Orders(account.open_orders(symbol).into_iter().cloned().collect()))
        }
        ApiRequest::Fills { key, symbol, limit } => {
            let user = authenticate(shard, &key)?;
            let mut fills: Vec<crate::accounts::Fill> = {
                let accounts = shard.accounts.borrow();
                let account = accounts.user(user).ok_or(Refusal::Unauthorized)?;
                account.fills.iter().filter(|f| symbol.is_none_or(|s| s == f.symbol)).cloned().collect()
            };
            // Newest first. Kept per user in arrival order, which a restart (replaying one
            // symbol's log after another) does not reproduce across symbols.
            fills.sort_by_key(|f| std::cmp::Reverse((f.time, f.symbol, f.trade_seq)));
            fills.truncate(limit);
            Ok(Answer::Fills(fills))
        }
        ApiRequest::Balance { key } => {
            let user = authenticate(shard, &key)?;
            balance(shard, user)
        }
        ApiRequest::Authenticate { key } => authenticate(shard, &key).map(Answer::User),
        ApiRequest::Positions { key } => {
            let user = authenticate(shard, &key)?;
            let positions: Vec<(usize, crate::engine::PositionState)> = {
                let accounts = shard.accounts.borrow();
                let account = accounts.user(user).ok_or(Refusal::Unauthorized)?;
                account.positions.iter().filter(|(_, p)| p.size != 0).map(|(s, p)| (*s, *p)).collect()
            };
            let mut owners: Vec<usize> = positions.iter().map(|(s, _)| shard.symbol_owner(*s)).collect();
            owners.sort_unstable();
            owners.dedup();
            let mut prices = Vec::new();
            for owner in owners {
                if let Some(Reply::Prices(p)) = shard.ask(owner, Request::Prices).await {
                    prices.extend(p);
                }
            }
            let price_of = |s: usize| prices.iter().find(|(i, _)| *i == s).map(|(_, p)| *p).unwrap_or_default();
            Ok(Answer::Positions(positions.into_iter().map(|(s, p)| (s, p, price_of(s))).collect()))
        }
        ApiRequest::Income { key, symbol, kind, limit } => {
            let user = authenticate(shard, &key)?;
            let accounts = shard.accounts.borrow();
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
        ApiRequest::PremiumIndex { symbol } => {
            let stream = shard.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
            Ok(premium_index(&stream, now_ms()))
        }
        ApiRequest::IndexPrice { symbol, price } => {
            let stream = shard.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
            let time = now_ms();
            stream.submit(Command::IndexPrice { price, timestamp: time }).await?;
            Ok(premium_index(&stream, time))
        }
        ApiRequest::Funding { symbol } => {
            let stream = shard.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
            // Settles the coming funding time now: the scheduled tick then finds it done.
            settle_funding(&stream, now_ms()).await
        }
    }
}

/// The symbol's index, mark and funding as they are at `time`.
fn premium_index(stream: &super::stream::SymbolStream, time: i64) -> Answer {
    let market = stream.market.borrow();
    let perp = market.perp();
    let interval = market.spec().funding_interval_secs;
    let next_funding = crate::engine::perp::next_funding_time(time.max(perp.last_funding_time), interval);
    Answer::PremiumIndex { symbol: stream.index, index: perp.index, mark: perp.mark, last_funding_rate: perp.last_funding_rate, time, next_funding }
}

/// Logs a funding tick for `time` and says what it settled.
pub async fn settle_funding(stream: &super::stream::SymbolStream, time: i64) -> Result<Answer, Refusal> {
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

/// The key's user.
fn authenticate(shard: &Shard, key: &str) -> Result<UserId, Refusal> {
    shard.accounts.borrow().authenticate(key).ok_or(Refusal::Unauthorized)
}

/// A cancel counted against the user's rate limit.
fn count_request(shard: &Shard, user: UserId) -> Result<(), Refusal> {
    shard.accounts.borrow_mut().count_request(user, now_ms()).map_err(|e| match e {
        RiskError::RateLimited => Refusal::RateLimited,
        _ => Refusal::Unauthorized,
    })
}

fn balance(shard: &Shard, user: UserId) -> Result<Answer, Refusal> {
    let accounts = shard.accounts.borrow();
    let a = accounts.user(user).ok_or(Refusal::NotFound)?;
    Ok(Answer::Balance { total: a.total, available: a.available(), locked: a.locked })
}

fn find(shard: &Shard, user: UserId, target: OrderRef) -> Result<OrderView, Refusal> {
    let view = {
        let accounts = shard.accounts.borrow();
        let account = accounts.user(user).ok_or(Refusal::Unauthorized)?;
        match target {
            OrderRef::Id(id, _) => account.order(id),
            OrderRef::Client(cid) => account.order_by_client_id(&cid),
        }
        .cloned()
    };
    let key_matches = |v: &OrderView| match target {
        OrderRef::Id(_, key) => shard.map.symbols[v.symbol].key == key,
        OrderRef::Client(_) => true,
    };
    view.filter(|v| v.logged && key_matches(v)).ok_or(Refusal::NotFound)
}

/// The order path on the symbol's owner (see the module doc of [`super`]).
async fn place_order(shard: &Rc<Shard>, key: String, symbol: usize, mut order: NewOrder) -> Result<OrderView, Refusal> {
    let started = std::time::Instant::now();
    let stream = shard.stream(symbol).ok_or(Refusal::UnknownSymbol)?;
    order.timestamp = now_ms();
    let spec = &shard.map.symbols[symbol];
    // Priced by the engine's rules (band, MARKET limit, the lock that covers the worst
    // fill); the price travels with the command and the engine never fills beyond what
    // the lock pays.
    stream.market.borrow().price_order(&mut order).map_err(|e| match e {
        crate::engine::PriceError::OutOfBand => Refusal::PriceOutOfBand,
        crate::engine::PriceError::TooLarge => Refusal::TooLarge,
    })?;
    let user = crate::accounts::user_of_key(&key).ok_or(Refusal::Unauthorized)?;
    let order = match shard.ask(shard.account_owner(user), Request::Reserve { key, order, symbol }).await {
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
    let outcome = match stream.submit(Command::Place(order)).await {
        Ok(outcome) => outcome,
        Err(e @ NotLogged::Refused(_)) => {
            // Not executed, and never will be.
            let _ = shard.ask(shard.account_owner(order.user), Request::Release { order }).await;
            return Err(e.into());
        }
        Err(e @ NotLogged::Unknown(_)) => {
            // The log may still have it: its lock and clientOrderId stay (a retry with the
            // same clientOrderId cannot make a second order) until the stream has voided
            // it in the log and releases it, or a restart's replay finds it there.
            let _ = shard.ask(shard.account_owner(order.user), Request::Hold { user: order.user, id: order.id }).await;
            return Err(e.into());
        }
    };
    for ack in outcome.applied {
        let _ = ack.await;
    }
    let view = taker_view(symbol, &order, &outcome.events);
    if let Some(sync) = &shard.sync {
        sync.order(spec, Some((&order, &view)), &outcome.events).await.map_err(|e| Refusal::Unavailable(format!("PostgreSQL (synchronous baseline): {e}")))?;
    }
    shard.metrics.orders.inc();
    shard.metrics.ack_seconds.observe(started.elapsed().as_secs_f64());
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
