//! The blocking front end's way of asking every server of a quorum at once, on the caller's
//! thread: one non-blocking socket per server, each request written to all of them, then the
//! replies read as the OS reports them readable (epoll, through `mio`) and fed to the round's
//! [`Tally`] until it decides or the round's deadline passes — no worker threads, no hand-offs,
//! no polling loop: after a short look for fast replies (50 µs at most), the caller sleeps in the
//! kernel until a reply or the deadline.
//!
//! A server that has not answered when the round is decided keeps its socket: the socket goes
//! back to the server's pool with one reply to discard, which the next round on it skips (it
//! arrived meanwhile, or arrives first: Redis answers one connection in order). A socket with
//! too many unanswered requests is closed instead, and a server that could not be connected
//! to is skipped — counted as failed at once — for a short cool-down, so a stalled or missing
//! minority costs the callers nothing but its share of the majority.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
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
/// How long a round looks at its sockets again (yielding the core in between) before it sleeps
/// in the kernel: a loopback or same-rack reply takes tens of microseconds, and waking a thread
/// (on a VM, a virtual CPU) that slept costs about as much again. Bounded, so a slow server
/// costs the caller at most this much CPU a round.
const SPIN: Duration = Duration::from_micros(50);

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
    /// A socket that owes replies and has received nothing for this long is dead (a peer gone
    /// without FIN or RST): it is dropped, not reused.
    io_timeout: Duration,
    idle: Mutex<Vec<Socket>>,
    /// Until when the server is skipped after a timed-out connection, and the next cool-down.
    skip_until: Mutex<(Option<Instant>, Duration)>,
    /// Since when connections to it have been started and none has opened (rounds decided
    /// before a connect completed abandon it; past the connect timeout the server cools down).
    connecting_since: Mutex<Option<Instant>>,
    /// TLS to the server, for a `rediss://` URL.
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::Tls>,
}

/// A quorum socket's byte stream: TCP, with TLS over it for a `rediss://` server (feature
/// `tls`; the TLS state sits beside the socket, so securing a connection moves nothing).
struct Stream {
    tcp: TcpStream,
    #[cfg(feature = "tls")]
    tls: Option<rustls::ClientConnection>,
}

impl Stream {
    fn plain(tcp: TcpStream) -> Self {
        Self {
            tcp,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The TCP socket underneath: its descriptor is what the OS reports ready.
    fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            return rustls::Stream::new(tls, &mut self.tcp).read(buf);
        }
        self.tcp.read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            return rustls::Stream::new(tls, &mut self.tcp).write(buf);
        }
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            return rustls::Stream::new(tls, &mut self.tcp).flush();
        }
        self.tcp.flush()
    }
}

/// A non-blocking connection to one server.
struct Socket {
    stream: Stream,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// Replies still to come for requests nobody waits for any more, to be discarded.
    discard: usize,
    /// Since when it has owed replies without receiving a byte (`None`: it owes nothing, or
    /// something arrived since).
    owed_since: Option<Instant>,
    /// The server closed it: the replies already read are still good, nothing more will come.
    closed: bool,
}

impl Socket {
    fn new(stream: Stream) -> Self {
        Self {
            stream,
            buf: Vec::with_capacity(256),
            discard: 0,
            owed_since: None,
            closed: false,
        }
    }

    /// One more reply to skip: nobody waits for it any more.
    fn owe(&mut self, now: Instant) {
        self.discard += 1;
        self.owed_since.get_or_insert(now);
    }

    /// Owes replies and has heard nothing for `timeout`: the server (or the path to it) is gone.
    fn stalled(&self, now: Instant, timeout: Duration) -> bool {
        self.discard > 0
            && self
                .owed_since
                .is_some_and(|since| now.saturating_duration_since(since) >= timeout)
    }
}

impl Sockets {
    pub(crate) fn new(
        info: &ConnectionInfo,
        connect_timeout: Duration,
        io_timeout: Duration,
        #[cfg(feature = "tls")] certs: Option<&redis::TlsCertificates>,
    ) -> Self {
        let resolve = |host: &str, port: u16| {
            (host, port)
                .to_socket_addrs()
                .map(Iterator::collect)
                .map_err(|e| InvalidInput::new(format!("cannot resolve {host}:{port}: {e}")))
        };
        #[cfg(feature = "tls")]
        let mut tls = None;
        let target = match info.addr() {
            ConnectionAddr::Tcp(host, port) => resolve(host, *port),
            #[cfg(feature = "tls")]
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                ..
            } => match crate::tls::Tls::new(host, certs) {
                Ok(config) => {
                    tls = Some(config);
                    resolve(host, *port)
                }
                Err(Error::InvalidInput(e)) => Err(e),
                Err(e) => Err(InvalidInput::new(e.to_string())),
            },
            #[cfg(feature = "tls")]
            ConnectionAddr::TcpTls { .. } => Err(InvalidInput::new(
                "a quorum verifies its servers' certificates: an `#insecure` rediss:// URL is \
                 refused",
            )),
            other => Err(InvalidInput::new(format!(
                "a quorum's servers must be reached over TCP{}, not {other}",
                if cfg!(feature = "tls") {
                    " or TLS"
                } else {
                    " (rediss:// needs the crate's `tls` feature)"
                }
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
            io_timeout,
            idle: Mutex::new(Vec::new()),
            skip_until: Mutex::new((None, COOL_DOWN)),
            connecting_since: Mutex::new(None),
            #[cfg(feature = "tls")]
            tls,
        }
    }

    /// Puts TLS over a connected stream, for a `rediss://` server (the handshake then runs on
    /// its reads and writes); nothing otherwise.
    fn secure(&self, stream: &mut Stream) -> Result<(), Error> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let conn = rustls::ClientConnection::new(Arc::clone(&tls.config), tls.server.clone())
                .map_err(|e| unreachable_tls(&e))?;
            stream.tls = Some(conn);
        }
        let _ = stream;
        Ok(())
    }

    /// Whether the server is reached over TLS.
    fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
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

    /// A pooled socket to send a request on, if there is one.
    ///
    /// Pooled sockets are looked at newest first. One that broke or that owes replies and has
    /// heard nothing for the I/O timeout (a server gone without FIN or RST) is dropped. One that
    /// owes `limit` replies or more is busy: it goes under the others and the next is looked at;
    /// if every pooled socket is busy, the server has stopped answering or fallen far behind,
    /// and it is not sent another request — it counts as failed at once (and no new connection
    /// piles onto it).
    fn take_pooled(&self, limit: usize) -> Result<Option<Socket>, Error> {
        let now = Instant::now();
        let mut busy = Vec::new();
        let found = loop {
            // (The pool's lock is released before the socket is looked at.)
            let pooled = self.idle().pop();
            let Some(mut socket) = pooled else {
                break None;
            };
            if drain(&mut socket).is_err() || socket.closed {
                continue;
            }
            if socket.stalled(now, self.io_timeout) {
                continue;
            }
            if socket.discard >= limit {
                busy.push(socket);
                continue;
            }
            break Some(socket);
        };
        let had_busy = !busy.is_empty();
        if had_busy {
            let mut idle = self.idle();
            for socket in busy.into_iter().rev() {
                idle.insert(0, socket);
            }
        }
        match found {
            Some(socket) => Ok(Some(socket)),
            None if had_busy => Err(unreachable("not answering: too many requests unanswered")),
            None => Ok(None),
        }
    }

    /// Whether the server is skipped for a moment after connections to it timed out.
    fn cooling_down(&self) -> bool {
        self.skip_until()
            .0
            .is_some_and(|until| Instant::now() < until)
    }

    /// A pooled socket (with whether it was reused), or a new one opened here, blocking for the
    /// connect timeout at most (for requests sent without waiting: cleanup).
    fn take(&self, limit: usize) -> Result<(Socket, bool), Error> {
        if let Some(socket) = self.take_pooled(limit)? {
            return Ok((socket, true));
        }
        if self.cooling_down() || self.connecting_since().is_some() {
            return Err(unreachable(
                "skipped for a moment after a failed connection",
            ));
        }
        let opened = self.connect();
        match &opened {
            Ok(_) => self.opened(),
            Err(Error::Redis(e)) if e.is_timeout() => self.timed_out(),
            Err(_) => {}
        }
        opened.map(|socket| (socket, false))
    }

    fn connecting_since(&self) -> MutexGuard<'_, Option<Instant>> {
        self.connecting_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection opened: no cool-down, nothing pending.
    fn opened(&self) {
        *self.skip_until() = (None, COOL_DOWN);
        *self.connecting_since() = None;
    }

    /// A connection timed out — it cost a caller its connect timeout, and would again: the
    /// server is skipped for a while, longer each time. (A refused connection is an instant
    /// answer and changes nothing.)
    fn timed_out(&self) {
        let mut skip = self.skip_until();
        let cool_down = skip.1;
        crate::trace::warn_event!(
            server = ?self.target.as_ref().ok().and_then(|addrs| addrs.first()),
            ?cool_down,
            "server skipped: its connection timed out"
        );
        *skip = (
            Some(Instant::now() + cool_down),
            cool_down.saturating_mul(2).min(MAX_COOL_DOWN),
        );
        *self.connecting_since() = None;
    }

    /// Starts a connection without waiting for it (the round waits on the OS for it, beside the
    /// other servers' replies). To the first address of the server.
    fn start_connect(&self) -> Result<Socket, Error> {
        if self.cooling_down() {
            return Err(unreachable(
                "skipped for a moment after a failed connection",
            ));
        }
        let addr = self
            .target
            .as_ref()
            .map_err(|e| Error::InvalidInput(e.clone()))?
            .first()
            .copied()
            .ok_or_else(|| unreachable("no address"))?;
        let tcp: TcpStream = mio::net::TcpStream::connect(addr)
            .map_err(|e| Error::Redis(e.into()))?
            .into();
        tcp.set_nodelay(true).map_err(|e| Error::Redis(e.into()))?;
        self.connecting_since().get_or_insert_with(Instant::now);
        Ok(Socket::new(Stream::plain(tcp)))
    }

    /// A connect started by a round was left behind when the round was decided: if connects to
    /// this server have been pending for the connect timeout, it counts as timed out.
    fn abandoned(&self) {
        let pending = *self.connecting_since();
        if pending.is_some_and(|since| since.elapsed() >= self.connect_timeout) {
            self.timed_out();
        }
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
    fn handshake(&self, tcp: TcpStream) -> Result<Socket, Error> {
        let io = |e: std::io::Error| Error::Redis(e.into());
        tcp.set_nodelay(true).map_err(io)?;
        tcp.set_write_timeout(Some(self.connect_timeout))
            .map_err(io)?;
        tcp.set_read_timeout(Some(self.connect_timeout))
            .map_err(io)?;
        let mut socket = Socket::new(Stream::plain(tcp));
        self.secure(&mut socket.stream)?;
        finish_tls_handshake(&mut socket.stream).map_err(io)?;
        socket.stream.write_all(&self.login.0).map_err(io)?;
        let mut chunk = [0_u8; 4096];
        for _ in 0..self.login.1 {
            let len = loop {
                match resp::value_len(&socket.buf) {
                    Ok(Some(len)) => break len,
                    Ok(None) => {}
                    Err(()) => return Err(unreachable("the server sent bytes that are not RESP2")),
                }
                match socket.stream.read(&mut chunk) {
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
        socket.stream.write_all(&self.scripts.0).map_err(io)?;
        let now = Instant::now();
        for _ in 0..self.scripts.1 {
            socket.owe(now);
        }
        socket.stream.tcp().set_nonblocking(true).map_err(io)?;
        Ok(socket)
    }

    fn give_back(&self, socket: Socket) {
        if socket.closed {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE_SOCKETS {
            // Last in, first out: a thread's next request goes out on the socket of its last
            // one, behind any reply still due there — so a release it did not wait for on this
            // server is applied before its next claim.
            idle.push(socket);
        }
    }
}

/// Where a request's socket is in its setup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A new connection's TCP connect is in progress, since then.
    Connecting(Instant),
    /// Connected; the TLS handshake is in progress, since the connect began.
    Securing(Instant),
    /// Connected: this many replies of the login (`AUTH`, `SELECT`) still to check.
    LoggingIn(usize),
    /// The request is sent.
    Sent,
}

/// A request in flight on one server's socket.
struct InFlight<'a> {
    server: usize,
    sockets: &'a Sockets,
    socket: Socket,
    request: Request,
    phase: Phase,
    reused: bool,
    /// Sent again already: after a stale socket, or as `EVAL` after `NOSCRIPT`.
    resent: bool,
    /// Its socket was replaced by a new one during the round (to be watched again).
    replaced: bool,
}

impl<'a> InFlight<'a> {
    /// `request` to `server`: on a pooled socket at once, or on a new connection once it opened
    /// and logged in — the round waits for that beside the other servers' replies.
    fn start(sockets: &'a Sockets, server: usize, request: Request) -> Result<Self, Error> {
        let (socket, phase, reused) = match sockets.take_pooled(unanswered_limit(&request))? {
            Some(socket) => (socket, Phase::Sent, true),
            None => {
                let socket = sockets.start_connect()?;
                (socket, Phase::Connecting(Instant::now()), false)
            }
        };
        let mut flight = Self {
            server,
            sockets,
            socket,
            request,
            phase,
            reused,
            resent: false,
            replaced: false,
        };
        if flight.phase == Phase::Sent {
            if let Err(error) = write(
                &mut flight.socket,
                &flight.request.evalsha().get_packed_command(),
            ) {
                // The pooled socket went stale (the server restarted): one new socket, once.
                flight.reconnect(error)?;
            }
        }
        Ok(flight)
    }

    /// Connected: secures the connection first for a TLS server (the handshake runs as the
    /// socket becomes ready, beside the other servers' replies).
    fn connected(&mut self, since: Instant) -> Result<(), Error> {
        if self.sockets.is_tls() {
            self.sockets.secure(&mut self.socket.stream)?;
            self.phase = Phase::Securing(since);
            return Ok(());
        }
        self.secured()
    }

    /// Secured (or plain): logs in (the round waits for the replies when there are any), or
    /// sends.
    fn secured(&mut self) -> Result<(), Error> {
        self.sockets.opened();
        let login = &self.sockets.login;
        if login.1 == 0 {
            return self.send();
        }
        write(&mut self.socket, &login.0)?;
        self.phase = Phase::LoggingIn(login.1);
        Ok(())
    }

    /// Logged in: the scripts' loads (their replies skipped), then the request.
    fn send(&mut self) -> Result<(), Error> {
        let scripts = &self.sockets.scripts;
        write(&mut self.socket, &scripts.0)?;
        let now = Instant::now();
        for _ in 0..scripts.1 {
            self.socket.owe(now);
        }
        write(
            &mut self.socket,
            &self.request.evalsha().get_packed_command(),
        )?;
        self.phase = Phase::Sent;
        Ok(())
    }

    /// A reused socket that turned out closed before any reply: the server restarted since.
    /// Every quorum request is idempotent for its nonce, so it is sent once more, on a new
    /// connection, without waiting for it here.
    fn reconnect(&mut self, error: Error) -> Result<(), Error> {
        if !self.reused || self.resent {
            return Err(error);
        }
        self.resent = true;
        self.socket = self.sockets.start_connect()?;
        self.phase = Phase::Connecting(Instant::now());
        self.replaced = true;
        Ok(())
    }

    /// When a connect in progress gives up, if one is.
    fn connect_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Connecting(since) | Phase::Securing(since) => {
                Some(since + self.sockets.connect_timeout)
            }
            _ => None,
        }
    }
}

/// Sends `request(server)` to every server in `targets` at once and feeds the replies to
/// `tally` until it decides, or until `deadline`, when every server that has not answered
/// counts as failed. Servers that need a new connection are connected to without blocking the
/// others: a server that does not accept (blackholed) costs the round nothing but its vote.
pub(crate) fn round<T: Tally>(
    sockets: &[Sockets],
    targets: impl IntoIterator<Item = usize>,
    request: impl Fn(usize) -> Request,
    deadline: Instant,
    mut tally: T,
) -> T::Outcome {
    let mut flying: Vec<InFlight<'_>> = Vec::with_capacity(sockets.len());
    for server in targets {
        match InFlight::start(&sockets[server], server, request(server)) {
            Ok(in_flight) => flying.push(in_flight),
            Err(error) => {
                if let Some(outcome) = tally.record(server, Err(error)) {
                    return finish(flying, outcome);
                }
            }
        }
    }
    // Readiness from the OS: each socket still waited on is registered under its server's
    // index. Without a poller (no file descriptor left, say) the round can only settle.
    let Ok(mut readiness) = Readiness::new(&flying) else {
        return finish(flying, tally.settle());
    };
    let spin_until = Instant::now() + SPIN;
    while !flying.is_empty() {
        let mut i = 0;
        while i < flying.len() {
            match poll(&mut flying[i]) {
                Ok(None) => i += 1,
                Ok(Some(reply)) => {
                    let done = flying.swap_remove(i);
                    readiness.forget(&done);
                    done.sockets.give_back(done.socket);
                    if let Some(outcome) = tally.record(done.server, Ok(reply)) {
                        return finish(flying, outcome);
                    }
                }
                Err(error) => {
                    let failed = flying.swap_remove(i);
                    readiness.forget(&failed);
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
        if now < spin_until {
            thread::yield_now();
            continue;
        }
        // Sleeps in the kernel until a socket has bytes, connected, or closed — or until the
        // deadline, or a connect's own timeout.
        let until = flying
            .iter()
            .filter_map(InFlight::connect_deadline)
            .fold(deadline, Instant::min);
        let timeout = until.saturating_duration_since(now);
        if readiness.wait(&mut flying, timeout).is_err() {
            break;
        }
    }
    let outcome = tally.settle();
    finish(flying, outcome)
}

/// Sends `request` to every server without waiting for the replies (best-effort cleanup). As
/// `EVAL`, with the script's source: nobody will read a `NOSCRIPT` to send it again. A server
/// with no pooled socket is connected to (blocking, for its connect timeout at most) only if
/// no connection to it is known to be failing or pending.
pub(crate) fn send_and_forget(sockets: &[Sockets], request: impl Fn(usize) -> Request) {
    for (server, node) in sockets.iter().enumerate() {
        let request = request(server);
        let Ok((mut socket, _)) = node.take(unanswered_limit(&request)) else {
            continue;
        };
        if write(&mut socket, &request.eval().get_packed_command()).is_ok() {
            socket.owe(Instant::now());
            node.give_back(socket);
        }
    }
}

/// The OS's readiness for a round's sockets (epoll on Linux, through `mio`).
struct Readiness {
    poll: mio::Poll,
    events: mio::Events,
}

impl Readiness {
    fn new(flying: &[InFlight<'_>]) -> std::io::Result<Self> {
        let poll = mio::Poll::new()?;
        let readiness = Self {
            poll,
            events: mio::Events::with_capacity(flying.len().max(1)),
        };
        for flight in flying {
            readiness.watch(flight)?;
        }
        Ok(readiness)
    }

    /// Watches a flight's socket: readable (a reply, or a close), and writable (a connect done).
    fn watch(&self, flight: &InFlight<'_>) -> std::io::Result<()> {
        let fd = flight.socket.stream.tcp().as_raw_fd();
        self.poll.registry().register(
            &mut SourceFd(&fd),
            mio::Token(flight.server),
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )
    }

    /// A flight is over: its socket is no longer watched (it may go back to the pool, or close).
    fn forget(&self, flight: &InFlight<'_>) {
        let fd = flight.socket.stream.tcp().as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
    }

    /// Waits until a socket of `flying` is ready, or `timeout`. A socket replaced meanwhile (a
    /// resend on a new connection) is watched first.
    fn wait(&mut self, flying: &mut [InFlight<'_>], timeout: Duration) -> std::io::Result<()> {
        for flight in flying.iter_mut().filter(|f| f.replaced) {
            // The new descriptor; the old one left epoll when its socket closed.
            flight.replaced = false;
            self.watch(flight)?;
        }
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            other => other,
        }
    }
}

/// The round is decided: sockets whose request went out go back with one more reply to
/// discard; connections still opening are dropped (and counted against the server if its
/// connects have been pending for the connect timeout).
fn finish<O>(flying: Vec<InFlight<'_>>, outcome: O) -> O {
    let now = Instant::now();
    for mut pending in flying {
        match pending.phase {
            Phase::Sent => {
                pending.socket.owe(now);
                pending.sockets.give_back(pending.socket);
            }
            Phase::Connecting(_) => pending.sockets.abandoned(),
            Phase::Securing(_) | Phase::LoggingIn(_) => {}
        }
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

fn write(socket: &mut Socket, bytes: &[u8]) -> Result<(), Error> {
    // A request is a few hundred bytes: it fits the socket's send buffer unless the server has
    // stopped reading, and then this server has failed.
    match socket.stream.write(bytes) {
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
                skipped(socket);
            }
            Ok(None) => break,
            Err(()) => return Err(unreachable("the server sent bytes that are not RESP2")),
        }
    }
    Ok(())
}

/// One owed reply arrived and was skipped: the socket is heard from.
fn skipped(socket: &mut Socket) {
    socket.discard -= 1;
    socket.owed_since = (socket.discard > 0).then(Instant::now);
}

/// Reads whatever has arrived on the socket, without blocking. A socket the server closed keeps
/// what was read before the close (a complete reply is still good): see [`Socket::closed`].
fn fill(socket: &mut Socket) -> Result<(), Error> {
    let mut chunk = [0_u8; 4096];
    loop {
        match socket.stream.read(&mut chunk) {
            Ok(0) => {
                socket.closed = true;
                return Ok(());
            }
            Ok(n) => socket.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Redis(e.into())),
        }
    }
}

/// Runs a TLS handshake to its end on a blocking socket (with timeouts): a certificate the
/// client does not trust, or a server that wants one the client has not, fails here.
fn finish_tls_handshake(stream: &mut Stream) -> std::io::Result<()> {
    #[cfg(feature = "tls")]
    if let Some(tls) = &mut stream.tls {
        while tls.is_handshaking() {
            tls.complete_io(&mut stream.tcp)?;
        }
    }
    let _ = stream;
    Ok(())
}

/// Moves a TLS handshake on with what the non-blocking socket allows: `Ok(true)` once done.
fn advance_tls_handshake(stream: &mut Stream) -> std::io::Result<bool> {
    #[cfg(feature = "tls")]
    if let Some(tls) = &mut stream.tls {
        while tls.is_handshaking() {
            match tls.complete_io(&mut stream.tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }
    let _ = stream;
    Ok(true)
}

#[cfg(feature = "tls")]
#[cold]
fn unreachable_tls(error: &rustls::Error) -> Error {
    Error::Redis(redis::RedisError::from((
        redis::ErrorKind::Io,
        "fencelock-redis: TLS setup failed",
        error.to_string(),
    )))
}

/// Whether a connect in progress has finished: `Ok(false)` while it has not; the error if it
/// failed (refused, unreachable).
fn connect_done(tcp: &TcpStream) -> Result<bool, Error> {
    if let Some(error) = tcp.take_error().map_err(|e| Error::Redis(e.into()))? {
        return Err(Error::Redis(error.into()));
    }
    match tcp.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(Error::Redis(e.into())),
    }
}

/// Moves a flight on with what has arrived: its connect, its login's replies, its reply.
/// `Some` once the request's reply is complete — even if the server closed the connection
/// right after sending it.
fn poll(flight: &mut InFlight<'_>) -> Result<Option<Value>, Error> {
    loop {
        match flight.phase {
            Phase::Connecting(since) => match connect_done(flight.socket.stream.tcp()) {
                Ok(true) => flight.connected(since)?,
                Ok(false) if since.elapsed() < flight.sockets.connect_timeout => return Ok(None),
                Ok(false) => {
                    flight.sockets.timed_out();
                    return Err(unreachable(
                        "the connection did not open within the timeout",
                    ));
                }
                Err(error) => {
                    *flight.sockets.connecting_since() = None;
                    return Err(error);
                }
            },
            Phase::Securing(since) => match advance_tls_handshake(&mut flight.socket.stream) {
                Ok(true) => flight.secured()?,
                Ok(false) if since.elapsed() < flight.sockets.connect_timeout => return Ok(None),
                Ok(false) => {
                    flight.sockets.timed_out();
                    return Err(unreachable(
                        "the TLS handshake did not finish within the timeout",
                    ));
                }
                Err(e) => return Err(Error::Redis(e.into())),
            },
            Phase::LoggingIn(left) => {
                fill(&mut flight.socket)?;
                let socket = &mut flight.socket;
                let len = match resp::value_len(&socket.buf) {
                    Ok(Some(len)) => len,
                    Ok(None) if socket.closed => {
                        return Err(unreachable("the server closed the connection"))
                    }
                    Ok(None) => return Ok(None),
                    Err(()) => return Err(unreachable("the server sent bytes that are not RESP2")),
                };
                let reply = redis::parse_redis_value(&socket.buf[..len]);
                socket.buf.drain(..len);
                match reply {
                    // A refused login fails the request before it is sent: nothing runs as the
                    // server's default user.
                    Ok(Value::ServerError(error)) => return Err(Error::Redis(error.into())),
                    Ok(_) if left > 1 => flight.phase = Phase::LoggingIn(left - 1),
                    Ok(_) => flight.send()?,
                    Err(error) => return Err(Error::Redis(error)),
                }
            }
            Phase::Sent => return poll_reply(flight),
        }
    }
}

/// Reads what has arrived for a sent request; `Some` once its reply is complete.
fn poll_reply(flight: &mut InFlight<'_>) -> Result<Option<Value>, Error> {
    if let Err(error) = fill(&mut flight.socket) {
        flight.reconnect(error)?;
        return Ok(None);
    }
    loop {
        let socket = &mut flight.socket;
        let len = match resp::value_len(&socket.buf) {
            Ok(Some(len)) => len,
            Ok(None) if socket.closed => {
                flight.reconnect(unreachable("the server closed the connection"))?;
                return Ok(None);
            }
            Ok(None) => return Ok(None),
            Err(()) => return Err(unreachable("the server sent bytes that are not RESP2")),
        };
        let value = redis::parse_redis_value(&socket.buf[..len]);
        socket.buf.drain(..len);
        if socket.discard > 0 {
            skipped(socket);
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

#[cold]
fn unreachable(why: &'static str) -> Error {
    Error::Redis(redis::RedisError::from((
        redis::ErrorKind::Io,
        "fencelock-redis: lock server unreachable",
        why.to_owned(),
    )))
}
