//! [`KeepAlive`] and [`KeptLease`]: a lease that renews itself while the work runs, and tells the
//! holder the moment it is lost.
//!
//! The two known bugs of the watchdogs in use today are a renewal that fails silently (logged,
//! while the holder writes on) and a renewal that outlives the unlock. Here a failed, refused or
//! late renewal marks the lease lost at once and is never retried (another client may hold the
//! lock by then); [`KeptLease::lost`] reports it no later than the lease's own validity would
//! have ended, because it also compares the clock with the validity of the last renewal; and
//! [`KeptLease::release`] stops the renewer — waiting for a renewal in flight — before it
//! releases, so no renewal runs after it returns.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fencelock::{FencingToken, LeaseLost};

use crate::error::Error;
use crate::lock::RedisLease;

/// How a [`KeptLease`] renews: every third of the TTL by default, with no cap on the hold.
///
/// ```
/// use std::time::Duration;
/// use fencelock_redis::KeepAlive;
///
/// let policy = KeepAlive::default()
///     .every(Duration::from_millis(500))   // renew twice a second
///     .max_hold(Duration::from_secs(60)); // then let the lease end by its TTL
/// # let _ = policy;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct KeepAlive {
    every: Option<Duration>,
    max_hold: Option<Duration>,
}

impl KeepAlive {
    /// Renews every `interval`. An interval that is not shorter than the lease's TTL (or zero)
    /// is clamped to half the TTL: a renewal must land before the lease ends.
    pub fn every(mut self, interval: Duration) -> Self {
        self.every = Some(interval);
        self
    }

    /// Stops renewing `total` after [`RedisLease::keep_alive`] was called; the lease then ends
    /// by its TTL (and [`KeptLease::lost`] says `Expired`), so a stuck worker cannot hold a
    /// resource forever.
    pub fn max_hold(mut self, total: Duration) -> Self {
        self.max_hold = Some(total);
        self
    }

    /// The interval for a lease of `ttl`.
    pub(crate) fn interval(&self, ttl: Duration) -> Duration {
        match self.every {
            Some(every) if !every.is_zero() && every < ttl => every,
            Some(_) => ttl / 2,
            None => ttl / 3,
        }
    }

    /// When renewals stop, for a hold that began at `start` (`None`: never).
    pub(crate) fn stop_at(&self, start: Instant) -> Option<Instant> {
        self.max_hold.and_then(|total| start.checked_add(total))
    }
}

/// What the renewer and the holder share.
#[derive(Debug)]
struct Status {
    /// Set once; a lost lease stays lost.
    lost: Option<LeaseLost>,
    valid_until: Instant,
    /// The holder asks the renewer to stop.
    stop: bool,
}

#[derive(Debug)]
struct Shared {
    status: Mutex<Status>,
    changed: Condvar,
}

impl Shared {
    fn status(&self) -> MutexGuard<'_, Status> {
        // Every update of `Status` is a single assignment: a panic cannot leave it half-written.
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The loss, if any: one reported by the renewer, or the validity of the last renewal
    /// having ended.
    fn lost(&self) -> Option<LeaseLost> {
        let mut status = self.status();
        if status.lost.is_none() && Instant::now() >= status.valid_until {
            status.lost = Some(LeaseLost::Expired);
        }
        status.lost
    }

    fn mark_lost(&self, lost: LeaseLost) {
        let mut status = self.status();
        status.lost.get_or_insert(lost);
        drop(status);
        self.changed.notify_all();
    }
}

/// A [`RedisLease`] renewed in the background (by a thread of its own) until it is released, it
/// reaches its [`max_hold`](KeepAlive::max_hold), or a renewal fails — which the holder learns
/// from [`lost`](Self::lost) or [`wait_lost`](Self::wait_lost).
///
/// `Send + 'static`. Dropping it stops the renewer and releases the lease (best effort, as
/// [`RedisLease`]'s drop). Each renewal costs one round trip per interval; the holder's calls
/// touch no socket.
///
/// ```
/// # #[path = "../tests/support/server.rs"] mod server;
/// # let redis = server::RedisProcess::start();
/// # let url = redis.url();
/// use std::time::Duration;
/// use fencelock_redis::{KeepAlive, RedisLock};
///
/// let lock = RedisLock::open(&url, "settlement")?;
/// let lease = lock.try_acquire(Duration::from_millis(300))?.expect("free");
/// let kept = lease.keep_alive(KeepAlive::default());
/// for batch in 0..5 {
///     std::thread::sleep(Duration::from_millis(100)); // work that outlives the TTL
///     if let Some(lost) = kept.lost() {
///         panic!("stop writing: {lost}"); // the token is no good any more
///     }
/// }
/// assert!(lock.try_acquire(Duration::from_millis(300))?.is_none()); // still ours
/// kept.release()?;
/// # Ok::<(), fencelock_redis::Error>(())
/// ```
pub struct KeptLease {
    token: FencingToken,
    shared: Arc<Shared>,
    /// The renewer, which owns the lease while it runs and hands it back when it stops.
    renewer: Option<JoinHandle<RedisLease>>,
    /// The lease, when no renewer runs (it had already run out).
    idle: Option<RedisLease>,
}

impl RedisLease {
    /// Keeps this lease alive in the background, by `policy`, renewing it to its own TTL.
    ///
    /// A lease that has already run out is reported lost at once (and nothing renews it).
    pub fn keep_alive(self, policy: KeepAlive) -> KeptLease {
        let token = self.token();
        let start = Instant::now();
        let shared = Arc::new(Shared {
            status: Mutex::new(Status {
                lost: (!self.is_valid()).then_some(LeaseLost::Expired),
                valid_until: self.valid_until(),
                stop: false,
            }),
            changed: Condvar::new(),
        });
        if !self.is_valid() {
            return KeptLease {
                token,
                shared,
                renewer: None,
                idle: Some(self),
            };
        }
        let renewer_shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name("fencelock-keep-alive".into())
            .spawn(move || renew_until_stopped(self, &renewer_shared, policy, start));
        match spawned {
            Ok(renewer) => KeptLease {
                token,
                shared,
                renewer: Some(renewer),
                idle: None,
            },
            // No thread to be had: nothing will renew, so say so rather than pretend. (The
            // closure, and the lease in it, are gone: its drop released it.)
            Err(_) => {
                shared.mark_lost(LeaseLost::Expired);
                KeptLease {
                    token,
                    shared,
                    renewer: None,
                    idle: None,
                }
            }
        }
    }
}

/// The renewer's loop: sleep until the next renewal (or a stop), renew, publish.
fn renew_until_stopped(
    mut lease: RedisLease,
    shared: &Shared,
    policy: KeepAlive,
    start: Instant,
) -> RedisLease {
    let ttl = lease.ttl();
    let interval = policy.interval(ttl);
    let stop_at = policy.stop_at(start);
    let mut next = Instant::now() + interval;
    loop {
        {
            let mut status = shared.status();
            loop {
                if status.stop || status.lost.is_some() {
                    return lease;
                }
                let now = Instant::now();
                if now >= next {
                    break;
                }
                status = shared
                    .changed
                    .wait_timeout(status, next - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        let sent = Instant::now();
        if stop_at.is_some_and(|stop| sent >= stop) {
            // The hold is over: no more renewals; the lease ends by its TTL.
            return wait_for_stop(lease, shared);
        }
        let was_valid_until = lease.valid_until();
        match lease.renew(ttl) {
            Ok(()) if Instant::now() < was_valid_until => {
                shared.status().valid_until = lease.valid_until();
                next = sent + interval;
            }
            // Renewed, but too late: the lease may have lapsed in between.
            Ok(()) => shared.mark_lost(LeaseLost::Expired),
            Err(Error::Lost(lost)) => shared.mark_lost(lost),
            // Unreachable, timed out, ...: the lease cannot be shown held. Never retried: by the
            // time a retry succeeded, another client could hold the lock.
            Err(_) => shared.mark_lost(LeaseLost::Expired),
        }
    }
}

/// After `max_hold`: nothing more to renew; keep the lease until the holder stops us.
fn wait_for_stop(lease: RedisLease, shared: &Shared) -> RedisLease {
    let mut status = shared.status();
    while !status.stop {
        status = shared
            .changed
            .wait(status)
            .unwrap_or_else(PoisonError::into_inner);
    }
    lease
}

impl KeptLease {
    /// The lease's fencing token.
    #[inline]
    #[must_use]
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// How long the lease is valid as of its last renewal (conservative, as
    /// [`RedisLease::remaining`]); `None` once it is lost.
    #[must_use]
    pub fn remaining(&self) -> Option<Duration> {
        if self.shared.lost().is_some() {
            return None;
        }
        let until = self.shared.status().valid_until;
        Some(until.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
    }

    /// Whether the lease is lost, and how: a renewal failed or came back late (`Expired`),
    /// found a newer holder (`TakenOver { by }`), or the last renewal's validity ended (after
    /// [`max_hold`](KeepAlive::max_hold), say). Cheap: no I/O. Once lost, always lost.
    #[must_use]
    pub fn lost(&self) -> Option<LeaseLost> {
        self.shared.lost()
    }

    /// Blocks until the lease is lost, or `timeout` has passed (`None`).
    pub fn wait_lost(&self, timeout: Duration) -> Option<LeaseLost> {
        let give_up = Instant::now().checked_add(timeout);
        let mut status = self.shared.status();
        loop {
            let now = Instant::now();
            if status.lost.is_none() && now >= status.valid_until {
                status.lost = Some(LeaseLost::Expired);
            }
            if status.lost.is_some() {
                return status.lost;
            }
            let left = give_up.map_or(Duration::MAX, |end| end.saturating_duration_since(now));
            if left.is_zero() {
                return None;
            }
            // Wake at the latest when the validity ends, to report it.
            let wait = left.min(status.valid_until - now);
            status = self
                .shared
                .changed
                .wait_timeout(status, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Stops the renewer — waiting for a renewal in flight, so that none runs after this returns
    /// — then releases the lease.
    ///
    /// # Errors
    /// As [`RedisLease::release`]: after a loss, what the server says (`Lost`).
    pub fn release(mut self) -> Result<(), Error> {
        match self.stop() {
            Some(lease) => lease.release(),
            None => Err(Error::Lost(self.lost().unwrap_or(LeaseLost::Expired))),
        }
    }

    /// Stops the renewer and takes the lease back.
    fn stop(&mut self) -> Option<RedisLease> {
        self.shared.status().stop = true;
        self.shared.changed.notify_all();
        match self.renewer.take() {
            // A renewer that panicked lost its lease (its drop released it).
            Some(renewer) => renewer.join().ok(),
            None => self.idle.take(),
        }
    }
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        // Stops the renewer first; the lease's own drop then releases it, best effort.
        drop(self.stop());
    }
}

impl fmt::Debug for KeptLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeptLease")
            .field("token", &self.token)
            .field("lost", &self.lost())
            .field("remaining", &self.remaining())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        let ttl = Duration::from_millis(300);
        assert_eq!(
            KeepAlive::default().interval(ttl),
            Duration::from_millis(100)
        );
        let every = |d| KeepAlive::default().every(d).interval(ttl);
        assert_eq!(every(Duration::from_millis(50)), Duration::from_millis(50));
        assert_eq!(every(ttl), Duration::from_millis(150), "clamped");
        assert_eq!(every(Duration::ZERO), Duration::from_millis(150), "clamped");
        let start = Instant::now();
        assert_eq!(KeepAlive::default().stop_at(start), None);
        assert_eq!(
            KeepAlive::default().max_hold(ttl).stop_at(start),
            Some(start + ttl)
        );
    }
}
