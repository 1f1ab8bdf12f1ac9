//! `acquire_all`: leases on several `DeadlineLock`s at once, in one global order.
//!
//! Time comes from clocks the tests drive; nothing sleeps, nothing asserts on timing.
#![cfg(not(loom))]

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::Duration;

use fencelock::{acquire_all, Clock, DeadlineLock, ManualClock, SameLock};

const LONG: Duration = Duration::from_secs(3_600);
const SECOND: Duration = Duration::from_secs(1);

/// Rounds per thread in the opposite-order test.
const ROUNDS: u32 = if cfg!(miri) { 20 } else { 2_000 };

/// A clock that moves one millisecond forward every time it is read, so that time passes between
/// the acquisitions of one `acquire_all`.
#[derive(Default)]
struct SteppingClock(AtomicU64);

impl Clock for SteppingClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.fetch_add(1, Relaxed))
    }
}

/// Runs `scenario` on its own thread and fails the test if it has not finished after a minute of
/// real time, so that a hang fails instead of stalling the suite. Nothing waits for the timeout.
fn watchdog<R: Send + 'static>(what: &str, scenario: impl FnOnce() -> R + Send + 'static) -> R {
    let (done, finished) = mpsc::channel();
    thread::spawn(move || done.send(scenario()).unwrap());
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: still running after 60 s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

/// A `ManualClock` that notes when a waiter is about to park: its `max_sleep` sets `parking`.
struct ParkingFlagClock {
    time: ManualClock,
    parking: AtomicBool,
}

impl Clock for ParkingFlagClock {
    fn now(&self) -> Duration {
        self.time.now()
    }

    fn max_sleep(&self, ahead: Duration) -> Duration {
        self.parking.store(true, Release);
        ahead.min(Duration::from_millis(1))
    }
}

/// Issue 7: the first lease of a set runs out while `acquire_all` waits for the second lock. It
/// must not come back ended: `acquire_all` takes it again (a new token), and returns the set only
/// once every lease runs and all end together.
#[test]
fn a_lease_that_ran_out_while_a_later_lock_was_awaited_is_taken_again() {
    let (tokens, remaining) = watchdog("acquire_all retaking a lease", || {
        let clock = ParkingFlagClock {
            time: ManualClock::new(),
            parking: AtomicBool::new(false),
        };
        // One array: the first element comes first in the global (address) order.
        let locks = [0, 1].map(|n| DeadlineLock::with_clock(n, &clock));
        let holder = locks[1].acquire(LONG);
        thread::scope(|s| {
            let taker = s.spawn(|| {
                let leases = acquire_all([&locks[0], &locks[1]], SECOND).unwrap();
                // The clock no longer moves: what is checked here is what `acquire_all` returned.
                let tokens = leases.each_ref().map(|l| l.token().get());
                (tokens, leases.each_ref().map(|l| l.remaining()))
            });
            // The taker holds the first lock and is about to park on the second.
            while !clock.parking.load(Acquire) {
                thread::yield_now();
            }
            clock.time.advance(SECOND); // the first lease ends meanwhile
            holder.release().unwrap();
            taker.join().unwrap()
        })
    });
    assert_eq!(remaining, [Some(SECOND); 2], "tokens {tokens:?}");
    assert_eq!(
        tokens[0], 2,
        "the ended lease was taken again, with a new token"
    );
}

#[test]
fn leases_come_back_in_the_callers_order_with_their_tokens() {
    let clock = Arc::new(ManualClock::new());
    let locks: Vec<_> = (0..3)
        .map(|n| DeadlineLock::with_clock(n, Arc::clone(&clock)))
        .collect();
    // Take the middle one once, so the tokens differ per lock.
    drop(locks[1].acquire(LONG));
    let leases = acquire_all([&locks[2], &locks[0], &locks[1]], LONG).unwrap();
    let seen: Vec<_> = leases.iter().map(|l| l.with(|n| *n).unwrap()).collect();
    assert_eq!(seen, [2, 0, 1]);
    let tokens: Vec<_> = leases.iter().map(|l| l.token().get()).collect();
    assert_eq!(tokens, [1, 1, 2]);
}

#[test]
fn the_same_lock_twice_is_refused_before_anything_is_taken() {
    let (a, b) = (DeadlineLock::new(()), DeadlineLock::new(()));
    let err = acquire_all([&a, &b, &a], LONG).err();
    assert_eq!(err.map(|e| (e.first, e.second)), Some((0, 2)));
    assert_eq!(
        acquire_all([&b, &b], LONG).err(),
        Some(SameLock {
            first: 0,
            second: 1
        })
    );
    // Nothing was taken: both are free, and still at generation 0.
    let [la, lb] = acquire_all([&a, &b], LONG).unwrap();
    assert_eq!((la.token().get(), lb.token().get()), (1, 1));
}

#[test]
fn the_leases_of_a_set_end_together() {
    let clock = SteppingClock::default();
    // One array: the first element comes first in the global (address) order.
    let locks = [
        DeadlineLock::with_clock((), &clock),
        DeadlineLock::with_clock((), &clock),
    ];
    let lease = Duration::from_millis(100);
    let [first, second] = acquire_all([&locks[0], &locks[1]], lease).unwrap();
    // Each `remaining` reads the clock once: at `t + 1 ms` and `t + 2 ms`.
    let t = clock.now();
    let first_deadline = t + Duration::from_millis(1) + first.remaining().unwrap();
    let second_deadline = t + Duration::from_millis(2) + second.remaining().unwrap();
    // Taken first, the first lease would end first; both are renewed from one clock reading
    // after the second was taken, and end at the same instant.
    assert_eq!(first_deadline, second_deadline);
}

#[test]
fn a_zero_lease_is_not_an_error_and_does_not_hang() {
    let (a, b) = (DeadlineLock::new(1), DeadlineLock::new(2));
    let leases = acquire_all([&a, &b], Duration::ZERO).unwrap();
    assert!(leases.iter().all(|l| !l.is_valid()));
    drop(leases);
    let again = acquire_all([&b, &a], Duration::MAX).unwrap();
    assert!(again.iter().all(|l| l.is_valid()));
}

/// The seed's deadlock: one thread wants {A, B}, the other {B, A}, over and over. Through
/// `acquire_all` both always finish, and the money they move between the two accounts is conserved.
#[test]
fn opposite_orders_never_deadlock_and_conserve_the_total() {
    let accounts = Arc::new([DeadlineLock::new(1_000_i64), DeadlineLock::new(1_000_i64)]);
    let start = Arc::new(Barrier::new(2));
    let movers: Vec<_> = [(0, 1), (1, 0)]
        .into_iter()
        .map(|(from, to)| {
            let (accounts, start) = (Arc::clone(&accounts), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                for _ in 0..ROUNDS {
                    let [mut debit, mut credit] =
                        acquire_all([&accounts[from], &accounts[to]], LONG).unwrap();
                    debit.with_mut(|cash| *cash -= 1).unwrap();
                    credit.with_mut(|cash| *cash += 1).unwrap();
                }
            })
        })
        .collect();
    for mover in movers {
        mover.join().unwrap();
    }
    let [a, b] = acquire_all([&accounts[0], &accounts[1]], LONG).unwrap();
    assert_eq!(a.with(|c| *c).unwrap() + b.with(|c| *c).unwrap(), 2_000);
    // Every round took each lock once, plus this final look: tokens count them all.
    assert_eq!(a.token().get(), 2 * u64::from(ROUNDS) + 1);
}

thread_local! {
    /// The time this thread's clock reads are pinned to, if any (see `StressClock`).
    static PINNED: Cell<Option<Duration>> = const { Cell::new(None) };
    /// The last time this thread read from the shared clock itself.
    static LAST_READ: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// The stress test's clock: one manual time for every lock, which moves one tick whenever a waiter
/// is about to park (so leases run out while locks are awaited) and when a worker stalls.
///
/// Each thread remembers the last time it read, and can pin its own reads to a time: after
/// `acquire_all` returns, the worker's last read is the one `acquire_all` judged the set by, and
/// pinned to it the worker sees the leases exactly as `acquire_all` left them — however far the
/// other threads have moved the clock since.
struct StressClock(AtomicU64);

/// One tick of the stress clock, and the leases it hands out (in ticks).
const TICK: Duration = Duration::from_millis(1);
const STRESS_LEASE: Duration = Duration::from_millis(20);

impl StressClock {
    fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Relaxed);
    }

    /// The current time, read as a read-modify-write: it reads the latest time, at least as late as
    /// any time another thread read before this thread saw what that thread did.
    fn latest(&self) -> Duration {
        Duration::from_nanos(self.0.fetch_add(0, SeqCst))
    }
}

impl Clock for StressClock {
    fn now(&self) -> Duration {
        if let Some(pinned) = PINNED.get() {
            return pinned;
        }
        let now = Duration::from_nanos(self.0.load(Relaxed));
        LAST_READ.set(now);
        now
    }

    fn max_sleep(&self, ahead: Duration) -> Duration {
        self.advance(TICK);
        ahead.min(Duration::from_micros(50))
    }
}

/// Overlapping sets of two and three of four locks, taken in opposite orders by four threads, with short leases that
/// run out while later locks are awaited (the clock ticks at every park) and stalls that end
/// everyone's leases: every set `acquire_all` returns is whole — each lease was running, and all
/// end together, `STRESS_LEASE` after the clock reading `acquire_all` judged the set by.
///
/// Checked without a race against the moving clock: the worker pins its clock to that reading and
/// asks each lease how long it has left (exactly `STRESS_LEASE`). Only a takeover since could
/// change the answer, and a takeover needs the clock past that deadline; when the clock has got
/// there by the time of the check, a lease that answers `None` is excused.
#[test]
fn every_set_acquire_all_returns_is_running_and_ends_together() {
    const SETS: u32 = if cfg!(miri) { 5 } else { 400 };
    let (checked, excused) = watchdog("the acquire_all stress", || {
        let clock = StressClock(AtomicU64::new(0));
        let locks = [0, 1, 2, 3].map(|_| DeadlineLock::with_clock(0_u64, &clock));
        let (checked, excused) = (AtomicU64::new(0), AtomicU64::new(0));
        let start = Barrier::new(4);
        let check = |leases: &[fencelock::Lease<'_, u64, &StressClock>]| {
            let judged = LAST_READ.get();
            PINNED.set(Some(judged));
            let remaining: Vec<_> = leases.iter().map(|l| l.remaining()).collect();
            PINNED.set(None);
            let deadline_passed = clock.latest() >= judged + STRESS_LEASE;
            for (lease, left) in leases.iter().zip(remaining) {
                match left {
                    Some(left) => assert_eq!(left, STRESS_LEASE, "{lease:?}: not the set's end"),
                    None if deadline_passed => {
                        excused.fetch_add(1, Relaxed);
                    }
                    None => panic!(
                        "{lease:?} was returned ended ({:?}) at {judged:?}",
                        lease.with(|_| ()).err()
                    ),
                }
            }
            checked.fetch_add(1, Relaxed);
        };
        let work = |leases: &mut [fencelock::Lease<'_, u64, &StressClock>], round: u32| {
            for lease in leases.iter_mut() {
                let _ = lease.with_mut(|n| *n += 1);
            }
            thread::yield_now(); // let the others come and wait
            if round.is_multiple_of(5) {
                clock.advance(STRESS_LEASE); // a stall: every lease held now ends
            }
        };
        // Overlapping sets in opposite orders: a thread holding the first locks of its set often
        // waits for one that another thread holds, and sometimes stalls in.
        thread::scope(|s| {
            // One worker: `SETS` rounds of `acquire_all` on the locks at `$at`, in that order.
            macro_rules! worker {
                ($offset:expr, [$($at:expr),+]) => {
                    s.spawn(|| {
                        start.wait();
                        for round in 0..SETS {
                            let mut set = acquire_all([$(&locks[$at]),+], STRESS_LEASE).unwrap();
                            check(&set);
                            work(&mut set, round + $offset);
                        }
                    })
                };
            }
            worker!(0, [0, 1, 2]);
            worker!(1, [3, 2, 1]);
            worker!(2, [2, 3]);
            worker!(3, [1, 0]);
        });
        (checked.into_inner(), excused.into_inner())
    });
    assert_eq!(checked, 4 * u64::from(SETS));
    eprintln!(
        "{checked} sets checked, {excused} leases excused (taken over after the check's deadline)"
    );
}
