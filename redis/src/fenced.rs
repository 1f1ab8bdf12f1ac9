//! [`RedisFenced`]: a resource kept in Redis that admits writes in token order.

use std::fmt;

use fencelock::FencingToken;

use crate::error::Error;
use crate::node::Resend;
use crate::protocol;
use crate::server::LockServer;

/// The resource side of fencing, in Redis: a write carries a [`FencingToken`] and a pipeline of
/// commands; the commands run only if the token is at least the highest admitted so far.
///
/// The token check, recording the new highest token, and every command of the pipeline run in one
/// Lua script, so nothing else runs on the server in between: a stale token's commands never run.
/// Equal tokens are admitted (one holder writing twice). `Send + Sync`, cheap to clone.
///
/// Limits of the guarantee, from Redis itself:
/// - a command that fails at run time (a wrong type, say) aborts the write but does not undo the
///   commands before it — Redis has no rollback; validate before writing;
/// - the highest token is a key on the server (`{prefix}{name}:fenced`, no TTL); a server that
///   restarts without persistence loses it *and* the data it guarded, together;
/// - in a Redis Cluster the pipeline's keys must share the fenced key's hash tag, `{name}`
///   (e.g. `ledger:{AAPL}` for the resource named `AAPL`).
///
/// ```
/// # #[path = "../tests/support/server.rs"] mod server;
/// # let redis = server::RedisProcess::start(); // a throwaway redis-server on 127.0.0.1
/// # let url = redis.url();
/// use fencelock_redis::{Error, LockServer};
/// use std::time::Duration;
///
/// let server = LockServer::open(&url)?; // "redis://127.0.0.1:6379"
/// let lease = server.lock("AAPL")?.try_acquire(Duration::from_secs(5))?.expect("free");
/// let ledger = server.fenced("AAPL")?;
/// let mut sale = redis::pipe();
/// sale.cmd("RPUSH").arg("sold:{AAPL}").arg(101);
/// ledger.write(lease.token(), &sale)?; // refused with Error::Stale if we were taken over
///
/// let stale = fencelock::FencingToken::new(lease.token().get() - 1);
/// assert!(matches!(ledger.write(stale, &sale), Err(Error::Stale(_)))); // nothing ran
/// # Ok::<(), fencelock_redis::Error>(())
/// ```
#[derive(Clone)]
pub struct RedisFenced {
    server: LockServer,
    name: String,
    key: String,
}

impl RedisFenced {
    /// The fenced resource `name` on the server at `url`, with default settings.
    ///
    /// # Errors
    /// [`Error::Redis`] if the URL does not parse, [`Error::InvalidInput`] for a bad name.
    pub fn open(url: &str, name: &str) -> Result<Self, Error> {
        LockServer::open(url)?.fenced(name)
    }

    /// The fenced resource `name` on the server `client` points at, with default settings.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad name.
    pub fn new(client: redis::Client, name: &str) -> Result<Self, Error> {
        LockServer::new(client)?.fenced(name)
    }

    pub(crate) fn on(server: LockServer, name: &str) -> Result<Self, Error> {
        let key = protocol::fenced_key(&server.settings().key_prefix, name)?;
        Ok(Self {
            server,
            name: name.to_owned(),
            key,
        })
    }

    /// The resource's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `commands` atomically if `token` is at least the highest token admitted, and records
    /// `token` as the highest; one round trip. An empty pipeline only records the token.
    ///
    /// # Errors
    /// - [`Error::Stale`] if a higher token has written: none of the commands ran;
    /// - [`Error::InvalidInput`] for a token above 2⁵³ − 1 (no lock server issues one), a
    ///   command with no or more than 4,096 arguments, a cursor argument, or a command Redis
    ///   refuses inside a script (`MULTI`/`EXEC`, `WATCH`, `SUBSCRIBE`, blocking pops, `EVAL`,
    ///   administration: the script would have recorded the token and run nothing); nothing is
    ///   sent;
    /// - [`Error::Redis`] if the server is unreachable, or a command failed (see above).
    pub fn write(&self, token: FencingToken, commands: &redis::Pipeline) -> Result<(), Error> {
        let on_cluster = self.server.single().is_cluster();
        let call = protocol::fenced_write(
            &self.key,
            token,
            commands,
            on_cluster.then_some(&*self.name),
        )?;
        // Never resent: the pipeline's commands may not be idempotent (RPUSH twice is two).
        let (reply, _) = self.server.invoke(&call, Resend::Never)?;
        protocol::decode_fenced_write(&reply, token)
    }

    /// The highest token admitted so far (token 0 before the first write).
    ///
    /// # Errors
    /// [`Error::Redis`] if the server does not answer.
    pub fn highest(&self) -> Result<FencingToken, Error> {
        let reply = self
            .server
            .single()
            .with_connection(Resend::IfStale, |con| {
                redis::cmd("GET")
                    .arg(&self.key)
                    .query::<redis::Value>(con.as_dyn())
            })?;
        protocol::decode_highest(&reply)
    }
}

impl fmt::Debug for RedisFenced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisFenced")
            .field("name", &self.name)
            .field("server", &self.server)
            .finish()
    }
}
