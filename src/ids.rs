//! Public ids (UUID strings) minted deterministically from engine numbers.
//!
//! An order id is a `u64` inside the engine; a trade id and an event id are the symbol's
//! sequence number. To the outside they are UUIDs (RFC 9562 version 8, "custom") laid out
//! as `kind:16 | symbol key:32 | version | n[63..62] | variant | n[61..0]`, so:
//! - the same command replayed mints the same ids, on any machine;
//! - an order id names its symbol, so a cancel can be routed to the owning shard with no
//!   lookup;
//! - a UUID that is not ours parses to `None` (an unknown id, answered 404).

use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum IdKind {
    Order = 0x0e01,
    Trade = 0x0e02,
    Event = 0x0e03,
    /// A logged command (`orders.submitted`), numbered per symbol.
    Command = 0x0e04,
    /// An account record (`accounts.adjusted`), numbered per account partition.
    Account = 0x0e05,
    /// A conditional order, numbered by the symbol's sequence.
    Conditional = 0x0e06,
}

/// The UUID of `n` of the given kind on the symbol with `symbol_key`.
pub fn encode(kind: IdKind, symbol_key: u32, n: u64) -> Uuid {
    let v = (u128::from(kind as u16) << 112)
        | (u128::from(symbol_key) << 80)
        | (0x8 << 76)
        | (u128::from(n >> 62) << 64)
        | (0b10 << 62)
        | u128::from(n & ((1 << 62) - 1));
    Uuid::from_u128(v)
}

/// The `(symbol key, n)` inside a UUID of the given kind, or `None` if it is not one.
pub fn decode(kind: IdKind, id: &Uuid) -> Option<(u32, u64)> {
    let v = id.as_u128();
    let ours = (v >> 112) as u16 == kind as u16
        && (v >> 76) & 0xf == 0x8
        && (v >> 66) & 0x3ff == 0
        && (v >> 62) & 0b11 == 0b10;
    ours.then(|| {
        let n = (((v >> 64) & 0b11) as u64) << 62 | (v as u64 & ((1 << 62) - 1));
        ((v >> 80) as u32, n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_foreign_ids() {
        for n in [0, 1, 42, u64::MAX, 1 << 62, (1 << 63) + 5] {
            let id = encode(IdKind::Order, 0xdead_beef, n);
            assert_eq!(id.get_version_num(), 8);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(decode(IdKind::Order, &id), Some((0xdead_beef, n)));
            assert_eq!(decode(IdKind::Trade, &id), None);
            let text = id.to_string();
            assert_eq!(decode(IdKind::Order, &text.parse().unwrap()), Some((0xdead_beef, n)));
        }
        let random: Uuid = "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap();
        assert_eq!(decode(IdKind::Order, &random), None);
    }
}
