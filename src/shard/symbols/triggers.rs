//! Triggered conditional orders become orders here. The engine marks a conditional order
//! `Triggering` in the step that moved its price (see [`crate::engine::conditional`]);
//! its order then takes the order path of every order, on the symbol's owner: priced by
//! the engine's rules, risk-checked and margin-locked by the account's owner (no key: the
//! user asked when they placed the conditional), and logged as
//! [`Command::PlaceTriggered`]. A refusal is logged too ([`Command::RefuseTriggered`]), so
//! the conditional order ends `REJECTED` with its reason in every replay.
//!
//! The stream wakes the placer when a command triggers something; the placer also looks
//! every [`TICK`] for `Triggering` conditionals nobody is placing: after a restart (the
//! log held the trigger but not the placement) or after the log refused one. Placing one
//! twice is harmless: the engine places a `PlaceTriggered` only while its conditional is
//! `Triggering` and cancels the second one, releasing its margin.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::StreamExt;

use super::stream::SymbolStream;
use super::SymbolRoom;
use crate::engine::{CancelReason, Command, Conditional, NewOrder, OrderType, PriceError, Side};
use crate::shard::core::now_ms;
use crate::shard::protocol::{NotLogged, Reply, Request, ReserveError};

/// How often the placer looks for triggered conditional orders nobody is placing.
pub const TICK: Duration = Duration::from_millis(100);

/// Places what the streams of `room` trigger, until the shard stops.
pub async fn placer(room: Rc<SymbolRoom>) {
    let Some(mut woken) = room.triggers.woken.take() else { return };
    if room.streams().is_empty() {
        return;
    }
    loop {
        let wake = async { woken.next().await.map(Some) };
        let tick = async {
            glommio::timer::sleep(TICK).await;
            Some(None)
        };
        let Some(symbol) = futures_lite::future::or(wake, tick).await else { return };
        let streams = match symbol {
            Some(symbol) => room.stream(symbol).into_iter().collect(),
            None => room.streams(),
        };
        for stream in streams {
            let triggered: Vec<Conditional> = stream.market.borrow().conditionals().triggering().copied().collect();
            for c in triggered {
                if room.triggers.placing.borrow_mut().insert((stream.index, c.id)) {
                    glommio::spawn_local(place(room.clone(), stream.clone(), c)).detach();
                }
            }
        }
    }
}

/// What became of a triggered conditional order's placement.
enum Placed {
    /// Logged: placed, or refused for a reason the conditional order ends with.
    Done,
    /// Not logged (the log or the account's owner was unavailable): tried again.
    Again,
}

async fn place(room: Rc<SymbolRoom>, stream: Rc<SymbolStream>, c: Conditional) {
    let placed = try_place(&room, &stream, &c).await;
    if let Placed::Again = placed {
        // The next tick tries again, not this instant: the log or the owner is down.
        glommio::timer::sleep(TICK).await;
    }
    room.triggers.placing.borrow_mut().remove(&(stream.index, c.id));
}

async fn try_place(room: &SymbolRoom, stream: &SymbolStream, c: &Conditional) -> Placed {
    let order = match order_of(stream, c) {
        Ok(order) => order,
        Err(reason) => return refuse(stream, c, reason).await,
    };
    let owner = room.account_owner(order.user);
    let order = match room.ask(owner, Request::Reserve { key: None, order, symbol: stream.index }).await {
        Some(Reply::Reserved(Ok(order))) => order,
        Some(Reply::Reserved(Err(e))) => {
            let reason = match e {
                ReserveError::InsufficientMargin => CancelReason::InsufficientMargin,
                ReserveError::Duplicate(_) | ReserveError::Unauthorized | ReserveError::RateLimited => return Placed::Again,
                ReserveError::TooManyOpenOrders | ReserveError::PositionLimit => CancelReason::InvalidOrder,
            };
            return refuse(stream, c, reason).await;
        }
        _ => return Placed::Again,
    };
    match stream.submit(Command::PlaceTriggered { conditional: c.id, order }).await {
        Ok(outcome) => {
            for ack in outcome.applied {
                let _ = ack.await;
            }
            Placed::Done
        }
        Err(NotLogged::Refused(_)) => {
            let _ = room.ask(owner, Request::Release { order }).await;
            Placed::Again
        }
        // The stream holds its lock until the log is settled, as for any order answered
        // 504; the conditional is still `Triggering` unless the record landed.
        Err(NotLogged::Unknown(_)) => {
            let _ = room.ask(owner, Request::Hold { user: order.user, id: order.id }).await;
            Placed::Again
        }
    }
}

/// The order a triggered conditional order places now, priced for the risk step; or why
/// it cannot be placed.
fn order_of(stream: &SymbolStream, c: &Conditional) -> Result<NewOrder, CancelReason> {
    let market = stream.market.borrow();
    let wanted = &c.order;
    let quantity = if wanted.close_position {
        // All of the position the order's side closes, as it is now.
        let size = market.position(wanted.user).size;
        let closes = match wanted.side {
            Side::Sell => size.max(0),
            Side::Buy => (-size).max(0),
        };
        i64::try_from(closes).map_err(|_| CancelReason::InvalidOrder)?
    } else {
        wanted.quantity
    };
    if quantity == 0 {
        return Err(CancelReason::ReduceOnlyRejected);
    }
    let kind = match wanted.price {
        Some(price) => OrderType::Limit { price, tif: wanted.tif },
        None => OrderType::Market,
    };
    let mut order = NewOrder {
        id: crate::engine::OrderId(0),
        user: wanted.user,
        side: wanted.side,
        kind,
        quantity,
        leverage: market.leverage_setting(wanted.user),
        reduce_only: wanted.reduces(),
        client_order_id: None,
        locked_margin: 0,
        timestamp: now_ms(),
        stp: Default::default(),
        good_till: 0,
    };
    market.price_order(&mut order).map_err(|e| match e {
        PriceError::OutOfBand => CancelReason::PriceOutOfBand,
        PriceError::TooLarge => CancelReason::InvalidOrder,
    })?;
    Ok(order)
}

async fn refuse(stream: &SymbolStream, c: &Conditional, reason: CancelReason) -> Placed {
    let command = Command::RefuseTriggered { conditional: c.id, user: c.order.user, reason, timestamp: now_ms() };
    match stream.submit(command).await {
        Ok(_) => Placed::Done,
        Err(_) => Placed::Again,
    }
}

/// What the streams and the placer of one room share.
pub struct Triggers {
    /// A stream's index, when a command it executed triggered something.
    wake: futures_channel::mpsc::UnboundedSender<usize>,
    woken: std::cell::RefCell<Option<futures_channel::mpsc::UnboundedReceiver<usize>>>,
    /// (symbol, conditional id) being placed.
    placing: std::cell::RefCell<rustc_hash::FxHashSet<(usize, u64)>>,
}

impl Default for Triggers {
    fn default() -> Self {
        let (wake, woken) = futures_channel::mpsc::unbounded();
        Self { wake, woken: std::cell::RefCell::new(Some(woken)), placing: Default::default() }
    }
}

impl Triggers {
    /// Called by a stream whose command triggered conditional orders.
    pub fn wake(&self, symbol: usize) {
        let _ = self.wake.unbounded_send(symbol);
    }
}
