//! Loom models of ordered acquisition: `lock_all`, `try_lock_all`, and `LockTable::lock_all`.
//!
//! The locks' data lives in their loom-aware cells, so two critical sections that overlap show
//! as a data race; a deadlock among spin locks shows as loom exceeding its branch limit (its own
//! deadlock report needs threads blocked in loom's primitives, and spin locks never block). The
//! last model checks that loom does see that: the naive opposite-order code must *not* finish.
//!
//! Preemption bounds are stated per model: 3 for two threads, 2 for three.

// The member compiles fencelock from its own source under this name (see its Cargo.toml).
extern crate fencelock_loom as fencelock;

use fencelock::{lock_all, try_lock_all, LockTable, SpinLock};
use loom::cell::UnsafeCell;
use loom::model::Builder;
use loom::sync::Arc;
use loom::thread;

fn model(preemption_bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = Builder::new();
    builder.preemption_bound = Some(preemption_bound);
    builder.check(f);
}

/// Adds one to each lock's count.
fn add_one<const N: usize>(guards: [fencelock::SpinLockGuard<'_, usize>; N]) {
    for mut guard in guards {
        *guard += 1;
    }
}

/// The seed's scenario: one thread locks {A, B}, the other {B, A}, both through `lock_all`.
/// Every interleaving finishes, and both sections ran exclusively.
#[test]
fn lock_all_opposite_orders_finish() {
    model(3, || {
        let locks = Arc::new([SpinLock::new(0_usize), SpinLock::new(0_usize)]);
        let other = {
            let locks = Arc::clone(&locks);
            thread::spawn(move || add_one(lock_all([&locks[0], &locks[1]]).unwrap()))
        };
        add_one(lock_all([&locks[1], &locks[0]]).unwrap());
        other.join().unwrap();
        assert_eq!((*locks[0].lock(), *locks[1].lock()), (2, 2));
    });
}

/// The same through a tuple of locks of different types.
#[test]
fn lock_all_tuple_opposite_orders_finish() {
    model(3, || {
        let cash = Arc::new(SpinLock::new(0_i64));
        let units = Arc::new(SpinLock::new(0_i32));
        let other = {
            let (cash, units) = (Arc::clone(&cash), Arc::clone(&units));
            thread::spawn(move || {
                let (mut cash, mut units) = lock_all((&*cash, &*units)).unwrap();
                *cash -= 10;
                *units += 1;
            })
        };
        {
            let (mut units, mut cash) = lock_all((&*units, &*cash)).unwrap();
            *units -= 1;
            *cash += 10;
        }
        other.join().unwrap();
        assert_eq!((*cash.lock(), *units.lock()), (0, 0));
    });
}

/// Three threads over three locks in rotating orders — {A, B}, {B, C}, {C, A}: the cycle of the
/// dining philosophers, which deadlocks when each takes its first lock and waits for the second.
///
/// Only one thread waits with `lock_all`; the other two use `try_lock_all`, retried twice. Two
/// threads spinning without bound in one loom model with a third thread exhaust loom's branch
/// limit (a switch at `yield_now` is not a preemption, so two waiters can pass the processor back
/// and forth forever without the holder running; see `tests/spin_lock.rs`). The bounded triers
/// still take their locks in the global order and interleave with the waiter at every step, so
/// the model checks that the waiter always gets through and that every section is exclusive.
#[test]
fn three_threads_rotating_orders_finish() {
    model(2, || {
        let locks = Arc::new([
            SpinLock::new(0_usize),
            SpinLock::new(0_usize),
            SpinLock::new(0_usize),
        ]);
        let waiter = {
            let locks = Arc::clone(&locks);
            thread::spawn(move || add_one(lock_all([&locks[0], &locks[1]]).unwrap()))
        };
        let trier = {
            let locks = Arc::clone(&locks);
            thread::spawn(move || add_with_bounded_tries(&locks, [1, 2]))
        };
        let mut added = [1, 1, 0];
        for (sum, add) in added.iter_mut().zip(add_with_bounded_tries(&locks, [2, 0])) {
            *sum += add;
        }
        waiter.join().unwrap();
        for (sum, add) in added.iter_mut().zip(trier.join().unwrap()) {
            *sum += add;
        }
        let counts = [*locks[0].lock(), *locks[1].lock(), *locks[2].lock()];
        assert_eq!(counts, added);
    });
}

/// Adds one to locks `pair` if `try_lock_all` takes both within two tries; returns what it added
/// to each of the three locks.
fn add_with_bounded_tries(locks: &[SpinLock<usize>; 3], pair: [usize; 2]) -> [usize; 3] {
    for _ in 0..2 {
        if let Some(guards) = try_lock_all(pair.map(|i| &locks[i])).unwrap() {
            add_one(guards);
            let mut added = [0; 3];
            for i in pair {
                added[i] = 1;
            }
            return added;
        }
        thread::yield_now();
    }
    [0; 3]
}

/// `try_lock_all` that fails on its second lock (in the global order) gives the first one back:
/// afterwards the first lock, which no other thread takes, is free.
#[test]
fn try_lock_all_never_leaves_a_lock_held_on_failure() {
    model(3, || {
        // One array: `locks[0]` comes first in the global order, so it is taken first and the
        // failure, if any, is on `locks[1]`.
        let locks = Arc::new([SpinLock::new(0_usize), SpinLock::new(0_usize)]);
        let holder = {
            let locks = Arc::clone(&locks);
            thread::spawn(move || *locks[1].lock() += 1)
        };
        match try_lock_all([&locks[1], &locks[0]]).unwrap() {
            Some(guards) => add_one(guards),
            None => assert!(
                locks[0].try_lock().is_some(),
                "try_lock_all left a lock held"
            ),
        }
        holder.join().unwrap();
        assert!(!locks[0].is_locked() && !locks[1].is_locked());
    });
}

/// Two threads `try_lock_all` the same two locks in opposite orders: whoever fails holds
/// nothing afterwards, so both locks end free and each success was exclusive.
#[test]
fn try_lock_all_opposite_orders_leave_nothing_held() {
    model(3, || {
        let locks = Arc::new([SpinLock::new(0_usize), SpinLock::new(0_usize)]);
        let other = {
            let locks = Arc::clone(&locks);
            thread::spawn(move || try_once(&locks, [0, 1]))
        };
        let added = try_once(&locks, [1, 0]) + other.join().unwrap();
        assert!(!locks[0].is_locked() && !locks[1].is_locked());
        assert_eq!((*locks[0].lock(), *locks[1].lock()), (added, added));
    });
}

fn try_once(locks: &[SpinLock<usize>; 2], order: [usize; 2]) -> usize {
    match try_lock_all(order.map(|i| &locks[i])).unwrap() {
        Some(guards) => {
            add_one(guards);
            1
        }
        None => 0,
    }
}

/// A lock table with one stripe grants two keys through one `lock_all`; the stripe stays held
/// until the *last* of their guards drops, wherever it drops. A contender for a third key (same
/// stripe) writes the same cell as the holder: if the first drop released the stripe, loom would
/// see the two writes race.
#[test]
fn lock_table_shared_stripe_is_held_until_the_last_guard_drops() {
    model(2, || {
        // Leaked, so that a guard borrowing it can move to another thread (loom has no scoped
        // threads); one small table per execution.
        let table: &'static LockTable<u32> = Box::leak(Box::new(LockTable::with_stripes(1)));
        let ledger = Arc::new(UnsafeCell::new(0_u32));
        let contender = {
            let ledger = Arc::clone(&ledger);
            thread::spawn(move || {
                let _key = table.lock(&3);
                // SAFETY: the ledger is only written under the table's only stripe.
                ledger.with_mut(|n| unsafe { *n += 1 });
            })
        };
        let mut guards = table.lock_all(&[1, 2]).unwrap();
        let second = guards.pop().unwrap();
        let first = guards.pop().unwrap();
        let dropper = thread::spawn(move || drop(second));
        // SAFETY: as above; `first` still holds the stripe whether or not `second` has dropped.
        ledger.with_mut(|n| unsafe { *n += 1 });
        drop(first);
        dropper.join().unwrap();
        contender.join().unwrap();
        let _key = table.lock(&1);
        // SAFETY: as above.
        assert_eq!(ledger.with(|n| unsafe { *n }), 2);
    });
}

/// The naive code the seed warns about: thread 1 locks A then B, thread 2 locks B then A, with
/// plain `lock()`. In the interleaving where each takes its first lock, both spin forever; loom
/// reports it by exceeding its branch limit (lowered here so the model fails fast). This proves
/// the models above *could* see a deadlock if `lock_all` allowed one.
#[test]
#[should_panic(expected = "Model exceeded maximum number of branches")]
fn naive_opposite_orders_deadlock() {
    let mut builder = Builder::new();
    builder.preemption_bound = Some(2);
    builder.max_branches = 200;
    builder.check(|| {
        let locks = Arc::new([SpinLock::new(0_usize), SpinLock::new(0_usize)]);
        let other = {
            let locks = Arc::clone(&locks);
            thread::spawn(move || {
                let a = locks[0].lock();
                let b = locks[1].lock();
                add_one([a, b]);
            })
        };
        let b = locks[1].lock();
        let a = locks[0].lock();
        add_one([b, a]);
        other.join().unwrap();
    });
}

/// `acquire_all` over two `DeadlineLock`s in opposite orders always finishes, and each thread's
/// leases are both valid: no takeover happens, since the clock never moves — so `acquire_all`
/// never has to take a lease again, and the tokens are 1 or 2 (checked at once: a takeover that
/// `acquire_all` repaired by retaking would otherwise only show as a slow model). Bound 3.
#[test]
fn acquire_all_opposite_orders_finish() {
    use fencelock::{acquire_all, DeadlineLock, ManualClock};
    use std::time::Duration;

    model(3, || {
        // The clock's own atomic is loom's; std's Arc only shares it.
        let clock = std::sync::Arc::new(ManualClock::new());
        let a = Arc::new(DeadlineLock::with_clock(
            0_u32,
            std::sync::Arc::clone(&clock),
        ));
        let b = Arc::new(DeadlineLock::with_clock(
            0_u32,
            std::sync::Arc::clone(&clock),
        ));
        let lease = Duration::from_secs(1);
        let other = {
            let (a, b) = (Arc::clone(&a), Arc::clone(&b));
            thread::spawn(move || {
                let [mut first, mut second] = acquire_all([&*b, &*a], lease).unwrap();
                assert!(first.token().get() <= 2 && second.token().get() <= 2);
                first.with_mut(|n| *n += 1).unwrap();
                second.with_mut(|n| *n += 1).unwrap();
            })
        };
        {
            let [mut first, mut second] = acquire_all([&*a, &*b], lease).unwrap();
            assert!(first.token().get() <= 2 && second.token().get() <= 2);
            first.with_mut(|n| *n += 1).unwrap();
            second.with_mut(|n| *n += 1).unwrap();
        }
        other.join().unwrap();
        let [first, second] = acquire_all([&*a, &*b], lease).unwrap();
        assert_eq!((first.token().get(), second.token().get()), (3, 3));
        assert_eq!(first.with(|n| *n), Ok(2));
        assert_eq!(second.with(|n| *n), Ok(2));
    });
}
