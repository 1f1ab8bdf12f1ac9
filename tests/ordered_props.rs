//! Properties of ordered acquisition over random requests: random pools of locks, random
//! requests that may repeat a lock, random orders.
//!
//! - `lock_all` / `lock_slice` / `LockTable::lock_all` return `SameLock` exactly when the request
//!   repeats a lock (a key), naming the earliest repeat; otherwise one guard per request, in the
//!   caller's order; and afterwards nothing is held.
//! - `try_lock_all` with some locks already held succeeds exactly when none of the requested
//!   locks is held, and on failure leaves held exactly what was held before.
#![cfg(not(loom))]

use fencelock::{lock_all, lock_slice, try_lock_all, LockTable, SameLock, SpinLock};
use proptest::prelude::*;

/// The expected outcome for a request of pool indices: the earliest repeat, if any.
fn earliest_repeat(request: &[usize]) -> Option<SameLock> {
    (1..request.len()).find_map(|second| {
        request[..second]
            .iter()
            .position(|&lock| lock == request[second])
            .map(|first| SameLock { first, second })
    })
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: if cfg!(miri) { 8 } else { 256 },
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A pool of 1..=6 locks and a request of 0..=8 indices into it (repeats likely).
fn pool_and_request() -> impl Strategy<Value = (usize, Vec<usize>)> {
    (1_usize..=6).prop_flat_map(|pool| (Just(pool), prop::collection::vec(0..pool, 0..=8)))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lock_slice_guards_in_order_or_same_lock((pool, request) in pool_and_request()) {
        let locks: Vec<SpinLock<usize>> = (0..pool).map(SpinLock::new).collect();
        let refs: Vec<&SpinLock<usize>> = request.iter().map(|&i| &locks[i]).collect();
        match lock_slice(&refs) {
            Ok(guards) => {
                prop_assert_eq!(earliest_repeat(&request), None);
                let seen: Vec<usize> = guards.iter().map(|g| **g).collect();
                prop_assert_eq!(seen, request.clone());
                prop_assert!(request.iter().all(|&i| locks[i].is_locked()));
            }
            Err(same) => prop_assert_eq!(Some(same), earliest_repeat(&request)),
        }
        prop_assert!(locks.iter().all(|lock| !lock.is_locked()));
    }

    #[test]
    fn lock_all_arrays_guards_in_order_or_same_lock(
        pool in 1_usize..=5,
        request in prop::array::uniform4(0_usize..5),
    ) {
        let request = request.map(|i| i % pool);
        let locks: Vec<SpinLock<usize>> = (0..pool).map(SpinLock::new).collect();
        match lock_all(request.map(|i| &locks[i])) {
            Ok(guards) => {
                prop_assert_eq!(earliest_repeat(&request), None);
                prop_assert_eq!(guards.each_ref().map(|g| **g), request);
            }
            Err(same) => prop_assert_eq!(Some(same), earliest_repeat(&request)),
        }
        prop_assert!(locks.iter().all(|lock| !lock.is_locked()));
    }

    #[test]
    fn tuples_guards_in_order_or_same_lock(first in 0_usize..3, last in 0_usize..3) {
        // Positions 0 and 2 name locks of one pool (so they may repeat); position 1 is a lock of
        // another type.
        let pool: Vec<SpinLock<usize>> = (0..3).map(SpinLock::new).collect();
        let byte = SpinLock::new(7_u8);
        match lock_all((&pool[first], &byte, &pool[last])) {
            Ok((x, y, z)) => {
                prop_assert_ne!(first, last);
                prop_assert_eq!((*x, *y, *z), (first, 7, last));
            }
            Err(same) => {
                prop_assert_eq!(first, last);
                prop_assert_eq!(same, SameLock { first: 0, second: 2 });
            }
        }
        prop_assert!(pool.iter().all(|lock| !lock.is_locked()) && !byte.is_locked());
    }

    #[test]
    fn try_lock_all_is_all_or_nothing(
        (pool, request) in pool_and_request(),
        held_mask in 0_u8..64,
    ) {
        let locks: Vec<SpinLock<usize>> = (0..pool).map(SpinLock::new).collect();
        let held: Vec<_> = (0..pool)
            .filter(|i| held_mask & (1 << i) != 0)
            .map(|i| (i, locks[i].lock()))
            .collect();
        let is_held = |i: usize| held.iter().any(|(h, _)| *h == i);
        let refs: Vec<&SpinLock<usize>> = request.iter().map(|&i| &locks[i]).collect();
        match try_lock_all(&refs[..]) {
            Ok(Some(guards)) => {
                prop_assert_eq!(earliest_repeat(&request), None);
                prop_assert!(request.iter().all(|&i| !is_held(i)));
                prop_assert_eq!(guards.iter().map(|g| **g).collect::<Vec<_>>(), request.clone());
            }
            Ok(None) => {
                prop_assert_eq!(earliest_repeat(&request), None);
                prop_assert!(request.iter().any(|&i| is_held(i)));
            }
            Err(same) => prop_assert_eq!(Some(same), earliest_repeat(&request)),
        }
        // Exactly what was held before is held now.
        for (i, lock) in locks.iter().enumerate() {
            prop_assert_eq!(lock.is_locked(), is_held(i));
        }
    }

    #[test]
    fn lock_table_grants_distinct_keys_or_same_lock(
        stripes in 1_usize..=8,
        request in prop::collection::vec(0_u64..10, 0..=8),
    ) {
        let table: LockTable<u64> = LockTable::with_stripes(stripes);
        let as_indices: Vec<usize> = request.iter().map(|&k| k as usize).collect();
        match table.lock_all(&request) {
            Ok(guards) => {
                prop_assert_eq!(earliest_repeat(&as_indices), None);
                prop_assert_eq!(guards.len(), request.len());
                prop_assert!(request.iter().all(|k| table.try_lock(k).is_none()));
            }
            Err(same) => prop_assert_eq!(Some(same), earliest_repeat(&as_indices)),
        }
        prop_assert!((0..10).all(|k| table.try_lock(&k).is_some()));
    }
}
