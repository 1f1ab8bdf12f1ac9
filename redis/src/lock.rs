//! [`RedisLock`], its [`RedisLease`], and [`try_acquire_all`].

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fencelock::{FencingToken, LeaseLost};

use crate::error::{Error, InvalidInput};
use crate::node::Resend;
use crate::protocol::driver::{self, Driver};
use crate::protocol::queue::{Liveness, Waiting};
use crate::protocol::quorum::lease::{
    Acquisition, Answer, LeaseState, Operation, Release, Renewal, Servers,
};
use crate::protocol::quorum::{Attempt, Tally};
use crate::protocol::{self, LockKeys, Nonce, Request};
use crate::server::LockServer;
use crate::trace;

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

    /// Who holds the lock now, for monitoring and tools (`fencelock status`): the holder's token
    /// and how long its key has left on the server — `None` if nobody holds it. A snapshot: it
    /// may have changed by the time it is read, so never decide to write from it (that is what
    /// leases and fencing are for). On a quorum, each server is asked in turn, and the lock is
    /// held if a majority shows the same holder (with the shortest TTL among them).
    ///
    /// # Errors
    /// [`Error::Redis`] if the server (a majority of a quorum's) does not answer.
    pub fn status(&self) -> Result<Option<LockStatus>, Error> {
        let request = protocol::peek(&self.keys);
        let servers = self.server.servers();
        let mut seen: Vec<(Option<FencingToken>, Duration)> = Vec::with_capacity(servers);
        let (mut answered, mut last_error) = (0, None);
        for i in 0..servers {
            match self.server.node(i).invoke(&request, Resend::IfStale) {
                Ok((reply, _)) => {
                    answered += 1;
                    if let Some(holder) = protocol::decode_peek(&reply)? {
                        seen.push(holder);
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
        let majority = protocol::quorum::majority(servers);
        if answered < majority {
            return Err(last_error.unwrap_or_else(unreachable_error));
        }
        let status = seen.iter().find_map(|(token, _)| {
            let same: Vec<Duration> = seen
                .iter()
                .filter(|(other, _)| other == token)
                .map(|&(_, ttl)| ttl)
                .collect();
            (same.len() >= majority).then(|| LockStatus {
                token: *token,
                remaining: same.into_iter().min().unwrap_or_default(),
            })
        });
        Ok(status)
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
        trace::acquire(self.name(), "try_acquire", || {
            self.attempt(ttl)?.into_lease()
        })
    }

    /// Takes the lock for `ttl`, waiting in line while it is held until `wait` has passed;
    /// `Ok(None)` if it never came to this caller.
    ///
    /// Waiters are served first come, first served: the release hands the lock, with a new token,
    /// straight to the first live waiter, and no [`try_acquire`](Self::try_acquire) takes a lock
    /// that live waiters queue for. A waiter does not poll: it blocks on a wake-up of its own,
    /// sending one step (its heartbeat) and one blocking pop every third of the
    /// [liveness window](crate::LockServerBuilder::liveness) (1 s by default), and the first
    /// waiter blocks no longer than the holder's remaining TTL. A waiter that dies is dropped
    /// within the window; one whose `wait` runs out leaves the queue before this returns, at
    /// most one round trip after `wait`. The protocol and its keys are in the crate docs.
    ///
    /// On a quorum, the same: waiters are woken by a release and claim at once, the one that has
    /// waited longest winning on every server it queues on (see the crate docs).
    ///
    /// A `wait` of zero tries once, as `try_acquire`. Connection errors while waiting (a server
    /// restarting) are retried after the [retry delays](crate::LockServerBuilder::retry_delay)
    /// until `wait` is over, and the waiter queues again, keeping its place.
    ///
    /// # Errors
    /// As [`try_acquire`](Self::try_acquire), except that a too-late grant is passed on and
    /// waited for again; a connection error ends the wait only if it lasts until `wait` is over,
    /// any other server error at once.
    pub fn acquire_timeout(
        &self,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<RedisLease>, Error> {
        if wait.is_zero() {
            return self.try_acquire(ttl);
        }
        trace::acquire(self.name(), "acquire_timeout", || {
            let s = self.server.settings();
            let liveness = Liveness::new(s.liveness)?;
            let retry = (s.retry_delay_min, s.retry_delay_max);
            let servers = self.server.servers();
            let now = Instant::now();
            let mut waiting = Waiting::new(servers, &self.keys, ttl, wait, liveness, retry, now)?;
            let decision = driver::run_blocking(driver::wait(&self.server, &mut waiting));
            Ok(decision?.map(|state| RedisLease::new(self, state)))
        })
    }

    /// One try; see [`Acquisition`] for its requests on one server and on a quorum.
    fn attempt(&self, ttl: Duration) -> Result<Attempt<RedisLease>, Error> {
        let servers = self.server.servers();
        let acquisition = Acquisition::new(servers, &self.keys, ttl, Instant::now)?;
        let attempt = self.server.perform(acquisition)?;
        Ok(attempt.map(|state| RedisLease::new(self, state)))
    }
}

impl LockServer {
    /// Runs `operation` to its decision on this thread (see [`driver::perform`]).
    pub(crate) fn perform<O: Operation + Send>(&self, operation: O) -> O::Decision
    where
        O::Tally: Send,
        <O::Tally as Tally>::Outcome: Send,
    {
        driver::run_blocking(driver::perform(self, operation))
    }

    /// `BLPOP key timeout` on every server at once, until the first returns: `Ok` if any did,
    /// else the first error, within `timeout` + the I/O timeout. On a quorum, one thread per
    /// server pops; the first whose pop returns ends the others early
    /// ([`Node::unblock`](crate::node::Node::unblock)) while the caller goes on at once.
    fn block_pop(&self, key: &str, timeout: Duration, precise: bool) -> Result<(), Error> {
        let servers = self.servers();
        if servers == 1 {
            return self.node(0).block_pop(key, timeout, precise);
        }
        let (returned, first) = mpsc::channel();
        let woken = Arc::new(AtomicBool::new(false));
        for i in 0..servers {
            let (server, key, woken) = (self.clone(), key.to_owned(), Arc::clone(&woken));
            let returned = returned.clone();
            thread::spawn(move || {
                let popped = server.node(i).block_pop(&key, timeout, precise);
                // Relaxed: only which thread is first matters, and the swap alone decides it.
                if popped.is_ok() && !woken.swap(true, Relaxed) {
                    for other in (0..servers).filter(|&other| other != i) {
                        // A server that fails here ends its pop by its own timeout.
                        let _ = server.node(other).unblock(&key);
                    }
                }
                // The caller may have gone on already.
                let _ = returned.send(popped);
            });
        }
        drop(returned);
        let mut failed = None;
        for popped in first.iter() {
            match popped {
                Ok(()) => return Ok(()),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        Err(failed.unwrap_or_else(|| {
            Error::Redis(redis::RedisError::from((
                redis::ErrorKind::Io,
                "fencelock-redis: no blocking pop returned",
            )))
        }))
    }

    /// Sends `release` to every server, errors ignored: in the background on a quorum; on a
    /// single server (no background there) at once, bounded by the timeouts.
    fn forget(&self, release: &Request) {
        if self.servers() > 1 {
            self.send_and_forget(|_| release.clone());
        } else {
            let _ = self.invoke(release, Resend::IfStale);
        }
    }
}

/// The blocking front end as the protocol's driver: every future blocks the calling thread and
/// is ready when first polled (see [`driver::run_blocking`]).
impl Driver for LockServer {
    fn ask(&self, request: &Request) -> impl Future<Output = Answer> + Send {
        // Resending is safe: each lease request has the same effect sent twice (an
        // acquisition's nonce gets its own lock again, with the same token).
        let reply = self.invoke(request, Resend::IfStale);
        async move { reply }
    }

    fn round<T: Tally + Send>(
        &self,
        servers: Servers,
        request: &Request,
        deadline: Instant,
        tally: T,
    ) -> impl Future<Output = T::Outcome> + Send
    where
        T::Outcome: Send,
    {
        let outcome = LockServer::round(self, servers, |_| request.clone(), deadline, tally);
        async move { outcome }
    }

    fn forget(&self, request: &Request) {
        LockServer::forget(self, request);
    }

    fn round_deadline(&self, valid_until: Instant) -> Instant {
        LockServer::round_deadline(self, valid_until)
    }

    fn block(
        &self,
        key: &str,
        timeout: Duration,
        precise: bool,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let popped = self.block_pop(key, timeout, precise);
        async move { popped }
    }

    fn sleep(&self, delay: Duration) -> impl Future<Output = ()> + Send {
        thread::sleep(delay);
        async {}
    }
}

/// Who holds a lock, as [`RedisLock::status`] read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockStatus {
    /// The holder's token (`None` for a quorum acquisition caught between its two rounds).
    pub token: Option<FencingToken>,
    /// How long the holder's key has left on the server (a quorum: the shortest among the
    /// servers that show it).
    pub remaining: Duration,
}

#[cold]
fn unreachable_error() -> Error {
    Error::Redis(redis::RedisError::from((
        redis::ErrorKind::Io,
        "fencelock-redis: no answer from a majority of the lock servers",
    )))
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
    /// Its nonce, token, TTL, validity, and whether it is still to be released.
    state: LeaseState,
}

impl RedisLease {
    fn new(lock: &RedisLock, state: LeaseState) -> Self {
        Self {
            server: lock.server.clone(),
            keys: Arc::clone(&lock.keys),
            state,
        }
    }

    /// This acquisition's fencing token: larger than that of every earlier acquisition of the
    /// lock.
    #[inline]
    #[must_use]
    pub fn token(&self) -> FencingToken {
        self.state.token()
    }

    /// How long the lease is still valid, by the local monotonic clock: the TTL, counted from
    /// before the acquire (or last renew) request was sent, minus the drift allowance. `None`
    /// once that has passed. Conservative: the server keeps the key at least this long unless its
    /// clock runs faster than the allowance, or it loses its data.
    #[inline]
    #[must_use]
    pub fn remaining(&self) -> Option<Duration> {
        self.state.remaining(Instant::now())
    }

    /// The TTL this lease was granted, or last renewed, with.
    pub(crate) fn ttl(&self) -> Duration {
        self.state.ttl()
    }

    /// When the lease stops being valid by the local clock (see [`remaining`](Self::remaining)).
    pub(crate) fn valid_until(&self) -> Instant {
        self.state.valid_until()
    }

    /// Its handle's I/O timeout: the keep-alive's margin for a renewal's round trip.
    pub(crate) fn io_timeout(&self) -> Duration {
        self.server.settings().io_timeout
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
        let servers = self.server.servers();
        let renewal = Renewal::new(servers, &self.keys, &mut self.state, ttl, Instant::now)?;
        let renewed = self.server.perform(renewal);
        if let Err(Error::Lost(_)) = renewed {
            self.lose();
        }
        renewed
    }

    /// The lease is lost: free what is left of it everywhere, in the background (on a single
    /// server nothing is left).
    fn lose(&mut self) {
        self.state.lose();
        if self.server.servers() > 1 {
            let (keys, state, servers) = (&self.keys, &self.state, self.server.servers());
            self.server
                .send_and_forget(|_| state.release_request(keys, servers));
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
        let servers = self.server.servers();
        let release = Release::new(servers, &self.keys, &mut self.state)?;
        self.server.perform(release)
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        if !self.state.is_held() {
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

impl trace::Granted for RedisLease {
    fn token(&self) -> FencingToken {
        RedisLease::token(self)
    }
}

impl fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLease")
            .field("name", &self.keys.name)
            .field("token", &self.token())
            .field("remaining", &self.remaining())
            .finish()
    }
}

/// Takes every lock in `locks` for `ttl` in one round trip, all or nothing: `Ok(None)` (and
/// nothing held) if any of them is held. Each lease gets its own token; they come back in the
/// order of `locks`.
///
/// The locks must live on one server (handles made separately for the same server are fine).
/// This script names keys of several resources, so on a Redis Cluster they must share a slot:
/// names on different slots are refused before anything is sent (each name is its own hash
/// tag, so in practice a cluster takes one lock at a time).
///
/// # Errors
/// [`Error::InvalidInput`] for a lock named twice, locks on different servers or on different
/// slots of a cluster, or a TTL out of range (nothing is sent); otherwise as
/// [`RedisLock::try_acquire`].
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
        if first.server.single().is_cluster() {
            protocol::check_same_slot(&first.keys, &lock.keys)?;
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
            let valid_until = protocol::valid_until(sent, ttl);
            RedisLease::new(
                lock,
                LeaseState::granted(nonce.clone(), token, ttl, valid_until),
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
