//! One Redis server of a single-server [`LockServer`](crate::LockServer): its pooled blocking
//! connections. (A quorum's servers are reached through [`fanout`](crate::fanout) instead.)

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::{Client, Connection, Value};

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

/// One server: how to reach it, and its idle connections.
pub(crate) struct Node {
    client: Client,
    connect_timeout: Duration,
    io_timeout: Duration,
    idle: [Mutex<Vec<Connection>>; POOL_SHARDS],
}

impl Node {
    pub(crate) fn new(client: Client, connect_timeout: Duration, io_timeout: Duration) -> Self {
        Self {
            client,
            connect_timeout,
            io_timeout,
            idle: Default::default(),
        }
    }

    /// `host:port` and database, to tell servers apart.
    pub(crate) fn identity(&self) -> (String, i64) {
        let info = self.client.get_connection_info();
        (info.addr().to_string(), info.redis_settings().db())
    }

    /// Runs one script request on a pooled connection and returns its raw reply, and whether
    /// it was sent twice (see [`Resend`]). Loads the script after `NOSCRIPT`.
    pub(crate) fn invoke(&self, request: &Request, resend: Resend) -> Result<(Value, bool), Error> {
        let mut sends = 0;
        let reply = self.with_connection(resend, |con| {
            sends += 1;
            run(con, request)
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
        let pooled = self.pop_idle();
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
            for shard in &self.idle {
                lock(shard).clear();
            }
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
            let read = timeout.saturating_add(self.io_timeout);
            return self.with_connection(Resend::IfStale, |con| {
                con.set_read_timeout(Some(read))?;
                let popped = blpop(con, key, timeout);
                con.set_read_timeout(Some(self.io_timeout))?;
                popped
            });
        }
        let mut con = match self.pop_idle() {
            Some(con) => con,
            None => self.connect()?,
        };
        con.set_read_timeout(Some(timeout))?;
        match blpop(
            &mut con,
            key,
            timeout.saturating_add(Duration::from_secs(1)),
        ) {
            Ok(()) => {
                con.set_read_timeout(Some(self.io_timeout))?;
                self.give_back(con);
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
            protocol::unblock(key).query::<()>(con)
        })
    }

    fn give_back(&self, con: Connection) {
        let mut idle = lock(&self.idle[shard()]);
        if idle.len() < MAX_IDLE_CONNECTIONS / POOL_SHARDS {
            idle.push(con);
        }
    }

    #[cold]
    fn connect(&self) -> Result<Connection, Error> {
        Ok(self.connect_raw()?)
    }

    #[cold]
    fn connect_raw(&self) -> redis::RedisResult<Connection> {
        let con = self
            .client
            .get_connection_with_timeout(self.connect_timeout)?;
        con.set_read_timeout(Some(self.io_timeout))?;
        con.set_write_timeout(Some(self.io_timeout))?;
        Ok(con)
    }

    /// An idle connection: from this thread's shard, else from any other.
    fn pop_idle(&self) -> Option<Connection> {
        let own = shard();
        (0..POOL_SHARDS).find_map(|i| lock(&self.idle[(own + i) % POOL_SHARDS]).pop())
    }
}

/// `BLPOP key timeout`, whatever it pops.
fn blpop(con: &mut Connection, key: &str, timeout: Duration) -> redis::RedisResult<()> {
    redis::cmd("BLPOP")
        .arg(key)
        .arg(timeout.as_secs_f64())
        .query::<Value>(con)
        .map(drop)
}

/// `EVALSHA` the request; after `NOSCRIPT`, load the script and send it once more.
fn run(con: &mut Connection, request: &Request) -> redis::RedisResult<Value> {
    match request.evalsha().query::<Value>(con) {
        Err(error) if protocol::is_noscript(&error) => {
            request.script().load(con)?;
            request.evalsha().query(con)
        }
        reply => reply,
    }
}

fn lock(shard: &Mutex<Vec<Connection>>) -> MutexGuard<'_, Vec<Connection>> {
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
