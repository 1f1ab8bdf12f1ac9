//! A TCP proxy for the tests, on 127.0.0.1 only, in front of one server: it forwards, delays the
//! server's replies, goes silent (a server that vanished without a FIN or RST), or silences only
//! the connections open at a given moment, with the mode settable at any time.
//!
//! Plain std threads: one accept thread, and per connection one pump from the client to the
//! server plus a reader and a writer from the server to the client (the writer holds delayed
//! chunks, so their order is kept and each is held its own delay). Every blocking call has a
//! timeout, every loop checks the proxy's stop flag, and every thread ends when the [`Proxy`] is
//! dropped.
//!
//! [`Unreachable`] is the other kind of dead server: one whose connects hang (a listener with a
//! full accept queue), as a host cut off by the network.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often a waiting thread looks at the mode and the stop flag.
const TICK: Duration = Duration::from_millis(5);
/// Bound on a connect to the server, and on every write.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on joining one thread when the proxy is dropped.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the proxy does with its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways (the default).
    Forward,
    /// Holds each chunk from the server this long before forwarding it to the client (the
    /// replies are delayed; their order is kept). Requests are not delayed.
    Delay(Duration),
    /// Forwards nothing either way, on new and existing connections, and closes nothing: a
    /// server that vanished without a FIN or RST. (Connects still succeed: the kernel accepts
    /// them. For connects that hang, see [`Unreachable`].)
    Blackhole,
    /// The connections open at the moment of the switch go silent for good (nothing forwarded,
    /// nothing closed, whatever the mode later); connections opened afterwards work normally.
    DropEstablished,
    /// The connections open at the moment of the switch hold the next chunk from the server for
    /// this long, forward it, and then close both sides at once (FIN): the reply arrives
    /// together with the end of the connection. Connections opened afterwards work normally.
    /// Any later [`Proxy::set`] disarms the connections that have not closed yet.
    ReplyThenClose(Duration),
}

/// A TCP proxy on 127.0.0.1 in front of one server port.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    stop: AtomicBool,
    state: Mutex<State>,
}

struct State {
    mode: Mode,
    /// Every connection accepted so far (for the modes that act on the established ones).
    conns: Vec<Arc<Conn>>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct Conn {
    /// Silent for good ([`Mode::DropEstablished`]).
    silenced: AtomicBool,
    /// Armed by [`Mode::ReplyThenClose`]: the hold before the reply that ends the connection.
    close_after_reply: Mutex<Option<Duration>>,
}

impl Conn {
    fn close_after_reply(&self) -> MutexGuard<'_, Option<Duration>> {
        self.close_after_reply
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One chunk from the server on its way to the client.
enum Chunk {
    Bytes {
        due: Instant,
        bytes: Vec<u8>,
        close: bool,
    },
    /// The server closed its side.
    Eof,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stopped(&self) -> bool {
        self.stop.load(SeqCst)
    }

    fn mode(&self) -> Mode {
        self.state().mode
    }

    /// Whether `conn` may not forward anything now.
    fn blocked(&self, conn: &Conn) -> bool {
        conn.silenced.load(SeqCst) || self.mode() == Mode::Blackhole
    }

    /// Waits (by ticks) until `conn` may forward; false if the proxy stopped meanwhile.
    fn wait_unblocked(&self, conn: &Conn) -> bool {
        while !self.stopped() {
            if !self.blocked(conn) {
                return true;
            }
            thread::sleep(TICK);
        }
        false
    }

    /// Sleeps until `due` (by ticks); false if the proxy stopped meanwhile.
    fn sleep_until(&self, due: Instant) -> bool {
        loop {
            if self.stopped() {
                return false;
            }
            let now = Instant::now();
            if now >= due {
                return true;
            }
            thread::sleep((due - now).min(TICK));
        }
    }
}

impl Proxy {
    /// Starts a proxy on a free 127.0.0.1 port in front of 127.0.0.1:`target_port`, in
    /// [`Mode::Forward`].
    pub fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            target: SocketAddr::from((Ipv4Addr::LOCALHOST, target_port)),
            stop: AtomicBool::new(false),
            state: Mutex::new(State {
                mode: Mode::Forward,
                conns: Vec::new(),
                threads: Vec::new(),
            }),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("proxy-{port}-accept"))
                .spawn(move || accept_loop(&listener, &shared))
                .expect("spawn the proxy's accept thread")
        };
        Self {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// The proxy's own port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Switches the mode, at once, for the connections the mode concerns.
    pub fn set(&self, mode: Mode) {
        let mut state = self.shared.state();
        for conn in &state.conns {
            match mode {
                Mode::DropEstablished => conn.silenced.store(true, SeqCst),
                Mode::ReplyThenClose(hold) => *conn.close_after_reply() = Some(hold),
                _ => *conn.close_after_reply() = None,
            }
        }
        state.mode = mode;
    }

    /// The mode last set.
    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        // Unblock the accept thread's `accept()`.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            IO_TIMEOUT,
        );
        if let Some(accept) = self.accept.take() {
            join_bounded(accept);
        }
        let threads = std::mem::take(&mut self.shared.state().threads);
        for thread in threads {
            join_bounded(thread);
        }
    }
}

/// Joins `thread` if it ends within [`JOIN_TIMEOUT`] (they all end within a few ticks of the
/// stop flag); otherwise leaves it detached rather than hang the test.
fn join_bounded(thread: JoinHandle<()>) {
    let deadline = Instant::now() + JOIN_TIMEOUT;
    while !thread.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    if thread.is_finished() {
        let _ = thread.join();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopped() {
            return;
        }
        let Ok(client) = client else {
            thread::sleep(TICK);
            continue;
        };
        // The server refused (it is down): close the client's connection, as the server would.
        let Ok(server) = TcpStream::connect_timeout(&shared.target, IO_TIMEOUT) else {
            continue;
        };
        if let Err(e) = start_connection(client, server, shared) {
            eprintln!("proxy: could not set up a connection: {e}");
        }
    }
}

fn start_connection(
    client: TcpStream,
    server: TcpStream,
    shared: &Arc<Shared>,
) -> std::io::Result<()> {
    for stream in [&client, &server] {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TICK))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
    }
    let conn = Arc::new(Conn::default());
    let (to_client, chunks) = mpsc::channel();
    let up = {
        let (shared, conn) = (Arc::clone(shared), Arc::clone(&conn));
        let (from, to) = (client.try_clone()?, server.try_clone()?);
        move || pump_up(&shared, &conn, from, to)
    };
    let down_read = {
        let (shared, conn) = (Arc::clone(shared), Arc::clone(&conn));
        let from = server.try_clone()?;
        move || read_down(&shared, &conn, from, &to_client)
    };
    let down_write = {
        let (shared, conn) = (Arc::clone(shared), Arc::clone(&conn));
        move || write_down(&shared, &conn, &chunks, client, server)
    };
    // Registered under the state's lock: a switch of mode sees this connection or not at all.
    let mut state = shared.state();
    state.threads.retain(|thread| !thread.is_finished());
    for body in [
        Box::new(up) as Box<dyn FnOnce() + Send>,
        Box::new(down_read),
        Box::new(down_write),
    ] {
        state.threads.push(thread::Builder::new().spawn(body)?);
    }
    state.conns.push(conn);
    Ok(())
}

/// Client to server, chunk by chunk, while the connection may forward.
fn pump_up(shared: &Shared, conn: &Conn, mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0_u8; 16 * 1024];
    while shared.wait_unblocked(conn) {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                // Bytes read just before a switch to a silent mode are held, not forwarded.
                if !shared.wait_unblocked(conn) || to.write_all(&buf[..n]).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
            }
            Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Server to client, first half: reads each chunk and stamps when it is due.
fn read_down(shared: &Shared, conn: &Conn, mut from: TcpStream, to: &mpsc::Sender<Chunk>) {
    let mut buf = [0_u8; 16 * 1024];
    while shared.wait_unblocked(conn) {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.send(Chunk::Eof);
                return;
            }
            Ok(n) => {
                let now = Instant::now();
                let close_after = conn.close_after_reply().take();
                let hold = match (close_after, shared.mode()) {
                    (Some(hold), _) | (None, Mode::Delay(hold)) => hold,
                    _ => Duration::ZERO,
                };
                let chunk = Chunk::Bytes {
                    due: now + hold,
                    bytes: buf[..n].to_vec(),
                    close: close_after.is_some(),
                };
                if to.send(chunk).is_err() || close_after.is_some() {
                    return;
                }
            }
            Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                let _ = to.send(Chunk::Eof);
                return;
            }
        }
    }
}

/// Server to client, second half: forwards each chunk when it is due, in order.
fn write_down(
    shared: &Shared,
    conn: &Conn,
    chunks: &mpsc::Receiver<Chunk>,
    mut client: TcpStream,
    server: TcpStream,
) {
    while !shared.stopped() {
        match chunks.recv_timeout(TICK) {
            Ok(Chunk::Bytes { due, bytes, close }) => {
                if !shared.sleep_until(due) || !shared.wait_unblocked(conn) {
                    return;
                }
                if client.write_all(&bytes).is_err() {
                    let _ = server.shutdown(Shutdown::Both);
                    return;
                }
                if close {
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                    return;
                }
            }
            Ok(Chunk::Eof) => {
                if shared.wait_unblocked(conn) {
                    let _ = client.shutdown(Shutdown::Write);
                }
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// A 127.0.0.1 port whose connects hang: a listener that never accepts, with its accept queue
/// filled, so the kernel drops further SYNs (a host cut off by the network). Dropped, it frees
/// the port and the filler connections.
pub struct Unreachable {
    listener: TcpListener,
    fillers: Vec<TcpStream>,
    addr: SocketAddr,
}

impl Unreachable {
    /// Binds a free port and fills its accept queue (a bounded number of connects).
    pub fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let mut fillers = Vec::new();
        for _ in 0..8192 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
                Ok(stream) => fillers.push(stream),
                Err(_) => {
                    return Self {
                        listener,
                        fillers,
                        addr,
                    }
                }
            }
        }
        panic!("could not fill the accept queue of {addr}");
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}
