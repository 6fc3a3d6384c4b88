//! The order book of one symbol: price levels, FIFO queues, and an id index.
//!
//! Shape, chosen for the steady state of a busy book (most activity within a few ticks of
//! the spread):
//! - Orders live in a slab (`Vec` plus free list), linked into a FIFO per price level by
//!   `u32` indices. No allocation once the slab has grown to the book's size.
//! - Each side is a `Vec<Level>` sorted so that the **best level is last**: taking liquidity
//!   pops from the end and new levels near the touch are inserted near the end, so the
//!   common operations move almost nothing. Lookup of a level by price is a binary search.
//! - An `OrderId → slot` hash index serves cancels.
//!
//! The book knows nothing of margin or positions; [`super::Market`] does the trading.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::command::{OrderId, Side, UserId};
use super::units::{Lots, Ticks, Units};

const NIL: u32 = u32::MAX;

/// An order resting in the book.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resting {
    pub id: OrderId,
    pub user: UserId,
    pub price: Ticks,
    pub remaining: Lots,
    pub filled: Lots,
    /// Margin still locked by the remaining quantity.
    pub locked: Units,
    pub timestamp: i64,
    pub leverage: u32,
    pub side: Side,
    pub reduce_only: bool,
    pub has_client_order_id: bool,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    order: Resting,
    prev: u32,
    next: u32,
}

#[derive(Clone, Copy, Debug)]
struct Level {
    price: Ticks,
    total: Lots,
    head: u32,
    tail: u32,
}

#[derive(Clone, Debug, Default)]
pub struct Book {
    slots: Vec<Slot>,
    free: Vec<u32>,
    index: FxHashMap<OrderId, u32>,
    /// Ascending by price: best bid last.
    bids: Vec<Level>,
    /// Descending by price: best ask last.
    asks: Vec<Level>,
}

impl Book {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, id: OrderId) -> bool {
        self.index.contains_key(&id)
    }

    pub fn get(&self, id: OrderId) -> Option<&Resting> {
        self.index.get(&id).map(|&s| &self.slots[s as usize].order)
    }

    /// Best price of a side.
    pub fn best_price(&self, side: Side) -> Option<Ticks> {
        self.levels(side).last().map(|l| l.price)
    }

    /// The first order in time at the best price of a side.
    pub fn best(&self, side: Side) -> Option<&Resting> {
        self.levels(side).last().map(|l| &self.slots[l.head as usize].order)
    }

    /// Appends an order at the back of its price level.
    ///
    /// # Panics
    /// If the id is already in the book (the caller checks).
    pub fn insert(&mut self, order: Resting) {
        let slot = self.alloc(order);
        let previous = self.index.insert(order.id, slot);
        assert!(previous.is_none(), "order {:?} inserted twice", order.id);
        let levels = match order.side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        };
        let at = find_level(levels, order.side, order.price);
        let level = match at {
            Ok(i) => &mut levels[i],
            Err(i) => {
                levels.insert(i, Level { price: order.price, total: 0, head: NIL, tail: NIL });
                &mut levels[i]
            }
        };
        level.total += order.remaining;
        let tail = level.tail;
        if tail == NIL {
            level.head = slot;
        } else {
            self.slots[tail as usize].next = slot;
        }
        level.tail = slot;
        self.slots[slot as usize].prev = tail;
    }

    /// Takes `qty` from a resting order and moves `margin` out of its lock; removes the
    /// order when nothing remains. Returns the order as it is afterwards.
    pub fn fill(&mut self, id: OrderId, qty: Lots, margin: Units) -> Option<Resting> {
        let slot = *self.index.get(&id)?;
        let order = &mut self.slots[slot as usize].order;
        debug_assert!(qty > 0 && qty <= order.remaining);
        order.remaining -= qty;
        order.filled += qty;
        order.locked -= margin;
        let after = *order;
        let levels = self.levels_mut(after.side);
        if let Ok(i) = find_level(levels, after.side, after.price) {
            levels[i].total -= qty;
        }
        if after.remaining == 0 {
            self.remove(id);
        }
        Some(after)
    }

    /// Lowers a resting order's remaining quantity to `remaining` and its lock to
    /// `locked`, in place: it keeps its place in the queue.
    pub fn reduce(&mut self, id: OrderId, remaining: Lots, locked: Units) -> Option<Resting> {
        let slot = *self.index.get(&id)?;
        let order = &mut self.slots[slot as usize].order;
        debug_assert!(remaining > 0 && remaining <= order.remaining);
        let less = order.remaining - remaining;
        order.remaining = remaining;
        order.locked = locked;
        let after = *order;
        let levels = self.levels_mut(after.side);
        if let Ok(i) = find_level(levels, after.side, after.price) {
            levels[i].total -= less;
        }
        Some(after)
    }

    /// Removes an order from the book.
    pub fn remove(&mut self, id: OrderId) -> Option<Resting> {
        let slot = self.index.remove(&id)?;
        let Slot { order, prev, next } = self.slots[slot as usize];
        let levels = match order.side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        };
        if let Ok(i) = find_level(levels, order.side, order.price) {
            let level = &mut levels[i];
            level.total -= order.remaining;
            if prev == NIL { level.head = next } else { self.slots[prev as usize].next = next }
            if next == NIL { level.tail = prev } else { self.slots[next as usize].prev = prev }
            if level.head == NIL {
                levels.remove(i);
            }
        }
        self.free.push(slot);
        Some(order)
    }

    /// Orders of one side in priority order: best price first, then time.
    pub fn iter(&self, side: Side) -> impl Iterator<Item = &Resting> + '_ {
        self.levels(side).iter().rev().flat_map(move |level| {
            let mut slot = level.head;
            std::iter::from_fn(move || {
                (slot != NIL).then(|| {
                    let s = &self.slots[slot as usize];
                    slot = s.next;
                    &s.order
                })
            })
        })
    }

    /// Aggregated levels of one side, best first: `(price, total quantity)`.
    pub fn depth(&self, side: Side) -> impl Iterator<Item = (Ticks, Lots)> + '_ {
        self.levels(side).iter().rev().map(|l| (l.price, l.total))
    }

    fn alloc(&mut self, order: Resting) -> u32 {
        let slot = Slot { order, prev: NIL, next: NIL };
        match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = slot;
                s
            }
            None => {
                self.slots.push(slot);
                u32::try_from(self.slots.len() - 1).unwrap_or_else(|_| panic!("book over 4G orders"))
            }
        }
    }

    fn levels(&self, side: Side) -> &Vec<Level> {
        match side {
            Side::Buy => &self.bids,
            Side::Sell => &self.asks,
        }
    }

    fn levels_mut(&mut self, side: Side) -> &mut Vec<Level> {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }
}

/// Binary search in a side's level array (ascending for bids, descending for asks).
fn find_level(levels: &[Level], side: Side, price: Ticks) -> Result<usize, usize> {
    match side {
        Side::Buy => levels.binary_search_by(|l| l.price.cmp(&price)),
        Side::Sell => levels.binary_search_by(|l| price.cmp(&l.price)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: u64, side: Side, price: Ticks, qty: Lots) -> Resting {
        Resting {
            id: OrderId(id),
            user: UserId(1),
            price,
            remaining: qty,
            filled: 0,
            locked: 0,
            timestamp: 0,
            leverage: 1,
            side,
            reduce_only: false,
            has_client_order_id: false,
        }
    }

    fn ids(book: &Book, side: Side) -> Vec<u64> {
        book.iter(side).map(|o| o.id.0).collect()
    }

    #[test]
    fn priority_is_price_then_time() {
        let mut b = Book::default();
        b.insert(order(1, Side::Buy, 100, 1));
        b.insert(order(2, Side::Buy, 101, 1));
        b.insert(order(3, Side::Buy, 100, 1));
        b.insert(order(4, Side::Sell, 105, 1));
        b.insert(order(5, Side::Sell, 103, 1));
        b.insert(order(6, Side::Sell, 103, 2));
        assert_eq!(ids(&b, Side::Buy), [2, 1, 3]);
        assert_eq!(ids(&b, Side::Sell), [5, 6, 4]);
        assert_eq!(b.best(Side::Sell).unwrap().id, OrderId(5));
        assert_eq!(b.depth(Side::Sell).collect::<Vec<_>>(), [(103, 3), (105, 1)]);
    }

    #[test]
    fn removal_relinks_and_drops_empty_levels() {
        let mut b = Book::default();
        for id in 1..=3 {
            b.insert(order(id, Side::Buy, 100, 1));
        }
        b.remove(OrderId(2));
        assert_eq!(ids(&b, Side::Buy), [1, 3]);
        b.remove(OrderId(1));
        b.remove(OrderId(3));
        assert_eq!(b.best_price(Side::Buy), None);
        assert!(b.is_empty());
        // Slots are reused.
        b.insert(order(9, Side::Buy, 99, 1));
        assert_eq!(b.slots.len(), 3);
        assert_eq!(ids(&b, Side::Buy), [9]);
    }

    #[test]
    fn partial_fill_keeps_place_and_full_fill_removes() {
        let mut b = Book::default();
        b.insert(order(1, Side::Sell, 100, 5));
        b.insert(order(2, Side::Sell, 100, 5));
        let after = b.fill(OrderId(1), 2, 0).unwrap();
        assert_eq!((after.remaining, after.filled), (3, 2));
        assert_eq!(ids(&b, Side::Sell), [1, 2]);
        assert_eq!(b.depth(Side::Sell).next(), Some((100, 8)));
        b.fill(OrderId(1), 3, 0);
        assert_eq!(ids(&b, Side::Sell), [2]);
        assert!(b.get(OrderId(1)).is_none());
    }
}
