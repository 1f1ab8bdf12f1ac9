//! Time for leases: a [`Clock`] says how long it has been since its own epoch.
//!
//! | clock              | runs                         | for                                     |
//! |--------------------|------------------------------|-----------------------------------------|
//! | [`MonotonicClock`] | in real time (`Instant`)     | production (the default); needs `std`   |
//! | [`ManualClock`]    | only when `advance` is called | tests and loom models that drive time  |
//!
//! A lock reads its clock at most once per uncontended operation (a waiter reads it again at every
//! look): on the real machine the read is the most expensive part of taking a lease.

use core::time::Duration;

/// How long a waiter sleeps, at most, before it looks at a clock that does not run in real time
/// again (see [`Clock::max_sleep`]).
const UNWATCHED_SLEEP: Duration = Duration::from_millis(1);

/// A monotonic clock: [`now`](Clock::now) never goes backwards.
///
/// Implemented for `&C` and (with `std`) `Arc<C>`, so that one [`ManualClock`] can drive several
/// locks.
///
/// # Example
///
/// A clock that counts calls, one millisecond each:
///
/// ```
/// use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
/// use core::time::Duration;
/// use fencelock::Clock;
///
/// struct Ticks(AtomicU64);
///
/// impl Clock for Ticks {
///     fn now(&self) -> Duration {
///         Duration::from_millis(self.0.fetch_add(1, Relaxed))
///     }
/// }
///
/// let ticks = Ticks(AtomicU64::new(0));
/// assert!(ticks.now() < ticks.now());
/// ```
pub trait Clock: Send + Sync {
    /// Time since this clock's epoch. Never less than an earlier reading.
    fn now(&self) -> Duration;

    /// How long a waiter may sleep, in real time, before reading this clock again, when what it
    /// waits for (a lease's end) lies `ahead` away on this clock. A release wakes waiters anyway;
    /// this bounds how late a waiter notices a deadline passing.
    ///
    /// The default, `ahead` capped at one millisecond, suits clocks that do not run in real time:
    /// a [`ManualClock`] may jump past a deadline at any moment and has no way to wake anyone, so
    /// waiters look at it again every millisecond. [`MonotonicClock`] returns `ahead` unchanged.
    #[inline]
    fn max_sleep(&self, ahead: Duration) -> Duration {
        ahead.min(UNWATCHED_SLEEP)
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    #[inline]
    fn now(&self) -> Duration {
        (**self).now()
    }

    #[inline]
    fn max_sleep(&self, ahead: Duration) -> Duration {
        (**self).max_sleep(ahead)
    }
}

#[cfg(feature = "std")]
impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    #[inline]
    fn now(&self) -> Duration {
        (**self).now()
    }

    #[inline]
    fn max_sleep(&self, ahead: Duration) -> Duration {
        (**self).max_sleep(ahead)
    }
}

/// Real, monotonic time: the clock [`std::time::Instant`] reads.
///
/// On unix it reads `CLOCK_MONOTONIC` itself, whose epoch is the machine's boot: that is the
/// clock `Instant::now()` reads, without the epoch arithmetic an `Instant` needs to become a
/// `Duration`. The clock read is most of the cost of taking a lease; the direct read saved about
/// 2 ns of a 55 ns `try_acquire` + `release` (`cargo bench --bench deadline_lock`), within noise.
/// Elsewhere (and under loom) it is an `Instant` measured from the first time any
/// `MonotonicClock` was read in the process. Zero-sized either way.
///
/// Needs the `std` feature.
///
/// # Example
///
/// ```
/// use fencelock::{Clock, MonotonicClock};
///
/// let clock = MonotonicClock;
/// let before = clock.now();
/// assert!(clock.now() >= before);
/// ```
#[cfg(feature = "std")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MonotonicClock;

#[cfg(feature = "std")]
impl MonotonicClock {
    /// `CLOCK_MONOTONIC`, read directly.
    #[cfg(all(unix, not(loom)))]
    #[inline]
    fn read() -> Duration {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid, writable `timespec`, and CLOCK_MONOTONIC exists on every unix
        // Rust's std supports (it is what `Instant` reads).
        let failed = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0;
        match (u64::try_from(now.tv_sec), u32::try_from(now.tv_nsec)) {
            (Ok(secs), Ok(nanos)) if !failed && nanos < 1_000_000_000 => Duration::new(secs, nanos),
            _ => Self::read_instant(),
        }
    }

    /// `Instant`, since the first read in the process: the portable way, and the unix fallback
    /// should `clock_gettime` ever fail.
    #[cfg_attr(all(unix, not(loom)), cold)]
    #[cfg_attr(not(all(unix, not(loom))), inline)]
    fn read_instant() -> Duration {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        EPOCH.get_or_init(std::time::Instant::now).elapsed()
    }
}

#[cfg(feature = "std")]
impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> Duration {
        #[cfg(all(unix, not(loom)))]
        return Self::read();
        #[cfg(not(all(unix, not(loom))))]
        return Self::read_instant();
    }

    /// `ahead` itself: this clock runs in real time, so a waiter can sleep until the deadline.
    #[inline]
    fn max_sleep(&self, ahead: Duration) -> Duration {
        ahead
    }
}

#[cfg(target_has_atomic = "64")]
pub use self::manual::ManualClock;

#[cfg(target_has_atomic = "64")]
mod manual {
    use core::fmt;
    use core::time::Duration;

    use super::Clock;
    use crate::primitive::{const_fn_unless_loom, AtomicU64, Ordering::Relaxed};

    /// A clock that only moves when told to: tests and loom models drive time with
    /// [`advance`](ManualClock::advance), so nothing depends on how fast the machine runs.
    ///
    /// Built on the crate's atomics, so under `cfg(loom)` it is a loom atomic and models explore
    /// every interleaving of clock reads and advances. Reading or advancing it orders nothing
    /// (it is `Relaxed`, like a real clock): it says what time it is, it does not publish
    /// anything.
    ///
    /// Needs 64-bit atomics (`target_has_atomic = "64"`).
    ///
    /// # Example
    ///
    /// ```
    /// use core::time::Duration;
    /// use fencelock::{Clock, ManualClock};
    ///
    /// let clock = ManualClock::new();
    /// assert_eq!(clock.now(), Duration::ZERO);
    /// clock.advance(Duration::from_millis(5));
    /// assert_eq!(clock.now(), Duration::from_millis(5));
    /// clock.advance(Duration::MAX); // saturates, never wraps
    /// assert_eq!(clock.now(), Duration::from_nanos(u64::MAX));
    /// ```
    pub struct ManualClock {
        /// Nanoseconds since the epoch; only ever grows, and saturates at `u64::MAX`.
        nanos: AtomicU64,
    }

    impl ManualClock {
        const_fn_unless_loom! {
            /// A clock at its epoch: `now()` is zero until advanced.
            #[inline]
            #[must_use]
            pub fn new() -> Self {
                Self { nanos: AtomicU64::new(0) }
            }
        }

        /// Moves the clock forward by `by`, saturating at `u64::MAX` nanoseconds (about 584
        /// years) rather than wrapping.
        #[inline]
        pub fn advance(&self, by: Duration) {
            let by = super::nanos(by);
            // Relaxed: the clock's value is the only thing this publishes (see the type's doc).
            let _ = self
                .nanos
                .fetch_update(Relaxed, Relaxed, |now| Some(now.saturating_add(by)));
        }
    }

    impl Clock for ManualClock {
        #[inline]
        fn now(&self) -> Duration {
            // Relaxed: a reading orders nothing, as with a real clock.
            Duration::from_nanos(self.nanos.load(Relaxed))
        }
    }

    impl Default for ManualClock {
        fn default() -> Self {
            Self::new()
        }
    }

    impl fmt::Debug for ManualClock {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_tuple("ManualClock").field(&self.now()).finish()
        }
    }
}

/// `duration` in whole nanoseconds, saturating at `u64::MAX` (about 584 years): the unit of every
/// deadline in the crate.
#[cfg(target_has_atomic = "64")]
#[inline]
pub(crate) fn nanos(duration: Duration) -> u64 {
    // u64 arithmetic rather than `as_nanos()`'s u128: this runs on every acquisition.
    duration
        .as_secs()
        .checked_mul(1_000_000_000)
        .and_then(|nanos| nanos.checked_add(u64::from(duration.subsec_nanos())))
        .unwrap_or(u64::MAX)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn nanos_saturate() {
        assert_eq!(nanos(Duration::ZERO), 0);
        assert_eq!(nanos(Duration::from_secs(1)), 1_000_000_000);
        assert_eq!(nanos(Duration::MAX), u64::MAX);
        assert_eq!(nanos(Duration::from_nanos(u64::MAX)), u64::MAX);
        assert_eq!(nanos(Duration::new(18_446_744_073, 709_551_616)), u64::MAX);
    }

    #[test]
    fn default_max_sleep_is_capped() {
        let clock = ManualClock::new();
        assert_eq!(clock.max_sleep(Duration::from_secs(10)), UNWATCHED_SLEEP);
        assert_eq!(clock.max_sleep(Duration::ZERO), Duration::ZERO);
        #[cfg(feature = "std")]
        assert_eq!(
            MonotonicClock.max_sleep(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }
}
