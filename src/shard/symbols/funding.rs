//! The funding clock: at every funding time of a symbol it owns (a multiple of the
//! symbol's interval since the epoch), the shard logs a funding tick for that time. The
//! tick is a command like an order, so a replay settles exactly the same payments; a
//! time already settled (by a replay, or by `POST /admin/v1/funding` after it) is refused
//! by the engine and changes nothing. Times missed while the process was down are not
//! caught up: the next one settles at the rate the market then has.

use std::rc::Rc;
use std::time::Duration;

use super::{settle_funding, SymbolRoom};
use crate::shard::core::now_ms;
use crate::engine::perp::next_funding_time;

pub async fn clock(room: Rc<SymbolRoom>) {
    loop {
        let streams = room.streams();
        if streams.is_empty() {
            return;
        }
        let interval = |s: &super::stream::SymbolStream| room.map.symbols[s.index].funding_interval_secs;
        let now = now_ms();
        let Some(due) = streams.iter().map(|s| next_funding_time(now, interval(s))).min() else { return };
        glommio::timer::sleep(Duration::from_millis(u64::try_from(due - now).unwrap_or(0))).await;
        for stream in streams.iter().filter(|s| next_funding_time(due - 1, interval(s)) == due) {
            if stream.market.borrow().perp().last_funding_time < due
                && let Err(e) = settle_funding(stream, due).await
            {
                tracing::warn!(symbol = stream.index, error = ?e, "funding tick not settled");
            }
        }
    }
}
