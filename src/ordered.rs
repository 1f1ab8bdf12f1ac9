//! Taking several locks at once without deadlock: every thread takes them in one global order.
//!
//! The seed's deadlock is two threads taking the same two locks in opposite orders, each holding
//! one and waiting for the other. If every thread takes its locks in *one* order that all threads
//! agree on, no cycle of waiters can form: the waiter holding the latest lock in the order waits
//! for nobody who waits for it. The order here is the address of each lock's state byte, which
//! every live lock has and no two share.
//!
//! One function takes any set of locks — an array of same-typed locks, a tuple of locks of
//! different types, a slice — through the sealed [`LockSet`] trait: [`lock_all`] waits,
//! [`try_lock_all`] does not, [`lock_slice`] is `lock_all` for slices. Guards come back in the
//! caller's order whatever order the locks were taken in. Naming one lock twice is a bug the caller
//! is told about at once ([`SameLock`]), before any lock is taken: taking it twice would spin
//! forever.
//!
//! The machinery is one sort and one loop: [`LockOrder`] sorts positions by key and rejects a
//! repeat, and [`LockOrder::take`] takes one guard per position in that order, dropping (so
//! releasing) those already taken if one fails. Another kind of lock joins by giving each lock a
//! key and a way to take it.

use core::convert::Infallible;
use core::fmt;
use core::mem::{ManuallyDrop, MaybeUninit};
use core::ptr;

#[cfg(all(feature = "std", target_has_atomic = "64"))]
use core::time::Duration;

#[cfg(all(feature = "std", target_has_atomic = "64"))]
use crate::clock::Clock;
#[cfg(all(feature = "std", target_has_atomic = "64"))]
use crate::deadline_lock::{DeadlineLock, Lease};
use crate::lockdep;
use crate::relax::Relax;
use crate::spin_lock::{SpinLock, SpinLockGuard};

/// The same lock was named twice in one multi-lock request: at positions `first` and `second`
/// of the caller's list (`first < second`).
///
/// Taking a spin lock the thread already holds spins forever, so the request is refused before
/// any lock is taken. When several locks repeat, the pair reported is the earliest repeat: the
/// smallest `second`, with `first` the position it repeats.
///
/// ```
/// use fencelock::{lock_all, SameLock, SpinLock};
///
/// let (cash, units) = (SpinLock::new(100), SpinLock::new(3));
/// let err = lock_all([&cash, &units, &cash]).unwrap_err();
/// assert_eq!(err, SameLock { first: 0, second: 2 });
/// assert!(!cash.is_locked() && !units.is_locked());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SameLock {
    /// The earlier position naming the lock.
    pub first: usize,
    /// The later position naming the same lock.
    pub second: usize,
}

impl fmt::Display for SameLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the same lock is named at positions {} and {}",
            self.first, self.second
        )
    }
}

impl core::error::Error for SameLock {}

/// Positions `0..N` of a multi-lock request in the order their locks are to be taken.
///
/// Invariant: a permutation of `0..N` whose keys strictly increase — so no key repeats.
pub(crate) struct LockOrder<const N: usize>([usize; N]);

impl<const N: usize> LockOrder<N> {
    /// Sorts the positions by `keys` (each lock's place in the global order), or reports the
    /// earliest repeated key.
    #[inline]
    pub(crate) fn by_key(keys: &[usize; N]) -> Result<Self, SameLock> {
        let mut order: [usize; N] = core::array::from_fn(|i| i);
        // Insertion sort: `N` is small (often 2, one comparison), and it is stable, so equal keys
        // stay in the caller's order — which `first_repeat` relies on.
        for i in 1..N {
            let mut j = i;
            while j > 0 && keys[order[j - 1]] > keys[order[j]] {
                order.swap(j - 1, j);
                j -= 1;
            }
        }
        distinct(keys, &order)?;
        Ok(Self(order))
    }

    /// Takes one guard per position, in lock order, with `take`; returns them in the caller's
    /// order. If `take` fails, the guards already taken are dropped (so their locks released)
    /// before the error is returned.
    #[inline]
    pub(crate) fn take<G, E>(
        &self,
        mut take: impl FnMut(usize) -> Result<G, E>,
    ) -> Result<[G; N], E> {
        let mut taking = Taking {
            slots: [const { MaybeUninit::uninit() }; N],
            order: &self.0,
            taken: 0,
        };
        for &position in &self.0 {
            taking.slots[position].write(take(position)?);
            taking.taken += 1;
        }
        let taking = ManuallyDrop::new(taking);
        // SAFETY: the loop wrote every slot once (`self.0` is a permutation of `0..N`), and
        // `ManuallyDrop` keeps `Taking::drop` from dropping them: the guards move out exactly once.
        let slots = unsafe { ptr::read(&taking.slots) };
        // SAFETY: every slot is initialised, as above.
        Ok(slots.map(|slot| unsafe { slot.assume_init() }))
    }
}

/// The guards of a `LockOrder::take` in progress; dropping it drops those taken so far.
struct Taking<'o, G, const N: usize> {
    slots: [MaybeUninit<G>; N],
    order: &'o [usize; N],
    /// The slots `order[..taken]` hold guards; the others are uninitialised.
    taken: usize,
}

impl<G, const N: usize> Drop for Taking<'_, G, N> {
    fn drop(&mut self) {
        for &position in &self.order[..self.taken] {
            // SAFETY: `order[..taken]` are the slots written so far, each once.
            unsafe { self.slots[position].assume_init_drop() };
        }
    }
}

/// `Ok` if no two neighbours in `order` (sorted by key, stable) share a key.
#[inline]
fn distinct(keys: &[usize], order: &[usize]) -> Result<(), SameLock> {
    if order.windows(2).all(|pair| keys[pair[0]] != keys[pair[1]]) {
        Ok(())
    } else {
        Err(first_repeat(keys, order))
    }
}

/// The repeat with the smallest second position. The sort is stable, so within a run of equal
/// keys positions increase, and the pair ending at the smallest second position is a neighbour
/// pair.
#[cold]
fn first_repeat(keys: &[usize], order: &[usize]) -> SameLock {
    order
        .windows(2)
        .filter(|pair| keys[pair[0]] == keys[pair[1]])
        .map(|pair| SameLock {
            first: pair[0],
            second: pair[1],
        })
        .min_by_key(|same| same.second)
        .unwrap_or(SameLock {
            first: 0,
            second: 0,
        })
}

mod sealed {
    /// Only this crate implements [`LockSet`](super::LockSet).
    pub trait Sealed {}

    /// Where the request was made, for the `lockdep` feature; nameable only inside the crate,
    /// which keeps `LockSet`'s methods out of reach.
    pub struct Site(pub(crate) crate::lockdep::CallSite);
}

/// A set of locks that [`lock_all`] and [`try_lock_all`] take together, in the global order.
///
/// Implemented (and only implementable) for:
///
/// | set                                              | `Guards`                               |
/// |--------------------------------------------------|----------------------------------------|
/// | `[&SpinLock<T, R>; N]`                           | `[SpinLockGuard<T, R>; N]`             |
/// | `(&SpinLock<A, RA>, &SpinLock<B, RB>, …)`, 1–6   | `(SpinLockGuard<A, RA>, …)`            |
/// | `&[&SpinLock<T, R>]` (`std`)                     | `Vec<SpinLockGuard<T, R>>`             |
///
/// The guards are in the caller's order; dropping one releases its lock, in any order.
pub trait LockSet: sealed::Sealed {
    /// The guards of the locks, in the caller's order.
    type Guards;

    #[doc(hidden)]
    fn lock_all_at(self, site: sealed::Site) -> Result<Self::Guards, SameLock>;

    #[doc(hidden)]
    fn try_lock_all_at(self, site: sealed::Site) -> Result<Option<Self::Guards>, SameLock>;
}

/// Takes every lock of `locks`, waiting for each, in the one global order all threads share, and
/// returns their guards in the caller's order: two threads locking `[&a, &b]` and `[&b, &a]` never
/// deadlock.
///
/// `locks` is an array of locks of one type, a tuple of locks of different types, or (with `std`)
/// a slice: see [`LockSet`]. Naming a lock twice returns [`SameLock`] at once, without taking
/// anything. A thread that already holds a lock must not ask for it here (that spins forever, as a
/// second `lock()` does); with the `lockdep` feature, asking for locks that come before one the
/// thread holds panics.
///
/// # Example
///
/// The seed's deadlock, made safe: each thread names the two accounts in its own order.
///
/// ```
/// use fencelock::{lock_all, SpinLock};
/// use std::thread;
///
/// let alice = SpinLock::new(100_i64);
/// let bob = SpinLock::new(100_i64);
/// thread::scope(|s| {
///     for _ in 0..100 {
///         s.spawn(|| {
///             let [mut from, mut to] = lock_all([&alice, &bob]).unwrap();
///             *from -= 1;
///             *to += 1;
///         });
///         s.spawn(|| {
///             let [mut from, mut to] = lock_all([&bob, &alice]).unwrap();
///             *from -= 1;
///             *to += 1;
///         });
///     }
/// });
/// assert_eq!(*alice.lock() + *bob.lock(), 200);
/// ```
///
/// Locks of different types, through a tuple:
///
/// ```
/// use fencelock::{lock_all, SpinLock};
///
/// let cash = SpinLock::new(1_000_i64);
/// let units = SpinLock::new(vec![7_u32, 8]);
/// let (mut cash, mut units) = lock_all((&cash, &units)).unwrap();
/// units.pop();
/// *cash += 42;
/// ```
#[inline]
#[cfg_attr(all(feature = "lockdep", not(loom)), track_caller)]
pub fn lock_all<L: LockSet>(locks: L) -> Result<L::Guards, SameLock> {
    locks.lock_all_at(sealed::Site(lockdep::call_site()))
}

/// Takes every lock of `locks` if all are free right now, without waiting: `Ok(Some(guards))`
/// with the guards in the caller's order, or `Ok(None)` — and then no lock of the set is held by
/// this call, whichever was busy. Naming a lock twice returns [`SameLock`].
///
/// ```
/// use fencelock::{try_lock_all, SpinLock};
///
/// let (a, b) = (SpinLock::new(1), SpinLock::new(2));
/// let held = b.lock();
/// assert!(try_lock_all([&a, &b]).unwrap().is_none());
/// assert!(!a.is_locked()); // all or nothing
/// drop(held);
/// let [a, b] = try_lock_all([&a, &b]).unwrap().unwrap();
/// assert_eq!((*a, *b), (1, 2));
/// ```
#[inline]
#[cfg_attr(all(feature = "lockdep", not(loom)), track_caller)]
pub fn try_lock_all<L: LockSet>(locks: L) -> Result<Option<L::Guards>, SameLock> {
    locks.try_lock_all_at(sealed::Site(lockdep::call_site()))
}

/// [`lock_all`] for a slice of locks, whose length is known only at run time; the guards come
/// back in a `Vec`, in the slice's order. Needs `std`.
///
/// ```
/// use fencelock::{lock_slice, SpinLock};
///
/// let accounts: Vec<SpinLock<i64>> = (0..10).map(SpinLock::new).collect();
/// let chosen: Vec<&SpinLock<i64>> = vec![&accounts[7], &accounts[2], &accounts[5]];
/// let guards = lock_slice(&chosen).unwrap();
/// let balances: Vec<i64> = guards.iter().map(|g| **g).collect();
/// assert_eq!(balances, [7, 2, 5]);
/// ```
#[cfg(feature = "std")]
#[inline]
#[cfg_attr(all(feature = "lockdep", not(loom)), track_caller)]
pub fn lock_slice<'a, T: ?Sized, R: Relax>(
    locks: &[&'a SpinLock<T, R>],
) -> Result<Vec<SpinLockGuard<'a, T, R>>, SameLock> {
    lock_all(locks)
}

/// Takes a lease of length `lease` on every lock of `locks`, in the global lock order, waiting
/// as [`DeadlineLock::acquire`] does; returns the leases, each with its fencing token, in the
/// caller's order. Naming one lock twice returns [`SameLock`] before anything is taken.
///
/// It returns only a whole set: once every lock is taken, it reads the clock of the lock taken
/// last once and, by that one reading, checks that every lease still runs (not run out, not taken
/// over) and renews each to end `lease` after it — so all the leases end at the same instant,
/// and none was already ended or taken over when it was returned. (They are still leases: any of
/// them may run out after it is returned, and report [`LeaseLost`](crate::LeaseLost) on use.)
///
/// A lease that ran out or was taken over while a later lock was awaited is taken again, with a
/// new token: at once if its lock is free or its lease has ended (a [`DeadlineLock::try_acquire`]),
/// otherwise by letting go of it and of every lock after it in the global order and taking those
/// again, in order, so the set is never taken out of order and cannot deadlock. Then the set is
/// checked again, by a new reading of the clock. So `lease` must be long enough to take the set
/// in: if every pass over it takes longer than `lease`, `acquire_all` keeps retrying. The one
/// exception is a zero `lease`, which ends as it starts: the leases are returned as they were
/// taken, ended (as [`DeadlineLock::acquire`] returns them), without a check.
///
/// The locks are expected to share one clock (every [`MonotonicClock`](crate::MonotonicClock) is
/// the same clock; share a [`ManualClock`](crate::ManualClock) through `&` or `Arc`): the set is
/// judged and renewed by the clock of the lock taken last.
///
/// ```
/// use std::time::Duration;
/// use fencelock::{acquire_all, DeadlineLock};
///
/// let (alice, bob) = (DeadlineLock::new(100_i64), DeadlineLock::new(0_i64));
/// let [mut from, mut to] = acquire_all([&alice, &bob], Duration::from_secs(1)).unwrap();
/// from.with_mut(|cash| *cash -= 10).unwrap();
/// to.with_mut(|cash| *cash += 10).unwrap();
/// assert!(from.token().get() == 1 && to.token().get() == 1);
/// ```
#[cfg(all(feature = "std", target_has_atomic = "64"))]
pub fn acquire_all<'a, T: ?Sized, C: Clock, const N: usize>(
    locks: [&'a DeadlineLock<T, C>; N],
    lease: Duration,
) -> Result<[Lease<'a, T, C>; N], SameLock> {
    let order = LockOrder::by_key(&locks.map(DeadlineLock::order_key))?;
    let Ok(leases) = order.take(|i| Ok::<_, Infallible>(locks[i].acquire(lease)));
    let (Some(&last), false) = (order.0.last(), lease.is_zero()) else {
        // No lock, or a zero lease: ended as soon as taken, with nothing to check or renew.
        return Ok(leases);
    };
    // Between passes every position holds a lease; during a retake, those being taken again are
    // `None` for a moment.
    let mut leases = leases.map(Some);
    loop {
        // One reading of one clock judges the whole set, and renews every lease from it.
        let now = locks[last].now();
        let lost = order.0.iter().position(|&i| {
            leases[i]
                .as_mut()
                .is_none_or(|held| held.renew_at(now, lease).is_err())
        });
        let Some(first_lost) = lost else {
            return Ok(leases.map(|held| held.expect("every position holds a lease")));
        };
        let position = order.0[first_lost];
        // Taking it again without waiting holds no lock out of order. The lost lease is dropped
        // when replaced: its release fails, or frees the lock, as for any lease.
        if let Some(fresh) = locks[position].try_acquire(lease) {
            leases[position] = Some(fresh);
            continue;
        }
        // Waiting for it while holding later locks could deadlock: let go of it and of every
        // later lock, then take them again in order.
        for &i in order.0[first_lost..].iter().rev() {
            leases[i] = None;
        }
        for &i in &order.0[first_lost..] {
            leases[i] = Some(locks[i].acquire(lease));
        }
    }
}

impl<T: ?Sized, R, const N: usize> sealed::Sealed for [&SpinLock<T, R>; N] {}

impl<'a, T: ?Sized, R: Relax, const N: usize> LockSet for [&'a SpinLock<T, R>; N] {
    type Guards = [SpinLockGuard<'a, T, R>; N];

    #[inline]
    fn lock_all_at(self, site: sealed::Site) -> Result<Self::Guards, SameLock> {
        let order = LockOrder::by_key(&self.map(SpinLock::order_key))?;
        let Ok(guards) = order.take(|i| Ok::<_, Infallible>(self[i].lock_at(site.0)));
        Ok(guards)
    }

    #[inline]
    fn try_lock_all_at(self, site: sealed::Site) -> Result<Option<Self::Guards>, SameLock> {
        let order = LockOrder::by_key(&self.map(SpinLock::order_key))?;
        Ok(order.take(|i| self[i].try_lock_at(site.0).ok_or(())).ok())
    }
}

/// Tuples of locks of different types: the same sort, then one `match` arm per element.
macro_rules! tuple_lock_set {
    ($($idx:tt: $T:ident $R:ident $guard:ident),+) => {
        impl<$($T: ?Sized, $R),+> sealed::Sealed for ($(&SpinLock<$T, $R>,)+) {}

        impl<'a, $($T: ?Sized, $R: Relax),+> LockSet for ($(&'a SpinLock<$T, $R>,)+) {
            type Guards = ($(SpinLockGuard<'a, $T, $R>,)+);

            fn lock_all_at(self, site: sealed::Site) -> Result<Self::Guards, SameLock> {
                let order = LockOrder::by_key(&[$(self.$idx.order_key()),+])?;
                $(let mut $guard = None;)+
                for position in order.0 {
                    match position {
                        $($idx => $guard = Some(self.$idx.lock_at(site.0)),)+
                        _ => {}
                    }
                }
                match ($($guard,)+) {
                    ($(Some($guard),)+) => Ok(($($guard,)+)),
                    _ => unreachable!("the lock order names every position"),
                }
            }

            fn try_lock_all_at(self, site: sealed::Site) -> Result<Option<Self::Guards>, SameLock> {
                let order = LockOrder::by_key(&[$(self.$idx.order_key()),+])?;
                $(let mut $guard = None;)+
                for position in order.0 {
                    match position {
                        // On a busy lock, returning drops the guards taken so far.
                        $($idx => match self.$idx.try_lock_at(site.0) {
                            Some(guard) => $guard = Some(guard),
                            None => return Ok(None),
                        },)+
                        _ => {}
                    }
                }
                match ($($guard,)+) {
                    ($(Some($guard),)+) => Ok(Some(($($guard,)+))),
                    _ => unreachable!("the lock order names every position"),
                }
            }
        }
    };
}

tuple_lock_set!(0: A RA a);
tuple_lock_set!(0: A RA a, 1: B RB b);
tuple_lock_set!(0: A RA a, 1: B RB b, 2: C RC c);
tuple_lock_set!(0: A RA a, 1: B RB b, 2: C RC c, 3: D RD d);
tuple_lock_set!(0: A RA a, 1: B RB b, 2: C RC c, 3: D RD d, 4: E RE e);
tuple_lock_set!(0: A RA a, 1: B RB b, 2: C RC c, 3: D RD d, 4: E RE e, 5: F RF f);

#[cfg(feature = "std")]
pub(crate) use self::slices::sorted_positions;

#[cfg(feature = "std")]
mod slices {
    use super::*;

    /// Positions `0..keys.len()` sorted by key, stably (equal keys keep the caller's order).
    pub(crate) fn sorted_positions(keys: &[usize]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by_key(|&position| keys[position]);
        order
    }

    /// Takes one guard per position of `order` with `take`, returning them in position order; on
    /// failure the guards taken so far are dropped.
    fn take_slice<G, E>(
        order: &[usize],
        mut take: impl FnMut(usize) -> Result<G, E>,
    ) -> Result<Vec<G>, E> {
        let mut slots: Vec<Option<G>> = (0..order.len()).map(|_| None).collect();
        for &position in order {
            slots[position] = Some(take(position)?);
        }
        // Every slot is `Some`: `order` is a permutation of the positions.
        Ok(slots.into_iter().flatten().collect())
    }

    impl<T: ?Sized, R> sealed::Sealed for &[&SpinLock<T, R>] {}

    impl<'a, T: ?Sized, R: Relax> LockSet for &[&'a SpinLock<T, R>] {
        type Guards = Vec<SpinLockGuard<'a, T, R>>;

        fn lock_all_at(self, site: sealed::Site) -> Result<Self::Guards, SameLock> {
            let keys: Vec<usize> = self.iter().map(|lock| lock.order_key()).collect();
            let order = sorted_positions(&keys);
            distinct(&keys, &order)?;
            let Ok(guards) = take_slice(&order, |i| Ok::<_, Infallible>(self[i].lock_at(site.0)));
            Ok(guards)
        }

        fn try_lock_all_at(self, site: sealed::Site) -> Result<Option<Self::Guards>, SameLock> {
            let keys: Vec<usize> = self.iter().map(|lock| lock.order_key()).collect();
            let order = sorted_positions(&keys);
            distinct(&keys, &order)?;
            Ok(take_slice(&order, |i| self[i].try_lock_at(site.0).ok_or(())).ok())
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn order_sorts_by_key_and_keeps_positions() {
        let order = LockOrder::by_key(&[30, 10, 20]).unwrap();
        assert_eq!(order.0, [1, 2, 0]);
        assert_eq!(LockOrder::<0>::by_key(&[]).unwrap().0, []);
    }

    #[test]
    fn order_reports_the_earliest_repeat() {
        assert_eq!(
            LockOrder::by_key(&[5, 9, 9, 5]).err(),
            Some(SameLock {
                first: 1,
                second: 2
            })
        );
        assert_eq!(
            LockOrder::by_key(&[7, 1, 7, 7]).err(),
            Some(SameLock {
                first: 0,
                second: 2
            })
        );
    }

    #[test]
    fn take_drops_what_it_took_when_one_fails() {
        use std::cell::Cell;
        struct Counted<'c>(&'c Cell<u32>);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        let dropped = Cell::new(0);
        let order = LockOrder::by_key(&[3, 1, 2]).unwrap();
        let result = order.take(|i| {
            if i == 0 {
                Err(i)
            } else {
                Ok(Counted(&dropped))
            }
        });
        assert_eq!(result.err(), Some(0));
        assert_eq!(dropped.get(), 2); // positions 1 and 2 were taken first, then dropped
    }
}
