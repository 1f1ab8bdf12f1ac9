//! Differential property tests: random sequences of lock / try_lock / unlock / read / write over a
//! few locks, checked after every step against a model that is a `Vec<bool>` of held flags and a
//! `Vec<u32>` of values.
//!
//! Three paths run the same sequences: `SpinLock<u32>`, `lock_api::Mutex<RawSpinLock<Spin>, u32>`
//! and bare `RawSpinLock`s. All of it is single-threaded, so `lock` is only called on a lock the
//! model says is free (on a held one it would spin forever); on a held lock the `Lock` operation
//! checks that `try_lock` fails instead.
// The sequences hold several locks and `lock()` another in any order, which the `lockdep`
// feature reports by design: this file checks the lock itself, with lockdep off.
#![cfg(not(feature = "lockdep"))]
#![cfg(not(loom))]

use std::ops::DerefMut;

#[cfg(feature = "lock_api")]
use fencelock::Spin;
#[cfg(feature = "std")]
use fencelock::Yield;
use fencelock::{RawSpinLock, Relax, SpinLock, SpinLockGuard};
use proptest::prelude::*;

/// How many locks each sequence plays with.
const LOCKS: usize = 3;

#[derive(Clone, Copy, Debug)]
enum Op {
    /// `lock()` if the model says free; else `try_lock()`, which must fail.
    Lock(usize),
    /// `try_lock()`: succeeds exactly when the model says free.
    TryLock(usize),
    /// Drops the guard if held (unlocks the raw lock); nothing if free.
    Unlock(usize),
    /// Writes through the held guard, or through a momentary `lock()` if free.
    Write(usize, u32),
    /// Reads through the held guard, or through a momentary `lock()` if free.
    Read(usize),
    /// `is_locked()` must match the model.
    IsLocked(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let index = 0..LOCKS;
    prop_oneof![
        3 => index.clone().prop_map(Op::Lock),
        3 => index.clone().prop_map(Op::TryLock),
        3 => index.clone().prop_map(Op::Unlock),
        2 => (index.clone(), any::<u32>()).prop_map(|(i, v)| Op::Write(i, v)),
        2 => index.clone().prop_map(Op::Read),
        1 => index.prop_map(Op::IsLocked),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 0..64)
}

/// The trivial model: which locks are held, and what each holds.
struct Model {
    held: Vec<bool>,
    values: Vec<u32>,
}

impl Model {
    fn new(values: &[u32]) -> Self {
        Self {
            held: vec![false; values.len()],
            values: values.to_vec(),
        }
    }
}

/// What the differential test needs of a lock that guards a `u32`.
trait GuardedLock {
    type Guard<'a>: DerefMut<Target = u32>
    where
        Self: 'a;
    fn new(value: u32) -> Self;
    fn lock(&self) -> Self::Guard<'_>;
    fn try_lock(&self) -> Option<Self::Guard<'_>>;
    fn is_locked(&self) -> bool;
    fn into_inner(self) -> u32;
}

impl<R: Relax + Default> GuardedLock for SpinLock<u32, R> {
    type Guard<'a>
        = SpinLockGuard<'a, u32, R>
    where
        R: 'a;
    fn new(value: u32) -> Self {
        SpinLock::with_relax(value, R::default())
    }
    fn lock(&self) -> Self::Guard<'_> {
        SpinLock::lock(self)
    }
    fn try_lock(&self) -> Option<Self::Guard<'_>> {
        SpinLock::try_lock(self)
    }
    fn is_locked(&self) -> bool {
        SpinLock::is_locked(self)
    }
    fn into_inner(self) -> u32 {
        SpinLock::into_inner(self)
    }
}

#[cfg(feature = "lock_api")]
impl<R: Relax> GuardedLock for lock_api::Mutex<RawSpinLock<R>, u32> {
    type Guard<'a>
        = lock_api::MutexGuard<'a, RawSpinLock<R>, u32>
    where
        R: 'a;
    fn new(value: u32) -> Self {
        lock_api::Mutex::new(value)
    }
    fn lock(&self) -> Self::Guard<'_> {
        lock_api::Mutex::lock(self)
    }
    fn try_lock(&self) -> Option<Self::Guard<'_>> {
        lock_api::Mutex::try_lock(self)
    }
    fn is_locked(&self) -> bool {
        lock_api::Mutex::is_locked(self)
    }
    fn into_inner(self) -> u32 {
        lock_api::Mutex::into_inner(self)
    }
}

/// Runs `ops` on locks of type `L` and on the model, comparing after every step.
fn check_guarded<L: GuardedLock>(initial: &[u32], ops: &[Op]) -> Result<(), TestCaseError> {
    let locks: Vec<L> = initial.iter().map(|&v| L::new(v)).collect();
    let mut guards: Vec<Option<L::Guard<'_>>> = (0..locks.len()).map(|_| None).collect();
    let mut model = Model::new(initial);

    for (step, &op) in ops.iter().enumerate() {
        match op {
            Op::Lock(i) => {
                if model.held[i] {
                    prop_assert!(
                        locks[i].try_lock().is_none(),
                        "step {step}: lock {i} is held"
                    );
                } else {
                    guards[i] = Some(locks[i].lock());
                    model.held[i] = true;
                }
            }
            Op::TryLock(i) => {
                let taken = locks[i].try_lock();
                prop_assert_eq!(
                    taken.is_some(),
                    !model.held[i],
                    "step {}: try_lock {}",
                    step,
                    i
                );
                if let Some(guard) = taken {
                    guards[i] = Some(guard);
                    model.held[i] = true;
                }
            }
            Op::Unlock(i) => {
                prop_assert_eq!(guards[i].is_some(), model.held[i]);
                guards[i] = None;
                model.held[i] = false;
            }
            Op::Write(i, value) => {
                match &mut guards[i] {
                    Some(guard) => **guard = value,
                    None => *locks[i].lock() = value,
                }
                model.values[i] = value;
            }
            Op::Read(i) => {
                let seen = match &guards[i] {
                    Some(guard) => **guard,
                    None => *locks[i].lock(),
                };
                prop_assert_eq!(seen, model.values[i], "step {}: read {}", step, i);
            }
            Op::IsLocked(i) => {
                prop_assert_eq!(locks[i].is_locked(), model.held[i]);
            }
        }
        for (i, lock) in locks.iter().enumerate() {
            prop_assert_eq!(
                lock.is_locked(),
                model.held[i],
                "step {}: {:?}, lock {}",
                step,
                op,
                i
            );
        }
    }

    drop(guards);
    for (i, lock) in locks.into_iter().enumerate() {
        prop_assert!(!lock.is_locked());
        prop_assert_eq!(
            lock.into_inner(),
            model.values[i],
            "final value of lock {}",
            i
        );
    }
    Ok(())
}

/// Runs `ops` on bare `RawSpinLock`s, where only the held flags are state; `Write`/`Read` check
/// that a momentary lock / unlock of a free lock leaves it free and of a held lock is refused.
fn check_raw<R: Relax>(ops: &[Op]) -> Result<(), TestCaseError> {
    let raws: Vec<RawSpinLock<R>> = (0..LOCKS).map(|_| RawSpinLock::new()).collect();
    let mut held = [false; LOCKS];

    for (step, &op) in ops.iter().enumerate() {
        match op {
            Op::Lock(i) => {
                if held[i] {
                    prop_assert!(!raws[i].try_lock(), "step {step}: lock {i} is held");
                } else {
                    raws[i].lock();
                    held[i] = true;
                }
            }
            Op::TryLock(i) => {
                let taken = raws[i].try_lock();
                prop_assert_eq!(taken, !held[i], "step {}: try_lock {}", step, i);
                held[i] |= taken;
            }
            Op::Unlock(i) => {
                if held[i] {
                    // SAFETY: the model says this sequence took lock `i` and has not released it.
                    unsafe { raws[i].unlock() };
                    held[i] = false;
                }
            }
            Op::Write(i, _) | Op::Read(i) => {
                if held[i] {
                    prop_assert!(!raws[i].try_lock());
                } else {
                    raws[i].lock();
                    prop_assert!(raws[i].is_locked());
                    // SAFETY: taken just above.
                    unsafe { raws[i].unlock() };
                }
            }
            Op::IsLocked(i) => prop_assert_eq!(raws[i].is_locked(), held[i]),
        }
        for (i, raw) in raws.iter().enumerate() {
            prop_assert_eq!(
                raw.is_locked(),
                held[i],
                "step {}: {:?}, lock {}",
                step,
                op,
                i
            );
        }
    }

    for (i, raw) in raws.iter().enumerate() {
        if held[i] {
            // SAFETY: still held by this sequence, per the model.
            unsafe { raw.unlock() };
        }
        prop_assert!(!raw.is_locked());
    }
    Ok(())
}

/// Modest under Miri, which interprets every step; default (256 cases) otherwise. No failure
/// files under Miri: its isolation forbids the file system.
fn config() -> ProptestConfig {
    if cfg!(miri) {
        ProptestConfig {
            cases: 4,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    } else {
        ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn spin_lock_matches_model(initial in prop::array::uniform3(any::<u32>()), ops in ops()) {
        check_guarded::<SpinLock<u32>>(&initial, &ops)?;
    }

    #[cfg(feature = "std")]
    #[test]
    fn spin_lock_yield_matches_model(initial in prop::array::uniform3(any::<u32>()), ops in ops()) {
        check_guarded::<SpinLock<u32, Yield>>(&initial, &ops)?;
    }

    #[cfg(feature = "lock_api")]
    #[test]
    fn lock_api_mutex_matches_model(initial in prop::array::uniform3(any::<u32>()), ops in ops()) {
        check_guarded::<lock_api::Mutex<RawSpinLock<Spin>, u32>>(&initial, &ops)?;
    }

    #[test]
    fn raw_spin_lock_matches_model(ops in ops()) {
        check_raw::<fencelock::Backoff>(&ops)?;
        check_raw::<fencelock::Adaptive>(&ops)?;
    }
}
