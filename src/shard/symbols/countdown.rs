//! The countdown clock (dead man's switch, `POST /v1/countdown` and Binance's
//! `countdownCancelAll`): every tick, a symbol owned here whose market holds a countdown
//! that ran out gets a [`Command::CountdownDue`] logged. The command cancels the orders
//! of exactly the users whose deadlines passed by its own logged time, so a replay
//! cancels the same ones, and a renewal logged before it saves the user. Deadlines live
//! in the market's state (and snapshot): after a restart, a countdown that ran out while
//! the process was down fires on the first tick.

use std::rc::Rc;
use std::time::Duration;

use super::SymbolRoom;
use crate::engine::Command;
use crate::shard::core::now_ms;

/// How often the clock looks: a countdown fires at most this late.
pub const TICK: Duration = Duration::from_millis(100);

pub async fn clock(room: Rc<SymbolRoom>) {
    loop {
        glommio::timer::sleep(TICK).await;
        let streams = room.streams();
        if streams.is_empty() {
            return;
        }
        let now = now_ms();
        for stream in streams {
            if stream.market.borrow().next_countdown().is_some_and(|due| due <= now)
                && let Err(e) = stream.submit(Command::CountdownDue { timestamp: now }).await
            {
                tracing::warn!(symbol = stream.index, error = ?e, "countdown not settled");
            }
        }
    }
}
