//! Waiting strategies: what a thread does between two looks at a lock it could not take.
//!
//! A strategy is a type, chosen where the lock is declared (`SpinLock<T, Yield>`), so the choice
//! costs nothing at run time and the lock stays one byte.
//!
//! | strategy    | between looks                                  | good for                         |
//! |-------------|------------------------------------------------|----------------------------------|
//! | [`Spin`]    | one spin-loop hint                             | holders that never get preempted |
//! | [`Yield`]   | `std::thread::yield_now()`                     | more threads than cores          |
//! | [`Backoff`] | 1, 2, 4 hints, then yields (the default)        | both: short waits stay on core   |
//!
//! Under loom every strategy is a single `loom::thread::yield_now()` (see the crate's relax hook),
//! so models explore the same interleavings whatever the strategy.

use crate::primitive;

/// A waiting strategy for spin locks.
///
/// `relax` is called each time a waiter has looked at the lock and found it held. It is static
/// (no `self`) so that the strategy lives in the lock's type, not in its bytes.
///
/// # Example
///
/// A strategy that spins twice as long as [`Spin`]:
///
/// ```
/// use fencelock::{Relax, SpinLock};
///
/// struct DoubleSpin;
///
/// impl Relax for DoubleSpin {
///     fn relax(_attempt: u32) {
///         core::hint::spin_loop();
///         core::hint::spin_loop();
///     }
/// }
///
/// let lock = SpinLock::with_relax(5, DoubleSpin);
/// assert_eq!(*lock.lock(), 5);
/// ```
pub trait Relax {
    /// Waits a little. `attempt` counts the calls already made during this wait, from 0, so a
    /// strategy can wait longer the longer the lock stays held.
    fn relax(attempt: u32);
}

/// Spins with one spin-loop hint per look: the lowest hand-over latency, and the worst behaviour
/// when the holder is preempted, since waiters burn the holder's core time.
///
/// # Example
///
/// ```
/// use fencelock::{Spin, SpinLock};
///
/// let lock = SpinLock::with_relax(Vec::<u32>::new(), Spin);
/// lock.lock().push(1);
/// assert_eq!(*lock.lock(), [1]);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Spin;

impl Relax for Spin {
    #[inline]
    fn relax(_attempt: u32) {
        primitive::spin_loop_hint();
    }
}

/// Yields the thread's time slice at every look: lets a preempted holder run, at the price of a
/// system call per look.
///
/// Needs the `std` feature.
///
/// # Example
///
/// ```
/// use fencelock::{SpinLock, Yield};
///
/// let lock = SpinLock::with_relax(0_u64, Yield);
/// *lock.lock() += 1;
/// assert_eq!(lock.into_inner(), 1);
/// ```
#[cfg(feature = "std")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Yield;

#[cfg(feature = "std")]
impl Relax for Yield {
    #[inline]
    fn relax(_attempt: u32) {
        primitive::yield_now();
    }
}

/// Exponential backoff: spins 1, 2, then 4 hints, then yields at every look, once spinning has
/// stopped paying (the holder is probably not running). The default strategy.
///
/// Without the `std` feature there is nothing to yield to, and it keeps spinning 2<sup>3</sup>
/// hints per look.
///
/// # Example
///
/// ```
/// use fencelock::{Backoff, SpinLock};
///
/// // `SpinLock::new` picks `Backoff`; `with_relax` names it.
/// let a = SpinLock::new(1);
/// let b = SpinLock::with_relax(1, Backoff);
/// assert_eq!(*a.lock(), *b.lock());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backoff;

/// Attempts that still spin; from this one on, `Backoff` yields (or, without `std`, spins
/// `1 << SPIN_LIMIT` hints). Three, so the spinning before the first yield (7 hints, about 100 ns
/// on the README's machine) stays below the cost of one `yield_now` there (about 230 ns): longer
/// spinning only pays when the holder is running, and with more threads than cores it often is
/// not. crossbeam-utils' `Backoff` spins up to 2<sup>6</sup>; that limit cost this lock about a
/// fifth of its throughput with 8 threads on 2 cores (`benches/spin_lock.rs`).
const SPIN_LIMIT: u32 = 3;

impl Relax for Backoff {
    #[inline]
    fn relax(attempt: u32) {
        if attempt < SPIN_LIMIT {
            spin_hints(1 << attempt);
        } else {
            #[cfg(feature = "std")]
            primitive::yield_now();
            #[cfg(not(feature = "std"))]
            spin_hints(1 << SPIN_LIMIT);
        }
    }
}

#[inline]
fn spin_hints(count: u32) {
    for _ in 0..count {
        primitive::spin_loop_hint();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn every_strategy_returns_at_every_attempt() {
        for attempt in [0, 1, SPIN_LIMIT - 1, SPIN_LIMIT, u32::MAX] {
            Spin::relax(attempt);
            Backoff::relax(attempt);
            #[cfg(feature = "std")]
            Yield::relax(attempt);
        }
    }
}
