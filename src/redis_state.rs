//! Hot state in Redis: the key layout and the Lua scripts of the risk step and of
//! settlement. (The shard does not use them yet: the in-process [`crate::accounts`]
//! is the hot state today; this is the layer the Redis implementation is built on.)
//!
//! - Every key of a user carries the hash tag `{u:<account id>}`, so all of them live in
//!   one slot of a Redis Cluster and one script can touch them atomically.
//! - Money is integer 1e-8 USDT. Scripts never compute with it: Lua numbers are
//!   doubles, exact only up to 2^53. They pass the amounts the exchange computed, as
//!   strings, to `HINCRBY`/`INCRBY` (exact 64-bit arithmetic in Redis) and only test
//!   the *sign* of what those return, which a double always gets right.
//! - Settlement is idempotent: every application carries the symbol's event sequence,
//!   and a user's `applied` hash keeps the last one applied per symbol (events of a
//!   symbol arrive in sequence order), so a replayed event changes nothing.

use crate::engine::{OrderId, UserId};

fn tag(user: UserId) -> String {
    format!("{{u:{:016x}}}", user.0)
}

/// `total`, `available`, `locked` of the user's USDT balance.
pub fn balance_key(user: UserId) -> String {
    format!("balance:{}:USDT", tag(user))
}

/// Orders counted in one second, for the rate limit.
pub fn rate_key(user: UserId, second: i64) -> String {
    format!("rate:{}:{second}", tag(user))
}

/// What an open order still holds locked.
pub fn lock_key(user: UserId, order: OrderId) -> String {
    format!("margin_lock:{}:{}", tag(user), order.0)
}

/// Last event sequence applied, per symbol.
pub fn applied_key(user: UserId) -> String {
    format!("applied:{}", tag(user))
}

/// The user's position on a symbol.
pub fn position_key(user: UserId, symbol: &str) -> String {
    format!("position:{}:{symbol}", tag(user))
}

/// The risk step in one round trip: rate limit, available check, margin lock.
///
/// KEYS: balance, rate, lock. ARGV: rate limit (0: off), amount.
/// Returns 0 (locked), 1 (rate limited), 2 (insufficient margin), 3 (already reserved).
/// A refusal changes nothing.
pub const RESERVE: &str = r"
if redis.call('EXISTS', KEYS[3]) == 1 then return 3 end
local limit = tonumber(ARGV[1])
if limit > 0 then
  local n = redis.call('INCR', KEYS[2])
  if n == 1 then redis.call('EXPIRE', KEYS[2], 2) end
  if n > limit then
    redis.call('DECR', KEYS[2])
    return 1
  end
end
if redis.call('HINCRBY', KEYS[1], 'available', '-' .. ARGV[2]) < 0 then
  redis.call('HINCRBY', KEYS[1], 'available', ARGV[2])
  if limit > 0 then redis.call('DECR', KEYS[2]) end
  return 2
end
redis.call('HINCRBY', KEYS[1], 'locked', ARGV[2])
redis.call('SET', KEYS[3], ARGV[2])
return 0
";

/// Applies one event's effect on one user, once.
///
/// KEYS: balance, applied, lock, position. ARGV: symbol, seq, total delta, margin
/// released, lock consumed, then position fields (size, cost, margin, realizedPnl, fees,
/// leverage) or nothing to leave the position alone.
/// Returns 1 if applied, 0 if this sequence was already applied.
pub const APPLY: &str = r"
local last = redis.call('HGET', KEYS[2], ARGV[1])
if last and tonumber(last) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'total', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'locked', '-' .. ARGV[4])
redis.call('HINCRBY', KEYS[1], 'available', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'available', ARGV[4])
if redis.call('EXISTS', KEYS[3]) == 1 then
  if redis.call('INCRBY', KEYS[3], '-' .. ARGV[5]) <= 0 then redis.call('DEL', KEYS[3]) end
end
if #ARGV >= 11 then
  redis.call('HSET', KEYS[4], 'size', ARGV[6], 'cost', ARGV[7], 'margin', ARGV[8],
    'realizedPnl', ARGV[9], 'fees', ARGV[10], 'leverage', ARGV[11])
end
return 1
";

/// A deposit or withdrawal (negative), idempotent by its transfer id.
///
/// KEYS: balance, transfer marker. ARGV: amount. Returns 0 (applied), 1 (already
/// applied), 2 (a withdrawal beyond available: nothing changed).
pub const TRANSFER: &str = r"
if redis.call('SET', KEYS[2], ARGV[1], 'NX') == false then return 1 end
if redis.call('HINCRBY', KEYS[1], 'available', ARGV[1]) < 0 then
  local undo
  if string.sub(ARGV[1], 1, 1) == '-' then undo = string.sub(ARGV[1], 2) else undo = '-' .. ARGV[1] end
  redis.call('HINCRBY', KEYS[1], 'available', undo)
  redis.call('DEL', KEYS[2])
  return 2
end
redis.call('HINCRBY', KEYS[1], 'total', ARGV[1])
return 0
";

/// The marker of an applied transfer.
pub fn transfer_key(user: UserId, transfer_id: &str) -> String {
    format!("transfer:{}:{transfer_id}", tag(user))
}
