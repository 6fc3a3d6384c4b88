//! Hot state in Redis: the key layout and the Lua scripts.
//!
//! - Every key of a user carries the hash tag `{u:<account id>}`, so all of them live in
//!   one slot of a Redis Cluster and one script can touch them atomically. A prefix
//!   (`EXCHANGE_REDIS_PREFIX`) lets several exchanges share one Redis.
//! - Money is integer 1e-8 USDT. Scripts never compute with it: Lua numbers are
//!   doubles, exact only up to 2^53. They pass the amounts the exchange computed, as
//!   strings, to `HINCRBY`/`INCRBY` (exact 64-bit arithmetic in Redis) and only test
//!   the *sign* of what those return, which a double always gets right.
//! - Settlement is idempotent: each write of a command's results carries the symbol and
//!   the command's log offset, and a user's `applied` hash keeps the last offset applied
//!   per symbol, so a replayed write changes nothing.

use std::sync::LazyLock;

use redis::Script;

use crate::engine::{ClientOrderId, OrderId, UserId};

/// Key names, under an optional prefix.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    prefix: String,
}

fn tag(user: UserId) -> String {
    format!("{{u:{:016x}}}", user.0)
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `total`, `available`, `locked` of the user's USDT balance.
    pub fn balance(&self, user: UserId) -> String {
        format!("{}balance:{}:USDT", self.prefix, tag(user))
    }

    /// What an open order locked when it was placed.
    pub fn lock(&self, user: UserId, order: OrderId) -> String {
        format!("{}{}", self.lock_prefix(user), order.0)
    }

    /// Last command offset applied, per symbol.
    pub fn applied(&self, user: UserId) -> String {
        format!("{}applied:{}", self.prefix, tag(user))
    }

    /// The user's position on a symbol: `size`, `cost`, `margin`, `realizedPnl`, `fees`,
    /// `leverage`.
    pub fn position(&self, user: UserId, symbol: &str) -> String {
        format!("{}position:{}:{symbol}", self.prefix, tag(user))
    }

    /// The ids of the user's open orders.
    pub fn active(&self, user: UserId) -> String {
        format!("{}orders:active:{}", self.prefix, tag(user))
    }

    /// One order, as JSON.
    pub fn order(&self, user: UserId, order: OrderId) -> String {
        format!("{}{}", self.order_prefix(user), order.0)
    }

    /// The order a clientOrderId names.
    pub fn client_order(&self, user: UserId, cid: &ClientOrderId) -> String {
        format!("{}{}", self.client_order_prefix(user), cid.as_str())
    }

    pub fn order_prefix(&self, user: UserId) -> String {
        format!("{}order:{}:", self.prefix, tag(user))
    }

    pub fn lock_prefix(&self, user: UserId) -> String {
        format!("{}margin_lock:{}:", self.prefix, tag(user))
    }

    pub fn client_order_prefix(&self, user: UserId) -> String {
        format!("{}client_order:{}:", self.prefix, tag(user))
    }

    /// The user's latest fills, newest first, as JSON.
    pub fn fills(&self, user: UserId) -> String {
        format!("{}fills:{}", self.prefix, tag(user))
    }

    /// Set when the exchange stopped cleanly with this partition's hot state whole: the
    /// ledger's fingerprint then, so the next start can skip the rebuild if it matches.
    pub fn clean(&self, partition: u32) -> String {
        format!("{}clean:{{p:{partition:02}}}", self.prefix)
    }

    /// Present while an account partition's hot state is whole. Partitions are spread
    /// over the cluster's slots, so losing any node loses some of these.
    pub fn marker(&self, partition: u32) -> String {
        format!("{}hot:{{p:{partition:02}}}", self.prefix)
    }
}

/// Lists of writes, each to one user's keys, each applied at most once per (symbol,
/// offset) when guarded; several lists (segments) travel in one call, so that a batch
/// pays for one script invocation instead of one per change (the invocation, not the
/// commands, was 60 % of Redis's time per order).
///
/// KEYS: the keys the writes name. ARGV: segments, each: index of the user's `applied`
/// hash, guard symbol (empty: unguarded), guard offset, index of a key that must exist
/// (0: none), number of writes, then the writes, each as command, key index, argument
/// count, arguments. The pseudo-command `FORGET_OPEN` (arguments: the user's order, lock
/// and clientOrderId key prefixes) deletes every order the user's open-order set names,
/// with its lock and clientOrderId, and the set: what a rebuild does before it writes the
/// orders the log knows (keys of one user share a slot, so naming them here is
/// cluster-safe; a call holds one user's segments only on a cluster).
/// A segment whose required key is missing (the user's hot state was lost) writes
/// nothing, nor does one whose offset was already applied. Returns the number of
/// segments written, or -1 if any segment found its required key missing.
pub const WRITE: &str = r"
local i = 1
local written = 0
local lost = false
while i <= #ARGV do
  local applied = KEYS[tonumber(ARGV[i])]
  local symbol, offset = ARGV[i + 1], ARGV[i + 2]
  local required = tonumber(ARGV[i + 3])
  local count = tonumber(ARGV[i + 4])
  i = i + 5
  local apply = true
  if required > 0 and redis.call('EXISTS', KEYS[required]) == 0 then
    apply = false
    lost = true
  end
  if apply and symbol ~= '' then
    local last = redis.call('HGET', applied, symbol)
    if last and tonumber(last) >= tonumber(offset) then
      apply = false
    else
      redis.call('HSET', applied, symbol, offset)
    end
  end
  for _ = 1, count do
    local n = tonumber(ARGV[i + 2])
    if apply then
      local key = KEYS[tonumber(ARGV[i + 1])]
      if ARGV[i] == 'FORGET_OPEN' then
        for _, id in ipairs(redis.call('SMEMBERS', key)) do
          local order = redis.call('GET', ARGV[i + 3] .. id)
          if order then
            local ok, view = pcall(cjson.decode, order)
            if ok and type(view.client_order_id) == 'string' then redis.call('DEL', ARGV[i + 5] .. view.client_order_id) end
          end
          redis.call('DEL', ARGV[i + 3] .. id, ARGV[i + 4] .. id)
        end
        redis.call('DEL', key)
      else
        redis.call(ARGV[i], key, unpack(ARGV, i + 3, i + 2 + n))
      end
    end
    i = i + 3 + n
  end
  if apply then written = written + 1 end
end
if lost then return -1 end
return written
";

pub static WRITE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(WRITE));

/// One user's list of writes: a segment of a [`WRITE`] call.
#[derive(Debug)]
pub struct Writes {
    user: UserId,
    keys: Vec<String>,
    ops: Vec<String>,
    count: usize,
    guard: Option<(String, u64)>,
    required: usize,
}

impl Writes {
    /// Writes to `user`'s keys (their `applied` hash is `KEYS[1]`).
    pub fn new(keys: &Keys, user: UserId) -> Self {
        Self { user, keys: vec![keys.applied(user)], ops: Vec::new(), count: 0, guard: None, required: 0 }
    }

    /// Applied once per (symbol, offset), in increasing offset order.
    #[must_use]
    pub fn guarded(mut self, symbol: &str, offset: u64) -> Self {
        self.guard = Some((symbol.to_owned(), offset));
        self
    }

    /// Nothing is written unless `key` exists.
    #[must_use]
    pub fn requiring(mut self, key: String) -> Self {
        self.required = self.key_index(key);
        self
    }

    fn key_index(&mut self, key: String) -> usize {
        match self.keys.iter().position(|k| *k == key) {
            Some(i) => i + 1,
            None => {
                self.keys.push(key);
                self.keys.len()
            }
        }
    }

    /// The margin lock of an order the ledger has just accepted: moved from available to
    /// locked, recorded under the order, and the order in the open set at once, so that a
    /// lock whose order never reaches the log (a crash in between) is still found by a
    /// rebuild and by the consistency check. Written only to a user whose balance exists.
    pub fn lock_margin(keys: &Keys, user: UserId, order: OrderId, amount: i64) -> Self {
        let balance = keys.balance(user);
        let mut w = Self::new(keys, user).requiring(balance.clone());
        if amount != 0 {
            w.op("HINCRBY", balance.clone(), ["locked".to_owned(), amount.to_string()]);
            w.op("HINCRBY", balance, ["available".to_owned(), (-amount).to_string()]);
        }
        w.op("SET", keys.lock(user, order), [amount]);
        w.op("SADD", keys.active(user), [order.0]);
        w
    }

    /// Adds `command key args...`.
    pub fn op<I, A>(&mut self, command: &str, key: String, args: I) -> &mut Self
    where
        I: IntoIterator<Item = A>,
        A: ToString,
    {
        let index = self.key_index(key);
        let args: Vec<String> = args.into_iter().map(|a| a.to_string()).collect();
        self.count += 1;
        self.ops.push(command.to_owned());
        self.ops.push(index.to_string());
        self.ops.push(args.len().to_string());
        self.ops.extend(args);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Whose keys these are.
    pub fn user(&self) -> UserId {
        self.user
    }

    /// The script call.
    pub fn into_op(self) -> exchange_io::redis::Op {
        Self::into_one_op(vec![self])
    }

    /// One script call applying several lists in order. On a cluster they must all be one
    /// user's (one slot).
    pub fn into_one_op(all: Vec<Self>) -> exchange_io::redis::Op {
        let mut keys = Vec::new();
        let mut args = Vec::new();
        for w in all {
            let base = keys.len();
            let (symbol, offset) = w.guard.unwrap_or_default();
            let required = if w.required == 0 { 0 } else { base + w.required };
            args.extend([(base + 1).to_string(), symbol, offset.to_string(), required.to_string(), w.count.to_string()]);
            // Key indexes move by `base`; the rest is copied as it is.
            let mut ops = w.ops.into_iter();
            while let Some(command) = ops.next() {
                let index: usize = ops.next().and_then(|i| i.parse().ok()).unwrap_or(0);
                let n: usize = ops.next().and_then(|i| i.parse().ok()).unwrap_or(0);
                args.push(command);
                args.push((base + index).to_string());
                args.push(n.to_string());
                args.extend(ops.by_ref().take(n));
            }
            keys.extend(w.keys);
        }
        exchange_io::redis::Op::Script { script: &WRITE_SCRIPT, keys, args }
    }
}
