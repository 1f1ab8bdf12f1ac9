//! [`RedisLock`], its [`RedisLease`], and [`try_acquire_all`].

use std::fmt;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fencelock::{FencingToken, LeaseLost};

use crate::error::{Error, InvalidInput};
use crate::node::Resend;
use crate::protocol::quorum::{Attempt, ClaimTally, HolderTally, StoreTally};
use crate::protocol::{self, Holder, LockKeys, Nonce};
use crate::server::LockServer;

/// One named resource's lock on a Redis server: leases that end by themselves, each carrying a
/// [`FencingToken`] larger than every earlier one.
///
/// `Clone + Send + Sync` and cheap to clone; it shares its [`LockServer`]'s connections.
///
/// ```
/// # #[path = "../tests/support/server.rs"] mod server;
/// # let redis = server::RedisProcess::start(); // a throwaway redis-server on 127.0.0.1
/// # let url = redis.url();
/// use std::time::Duration;
/// use fencelock_redis::RedisLock;
///
/// let lock = RedisLock::open(&url, "stock:AAPL")?; // url: "redis://127.0.0.1:6379"
/// let lease = lock.try_acquire(Duration::from_secs(5))?.expect("nobody holds it");
/// assert!(lock.try_acquire(Duration::from_secs(5))?.is_none()); // one holder at a time
/// println!("holding with token {}", lease.token());
/// lease.release()?;
/// let next = lock.try_acquire(Duration::from_secs(5))?.expect("released");
/// assert!(next.token() > fencelock::FencingToken::new(0));
/// # Ok::<(), fencelock_redis::Error>(())
/// ```
#[derive(Clone)]
pub struct RedisLock {
    server: LockServer,
    keys: Arc<LockKeys>,
}

impl RedisLock {
    /// The lock `name` on the server at `url`, with default settings: the shortcut for one
    /// resource. Locking many names? Make one [`LockServer`] and call [`LockServer::lock`].
    ///
    /// # Errors
    /// [`Error::Redis`] if the URL does not parse, [`Error::InvalidInput`] for a bad name.
    pub fn open(url: &str, name: &str) -> Result<Self, Error> {
        LockServer::open(url)?.lock(name)
    }

    /// The lock `name` on a quorum of the independent servers at `urls` (an odd number), with
    /// default settings: the shortcut for one resource; see [`LockServer::quorum`]. A quorum of
    /// one is [`open`](Self::open).
    ///
    /// # Errors
    /// [`Error::Redis`] if a URL does not parse; [`Error::InvalidInput`] for an empty or even
    /// list, the same server twice, or a bad name.
    pub fn quorum(urls: &[&str], name: &str) -> Result<Self, Error> {
        LockServer::quorum(urls)?.lock(name)
    }

    /// The lock `name` on the server `client` points at, with default settings.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad name.
    pub fn new(client: redis::Client, name: &str) -> Result<Self, Error> {
        LockServer::new(client)?.lock(name)
    }

    pub(crate) fn on(server: LockServer, name: &str) -> Result<Self, Error> {
        let keys = LockKeys::new(&server.settings().key_prefix, name)?;
        Ok(Self {
            server,
            keys: Arc::new(keys),
        })
    }

    /// The resource's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.keys.name
    }

    /// The server this lock lives on.
    #[must_use]
    pub fn server(&self) -> &LockServer {
        &self.server
    }

    /// Takes the lock for `ttl` if nobody holds it (an expired lease counts as free), in one
    /// round trip; `Ok(None)` if someone does.
    ///
    /// The lease's validity is measured on the local monotonic clock from before the request was
    /// sent, minus the [drift allowance](crate::drift_allowance).
    ///
    /// # Errors
    /// - [`Error::InvalidInput`] for a TTL outside [`MIN_TTL`](crate::MIN_TTL)..=
    ///   [`MAX_TTL`](crate::MAX_TTL) (nothing is sent);
    /// - [`Error::Lost`]`(Expired)` if the server granted the lock but the reply came back after
    ///   the lease's validity ran out (the grant is released; use a longer TTL);
    /// - [`Error::Redis`] if the server is unreachable or slow past the timeouts.
    pub fn try_acquire(&self, ttl: Duration) -> Result<Option<RedisLease>, Error> {
        match self.attempt(ttl)? {
            Attempt::Granted(lease) => Ok(Some(lease)),
            Attempt::Held => Ok(None),
            Attempt::TooSlow => Err(Error::Lost(LeaseLost::Expired)),
        }
    }

    /// Takes the lock for `ttl`, trying again while it is held until `wait` has passed; `Ok(None)`
    /// if it never came free.
    ///
    /// Between tries it sleeps a jittered, doubling delay (see
    /// [`LockServerBuilder::retry_delay`](crate::LockServerBuilder::retry_delay)), never past
    /// `wait`: it returns at most one round trip after `wait`. A `wait` of zero tries once. A
    /// grant whose reply came back too late to be valid is released and tried again.
    ///
    /// # Errors
    /// As [`try_acquire`](Self::try_acquire), except that a too-late grant is retried; a server
    /// error ends the wait at once.
    pub fn acquire_timeout(
        &self,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<RedisLease>, Error> {
        let give_up = Instant::now().checked_add(wait);
        let settings = self.server.settings();
        let mut delay = settings.retry_delay_min;
        loop {
            if let Attempt::Granted(lease) = self.attempt(ttl)? {
                return Ok(Some(lease));
            }
            let now = Instant::now();
            let left = give_up.map_or(Duration::MAX, |end| end.saturating_duration_since(now));
            if left.is_zero() {
                return Ok(None);
            }
            thread::sleep(jittered(delay).min(left));
            delay = (delay * 2).min(settings.retry_delay_max);
        }
    }

    fn attempt(&self, ttl: Duration) -> Result<Attempt<RedisLease>, Error> {
        let ttl_ms = protocol::ttl_millis(ttl)?;
        if self.server.servers() == 1 {
            self.attempt_single(ttl, ttl_ms)
        } else {
            self.attempt_quorum(ttl, ttl_ms)
        }
    }

    /// One server: one script, one round trip.
    fn attempt_single(&self, ttl: Duration, ttl_ms: u64) -> Result<Attempt<RedisLease>, Error> {
        let nonce = Nonce::new();
        let call = protocol::acquire([&*self.keys], &nonce, ttl_ms);
        let sent = Instant::now();
        // Resending is safe: the script grants a nonce's own lock again with the same token.
        let (reply, _) = self.server.invoke(&call, Resend::IfStale)?;
        let Some(tokens) = protocol::decode_acquire(&reply, 1)? else {
            return Ok(Attempt::Held);
        };
        // Dropped, a lease no longer valid releases the grant nobody can use.
        Ok(granted_or_too_slow(RedisLease::granted(
            self,
            nonce,
            tokens[0],
            ttl,
            protocol::valid_until(sent, ttl),
        )))
    }

    /// A quorum: claim the key on every server (round 1), then store the token where the claim
    /// is still ours (round 2); see [`protocol::quorum`] for why tokens still only grow.
    fn attempt_quorum(&self, ttl: Duration, ttl_ms: u64) -> Result<Attempt<RedisLease>, Error> {
        let (server, keys) = (&self.server, &self.keys);
        let n = server.servers();
        let nonce = Nonce::new();
        let sent = Instant::now();
        let valid_until = protocol::valid_until(sent, ttl);
        let claimed = server.round(
            0..n,
            |_| protocol::claim(keys, &nonce, ttl_ms),
            server.round_deadline(valid_until),
            ClaimTally::new(n),
        );
        let stored = claimed.into_store().and_then(|(token, granted)| {
            server
                .round(
                    granted.iter().copied(),
                    |_| protocol::store(keys, &nonce, token),
                    server.round_deadline(valid_until),
                    StoreTally::new(n, granted.len()),
                )
                .into_grant()
                .map(|()| token)
        });
        match stored {
            // Dropped, a lease no longer valid releases the grant nobody can use.
            Ok(token) => Ok(granted_or_too_slow(RedisLease::granted(
                self,
                nonce,
                token,
                ttl,
                valid_until,
            ))),
            Err(refusal) => {
                server.send_and_forget(|_| protocol::release(keys, &nonce));
                refusal.into_attempt()
            }
        }
    }
}

/// A lease granted by the server, if still valid by the time the reply came back.
fn granted_or_too_slow(lease: RedisLease) -> Attempt<RedisLease> {
    if lease.is_valid() {
        Attempt::Granted(lease)
    } else {
        Attempt::TooSlow
    }
}

/// A delay drawn uniformly from `[delay / 2, delay]`, so waiters that collided do not collide
/// again in lockstep.
pub(crate) fn jittered(delay: Duration) -> Duration {
    let half = delay / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    let extra = protocol::random_words()[0] % nanos.saturating_add(1);
    half + Duration::from_nanos(extra)
}

impl fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLock")
            .field("name", &self.keys.name)
            .field("server", &self.server)
            .finish()
    }
}

/// A held lease on a [`RedisLock`]: its [`FencingToken`], its validity, and the means to renew
/// and release it.
///
/// `Send + 'static`: it owns what it needs and can move to another thread. Dropping it releases
/// the lock, best effort (bounded by the server's timeouts, errors ignored, never a panic); call
/// [`release`](Self::release) to learn whether the lease was still held.
///
/// The lease is *believed* valid until [`remaining`](Self::remaining) says `None`; the server is
/// the judge. Pass [`token`](Self::token) to every write on a fenced resource
/// ([`RedisFenced::write`](crate::RedisFenced::write), or [`fencelock::Fenced`]), so a write
/// made after the lease was lost is refused there.
pub struct RedisLease {
    server: LockServer,
    keys: Arc<LockKeys>,
    nonce: Nonce,
    token: FencingToken,
    /// The TTL it was granted or last renewed with (a [`KeptLease`](crate::KeptLease) renews to it).
    ttl: Duration,
    valid_until: Instant,
    /// Still to be released: false after `release`, or once the server said it is not ours.
    held: bool,
}

impl RedisLease {
    fn granted(
        lock: &RedisLock,
        nonce: Nonce,
        token: FencingToken,
        ttl: Duration,
        valid_until: Instant,
    ) -> Self {
        Self {
            server: lock.server.clone(),
            keys: Arc::clone(&lock.keys),
            nonce,
            token,
            ttl,
            valid_until,
            held: true,
        }
    }

    /// This acquisition's fencing token: larger than that of every earlier acquisition of the
    /// lock.
    #[inline]
    #[must_use]
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// How long the lease is still valid, by the local monotonic clock: the TTL, counted from
    /// before the acquire (or last renew) request was sent, minus the drift allowance. `None`
    /// once that has passed. Conservative: the server keeps the key at least this long unless its
    /// clock runs faster than the allowance, or it loses its data.
    #[inline]
    #[must_use]
    pub fn remaining(&self) -> Option<Duration> {
        if !self.held {
            return None;
        }
        Some(self.valid_until.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
    }

    /// The TTL this lease was granted, or last renewed, with.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When the lease stops being valid by the local clock (see [`remaining`](Self::remaining)).
    pub(crate) fn valid_until(&self) -> Instant {
        self.valid_until
    }

    /// `remaining().is_some()`.
    #[inline]
    #[must_use]
    pub fn is_valid(&self) -> bool {
        self.remaining().is_some()
    }

    /// The name of the locked resource.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.keys.name
    }

    /// Extends the lease to `ttl` from now, if it is still this lease's (one round trip). Also
    /// works after [`remaining`](Self::remaining) ran out, as long as the server still holds the
    /// key for this lease: nobody else can have held the lock meanwhile.
    ///
    /// # Errors
    /// - [`Error::Lost`]: `Expired` if the key is gone, `TakenOver { by }` if a newer acquisition
    ///   holds the lock; nothing changed, and the lease stays lost;
    /// - [`Error::InvalidInput`] for a TTL out of range; [`Error::Redis`] as for acquiring.
    pub fn renew(&mut self, ttl: Duration) -> Result<(), Error> {
        let ttl_ms = protocol::ttl_millis(ttl)?;
        if !self.held {
            return Err(Error::Lost(LeaseLost::Expired));
        }
        let sent = Instant::now();
        let outcome = if self.server.servers() == 1 {
            let call = protocol::renew(&self.keys, &self.nonce, ttl_ms);
            let (reply, _) = self.server.invoke(&call, Resend::IfStale)?;
            protocol::decode_holder(&reply)?.into_result()
        } else {
            self.renew_quorum(ttl_ms, sent)
        };
        match outcome {
            Ok(()) => {
                self.valid_until = protocol::valid_until(sent, ttl);
                self.ttl = ttl;
            }
            Err(Error::Lost(_)) => self.lose(),
            Err(_) => {}
        }
        outcome
    }

    /// A quorum renewal counts only if a majority renewed before the validity left ran out.
    fn renew_quorum(&mut self, ttl_ms: u64, sent: Instant) -> Result<(), Error> {
        if sent >= self.valid_until {
            // Too late to renew: the lease is lost. Release it everywhere, which also tells
            // whether a newer acquisition holds the lock.
            self.held = false;
            return match self.release_quorum() {
                Err(Error::Lost(lost)) => Err(Error::Lost(lost)),
                _ => Err(Error::Lost(LeaseLost::Expired)),
            };
        }
        let (keys, nonce, n) = (&self.keys, &self.nonce, self.server.servers());
        let renewed = self.server.round(
            0..n,
            |_| protocol::renew(keys, nonce, ttl_ms),
            self.server.round_deadline(self.valid_until),
            HolderTally::new(n, self.token),
        );
        renewed.into_renewal(Instant::now() < self.valid_until)
    }

    /// The lease is lost: free what is left of it everywhere, in the background.
    fn lose(&mut self) {
        self.held = false;
        if self.server.servers() > 1 {
            let (keys, nonce) = (&self.keys, &self.nonce);
            self.server
                .send_and_forget(|_| protocol::release(keys, nonce));
        }
    }

    /// Releases the lock (one round trip) and says whether the lease was still held.
    ///
    /// # Errors
    /// [`Error::Lost`] if the lease had already ended (`Expired`) or been taken over
    /// (`TakenOver { by }`); nothing changed then. [`Error::Redis`] if the server did not
    /// answer: the lock then ends by its TTL.
    pub fn release(mut self) -> Result<(), Error> {
        self.release_once()
    }

    fn release_once(&mut self) -> Result<(), Error> {
        if !self.held {
            return Err(Error::Lost(LeaseLost::Expired));
        }
        self.held = false;
        if self.server.servers() > 1 {
            return self.release_quorum();
        }
        let call = protocol::release(&self.keys, &self.nonce);
        let (reply, resent) = self.server.invoke(&call, Resend::IfStale)?;
        match protocol::decode_holder(&reply)? {
            // Sent twice, the first may have deleted the key: either way the lock is free and
            // this lease no longer holds it.
            Holder::Nobody if resent => Ok(()),
            holder => holder.into_result(),
        }
    }
}

impl RedisLease {
    /// Releases on every server; decided by a majority.
    fn release_quorum(&self) -> Result<(), Error> {
        let (keys, nonce, n) = (&self.keys, &self.nonce, self.server.servers());
        let released = self.server.round(
            0..n,
            |_| protocol::release(keys, nonce),
            self.server
                .round_deadline(Instant::now() + protocol::MAX_TTL),
            HolderTally::new(n, self.token),
        );
        released.into_release()
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        if self.server.servers() > 1 {
            // Best effort, without waiting: the workers send the releases.
            self.lose();
        } else {
            // Best effort, bounded by the timeouts: an error leaves the lock to end by its TTL.
            let _ = self.release_once();
        }
    }
}

impl fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLease")
            .field("name", &self.keys.name)
            .field("token", &self.token)
            .field("remaining", &self.remaining())
            .finish()
    }
}

/// Takes every lock in `locks` for `ttl` in one round trip, all or nothing: `Ok(None)` (and
/// nothing held) if any of them is held. Each lease gets its own token; they come back in the
/// order of `locks`.
///
/// The locks must live on one server (handles made separately for the same server are fine).
/// This script names keys of several resources, so it runs on a single Redis server, not across
/// the slots of a Redis Cluster.
///
/// # Errors
/// [`Error::InvalidInput`] for a lock named twice, locks on different servers, or a TTL out of
/// range (nothing is sent); otherwise as [`RedisLock::try_acquire`].
pub fn try_acquire_all(
    locks: &[&RedisLock],
    ttl: Duration,
) -> Result<Option<Vec<RedisLease>>, Error> {
    let ttl_ms = protocol::ttl_millis(ttl)?;
    let Some(first) = locks.first() else {
        return Ok(Some(Vec::new()));
    };
    for (i, lock) in locks.iter().enumerate() {
        if lock.server.servers() > 1 {
            return Err(InvalidInput::new(format!(
                "try_acquire_all: {:?} is a quorum lock; taking several quorum locks at once is \
                 not supported (acquire them one by one, in a fixed order)",
                lock.name()
            ))
            .into());
        }
        if !lock.server.same_server(&first.server) {
            return Err(InvalidInput::new(format!(
                "try_acquire_all: {:?} and {:?} are on different servers; one script can only \
                 lock keys of one server",
                first.name(),
                lock.name()
            ))
            .into());
        }
        if let Some(j) = locks[..i]
            .iter()
            .position(|other| other.keys.lock == lock.keys.lock)
        {
            return Err(InvalidInput::new(format!(
                "try_acquire_all: the lock {:?} is named twice (positions {j} and {i})",
                lock.name()
            ))
            .into());
        }
    }
    let nonce = Nonce::new();
    let call = protocol::acquire(locks.iter().map(|lock| &*lock.keys), &nonce, ttl_ms);
    let sent = Instant::now();
    let (reply, _) = first.server.invoke(&call, Resend::IfStale)?;
    let Some(tokens) = protocol::decode_acquire(&reply, locks.len())? else {
        return Ok(None);
    };
    let leases: Vec<RedisLease> = locks
        .iter()
        .zip(tokens)
        .map(|(lock, token)| {
            RedisLease::granted(
                lock,
                nonce.clone(),
                token,
                ttl,
                protocol::valid_until(sent, ttl),
            )
        })
        .collect();
    if leases.iter().all(RedisLease::is_valid) {
        Ok(Some(leases))
    } else {
        // Dropping them releases grants that came back too late to use.
        Err(Error::Lost(LeaseLost::Expired))
    }
}
