//! Hot state in Redis: the key layout and the Lua scripts.
//!
//! - Every key of a user carries the hash tag `{u:<account id>}`, so all of them live in
//!   one slot of a Redis Cluster and one script can touch them atomically. A prefix
//!   (`EXCHANGE_REDIS_PREFIX`) lets several exchanges share one Redis.
//! - Money is integer 1e-8 USDT, written as the decimal strings of the exact integers
//!   the ledger holds. Scripts never compute with it (Lua numbers are doubles, exact
//!   only up to 2^53).
//! - Writes are absolute (a balance's three fields, an order's JSON, a position's
//!   fields), taken from the ledger when a batch is handed over, so writing one twice
//!   changes nothing and no per-command offsets are needed to make them idempotent. This
//!   departs from `HINCRBY` deltas on purpose: deltas need an offset guard per write,
//!   and the guard plus the deltas were most of Redis's work per order.

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

    /// The user's position on a symbol: `size`, `cost`, `margin`, `realizedPnl`, `fees`,
    /// `leverage`.
    pub fn position(&self, user: UserId, symbol: &str) -> String {
        format!("{}position:{}:{symbol}", self.prefix, tag(user))
    }

    /// A symbol's `index` and `mark` price (in ticks; empty before the first index
    /// price) and its share of the `insuranceFund` (units). Written by the symbol's owner.
    pub fn market(&self, symbol: &str) -> String {
        format!("{}market:{symbol}", self.prefix)
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

/// Lists of writes, each to one user's keys, applied in one call; what a rewrite of users
/// from the ledger sends (the rebuild, a repair), since only a script can delete what a
/// user's open-order set names. The write-behind sends plain commands instead
/// ([`Writes::into_cmds`]): interpreting a generic script cost Redis more than the
/// commands themselves.
///
/// KEYS: the keys the writes name. ARGV: segments, each: number of writes, then the
/// writes, each as command, key index, argument count, arguments. The pseudo-command
/// `FORGET_OPEN` (arguments: the user's order, lock and clientOrderId key prefixes)
/// deletes every order the user's open-order set names, with its lock and clientOrderId,
/// and the set: what a rewrite does before it writes the orders the log knows (keys of
/// one user share a slot, so naming them here is cluster-safe; a call holds one user's
/// segment only on a cluster). Returns the number of segments written.
pub const WRITE: &str = r"
local i = 1
local written = 0
while i <= #ARGV do
  local count = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, count do
    local n = tonumber(ARGV[i + 2])
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
    i = i + 3 + n
  end
  written = written + 1
end
return written
";

pub static WRITE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(WRITE));

/// One user's list of writes: plain commands for a pipeline, or a segment of a
/// [`WRITE`] call.
#[derive(Debug, Default)]
pub struct Writes {
    ops: Vec<Write>,
}

#[derive(Debug)]
struct Write {
    command: &'static str,
    key: String,
    args: Vec<String>,
}

impl Writes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `command key args...`.
    pub fn op<I, A>(&mut self, command: &'static str, key: String, args: I) -> &mut Self
    where
        I: IntoIterator<Item = A>,
        A: ToString,
    {
        self.ops.push(Write { command, key, args: args.into_iter().map(|a| a.to_string()).collect() });
        self
    }

    /// The writes as plain commands, in order (none may be a pseudo-command).
    pub fn into_cmds(self) -> Vec<redis::Cmd> {
        self.ops
            .into_iter()
            .map(|w| {
                let mut cmd = redis::cmd(w.command);
                cmd.arg(w.key).arg(w.args);
                cmd
            })
            .collect()
    }

    /// The script call.
    pub fn into_op(self) -> exchange_io::redis::Op {
        Self::into_one_op(vec![self])
    }

    /// One script call applying several lists in order. On a cluster they must all be one
    /// user's (one slot).
    pub fn into_one_op(all: Vec<Self>) -> exchange_io::redis::Op {
        let mut keys: Vec<String> = Vec::new();
        let mut args = Vec::new();
        for w in all {
            let base = keys.len();
            args.push(w.ops.len().to_string());
            for op in w.ops {
                // Each key once per segment (a user's keys repeat across its writes).
                let index = match keys[base..].iter().position(|k| *k == op.key) {
                    Some(i) => base + i + 1,
                    None => {
                        keys.push(op.key);
                        keys.len()
                    }
                };
                args.extend([op.command.to_owned(), index.to_string(), op.args.len().to_string()]);
                args.extend(op.args);
            }
        }
        exchange_io::redis::Op::Script { script: &WRITE_SCRIPT, keys, args }
    }
}
