//! The API's errors and their one mapping to HTTP status and JSON code.

use super::HttpReply;
use crate::accounts::AdminError;
use crate::shard::protocol::Refusal;
use crate::shard::protocol::NotLogged;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    InvalidRequest(String),
    /// A body past `limits.max_body_bytes`: 413, code `INVALID_REQUEST` (API.md's code
    /// for "body too large", with HTTP's own status).
    BodyTooLarge(usize),
    /// Request headers past the limits: 431, code `INVALID_REQUEST`.
    HeadersTooLarge(String),
    UnknownSymbol,
    Unauthorized,
    NotFound,
    OrderNotOpen,
    UserExists,
    TransferConflict,
    InsufficientMargin,
    InsufficientBalance,
    ReduceOnlyRejected,
    PriceOutOfBand,
    TooManyOpenOrders,
    PositionLimit,
    RateLimited,
    /// A client address holds its share of stream connections: 429 `RATE_LIMITED`.
    StreamsPerAddress(usize),
    /// A funding time already settled, or no fresh index to settle it at.
    FundingRefused(&'static str),
    Unavailable(String),
    /// The event log did not confirm and the command may still land.
    StatusUnknown(String),
    MethodNotAllowed,
    /// An amendment the engine did not make (unchanged, would trade, invalid).
    AmendRefused(crate::engine::AmendRefusal),
    /// A conditional order whose trigger the price has already reached.
    WouldTrigger,
    /// The most conditional orders a user may have waiting on a symbol are waiting.
    TooManyConditionals,
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidRequest(_) | Self::UnknownSymbol | Self::PriceOutOfBand | Self::AmendRefused(_) | Self::WouldTrigger => 400,
            Self::BodyTooLarge(_) => 413,
            Self::HeadersTooLarge(_) => 431,
            Self::Unauthorized => 401,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::OrderNotOpen | Self::UserExists | Self::TransferConflict | Self::FundingRefused(_) => 409,
            Self::InsufficientMargin | Self::InsufficientBalance | Self::ReduceOnlyRejected | Self::TooManyOpenOrders | Self::PositionLimit | Self::TooManyConditionals => 422,
            Self::RateLimited | Self::StreamsPerAddress(_) => 429,
            Self::Unavailable(_) => 503,
            Self::StatusUnknown(_) => 504,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) | Self::BodyTooLarge(_) | Self::HeadersTooLarge(_) | Self::AmendRefused(_) => "INVALID_REQUEST",
            Self::UnknownSymbol => "UNKNOWN_SYMBOL",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::OrderNotOpen => "ORDER_NOT_OPEN",
            Self::UserExists => "USER_EXISTS",
            Self::TransferConflict => "TRANSFER_CONFLICT",
            Self::InsufficientMargin => "INSUFFICIENT_MARGIN",
            Self::InsufficientBalance => "INSUFFICIENT_BALANCE",
            Self::ReduceOnlyRejected => "REDUCE_ONLY_REJECTED",
            Self::PriceOutOfBand => "PRICE_OUT_OF_BAND",
            Self::FundingRefused(_) => "FUNDING_REFUSED",
            Self::TooManyOpenOrders | Self::TooManyConditionals => "TOO_MANY_OPEN_ORDERS",
            Self::WouldTrigger => "WOULD_TRIGGER_IMMEDIATELY",
            Self::PositionLimit => "POSITION_LIMIT",
            Self::RateLimited | Self::StreamsPerAddress(_) => "RATE_LIMITED",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::StatusUnknown(_) => "STATUS_UNKNOWN",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::InvalidRequest(m) | Self::HeadersTooLarge(m) => m.clone(),
            Self::AmendRefused(crate::engine::AmendRefusal::Unchanged) => "the order already has this price and quantity".into(),
            Self::AmendRefused(crate::engine::AmendRefusal::WouldTake) => "the new price meets the other side: an amendment never trades".into(),
            Self::AmendRefused(_) => "the amended price or quantity is invalid (a quantity must exceed what is filled)".into(),
            Self::BodyTooLarge(limit) => format!("body larger than {limit} bytes"),
            Self::UnknownSymbol => "symbol is not listed".into(),
            Self::Unauthorized => "missing or invalid key".into(),
            Self::NotFound => "not found".into(),
            Self::MethodNotAllowed => "method not allowed on this path".into(),
            Self::OrderNotOpen => "order is not open".into(),
            Self::UserExists => "user already exists".into(),
            Self::TransferConflict => "transferId was already used for a different transfer".into(),
            Self::InsufficientMargin => "available balance is less than the required margin".into(),
            Self::InsufficientBalance => "available balance is less than the withdrawal".into(),
            Self::ReduceOnlyRejected => "reduceOnly order would increase or flip the position".into(),
            Self::PriceOutOfBand => "price is outside the band around the mark price (priceBandDown..priceBandUp in GET /v1/symbols)".into(),
            Self::FundingRefused(why) => (*why).into(),
            Self::TooManyOpenOrders => "the most open orders allowed on this symbol are open".into(),
            Self::TooManyConditionals => format!("at most {} conditional orders may wait on a symbol", crate::engine::conditional::MAX_CONDITIONALS_PER_USER),
            Self::WouldTrigger => "the price the order watches has already reached triggerPrice: it would trigger immediately".into(),
            Self::PositionLimit => "filled, this order and the open ones on its side could take the position past the symbol's limit (see GET /v1/symbols)".into(),
            Self::RateLimited => "order rate limit exceeded".into(),
            Self::StreamsPerAddress(n) => format!("at most {n} stream connections per client address"),
            Self::Unavailable(m) | Self::StatusUnknown(m) => m.clone(),
        }
    }

    /// The JSON body alone.
    pub fn reply_text(&self) -> String {
        self.body().to_string()
    }

    /// `{code, message}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code(), "message": self.message() })
    }

    pub fn reply(&self) -> HttpReply {
        let body = self.body();
        HttpReply {
            status: self.status(),
            body: body.to_string().into_bytes(),
            retry_after: matches!(self, Self::RateLimited | Self::StreamsPerAddress(_)).then_some(1),
            close: matches!(self, Self::BodyTooLarge(_) | Self::HeadersTooLarge(_)),
            content_type: super::JSON,
        }
    }
}

pub fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest(message.into())
}

impl From<NotLogged> for ApiError {
    fn from(e: NotLogged) -> Self {
        match e {
            NotLogged::Refused(m) => Self::Unavailable(m),
            NotLogged::Unknown(m) => {
                Self::StatusUnknown(format!("{m}; the command may still be logged: look it up by its clientOrderId or transferId before retrying"))
            }
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::InvalidName => invalid("userId must be 1-64 characters of A-Z a-z 0-9 . _ - @"),
            AdminError::UserExists => Self::UserExists,
            AdminError::UnknownUser => Self::NotFound,
            AdminError::TransferConflict => Self::TransferConflict,
            AdminError::InsufficientBalance => Self::InsufficientBalance,
            AdminError::InvalidAmount => invalid("invalid amount or transferId"),
            AdminError::BalanceLimit => invalid("the deposit would take the balance past 1000000000000 USDT"),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Unauthorized => Self::Unauthorized,
            Refusal::UnknownSymbol => Self::UnknownSymbol,
            Refusal::NotFound => Self::NotFound,
            Refusal::OrderNotOpen => Self::OrderNotOpen,
            Refusal::InsufficientMargin => Self::InsufficientMargin,
            Refusal::TooManyOpenOrders => Self::TooManyOpenOrders,
            Refusal::PositionLimit => Self::PositionLimit,
            Refusal::RateLimited => Self::RateLimited,
            Refusal::ReduceOnlyRejected => Self::ReduceOnlyRejected,
            Refusal::PriceOutOfBand => Self::PriceOutOfBand,
            Refusal::FundingSettled => Self::FundingRefused("funding for this funding time is already settled"),
            Refusal::IndexStale => Self::FundingRefused("the index price is stale: no funding until a fresh one is posted"),
            Refusal::TooLarge => invalid("order is too large"),
            Refusal::InvalidLeverage => invalid("leverage must be between 1 and the symbol's maxLeverage"),
            Refusal::InvalidCountdown => invalid("countdownTime must be between 0 and 86400000 ms"),
            Refusal::AmendRefused(r) => match r {
                crate::engine::AmendRefusal::NotOpen => Self::OrderNotOpen,
                crate::engine::AmendRefusal::InsufficientMargin => Self::InsufficientMargin,
                crate::engine::AmendRefusal::PriceOutOfBand => Self::PriceOutOfBand,
                other => Self::AmendRefused(other),
            },
            Refusal::Invalid(m) => invalid(m),
            Refusal::Admin(e) => e.into(),
            Refusal::NotLogged(e) => e.into(),
            Refusal::Unavailable(m) => Self::Unavailable(m),
            Refusal::Conditional(r) => match r {
                crate::engine::ConditionalRefusal::WouldTrigger => Self::WouldTrigger,
                crate::engine::ConditionalRefusal::TooMany => Self::TooManyConditionals,
                crate::engine::ConditionalRefusal::DuplicateClientOrderId => invalid("clientOrderId is already used by an open conditional order on this symbol"),
                crate::engine::ConditionalRefusal::Invalid => invalid("triggerPrice, price or quantity is out of range"),
            },
        }
    }
}
