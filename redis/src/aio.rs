//! The async front end (feature `tokio`): [`LockServer`], [`RedisLock`], [`RedisLease`],
//! [`RedisFenced`] and [`KeptLease`] with `async fn` where they talk to a server — the same
//! protocol, errors and guarantees as the blocking types, nothing blocking a runtime thread.
//!
//! Each server is reached through one multiplexed connection (redis-rs's
//! `MultiplexedConnection`), opened lazily — so a handle can be built before the runtime starts —
//! and opened again after a connection error. A quorum's requests of one round run concurrently
//! on the calling task (not on threads), and the round returns as soon as the protocol's tally
//! decides. The scripts, reply decoding, validity and quorum arithmetic, and the order of the
//! rounds, are the `protocol` module's, shared with the blocking front end: this module only
//! sends what its state machines ask for.
//!
//! Dropping a [`RedisLease`] inside a runtime releases it in a background task; outside one, it
//! is left to expire by its TTL.
//!
//! A waiter of [`RedisLock::acquire_timeout`] blocks (`BLPOP`) on a connection of its own, never
//! on the multiplexed one that other tasks share: a blocked pop holds its connection until it
//! returns, so the handle keeps a pool of these per server (opened on demand, reused by later
//! waiters).
//!
//! # Cancellation
//!
//! Every future here may be dropped at an `.await` (a `select!`, a `timeout`) without leaving the
//! lock held for a TTL: `try_acquire` and `acquire_timeout` dropped mid-flight release whatever
//! they may have claimed, leave the queue and pass on a hand-off that reached them, and a dropped
//! `release` still releases — each from a background task on the current runtime (outside one,
//! what was left ends by its TTL). `renew` is safe to drop as it is: a renewal that took effect
//! unseen only lengthens the key's TTL on the server, and the lease keeps its old, shorter
//! validity locally. A dropped fenced `write` either ran or did not, as after a lost reply.
//!
//! # Connections
//!
//! One connect at a time per server: tasks that find no connection (a herd on a fresh handle, or
//! after an error) wait for the one being opened and share it, and an error drops a connection
//! only if no newer one replaced it meanwhile.
//!
//! ```
//! # #[path = "../tests/support/server.rs"] mod server;
//! # let redis = server::RedisProcess::start();
//! # let url = redis.url();
//! use std::time::Duration;
//! use fencelock_redis::aio::RedisLock;
//!
//! let lock = RedisLock::open(&url, "AAPL")?; // connects on first use
//! tokio::runtime::Runtime::new().unwrap().block_on(async {
//!     let lease = lock.try_acquire(Duration::from_secs(5)).await?.expect("free");
//!     assert!(lock.try_acquire(Duration::from_secs(5)).await?.is_none());
//!     lease.release().await
//! })?;
//! # Ok::<(), fencelock_redis::Error>(())
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fencelock::FencingToken;
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::{AsyncConnectionConfig, Client, Value};

use crate::endpoint::{self, Endpoint};
use crate::error::Error;
use crate::protocol::driver::{self, Driver};
use crate::protocol::queue::{Liveness, Waiting};
use crate::protocol::quorum::lease::{
    Acquisition, Answer, LeaseState, Operation, Release, Renewal, Servers,
};
use crate::protocol::quorum::{Attempt, Tally};
use crate::protocol::{self, LockKeys, Request};
use crate::server::{LockServerBuilder, Settings};
use crate::trace;

mod keep_alive;
mod link;
mod versioned;
pub use keep_alive::KeptLease;
use link::Link;
pub use versioned::RedisVersioned;

/// The longest blocking pop a waiter sends (its timer ends it sooner): a cluster connection for
/// pops is opened with this response timeout, since it cannot be changed per call.
const MAX_POP: Duration = Duration::from_secs(2 * 3600);

/// Idle connections kept per server for waiters' blocking pops.
const MAX_IDLE_WAIT_CONNECTIONS: usize = 64;

/// One server: where it is, its (lazily opened) multiplexed connection, and idle connections of
/// waiters (each used by one waiter at a time: a blocking pop holds it).
struct Node {
    endpoint: Endpoint,
    /// The multiplexed connection, with the number of the connect that opened it.
    connection: Mutex<Option<(u64, Link)>>,
    /// On a cluster, the connection for requests never sent twice (fenced writes): it does not
    /// retry by itself, so a connection error cannot run a pipeline twice.
    once: Mutex<Option<Link>>,
    /// Held while a connection is opened, so that one connect serves every caller that found
    /// none (a herd of tasks on a fresh handle, or after an error, opens one connection); the
    /// number of the last connect.
    connecting: tokio::sync::Mutex<u64>,
    waiting: Mutex<Vec<Link>>,
}

impl Node {
    fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            connection: Mutex::new(None),
            once: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(0),
            waiting: Mutex::new(Vec::new()),
        }
    }
}

struct Inner {
    nodes: Vec<Node>,
    settings: Settings,
}

/// The async handle to the lock server: one Redis server, or a quorum of independent ones, as
/// [`crate::LockServer`]. Cheap to clone; connects lazily.
#[derive(Clone)]
pub struct LockServer {
    inner: Arc<Inner>,
}

impl LockServer {
    /// A handle to the server at `url`, with default settings; connects on first use.
    ///
    /// # Errors
    /// [`Error::Redis`] if the URL does not parse.
    pub fn open(url: &str) -> Result<Self, Error> {
        Self::with(LockServerBuilder::default(), vec![Client::open(url)?])
    }

    /// A handle to the server `client` points at, with default settings.
    ///
    /// # Errors
    /// None with the default settings.
    pub fn new(client: Client) -> Result<Self, Error> {
        Self::with(LockServerBuilder::default(), vec![client])
    }

    /// A handle to a quorum of the independent servers at `urls` (an odd number).
    ///
    /// # Errors
    /// As [`crate::LockServer::quorum`].
    pub fn quorum(urls: &[&str]) -> Result<Self, Error> {
        let clients = urls
            .iter()
            .map(|url| Client::open(*url))
            .collect::<Result<Vec<_>, _>>()?;
        Self::with(LockServerBuilder::default(), clients)
    }

    /// A handle with `builder`'s settings to the servers `clients` point at (one, or a quorum).
    ///
    /// # Errors
    /// As [`LockServerBuilder::quorum_of`].
    pub fn with(builder: LockServerBuilder, clients: Vec<Client>) -> Result<Self, Error> {
        let (settings, clients) = builder.validated(clients)?;
        let nodes = clients
            .into_iter()
            .map(|client| Node::new(Endpoint::Server(client)))
            .collect();
        Ok(Self {
            inner: Arc::new(Inner { nodes, settings }),
        })
    }

    /// A handle to the Redis Cluster `urls` belong to, with default settings; as
    /// [`crate::LockServer::cluster`].
    ///
    /// # Errors
    /// As [`crate::LockServerBuilder::cluster`].
    pub fn cluster(urls: &[&str]) -> Result<Self, Error> {
        Self::cluster_with(LockServerBuilder::default(), urls)
    }

    /// As [`cluster`](Self::cluster), with `builder`'s settings.
    ///
    /// # Errors
    /// As [`crate::LockServerBuilder::cluster`].
    pub fn cluster_with(builder: LockServerBuilder, urls: &[&str]) -> Result<Self, Error> {
        builder.validate()?;
        let settings = builder.into_settings();
        let endpoint = Endpoint::cluster(
            urls,
            settings.connect_timeout,
            settings.io_timeout,
            #[cfg(feature = "tls")]
            settings.tls.as_ref(),
        )?;
        Ok(Self::single(settings, endpoint))
    }

    /// A handle to the master the Sentinels at `sentinels` name `master_name`, with default
    /// settings; as [`crate::LockServer::sentinel`].
    ///
    /// # Errors
    /// As [`crate::LockServerBuilder::sentinel`].
    pub fn sentinel(master_name: &str, sentinels: &[&str]) -> Result<Self, Error> {
        Self::sentinel_with(LockServerBuilder::default(), master_name, sentinels)
    }

    /// As [`sentinel`](Self::sentinel), with `builder`'s settings.
    ///
    /// # Errors
    /// As [`crate::LockServerBuilder::sentinel`].
    pub fn sentinel_with(
        builder: LockServerBuilder,
        master_name: &str,
        sentinels: &[&str],
    ) -> Result<Self, Error> {
        builder.validate()?;
        let clients = sentinels
            .iter()
            .map(|url| builder.client(url))
            .collect::<Result<Vec<_>, _>>()?;
        let master = builder.sentinel_master_template(sentinels)?;
        let settings = builder.into_settings();
        let endpoint = Endpoint::sentinel(
            master_name,
            clients,
            master,
            #[cfg(feature = "tls")]
            settings.tls.as_ref(),
        )?;
        Ok(Self::single(settings, endpoint))
    }

    fn single(settings: Settings, endpoint: Endpoint) -> Self {
        Self {
            inner: Arc::new(Inner {
                nodes: vec![Node::new(endpoint)],
                settings,
            }),
        }
    }

    /// How many servers each lease is spread over.
    #[must_use]
    pub fn servers(&self) -> usize {
        self.inner.nodes.len()
    }

    /// The lock named `name`. Opens nothing.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad name.
    pub fn lock(&self, name: &str) -> Result<RedisLock, Error> {
        let keys = LockKeys::new(&self.inner.settings.key_prefix, name)?;
        Ok(RedisLock {
            server: self.clone(),
            keys: Arc::new(keys),
        })
    }

    /// The fenced resource named `name` (a single server only, as [`crate::LockServer::fenced`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad name, or on a quorum.
    pub fn fenced(&self, name: &str) -> Result<RedisFenced, Error> {
        protocol::check_fenced_on(self.servers())?;
        Ok(RedisFenced {
            server: self.clone(),
            name: name.to_owned(),
            key: protocol::fenced_key(&self.inner.settings.key_prefix, name)?,
        })
    }

    /// The versioned record named `name` (a single server only, as
    /// [`crate::LockServer::versioned`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad name, or on a quorum.
    pub fn versioned(&self, name: &str) -> Result<RedisVersioned, Error> {
        protocol::check_data_on(self.servers(), "a versioned record", "versioned")?;
        Ok(RedisVersioned {
            server: self.clone(),
            name: name.to_owned(),
            key: protocol::versioned::record_key(&self.inner.settings.key_prefix, name)?,
        })
    }

    /// Whether this handle is on a Redis Cluster.
    fn is_cluster(&self) -> bool {
        self.inner.nodes[0].endpoint.is_cluster()
    }

    /// A plain command on `server`, within the I/O timeout; a connection that timed out is
    /// dropped.
    async fn query(&self, server: usize, cmd: &redis::Cmd) -> Result<Value, Error> {
        let (opened, mut con) = self.connection(server).await?;
        let timeout = self.inner.settings.io_timeout;
        match tokio::time::timeout(timeout, cmd.query_async::<Value>(&mut con)).await {
            Ok(reply) => Ok(reply?),
            Err(_) => {
                self.forget_connection(server, opened);
                Err(Error::Redis(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "fencelock-redis: no reply within the I/O timeout",
                ))))
            }
        }
    }

    /// Runs `request` (a write that must not run twice) on the single server: on a cluster
    /// through the connection that never sends twice, elsewhere as any request (a multiplexed
    /// connection never resends).
    async fn invoke_once(&self, request: &Request) -> Result<Value, Error> {
        if self.is_cluster() {
            self.invoke_once_on_cluster(request).await
        } else {
            self.invoke(0, request).await
        }
    }

    /// The server's connection and the number of the connect that opened it, opened (and the
    /// scripts loaded) if there is none — by one caller at a time: the others wait for it and
    /// share what it opened.
    async fn connection(&self, server: usize) -> Result<(u64, Link), Error> {
        let node = &self.inner.nodes[server];
        if let Some(current) = lock(&node.connection).clone() {
            return Ok(current);
        }
        let mut last = node.connecting.lock().await;
        if let Some(current) = lock(&node.connection).clone() {
            return Ok(current); // opened while this caller waited
        }
        let s = &self.inner.settings;
        let con = match node
            .endpoint
            .client_async(s.connect_timeout, s.io_timeout)
            .await?
        {
            Some(client) => {
                let mut con = self
                    .open_multiplexed(&node.endpoint, &client, s.io_timeout)
                    .await?;
                // Loaded before the first request: a reply nobody waits for (a quorum's
                // straggler) cannot be sent again after NOSCRIPT, and would otherwise run out of
                // order. (A cluster loads each script where it first runs, by `EVAL`.)
                let mut load = redis::pipe();
                protocol::load_quorum_scripts(&mut load);
                load.query_async::<()>(&mut con).await?;
                Link::Server(con)
            }
            None => Link::Cluster(
                node.endpoint
                    .connect_cluster_async(false, s.connect_timeout, s.io_timeout)
                    .await?,
            ),
        };
        *last += 1;
        let current = (*last, con);
        *lock(&node.connection) = Some(current.clone());
        Ok(current)
    }

    /// A multiplexed connection to `client` (the server, or a Sentinel group's master, checked
    /// to be one), its replies awaited for at most `response`.
    async fn open_multiplexed(
        &self,
        endpoint: &Endpoint,
        client: &Client,
        response: Duration,
    ) -> Result<redis::aio::MultiplexedConnection, Error> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.settings.connect_timeout))
            .set_response_timeout(Some(response));
        let mut con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        if matches!(endpoint, Endpoint::Sentinel(_)) {
            endpoint::check_master(redis::cmd("ROLE").query_async(&mut con).await?)?;
        }
        Ok(con)
    }

    /// Drops `server`'s connection after an error on it — unless a newer one replaced it
    /// meanwhile (the connect numbered `opened` is the one that failed).
    fn forget_connection(&self, server: usize, opened: u64) {
        let mut current = lock(&self.inner.nodes[server].connection);
        if current
            .as_ref()
            .is_some_and(|(number, _)| *number == opened)
        {
            *current = None;
        }
    }

    /// `BLPOP key timeout` on `server`, on a waiter's connection of its own (from the pool, or
    /// a new one), bounded by `timeout` + the I/O timeout: `Ok` whether or not anything was
    /// popped. After an error or a timeout the connection is dropped, its state unknown.
    ///
    /// A `precise` pop is timed here, not by the server (which times blocked commands out only
    /// at its cron, up to 100 ms late at the default `hz`): the server's timeout is a second
    /// longer, and if nothing came within `timeout` the connection (its pop still pending) is
    /// dropped and the pop counts as returned.
    async fn block_pop(
        &self,
        server: usize,
        key: &str,
        timeout: Duration,
        precise: bool,
    ) -> Result<(), Error> {
        let node = &self.inner.nodes[server];
        let s = &self.inner.settings;
        // BLPOP's 0 means "forever": never send it.
        let timeout = timeout.max(Duration::from_millis(1));
        let (server_timeout, bound) = if precise {
            (timeout.saturating_add(Duration::from_secs(1)), timeout)
        } else {
            (timeout, timeout.saturating_add(s.io_timeout))
        };
        let pooled = lock(&node.waiting).pop();
        let mut con = match pooled {
            Some(con) => con,
            None => match node
                .endpoint
                .client_async(s.connect_timeout, s.io_timeout)
                .await?
            {
                // Its response timeout is raised below, for each pop.
                Some(client) => Link::Server(
                    self.open_multiplexed(&node.endpoint, &client, bound)
                        .await?,
                ),
                // Bounded by the timer below; the cluster connection's own timeout only needs
                // to be as long as any pop.
                None => Link::Cluster(
                    node.endpoint
                        .connect_cluster_async(false, s.connect_timeout, MAX_POP)
                        .await?,
                ),
            },
        };
        if let Link::Server(con) = &mut con {
            con.set_response_timeout(server_timeout.saturating_add(s.io_timeout));
        }
        let mut pop = redis::cmd("BLPOP");
        pop.arg(key).arg(server_timeout.as_secs_f64());
        match tokio::time::timeout(bound, pop.query_async::<Value>(&mut con)).await {
            Ok(Ok(_)) => {
                let mut idle = lock(&node.waiting);
                if idle.len() < MAX_IDLE_WAIT_CONNECTIONS {
                    idle.push(con);
                }
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            // Nothing within a precise timeout: the connection goes with its pending pop.
            Err(_) if precise => Ok(()),
            Err(_) => Err(Error::Redis(redis::RedisError::from((
                redis::ErrorKind::Io,
                "fencelock-redis: a blocking pop got no reply within its timeout",
            )))),
        }
    }

    /// `BLPOP key timeout` on every server at once, until the first returns: `Ok` if any
    /// returned, else the first error. Once one returns, the others are ended early (see
    /// `protocol::unblock`) and awaited, so their connections go back to the pool.
    async fn block_pop_any(
        &self,
        key: &str,
        timeout: Duration,
        precise: bool,
    ) -> Result<(), Error> {
        if self.servers() == 1 {
            return self.block_pop(0, key, timeout, precise).await;
        }
        let mut pops: FuturesUnordered<_> = (0..self.servers())
            .map(|i| async move { (i, self.block_pop(i, key, timeout, precise).await) })
            .collect();
        let mut popped: Result<(), Option<Error>> = Err(None);
        while let Some((i, result)) = pops.next().await {
            match result {
                Ok(()) if popped.is_err() => {
                    popped = Ok(());
                    let unblock =
                        (0..self.servers())
                            .filter(|&other| other != i)
                            .map(|other| async move {
                                let Ok((_, mut con)) = self.connection(other).await else {
                                    return;
                                };
                                let bound = self.inner.settings.io_timeout;
                                let push = protocol::unblock(key);
                                let _ =
                                    tokio::time::timeout(bound, push.query_async::<()>(&mut con))
                                        .await;
                            });
                    futures_util::future::join_all(unblock).await;
                }
                Ok(()) => {}
                Err(e) => {
                    if let Err(None) = popped {
                        popped = Err(Some(e));
                    }
                }
            }
        }
        popped.map_err(|e| {
            e.unwrap_or_else(|| {
                Error::Redis(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "fencelock-redis: no blocking pop returned",
                )))
            })
        })
    }

    /// Runs `request` on `server`, within the I/O timeout; `EVAL` after `NOSCRIPT`. A connection
    /// error drops the connection, so the next call opens a new one.
    async fn invoke(&self, server: usize, request: &Request) -> Result<Value, Error> {
        // Each step is bounded by the connection's own timeouts (connect, and response = the
        // I/O timeout), so no timer of ours is needed on the hot path.
        let (opened, mut con) = self.connection(server).await?;
        let reply = match request.evalsha().query_async::<Value>(&mut con).await {
            Err(e) if protocol::is_noscript(&e) => request.eval().query_async(&mut con).await,
            reply => reply,
        };
        if let Err(e) = &reply {
            if e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.kind() == redis::ErrorKind::Io
                // A Sentinel group's old master, demoted: ask the Sentinels again.
                || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            {
                self.forget_connection(server, opened);
            }
        }
        reply.map_err(Error::Redis)
    }

    /// Runs `request` on a cluster through a connection that never sends it twice (a fenced
    /// write). A `MOVED` ran nothing: the connection (and its stale slot map) is replaced, and
    /// the request sent once more.
    async fn invoke_once_on_cluster(&self, request: &Request) -> Result<Value, Error> {
        let node = &self.inner.nodes[0];
        let s = &self.inner.settings;
        let mut moved = false;
        loop {
            let cached = lock(&node.once).clone();
            let mut con = match cached {
                Some(con) => con,
                None => {
                    let con = node
                        .endpoint
                        .connect_cluster_async(true, s.connect_timeout, s.io_timeout)
                        .await?;
                    let con = Link::Cluster(con);
                    *lock(&node.once) = Some(con.clone());
                    con
                }
            };
            let reply = match request.evalsha().query_async::<Value>(&mut con).await {
                Err(e) if protocol::is_noscript(&e) => request.eval().query_async(&mut con).await,
                reply => reply,
            };
            match reply {
                Ok(value) => return Ok(value),
                Err(e) => {
                    *lock(&node.once) = None;
                    let is_moved =
                        e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Moved);
                    if !is_moved || moved {
                        return Err(e.into());
                    }
                    moved = true;
                }
            }
        }
    }

    /// One round: `request(server)` to each of `servers` concurrently on this task, the replies
    /// fed to `tally` until it decides or `deadline` passes.
    async fn round<T: Tally>(
        &self,
        servers: impl IntoIterator<Item = usize>,
        request: impl Fn(usize) -> Request,
        deadline: Instant,
        mut tally: T,
    ) -> T::Outcome {
        let mut replies: FuturesUnordered<Pin<Box<dyn Future<Output = _> + Send + '_>>> =
            FuturesUnordered::new();
        for server in servers {
            let request = request(server);
            replies.push(Box::pin(async move {
                (server, self.invoke(server, &request).await)
            }));
        }
        let deadline = tokio::time::Instant::from_std(deadline);
        loop {
            match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some((server, reply))) => {
                    if let Some(outcome) = tally.record(server, reply) {
                        // The stragglers' futures are dropped; what they sent is answered on
                        // their connection and discarded there.
                        return outcome;
                    }
                }
                Ok(None) | Err(_) => return tally.settle(),
            }
        }
    }

    /// Runs `operation` to its decision on this task (see [`driver::perform`]).
    async fn perform<O: Operation + Send>(&self, operation: O) -> O::Decision
    where
        O::Tally: Send,
        <O::Tally as Tally>::Outcome: Send,
    {
        driver::perform(self, operation).await
    }

    /// Sends `request` to every server from a background task, without waiting (cleanup). Does
    /// nothing outside a runtime.
    fn send_and_forget(&self, request: impl Fn(usize) -> Request) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let requests: Vec<Request> = (0..self.servers()).map(request).collect();
        let server = self.clone();
        runtime.spawn(async move {
            let sends = requests
                .iter()
                .enumerate()
                .map(|(i, request)| server.invoke(i, request));
            futures_util::future::join_all(sends).await;
        });
    }

    fn round_deadline(&self, valid_until: Instant) -> Instant {
        (Instant::now() + self.inner.settings.io_timeout).min(valid_until)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A cached connection handle: no invariant a panic could break.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for LockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: Vec<String> = self
            .inner
            .nodes
            .iter()
            .map(|n| n.endpoint.identity().0)
            .collect();
        f.debug_struct("aio::LockServer")
            .field("servers", &servers)
            .finish_non_exhaustive()
    }
}

/// One named resource's lock, async: as [`crate::RedisLock`].
#[derive(Clone, Debug)]
pub struct RedisLock {
    server: LockServer,
    keys: Arc<LockKeys>,
}

impl RedisLock {
    /// The lock `name` on the server at `url`; connects on first use.
    ///
    /// # Errors
    /// As [`crate::RedisLock::open`].
    pub fn open(url: &str, name: &str) -> Result<Self, Error> {
        LockServer::open(url)?.lock(name)
    }

    /// The lock `name` on the server `client` points at.
    ///
    /// # Errors
    /// As [`crate::RedisLock::new`].
    pub fn new(client: Client, name: &str) -> Result<Self, Error> {
        LockServer::new(client)?.lock(name)
    }

    /// The lock `name` on a quorum of the servers at `urls`.
    ///
    /// # Errors
    /// As [`crate::RedisLock::quorum`].
    pub fn quorum(urls: &[&str], name: &str) -> Result<Self, Error> {
        LockServer::quorum(urls)?.lock(name)
    }

    /// The resource's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.keys.name
    }

    /// As [`crate::RedisLock::try_acquire`].
    ///
    /// # Errors
    /// As [`crate::RedisLock::try_acquire`].
    pub async fn try_acquire(&self, ttl: Duration) -> Result<Option<RedisLease>, Error> {
        let attempt = async { self.attempt(ttl).await?.into_lease() };
        trace::acquire_async(self.name(), "try_acquire", attempt).await
    }

    /// As [`crate::RedisLock::acquire_timeout`]: queued, first come first served, woken by the
    /// release's hand-off. The blocking pops run on connections of their own (see the
    /// [module docs](self)); dropping the future leaves the queue in the background.
    ///
    /// # Errors
    /// As [`crate::RedisLock::acquire_timeout`].
    pub async fn acquire_timeout(
        &self,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<RedisLease>, Error> {
        if wait.is_zero() {
            return self.try_acquire(ttl).await;
        }
        let waited = async {
            let s = &self.server.inner.settings;
            let liveness = Liveness::new(s.liveness)?;
            let retry = (s.retry_delay_min, s.retry_delay_max);
            let servers = self.server.servers();
            let now = Instant::now();
            let mut waiting = Waiting::new(servers, &self.keys, ttl, wait, liveness, retry, now)?;
            // Out of the queue first, so that a hand-off the release passes on cannot come back.
            let mut abandoned = Cleanup::new(&self.server, waiting.abandon().into());
            let decision = driver::wait(&self.server, &mut waiting).await;
            abandoned.disarm();
            let lease = decision?.map(|state| RedisLease {
                server: self.server.clone(),
                keys: Arc::clone(&self.keys),
                state,
            });
            Ok(lease)
        };
        trace::acquire_async(self.name(), "acquire_timeout", waited).await
    }

    /// One try; see [`Acquisition`] for its requests on one server and on a quorum.
    async fn attempt(&self, ttl: Duration) -> Result<Attempt<RedisLease>, Error> {
        let servers = self.server.servers();
        let acquisition = Acquisition::new(servers, &self.keys, ttl, Instant::now)?;
        // Cancelled with requests in flight, it may have claimed the lock on some servers.
        let mut cancelled = Cleanup::new(&self.server, vec![acquisition.release_claims()]);
        let attempt = self.server.perform(acquisition).await;
        cancelled.disarm();
        let attempt = attempt?;
        Ok(attempt.map(|state| RedisLease {
            server: self.server.clone(),
            keys: Arc::clone(&self.keys),
            state,
        }))
    }
}

/// The async front end as the protocol's driver: a quorum's requests of one round run
/// concurrently on the calling task.
impl Driver for LockServer {
    async fn ask(&self, request: &Request) -> Answer {
        self.invoke(0, request).await.map(|reply| (reply, false))
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
        LockServer::round(self, servers, move |_| request.clone(), deadline, tally)
    }

    fn forget(&self, request: &Request) {
        self.send_and_forget(|_| request.clone());
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
        self.block_pop_any(key, timeout, precise)
    }

    fn sleep(&self, delay: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(delay)
    }
}

/// What a cancelled future leaves behind on the servers — a claim, a queued waiter, a lease it
/// was releasing — and the requests that clean it up. Dropped while armed (the future was dropped
/// before it finished: a `select!`, a `timeout`), it sends them to every server from a background
/// task, in order on each server; outside a runtime, what was left ends by its TTL or liveness.
struct Cleanup<'a> {
    server: &'a LockServer,
    requests: Vec<Request>,
}

impl<'a> Cleanup<'a> {
    fn new(server: &'a LockServer, requests: Vec<Request>) -> Self {
        Self { server, requests }
    }

    /// The future finished: nothing to clean up.
    fn disarm(&mut self) {
        self.requests.clear();
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if self.requests.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (server, requests) = (self.server.clone(), std::mem::take(&mut self.requests));
        runtime.spawn(async move {
            let each = (0..server.servers()).map(|i| {
                let (server, requests) = (&server, &requests);
                async move {
                    for request in requests {
                        let _ = server.invoke(i, request).await;
                    }
                }
            });
            futures_util::future::join_all(each).await;
        });
    }
}

/// A held lease, async: as [`crate::RedisLease`]. `Send + 'static`.
pub struct RedisLease {
    server: LockServer,
    keys: Arc<LockKeys>,
    state: LeaseState,
}

impl RedisLease {
    /// The lease's fencing token.
    #[must_use]
    pub fn token(&self) -> FencingToken {
        self.state.token()
    }

    /// The name of the lock this lease holds.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.keys.name
    }

    /// As [`crate::RedisLease::remaining`].
    #[must_use]
    pub fn remaining(&self) -> Option<Duration> {
        self.state.remaining(Instant::now())
    }

    /// `remaining().is_some()`.
    #[must_use]
    pub fn is_valid(&self) -> bool {
        self.remaining().is_some()
    }

    /// As [`crate::RedisLease::renew`]. Safe to cancel: a renewal that took effect unseen only
    /// lengthens the key's TTL on the server; the lease keeps its old, shorter validity.
    ///
    /// # Errors
    /// As [`crate::RedisLease::renew`].
    pub async fn renew(&mut self, ttl: Duration) -> Result<(), Error> {
        let servers = self.server.servers();
        let renewal = Renewal::new(servers, &self.keys, &mut self.state, ttl, Instant::now)?;
        let renewed = self.server.perform(renewal).await;
        if let Err(Error::Lost(_)) = renewed {
            self.lose();
        }
        renewed
    }

    /// As [`crate::RedisLease::release`].
    ///
    /// # Errors
    /// As [`crate::RedisLease::release`].
    pub async fn release(mut self) -> Result<(), Error> {
        let servers = self.server.servers();
        let request = self.state.release_request(&self.keys, servers);
        let release = Release::new(servers, &self.keys, &mut self.state)?;
        // Cancelled before its request went out, it would leave the lock held for its TTL.
        let mut cancelled = Cleanup::new(&self.server, vec![request]);
        let released = self.server.perform(release).await;
        cancelled.disarm();
        released
    }

    /// Lost: free what is left of it, in the background.
    fn lose(&mut self) {
        self.state.lose();
        let (keys, state, servers) = (&self.keys, &self.state, self.server.servers());
        self.server
            .send_and_forget(|_| state.release_request(keys, servers));
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        if self.state.is_held() {
            // Inside a runtime: released by a background task; outside: left to its TTL.
            self.lose();
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
        f.debug_struct("aio::RedisLease")
            .field("name", &self.keys.name)
            .field("token", &self.token())
            .field("remaining", &self.remaining())
            .finish()
    }
}

/// The resource side, async: as [`crate::RedisFenced`].
#[derive(Clone, Debug)]
pub struct RedisFenced {
    server: LockServer,
    name: String,
    key: String,
}

impl RedisFenced {
    /// The fenced resource `name` on the server at `url`.
    ///
    /// # Errors
    /// As [`crate::RedisFenced::open`].
    pub fn open(url: &str, name: &str) -> Result<Self, Error> {
        LockServer::open(url)?.fenced(name)
    }

    /// The resource's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// As [`crate::RedisFenced::write`]. Never sent twice.
    ///
    /// # Errors
    /// As [`crate::RedisFenced::write`].
    pub async fn write(
        &self,
        token: FencingToken,
        commands: &redis::Pipeline,
    ) -> Result<(), Error> {
        let on_cluster = self.server.inner.nodes[0].endpoint.is_cluster();
        let request = protocol::fenced_write(
            &self.key,
            token,
            commands,
            on_cluster.then_some(&*self.name),
        )?;
        let reply = if on_cluster {
            self.server.invoke_once_on_cluster(&request).await?
        } else {
            self.server.invoke(0, &request).await?
        };
        protocol::decode_fenced_write(&reply, token)
    }

    /// As [`crate::RedisFenced::highest`].
    ///
    /// # Errors
    /// As [`crate::RedisFenced::highest`].
    pub async fn highest(&self) -> Result<FencingToken, Error> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(&self.key);
        let reply = self.server.query(0, &cmd).await?;
        protocol::decode_highest(&reply)
    }
}
