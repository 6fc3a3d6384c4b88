//! The integers the engine counts in, and the only rounding it does.
//!
//! Inside the engine a price is a whole number of ticks, a quantity a whole number of
//! lots and money a whole number of 1e-8 USDT ("units"). Decimals exist only at the edges
//! (JSON, config, SQL); [`crate::engine::SymbolSpec`] converts between the two and refuses
//! anything that is not an exact multiple.
//!
//! Overflow is ruled out by bounds, not hoped away: an order is accepted only when its
//! quantity is at most [`MAX_LOTS`] and its notional at most [`MAX_NOTIONAL`], and every
//! later number is computed from those in `i128`, where no sequence of accepted orders can
//! reach the limits. Conversions back to `i64` are checked.

/// A price, in ticks of its symbol.
pub type Ticks = i64;
/// A quantity, in lots of its symbol.
pub type Lots = i64;
/// Money, in 1e-8 USDT.
pub type Units = i64;

/// Money units per USDT.
pub const UNITS_PER_USDT: i64 = 100_000_000;
/// Rates (fees, protection band) are fixed-point with this many parts per one.
pub const RATE_ONE: i64 = 100_000_000;

/// Largest quantity a single order may carry, in lots.
pub const MAX_LOTS: Lots = 1_000_000_000_000_000;
/// Largest price, in ticks.
pub const MAX_TICKS: Ticks = 1_000_000_000_000_000;
/// Largest notional (price × quantity) of a single order, in units: 10^9 USDT.
pub const MAX_NOTIONAL: Units = 1_000_000_000 * UNITS_PER_USDT;

/// `a / b` rounded towards positive infinity (`b > 0`).
pub fn div_ceil(a: i128, b: i128) -> i128 {
    debug_assert!(b > 0);
    let q = a.div_euclid(b);
    if a.rem_euclid(b) == 0 { q } else { q + 1 }
}

/// `a / b` rounded towards negative infinity (`b > 0`).
pub fn div_floor(a: i128, b: i128) -> i128 {
    debug_assert!(b > 0);
    a.div_euclid(b)
}

/// Narrows a value the bounds above keep inside `i64`.
///
/// # Panics
/// Only if those bounds are broken, which is a bug in the engine, never an input.
pub fn narrow(v: i128) -> i64 {
    i64::try_from(v).unwrap_or_else(|_| panic!("engine bound broken: {v} does not fit in i64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_directions() {
        assert_eq!(div_ceil(7, 2), 4);
        assert_eq!(div_ceil(6, 2), 3);
        assert_eq!(div_ceil(-7, 2), -3);
        assert_eq!(div_floor(7, 2), 3);
        assert_eq!(div_floor(-7, 2), -4);
        assert_eq!(div_ceil(0, 5), 0);
    }
}
