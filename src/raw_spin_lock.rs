//! The spin lock's protocol: one byte, one compare-and-swap to take it, one release store to give
//! it back.
//!
//! This is the seed's `while (!compare_and_swap(&isLock, 0, 1)) {}` with the two things the
//! seed's comment asks for made exact: waiting reads the byte instead of hammering it with CAS
//! (test-and-test-and-set), and the unlock is *fenced* — a `Release` store, which is precisely the
//! barrier that publishes the critical section's writes to the next holder, and nothing stronger.

use core::marker::PhantomData;

use crate::primitive::{self, const_fn_unless_loom, AtomicU8, Ordering::*};
use crate::relax::{Adaptive, Relax};

/// Nobody holds the lock.
const UNLOCKED: u8 = 0;
/// Somebody holds the lock. Waiters are not recorded: they spin, and nobody needs waking.
const LOCKED: u8 = 1;

/// A raw spin lock: mutual exclusion without data, for building locks on.
///
/// Most code wants [`SpinLock`](crate::SpinLock), which pairs this with the data it protects.
/// With the `lock_api` feature (on by default) this type implements lock_api 0.5's `RawMutex`,
/// `RawMutexFair` and (with `std`) `RawMutexTimed`, so `lock_api::Mutex<RawSpinLock, T>` works
/// too, with `try_lock_for`, `unlock_fair` and the rest; the `lock_api_04` feature does the same
/// for lock_api 0.4. Their guards are `!Send` unless the `send_guard` feature is on.
///
/// Waiting is test-and-test-and-set: after one failed compare-and-swap, waiters read the byte
/// (which keeps its cache line shared among them) and call `R::relax` between reads, and only try
/// the compare-and-swap again once the lock looks free. Spinning is unbounded: a holder that never
/// unlocks keeps waiters spinning forever (`try_lock_for` / `try_lock_until` give up at a
/// deadline). There is no fairness: a releasing thread may take the lock straight back;
/// [`unlock_fair`](Self::unlock_fair) only steps aside for a moment (see there).
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
pub struct RawSpinLock<R = Adaptive> {
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

    /// Tries to take the lock, waiting (as `R` says) for at most `timeout`; `true` when this call
    /// took it. The clock is read only once the first attempt has failed, then once per look.
    /// A `timeout` too large for an `Instant` waits without end, like [`lock`](Self::lock).
    ///
    /// Needs the `std` feature. Under loom, which has no clock, a non-zero timeout is two looks
    /// at the lock.
    ///
    /// ```
    /// use fencelock::RawSpinLock;
    /// use std::time::Duration;
    ///
    /// let raw: RawSpinLock = RawSpinLock::new();
    /// assert!(raw.try_lock_for(Duration::from_millis(10)));
    /// // Held (by this very thread): gives up after about 1 ms.
    /// assert!(!raw.try_lock_for(Duration::from_millis(1)));
    /// // SAFETY: this thread took the lock above.
    /// unsafe { raw.unlock() };
    /// ```
    #[cfg(feature = "std")]
    #[inline]
    #[must_use = "if the lock was taken, it must be unlocked"]
    pub fn try_lock_for(&self, timeout: core::time::Duration) -> bool {
        self.try_lock() || self.try_lock_contended(|| primitive::Deadline::after(timeout))
    }

    /// Tries to take the lock, waiting (as `R` says) until `deadline` at the latest; `true` when
    /// this call took it. A deadline already past still makes one attempt, without reading the
    /// clock.
    ///
    /// Needs the `std` feature. Under loom, a deadline not yet past is two looks at the lock.
    ///
    /// ```
    /// use fencelock::RawSpinLock;
    /// use std::time::{Duration, Instant};
    ///
    /// let raw: RawSpinLock = RawSpinLock::new();
    /// assert!(raw.try_lock_until(Instant::now()));
    /// assert!(!raw.try_lock_until(Instant::now() + Duration::from_millis(1)));
    /// // SAFETY: this thread took the lock above.
    /// unsafe { raw.unlock() };
    /// ```
    #[cfg(feature = "std")]
    #[inline]
    #[must_use = "if the lock was taken, it must be unlocked"]
    pub fn try_lock_until(&self, deadline: std::time::Instant) -> bool {
        self.try_lock() || self.try_lock_contended(|| primitive::Deadline::at(deadline))
    }

    /// The slow path of a timed wait: `deadline` starts the clock (the first clock read), then
    /// each look at the lock asks the deadline first.
    #[cfg(feature = "std")]
    #[cold]
    #[inline(never)]
    fn try_lock_contended(&self, deadline: impl FnOnce() -> primitive::Deadline) -> bool {
        let mut deadline = deadline();
        let mut attempt = 0_u32;
        // Checked at every look, not only while the byte reads LOCKED: a lock that other threads
        // keep winning between our look and our CAS must not keep us past the deadline either.
        while !deadline.passed() {
            primitive::relax::<R>(attempt);
            attempt = attempt.saturating_add(1);
            // Plain load first, as in `lock_contended`; the CAS only when it looks free.
            if !self.is_locked() && self.try_lock() {
                return true;
            }
        }
        false
    }

    /// Releases the lock, then steps aside so that a waiter can take it before this thread can
    /// come back for it: with `std`, a `yield_now`; without, one `R::relax` at its longest.
    ///
    /// That is all "fair" can mean for a lock of one byte with no queue: the lock does not know
    /// whether anybody waits, cannot hand itself to a waiter, and does not choose among waiters.
    /// A waiter spinning on another core usually sees the byte free during the yield and takes
    /// it; one that is not running (preempted, or asleep in its own `yield_now`) may not, and
    /// then this thread can take the lock straight back. It costs the yield even when nobody
    /// waits. Use it to stop one thread from monopolising a hot lock, not to bound anyone's wait.
    ///
    /// ```
    /// use fencelock::RawSpinLock;
    ///
    /// let raw: RawSpinLock = RawSpinLock::new();
    /// raw.lock();
    /// // SAFETY: this thread took the lock just above.
    /// unsafe { raw.unlock_fair() };
    /// assert!(!raw.is_locked());
    /// ```
    ///
    /// # Safety
    ///
    /// As [`unlock`](Self::unlock): the lock must be held by the caller.
    #[inline]
    pub unsafe fn unlock_fair(&self) {
        // SAFETY: the caller holds the lock, as required.
        unsafe { self.unlock() };
        step_aside::<R>();
    }

    /// Gives waiters a chance in the middle of a long critical section:
    /// [`unlock_fair`](Self::unlock_fair), then [`lock`](Self::lock) again. The lock is held again
    /// when it returns, but anything may have happened meanwhile.
    ///
    /// ```
    /// use fencelock::RawSpinLock;
    ///
    /// let raw: RawSpinLock = RawSpinLock::new();
    /// raw.lock();
    /// // SAFETY: this thread holds the lock, and holds it again afterwards.
    /// unsafe { raw.bump() };
    /// assert!(raw.is_locked());
    /// // SAFETY: held, by this thread.
    /// unsafe { raw.unlock() };
    /// ```
    ///
    /// # Safety
    ///
    /// As [`unlock`](Self::unlock): the lock must be held by the caller.
    #[inline]
    pub unsafe fn bump(&self) {
        // SAFETY: the caller holds the lock, as required.
        unsafe { self.unlock_fair() };
        self.lock();
    }
}

/// What [`RawSpinLock::unlock_fair`] does once the lock is free: gives the processor away for a
/// moment, so that a waiter has a chance to take the lock first.
#[inline]
#[cfg_attr(feature = "std", allow(clippy::extra_unused_type_parameters))]
fn step_aside<R: Relax>() {
    #[cfg(feature = "std")]
    primitive::yield_now();
    #[cfg(not(feature = "std"))]
    primitive::relax::<R>(u32::MAX);
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

/// The guard marker of both lock_api versions: `!Send` (the guard stays on the thread that locked)
/// unless the `send_guard` feature is on, as with [`SpinLockGuard`](crate::SpinLockGuard).
#[cfg(all(feature = "lock_api", not(loom), not(feature = "send_guard")))]
type Marker05 = lock_api::GuardNoSend;
#[cfg(all(feature = "lock_api", not(loom), feature = "send_guard"))]
type Marker05 = lock_api::GuardSend;

// SAFETY: `try_lock` and `lock` succeed only by swinging the byte from UNLOCKED to LOCKED with an
// Acquire CAS, so at most one context holds the lock; `unlock` is a Release store. The guard token
// carries no state; nothing is tied to the locking thread, so `GuardSend` (with `send_guard`) is
// sound too. `INIT` is unlocked. Not available under loom, whose atomics cannot be built in a
// `const`.
#[cfg(all(feature = "lock_api", not(loom)))]
unsafe impl<R: Relax> lock_api::RawMutex for RawSpinLock<R> {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self::new();

    type Guard = Marker05;

    #[inline]
    fn lock(&self) -> Self::Guard {
        RawSpinLock::lock(self);
        Marker05::new()
    }

    #[inline]
    fn try_lock(&self) -> Option<Self::Guard> {
        RawSpinLock::try_lock(self).then(Marker05::new)
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

// SAFETY: `unlock_fair` releases the lock exactly as `unlock` does, then yields; `bump` is
// lock_api's default (`unlock_fair`, then `lock`).
#[cfg(all(feature = "lock_api", not(loom)))]
unsafe impl<R: Relax> lock_api::RawMutexFair for RawSpinLock<R> {
    #[inline]
    unsafe fn unlock_fair(&self, _guard: Self::Guard) {
        // SAFETY: lock_api hands us the guard of a successful lock: the lock is held, as required.
        unsafe { RawSpinLock::unlock_fair(self) }
    }
}

// SAFETY: both succeed only through `try_lock`'s Acquire CAS, as `lock` does.
#[cfg(all(feature = "lock_api", feature = "std", not(loom)))]
unsafe impl<R: Relax> lock_api::RawMutexTimed for RawSpinLock<R> {
    type Duration = std::time::Duration;
    type Instant = std::time::Instant;

    #[inline]
    fn try_lock_for(&self, timeout: std::time::Duration) -> Option<Self::Guard> {
        RawSpinLock::try_lock_for(self, timeout).then(Marker05::new)
    }

    #[inline]
    fn try_lock_until(&self, deadline: std::time::Instant) -> Option<Self::Guard> {
        RawSpinLock::try_lock_until(self, deadline).then(Marker05::new)
    }
}

/// lock_api 0.4's guard marker: as [`Marker05`].
#[cfg(all(feature = "lock_api_04", not(loom), not(feature = "send_guard")))]
type Marker04 = lock_api_04::GuardNoSend;
#[cfg(all(feature = "lock_api_04", not(loom), feature = "send_guard"))]
type Marker04 = lock_api_04::GuardSend;

// SAFETY: as for lock_api 0.5 above; 0.4 has no guard token, and its `unlock` requires the lock
// to be held by the current context, as ours does.
#[cfg(all(feature = "lock_api_04", not(loom)))]
unsafe impl<R: Relax> lock_api_04::RawMutex for RawSpinLock<R> {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self::new();

    type GuardMarker = Marker04;

    #[inline]
    fn lock(&self) {
        RawSpinLock::lock(self);
    }

    #[inline]
    fn try_lock(&self) -> bool {
        RawSpinLock::try_lock(self)
    }

    #[inline]
    unsafe fn unlock(&self) {
        // SAFETY: lock_api 0.4 requires the lock to be held in the current context, as we do.
        unsafe { RawSpinLock::unlock(self) }
    }

    #[inline]
    fn is_locked(&self) -> bool {
        RawSpinLock::is_locked(self)
    }
}

// SAFETY: as for lock_api 0.5 above.
#[cfg(all(feature = "lock_api_04", not(loom)))]
unsafe impl<R: Relax> lock_api_04::RawMutexFair for RawSpinLock<R> {
    #[inline]
    unsafe fn unlock_fair(&self) {
        // SAFETY: lock_api 0.4 requires the lock to be held in the current context, as we do.
        unsafe { RawSpinLock::unlock_fair(self) }
    }

    #[inline]
    unsafe fn bump(&self) {
        // SAFETY: lock_api 0.4 requires the lock to be held in the current context, as we do.
        unsafe { RawSpinLock::bump(self) }
    }
}

// SAFETY: as for lock_api 0.5 above.
#[cfg(all(feature = "lock_api_04", feature = "std", not(loom)))]
unsafe impl<R: Relax> lock_api_04::RawMutexTimed for RawSpinLock<R> {
    type Duration = std::time::Duration;
    type Instant = std::time::Instant;

    #[inline]
    fn try_lock_for(&self, timeout: std::time::Duration) -> bool {
        RawSpinLock::try_lock_for(self, timeout)
    }

    #[inline]
    fn try_lock_until(&self, deadline: std::time::Instant) -> bool {
        RawSpinLock::try_lock_until(self, deadline)
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
