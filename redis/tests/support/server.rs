//! A throwaway `redis-server` on a free 127.0.0.1 port, in its own temporary directory, killed
//! (and its directory removed) on drop. Shared by the tests, the bench and the exchange example
//! (through `#[path]`), so there is one copy.
//!
//! Every wait here is bounded in count and time. Only 127.0.0.1 is ever used.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How long a starting server may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many free ports to try when the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 8;

/// How the server keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing survives a restart (`--save '' --appendonly no`).
    None,
    /// Every acknowledged write survives `kill -9` (`--appendonly yes --appendfsync always`).
    AppendFsyncAlways,
}

/// A `redis-server` child process listening on 127.0.0.1.
pub struct RedisProcess {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    persistence: Persistence,
    paused: bool,
}

impl RedisProcess {
    /// Starts a server that keeps nothing across restarts.
    pub fn start() -> Self {
        Self::start_with(Persistence::None)
    }

    /// Starts a server with the given persistence, on a free port, in a fresh directory.
    pub fn start_with(persistence: Persistence) -> Self {
        let dir = fresh_dir();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let mut server = Self {
                child: None,
                port,
                dir: dir.clone(),
                persistence,
                paused: false,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of {PORT_ATTEMPTS} free ports");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sends SIGKILL (`kill -9`) and reaps the process: no shutdown, no final save.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on unix
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Starts the server again on the same port and directory (after [`kill9`](Self::kill9)).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a killed server only");
        let deadline = Instant::now() + START_TIMEOUT;
        // The old socket may linger for a moment: retry a bounded number of times.
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// SIGSTOP: the server stops answering, but its socket stays open (connects still succeed).
    pub fn pause(&mut self) {
        self.signal("-STOP");
        self.paused = true;
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        self.signal("-CONT");
        self.paused = false;
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("server is running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Spawns redis-server and waits for PING; false if it exited at once (port taken).
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--daemonize", "no", "--logfile", "server.log"]);
        match self.persistence {
            Persistence::None => cmd.args(["--appendonly", "no"]),
            Persistence::AppendFsyncAlways => {
                cmd.args(["--appendonly", "yes", "--appendfsync", "always"])
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "redis-server is not on PATH. The Redis tests need it: install it with \
                 `apt-get install -y redis-server` (Debian/Ubuntu) or `brew install redis` \
                 (macOS), then run the tests again."
            ),
            Err(e) => panic!("could not start redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_exited)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if ping(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill9();
        false
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a server on 127.0.0.1:`port` answers PING within 200 ms.
pub fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let timeout = Duration::from_millis(200);
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let mut reply = [0_u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn fresh_dir() -> PathBuf {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fencelock-redis-{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the server's temporary directory");
    dir
}
