//! The lock's contract, as test bodies over any lock server: each takes a [`Setup`] of servers
//! nobody else uses. `tests/single_server.rs` runs them on one server, `tests/quorum.rs` on
//! quorums of 3 and of 1 — the same bodies.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use fencelock::{FencingToken, LeaseLost};
use fencelock_redis::{try_acquire_all, Error, LockServer, RedisLease};

/// What a body runs against.
pub struct Setup {
    /// The lock server: one server, or a quorum.
    pub locks: LockServer,
    /// A single server for fenced resources (on a single-server setup, the same server).
    pub data: LockServer,
    /// Opens another, independent handle to the same lock server(s).
    pub reopen: Box<dyn Fn() -> LockServer + Sync>,
}

/// Long enough that no lease in these tests runs out unless the test means it to.
const LONG: Duration = Duration::from_secs(30);
/// A lease meant to run out; tests sleep [`PAST_SHORT`] to outlive it with a wide margin.
const SHORT: Duration = Duration::from_millis(100);
const PAST_SHORT: Duration = Duration::from_millis(400);

fn lost(result: Result<(), Error>) -> LeaseLost {
    match result {
        Err(Error::Lost(lost)) => lost,
        other => panic!("expected Error::Lost, got {other:?}"),
    }
}

pub fn one_holder_at_a_time(setup: &Setup) {
    let server = &setup.locks;
    let lock = server.lock("one-holder").unwrap();
    let lease = lock
        .try_acquire(LONG)
        .unwrap()
        .expect("a free lock is granted");
    assert!(lease.is_valid());
    assert!(lease.remaining().unwrap() <= LONG);
    assert!(lock.try_acquire(LONG).unwrap().is_none(), "held: refused");
    let other_handle = server.lock("one-holder").unwrap();
    assert!(other_handle.try_acquire(LONG).unwrap().is_none());
    // Another name is another lock.
    let other = server.lock("another").unwrap().try_acquire(LONG).unwrap();
    assert!(other.is_some());
    lease.release().unwrap();
    assert!(
        lock.try_acquire(LONG).unwrap().is_some(),
        "free again after release"
    );
}

/// `status` shows the holder's token and a remaining TTL within the lease's, and nobody once it
/// is released.
pub fn status_shows_the_holder(setup: &Setup) {
    let lock = setup.locks.lock("status").unwrap();
    assert_eq!(lock.status().unwrap(), None, "free: nobody");
    let lease = lock.try_acquire(LONG).unwrap().expect("free");
    let status = lock.status().unwrap().expect("held");
    assert_eq!(status.token, Some(lease.token()));
    assert!(
        status.remaining <= LONG && !status.remaining.is_zero(),
        "{status:?}"
    );
    lease.release().unwrap();
    assert_eq!(lock.status().unwrap(), None, "released: nobody");
}

pub fn tokens_strictly_increase(setup: &Setup) {
    let server = &setup.locks;
    let lock = server.lock("tokens").unwrap();
    let mut last = FencingToken::new(0);
    for round in 0..20 {
        let lease = lock.try_acquire(LONG).unwrap().unwrap();
        assert!(
            lease.token() > last,
            "round {round}: {} after {last}",
            lease.token()
        );
        last = lease.token();
        if round % 2 == 0 {
            lease.release().unwrap();
        } else {
            drop(lease);
        }
    }
    // A takeover of an expired lease gets a larger token too.
    let stalled = lock.try_acquire(SHORT).unwrap().unwrap();
    thread::sleep(PAST_SHORT);
    let newer = lock
        .try_acquire(LONG)
        .unwrap()
        .expect("expired: taken over");
    assert!(newer.token() > stalled.token() && stalled.token() > last);
}

pub fn stalled_holder_is_taken_over_and_refused(setup: &Setup) {
    let server = &setup.locks;
    let lock = server.lock("stall").unwrap();
    let ledger = setup.data.fenced("stall-ledger").unwrap();
    let mut stalled = lock.try_acquire(SHORT).unwrap().unwrap();
    let old_token = stalled.token();
    ledger.write(old_token, &redis::pipe()).unwrap();

    thread::sleep(PAST_SHORT); // the holder stalls past its TTL
    assert!(!stalled.is_valid(), "remaining() is conservative");
    assert_eq!(stalled.remaining(), None);

    let mut newer = lock.try_acquire(LONG).unwrap().expect("taken over");
    let mut write = redis::pipe();
    write.cmd("SET").arg("stall-value").arg("newer");
    ledger.write(newer.token(), &write).unwrap();

    // The stalled holder wakes up: every call is refused and names the newer holder.
    let by = newer.token();
    assert_eq!(lost(stalled.renew(LONG)), LeaseLost::TakenOver { by });
    let mut late = redis::pipe();
    late.cmd("SET").arg("stall-value").arg("stalled");
    match ledger.write(old_token, &late) {
        Err(Error::Stale(stale)) => {
            assert_eq!((stale.presented, stale.highest), (old_token, by));
        }
        other => panic!("expected Stale, got {other:?}"),
    }
    assert_eq!(ledger.highest().unwrap(), by);

    assert!(
        lock.try_acquire(SHORT).unwrap().is_none(),
        "held by the newer holder"
    );
    drop(stalled); // its best-effort release is refused by the server and changes nothing
    assert!(
        lock.try_acquire(SHORT).unwrap().is_none(),
        "still held by the newer holder"
    );

    // The new holder is untouched: it renews and releases normally.
    newer.renew(LONG).unwrap();
    assert!(newer.is_valid());
    newer.release().unwrap();
}

/// A lease found lost says the same every time after: a renewal that named the newer holder is
/// followed by renewals and a release that name it too (not a bare `Expired`).
pub fn a_lost_lease_reports_the_same_loss_every_time(setup: &Setup) {
    let lock = setup.locks.lock("same-loss").unwrap();
    let mut stalled = lock.try_acquire(SHORT).unwrap().unwrap();
    thread::sleep(PAST_SHORT);
    let newer = lock.try_acquire(LONG).unwrap().expect("taken over");
    let by = newer.token();
    assert_eq!(lost(stalled.renew(LONG)), LeaseLost::TakenOver { by });
    newer.release().unwrap(); // the lock is free now: the loss must still be the one seen
    assert_eq!(lost(stalled.renew(LONG)), LeaseLost::TakenOver { by });
    assert_eq!(lost(stalled.release()), LeaseLost::TakenOver { by });
}

pub fn stale_release_is_refused_and_changes_nothing(setup: &Setup) {
    let server = &setup.locks;
    let lock = server.lock("stale-release").unwrap();
    let stalled = lock.try_acquire(SHORT).unwrap().unwrap();
    thread::sleep(PAST_SHORT);
    let newer = lock.try_acquire(LONG).unwrap().unwrap();
    assert_eq!(
        lost(stalled.release()),
        LeaseLost::TakenOver { by: newer.token() }
    );
    assert!(
        lock.try_acquire(LONG).unwrap().is_none(),
        "newer still holds"
    );
    assert!(newer.is_valid());
    newer.release().unwrap();
}

pub fn expired_lease_reports_expired(setup: &Setup) {
    let server = &setup.locks;
    let lock = server.lock("expired").unwrap();
    let mut lease = lock.try_acquire(SHORT).unwrap().unwrap();
    thread::sleep(PAST_SHORT);
    assert_eq!(lost(lease.renew(LONG)), LeaseLost::Expired);
    // Once lost, it stays lost.
    assert_eq!(lease.remaining(), None);
    assert_eq!(lost(lease.release()), LeaseLost::Expired);
    let lease = lock.try_acquire(SHORT).unwrap().unwrap();
    thread::sleep(PAST_SHORT);
    assert_eq!(lost(lease.release()), LeaseLost::Expired);
}

pub fn renew_keeps_others_out(setup: &Setup) {
    let server = &setup.locks;
    let lock = server.lock("renew").unwrap();
    let mut lease = lock
        .try_acquire(Duration::from_millis(300))
        .unwrap()
        .unwrap();
    // Renew well inside the lease, past the first TTL: nobody gets in meanwhile.
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        lease.renew(Duration::from_millis(300)).unwrap();
        assert!(lock.try_acquire(LONG).unwrap().is_none());
        thread::sleep(Duration::from_millis(50));
    }
    lease.renew(LONG).unwrap();
    assert!(lease.remaining().unwrap() > Duration::from_secs(20));
    lease.release().unwrap();
}

pub fn drop_releases(setup: &Setup) {
    let server = &setup.locks;
    let lock = server.lock("drop").unwrap();
    let lease = lock.try_acquire(LONG).unwrap().unwrap();
    let moved = thread::spawn(move || lease); // Send + 'static
    drop(moved.join().unwrap());
    assert!(
        lock.try_acquire(LONG).unwrap().is_some(),
        "drop released it"
    );
}

pub fn acquire_timeout_picks_up_a_release(setup: &Setup) {
    let server = &setup.locks;
    let lock = server.lock("wait-release").unwrap();
    let held = lock.try_acquire(LONG).unwrap().unwrap();
    let (started, waiting) = mpsc::channel();
    let waiter = {
        let lock = lock.clone();
        thread::spawn(move || {
            started.send(()).unwrap();
            let began = Instant::now();
            let lease = lock.acquire_timeout(LONG, Duration::from_secs(20)).unwrap();
            (lease, began.elapsed())
        })
    };
    waiting.recv().unwrap();
    let held_token = held.token();
    held.release().unwrap();
    let (lease, waited) = waiter.join().unwrap();
    let lease = lease.expect("the release is picked up");
    assert!(lease.token() > held_token);
    // It took the release, not some later expiry (the held lease had 30 s left).
    assert!(waited < Duration::from_secs(15), "waited {waited:?}");
}

pub fn acquire_timeout_takes_over_an_expired_lease(setup: &Setup) {
    let server = &setup.locks;
    let lock = server.lock("wait-expiry").unwrap();
    let stalled = lock
        .try_acquire(Duration::from_millis(300))
        .unwrap()
        .unwrap();
    let newer = lock
        .acquire_timeout(LONG, Duration::from_secs(20))
        .unwrap()
        .expect("taken over once the TTL ran out");
    assert!(newer.token() > stalled.token());
    std::mem::forget(stalled); // its Drop would only be refused
}

pub fn acquire_timeout_gives_up_on_time(setup: &Setup) {
    let server = &setup.locks;
    let lock = server.lock("give-up").unwrap();
    let _held = lock.try_acquire(LONG).unwrap().unwrap();
    for wait in [Duration::ZERO, Duration::from_millis(300)] {
        let began = Instant::now();
        assert!(lock.acquire_timeout(LONG, wait).unwrap().is_none());
        let waited = began.elapsed();
        assert!(waited >= wait, "gave up early: {waited:?} < {wait:?}");
        // One round trip past `wait` at most; a generous bound, not a timing target.
        assert!(waited < wait + Duration::from_secs(5), "waited {waited:?}");
    }
}

/// Threads sharing one handle, and threads with handles of their own, never overlap, and tokens
/// follow the order in which the lock was granted.
pub fn threads_never_overlap_and_tokens_follow_grants(setup: &Setup) {
    let server = &setup.locks;
    const THREADS: usize = 8;
    const ROUNDS: usize = 25;
    let inside = AtomicBool::new(false);
    let grants = Mutex::new(Vec::new());
    let acquired = AtomicUsize::new(0);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (inside, grants, acquired) = (&inside, &grants, &acquired);
            s.spawn(move || {
                let lock = if t % 2 == 0 {
                    server.lock("crowd").unwrap()
                } else {
                    (setup.reopen)().lock("crowd").unwrap()
                };
                for _ in 0..ROUNDS {
                    let lease = lock
                        .acquire_timeout(LONG, Duration::from_secs(60))
                        .unwrap()
                        .expect("every thread gets its turn");
                    assert!(!inside.swap(true, SeqCst), "two holders at once");
                    grants.lock().unwrap().push(lease.token());
                    acquired.fetch_add(1, SeqCst);
                    inside.store(false, SeqCst);
                    lease.release().unwrap();
                }
            });
        }
    });
    let grants = grants.into_inner().unwrap();
    assert_eq!(acquired.into_inner(), THREADS * ROUNDS);
    assert!(
        grants.windows(2).all(|w| w[0] < w[1]),
        "tokens out of grant order"
    );
}

/// Single servers only: a quorum refuses `try_acquire_all`.
pub fn try_acquire_all_is_all_or_nothing(setup: &Setup) {
    let server = &setup.locks;
    let a = server.lock("all-a").unwrap();
    let b = server.lock("all-b").unwrap();
    let c = server.lock("all-c").unwrap();
    let held_b = b.try_acquire(LONG).unwrap().unwrap();
    assert!(try_acquire_all(&[&a, &b, &c], LONG).unwrap().is_none());
    // Nothing was left held: a and c are free.
    drop(a.try_acquire(LONG).unwrap().expect("a was not left held"));
    drop(c.try_acquire(LONG).unwrap().expect("c was not left held"));
    held_b.release().unwrap();

    // A handle of its own to the same server is fine.
    let c_elsewhere = (setup.reopen)().lock("all-c").unwrap();
    let leases: Vec<RedisLease> = try_acquire_all(&[&c_elsewhere, &a, &b], LONG)
        .unwrap()
        .expect("all free");
    assert_eq!(
        leases.iter().map(RedisLease::name).collect::<Vec<_>>(),
        ["all-c", "all-a", "all-b"]
    );
    for lock in [&a, &b, &c] {
        assert!(lock.try_acquire(LONG).unwrap().is_none());
    }
    let tokens: Vec<_> = leases.iter().map(RedisLease::token).collect();
    for lease in leases {
        lease.release().unwrap();
    }
    let again = try_acquire_all(&[&a, &b, &c], LONG).unwrap().unwrap();
    for (lease, old) in again.iter().zip([tokens[1], tokens[2], tokens[0]]) {
        assert!(lease.token() > old);
    }

    // A lock named twice is refused before anything is sent.
    drop(again);
    let a_again = server.lock("all-a").unwrap();
    assert!(matches!(
        try_acquire_all(&[&a, &b, &a_again], LONG),
        Err(Error::InvalidInput(_))
    ));
    assert!(
        a.try_acquire(LONG).unwrap().is_some(),
        "nothing held after the refusal"
    );
    assert!(try_acquire_all(&[], LONG).unwrap().unwrap().is_empty());
}

pub fn fenced_admits_in_token_order(setup: &Setup) {
    let ledger = setup.data.fenced("fenced-order").unwrap();
    assert_eq!(ledger.highest().unwrap(), FencingToken::new(0));
    let push = |token: u64, entry: &str| {
        let mut p = redis::pipe();
        p.cmd("RPUSH").arg("fenced-order-list").arg(entry);
        ledger.write(FencingToken::new(token), &p)
    };
    push(5, "five").unwrap();
    push(5, "five again").unwrap(); // equal: the same holder writing twice
    push(9, "nine").unwrap();
    assert!(matches!(push(6, "six"), Err(Error::Stale(_))));
    assert_eq!(ledger.highest().unwrap(), FencingToken::new(9));
    assert!(matches!(
        ledger.write(FencingToken::new(u64::MAX), &redis::pipe()),
        Err(Error::InvalidInput(_))
    ));
}

/// The contract's core — one holder, growing tokens, takeover, renewal, waiting, threads, fencing
/// — on one server and then on a quorum, for a way of reaching servers (a user, TLS):
/// `one()` opens a handle to the first server (also the fenced data's), `quorum()` one to all,
/// and `flush()` empties every server between the two runs (the bodies' keys are shared).
pub fn on_one_server_and_a_quorum(
    one: impl Fn() -> LockServer + Clone + Sync + 'static,
    quorum: impl Fn() -> LockServer + Sync + 'static,
    flush: impl Fn(),
) {
    let runs: [(LockServer, Box<dyn Fn() -> LockServer + Sync>); 2] =
        [(one(), Box::new(one.clone())), (quorum(), Box::new(quorum))];
    for (locks, reopen) in runs {
        let setup = Setup {
            locks,
            data: one(),
            reopen,
        };
        one_holder_at_a_time(&setup);
        status_shows_the_holder(&setup);
        tokens_strictly_increase(&setup);
        stalled_holder_is_taken_over_and_refused(&setup);
        renew_keeps_others_out(&setup);
        acquire_timeout_picks_up_a_release(&setup);
        acquire_timeout_gives_up_on_time(&setup);
        threads_never_overlap_and_tokens_follow_grants(&setup);
        fenced_admits_in_token_order(&setup);
        flush();
    }
}
