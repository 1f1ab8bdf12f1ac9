//! `acquire_all`: leases on several `DeadlineLock`s at once, in one global order.
//!
//! Time comes from clocks the tests drive; nothing sleeps, nothing asserts on timing.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use fencelock::{acquire_all, Clock, DeadlineLock, ManualClock, SameLock};

const LONG: Duration = Duration::from_secs(3_600);

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
fn earlier_leases_are_renewed_to_end_with_the_last() {
    let clock = SteppingClock::default();
    // One array: the first element comes first in the global (address) order.
    let locks = [
        DeadlineLock::with_clock((), &clock),
        DeadlineLock::with_clock((), &clock),
    ];
    let lease = Duration::from_millis(100);
    let [first, second] = acquire_all([&locks[0], &locks[1]], lease).unwrap();
    // Each `remaining` reads the clock once: at `t` and `t + 1 ms`.
    let t = clock.now();
    let first_deadline = t + Duration::from_millis(1) + first.remaining().unwrap();
    let second_deadline = t + Duration::from_millis(2) + second.remaining().unwrap();
    // Taken first, the first lease would end first; renewed after the second was taken, it ends
    // no earlier.
    assert!(
        first_deadline >= second_deadline,
        "{first_deadline:?} < {second_deadline:?}"
    );
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
