//! `LockTable<K>`: a lock per key, for keys not known up front (the seed's per-stock locks), in
//! memory that does not grow.
//!
//! The table is *striped*: a fixed array of [`SpinLock`]s, chosen when it is built, and a key is
//! guarded by the stripe its hash picks. Keys come and go without allocating or freeing anything;
//! the price is that two different keys may share a stripe and then exclude each other (false
//! contention, never a missed exclusion). The stripes are ordinary spin locks, so they share the
//! global lock order with every other lock: [`LockTable::lock_all`] takes them in that order, and
//! can be mixed with [`lock_all`](crate::lock_all) and the `lockdep` feature.

use core::borrow::Borrow;
use core::fmt;
use core::hash::{BuildHasher, Hash};
use core::marker::PhantomData;
use std::collections::hash_map::RandomState;

use crate::lockdep;
use crate::ordered::{sorted_positions, SameLock};
use crate::primitive::Arc;
use crate::relax::{Adaptive, Relax};
use crate::spin_lock::{SpinLock, SpinLockGuard};

/// Stripes of a table built with [`LockTable::new`].
const DEFAULT_STRIPES: usize = 64;
/// The most stripes a table has, whatever it is asked for (8 MiB of stripes).
const MAX_STRIPES: usize = 1 << 16;

/// One stripe, on a cache line of its own, so that traffic on one stripe does not slow its
/// neighbours. 128 bytes: two 64-byte lines, since some processors fetch lines in pairs.
#[repr(align(128))]
struct Stripe<R>(SpinLock<(), R>);

/// Locks named by key: `lock(&key)` excludes every other holder of the same key.
///
/// A table has a fixed number of stripes (a power of two, [`new`](Self::new) gives 64); each key
/// is guarded by the stripe its hash picks, so memory stays the same however many keys come and
/// go. Two different keys on one stripe exclude each other too: more stripes mean less of that
/// false contention. [`lock_all`](Self::lock_all) takes several keys without deadlock, and grants
/// two keys on one stripe by taking the stripe once.
///
/// `K` is the key type (`lock` takes any borrowed form of it, as `HashMap::get` does), `S` builds
/// the hasher, `R` is the stripes' waiting strategy.
///
/// # Example
///
/// ```
/// use fencelock::LockTable;
///
/// let stocks: LockTable<String> = LockTable::new();
/// let aapl = stocks.lock("AAPL");
/// assert!(stocks.try_lock("AAPL").is_none());
/// drop(aapl);
///
/// let both = stocks.lock_all(&["MSFT".to_string(), "GOOG".to_string()]).unwrap();
/// assert_eq!(both.len(), 2);
/// ```
pub struct LockTable<K: ?Sized, S = RandomState, R = Adaptive> {
    stripes: Box<[Stripe<R>]>,
    hasher: S,
    /// The table stores no key: `K` only says what may name a lock.
    keys: PhantomData<fn(&K)>,
}

impl<K: ?Sized> LockTable<K> {
    /// A table of 64 stripes, hashing with `RandomState`.
    pub fn new() -> Self {
        Self::with_stripes(DEFAULT_STRIPES)
    }

    /// A table of `stripes` stripes, rounded up to a power of two between 1 and 65 536.
    ///
    /// ```
    /// use fencelock::LockTable;
    ///
    /// assert_eq!(LockTable::<u64>::with_stripes(100).stripes(), 128);
    /// assert_eq!(LockTable::<u64>::with_stripes(0).stripes(), 1);
    /// ```
    pub fn with_stripes(stripes: usize) -> Self {
        Self::with_stripes_and_hasher(stripes, RandomState::new())
    }
}

impl<K: ?Sized, S, R: Default> LockTable<K, S, R> {
    /// A table of `stripes` stripes (rounded up to a power of two between 1 and 65 536), hashing
    /// keys with `hasher`, its stripes waiting with strategy `R`.
    ///
    /// ```
    /// use fencelock::{LockTable, Spin};
    /// use std::hash::BuildHasherDefault;
    /// use std::collections::hash_map::DefaultHasher;
    ///
    /// let table: LockTable<u32, BuildHasherDefault<DefaultHasher>, Spin> =
    ///     LockTable::with_stripes_and_hasher(8, BuildHasherDefault::default());
    /// let _seven = table.lock(&7);
    /// ```
    pub fn with_stripes_and_hasher(stripes: usize, hasher: S) -> Self {
        let count = stripes.clamp(1, MAX_STRIPES).next_power_of_two();
        Self {
            stripes: (0..count)
                .map(|_| Stripe(SpinLock::with_relax((), R::default())))
                .collect(),
            hasher,
            keys: PhantomData,
        }
    }
}

impl<K: ?Sized, S, R> LockTable<K, S, R> {
    /// How many stripes the table has: a power of two.
    #[inline]
    pub fn stripes(&self) -> usize {
        self.stripes.len()
    }
}

impl<K: ?Sized, S: BuildHasher, R> LockTable<K, S, R> {
    /// The stripe that guards `key`, in `0..self.stripes()`. Two keys with the same stripe exclude
    /// each other.
    ///
    /// ```
    /// use fencelock::LockTable;
    ///
    /// let table: LockTable<u64> = LockTable::with_stripes(1);
    /// assert_eq!(table.stripe_of(&7), table.stripe_of(&8)); // one stripe guards every key
    /// ```
    #[inline]
    pub fn stripe_of<Q: ?Sized + Hash>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
    {
        let hash = self.hasher.hash_one(key);
        // Fold the high half in: a weak hasher may vary only the high bits.
        (hash ^ (hash >> 32)) as usize & (self.stripes.len() - 1)
    }
}

impl<K: ?Sized, S: BuildHasher, R: Relax> LockTable<K, S, R> {
    /// Locks `key`, waiting until no other guard holds it (or a key on the same stripe).
    ///
    /// Like [`SpinLock::lock`], it is not reentrant: locking a key this thread holds (or one on the
    /// same stripe) spins forever. Use [`lock_all`](Self::lock_all) for several keys at once.
    ///
    /// ```
    /// use fencelock::LockTable;
    ///
    /// let accounts: LockTable<u64> = LockTable::new();
    /// let guard = accounts.lock(&42);
    /// assert!(accounts.try_lock(&42).is_none());
    /// ```
    #[inline]
    #[cfg_attr(all(feature = "lockdep", not(loom)), track_caller)]
    pub fn lock<Q: ?Sized + Hash>(&self, key: &Q) -> KeyGuard<'_, R>
    where
        K: Borrow<Q>,
    {
        let stripe = &self.stripes[self.stripe_of(key)].0;
        KeyGuard {
            stripe: Holding::Alone(stripe.lock_at(lockdep::call_site())),
        }
    }

    /// Locks `key` if no guard holds it (or a key on the same stripe) right now, without waiting.
    #[inline]
    #[cfg_attr(all(feature = "lockdep", not(loom)), track_caller)]
    pub fn try_lock<Q: ?Sized + Hash>(&self, key: &Q) -> Option<KeyGuard<'_, R>>
    where
        K: Borrow<Q>,
    {
        let stripe = &self.stripes[self.stripe_of(key)].0;
        let guard = stripe.try_lock_at(lockdep::call_site())?;
        Some(KeyGuard {
            stripe: Holding::Alone(guard),
        })
    }

    /// Locks every key of `keys`, without deadlock: their stripes are taken in the global lock
    /// order, each stripe once. Returns one guard per key, in the order of `keys`; a key's guard
    /// holds it until it drops (when several keys share a stripe, the stripe is released with
    /// the last of their guards).
    ///
    /// A key named twice (by `==`) returns [`SameLock`] with its two positions, before anything
    /// is locked. Two different keys on one stripe are both granted. Finding repeats compares the
    /// keys that share a stripe with each other, so asking for many more keys than the table has
    /// stripes costs time quadratic in the keys per stripe.
    ///
    /// ```
    /// use fencelock::{LockTable, SameLock};
    ///
    /// let accounts: LockTable<u64> = LockTable::with_stripes(1); // every key on one stripe
    /// let guards = accounts.lock_all(&[7, 3]).unwrap(); // both granted
    /// assert_eq!(guards.len(), 2);
    /// drop(guards);
    /// assert_eq!(accounts.lock_all(&[7, 3, 7]).unwrap_err(), SameLock { first: 0, second: 2 });
    /// ```
    #[cfg_attr(all(feature = "lockdep", not(loom)), track_caller)]
    pub fn lock_all(&self, keys: &[K]) -> Result<Vec<KeyGuard<'_, R>>, SameLock>
    where
        K: Hash + Eq + Sized,
    {
        let site = lockdep::call_site();
        let stripes: Vec<usize> = keys.iter().map(|key| self.stripe_of(key)).collect();
        // Stripes sit in one array, so their index order is their address order: the global one.
        let order = sorted_positions(&stripes);
        let runs = || order.chunk_by(|&a, &b| stripes[a] == stripes[b]);
        if let Some(same) = runs()
            .filter_map(|run| first_equal(keys, run))
            .min_by_key(|s| s.second)
        {
            return Err(same);
        }
        let mut guards: Vec<Option<KeyGuard<'_, R>>> = (0..keys.len()).map(|_| None).collect();
        for run in runs() {
            let guard = self.stripes[stripes[run[0]]].0.lock_at(site);
            if let [alone] = run {
                guards[*alone] = Some(KeyGuard {
                    stripe: Holding::Alone(guard),
                });
            } else {
                let shared = Arc::new(guard);
                for &position in run {
                    guards[position] = Some(KeyGuard {
                        stripe: Holding::Shared(Arc::clone(&shared)),
                    });
                }
            }
        }
        // Every position is `Some`: the runs cover `order`, a permutation of the positions.
        Ok(guards.into_iter().flatten().collect())
    }
}

/// The earliest repeated key among the positions `run` (increasing, all on one stripe).
fn first_equal<K: Eq>(keys: &[K], run: &[usize]) -> Option<SameLock> {
    run.iter().enumerate().skip(1).find_map(|(j, &second)| {
        run[..j]
            .iter()
            .find(|&&first| keys[first] == keys[second])
            .map(|&first| SameLock { first, second })
    })
}

impl<K: ?Sized> Default for LockTable<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: ?Sized, S, R> fmt::Debug for LockTable<K, S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockTable")
            .field("stripes", &self.stripes.len())
            .finish_non_exhaustive()
    }
}

/// Proof that a key of a [`LockTable`] is held; dropping it releases the key.
///
/// `!Send`, like [`SpinLockGuard`]: with the `send_guard` feature it is `Send`, and may be dropped
/// on another thread.
#[must_use = "if unused the key is released at once"]
pub struct KeyGuard<'a, R = Adaptive> {
    stripe: Holding<'a, R>,
}

/// How a key guard holds its stripe. The guards inside are never read: they are held for their
/// `Drop`, which releases the stripe.
#[allow(dead_code)]
enum Holding<'a, R> {
    /// The only key held on the stripe: the stripe is released with this guard.
    Alone(SpinLockGuard<'a, (), R>),
    /// One of several keys of one `lock_all` on the stripe: released with the last of them.
    Shared(Arc<SpinLockGuard<'a, (), R>>),
}

impl<R> fmt::Debug for KeyGuard<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = matches!(self.stripe, Holding::Shared(_));
        f.debug_struct("KeyGuard")
            .field("shares_stripe", &shared)
            .finish()
    }
}
