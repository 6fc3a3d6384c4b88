//! Messages between shards. Everything a shard owns is reached only through these.
//!
//! Shards speak the domain: an [`ApiRequest`] is answered with an [`Answer`] or a
//! [`Refusal`]; turning those into status codes and JSON is the HTTP layer's (`api`).

use std::time::Instant;

use crate::accounts::{AdminError, Fill, Income, IncomeKind, OrderView};
use crate::engine::units::Units;
use crate::engine::{ClientOrderId, Event, NewOrder, OrderId, PositionState, UserId};
pub use super::tape::{Candle, FundingRate, Interval, PublicTrade};

/// Which price candles follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KlinePrice {
    Trade,
    Mark,
    Index,
}

/// Why a command was not executed.
#[derive(Clone, Debug)]
pub enum NotLogged {
    /// It is not in the log and never will be, whatever crashes: 503.
    Refused(String),
    /// The log did not confirm it and it may still land: 504.
    Unknown(String),
}

/// Up to 20 price levels a side (ticks, lots), best first.
pub type Levels = Vec<(i64, i64)>;

/// What one consistency check found and repaired.
#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub users: usize,
    pub repaired: Vec<Repair>,
}

#[derive(Debug, serde::Serialize)]
pub struct Repair {
    /// Account id (the 16 hex digits of the user's API key).
    pub user: String,
    pub found: Vec<String>,
}

/// How a client names one of its orders.
#[derive(Clone, Copy, Debug)]
pub enum OrderRef {
    /// Engine order number, with the symbol key from its UUID.
    Id(OrderId, u32),
    Client(ClientOrderId),
}

/// A parsed API request, sent to the shard that can answer it: the owner of a symbol
/// (its room of symbols answers) or of an account (its room of accounts).
#[derive(Clone, Debug)]
pub enum ApiRequest {
    Symbol(SymbolRequest),
    Account(AccountRequest),
}

/// What the owner of a symbol answers.
#[derive(Clone, Debug)]
pub enum SymbolRequest {
    /// The whole order path runs from here.
    PlaceOrder { key: String, symbol: usize, order: NewOrder },
    Depth { symbol: usize, limit: usize },
    Trades { symbol: usize, limit: usize },
    /// Up to `limit` candles, oldest first (see [`crate::shard::tape::Candles::klines`]).
    Klines { symbol: usize, price: KlinePrice, interval: Interval, start: Option<i64>, end: Option<i64>, limit: usize },
    /// Up to `limit` settled funding rounds, oldest first.
    FundingHistory { symbol: usize, start: Option<i64>, end: Option<i64>, limit: usize },
    /// The last 24 hours' trades and the last trade.
    Ticker { symbol: usize },
    /// Log the key's user's leverage setting.
    SetLeverage { key: String, symbol: usize, leverage: u32 },
    /// A user's leverage setting (the asker checked their key's signature).
    Leverage { symbol: usize, user: UserId },
    /// Log the key's user's countdown (0: off).
    Countdown { key: String, symbol: usize, after_ms: i64 },
    PremiumIndex { symbol: usize },
    /// Admin: log an index price.
    IndexPrice { symbol: usize, price: i64 },
    /// Admin: settle funding now.
    Funding { symbol: usize },
    /// Log the key's user's conditional order (user and time are set by the owner).
    PlaceConditional { key: String, symbol: usize, order: crate::engine::NewConditional },
    /// The key's user's open conditional orders (`closed`: and the closed ones remembered).
    Conditionals { key: String, symbol: usize, closed: bool },
    GetConditional { key: String, symbol: usize, target: ConditionalRef },
    /// Cancel one waiting conditional order, or (`None`) all of the user's on the symbol.
    CancelConditional { key: String, symbol: usize, target: Option<ConditionalRef> },
}

/// How a client names one of its conditional orders on a symbol.
#[derive(Clone, Copy, Debug)]
pub enum ConditionalRef {
    /// The number in its UUID.
    Id(u64),
    Client(ClientOrderId),
}

/// What the owner of the key's (or name's) account answers.
#[derive(Clone, Debug)]
pub enum AccountRequest {
    CancelOrder { key: String, target: OrderRef },
    /// A new price and/or total quantity for an open LIMIT order (decimals: the owner
    /// converts them with the order's symbol).
    AmendOrder { key: String, target: OrderRef, price: Option<rust_decimal::Decimal>, quantity: Option<rust_decimal::Decimal> },
    CancelAll { key: String, symbol: Option<usize> },
    GetOrder { key: String, target: OrderRef },
    OpenOrders { key: String, symbol: Option<usize> },
    /// Open orders and the latest closed ones the ledger keeps, oldest first.
    AllOrders { key: String, symbol: Option<usize> },
    Fills { key: String, symbol: Option<usize>, limit: usize },
    /// Whose key it is (order history, read from cold storage by the asker).
    Authenticate { key: String },
    Balance { key: String },
    Positions { key: String },
    CreateUser { name: String },
    Transfer { name: String, amount: Units, transfer_id: String },
    /// The user's money movements, newest first.
    Income { key: String, symbol: Option<usize>, kind: Option<IncomeKind>, limit: usize },
}

/// A symbol's prices and insurance fund, as its owner has them.
#[derive(Clone, Copy, Debug, Default)]
pub struct MarketPrices {
    pub last: Option<i64>,
    pub index: Option<i64>,
    pub mark: Option<i64>,
    pub fund: i128,
}

impl MarketPrices {
    /// The one price open positions are valued at: the mark, or else the last trade.
    pub fn valuation(&self) -> Option<i64> {
        self.mark.or(self.last)
    }
}

impl ApiRequest {
    /// Whether answering it changes state (locks margin, logs a command): such work is
    /// finished, or undone, even when the client that asked has gone.
    pub fn changes_state(&self) -> bool {
        match self {
            Self::Symbol(r) => matches!(
                r,
                SymbolRequest::PlaceOrder { .. } | SymbolRequest::IndexPrice { .. } | SymbolRequest::Funding { .. }
                    | SymbolRequest::SetLeverage { .. }
                    | SymbolRequest::Countdown { .. }
                    | SymbolRequest::PlaceConditional { .. }
                    | SymbolRequest::CancelConditional { .. }
            ),
            Self::Account(r) => matches!(
                r,
                AccountRequest::CancelOrder { .. }
                    | AccountRequest::AmendOrder { .. }
                    | AccountRequest::CancelAll { .. } | AccountRequest::CreateUser { .. } | AccountRequest::Transfer { .. }
            ),
        }
    }

    /// Whose key it is, asked of the account's owner.
    pub fn authenticate(key: &str) -> Self {
        Self::Account(AccountRequest::Authenticate { key: key.to_owned() })
    }
}

/// What a shard answers an [`ApiRequest`] with.
#[derive(Debug)]
pub enum Answer {
    Order(OrderView),
    Orders(Vec<OrderView>),
    /// Newest first.
    Fills(Vec<Fill>),
    Balance { total: i128, available: i128, locked: i128 },
    /// Open positions, each with its symbol's prices.
    Positions(Vec<(usize, PositionState, MarketPrices)>),
    Income(Vec<Income>),
    /// An index price logged, or the premium index asked for.
    /// `next_funding`: the first funding time after `time` not yet settled.
    PremiumIndex { symbol: usize, index: Option<i64>, mark: Option<i64>, last_funding_rate: i64, time: i64, next_funding: i64 },
    /// A funding round settled.
    Funding { symbol: usize, rate: i64, mark: Option<i64>, time: i64, positions: u64 },
    /// Price levels (ticks, lots), best first.
    Depth { symbol: usize, seq: u64, bids: Vec<(i64, i64)>, asks: Vec<(i64, i64)> },
    /// Newest first.
    Trades { symbol: usize, trades: Vec<PublicTrade> },
    /// Oldest first.
    Klines { symbol: usize, interval: Interval, candles: Vec<Candle> },
    /// Oldest first.
    FundingHistory { symbol: usize, rounds: Vec<FundingRate> },
    /// `day`: the last 24 hours' trades as one candle (none: no trade in them).
    Ticker { symbol: usize, day: Option<Candle>, last: Option<PublicTrade>, time: i64 },
    /// Orders cancelled, by symbol.
    Cancelled(Vec<(usize, OrderId)>),
    /// `api_secret`: the key's secret for Binance-style signing (shown this once).
    UserCreated { name: String, api_key: String, api_secret: String },
    User(UserId),
    /// A leverage setting logged.
    Leverage { symbol: usize, leverage: u32 },
    /// A countdown logged.
    Countdown { symbol: usize, after_ms: i64 },
    Conditional { symbol: usize, conditional: crate::engine::Conditional },
    /// Oldest first.
    Conditionals { symbol: usize, list: Vec<crate::engine::Conditional> },
}

/// Why a shard did not do what an [`ApiRequest`] asked.
#[derive(Debug)]
pub enum Refusal {
    Unauthorized,
    UnknownSymbol,
    NotFound,
    OrderNotOpen,
    InsufficientMargin,
    TooManyOpenOrders,
    PositionLimit,
    RateLimited,
    ReduceOnlyRejected,
    /// A leverage setting outside 1 to the symbol's maximum.
    InvalidLeverage,
    /// A countdown outside 0 to a day.
    InvalidCountdown,
    /// The engine did not amend the order.
    AmendRefused(crate::engine::AmendRefusal),
    /// A value the request cannot have, said in words.
    Invalid(String),
    /// A LIMIT price outside the band around the mark.
    PriceOutOfBand,
    /// Funding for this funding time is already settled.
    FundingSettled,
    /// The index is stale: no funding.
    IndexStale,
    /// The order's margin does not fit the ledger's integers.
    TooLarge,
    Admin(AdminError),
    /// The log did not take the command (or may have: see [`NotLogged`]).
    NotLogged(NotLogged),
    /// Another core, or a store, did not answer.
    Unavailable(String),
    /// A conditional order the engine did not accept.
    Conditional(crate::engine::ConditionalRefusal),
}

impl From<NotLogged> for Refusal {
    fn from(e: NotLogged) -> Self {
        Self::NotLogged(e)
    }
}

#[derive(Debug)]
pub enum Request {
    Api(ApiRequest),
    /// Risk step on the account owner: authenticate, rate-limit, check and lock. No
    /// key: the order of a triggered conditional order, placed for `order.user`.
    Reserve { key: Option<String>, order: NewOrder, symbol: usize },
    /// The order could not be logged: unlock.
    Release { order: NewOrder },
    /// The log may still have the order (504): keep its lock until a `Release` or a restart.
    Hold { user: UserId, id: OrderId },
    /// A symbol's results of the command at `offset`, in log order, for the users owned
    /// by the receiver. With no events and `snapshot`, it says the symbol was just
    /// snapshotted at `offset + 1`: time for the receiver to snapshot its accounts.
    Apply { symbol: usize, offset: u64, logged: Option<NewOrder>, replayed: bool, events: Vec<Event>, snapshot: bool },
    /// Log and execute a cancel on the symbol's owner.
    Cancel { symbol: usize, user: UserId, id: OrderId },
    /// Price, reserve, log and execute an amendment on the symbol's owner (`None`: as now).
    Amend { symbol: usize, user: UserId, id: OrderId, price: Option<i64>, quantity: Option<i64> },
    /// An amendment's risk step on the account owner: rate limit, lock `added`.
    ReserveAmend { user: UserId, id: OrderId, added: Units },
    /// The amendment was executed, or never will be: its reservation ends.
    SettleAmend { user: UserId, id: OrderId, added: Units },
    CancelAll { symbol: usize, user: UserId },
    /// Prices and insurance funds of the symbols the receiver owns.
    Prices,
    /// One consistency check of the receiver's users.
    Check,
    /// The money of the receiver's users, summed.
    Summary,
}

/// A message for another core's stream connections: one way, never answered.
#[derive(Debug)]
pub enum Notice {
    /// What some core follows of a symbol, and when its owner handed it over (where a
    /// stream message's delay starts: `exchange_stream_delay_seconds`).
    Market(MarketNews, Instant),
    /// A user's stream messages, and when its account owner handed them over.
    User { user: UserId, messages: UserMessages, at: Instant },
    /// Notices from the sender were dropped (the receiver was that far behind): its
    /// stream connections cannot be told everything and are closed, to reconnect.
    Lost,
}

/// The levels of a book that changed between two of its events, at their quantities after
/// the later one (0: the level is gone): Binance's diff depth (`U`, `u`, `pu`). `first` is
/// `previous + 1`, so that consecutive diffs chain, and one whose range holds a depth
/// read's `seq` brings that read up to date.
#[derive(Clone, Debug)]
pub struct BookDiff {
    pub first: u64,
    pub last: u64,
    pub previous: u64,
    /// When it was read (ms).
    pub time: i64,
    pub bids: Levels,
    pub asks: Levels,
}

/// What the streams are handed of a symbol: its public trades (in log order) and, when
/// some core follows them, its top levels after a change (at most once a flush tick),
/// the levels that changed (at most once every 100 ms: the diff depth), and its prices
/// when an index price or a funding round moved them.
#[derive(Clone, Debug, Default)]
pub struct MarketNews {
    pub symbol: usize,
    pub trades: Vec<PublicTrade>,
    pub depth: Option<Depth>,
    pub diff: Option<BookDiff>,
    pub prices: Option<MarkPrices>,
}

impl MarketNews {
    pub fn is_empty(&self) -> bool {
        self.trades.is_empty() && self.depth.is_none() && self.diff.is_none() && self.prices.is_none()
    }
}

/// A symbol's index and mark price, its last funding rate and its next funding time.
#[derive(Clone, Copy, Debug)]
pub struct MarkPrices {
    pub index: Option<i64>,
    pub mark: Option<i64>,
    pub last_funding_rate: i64,
    pub next_funding: i64,
    pub time: i64,
}

/// A user's stream messages for one batch of results, rendered by the account's owner in
/// each dialect somebody follows (an empty list for one nobody does).
#[derive(Clone, Debug, Default)]
pub struct UserMessages {
    pub native: Vec<String>,
    pub binance: Vec<String>,
}

/// A book's top levels after the event numbered `seq`.
#[derive(Clone, Debug)]
pub struct Depth {
    pub seq: u64,
    pub bids: Levels,
    pub asks: Levels,
}

#[derive(Debug)]
pub enum ReserveError {
    Unauthorized,
    RateLimited,
    /// clientOrderId already used: the original order (`None`: still being placed).
    Duplicate(Option<Box<OrderView>>),
    InsufficientMargin,
    TooManyOpenOrders,
    PositionLimit,
}

#[derive(Debug)]
pub enum Reply {
    Api(Result<Answer, Refusal>),
    Reserved(Result<NewOrder, ReserveError>),
    AmendReserved(Result<(), ReserveError>),
    Amended(Result<(), Refusal>),
    Done,
    /// Ids cancelled, or `None` if the order was not open; `Err` if the log is down.
    Cancelled(Result<Option<Vec<OrderId>>, NotLogged>),
    Prices(Vec<(usize, MarketPrices)>),
    Checked(Result<CheckReport, String>),
    Summary(crate::accounts::Totals),
}

#[derive(Debug)]
pub enum Message {
    Request { from: usize, id: u64, body: Request },
    /// A request nobody waits for (results for the core a command's answer goes to,
    /// which arrive before that answer on the same ring). Never dropped.
    Tell(Request),
    Reply { id: u64, body: Reply },
    Notice(Notice),
}
