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
use crate::trace;

/// How a [`KeptLease`] renews: every third of the TTL by default, with no cap on the hold.
///
/// # The schedule
///
/// Each renewal is scheduled against the validity it must extend, not only the interval: it is
/// sent at the interval after the last one was sent (after [`RedisLease::keep_alive`] was called,
/// for the first), but **no later than one round trip's margin before the lease's validity
/// ends** — the validity being the TTL minus the [drift allowance](crate::drift_allowance),
/// counted from when the last renewal was sent, as [`RedisLease::remaining`]. The margin is the
/// handle's [I/O timeout](crate::LockServerBuilder::io_timeout), so a renewal has its whole
/// timeout to come back before the lease would lapse; but at most half the validity left, so a
/// short lease (or one handed over with little validity left) is renewed halfway through what is
/// left, and the other half is the round trip's. An interval the validity cannot cover is thus
/// clamped, never refused: `every(995 ms)` on a 1 s TTL (valid for 988 ms) renews after 494 ms
/// with the default 1 s I/O timeout. The same rule drives the async `aio::KeptLease` (feature
/// `tokio`).
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
    /// Renews every `interval` — or sooner, when the lease's validity calls for it: an interval
    /// that would send a renewal later than one round trip's margin before the validity ends
    /// (the I/O timeout, at most half the validity left) is clamped to that, as described in
    /// [the schedule](Self#the-schedule). A zero interval means "as late as that rule allows".
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

    /// When to send the next renewal of a lease of `ttl` whose validity, counted from `from`
    /// (when the last renewal was sent; when keeping began, for the first), ends at
    /// `valid_until`, on a handle whose round trips are bounded by `io_timeout`: the schedule of
    /// both renewers, blocking and async (see [the schedule](Self#the-schedule)).
    ///
    /// The policy's interval after `from` (a third of `ttl` by default; none for a zero
    /// interval), but no later than `valid_until − min(io_timeout, (valid_until − from) / 2)`:
    /// a renewal sent then has its whole I/O timeout — or, for a validity shorter than two I/O
    /// timeouts, the half of it that is left — to come back before the lease lapses. Never
    /// before `from`; `from` itself once the validity has ended.
    pub(crate) fn next_renewal(
        &self,
        ttl: Duration,
        from: Instant,
        valid_until: Instant,
        io_timeout: Duration,
    ) -> Instant {
        let left = valid_until.saturating_duration_since(from);
        let margin = io_timeout.min(left / 2);
        // `margin ≤ left`, so this is `valid_until − margin`, and no earlier than `from`.
        let latest = from + (left - margin);
        let interval = match self.every {
            Some(every) if every.is_zero() => None,
            Some(every) => Some(every),
            None => Some(ttl / 3),
        };
        interval
            .and_then(|interval| from.checked_add(interval))
            .map_or(latest, |wanted| wanted.min(latest))
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
/// Renewals follow [`KeepAlive`]'s [schedule](KeepAlive#the-schedule): at the policy's interval,
/// but always early enough — one round trip's margin (the I/O timeout, at most half the validity
/// left) before the validity ends — to keep a lease that can be kept, the first one included,
/// however little validity the lease had left when it was handed over.
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
    let io_timeout = lease.io_timeout();
    let stop_at = policy.stop_at(start);
    let mut next = policy.next_renewal(ttl, start, lease.valid_until(), io_timeout);
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
                next = policy.next_renewal(ttl, sent, lease.valid_until(), io_timeout);
            }
            // Renewed, but too late: the lease may have lapsed in between.
            Ok(()) => {
                trace::warn_event!(
                    name = lease.name(),
                    "renewal came back too late: lease lost"
                );
                shared.mark_lost(LeaseLost::Expired);
            }
            // The renewal told `tracing` itself.
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
    /// As [`RedisLease::release`]; after a loss, the loss [`lost`](Self::lost) reported (what may
    /// be left of the lease is released all the same).
    pub fn release(mut self) -> Result<(), Error> {
        let lease = self.stop();
        // Read after the renewer stopped, so its last word counts: a lease that `lost()` calls
        // lost is reported lost here too (what may be left of it is released all the same).
        match (lease, self.lost()) {
            (Some(lease), None) => lease.release(),
            (Some(lease), Some(lost)) => {
                let _ = lease.release();
                Err(Error::Lost(lost))
            }
            (None, lost) => Err(Error::Lost(lost.unwrap_or(LeaseLost::Expired))),
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
    use crate::drift_allowance;

    const MS: Duration = Duration::from_millis(1);

    /// The next renewal of a lease of `ttl` renewed at `from`, as an offset from `from`.
    fn after(policy: KeepAlive, ttl: Duration, left: Duration, io_timeout: Duration) -> Duration {
        let from = Instant::now();
        policy.next_renewal(ttl, from, from + left, io_timeout) - from
    }

    /// A full validity: the TTL minus the drift allowance.
    fn validity(ttl: Duration) -> Duration {
        ttl - drift_allowance(ttl)
    }

    #[test]
    fn renewals_come_at_the_interval_when_the_validity_allows() {
        let ttl = 300 * MS; // valid for 295 ms; the margin is at most 147.5 ms
        let io = Duration::from_secs(1);
        let left = validity(ttl);
        assert_eq!(after(KeepAlive::default(), ttl, left, io), 100 * MS);
        let every = |d| after(KeepAlive::default().every(d), ttl, left, io);
        assert_eq!(every(50 * MS), 50 * MS);
        assert_eq!(every(140 * MS), 140 * MS);
    }

    #[test]
    fn intervals_the_validity_cannot_cover_are_clamped() {
        let ttl = Duration::from_secs(1); // valid for 988 ms
        let left = validity(ttl);
        let every = |d, io| after(KeepAlive::default().every(d), ttl, left, io);
        // The I/O timeout is longer than half the validity: renewed halfway through it.
        assert_eq!(every(995 * MS, Duration::from_secs(1)), left / 2);
        assert_eq!(every(ttl, Duration::from_secs(1)), left / 2);
        assert_eq!(every(Duration::MAX, Duration::from_secs(1)), left / 2);
        assert_eq!(every(Duration::ZERO, Duration::from_secs(1)), left / 2);
        // A shorter I/O timeout leaves just that for the round trip.
        assert_eq!(every(995 * MS, 100 * MS), left - 100 * MS);
        assert_eq!(every(Duration::ZERO, 100 * MS), left - 100 * MS);
        // An interval that fits stays.
        assert_eq!(every(800 * MS, 100 * MS), 800 * MS);
    }

    #[test]
    fn the_first_renewal_is_scheduled_against_the_validity_left() {
        let ttl = Duration::from_secs(1); // a third: 333 ms
        let io = 500 * MS;
        assert_eq!(after(KeepAlive::default(), ttl, 141 * MS, io), 141 * MS / 2);
        assert_eq!(after(KeepAlive::default(), ttl, 900 * MS, io), ttl / 3);
        // A short I/O timeout governs the margin.
        assert_eq!(
            after(KeepAlive::default(), ttl, 400 * MS, 100 * MS),
            300 * MS
        );
        // Nothing left: at once.
        assert_eq!(
            after(KeepAlive::default(), ttl, Duration::ZERO, io),
            Duration::ZERO
        );
        let from = Instant::now() + ttl;
        assert_eq!(
            KeepAlive::default().next_renewal(ttl, from, from - MS, io),
            from
        );
    }

    #[test]
    fn every_renewal_leaves_its_margin() {
        let policies = [
            KeepAlive::default(),
            KeepAlive::default().every(Duration::ZERO),
            KeepAlive::default().every(MS),
            KeepAlive::default().every(995 * MS),
            KeepAlive::default().every(Duration::MAX),
        ];
        for policy in policies {
            for ttl in [
                5 * MS,
                200 * MS,
                Duration::from_secs(1),
                Duration::from_secs(60),
            ] {
                for left in [Duration::ZERO, MS, 141 * MS, validity(ttl)] {
                    for io in [MS, 10 * MS, Duration::from_secs(1), Duration::MAX] {
                        let next = after(policy, ttl, left, io);
                        let margin = io.min(left / 2);
                        assert!(next + margin <= left, "{policy:?} {ttl:?} {left:?} {io:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn max_hold() {
        let start = Instant::now();
        assert_eq!(KeepAlive::default().stop_at(start), None);
        assert_eq!(
            KeepAlive::default().max_hold(300 * MS).stop_at(start),
            Some(start + 300 * MS)
        );
    }
}
