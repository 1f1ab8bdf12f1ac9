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

/// How long one `redis-cli --tls ... PING` readiness probe may take.
const TLS_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The files a TLS-only server uses (PEM), and whether it requires client certificates.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The server's certificate (`--tls-cert-file`); should name `IP:127.0.0.1`.
    pub cert: PathBuf,
    /// The server's private key (`--tls-key-file`).
    pub key: PathBuf,
    /// The CA that verifies client certificates (`--tls-ca-cert-file`), and that the readiness
    /// check verifies the server with.
    pub ca: PathBuf,
    /// The client certificate the readiness check (`redis-cli --tls`) presents.
    pub client_cert: PathBuf,
    /// The client key the readiness check presents.
    pub client_key: PathBuf,
    /// `--tls-auth-clients yes` (mutual TLS) if true, `no` if false.
    pub require_client_cert: bool,
}

/// A `redis-server` child process listening on 127.0.0.1.
pub struct RedisProcess {
    child: Option<Child>,
    /// The plaintext port, or for a TLS server the TLS port (plaintext is then off).
    port: u16,
    dir: PathBuf,
    persistence: Persistence,
    paused: bool,
    tls: Option<TlsFiles>,
    /// More `redis-server` arguments (after the defaults, so they override them).
    args: Vec<String>,
    /// More environment variables for the process (an `LD_PRELOAD` clock shim, say).
    env: Vec<(String, String)>,
}

/// How to start a [`RedisProcess`] beyond the defaults: `RedisProcess::options()...start()`.
#[derive(Clone, Debug, Default)]
pub struct Options {
    persistence: Option<Persistence>,
    tls: Option<TlsFiles>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Options {
    /// How the server keeps its data (default: nothing survives a restart).
    pub fn persistence(mut self, persistence: Persistence) -> Self {
        self.persistence = Some(persistence);
        self
    }

    /// A TLS-only server.
    pub fn tls(mut self, tls: TlsFiles) -> Self {
        self.tls = Some(tls);
        self
    }

    /// More `redis-server` arguments, given after the defaults (so they override them), e.g.
    /// `["--cluster-enabled", "yes"]`. Kept across restarts.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable for the server process (kept across restarts).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the server on a free port, in a fresh directory.
    pub fn start(self) -> RedisProcess {
        RedisProcess::start_inner(self)
    }
}

impl RedisProcess {
    /// Starts a server that keeps nothing across restarts.
    pub fn start() -> Self {
        Self::start_with(Persistence::None)
    }

    /// Starts a server with the given persistence, on a free port, in a fresh directory.
    pub fn start_with(persistence: Persistence) -> Self {
        Self::options().persistence(persistence).start()
    }

    /// Options beyond the defaults: extra arguments, environment, persistence, TLS.
    pub fn options() -> Options {
        Options::default()
    }

    /// Starts a TLS-only server (`--port 0 --tls-port P`) that keeps nothing across restarts.
    pub fn start_tls(tls: TlsFiles) -> Self {
        Self::start_tls_with(tls, Persistence::None)
    }

    /// Starts a TLS-only server with the given persistence, on a free port, in a fresh directory.
    pub fn start_tls_with(tls: TlsFiles, persistence: Persistence) -> Self {
        Self::options().tls(tls).persistence(persistence).start()
    }

    fn start_inner(options: Options) -> Self {
        let dir = fresh_dir();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let mut server = Self {
                child: None,
                port,
                dir: dir.clone(),
                persistence: options.persistence.unwrap_or(Persistence::None),
                paused: false,
                tls: options.tls.clone(),
                args: options.args.clone(),
                env: options.env.clone(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of {PORT_ATTEMPTS} free ports");
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://127.0.0.1:PORT` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The TLS files, for a TLS server.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The TCP port (the TLS port, for a TLS server).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
        match &self.tls {
            None => cmd.arg("--port").arg(self.port.to_string()),
            Some(tls) => cmd
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .arg("--tls-auth-clients")
                .arg(if tls.require_client_cert { "yes" } else { "no" }),
        };
        cmd.args(["--bind", "127.0.0.1", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--daemonize", "no", "--logfile", "server.log"]);
        match self.persistence {
            Persistence::None => cmd.args(["--appendonly", "no"]),
            Persistence::AppendFsyncAlways => {
                cmd.args(["--appendonly", "yes", "--appendfsync", "always"])
            }
        };
        cmd.args(&self.args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
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
            let ready = match &self.tls {
                None => ping(self.port),
                Some(tls) => ping_tls(self.port, tls),
            };
            if ready {
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

/// Whether a TLS server on 127.0.0.1:`port` answers `redis-cli --tls ... PING` with `PONG`,
/// verifying it with `tls.ca` and presenting `tls.client_cert`; gives up after
/// [`TLS_PING_TIMEOUT`].
pub fn ping_tls(port: u16, tls: &TlsFiles) -> bool {
    let mut cmd = Command::new("redis-cli");
    cmd.arg("--tls")
        .arg("--cacert")
        .arg(&tls.ca)
        .arg("--cert")
        .arg(&tls.client_cert)
        .arg("--key")
        .arg(&tls.client_key)
        .args(["-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .arg("PING")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "redis-cli is not on PATH. The TLS tests need it: install it with \
             `apt-get install -y redis-tools` (Debian/Ubuntu) or `brew install redis` (macOS), \
             then run the tests again."
        ),
        Err(e) => panic!("could not start redis-cli: {e}"),
    };
    // Bounded: the reply is a few bytes, so polling cannot deadlock on a full pipe.
    let deadline = Instant::now() + TLS_PING_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    status.success() && out.trim() == "PONG"
}

/// A port free on 127.0.0.1 a moment ago (see `PORT_ATTEMPTS` for when it was taken meanwhile).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn fresh_dir() -> PathBuf {
    fresh_dir_named("fencelock-redis")
}

/// A new, empty temporary directory `PREFIX-PID-N`, for one process of a test.
pub fn fresh_dir_named(prefix: &str) -> PathBuf {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}
