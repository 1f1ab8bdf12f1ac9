//! Speed of ordered acquisition against its baselines, measured in the same run:
//!
//! - `lock_all` of two uncontended locks vs one `SpinLock` lock/unlock round trip
//!   (target: within 2.3x);
//! - `LockTable::lock` vs hashing the key with the same hasher plus a `SpinLock` round trip
//!   (target: within 1.5x).

use std::hash::{BuildHasher, RandomState};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use fencelock::{lock_all, LockTable, SpinLock};

fn lock_all_two(c: &mut Criterion) {
    let mut group = c.benchmark_group("lock_all");
    let locks = [SpinLock::new(0_u64), SpinLock::new(0_u64)];
    group.bench_function("SpinLock round trip (baseline)", |b| {
        b.iter(|| *black_box(&locks[0]).lock() += 1)
    });
    group.bench_function("lock_all of 2", |b| {
        b.iter(|| {
            let [mut x, mut y] = lock_all([black_box(&locks[1]), black_box(&locks[0])]).unwrap();
            *x += 1;
            *y += 1;
        })
    });
    group.finish();
}

fn lock_table(c: &mut Criterion) {
    let mut group = c.benchmark_group("LockTable");
    let hasher = RandomState::new();
    let lock = SpinLock::new(());
    let table: LockTable<u64> = LockTable::new();
    let key = 0x5EED_u64;
    group.bench_function("hash + SpinLock round trip (baseline)", |b| {
        b.iter(|| {
            black_box(hasher.hash_one(black_box(&key)));
            drop(black_box(&lock).lock());
        })
    });
    group.bench_function("LockTable::lock", |b| {
        b.iter(|| drop(black_box(&table).lock(black_box(&key))))
    });
    group.finish();
}

criterion_group!(benches, lock_all_two, lock_table);
criterion_main!(benches);
