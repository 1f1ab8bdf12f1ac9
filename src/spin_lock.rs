//! `SpinLock<T, R>`: a [`RawSpinLock`] and the data it protects.
//!
//! Low best-case latency (one CAS to take, one store to give back), unbounded worst case (a waiter
//! spins for as long as the holder holds). Pick the waiting strategy `R` for the machine: see
//! [`crate::relax`].

use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use crate::lockdep::{self, CallSite};
use crate::primitive::{self, const_fn_unless_loom, Access, MutPtr, UnsafeCell};
use crate::raw_spin_lock::RawSpinLock;
use crate::relax::{Adaptive, Relax};

/// A mutual-exclusion lock that waits by spinning: test-and-test-and-set on one byte.
///
/// `SpinLock<T>` waits with [`Adaptive`]; `SpinLock<T, Spin>`, `SpinLock<T, Yield>` and
/// `SpinLock<T, Backoff>` pick another [`Relax`] strategy. `size_of::<SpinLock<()>>() == 1`.
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
pub struct SpinLock<T: ?Sized, R = Adaptive> {
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
        /// A new, unlocked lock around `value`, waiting with [`Adaptive`].
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
            Self::with_relax(value, Adaptive)
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

    /// Takes the lock, waiting (as `R` says) for at most `timeout`; `None` if it stayed held that
    /// long. Reads the clock only when the first attempt fails, then once per look at the lock.
    /// A `timeout` too large for an `Instant` waits without end.
    ///
    /// Needs the `std` feature. A timed wait is never refused by `lockdep` (like `try_lock`), but
    /// the lock it takes is recorded. Under loom, which has no clock, a non-zero timeout is two
    /// looks at the lock.
    ///
    /// ```
    /// use fencelock::SpinLock;
    /// use std::time::Duration;
    ///
    /// let book = SpinLock::new(vec![101, 102]);
    /// let held = book.lock();
    /// // Held elsewhere for longer than we are willing to wait: give up instead of spinning on.
    /// assert!(book.try_lock_for(Duration::from_millis(1)).is_none());
    /// drop(held);
    /// let unit = book.try_lock_for(Duration::from_millis(1)).and_then(|mut units| units.pop());
    /// assert_eq!(unit, Some(102));
    /// ```
    #[cfg(feature = "std")]
    #[inline]
    #[cfg_attr(all(feature = "lockdep", not(loom)), track_caller)]
    pub fn try_lock_for(&self, timeout: core::time::Duration) -> Option<SpinLockGuard<'_, T, R>> {
        let site = lockdep::call_site();
        if self.raw.try_lock_for(timeout) {
            lockdep::acquired(self.order_key(), site);
            // SAFETY: the lock is held, as required.
            Some(unsafe { self.guard() })
        } else {
            None
        }
    }

    /// Takes the lock, waiting (as `R` says) until `deadline` at the latest; `None` if it stayed
    /// held until then. A deadline already past still makes one attempt. As
    /// [`try_lock_for`](Self::try_lock_for) otherwise.
    ///
    /// ```
    /// use fencelock::SpinLock;
    /// use std::time::{Duration, Instant};
    ///
    /// let lock = SpinLock::new(0);
    /// let deadline = Instant::now() + Duration::from_millis(1);
    /// let held = lock.try_lock_until(deadline).expect("free");
    /// assert!(lock.try_lock_until(deadline).is_none());
    /// drop(held);
    /// ```
    #[cfg(feature = "std")]
    #[inline]
    #[cfg_attr(all(feature = "lockdep", not(loom)), track_caller)]
    pub fn try_lock_until(&self, deadline: std::time::Instant) -> Option<SpinLockGuard<'_, T, R>> {
        let site = lockdep::call_site();
        if self.raw.try_lock_until(deadline) {
            lockdep::acquired(self.order_key(), site);
            // SAFETY: the lock is held, as required.
            Some(unsafe { self.guard() })
        } else {
            None
        }
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

    /// Whether the lock is held right now: a snapshot, stale as soon as it returns, for
    /// diagnostics and heuristics only (take the lock with [`try_lock`](Self::try_lock) to act).
    ///
    /// ```
    /// use fencelock::SpinLock;
    ///
    /// let lock = SpinLock::new(());
    /// let held = lock.lock();
    /// assert!(lock.is_locked());
    /// drop(held);
    /// assert!(!lock.is_locked());
    /// ```
    #[inline]
    pub fn is_locked(&self) -> bool {
        self.raw.is_locked()
    }

    /// Releases the lock without a guard: the way back from [`SpinLockGuard::leak`] or a
    /// `mem::forget` of a guard, for code that manages the lock by hand (FFI, intrusive
    /// structures).
    ///
    /// ```
    /// use fencelock::{SpinLock, SpinLockGuard};
    ///
    /// let lock = SpinLock::new(1);
    /// let data: &mut i32 = SpinLockGuard::leak(lock.lock());
    /// *data += 1;
    /// assert!(lock.is_locked());
    /// // SAFETY: the lock is held by the leaked guard, and `data` is not used again.
    /// unsafe { lock.force_unlock() };
    /// assert_eq!(*lock.lock(), 2);
    /// ```
    ///
    /// # Safety
    ///
    /// The lock must be held, by a guard that was leaked or forgotten (so that nothing else will
    /// release it), and no reference to the data obtained through that guard may be used after
    /// this call. Otherwise two threads can reach the data at once.
    #[inline]
    pub unsafe fn force_unlock(&self) {
        // The leaked guard's record, if this thread took it (a no-op without `lockdep`).
        lockdep::released(self.order_key());
        // SAFETY: the caller guarantees that the lock is held and that nothing uses the data any
        // more on the holder's behalf: releasing it is what the holder's guard would have done.
        unsafe { self.raw.unlock() };
    }

    /// A raw pointer to the data, without locking. Reading or writing through it is only sound
    /// while this thread holds the lock (or otherwise knows nobody else reaches the data); the
    /// pointer itself is always valid while the lock lives.
    ///
    /// Not available under loom, whose cells hand out no untracked pointers.
    ///
    /// ```
    /// use fencelock::SpinLock;
    ///
    /// let lock = SpinLock::new(5_u32);
    /// let ptr = lock.data_ptr();
    /// let guard = lock.lock();
    /// // SAFETY: the lock is held (by `guard`), and nothing writes meanwhile.
    /// assert_eq!(unsafe { *ptr }, 5);
    /// drop(guard);
    /// ```
    #[cfg(not(loom))]
    #[inline]
    pub fn data_ptr(&self) -> *mut T {
        self.data.get()
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
            lock: self,
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
///
/// Its associated functions ([`map`](Self::map), [`try_map`](Self::try_map),
/// [`leak`](Self::leak), [`unlock_fair`](Self::unlock_fair), [`bump`](Self::bump)) are called as
/// `SpinLockGuard::map(guard, ..)`, so that they never hide a method of the data.
///
/// # Not `Send`
///
/// A guard stays on the thread that took the lock, as std's and parking_lot's do, so this does
/// not compile:
///
#[cfg_attr(not(feature = "send_guard"), doc = "```compile_fail")]
#[cfg_attr(feature = "send_guard", doc = "```")]
/// use fencelock::SpinLock;
///
/// let lock = SpinLock::new(0);
/// let guard = lock.lock();
/// std::thread::scope(|s| {
///     s.spawn(move || drop(guard)); // error: the guard cannot be sent between threads
/// });
/// ```
///
/// In async code this is what refuses a guard held across an `.await` in a future that must be
/// `Send` (a multi-threaded executor's `spawn`). That is the right answer for a spin lock: every
/// task that wants the lock would spin for as long as the holder is suspended. Release the guard
/// before the `.await` (end its scope, or `drop` it), or use an async mutex
/// (`tokio::sync::Mutex`, `async_lock::Mutex`) whose waiters sleep. The `send_guard` feature makes
/// guards `Send` (when `T: Send`) for code that must release on another thread; nothing in the
/// lock itself is tied to the locking thread, but `lockdep` then keeps a stale record.
#[must_use = "if unused the SpinLock will immediately unlock"]
pub struct SpinLockGuard<'a, T: ?Sized, R = Adaptive> {
    lock: &'a SpinLock<T, R>,
    /// The access to the data, alive exactly while the lock is held: dropped by hand in `drop`,
    /// before the unlock (under loom it is the tracked access that race detection watches).
    data: ManuallyDrop<MutPtr<T>>,
}

// SAFETY: the guard gives `&T` to whoever shares it, so sharing it needs `T: Sync`.
unsafe impl<T: ?Sized + Sync, R> Sync for SpinLockGuard<'_, T, R> {}
// SAFETY: the guard gives `&mut T`, so moving it to another thread needs `T: Send`; the lock
// itself may be released from any thread. Without `send_guard` there is no `Send` impl, and
// `MutPtr`'s raw pointer keeps the guard `!Send` (the tests check both).
#[cfg(feature = "send_guard")]
unsafe impl<T: ?Sized + Send, R> Send for SpinLockGuard<'_, T, R> {}

impl<'a, T: ?Sized, R> SpinLockGuard<'a, T, R> {
    /// Narrows the guard to a part of the data, such as one field. The lock stays held until the
    /// returned guard drops. If `f` panics, the guard is dropped and the lock released.
    ///
    /// ```
    /// use fencelock::{MappedSpinLockGuard, SpinLock, SpinLockGuard};
    ///
    /// struct Account { cash: i64, units: u32 }
    ///
    /// let account = SpinLock::new(Account { cash: 100, units: 0 });
    /// let mut cash: MappedSpinLockGuard<'_, i64> =
    ///     SpinLockGuard::map(account.lock(), |account| &mut account.cash);
    /// *cash -= 30;
    /// drop(cash);
    /// assert_eq!(account.lock().cash, 70);
    /// # assert_eq!(account.lock().units, 0);
    /// ```
    #[inline]
    pub fn map<U: ?Sized, F>(mut guard: Self, f: F) -> MappedSpinLockGuard<'a, U, R>
    where
        F: FnOnce(&mut T) -> &mut U,
    {
        // `f` runs while `guard` still owns the lock, so a panic in it releases the lock.
        let data = NonNull::from(f(&mut *guard));
        let (raw, access) = guard.into_parts();
        // SAFETY: `data` came from the `&mut T` of a held lock, and the lock and the access move
        // to the mapped guard: see `MappedSpinLockGuard::from_parts`.
        unsafe { MappedSpinLockGuard::from_parts(raw, data, access) }
    }

    /// Narrows the guard to a part of the data that may not be there: `Err` gives the guard back
    /// (still holding the lock) when `f` returns `None`.
    ///
    /// ```
    /// use fencelock::{SpinLock, SpinLockGuard};
    ///
    /// let book = SpinLock::new(vec![101_u32, 102]);
    /// let mut first = SpinLockGuard::try_map(book.lock(), |units| units.first_mut()).unwrap();
    /// *first = 100;
    /// drop(first);
    /// let empty = SpinLock::new(Vec::<u32>::new());
    /// let guard = SpinLockGuard::try_map(empty.lock(), |units| units.first_mut()).unwrap_err();
    /// assert!(guard.is_empty());
    /// ```
    #[inline]
    pub fn try_map<U: ?Sized, F>(
        mut guard: Self,
        f: F,
    ) -> Result<MappedSpinLockGuard<'a, U, R>, Self>
    where
        F: FnOnce(&mut T) -> Option<&mut U>,
    {
        let data = match f(&mut *guard) {
            Some(data) => NonNull::from(data),
            None => return Err(guard),
        };
        let (raw, access) = guard.into_parts();
        // SAFETY: as in `map`.
        Ok(unsafe { MappedSpinLockGuard::from_parts(raw, data, access) })
    }

    /// Keeps the lock held forever and returns the data for the rest of the lock's life: for
    /// locks that live as long as the program (a `static`), or with
    /// [`SpinLock::force_unlock`] to give the lock back by hand.
    ///
    /// Under loom, accesses through the returned reference are no longer tracked.
    ///
    /// ```
    /// use fencelock::{SpinLock, SpinLockGuard};
    ///
    /// static CONFIG: SpinLock<Vec<&str>> = SpinLock::new(Vec::new());
    ///
    /// let config: &'static mut Vec<&str> = SpinLockGuard::leak(CONFIG.lock());
    /// config.push("fenced");
    /// assert!(CONFIG.try_lock().is_none());
    /// ```
    #[inline]
    pub fn leak(guard: Self) -> &'a mut T {
        let (_, access) = guard.into_parts();
        let data = access.with(|data| data);
        // Ends loom's tracked access (nothing on the real machine), so that a later
        // `force_unlock` and lock are not reported against it.
        primitive::end_access(access);
        // SAFETY: the lock stays held for all of `'a` (nothing releases it, short of a
        // `force_unlock` whose caller promises that this reference is no longer used), so this
        // is the only reference to the data; the data lives as long as the lock.
        unsafe { &mut *data }
    }

    /// Releases the lock, then steps aside so that a waiter can get in before this thread comes
    /// back: see [`RawSpinLock::unlock_fair`](crate::RawSpinLock::unlock_fair) for what that can
    /// and cannot promise with a one-byte lock.
    ///
    /// ```
    /// use fencelock::{SpinLock, SpinLockGuard};
    ///
    /// let lock = SpinLock::new(0);
    /// let mut guard = lock.lock();
    /// *guard += 1;
    /// SpinLockGuard::unlock_fair(guard);
    /// assert!(!lock.is_locked());
    /// ```
    #[inline]
    pub fn unlock_fair(guard: Self)
    where
        R: Relax,
    {
        let (raw, access) = guard.into_parts();
        primitive::end_access(access);
        lockdep::released(order_key(raw));
        // SAFETY: the guard held the lock, and its access to the data has ended.
        unsafe { raw.unlock_fair() };
    }

    /// In a long critical section, gives waiters a chance: releases the lock fairly (as
    /// [`unlock_fair`](Self::unlock_fair)) and takes it back. The data may have changed
    /// meanwhile. `lockdep` keeps the lock recorded throughout.
    ///
    /// ```
    /// use fencelock::{SpinLock, SpinLockGuard};
    ///
    /// let queue = SpinLock::new((0..100).collect::<Vec<u32>>());
    /// let mut guard = queue.lock();
    /// while let Some(_job) = guard.pop() {
    ///     SpinLockGuard::bump(&mut guard); // let others at the queue between two jobs
    /// }
    /// ```
    #[inline]
    pub fn bump(guard: &mut Self)
    where
        R: Relax,
    {
        // A panic between the unlock and the lock (only a `Relax` strategy can raise one) would
        // leave a guard that does not hold the lock, and its drop would unlock someone else's:
        // abort instead, as lock_api's `bump` does.
        let bomb = AbortOnUnwind;
        // SAFETY: the access is dropped once here and replaced below before any other use.
        unsafe { ManuallyDrop::drop(&mut guard.data) };
        // SAFETY: the guard holds the lock, and its access has just ended; `bump` takes the lock
        // back before it returns.
        unsafe { guard.lock.raw.bump() };
        guard.data = ManuallyDrop::new(guard.lock.data.get_mut());
        core::mem::forget(bomb);
    }

    /// Takes the guard apart without releasing the lock: the caller now owns the lock and the
    /// access to the data.
    #[inline]
    fn into_parts(self) -> (&'a RawSpinLock<R>, MutPtr<T>) {
        let mut guard = ManuallyDrop::new(self);
        // SAFETY: `guard` is never dropped, so `data` is taken out exactly once.
        let access = unsafe { ManuallyDrop::take(&mut guard.data) };
        (&guard.lock.raw, access)
    }
}

/// Panics while dropped: in an unwind, that is a panic during a panic, which aborts.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        panic!("a `Relax` strategy panicked inside `SpinLockGuard::bump`: aborting");
    }
}

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
        lockdep::released(self.lock.order_key());
        // SAFETY: `data` is dropped once, here, and never used again: the access ends before the
        // lock is released.
        unsafe { ManuallyDrop::drop(&mut self.data) };
        // SAFETY: the guard's existence proves the lock is held by us.
        unsafe { self.lock.raw.unlock() };
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

/// A [`SpinLockGuard`] narrowed to a part of the data by [`SpinLockGuard::map`] or
/// [`try_map`](SpinLockGuard::try_map). It holds the whole lock; dropping it releases the lock.
/// `!Send` unless the `send_guard` feature is on, like the guard it came from.
///
/// ```
/// use fencelock::{MappedSpinLockGuard, SpinLock, SpinLockGuard};
///
/// let pair = SpinLock::new((String::from("IBM"), 7_u32));
/// let symbol = SpinLockGuard::map(pair.lock(), |pair| &mut pair.0);
/// let mut first = MappedSpinLockGuard::map(symbol, |symbol| symbol.as_mut_str());
/// first.make_ascii_lowercase();
/// drop(first);
/// assert_eq!(pair.lock().0, "ibm");
/// ```
#[must_use = "if unused the SpinLock will immediately unlock"]
pub struct MappedSpinLockGuard<'a, T: ?Sized, R = Adaptive> {
    raw: &'a RawSpinLock<R>,
    /// Into the locked data, valid and reachable by this guard alone while the lock is held.
    data: NonNull<T>,
    /// The original guard's access to the whole data: under loom the tracked access that ends,
    /// in `drop`, before the unlock; nothing on the real machine.
    access: ManuallyDrop<Access<'a>>,
    /// Hands out `&mut T` for `'a`, as a `&'a mut T` would (invariant in `T`).
    marker: PhantomData<&'a mut T>,
}

// SAFETY: as for `SpinLockGuard`: sharing the guard shares `&T`.
unsafe impl<T: ?Sized + Sync, R> Sync for MappedSpinLockGuard<'_, T, R> {}
// SAFETY: as for `SpinLockGuard`: moving the guard moves `&mut T`, and the lock may be released
// from any thread. Without `send_guard`, `NonNull` keeps it `!Send`.
#[cfg(feature = "send_guard")]
unsafe impl<T: ?Sized + Send, R> Send for MappedSpinLockGuard<'_, T, R> {}

impl<'a, T: ?Sized, R> MappedSpinLockGuard<'a, T, R> {
    /// The guard of a held lock, narrowed to `data`.
    ///
    /// # Safety
    ///
    /// `raw` must be held by the caller, who hands its release to the guard; `data` must point to
    /// data that only the holder of `raw` reaches and that lives for `'a`; `access` is the
    /// holder's access to the lock's data, which the guard keeps until the release.
    #[inline]
    unsafe fn from_parts<U: ?Sized + 'a>(
        raw: &'a RawSpinLock<R>,
        data: NonNull<T>,
        access: MutPtr<U>,
    ) -> Self {
        Self {
            raw,
            data,
            access: ManuallyDrop::new(Access::new(access)),
            marker: PhantomData,
        }
    }

    /// Narrows the guard further, as [`SpinLockGuard::map`].
    #[inline]
    pub fn map<U: ?Sized, F>(mut guard: Self, f: F) -> MappedSpinLockGuard<'a, U, R>
    where
        F: FnOnce(&mut T) -> &mut U,
    {
        let data = NonNull::from(f(&mut *guard));
        let guard = ManuallyDrop::new(guard);
        MappedSpinLockGuard {
            raw: guard.raw,
            data,
            // SAFETY: `guard` is never dropped, so `access` is taken out exactly once.
            access: ManuallyDrop::new(unsafe { core::ptr::read(&*guard.access) }),
            marker: PhantomData,
        }
    }

    /// Narrows the guard further if `f` finds the part, as [`SpinLockGuard::try_map`].
    #[inline]
    pub fn try_map<U: ?Sized, F>(
        mut guard: Self,
        f: F,
    ) -> Result<MappedSpinLockGuard<'a, U, R>, Self>
    where
        F: FnOnce(&mut T) -> Option<&mut U>,
    {
        let data = match f(&mut *guard) {
            Some(data) => NonNull::from(data),
            None => return Err(guard),
        };
        let guard = ManuallyDrop::new(guard);
        Ok(MappedSpinLockGuard {
            raw: guard.raw,
            data,
            // SAFETY: `guard` is never dropped, so `access` is taken out exactly once.
            access: ManuallyDrop::new(unsafe { core::ptr::read(&*guard.access) }),
            marker: PhantomData,
        })
    }
}

impl<T: ?Sized, R> Deref for MappedSpinLockGuard<'_, T, R> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard exists, so the lock is held and only this guard reaches `data`; the
        // reference lives no longer than the guard.
        unsafe { self.data.as_ref() }
    }
}

impl<T: ?Sized, R> DerefMut for MappedSpinLockGuard<'_, T, R> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference through the guard.
        unsafe { self.data.as_mut() }
    }
}

impl<T: ?Sized, R> Drop for MappedSpinLockGuard<'_, T, R> {
    #[inline]
    fn drop(&mut self) {
        lockdep::released(order_key(self.raw));
        // SAFETY: `access` is dropped once, here, and never used again: the access ends before
        // the lock is released.
        unsafe { ManuallyDrop::drop(&mut self.access) };
        // SAFETY: the guard's existence proves the lock is held by us.
        unsafe { self.raw.unlock() };
    }
}

impl<T: ?Sized + fmt::Debug, R> fmt::Debug for MappedSpinLockGuard<'_, T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Display, R> fmt::Display for MappedSpinLockGuard<'_, T, R> {
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
