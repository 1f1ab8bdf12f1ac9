//! Loom models of `DeadlineLock`: leases, takeovers, renewals, releases and accesses racing each
//! other, with time from a `ManualClock` (a loom atomic) that the model's threads advance.
//!
//! The lock's data lives in its loom-aware `UnsafeCell`, so two accesses not ordered by
//! happens-before are reported as a data race. Under loom nobody parks: a waiter is a spinner that
//! yields through the crate's relax hook, so every model has at most one thread that waits without
//! bound (see `loom-tests/tests/spin_lock.rs`).
//!
//! Preemption bounds are stated per model: 3 for two threads, 2 for three.

// The member compiles fencelock from its own source under this name (see its Cargo.toml).
extern crate fencelock_loom as fencelock;

use std::sync::Arc as StdArc;
use std::time::Duration;

use fencelock::{DeadlineLock, LeaseLost, ManualClock};
use loom::cell::UnsafeCell;
use loom::model::Builder;
use loom::thread;

type Lock<T> = DeadlineLock<T, StdArc<ManualClock>>;

const TEN: Duration = Duration::from_secs(10);

fn model(preemption_bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = Builder::new();
    builder.preemption_bound = Some(preemption_bound);
    builder.check(f);
}

/// A lock and the clock that drives it, both at time zero. The lock is leaked (a few bytes per
/// execution) so that leases, which borrow it, can move into spawned threads.
fn leaked_lock<T: Send + 'static>(value: T) -> (&'static Lock<T>, StdArc<ManualClock>) {
    let clock = StdArc::new(ManualClock::new());
    let lock = Box::leak(Box::new(DeadlineLock::with_clock(
        value,
        StdArc::clone(&clock),
    )));
    (lock, clock)
}

/// Contract 4, on a lock whose lease has run out: of two threads trying to take over, exactly one
/// wins, with the next token. The loser looks either while the winner holds LOCKED, or after —
/// and then must read the winner's deadline, not the ended lease's.
#[test]
fn two_takers_after_expiry_exactly_one_wins() {
    model(3, || {
        let (lock, _clock) = leaked_lock(());
        let ended = lock.try_acquire(Duration::ZERO).unwrap();
        // The winner keeps its lease (forgotten, never released) for the rest of the model.
        let take = move || {
            lock.try_acquire(TEN).map(|lease| {
                let token = lease.token().get();
                core::mem::forget(lease);
                token
            })
        };
        let other = thread::spawn(take);
        let mine = take();
        let theirs = other.join().unwrap();
        assert_eq!(
            (
                mine.is_some() as u8 + theirs.is_some() as u8,
                mine.or(theirs)
            ),
            (1, Some(2))
        );
        assert_eq!(
            ended.release(),
            Err(LeaseLost::TakenOver {
                by: fencelock::FencingToken::new(2)
            })
        );
    });
}

/// The same race on a free lock: exactly one of two `try_acquire`s wins. The loser may see the
/// fresh lease's state before its deadline: it must then not take it for ended.
#[test]
fn two_acquirers_of_a_free_lock_exactly_one_wins() {
    model(3, || {
        let (lock, _clock) = leaked_lock(());
        let other = thread::spawn(move || {
            let lease = lock.try_acquire(TEN);
            let won = lease.is_some();
            core::mem::forget(lease);
            won
        });
        let lease = lock.try_acquire(TEN);
        let mine = lease.is_some();
        core::mem::forget(lease);
        let theirs = other.join().unwrap();
        assert!(mine ^ theirs, "mine: {mine}, theirs: {theirs}");
    });
}

/// Contract 3: a renewal racing a takeover never extends the new holder's lease. Either the renewal
/// comes first (and the taker finds the lease running), or the takeover does (and the renewal fails
/// with `TakenOver`, changing nothing) — never both, and the new lease ends when it should.
///
/// The naive design — check the generation, then store the deadline, two words apart — fails here:
/// the stale holder's store lands after the takeover and pushes the new lease's end to 100 s.
#[test]
fn renew_racing_takeover_never_extends_the_new_lease() {
    model(3, || {
        let (lock, clock) = leaked_lock(());
        let mut stale = lock.try_acquire(TEN).unwrap();
        let renewer = thread::spawn(move || {
            let renewed = stale.renew(Duration::from_secs(100));
            core::mem::forget(stale);
            renewed
        });
        clock.advance(TEN);
        let taken = lock.try_acquire(TEN);
        let took_over = taken.is_some();
        core::mem::forget(taken);
        let renewed = renewer.join().unwrap();

        match (renewed, took_over) {
            // The renewal came first: the lease runs to 100 s, so the taker failed at 10 s.
            (Ok(()), false) => {
                clock.advance(TEN);
                assert!(lock.try_acquire(TEN).is_none());
            }
            // The takeover came first (or the renewer saw the clock at 10 s): the new lease,
            // issued at 10 s, ends at 20 s — not later.
            (Err(lost), true) => {
                assert!(matches!(
                    lost,
                    LeaseLost::TakenOver { .. } | LeaseLost::Expired
                ));
                clock.advance(TEN);
                assert_eq!(lock.try_acquire(TEN).map(|l| l.token().get()), Some(3));
            }
            other => panic!("renewed and took over: {other:?}"),
        }
    });
}

/// Contract 3 for releases: a stale holder's release never ends the new lease. Either it releases
/// first (and the taker takes a free lock) or the taker takes over first (and the release fails).
#[test]
fn stale_release_never_ends_the_new_lease() {
    model(3, || {
        let (lock, clock) = leaked_lock(());
        let stale = lock.try_acquire(TEN).unwrap();
        let releaser = thread::spawn(move || stale.release());
        clock.advance(TEN);
        let taken = lock
            .try_acquire(TEN)
            .expect("free or ended: the taker always wins");
        assert_eq!(taken.token().get(), 2);
        let released = releaser.join().unwrap();
        assert!(matches!(
            released,
            Ok(()) | Err(LeaseLost::TakenOver { .. })
        ));
        // Whatever the release did, the new lease still holds the lock.
        assert!(taken.is_valid());
        assert!(lock.try_acquire(TEN).is_none());
        assert_eq!(taken.release(), Ok(()));
    });
}

/// Contract 1 and 2: a lease that ends mid-access cannot make the next holder's access overlap
/// it (loom reports any overlap as a race on the lock's cell), and a stale holder's access never
/// starts after the new holder's: if the stale closure runs, the new holder has not written yet.
#[test]
fn with_mut_never_overlaps_a_takeover() {
    model(3, || {
        let (lock, clock) = leaked_lock(0_u32);
        let mut stale = lock.try_acquire(TEN).unwrap();
        let stalled = thread::spawn(move || {
            let wrote = stale.with_mut(|units| {
                assert_eq!(*units, 0, "a stale access started after the new holder's");
                *units += 1;
            });
            core::mem::forget(stale);
            wrote.is_ok()
        });
        clock.advance(TEN);
        let mut taken = lock.try_acquire(TEN).unwrap();
        taken.with_mut(|units| *units += 10).unwrap();
        let stale_wrote = stalled.join().unwrap();
        assert_eq!(
            taken.with(|units| *units),
            Ok(if stale_wrote { 11 } else { 10 })
        );
    });
}

/// What a holder writes before releasing, outside the lock's own cell, is visible to the next
/// holder — whether it comes in through `try_acquire` or waits in `acquire` (where, under loom,
/// it marks itself PARKED and the release takes its slow path).
#[test]
fn writes_under_a_lease_are_visible_to_the_next_holder() {
    model(3, || {
        let (lock, _clock) = leaked_lock(());
        let ledger = loom::sync::Arc::new(UnsafeCell::new(0_u32));
        let writer = {
            let ledger = loom::sync::Arc::clone(&ledger);
            thread::spawn(move || {
                if let Some(lease) = lock.try_acquire(TEN) {
                    // SAFETY: the ledger is only touched under a running lease of `lock`.
                    ledger.with_mut(|units| unsafe { *units += 7 });
                    lease.release().unwrap();
                }
            })
        };
        let lease = lock.acquire(TEN);
        // SAFETY: as above.
        let units = ledger.with(|units| unsafe { *units });
        // Token 2: the writer's lease (token 1) came first, and its write must be visible.
        let writer_went_first = lease.token().get() == 2;
        lease.release().unwrap();
        writer.join().unwrap();
        assert_eq!(units, if writer_went_first { 7 } else { 0 });
    });
}

/// Tokens strictly increase: two threads take and release the lock twice each (waiting in
/// `acquire`); each sees its own tokens grow, and the four are 1, 2, 3, 4.
#[test]
fn tokens_strictly_increase() {
    model(2, || {
        let (lock, _clock) = leaked_lock(());
        let twice = move || {
            let first = lock.acquire(TEN).token();
            let second = lock.acquire(TEN).token();
            assert!(first < second);
            [first.get(), second.get()]
        };
        let other = thread::spawn(twice);
        let mut tokens: Vec<u64> = twice().into_iter().chain(other.join().unwrap()).collect();
        tokens.sort_unstable();
        assert_eq!(tokens, [1, 2, 3, 4]);
    });
}

/// `acquire` does not hang on a holder that never releases: once another thread moves the clock
/// past the holder's deadline, the waiter takes over.
#[test]
fn acquire_takes_over_once_the_clock_passes_the_deadline() {
    model(3, || {
        let (lock, clock) = leaked_lock(());
        core::mem::forget(lock.acquire(TEN));
        let advancer = thread::spawn(move || clock.advance(TEN));
        let lease = lock.acquire(TEN);
        assert_eq!(lease.token().get(), 2);
        advancer.join().unwrap();
    });
}

/// Issue 7, the access cycle across two locks: A holds leases on L0 and L1 and, inside its L0
/// access, opens L1; meanwhile the clock passes A's deadlines and B takes both locks over and,
/// inside its L1 access, opens L0. Each may wait for the other's byte; A's leases are lost, so its
/// inner access must give up while it waits, and then B's goes through. Before the fix, the
/// interleaving where both wait spun forever (loom: "exceeded maximum number of branches").
/// Bound 3 (two threads).
#[test]
fn nested_accesses_of_lost_leases_never_deadlock() {
    model(3, || {
        let clock = StdArc::new(ManualClock::new());
        let locks: &'static [Lock<u32>; 2] = Box::leak(Box::new(
            [0, 1].map(|n| DeadlineLock::with_clock(n, StdArc::clone(&clock))),
        ));
        let mut a0 = locks[0].try_acquire(TEN).unwrap();
        let mut a1 = locks[1].try_acquire(TEN).unwrap();
        let a = thread::spawn(move || {
            let _ = a0.with_mut(|n0| {
                *n0 += 1;
                let _ = a1.with_mut(|n1| *n1 += 1);
            });
            core::mem::forget((a0, a1));
        });
        clock.advance(TEN);
        let mut b1 = locks[1].try_acquire(TEN).unwrap();
        let mut b0 = locks[0].try_acquire(TEN).unwrap();
        let nested = b1.with_mut(|n1| {
            *n1 += 10;
            b0.with_mut(|n0| *n0 += 10)
        });
        assert_eq!(nested, Ok(Ok(())));
        a.join().unwrap();
        core::mem::forget((b0, b1));
    });
}

/// Issue 7, the lost wake-up by ABA: W1 reads the holder's deadline (100 s) and sets PARKED; the
/// holder renews to 10 s, clearing PARKED (W1 is not asleep to be woken); W2 sets PARKED again, so
/// the state word is what W1 left; W2 gives up. Once the clock reaches 10 s, W1 must take over —
/// not keep watching for 100 s because the state word looks unchanged. Under loom a parked waiter
/// re-checks in a loop, so before the fix W1 spun forever in that interleaving. Bound 2 (three
/// threads).
#[test]
fn a_waiter_sees_a_shortened_deadline_behind_an_unchanged_state_word() {
    model(2, || {
        let (lock, clock) = leaked_lock(());
        let mut holder = lock.acquire(Duration::from_secs(100));
        let w1 = thread::spawn(move || {
            let lease = lock.acquire(TEN);
            let token = lease.token().get();
            core::mem::forget(lease);
            token
        });
        holder.renew(TEN).unwrap();
        // With no time to wait, W2 sets PARKED once and gives up (there is no parking under loom).
        let w2 = thread::spawn(move || lock.acquire_timeout(TEN, Duration::ZERO).is_some());
        assert!(!w2.join().unwrap(), "the lease runs until 10 s");
        clock.advance(TEN);
        assert_eq!(w1.join().unwrap(), 2);
        core::mem::forget(holder);
    });
}
