//! A book's diff depth on the symbol's owner (the Binance dialect's `<symbol>@depth`):
//! while some core follows it, the levels that changed since the last diff, read at
//! most once every [`crate::shard::projections::feed::DIFF_EVERY`] after a change.
//!
//! A diff compares the whole book with the copy the previous one left (a merge of two
//! sorted lists), so it covers every level, not only the top ones, whatever event moved
//! them. Its ids are the market's event numbers, the same counter `GET /fapi/v1/depth`
//! reports as `lastUpdateId`: a client that buffers diffs, reads the book and applies the
//! diffs from the one whose range holds the book's id is exact (quantities are absolute,
//! so a level applied twice is harmless).

use std::cell::RefCell;
use std::cmp::Ordering;

use crate::engine::{Market, Side};
use crate::shard::protocol::{BookDiff, Levels};

/// The book as the last diff left it.
struct Seen {
    last: u64,
    bids: Levels,
    asks: Levels,
}

#[derive(Default)]
pub struct Diffs {
    seen: RefCell<Option<Seen>>,
}

impl Diffs {
    /// The levels that changed since the last diff (the whole book for the first one
    /// after [`Self::forget`]), or `None` when none did.
    pub fn read(&self, market: &Market, time: i64) -> Option<BookDiff> {
        let side = |s| market.book().depth(s).collect::<Levels>();
        let (bids, asks) = (side(Side::Buy), side(Side::Sell));
        let mut seen = self.seen.borrow_mut();
        let empty = Seen { last: 0, bids: Levels::new(), asks: Levels::new() };
        let before = seen.as_ref().unwrap_or(&empty);
        let diff = BookDiff {
            first: before.last + 1,
            last: market.seq(),
            previous: before.last,
            time,
            bids: changed(&before.bids, &bids, |a, b| b.cmp(&a)),
            asks: changed(&before.asks, &asks, |a, b| a.cmp(&b)),
        };
        if diff.bids.is_empty() && diff.asks.is_empty() {
            return None;
        }
        *seen = Some(Seen { last: diff.last, bids, asks });
        Some(diff)
    }

    /// Nobody follows the diffs now: the next reader starts from the whole book.
    pub fn forget(&self) {
        self.seen.borrow_mut().take();
    }
}

/// The levels of `after` that differ from `before` (both best first, `order` comparing
/// prices that way), with 0 for those gone.
fn changed(before: &[(i64, i64)], after: &[(i64, i64)], order: impl Fn(i64, i64) -> Ordering) -> Levels {
    let (mut i, mut j, mut out) = (0, 0, Levels::new());
    loop {
        match (before.get(i), after.get(j)) {
            (None, None) => return out,
            (Some(&(p, _)), None) => {
                out.push((p, 0));
                i += 1;
            }
            (None, Some(&level)) => {
                out.push(level);
                j += 1;
            }
            (Some(&(p, q)), Some(&(p2, q2))) => match order(p, p2) {
                Ordering::Less => {
                    out.push((p, 0));
                    i += 1;
                }
                Ordering::Greater => {
                    out.push((p2, q2));
                    j += 1;
                }
                Ordering::Equal => {
                    if q != q2 {
                        out.push((p2, q2));
                    }
                    i += 1;
                    j += 1;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_holds_every_level_that_came_went_or_changed() {
        let bids = |a, b| i64::cmp(&b, &a);
        assert_eq!(changed(&[(100, 1), (99, 2), (97, 1)], &[(101, 5), (99, 3), (97, 1), (90, 4)], bids), [(101, 5), (100, 0), (99, 3), (90, 4)]);
        let asks = |a, b| i64::cmp(&a, &b);
        assert_eq!(changed(&[(100, 1), (102, 2)], &[], asks), [(100, 0), (102, 0)]);
        assert_eq!(changed(&[(100, 1)], &[(100, 1)], asks), []);
    }
}
