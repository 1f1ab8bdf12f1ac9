//! A throwaway Sentinel group on 127.0.0.1: a master M, a replica R that replicates through a
//! [`Proxy`] in front of M (so replication can be stalled without closing the link), and three
//! sentinels (quorum 2) watching M as [`MASTER_NAME`]. Dropped, it kills the sentinels, the
//! servers and the proxy, and removes their directories.
//!
//! R replicates from the proxy's port, not M's, and a sentinel "fixes" a replica whose master
//! address differs from the one it monitors (`+fix-slave-config`: `SLAVEOF <M>`, `failover-timeout`
//! after it first saw the replica), which would bypass the proxy. So the sentinels log in as
//! [`SENTINEL_USER`], which on R may only run `SLAVEOF NO ONE` (the promotion): the fix is
//! refused (`NOPERM`, its `MULTI` aborted) and R stays behind the proxy. On M the user may run
//! everything, so a restarted M is turned into R's replica after a failover. For the same reason
//! the sentinels can never turn R back into a replica: a second failover (back to M) would leave
//! two masters. One failover per group.
//!
//! Uses the sibling modules `server` and `proxy` (`super::...`).
//!
//! Every wait here is bounded in count and time. Only 127.0.0.1 is ever used.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use super::proxy::{Mode, Proxy};
use super::server::{free_port, ping, RedisProcess};

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "fencelock-test";
/// The ACL user the sentinels log in as on M and R (see the module's docs).
pub const SENTINEL_USER: &str = "fencelock-sentinel";
const SENTINEL_PASS: &str = "fencelock-sentinel-pass";
/// For M and R: a full sync starts at once (not after the default 5 s), and a stalled link is
/// not given up for 5 min (not 60 s), so R stays a candidate for promotion through a long stall.
const REPLICATION: [&str; 4] = ["--repl-diskless-sync-delay", "0", "--repl-timeout", "300"];
/// Number of sentinels; a majority of them (2, the quorum) must agree.
const SENTINELS: usize = 3;
const QUORUM: usize = 2;
/// How long a sentinel may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the group may take to replicate and to be known to every sentinel (hellos every 2 s).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long R may take to acknowledge all of M's writes.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failover may take: about 1 s to `down`, then the vote and the promotion; a split
/// vote is retried after 2 × `failover-timeout` (10 s).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one helper connection's connect, read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two polls of a wait.
const POLL: Duration = Duration::from_millis(50);
/// Lines of each sentinel's log in a failure message.
const LOG_TAIL: usize = 30;
/// How many free ports to try when the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 8;

/// M, R behind a proxy, and three sentinels, all on 127.0.0.1.
pub struct SentinelGroup {
    // Dropped in this order: the sentinels first, so they see nothing of the teardown.
    sentinels: Vec<SentinelProcess>,
    replica: RedisProcess,
    proxy: Proxy,
    master: RedisProcess,
}

impl SentinelGroup {
    /// Starts M, the proxy, R and the sentinels, and waits until R is in sync with M and every
    /// sentinel reports M as the master, with R (at its own port) as its replica and the other
    /// two sentinels.
    pub fn start() -> Self {
        Self::start_with_replica_clock(0)
    }

    /// As [`start`](Self::start), with R's wall clock `shift_seconds` off the real one (an
    /// `LD_PRELOAD` shim, see `clock.rs`): what a promoted replica whose clock lags does to
    /// tokens.
    pub fn start_with_replica_clock(shift_seconds: i64) -> Self {
        let master = RedisProcess::options()
            .args(REPLICATION)
            .args(sentinel_user(&["+@all"]))
            .start();
        let proxy = Proxy::start(master.port());
        let replica = match shift_seconds {
            0 => RedisProcess::options(),
            shift => super::clock::shifted(RedisProcess::options(), shift),
        };
        let replica = replica
            .args(REPLICATION)
            .args(["--replicaof", "127.0.0.1", &proxy.port().to_string()])
            .args(sentinel_user(&[
                "+@all",
                "-slaveof",
                "-replicaof",
                "+slaveof|no",
                "+replicaof|no",
            ]))
            .start();
        let (m, r) = (master.port(), replica.port());
        wait_for("R to sync with M through the proxy", READY_TIMEOUT, || {
            info_field(m, "connected_slaves").as_deref() == Some("1")
                && info_field(r, "master_link_status").as_deref() == Some("up")
        });
        let sentinels = (0..SENTINELS).map(|_| SentinelProcess::start(m)).collect();
        let group = Self {
            sentinels,
            replica,
            proxy,
            master,
        };
        let ports = group.sentinel_ports();
        group.wait_for(
            "every sentinel to know M, R and the others",
            READY_TIMEOUT,
            || {
                ports.iter().all(|&s| {
                    master_addr(s) == Some(m)
                        && sentinel_master(s).is_some_and(|f| {
                            f.get("num-slaves").map(String::as_str) == Some("1")
                                && f.get("num-other-sentinels").map(String::as_str) == Some("2")
                        })
                        && replica_addrs(s) == [format!("127.0.0.1:{r}")]
                })
            },
        );
        group
    }

    /// `redis://127.0.0.1:PORT` of every sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }

    /// The ports of the sentinels.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// M, the first master (still M after a failover, killed).
    pub fn master(&self) -> &RedisProcess {
        &self.master
    }

    /// M, to kill, pause or restart it directly.
    pub fn master_mut(&mut self) -> &mut RedisProcess {
        &mut self.master
    }

    /// R, the replica (the master after a failover).
    pub fn replica(&self) -> &RedisProcess {
        &self.replica
    }

    /// R, to kill, pause or restart it directly.
    pub fn replica_mut(&mut self) -> &mut RedisProcess {
        &mut self.replica
    }

    /// The proxy R replicates through.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// Each sentinel's `SENTINEL get-master-addr-by-name` (the port; None if it did not answer).
    pub fn master_ports_by_sentinel(&self) -> Vec<Option<u16>> {
        self.sentinels.iter().map(|s| master_addr(s.port)).collect()
    }

    /// Waits until R has acknowledged every write M took before the call (`WAIT 1`).
    pub fn wait_replica_caught_up(&self) {
        let m = self.master.port();
        self.wait_for(
            "R to acknowledge M's writes (WAIT 1)",
            CATCH_UP_TIMEOUT,
            || {
                let acked: redis::RedisResult<i64> = connect_checked(m)
                    .and_then(|mut con| redis::cmd("WAIT").arg(1).arg(500).query(&mut con));
                acked.is_ok_and(|n| n >= 1)
            },
        );
    }

    /// The proxy stops forwarding M's stream to R and R's acknowledgements to M, closing nothing:
    /// R keeps `master_link_status:up` (until `repl-timeout`, 5 min here) and misses M's writes.
    pub fn stall_replication(&self) {
        let port = info_field(self.replica.port(), "master_port");
        assert_eq!(
            port,
            Some(self.proxy.port().to_string()),
            "R no longer replicates through the proxy"
        );
        self.proxy.set(Mode::Blackhole);
    }

    /// The proxy forwards again: R catches up (the stalled stream resumes where it stopped).
    pub fn resume_replication(&self) {
        self.proxy.set(Mode::Forward);
    }

    /// `kill -9` on M, then waits until a majority of the sentinels report R as the master and
    /// R says `role:master`; returns how long that took. R is promoted even while replication
    /// is stalled: its link still looks up, and sentinels judge M by their own pings.
    ///
    /// The sentinels' `CLIENT KILL TYPE normal` on R closes every client connection R had.
    pub fn fail_over_by_killing_master(&mut self) -> Duration {
        let start = Instant::now();
        self.master.kill9();
        self.wait_replica_promoted();
        start.elapsed()
    }

    /// Waits until a majority of the sentinels report R as the master and R says `role:master`
    /// (after M was killed or paused for longer than `down-after-milliseconds`, 1 s).
    pub fn wait_replica_promoted(&self) {
        let r = self.replica.port();
        let ports = self.sentinel_ports();
        self.wait_for(
            "a majority of sentinels to promote R",
            FAILOVER_TIMEOUT,
            || {
                let agree = ports.iter().filter(|&&s| master_addr(s) == Some(r)).count();
                agree >= QUORUM && info_field(r, "role").as_deref() == Some("master")
            },
        );
    }

    /// SIGSTOP on M: it stops answering; the sentinels fail over to R if it stays so for more than
    /// 1 s (see [`wait_replica_promoted`](Self::wait_replica_promoted)), and once resumed M is
    /// turned into R's replica (directly, not through the proxy) some 8 to 20 s later.
    pub fn pause_master(&mut self) {
        self.master.pause();
    }

    /// SIGCONT on M after [`pause_master`](Self::pause_master).
    pub fn resume_master(&mut self) {
        self.master.resume();
    }

    /// The last lines of every sentinel's log, for a failure message.
    pub fn sentinel_logs(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| {
                let log = std::fs::read_to_string(s.dir.join("sentinel.log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n");
                format!("sentinel {}:\n{tail}", s.port)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// [`wait_for`], with the sentinels' logs in the panic message.
    fn wait_for(&self, what: &str, timeout: Duration, done: impl FnMut() -> bool) {
        if !poll(timeout, done) {
            panic!(
                "timed out after {timeout:?} waiting for {what}; the sentinels' logs:\n{}",
                self.sentinel_logs()
            );
        }
    }
}

/// `--user SENTINEL_USER on >PASS allchannels RULES...` for a server's arguments.
fn sentinel_user(rules: &[&str]) -> Vec<String> {
    let head = [
        "--user",
        SENTINEL_USER,
        "on",
        &format!(">{SENTINEL_PASS}"),
        "allchannels",
    ];
    head.iter().chain(rules).map(|s| s.to_string()).collect()
}

/// A `redis-server --sentinel` child on 127.0.0.1, in its own directory with a writable
/// `sentinel.conf`; killed (`kill -9`) and its directory removed on drop.
struct SentinelProcess {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl SentinelProcess {
    /// Starts a sentinel monitoring 127.0.0.1:`master_port` on a free port.
    fn start(master_port: u16) -> Self {
        let dir = fresh_dir();
        for _ in 0..PORT_ATTEMPTS {
            let mut sentinel = Self {
                child: None,
                port: free_port(),
                dir: dir.clone(),
            };
            if sentinel.spawn(master_port) {
                return sentinel;
            }
        }
        panic!("redis-server --sentinel did not start on any of {PORT_ATTEMPTS} free ports");
    }

    /// Writes `sentinel.conf`, spawns the sentinel and waits for PING; false if it exited at
    /// once (port taken).
    fn spawn(&mut self, master_port: u16) -> bool {
        let conf = self.dir.join("sentinel.conf");
        let text = format!(
            "port {port}\n\
             bind 127.0.0.1\n\
             daemonize no\n\
             dir \"{dir}\"\n\
             logfile \"sentinel.log\"\n\
             sentinel monitor {name} 127.0.0.1 {master_port} {QUORUM}\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 5000\n\
             sentinel parallel-syncs {name} 1\n\
             sentinel auth-user {name} {SENTINEL_USER}\n\
             sentinel auth-pass {name} {SENTINEL_PASS}\n",
            port = self.port,
            dir = self.dir.display(),
            name = MASTER_NAME,
        );
        std::fs::write(&conf, text).expect("write sentinel.conf");
        let mut cmd = Command::new("redis-server");
        cmd.arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "redis-server is not on PATH. The Sentinel tests need it: install it with \
                 `apt-get install -y redis-server` (Debian/Ubuntu) or `brew install redis` \
                 (macOS), then run the tests again."
            ),
            Err(e) => panic!("could not start redis-server --sentinel: {e}"),
        };
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < START_TIMEOUT {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_exited)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if ping(self.port) {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.kill9();
        false
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on unix
            let _ = child.wait();
        }
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `done` every [`POLL`] until it holds (true) or `timeout` passed (false).
fn poll(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let rounds = timeout.as_millis() / POLL.as_millis() + 1;
    for _ in 0..rounds {
        if done() {
            return true;
        }
        if start.elapsed() > timeout {
            break;
        }
        thread::sleep(POLL);
    }
    false
}

/// [`poll`], panicking on a timeout.
fn wait_for(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    assert!(
        poll(timeout, done),
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// A helper connection to 127.0.0.1:`port`, every call bounded by [`IO_TIMEOUT`].
fn connect_checked(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let con = client.get_connection_with_timeout(IO_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

/// `field` of `INFO replication` on the server at `port` (None if it did not answer).
fn info_field(port: u16, field: &str) -> Option<String> {
    let info: String = connect_checked(port)
        .and_then(|mut con| redis::cmd("INFO").arg("replication").query(&mut con))
        .ok()?;
    info.lines().find_map(|line| {
        let (key, value) = line.trim().split_once(':')?;
        (key == field).then(|| value.to_owned())
    })
}

/// The master's port by the sentinel at `port` (its host is always 127.0.0.1 here).
fn master_addr(port: u16) -> Option<u16> {
    let addr: Option<(String, u16)> = connect_checked(port)
        .and_then(|mut con| {
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(MASTER_NAME)
                .query(&mut con)
        })
        .ok()?;
    addr.map(|(_, port)| port)
}

/// `SENTINEL master` fields by the sentinel at `port`.
fn sentinel_master(port: u16) -> Option<HashMap<String, String>> {
    connect_checked(port)
        .and_then(|mut con| {
            redis::cmd("SENTINEL")
                .arg("master")
                .arg(MASTER_NAME)
                .query(&mut con)
        })
        .ok()
}

/// `ip:port` of each replica by the sentinel at `port`.
fn replica_addrs(port: u16) -> Vec<String> {
    let replicas: Vec<HashMap<String, String>> = connect_checked(port)
        .and_then(|mut con| {
            redis::cmd("SENTINEL")
                .arg("replicas")
                .arg(MASTER_NAME)
                .query(&mut con)
        })
        .unwrap_or_default();
    replicas
        .iter()
        .filter_map(|r| Some(format!("{}:{}", r.get("ip")?, r.get("port")?)))
        .collect()
}

fn fresh_dir() -> PathBuf {
    super::server::fresh_dir_named("fencelock-sentinel")
}
