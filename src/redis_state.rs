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

use redis::{RedisWrite, Script, ToRedisArgs};

use crate::engine::{ClientOrderId, OrderId, UserId};

/// Key names, under an optional prefix.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    prefix: String,
}

/// The hash tag of a user's keys, written into the key where it is formatted.
fn tag(user: UserId) -> impl std::fmt::Display {
    struct Tag(u64);
    impl std::fmt::Display for Tag {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{{u:{:016x}}}", self.0)
        }
    }
    Tag(user.0)
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
        format!("{}margin_lock:{}:{}", self.prefix, tag(user), order.0)
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
        format!("{}order:{}:{}", self.prefix, tag(user), order.0)
    }

    /// The order a clientOrderId names.
    pub fn client_order(&self, user: UserId, cid: &ClientOrderId) -> String {
        format!("{}client_order:{}:{}", self.prefix, tag(user), cid.as_str())
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
/// [`WRITE`] call. Each is built as the command it is sent as, its arguments written
/// straight into it (no string of their own).
#[derive(Default)]
pub struct Writes {
    cmds: Vec<redis::Cmd>,
}

/// An argument written as JSON.
pub struct Json<'a, T>(pub &'a T);

impl<T: serde::Serialize> ToRedisArgs for Json<'_, T> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        let _ = serde_json::to_writer(out.writer_for_next_arg(), self.0);
    }
}

impl Writes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `command key args...` (`args` one argument, or a tuple, list or array of them).
    pub fn op(&mut self, command: &'static str, key: String, args: impl ToRedisArgs) -> &mut Self {
        let mut cmd = redis::cmd(command);
        cmd.arg(key).arg(args);
        self.cmds.push(cmd);
        self
    }

    /// Adds `DEL key`.
    pub fn del(&mut self, key: String) -> &mut Self {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(key);
        self.cmds.push(cmd);
        self
    }

    /// The writes as plain commands, in order (none may be a pseudo-command).
    pub fn into_cmds(self) -> Vec<redis::Cmd> {
        self.cmds
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
            args.push(w.cmds.len().to_string());
            for cmd in w.cmds {
                let mut parts = cmd.args_iter().map(|a| match a {
                    redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    redis::Arg::Cursor => String::new(),
                });
                let (command, key) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
                let rest: Vec<String> = parts.collect();
                // Each key once per segment (a user's keys repeat across its writes).
                let index = match keys[base..].iter().position(|k| *k == key) {
                    Some(i) => base + i + 1,
                    None => {
                        keys.push(key);
                        keys.len()
                    }
                };
                args.extend([command, index.to_string(), rest.len().to_string()]);
                args.extend(rest);
            }
        }
        exchange_io::redis::Op::Script { script: &WRITE_SCRIPT, keys, args }
    }
}

#[cfg(test)]
mod tests {
    use super::{Json, Writes};

    #[test]
    fn a_write_is_the_command_it_would_be_with_its_arguments_as_strings() {
        let mut w = Writes::new();
        w.op("SET", "k".to_owned(), (Json(&serde_json::json!({"a": 1})), "EX", 86_400u32));
        w.op("HSET", "b".to_owned(), ("total", -12_345_678_901_234_567_890i128, "leverage", 20u32));
        w.del("k".to_owned());
        let packed: Vec<Vec<u8>> = w.into_cmds().iter().map(redis::Cmd::get_packed_command).collect();
        let expected = [
            redis::cmd("SET").arg("k").arg(r#"{"a":1}"#).arg("EX").arg("86400").get_packed_command(),
            redis::cmd("HSET").arg("b").arg("total").arg("-12345678901234567890").arg("leverage").arg("20").get_packed_command(),
            redis::cmd("DEL").arg("k").get_packed_command(),
        ];
        assert_eq!(packed, expected);
    }

    #[test]
    fn a_script_segment_names_each_key_once_and_carries_every_argument() {
        let mut w = Writes::new();
        w.op("SADD", "active".to_owned(), 7u64);
        w.op("FORGET_OPEN", "active".to_owned(), ("o:", "l:", "c:"));
        w.del("fills".to_owned());
        let exchange_io::redis::Op::Script { keys, args, .. } = w.into_op() else { panic!("a script call") };
        assert_eq!(keys, ["active", "fills"]);
        let expected = ["3", "SADD", "1", "1", "7", "FORGET_OPEN", "1", "3", "o:", "l:", "c:", "DEL", "2", "0"];
        assert_eq!(args, expected);
    }
}
