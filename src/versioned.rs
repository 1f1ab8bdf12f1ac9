//! Optimistic concurrency tokens: the seed's "Concurrency Tokens".
//!
//! Instead of holding a lock while working, read the value together with its [`Version`], work
//! without holding anything, and commit only if the version is still the one read; otherwise the
//! commit is refused ([`Conflict`]) and the caller retries or gives up.

use core::fmt;

use crate::primitive;
use crate::relax::Backoff;
use crate::spin_lock::SpinLock;

/// Which commit produced a [`Versioned`] value: 0 for the initial value, one more per commit.
///
/// ```
/// use fencelock::Versioned;
///
/// let price = Versioned::new(100);
/// let (_, version) = price.load();
/// assert_eq!(version.get(), 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(u64);

impl Version {
    /// The version numbered `value`: for versions kept outside this process — a Redis record's
    /// (`fencelock-redis`'s `RedisVersioned`), a database row's `version` column.
    #[inline]
    #[must_use]
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The version's number.
    #[inline]
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// A version as a SQL integer (signed 64 bits), checked as
/// [`FencingToken`](crate::FencingToken)'s is.
///
/// ```
/// use fencelock::Version;
///
/// let column = i64::try_from(Version::new(7)).unwrap(); // `… WHERE id = ?2 AND version = ?1`
/// assert_eq!(Version::try_from(column).unwrap(), Version::new(7));
/// assert!(i64::try_from(Version::new(u64::MAX)).is_err());
/// ```
impl TryFrom<Version> for i64 {
    type Error = core::num::TryFromIntError;

    #[inline]
    fn try_from(version: Version) -> Result<Self, Self::Error> {
        i64::try_from(version.0)
    }
}

/// A version read back from a SQL integer column; a negative number is an error.
impl TryFrom<i64> for Version {
    type Error = core::num::TryFromIntError;

    #[inline]
    fn try_from(column: i64) -> Result<Self, Self::Error> {
        u64::try_from(column).map(Self)
    }
}

/// A refused commit: the value changed since `expected` was read. Carries the rejected value
/// back, so that nothing is lost.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Conflict<T> {
    /// The value that was not committed.
    pub rejected: T,
    /// The version the commit expected.
    pub expected: Version,
    /// The version the value had when the commit was refused.
    pub current: Version,
}

impl<T> Conflict<T> {
    /// The rejected value.
    #[inline]
    pub fn into_inner(self) -> T {
        self.rejected
    }
}

impl<T> fmt::Debug for Conflict<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conflict")
            .field("expected", &self.expected)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for Conflict<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "version conflict: expected {}, the value is at {}",
            self.expected, self.current
        )
    }
}

impl<T> core::error::Error for Conflict<T> {}

/// A value with a version that every commit increments: optimistic concurrency.
///
/// [`load`](Versioned::load) a copy and its version, compute without holding anything, then
/// [`commit`](Versioned::commit): it succeeds only if nobody committed in between. The
/// compare-and-replace itself is a short critical section on a [`SpinLock`] (an arbitrary `T`
/// cannot be swapped in one atomic instruction); the work between load and commit holds nothing.
///
/// ```
/// use fencelock::Versioned;
///
/// let stock = Versioned::new(10_u32);
/// let (units, seen) = stock.load();
/// // Someone else sells a unit in between...
/// stock.update(|units| units - 1);
/// // ...so our commit, based on a stale read, is refused and hands our value back.
/// let conflict = stock.commit(seen, units - 3).unwrap_err();
/// assert_eq!(conflict.rejected, 7);
/// assert_eq!(stock.load().0, 9);
/// ```
pub struct Versioned<T> {
    inner: SpinLock<(Version, T)>,
}

impl<T> Versioned<T> {
    primitive::const_fn_unless_loom! {
        /// `value` at version 0.
        #[inline]
        pub fn new(value: T) -> Self {
            Self { inner: SpinLock::new((Version(0), value)) }
        }
    }

    /// Replaces the value with `new` if its version is still `expected`, and returns the new
    /// version; otherwise changes nothing and hands `new` back in a [`Conflict`].
    ///
    /// A value that has been committed `u64::MAX` times refuses further commits rather than
    /// reuse a version (unreachable in practice: centuries at a commit per nanosecond).
    #[inline]
    pub fn commit(&self, expected: Version, new: T) -> Result<Version, Conflict<T>> {
        let mut current = self.inner.lock();
        let next = match current.0 .0.checked_add(1) {
            Some(next) if current.0 == expected => Version(next),
            _ => {
                return Err(Conflict {
                    rejected: new,
                    expected,
                    current: current.0,
                })
            }
        };
        *current = (next, new);
        Ok(next)
    }

    /// Consumes the cell and returns the value.
    #[inline]
    pub fn into_inner(self) -> T {
        self.inner.into_inner().1
    }
}

impl<T: Clone> Versioned<T> {
    /// A copy of the value, and its version.
    #[inline]
    pub fn load(&self) -> (T, Version) {
        let current = self.inner.lock();
        (current.1.clone(), current.0)
    }

    /// Commits `change(&value)` on the latest value, reading again and retrying for as long as
    /// other commits get in first; returns the version committed. `change` may run several times,
    /// and runs without holding anything.
    pub fn update(&self, mut change: impl FnMut(&T) -> T) -> Version {
        let mut attempt = 0_u32;
        loop {
            let (value, version) = self.load();
            match self.commit(version, change(&value)) {
                Ok(committed) => return committed,
                Err(_) => {
                    primitive::relax::<Backoff>(attempt);
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }
}

impl<T: Default> Default for Versioned<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: fmt::Debug> fmt::Debug for Versioned<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Versioned");
        match self.inner.try_lock() {
            Some(current) => d.field("version", &current.0).field("value", &current.1),
            None => d.field("value", &format_args!("<locked>")),
        };
        d.finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn commit_checks_the_version() {
        let cell = Versioned::new(String::from("a"));
        let (_, v0) = cell.load();
        let v1 = cell.commit(v0, "b".into()).unwrap();
        assert_eq!(v1.get(), 1);
        let conflict = cell.commit(v0, "c".into()).unwrap_err();
        assert_eq!((conflict.expected, conflict.current), (v0, v1));
        assert_eq!(conflict.into_inner(), "c");
        assert_eq!(cell.update(|s| s.clone() + "!"), Version(2));
        assert_eq!(cell.load(), ("b!".to_string(), Version(2)));
    }

    #[test]
    fn the_last_version_is_never_reused() {
        let cell = Versioned {
            inner: SpinLock::new((Version(u64::MAX), 0)),
        };
        let refused = cell.commit(Version(u64::MAX), 1).unwrap_err();
        assert_eq!(refused.current, Version(u64::MAX));
        assert_eq!(cell.into_inner(), 0);
    }
}
