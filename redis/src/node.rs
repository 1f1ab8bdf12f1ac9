//! One Redis server of a [`LockServer`](crate::LockServer): its pooled connections, and — for a
//! quorum — the worker thread that talks to it, so that a caller can wait on all servers at once.
//!
//! A quorum's requests to one server go through that server's single worker, in the order they
//! were made: it sends everything queued as one pipeline on its own connection and hands each
//! reply back. One connection per server keeps the order (a release sent before a claim is
//! applied before it), and pipelining keeps many callers from waiting on each other's round trips.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use redis::{Client, Connection, Value};

use crate::error::Error;
use crate::protocol::{self, Request};

/// Connections kept open for reuse; more are opened when more threads call at once, and closed
/// when they come back to a full pool.
const MAX_IDLE_CONNECTIONS: usize = 64;

/// Requests waiting for the worker, per server; past this the server counts as failed for a new
/// request at once, so a stalled server never makes callers wait longer than their deadline.
const MAX_QUEUED: usize = 1024;

/// The most requests the worker sends as one pipeline.
const MAX_BATCH: usize = 128;

/// A worker with nothing to do for this long ends (a new request starts another).
const WORKER_IDLE_EXIT: Duration = Duration::from_secs(10);

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

/// A request for the worker, and where its reply goes (tagged with the server's index).
pub(crate) struct Job {
    pub(crate) request: Request,
    pub(crate) server: usize,
    pub(crate) reply: Sender<(usize, Result<Value, Error>)>,
}

impl Job {
    fn answer(self, result: Result<Value, Error>) {
        // A caller that already decided has dropped its receiver: nothing to tell.
        let _ = self.reply.send((self.server, result));
    }
}

/// One server: how to reach it, its idle connections, and its worker's queue.
pub(crate) struct Node {
    client: Client,
    connect_timeout: Duration,
    io_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    queue: Mutex<Queue>,
    work: Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    worker_running: bool,
}

impl Node {
    pub(crate) fn new(client: Client, connect_timeout: Duration, io_timeout: Duration) -> Self {
        Self {
            client,
            connect_timeout,
            io_timeout,
            idle: Mutex::new(Vec::new()),
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
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

    fn idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        // The pool holds no invariant a panic could break: a poisoned one is still a pool.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Jobs never run under this lock, so a panic cannot leave the queue half-changed.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` for this server's worker, starting the worker if it is not running. Answers
    /// the job with an error at once if too many are waiting or no thread could be started.
    pub(crate) fn submit(self: &Arc<Self>, job: Job) {
        let mut queue = self.queue();
        if queue.jobs.len() >= MAX_QUEUED {
            drop(queue);
            return job.answer(Err(overloaded()));
        }
        queue.jobs.push_back(job);
        if queue.worker_running {
            drop(queue);
            self.work.notify_one();
            return;
        }
        let node = Arc::clone(self);
        let started = thread::Builder::new()
            .name("fencelock-redis".into())
            .spawn(move || node.work());
        match started {
            Ok(_) => queue.worker_running = true,
            Err(_) => {
                let jobs: Vec<Job> = queue.jobs.drain(..).collect();
                drop(queue);
                for job in jobs {
                    job.answer(Err(overloaded()));
                }
            }
        }
    }

    /// The worker: sends whatever is queued as one pipeline, hands out the replies, repeats;
    /// ends after [`WORKER_IDLE_EXIT`] with nothing to do.
    fn work(&self) {
        let mut con: Option<Connection> = None;
        loop {
            let batch: Vec<Job> = {
                let mut queue = self.queue();
                while queue.jobs.is_empty() {
                    let (guard, waited) = self
                        .work
                        .wait_timeout(queue, WORKER_IDLE_EXIT)
                        .unwrap_or_else(PoisonError::into_inner);
                    queue = guard;
                    if waited.timed_out() && queue.jobs.is_empty() {
                        queue.worker_running = false;
                        return;
                    }
                }
                let n = queue.jobs.len().min(MAX_BATCH);
                queue.jobs.drain(..n).collect()
            };
            // A job's reply never panics; if something did, the worker goes on.
            let sent = panic::catch_unwind(AssertUnwindSafe(|| self.send_batch(&mut con, &batch)));
            let replies = sent.unwrap_or_else(|_| {
                con = None;
                batch.iter().map(|_| Err(overloaded())).collect()
            });
            for (job, reply) in batch.into_iter().zip(replies) {
                job.answer(reply);
            }
        }
    }

    /// Sends `batch` as one pipeline on the worker's connection (opening it if needed), and
    /// returns one result per request. Every request of a quorum is idempotent for its nonce, so
    /// a batch that met a connection closed since its last use is sent once more on a new one.
    fn send_batch(&self, con: &mut Option<Connection>, batch: &[Job]) -> Vec<Result<Value, Error>> {
        let reused = con.is_some();
        match self.pipeline(con, batch) {
            Ok(replies) => replies,
            Err(error) => {
                *con = None;
                let closed = error.is_connection_dropped() && !error.is_timeout();
                if reused && closed {
                    if let Ok(replies) = self.pipeline(con, batch) {
                        return replies;
                    }
                    *con = None;
                }
                batch
                    .iter()
                    .map(|_| Err(Error::Redis(error.clone())))
                    .collect()
            }
        }
    }

    fn pipeline(
        &self,
        con: &mut Option<Connection>,
        batch: &[Job],
    ) -> redis::RedisResult<Vec<Result<Value, Error>>> {
        let con = match con {
            Some(con) => con,
            None => {
                let mut fresh = self.connect_raw()?;
                for script in protocol::quorum_scripts() {
                    script.load(&mut fresh)?;
                }
                con.insert(fresh)
            }
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for job in batch {
            pipe.add_command(job.request.evalsha());
        }
        let values: Vec<Value> = pipe.query(con)?;
        let mut replies = Vec::with_capacity(batch.len());
        for (job, value) in batch.iter().zip(values) {
            let reply = match value {
                Value::ServerError(error) => {
                    let error = redis::RedisError::from(error);
                    if protocol::is_noscript(&error) {
                        // Restarted or flushed: load it, and send this one alone again.
                        job.request.script().load(con)?;
                        run(con, &job.request).map_err(Error::Redis)
                    } else {
                        Err(Error::Redis(error))
                    }
                }
                value => Ok(value),
            };
            replies.push(reply);
        }
        Ok(replies)
    }
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

#[cold]
fn overloaded() -> Error {
    Error::Redis(redis::RedisError::from((
        redis::ErrorKind::Io,
        "fencelock-redis: too many requests waiting for this server (is it stalled?)",
    )))
}
