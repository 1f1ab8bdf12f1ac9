//! Waiting strategies: what a thread does between two looks at a lock it could not take.
//!
//! A strategy is a type, chosen where the lock is declared (`SpinLock<T, Yield>`), so the choice
//! costs nothing at run time and the lock stays one byte.
//!
//! | strategy     | between looks                                  | good for                         |
//! |--------------|------------------------------------------------|----------------------------------|
//! | [`Spin`]     | one spin-loop hint                             | holders that never get preempted |
//! | [`Yield`]    | `std::thread::yield_now()`                     | more threads than cores; one hot lock |
//! | [`Backoff`]  | 1, 2, 4 hints, then yields                     | hand-over: short waits stay on core |
//! | [`Adaptive`] | as `Backoff`, or yields at once after a thread's waits kept ending at the first look (the default) | not knowing which of these the program is |
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
/// stopped paying (the holder is probably not running). [`Adaptive`], the default, starts as this.
///
/// Without the `std` feature there is nothing to yield to, and it keeps spinning 2<sup>3</sup>
/// hints per look.
///
/// # Example
///
/// ```
/// use fencelock::{Backoff, SpinLock};
///
/// let lock = SpinLock::with_relax(1, Backoff);
/// assert_eq!(*lock.lock(), 1);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backoff;

/// Attempts that still spin; from this one on, `Backoff` yields (or, without `std`, spins
/// `1 << SPIN_LIMIT` hints). Three, so the spinning before the first yield (7 hints, about 100 ns
/// on the benchmarks' machine, docs/benchmarks.md) stays below the cost of one `yield_now` there (about 230 ns): longer
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

/// The default strategy: [`Backoff`], except that a thread whose recent waits kept ending at the
/// first look yields at once, until one of its waits takes longer.
///
/// A wait that ends at the first look (after one pause) means the holder held the lock for a
/// moment and was running: the lock is a hot one that running threads hand to each other. There,
/// taking it at the first opening costs a cache-line transfer per critical section, while a
/// waiter that steps aside (`yield_now`) lets the running holder do several critical sections in
/// a row on a line it already owns — with 2 threads on one hot lock, [`Yield`] beats [`Backoff`]
/// by about 1.7x on the benchmarks' 2-core machine (docs/benchmarks.md). A wait that needs more than one look (holders
/// that hold longer, a holder preempted, threads taking strict turns) puts the thread back on
/// `Backoff`, whose short spins hand the lock over fastest when the hand-over is what everyone
/// waits for. Leaving at the first longer wait costs it some of `Yield`'s lead on one hot lock
/// (see docs/benchmarks.md); staying longer (through waits of two or three looks) was tried: on
/// two hardware threads of one core it caught up with `Yield` on one hot lock and fell to
/// `Yield`'s level in strict turns, about half of `Backoff` there.
///
/// What it learns is per thread, in two thread-local bytes: the lock stays one byte, and the
/// uncontended path (which never calls a strategy) costs nothing more. The judgement is made at
/// the start of a thread's next wait, from how its last one ended, so a thread that waits on
/// several locks learns from all of them — the hot one dominates, being where it waits most.
///
/// Without the `std` feature there are no thread-locals and nothing to yield to: it is
/// [`Backoff`].
///
/// # Example
///
/// ```
/// use fencelock::{Adaptive, SpinLock};
///
/// // `SpinLock::new` picks `Adaptive`; `with_relax` names it.
/// let a = SpinLock::new(1);
/// let b = SpinLock::with_relax(1, Adaptive);
/// assert_eq!(*a.lock(), *b.lock());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Adaptive;

/// Waits in a row ending at the first look after which [`Adaptive`] yields at once. Two, not
/// one: a single short wait happens anywhere, two in a row mostly on a lock handed back and forth.
#[cfg(feature = "std")]
const SHORT_WAITS_TO_YIELD: u8 = 2;

#[cfg(feature = "std")]
std::thread_local! {
    /// This thread's waits, for [`Adaptive`]: looks in its current (or last) wait, and how many
    /// waits in a row before it ended at the first look (saturating).
    static WAITS: (core::cell::Cell<u8>, core::cell::Cell<u8>) =
        const { (core::cell::Cell::new(0), core::cell::Cell::new(0)) };
}

impl Relax for Adaptive {
    #[inline]
    fn relax(attempt: u32) {
        #[cfg(feature = "std")]
        if yields_at_once(attempt) {
            primitive::yield_now();
            return;
        }
        Backoff::relax(attempt);
    }
}

/// [`Adaptive`]'s bookkeeping for one look of this thread's current wait (`attempt`, from 0, as
/// [`Relax::relax`] gets it): whether to yield at once instead of backing off.
#[cfg(feature = "std")]
#[inline]
fn yields_at_once(attempt: u32) -> bool {
    // `try_with`: during the thread's teardown the history may be gone; then `Backoff`.
    WAITS
        .try_with(|(looks, short_waits)| {
            if attempt == 0 {
                // A new wait: judge how the last one ended.
                let short = if looks.get() == 1 {
                    short_waits
                        .get()
                        .saturating_add(1)
                        .min(SHORT_WAITS_TO_YIELD)
                } else {
                    0
                };
                short_waits.set(short);
            }
            looks.set(u8::try_from(attempt.saturating_add(1)).unwrap_or(u8::MAX));
            short_waits.get() >= SHORT_WAITS_TO_YIELD
        })
        .unwrap_or(false)
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
            Adaptive::relax(attempt);
            #[cfg(feature = "std")]
            Yield::relax(attempt);
        }
    }

    /// Feeds `yields_at_once` one wait of `looks` looks; returns its decisions, look by look.
    #[cfg(feature = "std")]
    fn wait(looks: u32) -> Vec<bool> {
        (0..looks).map(yields_at_once).collect()
    }

    #[cfg(feature = "std")]
    #[test]
    fn adaptive_yields_at_once_after_short_waits_in_a_row_and_backs_off_after_a_long_one() {
        // A fresh thread: its own history.
        std::thread::spawn(|| {
            assert_eq!(wait(3), [false; 3], "a new thread backs off");
            assert_eq!(wait(1), [false], "the last wait was long");
            assert_eq!(wait(1), [false], "one short wait is not enough");
            assert_eq!(
                wait(2),
                [true; 2],
                "two short waits in a row: yield at once"
            );
            assert_eq!(
                wait(1),
                [false],
                "a wait of two looks puts it back on backoff"
            );
            assert_eq!(wait(1), [false]);
            assert_eq!(wait(1), [true], "two short ones again");
            assert_eq!(wait(1), [true], "and it stays while waits stay short");
            // A wait longer than u8 looks saturates instead of wrapping to a short one.
            assert!(wait(300).iter().all(|&y| y));
            assert_eq!(wait(1), [false]);
        })
        .join()
        .unwrap();
    }
}
