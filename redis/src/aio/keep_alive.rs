//! The async keep-alive: a lease renewed by a tokio task, as [`crate::KeptLease`].

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fencelock::{FencingToken, LeaseLost};
use tokio::sync::watch;

use super::{lock, RedisLease};
use crate::error::Error;
use crate::keep_alive::KeepAlive;

impl RedisLease {
    /// Keeps the lease alive from a task spawned on the current tokio runtime (as
    /// `tokio::spawn`, so it must be called inside one), by `policy`: as
    /// [`crate::RedisLease::keep_alive`].
    pub fn keep_alive(self, policy: KeepAlive) -> KeptLease {
        let token = self.token();
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
    lost: watch::Sender<Option<LeaseLost>>,
    mut stop: watch::Receiver<bool>,
    valid_until: Arc<Mutex<Instant>>,
) -> RedisLease {
    let start = Instant::now();
    let ttl = lease.state.ttl();
    let interval = policy.interval(ttl);
    let stop_at = policy.stop_at(start);
    let mut next = Instant::now() + interval;
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
                next = sent + interval;
                None
            }
            Ok(()) => Some(LeaseLost::Expired),
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
/// instead of a blocking wait.
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

    /// As [`crate::KeptLease::lost`]: the renewer's report, or the last validity having ended.
    #[must_use]
    pub fn lost(&self) -> Option<LeaseLost> {
        if let Some(lost) = *self.lost.borrow() {
            return Some(lost);
        }
        (Instant::now() >= *lock(&self.valid_until)).then_some(LeaseLost::Expired)
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

    /// Waits until the lease is lost, and says how.
    pub async fn until_lost(&self) -> LeaseLost {
        let mut lost = self.lost.clone();
        loop {
            if let Some(l) = self.lost() {
                return l;
            }
            let until = tokio::time::Instant::from_std(*lock(&self.valid_until));
            tokio::select! {
                _ = lost.changed() => {}
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
        match lease {
            Some(lease) => lease.release().await,
            None => Err(Error::Lost(self.lost().unwrap_or(LeaseLost::Expired))),
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
