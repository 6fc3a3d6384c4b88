//! The matching engine: pure, deterministic, integer-only.
//!
//! One [`Market`] per symbol holds the order book, the positions on that symbol and the
//! symbol's event sequence. [`Market::execute`] takes a [`Command`] (as logged) and
//! appends [`Event`]s (as published). No I/O, no async, no clock: the shard runtime, the
//! event log and the state stores are built around it and never inside it.
//!
//! Reading order: [`units`] (the integers), [`symbol`] (the only decimal edge),
//! [`command`] and [`event`] (the vocabulary), [`book`] (the data structure),
//! [`position`] (margin and PnL), [`market`] (the rules), [`perp`] (mark price, liquidation,
//! funding), [`snapshot`].

pub mod book;
pub mod command;
pub mod conditional;
pub mod event;
pub mod market;
pub mod perp;
pub mod position;
pub mod snapshot;
pub mod symbol;
pub mod units;

pub use book::{Book, Resting};
pub use command::{ClientOrderId, Command, NewOrder, OrderId, OrderType, SelfTradePrevention, Side, TimeInForce, UserId, DEFAULT_LEVERAGE_SETTING, LEVERAGE_OF_SETTING};
pub use conditional::{Conditional, ConditionalKind, ConditionalRefusal, ConditionalStatus, NewConditional, WorkingPrice};
pub use event::{AmendRefusal, Amended, ConditionalUpdate, CancelReason, Cancelled, Event, FillUpdate, FundingPayment, FundingRound, Liquidated, LiquidationOrder, Placed, PositionState, PriceUpdate, Trade};
pub use market::{CommandError, Market, PriceError, ADL_ORDER, ENGINE_ORDER, MAX_COUNTDOWN_MS};
pub use perp::{Health, Perp};
pub use snapshot::SnapshotError;
pub use symbol::SymbolSpec;
