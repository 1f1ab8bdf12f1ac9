//! [`RedisVersioned`]: a record kept in Redis with a version, committed optimistically.

use std::fmt;
use std::future::Future;
use std::thread;
use std::time::Duration;

use fencelock::Version;

use crate::error::Error;
use crate::node::Resend;
use crate::protocol::driver::run_blocking;
use crate::protocol::versioned::{self as protocol, Record};
use crate::server::LockServer;

/// The seed's *Concurrency Tokens* across processes: a record (bytes) and its [`Version`] on a
/// Redis server — the cross-process twin of [`fencelock::Versioned`]. Read the record with its
/// version, work without holding anything, and commit only if nobody committed meanwhile;
/// otherwise the commit is refused with [`Error::Conflict`] and nothing is written.
///
/// Each call is one round trip: [`load`](Self::load) one `HMGET`, [`commit`](Self::commit) and
/// [`commit_with`](Self::commit_with) one script. A record never written is `None` at version 0,
/// which commits. Versions only grow: each commit moves the version to the larger of the old
/// version plus one and the server's time in µs, so a record lost in a restart without
/// persistence comes back at 0 and is recreated above every version issued before — a commit
/// prepared before the loss is refused, not taken for a new one (as long as the server's clock
/// did not go back).
///
/// `Send + Sync`, cheap to clone. A commit is never sent twice (a resent commit that had taken
/// effect would be refused as a conflict with itself): after a connection error, whether it was
/// written is unknown — [`load`](Self::load) tells.
///
/// ```
/// # #[path = "../tests/support/server.rs"] mod server;
/// # let redis = server::RedisProcess::start(); // a throwaway redis-server on 127.0.0.1
/// # let url = redis.url();
/// use fencelock_redis::{Error, LockServer};
///
/// let server = LockServer::open(&url)?; // "redis://127.0.0.1:6379"
/// let price = server.versioned("AAPL:price")?;
/// let (value, version) = price.load()?; // never written: None, at version 0
/// assert_eq!(value, None);
/// let v1 = price.commit(version, b"101")?;
/// assert!(matches!(price.commit(version, b"102"), Err(Error::Conflict { .. }))); // stale
/// let (new, _) = price.update(|old| {
///     let cents: u32 = std::str::from_utf8(old.unwrap()).unwrap().parse().unwrap();
///     (cents + 1).to_string().into_bytes()
/// })?; // load, change, commit; again after a conflict
/// assert_eq!(new, b"102");
/// assert!(price.load()?.1 > v1);
/// # Ok::<(), fencelock_redis::Error>(())
/// ```
#[derive(Clone)]
pub struct RedisVersioned {
    server: LockServer,
    name: String,
    key: String,
}

impl RedisVersioned {
    /// The record `name` on the server at `url`, with default settings.
    ///
    /// # Errors
    /// [`Error::Redis`] if the URL does not parse, [`Error::InvalidInput`] for a bad name.
    pub fn open(url: &str, name: &str) -> Result<Self, Error> {
        LockServer::open(url)?.versioned(name)
    }

    pub(crate) fn on(server: LockServer, name: &str) -> Result<Self, Error> {
        let key = protocol::record_key(&server.settings().key_prefix, name)?;
        Ok(Self {
            server,
            name: name.to_owned(),
            key,
        })
    }

    /// The record's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The record's value and version: `None` at version 0 if it was never written (or was
    /// lost). One round trip.
    ///
    /// # Errors
    /// [`Error::Redis`] if the server does not answer.
    pub fn load(&self) -> Result<(Option<Vec<u8>>, Version), Error> {
        let reply = self
            .server
            .single()
            .with_connection(Resend::IfStale, |con| {
                protocol::load(&self.key).query::<redis::Value>(con.as_dyn())
            })?;
        protocol::decode_load(&reply)
    }

    /// Writes `value` if the record is still at `version` (the one [`load`](Self::load)
    /// returned), and returns its new version. One script, one round trip.
    ///
    /// # Errors
    /// - [`Error::Conflict`] if the record is at another version: nothing was written;
    /// - [`Error::InvalidInput`] for a value longer than [`MAX_VALUE_LEN`](crate::MAX_VALUE_LEN)
    ///   bytes or a version no record has; nothing is sent;
    /// - [`Error::Redis`] if the server is unreachable (whether it was written is unknown).
    pub fn commit(&self, version: Version, value: &[u8]) -> Result<Version, Error> {
        let call = protocol::commit(&self.key, version, value)?;
        let (reply, _) = self.server.invoke(&call, Resend::Never)?;
        protocol::decode_commit(&reply, version)
    }

    /// Runs `commands` if the record is still at `version`, and moves the version on (the value
    /// is left as it is): the optimistic twin of [`RedisFenced::write`](crate::RedisFenced::write),
    /// for a read, compute, write cycle over other keys without holding a lock. On a Redis
    /// Cluster, every key of `commands` must carry the record's name as its hash tag.
    ///
    /// # Errors
    /// As [`commit`](Self::commit); [`Error::InvalidInput`] also for a pipeline the fenced write
    /// refuses (see [`RedisFenced::write`](crate::RedisFenced::write)).
    pub fn commit_with(
        &self,
        version: Version,
        commands: &redis::Pipeline,
    ) -> Result<Version, Error> {
        let on_cluster = self.server.single().is_cluster();
        let tag = on_cluster.then_some(&*self.name);
        let call = protocol::commit_with(&self.key, version, commands, tag)?;
        let (reply, _) = self.server.invoke(&call, Resend::Never)?;
        protocol::decode_commit(&reply, version)
    }

    /// Loads the record, computes `change(old value)` and commits it at the loaded version; after
    /// a conflict, waits a short, jittered, doubling delay and tries again, at most
    /// [`UPDATE_ATTEMPTS`](crate::UPDATE_ATTEMPTS) times. Returns the value committed and its
    /// version. `change` may run several times: keep it free of side effects.
    ///
    /// # Errors
    /// The last [`Error::Conflict`] after the last attempt; any other error at once.
    pub fn update(
        &self,
        change: impl FnMut(Option<&[u8]>) -> Vec<u8>,
    ) -> Result<(Vec<u8>, Version), Error> {
        run_blocking(protocol::update(self, change))
    }
}

/// The blocking front end's record: each call blocks, then its future is ready.
impl Record for RedisVersioned {
    fn load(&self) -> impl Future<Output = Result<(Option<Vec<u8>>, Version), Error>> + Send {
        let loaded = RedisVersioned::load(self);
        async move { loaded }
    }

    fn commit(
        &self,
        version: Version,
        value: &[u8],
    ) -> impl Future<Output = Result<Version, Error>> + Send {
        let committed = RedisVersioned::commit(self, version, value);
        async move { committed }
    }

    fn sleep(&self, delay: Duration) -> impl Future<Output = ()> + Send {
        thread::sleep(delay);
        async {}
    }
}

impl fmt::Debug for RedisVersioned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisVersioned")
            .field("name", &self.name)
            .field("server", &self.server)
            .finish()
    }
}
