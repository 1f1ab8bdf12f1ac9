//! Optimistic versions on a Redis server: the seed's *Concurrency Tokens* across processes, the
//! twin of the core's `Versioned<T>`. A record is one hash, `p{name}:record`, with its value
//! (`d`) and its version (`v`). Loading is one `HMGET`; a commit is one script that writes only if
//! the record is still at the version the caller read, and otherwise answers the version it has.
//!
//! # Versions
//!
//! A record that was never written (or was lost) is at version 0, which commits. Each commit
//! moves the version to the larger of the old one + 1 and the server's time in µs, as tokens
//! are issued (see the [module docs](super)): so versions only grow, and a record lost in a
//! restart — at version 0 again — is recreated at a version above every one issued before (as
//! long as the server's clock did not go back), and a commit prepared before the loss, at an old
//! version, is refused rather than taken for a new one.

use std::future::Future;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use fencelock::Version;
use redis::Value;

use super::pipeline::{self, PIPELINE_LUA};
use super::quorum::lease::Retries;
use super::{check_name, decode_digits, unexpected, Lua, Request, MAX_TOKEN};
use crate::error::{Error, InvalidInput};

/// The longest value a record may hold: 16 MiB (Redis allows 512 MiB; a record this large is
/// better kept elsewhere and referred to).
pub const MAX_VALUE_LEN: usize = 16 << 20;

/// How many times [`update`](crate::RedisVersioned::update) tries before it gives up with the
/// last [`Error::Conflict`].
pub const UPDATE_ATTEMPTS: usize = 100;

/// The first and the longest wait between two tries of an update: each wait doubles, and is
/// drawn from its upper half (jitter), so that writers that collided spread out.
pub(crate) const UPDATE_BACKOFF: (Duration, Duration) =
    (Duration::from_micros(50), Duration::from_millis(20));

/// `new_version(current)`: the larger of `current` + 1 and the server's time in µs, as digits.
const NEW_VERSION_LUA: &str = r"
local function new_version(current)
  local time = redis.call('TIME')
  local version = tonumber(time[1]) * 1000000 + tonumber(time[2])
  if current >= version then
    version = current + 1
  end
  return string.format('%.0f', version)
end
";

/// A commit. KEYS: the record. ARGV: the expected version (digits), the value. Returns {1, new
/// version} after writing, or {0, current version} (nothing written).
static COMMIT: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(&format!(
        r"{NEW_VERSION_LUA}
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if current ~= tonumber(ARGV[1]) then
  return {{0, string.format('%.0f', current)}}
end
local version = new_version(current)
redis.call('HSET', KEYS[1], 'v', version, 'd', ARGV[2])
return {{1, version}}
"
    ))
});

/// A commit of a pipeline. KEYS: the record. ARGV: the expected version, the hash tag every key
/// must carry (empty: any key), then the pipeline (see [`pipeline`]). Returns {1, new version}
/// after running it and moving the version on (the value is left as it is), {0, current
/// version}, or the pipeline's refusal; nothing ran in the last two cases.
static COMMIT_WITH: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(&format!(
        r"{NEW_VERSION_LUA}{PIPELINE_LUA}
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if current ~= tonumber(ARGV[1]) then
  return {{0, string.format('%.0f', current)}}
end
local refused = pipeline_refusal(3, ARGV[2])
if refused then
  return refused
end
run_pipeline(3)
local version = new_version(current)
redis.call('HSET', KEYS[1], 'v', version)
return {{1, version}}
"
    ))
});

/// The key of the record `name` under `prefix`.
pub(crate) fn record_key(prefix: &str, name: &str) -> Result<String, Error> {
    check_name(name)?;
    Ok(format!("{prefix}{{{name}}}:record"))
}

/// `HMGET record d v`: the value and its version, in one round trip.
pub(crate) fn load(key: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(key).arg("d").arg("v");
    cmd
}

/// Decodes [`load`]'s reply: the value (`None` if never written) and its version (0 then).
pub(crate) fn decode_load(reply: &Value) -> Result<(Option<Vec<u8>>, Version), Error> {
    let Value::Array(parts) = reply else {
        return Err(unexpected(format!("unexpected record {reply:?}")));
    };
    let (value, version) = match parts.as_slice() {
        [value, version] => (value, version),
        _ => return Err(unexpected(format!("unexpected record {reply:?}"))),
    };
    let value = match value {
        Value::Nil => None,
        Value::BulkString(bytes) => Some(bytes.clone()),
        other => return Err(unexpected(format!("unexpected record value {other:?}"))),
    };
    let version = match version {
        Value::Nil => Version::new(0),
        digits => Version::new(decode_digits(digits)?),
    };
    Ok((value, version))
}

/// The request that writes `value` if the record at `key` is at `expected`.
pub(crate) fn commit(key: &str, expected: Version, value: &[u8]) -> Result<Request, Error> {
    check_version(expected)?;
    if value.len() > MAX_VALUE_LEN {
        return Err(InvalidInput::new(format!(
            "a versioned value of {} bytes is longer than the {MAX_VALUE_LEN} a record holds",
            value.len()
        ))
        .into());
    }
    let mut call = Request::new(&COMMIT);
    call.key(key).arg(expected.get()).arg(value);
    Ok(call)
}

/// The request that runs `commands` and moves the version on if the record at `key` is at
/// `expected`; on a cluster, `slot_tag` is the record's name (see [`pipeline`]).
pub(crate) fn commit_with(
    key: &str,
    expected: Version,
    commands: &redis::Pipeline,
    slot_tag: Option<&str>,
) -> Result<Request, Error> {
    check_version(expected)?;
    let mut call = Request::new(&COMMIT_WITH);
    call.key(key)
        .arg(expected.get())
        .arg(slot_tag.unwrap_or(""));
    pipeline::encode(&mut call, commands, "versioned")?;
    Ok(call)
}

/// Decodes a commit's reply: the new version, or [`Error::Conflict`] for a commit at `expected`
/// that found the record elsewhere.
pub(crate) fn decode_commit(reply: &Value, expected: Version) -> Result<Version, Error> {
    let Value::Array(parts) = reply else {
        return Err(unexpected(format!("unexpected commit reply {reply:?}")));
    };
    match parts.as_slice() {
        [Value::Int(1), version] => Ok(Version::new(decode_digits(version)?)),
        [Value::Int(0), current] => Err(Error::Conflict {
            expected,
            current: Version::new(decode_digits(current)?),
        }),
        other => Err(pipeline::refusal(other, "versioned")
            .unwrap_or_else(|| unexpected(format!("unexpected commit reply {reply:?}")))),
    }
}

/// What [`update`] needs of a front end: a record's load, commit and a sleep. The blocking front
/// end's futures block and are ready at once (run by `driver::run_blocking`); the async one's are
/// real.
pub(crate) trait Record {
    /// Loads the value and its version.
    fn load(&self) -> impl Future<Output = Result<(Option<Vec<u8>>, Version), Error>> + Send;
    /// Commits `value` at `version`.
    fn commit(
        &self,
        version: Version,
        value: &[u8],
    ) -> impl Future<Output = Result<Version, Error>> + Send;
    /// Waits `delay`.
    fn sleep(&self, delay: Duration) -> impl Future<Output = ()> + Send;
}

/// Load, compute `change(old)`, commit at the loaded version; after a [`Error::Conflict`], wait a
/// jittered, doubling delay (see [`UPDATE_BACKOFF`]) and start again, at most
/// [`UPDATE_ATTEMPTS`] times. Returns the value committed and its version; any other error at
/// once.
pub(crate) async fn update<R: Record>(
    record: &R,
    mut change: impl FnMut(Option<&[u8]>) -> Vec<u8>,
) -> Result<(Vec<u8>, Version), Error> {
    let (min, max) = UPDATE_BACKOFF;
    let mut waits = Retries::new(Duration::MAX, min, max, Instant::now());
    let mut conflict = None;
    for _ in 0..UPDATE_ATTEMPTS {
        let (old, version) = record.load().await?;
        let new = change(old.as_deref());
        match record.commit(version, &new).await {
            Ok(committed) => return Ok((new, committed)),
            Err(refused @ Error::Conflict { .. }) => conflict = Some(refused),
            Err(other) => return Err(other),
        }
        if let Some(delay) = waits.after_miss(Instant::now()) {
            record.sleep(delay).await;
        }
    }
    Err(conflict.unwrap_or_else(|| unexpected("an update made no attempt".to_owned())))
}

/// Refuses a version that no record has (above 2⁵³ − 1, where Lua's doubles are no longer exact).
fn check_version(version: Version) -> Result<(), Error> {
    if version.get() > MAX_TOKEN {
        return Err(InvalidInput::new(format!(
            "version {version} is above 2^53 - 1: no record has it"
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn replies_decode() {
        let never = Value::Array(vec![Value::Nil, Value::Nil]);
        assert_eq!(decode_load(&never).unwrap(), (None, Version::new(0)));
        let some = Value::Array(vec![bulk("x"), bulk("17")]);
        assert_eq!(
            decode_load(&some).unwrap(),
            (Some(b"x".to_vec()), Version::new(17))
        );
        let v = Version::new(3);
        let done = Value::Array(vec![Value::Int(1), bulk("4")]);
        assert_eq!(decode_commit(&done, v).unwrap(), Version::new(4));
        let refused = Value::Array(vec![Value::Int(0), bulk("9")]);
        match decode_commit(&refused, v) {
            Err(Error::Conflict { expected, current }) => {
                assert_eq!((expected, current), (v, Version::new(9)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_input_is_refused_before_sending() {
        assert!(record_key("p:", "").is_err());
        assert!(commit("k", Version::new(MAX_TOKEN + 1), b"x").is_err());
        assert!(commit("k", Version::new(1), &vec![0; MAX_VALUE_LEN + 1]).is_err());
        assert!(commit("k", Version::new(1), &vec![0; MAX_VALUE_LEN]).is_ok());
        let mut multi = redis::pipe();
        multi.cmd("MULTI");
        assert!(commit_with("k", Version::new(1), &multi, None).is_err());
    }
}
