//! `LockTable`: one lock per key in fixed memory; `lock_all` grants two keys on one stripe by
//! taking it once, refuses a key named twice, and never deadlocks.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::thread;

use fencelock::{LockTable, SameLock};

/// Two different keys that share a stripe of `table`, and one that does not share theirs.
fn colliding_keys(table: &LockTable<u64>) -> (u64, u64, u64) {
    let first = 0;
    let same = (1..)
        .find(|k| table.stripe_of(k) == table.stripe_of(&first))
        .unwrap();
    let other = (1..)
        .find(|k| table.stripe_of(k) != table.stripe_of(&first))
        .unwrap();
    (first, same, other)
}

#[test]
fn stripes_are_a_bounded_power_of_two() {
    assert_eq!(LockTable::<u64>::new().stripes(), 64);
    assert_eq!(LockTable::<u64>::with_stripes(0).stripes(), 1);
    assert_eq!(LockTable::<u64>::with_stripes(5).stripes(), 8);
    assert_eq!(
        LockTable::<u64>::with_stripes(usize::MAX).stripes(),
        1 << 16
    );
    let table: LockTable<u64> = LockTable::with_stripes(4);
    assert!((0..1000).all(|k| table.stripe_of(&k) < 4));
}

#[test]
fn a_held_key_excludes_itself_and_its_stripe_only() {
    let table: LockTable<u64> = LockTable::with_stripes(16);
    let (key, same_stripe, other_stripe) = colliding_keys(&table);
    let held = table.lock(&key);
    assert!(table.try_lock(&key).is_none());
    assert!(table.try_lock(&same_stripe).is_none());
    assert!(table.try_lock(&other_stripe).is_some());
    drop(held);
    assert!(table.try_lock(&key).is_some());
}

#[test]
fn keys_are_looked_up_by_their_borrowed_form() {
    let table: LockTable<String> = LockTable::new();
    let held = table.lock("AAPL");
    assert!(table.try_lock(&String::from("AAPL")).is_none());
    drop(held);
    assert!(table.try_lock("AAPL").is_some());
}

#[test]
fn lock_all_returns_one_guard_per_key_and_releases_them() {
    let table: LockTable<u64> = LockTable::with_stripes(64);
    let keys = [9, 3, 27, 81];
    let guards = table.lock_all(&keys).unwrap();
    assert_eq!(guards.len(), 4);
    assert!(keys.iter().all(|k| table.try_lock(k).is_none()));
    drop(guards);
    assert!(keys.iter().all(|k| table.try_lock(k).is_some()));
}

#[test]
fn two_keys_on_one_stripe_are_both_granted_and_held_until_the_last_guard_drops() {
    let table: LockTable<u64> = LockTable::with_stripes(8);
    let (key, same_stripe, other_stripe) = colliding_keys(&table);
    let mut guards = table.lock_all(&[same_stripe, other_stripe, key]).unwrap();
    assert_eq!(guards.len(), 3);
    let key_guard = guards.pop().unwrap();
    let other_guard = guards.pop().unwrap();
    drop(guards); // `same_stripe`'s guard: `key`'s still holds the stripe
    assert!(table.try_lock(&same_stripe).is_none());
    assert!(table.try_lock(&other_stripe).is_none());
    drop(other_guard);
    assert!(table.try_lock(&other_stripe).is_some());
    assert!(table.try_lock(&key).is_none());
    drop(key_guard);
    assert!(table.try_lock(&key).is_some());
    assert!(table.try_lock(&same_stripe).is_some());
}

#[test]
fn one_stripe_grants_every_distinct_key() {
    let table: LockTable<u64> = LockTable::with_stripes(1);
    let guards = table.lock_all(&[5, 1, 4, 2, 3]).unwrap();
    assert_eq!(guards.len(), 5);
    assert!(table.try_lock(&99).is_none());
    drop(guards);
    assert!(table.try_lock(&99).is_some());
}

#[test]
fn a_key_named_twice_is_refused_before_anything_is_locked() {
    for stripes in [1, 64] {
        let table: LockTable<u64> = LockTable::with_stripes(stripes);
        assert_eq!(
            table.lock_all(&[4, 7, 1, 7, 4]).err(),
            Some(SameLock {
                first: 1,
                second: 3
            })
        );
        assert!((0..10).all(|k| table.try_lock(&k).is_some()));
    }
}

/// Only with `send_guard`: by default key guards are `!Send`, like every guard of the crate.
#[cfg(feature = "send_guard")]
#[test]
fn key_guards_may_be_released_on_another_thread() {
    let table: LockTable<u64> = LockTable::with_stripes(1);
    let guards = table.lock_all(&[1, 2]).unwrap();
    thread::scope(|s| {
        s.spawn(move || drop(guards));
    });
    assert!(table.try_lock(&1).is_some());
}

/// Accounts outside the table, written with Relaxed load-then-store: without the table's
/// exclusion two transfers through one account would lose an update and break the total.
#[test]
fn transfers_between_keys_conserve_the_total() {
    let (threads, rounds) = if cfg!(miri) { (3, 20) } else { (4, 20_000) };
    const ACCOUNTS: u64 = 8;
    let balances: Vec<AtomicI64> = (0..ACCOUNTS).map(|_| AtomicI64::new(1_000)).collect();
    // Few stripes, so that different accounts often share one.
    let table: LockTable<u64> = LockTable::with_stripes(4);
    thread::scope(|s| {
        for t in 0..threads {
            let (table, balances) = (&table, &balances);
            s.spawn(move || {
                let mut seed = t as u64 * 0x9E37_79B9 + 1;
                for _ in 0..rounds {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let from = seed % ACCOUNTS;
                    let to = (from + 1 + (seed >> 8) % (ACCOUNTS - 1)) % ACCOUNTS;
                    let _held = table.lock_all(&[to, from]).unwrap();
                    let (f, t) = (&balances[from as usize], &balances[to as usize]);
                    f.store(f.load(Relaxed) - 3, Relaxed);
                    t.store(t.load(Relaxed) + 3, Relaxed);
                }
            });
        }
    });
    let total: i64 = balances.iter().map(|b| b.load(Relaxed)).sum();
    assert_eq!(total, 1_000 * ACCOUNTS as i64);
}
