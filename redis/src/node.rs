//! One Redis server of a single-server [`LockServer`](crate::LockServer) — or the master a
//! Sentinel group names, or a Redis Cluster: its pooled blocking connections. (A quorum's servers
//! are reached through [`fanout`](crate::fanout) instead.)

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::{ConnectionLike, Value};

use crate::endpoint::{Endpoint, Link};

use crate::error::Error;
use crate::protocol::{self, Request};

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

/// Shards of the connection pool: each thread takes from and returns to its own shard first, so
/// that many threads sharing one handle do not queue on one lock.
const POOL_SHARDS: usize = 8;

/// Idle connections, sharded.
#[derive(Default)]
struct Pool([Mutex<Vec<Link>>; POOL_SHARDS]);

/// One server: how to reach it, and its idle connections.
pub(crate) struct Node {
    endpoint: Endpoint,
    connect_timeout: Duration,
    io_timeout: Duration,
    idle: Pool,
    /// On a cluster, connections that never send a request twice ([`Resend::Never`]).
    idle_once: Pool,
}

impl Node {
    pub(crate) fn new(endpoint: Endpoint, connect_timeout: Duration, io_timeout: Duration) -> Self {
        Self {
            endpoint,
            connect_timeout,
            io_timeout,
            idle: Pool::default(),
            idle_once: Pool::default(),
        }
    }

    /// `host:port` and database, to tell servers apart.
    pub(crate) fn identity(&self) -> (String, i64) {
        self.endpoint.identity()
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        self.endpoint.is_cluster()
    }

    /// Runs one script request on a pooled connection and returns its raw reply, and whether
    /// it was sent twice (see [`Resend`]). Loads the script after `NOSCRIPT`.
    pub(crate) fn invoke(&self, request: &Request, resend: Resend) -> Result<(Value, bool), Error> {
        let mut sends = 0;
        let reply = self.with_connection(resend, |con| {
            sends += 1;
            run(con.as_dyn(), request)
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
        mut request: impl FnMut(&mut Link) -> redis::RedisResult<T>,
    ) -> Result<T, Error> {
        let once = resend == Resend::Never && self.endpoint.is_cluster();
        let pool = if once { &self.idle_once } else { &self.idle };
        let pooled = pool.pop();
        let reused = pooled.is_some();
        let mut con = match pooled {
            Some(con) => con,
            None => self.connect(once)?,
        };
        let error = match request(&mut con) {
            Ok(reply) => {
                pool.give_back(con);
                return Ok(reply);
            }
            Err(error) => error,
        };
        drop(con);
        let connection_failed = error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            // A Sentinel group's old master, demoted: ask the Sentinels again.
            || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        if connection_failed {
            pool.clear();
        }
        let closed = error.is_connection_dropped() && !error.is_timeout();
        // A cluster's `MOVED` ran nothing: a connection that does not follow it by itself (one
        // that never sends twice) is dropped with its stale slot map, and the request sent once
        // more on a fresh one.
        let moved = once && error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Moved);
        if !(moved || reused && closed && resend == Resend::IfStale) {
            return Err(error.into());
        }
        let mut con = self.connect(once)?;
        let reply = request(&mut con)?;
        pool.give_back(con);
        Ok(reply)
    }

    /// `BLPOP key timeout` on a pooled connection, its read timeout raised by `timeout` for the
    /// call: `Ok` whether or not anything was popped (the waiter's next step finds out). A
    /// waiter's thread blocks here, so the connection is its own while it does.
    ///
    /// The server times a blocked pop out only at its cron (up to 100 ms late at the default
    /// `hz`). A `precise` pop is timed on our side instead: the server's timeout is a second
    /// longer, and if nothing came within `timeout` the connection (whose pop is still pending)
    /// is dropped — not the pool's other connections.
    pub(crate) fn block_pop(
        &self,
        key: &str,
        timeout: Duration,
        precise: bool,
    ) -> Result<(), Error> {
        // BLPOP's 0 means "forever": never send it.
        let timeout = timeout.max(Duration::from_millis(1));
        if !precise {
            // The pop's own timeout is the server's; the read waits that long and the I/O timeout.
            let read = timeout.saturating_add(self.io_timeout);
            return self.with_connection(Resend::IfStale, |con| {
                con.set_read_timeout(Some(read))?;
                let popped = blpop(con.as_dyn(), key, timeout);
                con.set_read_timeout(Some(self.io_timeout))?;
                popped
            });
        }
        let mut con = match self.idle.pop() {
            Some(con) => con,
            None => self.connect(false)?,
        };
        con.set_read_timeout(Some(timeout))?;
        match blpop(
            con.as_dyn(),
            key,
            timeout.saturating_add(Duration::from_secs(1)),
        ) {
            Ok(()) => {
                con.set_read_timeout(Some(self.io_timeout))?;
                self.idle.give_back(con);
                Ok(())
            }
            // Nothing within the timeout: the pop is still pending there, so the connection goes.
            Err(e) if e.is_timeout() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Ends a blocking pop of `key` on this server early (see [`protocol::unblock`]).
    pub(crate) fn unblock(&self, key: &str) -> Result<(), Error> {
        self.with_connection(Resend::IfStale, |con| {
            protocol::unblock(key).query::<()>(con.as_dyn())
        })
    }

    #[cold]
    fn connect(&self, once: bool) -> Result<Link, Error> {
        crate::trace::debug_event!(server = %self.endpoint.identity().0, "connecting");
        self.endpoint
            .connect(once, self.connect_timeout, self.io_timeout)
    }
}

impl Pool {
    /// An idle connection: from this thread's shard, else from any other.
    fn pop(&self) -> Option<Link> {
        let own = shard();
        (0..POOL_SHARDS).find_map(|i| lock(&self.0[(own + i) % POOL_SHARDS]).pop())
    }

    fn give_back(&self, con: Link) {
        let mut idle = lock(&self.0[shard()]);
        if idle.len() < MAX_IDLE_CONNECTIONS / POOL_SHARDS {
            idle.push(con);
        }
    }

    /// Drops every idle connection: they share the server's fate (a restart, a pause).
    fn clear(&self) {
        for shard in &self.0 {
            lock(shard).clear();
        }
    }
}

/// `BLPOP key timeout`, whatever it pops.
fn blpop(con: &mut dyn ConnectionLike, key: &str, timeout: Duration) -> redis::RedisResult<()> {
    redis::cmd("BLPOP")
        .arg(key)
        .arg(timeout.as_secs_f64())
        .query::<Value>(con)
        .map(drop)
}

/// `EVALSHA` the request; after `NOSCRIPT`, load the script and send it once more.
fn run(con: &mut dyn ConnectionLike, request: &Request) -> redis::RedisResult<Value> {
    match request.evalsha().query::<Value>(con) {
        Err(error) if protocol::is_noscript(&error) => {
            request.script().load(con)?;
            request.evalsha().query(con)
        }
        reply => reply,
    }
}

fn lock(shard: &Mutex<Vec<Link>>) -> MutexGuard<'_, Vec<Link>> {
    // The pool holds no invariant a panic could break: a poisoned one is still a pool.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This thread's pool shard, assigned round-robin on first use.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        // Relaxed: the counter only spreads threads over shards; nothing is published by it.
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % POOL_SHARDS;
    }
    SHARD.with(|shard| *shard)
}
