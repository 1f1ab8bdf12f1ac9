//! [`LockServer`]: one Redis server's connections and settings, shared by every lock made from it.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::{Client, Connection, ScriptInvocation, Value};

use crate::error::{Error, InvalidInput};
use crate::protocol;
use crate::{RedisFenced, RedisLock};

/// Connections kept open for reuse; more are opened when more threads call at once, and closed
/// when they come back to a full pool.
const MAX_IDLE_CONNECTIONS: usize = 64;

/// Whether a request may be sent a second time when its reused connection turned out closed
/// (the server restarted since it was last used, say) — where the first send may or may not
/// have reached the server before it went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resend {
    /// The request has the same effect sent twice (acquire with one nonce, renew, release, reads).
    IfStale,
    /// It does not (a fenced write runs arbitrary commands): the error goes to the caller.
    Never,
}

/// A handle to one Redis server used as a lock server: its connections and settings.
///
/// Cheap to clone (an `Arc`); every [`RedisLock`] and [`RedisFenced`] made from it shares its
/// connection pool, and making one for a new name opens nothing. Connections are opened lazily,
/// one per concurrent caller at most, reused afterwards, and dropped after any error, so the next
/// call reconnects (a server that restarts needs no new handle).
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
    client: Client,
    settings: Settings,
    idle: Mutex<Vec<Connection>>,
}

/// The settings a [`LockServerBuilder`] validated.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) connect_timeout: Duration,
    pub(crate) io_timeout: Duration,
    pub(crate) key_prefix: String,
    pub(crate) retry_delay_min: Duration,
    pub(crate) retry_delay_max: Duration,
}

/// Settings for a [`LockServer`]: every one has a default that works.
///
/// | setting | default | what it bounds |
/// |---|---|---|
/// | [`connect_timeout`](Self::connect_timeout) | 1 s | opening a connection, handshake included |
/// | [`io_timeout`](Self::io_timeout) | 1 s | sending one request, and waiting for its reply |
/// | [`key_prefix`](Self::key_prefix) | `fencelock:` | the namespace of every key |
/// | [`retry_delay`](Self::retry_delay) | 2 ms to 64 ms | waits between tries of `acquire_timeout` |
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

    /// The first and the longest delay between tries of
    /// [`acquire_timeout`](RedisLock::acquire_timeout): each delay doubles up to `max`, and each
    /// sleep is drawn uniformly from its upper half (jitter).
    pub fn retry_delay(mut self, min: Duration, max: Duration) -> Self {
        self.settings.retry_delay_min = min;
        self.settings.retry_delay_max = max;
        self
    }

    /// A handle to the server at `url` (`redis://host:port/db`); connects lazily, on first use.
    ///
    /// # Errors
    /// [`Error::Redis`] if the URL does not parse, [`Error::InvalidInput`] for a bad setting.
    pub fn open(self, url: &str) -> Result<LockServer, Error> {
        self.new(Client::open(url)?)
    }

    /// A handle to the server `client` points at; connects lazily, on first use.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad setting.
    #[allow(clippy::new_ret_no_self, clippy::wrong_self_convention)]
    pub fn new(self, client: Client) -> Result<LockServer, Error> {
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
        }
        if s.retry_delay_min.is_zero() || s.retry_delay_min > s.retry_delay_max {
            return Err(InvalidInput::new(format!(
                "retry delays {:?}..{:?}: the first must be positive and at most the longest",
                s.retry_delay_min, s.retry_delay_max
            ))
            .into());
        }
        protocol::check_prefix(&s.key_prefix)?;
        Ok(LockServer {
            inner: Arc::new(Inner {
                client,
                settings: self.settings,
                idle: Mutex::new(Vec::new()),
            }),
        })
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
    /// # Errors
    /// As [`lock`](Self::lock).
    pub fn fenced(&self, name: &str) -> Result<RedisFenced, Error> {
        RedisFenced::on(self.clone(), name)
    }

    /// Checks that the server answers (`PING`), within the timeouts.
    ///
    /// # Errors
    /// [`Error::Redis`] if it does not.
    pub fn ping(&self) -> Result<(), Error> {
        self.with_connection(Resend::IfStale, |con| redis::cmd("PING").query::<()>(con))
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Whether `self` and `other` talk to the same server and database.
    pub(crate) fn same_server(&self, other: &Self) -> bool {
        if Arc::ptr_eq(&self.inner, &other.inner) {
            return true;
        }
        let (a, b) = (
            self.inner.client.get_connection_info(),
            other.inner.client.get_connection_info(),
        );
        a.addr().to_string() == b.addr().to_string()
            && a.redis_settings().db() == b.redis_settings().db()
    }

    /// Runs one script request and returns its raw reply, for the protocol to decode, and
    /// whether it was sent twice (see [`Resend`]).
    pub(crate) fn invoke(
        &self,
        call: &ScriptInvocation<'_>,
        resend: Resend,
    ) -> Result<(Value, bool), Error> {
        let mut sends = 0;
        let reply = self.with_connection(resend, |con| {
            sends += 1;
            call.invoke::<Value>(con)
        })?;
        Ok((reply, sends > 1))
    }

    /// Runs `request` on a pooled connection (opening one if none is idle).
    ///
    /// The connection goes back to the pool only after a success: after any error its state is
    /// unknown (a reply may still be in flight), so it is dropped. A connection-level error (I/O,
    /// timeout) drops every idle connection too — they share the server's fate (a restart, a
    /// pause) — so the next call reconnects. With [`Resend::IfStale`], a request that failed on
    /// a *reused* connection that turned out closed (not timed out) is sent once more on a fresh
    /// one: that is how the first call after a server restart succeeds.
    pub(crate) fn with_connection<T>(
        &self,
        resend: Resend,
        mut request: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Error> {
        let pooled = self.idle().pop();
        let reused = pooled.is_some();
        let mut con = match pooled {
            Some(con) => con,
            None => self.connect()?,
        };
        let error = match request(&mut con) {
            Ok(reply) => {
                self.give_back(con);
                return Ok(reply);
            }
            Err(error) => error,
        };
        drop(con);
        let connection_failed =
            error.is_io_error() || error.is_timeout() || error.is_connection_dropped();
        if connection_failed {
            self.idle().clear();
        }
        let closed = error.is_connection_dropped() && !error.is_timeout();
        if !(reused && closed && resend == Resend::IfStale) {
            return Err(error.into());
        }
        let mut con = self.connect()?;
        let reply = request(&mut con)?;
        self.give_back(con);
        Ok(reply)
    }

    fn give_back(&self, con: Connection) {
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(con);
        }
    }

    #[cold]
    fn connect(&self) -> Result<Connection, Error> {
        let s = &self.inner.settings;
        let con = self
            .inner
            .client
            .get_connection_with_timeout(s.connect_timeout)?;
        con.set_read_timeout(Some(s.io_timeout))?;
        con.set_write_timeout(Some(s.io_timeout))?;
        Ok(con)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // The pool holds no invariant a panic could break: a poisoned one is still a pool.
        self.inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for LockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockServer")
            .field(
                "addr",
                &self.inner.client.get_connection_info().addr().to_string(),
            )
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}
