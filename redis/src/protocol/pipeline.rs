//! A pipeline run inside a script, after the script's own check: a fenced write runs one once its
//! token is admitted, a versioned commit once the record's version is the expected one. One
//! encoding and one Lua runner for both.
//!
//! The commands go in `ARGV` from some index on, each as its argument count followed by its
//! arguments. On a Redis Cluster the script first checks, with `COMMAND GETKEYS`, that every key
//! carries the resource's name as its hash tag — so that they all live on the resource's slot —
//! and refuses the pipeline whole otherwise: a key of another slot would fail *inside* the
//! script, after the commands before it ran (Redis has no rollback).

use redis::Value;

use super::Request;
use crate::error::{Error, InvalidInput};

/// The most arguments one command of a pipeline may have (Lua's `unpack` limit, with room).
pub(crate) const MAX_ARGS: usize = 4096;

/// `pipeline_refusal(first, tag)`: nil when the commands from `ARGV[first]` on may run — `tag`
/// is empty, or every key they name carries `{tag}` — else the reply that refuses them: `{2,
/// key}` for a key off the slot, `{3, error}` when the user may not run `COMMAND GETKEYS`.
/// (`GETKEYS` fails for a command with no keys, and for one with wrong arguments, which then
/// fails by itself without touching another slot: both pass.) `run_pipeline(first)` runs them.
pub(crate) const PIPELINE_LUA: &str = r"
local function pipeline_refusal(first, tag)
  if tag == '' then
    return nil
  end
  local i = first
  while i <= #ARGV do
    local n = tonumber(ARGV[i])
    local keys = redis.pcall('COMMAND', 'GETKEYS', unpack(ARGV, i + 1, i + n))
    if type(keys) == 'table' and keys.err and string.sub(keys.err, 1, 6) == 'NOPERM' then
      return {3, keys.err}
    end
    if type(keys) == 'table' and not keys.err then
      for _, key in ipairs(keys) do
        local open = string.find(key, '{', 1, true)
        local close = open and string.find(key, '}', open + 1, true)
        if not close or string.sub(key, open + 1, close - 1) ~= tag then
          return {2, key}
        end
      end
    end
    i = i + n + 1
  end
  return nil
end
local function run_pipeline(first)
  local i = first
  while i <= #ARGV do
    local n = tonumber(ARGV[i])
    redis.call(unpack(ARGV, i + 1, i + n))
    i = i + n + 1
  end
end
";

/// Appends `commands` to `call`'s arguments; refuses, before anything is sent, a command with no
/// or too many arguments, a cursor argument, or one Redis would not run inside a script. `what`
/// names the write in messages ("fenced", "versioned").
pub(crate) fn encode(
    call: &mut Request,
    commands: &redis::Pipeline,
    what: &str,
) -> Result<(), Error> {
    for cmd in commands.cmd_iter() {
        let argc = cmd.args_iter().len();
        if argc == 0 || argc > MAX_ARGS {
            return Err(InvalidInput::new(format!(
                "a {what} pipeline command has {argc} arguments: it needs 1 to {MAX_ARGS}"
            ))
            .into());
        }
        if let Some(redis::Arg::Simple(name)) = cmd.args_iter().next() {
            check_runs_in_a_script(name)?;
        }
        call.arg(argc);
        for arg in cmd.args_iter() {
            match arg {
                redis::Arg::Simple(bytes) => call.arg(bytes),
                _ => {
                    return Err(InvalidInput::new(format!(
                        "a {what} pipeline command has a cursor argument: scans cannot run \
                         inside the {what} write"
                    ))
                    .into())
                }
            };
        }
    }
    Ok(())
}

/// The error for a pipeline's refusal reply (`{2, key}`, `{3, error}`); `None` for any other.
pub(crate) fn refusal(reply: &[Value], what: &str) -> Option<Error> {
    match reply {
        [Value::Int(2), Value::BulkString(key)] => Some(
            InvalidInput::new(format!(
                "a {what} write on a cluster touches the key `{}`, which is not on the \
                 resource's slot; nothing ran. Give every key of the pipeline the resource's \
                 name as its hash tag (`sold:{{NAME}}`)",
                String::from_utf8_lossy(key)
            ))
            .into(),
        ),
        [Value::Int(3), Value::BulkString(error)] => Some(Error::Redis(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm),
            "fencelock-redis: a write on a cluster checks its pipeline's keys with COMMAND \
             GETKEYS, which this user may not run (allow +command|getkeys); nothing ran",
            String::from_utf8_lossy(error).into_owned(),
        )))),
        _ => None,
    }
}

/// Commands Redis never runs inside a script (its `noscript` flag, Redis 7): transactions,
/// pub/sub, blocking pops, replication and server administration, and other scripts. A pipeline
/// naming one is refused before anything is sent — the server would refuse it inside
/// the script *after* the token was recorded. The containers whose subcommands are mostly
/// `noscript` (`ACL`, `CLIENT`, `CONFIG`, `FUNCTION`, `LATENCY`, `MODULE`, `SCRIPT`, `CLUSTER`)
/// are refused whole: none of them belongs in a fenced write.
const NOT_IN_SCRIPTS: &[&str] = &[
    "acl",
    "auth",
    "bgrewriteaof",
    "bgsave",
    "blmove",
    "blpop",
    "brpop",
    "brpoplpush",
    "bzpopmax",
    "bzpopmin",
    "client",
    "cluster",
    "config",
    "debug",
    "discard",
    "eval",
    "eval_ro",
    "evalsha",
    "evalsha_ro",
    "exec",
    "failover",
    "fcall",
    "fcall_ro",
    "function",
    "hello",
    "latency",
    "module",
    "monitor",
    "multi",
    "psubscribe",
    "psync",
    "punsubscribe",
    "quit",
    "replconf",
    "replicaof",
    "reset",
    "role",
    "save",
    "script",
    "shutdown",
    "slaveof",
    "ssubscribe",
    "subscribe",
    "sunsubscribe",
    "sync",
    "unsubscribe",
    "unwatch",
    "wait",
    "watch",
];

/// Refuses a pipeline command that Redis would not run inside a script.
fn check_runs_in_a_script(name: &[u8]) -> Result<(), Error> {
    let lower = name.to_ascii_lowercase();
    if NOT_IN_SCRIPTS
        .iter()
        .any(|c| c.as_bytes() == lower.as_slice())
    {
        return Err(InvalidInput::new(format!(
            "a pipeline run inside a script cannot run {}: Redis refuses it inside a script (transactions, \
             pub/sub, blocking commands, administration); the write is already atomic",
            String::from_utf8_lossy(name).to_uppercase()
        ))
        .into());
    }
    Ok(())
}
