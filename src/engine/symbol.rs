//! A symbol's contract specification and the exact conversions at its edges.
//!
//! This is the only place where decimals meet the engine's integers. Every conversion is
//! exact or an error: a price that is not a multiple of the tick or a quantity that is not
//! a multiple of the lot is refused, never rounded.

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use super::units::{self, Lots, Ticks, Units, MAX_LOTS, MAX_NOTIONAL, MAX_TICKS, RATE_ONE, UNITS_PER_USDT};

/// What a symbol trades like. Built (and validated) by [`SymbolSpec::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolSpec {
    pub name: String,
    /// Stable 32-bit key derived from the name; part of every id the symbol mints.
    pub key: u32,
    pub tick_size: Decimal,
    pub lot_size: Decimal,
    pub max_leverage: u32,
    pub maker_fee: Decimal,
    pub taker_fee: Decimal,
    pub protection_band: Decimal,
    /// Index of the shard that owns the symbol.
    pub shard: usize,
    /// Maintenance margin as a fraction of the position's value at the mark price
    /// (API.md "Perpetual futures"); below the initial margin of the highest leverage.
    pub maintenance_margin_rate: Decimal,
    /// Seconds between funding times (multiples of it since the epoch).
    pub funding_interval_secs: u64,
    /// A LIMIT price must lie within `[reference × price_band_down, reference ×
    /// price_band_up]`, the reference being the mark (or the last trade before the first
    /// mark): Binance's `PERCENT_PRICE`.
    pub price_band_down: Decimal,
    pub price_band_up: Decimal,
    /// The mark price never strays farther than this fraction from the index.
    pub mark_band: Decimal,
    /// The window of the mark's moving average of the book's basis (mid − index), seconds.
    pub mark_basis_window_secs: u64,
    /// An index price older than this stops liquidations and funding (seconds).
    pub index_max_age_secs: u64,
    /// Largest position a user may hold, in lots, counting open orders as filled.
    pub max_position: Lots,
    /// Largest position value (Σ lots × price) a user may hold, in money units, counting
    /// open orders as filled at their prices.
    pub max_position_notional: Units,
    /// Self-trade prevention for orders that name none.
    pub self_trade_prevention: super::command::SelfTradePrevention,
    /// Money units of one tick times one lot (`tick_size × lot_size × 1e8`).
    pub(crate) units_per_tick_lot: i64,
    pub(crate) maker_fee_rate: i64,
    pub(crate) taker_fee_rate: i64,
    pub(crate) band_rate: i64,
    pub(crate) maintenance_rate: i64,
    pub(crate) band_down_rate: i64,
    pub(crate) band_up_rate: i64,
    pub(crate) mark_band_rate: i64,
}

/// The maintenance margin rate of a symbol that names none.
pub const DEFAULT_MAINTENANCE_MARGIN_RATE: &str = "0.005";
/// Funding every 8 hours unless the shard map or `EXCHANGE_FUNDING_INTERVAL_SECS` says.
pub const DEFAULT_FUNDING_INTERVAL_SECS: u64 = 8 * 3600;
/// The price band of a symbol that names none (Binance's usual `PERCENT_PRICE`).
pub const DEFAULT_PRICE_BAND_DOWN: &str = "0.85";
pub const DEFAULT_PRICE_BAND_UP: &str = "1.15";
/// How far the mark may be from the index unless the shard map says.
pub const DEFAULT_MARK_BAND: &str = "0.02";
/// The mark's basis moving average spans five minutes unless configured.
pub const DEFAULT_MARK_BASIS_WINDOW_SECS: u64 = 300;
/// An index older than a minute is stale unless `EXCHANGE_INDEX_MAX_AGE_SECS` says.
pub const DEFAULT_INDEX_MAX_AGE_SECS: u64 = 60;

/// Why a value could not be taken as given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{field} must be positive")]
    NotPositive { field: &'static str },
    #[error("{field} has more precision than 1e-8")]
    TooPrecise { field: &'static str },
    #[error("tick_size × lot_size must be a whole number of 1e-8 USDT")]
    TickLotProduct,
    #[error("{field} must be between {min} and {max}")]
    OutOfRange { field: &'static str, min: String, max: String },
    #[error("symbol name must be 1-32 characters of A-Z, 0-9 and '-'")]
    BadName,
}

/// Why a decimal from a client is not a valid price or quantity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("must be greater than zero")]
    NotPositive,
    #[error("must be a multiple of {0}")]
    NotMultiple(Decimal),
    #[error("is too large")]
    TooLarge,
}

impl SymbolSpec {
    /// Validates a specification and derives its integer forms.
    ///
    /// # Errors
    /// A [`SpecError`] naming the offending field.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        tick_size: Decimal,
        lot_size: Decimal,
        max_leverage: u32,
        maker_fee: Decimal,
        taker_fee: Decimal,
        protection_band: Decimal,
        shard: usize,
    ) -> Result<Self, SpecError> {
        let name_ok = !name.is_empty()
            && name.len() <= 32
            && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(SpecError::BadName);
        }
        for (field, v) in [("tick_size", tick_size), ("lot_size", lot_size)] {
            if v <= Decimal::ZERO {
                return Err(SpecError::NotPositive { field });
            }
        }
        let units_per_tick_lot = exact_scaled(tick_size * lot_size, UNITS_PER_USDT)
            .filter(|u| *u > 0)
            .ok_or(SpecError::TickLotProduct)?;
        if !(1..=1000).contains(&max_leverage) {
            return Err(out_of_range("max_leverage", "1", "1000"));
        }
        let rate = |field: &'static str, v: Decimal, min: Decimal| -> Result<i64, SpecError> {
            if v < min || v >= Decimal::ONE {
                return Err(out_of_range(field, &min.to_string(), "1 (exclusive)"));
            }
            exact_scaled(v, RATE_ONE).ok_or(SpecError::TooPrecise { field })
        };
        let maker_fee_rate = rate("maker_fee", maker_fee, Decimal::NEGATIVE_ONE / Decimal::TEN)?;
        let taker_fee_rate = rate("taker_fee", taker_fee, Decimal::ZERO)?;
        if maker_fee_rate + taker_fee_rate < 0 {
            return Err(out_of_range("maker_fee", "-taker_fee", "1"));
        }
        let band_rate = rate("protection_band", protection_band, Decimal::ZERO)?;
        if band_rate == 0 {
            return Err(SpecError::NotPositive { field: "protection_band" });
        }
        Self {
            name: name.to_owned(),
            key: symbol_key(name),
            tick_size,
            lot_size,
            max_leverage,
            maker_fee,
            taker_fee,
            protection_band,
            shard,
            maintenance_margin_rate: DEFAULT_MAINTENANCE_MARGIN_RATE.parse().unwrap_or(Decimal::ZERO),
            funding_interval_secs: DEFAULT_FUNDING_INTERVAL_SECS,
            price_band_down: Decimal::ZERO,
            price_band_up: Decimal::ZERO,
            mark_band: Decimal::ZERO,
            mark_basis_window_secs: DEFAULT_MARK_BASIS_WINDOW_SECS,
            index_max_age_secs: DEFAULT_INDEX_MAX_AGE_SECS,
            max_position: MAX_LOTS,
            max_position_notional: MAX_NOTIONAL,
            self_trade_prevention: super::command::SelfTradePrevention::ExpireTaker,
            units_per_tick_lot,
            maker_fee_rate,
            taker_fee_rate,
            band_rate,
            maintenance_rate: DEFAULT_MAINTENANCE_MARGIN_RATE.parse::<Decimal>().ok().and_then(|r| exact_scaled(r, RATE_ONE)).unwrap_or(0),
            band_down_rate: 0,
            band_up_rate: 0,
            mark_band_rate: 0,
        }
        .with_price_protection(None, None, None, None)
    }

    /// Sets the price band of LIMIT orders around the mark (`down` in (0, 1), `up` in
    /// (1, 10]), how far the mark may be from the index (`mark_band` in (0, 1)), and the
    /// window of the mark's basis average (seconds, at least 1). `None` keeps the default.
    ///
    /// # Errors
    /// A [`SpecError`] naming the field.
    pub fn with_price_protection(
        mut self,
        down: Option<Decimal>,
        up: Option<Decimal>,
        mark_band: Option<Decimal>,
        basis_window_secs: Option<u64>,
    ) -> Result<Self, SpecError> {
        let default = |v: Option<Decimal>, text: &str| v.unwrap_or_else(|| text.parse().unwrap_or(Decimal::ONE));
        let fixed = |field: &'static str, v: Decimal, min: Decimal, max: Decimal, max_inclusive: bool| {
            let inside = v > min && if max_inclusive { v <= max } else { v < max };
            if !inside {
                return Err(out_of_range(field, &format!("{min} (exclusive)"), &max.to_string()));
            }
            exact_scaled(v, RATE_ONE).ok_or(SpecError::TooPrecise { field })
        };
        let down = default(down, DEFAULT_PRICE_BAND_DOWN);
        let up = default(up, DEFAULT_PRICE_BAND_UP);
        let mark_band = default(mark_band, DEFAULT_MARK_BAND);
        self.band_down_rate = fixed("price_band_down", down, Decimal::ZERO, Decimal::ONE, false)?;
        self.band_up_rate = fixed("price_band_up", up, Decimal::ONE, Decimal::TEN, true)?;
        self.mark_band_rate = fixed("mark_band", mark_band, Decimal::ZERO, Decimal::ONE, false)?;
        (self.price_band_down, self.price_band_up, self.mark_band) = (down, up, mark_band);
        if let Some(secs) = basis_window_secs {
            if secs == 0 {
                return Err(SpecError::NotPositive { field: "mark_basis_window_secs" });
            }
            self.mark_basis_window_secs = secs;
        }
        Ok(self)
    }

    /// The prices a LIMIT order may have around `reference` (the mark, or the last
    /// trade): `[reference × down, reference × up]`, rounded inwards to ticks.
    pub fn price_band(&self, reference: Ticks) -> (Ticks, Ticks) {
        let scaled = |rate: i64| i128::from(reference) * i128::from(rate);
        let low = units::div_ceil(scaled(self.band_down_rate), i128::from(RATE_ONE));
        let high = units::div_floor(scaled(self.band_up_rate), i128::from(RATE_ONE));
        (units::narrow(low.max(1)), units::narrow(high.min(i128::from(MAX_TICKS))))
    }

    /// Whether `price` lies in [`Self::price_band`] around `reference`: the same test,
    /// by multiplication only (it runs for every LIMIT order).
    pub fn within_price_band(&self, reference: Ticks, price: Ticks) -> bool {
        let scaled = i128::from(price) * i128::from(RATE_ONE);
        let reference = i128::from(reference);
        scaled >= reference * i128::from(self.band_down_rate) && scaled <= reference * i128::from(self.band_up_rate)
    }

    /// `index` moved by at most the mark band: the range the mark is clamped to.
    pub fn mark_range(&self, index: Ticks) -> (Ticks, Ticks) {
        let reach = units::narrow(units::div_floor(i128::from(index) * i128::from(self.mark_band_rate), i128::from(RATE_ONE)));
        ((index - reach).max(1), (index + reach).min(MAX_TICKS))
    }

    /// Sets the perpetual's maintenance margin rate (`rate`: above 0, and below the initial
    /// margin at the highest leverage, `1 / max_leverage`) and funding interval (seconds,
    /// at least 1).
    ///
    /// # Errors
    /// A [`SpecError`] naming the field.
    pub fn with_perpetual(mut self, rate: Option<Decimal>, funding_interval_secs: Option<u64>) -> Result<Self, SpecError> {
        if let Some(rate) = rate {
            let fixed = exact_scaled(rate, RATE_ONE).ok_or(SpecError::TooPrecise { field: "maintenance_margin_rate" })?;
            if fixed <= 0 || i128::from(fixed) * i128::from(self.max_leverage) >= i128::from(RATE_ONE) {
                return Err(out_of_range("maintenance_margin_rate", "0 (exclusive)", "1 / max_leverage (exclusive)"));
            }
            self.maintenance_margin_rate = rate;
            self.maintenance_rate = fixed;
        }
        if let Some(secs) = funding_interval_secs {
            if secs == 0 {
                return Err(SpecError::NotPositive { field: "funding_interval_secs" });
            }
            self.funding_interval_secs = secs;
        }
        Ok(self)
    }

    /// Sets the per-user position limits: `quantity` (a multiple of the lot) and
    /// `notional` (USDT), each at most the bound of a single order.
    ///
    /// # Errors
    /// A [`SpecError`] naming the field.
    pub fn with_position_limits(mut self, quantity: Option<Decimal>, notional: Option<Decimal>) -> Result<Self, SpecError> {
        if let Some(q) = quantity {
            self.max_position = self.quantity_to_lots(q).map_err(|_| {
                out_of_range("max_position", &self.lot_size.normalize().to_string(), &self.lots_to_quantity(MAX_LOTS).to_string())
            })?;
        }
        if let Some(n) = notional {
            self.max_position_notional = exact_scaled(n, UNITS_PER_USDT)
                .filter(|u| (1..=MAX_NOTIONAL).contains(u))
                .ok_or_else(|| out_of_range("max_position_notional", "0.00000001", &units_to_usdt(MAX_NOTIONAL).to_string()))?;
        }
        Ok(self)
    }

    /// A client's price as ticks: positive, a multiple of the tick, within bounds.
    ///
    /// # Errors
    /// [`ValueError`] saying what is wrong with it.
    pub fn price_to_ticks(&self, price: Decimal) -> Result<Ticks, ValueError> {
        to_steps(price, self.tick_size, MAX_TICKS)
    }

    /// A client's quantity as lots: positive, a multiple of the lot, within bounds.
    ///
    /// # Errors
    /// [`ValueError`] saying what is wrong with it.
    pub fn quantity_to_lots(&self, quantity: Decimal) -> Result<Lots, ValueError> {
        to_steps(quantity, self.lot_size, MAX_LOTS)
    }

    pub fn ticks_to_price(&self, ticks: Ticks) -> Decimal {
        Decimal::from(ticks) * self.tick_size
    }

    pub fn lots_to_quantity(&self, lots: impl Into<i128>) -> Decimal {
        Decimal::from_i128_with_scale(lots.into(), 0) * self.lot_size
    }

    /// Money units of one tick times one lot.
    pub fn units_per_tick_lot(&self) -> i64 {
        self.units_per_tick_lot
    }

    /// `price × quantity` in money units, exact.
    pub fn notional(&self, price: Ticks, qty: Lots) -> i128 {
        i128::from(price) * i128::from(qty) * i128::from(self.units_per_tick_lot)
    }

    /// Margin for `qty` at `price` with `leverage`: notional ÷ leverage, rounded up.
    pub fn margin(&self, price: Ticks, qty: Lots, leverage: u32) -> i128 {
        units::div_ceil(self.notional(price, qty), i128::from(leverage.max(1)))
    }

    /// Fee on a notional at the maker or taker rate, rounded up (a rebate rounds towards 0).
    pub fn fee(&self, notional: i128, maker: bool) -> i128 {
        let rate = if maker { self.maker_fee_rate } else { self.taker_fee_rate };
        units::div_ceil(notional * i128::from(rate), i128::from(RATE_ONE))
    }

    /// Farthest price a MARKET order may reach from `reference`: the protection band,
    /// rounded inwards to a tick (a buy never pays more than the band allows).
    pub fn band_limit(&self, reference: Ticks, buy: bool) -> Ticks {
        let reach = units::narrow(units::div_floor(
            i128::from(reference) * i128::from(self.band_rate),
            i128::from(RATE_ONE),
        ));
        if buy { (reference + reach).min(MAX_TICKS) } else { (reference - reach).max(1) }
    }
}

/// Money units as a decimal USDT amount. The account and position bounds keep every
/// amount far inside a decimal's 28 digits; past them it saturates rather than panics.
pub fn units_to_usdt(units: impl Into<i128>) -> Decimal {
    let units = units.into();
    Decimal::try_from_i128_with_scale(units, 8)
        .unwrap_or(if units < 0 { Decimal::MIN } else { Decimal::MAX })
        .normalize()
}

/// A USDT amount as money units, if it has at most 8 decimals and fits.
pub fn usdt_to_units(amount: Decimal) -> Option<Units> {
    exact_scaled(amount, UNITS_PER_USDT)
}

fn out_of_range(field: &'static str, min: &str, max: &str) -> SpecError {
    SpecError::OutOfRange { field, min: min.to_owned(), max: max.to_owned() }
}

/// `v × scale` if that is a whole number fitting an i64.
fn exact_scaled(v: Decimal, scale: i64) -> Option<i64> {
    let scaled = v.checked_mul(Decimal::from(scale))?;
    if scaled.fract().is_zero() { scaled.to_i64() } else { None }
}

fn to_steps(v: Decimal, step: Decimal, max: i64) -> Result<i64, ValueError> {
    if v <= Decimal::ZERO {
        return Err(ValueError::NotPositive);
    }
    let steps = v.checked_div(step).ok_or(ValueError::TooLarge)?;
    if !steps.fract().is_zero() {
        return Err(ValueError::NotMultiple(step.normalize()));
    }
    steps.to_i64().filter(|s| *s <= max).ok_or(ValueError::TooLarge)
}

/// FNV-1a of the name: stable across builds, platforms and shard-map reorderings.
fn symbol_key(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
pub(crate) fn btc() -> SymbolSpec {
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    SymbolSpec::new("BTC-PERP", d("0.1"), d("0.001"), 100, d("0.0002"), d("0.0005"), d("0.05"), 0)
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn prices_and_quantities_must_be_exact_multiples() {
        let s = btc();
        assert_eq!(s.price_to_ticks(d("50000.5")), Ok(500_005));
        assert_eq!(s.price_to_ticks(d("50000.55")), Err(ValueError::NotMultiple(d("0.1"))));
        assert_eq!(s.price_to_ticks(d("0")), Err(ValueError::NotPositive));
        assert_eq!(s.price_to_ticks(d("-1")), Err(ValueError::NotPositive));
        assert_eq!(s.price_to_ticks(d("1e20")), Err(ValueError::TooLarge));
        assert_eq!(s.quantity_to_lots(d("0.010")), Ok(10));
        assert_eq!(s.quantity_to_lots(d("0.0105")), Err(ValueError::NotMultiple(d("0.001"))));
        assert_eq!(s.ticks_to_price(500_005), d("50000.5"));
        assert_eq!(s.lots_to_quantity(10), d("0.010"));
    }

    #[test]
    fn money_math_rounds_in_the_exchanges_favour() {
        let s = btc();
        // 50000.5 × 0.010 = 500.005 USDT notional.
        assert_eq!(s.notional(500_005, 10), 50_000_500_000);
        // ÷ 3 = 166.668333333.. → rounded up.
        assert_eq!(s.margin(500_005, 10, 3), 16_666_833_334);
        // 0.0005 × 500.005 = 0.2500025 exact; 0.0002 × 0.001 BTC at 0.1 = 2e-8 exact.
        assert_eq!(s.fee(50_000_500_000, false), 25_000_250);
        assert_eq!(s.fee(s.notional(1, 1), true), 2); // 0.0001 USDT × 0.0002 = 2e-8 exactly
        assert_eq!(s.fee(7, true), 1); // 7e-8 × 0.0002 rounds up to 1e-8
        assert_eq!(units_to_usdt(25_000_250), d("0.2500025"));
        assert_eq!(usdt_to_units(d("0.000000001")), None);
    }

    #[test]
    fn the_price_band_test_agrees_with_the_band() {
        let s = btc();
        for reference in [1, 7, 19, 1000, 500_000, 123_457] {
            let (low, high) = s.price_band(reference);
            for price in [low - 1, low, high, high + 1].into_iter().filter(|p| *p > 0) {
                assert_eq!(s.within_price_band(reference, price), (low..=high).contains(&price), "{reference} {price}");
            }
        }
    }

    #[test]
    fn band_rounds_inwards() {
        let s = btc();
        assert_eq!(s.band_limit(1000, true), 1050);
        assert_eq!(s.band_limit(1000, false), 950);
        assert_eq!(s.band_limit(19, true), 19); // 5% of 19 ticks is less than one tick
        assert_eq!(s.band_limit(1, false), 1);
    }

    #[test]
    fn specs_are_validated() {
        let ok = |tick: &str, lot: &str, lev| {
            SymbolSpec::new("X", d(tick), d(lot), lev, d("0"), d("0.001"), d("0.05"), 0)
        };
        assert!(ok("0.1", "0.001", 100).is_ok());
        assert_eq!(ok("0.0001", "0.00001", 10), Err(SpecError::TickLotProduct));
        assert_eq!(ok("0", "0.001", 10), Err(SpecError::NotPositive { field: "tick_size" }));
        assert!(matches!(ok("0.1", "0.001", 0), Err(SpecError::OutOfRange { .. })));
        assert_eq!(
            SymbolSpec::new("btc", d("1"), d("1"), 1, d("0"), d("0"), d("0.05"), 0),
            Err(SpecError::BadName)
        );
    }
}
