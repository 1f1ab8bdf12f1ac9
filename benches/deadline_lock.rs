//! Speed targets of issue 3, each next to its baseline in the same run:
//!
//! - uncontended `try_acquire` + `release` with `MonotonicClock` within 1.3x of one
//!   `Instant::now()` plus the bare swap/store floor (`floor` below);
//! - uncontended `Fenced::write` within 1.2x of a `SpinLock` round trip.
//!
//! Run: `cargo bench --bench deadline_lock`. Compare the `deadline_lock/*` lines with each other
//! and the `fenced/*` lines with each other.
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use fencelock::{Clock, DeadlineLock, Fenced, FencingToken, MonotonicClock, SpinLock};

fn deadline_lock(c: &mut Criterion) {
    let mut group = c.benchmark_group("deadline_lock");
    group.bench_function("Instant::now", |b| b.iter(|| black_box(Instant::now())));
    group.bench_function("MonotonicClock::now", |b| {
        b.iter(|| black_box(MonotonicClock.now()))
    });

    // The floor: what any lease lock must do at least — read the clock once, take a word with
    // one atomic swap, give it back with one store.
    let flag = AtomicBool::new(false);
    group.bench_function("floor: Instant::now + swap + store", |b| {
        b.iter(|| {
            black_box(Instant::now());
            black_box(flag.swap(true, Acquire));
            flag.store(false, Release);
        })
    });

    let lock = DeadlineLock::new(0_u64);
    let lease = Duration::from_secs(3600);
    group.bench_function("try_acquire + release", |b| {
        b.iter(|| {
            let acquired = lock.try_acquire(black_box(lease)).unwrap();
            acquired.release().unwrap();
        })
    });
    group.bench_function("try_acquire + with_mut + release", |b| {
        b.iter(|| {
            let mut acquired = lock.try_acquire(black_box(lease)).unwrap();
            acquired.with_mut(|v| *v += 1).unwrap();
            acquired.release().unwrap();
        })
    });
    group.finish();
}

fn fenced(c: &mut Criterion) {
    let mut group = c.benchmark_group("fenced");
    let spin = SpinLock::new(0_u64);
    group.bench_function("SpinLock round trip", |b| {
        b.iter(|| *spin.lock() += black_box(1))
    });
    let fenced = Fenced::new(0_u64);
    let token = FencingToken::new(1);
    group.bench_function("Fenced::write", |b| {
        b.iter(|| fenced.write(black_box(token), |v| *v += 1).unwrap())
    });
    group.finish();
}

criterion_group!(benches, deadline_lock, fenced);
criterion_main!(benches);
