//! The tape: a symbol's public trades, and the candles (klines) and rolling day's
//! statistics its owner keeps from them. The lowest room: plain market data, which the
//! owner's stream builds, the log's snapshots carry and the protocol answers with.
//!
//! Two series are kept, each a candle per period that had a trade: minutes for a week
//! and hours for two years. Every interval a client may ask for is made from one of
//! them: intervals under an hour from minutes, the others from hours (so a 5-minute
//! chart reaches a week back, a daily one two years). Periods without a trade between
//! two that had one are filled as exchanges do: a flat candle at the last close, no
//! volume.
//!
//! Trades carry their command's logged time, so a replay builds the same candles; the
//! series travel in the symbol's snapshot, so a restart keeps the history the replayed
//! tail does not hold.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::engine::{Event, Side};

/// A public trade for `/v1/trades`.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct PublicTrade {
    pub seq: u64,
    pub price: i64,
    pub quantity: i64,
    pub taker_side: Side,
    pub time: i64,
}

impl PublicTrade {
    /// The public side of a trade event (liquidation's auto-deleveraging transfers are
    /// not trades of the market: `None`).
    pub fn of(event: &Event) -> Option<Self> {
        match event {
            Event::TradeExecuted(t) if !t.adl => {
                Some(Self { seq: t.seq, price: t.price, quantity: t.quantity, taker_side: t.taker_side, time: t.timestamp })
            }
            _ => None,
        }
    }
}

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// A week of minutes.
const KEEP_MINUTES: usize = 7 * 24 * 60;
/// Two years of hours.
const KEEP_HOURS: usize = 2 * 366 * 24;

/// One period's trades. Prices in ticks, volumes in lots, quote volumes in ticks·lots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candle {
    pub open_time: i64,
    pub open: i64,
    pub high: i64,
    pub low: i64,
    pub close: i64,
    pub volume: i128,
    pub quote_volume: i128,
    pub taker_buy_volume: i128,
    pub taker_buy_quote_volume: i128,
    pub trades: u64,
    /// Sequence numbers of the period's first and last trade (0: none).
    pub first_seq: u64,
    pub last_seq: u64,
}

impl Candle {
    fn of(open_time: i64, t: &PublicTrade) -> Self {
        let mut c = Self::flat(open_time, t.price);
        c.first_seq = t.seq;
        c.add(t);
        c
    }

    /// A period without trades, at the last close.
    fn flat(open_time: i64, price: i64) -> Self {
        Self { open_time, open: price, high: price, low: price, close: price, ..Self::default() }
    }

    fn add(&mut self, t: &PublicTrade) {
        let quote = i128::from(t.price) * i128::from(t.quantity);
        self.high = self.high.max(t.price);
        self.low = self.low.min(t.price);
        self.close = t.price;
        self.volume += i128::from(t.quantity);
        self.quote_volume += quote;
        if t.taker_side == Side::Buy {
            self.taker_buy_volume += i128::from(t.quantity);
            self.taker_buy_quote_volume += quote;
        }
        self.trades += 1;
        self.last_seq = t.seq;
    }

    /// A price that is no trade (a mark or an index price): moves the prices only.
    fn of_price(open_time: i64, seq: u64, price: i64) -> Self {
        Self { first_seq: seq, last_seq: seq, ..Self::flat(open_time, price) }
    }

    fn add_price(&mut self, seq: u64, price: i64) {
        self.high = self.high.max(price);
        self.low = self.low.min(price);
        self.close = price;
        self.last_seq = seq;
    }

    /// A flat period made up between two that had data.
    fn is_filler(&self) -> bool {
        self.trades == 0 && self.first_seq == 0
    }

    /// `later`'s trades added to these (periods merged into a longer one).
    fn merge(&mut self, later: &Self) {
        if self.is_filler() {
            *self = Self { open_time: self.open_time, ..*later };
            return;
        }
        if later.is_filler() {
            return;
        }
        self.high = self.high.max(later.high);
        self.low = self.low.min(later.low);
        self.close = later.close;
        self.volume += later.volume;
        self.quote_volume += later.quote_volume;
        self.taker_buy_volume += later.taker_buy_volume;
        self.taker_buy_quote_volume += later.taker_buy_quote_volume;
        self.trades += later.trades;
        self.last_seq = later.last_seq;
    }
}

/// A candle length a client may ask for (Binance's names: `1m` … `1M`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interval {
    /// A fixed length in milliseconds; periods start at multiples of it since the epoch
    /// (days at 00:00 UTC).
    Fixed(i64),
    /// Weeks from Monday 00:00 UTC.
    Week,
    /// Calendar months (UTC).
    Month,
}

impl Interval {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "1m" => Self::Fixed(MINUTE),
            "3m" => Self::Fixed(3 * MINUTE),
            "5m" => Self::Fixed(5 * MINUTE),
            "15m" => Self::Fixed(15 * MINUTE),
            "30m" => Self::Fixed(30 * MINUTE),
            "1h" => Self::Fixed(HOUR),
            "2h" => Self::Fixed(2 * HOUR),
            "4h" => Self::Fixed(4 * HOUR),
            "6h" => Self::Fixed(6 * HOUR),
            "8h" => Self::Fixed(8 * HOUR),
            "12h" => Self::Fixed(12 * HOUR),
            "1d" => Self::Fixed(DAY),
            "3d" => Self::Fixed(3 * DAY),
            "1w" => Self::Week,
            "1M" => Self::Month,
            _ => return None,
        })
    }

    /// Start of the period that holds `time`.
    pub fn open(self, time: i64) -> i64 {
        match self {
            Self::Fixed(len) => time.div_euclid(len) * len,
            // 1970-01-01 was a Thursday: Mondays are 4 days past a multiple of 7.
            Self::Week => (time - 4 * DAY).div_euclid(7 * DAY) * 7 * DAY + 4 * DAY,
            Self::Month => {
                let (y, m, _) = civil_from_days(time.div_euclid(DAY));
                days_from_civil(y, m, 1) * DAY
            }
        }
    }

    /// Start of the period after the one starting at `open`.
    pub fn next(self, open: i64) -> i64 {
        match self {
            Self::Fixed(len) => open + len,
            Self::Week => open + 7 * DAY,
            Self::Month => {
                let (y, m, _) = civil_from_days(open.div_euclid(DAY));
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1) * DAY
            }
        }
    }

    /// Start of the period `n` before the one starting at `open`.
    fn back(self, open: i64, n: usize) -> i64 {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        match self {
            Self::Fixed(len) => open.saturating_sub(n.saturating_mul(len)),
            Self::Week => open.saturating_sub(n.saturating_mul(7 * DAY)),
            Self::Month => {
                let (y, m, _) = civil_from_days(open.div_euclid(DAY));
                let months = y * 12 + (m - 1) - n.min(y * 12);
                days_from_civil(months / 12, months % 12 + 1, 1) * DAY
            }
        }
    }

    /// Whether it is made from minutes (shorter than an hour) rather than hours.
    fn minute_based(self) -> bool {
        matches!(self, Self::Fixed(len) if len < HOUR)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A symbol's minute and hour candles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candles {
    minutes: VecDeque<Candle>,
    hours: VecDeque<Candle>,
}

impl Candles {
    /// Adds a trade. A trade timed before the newest candle (the clock stepped back)
    /// counts in the newest: the series only moves forward.
    pub fn record(&mut self, trade: &PublicTrade) {
        self.each_series(|series, len, keep| add(series, len, keep, trade.time, |c| c.add(trade), |open| Candle::of(open, trade)));
    }

    /// Adds a price that is no trade (a mark or an index price, event `seq`, at `time`).
    pub fn record_price(&mut self, seq: u64, price: i64, time: i64) {
        self.each_series(|series, len, keep| add(series, len, keep, time, |c| c.add_price(seq, price), |open| Candle::of_price(open, seq, price)));
    }

    /// Both series, with their period and how many periods they keep.
    fn each_series(&mut self, mut f: impl FnMut(&mut VecDeque<Candle>, i64, usize)) {
        f(&mut self.minutes, MINUTE, KEEP_MINUTES);
        f(&mut self.hours, HOUR, KEEP_HOURS);
    }

    /// Up to `limit` candles of `interval`, oldest first: from the period holding `start`
    /// if given, else the last `limit` periods up to `end` (or `now`). Candles begin with
    /// the first trade the series hold; the period holding `now` is included, open.
    pub fn klines(&self, interval: Interval, start: Option<i64>, end: Option<i64>, limit: usize, now: i64) -> Vec<Candle> {
        // Times before the epoch or after now hold nothing (and stay far from overflow).
        let now = now.max(0);
        let last = interval.open(end.unwrap_or(now).clamp(0, now));
        let first = match start {
            Some(s) => interval.open(s.clamp(0, now.saturating_add(1))),
            None => interval.back(last, limit.saturating_sub(1)),
        };
        let base = if interval.minute_based() { &self.minutes } else { &self.hours };
        let mut out: Vec<Candle> = Vec::new();
        // The close before the window, for the flat periods at its start.
        let mut close = None;
        for c in base {
            let open = interval.open(c.open_time);
            if open > last || out.len() > limit {
                break;
            }
            if open < first {
                close = Some(c.close);
                continue;
            }
            match out.last_mut() {
                Some(candle) if candle.open_time == open => candle.merge(c),
                _ => {
                    fill(&mut out, interval, first, close, open, limit);
                    out.push(Candle { open_time: open, ..*c });
                }
            }
            close = out.last().map(|c| c.close);
        }
        fill(&mut out, interval, first, close, interval.next(last), limit);
        out.truncate(limit);
        out
    }

    /// The trades of the last 24 hours (to the minute) as one candle, opening at the
    /// window's start; `None` if there were none.
    pub fn day(&self, now: i64) -> Option<Candle> {
        let since = now - DAY;
        let inside = self.minutes.iter().rev().take_while(|c| c.open_time + MINUTE > since).count();
        let mut day: Option<Candle> = None;
        for c in self.minutes.iter().skip(self.minutes.len() - inside) {
            match &mut day {
                Some(d) => d.merge(c),
                None => day = Some(Candle { open_time: since, ..*c }),
            }
        }
        day
    }
}

/// Flat periods (at `close`) from the one after `out`'s last (or `first`) up to `until`,
/// while `out` holds fewer than `limit`.
fn fill(out: &mut Vec<Candle>, interval: Interval, first: i64, close: Option<i64>, until: i64, limit: usize) {
    let Some(close) = close else { return };
    let mut open = out.last().map_or(first, |c| interval.next(c.open_time));
    while open < until && out.len() < limit {
        out.push(Candle::flat(open, close));
        open = interval.next(open);
    }
}

fn add(series: &mut VecDeque<Candle>, len: i64, keep: usize, time: i64, update: impl FnOnce(&mut Candle), fresh: impl FnOnce(i64) -> Candle) {
    let open = time.div_euclid(len) * len;
    match series.back_mut() {
        Some(c) if c.open_time >= open => update(c),
        _ => {
            series.push_back(fresh(open));
            if series.len() > keep {
                series.pop_front();
            }
        }
    }
}

/// Funding rounds kept per symbol (Binance's `fundingRate` answers at most 1,000).
const KEEP_FUNDING: usize = 1_000;

/// A settled funding round, as `fundingRate` lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FundingRate {
    pub time: i64,
    /// In the engine's rate units ([`crate::wire::rate_decimal`]).
    pub rate: i64,
    pub mark: Option<i64>,
}

/// A symbol's perpetual prices over time: candles of its mark and index prices (from
/// each posted index) and its latest funding rounds. Kept and snapshotted as the trade
/// candles are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceHistory {
    pub marks: Candles,
    pub indexes: Candles,
    funding: VecDeque<FundingRate>,
}

impl PriceHistory {
    pub fn record(&mut self, event: &Event) {
        match event {
            Event::PriceUpdated(p) => {
                self.marks.record_price(p.seq, p.mark, p.timestamp);
                self.indexes.record_price(p.seq, p.index, p.timestamp);
            }
            Event::FundingSettled(f) => {
                self.funding.push_back(FundingRate { time: f.timestamp, rate: f.rate, mark: f.mark });
                if self.funding.len() > KEEP_FUNDING {
                    self.funding.pop_front();
                }
            }
            _ => {}
        }
    }

    /// Up to `limit` rounds, oldest first: from `start` if given, else the latest
    /// (up to `end`).
    pub fn funding(&self, start: Option<i64>, end: Option<i64>, limit: usize) -> Vec<FundingRate> {
        let within = self.funding.iter().filter(|f| start.is_none_or(|s| f.time >= s) && end.is_none_or(|e| f.time <= e));
        let mut rounds: Vec<FundingRate> = within.copied().collect();
        if start.is_some() {
            rounds.truncate(limit);
        } else {
            rounds.drain(..rounds.len().saturating_sub(limit));
        }
        rounds
    }
}

#[cfg(test)]
mod tests {
    use crate::shard::tape::*;

    fn trade(seq: u64, time: i64, price: i64, quantity: i64, taker_side: Side) -> PublicTrade {
        PublicTrade { seq, price, quantity, taker_side, time }
    }

    const T0: i64 = 1_795_000_000_000 / DAY * DAY; // a midnight

    #[test]
    fn trades_make_candles_and_quiet_periods_are_flat_at_the_last_close() {
        let mut c = Candles::default();
        c.record(&trade(1, T0 + 1_000, 100, 2, Side::Buy));
        c.record(&trade(2, T0 + 30_000, 105, 1, Side::Sell));
        c.record(&trade(3, T0 + 59_999, 99, 3, Side::Buy));
        c.record(&trade(4, T0 + 3 * MINUTE + 5, 101, 1, Side::Sell));
        let k = c.klines(Interval::Fixed(MINUTE), Some(T0), None, 10, T0 + 4 * MINUTE + 1);
        assert_eq!(k.len(), 5, "four past minutes and the open one");
        let first = k[0];
        assert_eq!((first.open_time, first.open, first.high, first.low, first.close), (T0, 100, 105, 99, 99));
        assert_eq!((first.volume, first.quote_volume, first.trades), (6, 200 + 105 + 297, 3));
        assert_eq!((first.taker_buy_volume, first.taker_buy_quote_volume), (5, 200 + 297));
        assert_eq!((first.first_seq, first.last_seq), (1, 3));
        for quiet in [k[1], k[2], k[4]] {
            assert_eq!((quiet.high, quiet.low, quiet.close, quiet.volume, quiet.trades), (quiet.open, quiet.open, quiet.open, 0, 0));
        }
        assert_eq!(k[1].close, 99);
        assert_eq!(k[4].close, 101, "the open minute is flat at the last trade");
        assert_eq!((k[3].open_time, k[3].close, k[3].trades), (T0 + 3 * MINUTE, 101, 1));
        // Merged into one 5-minute candle.
        let five = c.klines(Interval::Fixed(5 * MINUTE), None, None, 500, T0 + 4 * MINUTE + 1);
        assert_eq!(five.len(), 1);
        assert_eq!((five[0].open, five[0].high, five[0].low, five[0].close, five[0].volume, five[0].trades), (100, 105, 99, 101, 7, 4));
    }

    #[test]
    fn the_window_is_the_last_periods_before_end_or_from_start() {
        let mut c = Candles::default();
        for i in 0..10 {
            c.record(&trade(i + 1, T0 + i as i64 * MINUTE, 100 + i as i64, 1, Side::Buy));
        }
        let now = T0 + 9 * MINUTE + 10;
        let last3 = c.klines(Interval::Fixed(MINUTE), None, None, 3, now);
        assert_eq!(last3.iter().map(|k| k.close).collect::<Vec<_>>(), vec![107, 108, 109]);
        let to = c.klines(Interval::Fixed(MINUTE), None, Some(T0 + 4 * MINUTE), 2, now);
        assert_eq!(to.iter().map(|k| k.close).collect::<Vec<_>>(), vec![103, 104]);
        let from = c.klines(Interval::Fixed(MINUTE), Some(T0 + 2 * MINUTE + 5), None, 2, now);
        assert_eq!(from.iter().map(|k| k.open_time).collect::<Vec<_>>(), vec![T0 + 2 * MINUTE, T0 + 3 * MINUTE]);
        let before_any = c.klines(Interval::Fixed(MINUTE), Some(T0 - DAY), None, 2, now);
        assert_eq!(before_any[0].open_time, T0, "candles begin with the first trade");
        assert!(c.klines(Interval::Fixed(MINUTE), None, Some(T0 - 1), 5, now).is_empty());
    }

    #[test]
    fn long_intervals_come_from_hours_and_align_to_days_weeks_and_months() {
        // 2026-12-06 is a Sunday; its week began Monday 2026-11-30, its month 2026-12-01.
        let sunday = days_from_civil(2026, 12, 6) * DAY + 5 * HOUR;
        assert_eq!(civil_from_days(sunday / DAY), (2026, 12, 6));
        assert_eq!(Interval::Week.open(sunday), days_from_civil(2026, 11, 30) * DAY);
        assert_eq!(Interval::Month.open(sunday), days_from_civil(2026, 12, 1) * DAY);
        assert_eq!(Interval::Month.next(Interval::Month.open(sunday)), days_from_civil(2027, 1, 1) * DAY);
        assert_eq!(Interval::Month.back(days_from_civil(2027, 1, 1) * DAY, 2), days_from_civil(2026, 11, 1) * DAY);
        assert_eq!(Interval::Fixed(DAY).open(sunday), days_from_civil(2026, 12, 6) * DAY);
        let mut c = Candles::default();
        c.record(&trade(1, sunday - 3 * DAY, 100, 1, Side::Buy));
        c.record(&trade(2, sunday, 90, 2, Side::Sell));
        let days = c.klines(Interval::Fixed(DAY), None, None, 500, sunday + 1);
        assert_eq!(days.len(), 4);
        assert_eq!(days.iter().map(|k| (k.close, k.volume)).collect::<Vec<_>>(), vec![(100, 1), (100, 0), (100, 0), (90, 2)]);
        let weeks = c.klines(Interval::Week, None, None, 500, sunday + 1);
        assert_eq!(weeks.iter().map(|k| (k.open, k.close, k.volume)).collect::<Vec<_>>(), vec![(100, 90, 3)]);
        c.record(&trade(3, sunday + 30 * DAY, 80, 1, Side::Buy));
        let months = c.klines(Interval::Month, None, None, 500, sunday + 30 * DAY);
        assert_eq!(months.iter().map(|k| (k.open_time, k.close, k.volume)).collect::<Vec<_>>(), vec![
            (days_from_civil(2026, 12, 1) * DAY, 90, 3),
            (days_from_civil(2027, 1, 1) * DAY, 80, 1),
        ]);
    }

    #[test]
    fn the_day_is_the_last_24_hours_of_trades() {
        let mut c = Candles::default();
        c.record(&trade(1, T0, 100, 1, Side::Buy));
        c.record(&trade(2, T0 + 10 * HOUR, 120, 2, Side::Buy));
        c.record(&trade(3, T0 + 20 * HOUR, 110, 3, Side::Sell));
        let day = c.day(T0 + 20 * HOUR).unwrap();
        assert_eq!((day.open, day.high, day.low, day.close, day.volume, day.trades, day.first_seq), (100, 120, 100, 110, 6, 3, 1));
        let later = c.day(T0 + 26 * HOUR).unwrap();
        assert_eq!((later.open, later.volume, later.first_seq), (120, 5, 2), "the first trade left the window");
        assert_eq!(c.day(T0 + 45 * HOUR), None);
    }

    #[test]
    fn mark_and_index_prices_make_candles_without_volume_and_funding_rounds_are_kept() {
        use crate::engine::{FundingRound, PriceUpdate};
        let mut h = PriceHistory::default();
        h.record(&Event::PriceUpdated(PriceUpdate { seq: 1, index: 100, mark: 101, timestamp: T0 }));
        h.record(&Event::PriceUpdated(PriceUpdate { seq: 2, index: 90, mark: 95, timestamp: T0 + 30_000 }));
        h.record(&Event::PriceUpdated(PriceUpdate { seq: 3, index: 97, mark: 98, timestamp: T0 + MINUTE }));
        let marks = h.marks.klines(Interval::Fixed(MINUTE), Some(T0), None, 10, T0 + MINUTE + 1);
        assert_eq!(marks.iter().map(|k| (k.open, k.high, k.low, k.close, k.volume)).collect::<Vec<_>>(), vec![(101, 101, 95, 95, 0), (98, 98, 98, 98, 0)]);
        let five = h.indexes.klines(Interval::Fixed(5 * MINUTE), None, None, 10, T0 + MINUTE + 1);
        assert_eq!(five.iter().map(|k| (k.open, k.high, k.low, k.close)).collect::<Vec<_>>(), vec![(100, 100, 90, 97)], "merged, not replaced");
        for i in 0..(KEEP_FUNDING as i64 + 3) {
            let round = FundingRound { seq: 10 + i as u64, rate: i, mark: Some(100), positions: 0, to_fund: 0, fund: 0, timestamp: T0 + i * 8 * HOUR };
            h.record(&Event::FundingSettled(round));
        }
        assert_eq!(h.funding(None, None, 2).iter().map(|f| f.rate).collect::<Vec<_>>(), vec![KEEP_FUNDING as i64 + 1, KEEP_FUNDING as i64 + 2]);
        assert_eq!(h.funding(Some(T0 + 5 * 8 * HOUR), None, 2).iter().map(|f| f.rate).collect::<Vec<_>>(), vec![5, 6]);
        assert_eq!(h.funding(None, None, 10_000).len(), KEEP_FUNDING);
    }

    #[test]
    fn series_are_bounded_and_a_clock_step_back_joins_the_newest_candle() {
        let mut c = Candles::default();
        for i in 0..(KEEP_MINUTES as i64 + 5) {
            c.record(&trade(i as u64 + 1, T0 + i * MINUTE, 100, 1, Side::Buy));
        }
        assert_eq!(c.minutes.len(), KEEP_MINUTES);
        let newest = *c.minutes.back().unwrap();
        c.record(&trade(u64::MAX, newest.open_time - 5 * MINUTE, 50, 1, Side::Buy));
        assert_eq!(c.minutes.len(), KEEP_MINUTES);
        assert_eq!((c.minutes.back().unwrap().low, c.minutes.back().unwrap().trades), (50, 2));
    }
}
