//! `SpinLock` side by side with its peers, in one run: `std::sync::Mutex`, `parking_lot::Mutex`,
//! `spin`'s `SpinMutex` with its `Spin` and `Yield` strategies, and a bare floor (an `AtomicBool`
//! taken with one `swap`, given back with one `Release` store).
//!
//! Every peer guards one `u64` counter, alone on its cache lines (`CachePadded`); one *op* is
//! lock, increment, unlock.
//!
//! | group                       | threads | what it measures                                   |
//! |-----------------------------|---------|----------------------------------------------------|
//! | `uncontended`               | 1       | the round trip of the fast path (`b.iter`)         |
//! | `contended_2_threads`       | 2       | hand-over between two threads (one per core here)  |
//! | `oversubscribed_8_threads`  | 8       | more threads than cores: holders get preempted     |
//!
//! In the contended groups each sample spawns its threads, lines them up on a `Barrier`, and times
//! from the first thread leaving the barrier to the last thread finishing, while each thread does
//! `iters` ops on the shared counter: criterion's time is per round of one op per thread. The
//! final count is checked, so a broken lock fails the bench instead of looking fast.
//!
//! Before the first sample of each contended peer, one extra run outside criterion's timing
//! measures fairness: every thread does [`FAIRNESS_OPS`] ops and notes when it finished, and the
//! bench prints `first thread done / last thread done` to stderr (1.0: perfectly even).
//!
//! ```text
//! cargo bench --bench spin_lock
//! cargo bench --bench spin_lock -- --warm-up-time 1 --measurement-time 2 oversubscribed
//! ```

use std::cell::UnsafeCell;
use std::hint::{black_box, spin_loop};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use crossbeam_utils::CachePadded;
use fencelock::{Spin, SpinLock, Yield};

/// Ops each thread does in the fairness run: enough for the run to span many scheduler time
/// slices, so that with 8 threads on 2 cores no thread can finish inside its first slice.
const FAIRNESS_OPS: u64 = 1_000_000;

/// Iterations of a black-boxed loop between two ops: a thread does a little of its own work
/// before it wants the lock again, as real callers do.
const WORK_OUTSIDE: u32 = 16;

/// A lock around a `u64` counter, as the bench drives it.
trait Peer: Sync + Sized {
    /// The name criterion and the fairness line show.
    const NAME: &'static str;

    /// A new, unlocked counter at zero.
    fn new() -> Self;

    /// One op: lock, increment, unlock.
    fn increment(&self);

    /// The counter's value, once every thread is done.
    fn count(&self) -> u64;
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
        impl Peer for $ty {
            const NAME: &'static str = $name;

            fn new() -> Self {
                $new
            }

            #[inline]
            fn increment(&self) {
                let $l = self;
                let mut guard = $lock;
                bump(&mut guard);
            }

            fn count(&self) -> u64 {
                let $l = self;
                let guard = $lock;
                *guard
            }
        }
    };
}

peer!(
    SpinLock<u64>,
    "fencelock::SpinLock<Backoff>",
    SpinLock::new(0),
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
peer!(
    std::sync::Mutex<u64>,
    "std::sync::Mutex",
    std::sync::Mutex::new(0),
    |l| l.lock().unwrap()
);
peer!(
    parking_lot::Mutex<u64>,
    "parking_lot::Mutex",
    parking_lot::Mutex::new(0),
    |l| l.lock()
);
peer!(
    spin::mutex::SpinMutex<u64, spin::relax::Spin>,
    "spin::SpinMutex<Spin>",
    spin::mutex::SpinMutex::new(0),
    |l| l.lock()
);
peer!(
    spin::mutex::SpinMutex<u64, spin::relax::Yield>,
    "spin::SpinMutex<Yield>",
    spin::mutex::SpinMutex::new(0),
    |l| l.lock()
);

/// The floor: the least a lock can do. One `swap` loop to take, one `Release` store to give back.
struct Floor {
    locked: AtomicBool,
    count: UnsafeCell<u64>,
}

// SAFETY: `count` is only reached between `take` and `give_back`, so one thread at a time
// touches it.
unsafe impl Sync for Floor {}

impl Floor {
    /// Takes the flag: one `swap` per look, a spin hint between looks.
    #[inline]
    fn take(&self) {
        // Acquire pairs with the Release store in `give_back`, made by the previous holder.
        while self.locked.swap(true, Acquire) {
            spin_loop();
        }
    }

    /// Gives the flag back.
    #[inline]
    fn give_back(&self) {
        // Release pairs with the Acquire swap of the next holder: it sees what we wrote.
        self.locked.store(false, Release);
    }
}

impl Peer for Floor {
    const NAME: &'static str = "floor (AtomicBool swap)";

    fn new() -> Self {
        Self {
            locked: AtomicBool::new(false),
            count: UnsafeCell::new(0),
        }
    }

    #[inline]
    fn increment(&self) {
        self.take();
        // SAFETY: we hold the flag, so nobody else touches `count` until `give_back`.
        bump(unsafe { &mut *self.count.get() });
        self.give_back();
    }

    fn count(&self) -> u64 {
        self.take();
        // SAFETY: we hold the flag, so nobody writes `count` until `give_back`.
        let count = unsafe { *self.count.get() };
        self.give_back();
        count
    }
}

/// What one contended run measured, from the moment the first thread left the barrier.
struct Run {
    /// Until the last thread finished its ops.
    last_done: Duration,
    /// Until the first thread finished its ops.
    first_done: Duration,
}

/// `threads` threads each do `ops` ops on one shared `P`; checks the final count.
fn run<P: Peer>(threads: usize, ops: u64) -> Run {
    // Padded: alone on its cache lines, away from the barrier and the spawning thread's stack.
    let lock = CachePadded::new(P::new());
    let start_line = Barrier::new(threads);
    // Each thread notes when it left the barrier and when it finished: the run starts when the
    // first one leaves, so the spawning thread's own scheduling does not count.
    let times: Vec<(Instant, Instant)> = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    start_line.wait();
                    let started = Instant::now();
                    for _ in 0..ops {
                        lock.increment();
                        work_outside();
                    }
                    (started, Instant::now())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a bench thread panicked"))
            .collect()
    });
    assert_eq!(
        lock.count(),
        threads as u64 * ops,
        "{}: ops were lost, the lock is broken",
        P::NAME
    );
    let start = times.iter().map(|&(started, _)| started).min();
    let done = |at: Instant| at.saturating_duration_since(start.unwrap_or(at));
    let finished = times.iter().map(|&(_, finished)| done(finished));
    Run {
        last_done: finished.clone().max().unwrap_or_default(),
        first_done: finished.min().unwrap_or_default(),
    }
}

/// One untimed run of [`FAIRNESS_OPS`] ops per thread; prints how evenly the threads were served.
fn report_fairness<P: Peer>(threads: usize) {
    let run = run::<P>(threads, FAIRNESS_OPS);
    let (first, last) = (run.first_done.as_secs_f64(), run.last_done.as_secs_f64());
    eprintln!(
        concat!(
            "fairness {} threads {}: first/last = {:.2} ",
            "(first thread done at {:.0} ms, last at {:.0} ms: {:.1} Mops/s)",
        ),
        threads,
        P::NAME,
        first / last.max(f64::MIN_POSITIVE),
        first * 1e3,
        last * 1e3,
        (threads as u64 * FAIRNESS_OPS) as f64 / last.max(f64::MIN_POSITIVE) / 1e6,
    );
}

fn uncontended<P: Peer>(group: &mut BenchmarkGroup<'_, WallTime>) {
    // Padded, so that every peer sits at the start of its own cache lines: otherwise where the
    // stack happens to put the lock and its counter (one line or two) can weigh more than the
    // difference between two locks.
    let lock = CachePadded::new(P::new());
    group.bench_function(P::NAME, |b| b.iter(|| lock.increment()));
    black_box(lock.count());
}

fn contended<P: Peer>(group: &mut BenchmarkGroup<'_, WallTime>, threads: usize) {
    // Inside the closure, so that a peer filtered out on the command line is not run at all.
    let mut fairness_reported = false;
    group.bench_function(P::NAME, |b| {
        if !fairness_reported {
            report_fairness::<P>(threads);
            fairness_reported = true;
        }
        b.iter_custom(|iters| run::<P>(threads, iters).last_done);
    });
}

/// Runs `$bench::<Peer>(group $(, arg)*)` for every peer.
macro_rules! every_peer {
    ($bench:ident($group:expr $(, $arg:expr)*)) => {
        $bench::<Floor>($group $(, $arg)*);
        $bench::<SpinLock<u64>>($group $(, $arg)*);
        $bench::<SpinLock<u64, Spin>>($group $(, $arg)*);
        $bench::<SpinLock<u64, Yield>>($group $(, $arg)*);
        $bench::<std::sync::Mutex<u64>>($group $(, $arg)*);
        $bench::<parking_lot::Mutex<u64>>($group $(, $arg)*);
        $bench::<spin::mutex::SpinMutex<u64, spin::relax::Spin>>($group $(, $arg)*);
        $bench::<spin::mutex::SpinMutex<u64, spin::relax::Yield>>($group $(, $arg)*);
    };
}

fn bench_uncontended(c: &mut Criterion) {
    let mut group = c.benchmark_group("uncontended");
    group.throughput(Throughput::Elements(1));
    every_peer!(uncontended(&mut group));
    group.finish();
}

fn bench_contended(c: &mut Criterion, name: &str, threads: usize) {
    let mut group = c.benchmark_group(name);
    // One criterion iteration is one op on every thread.
    group.throughput(Throughput::Elements(threads as u64));
    every_peer!(contended(&mut group, threads));
    group.finish();
}

fn bench_2_threads(c: &mut Criterion) {
    bench_contended(c, "contended_2_threads", 2);
}

fn bench_8_threads(c: &mut Criterion) {
    bench_contended(c, "oversubscribed_8_threads", 8);
}

criterion_group! {
    name = benches;
    // About 3 to 5 minutes for the whole run. Set here, not on the groups, so that
    // `--warm-up-time` / `--measurement-time` on the command line still override it.
    config = Criterion::default()
        .sample_size(25)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(4));
    targets = bench_uncontended, bench_2_threads, bench_8_threads
}
criterion_main!(benches);
