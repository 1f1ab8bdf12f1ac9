//! Lock-order checking (the `lockdep` feature): catches an ABBA deadlock the first time either
//! order runs, in a test, instead of the day both run at once in production.
//!
//! Every lock in the crate has a place in one global order — its address — and
//! [`lock_all`](crate::lock_all) always takes locks in that order. With the feature on, each thread
//! records the [`SpinLock`](crate::SpinLock)s it holds and where it took them; a blocking `lock()`
//! of a lock that comes *before* one already held (or that is already held) panics, naming both
//! call sites. Any ABBA pair of code paths has one of the two going against the order, so it
//! panics as soon as it runs, even in a single-threaded test. `try_lock` never blocks and is never
//! refused, but the lock it takes is recorded like any other.
//!
//! With the feature off (the default) every hook below is an empty `#[inline(always)]` function
//! of a zero-sized `CallSite` and `lock()` carries no caller location: the checks cost nothing.
//!
//! The rule is the address order itself, not the orders observed so far: it is stricter than a
//! deadlock detector. Nesting in a fixed hierarchy (always the outer lock, then the inner one) is
//! deadlock-free, yet it is reported whenever the inner lock sits at a lower address; take such
//! locks together with `lock_all`, or leave the feature off for that code.
//!
//! Limits: only [`SpinLock`](crate::SpinLock)'s guards are tracked (not `RawSpinLock` used by
//! hand); a guard dropped on another thread than the one that took it, or leaked with
//! `mem::forget`, leaves its record behind on the taking thread, which may then report a lock it no
//! longer holds. Under `cfg(loom)` the feature does nothing (loom threads share one OS thread's
//! thread-locals).

#[cfg(all(feature = "lockdep", not(loom)))]
pub(crate) use self::on::*;

#[cfg(not(all(feature = "lockdep", not(loom))))]
pub(crate) use self::off::*;

#[cfg(all(feature = "lockdep", not(loom)))]
mod on {
    use core::panic::Location;
    use std::cell::RefCell;

    /// Where a lock was asked for: the caller of `lock()`, `try_lock()` or `lock_all()`.
    pub(crate) type CallSite = &'static Location<'static>;

    /// One lock this thread holds, and where it took it.
    struct Held {
        lock: usize,
        site: CallSite,
    }

    std::thread_local! {
        /// The locks this thread holds, in the order it took them.
        static HELD: RefCell<Vec<Held>> = const { RefCell::new(Vec::new()) };
    }

    /// The location of the nearest caller that is not `#[track_caller]`.
    #[inline(always)]
    #[track_caller]
    pub(crate) fn call_site() -> CallSite {
        Location::caller()
    }

    /// Before a blocking lock of `lock`: panics if this thread holds `lock` already, or a lock
    /// that comes after it in the global order.
    #[track_caller]
    pub(crate) fn before_lock(lock: usize, site: CallSite) {
        let conflict = HELD.with_borrow(|held| {
            held.iter()
                .filter(|h| h.lock >= lock)
                .max_by_key(|h| h.lock)
                .map(|h| (h.lock == lock, h.site))
        });
        match conflict {
            None => {}
            Some((true, held_at)) => panic!(
                "lockdep: lock {lock:#x} taken at {site} is already held by this thread \
                 (taken at {held_at}): that would spin forever"
            ),
            Some((false, held_at)) => panic!(
                "lockdep: lock {lock:#x} taken at {site} against the global lock order: this \
                 thread holds a later lock, taken at {held_at}. Another thread taking them the \
                 other way round deadlocks; take them together with fencelock::lock_all"
            ),
        }
    }

    /// After `lock` was taken at `site`.
    pub(crate) fn acquired(lock: usize, site: CallSite) {
        HELD.with_borrow_mut(|held| held.push(Held { lock, site }));
    }

    /// When `lock` is released (by its guard's drop).
    pub(crate) fn released(lock: usize) {
        // `try_with`: a guard may drop while the thread's locals are being torn down.
        let _ = HELD.try_with(|held| {
            let mut held = held.borrow_mut();
            if let Some(at) = held.iter().rposition(|h| h.lock == lock) {
                held.remove(at);
            }
        });
    }
}

#[cfg(not(all(feature = "lockdep", not(loom))))]
mod off {
    /// Nothing: without `lockdep` no call site is recorded.
    #[derive(Clone, Copy)]
    pub(crate) struct CallSite;

    #[inline(always)]
    pub(crate) fn call_site() -> CallSite {
        CallSite
    }

    #[inline(always)]
    pub(crate) fn before_lock(_lock: usize, _site: CallSite) {}

    #[inline(always)]
    pub(crate) fn acquired(_lock: usize, _site: CallSite) {}

    #[inline(always)]
    pub(crate) fn released(_lock: usize) {}
}
