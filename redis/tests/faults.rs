//! Faults on a real `redis-server`: killed (`kill -9`) and restarted with and without an
//! append-only file, paused (SIGSTOP) mid-call, killed mid-call, and the documented assumptions
//! broken on purpose. Every call must end within the handle's timeouts with a typed error, and
//! the same handle must work again once the server is back.

mod support;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use fencelock::{FencingToken, LeaseLost};
use fencelock_redis::{Error, LockServer};
use redis::Commands;
use support::{handle, quick_builder, raw, Persistence, RedisProcess};

const TTL: Duration = Duration::from_secs(30);
/// Generous bound on a call that must fail by its timeouts (500 ms connect + 500 ms I/O, with a
/// `NOSCRIPT` reload at most doubling the I/O).
const FAILS_WITHIN: Duration = Duration::from_secs(5);

fn acquire(server: &LockServer, name: &str) -> fencelock_redis::RedisLease {
    server
        .lock(name)
        .unwrap()
        .try_acquire(TTL)
        .unwrap()
        .expect("free")
}

#[test]
fn kill_9_without_persistence_loses_the_lock_but_tokens_still_grow() {
    let mut redis = RedisProcess::start_with(Persistence::None);
    let server = handle(&redis);
    let ledger = server.fenced("book").unwrap();
    let old = acquire(&server, "book");
    ledger.write(old.token(), &redis::pipe()).unwrap();

    redis.kill9();
    let down = server.lock("book").unwrap().try_acquire(TTL).unwrap_err();
    assert!(down.is_unavailable(), "{down}");
    redis.restart();

    // The same handle recovers. The server forgot the lock: a second holder gets it while the
    // first still believes it holds it — the documented limit of a lock without persistence —
    // and its token is larger, because the reborn counter starts from the server's clock.
    let newer = acquire(&server, "book");
    assert!(
        newer.token() > old.token(),
        "{} !> {}",
        newer.token(),
        old.token()
    );
    assert!(old.is_valid(), "the old holder cannot know");
    ledger.write(newer.token(), &redis::pipe()).unwrap();
    // The fence is what saves the resource: the old holder's write is refused.
    assert!(matches!(
        ledger.write(old.token(), &redis::pipe()),
        Err(Error::Stale(_))
    ));
    assert!(matches!(
        old.release(),
        Err(Error::Lost(LeaseLost::TakenOver { by })) if by == newer.token()
    ));
}

#[test]
fn kill_9_with_appendfsync_always_keeps_lock_counter_and_fence() {
    let mut redis = RedisProcess::start_with(Persistence::AppendFsyncAlways);
    let server = handle(&redis);
    let ledger = server.fenced("book").unwrap();
    let mut held = acquire(&server, "book");
    let mut write = redis::pipe();
    write.cmd("SET").arg("book-value").arg(1);
    ledger.write(held.token(), &write).unwrap();

    redis.kill9();
    redis.restart();

    // The lock survived: nobody else gets in, and the holder renews and releases normally.
    assert!(server
        .lock("book")
        .unwrap()
        .try_acquire(TTL)
        .unwrap()
        .is_none());
    held.renew(TTL).unwrap();
    assert_eq!(ledger.highest().unwrap(), held.token());
    let token = held.token();
    held.release().unwrap();
    let next = acquire(&server, "book");
    assert!(next.token() > token);
    let mut con = raw(&redis);
    assert_eq!(con.get::<_, u32>("book-value").unwrap(), 1);
}

#[test]
fn a_paused_server_is_a_timeout_and_the_same_handle_recovers() {
    let mut redis = RedisProcess::start();
    let server = handle(&redis);
    let lock = server.lock("paused").unwrap();
    drop(lock.try_acquire(TTL).unwrap()); // one pooled connection, scripts loaded

    redis.pause();
    // Calls sent to the paused server run when it resumes: keep their grants short.
    let short = Duration::from_millis(500);
    for call in 0..2 {
        // Call 0 uses the pooled connection, call 1 opens a new one (the kernel accepts it, the
        // paused server never answers the handshake).
        let began = Instant::now();
        let err = lock.try_acquire(short).unwrap_err();
        assert!(err.is_unavailable(), "call {call}: {err}");
        assert!(
            began.elapsed() < FAILS_WITHIN,
            "call {call}: {:?}",
            began.elapsed()
        );
    }
    // A waiter retries connection errors (a restart is usually brief) until its wait is over,
    // then reports the error: bounded by the wait, never a hang.
    let began = Instant::now();
    let wait = Duration::from_secs(2);
    assert!(lock
        .acquire_timeout(short, wait)
        .is_err_and(|e| e.is_unavailable()));
    assert!(
        began.elapsed() < wait + FAILS_WITHIN,
        "acquire_timeout ends at the error once its wait is over"
    );
    assert!(server.fenced("paused").unwrap().highest().is_err());
    redis.resume();

    // Whatever the timed-out calls did once the server resumed, the handle works again; a grant
    // the client never saw ends by its TTL at the latest (here 500 ms), so wait for the lock.
    let lease = lock
        .acquire_timeout(Duration::from_secs(5), Duration::from_secs(40))
        .unwrap()
        .expect("the lock comes free");
    lease.release().unwrap();
}

#[test]
fn a_server_killed_mid_call_is_an_error_not_a_hang() {
    let mut redis = RedisProcess::start();
    let server = quick_builder()
        .io_timeout(Duration::from_secs(20)) // so the kill, not the timeout, ends the call
        .open(&redis.url())
        .unwrap();
    let lock = server.lock("mid-call").unwrap();
    drop(lock.try_acquire(TTL).unwrap());
    redis.pause();
    let (done, finished) = mpsc::channel();
    let caller = {
        let lock = lock.clone();
        thread::spawn(move || {
            let began = Instant::now();
            let result = lock.try_acquire(TTL);
            done.send(()).unwrap();
            (
                result.map(|lease| lease.map(|l| l.token())),
                began.elapsed(),
            )
        })
    };
    // The call is in flight (or about to be) against a paused server; kill it.
    assert!(
        finished.recv_timeout(Duration::from_millis(200)).is_err(),
        "a paused server cannot have answered"
    );
    redis.kill9();
    let (result, took) = caller.join().unwrap();
    let err = result.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        took < Duration::from_secs(15),
        "the kill ended the call: {took:?}"
    );

    redis.restart();
    assert!(
        lock.try_acquire(TTL).unwrap().is_some(),
        "same handle, new server"
    );
}

#[test]
fn tokens_grow_after_the_counter_is_lost_or_expires() {
    let redis = RedisProcess::start();
    let server = handle(&redis);
    let first = acquire(&server, "counter").token();
    let mut con = raw(&redis);
    // As if the counter expired after a day idle, or the server lost it.
    let _: () = con.del("fencelock:{counter}:token").unwrap();
    let _: () = con.del("fencelock:{counter}:lock").unwrap();
    let reborn = acquire(&server, "counter").token();
    assert!(reborn > first, "reborn counter {reborn} !> {first}");
}

/// Both assumptions broken at once — the counter lost *and* the server's clock behind the last
/// token — repeat tokens: the documented limit. (The clock going back is staged by writing a
/// counter from the future; the counter alone still keeps tokens growing.)
#[test]
fn losing_the_counter_and_the_clock_together_can_repeat_tokens() {
    let redis = RedisProcess::start();
    let server = handle(&redis);
    let now = acquire(&server, "clock").token();
    let mut con = raw(&redis);
    let future = now.get() + 3_600_000_000; // an hour ahead, in µs
    let _: () = con.set("fencelock:{clock}:token", future).unwrap();
    let _: () = con.del("fencelock:{clock}:lock").unwrap();
    // The clock "went back" an hour relative to the counter: the counter keeps tokens growing.
    let after_clock_step = acquire(&server, "clock").token();
    assert_eq!(after_clock_step, FencingToken::new(future + 1));
    // Now lose the counter too: the token comes from the clock alone, below the last one.
    let _: () = con.del("fencelock:{clock}:token").unwrap();
    let _: () = con.del("fencelock:{clock}:lock").unwrap();
    let repeated = acquire(&server, "clock").token();
    assert!(
        repeated < after_clock_step,
        "with both assumptions broken, the token went back: {repeated} < {after_clock_step}"
    );
}

/// The lease's safety assumes the server does not expire the key early (its wall clock stepping
/// forward, say). Staged by shortening the key's TTL behind the holder's back: a second holder
/// gets in while the first still believes it holds the lock, and only the fence stops the
/// first one's write.
#[test]
fn an_early_expiry_lets_two_holders_in_and_the_fence_refuses_the_older() {
    let redis = RedisProcess::start();
    let server = handle(&redis);
    let ledger = server.fenced("early").unwrap();
    let first = acquire(&server, "early");
    let mut con = raw(&redis);
    let _: () = con.pexpire("fencelock:{early}:lock", 1).unwrap();
    let second = server
        .lock("early")
        .unwrap()
        .acquire_timeout(TTL, Duration::from_secs(10))
        .unwrap()
        .expect("the key expired early");
    assert!(
        first.is_valid() && second.is_valid(),
        "both believe they hold it"
    );
    ledger.write(second.token(), &redis::pipe()).unwrap();
    assert!(matches!(
        ledger.write(first.token(), &redis::pipe()),
        Err(Error::Stale(_))
    ));
}

#[test]
fn script_cache_flush_is_recovered() {
    let redis = RedisProcess::start();
    let server = handle(&redis);
    let lock = server.lock("flush").unwrap();
    drop(lock.try_acquire(TTL).unwrap());
    let mut con = raw(&redis);
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut con).unwrap();
    let lease = lock
        .try_acquire(TTL)
        .unwrap()
        .expect("reloaded on NOSCRIPT");
    lease.release().unwrap();
}

/// The largest retry delays the builder accepts do not overflow: a waiter that meets a refused
/// connection (here a server killed before the call) sleeps at most what is left of its wait and
/// then reports the error — no "overflow when multiplying duration by scalar" panic.
#[test]
fn the_largest_retry_delays_are_saturated_not_a_panic() {
    let mut redis = RedisProcess::start();
    let lock = support::quick_builder()
        .retry_delay(Duration::MAX, Duration::MAX)
        .open(&redis.url())
        .unwrap()
        .lock("huge-delays")
        .unwrap();
    redis.kill9();
    let began = Instant::now();
    let wait = Duration::from_millis(300);
    for _ in 0..3 {
        let err = lock.acquire_timeout(TTL, wait).unwrap_err();
        assert!(err.is_unavailable(), "{err}");
    }
    assert!(began.elapsed() < 3 * wait + FAILS_WITHIN);
}
