//! What the spin-lock benches share: the [`Peer`] trait every lock is driven through, fencelock's
//! own strategies as peers, and the scenarios (`run`, `run_random`, `run_long_section`,
//! `run_turns`), each of which checks its final count so that a broken lock fails the bench, and
//! [`round_trip`], which measures where the scheduler has placed two threads.
//!
//! Used by `spin_lock.rs` (criterion, every peer) and `placement.rs` (fencelock's strategies, by
//! placement). A directory module, so that cargo does not take it for a bench of its own.

use std::hint::{black_box, spin_loop};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use fencelock::{Backoff, Spin, SpinLock, Yield};

/// Iterations of a black-boxed loop between two ops: a thread does a little of its own work
/// before it wants the lock again, as real callers do.
const WORK_OUTSIDE: u32 = 16;

/// A lock around a `u64` counter, as the bench drives it.
pub trait Peer: Sync + Sized {
    /// The name criterion and the fairness line show.
    const NAME: &'static str;

    /// A new, unlocked counter at zero.
    fn new() -> Self;

    /// Locks, runs `f` on the counter, unlocks.
    fn with<O>(&self, f: impl FnOnce(&mut u64) -> O) -> O;

    /// One op: lock, increment, unlock.
    #[inline]
    fn increment(&self) {
        self.with(bump);
    }

    /// The counter's value, once every thread is done.
    fn count(&self) -> u64 {
        self.with(|count| *count)
    }
}

/// The critical section: an increment the compiler cannot fold away.
#[inline(always)]
fn bump(count: &mut u64) {
    *count = black_box(*count) + 1;
}

/// A little work with the lock released.
#[inline(always)]
fn work_outside() {
    for i in 0..WORK_OUTSIDE {
        black_box(i);
    }
}

/// Implements [`Peer`] for a lock whose `lock` call (`$lock`) returns a guard of the counter.
macro_rules! peer {
    ($ty:ty, $name:literal, $new:expr, |$l:ident| $lock:expr) => {
        impl $crate::scenarios::Peer for $ty {
            const NAME: &'static str = $name;

            fn new() -> Self {
                $new
            }

            #[inline]
            fn with<O>(&self, f: impl FnOnce(&mut u64) -> O) -> O {
                let $l = self;
                let mut guard = $lock;
                f(&mut guard)
            }
        }
    };
}
pub(crate) use peer;

peer!(
    SpinLock<u64>,
    "fencelock::SpinLock (Adaptive)",
    SpinLock::new(0),
    |l| l.lock()
);
peer!(
    SpinLock<u64, Backoff>,
    "fencelock::SpinLock<Backoff>",
    SpinLock::with_relax(0, Backoff),
    |l| l.lock()
);
peer!(
    SpinLock<u64, Spin>,
    "fencelock::SpinLock<Spin>",
    SpinLock::with_relax(0, Spin),
    |l| l.lock()
);
peer!(
    SpinLock<u64, Yield>,
    "fencelock::SpinLock<Yield>",
    SpinLock::with_relax(0, Yield),
    |l| l.lock()
);
/// What one contended run measured, from the moment the first thread left the barrier.
pub struct Run {
    /// Until the last thread finished its ops.
    pub last_done: Duration,
    /// Until the first thread finished its ops.
    pub first_done: Duration,
}

/// `threads` threads run `body(thread index)` at once, lined up on a barrier; times them.
fn run_threads(threads: usize, body: impl Fn(usize) + Sync) -> Run {
    let start_line = Barrier::new(threads);
    // Each thread notes when it left the barrier and when it finished: the run starts when the
    // first one leaves, so the spawning thread's own scheduling does not count.
    let times: Vec<(Instant, Instant)> = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (body, start_line) = (&body, &start_line);
                s.spawn(move || {
                    start_line.wait();
                    let started = Instant::now();
                    body(t);
                    (started, Instant::now())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a bench thread panicked"))
            .collect()
    });
    let start = times.iter().map(|&(started, _)| started).min();
    let done = |at: Instant| at.saturating_duration_since(start.unwrap_or(at));
    let finished = times.iter().map(|&(_, finished)| done(finished));
    Run {
        last_done: finished.clone().max().unwrap_or_default(),
        first_done: finished.min().unwrap_or_default(),
    }
}

/// Fails the bench if `count` ops did not all land: the lock is broken.
fn check_count<P: Peer>(counted: u64, expected: u64) {
    assert_eq!(
        counted,
        expected,
        "{}: ops were lost, the lock is broken",
        P::NAME
    );
}

/// `threads` threads each do `ops` ops on one shared `P`; checks the final count.
pub fn run<P: Peer>(threads: usize, ops: u64) -> Run {
    // Padded: alone on its cache lines, away from the barrier and the spawning thread's stack.
    let lock = CachePadded::new(P::new());
    let run = run_threads(threads, |_| {
        for _ in 0..ops {
            lock.increment();
            work_outside();
        }
    });
    check_count::<P>(lock.count(), threads as u64 * ops);
    run
}

/// Locks in the `random_of_64_8_threads` group.
const RANDOM_LOCKS: usize = 64;

/// `threads` threads each do `ops` ops, each on one of [`RANDOM_LOCKS`] locks picked at random
/// (xorshift, seeded per thread): most ops find their lock free, some collide.
pub fn run_random<P: Peer>(threads: usize, ops: u64) -> Duration {
    let locks: Vec<CachePadded<P>> = (0..RANDOM_LOCKS)
        .map(|_| CachePadded::new(P::new()))
        .collect();
    let run = run_threads(threads, |t| {
        let mut seed = (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for _ in 0..ops {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            locks[(seed % RANDOM_LOCKS as u64) as usize].increment();
            work_outside();
        }
    });
    check_count::<P>(locks.iter().map(|l| l.count()).sum(), threads as u64 * ops);
    run.last_done
}

/// Iterations of a black-boxed loop inside the lock in `long_section_4_threads`: about 100 ns on
/// the benchmarks' machine (one iteration measured 0.25 ns there, alone on a core; see
/// docs/benchmarks.md).
const LONG_SECTION: u32 = 400;

/// `threads` threads each do `ops` ops whose critical section is [`LONG_SECTION`] long.
pub fn run_long_section<P: Peer>(threads: usize, ops: u64) -> Duration {
    let lock = CachePadded::new(P::new());
    let run = run_threads(threads, |_| {
        for _ in 0..ops {
            lock.with(|count| {
                for i in 0..LONG_SECTION {
                    black_box(i);
                }
                bump(count);
            });
            work_outside();
        }
    });
    check_count::<P>(lock.count(), threads as u64 * ops);
    run.last_done
}

/// Two threads take strict turns: thread 0 counts on even values, thread 1 on odd ones, and a
/// thread that finds it is not its turn lets go and tries again. Every op needs a hand-over.
pub fn run_turns<P: Peer>(ops: u64) -> Duration {
    let lock = CachePadded::new(P::new());
    let run = run_threads(2, |me| {
        let mut done = 0;
        while done < ops {
            let my_turn = lock.with(|count| {
                let mine = *count % 2 == me as u64;
                if mine {
                    bump(count);
                }
                mine
            });
            if my_turn {
                done += 1;
            }
        }
    });
    check_count::<P>(lock.count(), 2 * ops);
    run.last_done
}

/// Round trips in one [`round_trip`] measurement.
const ROUND_TRIPS: u64 = 20_000;

/// How far apart the scheduler has put two threads right now: the time, in nanoseconds, for one
/// cache line to go from one thread to the other and back (two threads bump a shared counter in
/// turn).
///
/// On a VM this moves while a bench runs, because the host moves the virtual CPUs: on the
/// benchmarks' machine (docs/benchmarks.md) it reads about 50 ns (two hardware threads of one core), about 120 ns (two cores close
/// together) or 400 ns and more (far apart), and the hand-over scenarios change winners with it.
/// A figure is only comparable with figures taken at the same placement.
pub fn round_trip() -> f64 {
    let line = CachePadded::new(AtomicU64::new(0));
    let run = run_threads(2, |me| {
        // Thread 0 moves the counter from even to odd, thread 1 from odd to even.
        let mut next = me as u64;
        while next < 2 * ROUND_TRIPS {
            // Acquire pairs with the other thread's Release store: nothing else is shared, so
            // this only keeps the two threads in step, as a lock hand-over would.
            while line.load(Acquire) != next {
                spin_loop();
            }
            line.store(next + 1, Release);
            next += 2;
        }
    });
    run.last_done.as_nanos() as f64 / ROUND_TRIPS as f64
}
