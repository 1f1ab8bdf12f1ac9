//! Fencing tokens, and the resources that check them.
//!
//! The seed's "Lock Timeout" hazard: a holder that merely stalled wakes up after its lease ended
//! and writes, while a newer holder is already at work. The lock cannot stop it — the stalled
//! thread does not know it lost the lock. The *resource* can: every lease carries a token from a
//! strictly increasing sequence, and a [`Fenced`] resource refuses any write whose token is below
//! the highest it has already admitted.

use core::fmt;

use crate::spin_lock::SpinLock;

/// A number from a strictly increasing sequence, one per acquisition of a lock: a later lease
/// always has a larger token.
///
/// [`DeadlineLock`](crate::DeadlineLock) issues them from 1 up; [`new`](FencingToken::new) makes
/// one from a number issued elsewhere (a lock server, a database sequence).
///
/// ```
/// use fencelock::FencingToken;
///
/// let old = FencingToken::new(33);
/// let new = FencingToken::new(34);
/// assert!(old < new);
/// assert_eq!(new.get(), 34);
/// assert_eq!(new.to_string(), "34");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// The token numbered `value`.
    #[inline]
    #[must_use]
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The token's number.
    #[inline]
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A token as a SQL integer (`BIGINT`, SQLite's `INTEGER`: signed 64 bits), checked: every token
/// a lock issues fits (Redis tokens stay below 2⁵³), and one above `i64::MAX` is an error rather
/// than a negative number that every check would admit.
///
/// ```
/// use fencelock::FencingToken;
///
/// let column = i64::try_from(FencingToken::new(34)).unwrap(); // `UPDATE … SET fence = ?1 …`
/// assert_eq!(FencingToken::try_from(column).unwrap(), FencingToken::new(34));
/// assert!(i64::try_from(FencingToken::new(u64::MAX)).is_err());
/// assert!(FencingToken::try_from(-1_i64).is_err());
/// ```
impl TryFrom<FencingToken> for i64 {
    type Error = core::num::TryFromIntError;

    #[inline]
    fn try_from(token: FencingToken) -> Result<Self, Self::Error> {
        i64::try_from(token.0)
    }
}

/// A token read back from a SQL integer column; a negative number is an error.
impl TryFrom<i64> for FencingToken {
    type Error = core::num::TryFromIntError;

    #[inline]
    fn try_from(column: i64) -> Result<Self, Self::Error> {
        u64::try_from(column).map(Self)
    }
}

/// A [`Fenced`] resource refused a write: a newer token has already written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StaleToken {
    /// The token the refused write carried.
    pub presented: FencingToken,
    /// The highest token the resource had admitted when it refused.
    pub highest: FencingToken,
}

impl fmt::Display for StaleToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stale fencing token {}: the resource has admitted token {}",
            self.presented, self.highest
        )
    }
}

impl core::error::Error for StaleToken {}

/// A resource that admits writes in token order: a write whose token is at least the highest seen
/// so far is admitted (and its token recorded); a lower one is refused with [`StaleToken`] and
/// changes nothing.
///
/// Writes and reads are short critical sections on a [`SpinLock`], so a write costs about one
/// spin-lock round trip plus a comparison.
///
/// ```
/// use fencelock::{Fenced, FencingToken, StaleToken};
///
/// let ledger = Fenced::new(Vec::new());
/// let (t33, t34) = (FencingToken::new(33), FencingToken::new(34));
///
/// ledger.write(t34, |entries| entries.push("new holder")).unwrap();
/// // The stalled holder wakes up and writes with its old token: refused.
/// let late = ledger.write(t33, |entries| entries.push("stalled holder"));
/// assert_eq!(late, Err(StaleToken { presented: t33, highest: t34 }));
/// assert_eq!(ledger.read(|entries| entries.clone()), ["new holder"]);
/// ```
pub struct Fenced<T> {
    inner: SpinLock<Guarded<T>>,
}

/// What the spin lock protects: the value and the highest token admitted so far.
struct Guarded<T> {
    highest: FencingToken,
    value: T,
}

impl<T> Fenced<T> {
    crate::primitive::const_fn_unless_loom! {
        /// A resource holding `value`, that has admitted no token yet (`highest()` is token 0).
        #[inline]
        pub fn new(value: T) -> Self {
            Self { inner: SpinLock::new(Guarded { highest: FencingToken(0), value }) }
        }
    }

    /// Runs `write` on the value if `token` is at least the highest token admitted so far, and
    /// records `token` as the highest; otherwise runs nothing and returns [`StaleToken`].
    ///
    /// Equal tokens are admitted: one holder may write many times.
    #[inline]
    pub fn write<R>(
        &self,
        token: FencingToken,
        write: impl FnOnce(&mut T) -> R,
    ) -> Result<R, StaleToken> {
        let mut guarded = self.inner.lock();
        if token < guarded.highest {
            let stale = StaleToken {
                presented: token,
                highest: guarded.highest,
            };
            crate::trace::warn_event!(%stale, "fenced write refused");
            return Err(stale);
        }
        guarded.highest = token;
        Ok(write(&mut guarded.value))
    }

    /// Runs `read` on the value. Reading needs no token: it cannot harm anyone.
    #[inline]
    pub fn read<R>(&self, read: impl FnOnce(&T) -> R) -> R {
        read(&self.inner.lock().value)
    }

    /// The highest token admitted so far (token 0 before the first write): a snapshot.
    #[inline]
    pub fn highest(&self) -> FencingToken {
        self.inner.lock().highest
    }

    /// The value, through `&mut self`: the borrow proves nobody writes concurrently.
    #[inline]
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner.get_mut().value
    }

    /// Consumes the resource and returns the value.
    #[inline]
    pub fn into_inner(self) -> T {
        self.inner.into_inner().value
    }
}

impl<T: Default> Default for Fenced<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: fmt::Debug> fmt::Debug for Fenced<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Fenced");
        match self.inner.try_lock() {
            Some(guarded) => d
                .field("highest", &guarded.highest)
                .field("value", &guarded.value),
            None => d.field("value", &format_args!("<locked>")),
        };
        d.finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn admits_equal_and_higher_refuses_lower() {
        let fenced = Fenced::new(0_u32);
        assert_eq!(fenced.highest(), FencingToken(0));
        assert_eq!(fenced.write(FencingToken(2), |v| *v += 1), Ok(()));
        assert_eq!(fenced.write(FencingToken(2), |v| *v += 1), Ok(()));
        assert_eq!(
            fenced.write(FencingToken(1), |v| *v += 100),
            Err(StaleToken {
                presented: FencingToken(1),
                highest: FencingToken(2)
            })
        );
        assert_eq!(fenced.write(FencingToken(5), |v| *v += 1), Ok(()));
        assert_eq!(fenced.highest(), FencingToken(5));
        assert_eq!(fenced.read(|v| *v), 3);
        assert_eq!(
            format!("{fenced:?}"),
            "Fenced { highest: FencingToken(5), value: 3 }"
        );
    }
}
