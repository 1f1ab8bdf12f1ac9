//! Waiting in line for a held lock (`acquire_timeout`) on a real `redis-server`: first come,
//! first served, no barging, waiters that give up, die (`kill -9` of another process), or are
//! stopped, a crashed holder, a server restart, the request rate of a waiter, keys that expire,
//! and the same on a quorum of three.
//!
//! Synchronisation is by observing the server (the queue's `ZCARD`, the lock key), never by
//! sleeping; every wait is bounded in count and time. "Woken, not polling" is shown with a long
//! liveness window (heartbeat 10 s): a waiter that was not woken would take that long.

mod support;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fencelock::FencingToken;
use fencelock_redis::{LockServer, RedisLease, RedisLock};
use support::{handle, quick_builder, raw, RedisProcess};

/// The TTL of every lease that must not run out during a test.
const TTL: Duration = Duration::from_secs(30);
/// Generous bound on anything that should take a fraction of a second.
const SOON: Duration = Duration::from_secs(5);
/// A liveness window whose heartbeat (10 s) is far longer than [`SOON`]: a waiter that gets the
/// lock sooner than that was woken, not polling.
const SLOW_HEARTBEAT: Duration = Duration::from_secs(30);

/// The child process's settings, passed by environment (see [`child_waiter`]).
const CHILD_URL: &str = "FENCELOCK_WAITING_CHILD_URL";
const CHILD_NAME: &str = "FENCELOCK_WAITING_CHILD_NAME";
const CHILD_LIVENESS_MS: &str = "FENCELOCK_WAITING_CHILD_LIVENESS_MS";
const CHILD_WAIT_MS: &str = "FENCELOCK_WAITING_CHILD_WAIT_MS";
/// What the child prints, with its token, once it got the lock.
const CHILD_GOT_IT: &str = "child waiter got the lock with token";

fn queue_key(name: &str) -> String {
    format!("fencelock:{{{name}}}:queue")
}

fn alive_key(name: &str) -> String {
    format!("fencelock:{{{name}}}:alive")
}

fn lock_key(name: &str) -> String {
    format!("fencelock:{{{name}}}:lock")
}

fn queued(redis: &RedisProcess, name: &str) -> usize {
    redis::cmd("ZCARD")
        .arg(queue_key(name))
        .query(&mut raw(redis))
        .expect("ZCARD")
}

fn queue_members(redis: &RedisProcess, name: &str) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg(queue_key(name))
        .arg(0)
        .arg(-1)
        .query(&mut raw(redis))
        .expect("ZRANGE")
}

/// Polls `condition` every 5 ms until it holds, for at most `within`; panics with `what` if not.
fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    for _ in 0..100_000 {
        if condition() {
            return;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        thread::sleep(Duration::from_millis(5));
    }
    panic!("gave up polling: {what}");
}

/// Waits until the queue of `name` holds `n` waiters.
fn wait_queued(redis: &RedisProcess, name: &str, n: usize) {
    wait_until(&format!("{n} waiter(s) queued for {name}"), SOON, || {
        queued(redis, name) == n
    });
}

/// Joins `threads`, failing if they are not all done within `within` (a hang is a failure).
fn join_within<T>(threads: Vec<JoinHandle<T>>, within: Duration) -> Vec<T> {
    let deadline = Instant::now() + within;
    wait_until(
        "every thread finished",
        within + Duration::from_millis(100),
        || threads.iter().all(JoinHandle::is_finished) || Instant::now() >= deadline,
    );
    assert!(
        threads.iter().all(JoinHandle::is_finished),
        "threads still running after {within:?}"
    );
    threads
        .into_iter()
        .map(|t| t.join().expect("thread panicked"))
        .collect()
}

fn hold(server: &LockServer, name: &str, ttl: Duration) -> RedisLease {
    server
        .lock(name)
        .unwrap()
        .try_acquire(ttl)
        .unwrap()
        .expect("the lock is free")
}

/// A handle with a liveness window of its own.
fn handle_with_liveness(redis: &RedisProcess, liveness: Duration) -> LockServer {
    quick_builder()
        .liveness(liveness)
        .open(&redis.url())
        .unwrap()
}

/// Starts a thread that waits for `lock` and reports (when it got the lock, its token); the
/// lease is released at once.
fn spawn_waiter(lock: RedisLock, wait: Duration) -> JoinHandle<Option<(Instant, FencingToken)>> {
    thread::spawn(move || {
        let lease = lock
            .acquire_timeout(TTL, wait)
            .expect("no error while waiting")?;
        let got = (Instant::now(), lease.token());
        lease.release().expect("release");
        Some(got)
    })
}

/// A waiter in another process: this test binary, running [`child_waiter`]. Killed on drop.
struct ChildWaiter {
    child: Child,
}

impl ChildWaiter {
    fn spawn(redis: &RedisProcess, name: &str, liveness: Duration, wait: Duration) -> Self {
        let exe = std::env::current_exe().expect("the test binary");
        let child = Command::new(exe)
            .args([
                "--exact",
                "child_waiter",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_URL, redis.url())
            .env(CHILD_NAME, name)
            .env(CHILD_LIVENESS_MS, liveness.as_millis().to_string())
            .env(CHILD_WAIT_MS, wait.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the child waiter");
        Self { child }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// SIGKILL, and reaped.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The token the child got the lock with, if it exited successfully within `within`
    /// after getting it.
    fn got_lock_within(&mut self, within: Duration) -> Option<FencingToken> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let mut out = String::new();
                if let Some(mut stdout) = self.child.stdout.take() {
                    stdout
                        .read_to_string(&mut out)
                        .expect("read the child's output");
                }
                // libtest may print its own `test child_waiter ... ` before it on the line.
                let token = out.lines().find_map(|line| {
                    let (_, after) = line.split_once(CHILD_GOT_IT)?;
                    let token = after.split_whitespace().next()?.parse().ok()?;
                    Some(FencingToken::new(token))
                });
                if token.is_none() || !status.success() {
                    eprintln!("child waiter: {status}, output:\n{out}");
                }
                return token.filter(|_| status.success());
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for ChildWaiter {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Not a test of its own: the waiter process of the tests that kill or stop one. Waits for the
/// lock named in the environment, must get it, and releases it. Does nothing when run directly.
#[test]
#[ignore = "the waiter process the other tests start; does nothing when run by hand"]
fn child_waiter() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let var = |key: &str| std::env::var(key).expect(key);
    let ms = |key: &str| Duration::from_millis(var(key).parse().expect(key));
    let server = quick_builder()
        .liveness(ms(CHILD_LIVENESS_MS))
        .open(&url)
        .unwrap();
    let lease = server
        .lock(&var(CHILD_NAME))
        .unwrap()
        .acquire_timeout(TTL, ms(CHILD_WAIT_MS))
        .expect("no error while waiting")
        .expect("the child waiter got the lock");
    println!("{CHILD_GOT_IT} {}", lease.token());
    lease.release().expect("release");
}

/// Six waiters, each queued after the previous one, get the lock in that order, each with a
/// larger token than the one before.
#[test]
fn waiters_are_served_in_the_order_they_started_waiting() {
    let redis = RedisProcess::start();
    let name = "order";
    let holder = hold(&handle(&redis), name, TTL);
    let served = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for i in 0..6 {
        let lock = handle(&redis).lock(name).unwrap();
        let served = Arc::clone(&served);
        threads.push(thread::spawn(move || {
            let lease = lock
                .acquire_timeout(TTL, Duration::from_secs(20))
                .expect("no error while waiting")
                .expect("served before the wait ran out");
            served.lock().unwrap().push((i, lease.token()));
            lease.release().expect("release");
        }));
        wait_queued(&redis, name, i + 1);
    }
    let first = holder.token();
    holder.release().unwrap();
    join_within(threads, Duration::from_secs(15));

    let served = served.lock().unwrap();
    let order: Vec<usize> = served.iter().map(|&(i, _)| i).collect();
    assert_eq!(order, (0..6).collect::<Vec<_>>(), "served out of order");
    let mut previous = first;
    for &(i, token) in served.iter() {
        assert!(token > previous, "waiter {i}: token {token} !> {previous}");
        previous = token;
    }
    assert_eq!(queued(&redis, name), 0);
}

/// With a waiter queued, a `try_acquire` never takes the lock ahead of it: neither right after
/// the holder releases (the release handed the lock over), nor when the holder's lease ran out
/// while the waiter (another process, stopped with SIGSTOP so it cannot step) was still live —
/// the try hands the lock to the waiter, which gets it once it runs again.
#[test]
fn try_acquire_does_not_barge_past_live_waiters() {
    let redis = RedisProcess::start();
    let name = "no-barging";
    let other = handle(&redis).lock(name).unwrap();

    // A release hands the lock over in the same script. The waiter holds it until the try is
    // done, so the try cannot find it free after the waiter's own release.
    let holder = hold(&handle(&redis), name, TTL);
    let lock = handle(&redis).lock(name).unwrap();
    let (tried, try_done) = mpsc::channel::<()>();
    let waiter = thread::spawn(move || {
        let lease = lock
            .acquire_timeout(TTL, Duration::from_secs(10))
            .expect("no error while waiting")?;
        let _ = try_done.recv_timeout(SOON);
        let token = lease.token();
        lease.release().expect("release");
        Some(token)
    });
    wait_queued(&redis, name, 1);
    let released = holder.token();
    holder.release().unwrap();
    let barged = other.try_acquire(TTL).unwrap();
    tried.send(()).unwrap();
    assert!(barged.is_none(), "try_acquire took the lock from a waiter");
    let token = join_within(vec![waiter], SOON)[0].expect("the waiter got the lock");
    assert!(token > released, "{token} !> {released}");

    // The lock falls free by the holder's TTL, with nobody releasing it, while the waiter is
    // live but cannot step.
    let holder = hold(&handle(&redis), name, Duration::from_secs(1));
    let crashed = holder.token();
    std::mem::forget(holder); // a crashed holder: no release
    let mut child = ChildWaiter::spawn(&redis, name, SLOW_HEARTBEAT, Duration::from_secs(20));
    wait_queued(&redis, name, 1);
    child.signal("-STOP");
    let mut con = raw(&redis);
    wait_until("the holder's lease ran out", SOON, || {
        let exists: bool = redis::cmd("EXISTS")
            .arg(lock_key(name))
            .query(&mut con)
            .unwrap();
        !exists
    });
    let barged = other.try_acquire(TTL).unwrap();
    child.signal("-CONT");
    assert!(
        barged.is_none(),
        "try_acquire took a free lock that a live waiter queues for"
    );
    let token = child
        .got_lock_within(Duration::from_secs(10))
        .expect("the stopped waiter did not get the lock once resumed");
    assert!(token > crashed, "{token} !> {crashed}");
}

/// A waiter whose wait runs out leaves the queue before `acquire_timeout` returns; a release
/// after that goes straight to the next waiter, not to the one that left (both have a slow
/// heartbeat: the next one is woken by the release or not at all within the bound).
#[test]
fn a_waiter_whose_wait_runs_out_leaves_the_queue() {
    let redis = RedisProcess::start();
    let name = "gives-up";
    let holder = hold(&handle(&redis), name, TTL);

    let quitter = spawn_waiter(
        handle(&redis).lock(name).unwrap(),
        Duration::from_millis(300),
    );
    wait_queued(&redis, name, 1);
    assert_eq!(join_within(vec![quitter], SOON)[0], None);
    assert_eq!(
        queued(&redis, name),
        0,
        "it is still queued after it returned"
    );
    let alive: usize = redis::cmd("ZCARD")
        .arg(alive_key(name))
        .query(&mut raw(&redis))
        .unwrap();
    assert_eq!(alive, 0, "its liveness entry is still there");

    // Two waiters: the first gives up, the second gets the release.
    let slow = |wait| {
        spawn_waiter(
            handle_with_liveness(&redis, SLOW_HEARTBEAT)
                .lock(name)
                .unwrap(),
            wait,
        )
    };
    let quitter = slow(Duration::from_millis(600));
    wait_queued(&redis, name, 1);
    let stayer = slow(Duration::from_secs(20));
    wait_queued(&redis, name, 2);
    assert_eq!(join_within(vec![quitter], SOON)[0], None);
    assert_eq!(queued(&redis, name), 1, "the first waiter did not leave");
    let released = Instant::now();
    holder.release().unwrap();
    let (got, _) = join_within(vec![stayer], Duration::from_secs(20))[0]
        .expect("the second waiter got the lock");
    let took = got - released;
    assert!(
        took < SOON,
        "the second waiter got the lock {took:?} after the release"
    );
}

/// A waiter in another process, killed with SIGKILL while queued, is dropped from the queue,
/// and the live waiter behind it gets the released lock within the dead one's liveness window
/// (300 ms; bound asserted generously).
#[test]
fn a_waiter_killed_with_kill_9_is_dropped_and_costs_at_most_the_window() {
    let redis = RedisProcess::start();
    let name = "dead-waiter";
    let holder = hold(&handle(&redis), name, TTL);
    let mut child = ChildWaiter::spawn(&redis, name, Duration::from_millis(300), TTL);
    wait_queued(&redis, name, 1);
    let dead = queue_members(&redis, name).remove(0);
    child.kill9();

    let waiter = spawn_waiter(handle(&redis).lock(name).unwrap(), Duration::from_secs(20));
    wait_until("the live waiter queued behind the dead one", SOON, || {
        queue_members(&redis, name).iter().any(|m| *m != dead)
    });
    let released = Instant::now();
    holder.release().unwrap();
    let (got, _) = join_within(vec![waiter], Duration::from_secs(20))[0]
        .expect("the live waiter got the lock");
    let took = got - released;
    eprintln!("the live waiter got the lock {took:?} after the release");
    assert!(
        took < SOON,
        "the dead waiter held up the queue for {took:?}"
    );

    let mut con = raw(&redis);
    for key in [queue_key(name), alive_key(name)] {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(&key)
            .arg(&dead)
            .query(&mut con)
            .unwrap();
        assert_eq!(score, None, "the dead waiter is still in {key}");
    }
}

/// A holder that crashed (its lease never released) passes the lock, once its TTL has run out,
/// to the waiter, with a larger token.
#[test]
fn a_crashed_holder_passes_the_lock_to_the_first_waiter() {
    let redis = RedisProcess::start();
    let name = "crashed-holder";
    let holder = hold(&handle(&redis), name, Duration::from_millis(500));
    let crashed = holder.token();
    std::mem::forget(holder);
    let started = Instant::now();
    let lease = handle(&redis)
        .lock(name)
        .unwrap()
        .acquire_timeout(TTL, Duration::from_secs(10))
        .unwrap()
        .expect("the waiter got the lock");
    let took = started.elapsed();
    assert!(took < SOON, "took {took:?}");
    assert!(lease.token() > crashed, "{} !> {crashed}", lease.token());
    lease.release().unwrap();
}

/// A restart without persistence (queue, lock and script cache lost) while three waiters wait:
/// each gets the lock in turn, one at a time, none errors, none hangs.
#[test]
fn a_server_restart_while_waiters_wait_loses_nobody() {
    let mut redis = RedisProcess::start();
    let name = "restart";
    let holder = hold(&handle(&redis), name, TTL);
    let inside = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 0..3 {
        let lock = handle(&redis).lock(name).unwrap();
        let inside = Arc::clone(&inside);
        threads.push(thread::spawn(move || {
            let lease = lock
                .acquire_timeout(TTL, Duration::from_secs(15))
                .expect("no error while waiting")
                .unwrap_or_else(|| panic!("waiter {i} never got the lock"));
            assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
            thread::sleep(Duration::from_millis(20));
            inside.store(false, Ordering::SeqCst);
            lease.release().expect("release");
        }));
        wait_queued(&redis, name, i + 1);
    }
    redis.kill9();
    redis.restart();
    join_within(threads, Duration::from_secs(15));
    drop(holder); // its lock was lost with the server
}

/// Eight waiters waiting 2 s each for a held lock send few requests: one step and one blocking
/// pop per heartbeat (a third of the 1 s liveness window) — not a polling loop.
#[test]
fn waiting_sends_a_few_requests_a_second() {
    let redis = RedisProcess::start();
    let name = "request-rate";
    let _holder = hold(&handle(&redis), name, TTL);
    let mut con = raw(&redis);
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query::<()>(&mut con)
        .unwrap();
    let threads = (0..8)
        .map(|_| spawn_waiter(handle(&redis).lock(name).unwrap(), Duration::from_secs(2)))
        .collect();
    for got in join_within(threads, Duration::from_secs(10)) {
        assert_eq!(got, None, "the lock is held throughout");
    }
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut con)
        .unwrap();
    let calls: u64 = info
        .lines()
        .filter_map(|line| {
            let (command, stats) = line.trim().split_once(':')?;
            ["cmdstat_evalsha", "cmdstat_eval", "cmdstat_blpop"]
                .contains(&command)
                .then_some(stats)
        })
        .filter_map(|stats| {
            let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="))?;
            calls.parse::<u64>().ok()
        })
        .sum();
    eprintln!("8 waiters × 2 s: {calls} requests (EVALSHA + EVAL + BLPOP)");
    assert!(calls > 0, "no requests counted: {info}");
    assert!(calls <= 160, "{calls} requests in 2 s from 8 waiters");
}

/// A waiter that dies leaves no queue keys behind: the queue, the liveness set and any wake-up
/// list expire by themselves within twice the liveness window (100 ms here).
#[test]
fn queue_keys_expire_when_idle() {
    let redis = RedisProcess::start();
    let name = "idle-keys";
    let holder = hold(&handle(&redis), name, TTL);
    let mut child = ChildWaiter::spawn(&redis, name, Duration::from_millis(100), TTL);
    wait_queued(&redis, name, 1);
    child.kill9();
    // Released at once: the lock may be handed to the dead waiter (a wake-up list for it).
    holder.release().unwrap();

    let mut con = raw(&redis);
    let mut left = Vec::new();
    wait_until("no queue keys left", Duration::from_secs(3), || {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("fencelock:{{{name}}}:*"))
            .query(&mut con)
            .unwrap();
        left = keys
            .into_iter()
            .filter(|k| k.ends_with(":queue") || k.ends_with(":alive") || k.contains(":wake:"))
            .collect();
        left.is_empty()
    });
    assert!(left.is_empty(), "{left:?}");
}

/// A waiter with a 10 s heartbeat gets a released lock within a few seconds: the release woke
/// it (one server).
#[test]
fn a_waiter_is_woken_by_the_release_not_by_its_heartbeat() {
    let redis = RedisProcess::start();
    let name = "woken";
    let holder = hold(&handle(&redis), name, TTL);
    let lock = handle_with_liveness(&redis, SLOW_HEARTBEAT)
        .lock(name)
        .unwrap();
    let waiter = spawn_waiter(lock, Duration::from_secs(20));
    wait_queued(&redis, name, 1);
    let released = Instant::now();
    holder.release().unwrap();
    let (got, _) =
        join_within(vec![waiter], Duration::from_secs(25))[0].expect("the waiter got the lock");
    let took = got - released;
    eprintln!("woken {took:?} after the release");
    assert!(took < SOON, "not woken by the release: {took:?}");
}

fn quorum_of_three() -> (Vec<RedisProcess>, Vec<String>) {
    let servers: Vec<RedisProcess> = (0..3).map(|_| RedisProcess::start()).collect();
    let urls = servers.iter().map(RedisProcess::url).collect();
    (servers, urls)
}

fn quorum(urls: &[String], liveness: Option<Duration>) -> LockServer {
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let builder = quick_builder();
    let builder = match liveness {
        Some(window) => builder.liveness(window),
        None => builder,
    };
    builder.quorum(&urls).unwrap()
}

/// On a quorum of three, six threads taking turns on one lock for 1.5 s all get it a fair
/// share (at least a third of the mean), never two at once, without errors.
#[test]
fn quorum_waiters_are_woken_and_none_starves() {
    let (_servers, urls) = quorum_of_three();
    let name = "quorum-fair";
    let inside = Arc::new(AtomicBool::new(false));
    let end = Instant::now() + Duration::from_millis(1500);
    let threads = (0..6)
        .map(|_| {
            let lock = quorum(&urls, None).lock(name).unwrap();
            let inside = Arc::clone(&inside);
            thread::spawn(move || {
                let mut count = 0_usize;
                while Instant::now() < end {
                    let lease = lock
                        .acquire_timeout(Duration::from_secs(5), Duration::from_secs(10))
                        .expect("no error while waiting")
                        .expect("served within 10 s");
                    assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                    thread::sleep(Duration::from_millis(1));
                    inside.store(false, Ordering::SeqCst);
                    lease.release().expect("release");
                    count += 1;
                }
                count
            })
        })
        .collect();
    let counts = join_within(threads, Duration::from_secs(15));
    let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
    eprintln!("grants per thread: {counts:?} (mean {mean:.1})");
    for (i, &count) in counts.iter().enumerate() {
        assert!(
            count as f64 >= mean / 3.0,
            "thread {i} starved: {count} grants, mean {mean:.1} ({counts:?})"
        );
    }
}

/// On a quorum of three, a waiter with a 10 s heartbeat, queued on every server, gets a released
/// lock within a few seconds: the release woke it.
#[test]
fn quorum_waiter_is_woken_by_the_release() {
    let (servers, urls) = quorum_of_three();
    let name = "quorum-woken";
    let holder = hold(&quorum(&urls, None), name, TTL);
    let lock = quorum(&urls, Some(SLOW_HEARTBEAT)).lock(name).unwrap();
    let waiter = spawn_waiter(lock, Duration::from_secs(20));
    for redis in &servers {
        wait_until("the waiter queued on every server", SOON, || {
            queued(redis, name) >= 1
        });
    }
    let released = Instant::now();
    holder.release().unwrap();
    let (got, _) =
        join_within(vec![waiter], Duration::from_secs(25))[0].expect("the waiter got the lock");
    let took = got - released;
    eprintln!("woken {took:?} after the release");
    assert!(took < SOON, "not woken by the release: {took:?}");
}

/// A quorum's round 2 takes the new holder out of the queue only where it stores the token. A
/// server that answered round 1 too late for round 2 — here one paused while the claim was in
/// flight — must not keep the holder first in its queue: with another server down, that stale
/// first place would block every other waiter until the holder's liveness ran out (30 s here).
#[test]
fn a_quorum_grant_leaves_no_place_in_any_queue() {
    let (mut servers, urls) = quorum_of_three();
    let name = "quorum-granted-leaves";
    let lock = quorum(&urls, Some(SLOW_HEARTBEAT)).lock(name).unwrap();
    servers[2].pause();
    let lease = lock
        .acquire_timeout(Duration::from_secs(10), Duration::from_secs(5))
        .unwrap()
        .expect("free: granted by the two servers that answer");
    servers[2].resume();
    // The paused server runs the claim (which queues the waiter) when it resumes, then the
    // holder's leave, sent after the grant on the same connection.
    wait_until("no server keeps the holder queued", SOON, || {
        servers.iter().all(|server| queued(server, name) == 0)
    });
    // And with server 0 down, a second waiter gets the lock as soon as it is released.
    servers[0].kill9();
    let second = quorum(&urls, Some(SLOW_HEARTBEAT)).lock(name).unwrap();
    let waiter = spawn_waiter(second, Duration::from_secs(20));
    // Queued on server 1 or 2, or both: a first round that server 2 (held) and the dead
    // server 0 (refused) decide before server 1's connect completes abandons that connect, and
    // the waiter joins server 1 only at its next heartbeat (the known gap: fairness, not safety).
    // Either place is enough to be woken by the release.
    let waiting = Instant::now() + SOON;
    while queued(&servers[1], name) + queued(&servers[2], name) == 0 {
        assert!(
            Instant::now() < waiting,
            "the second waiter is not queued within {SOON:?}: queues {:?} / {:?}",
            queue_members(&servers[1], name),
            queue_members(&servers[2], name),
        );
        thread::sleep(Duration::from_millis(5));
    }
    let released = Instant::now();
    lease.release().unwrap();
    let (granted_at, _) = join_within(vec![waiter], Duration::from_secs(25))
        .pop()
        .flatten()
        .expect("the second waiter got the lock");
    assert!(
        granted_at.duration_since(released) < SOON,
        "served {:?} after the release",
        granted_at.duration_since(released)
    );
}
