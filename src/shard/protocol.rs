//! Messages between shards. Everything a shard owns is reached only through these.

use crate::engine::units::Units;
use crate::engine::{ClientOrderId, Event, NewOrder, OrderId, UserId};

/// A response ready for the client: status, JSON body, and `Retry-After` for 429.
#[derive(Clone, Debug)]
pub struct HttpReply {
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after: Option<u32>,
}

/// How a client names one of its orders.
#[derive(Clone, Copy, Debug)]
pub enum OrderRef {
    /// Engine order number, with the symbol key from its UUID.
    Id(OrderId, u32),
    Client(ClientOrderId),
}

/// A parsed API request, sent to the shard that can answer it.
#[derive(Clone, Debug)]
pub enum ApiRequest {
    /// To the symbol's owner, which runs the whole order path.
    PlaceOrder { key: String, symbol: usize, order: NewOrder },
    /// The rest go to the owner of the key's account, except market data.
    CancelOrder { key: String, target: OrderRef },
    CancelAll { key: String, symbol: Option<usize> },
    GetOrder { key: String, target: OrderRef },
    OpenOrders { key: String, symbol: Option<usize> },
    Fills { key: String, symbol: Option<usize>, limit: usize },
    /// From cold storage; `before`: only orders created before this time (ms).
    History { key: String, symbol: Option<usize>, limit: usize, before: Option<i64> },
    Balance { key: String },
    Positions { key: String },
    CreateUser { name: String },
    Transfer { name: String, amount: Units, transfer_id: String },
    /// To the symbol's owner.
    Depth { symbol: usize, limit: usize },
    Trades { symbol: usize, limit: usize },
}

#[derive(Debug)]
pub enum Request {
    Api(ApiRequest),
    /// Risk step on the account owner: authenticate, rate-limit, check and lock.
    Reserve { key: String, order: NewOrder, symbol: usize },
    /// The order could not be logged: unlock.
    Release { order: NewOrder },
    /// A symbol's results of the command at `offset`, in log order, for the users owned
    /// by the receiver. With no events and `snapshot`, it says the symbol was just
    /// snapshotted at `offset + 1`: time for the receiver to snapshot its accounts.
    Apply { symbol: usize, offset: u64, logged: Option<NewOrder>, replayed: bool, events: Vec<Event>, snapshot: bool },
    /// Log and execute a cancel on the symbol's owner.
    Cancel { symbol: usize, user: UserId, id: OrderId },
    CancelAll { symbol: usize, user: UserId },
    /// Last trade prices of the symbols the receiver owns.
    LastPrices,
    /// One consistency check of the receiver's users.
    Check,
}

#[derive(Debug)]
pub enum ReserveError {
    Unauthorized,
    RateLimited,
    /// clientOrderId already used: the original order, rendered.
    Duplicate(HttpReply),
    InsufficientMargin,
}

#[derive(Debug)]
pub enum Reply {
    Http(HttpReply),
    Reserved(Result<NewOrder, ReserveError>),
    Done,
    /// Ids cancelled, or `None` if the order was not open; `Err` if the log is down.
    Cancelled(Result<Option<Vec<OrderId>>, super::stream::NotLogged>),
    LastPrices(Vec<(usize, Option<i64>)>),
    Checked(Result<super::hot::CheckReport, String>),
}

#[derive(Debug)]
pub enum Message {
    Request { from: usize, id: u64, body: Request },
    Reply { id: u64, body: Reply },
}
