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
//! | `long_section_4_threads`    | 4       | one lock held ~100 ns per op (`scenarios::LONG_SECTION`): waiters wait long |
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
//! Before the first sample of each peer in every threaded group, the bench also prints where the
//! scheduler has put two threads at that moment: a cache line's round trip between them
//! ([`report_placement`]). On a VM the host moves the virtual CPUs while the bench runs, and the
//! hand-over scenarios change winners with the placement, so read a ratio beside its placement;
//! `benches/placement.rs` sorts fencelock's own strategies by placement.
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

mod scenarios;

use std::cell::UnsafeCell;
use std::hint::{black_box, spin_loop};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use crossbeam_utils::CachePadded;
use fencelock::{Backoff, Spin, SpinLock, Yield};
use scenarios::{peer, round_trip, run, run_long_section, run_random, run_turns, Peer};

/// Ops each thread does in the fairness run: enough for the run to span many scheduler time
/// slices, so that with 8 threads on 2 cores no thread can finish inside its first slice.
const FAIRNESS_OPS: u64 = 1_000_000;

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

/// Prints where the scheduler has put two threads, before `peer` runs (see [`round_trip`]).
fn report_placement(peer: &str) {
    eprintln!(
        "placement before {peer}: a cache line's round trip between two threads takes {:.0} ns",
        round_trip(),
    );
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

/// Benches `P` in a threaded group: `run(iters)` times one run. Before the first one, reports
/// where the scheduler placed the threads, then runs `before_first` (the fairness run).
fn threaded<P: Peer>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    before_first: impl FnOnce(),
    mut run: impl FnMut(u64) -> Duration,
) {
    // Inside the closure, so that a peer filtered out on the command line is not run at all.
    let mut before_first = Some(before_first);
    group.bench_function(P::NAME, |b| {
        if let Some(before_first) = before_first.take() {
            report_placement(P::NAME);
            before_first();
        }
        b.iter_custom(&mut run);
    });
}

fn contended<P: Peer>(group: &mut BenchmarkGroup<'_, WallTime>, threads: usize) {
    threaded::<P>(
        group,
        || report_fairness::<P>(threads),
        |iters| run::<P>(threads, iters).last_done,
    );
}

fn random<P: Peer>(group: &mut BenchmarkGroup<'_, WallTime>, threads: usize) {
    threaded::<P>(group, || {}, |iters| run_random::<P>(threads, iters));
}

fn long_section<P: Peer>(group: &mut BenchmarkGroup<'_, WallTime>, threads: usize) {
    threaded::<P>(group, || {}, |iters| run_long_section::<P>(threads, iters));
}

fn turns<P: Peer>(group: &mut BenchmarkGroup<'_, WallTime>) {
    threaded::<P>(group, || {}, run_turns::<P>);
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
