//! Versioned snapshots of a market's complete state.
//!
//! A snapshot holds exactly what `execute` reads: the resting orders in priority order
//! (with their client ids), every position, the sequence and the last trade price.
//! Restoring rebuilds the book by inserting the orders in that order, so
//! `restore(snapshot) + replay(tail)` behaves as if the market had never stopped.
//!
//! Format: the magic `EXSNAP`, a little-endian `u16` version, then the state in postcard
//! (a compact, documented serde format). A reader refuses versions it does not know.
//! The encoding is canonical: two markets in the same state give the same bytes.

use serde::{Deserialize, Serialize};

use super::book::Resting;
use super::command::{ClientOrderId, OrderId, Side, UserId};
use super::event::PositionState;
use super::market::Market;
use super::perp::Perp;
use super::symbol::SymbolSpec;
use super::units::Ticks;

const MAGIC: &[u8; 6] = b"EXSNAP";
pub const VERSION: u16 = 6;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a market snapshot")]
    BadMagic,
    #[error("snapshot version {0} is not supported (this build reads {VERSION})")]
    UnsupportedVersion(u16),
    #[error("snapshot is of {found}, expected {expected}")]
    WrongSymbol { found: String, expected: String },
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
}

#[derive(Serialize, Deserialize)]
struct StateV1 {
    symbol: String,
    seq: u64,
    last_price: Option<Ticks>,
    orders: Vec<(Resting, Option<ClientOrderId>)>,
    positions: Vec<(UserId, PositionState)>,
}

/// Version 2 added the perpetual's state (index, mark, insurance fund, funding); 3 has
/// the mark's basis average, the index's time and the liquidation pass.
#[derive(Serialize, Deserialize)]
struct StateV2<P> {
    market: StateV1,
    perp: P,
}

/// Version 4 added the users' leverage settings and countdown deadlines and the resting
/// orders' expiries (each sorted: the encoding stays canonical).
#[derive(Serialize, Deserialize)]
struct StateV4 {
    state: StateV2<Perp>,
    leverage: Vec<(UserId, u32)>,
    countdowns: Vec<(UserId, i64)>,
    expiries: Vec<(OrderId, i64)>,
}

/// Version 5 added the conditional orders: the open ones and the closed ones the market
/// remembers, each oldest first; 6 has their trailing stops' callback rates and best
/// prices.
#[derive(Serialize, Deserialize)]
struct StateV5<C> {
    state: StateV4,
    open: Vec<C>,
    closed: Vec<C>,
}

/// A conditional order as version 5 held it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ConditionalV5 {
    id: u64,
    order: NewConditionalV5,
    status: super::conditional::ConditionalStatus,
    updated: i64,
    order_id: Option<OrderId>,
    reason: Option<super::event::CancelReason>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct NewConditionalV5 {
    user: UserId,
    side: Side,
    kind: super::conditional::ConditionalKind,
    trigger: Ticks,
    working: super::conditional::WorkingPrice,
    price: Option<Ticks>,
    tif: super::command::TimeInForce,
    quantity: super::units::Lots,
    close_position: bool,
    reduce_only: bool,
    client_order_id: Option<ClientOrderId>,
    timestamp: i64,
}

impl From<ConditionalV5> for super::conditional::Conditional {
    fn from(v: ConditionalV5) -> Self {
        let o = v.order;
        Self {
            id: v.id,
            order: super::conditional::NewConditional {
                user: o.user,
                side: o.side,
                kind: o.kind,
                trigger: o.trigger,
                working: o.working,
                price: o.price,
                tif: o.tif,
                quantity: o.quantity,
                close_position: o.close_position,
                reduce_only: o.reduce_only,
                client_order_id: o.client_order_id,
                timestamp: o.timestamp,
                callback: 0,
            },
            status: v.status,
            updated: v.updated,
            order_id: v.order_id,
            reason: v.reason,
            extreme: None,
        }
    }
}

/// The perpetual's state as version 2 held it.
#[derive(Deserialize)]
struct PerpV2 {
    index: Option<Ticks>,
    mark: Option<Ticks>,
    traded_since_index: bool,
    fund: i128,
    premium_sum: i128,
    premium_samples: u64,
    last_funding_rate: i64,
    last_funding_time: i64,
    _pending: bool,
}

impl From<PerpV2> for Perp {
    fn from(v: PerpV2) -> Self {
        Self {
            index: v.index,
            mark: v.mark,
            traded_since_index: v.traded_since_index,
            fund: v.fund,
            premium_sum: v.premium_sum,
            premium_samples: v.premium_samples,
            last_funding_rate: v.last_funding_rate,
            last_funding_time: v.last_funding_time,
            ..Self::default()
        }
    }
}

impl Market {
    /// The market's state as snapshot bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        let orders = [Side::Buy, Side::Sell]
            .into_iter()
            .flat_map(|side| self.book.iter(side))
            .map(|o| (*o, self.client_id_of.get(&o.id).copied()))
            .collect();
        let mut leverage: Vec<(UserId, u32)> = self.leverage.iter().map(|(u, l)| (*u, *l)).collect();
        leverage.sort_unstable();
        let mut countdowns: Vec<(UserId, i64)> = self.countdowns.iter().map(|(u, d)| (*u, *d)).collect();
        countdowns.sort_unstable();
        let mut expiries: Vec<(OrderId, i64)> = self.expiries.iter().map(|(o, t)| (*o, *t)).collect();
        expiries.sort_unstable();
        let (open, closed) = self.conditionals.parts();
        let state = StateV5::<super::conditional::Conditional> {
            state: StateV4 {
                state: StateV2 {
                    market: StateV1 { symbol: self.spec.name.clone(), seq: self.seq, last_price: self.last_price, orders, positions: self.positions() },
                    perp: self.perp.clone(),
                },
                leverage,
                countdowns,
                expiries,
            },
            open,
            closed,
        };
        let mut out = Vec::with_capacity(64 + state.state.state.market.orders.len() * 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        // Serializing plain owned data into a Vec cannot fail.
        postcard::to_io(&state, &mut out).map(|_| ()).unwrap_or_else(|e| unreachable!("postcard: {e}"));
        out
    }

    /// Rebuilds a market from snapshot bytes taken of the symbol `spec` describes.
    ///
    /// # Errors
    /// [`SnapshotError`] when the bytes are not a readable snapshot of this symbol.
    pub fn restore(spec: SymbolSpec, bytes: &[u8]) -> Result<Self, SnapshotError> {
        let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or(SnapshotError::BadMagic)?;
        let (version, body) = rest.split_first_chunk::<2>().ok_or(SnapshotError::BadMagic)?;
        let corrupt = |e: postcard::Error| SnapshotError::Corrupt(e.to_string());
        let v4 = |v4: StateV4| (v4.state.market, v4.state.perp, Some((v4.leverage, v4.countdowns, v4.expiries)));
        let (state, perp, v4, v5) = match u16::from_le_bytes(*version) {
            1 => (postcard::from_bytes::<StateV1>(body).map_err(corrupt)?, Perp::default(), None, None),
            2 => {
                let v2: StateV2<PerpV2> = postcard::from_bytes(body).map_err(corrupt)?;
                (v2.market, v2.perp.into(), None, None)
            }
            3 => {
                let v3: StateV2<Perp> = postcard::from_bytes(body).map_err(corrupt)?;
                (v3.market, v3.perp, None, None)
            }
            4 => {
                let (market, perp, settings) = v4(postcard::from_bytes(body).map_err(corrupt)?);
                (market, perp, settings, None)
            }
            5 => {
                let v5: StateV5<ConditionalV5> = postcard::from_bytes(body).map_err(corrupt)?;
                let (market, perp, settings) = v4(v5.state);
                let new = |all: Vec<ConditionalV5>| all.into_iter().map(Into::into).collect();
                (market, perp, settings, Some((new(v5.open), new(v5.closed))))
            }
            VERSION => {
                let v6: StateV5<super::conditional::Conditional> = postcard::from_bytes(body).map_err(corrupt)?;
                let (market, perp, settings) = v4(v6.state);
                (market, perp, settings, Some((v6.open, v6.closed)))
            }
            other => return Err(SnapshotError::UnsupportedVersion(other)),
        };
        if state.symbol != spec.name {
            return Err(SnapshotError::WrongSymbol { found: state.symbol, expected: spec.name });
        }
        let mut market = Market::new(spec);
        market.seq = state.seq;
        market.last_price = state.last_price;
        market.perp = perp;
        for (order, cid) in state.orders {
            if market.book.contains(order.id) || order.has_client_order_id != cid.is_some() {
                return Err(SnapshotError::Corrupt(format!("order {:?} is inconsistent", order.id)));
            }
            market.book.insert(order);
            if let Some(cid) = cid {
                market.client_ids.insert((order.user, cid), order.id);
                market.client_id_of.insert(order.id, cid);
            }
        }
        market.positions = state.positions.into_iter().collect();
        if let Some((leverage, countdowns, expiries)) = v4 {
            market.leverage = leverage.into_iter().collect();
            market.countdowns = countdowns.into_iter().collect();
            for (id, at) in expiries {
                if !market.book.contains(id) {
                    return Err(SnapshotError::Corrupt(format!("order {id:?} expires but does not rest")));
                }
                market.expiries.insert(id, at);
            }
        }
        if let Some((open, closed)) = v5 {
            market.conditionals = super::conditional::Conditionals::from_parts(open, closed).map_err(SnapshotError::Corrupt)?;
        }
        Ok(market)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::conditional::{Conditional, ConditionalKind, NewConditional, WorkingPrice};
    use crate::engine::symbol::btc;
    use crate::engine::{Command, TimeInForce};

    /// A snapshot taken before trailing stops (version 5) restores with its conditional
    /// orders as they were.
    #[test]
    fn a_version_5_snapshot_restores_its_conditional_orders() {
        let mut market = Market::new(btc());
        let stop = NewConditional {
            user: UserId(7),
            side: Side::Sell,
            kind: ConditionalKind::Stop,
            trigger: 90,
            working: WorkingPrice::Mark,
            price: Some(89),
            tif: TimeInForce::Gtc,
            quantity: 2,
            close_position: false,
            reduce_only: true,
            client_order_id: None,
            timestamp: 3,
            callback: 0,
        };
        market.execute(&Command::PlaceConditional(stop), &mut Vec::new()).unwrap();
        let now = market.snapshot();
        let body = &now[MAGIC.len() + 2..];
        let v6: StateV5<Conditional> = postcard::from_bytes(body).unwrap();
        let old = |c: &Conditional| ConditionalV5 {
            id: c.id,
            order: NewConditionalV5 {
                user: c.order.user,
                side: c.order.side,
                kind: c.order.kind,
                trigger: c.order.trigger,
                working: c.order.working,
                price: c.order.price,
                tif: c.order.tif,
                quantity: c.order.quantity,
                close_position: c.order.close_position,
                reduce_only: c.order.reduce_only,
                client_order_id: c.order.client_order_id,
                timestamp: c.order.timestamp,
            },
            status: c.status,
            updated: c.updated,
            order_id: c.order_id,
            reason: c.reason,
        };
        let v5 = StateV5 { open: v6.open.iter().map(old).collect(), closed: v6.closed.iter().map(old).collect(), state: v6.state };
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&5u16.to_le_bytes());
        bytes.extend_from_slice(&postcard::to_allocvec(&v5).unwrap());
        let restored = Market::restore(btc(), &bytes).unwrap();
        assert_eq!(restored.snapshot(), now);
        assert_eq!(restored.conditionals().open().map(|c| c.order).collect::<Vec<_>>(), [stop]);
    }
}
