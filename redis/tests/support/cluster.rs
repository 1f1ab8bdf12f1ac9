//! A throwaway Redis Cluster on 127.0.0.1: `masters` [`RedisProcess`]es (no replicas) joined by
//! `redis-cli --cluster create`, with one slot movable at a time (at once, or step by step so
//! that clients meet `ASK` and then `MOVED`) and masters killed and restarted. Dropped, it kills
//! every node and removes their directories (each [`RedisProcess`] does).
//!
//! Uses the sibling module `server` (`super::server`), so it can be included with `#[path]` next
//! to it, as the bench does.
//!
//! Every wait here is bounded in count and time. Only 127.0.0.1 is ever used.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::ErrorKind;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use redis::Value;

use super::server::{Persistence, RedisProcess};

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;
/// How long `redis-cli --cluster create` may take before it is killed.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long every node may take to agree on the slots (after a create, a move, a restart).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the live masters may take to flag a killed one `fail` (node timeout 1 s, then a
/// majority's reports through gossip).
const FAIL_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one helper connection's connect, read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two polls of a wait.
const POLL: Duration = Duration::from_millis(50);
/// Keys moved by one `MIGRATE`.
const MIGRATE_BATCH: usize = 100;
/// Bound on the `GETKEYSINSLOT` + `MIGRATE` rounds of one slot.
const MIGRATE_ROUNDS: usize = 10_000;
/// Bound on the candidate names tried by [`RedisCluster::names_on_every_master`].
const NAME_CANDIDATES: usize = 1_000_000;

/// `N` masters on 127.0.0.1 sharing the 16384 slots, no replicas.
pub struct RedisCluster {
    nodes: Vec<RedisProcess>,
    /// `CLUSTER MYID` of each node, read at start (so it is known after a kill too).
    ids: Vec<String>,
}

impl RedisCluster {
    /// Starts `masters` nodes that keep nothing across restarts, creates the cluster and waits
    /// until every node serves and agrees on all 16384 slots.
    pub fn start(masters: usize) -> Self {
        Self::start_with(masters, Persistence::None)
    }

    /// As [`start`](Self::start), each node with `persistence`.
    pub fn start_with(masters: usize, persistence: Persistence) -> Self {
        assert!(
            masters >= 3,
            "redis-cli --cluster create needs at least 3 masters"
        );
        let nodes: Vec<RedisProcess> = (0..masters)
            .map(|_| {
                RedisProcess::options()
                    .persistence(persistence)
                    // `require-full-coverage no`: the slots of a dead master fail, the others
                    // keep working (with `yes`, the whole cluster refuses once one is `fail`).
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                        "--cluster-require-full-coverage",
                        "no",
                    ])
                    .start()
            })
            .collect();
        create(&nodes);
        let ids = nodes
            .iter()
            .map(|node| {
                redis::cmd("CLUSTER")
                    .arg("MYID")
                    .query(&mut connect(node.port()))
                    .unwrap_or_else(|e| panic!("CLUSTER MYID on {}: {e}", node.port()))
            })
            .collect();
        let cluster = Self { nodes, ids };
        cluster.wait_converged();
        cluster
    }

    /// Number of masters.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// `redis://127.0.0.1:PORT` of every node, in index order (a `ClusterClient`'s seeds).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisProcess::url).collect()
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &RedisProcess {
        &self.nodes[i]
    }

    /// Node `i`, to kill, pause or restart it directly (no waiting for the cluster to notice).
    pub fn node_mut(&mut self, i: usize) -> &mut RedisProcess {
        &mut self.nodes[i]
    }

    /// Node `i`'s cluster id (`CLUSTER MYID`, read at start).
    pub fn node_id(&self, i: usize) -> String {
        self.ids[i].clone()
    }

    /// The hash slot of `key`: CRC16/XMODEM of its hash tag (the first non-empty `{...}`), or of
    /// the whole key, mod 16384. The library's keys are `fencelock:{NAME}:...`, so a lock's slot
    /// is `slot_of(NAME)`.
    pub fn slot_of(key: &str) -> u16 {
        crc16_xmodem(hash_tag(key.as_bytes())) % SLOTS
    }

    /// Index of the master serving `slot`, from `CLUSTER SLOTS` on the first live node that
    /// answers (a dead master still owns its slots: there is no replica to take them over).
    pub fn owner_of_slot(&self, slot: u16) -> usize {
        let (port, map) = self.any_slot_map();
        let owner = owner_in(&map, slot)
            .unwrap_or_else(|| panic!("slot {slot} has no owner in the view of {port}"));
        self.index_of_port(owner)
    }

    /// Lock names (no braces) such that each master serves `count_per_master` of them: master
    /// `i`'s are `names[i * count_per_master..(i + 1) * count_per_master]`.
    pub fn names_on_every_master(&self, count_per_master: usize) -> Vec<String> {
        let (_, map) = self.any_slot_map();
        let mut per_master = vec![Vec::new(); self.len()];
        let mut missing = self.len() * count_per_master;
        for k in 0..NAME_CANDIDATES {
            if missing == 0 {
                break;
            }
            let name = format!("lock-{k}");
            let owner = owner_in(&map, Self::slot_of(&name)).expect("full coverage");
            let names = &mut per_master[self.index_of_port(owner)];
            if names.len() < count_per_master {
                names.push(name);
                missing -= 1;
            }
        }
        assert_eq!(
            missing, 0,
            "some master owns too few slots for the names asked"
        );
        per_master.concat()
    }

    /// Moves `slot` with all its keys from its owner to master `to`, and waits until every live
    /// node agrees.
    pub fn move_slot(&mut self, slot: u16, to: usize) {
        self.begin_move_slot(slot, to);
        self.finish_move_slot(slot, to);
    }

    /// First step of a move: `IMPORTING` on `to`, then `MIGRATING` on the owner; no key moves.
    /// The owner still serves a command whose keys it all has, answers `ASK` (to `to`) to one
    /// whose keys it has none of, and `TRYAGAIN` to one with some keys missing. `to`, asked
    /// (`ASKING`), serves single-key commands and multi-key ones whose keys it all has, and
    /// answers `TRYAGAIN` to the rest: a script on a free lock's keys fails until the move ends.
    pub fn begin_move_slot(&mut self, slot: u16, to: usize) {
        let from = self.owner_of_slot(slot);
        assert_ne!(from, to, "slot {slot} is already on master {to}");
        setslot(self.node(to).port(), slot, "IMPORTING", &self.ids[from]);
        setslot(self.node(from).port(), slot, "MIGRATING", &self.ids[to]);
    }

    /// Optional middle step (after [`begin_move_slot`](Self::begin_move_slot)): `MIGRATE`s
    /// every key of `slot` from its owner to `to`, leaving the slot owned by the owner. Commands
    /// on the slot's existing keys now get `ASK` from the owner and are served by `to`.
    pub fn migrate_slot_keys(&mut self, slot: u16, to: usize) {
        let from = self.owner_of_slot(slot);
        assert_ne!(from, to, "slot {slot} is already on master {to}");
        let (src, dst) = (self.node(from).port(), self.node(to).port());
        let mut con = connect(src);
        for _ in 0..MIGRATE_ROUNDS {
            let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(MIGRATE_BATCH)
                .query(&mut con)
                .unwrap_or_else(|e| panic!("CLUSTER GETKEYSINSLOT {slot} on {src}: {e}"));
            if keys.is_empty() {
                return;
            }
            let _: Value = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(dst)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query(&mut con)
                .unwrap_or_else(|e| panic!("MIGRATE of slot {slot} from {src} to {dst}: {e}"));
        }
        panic!("slot {slot} not emptied in {MIGRATE_ROUNDS} rounds");
    }

    /// Last step of a move (after [`begin_move_slot`](Self::begin_move_slot)): `MIGRATE`s the
    /// keys still on the owner, then `SETSLOT NODE` on `to`, on the owner and on every other live
    /// master (clients now get `MOVED` to `to`), and waits until every live node agrees.
    pub fn finish_move_slot(&mut self, slot: u16, to: usize) {
        self.migrate_slot_keys(slot, to);
        let from = self.owner_of_slot(slot);
        let id = self.ids[to].clone();
        setslot(self.node(to).port(), slot, "NODE", &id);
        setslot(self.node(from).port(), slot, "NODE", &id);
        for i in 0..self.len() {
            if i != from && i != to && self.is_running(i) {
                setslot(self.node(i).port(), slot, "NODE", &id);
            }
        }
        self.wait_converged();
        let owner = self.owner_of_slot(slot);
        assert_eq!(
            owner, to,
            "slot {slot} still on master {owner} after the move"
        );
    }

    /// `kill -9` on master `i`, then waits until the live masters flag it `fail` and still say
    /// `cluster_state:ok`: its slots fail (no replica takes them over), the others keep working
    /// (`require-full-coverage no`). About 2 s with a 1 s node timeout.
    pub fn kill_master(&mut self, i: usize) {
        self.nodes[i].kill9();
        let id = self.ids[i].clone();
        self.wait_for(
            "the live masters to flag the killed one fail",
            FAIL_TIMEOUT,
            |c| {
                c.live().all(|j| {
                    let port = c.node(j).port();
                    cluster_info_ok(port)
                        && flags_of(port, &id).is_some_and(|f| has_flag(&f, "fail"))
                })
            },
        );
    }

    /// Restarts master `i` (after [`kill_master`](Self::kill_master)) on its port and directory
    /// (its `nodes.conf` keeps its id and slots), and waits until no node flags it failing and
    /// every node agrees on the slots again. Its keys are gone unless it persisted them.
    pub fn restart_master(&mut self, i: usize) {
        self.nodes[i].restart();
        let id = self.ids[i].clone();
        self.wait_for("the restarted master to rejoin", CONVERGE_TIMEOUT, |c| {
            c.live().all(|j| {
                flags_of(c.node(j).port(), &id)
                    .is_some_and(|f| !has_flag(&f, "fail") && !has_flag(&f, "fail?"))
            })
        });
        self.wait_converged();
    }

    /// Waits until every live node says `cluster_state:ok` and reports the same owner for each
    /// of the 16384 slots in `CLUSTER SLOTS`.
    pub fn wait_converged(&self) {
        self.wait_for(
            "every node to agree on all 16384 slots",
            CONVERGE_TIMEOUT,
            |c| {
                let mut first: Option<Vec<(u16, u16, u16)>> = None;
                for j in c.live() {
                    let port = c.node(j).port();
                    if !cluster_info_ok(port) {
                        return false;
                    }
                    let Ok(map) = slot_map(port) else {
                        return false;
                    };
                    let covered: u32 = map.iter().map(|&(a, b, _)| u32::from(b - a) + 1).sum();
                    if covered != u32::from(SLOTS) || first.as_ref().is_some_and(|f| *f != map) {
                        return false;
                    }
                    first = Some(map);
                }
                first.is_some()
            },
        );
    }

    /// Whether node `i`'s process runs (it may still be paused).
    fn is_running(&self, i: usize) -> bool {
        self.nodes[i].pid().is_some()
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).filter(|&i| self.is_running(i))
    }

    /// The slot map of the first live node that answers, with its port.
    fn any_slot_map(&self) -> (u16, Vec<(u16, u16, u16)>) {
        let mut errors = Vec::new();
        for i in self.live() {
            let port = self.node(i).port();
            match slot_map(port) {
                Ok(map) => return (port, map),
                Err(e) => errors.push(format!("{port}: {e}")),
            }
        }
        panic!("no live node answered CLUSTER SLOTS: {errors:?}");
    }

    fn index_of_port(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|node| node.port() == port)
            .unwrap_or_else(|| panic!("port {port} is not a node of this cluster"))
    }

    /// Polls `done` every [`POLL`] until it holds; panics after `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, mut done: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        let rounds = timeout.as_millis() / POLL.as_millis() + 1;
        for _ in 0..rounds {
            if done(self) {
                return;
            }
            if start.elapsed() > timeout {
                break;
            }
            thread::sleep(POLL);
        }
        let views: Vec<String> = self
            .live()
            .map(|i| {
                let port = self.node(i).port();
                let nodes: redis::RedisResult<String> = connect_checked(port)
                    .and_then(|mut con| redis::cmd("CLUSTER").arg("NODES").query(&mut con));
                format!(
                    "node {i} ({port}):\n{}",
                    nodes.unwrap_or_else(|e| e.to_string())
                )
            })
            .collect();
        panic!(
            "timed out after {:?} waiting for {what}; CLUSTER NODES:\n{}",
            start.elapsed(),
            views.join("\n")
        );
    }
}

/// `redis-cli --cluster create` over `nodes`, killed after [`CREATE_TIMEOUT`].
fn create(nodes: &[RedisProcess]) {
    let log_path = nodes[0].dir().join("cluster-create.log");
    let log = File::create(&log_path).expect("create the redis-cli log");
    let mut cmd = Command::new("redis-cli");
    cmd.args(["--cluster", "create"])
        .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log file"))
        .stderr(log);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "redis-cli is not on PATH. The cluster tests need it: install it with \
             `apt-get install -y redis-tools` (Debian/Ubuntu) or `brew install redis` (macOS), \
             then run the tests again."
        ),
        Err(e) => panic!("could not start redis-cli: {e}"),
    };
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() < CREATE_TIMEOUT => thread::sleep(POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    match status {
        Some(status) if status.success() => {}
        Some(status) => panic!("redis-cli --cluster create failed ({status}):\n{output}"),
        None => panic!("redis-cli --cluster create killed after {CREATE_TIMEOUT:?}:\n{output}"),
    }
}

/// A helper connection to 127.0.0.1:`port`, every call bounded by [`IO_TIMEOUT`].
fn connect_checked(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let con = client.get_connection_with_timeout(IO_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

fn connect(port: u16) -> redis::Connection {
    connect_checked(port).unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

fn setslot(port: u16, slot: u16, state: &str, id: &str) {
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg(state)
        .arg(id)
        .query(&mut connect(port))
        .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {state} {id} on {port}: {e}"));
}

/// Whether the node on `port` answers `CLUSTER INFO` with `cluster_state:ok`.
fn cluster_info_ok(port: u16) -> bool {
    let info: redis::RedisResult<String> =
        connect_checked(port).and_then(|mut con| redis::cmd("CLUSTER").arg("INFO").query(&mut con));
    info.is_ok_and(|info| info.lines().any(|l| l.trim() == "cluster_state:ok"))
}

/// The flags (`master,fail`, say) that the node on `port` gives node `id` in `CLUSTER NODES`.
fn flags_of(port: u16, id: &str) -> Option<String> {
    let nodes: String = connect_checked(port)
        .and_then(|mut con| redis::cmd("CLUSTER").arg("NODES").query(&mut con))
        .ok()?;
    nodes.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next() == Some(id)).then(|| fields.nth(1).unwrap_or("").to_owned())
    })
}

fn has_flag(flags: &str, flag: &str) -> bool {
    flags.split(',').any(|f| f == flag)
}

/// `CLUSTER SLOTS` of the node on `port`: `(first, last, owner's port)`, sorted.
fn slot_map(port: u16) -> redis::RedisResult<Vec<(u16, u16, u16)>> {
    let reply: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(&mut connect_checked(port)?)?;
    let bad = || -> redis::RedisError {
        (redis::ErrorKind::Parse, "unexpected CLUSTER SLOTS reply").into()
    };
    let Value::Array(ranges) = reply else {
        return Err(bad());
    };
    let mut map = BTreeMap::new();
    for range in ranges {
        let Value::Array(range) = range else {
            return Err(bad());
        };
        match range.as_slice() {
            [Value::Int(first), Value::Int(last), Value::Array(master), ..] => {
                let Some(Value::Int(owner)) = master.get(1) else {
                    return Err(bad());
                };
                let as_u16 = |n: i64| u16::try_from(n).map_err(|_| bad());
                map.insert(as_u16(*first)?, (as_u16(*last)?, as_u16(*owner)?));
            }
            _ => return Err(bad()),
        }
    }
    Ok(map
        .into_iter()
        .map(|(a, (b, owner))| (a, b, owner))
        .collect())
}

fn owner_in(map: &[(u16, u16, u16)], slot: u16) -> Option<u16> {
    map.iter()
        .find(|&&(a, b, _)| (a..=b).contains(&slot))
        .map(|&(_, _, owner)| owner)
}

/// The part of `key` that is hashed: the bytes between the first `{` and the next `}`, if
/// there are any; else the whole key.
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), as Redis Cluster hashes keys.
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}
