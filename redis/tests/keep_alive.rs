//! `KeptLease`: a lease renewed in the background, on one server and on a quorum of three — held
//! past its TTL while others are refused, lost (and said so) when the servers go, ended by its
//! cap, silent after release.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use fencelock::{FencingToken, LeaseLost};
use fencelock_redis::{Error, KeepAlive, LockServer};
use redis::Commands;
use support::{handle, quick_builder, raw, RedisProcess};

const TTL: Duration = Duration::from_millis(200);

/// `n` servers and a handle to them (a single server for `n == 1`).
fn servers(n: usize) -> (Vec<RedisProcess>, LockServer) {
    let servers: Vec<RedisProcess> = (0..n).map(|_| RedisProcess::start()).collect();
    let urls: Vec<String> = servers.iter().map(RedisProcess::url).collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let handle = quick_builder().quorum(&urls).unwrap();
    (servers, handle)
}

macro_rules! on_one_and_three {
    ($($body:ident => $one:ident, $three:ident);* $(;)?) => {$(
        #[test]
        fn $one() {
            $body(1);
        }
        #[test]
        fn $three() {
            $body(3);
        }
    )*};
}

on_one_and_three!(
    held_for_ten_ttls_while_others_are_refused => one_held_past_ttl, three_held_past_ttl;
    killed_servers_are_reported_within_the_ttl => one_server_killed, three_majority_killed;
    max_hold_ends_the_hold => one_max_hold, three_max_hold;
    no_renewal_after_release => one_no_renewal_after_release, three_no_renewal_after_release;
);

fn held_for_ten_ttls_while_others_are_refused(n: usize) {
    let (_servers, handle) = servers(n);
    let lock = handle.lock("kept").unwrap();
    let kept = lock
        .try_acquire(TTL)
        .unwrap()
        .unwrap()
        .keep_alive(KeepAlive::default());
    let until = Instant::now() + 10 * TTL;
    let mut refused = 0;
    while Instant::now() < until {
        assert_eq!(kept.lost(), None);
        assert!(kept.remaining().is_some());
        assert!(lock.try_acquire(TTL).unwrap().is_none(), "someone got in");
        refused += 1;
        thread::sleep(TTL / 4);
    }
    assert!(refused >= 10);
    kept.release().unwrap();
    assert!(lock.try_acquire(TTL).unwrap().is_some(), "released");
}

fn killed_servers_are_reported_within_the_ttl(n: usize) {
    let (mut servers, handle) = servers(n);
    let kept = handle
        .lock("killed")
        .unwrap()
        .try_acquire(TTL)
        .unwrap()
        .unwrap()
        .keep_alive(KeepAlive::default());
    let left = kept.remaining().unwrap();
    let killed_at = Instant::now();
    for server in servers.iter_mut().take(n / 2 + 1) {
        server.kill9();
    }
    // The renewer fails, or the validity runs out: either way, lost, and said so by the time
    // the lease's own validity would have ended.
    let lost = kept.wait_lost(Duration::from_secs(10));
    assert_eq!(lost, Some(LeaseLost::Expired));
    assert!(
        killed_at.elapsed() <= left + Duration::from_secs(2),
        "{:?}",
        killed_at.elapsed()
    );
    assert_eq!(kept.lost(), Some(LeaseLost::Expired), "stays lost");
    assert_eq!(kept.remaining(), None);
    assert!(kept.release().is_err());
}

fn max_hold_ends_the_hold(n: usize) {
    let (_servers, handle) = servers(n);
    let lock = handle.lock("capped").unwrap();
    let began = Instant::now();
    let kept = lock
        .try_acquire(TTL)
        .unwrap()
        .unwrap()
        .keep_alive(KeepAlive::default().max_hold(2 * TTL));
    assert_eq!(
        kept.wait_lost(Duration::from_secs(10)),
        Some(LeaseLost::Expired)
    );
    assert!(began.elapsed() >= 2 * TTL, "renewed until the cap");
    let next = lock
        .acquire_timeout(TTL, Duration::from_secs(10))
        .unwrap()
        .expect("the capped lease ends by its TTL");
    assert!(next.token() > kept.token());
    // A kept lease's stale fenced write is refused like any other.
    let data = &_servers[0];
    let ledger = LockServer::open(&data.url())
        .unwrap()
        .fenced("capped")
        .unwrap();
    ledger.write(next.token(), &redis::pipe()).unwrap();
    assert!(matches!(
        ledger.write(kept.token(), &redis::pipe()),
        Err(Error::Stale(_))
    ));
    // Release after a loss reports the loss `lost()` reported: the same every time.
    assert_eq!(kept.lost(), Some(LeaseLost::Expired));
    assert!(matches!(
        kept.release(),
        Err(Error::Lost(LeaseLost::Expired))
    ));
}

fn no_renewal_after_release(n: usize) {
    let (servers, handle) = servers(n);
    let lock = handle.lock("released").unwrap();
    let kept = lock
        .try_acquire(TTL)
        .unwrap()
        .unwrap()
        .keep_alive(KeepAlive::default().every(Duration::from_millis(20)));
    thread::sleep(TTL); // several renewals
    kept.release().unwrap();
    let next = lock.try_acquire(Duration::from_secs(10)).unwrap().unwrap();
    // The old renewer would reset the TTL to 200 ms; the new holder's 10 s must only shrink.
    let pttl = |s: &RedisProcess| -> i64 { raw(s).pttl("fencelock:{released}:lock").unwrap() };
    let before: Vec<i64> = servers.iter().map(pttl).collect();
    thread::sleep(Duration::from_millis(150));
    for (server, before) in servers.iter().zip(before) {
        let after = pttl(server);
        assert!(
            after > 9_000 && after < before,
            "{before} -> {after}: touched"
        );
    }
    drop(next);
}

#[test]
fn a_newer_holder_is_reported_as_taken_over() {
    let redis = RedisProcess::start();
    let handle = quick_builder().open(&redis.url()).unwrap();
    let kept = handle
        .lock("taken")
        .unwrap()
        .try_acquire(TTL)
        .unwrap()
        .unwrap()
        .keep_alive(KeepAlive::default());
    // Staged behind the client's back: the key now holds another acquisition (as after an early
    // expiry and a takeover).
    let _: () = raw(&redis)
        .set(
            "fencelock:{taken}:lock",
            "0123456789abcdef0123456789abcdef:999",
        )
        .unwrap();
    assert_eq!(
        kept.wait_lost(Duration::from_secs(10)),
        Some(LeaseLost::TakenOver {
            by: FencingToken::new(999)
        })
    );
    drop(kept); // stops the renewer; the release is refused by the server, nothing changes
    let value: String = raw(&redis).get("fencelock:{taken}:lock").unwrap();
    assert!(value.ends_with(":999"));
}

#[test]
fn keeping_a_lease_that_already_ran_out_reports_the_loss_at_once() {
    let redis = RedisProcess::start();
    let handle = quick_builder().open(&redis.url()).unwrap();
    let lease = handle
        .lock("late")
        .unwrap()
        .try_acquire(TTL)
        .unwrap()
        .unwrap();
    thread::sleep(2 * TTL);
    let kept = lease.keep_alive(KeepAlive::default());
    assert_eq!(kept.lost(), Some(LeaseLost::Expired));
    assert_eq!(kept.remaining(), None);
    assert!(matches!(
        kept.release(),
        Err(Error::Lost(LeaseLost::Expired))
    ));
}

#[test]
fn kept_lease_is_send_static() {
    fn send_static<T: Send + 'static>() {}
    send_static::<fencelock_redis::KeptLease>();
}

/// Checks, for `hold`, that `kept` stays held while another client is refused the lock.
fn stays_held(
    kept: &fencelock_redis::KeptLease,
    other: &fencelock_redis::RedisLock,
    hold: Duration,
) {
    let until = Instant::now() + hold;
    while Instant::now() < until {
        assert_eq!(kept.lost(), None, "lost within {hold:?}");
        assert!(kept.remaining().is_some());
        assert!(other.try_acquire(TTL).unwrap().is_none(), "someone got in");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_interval_the_validity_cannot_cover_is_clamped() {
    // A 1 s TTL is valid for 1 s minus the drift allowance (988 ms): a renewal every 995 ms
    // would always come too late. The schedule renews in time instead.
    let redis = RedisProcess::start();
    let lock = handle(&redis).lock("nearly").unwrap();
    let other = handle(&redis).lock("nearly").unwrap();
    let ttl = Duration::from_secs(1);
    let kept = lock
        .try_acquire(ttl)
        .unwrap()
        .unwrap()
        .keep_alive(KeepAlive::default().every(Duration::from_millis(995)));
    stays_held(&kept, &other, 3 * ttl);
    kept.release().unwrap();
    assert!(other.try_acquire(TTL).unwrap().is_some(), "released");
}

#[test]
fn a_lease_with_little_validity_left_is_renewed_in_time() {
    // The default interval is a third of the TTL (333 ms), but only ~200 ms are left when the
    // lease is handed over: the first renewal must come against what is left.
    let redis = RedisProcess::start();
    let lock = handle(&redis).lock("short-left").unwrap();
    let other = handle(&redis).lock("short-left").unwrap();
    let ttl = Duration::from_secs(1);
    let lease = lock.try_acquire(ttl).unwrap().unwrap();
    thread::sleep(
        lease
            .remaining()
            .unwrap()
            .saturating_sub(Duration::from_millis(200)),
    );
    let left = lease.remaining().expect("still valid");
    assert!(left < ttl / 3, "{left:?}");
    let kept = lease.keep_alive(KeepAlive::default());
    stays_held(&kept, &other, ttl + ttl / 2);
    kept.release().unwrap();
}
