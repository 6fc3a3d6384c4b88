//! One-way (net) positions and what a fill does to them.
//!
//! Entry is carried as an exact notional (`cost`), never as a rounded price: the entry
//! price is `cost ÷ size`, computed only for display. A partial close takes its pro-rata
//! share of the cost, rounded against the trader (by less than 1e-8 USDT), and the rest
//! stays with the open size, so the realized PnL over a position's whole life is exact.
//!
//! Margin follows the same shape: an opening fill moves margin from the order's lock into
//! the position: what the fill needs at its own price and leverage, plus its *open loss*
//! (how much worse than the mark it opened: a buy above the mark, a sell below it,
//! Binance's term), so that a new position is never at once below its initial margin at
//! the mark; never more than the order's lock less the fill's fee, which the lock pays
//! first. A closing fill releases the position's margin pro rata, rounded down, and the
//! last close releases all of it.

use super::command::Side;
use super::event::PositionState;
use super::symbol::SymbolSpec;
use super::units::{div_ceil, div_floor, narrow, Lots, Ticks};

/// Which fee a fill pays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Maker,
    Taker,
    /// A liquidation's close or an auto-deleveraging fill: no trading fee (what is left
    /// of a liquidated position's margin goes to the insurance fund instead).
    Free,
}

/// What a fill changed for one account, besides the position itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FillEffect {
    pub pnl: i128,
    pub fee: i128,
    pub margin_released: i128,
}

/// Applies a fill of `qty` at `price` on `side` to `pos`.
///
/// `order_margin` is the part of the order's lock that this fill consumes; `mark` the
/// mark price, if there is one (for the open loss).
#[allow(clippy::too_many_arguments)]
pub fn apply_fill(
    spec: &SymbolSpec,
    pos: &mut PositionState,
    side: Side,
    price: Ticks,
    qty: Lots,
    leverage: u32,
    order_margin: i64,
    role: Role,
    mark: Option<Ticks>,
) -> FillEffect {
    let sign = side.sign();
    let qty = i128::from(qty);
    let opposes = pos.size != 0 && pos.size.signum() != sign;
    let closing = if opposes { qty.min(pos.size.abs()) } else { 0 };
    let opening = qty - closing;
    let mut pnl = 0;
    let mut released = 0;

    if closing > 0 {
        let open = pos.size.abs();
        let long = pos.size > 0;
        let (cost_share, margin_share) = if closing == open {
            (pos.cost, pos.margin)
        } else {
            let share = pos.cost * closing;
            // Rounded so that this close's PnL is the lower of the two candidates.
            let cost_share = if long { div_ceil(share, open) } else { div_floor(share, open) };
            (cost_share, div_floor(pos.margin * closing, open))
        };
        let exit = notional(spec, price, closing);
        pnl = if long { exit - cost_share } else { cost_share - exit };
        pos.size += sign * closing;
        pos.cost -= cost_share;
        pos.margin -= margin_share;
        pos.realized_pnl += pnl;
        released += margin_share;
    }

    let fee = match role {
        Role::Maker => spec.fee(notional(spec, price, qty), true),
        Role::Taker => spec.fee(notional(spec, price, qty), false),
        Role::Free => 0,
    };
    let order_margin = i128::from(order_margin);
    let mut to_position = 0;
    if opening > 0 {
        // The fee is paid out of the order's lock first, so a fill never takes the
        // available balance below zero.
        let needed = div_ceil(notional(spec, price, opening), i128::from(leverage.max(1))) + open_loss(spec, side, price, mark, opening);
        to_position = needed.min((order_margin - fee).max(0));
        pos.size += sign * opening;
        pos.cost += notional(spec, price, opening);
        pos.margin += to_position;
        pos.leverage = leverage;
    }
    released += order_margin - to_position;
    pos.fees += fee;
    FillEffect { pnl, fee, margin_released: released }
}

/// What opening `qty` on `side` at `price` loses at once against the mark: a buy above
/// it, a sell below it; zero without a mark.
pub fn open_loss(spec: &SymbolSpec, side: Side, price: Ticks, mark: Option<Ticks>, qty: i128) -> i128 {
    let Some(mark) = mark else { return 0 };
    let worse = (i128::from(price) - i128::from(mark)) * side.sign();
    worse.max(0) * qty * i128::from(spec.units_per_tick_lot)
}

/// How much of `qty` a reduce-only order may fill against a position of `size` without
/// increasing or flipping it.
pub fn reducible(side: Side, size: i128, qty: Lots) -> Lots {
    let room = match side {
        Side::Sell if size > 0 => size,
        Side::Buy if size < 0 => -size,
        _ => 0,
    };
    narrow(room.min(i128::from(qty)))
}

fn notional(spec: &SymbolSpec, price: Ticks, qty: i128) -> i128 {
    i128::from(price) * qty * i128::from(spec.units_per_tick_lot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::symbol::btc;

    // BTC-PERP: one tick × one lot = 0.1 × 0.001 = 0.0001 USDT = 10,000 units.
    const U: i64 = 10_000;

    /// Taker fee (0.0005) on `ticks × lots`, in units.
    fn taker_fee(ticks: i64, lots: i64) -> i64 {
        div_ceil(i128::from(ticks * lots * U * 5), 10_000) as i64
    }

    #[test]
    fn open_add_and_close_at_a_profit() {
        let s = btc();
        let mut p = PositionState::default();
        // Buy 10 lots at 1000 ticks, leverage 10: notional 1 USDT, margin 0.1 USDT; the
        // lock also covers the taker fee.
        let e = apply_fill(&s, &mut p, Side::Buy, 1000, 10, 10, 1000 * U + taker_fee(1000, 10), Role::Taker, None);
        assert_eq!(e, FillEffect { pnl: 0, fee: 50_000, margin_released: 50_000 });
        assert_eq!((p.size, p.cost, p.margin), (10, 10_000 * i128::from(U), 1000 * i128::from(U)));
        // Add 10 at 1100: entry becomes 1050.
        apply_fill(&s, &mut p, Side::Buy, 1100, 10, 10, 1100 * U + taker_fee(1100, 10), Role::Taker, None);
        assert_eq!(p.cost / p.size, 1050 * i128::from(U));
        // Sell all 20 at 1200: pnl = 20 × 150 ticks.
        let e = apply_fill(&s, &mut p, Side::Sell, 1200, 20, 10, 0, Role::Maker, None);
        assert_eq!(e.pnl, i128::from(20 * 150 * U));
        assert_eq!(e.margin_released, i128::from(2100 * U));
        assert_eq!((p.size, p.cost, p.margin), (0, 0, 0));
        assert_eq!(p.realized_pnl, i128::from(20 * 150 * U));
        assert_eq!(p.fees, i128::from(50_000 + taker_fee(1100, 10) + div_ceil(i128::from(1200 * 20 * U * 2), 10_000) as i64));
    }

    #[test]
    fn the_fee_is_paid_out_of_the_lock_first() {
        let s = btc();
        let mut p = PositionState::default();
        // Locked exactly the margin: the position gets the margin less the fee, and the
        // fee is released to be charged, so the available balance cannot go negative.
        let e = apply_fill(&s, &mut p, Side::Buy, 1000, 10, 1, 10_000 * U, Role::Taker, None);
        assert_eq!(e.fee, 50_000);
        assert_eq!(e.margin_released, i128::from(50_000));
        assert_eq!(p.margin, i128::from(10_000 * U - 50_000));
    }

    #[test]
    fn flip_from_long_to_short_in_one_fill() {
        let s = btc();
        let mut p = PositionState::default();
        apply_fill(&s, &mut p, Side::Buy, 1000, 3, 1, 3000 * U + taker_fee(1000, 3), Role::Taker, None);
        // Sell 5 at 900 with leverage 2, having locked 5 × 900 ÷ 2 plus the fee.
        let fee = taker_fee(900, 5);
        let e = apply_fill(&s, &mut p, Side::Sell, 900, 5, 2, 2250 * U + fee, Role::Taker, None);
        assert_eq!(e.pnl, i128::from(-3 * 100 * U));
        assert_eq!(p.size, -2);
        assert_eq!(p.cost, 1800 * i128::from(U));
        assert_eq!(p.margin, 900 * i128::from(U)); // 2 × 900 ÷ 2
        // Released: the long's 3,000 plus the order's 2,250 and fee less the 900 now in the short.
        assert_eq!(e.margin_released, i128::from((3000 + 2250 - 900) * U + fee));
        assert_eq!(p.leverage, 2);
    }

    #[test]
    fn partial_closes_round_against_the_trader_and_sum_exactly() {
        let s = btc();
        let mut p = PositionState::default();
        // Entry cost 10 + 11 + 11 ticks·lot over 3 lots: not divisible.
        apply_fill(&s, &mut p, Side::Buy, 10, 1, 1, 10 * U + 10, Role::Taker, None);
        apply_fill(&s, &mut p, Side::Buy, 11, 2, 1, 22 * U + 20, Role::Taker, None);
        let mut total = 0;
        for _ in 0..3 {
            total += apply_fill(&s, &mut p, Side::Sell, 12, 1, 1, 0, Role::Taker, None).pnl;
        }
        assert_eq!(total, i128::from((36 - 32) * U));
        assert_eq!(p.size, 0);
        assert_eq!(p.cost, 0);
    }

    #[test]
    fn short_closes_and_margin_released_pro_rata() {
        let s = btc();
        let mut p = PositionState::default();
        apply_fill(&s, &mut p, Side::Sell, 1000, 4, 4, 1000 * U + taker_fee(1000, 4), Role::Taker, None);
        assert_eq!(p.margin, 1000 * i128::from(U));
        let e = apply_fill(&s, &mut p, Side::Buy, 1100, 1, 4, 275 * U, Role::Taker, None);
        assert_eq!(e.pnl, i128::from(-100 * U));
        // A quarter of the position margin plus the whole order share (nothing opened).
        assert_eq!(e.margin_released, i128::from(250 * U + 275 * U));
    }

    #[test]
    fn opening_margin_never_exceeds_the_order_lock() {
        let s = btc();
        let mut p = PositionState::default();
        // A sell limited at 1000 filled at 1200 needs 1200 but locked only 1000 (+ fee):
        // the position gets what is left after the fee.
        let fee = div_ceil(i128::from(1200 * U * 2), 10_000) as i64;
        let e = apply_fill(&s, &mut p, Side::Sell, 1200, 1, 1, 1000 * U + 500, Role::Maker, None);
        assert_eq!(p.margin, i128::from(1000 * U + 500 - fee));
        assert_eq!(e.margin_released, i128::from(fee));
        // A buy locked at 1050 filled at 1000 returns the difference.
        let mut q = PositionState::default();
        let e = apply_fill(&s, &mut q, Side::Buy, 1000, 1, 1, 1050 * U + taker_fee(1050, 1), Role::Taker, None);
        assert_eq!(e.margin_released, i128::from(50 * U + taker_fee(1050, 1)));
    }

    #[test]
    fn reduce_only_room() {
        assert_eq!(reducible(Side::Sell, 5, 3), 3);
        assert_eq!(reducible(Side::Sell, 5, 8), 5);
        assert_eq!(reducible(Side::Sell, -5, 3), 0);
        assert_eq!(reducible(Side::Buy, -5, 8), 5);
        assert_eq!(reducible(Side::Buy, 0, 8), 0);
    }
}
