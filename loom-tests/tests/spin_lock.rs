//! Loom models of `SpinLock` / `RawSpinLock`.
//!
//! The protected data lives in the lock's loom-aware `UnsafeCell`, and every guard holds a tracked
//! access for its whole life, so loom reports any two critical sections that are not ordered by
//! happens-before as a data race — which is what weakening the unlock's `Release` or the CAS's
//! `Acquire` to `Relaxed` produces (see `loom-tests/weaken-orderings`).
//!
//! Preemption bounds are stated per model: 3 for two threads, 2 for three.

// The member compiles fencelock from its own source under this name (see its Cargo.toml).
extern crate fencelock_loom as fencelock;

use fencelock::{Adaptive, Backoff, Relax, Spin, SpinLock, Yield};
use loom::cell::UnsafeCell;
use loom::model::Builder;
use loom::sync::atomic::{AtomicBool, Ordering::Relaxed};
use loom::sync::Arc;
use loom::thread;

fn model(preemption_bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = Builder::new();
    builder.preemption_bound = Some(preemption_bound);
    builder.check(f);
}

/// `threads` threads (the model's main thread among them) each add one under the lock.
fn increments_are_exclusive<R: Relax + Default + 'static>(threads: usize) {
    let lock = Arc::new(SpinLock::with_relax(0_usize, R::default()));
    let others: Vec<_> = (1..threads)
        .map(|_| {
            let lock = Arc::clone(&lock);
            thread::spawn(move || *lock.lock() += 1)
        })
        .collect();
    *lock.lock() += 1;
    for other in others {
        other.join().unwrap();
    }
    assert_eq!(*lock.lock(), threads);
}

#[test]
fn mutual_exclusion_two_threads() {
    model(3, || increments_are_exclusive::<Backoff>(2));
}

/// The default strategy. Under loom every strategy's wait is one loom yield (the crate's relax
/// hook), so this is the same protocol as above; it keeps the default type covered.
#[test]
fn mutual_exclusion_two_threads_default_strategy() {
    model(3, || increments_are_exclusive::<Adaptive>(2));
}

/// Three threads in the lock's protocol at once. One of them waits in `lock()`; the other two
/// give up after a bounded number of `try_lock`s. Two threads both spinning in `lock()` cannot be
/// modelled: loom does not count a switch at `yield_now` as a preemption, so two waiters can hand
/// the processor back and forth forever without the holder running, and every such path exceeds
/// the branch limit. One unbounded waiter plus bounded ones keeps every path finite.
#[test]
fn mutual_exclusion_three_threads() {
    model(2, || {
        let lock = Arc::new(SpinLock::new(0_usize));
        let waiter = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || *lock.lock() += 1)
        };
        let trier = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || add_with_bounded_tries(&lock))
        };
        let mut added = 1 + add_with_bounded_tries(&lock);
        waiter.join().unwrap();
        added += trier.join().unwrap();
        assert_eq!(*lock.lock(), added);
    });
}

/// Adds one under the lock if `try_lock` succeeds within two tries; returns what it added.
fn add_with_bounded_tries(lock: &SpinLock<usize>) -> usize {
    for _ in 0..2 {
        if let Some(mut count) = lock.try_lock() {
            *count += 1;
            return 1;
        }
        thread::yield_now();
    }
    0
}

#[test]
fn mutual_exclusion_spin() {
    model(3, || increments_are_exclusive::<Spin>(2));
}

#[test]
fn mutual_exclusion_yield() {
    model(3, || increments_are_exclusive::<Yield>(2));
}

/// A value written under the lock is the value the next holder reads, and the read is ordered
/// after the write: data outside the lock's own cell, published only by the lock.
#[test]
fn writes_under_lock_are_visible_to_next_holder() {
    model(3, || {
        let lock = Arc::new(SpinLock::new(()));
        let ledger = Arc::new(UnsafeCell::new(0_u32));
        let sold = Arc::new(AtomicBool::new(false));

        let writer = {
            let (lock, ledger, sold) = (Arc::clone(&lock), Arc::clone(&ledger), Arc::clone(&sold));
            thread::spawn(move || {
                let _held = lock.lock();
                // SAFETY: the ledger is only touched under `lock`, which is held.
                ledger.with_mut(|units| unsafe { *units = 7 });
                sold.store(true, Relaxed);
            })
        };

        let _held = lock.lock();
        // Relaxed is enough: if the writer's section came first, the lock orders its store
        // before this load.
        let writer_went_first = sold.load(Relaxed);
        // SAFETY: the ledger is only touched under `lock`, which is held.
        let units = ledger.with(|units| unsafe { *units });
        assert_eq!(units, if writer_went_first { 7 } else { 0 });
        drop(_held);
        writer.join().unwrap();
    });
}

/// The same, with the next holder coming in through `try_lock`.
#[test]
fn writes_under_lock_are_visible_to_try_lock() {
    model(3, || {
        let lock = Arc::new(SpinLock::new(0_u32));
        let writer = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || *lock.lock() = 7)
        };
        if let Some(units) = lock.try_lock() {
            assert!(*units == 0 || *units == 7);
        }
        writer.join().unwrap();
    });
}

/// `try_lock` fails for as long as another thread is inside its critical section.
#[test]
fn try_lock_never_succeeds_while_held() {
    model(3, || {
        let lock = Arc::new(SpinLock::new(()));
        let inside = Arc::new(AtomicBool::new(false));
        let holder = {
            let (lock, inside) = (Arc::clone(&lock), Arc::clone(&inside));
            thread::spawn(move || {
                let held = lock.lock();
                inside.store(true, Relaxed);
                thread::yield_now();
                inside.store(false, Relaxed);
                drop(held);
            })
        };
        if let Some(_held) = lock.try_lock() {
            // Relaxed: if the holder's section came first, the lock orders its last store
            // before this load; if it comes after, it has not started.
            assert!(!inside.load(Relaxed));
        }
        holder.join().unwrap();
    });
}

/// A timed wait (two looks under loom, then it gives up) against a holder: whichever way it
/// ends, nothing is lost and a successful wait sees the holder's write.
#[test]
fn try_lock_for_is_exclusive() {
    model(3, || {
        let lock = Arc::new(SpinLock::new(0_usize));
        let holder = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || *lock.lock() += 1)
        };
        let mut added = 1;
        if let Some(mut count) = lock.try_lock_for(std::time::Duration::from_secs(1)) {
            assert!(*count <= 1);
            *count += 1;
            added += 1;
        }
        holder.join().unwrap();
        assert_eq!(*lock.lock(), added);
    });
}

/// A mapped guard keeps the whole critical section: its write is ordered before the next
/// holder's read (loom reports a race if the access ended after the unlock, or the unlock did
/// not publish it).
#[test]
fn mapped_guard_is_exclusive() {
    model(3, || {
        let lock = Arc::new(SpinLock::new((0_u32, 0_u32)));
        let writer = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || {
                let pair = fencelock::SpinLockGuard::map(lock.lock(), |pair| pair);
                let mut second = fencelock::MappedSpinLockGuard::map(pair, |pair| &mut pair.1);
                *second += 1;
            })
        };
        *fencelock::SpinLockGuard::map(lock.lock(), |pair| &mut pair.1) += 1;
        writer.join().unwrap();
        assert_eq!(lock.lock().1, 2);
    });
}

/// `bump` really releases and retakes the lock (the other thread may get in between), and each
/// side of it is a critical section of its own; `unlock_fair` releases like `drop`.
#[test]
fn bump_and_unlock_fair_are_exclusive() {
    model(2, || {
        let lock = Arc::new(SpinLock::new(0_usize));
        let bumper = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || {
                let mut count = lock.lock();
                *count += 1;
                fencelock::SpinLockGuard::bump(&mut count);
                *count += 1;
                fencelock::SpinLockGuard::unlock_fair(count);
            })
        };
        *lock.lock() += 1;
        bumper.join().unwrap();
        assert_eq!(*lock.lock(), 3);
    });
}
