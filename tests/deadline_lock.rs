//! `DeadlineLock`, `Fenced` and `Versioned` across threads, and at the edges of their input.
//!
//! Time comes from a `ManualClock` that the test drives; nothing sleeps, nothing asserts on
//! timing. Stress loops shrink under Miri.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::*};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use fencelock::{
    acquire_all, Clock, DeadlineLock, Fenced, FencingToken, LeaseLost, ManualClock, MonotonicClock,
    StaleToken, Versioned,
};

const SECOND: Duration = Duration::from_secs(1);

/// Iterations per thread in the stress tests.
const ROUNDS: u64 = if cfg!(miri) { 20 } else { 2_000 };

fn manual_lock<T>(value: T) -> (DeadlineLock<T, Arc<ManualClock>>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    (DeadlineLock::with_clock(value, Arc::clone(&clock)), clock)
}

/// Runs `scenario` on its own thread and fails the test if it has not finished after a minute of
/// real time: a regression to a deadlock or a stale sleep fails instead of hanging the suite. The
/// timeout only turns a hang into a failure; nothing waits for it to pass.
fn watchdog<R: Send + 'static>(what: &str, scenario: impl FnOnce() -> R + Send + 'static) -> R {
    let (done, finished) = mpsc::channel();
    thread::spawn(move || done.send(scenario()).unwrap());
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: still running after 60 s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

/// Spins (yielding) until `flag` is set: how the deterministic tests sequence their threads.
fn wait_for(flag: &AtomicBool) {
    while !flag.load(Acquire) {
        thread::yield_now();
    }
}

#[test]
fn tokens_count_every_acquisition_from_one() {
    let (lock, clock) = manual_lock(());
    let first = lock.try_acquire(SECOND).unwrap();
    assert_eq!(first.token(), FencingToken::new(1));
    first.release().unwrap();
    let second = lock.acquire(SECOND);
    assert_eq!(second.token().get(), 2);
    clock.advance(SECOND);
    let third = lock.try_acquire(SECOND).unwrap(); // a takeover is an acquisition too
    assert_eq!(third.token().get(), 3);
    assert!(second.token() < third.token());
}

#[test]
fn a_zero_lease_ends_at_once() {
    let (lock, _clock) = manual_lock(5);
    let mut lease = lock.try_acquire(Duration::ZERO).unwrap();
    assert!(!lease.is_valid());
    assert_eq!(lease.remaining(), None);
    assert_eq!(lease.with(|v| *v), Err(LeaseLost::Expired));
    assert_eq!(lease.renew(SECOND), Err(LeaseLost::Expired));
    let next = lock.try_acquire(SECOND).unwrap();
    assert_eq!(next.token().get(), 2);
    assert_eq!(
        lease.with_mut(|v| *v += 1),
        Err(LeaseLost::TakenOver { by: next.token() })
    );
    assert_eq!(next.with(|v| *v), Ok(5));
}

#[test]
fn renewing_to_zero_ends_the_lease() {
    let (lock, _clock) = manual_lock(());
    let mut lease = lock.acquire(SECOND);
    lease.renew(Duration::ZERO).unwrap();
    assert!(!lease.is_valid());
    assert!(lock.try_acquire(SECOND).is_some());
}

#[test]
fn a_huge_lease_saturates_instead_of_wrapping() {
    let (lock, clock) = manual_lock(());
    clock.advance(SECOND);
    let mut lease = lock.try_acquire(Duration::MAX).unwrap();
    let left = lease.remaining().unwrap();
    assert_eq!(left, Duration::from_nanos(u64::MAX) - SECOND);
    clock.advance(Duration::from_secs(100 * 365 * 24 * 3600));
    assert!(lease.is_valid());
    assert!(lock.try_acquire(SECOND).is_none());
    lease.renew(Duration::MAX).unwrap();
    assert!(lease.is_valid());
    // The clock saturates at the same end of time: there, even a saturated lease has ended.
    clock.advance(Duration::MAX);
    assert!(!lease.is_valid());
    assert_eq!(lock.try_acquire(SECOND).unwrap().token().get(), 2);
}

#[test]
fn remaining_counts_down_with_the_clock() {
    let (lock, clock) = manual_lock(());
    let lease = lock.acquire(Duration::from_millis(300));
    clock.advance(Duration::from_millis(100));
    assert_eq!(lease.remaining(), Some(Duration::from_millis(200)));
    clock.advance(Duration::from_millis(200));
    assert_eq!(lease.remaining(), None);
}

#[test]
fn a_stale_holder_changes_nothing() {
    let (lock, clock) = manual_lock(0_u32);
    let mut stale = lock.acquire(SECOND);
    clock.advance(SECOND);
    let mut current = lock.try_acquire(Duration::from_secs(3)).unwrap();
    let lost = LeaseLost::TakenOver {
        by: current.token(),
    };

    assert_eq!(stale.renew(Duration::from_secs(100)), Err(lost));
    assert_eq!(stale.with_mut(|v| *v = 99), Err(lost));
    assert_eq!(stale.with(|v| *v), Err(lost));
    assert_eq!(stale.remaining(), None);
    assert_eq!(stale.release(), Err(lost));

    // The new lease is untouched: same time left, still exclusive, still writable.
    assert_eq!(current.remaining(), Some(Duration::from_secs(3)));
    assert!(lock.try_acquire(SECOND).is_none());
    current.with_mut(|v| *v += 1).unwrap();
    clock.advance(Duration::from_secs(3));
    assert!(!current.is_valid());
    assert_eq!(lock.try_acquire(SECOND).unwrap().token().get(), 3);
}

#[test]
fn an_ended_lease_nobody_took_is_released_without_reading_the_clock() {
    let (lock, clock) = manual_lock(());
    let mut lease = lock.acquire(SECOND);
    clock.advance(SECOND);
    assert_eq!(lease.renew(SECOND), Err(LeaseLost::Expired));
    assert_eq!(lease.with(|()| ()), Err(LeaseLost::Expired));
    // Still the lock's latest lease: releasing it frees the lock for the next generation.
    assert_eq!(lease.release(), Ok(()));
    assert_eq!(lock.try_acquire(SECOND).unwrap().token().get(), 2);
}

#[test]
fn dropping_a_lease_releases_it_only_if_it_is_still_the_latest() {
    let (lock, clock) = manual_lock(());
    drop(lock.acquire(SECOND));
    let stale = lock.acquire(SECOND);
    clock.advance(SECOND);
    let current = lock.try_acquire(SECOND).unwrap();
    drop(stale);
    assert!(current.is_valid());
    assert!(lock.try_acquire(SECOND).is_none());
}

#[test]
fn renewing_keeps_the_lease_past_its_first_deadline() {
    let (lock, clock) = manual_lock(());
    let mut lease = lock.acquire(SECOND);
    for _ in 0..5 {
        clock.advance(Duration::from_millis(600));
        lease.renew(SECOND).unwrap();
        assert!(lock.try_acquire(SECOND).is_none());
    }
    assert_eq!(lease.remaining(), Some(SECOND));
}

#[test]
fn acquire_timeout_gives_up_by_the_clock() {
    let (lock, clock) = manual_lock(());
    let _holder = lock.acquire(Duration::MAX);
    assert!(lock.acquire_timeout(SECOND, Duration::ZERO).is_none());
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let waiter = s.spawn(|| {
            let got = lock
                .acquire_timeout(SECOND, Duration::from_secs(5))
                .is_some();
            done.store(true, Relaxed);
            got
        });
        // Drive the clock until the waiter gives up; the holder's lease never ends.
        while !done.load(Relaxed) {
            clock.advance(SECOND);
            thread::yield_now();
        }
        assert!(!waiter.join().unwrap());
    });
}

#[test]
fn acquire_timeout_takes_over_an_ending_lease() {
    let (lock, clock) = manual_lock(());
    let stalled = lock.acquire(SECOND);
    clock.advance(SECOND);
    let lease = lock.acquire_timeout(SECOND, Duration::ZERO).unwrap();
    assert!(lease.token() > stalled.token());
}

#[test]
fn acquire_ends_once_the_clock_passes_a_stalled_holders_deadline() {
    let (lock, clock) = manual_lock(());
    let stalled = lock.acquire(Duration::from_secs(10));
    thread::scope(|s| {
        let waiter = s.spawn(|| lock.acquire(Duration::from_secs(10)).token());
        clock.advance(Duration::from_secs(10));
        assert_eq!(waiter.join().unwrap().get(), 2);
    });
    assert!(!stalled.is_valid());
}

#[test]
fn a_release_wakes_a_waiter() {
    let lock = DeadlineLock::new(0_u32);
    let mut holder = lock.acquire(Duration::from_secs(3600));
    thread::scope(|s| {
        let waiter = s.spawn(|| {
            let mut lease = lock.acquire(Duration::from_secs(3600));
            lease.with_mut(|v| *v += 1).unwrap();
            lease.token()
        });
        holder.with_mut(|v| *v += 1).unwrap();
        holder.release().unwrap();
        assert_eq!(waiter.join().unwrap().get(), 2);
    });
    assert_eq!(lock.into_inner(), 2);
}

#[test]
fn a_renewal_that_shortens_the_lease_wakes_waiters() {
    let (lock, _clock) = manual_lock(());
    let mut holder = lock.acquire(Duration::from_secs(3600));
    thread::scope(|s| {
        let waiter = s.spawn(|| lock.acquire(SECOND).token());
        // Whether the waiter is parked by now or not, ending the lease lets it in: the clock
        // never moves in this test, so only the renewal's wake-up (or its new deadline, if the
        // waiter looks afterwards) can end the wait.
        holder.renew(Duration::ZERO).unwrap();
        assert_eq!(waiter.join().unwrap().get(), 2);
    });
}

/// Many threads take the lock in turn, with leases that never end: every increment lands, and each
/// thread sees its tokens grow.
#[test]
fn acquire_and_release_under_contention() {
    let lock = DeadlineLock::new(0_u64);
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut last = FencingToken::new(0);
                for _ in 0..ROUNDS {
                    let mut lease = lock.acquire(Duration::from_secs(3600));
                    assert!(lease.token() > last);
                    last = lease.token();
                    lease.with_mut(|v| *v += 1).unwrap();
                    lease.release().unwrap();
                }
            });
        }
    });
    assert_eq!(lock.into_inner(), 4 * ROUNDS);
}

/// Leases that end while in use: threads take over from each other as another thread moves the
/// clock. Accesses never overlap (each thread's read-modify-write is split in two, so an overlap
/// would lose an increment), and the final count is exactly the accesses that were admitted.
#[test]
fn takeovers_never_let_accesses_overlap() {
    let (lock, clock) = manual_lock((0_u64, 0_u64));
    let admitted: u64 = thread::scope(|s| {
        let workers: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let mut admitted = 0;
                    for _ in 0..ROUNDS {
                        let Some(mut lease) = lock.try_acquire(Duration::from_millis(2)) else {
                            thread::yield_now();
                            continue;
                        };
                        for _ in 0..3 {
                            let written = lease.with_mut(|(count, shadow)| {
                                let seen = *count;
                                std::hint::black_box(&*shadow);
                                *count = seen + 1;
                                *shadow += 1;
                            });
                            admitted += u64::from(written.is_ok());
                        }
                        // Leases are often dropped after they ended and were taken over.
                        drop(lease);
                    }
                    admitted
                })
            })
            .collect();
        let ticker = s.spawn(|| {
            for _ in 0..ROUNDS {
                clock.advance(Duration::from_millis(1));
                thread::yield_now();
            }
        });
        ticker.join().unwrap();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let (count, shadow) = lock.into_inner();
    assert_eq!((count, shadow), (admitted, admitted));
}

/// Issue 7, the access cycle: A holds leases on L0 and L1; inside its L0 access it stalls past
/// both, then opens L1. B takes both over and, inside its L1 access, opens L0. A's inner access
/// waits for B's L1 byte and B's for A's L0 byte: unless A, whose L1 lease was taken over, gives up
/// while it waits, neither ever returns.
#[test]
fn nested_accesses_of_lost_leases_give_up_instead_of_deadlocking() {
    let (a_inner, b_inner) = watchdog("the two-lock access cycle", || {
        let clock = Arc::new(ManualClock::new());
        let locks = [0, 1].map(|n| DeadlineLock::with_clock(n, Arc::clone(&clock)));
        let (a_inside, b_inside) = (AtomicBool::new(false), AtomicBool::new(false));
        let [mut a0, mut a1] = acquire_all([&locks[0], &locks[1]], SECOND).unwrap();
        thread::scope(|s| {
            let a = s.spawn(|| {
                let inner = a0.with_mut(|n0| {
                    *n0 += 1;
                    a_inside.store(true, Release);
                    wait_for(&b_inside); // the stall: B takes over meanwhile
                    a1.with_mut(|n1| *n1 += 1)
                });
                inner.unwrap()
            });
            wait_for(&a_inside);
            clock.advance(SECOND); // both of A's leases end
            let [mut b0, mut b1] = acquire_all([&locks[0], &locks[1]], SECOND).unwrap();
            let b_inner = b1
                .with_mut(|n1| {
                    *n1 += 10;
                    b_inside.store(true, Release);
                    b0.with_mut(|n0| *n0 += 10)
                })
                .unwrap();
            let a_inner = a.join().unwrap();
            assert_eq!((b0.with(|n| *n), b1.with(|n| *n)), (Ok(11), Ok(11)));
            (a_inner, b_inner.map(|()| b1.token()))
        })
    });
    let by = FencingToken::new(2);
    assert_eq!(
        (a_inner, b_inner),
        (Err(LeaseLost::TakenOver { by }), Ok(by))
    );
}

/// An access of a lease that was taken over returns at once, while the new holder's access still
/// runs — not after it. The new holder waits for the stale access's answer inside its own access,
/// so an access that waited for the byte would never return.
#[test]
fn a_taken_over_access_refuses_while_the_new_holder_accesses() {
    let refused = watchdog("a taken-over access waiting for the byte", || {
        let (lock, clock) = manual_lock(0_u32);
        let mut stale = lock.acquire(SECOND);
        clock.advance(SECOND);
        let mut current = lock.try_acquire(SECOND).unwrap();
        let (inside, answered) = (AtomicBool::new(false), AtomicBool::new(false));
        thread::scope(|s| {
            let holder = s.spawn(|| {
                current.with_mut(|n| {
                    inside.store(true, Release);
                    wait_for(&answered);
                    *n += 1;
                })
            });
            wait_for(&inside);
            let refused = stale.with_mut(|n| *n += 100);
            answered.store(true, Release);
            holder.join().unwrap().unwrap();
            refused
        })
    });
    assert_eq!(
        refused,
        Err(LeaseLost::TakenOver {
            by: FencingToken::new(2)
        })
    );
}

/// A lease that runs out while it waits for the byte (held by an older, stalled access) gives up
/// with `Expired` by the clock, without waiting for that access to end.
#[test]
fn an_access_that_runs_out_while_waiting_gives_up() {
    let refused = watchdog("an expired access waiting for the byte", || {
        let (lock, clock) = manual_lock(0_u32);
        let mut stalled = lock.acquire(SECOND);
        let (inside, answered) = (AtomicBool::new(false), AtomicBool::new(false));
        thread::scope(|s| {
            let staller = s.spawn(|| {
                stalled.with_mut(|n| {
                    inside.store(true, Release);
                    wait_for(&answered);
                    *n += 1;
                })
            });
            wait_for(&inside);
            clock.advance(SECOND);
            let mut next = lock.try_acquire(SECOND).unwrap();
            clock.advance(SECOND); // the next lease runs out too, and nobody takes it over
            let refused = next.with_mut(|n| *n += 100);
            answered.store(true, Release);
            staller.join().unwrap().unwrap();
            refused
        })
    });
    assert_eq!(refused, Err(LeaseLost::Expired));
}

/// A `ManualClock` whose `max_sleep` — which a waiter calls just before it parks — runs `hook`.
struct HookedClock<F> {
    time: Arc<ManualClock>,
    hook: F,
}

impl<F: Fn(Duration) -> Duration + Send + Sync> Clock for HookedClock<F> {
    fn now(&self) -> Duration {
        self.time.now()
    }

    fn max_sleep(&self, ahead: Duration) -> Duration {
        (self.hook)(ahead)
    }
}

/// Issue 7, the lost wake-up: waiter W1 reads the deadline (an hour) and sets PARKED; the holder
/// renews to one second, clearing PARKED and waking nobody (W1 is not parked yet); waiter W2 sets
/// PARKED again, so the state word is what W1 left; W2 gives up. W1 must not sleep on the hour:
/// once the clock passes one second it takes over.
///
/// The clock's `max_sleep` hook holds W1 between reading the deadline and parking (its first
/// call) and tells the test when W2 is about to park (its second); its first call asks for the
/// whole hour of sleep, so a park validated on a stale deadline really sleeps it.
#[test]
fn a_waiter_never_sleeps_on_a_deadline_a_renewal_shortened() {
    let token = watchdog("a waiter parked on a stale deadline", || {
        let flags = Arc::new([(); 3].map(|()| AtomicBool::new(false)));
        let [w1_holding, w2_parking, w1_go] = [0, 1, 2];
        let calls = AtomicU32::new(0);
        let time = Arc::new(ManualClock::new());
        let hook = {
            let flags = Arc::clone(&flags);
            move |ahead: Duration| match calls.fetch_add(1, Relaxed) {
                0 => {
                    flags[w1_holding].store(true, Release);
                    wait_for(&flags[w1_go]);
                    ahead
                }
                1 => {
                    flags[w2_parking].store(true, Release);
                    ahead.min(Duration::from_millis(1))
                }
                _ => ahead.min(Duration::from_millis(1)),
            }
        };
        let clock = HookedClock {
            time: Arc::clone(&time),
            hook,
        };
        let lock = DeadlineLock::with_clock((), clock);
        let mut holder = lock.acquire(Duration::from_secs(3600));
        thread::scope(|s| {
            let w1 = s.spawn(|| lock.acquire(SECOND).token());
            wait_for(&flags[w1_holding]);
            holder.renew(SECOND).unwrap();
            let w2 = s.spawn(|| lock.acquire_timeout(SECOND, Duration::from_millis(1)));
            wait_for(&flags[w2_parking]);
            flags[w1_go].store(true, Release);
            time.advance(Duration::from_millis(1));
            assert!(
                w2.join().unwrap().is_none(),
                "W2 gives up before the lease ends"
            );
            time.advance(SECOND);
            let token = w1.join().unwrap();
            assert!(!holder.is_valid());
            token
        })
    });
    assert_eq!(token.get(), 2);
}

#[test]
fn monotonic_clock_is_the_default_and_monotonic() {
    let lock: DeadlineLock<u8> = DeadlineLock::default();
    let lease = lock.acquire(Duration::from_secs(3600));
    assert!(lease.remaining().unwrap() <= Duration::from_secs(3600));
    let (a, b) = (MonotonicClock.now(), MonotonicClock.now());
    assert!(a <= b);
    assert_eq!(std::mem::size_of::<DeadlineLock<()>>(), 24);
}

#[test]
fn errors_explain_themselves() {
    let lost = LeaseLost::TakenOver {
        by: FencingToken::new(7),
    };
    assert_eq!(lost.to_string(), "the lease was taken over by token 7");
    assert_eq!(LeaseLost::Expired.to_string(), "the lease ran out");
    let stale = StaleToken {
        presented: FencingToken::new(3),
        highest: FencingToken::new(4),
    };
    assert_eq!(
        stale.to_string(),
        "stale fencing token 3: the resource has admitted token 4"
    );
    let boxed: Box<dyn std::error::Error> = Box::new(lost);
    assert!(boxed.to_string().contains("taken over"));
}

// ---- Fenced and Versioned ----

/// A stalled holder's late write reaches the fenced resource after the new holder's: refused.
#[test]
fn fenced_refuses_a_write_from_a_lease_that_was_taken_over() {
    let (lock, clock) = manual_lock(());
    let ledger = Fenced::new(Vec::new());
    let stalled = lock.acquire(SECOND);
    clock.advance(SECOND);
    let current = lock.try_acquire(SECOND).unwrap();
    ledger
        .write(current.token(), |l| l.push("current"))
        .unwrap();
    assert_eq!(
        ledger.write(stalled.token(), |l| l.push("stalled")),
        Err(StaleToken {
            presented: stalled.token(),
            highest: current.token()
        })
    );
    assert_eq!(ledger.into_inner(), ["current"]);
}

/// Writers with random tokens: the admitted ones, in the order admitted, never go down.
#[test]
fn fenced_admits_a_non_decreasing_sequence() {
    let ledger = Fenced::new(Vec::new());
    thread::scope(|s| {
        for seed in 1..=4_u64 {
            let ledger = &ledger;
            s.spawn(move || {
                let mut x = seed;
                for _ in 0..ROUNDS {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let token = FencingToken::new(x % 1000);
                    let _ = ledger.write(token, |l| l.push(token));
                }
            });
        }
    });
    let admitted = ledger.into_inner();
    assert!(admitted.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn versioned_updates_from_many_threads_all_land() {
    let cell = Versioned::new(0_u64);
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..ROUNDS {
                    cell.update(|v| v + 1);
                }
            });
        }
    });
    let (value, version) = cell.load();
    assert_eq!(value, 4 * ROUNDS);
    assert_eq!(version.get(), 4 * ROUNDS);
}
