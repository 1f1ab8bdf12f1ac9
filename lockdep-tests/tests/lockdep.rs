//! The `lockdep` feature: a lock taken against the global order panics, naming both call sites,
//! even when the opposite order never runs at the same time. Run with
//! `cargo test -p fencelock-lockdep-tests` (part of `cargo test --workspace`).
#![cfg(all(feature = "lockdep", not(loom)))]

// The member compiles fencelock from its own source under this name (see its Cargo.toml).
extern crate fencelock_lockdep as fencelock;

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};

use fencelock::{lock_all, try_lock_all, LockTable, SpinLock};

/// Runs `f`, expecting it to panic; returns the panic message.
fn panic_message(f: impl FnOnce()) -> String {
    let payload = panic::catch_unwind(AssertUnwindSafe(f)).expect_err("expected a lockdep panic");
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .unwrap_or_default(),
    }
}

/// Two locks, the first before the second in the global order (one array: ascending addresses).
fn ordered_pair() -> [SpinLock<u32>; 2] {
    [SpinLock::new(0), SpinLock::new(1)]
}

#[test]
fn nesting_in_the_global_order_is_allowed() {
    let [a, b] = ordered_pair();
    let _a = a.lock();
    let _b = b.lock();
}

#[test]
fn abba_panics_with_both_call_sites_even_on_one_thread() {
    let [a, b] = ordered_pair();
    // The A-then-B path runs first and is fine...
    drop((a.lock(), b.lock()));
    // ...the B-then-A path panics, before it can deadlock with the other.
    let lines = Cell::new((0, 0));
    let message = panic_message(|| {
        let held_line = line!() + 1;
        let _b = b.lock();
        lines.set((held_line, line!() + 1));
        let _a = a.lock();
    });
    let (held_line, taken_line) = lines.get();
    assert!(
        message.contains("against the global lock order"),
        "{message}"
    );
    for line in [held_line, taken_line] {
        let site = format!("{}:{line}:", file!());
        assert!(message.contains(&site), "{message} lacks {site}");
    }
    // The panic released `b` on the way out, and `a` was never taken.
    assert!(!a.is_locked() && !b.is_locked());
}

#[test]
fn taking_a_held_lock_again_panics_instead_of_spinning() {
    let lock = SpinLock::new(());
    let message = panic_message(|| {
        let _first = lock.lock();
        let _second = lock.lock();
    });
    assert!(message.contains("already held by this thread"), "{message}");
}

#[test]
fn lock_all_never_trips_lockdep_whatever_the_callers_order() {
    let [a, b] = ordered_pair();
    drop(lock_all([&b, &a]).unwrap());
    drop(lock_all((&a, &b)).unwrap());
    drop(try_lock_all([&b, &a]).unwrap());
}

#[test]
fn lock_all_while_holding_a_later_lock_panics() {
    let [a, b] = ordered_pair();
    let c = SpinLock::new(2);
    let message = panic_message(|| {
        let _b = b.lock();
        let _ = lock_all([&c, &a]);
    });
    assert!(
        message.contains("against the global lock order"),
        "{message}"
    );
    assert!(message.contains(file!()), "{message}");
    assert!(!a.is_locked() && !b.is_locked() && !c.is_locked());
}

#[test]
fn released_locks_are_forgotten() {
    let [a, b] = ordered_pair();
    drop(b.lock());
    let _a = a.lock(); // b is no longer held: fine
    drop(_a);
    let (_x, _y) = (b.try_lock().unwrap(), a.try_lock().unwrap()); // try_lock is never refused
}

#[test]
fn lock_table_keys_follow_the_same_order() {
    let table: LockTable<u64> = LockTable::with_stripes(64);
    let (low, high) = {
        let (mut low, mut high) = (0, 1);
        while table.stripe_of(&low) == table.stripe_of(&high) {
            high += 1;
        }
        if table.stripe_of(&low) > table.stripe_of(&high) {
            std::mem::swap(&mut low, &mut high);
        }
        (low, high)
    };
    drop(table.lock_all(&[high, low]).unwrap());
    let message = panic_message(|| {
        let _high = table.lock(&high);
        let _low = table.lock(&low);
    });
    assert!(
        message.contains("against the global lock order"),
        "{message}"
    );
}
