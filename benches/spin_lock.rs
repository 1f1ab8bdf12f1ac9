//! `SpinLock` — the default `Adaptive` and the fixed strategies `Backoff`, `Spin` and `Yield` —
//! side by side with its peers, in one run: `std::sync::Mutex`, `parking_lot::Mutex`,
//! `spin`'s `SpinMutex` with its `Spin` and `Yield` strategies, and a bare floor (an `AtomicBool`
//! taken with one `swap`, given back with one `Release` store).
//!
//! Every peer guards one `u64` counter, alone on its cache lines (`CachePadded`); one *op* is
//! lock, increment, unlock.
//!
//! | group                       | threads | what it measures                                   |
//! |-----------------------------|---------|----------------------------------------------------|
//! | `uncontended`               | 1       | the round trip of the fast path (`b.iter`)         |
//! | `contended_2_threads`       | 2       | one hot lock: hand-over between two threads        |
//! | `oversubscribed_8_threads`  | 8       | one hot lock, more threads than cores: holders get preempted |
//! | `random_of_64_8_threads`    | 8       | 64 locks, each op on one picked at random: light contention |
//! | `long_section_4_threads`    | 4       | one lock held ~100 ns per op ([`LONG_SECTION`]): waiters wait long |
//! | `strict_turns_2_threads`    | 2       | two threads take turns (each op waits for the other's): hand-over latency |
//!
//! In the threaded groups each sample spawns its threads, lines them up on a `Barrier`, and times
//! from the first thread leaving the barrier to the last thread finishing, while each thread does
//! `iters` ops: criterion's time is per round of one op per thread, and its throughput is ops per
//! second. The final count is checked, so a broken lock fails the bench instead of looking fast.
//!
//! Before the first sample of each peer in the two hot-lock groups, one extra run outside
//! criterion's timing measures fairness: every thread does [`FAIRNESS_OPS`] ops and notes when it
//! finished, and the bench prints `first thread done / last thread done` to stderr (1.0:
//! perfectly even).
//!
//! `benches/chart.py` turns the results (`target/criterion/*/*/new/`) into an SVG chart of each
//! lock's throughput relative to parking_lot's, per group; criterion's own HTML report is in
//! `target/criterion/report/index.html`.
//!
//! ```text
//! cargo bench --bench spin_lock                 # about 9 minutes
//! cargo bench --bench spin_lock -- --warm-up-time 1 --measurement-time 2 oversubscribed
//! python3 benches/chart.py                      # writes target/criterion/relative_to_parking_lot.svg
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
use fencelock::{Backoff, Spin, SpinLock, Yield};

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
        impl Peer for $ty {
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
    fn with<O>(&self, f: impl FnOnce(&mut u64) -> O) -> O {
        self.take();
        // SAFETY: we hold the flag, so nobody else touches `count` until `give_back`.
        let out = f(unsafe { &mut *self.count.get() });
        self.give_back();
        out
    }
}

/// What one contended run measured, from the moment the first thread left the barrier.
struct Run {
    /// Until the last thread finished its ops.
    last_done: Duration,
    /// Until the first thread finished its ops.
    first_done: Duration,
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
fn run<P: Peer>(threads: usize, ops: u64) -> Run {
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
fn run_random<P: Peer>(threads: usize, ops: u64) -> Duration {
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
/// the README's machine (one iteration measured 0.25 ns there, alone on a core).
const LONG_SECTION: u32 = 400;

/// `threads` threads each do `ops` ops whose critical section is [`LONG_SECTION`] long.
fn run_long_section<P: Peer>(threads: usize, ops: u64) -> Duration {
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
fn run_turns<P: Peer>(ops: u64) -> Duration {
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

fn random<P: Peer>(group: &mut BenchmarkGroup<'_, WallTime>, threads: usize) {
    group.bench_function(P::NAME, |b| {
        b.iter_custom(|iters| run_random::<P>(threads, iters))
    });
}

fn long_section<P: Peer>(group: &mut BenchmarkGroup<'_, WallTime>, threads: usize) {
    group.bench_function(P::NAME, |b| {
        b.iter_custom(|iters| run_long_section::<P>(threads, iters))
    });
}

fn turns<P: Peer>(group: &mut BenchmarkGroup<'_, WallTime>) {
    group.bench_function(P::NAME, |b| b.iter_custom(|iters| run_turns::<P>(iters)));
}

/// Runs `$bench::<Peer>(group $(, arg)*)` for every peer.
macro_rules! every_peer {
    ($bench:ident($group:expr $(, $arg:expr)*)) => {
        $bench::<Floor>($group $(, $arg)*);
        $bench::<SpinLock<u64>>($group $(, $arg)*);
        $bench::<SpinLock<u64, Backoff>>($group $(, $arg)*);
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

/// A threaded group: `threads` ops per criterion iteration, `bench` run for every peer.
fn threaded_group(
    c: &mut Criterion,
    name: &str,
    threads: usize,
    bench: impl FnOnce(&mut BenchmarkGroup<'_, WallTime>),
) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(threads as u64));
    bench(&mut group);
    group.finish();
}

fn bench_random_64(c: &mut Criterion) {
    threaded_group(c, "random_of_64_8_threads", 8, |g| {
        every_peer!(random(g, 8));
    });
}

fn bench_long_section(c: &mut Criterion) {
    threaded_group(c, "long_section_4_threads", 4, |g| {
        every_peer!(long_section(g, 4));
    });
}

fn bench_turns(c: &mut Criterion) {
    threaded_group(c, "strict_turns_2_threads", 2, |g| {
        every_peer!(turns(g));
    });
}

criterion_group! {
    name = benches;
    // About 9 minutes for the whole run. Set here, not on the groups, so that
    // `--warm-up-time` / `--measurement-time` on the command line still override it.
    config = Criterion::default()
        .sample_size(25)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(4));
    targets = bench_uncontended, bench_2_threads, bench_8_threads, bench_random_64,
        bench_long_section, bench_turns
}
criterion_main!(benches);
