//! `lock_all`, `try_lock_all` and `lock_slice`: guards in the caller's order, `SameLock` before
//! anything is taken, all-or-nothing `try_lock_all`, and opposite orders that finish.
#![cfg(not(loom))]

use std::thread;

use fencelock::{lock_all, lock_slice, try_lock_all, SameLock, Spin, SpinLock, Yield};

fn none_locked(locks: &[SpinLock<usize>]) -> bool {
    locks.iter().all(|lock| !lock.is_locked())
}

fn numbered(n: usize) -> Vec<SpinLock<usize>> {
    (0..n).map(SpinLock::new).collect()
}

#[test]
fn array_guards_come_back_in_the_callers_order() {
    let locks = numbered(4);
    let guards = lock_all([&locks[2], &locks[0], &locks[3], &locks[1]]).unwrap();
    assert_eq!(guards.each_ref().map(|g| **g), [2, 0, 3, 1]);
    assert!(locks.iter().all(SpinLock::is_locked));
    drop(guards);
    assert!(none_locked(&locks));
}

#[test]
fn guards_may_be_dropped_one_by_one_in_any_order() {
    let locks = numbered(3);
    let [a, b, c] = lock_all([&locks[0], &locks[1], &locks[2]]).unwrap();
    drop(b);
    assert!(!locks[1].is_locked() && locks[0].is_locked() && locks[2].is_locked());
    drop(a);
    drop(c);
    assert!(none_locked(&locks));
}

#[test]
fn empty_and_single_sets() {
    let locks = numbered(1);
    let none: [&SpinLock<usize>; 0] = [];
    assert_eq!(lock_all(none).unwrap().len(), 0);
    let [only] = lock_all([&locks[0]]).unwrap();
    assert_eq!(*only, 0);
    drop(only);
    let empty: &[&SpinLock<usize>] = &[];
    assert!(lock_slice(empty).unwrap().is_empty());
}

#[test]
fn a_lock_named_twice_is_refused_before_anything_is_taken() {
    let locks = numbered(3);
    assert_eq!(
        lock_all([&locks[1], &locks[0], &locks[1]]).err(),
        Some(SameLock {
            first: 0,
            second: 2
        })
    );
    assert!(none_locked(&locks));
    assert_eq!(
        try_lock_all([&locks[2], &locks[2]]).err(),
        Some(SameLock {
            first: 0,
            second: 1
        })
    );
    assert_eq!(
        lock_slice(&[&locks[0], &locks[1], &locks[2], &locks[1], &locks[0]]).err(),
        Some(SameLock {
            first: 1,
            second: 3
        })
    );
    assert!(none_locked(&locks));
}

#[test]
fn same_lock_says_what_happened() {
    let same = SameLock {
        first: 1,
        second: 4,
    };
    assert_eq!(
        same.to_string(),
        "the same lock is named at positions 1 and 4"
    );
    let _: &dyn std::error::Error = &same;
}

#[test]
fn tuples_take_locks_of_different_types() {
    let cash = SpinLock::new(100_i64);
    let units = SpinLock::with_relax(vec![1_u32, 2, 3], Spin);
    let name = SpinLock::with_relax(String::from("AAPL"), Yield);
    {
        let (mut cash_g, mut units_g, name_g) = lock_all((&cash, &units, &name)).unwrap();
        *cash_g -= 10;
        units_g.push(4);
        assert_eq!(*name_g, "AAPL");
        assert!(cash.is_locked() && units.is_locked() && name.is_locked());
    }
    assert!(!cash.is_locked() && !units.is_locked() && !name.is_locked());
    assert_eq!(*cash.lock(), 90);
    assert_eq!(units.lock().len(), 4);
}

#[test]
fn tuples_refuse_a_lock_named_twice() {
    let a = SpinLock::new(1);
    let b = SpinLock::new(2);
    assert_eq!(
        lock_all((&a, &b, &a)).err(),
        Some(SameLock {
            first: 0,
            second: 2
        })
    );
    assert_eq!(
        try_lock_all((&b, &b)).err(),
        Some(SameLock {
            first: 0,
            second: 1
        })
    );
    assert!(!a.is_locked() && !b.is_locked());
}

#[test]
fn try_lock_all_is_all_or_nothing() {
    let locks = numbered(4);
    let busy = locks[2].lock();
    for set in [[0, 1, 2], [2, 1, 0], [3, 2, 0], [1, 3, 2]] {
        let result = try_lock_all(set.map(|i| &locks[i])).unwrap();
        assert!(result.is_none(), "{set:?}");
        assert!(!locks[0].is_locked() && !locks[1].is_locked() && !locks[3].is_locked());
    }
    let tuple = try_lock_all((&locks[3], &locks[2], &locks[1])).unwrap();
    assert!(tuple.is_none());
    let slice = try_lock_all(&[&locks[0], &locks[2]][..]).unwrap();
    assert!(slice.is_none());
    assert!(!locks[0].is_locked() && !locks[1].is_locked() && !locks[3].is_locked());
    drop(busy);
    let [x, y, z] = try_lock_all([&locks[3], &locks[2], &locks[0]])
        .unwrap()
        .unwrap();
    assert_eq!([*x, *y, *z], [3, 2, 0]);
}

#[test]
fn lock_slice_returns_guards_in_slice_order() {
    let locks = numbered(6);
    let chosen: Vec<&SpinLock<usize>> = [5, 1, 4, 0].iter().map(|&i| &locks[i]).collect();
    let guards = lock_slice(&chosen).unwrap();
    assert_eq!(guards.iter().map(|g| **g).collect::<Vec<_>>(), [5, 1, 4, 0]);
    drop(guards);
    assert!(none_locked(&locks));
}

/// The seed's deadlock: {A, B} on one thread, {B, A} on another, many times. Through `lock_all`
/// it finishes, and every transfer is counted.
#[test]
fn opposite_orders_finish() {
    let rounds = if cfg!(miri) { 20 } else { 20_000 };
    let a = SpinLock::new(0_i64);
    let b = SpinLock::new(0_i64);
    thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..rounds {
                let [mut a, mut b] = lock_all([&a, &b]).unwrap();
                *a -= 1;
                *b += 1;
            }
        });
        s.spawn(|| {
            for _ in 0..rounds {
                let (mut b, mut a) = lock_all((&b, &a)).unwrap();
                *b -= 2;
                *a += 2;
            }
        });
    });
    assert_eq!(*a.lock(), rounds);
    assert_eq!(*b.lock(), -rounds);
}
