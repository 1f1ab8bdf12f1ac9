//! The one place that chooses between loom and the real machine.
//!
//! Every other module takes its atomics, its `UnsafeCell`, its spin hint and its yield from here.
//! Built with `cfg(loom)` (by `loom-tests/build.rs`, or by a user's `RUSTFLAGS="--cfg loom"`), they
//! are loom's, so loom sees every access the crate makes; otherwise they are `core`'s and `std`'s.
//!
//! The `UnsafeCell` here has loom's interface on both sides: shared data is reached through a
//! [`MutPtr`] that stays alive for as long as the access does, which is what lets loom report two
//! overlapping accesses as a data race.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Loom needs `std`, so `alloc` is there too (for [`Access`]), even when `std` is off.
#[cfg(loom)]
extern crate alloc;

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU8, Ordering};

/// Only targets with 64-bit atomics have it (not, for instance, `thumbv7em`): what needs it is
/// gated on `target_has_atomic = "64"`.
#[cfg(all(not(loom), target_has_atomic = "64"))]
pub(crate) use core::sync::atomic::AtomicU64;

#[cfg(loom)]
pub(crate) use loom::cell::{MutPtr, UnsafeCell};

/// Shared ownership across threads (the lock table's guards of one stripe named by several keys).
#[cfg(all(loom, feature = "std"))]
pub(crate) use loom::sync::Arc;

#[cfg(all(not(loom), feature = "std"))]
pub(crate) use std::sync::Arc;

#[cfg(not(loom))]
pub(crate) use self::cell::{MutPtr, UnsafeCell};

/// The crate's one relax hook: every wait loop calls it between two looks at shared state.
///
/// On the real machine it runs the caller's strategy. Under loom it is one
/// `loom::thread::yield_now()` whatever the strategy, because loom needs a yield in every spin loop
/// and spinning more than once per look only multiplies the interleavings it must explore.
#[inline]
#[cfg_attr(loom, allow(clippy::extra_unused_type_parameters))]
pub(crate) fn relax<R: crate::Relax>(attempt: u32) {
    #[cfg(loom)]
    {
        let _ = attempt;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    R::relax(attempt);
}

/// Tells the processor we are spinning (a `pause` on x86), or yields to loom's scheduler.
#[inline]
pub(crate) fn spin_loop_hint() {
    #[cfg(loom)]
    loom::hint::spin_loop();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

/// Gives up the rest of this thread's time slice (or yields to loom's scheduler).
#[cfg(feature = "std")]
#[inline]
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// Parks the calling thread on `key` (an address the caller owns) for at most `sleep`, unless
/// `validate` — called under parking_lot_core's queue lock, so that no `unpark_all(key)` can slip
/// between it and the sleep — returns `false`. Returns `true` when woken by `unpark_all`; `false`
/// when `sleep` has passed, or at once if `validate` failed.
///
/// `validate` must not panic, nor call into the parking functions.
///
/// Under loom there is no parking and no time: a park is one `yield_now`, so a waiter is a
/// spinner that loom schedules like any other (and `unpark_all` has nothing to do).
#[cfg(all(feature = "std", not(loom)))]
#[inline]
pub(crate) fn park(
    key: usize,
    validate: impl FnOnce() -> bool,
    sleep: core::time::Duration,
) -> bool {
    // `None` when `now + sleep` does not fit in an `Instant`: such a sleep is "until woken".
    let until = std::time::Instant::now().checked_add(sleep);
    // SAFETY: `key` is the address of an atomic in the caller's lock, so no other primitive parks
    // on it; `validate` neither panics nor calls parking_lot_core, and the two other callbacks
    // do nothing.
    let parked = unsafe {
        parking_lot_core::park(
            key,
            validate,
            || {},
            |_, _| {},
            parking_lot_core::DEFAULT_PARK_TOKEN,
            until,
        )
    };
    parked.is_unparked()
}

#[cfg(all(feature = "std", loom))]
#[inline]
pub(crate) fn park(
    key: usize,
    validate: impl FnOnce() -> bool,
    sleep: core::time::Duration,
) -> bool {
    let _ = (key, sleep);
    if validate() {
        loom::thread::yield_now();
    }
    false
}

/// Wakes every thread parked on `key`.
#[cfg(all(feature = "std", not(loom)))]
#[inline]
pub(crate) fn unpark_all(key: usize) {
    // SAFETY: `key` is the address of an atomic in the caller's lock (see `park`).
    unsafe { parking_lot_core::unpark_all(key, parking_lot_core::DEFAULT_UNPARK_TOKEN) };
}

#[cfg(all(feature = "std", loom))]
#[inline]
pub(crate) fn unpark_all(key: usize) {
    let _ = key;
}

/// The end of a timed wait (`try_lock_for`, `try_lock_until`), built only once the wait has begun
/// (the uncontended path never reads the clock) and asked once per look at the lock.
///
/// On the real machine it is an `Instant`: `None` when `now + timeout` does not fit in one, and
/// such a wait never ends by itself, as in parking_lot.
#[cfg(all(feature = "std", not(loom)))]
pub(crate) struct Deadline(Option<std::time::Instant>);

#[cfg(all(feature = "std", not(loom)))]
impl Deadline {
    /// Ends at `instant`.
    #[inline]
    pub(crate) fn at(instant: std::time::Instant) -> Self {
        Self(Some(instant))
    }

    /// Ends `timeout` from now: the one clock read that starts a wait.
    #[inline]
    pub(crate) fn after(timeout: core::time::Duration) -> Self {
        Self(std::time::Instant::now().checked_add(timeout))
    }

    /// Whether the deadline has passed: one clock read.
    #[inline]
    pub(crate) fn passed(&mut self) -> bool {
        self.0.is_some_and(|end| std::time::Instant::now() >= end)
    }
}

/// Under loom there is no clock: a timed wait that may wait at all looks at the lock
/// [`LOOM_TIMED_LOOKS`] times and then gives up, so models explore both a wait that succeeds and
/// one that times out, and every path stays finite. A zero timeout (or a deadline already past)
/// gives up at the first look, as on the real machine.
#[cfg(all(feature = "std", loom))]
pub(crate) struct Deadline {
    looks_left: u32,
}

/// Looks a timed wait makes under loom before it gives up.
#[cfg(all(feature = "std", loom))]
const LOOM_TIMED_LOOKS: u32 = 2;

#[cfg(all(feature = "std", loom))]
impl Deadline {
    pub(crate) fn at(instant: std::time::Instant) -> Self {
        let past = instant <= std::time::Instant::now();
        Self {
            looks_left: if past { 0 } else { LOOM_TIMED_LOOKS },
        }
    }

    pub(crate) fn after(timeout: core::time::Duration) -> Self {
        Self {
            looks_left: if timeout.is_zero() {
                0
            } else {
                LOOM_TIMED_LOOKS
            },
        }
    }

    pub(crate) fn passed(&mut self) -> bool {
        match self.looks_left.checked_sub(1) {
            Some(left) => {
                self.looks_left = left;
                false
            }
            None => true,
        }
    }
}

/// Ends an access before its owner goes: under loom, loom stops tracking it; on the real machine
/// there is nothing to end.
#[inline]
#[cfg_attr(not(loom), allow(clippy::drop_non_drop))]
pub(crate) fn end_access<T: ?Sized>(access: MutPtr<T>) {
    drop(access);
}

/// The tracked access of a guard whose data type has been mapped away (`SpinLockGuard::map`):
/// under loom it keeps loom's `MutPtr` to the whole cell alive, type-erased, so the critical
/// section still ends only when the mapped guard drops; on the real machine it is nothing.
#[cfg(loom)]
pub(crate) struct Access<'a>(#[allow(dead_code)] alloc::boxed::Box<dyn Erased + 'a>);

#[cfg(loom)]
trait Erased {}

#[cfg(loom)]
impl<T: ?Sized> Erased for MutPtr<T> {}

#[cfg(loom)]
impl<'a> Access<'a> {
    /// Keeps `access` alive until this value drops.
    #[inline]
    pub(crate) fn new<T: ?Sized + 'a>(access: MutPtr<T>) -> Self {
        Self(alloc::boxed::Box::new(access))
    }
}

#[cfg(not(loom))]
pub(crate) struct Access<'a>(core::marker::PhantomData<&'a ()>);

#[cfg(not(loom))]
impl Access<'_> {
    /// Nothing to keep: the real machine tracks no accesses.
    #[inline]
    pub(crate) fn new<T: ?Sized>(access: MutPtr<T>) -> Self {
        let _ = access;
        Self(core::marker::PhantomData)
    }
}

/// Declares a `const fn` that stays `const` on the real machine and is a plain `fn` under loom,
/// whose atomics cannot be built in a const context.
macro_rules! const_fn_unless_loom {
    ($(#[$attr:meta])* $vis:vis fn $($rest:tt)*) => {
        #[cfg(not(loom))]
        $(#[$attr])* $vis const fn $($rest)*
        #[cfg(loom)]
        $(#[$attr])* $vis fn $($rest)*
    };
}
pub(crate) use const_fn_unless_loom;

/// A `core::cell::UnsafeCell` behind loom's `with_mut`/`get_mut` interface; all of it compiles
/// to plain pointer accesses.
#[cfg(not(loom))]
mod cell {
    /// `core::cell::UnsafeCell` with loom's interface.
    #[repr(transparent)]
    pub(crate) struct UnsafeCell<T: ?Sized>(core::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        #[inline]
        pub(crate) const fn new(value: T) -> Self {
            Self(core::cell::UnsafeCell::new(value))
        }

        #[inline]
        pub(crate) fn into_inner(self) -> T {
            self.0.into_inner()
        }
    }

    impl<T: ?Sized> UnsafeCell<T> {
        /// Runs `f` with a pointer that may be written through, for the duration of `f`.
        #[inline]
        pub(crate) fn with_mut<F: FnOnce(*mut T) -> U, U>(&self, f: F) -> U {
            f(self.0.get())
        }

        /// Runs `f` with a pointer that may only be read through, for the duration of `f`.
        #[cfg_attr(not(feature = "std"), allow(dead_code))]
        #[inline]
        pub(crate) fn with<F: FnOnce(*const T) -> U, U>(&self, f: F) -> U {
            f(self.0.get())
        }

        /// The pointer to the contents, untracked (loom's cell has no such method, so callers are
        /// `cfg(not(loom))`).
        #[inline]
        pub(crate) const fn get(&self) -> *mut T {
            self.0.get()
        }

        /// A pointer for an access that lasts as long as the returned value.
        #[inline]
        pub(crate) fn get_mut(&self) -> MutPtr<T> {
            MutPtr(self.0.get())
        }
    }

    /// A pointer to the cell's contents, valid while the cell lives (loom tracks it as one access).
    pub(crate) struct MutPtr<T: ?Sized>(*mut T);

    impl<T: ?Sized> MutPtr<T> {
        /// Runs `f` with the raw pointer.
        #[inline]
        pub(crate) fn with<F: FnOnce(*mut T) -> U, U>(&self, f: F) -> U {
            f(self.0)
        }
    }
}
