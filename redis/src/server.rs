//! [`LockServer`]: the lock server — one Redis server, or a quorum of independent ones — with its
//! connections and settings, shared by every lock made from it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Client, IntoConnectionInfo, Value};

use crate::endpoint::{Endpoint, Link};
use crate::fanout::{self, Sockets};

use crate::error::{Error, InvalidInput};
use crate::node::{Node, Resend};
use crate::protocol::{self, quorum::Tally, Request};
use crate::{RedisFenced, RedisLock, RedisVersioned};

/// The longest connect or I/O timeout accepted.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// A handle to the lock server: one Redis server, or a quorum of `2f + 1` independent ones of
/// which any `f` may fail ([`quorum`](Self::quorum)). Its connections and settings.
///
/// Cheap to clone (an `Arc`); every [`RedisLock`] and [`RedisFenced`] made from it shares its
/// connection pool, and making one for a new name opens nothing. Connections are opened lazily,
/// one per concurrent caller at most, reused afterwards, and dropped after any error, so the next
/// call reconnects (a server that restarts needs no new handle). On a quorum, requests go to
/// every server at once through a few worker threads per server (at most 16, started on demand,
/// ended after 10 s idle), and a call returns as soon as its outcome is decided.
///
/// ```
/// # #[path = "../tests/support/server.rs"] mod server;
/// # let redis = server::RedisProcess::start(); // a throwaway redis-server on 127.0.0.1
/// # let url = redis.url();
/// use std::time::Duration;
/// use fencelock_redis::{try_acquire_all, LockServer};
///
/// let server = LockServer::builder()
///     .io_timeout(Duration::from_millis(500))
///     .key_prefix("exchange:")
///     .open(&url)?; // "redis://127.0.0.1:6379"
/// let aapl = server.lock("stock:AAPL")?;
/// let msft = server.lock("stock:MSFT")?; // same connections
/// let both = try_acquire_all(&[&aapl, &msft], Duration::from_secs(5))?.expect("free");
/// assert!(both.iter().all(|lease| lease.is_valid())); // each with its resource's own token
/// # Ok::<(), fencelock_redis::Error>(())
/// ```
#[derive(Clone)]
pub struct LockServer {
    inner: Arc<Inner>,
}

struct Inner {
    /// One server, or an odd number of them (a quorum).
    nodes: Vec<Node>,
    /// For a quorum, each server's non-blocking sockets (empty for a single server).
    sockets: Vec<Sockets>,
    settings: Settings,
}

/// The settings a [`LockServerBuilder`] validated.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) connect_timeout: Duration,
    pub(crate) io_timeout: Duration,
    pub(crate) key_prefix: String,
    pub(crate) retry_delay_min: Duration,
    pub(crate) retry_delay_max: Duration,
    pub(crate) liveness: Duration,
    /// The certificates for `rediss://` servers: a private CA, a client certificate.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<redis::TlsCertificates>,
}

/// Settings for a [`LockServer`]: every one has a default that works.
///
/// | setting | default | what it bounds |
/// |---|---|---|
/// | [`connect_timeout`](Self::connect_timeout) | 1 s | opening a connection, handshake included |
/// | [`io_timeout`](Self::io_timeout) | 1 s | sending one request, and waiting for its reply |
/// | [`key_prefix`](Self::key_prefix) | `fencelock:` | the namespace of every key |
/// | [`retry_delay`](Self::retry_delay) | 2 ms to 64 ms | waits before a waiter retries after a connection error |
/// | [`liveness`](Self::liveness) | 1 s | how long a waiter that stopped answering blocks the queue |
///
/// Timeouts must be between a millisecond and an hour; [`open`](Self::open) and the other
/// constructors refuse others with [`Error::InvalidInput`].
///
/// Every call to the server is bounded by the two timeouts (a reconnect included); a server that
/// is down, killed or paused gives [`Error::Redis`] within them.
#[derive(Clone, Debug)]
#[must_use]
pub struct LockServerBuilder {
    settings: Settings,
}

impl Default for LockServerBuilder {
    fn default() -> Self {
        Self {
            settings: Settings {
                connect_timeout: Duration::from_secs(1),
                io_timeout: Duration::from_secs(1),
                key_prefix: "fencelock:".to_owned(),
                retry_delay_min: Duration::from_millis(2),
                retry_delay_max: Duration::from_millis(64),
                liveness: Duration::from_secs(1),
                #[cfg(feature = "tls")]
                tls: None,
            },
        }
    }
}

impl LockServerBuilder {
    /// The longest wait to open a connection (TCP connect and Redis handshake).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// The longest wait for one request to be sent, and for its reply.
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.settings.io_timeout = timeout;
        self
    }

    /// The prefix of every key this handle reads or writes (no braces: they are the hash tag).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.key_prefix = prefix.into();
        self
    }

    /// The first and the longest delay before a waiter of
    /// [`acquire_timeout`](RedisLock::acquire_timeout) tries again after a connection error
    /// (the server restarting, say): each delay doubles up to `max`, and each sleep is drawn
    /// uniformly from its upper half (jitter). Waiting for a held lock does not poll: see
    /// [`liveness`](Self::liveness).
    pub fn retry_delay(mut self, min: Duration, max: Duration) -> Self {
        self.settings.retry_delay_min = min;
        self.settings.retry_delay_max = max;
        self
    }

    /// How long a waiter of [`acquire_timeout`](RedisLock::acquire_timeout) may stop answering
    /// (killed, paused, cut off) before it is dropped from the lock's queue, between
    /// [`MIN_LIVENESS`](crate::MIN_LIVENESS) and [`MAX_LIVENESS`](crate::MAX_LIVENESS).
    ///
    /// It bounds what a waiter that died costs the others: the lock handed to it is taken back,
    /// and a holder's expired lease passed on, within this window. A waiter sends one step and
    /// one blocking pop every third of it (its heartbeat) while it waits, and the lock handed
    /// to it is held for half of it until it confirms. Shorter windows recover faster and cost
    /// the server more requests.
    pub fn liveness(mut self, window: Duration) -> Self {
        self.settings.liveness = window;
        self
    }

    /// The certificates to trust and present for `rediss://` URLs (feature `tls`): a private
    /// CA (`root_cert`, PEM), and a client certificate and key for mutual TLS (`client_tls`).
    /// Without them, servers are verified against the system's roots. They apply to the URLs
    /// given to [`open`](Self::open) and [`quorum`](Self::quorum) — and to a quorum's own
    /// sockets, which is why a quorum over TLS takes them here rather than only inside its
    /// clients.
    #[cfg(feature = "tls")]
    pub fn tls_certificates(mut self, certificates: redis::TlsCertificates) -> Self {
        self.settings.tls = Some(certificates);
        self
    }

    /// A client for `url`, with the TLS certificates if there are any and it is a TLS URL.
    pub(crate) fn client(&self, url: &str) -> Result<Client, Error> {
        #[cfg(feature = "tls")]
        if let Some(certificates) = &self.settings.tls {
            if url.starts_with("rediss://") {
                return Ok(Client::build_with_tls(url, certificates.clone())?);
            }
        }
        Ok(Client::open(url)?)
    }

    /// A handle to the server at `url` (`redis://host:port/db`, or `rediss://` with the `tls`
    /// feature); connects lazily, on first use.
    ///
    /// # Errors
    /// [`Error::Redis`] if the URL does not parse, [`Error::InvalidInput`] for a bad setting.
    pub fn open(self, url: &str) -> Result<LockServer, Error> {
        let client = self.client(url)?;
        self.new(client)
    }

    /// A handle to the server `client` points at; connects lazily, on first use.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad setting.
    #[allow(clippy::new_ret_no_self, clippy::wrong_self_convention)]
    pub fn new(self, client: Client) -> Result<LockServer, Error> {
        self.quorum_of(vec![client])
    }

    /// A handle to a quorum of independent servers at `urls` (an odd number; a lease needs a
    /// majority of them); connects lazily. A quorum of one is [`open`](Self::open).
    ///
    /// # Errors
    /// [`Error::Redis`] if a URL does not parse; [`Error::InvalidInput`] for an empty or even
    /// list, the same server twice, or a bad setting.
    pub fn quorum(self, urls: &[&str]) -> Result<LockServer, Error> {
        let clients = urls
            .iter()
            .map(|url| self.client(url))
            .collect::<Result<Vec<_>, _>>()?;
        self.quorum_of(clients)
    }

    /// A handle to a quorum of the servers `clients` point at; as [`quorum`](Self::quorum).
    ///
    /// # Errors
    /// As [`quorum`](Self::quorum).
    pub fn quorum_of(self, clients: Vec<Client>) -> Result<LockServer, Error> {
        let (settings, clients) = self.validated(clients)?;
        let s = &settings;
        let sockets = if clients.len() > 1 {
            clients
                .iter()
                .map(|client| {
                    Sockets::new(
                        client.get_connection_info(),
                        s.connect_timeout,
                        s.io_timeout,
                        #[cfg(feature = "tls")]
                        s.tls.as_ref(),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let nodes: Vec<Node> = clients
            .into_iter()
            .map(|client| Node::new(Endpoint::Server(client), s.connect_timeout, s.io_timeout))
            .collect();
        Ok(LockServer {
            inner: Arc::new(Inner {
                nodes,
                sockets,
                settings,
            }),
        })
    }

    /// A handle to the Redis Cluster that `urls` are nodes of (any of its masters: the others
    /// are found). Each lock and fenced resource lives on the master that owns its name's slot;
    /// see the crate docs' *Topologies* for what a cluster promises. Connects lazily. Give
    /// several nodes: a connection is opened again after an error, from the first of `urls`
    /// that answers.
    ///
    /// Calls follow `MOVED` and `ASK` (a slot that moved, or is moving) and refresh the slot map
    /// on their own, up to three times each, so a call is bounded by four connect and I/O
    /// timeouts.
    ///
    /// # Errors
    /// [`Error::Redis`] if a URL does not parse; [`Error::InvalidInput`] for no URL or a bad
    /// setting.
    pub fn cluster(self, urls: &[&str]) -> Result<LockServer, Error> {
        self.validate()?;
        let s = &self.settings;
        let endpoint = Endpoint::cluster(
            urls,
            s.connect_timeout,
            s.io_timeout,
            #[cfg(feature = "tls")]
            s.tls.as_ref(),
        )?;
        Ok(self.single(endpoint))
    }

    /// A handle to the master that the Sentinels at `sentinels` name `master_name`, found again
    /// after every connection failure — so a failover is followed. The master is logged in to
    /// as the Sentinel URLs' scheme says, with no user or password and database 0; use
    /// [`sentinel_of`](Self::sentinel_of) for others. See the crate docs' *Topologies* for what
    /// a failover does to leases and tokens. Connects lazily.
    ///
    /// # Errors
    /// [`Error::Redis`] if a URL does not parse; [`Error::InvalidInput`] for an empty name, no
    /// Sentinel, or a bad setting.
    pub fn sentinel(self, master_name: &str, sentinels: &[&str]) -> Result<LockServer, Error> {
        let clients = sentinels
            .iter()
            .map(|url| self.client(url))
            .collect::<Result<Vec<_>, _>>()?;
        let master = self.sentinel_master_template(sentinels)?;
        self.sentinel_of(master_name, clients, master)
    }

    /// As [`sentinel`](Self::sentinel), with clients for the Sentinels and the master's
    /// connection settings: `master`'s database, user, password and TLS are used, its address
    /// replaced by the one a Sentinel names (e.g. `"redis://lock:secret@master/2"`).
    ///
    /// # Errors
    /// As [`sentinel`](Self::sentinel).
    pub fn sentinel_of(
        self,
        master_name: &str,
        sentinels: Vec<Client>,
        master: impl IntoConnectionInfo,
    ) -> Result<LockServer, Error> {
        self.validate()?;
        let endpoint = Endpoint::sentinel(
            master_name,
            sentinels,
            master.into_connection_info()?,
            #[cfg(feature = "tls")]
            self.settings.tls.as_ref(),
        )?;
        Ok(self.single(endpoint))
    }

    /// The master's connection settings when only the Sentinels' URLs are given: TLS if they
    /// use it, no user or password, database 0. (The address is the one a Sentinel names.)
    pub(crate) fn sentinel_master_template(
        &self,
        sentinels: &[&str],
    ) -> Result<redis::ConnectionInfo, Error> {
        let scheme = if sentinels
            .first()
            .is_some_and(|url| url.starts_with("rediss://"))
        {
            "rediss"
        } else {
            "redis"
        };
        Ok(format!("{scheme}://127.0.0.1:6379").into_connection_info()?)
    }

    /// The settings, for a handle that was checked with [`validate`](Self::validate).
    #[cfg(feature = "tokio")]
    pub(crate) fn into_settings(self) -> Settings {
        self.settings
    }

    /// A single-server handle (one server, a Sentinel group, a cluster) on `endpoint`.
    fn single(self, endpoint: Endpoint) -> LockServer {
        let s = self.settings;
        LockServer {
            inner: Arc::new(Inner {
                nodes: vec![Node::new(endpoint, s.connect_timeout, s.io_timeout)],
                sockets: Vec::new(),
                settings: s,
            }),
        }
    }

    /// The settings and the servers, checked: the settings in range, an odd number of
    /// servers, none named twice.
    pub(crate) fn validated(self, clients: Vec<Client>) -> Result<(Settings, Vec<Client>), Error> {
        self.validate()?;
        if clients.is_empty() || clients.len().is_multiple_of(2) {
            return Err(InvalidInput::new(format!(
                "a quorum needs an odd number of servers (1, 3, 5, ...), not {}: with an even \
                 number, half of them failing stops it as surely as one more would",
                clients.len()
            ))
            .into());
        }
        let identities: Vec<(String, i64)> = clients.iter().map(identity).collect();
        for (i, id) in identities.iter().enumerate() {
            if let Some(j) = identities[..i].iter().position(|other| other == id) {
                return Err(InvalidInput::new(format!(
                    "the server {} is named twice in the quorum (positions {j} and {i}): a \
                     quorum needs independent servers",
                    id.0
                ))
                .into());
            }
        }
        Ok((self.settings, clients))
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let s = &self.settings;
        for (what, timeout) in [
            ("connect timeout", s.connect_timeout),
            ("I/O timeout", s.io_timeout),
        ] {
            if timeout.is_zero() {
                return Err(InvalidInput::new(format!(
                    "a zero {what} would fail every call: use at least a millisecond"
                ))
                .into());
            }
            if timeout > MAX_TIMEOUT {
                return Err(InvalidInput::new(format!(
                    "a {what} of {timeout:?} is longer than the {MAX_TIMEOUT:?} a lock call may \
                     wait: use a shorter one"
                ))
                .into());
            }
        }
        if s.retry_delay_min.is_zero() || s.retry_delay_min > s.retry_delay_max {
            return Err(InvalidInput::new(format!(
                "retry delays {:?}..{:?}: the first must be positive and at most the longest",
                s.retry_delay_min, s.retry_delay_max
            ))
            .into());
        }
        protocol::queue::Liveness::new(s.liveness)?;
        protocol::check_prefix(&s.key_prefix)
    }
}

impl LockServer {
    /// Settings to change before opening a handle.
    pub fn builder() -> LockServerBuilder {
        LockServerBuilder::default()
    }

    /// A handle to the server at `url`, with the default settings; connects lazily.
    ///
    /// # Errors
    /// [`Error::Redis`] if the URL does not parse.
    pub fn open(url: &str) -> Result<Self, Error> {
        Self::builder().open(url)
    }

    /// A handle to the server `client` points at, with the default settings; connects lazily.
    ///
    /// # Errors
    /// None with the default settings; the `Result` matches [`LockServerBuilder::new`].
    pub fn new(client: Client) -> Result<Self, Error> {
        Self::builder().new(client)
    }

    /// A handle to a quorum of the independent servers at `urls`, with the default settings;
    /// see [`LockServerBuilder::quorum`].
    ///
    /// # Errors
    /// As [`LockServerBuilder::quorum`].
    pub fn quorum(urls: &[&str]) -> Result<Self, Error> {
        Self::builder().quorum(urls)
    }

    /// A handle to a quorum of the servers `clients` point at, with the default settings.
    ///
    /// # Errors
    /// As [`LockServerBuilder::quorum`].
    pub fn quorum_of(clients: Vec<Client>) -> Result<Self, Error> {
        Self::builder().quorum_of(clients)
    }

    /// A handle to the Redis Cluster `urls` belong to, with the default settings; see
    /// [`LockServerBuilder::cluster`].
    ///
    /// ```no_run
    /// use fencelock_redis::LockServer;
    ///
    /// let server = LockServer::cluster(&["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])?;
    /// let book = server.lock("AAPL")?; // on the master that owns the slot of `{AAPL}`
    /// # Ok::<(), fencelock_redis::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`LockServerBuilder::cluster`].
    pub fn cluster(urls: &[&str]) -> Result<Self, Error> {
        Self::builder().cluster(urls)
    }

    /// A handle to the master the Sentinels at `sentinels` name `master_name`, with the default
    /// settings; see [`LockServerBuilder::sentinel`].
    ///
    /// ```no_run
    /// use fencelock_redis::LockServer;
    ///
    /// let sentinels = ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3:26379"];
    /// let server = LockServer::sentinel("exchange", &sentinels)?;
    /// # Ok::<(), fencelock_redis::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`LockServerBuilder::sentinel`].
    pub fn sentinel(master_name: &str, sentinels: &[&str]) -> Result<Self, Error> {
        Self::builder().sentinel(master_name, sentinels)
    }

    /// How many servers this handle spreads each lease over (1 for a single server).
    #[must_use]
    pub fn servers(&self) -> usize {
        self.inner.nodes.len()
    }

    /// The lock named `name` on this server. Opens nothing.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty name, one longer than
    /// [`MAX_NAME_LEN`](crate::MAX_NAME_LEN) bytes, or one with a brace.
    pub fn lock(&self, name: &str) -> Result<RedisLock, Error> {
        RedisLock::on(self.clone(), name)
    }

    /// The fenced resource named `name` on this server. Opens nothing.
    ///
    /// A fenced resource is data on *one* server, so a quorum handle has none: open a handle to
    /// the server that keeps the resource. Tokens from a quorum's leases work there as any.
    ///
    /// # Errors
    /// As [`lock`](Self::lock); [`Error::InvalidInput`] on a quorum.
    pub fn fenced(&self, name: &str) -> Result<RedisFenced, Error> {
        protocol::check_fenced_on(self.servers())?;
        RedisFenced::on(self.clone(), name)
    }

    /// The versioned record named `name` on this server (see [`RedisVersioned`]). Opens nothing.
    ///
    /// # Errors
    /// As [`lock`](Self::lock); [`Error::InvalidInput`] on a quorum (a record is data on one
    /// server).
    pub fn versioned(&self, name: &str) -> Result<RedisVersioned, Error> {
        protocol::check_data_on(self.servers(), "a versioned record", "versioned")?;
        RedisVersioned::on(self.clone(), name)
    }

    /// Checks that the server (on a quorum: a majority of the servers) answers `PING`, within
    /// the timeouts.
    ///
    /// # Errors
    /// [`Error::Redis`] if it does not.
    pub fn ping(&self) -> Result<(), Error> {
        let mut answered = 0;
        let mut last_error = None;
        for node in &self.inner.nodes {
            let ping = |con: &mut Link| redis::cmd("PING").query::<()>(con.as_dyn());
            match node.with_connection(Resend::IfStale, ping) {
                Ok(()) => answered += 1,
                Err(e) => last_error = Some(e),
            }
        }
        match last_error {
            Some(e) if answered < protocol::quorum::majority(self.servers()) => Err(e),
            _ => Ok(()),
        }
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Server `i` of the handle (the only one of a single-server handle).
    pub(crate) fn node(&self, i: usize) -> &Node {
        &self.inner.nodes[i]
    }

    /// Whether `self` and `other` are single servers, and the same server and database.
    pub(crate) fn same_server(&self, other: &Self) -> bool {
        match (self.inner.nodes.as_slice(), other.inner.nodes.as_slice()) {
            ([a], [b]) => a.identity() == b.identity(),
            _ => false,
        }
    }

    /// The one server of a single-server handle; the first of a quorum.
    pub(crate) fn single(&self) -> &Node {
        &self.inner.nodes[0]
    }

    /// Runs one script request on the single server and returns its raw reply, and whether it
    /// was sent twice.
    pub(crate) fn invoke(&self, call: &Request, resend: Resend) -> Result<(Value, bool), Error> {
        self.single().invoke(call, resend)
    }

    /// One round of a quorum: `request(server)` to each server in `servers` at once, the
    /// replies fed to `tally` until it decides or `deadline` passes.
    pub(crate) fn round<T: Tally>(
        &self,
        servers: impl IntoIterator<Item = usize>,
        request: impl Fn(usize) -> Request,
        deadline: Instant,
        tally: T,
    ) -> T::Outcome {
        fanout::round(&self.inner.sockets, servers, request, deadline, tally)
    }

    /// Sends `request` to every server of the quorum and does not wait for the replies
    /// (best-effort cleanup).
    pub(crate) fn send_and_forget(&self, request: impl Fn(usize) -> Request) {
        fanout::send_and_forget(&self.inner.sockets, request);
    }

    /// The longest a caller waits for one round of a quorum: the I/O timeout, and never past
    /// `valid_until` (after which the round's result is worthless).
    pub(crate) fn round_deadline(&self, valid_until: Instant) -> Instant {
        // An I/O timeout is at most an hour (checked when the handle was built).
        (Instant::now() + self.inner.settings.io_timeout).min(valid_until)
    }
}

impl fmt::Debug for LockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: Vec<String> = self.inner.nodes.iter().map(|n| n.identity().0).collect();
        f.debug_struct("LockServer")
            .field("servers", &servers)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// `host:port` and database, to tell servers apart.
pub(crate) fn identity(client: &Client) -> (String, i64) {
    let info = client.get_connection_info();
    (info.addr().to_string(), info.redis_settings().db())
}
