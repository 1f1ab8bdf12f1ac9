//! The lock server's protocol, without any I/O: key names, the Lua scripts and what each returns,
//! reply decoding, input validation, and the validity arithmetic.
//!
//! Every front end (the blocking [`RedisLock`](crate::RedisLock) today) builds its requests here
//! and decodes the replies here; it only moves bytes and waits. Nothing in this module touches a
//! socket or a clock other than the one it is handed.
//!
//! # Keys
//!
//! For a resource `name` under the key prefix `p` (default `fencelock:`):
//!
//! | key | holds | lifetime |
//! |---|---|---|
//! | `p{name}:lock` | the holder's `nonce:token` | the lease's TTL |
//! | `p{name}:token` | the last token issued for `name` | [`COUNTER_IDLE`] after its last use |
//! | `p{name}:fenced` | the highest token a [`RedisFenced`](crate::RedisFenced) admitted | no TTL |
//! | `p{name}:queue` | the waiters of [`acquire_timeout`](crate::RedisLock::acquire_timeout), in order (a sorted set: ticket → waiter) | twice the longest liveness window after the last waiter's last heartbeat |
//! | `p{name}:alive` | each waiter's liveness deadline (a sorted set: server ms → waiter) | as `queue` |
//! | `p{name}:wake:<waiter>` | the hand-off's wake-up for one waiter (a list it pops) | the hand-off grace |
//!
//! The queue is described in [`queue`]: who waits, how the release hands the lock to the first
//! live waiter, and how a waiter that died drops out.
//!
//! The `{name}` hash tag keeps a resource's keys on one slot of a Redis Cluster, which is why
//! names and prefixes may not contain braces.
//!
//! # Tokens
//!
//! A token is the larger of the resource's counter + 1 and the server's `TIME` in µs, computed
//! by the server inside the script that grants the lock. So tokens grow across grants while the
//! counter survives (even if the server's clock goes back), *and* — with no counter at all —
//! whenever the clock of the server that issues the next token is ahead of every token issued
//! before: after a restart that lost the counter, a counter that expired [`COUNTER_IDLE`] after
//! its last use, or a failover to a replica that missed the last grants (its clock then needs to
//! be behind the old master's by less than the failover took). Both would have to fail at once
//! for a token to repeat. Lua numbers are doubles: tokens stay below 2⁵³ (exact in a double)
//! until the year 2255, every token crosses the Lua boundary as a string of digits (`%.0f`, never
//! Lua's default `%.14g`), and the script refuses to issue one at or above 2⁵³.

use core::time::Duration;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::LazyLock;
use std::time::{Instant, SystemTime};

use fencelock::{FencingToken, LeaseLost, StaleToken};
use redis::{Cmd, Script, ToRedisArgs, Value};

use pipeline::PIPELINE_LUA;

use crate::error::{Error, InvalidInput};

pub(crate) mod driver;
pub(crate) mod pipeline;
pub(crate) mod queue;
pub(crate) mod quorum;
pub(crate) mod resp;
pub(crate) mod versioned;

/// The shortest TTL accepted: a lease must outlast its drift allowance with room for a round trip.
pub const MIN_TTL: Duration = Duration::from_millis(5);

/// The longest TTL accepted, 2⁴⁰ ms (about 34.8 years): far below what `PX` can express, so a TTL
/// is refused, never wrapped or clamped.
pub const MAX_TTL: Duration = Duration::from_millis(1 << 40);

/// The longest resource name accepted, in bytes. Longer names are refused with
/// [`Error::InvalidInput`] rather than stored as keys of any size.
pub const MAX_NAME_LEN: usize = 1024;

/// The longest key prefix accepted, in bytes.
pub const MAX_PREFIX_LEN: usize = 256;

/// The largest token the server issues or a [`RedisFenced`](crate::RedisFenced) accepts: 2⁵³ − 1,
/// the largest integer every double (Lua's only number type) holds exactly.
pub const MAX_TOKEN: u64 = (1 << 53) - 1;

/// How long a resource's token counter outlives its last acquisition. A counter that expired is
/// reborn from the server's clock, above every token issued before, so no key is left behind
/// forever for a resource that is no longer locked.
pub const COUNTER_IDLE: Duration = Duration::from_secs(24 * 60 * 60);

/// The clock-drift allowance for a lease of `ttl`: 1% of the TTL plus 2 ms.
///
/// It covers the server's clock running faster than ours while the lease runs, and expiry
/// granularity. Local validity is the TTL minus this, measured from before the request was sent.
#[inline]
#[must_use]
pub fn drift_allowance(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

/// When a lease of `ttl` requested at `sent` stops being valid on the local monotonic clock:
/// `sent + ttl − drift`, conservative by construction (the server's TTL started later).
#[inline]
pub(crate) fn valid_until(sent: Instant, ttl: Duration) -> Instant {
    // MIN_TTL > drift_allowance(MIN_TTL), and ttl ≤ MAX_TTL keeps the sum far from overflow;
    // `checked_add` still turns an impossible overflow into "valid until the request was sent".
    sent.checked_add(ttl.saturating_sub(drift_allowance(ttl)))
        .unwrap_or(sent)
}

/// `ttl` in whole milliseconds for `PX`/`PEXPIRE`, rounded up (the server holds at least as long
/// as the client believes), or [`Error::InvalidInput`] outside [`MIN_TTL`]..=[`MAX_TTL`].
pub(crate) fn ttl_millis(ttl: Duration) -> Result<u64, Error> {
    if ttl < MIN_TTL {
        return Err(InvalidInput::new(format!(
            "TTL {ttl:?} is shorter than the minimum {MIN_TTL:?}: a lease must outlast its \
             clock-drift allowance and a round trip; use a longer TTL"
        ))
        .into());
    }
    if ttl > MAX_TTL {
        return Err(InvalidInput::new(format!(
            "TTL {ttl:?} is longer than the maximum {MAX_TTL:?}; use a shorter TTL and renew"
        ))
        .into());
    }
    let millis = ttl.as_nanos().div_ceil(1_000_000);
    // ≤ 2^40 by the check above.
    Ok(u64::try_from(millis).unwrap_or(u64::MAX))
}

/// Checks a resource name: non-empty, at most [`MAX_NAME_LEN`] bytes, no braces.
pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(InvalidInput::new("the resource name is empty: name what you lock").into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(InvalidInput::new(format!(
            "the resource name is {} bytes, more than {MAX_NAME_LEN}: use a shorter name (or a \
             hash of a long one)",
            name.len()
        ))
        .into());
    }
    if name.contains(['{', '}']) {
        return Err(InvalidInput::new(format!(
            "the resource name {name:?} contains a brace: braces are reserved for the hash tag \
             that keeps a resource's keys on one Redis Cluster slot"
        ))
        .into());
    }
    Ok(())
}

/// Checks a key prefix: at most [`MAX_PREFIX_LEN`] bytes, no braces.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), Error> {
    if prefix.len() > MAX_PREFIX_LEN || prefix.contains(['{', '}']) {
        return Err(InvalidInput::new(format!(
            "the key prefix {prefix:?} is longer than {MAX_PREFIX_LEN} bytes or contains a brace \
             (reserved for the hash tag)"
        ))
        .into());
    }
    Ok(())
}

/// The keys of one lock, on one hash slot: the lock key, its token counter, and its queue of
/// waiters (the order, and each waiter's liveness deadline).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LockKeys {
    pub(crate) name: String,
    pub(crate) lock: String,
    pub(crate) counter: String,
    pub(crate) queue: String,
    pub(crate) alive: String,
    /// `p{name}:`: where a waiter's wake-up key begins.
    stem: String,
}

impl LockKeys {
    pub(crate) fn new(prefix: &str, name: &str) -> Result<Self, Error> {
        check_name(name)?;
        let stem = format!("{prefix}{{{name}}}:");
        Ok(Self {
            name: name.to_owned(),
            lock: format!("{stem}lock"),
            counter: format!("{stem}token"),
            queue: format!("{stem}queue"),
            alive: format!("{stem}alive"),
            stem,
        })
    }

    /// The key a waiter with `nonce` pops its hand-off from (`p{name}:wake:<nonce>`); the
    /// scripts build the same name from the lock key (see `WAKE_KEY_LUA`).
    pub(crate) fn wake(&self, nonce: &Nonce) -> String {
        format!("{}wake:{}", self.stem, nonce.hex())
    }
}

/// Refuses a fenced resource on a quorum: it is data on one server.
pub(crate) fn check_fenced_on(servers: usize) -> Result<(), Error> {
    check_data_on(servers, "a fenced resource", "fenced")
}

/// Data (a fenced resource, a versioned record) lives on one server: refused on a quorum.
pub(crate) fn check_data_on(servers: usize, what: &str, call: &str) -> Result<(), Error> {
    if servers > 1 {
        return Err(InvalidInput::new(format!(
            "{what} lives on one server, not on a quorum: open a LockServer for the server that \
             keeps it and call {call}() there"
        ))
        .into());
    }
    Ok(())
}

/// The key that holds the highest token a fenced resource `name` admitted.
pub(crate) fn fenced_key(prefix: &str, name: &str) -> Result<String, Error> {
    check_name(name)?;
    Ok(format!("{prefix}{{{name}}}:fenced"))
}

/// On a Redis Cluster, one script may only touch keys of one slot: `InvalidInput` unless the
/// locks `a` and `b` (each on its own `{name}` hash tag) hash to the same slot.
pub(crate) fn check_same_slot(a: &LockKeys, b: &LockKeys) -> Result<(), Error> {
    let slot = |keys: &LockKeys| cluster_slot(&keys.name);
    if slot(a) == slot(b) {
        return Ok(());
    }
    Err(InvalidInput::new(format!(
        "try_acquire_all: {:?} and {:?} are on different slots of the cluster (slots {} and {}); \
         one script can only lock keys of one slot: acquire them one by one, in a fixed order",
        a.name,
        b.name,
        slot(a),
        slot(b)
    ))
    .into())
}

/// The Redis Cluster slot of keys whose hash tag is `tag`: CRC16 (XMODEM: polynomial 0x1021,
/// initial value 0) of the tag, modulo 16384 — the Redis Cluster specification's `HASH_SLOT`.
pub(crate) fn cluster_slot(tag: &str) -> u16 {
    let mut crc: u16 = 0;
    for &byte in tag.as_bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// A Lua script: its source (for `EVAL`, which also loads it) and its SHA1 (for `EVALSHA`).
#[derive(Debug)]
pub(crate) struct Lua {
    code: String,
    script: Script,
}

impl Lua {
    fn new(code: &str) -> Self {
        Self {
            code: code.to_owned(),
            script: Script::new(code),
        }
    }
}

/// One script call, as a value: which script, its keys and its arguments. Front ends turn it into
/// an `EVALSHA` (and load the script after `NOSCRIPT`); it never touches a connection itself.
#[derive(Clone, Debug)]
pub(crate) struct Request {
    lua: &'static Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Request {
    fn new(lua: &'static LazyLock<Lua>) -> Self {
        Self {
            lua: LazyLock::force(lua),
            keys: Vec::with_capacity(2),
            args: Vec::with_capacity(3),
        }
    }

    fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// Whether this request releases a lease (which a server must get after the claim it follows).
    pub(crate) fn is_release(&self) -> bool {
        core::ptr::eq(self.lua, LazyLock::force(&RELEASE))
            || core::ptr::eq(self.lua, LazyLock::force(&RELEASE_ON_QUORUM))
    }

    /// The script this request runs (to load it after `NOSCRIPT`).
    pub(crate) fn script(&self) -> &'static Script {
        &self.lua.script
    }

    /// `EVALSHA sha numkeys keys... args...`.
    pub(crate) fn evalsha(&self) -> Cmd {
        self.command("EVALSHA", self.lua.script.get_hash())
    }

    /// `EVAL source numkeys keys... args...`: runs the script and loads it (after `NOSCRIPT`).
    pub(crate) fn eval(&self) -> Cmd {
        self.command("EVAL", &self.lua.code)
    }

    fn command(&self, name: &str, script: &str) -> Cmd {
        let mut cmd = redis::cmd(name);
        cmd.arg(script)
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }
}

/// `SCRIPT LOAD` of every script a quorum sends, for each new connection: a reply nobody waits
/// for any more (a straggler's) cannot be sent again after `NOSCRIPT`, so the scripts must be
/// there before the first request.
pub(crate) fn load_quorum_scripts(pipe: &mut redis::Pipeline) {
    for lua in [&CLAIM, &STORE, &RENEW, &RELEASE_ON_QUORUM, &LEAVE] {
        pipe.cmd("SCRIPT")
            .arg("LOAD")
            .arg(&LazyLock::force(lua).code);
    }
}

/// Whether `error` says the server does not have the script (restarted, or `SCRIPT FLUSH`).
pub(crate) fn is_noscript(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// `next_token(counter, idle_ms)`: the next token for the counter key — the larger of its value
/// plus one and the server's time in µs — stored back with the idle TTL; a string of digits, or
/// nil past 2⁵³ − 1. The time floor is what a promoted replica that missed the last grants, or
/// a restart that lost the counter, issues above: see the module docs.
const NEXT_TOKEN_LUA: &str = r"
local function next_token(counter, idle_ms)
  local time = redis.call('TIME')
  local token = tonumber(time[1]) * 1000000 + tonumber(time[2])
  local last = redis.call('GET', counter)
  if last and tonumber(last) >= token then
    token = tonumber(last) + 1
  end
  if token > 9007199254740991 then
    return nil
  end
  local digits = string.format('%.0f', token)
  redis.call('SET', counter, digits, 'PX', idle_ms)
  return digits
end
";

/// The queue's helpers, after [`NEXT_TOKEN_LUA`]. A lock's four keys sit at `KEYS[b]` (lock),
/// `KEYS[b + 1]` (counter), `KEYS[b + 2]` (queue: ticket → waiter), `KEYS[b + 3]` (alive: liveness
/// deadline in server ms → waiter). A waiter is `nonce:` followed by its hand-off grace in ms on
/// one server, and `nonce:` alone on a quorum.
const QUEUE_LUA: &str = r"
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]), tonumber(t[2])
end
local function drop(b, waiter)
  redis.call('ZREM', KEYS[b + 2], waiter)
  redis.call('ZREM', KEYS[b + 3], waiter)
end
local function live_head(b)
  if redis.call('EXISTS', KEYS[b + 2]) == 0 then
    return nil
  end
  local s, us = clock()
  local now = s * 1000 + math.floor(us / 1000)
  for _ = 1, 64 do
    local head = redis.call('ZRANGE', KEYS[b + 2], 0, 0)[1]
    if not head then
      return nil
    end
    local alive = redis.call('ZSCORE', KEYS[b + 3], head)
    if alive and tonumber(alive) >= now then
      return head
    end
    drop(b, head)
  end
  return redis.call('ZRANGE', KEYS[b + 2], 0, 0)[1]
end
local function wake_key(b, waiter)
  return string.sub(KEYS[b], 1, -5) .. 'wake:' .. string.sub(waiter, 1, 32)
end
local function hand_off(b, waiter, idle_ms)
  local token = next_token(KEYS[b + 1], idle_ms)
  if not token then
    return nil
  end
  drop(b, waiter)
  local grace = string.sub(waiter, 34)
  redis.call('SET', KEYS[b], string.sub(waiter, 1, 33) .. token, 'PX', grace)
  local wake = wake_key(b, waiter)
  redis.call('RPUSH', wake, token)
  redis.call('PEXPIRE', wake, grace)
  return token
end
local function join(b, waiter, ticket, alive_ms)
  local s, us = clock()
  if ticket == '' then
    ticket = string.format('%.0f', s * 1000000 + us)
  end
  redis.call('ZADD', KEYS[b + 2], 'NX', ticket, waiter)
  local alive = string.format('%.0f', s * 1000 + math.floor(us / 1000) + tonumber(alive_ms))
  redis.call('ZADD', KEYS[b + 3], alive, waiter)
  local keep = 2 * tonumber(alive_ms)
  if redis.call('PTTL', KEYS[b + 2]) < keep then
    redis.call('PEXPIRE', KEYS[b + 2], keep)
    redis.call('PEXPIRE', KEYS[b + 3], keep)
  end
  return ticket
end
";

/// The Lua of a script that uses the queue: the token counter's and the queue's helpers, then
/// `body`. (The two scripts of an uncontended acquire and release define the helpers only once
/// they found a queue: a Lua function definition runs, and costs, on every call.)
fn with_queue(body: &str) -> Lua {
    Lua::new(&format!("{NEXT_TOKEN_LUA}{QUEUE_LUA}{body}"))
}

/// [`ACQUIRE`] for one lock (KEYS: lock, counter, queue, alive), without its loops and tables:
/// the common case, kept cheap for the server. Same arguments and replies; a free lock that live
/// waiters queue for is handed to the first of them (see [`queue`]) and counts as held.
static ACQUIRE_ONE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(&format!(
        r"{NEXT_TOKEN_LUA}
local mine = ARGV[1]
local current = redis.call('GET', KEYS[1])
if current then
  if string.sub(current, 1, #mine) == mine then
    return {{string.sub(current, #mine + 1)}}
  end
  return nil
end
if redis.call('EXISTS', KEYS[3]) == 1 then
{QUEUE_LUA}
  local first = live_head(1)
  if first then
    hand_off(1, first, ARGV[3])
    return nil
  end
end
local token = next_token(KEYS[2], ARGV[3])
if not token then
  return redis.error_reply('fencelock: token space exhausted (2^53)')
end
redis.call('SET', KEYS[1], mine .. token, 'PX', ARGV[2])
return {{token}}
"
    ))
});

/// Acquires every lock named in KEYS (quadruples: lock, counter, queue, alive), all or nothing.
///
/// ARGV: the nonce and a colon (`nonce:`), TTL ms, counter idle ms. Returns an array of tokens
/// (strings of digits) in KEYS order, or nil when any lock is held by another acquisition or has
/// live waiters queued for it (and then holds none of them). Idempotent for one nonce: a lock
/// that already holds this nonce's value (the same request, resent after its reply was lost)
/// counts as granted with the token it got then. Errors if the token space is exhausted.
static ACQUIRE: LazyLock<Lua> = LazyLock::new(|| {
    with_queue(
        r"
local mine = ARGV[1]
local current = {}
local held_by_other = false
for i = 1, #KEYS, 4 do
  current[i] = redis.call('GET', KEYS[i])
  if current[i] and string.sub(current[i], 1, #mine) ~= mine then
    held_by_other = true
  elseif not current[i] and live_head(i) then
    held_by_other = true
  end
end
if held_by_other then
  for i = 1, #KEYS, 4 do
    if current[i] and string.sub(current[i], 1, #mine) == mine then
      redis.call('DEL', KEYS[i])
    end
  end
  return nil
end
local tokens = {}
for i = 1, #KEYS, 4 do
  local token
  if current[i] then
    token = string.sub(current[i], #mine + 1)
  else
    token = next_token(KEYS[i + 1], ARGV[3])
    if not token then
      return redis.error_reply('fencelock: token space exhausted (2^53)')
    end
    redis.call('SET', KEYS[i], mine .. token, 'PX', ARGV[2])
  end
  tokens[#tokens + 1] = token
end
return tokens
",
    )
});

/// One step of a waiter on one server (see [`queue`]). KEYS: lock, counter, queue, alive, the
/// waiter's wake-up list. ARGV: the waiter (`nonce:grace_ms`), TTL ms, counter idle ms, liveness
/// ms, its ticket (empty the first time: the server's time in µs is taken), `1` to leave.
///
/// - The lock holds this nonce (handed off to it, or this request resent): its TTL becomes the
///   requested one; returns {1, token}.
/// - The lock is free and nobody live queues before the waiter: takes it with the next token;
///   returns {1, token}. Either way the waiter is out of the queue.
/// - The lock is free and another live waiter is first: hands it to that one; then as held.
/// - Held, leaving: the waiter leaves the queue; returns {2}.
/// - Held: queues the waiter at its ticket (an earlier place is kept), moves its liveness
///   deadline to now + liveness ms; returns {0, ticket, the lock's PTTL, the waiter's rank}.
static WAIT: LazyLock<Lua> = LazyLock::new(|| {
    with_queue(
        r"
local waiter = ARGV[1]
local mine = string.sub(waiter, 1, 33)
local function granted(token)
  drop(1, waiter)
  redis.call('DEL', KEYS[5])
  return {1, token}
end
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 33) == mine then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return granted(string.sub(current, 34))
end
if not current then
  local first = live_head(1)
  if not first or first == waiter then
    local token = next_token(KEYS[2], ARGV[3])
    if not token then
      return redis.error_reply('fencelock: token space exhausted (2^53)')
    end
    redis.call('SET', KEYS[1], mine .. token, 'PX', ARGV[2])
    return granted(token)
  end
  hand_off(1, first, ARGV[3])
end
if ARGV[6] == '1' then
  drop(1, waiter)
  redis.call('DEL', KEYS[5])
  return {2}
end
local ticket = join(1, waiter, ARGV[5], ARGV[4])
return {0, ticket, redis.call('PTTL', KEYS[1]), redis.call('ZRANK', KEYS[3], waiter)}
",
    )
});

/// Renews a lease. KEYS: lock key. ARGV: the lease's nonce and a colon (`nonce:`), TTL ms.
/// Returns {1} if the key held this acquisition's value (its TTL is now the new one), {0} if the
/// key is gone, {2, value} if it holds another acquisition's value; only {1} changed anything.
static RENEW: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, #ARGV[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1}
elseif current then
  return {2, current}
end
return {0}
",
    )
});

/// Releases a lease on one server. KEYS: lock, counter, queue, alive. ARGV: the lease's nonce and
/// a colon (`nonce:`), counter idle ms. Returns as [`RENEW`] does; only {1} changed anything: the
/// lock went, with the next token, to the first live waiter (see [`queue`]), or is free.
static RELEASE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(&format!(
        r"
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, #ARGV[1]) == ARGV[1] then
  if redis.call('EXISTS', KEYS[3]) == 1 then
{NEXT_TOKEN_LUA}{QUEUE_LUA}
    local first = live_head(1)
    if first and hand_off(1, first, ARGV[2]) then
      return {{1}}
    end
  end
  redis.call('DEL', KEYS[1])
  return {{1}}
elseif current then
  return {{2, current}}
end
return {{0}}
"
    ))
});

/// Releases a lease (or a claim) on one server of a quorum. KEYS: lock, counter, queue, alive.
/// ARGV: `nonce:`, `1` for a lease (it leaves the queue too: it no longer waits) or `0` for the
/// claims of a waiter's attempt that failed (it keeps its place). Returns as [`RELEASE`]. Where
/// the lock is then free, the first live waiter other than this acquisition is woken (one `free`
/// in its wake-up list, which lives 10 s) to try at once: a quorum's grant takes two rounds over
/// several servers, so it cannot be handed off inside one script.
static RELEASE_ON_QUORUM: LazyLock<Lua> = LazyLock::new(|| {
    with_queue(
        r"
local mine = ARGV[1]
local current = redis.call('GET', KEYS[1])
local reply = {0}
if current and string.sub(current, 1, #mine) == mine then
  redis.call('DEL', KEYS[1])
  reply = {1}
elseif current then
  return {2, current}
end
if ARGV[2] == '1' then
  drop(1, mine)
end
local first = live_head(1)
if first and first ~= mine then
  local wake = wake_key(1, first)
  if redis.call('EXISTS', wake) == 0 then
    redis.call('RPUSH', wake, 'free')
    redis.call('PEXPIRE', wake, 10000)
  end
end
return reply
",
    )
});

/// A waiter gives up without a last step (a quorum's waiter, or a cancelled one). KEYS: queue,
/// alive, its wake-up list. ARGV: the waiter. Returns 1.
static LEAVE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return 1
",
    )
});

/// A fenced write. KEYS: the fenced key. ARGV: token, the hash tag every key must carry (empty:
/// any key; a cluster passes the resource's name), then the pipeline (see [`pipeline`]).
/// Returns {1} after recording the token and running every command; {0, highest} when the token
/// is below the highest admitted; the pipeline's refusal ({2, key} or {3, error}) when a key is
/// off the slot. Nothing ran in the last two cases.
static FENCED_WRITE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(&format!(
        r"{PIPELINE_LUA}
local highest = redis.call('GET', KEYS[1])
if highest and tonumber(highest) > tonumber(ARGV[1]) then
  return {{0, highest}}
end
local refused = pipeline_refusal(3, ARGV[2])
if refused then
  return refused
end
redis.call('SET', KEYS[1], ARGV[1])
run_pipeline(3)
return {{1}}
"
    ))
});

/// Round 1 of a quorum acquisition, on each server. KEYS: lock, counter, queue, alive. ARGV:
/// `nonce:`, TTL ms, the waiter's ticket (empty for a single try), liveness ms. A waiter first
/// joins the queue at its ticket (or keeps its place) and moves its liveness deadline, whatever
/// comes next, so that every server orders the same waiters the same way. Then: sets the lock
/// key to `nonce:` (no token yet) if it is absent and no other live waiter queues first — or,
/// where it already holds this nonce (a resend, or an earlier try of the same waiter), gives it
/// the TTL again — and returns {1, floor}, where floor = the larger of the counter and the
/// server's time in µs, as digits: the token must exceed it. Otherwise returns {0, value, PTTL}
/// while another acquisition holds the key, {0, ''} when it is free but a waiter is first; the
/// lock key unchanged. Round 2
/// takes the waiter out of the queue where it stores the token; the lease's release, everywhere.
static CLAIM: LazyLock<Lua> = LazyLock::new(|| {
    with_queue(
        r"
local mine = ARGV[1]
if ARGV[3] ~= '' then
  join(1, mine, ARGV[3], ARGV[4])
end
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, #mine) ~= mine then
  return {0, current, redis.call('PTTL', KEYS[1])}
end
if current then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  local first = live_head(1)
  if first and first ~= mine then
    return {0, ''}
  end
  redis.call('SET', KEYS[1], mine, 'PX', ARGV[2])
end
local s, us = clock()
local floor = s * 1000000 + us
local last = redis.call('GET', KEYS[2])
if last and tonumber(last) > floor then
  return {1, last}
end
return {1, string.format('%.0f', floor)}
",
    )
});

/// Round 2 of a quorum acquisition, on each server that granted round 1. KEYS: lock, counter,
/// queue, alive. ARGV: `nonce:`, token digits, counter idle ms. Only where this acquisition's key
/// is still present: raises the counter to the token (never lowers it), writes the token into the
/// key's value, keeping its TTL, and takes the acquisition out of the queue; returns 1. Returns
/// 0, changing nothing, where the key is gone or another's.
static STORE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local current = redis.call('GET', KEYS[1])
if not current or string.sub(current, 1, #ARGV[1]) ~= ARGV[1] then
  return 0
end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) > last then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
else
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call('SET', KEYS[1], ARGV[1] .. ARGV[2], 'KEEPTTL')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
",
    )
});

/// The four keys of a lock, in the order every queue-aware script takes them.
fn lock_keys(call: &mut Request, keys: &LockKeys) {
    call.key(&keys.lock)
        .key(&keys.counter)
        .key(&keys.queue)
        .key(&keys.alive);
}

/// The round-1 request of a quorum acquisition of `keys` by `nonce`, for `ttl_ms`; a waiter
/// passes its ticket and liveness (see [`queue`]).
pub(crate) fn claim(
    keys: &LockKeys,
    nonce: &Nonce,
    ttl_ms: u64,
    waiter: Option<(&str, u64)>,
) -> Request {
    let mut call = Request::new(&CLAIM);
    lock_keys(&mut call, keys);
    let (ticket, alive_ms) = waiter.unwrap_or(("", 0));
    call.arg(nonce.prefix())
        .arg(ttl_ms)
        .arg(ticket)
        .arg(alive_ms);
    call
}

/// The round-2 request of a quorum acquisition: store `token` where `nonce`'s key still is.
pub(crate) fn store(keys: &LockKeys, nonce: &Nonce, token: FencingToken) -> Request {
    let mut call = Request::new(&STORE);
    lock_keys(&mut call, keys);
    call.arg(nonce.prefix())
        .arg(token.get())
        .arg(COUNTER_IDLE.as_millis() as u64);
    call
}

/// One step of a waiter on one server (see [`WAIT`]): `waiter` is `nonce:grace_ms`.
pub(crate) fn wait(
    keys: &LockKeys,
    nonce: &Nonce,
    waiter: &str,
    ttl_ms: u64,
    alive_ms: u64,
    ticket: &str,
    leave: bool,
) -> Request {
    let mut call = Request::new(&WAIT);
    lock_keys(&mut call, keys);
    call.key(keys.wake(nonce))
        .arg(waiter)
        .arg(ttl_ms)
        .arg(COUNTER_IDLE.as_millis() as u64)
        .arg(alive_ms)
        .arg(ticket)
        .arg(if leave { "1" } else { "0" });
    call
}

/// How long the element that ends a waiter's other pops early lives if no pop takes it.
const UNBLOCK_MS: u64 = 50;

/// Ends a waiter's blocking pop of `wake` on a server early (the pop takes the element at once),
/// after a pop on another server returned. The element expires soon if no pop was blocked.
pub(crate) fn unblock(wake: &str) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd("RPUSH")
        .arg(wake)
        .arg("unblock")
        .ignore()
        .cmd("PEXPIRE")
        .arg(wake)
        .arg(UNBLOCK_MS)
        .ignore();
    pipe
}

/// The waiter `waiter` (of `nonce`) leaves the queue of `keys` (see [`LEAVE`]).
pub(crate) fn leave(keys: &LockKeys, nonce: &Nonce, waiter: &str) -> Request {
    let mut call = Request::new(&LEAVE);
    call.key(&keys.queue)
        .key(&keys.alive)
        .key(keys.wake(nonce))
        .arg(waiter);
    call
}

/// What one server answered to round 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The key is ours there; the token must exceed this floor.
    Granted(u64),
    /// Another acquisition holds the key there, for this much longer (`None`: unknown).
    Held(Option<Duration>),
    /// The key is free there, but another waiter queues first.
    Behind,
}

/// Decodes [`CLAIM`]'s reply.
pub(crate) fn decode_claim(reply: &Value) -> Result<Claim, Error> {
    match reply {
        Value::Array(parts) => match parts.as_slice() {
            [Value::Int(1), floor] => Ok(Claim::Granted(decode_token(floor)?.get())),
            [Value::Int(0), Value::BulkString(value), ..] if value.is_empty() => Ok(Claim::Behind),
            [Value::Int(0), _, Value::Int(pttl)] => Ok(Claim::Held(
                u64::try_from(*pttl).ok().map(Duration::from_millis),
            )),
            [Value::Int(0), _] => Ok(Claim::Held(None)),
            _ => Err(unexpected(format!("unexpected claim reply {reply:?}"))),
        },
        _ => Err(unexpected(format!("unexpected claim reply {reply:?}"))),
    }
}

/// Decodes [`STORE`]'s reply: whether the token was stored.
pub(crate) fn decode_store(reply: &Value) -> Result<bool, Error> {
    match reply {
        Value::Int(1) => Ok(true),
        Value::Int(0) => Ok(false),
        _ => Err(unexpected(format!("unexpected store reply {reply:?}"))),
    }
}

/// The request that acquires `locks` (all or nothing) with `nonce`, for `ttl_ms`.
pub(crate) fn acquire<'a>(
    locks: impl IntoIterator<Item = &'a LockKeys>,
    nonce: &Nonce,
    ttl_ms: u64,
) -> Request {
    let mut call = Request::new(&ACQUIRE);
    for keys in locks {
        lock_keys(&mut call, keys);
    }
    if call.keys.len() == 4 {
        call.lua = LazyLock::force(&ACQUIRE_ONE);
    }
    call.arg(nonce.prefix())
        .arg(ttl_ms)
        .arg(COUNTER_IDLE.as_millis() as u64);
    call
}

/// The request that renews the lease of the acquisition `nonce` on `keys` to `ttl_ms`.
pub(crate) fn renew(keys: &LockKeys, nonce: &Nonce, ttl_ms: u64) -> Request {
    let mut call = Request::new(&RENEW);
    call.key(&keys.lock).arg(nonce.prefix()).arg(ttl_ms);
    call
}

/// The request that releases the lease of the acquisition `nonce` on `keys`, on one server of
/// `servers`: on a single server the release hands the lock to the first live waiter; on a quorum
/// it wakes that waiter.
pub(crate) fn release(keys: &LockKeys, nonce: &Nonce, servers: usize) -> Request {
    if servers > 1 {
        return release_on_quorum(keys, nonce, true);
    }
    let mut call = Request::new(&RELEASE);
    lock_keys(&mut call, keys);
    call.arg(nonce.prefix())
        .arg(COUNTER_IDLE.as_millis() as u64);
    call
}

/// The request that releases what a failed attempt of `nonce` claimed on `keys`, on one server
/// of `servers`. On a quorum the acquisition keeps its place in the queue (a waiter tries again).
pub(crate) fn release_claims(keys: &LockKeys, nonce: &Nonce, servers: usize) -> Request {
    if servers > 1 {
        return release_on_quorum(keys, nonce, false);
    }
    release(keys, nonce, servers)
}

fn release_on_quorum(keys: &LockKeys, nonce: &Nonce, lease: bool) -> Request {
    let mut call = Request::new(&RELEASE_ON_QUORUM);
    lock_keys(&mut call, keys);
    call.arg(nonce.prefix()).arg(if lease { "1" } else { "0" });
    call
}

/// The request that runs `commands` on the fenced resource at `key` if `token` is admitted; on a
/// cluster, `slot_tag` is the resource's name, which every key of `commands` must carry as its
/// hash tag (`sold:{AAPL}`), so that they all live on the resource's slot.
pub(crate) fn fenced_write(
    key: &str,
    token: FencingToken,
    commands: &redis::Pipeline,
    slot_tag: Option<&str>,
) -> Result<Request, Error> {
    check_token(token)?;
    let mut call = Request::new(&FENCED_WRITE);
    call.key(key).arg(token.get()).arg(slot_tag.unwrap_or(""));
    pipeline::encode(&mut call, commands, "fenced")?;
    Ok(call)
}

/// Refuses a token that cannot cross the Lua boundary exactly.
pub(crate) fn check_token(token: FencingToken) -> Result<(), Error> {
    if token.get() > MAX_TOKEN {
        return Err(InvalidInput::new(format!(
            "token {token} is above 2^53 - 1: no lock server issued it, and Lua (whose numbers \
             are doubles) could not compare it exactly"
        ))
        .into());
    }
    Ok(())
}

/// The token inside a lock key's value (`nonce:token`), or `None` for an acquisition of a quorum
/// whose token is not stored yet (`nonce:`).
fn token_of_value(value: &[u8]) -> Result<Option<FencingToken>, Error> {
    let digits = value
        .iter()
        .rposition(|&b| b == b':')
        .map(|colon| &value[colon + 1..]);
    if digits.is_some_and(<[u8]>::is_empty) {
        return Ok(None);
    }
    digits
        .and_then(|d| core::str::from_utf8(d).ok())
        .and_then(|d| d.parse::<u64>().ok())
        .map(|t| Some(FencingToken::new(t)))
        .ok_or_else(|| {
            unexpected(format!(
                "the lock key holds {:?}, which is not a fencelock lease value: is another \
                 program writing to fencelock's keys?",
                String::from_utf8_lossy(value)
            ))
        })
}

/// A token sent back as a string of digits (or an integer).
fn decode_token(value: &Value) -> Result<FencingToken, Error> {
    decode_digits(value).map(FencingToken::new)
}

/// A number the server sent as digits (a token, a version).
fn decode_digits(value: &Value) -> Result<u64, Error> {
    let number = match value {
        Value::BulkString(digits) => core::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse::<u64>().ok()),
        Value::SimpleString(digits) => digits.parse::<u64>().ok(),
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    number.ok_or_else(|| unexpected(format!("expected a number, got {value:?}")))
}

/// Decodes [`ACQUIRE`]'s reply: the tokens in request order, or `None` if a lock was held.
pub(crate) fn decode_acquire(
    reply: &Value,
    expected: usize,
) -> Result<Option<Vec<FencingToken>>, Error> {
    match reply {
        Value::Nil => Ok(None),
        Value::Array(tokens) if tokens.len() == expected => tokens
            .iter()
            .map(decode_token)
            .collect::<Result<_, _>>()
            .map(Some),
        other => Err(unexpected(format!(
            "expected {expected} tokens or nil from the acquire script, got {other:?}"
        ))),
    }
}

/// What a renew or release found in the lock key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Holder {
    /// Our value: the renewal or release took effect.
    Us,
    /// Gone: the lease expired (or the server lost it), nobody holds the lock now.
    Nobody,
    /// Another acquisition's value, with its token (`None`: a quorum acquisition whose token is
    /// not stored there yet).
    Other(Option<FencingToken>),
}

impl Holder {
    /// `Ok` for [`Holder::Us`], the [`LeaseLost`] otherwise.
    pub(crate) fn into_result(self) -> Result<(), Error> {
        match self {
            Holder::Us => Ok(()),
            Holder::Nobody | Holder::Other(None) => Err(Error::Lost(LeaseLost::Expired)),
            Holder::Other(Some(by)) => Err(Error::Lost(LeaseLost::TakenOver { by })),
        }
    }
}

/// A read of who holds a lock, for monitoring (see `RedisLock::status`): the lock key's value and
/// its remaining TTL in ms, in one round trip (`MULTI` is not needed: a script reads both at
/// once).
static PEEK: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
",
    )
});

/// The request that reads who holds `keys`'s lock and for how long.
pub(crate) fn peek(keys: &LockKeys) -> Request {
    let mut call = Request::new(&PEEK);
    call.key(&keys.lock);
    call
}

/// Decodes [`PEEK`]'s reply on one server: the holder's token (`None` inside: a quorum
/// acquisition between its rounds) and the key's remaining TTL, or `None` if nobody holds it.
pub(crate) fn decode_peek(
    reply: &Value,
) -> Result<Option<(Option<FencingToken>, Duration)>, Error> {
    match reply {
        Value::Array(parts) => match parts.as_slice() {
            [Value::Nil, ..] | [] => Ok(None),
            [Value::BulkString(value), ttl] => {
                let ttl = match ttl {
                    Value::Int(ms) => Duration::from_millis(u64::try_from(*ms).unwrap_or(0)),
                    _ => Duration::ZERO,
                };
                Ok(Some((token_of_value(value)?, ttl)))
            }
            _ => Err(unexpected(format!("unexpected peek reply {reply:?}"))),
        },
        _ => Err(unexpected(format!("unexpected peek reply {reply:?}"))),
    }
}

/// Decodes [`RENEW`]'s and [`RELEASE`]'s reply.
pub(crate) fn decode_holder(reply: &Value) -> Result<Holder, Error> {
    match reply {
        Value::Array(parts) => match parts.as_slice() {
            [Value::Int(1)] => Ok(Holder::Us),
            [Value::Int(0)] => Ok(Holder::Nobody),
            [Value::Int(2), Value::BulkString(value)] => token_of_value(value).map(Holder::Other),
            _ => Err(unexpected(format!(
                "unexpected renew/release reply {reply:?}"
            ))),
        },
        _ => Err(unexpected(format!(
            "unexpected renew/release reply {reply:?}"
        ))),
    }
}

/// Decodes [`FENCED_WRITE`]'s reply for a write that presented `token`.
pub(crate) fn decode_fenced_write(reply: &Value, token: FencingToken) -> Result<(), Error> {
    match reply {
        Value::Array(parts) => match parts.as_slice() {
            [Value::Int(1)] => Ok(()),
            [Value::Int(0), highest] => {
                let stale = StaleToken {
                    presented: token,
                    highest: decode_token(highest)?,
                };
                crate::trace::warn_event!(%stale, "fenced write refused");
                Err(Error::Stale(stale))
            }
            other => Err(pipeline::refusal(other, "fenced")
                .unwrap_or_else(|| unexpected(format!("unexpected fenced write reply {reply:?}")))),
        },
        _ => Err(unexpected(format!(
            "unexpected fenced write reply {reply:?}"
        ))),
    }
}

/// Decodes a `GET` of the fenced key: token 0 when nothing was admitted yet.
pub(crate) fn decode_highest(reply: &Value) -> Result<FencingToken, Error> {
    match reply {
        Value::Nil => Ok(FencingToken::new(0)),
        other => decode_token(other),
    }
}

#[cold]
fn unexpected(detail: String) -> Error {
    Error::Redis(redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "fencelock-redis: unexpected reply",
        detail,
    )))
}

/// A fresh 128-bit value that tells one acquisition from every other, as 32 hex digits.
///
/// Unique, not secret: two SipHash outputs, under a thread's own `RandomState` (random keys from
/// the OS), of a process-wide counter and a per-thread seed (process id, wall clock). No
/// acquisition anywhere reuses another's nonce except with probability ~2⁻¹²⁸.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Nonce(String);

impl Nonce {
    pub(crate) fn new() -> Self {
        let [high, low] = random_words();
        Self(format!("{high:016x}{low:016x}:"))
    }

    /// The nonce and a colon: how every value of this acquisition's lock keys begins.
    pub(crate) fn prefix(&self) -> &str {
        &self.0
    }

    /// The 32 hex digits alone.
    pub(crate) fn hex(&self) -> &str {
        &self.0[..32]
    }
}

/// Two random 64-bit words (see [`Nonce`]); also the jitter of retry delays.
pub(crate) fn random_words() -> [u64; 2] {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        // Random keys from the OS, once per thread (and the process id and clock besides).
        static KEYS: (RandomState, u64) = (RandomState::new(), seed());
    }
    // A unique number per call; Relaxed: uniqueness needs only the atomicity of fetch_add.
    let sequence = SEQUENCE.fetch_add(1, Relaxed);
    KEYS.with(|(keys, seed)| [0_u8, 1].map(|salt| keys.hash_one((salt, sequence, *seed))))
}

/// The process id and the wall clock at a thread's first nonce, mixed into every later one.
fn seed() -> u64 {
    let wall = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    RandomState::new().hash_one((std::process::id(), wall))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_bounds_and_rounding() {
        assert!(ttl_millis(Duration::ZERO).is_err());
        assert!(ttl_millis(Duration::from_millis(4)).is_err());
        assert_eq!(ttl_millis(MIN_TTL).unwrap(), 5);
        assert_eq!(ttl_millis(Duration::from_micros(5_001)).unwrap(), 6);
        assert_eq!(ttl_millis(MAX_TTL).unwrap(), 1 << 40);
        assert!(ttl_millis(MAX_TTL + Duration::from_nanos(1)).is_err());
        assert!(ttl_millis(Duration::MAX).is_err());
    }

    #[test]
    fn validity_is_ttl_minus_drift() {
        let now = Instant::now();
        let ttl = Duration::from_secs(10);
        assert_eq!(drift_allowance(ttl), Duration::from_millis(102));
        assert_eq!(valid_until(now, ttl), now + Duration::from_millis(9_898));
        assert!(valid_until(now, MIN_TTL) > now);
    }

    #[test]
    fn names_and_keys() {
        assert!(check_name("").is_err());
        assert!(check_name("a{b").is_err());
        assert!(check_name("a}b").is_err());
        assert!(check_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(check_name(&"x".repeat(MAX_NAME_LEN)).is_ok());
        let keys = LockKeys::new("p:", "AAPL").unwrap();
        assert_eq!(keys.lock, "p:{AAPL}:lock");
        assert_eq!(keys.counter, "p:{AAPL}:token");
        assert_eq!(fenced_key("p:", "AAPL").unwrap(), "p:{AAPL}:fenced");
        assert!(check_prefix("a{").is_err());
    }

    #[test]
    fn decodes_replies() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(decode_acquire(&Value::Nil, 1).unwrap(), None);
        assert_eq!(
            decode_acquire(&Value::Array(vec![bulk("1844674407370955")]), 1).unwrap(),
            Some(vec![FencingToken::new(1_844_674_407_370_955)])
        );
        assert!(decode_acquire(&Value::Array(vec![]), 1).is_err());
        assert!(decode_acquire(&Value::Array(vec![bulk("x")]), 1).is_err());

        let one = Value::Array(vec![Value::Int(1)]);
        let gone = Value::Array(vec![Value::Int(0)]);
        let other = Value::Array(vec![Value::Int(2), bulk("00ff:42")]);
        assert_eq!(decode_holder(&one).unwrap(), Holder::Us);
        assert_eq!(decode_holder(&gone).unwrap(), Holder::Nobody);
        assert_eq!(
            decode_holder(&other).unwrap(),
            Holder::Other(Some(FencingToken::new(42)))
        );
        assert!(decode_holder(&Value::Array(vec![Value::Int(2), bulk("junk")])).is_err());
        assert!(decode_holder(&Value::Nil).is_err());

        let t = FencingToken::new(7);
        assert!(decode_fenced_write(&one, t).is_ok());
        match decode_fenced_write(&Value::Array(vec![Value::Int(0), bulk("9")]), t) {
            Err(Error::Stale(stale)) => assert_eq!(stale.highest, FencingToken::new(9)),
            other => panic!("{other:?}"),
        }
        assert_eq!(decode_highest(&Value::Nil).unwrap(), FencingToken::new(0));
    }

    #[test]
    fn commands_redis_refuses_in_scripts_are_refused_before_sending() {
        let t = FencingToken::new(7);
        for refused in [
            "MULTI",
            "exec",
            "Watch",
            "SUBSCRIBE",
            "blpop",
            "EVAL",
            "script",
        ] {
            let mut pipe = redis::pipe();
            pipe.cmd("SET").arg("k").arg(1).cmd(refused).arg("x");
            assert!(
                matches!(
                    fenced_write("f", t, &pipe, None),
                    Err(Error::InvalidInput(_))
                ),
                "{refused}"
            );
        }
        let mut fine = redis::pipe();
        fine.cmd("RPUSH").arg("sold").arg(1).cmd("LPOP").arg("book");
        assert!(fenced_write("f", t, &fine, None).is_ok());
    }

    #[test]
    fn tokens_above_2_pow_53_are_refused() {
        assert!(check_token(FencingToken::new(MAX_TOKEN)).is_ok());
        assert!(check_token(FencingToken::new(MAX_TOKEN + 1)).is_err());
        let pipe = redis::pipe();
        assert!(fenced_write("k", FencingToken::new(u64::MAX), &pipe, None).is_err());
    }

    #[test]
    fn cluster_slots_match_the_specification() {
        // The Redis Cluster specification's check value: CRC16("123456789") = 0x31C3.
        assert_eq!(cluster_slot("123456789"), 0x31C3); // below 16384 already
        assert_eq!(cluster_slot(""), 0);
    }

    #[test]
    fn nonces_differ() {
        let (a, b) = (Nonce::new(), Nonce::new());
        assert_ne!(a, b);
        assert_eq!(a.prefix().len(), 33);
        let value = format!("{}5", a.prefix());
        assert_eq!(
            token_of_value(value.as_bytes()).unwrap(),
            Some(FencingToken::new(5))
        );
        assert_eq!(token_of_value(a.prefix().as_bytes()).unwrap(), None);
    }
}
