//! The blocking front end's way of asking every server of a quorum at once, on the caller's
//! thread: one non-blocking socket per server, each request written to all of them, then the
//! replies read as they arrive and fed to the round's [`Tally`] until it decides — no worker
//! threads, no hand-offs.
//!
//! A server that has not answered when the round is decided keeps its socket: the socket goes
//! back to the server's pool with one reply to discard, which the next round on it skips (it
//! arrived meanwhile, or arrives first: Redis answers one connection in order). A socket with
//! too many unanswered requests is closed instead, and a server that could not be connected
//! to is skipped — counted as failed at once — for a short cool-down, so a stalled or missing
//! minority costs the callers nothing but its share of the majority.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, ConnectionInfo, Value};

use crate::error::{Error, InvalidInput};
use crate::protocol::quorum::Tally;
use crate::protocol::{self, resp, Request};

/// Unanswered requests a socket may carry before the server is skipped for new requests (counted
/// as failed at once): it has stopped answering, or fallen far behind.
const MAX_UNANSWERED: usize = 8;
/// The same bound for releases, higher: every claim that was sent must be followed by its release
/// on the same socket (or the server would keep a claim nobody releases until its TTL), and since
/// claims stop at [`MAX_UNANSWERED`], releases stay below this.
const MAX_UNANSWERED_RELEASES: usize = 64;
/// Sockets kept per server.
const MAX_IDLE_SOCKETS: usize = 64;
/// How long a server that refused a connection (or timed one out) is skipped.
/// It doubles after each further timed-out connection, up to [`MAX_COOL_DOWN`], and resets on
/// a connection that opens.
const COOL_DOWN: Duration = Duration::from_millis(250);
const MAX_COOL_DOWN: Duration = Duration::from_secs(8);
/// Reads of all sockets between yields before the poll loop starts to sleep.
const SPIN_READS: u32 = 64;
/// The longest sleep between two reads of the sockets.
const MAX_NAP: Duration = Duration::from_millis(1);

/// One server's sockets for the quorum rounds.
pub(crate) struct Sockets {
    target: Result<Vec<SocketAddr>, InvalidInput>,
    /// `AUTH` and `SELECT` to send on every new socket, and how many replies they produce: each
    /// is checked before anything else is sent (a request sent behind a refused `AUTH` would run
    /// as the server's default user).
    login: (Vec<u8>, usize),
    /// The scripts' `SCRIPT LOAD`, sent behind the login without waiting (their replies are
    /// skipped; a refused one shows as the request's own error).
    scripts: (Vec<u8>, usize),
    connect_timeout: Duration,
    idle: Mutex<Vec<Socket>>,
    /// Until when the server is skipped after a timed-out connection, and the next cool-down.
    skip_until: Mutex<(Option<Instant>, Duration)>,
}

/// A non-blocking connection to one server.
struct Socket {
    tcp: TcpStream,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// Replies still to come for requests nobody waits for any more, to be discarded.
    discard: usize,
}

impl Sockets {
    pub(crate) fn new(info: &ConnectionInfo, connect_timeout: Duration) -> Self {
        let target = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (host.as_str(), *port)
                .to_socket_addrs()
                .map(Iterator::collect)
                .map_err(|e| InvalidInput::new(format!("cannot resolve {host}:{port}: {e}"))),
            other => Err(InvalidInput::new(format!(
                "a quorum's servers must be reached over plain TCP, not {other}"
            ))),
        };
        let settings = info.redis_settings();
        let mut login = redis::pipe();
        if let Some(password) = settings.password() {
            match settings.username() {
                Some(user) => login.cmd("AUTH").arg(user).arg(password),
                None => login.cmd("AUTH").arg(password),
            };
        }
        if settings.db() != 0 {
            login.cmd("SELECT").arg(settings.db());
        }
        let mut scripts = redis::pipe();
        protocol::load_quorum_scripts(&mut scripts);
        Self {
            target,
            login: (login.get_packed_pipeline(), login.len()),
            scripts: (scripts.get_packed_pipeline(), scripts.len()),
            connect_timeout,
            idle: Mutex::new(Vec::new()),
            skip_until: Mutex::new((None, COOL_DOWN)),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Socket>> {
        // A plain list: a panic elsewhere cannot leave it inconsistent.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn skip_until(&self) -> MutexGuard<'_, (Option<Instant>, Duration)> {
        self.skip_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A pooled socket (with whether it was reused), or a new one. A server that has left too
    /// many requests unanswered on its socket is not sent another: it counts as failed at once
    /// (and no new connection piles onto a server that stopped answering).
    fn take(&self, limit: usize) -> Result<(Socket, bool), Error> {
        // (The pool's lock is released before the socket is looked at.)
        let pooled = self.idle().pop();
        if let Some(mut socket) = pooled {
            if socket.discard >= limit {
                if drain(&mut socket).is_err() {
                    return self.take(limit);
                }
                if socket.discard >= limit {
                    self.give_back(socket);
                    return Err(unreachable("not answering: too many requests unanswered"));
                }
            }
            return Ok((socket, true));
        }
        if self
            .skip_until()
            .0
            .is_some_and(|until| Instant::now() < until)
        {
            return Err(unreachable(
                "skipped for a moment after a failed connection",
            ));
        }
        let opened = self.connect();
        let mut skip = self.skip_until();
        match &opened {
            Ok(_) => *skip = (None, COOL_DOWN),
            // A refused connection is an instant answer; one that timed out cost the caller its
            // connect timeout, and would again: skip this server for a while, longer each time.
            Err(Error::Redis(e)) if e.is_timeout() => {
                let cool_down = skip.1;
                *skip = (
                    Some(Instant::now() + cool_down),
                    (cool_down * 2).min(MAX_COOL_DOWN),
                );
            }
            Err(_) => {}
        }
        drop(skip);
        opened.map(|socket| (socket, false))
    }

    #[cold]
    fn connect(&self) -> Result<Socket, Error> {
        let addrs = self
            .target
            .as_ref()
            .map_err(|e| Error::InvalidInput(e.clone()))?;
        let mut last = None;
        for addr in addrs {
            let opened = TcpStream::connect_timeout(addr, self.connect_timeout)
                .map_err(|e| Error::Redis(e.into()))
                .and_then(|tcp| self.handshake(tcp));
            match opened {
                Ok(socket) => return Ok(socket),
                // A server that answered and refused (a wrong password, no permission): no other
                // address of it will say otherwise.
                Err(Error::Redis(e)) if e.kind() != redis::ErrorKind::Io && !e.is_io_error() => {
                    return Err(Error::Redis(e))
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| unreachable("no address")))
    }

    /// Logs in on a new connection (`AUTH`, `SELECT`) and checks every reply, within the connect
    /// timeout: a refused one (`WRONGPASS`, a database that does not exist) fails the connection
    /// with the server's error — never a connection that goes on as whatever user the server
    /// defaults to. Then sends the scripts' `SCRIPT LOAD` without waiting. Without a password or
    /// a database to select there is nothing to wait for; with one, a server that accepts the
    /// connection but does not answer (paused) costs the caller the connect timeout once, and is
    /// then skipped for a cool-down like a connection that timed out.
    fn handshake(&self, mut tcp: TcpStream) -> Result<Socket, Error> {
        let io = |e: std::io::Error| Error::Redis(e.into());
        tcp.set_nodelay(true).map_err(io)?;
        tcp.set_write_timeout(Some(self.connect_timeout))
            .map_err(io)?;
        tcp.set_read_timeout(Some(self.connect_timeout))
            .map_err(io)?;
        tcp.write_all(&self.login.0).map_err(io)?;
        let mut socket = Socket {
            tcp,
            buf: Vec::with_capacity(256),
            discard: 0,
        };
        let mut chunk = [0_u8; 4096];
        for _ in 0..self.login.1 {
            let len = loop {
                match resp::value_len(&socket.buf) {
                    Ok(Some(len)) => break len,
                    Ok(None) => {}
                    Err(()) => return Err(unreachable("the server sent bytes that are not RESP2")),
                }
                match socket.tcp.read(&mut chunk) {
                    Ok(0) => return Err(unreachable("the server closed the connection")),
                    Ok(n) => socket.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(io(e)),
                }
            };
            let reply = redis::parse_redis_value(&socket.buf[..len]);
            socket.buf.drain(..len);
            match reply {
                Ok(Value::ServerError(error)) => return Err(Error::Redis(error.into())),
                Ok(_) => {}
                Err(error) => return Err(Error::Redis(error)),
            }
        }
        socket.tcp.write_all(&self.scripts.0).map_err(io)?;
        socket.discard = self.scripts.1;
        socket.tcp.set_nonblocking(true).map_err(io)?;
        Ok(socket)
    }

    fn give_back(&self, socket: Socket) {
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE_SOCKETS {
            // Last in, first out: a thread's next request goes out on the socket of its last
            // one, behind any reply still due there — so a release it did not wait for on this
            // server is applied before its next claim.
            idle.push(socket);
        }
    }
}

/// A request in flight on one server's socket.
struct InFlight<'a> {
    server: usize,
    sockets: &'a Sockets,
    socket: Socket,
    request: Request,
    reused: bool,
    /// Sent again already: after a stale socket, or as `EVAL` after `NOSCRIPT`.
    resent: bool,
}

/// Sends `request(server)` to every server in `targets` at once and feeds the replies to
/// `tally` until it decides, or until `deadline`, when every server that has not answered
/// counts as failed.
pub(crate) fn round<T: Tally>(
    sockets: &[Sockets],
    targets: impl IntoIterator<Item = usize>,
    request: impl Fn(usize) -> Request,
    deadline: Instant,
    mut tally: T,
) -> T::Outcome {
    let mut flying: Vec<InFlight<'_>> = Vec::with_capacity(sockets.len());
    for server in targets {
        let request = request(server);
        match send(&sockets[server], server, request) {
            Ok(in_flight) => flying.push(in_flight),
            Err(error) => {
                if let Some(outcome) = tally.record(server, Err(error)) {
                    return finish(flying, outcome);
                }
            }
        }
    }
    let mut reads = 0_u32;
    let mut nap = Duration::from_micros(20);
    while !flying.is_empty() {
        let mut i = 0;
        while i < flying.len() {
            match poll(&mut flying[i]) {
                Ok(None) => i += 1,
                Ok(Some(reply)) => {
                    let done = flying.swap_remove(i);
                    done.sockets.give_back(done.socket);
                    if let Some(outcome) = tally.record(done.server, Ok(reply)) {
                        return finish(flying, outcome);
                    }
                }
                Err(error) => {
                    let failed = flying.swap_remove(i);
                    if let Some(outcome) = tally.record(failed.server, Err(error)) {
                        return finish(flying, outcome);
                    }
                }
            }
        }
        let now = Instant::now();
        if now >= deadline || flying.is_empty() {
            break;
        }
        // Loopback replies take tens of microseconds: look again soon, then back off.
        reads += 1;
        if reads < SPIN_READS {
            thread::yield_now();
        } else {
            thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(MAX_NAP);
        }
    }
    let outcome = tally.settle();
    finish(flying, outcome)
}

/// Sends `request` to every server without waiting for the replies (best-effort cleanup). As
/// `EVAL`, with the script's source: nobody will read a `NOSCRIPT` to send it again.
pub(crate) fn send_and_forget(sockets: &[Sockets], request: impl Fn(usize) -> Request) {
    for (server, node) in sockets.iter().enumerate() {
        let request = request(server);
        let Ok((mut socket, _)) = node.take(unanswered_limit(&request)) else {
            continue;
        };
        if write(&mut socket, &request.eval().get_packed_command()).is_ok() {
            socket.discard += 1;
            node.give_back(socket);
        }
    }
}

/// The round is decided: sockets still waiting go back with one more reply to discard.
fn finish<O>(flying: Vec<InFlight<'_>>, outcome: O) -> O {
    for mut pending in flying {
        pending.socket.discard += 1;
        pending.sockets.give_back(pending.socket);
    }
    outcome
}

/// How many unanswered requests a server's socket may carry before it is skipped for `request`.
fn unanswered_limit(request: &Request) -> usize {
    if request.is_release() {
        MAX_UNANSWERED_RELEASES
    } else {
        MAX_UNANSWERED
    }
}

fn send(sockets: &Sockets, server: usize, request: Request) -> Result<InFlight<'_>, Error> {
    let (mut socket, reused) = sockets.take(unanswered_limit(&request))?;
    match write(&mut socket, &request.evalsha().get_packed_command()) {
        Ok(()) => {}
        Err(_) if reused => {
            // The pooled socket went stale (the server restarted): one new socket, once.
            socket = sockets.connect()?;
            write(&mut socket, &request.evalsha().get_packed_command())?;
            return Ok(InFlight {
                server,
                sockets,
                socket,
                request,
                reused: false,
                resent: true,
            });
        }
        Err(e) => return Err(e),
    }
    Ok(InFlight {
        server,
        sockets,
        socket,
        request,
        reused,
        resent: false,
    })
}

fn write(socket: &mut Socket, bytes: &[u8]) -> Result<(), Error> {
    // A request is a few hundred bytes: it fits the socket's send buffer unless the server has
    // stopped reading, and then this server has failed.
    match socket.tcp.write(bytes) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(_) => Err(unreachable("the server is not reading its socket")),
        Err(e) => Err(Error::Redis(e.into())),
    }
}

/// Reads what has arrived and discards the replies nobody waits for; `Err` if the socket broke.
fn drain(socket: &mut Socket) -> Result<(), Error> {
    fill(socket)?;
    while socket.discard > 0 {
        match resp::value_len(&socket.buf) {
            Ok(Some(len)) => {
                socket.buf.drain(..len);
                socket.discard -= 1;
            }
            Ok(None) => break,
            Err(()) => return Err(unreachable("the server sent bytes that are not RESP2")),
        }
    }
    Ok(())
}

/// Reads whatever has arrived on the socket, without blocking.
fn fill(socket: &mut Socket) -> Result<(), Error> {
    let mut chunk = [0_u8; 4096];
    loop {
        match socket.tcp.read(&mut chunk) {
            Ok(0) => return Err(unreachable("the server closed the connection")),
            Ok(n) => socket.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Redis(e.into())),
        }
    }
}

/// Reads what has arrived; `Some` once this request's reply is complete.
fn poll(flight: &mut InFlight<'_>) -> Result<Option<Value>, Error> {
    if let Err(error) = fill(&mut flight.socket) {
        return reconnect_or_fail(flight, error);
    }
    loop {
        let socket = &mut flight.socket;
        let len = match resp::value_len(&socket.buf) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(None),
            Err(()) => return Err(unreachable("the server sent bytes that are not RESP2")),
        };
        let value = redis::parse_redis_value(&socket.buf[..len]);
        socket.buf.drain(..len);
        if socket.discard > 0 {
            socket.discard -= 1;
            continue;
        }
        return match value {
            Ok(Value::ServerError(error)) => {
                let error = redis::RedisError::from(error);
                if protocol::is_noscript(&error) && !flight.resent {
                    // Restarted or flushed: `EVAL` runs it and loads it again.
                    flight.resent = true;
                    write(socket, &flight.request.eval().get_packed_command())?;
                    continue;
                }
                Err(Error::Redis(error))
            }
            Ok(value) => Ok(Some(value)),
            Err(error) => Err(Error::Redis(error)),
        };
    }
}

/// A reused socket that turned out closed before any reply: the server restarted since. Every
/// quorum request is idempotent for its nonce, so it is sent once more on a new socket.
fn reconnect_or_fail(flight: &mut InFlight<'_>, error: Error) -> Result<Option<Value>, Error> {
    if !flight.reused || flight.resent {
        return Err(error);
    }
    flight.resent = true;
    flight.socket = flight.sockets.connect()?;
    write(
        &mut flight.socket,
        &flight.request.evalsha().get_packed_command(),
    )?;
    Ok(None)
}

#[cold]
fn unreachable(why: &'static str) -> Error {
    Error::Redis(redis::RedisError::from((
        redis::ErrorKind::Io,
        "fencelock-redis: lock server unreachable",
        why.to_owned(),
    )))
}
