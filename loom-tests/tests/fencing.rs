//! Loom models of the token-checking resources: `Fenced` admits tokens monotonically (and refuses
//! a stalled lease holder's late write), `Versioned::commit` lets exactly one of two racing
//! commits through.
//!
//! Both are short critical sections on `SpinLock`, whose own orderings `spin_lock.rs` pins down;
//! these models pin down the checks made inside. Preemption bound 3 (two threads).

// The member compiles fencelock from its own source under this name (see its Cargo.toml).
extern crate fencelock_loom as fencelock;

use std::sync::Arc as StdArc;
use std::time::Duration;

use fencelock::{DeadlineLock, Fenced, FencingToken, ManualClock, StaleToken, Versioned};
use loom::model::Builder;
use loom::sync::Arc;
use loom::thread;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

/// Tokens 1 and 2 write concurrently: 2 is always admitted; 1 only if it came first. The highest
/// token ends at 2 and the value says which writes got in, in token order.
#[test]
fn fenced_admits_tokens_monotonically() {
    model(|| {
        let ledger = Arc::new(Fenced::new(Vec::new()));
        let older = {
            let ledger = Arc::clone(&ledger);
            thread::spawn(move || ledger.write(FencingToken::new(1), |entries| entries.push(1)))
        };
        let newer = ledger.write(FencingToken::new(2), |entries| entries.push(2));
        let older = older.join().unwrap();
        assert_eq!(newer, Ok(()));
        let entries = ledger.read(|entries| entries.clone());
        match older {
            Ok(()) => assert_eq!(entries, [1, 2]),
            Err(stale) => {
                assert_eq!(
                    stale,
                    StaleToken {
                        presented: FencingToken::new(1),
                        highest: FencingToken::new(2)
                    }
                );
                assert_eq!(entries, [2]);
            }
        }
        assert_eq!(ledger.highest(), FencingToken::new(2));
    });
}

/// The seed's hazard end to end: a holder stalls past its lease, another takes over and writes;
/// the stalled holder's late write is refused whenever the new holder wrote first, and the
/// stalled holder never writes after the new holder.
#[test]
fn fenced_refuses_the_stalled_holders_late_write() {
    model(|| {
        let clock = StdArc::new(ManualClock::new());
        let lock: &'static _ = Box::leak(Box::new(DeadlineLock::with_clock(
            (),
            StdArc::clone(&clock),
        )));
        let ledger = Arc::new(Fenced::new(Vec::new()));
        let stalled = lock.try_acquire(Duration::from_secs(1)).unwrap();
        let late = {
            let ledger = Arc::clone(&ledger);
            let token = stalled.token();
            core::mem::forget(stalled);
            thread::spawn(move || ledger.write(token, |entries| entries.push(token.get())))
        };
        clock.advance(Duration::from_secs(1));
        let next = lock.try_acquire(Duration::from_secs(1)).unwrap();
        let token = next.token();
        ledger
            .write(token, |entries| entries.push(token.get()))
            .unwrap();
        let late = late.join().unwrap();
        let entries = ledger.read(|entries| entries.clone());
        assert_eq!(
            entries,
            if late.is_ok() {
                [1, 2].as_slice()
            } else {
                &[2]
            }
        );
    });
}

/// Two commits against the same version: exactly one wins; the loser gets its value back and the
/// winner's value stays.
#[test]
fn versioned_commit_race_exactly_one_wins() {
    model(|| {
        let cell = Arc::new(Versioned::new(0_u32));
        let (_, seen) = cell.load();
        let other = {
            let cell = Arc::clone(&cell);
            thread::spawn(move || {
                cell.commit(seen, 1)
                    .map_err(|conflict| conflict.into_inner())
            })
        };
        let mine = cell
            .commit(seen, 2)
            .map_err(|conflict| conflict.into_inner());
        let theirs = other.join().unwrap();
        let (value, version) = cell.load();
        assert_eq!(version.get(), 1);
        match (mine, theirs) {
            (Ok(_), Err(1)) => assert_eq!(value, 2),
            (Err(2), Ok(_)) => assert_eq!(value, 1),
            other => panic!("not exactly one winner: {other:?}"),
        }
    });
}

/// `update` retries until its change lands: two concurrent increments both count.
#[test]
fn versioned_updates_are_never_lost() {
    model(|| {
        let cell = Arc::new(Versioned::new(0_u32));
        let other = {
            let cell = Arc::clone(&cell);
            thread::spawn(move || cell.update(|units| units + 1))
        };
        let mine = cell.update(|units| units + 1);
        let theirs = other.join().unwrap();
        assert_ne!(mine, theirs);
        assert_eq!(cell.load().0, 2);
    });
}
