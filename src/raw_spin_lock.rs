//! The spin lock's protocol: one byte, one compare-and-swap to take it, one release store to give
//! it back.
//!
//! This is the seed's `while (!compare_and_swap(&isLock, 0, 1)) {}` with the two things the
//! seed's comment asks for made exact: waiting reads the byte instead of hammering it with CAS
//! (test-and-test-and-set), and the unlock is *fenced* — a `Release` store, which is precisely the
//! barrier that publishes the critical section's writes to the next holder, and nothing stronger.

use core::marker::PhantomData;

use crate::primitive::{self, const_fn_unless_loom, AtomicU8, Ordering::*};
use crate::relax::{Backoff, Relax};

/// Nobody holds the lock.
const UNLOCKED: u8 = 0;
/// Somebody holds the lock. Waiters are not recorded: they spin, and nobody needs waking.
const LOCKED: u8 = 1;

/// A raw spin lock: mutual exclusion without data, for building locks on.
///
/// Most code wants [`SpinLock`](crate::SpinLock), which pairs this with the data it protects.
/// With the `lock_api` feature (on by default) this type implements [`lock_api::RawMutex`], so
/// `lock_api::Mutex<RawSpinLock, T>` works too.
///
/// Waiting is test-and-test-and-set: after one failed compare-and-swap, waiters read the byte
/// (which keeps its cache line shared among them) and call `R::relax` between reads, and only try
/// the compare-and-swap again once the lock looks free. Spinning is unbounded: a holder that never
/// unlocks keeps waiters spinning forever. There is no fairness: a releasing thread may take the
/// lock straight back.
///
/// # Example
///
/// ```
/// use fencelock::RawSpinLock;
///
/// let raw: RawSpinLock = RawSpinLock::new();
/// raw.lock();
/// assert!(!raw.try_lock());
/// // SAFETY: this thread took the lock just above.
/// unsafe { raw.unlock() };
/// assert!(!raw.is_locked());
/// ```
pub struct RawSpinLock<R = Backoff> {
    /// | value      | meaning                           |
    /// |------------|-----------------------------------|
    /// | `UNLOCKED` | free: a CAS to `LOCKED` takes it  |
    /// | `LOCKED`   | held: only the holder may store   |
    state: AtomicU8,
    /// The waiting strategy lives in the type only: `fn() -> R` keeps the lock `Send + Sync`
    /// whatever `R` is.
    relax: PhantomData<fn() -> R>,
}

impl<R> RawSpinLock<R> {
    const_fn_unless_loom! {
        /// A new, unlocked lock.
        #[inline]
        #[must_use]
        pub fn new() -> Self {
            Self { state: AtomicU8::new(UNLOCKED), relax: PhantomData }
        }
    }

    /// Tries to take the lock without waiting; `true` when this call took it.
    #[inline]
    #[must_use = "if the lock was taken, it must be unlocked"]
    pub fn try_lock(&self) -> bool {
        // Acquire on success pairs with the Release store in `unlock`: everything the previous
        // holder wrote before unlocking happens-before our critical section. On failure we take
        // nothing and read nothing else, so Relaxed.
        self.state
            .compare_exchange(UNLOCKED, LOCKED, Acquire, Relaxed)
            .is_ok()
    }

    /// Releases the lock.
    ///
    /// # Safety
    ///
    /// The lock must be held, and the caller must be the one that holds it (it took the lock, or
    /// was handed that right by whoever did).
    #[inline]
    pub unsafe fn unlock(&self) {
        // The fenced unlock. Release pairs with the Acquire CAS in `try_lock` (which `lock` also
        // goes through): the critical section's writes cannot be reordered after this store, so
        // the next holder sees them all. One plain store suffices because only the holder writes
        // while the byte is LOCKED; no read-modify-write is needed.
        self.state.store(UNLOCKED, Release);
    }

    /// Whether the lock is held right now. A snapshot, stale as soon as it returns: use it for
    /// diagnostics and heuristics, never to decide that a critical section may start.
    #[inline]
    pub fn is_locked(&self) -> bool {
        // Relaxed: the answer orders nothing; whoever acts on it takes the lock with `try_lock`.
        self.state.load(Relaxed) == LOCKED
    }
}

impl<R: Relax> RawSpinLock<R> {
    /// Takes the lock, spinning (as `R` says) until it is free.
    #[inline]
    pub fn lock(&self) {
        if !self.try_lock() {
            self.lock_contended();
        }
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        let mut attempt = 0_u32;
        loop {
            // Wait with plain loads, to be easier on the caches: a failed CAS takes the line
            // exclusive and bounces it between waiters; loads let them share it.
            while self.is_locked() {
                primitive::relax::<R>(attempt);
                attempt = attempt.saturating_add(1);
            }
            if self.try_lock() {
                return;
            }
        }
    }
}

impl<R> Default for RawSpinLock<R> {
    #[inline]
    fn default() -> Self {
        Self::new()
    }
}

impl<R> core::fmt::Debug for RawSpinLock<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RawSpinLock")
            .field("locked", &self.is_locked())
            .finish()
    }
}

// SAFETY: `try_lock` and `lock` succeed only by swinging the byte from UNLOCKED to LOCKED with an
// Acquire CAS, so at most one context holds the lock; `unlock` is a Release store. Guards carry no
// state and may be unlocked on another thread (nothing is tied to the locking thread). `INIT` is
// unlocked. Not available under loom, whose atomics cannot be built in a `const`.
#[cfg(all(feature = "lock_api", not(loom)))]
unsafe impl<R: Relax> lock_api::RawMutex for RawSpinLock<R> {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self::new();

    type Guard = lock_api::GuardSend;

    #[inline]
    fn lock(&self) -> Self::Guard {
        RawSpinLock::lock(self);
        lock_api::GuardSend::new()
    }

    #[inline]
    fn try_lock(&self) -> Option<Self::Guard> {
        RawSpinLock::try_lock(self).then(lock_api::GuardSend::new)
    }

    #[inline]
    unsafe fn unlock(&self, _guard: Self::Guard) {
        // SAFETY: lock_api hands us the guard of a successful lock: the lock is held, as required.
        unsafe { RawSpinLock::unlock(self) }
    }

    #[inline]
    fn is_locked(&self) -> bool {
        RawSpinLock::is_locked(self)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn one_byte() {
        assert_eq!(core::mem::size_of::<RawSpinLock>(), 1);
    }

    #[test]
    fn try_lock_fails_while_held_and_succeeds_after_unlock() {
        let raw: RawSpinLock = RawSpinLock::new();
        assert!(raw.try_lock());
        assert!(raw.is_locked());
        assert!(!raw.try_lock());
        // SAFETY: taken just above.
        unsafe { raw.unlock() };
        assert!(!raw.is_locked());
        raw.lock();
        assert!(!raw.try_lock());
        // SAFETY: taken just above.
        unsafe { raw.unlock() };
    }
}
