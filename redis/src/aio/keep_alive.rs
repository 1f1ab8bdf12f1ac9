//! The async keep-alive: a lease renewed by a tokio task, as [`crate::KeptLease`].

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fencelock::{FencingToken, LeaseLost};
use tokio::sync::watch;

use super::{lock, RedisLease};
use crate::error::Error;
use crate::keep_alive::KeepAlive;
use crate::trace;

impl RedisLease {
    /// Keeps the lease alive from a task spawned on the current tokio runtime (as
    /// `tokio::spawn`, so it must be called inside one), by `policy`: as
    /// [`crate::RedisLease::keep_alive`], on the same [schedule](KeepAlive#the-schedule).
    pub fn keep_alive(self, policy: KeepAlive) -> KeptLease {
        let token = self.token();
        let start = Instant::now();
        let (lost_tx, lost_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = watch::channel(false);
        let valid_until = Arc::new(Mutex::new(self.state.valid_until()));
        if !self.is_valid() {
            let _ = lost_tx.send(Some(LeaseLost::Expired));
            return KeptLease {
                token,
                lost: lost_rx,
                stop: stop_tx,
                valid_until,
                renewer: None,
                idle: Some(self),
            };
        }
        let shared_valid_until = Arc::clone(&valid_until);
        let renewer = tokio::spawn(renew_until_stopped(
            self,
            policy,
            start,
            lost_tx,
            stop_rx,
            shared_valid_until,
        ));
        KeptLease {
            token,
            lost: lost_rx,
            stop: stop_tx,
            valid_until,
            renewer: Some(renewer),
            idle: None,
        }
    }
}

async fn renew_until_stopped(
    mut lease: RedisLease,
    policy: KeepAlive,
    start: Instant,
    lost: watch::Sender<Option<LeaseLost>>,
    mut stop: watch::Receiver<bool>,
    valid_until: Arc<Mutex<Instant>>,
) -> RedisLease {
    let ttl = lease.state.ttl();
    let io_timeout = lease.server.inner.settings.io_timeout;
    let stop_at = policy.stop_at(start);
    let mut next = policy.next_renewal(ttl, start, lease.state.valid_until(), io_timeout);
    loop {
        let wake = tokio::time::Instant::from_std(next);
        let stop_at_wake = if let Some(end) = stop_at {
            wake.min(tokio::time::Instant::from_std(end))
        } else {
            wake
        };
        tokio::select! {
            _ = stop.changed() => return lease,
            () = tokio::time::sleep_until(stop_at_wake) => {}
        }
        if *stop.borrow() {
            return lease;
        }
        let sent = Instant::now();
        if stop_at.is_some_and(|end| sent >= end) {
            // The hold is over: the lease ends by its TTL; wait to be stopped.
            let until = *lock(&valid_until);
            tokio::select! {
                _ = stop.changed() => return lease,
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(until)) => {}
            }
            let _ = lost.send(Some(LeaseLost::Expired));
            let _ = stop.changed().await;
            return lease;
        }
        let was_valid_until = lease.state.valid_until();
        let result = lease.renew(ttl).await;
        let loss = match result {
            Ok(()) if Instant::now() < was_valid_until => {
                *lock(&valid_until) = lease.state.valid_until();
                next = policy.next_renewal(ttl, sent, lease.state.valid_until(), io_timeout);
                None
            }
            Ok(()) => {
                trace::warn_event!(
                    name = lease.name(),
                    "renewal came back too late: lease lost"
                );
                Some(LeaseLost::Expired)
            }
            // The renewal told `tracing` itself.
            Err(Error::Lost(l)) => Some(l),
            Err(_) => Some(LeaseLost::Expired),
        };
        if let Some(l) = loss {
            let _ = lost.send(Some(l));
            let _ = stop.changed().await;
            return lease;
        }
    }
}

/// A lease renewed by a tokio task: as [`crate::KeptLease`], with [`until_lost`](Self::until_lost)
/// instead of a blocking wait, and on the same [schedule](KeepAlive#the-schedule).
///
/// The renewer task lives on the runtime `keep_alive` was called in. Should that runtime go
/// first (dropped, or shut down), the task goes with it, and so does the lease it owned (whose
/// drop gives it up): nothing renews it any more, so the kept lease is reported lost
/// (`Expired`) at once — as the blocking twin does when it cannot start its renewer.
pub struct KeptLease {
    token: FencingToken,
    lost: watch::Receiver<Option<LeaseLost>>,
    stop: watch::Sender<bool>,
    valid_until: Arc<Mutex<Instant>>,
    renewer: Option<tokio::task::JoinHandle<RedisLease>>,
    idle: Option<RedisLease>,
}

impl KeptLease {
    /// The lease's fencing token.
    #[must_use]
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// As [`crate::KeptLease::lost`]: the renewer's report, or the last validity having ended,
    /// or the renewer gone without a report (its runtime went first: `Expired`).
    #[must_use]
    pub fn lost(&self) -> Option<LeaseLost> {
        // Read before the value: a renewer that reported and then went leaves its report.
        let renewer_gone = self.lost.has_changed().is_err();
        if let Some(lost) = *self.lost.borrow() {
            return Some(lost);
        }
        // While this exists, the renewer ends without a report only with its runtime, which
        // took the lease with it.
        if renewer_gone || Instant::now() >= *lock(&self.valid_until) {
            return Some(LeaseLost::Expired);
        }
        None
    }

    /// As [`crate::KeptLease::remaining`].
    #[must_use]
    pub fn remaining(&self) -> Option<Duration> {
        if self.lost().is_some() {
            return None;
        }
        let until = *lock(&self.valid_until);
        Some(until.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
    }

    /// Waits until the lease is lost, and says how: as [`crate::KeptLease::wait_lost`] without a
    /// timeout (wrap it in `tokio::time::timeout` for one). Sleeps between the renewer's reports
    /// and the end of the validity; returns at once once the renewer is gone (see above).
    pub async fn until_lost(&self) -> LeaseLost {
        let mut lost = self.lost.clone();
        loop {
            if let Some(l) = self.lost() {
                return l;
            }
            let until = tokio::time::Instant::from_std(*lock(&self.valid_until));
            tokio::select! {
                changed = lost.changed() => {
                    if changed.is_err() {
                        // The renewer is gone: `changed` would fail at once, forever. `lost`
                        // says so now; never select on it again.
                        return self.lost().unwrap_or(LeaseLost::Expired);
                    }
                }
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Stops the renewer — waiting for a renewal in flight — then releases the lease.
    ///
    /// # Errors
    /// As [`crate::KeptLease::release`].
    pub async fn release(mut self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        let lease = match self.renewer.take() {
            Some(renewer) => renewer.await.ok(),
            None => self.idle.take(),
        };
        // Read after the renewer stopped, so its last word counts: a lease that `lost()` called
        // lost is reported lost here too (what may be left of it is released all the same). The
        // renewer is gone now because it was stopped, so only its report and the validity count.
        let reported = *self.lost.borrow();
        let lost =
            reported.or((Instant::now() >= *lock(&self.valid_until)).then_some(LeaseLost::Expired));
        match (lease, lost) {
            (Some(lease), None) => lease.release().await,
            (Some(lease), Some(lost)) => {
                let _ = lease.release().await;
                Err(Error::Lost(lost))
            }
            (None, lost) => Err(Error::Lost(lost.unwrap_or(LeaseLost::Expired))),
        }
    }
}

impl Drop for KeptLease {
    /// Tells the renewer to stop: no new renewal is sent (one already in flight cannot be
    /// awaited here). The renewer then drops the lease, which releases it in the background.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl fmt::Debug for KeptLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("aio::KeptLease")
            .field("token", &self.token)
            .field("lost", &self.lost())
            .finish()
    }
}
