//! When a quorum's fencing tokens can go backwards: a server that lost its data, with the
//! servers' clocks apart by more than its restart took.
//!
//! The adversary, on servers S0, S1, S2 (S1 and S2 `appendfsync always`, never restarted) and a
//! fenced resource on a fourth server R. A token is one more than the largest floor (the larger of counter and
//! `TIME` in µs) of the servers that granted. S2 paused, A acquires on S0 + S1 (with S1 ahead,
//! A's token comes from S1's clock); S2 resumed, S0 killed (`kill -9`) and restarted; past A's
//! TTL, S1 paused, B acquires on S0 + S2. B writes, then A writes late. S1's clock is set ahead
//! by an `LD_PRELOAD` shim built here (`support::clock`), or loaded with a shift of 0.
//!
//! - S0 without persistence, S1 an hour ahead: S0 lost A's token and floors at its own clock,
//!   an hour behind A's; B's token is below A's, and A's late write is admitted over B's.
//! - S0 with `appendfsync always`, S1 an hour ahead: S0 kept A's token; B's is A's + 1.
//! - S0 without persistence, clocks in step: S0's clock passed A's token while it restarted.
//!
//! So a quorum's tokens grow if every server keeps its data, or if the servers' clocks agree to
//! within the time a restart takes.
mod support;

use std::thread;
use std::time::Duration;

use fencelock::FencingToken;
use fencelock_redis::{Error, LockServer};
use redis::Commands;
use support::{clock, quick_builder, raw, Persistence, RedisProcess};

/// S1's clock shift, when it is ahead.
const HOUR: i64 = 3600;
const TTL: Duration = Duration::from_millis(500);
/// Past A's TTL, with margin: A's keys are gone from every server.
const PAST_TTL: Duration = Duration::from_millis(1500);
const DATA: &str = "book:{AAPL}";

/// What the adversary saw.
struct Outcome {
    a: FencingToken,
    b: FencingToken,
    /// A's fenced write, after B's.
    late_write: Result<(), Error>,
    /// The resource's data after both writes.
    data: String,
}

/// The server's `TIME`, in whole seconds.
fn server_seconds(server: &RedisProcess) -> i64 {
    let (seconds, _micros): (i64, i64) = redis::cmd("TIME").query(&mut raw(server)).unwrap();
    seconds
}

fn quorum(servers: [&RedisProcess; 3]) -> LockServer {
    let urls = servers.map(RedisProcess::url);
    quick_builder()
        .quorum(&urls.each_ref().map(String::as_str))
        .expect("a quorum handle")
}

fn write_as(holder: &str) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(DATA)
        .arg(format!("written by {holder}"));
    pipe
}

/// The adversary's steps, with S0's persistence `s0_keeps` and S1's clock `s1_ahead` seconds
/// ahead (the shim is loaded either way, so the shift is the only difference).
fn adversary(s0_keeps: Persistence, s1_ahead: i64) -> Outcome {
    let mut s0 = RedisProcess::start_with(s0_keeps);
    let mut s1 = clock::shifted(
        RedisProcess::options().persistence(Persistence::AppendFsyncAlways),
        s1_ahead,
    )
    .start();
    let mut s2 = RedisProcess::start_with(Persistence::AppendFsyncAlways);
    let r = RedisProcess::start_with(Persistence::AppendFsyncAlways);

    // The shim did what it was asked, and nothing more (S0 has none).
    let skew = server_seconds(&s1) - server_seconds(&s0);
    if s1_ahead == HOUR {
        assert!((3500..=3700).contains(&skew), "S1 is {skew} s ahead of S0");
    } else {
        assert_eq!(s1_ahead, 0);
        assert!(skew.abs() <= 60, "S1 is {skew} s ahead of S0");
    }
    let resource = quick_builder()
        .open(&r.url())
        .unwrap()
        .fenced("AAPL")
        .unwrap();

    s2.pause();
    let a = quorum([&s0, &s1, &s2])
        .lock("AAPL")
        .unwrap()
        .try_acquire(TTL)
        .unwrap()
        .expect("A: S0 and S1 grant");
    s2.resume();
    s0.kill9();
    s0.restart();
    thread::sleep(PAST_TTL); // A's lease and keys expire; A is never released
    s1.pause();
    let b = quorum([&s0, &s1, &s2])
        .lock("AAPL")
        .unwrap()
        .try_acquire(TTL)
        .unwrap()
        .expect("B: S0 and S2 grant");
    resource
        .write(b.token(), &write_as("B"))
        .expect("B writes first");
    let late_write = resource.write(a.token(), &write_as("A"));
    s1.resume();

    let data: String = raw(&r).get(DATA).unwrap();
    let (a, b) = (a.token(), b.token());
    println!(
        "S0 {s0_keeps:?}, S1 {s1_ahead} s ahead: A {a}, B {b}, B - A = {}",
        i128::from(b.get()) - i128::from(a.get())
    );
    Outcome {
        a,
        b,
        late_write,
        data,
    }
}

/// The broken assumption, on purpose: B's token comes from S0's clock, an hour behind A's.
#[test]
fn a_server_that_lost_its_data_and_a_clock_ahead_let_a_token_go_back() {
    let seen = adversary(Persistence::None, HOUR);
    assert!(seen.b < seen.a, "B {} !< A {}", seen.b, seen.a);
    assert!(seen.late_write.is_ok(), "{:?}", seen.late_write);
    assert_eq!(seen.data, "written by A");
}

#[test]
fn every_server_keeping_its_data_keeps_tokens_growing_whatever_the_clocks() {
    let seen = adversary(Persistence::AppendFsyncAlways, HOUR);
    assert!(seen.b > seen.a, "B {} !> A {}", seen.b, seen.a);
    assert!(
        matches!(seen.late_write, Err(Error::Stale(_))),
        "{:?}",
        seen.late_write
    );
    assert_eq!(seen.data, "written by B");
}

#[test]
fn clocks_in_step_keep_tokens_growing_across_a_restart_that_lost_data() {
    let seen = adversary(Persistence::None, 0);
    assert!(seen.b > seen.a, "B {} !> A {}", seen.b, seen.a);
    assert!(
        matches!(seen.late_write, Err(Error::Stale(_))),
        "{:?}",
        seen.late_write
    );
    assert_eq!(seen.data, "written by B");
}
