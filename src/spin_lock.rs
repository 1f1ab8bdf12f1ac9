//! `SpinLock<T, R>`: a [`RawSpinLock`] and the data it protects.
//!
//! Low best-case latency (one CAS to take, one store to give back), unbounded worst case (a waiter
//! spins for as long as the holder holds). Pick the waiting strategy `R` for the machine: see
//! [`crate::relax`].

use core::fmt;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};

use crate::lockdep::{self, CallSite};
use crate::primitive::{const_fn_unless_loom, MutPtr, UnsafeCell};
use crate::raw_spin_lock::RawSpinLock;
use crate::relax::{Backoff, Relax};

/// A mutual-exclusion lock that waits by spinning: test-and-test-and-set on one byte.
///
/// `SpinLock<T>` waits with [`Backoff`]; `SpinLock<T, Spin>` and `SpinLock<T, Yield>` pick another
/// [`Relax`] strategy. `size_of::<SpinLock<()>>() == 1`.
///
/// There is no poisoning: a guard dropped while its thread panics releases the lock like any
/// other drop, and the next holder sees the data as the panicking thread left it.
///
/// Under `cfg(loom)` the lock is built from loom's atomics and cells, so loom models of code that
/// uses it see every access; `new` is then not `const`.
///
/// # Example
///
/// ```
/// use fencelock::SpinLock;
/// use std::sync::Arc;
/// use std::thread;
///
/// let units = Arc::new(SpinLock::new(0_u32));
/// let handles: Vec<_> = (0..4)
///     .map(|_| {
///         let units = Arc::clone(&units);
///         thread::spawn(move || *units.lock() += 1)
///     })
///     .collect();
/// for handle in handles {
///     handle.join().unwrap();
/// }
/// assert_eq!(*units.lock(), 4);
/// ```
pub struct SpinLock<T: ?Sized, R = Backoff> {
    raw: RawSpinLock<R>,
    data: UnsafeCell<T>,
}

// SAFETY: a `SpinLock` hands out access to `T` to one thread at a time, so sharing the lock
// shares no `&T` between threads at once; it does move `T`'s use between threads, hence
// `T: Send`, exactly as `std::sync::Mutex`.
unsafe impl<T: ?Sized + Send, R> Sync for SpinLock<T, R> {}
// SAFETY: owning the lock is owning the `T`.
unsafe impl<T: ?Sized + Send, R> Send for SpinLock<T, R> {}

impl<T> SpinLock<T> {
    const_fn_unless_loom! {
        /// A new, unlocked lock around `value`, waiting with [`Backoff`].
        ///
        /// ```
        /// use fencelock::SpinLock;
        ///
        /// static ORDERS: SpinLock<u64> = SpinLock::new(0);
        /// *ORDERS.lock() += 1;
        /// assert_eq!(*ORDERS.lock(), 1);
        /// ```
        #[inline]
        pub fn new(value: T) -> Self {
            Self::with_relax(value, Backoff)
        }
    }
}

impl<T, R> SpinLock<T, R> {
    const_fn_unless_loom! {
        /// A new, unlocked lock around `value`, waiting with strategy `R`.
        ///
        /// ```
        /// use fencelock::{SpinLock, Yield};
        ///
        /// let lock = SpinLock::with_relax([0_u8; 4], Yield);
        /// lock.lock()[1] = 7;
        /// assert_eq!(lock.into_inner(), [0, 7, 0, 0]);
        /// ```
        #[inline]
        pub fn with_relax(value: T, relax: R) -> Self {
            // The strategy lives in the type; the value carries no state worth keeping.
            core::mem::forget(relax);
            Self { raw: RawSpinLock::new(), data: UnsafeCell::new(value) }
        }
    }

    /// Consumes the lock and returns the data. No locking is needed: owning the lock proves
    /// nobody else holds it.
    #[inline]
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized, R: Relax> SpinLock<T, R> {
    /// Takes the lock, spinning until it is free, and returns a guard that releases it on drop.
    ///
    /// Taking a lock this thread already holds spins forever: the lock is not reentrant.
    ///
    /// ```
    /// use fencelock::SpinLock;
    ///
    /// let book = SpinLock::new(vec![101, 102]);
    /// let unit = book.lock().pop();
    /// assert_eq!(unit, Some(102));
    /// ```
    ///
    /// With the `lockdep` feature, taking a lock that comes before one this thread already holds
    /// in the global lock order (or that it holds already) panics, naming both call sites: see
    /// [`lock_all`](crate::lock_all) for taking several locks.
    #[inline]
    #[cfg_attr(all(feature = "lockdep", not(loom)), track_caller)]
    pub fn lock(&self) -> SpinLockGuard<'_, T, R> {
        self.lock_at(lockdep::call_site())
    }

    /// [`lock`](Self::lock), on behalf of a caller at `site` (the lock-order checks name it).
    #[inline]
    pub(crate) fn lock_at(&self, site: CallSite) -> SpinLockGuard<'_, T, R> {
        lockdep::before_lock(self.order_key(), site);
        self.raw.lock();
        lockdep::acquired(self.order_key(), site);
        // SAFETY: the lock is held, as required.
        unsafe { self.guard() }
    }
}

impl<T: ?Sized, R> SpinLock<T, R> {
    /// Takes the lock if it is free, without waiting.
    ///
    /// ```
    /// use fencelock::SpinLock;
    ///
    /// let lock = SpinLock::new(1);
    /// let held = lock.lock();
    /// assert!(lock.try_lock().is_none());
    /// drop(held);
    /// assert_eq!(lock.try_lock().map(|guard| *guard), Some(1));
    /// ```
    #[inline]
    #[cfg_attr(all(feature = "lockdep", not(loom)), track_caller)]
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T, R>> {
        self.try_lock_at(lockdep::call_site())
    }

    /// [`try_lock`](Self::try_lock), on behalf of a caller at `site`.
    #[inline]
    pub(crate) fn try_lock_at(&self, site: CallSite) -> Option<SpinLockGuard<'_, T, R>> {
        if self.raw.try_lock() {
            lockdep::acquired(self.order_key(), site);
            // SAFETY: the lock is held, as required.
            Some(unsafe { self.guard() })
        } else {
            None
        }
    }

    /// This lock's place in the global lock order: the address of its state byte, which no other
    /// live lock shares (the data's address could: a lock may sit at offset 0 of another's data).
    #[inline]
    pub(crate) fn order_key(&self) -> usize {
        order_key(&self.raw)
    }

    /// Whether the lock is held right now: a snapshot, for diagnostics only.
    #[inline]
    pub fn is_locked(&self) -> bool {
        self.raw.is_locked()
    }

    /// The data, through `&mut self`: no locking needed, the borrow proves exclusive access.
    ///
    /// ```
    /// use fencelock::SpinLock;
    ///
    /// let mut lock = SpinLock::new(1);
    /// *lock.get_mut() += 1;
    /// assert_eq!(*lock.lock(), 2);
    /// ```
    #[inline]
    pub fn get_mut(&mut self) -> &mut T {
        // SAFETY: `&mut self` excludes every guard, so this is the only access to the data; the
        // pointer is valid for as long as `self` is borrowed.
        self.data.with_mut(|data| unsafe { &mut *data })
    }

    /// Builds the guard for a lock this thread has just taken.
    ///
    /// # Safety
    ///
    /// The lock must be held by the caller, who hands the release of it to the guard.
    #[inline]
    unsafe fn guard(&self) -> SpinLockGuard<'_, T, R> {
        SpinLockGuard {
            raw: &self.raw,
            data: ManuallyDrop::new(self.data.get_mut()),
        }
    }
}

impl<T: Default, R> Default for SpinLock<T, R> {
    fn default() -> Self {
        Self {
            raw: RawSpinLock::new(),
            data: UnsafeCell::new(T::default()),
        }
    }
}

/// For the default strategy only, so that `SpinLock::from(value)` infers as `SpinLock::new` does.
impl<T> From<T> for SpinLock<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl<T: ?Sized + fmt::Debug, R> fmt::Debug for SpinLock<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("SpinLock");
        match self.try_lock() {
            Some(guard) => d.field("data", &&*guard),
            None => d.field("data", &format_args!("<locked>")),
        };
        d.finish_non_exhaustive()
    }
}

/// The place of the lock whose state is `raw` in the global lock order.
#[inline]
fn order_key<R>(raw: &RawSpinLock<R>) -> usize {
    (raw as *const RawSpinLock<R>).addr()
}

/// Proof that a [`SpinLock`] is held, and the way to its data. Dropping it releases the lock.
///
/// ```
/// use fencelock::SpinLock;
///
/// let lock = SpinLock::new(String::from("AAPL"));
/// {
///     let mut symbol = lock.lock();
///     symbol.push_str(":NASDAQ");
/// } // released here
/// assert_eq!(*lock.lock(), "AAPL:NASDAQ");
/// ```
#[must_use = "if unused the SpinLock will immediately unlock"]
pub struct SpinLockGuard<'a, T: ?Sized, R = Backoff> {
    raw: &'a RawSpinLock<R>,
    /// The access to the data, alive exactly while the lock is held: dropped by hand in `drop`,
    /// before the unlock (under loom it is the tracked access that race detection watches).
    data: ManuallyDrop<MutPtr<T>>,
}

// SAFETY: the guard gives `&T` to whoever shares it, so sharing it needs `T: Sync`.
unsafe impl<T: ?Sized + Sync, R> Sync for SpinLockGuard<'_, T, R> {}
// SAFETY: the guard gives `&mut T`, so moving it to another thread needs `T: Send`; the lock
// itself may be released from any thread.
unsafe impl<T: ?Sized + Send, R> Send for SpinLockGuard<'_, T, R> {}

impl<T: ?Sized, R> Deref for SpinLockGuard<'_, T, R> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard exists, so the lock is held and nobody else reaches the data; the
        // reference lives no longer than the guard.
        self.data.with(|data| unsafe { &*data })
    }
}

impl<T: ?Sized, R> DerefMut for SpinLockGuard<'_, T, R> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference through the guard.
        self.data.with(|data| unsafe { &mut *data })
    }
}

impl<T: ?Sized, R> Drop for SpinLockGuard<'_, T, R> {
    #[inline]
    fn drop(&mut self) {
        lockdep::released(order_key(self.raw));
        // SAFETY: `data` is dropped once, here, and never used again: the access ends before the
        // lock is released.
        unsafe { ManuallyDrop::drop(&mut self.data) };
        // SAFETY: the guard's existence proves the lock is held by us.
        unsafe { self.raw.unlock() };
    }
}

impl<T: ?Sized + fmt::Debug, R> fmt::Debug for SpinLockGuard<'_, T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Display, R> fmt::Display for SpinLockGuard<'_, T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::Spin;

    #[test]
    fn one_byte_of_state() {
        assert_eq!(core::mem::size_of::<SpinLock<()>>(), 1);
        assert_eq!(core::mem::size_of::<SpinLock<(), Spin>>(), 1);
    }

    #[test]
    fn debug_shows_data_or_locked() {
        let lock = SpinLock::new(3);
        assert_eq!(format!("{lock:?}"), "SpinLock { data: 3, .. }");
        let _held = lock.lock();
        assert_eq!(format!("{lock:?}"), "SpinLock { data: <locked>, .. }");
    }
}
