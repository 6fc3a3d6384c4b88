//! What the engine is asked to do: the commands of the event log.
//!
//! A command carries everything the engine needs to decide, including the timestamp and
//! the margin the risk step already locked, so that executing it depends on nothing but
//! the book's state. Replaying the same commands therefore yields the same events.

use serde::{Deserialize, Serialize};

use super::conditional::NewConditional;
use super::units::{Lots, Ticks, Units};

/// An order id, unique across the exchange, minted before the order is logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderId(pub u64);

/// An account number. The public user name maps to it outside the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn opposite(self) -> Self {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }

    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "BUY",
            Side::Sell => "SELL",
        }
    }

    /// +1 for a buy, −1 for a sell: the sign a fill adds to a position.
    pub fn sign(self) -> i128 {
        match self {
            Side::Buy => 1,
            Side::Sell => -1,
        }
    }

    /// Whether a resting order at `resting` is acceptable to an order of this side
    /// limited at `limit`.
    pub fn accepts(self, limit: Ticks, resting: Ticks) -> bool {
        match self {
            Side::Buy => resting <= limit,
            Side::Sell => resting >= limit,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TimeInForce {
    /// Good till cancelled: the unfilled rest rests.
    Gtc,
    /// Immediate or cancel: the unfilled rest is cancelled.
    Ioc,
    /// Fill or kill: fills entirely now or is rejected.
    Fok,
    /// Rejected if any part would match on arrival.
    PostOnly,
}

impl TimeInForce {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeInForce::Gtc => "GTC",
            TimeInForce::Ioc => "IOC",
            TimeInForce::Fok => "FOK",
            TimeInForce::PostOnly => "POST_ONLY",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Gtc, Self::Ioc, Self::Fok, Self::PostOnly].into_iter().find(|t| t.as_str() == text)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OrderType {
    Limit { price: Ticks, tif: TimeInForce },
    /// Fills now within the protection band as it is when the command executes; the rest
    /// is cancelled. Only in records logged before [`OrderType::MarketWithin`] existed
    /// (and in requests, before the risk step prices them).
    Market,
    /// A MARKET order as the risk step logs it: `limit` is the band price its margin was
    /// locked at, and it never fills beyond it (nor beyond the band when it executes).
    MarketWithin { limit: Ticks },
    /// The exchange closing a position it liquidates: an IOC order no worse than the
    /// position's bankruptcy `price`. Minted by the engine, never logged as a command.
    Liquidation { price: Ticks },
}

impl OrderType {
    pub fn is_market(self) -> bool {
        matches!(self, Self::Market | Self::MarketWithin { .. })
    }
}

/// A client-chosen id: 1–36 bytes of `[A-Za-z0-9._:/-]`, stored inline (no allocation).
/// Serialized as its text, and validated again when read back.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientOrderId {
    len: u8,
    bytes: [u8; 36],
}

impl ClientOrderId {
    /// # Errors
    /// When the text is empty, longer than 36 bytes or has a character outside the set.
    pub fn new(text: &str) -> Result<Self, InvalidClientOrderId> {
        let ok = (1..=36).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b));
        if !ok {
            return Err(InvalidClientOrderId);
        }
        let mut bytes = [0; 36];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Ok(Self { len: text.len() as u8, bytes })
    }

    pub fn as_str(&self) -> &str {
        // Constructed only from validated ASCII.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl Serialize for ClientOrderId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ClientOrderId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::new(&text).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Debug for ClientOrderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("clientOrderId must be 1-36 characters of A-Z a-z 0-9 . _ : / -")]
pub struct InvalidClientOrderId;

/// A new order as logged (`OrderSubmitted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    pub id: OrderId,
    pub user: UserId,
    pub side: Side,
    pub kind: OrderType,
    pub quantity: Lots,
    pub leverage: u32,
    pub reduce_only: bool,
    pub client_order_id: Option<ClientOrderId>,
    /// Margin the risk step locked for this order; the engine releases or moves exactly it.
    pub locked_margin: Units,
    /// Milliseconds since the Unix epoch, stamped when the order was accepted.
    pub timestamp: i64,
    /// What it does on meeting a resting order of its own user.
    pub stp: SelfTradePrevention,
    /// Good till this time (ms since the epoch; Binance's `GTD`): while resting, it is
    /// cancelled by the first [`Command::ExpireDue`] at or after it. 0: no expiry.
    pub good_till: i64,
}

/// What a taker does when its next fill would meet a resting order of its own user
/// (Binance's `selfTradePreventionMode`). No mode lets a user trade with themself: a
/// self-trade moves no position and would only pay fees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SelfTradePrevention {
    /// The taker's remainder is cancelled; the resting order stays.
    #[default]
    ExpireTaker,
    /// The resting order is cancelled and the taker goes on matching.
    ExpireMaker,
    /// Both are cancelled.
    ExpireBoth,
}

impl SelfTradePrevention {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExpireTaker => "EXPIRE_TAKER",
            Self::ExpireMaker => "EXPIRE_MAKER",
            Self::ExpireBoth => "EXPIRE_BOTH",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::ExpireTaker, Self::ExpireMaker, Self::ExpireBoth].into_iter().find(|m| m.as_str() == text)
    }
}

/// One entry of a symbol's command log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Place(NewOrder),
    /// Cancel one open order of `user`.
    Cancel { id: OrderId, user: UserId, timestamp: i64 },
    /// Cancel every open order of `user` on this symbol.
    CancelAll { user: UserId, timestamp: i64 },
    /// An operator's index (spot) price: the mark price is computed again and every
    /// position checked against it.
    IndexPrice { price: Ticks, timestamp: i64 },
    /// Settle funding at `timestamp` at the rate the market's state gives.
    Funding { timestamp: i64 },
    /// Go on with liquidations a bounded pass left for later.
    Liquidate { timestamp: i64 },
    /// `user`'s leverage for the symbol's orders that name none
    /// ([`LEVERAGE_OF_SETTING`]): Binance's per-symbol setting.
    SetLeverage { user: UserId, leverage: u32, timestamp: i64 },
    /// `user`'s dead man's switch: unless set again within `after_ms` of `timestamp`,
    /// their orders on the symbol are cancelled (by a [`Command::CountdownDue`]); 0
    /// turns it off.
    Countdown { user: UserId, after_ms: i64, timestamp: i64 },
    /// Cancels the orders of every user whose countdown ran out by `timestamp`.
    CountdownDue { timestamp: i64 },
    /// Cancels every resting order good till `timestamp` or before.
    ExpireDue { timestamp: i64 },
    /// Changes a resting LIMIT order of `user` to `price` and a total `quantity` (filled
    /// included). `added_margin`: what the risk step locked on top of the order's lock
    /// for it. See [`crate::engine::Amended`].
    Amend { id: OrderId, user: UserId, price: Ticks, quantity: Lots, added_margin: Units, timestamp: i64 },
    /// A conditional order waits for its trigger (see [`crate::engine::conditional`]).
    PlaceConditional(NewConditional),
    /// Cancels `user`'s waiting conditional order `id`, or all of them on the symbol.
    CancelConditional { id: Option<u64>, user: UserId, timestamp: i64 },
    /// The order a triggered conditional order became, its margin locked by the risk
    /// step: placed if the conditional is still `Triggering`, else refused.
    PlaceTriggered { conditional: u64, order: NewOrder },
    /// A triggered conditional order whose order the risk step refused (`reason`).
    RefuseTriggered { conditional: u64, user: UserId, reason: super::event::CancelReason, timestamp: i64 },
}

/// An order's leverage that says "the user's setting for the symbol". The symbol's owner
/// puts the setting ([`crate::engine::Market::leverage_setting`]) in its place before the
/// order is priced, so no logged order carries it.
pub const LEVERAGE_OF_SETTING: u32 = 0;

/// A user's leverage setting before they make one (Binance's default), at most the
/// symbol's maximum.
pub const DEFAULT_LEVERAGE_SETTING: u32 = 20;

impl Command {
    /// The order it logs (placed now, or once risk-checked for a triggered conditional).
    pub fn order(&self) -> Option<&NewOrder> {
        match self {
            Command::Place(o) | Command::PlaceTriggered { order: o, .. } => Some(o),
            _ => None,
        }
    }

    /// When the command was accepted (milliseconds since the Unix epoch).
    pub fn timestamp(&self) -> i64 {
        match *self {
            Command::Place(o) | Command::PlaceTriggered { order: o, .. } => o.timestamp,
            Command::PlaceConditional(c) => c.timestamp,
            Command::Cancel { timestamp, .. }
            | Command::CancelAll { timestamp, .. }
            | Command::IndexPrice { timestamp, .. }
            | Command::Funding { timestamp }
            | Command::Liquidate { timestamp }
            | Command::SetLeverage { timestamp, .. }
            | Command::Countdown { timestamp, .. }
            | Command::CountdownDue { timestamp }
            | Command::ExpireDue { timestamp }
            | Command::Amend { timestamp, .. }
            | Command::CancelConditional { timestamp, .. }
            | Command::RefuseTriggered { timestamp, .. } => timestamp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_order_ids_are_validated() {
        assert_eq!(ClientOrderId::new("my-1.a:b/c_d").unwrap().as_str(), "my-1.a:b/c_d");
        assert!(ClientOrderId::new("").is_err());
        assert!(ClientOrderId::new(&"x".repeat(37)).is_err());
        assert!(ClientOrderId::new("has space").is_err());
        assert!(ClientOrderId::new("ünï").is_err());
        assert_eq!(ClientOrderId::new(&"x".repeat(36)).unwrap().as_str().len(), 36);
    }
}
