//! The deadline clock: countdowns (dead man's switch, `POST /v1/countdown` and Binance's
//! `countdownCancelAll`) and good-till-date orders. Every tick, a symbol owned here whose
//! market holds a countdown or an expiry that has come gets a [`Command::CountdownDue`]
//! or [`Command::ExpireDue`] logged. Each cancels exactly what was due by its own logged
//! time, so a replay cancels the same orders, and a renewal logged before it saves the
//! user. Deadlines live in the market's state (and snapshot): after a restart, one that
//! came while the process was down fires on the first tick.

use std::rc::Rc;
use std::time::Duration;

use super::SymbolRoom;
use crate::engine::Command;
use crate::shard::core::now_ms;

/// How often the clock looks: a deadline fires at most this late.
pub const TICK: Duration = Duration::from_millis(100);

/// How long a symbol whose log refused a deadline's command is left alone (one warning
/// a second, not ten, while the log is down).
const BACK_OFF: Duration = Duration::from_secs(1);

pub async fn clock(room: Rc<SymbolRoom>) {
    let mut resting: rustc_hash::FxHashMap<usize, std::time::Instant> = rustc_hash::FxHashMap::default();
    loop {
        glommio::timer::sleep(TICK).await;
        let streams = room.streams();
        if streams.is_empty() {
            return;
        }
        let now = now_ms();
        resting.retain(|_, until| *until > std::time::Instant::now());
        for stream in streams {
            if resting.contains_key(&stream.index) {
                continue;
            }
            let (countdown, expiry) = {
                let market = stream.market.borrow();
                (market.next_countdown().is_some_and(|t| t <= now), market.next_expiry().is_some_and(|t| t <= now))
            };
            let due = [(countdown, Command::CountdownDue { timestamp: now }), (expiry, Command::ExpireDue { timestamp: now })];
            for (_, command) in due.into_iter().filter(|(due, _)| *due) {
                if let Err(e) = stream.submit(command).await {
                    tracing::warn!(symbol = stream.index, error = ?e, "deadline not settled");
                    resting.insert(stream.index, std::time::Instant::now() + BACK_OFF);
                    break;
                }
            }
        }
    }
}
