//! Fair, queued waiting of the async API (feature `tokio`), against real servers: waiters served
//! in the order they queued, no barging, blocking pops off the shared multiplexed connection, a
//! cancelled wait that leaves the queue and holds nothing, a wait that runs out leaving the queue,
//! a waiter woken by the release (not by its heartbeat), and no starvation on a quorum.
//!
//! Every wait here is bounded; only 127.0.0.1 is used; timing asserts are generous upper bounds.
#![cfg(feature = "tokio")]

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fencelock::FencingToken;
use fencelock_redis::aio::{LockServer, RedisLease, RedisLock};
use support::{quick_builder, raw, RedisProcess};

/// A TTL no test outlives.
const LONG: Duration = Duration::from_secs(30);
/// A liveness window whose heartbeat (10 s) and hand-off grace (15 s) are far longer than any
/// bound below: only a wake-up, a leave or a release can explain a prompt result.
const SLOW_LIVENESS: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Helpers

/// A fresh async handle to `servers` (one, or a quorum), with `liveness` if given. Each call is
/// a handle of its own: its own multiplexed connections and pool of waiting connections.
fn handle(servers: &[&RedisProcess], liveness: Option<Duration>) -> LockServer {
    let mut builder = quick_builder();
    if let Some(window) = liveness {
        builder = builder.liveness(window);
    }
    let clients = servers
        .iter()
        .map(|s| redis::Client::open(s.url()).expect("client"))
        .collect();
    LockServer::with(builder, clients).expect("async handle")
}

/// The lock `name` on a fresh handle of its own.
fn lock_on(servers: &[&RedisProcess], liveness: Option<Duration>, name: &str) -> RedisLock {
    handle(servers, liveness).lock(name).expect("lock")
}

fn queue_key(name: &str) -> String {
    format!("fencelock:{{{name}}}:queue")
}

/// How many waiters queue for `name` on the server behind `con`.
fn queued(con: &mut redis::Connection, name: &str) -> u64 {
    redis::cmd("ZCARD")
        .arg(queue_key(name))
        .query(con)
        .expect("ZCARD")
}

/// The server's `blocked_clients` (clients blocked in a `BLPOP`, say).
fn blocked_clients(con: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query(con)
        .expect("INFO clients");
    info.lines()
        .find_map(|line| line.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("blocked_clients in INFO clients")
}

/// Polls `check` every few ms until it holds; panics (saying `what`) after `bound`.
async fn eventually(what: &str, bound: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    loop {
        if check() {
            return;
        }
        assert!(Instant::now() < deadline, "not within {bound:?}: {what}");
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

/// Polls the async `check` every few ms until it gives `Some`; panics after `bound`.
async fn eventually_some<T, F, Fut>(what: &str, bound: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + bound;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {bound:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `future`, which must end within `bound`.
async fn within<T>(what: &str, bound: Duration, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(bound, future).await {
        Ok(value) => value,
        Err(_) => panic!("not within {bound:?}: {what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Order

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_waiters_are_served_in_order() {
    const WAITERS: usize = 5;
    let server = RedisProcess::start();
    let mut con = raw(&server);
    let name = "order";
    let holder = lock_on(&[&server], None, name);
    let first = holder.try_acquire(LONG).await.unwrap().expect("free");

    let granted = Arc::new(Mutex::new(Vec::<(usize, FencingToken)>::new()));
    let mut tasks = Vec::new();
    for i in 0..WAITERS {
        let lock = lock_on(&[&server], None, name);
        let granted = Arc::clone(&granted);
        tasks.push(tokio::spawn(async move {
            let lease = lock
                .acquire_timeout(LONG, Duration::from_secs(15))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("waiter {i} got no lease"));
            granted.lock().unwrap().push((i, lease.token()));
            lease.release().await.unwrap();
        }));
        // Queued before the next one starts: its place is its ticket.
        eventually(
            &format!("waiter {i} queued"),
            Duration::from_secs(5),
            || queued(&mut con, name) == i as u64 + 1,
        )
        .await;
    }

    first.release().await.unwrap();
    for task in tasks {
        within("a waiter ends", Duration::from_secs(10), task)
            .await
            .unwrap();
    }
    let granted = granted.lock().unwrap().clone();
    let order: Vec<usize> = granted.iter().map(|&(i, _)| i).collect();
    assert_eq!(
        order,
        (0..WAITERS).collect::<Vec<_>>(),
        "first come, first served"
    );
    let mut last = FencingToken::new(0);
    for &(i, token) in &granted {
        assert!(token > last, "waiter {i}'s token {token:?} after {last:?}");
        last = token;
    }
    assert_eq!(queued(&mut con, name), 0, "nobody left in the queue");
}

// ---------------------------------------------------------------------------------------------
// 2. No barging

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_try_acquire_does_not_barge() {
    let server = RedisProcess::start();
    let mut con = raw(&server);
    let name = "barge";
    let holder = lock_on(&[&server], None, name);
    let barger = lock_on(&[&server], None, name);
    let held = holder.try_acquire(LONG).await.unwrap().expect("free");
    let held_token = held.token();

    let waiter = lock_on(&[&server], None, name);
    let task = tokio::spawn(async move {
        waiter
            .acquire_timeout(LONG, Duration::from_secs(15))
            .await
            .unwrap()
    });
    eventually("the waiter queued", Duration::from_secs(5), || {
        queued(&mut con, name) == 1
    })
    .await;

    held.release().await.unwrap();
    let barged = barger.try_acquire(LONG).await.unwrap();
    assert!(
        barged.is_none(),
        "try_acquire took a lock a live waiter queues for: {barged:?}"
    );
    let lease = within("the waiter is served", Duration::from_secs(5), task)
        .await
        .unwrap()
        .expect("the waiter gets the lease");
    assert!(lease.token() > held_token);
    // Still the waiter's: a try from the other handle fails until it releases.
    assert!(barger.try_acquire(LONG).await.unwrap().is_none());
    lease.release().await.unwrap();
    assert!(barger.try_acquire(LONG).await.unwrap().is_some());
}

// ---------------------------------------------------------------------------------------------
// 3. Blocking pops are not on the shared connection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_task_does_not_block_the_shared_connection() {
    const WAITERS: u64 = 8;
    let server = RedisProcess::start();
    let mut con = raw(&server);
    let name = "shared";
    let holder = lock_on(&[&server], None, name);
    let held = holder.try_acquire(LONG).await.unwrap().expect("free");

    // One handle: the waiters and the later requests share its multiplexed connection.
    let shared = handle(&[&server], Some(SLOW_LIVENESS));
    let lock = shared.lock(name).unwrap();
    let tasks: Vec<_> = (0..WAITERS)
        .map(|_| {
            let lock = lock.clone();
            tokio::spawn(async move {
                let began = Instant::now();
                let got = lock
                    .acquire_timeout(LONG, Duration::from_secs(3))
                    .await
                    .unwrap();
                (got.is_some(), began.elapsed())
            })
        })
        .collect();
    // All queued and all blocked in their pops (up to 3 s each, the end of their wait).
    eventually("8 waiters queued", Duration::from_secs(5), || {
        queued(&mut con, name) == WAITERS
    })
    .await;
    eventually("8 pops blocked", Duration::from_secs(5), || {
        blocked_clients(&mut con) >= WAITERS
    })
    .await;

    let began = Instant::now();
    let other = tokio::time::timeout(
        Duration::from_secs(1),
        shared.lock("other").unwrap().try_acquire(LONG),
    )
    .await
    .expect("try_acquire on the shared connection was blocked behind the waiters' pops")
    .unwrap()
    .expect("`other` is free");
    let highest = tokio::time::timeout(
        Duration::from_secs(1),
        shared.fenced("x").unwrap().highest(),
    )
    .await
    .expect("highest on the shared connection was blocked behind the waiters' pops")
    .unwrap();
    assert_eq!(highest, FencingToken::new(0));
    let took = began.elapsed();
    assert!(
        blocked_clients(&mut con) >= WAITERS,
        "the pops were still blocked meanwhile"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    other.release().await.unwrap();

    for task in tasks {
        let (got, waited) = within("a waiter gives up", Duration::from_secs(10), task)
            .await
            .unwrap();
        assert!(!got, "the lock was held all along");
        assert!(
            waited >= Duration::from_secs(3),
            "gave up early: {waited:?}"
        );
    }
    assert_eq!(queued(&mut con, name), 0, "every waiter left");
    held.release().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 4. Cancelled waits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_wait_leaves_the_queue_and_holds_nothing() {
    let server = RedisProcess::start();
    let mut con = raw(&server);
    let name = "cancelled";
    let holder = lock_on(&[&server], Some(SLOW_LIVENESS), name);
    let other = lock_on(&[&server], Some(SLOW_LIVENESS), name);
    let held = holder.try_acquire(LONG).await.unwrap().expect("free");

    let waiter = lock_on(&[&server], Some(SLOW_LIVENESS), name);
    let saw_queued = Arc::new(Mutex::new(false));
    let watch = {
        let saw_queued = Arc::clone(&saw_queued);
        let url = server.url();
        // Watches the queue from a thread while the wait runs (200 ms at most).
        std::thread::spawn(move || {
            let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
            let end = Instant::now() + Duration::from_millis(250);
            while Instant::now() < end {
                if queued(&mut con, "cancelled") == 1 {
                    *saw_queued.lock().unwrap() = true;
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        waiter.acquire_timeout(Duration::from_secs(20), Duration::from_secs(10)),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "the wait ended by itself: {cancelled:?}"
    );
    watch.join().unwrap();
    assert!(*saw_queued.lock().unwrap(), "the waiter had queued");

    // Left from a background task (a liveness of 30 s would keep it queued far longer).
    eventually(
        "the cancelled waiter left the queue",
        Duration::from_secs(3),
        || queued(&mut con, name) == 0,
    )
    .await;

    // Not handed to the cancelled waiter: free at once after the release.
    held.release().await.unwrap();
    let fresh = other
        .try_acquire(LONG)
        .await
        .unwrap()
        .expect("free at once: the lock went to nobody");
    fresh.release().await.unwrap();
}

/// Busy-waits `d` (finer than a timer; at most a few ms here).
fn spin(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// Why a waiter's task ended.
enum Ended {
    Cancelled,
    Got(Option<RedisLease>),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_cancelled_during_the_hand_off_leaves_the_lock_free() {
    let server = RedisProcess::start();
    let mut con = raw(&server);
    // Cancelled from right after the release (the hand-off already reached the waiter's list)
    // to a few ms later (the waiter likely confirmed it): every stage of the waiter's wake-up.
    let delays_us = [
        0_u64, 0, 0, 50, 100, 200, 300, 500, 700, 1000, 1500, 2000, 3000, 5000,
    ];
    let (mut cancelled_runs, mut served_runs) = (0, 0);
    for (run, &delay) in delays_us.iter().enumerate() {
        let name = format!("race{run}");
        let holder = lock_on(&[&server], Some(SLOW_LIVENESS), &name);
        let other = lock_on(&[&server], Some(SLOW_LIVENESS), &name);
        let held = holder.try_acquire(LONG).await.unwrap().expect("free");

        let waiter = lock_on(&[&server], Some(SLOW_LIVENESS), &name);
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tokio::select! {
                biased;
                _ = cancelled => Ended::Cancelled,
                got = waiter.acquire_timeout(Duration::from_secs(20), Duration::from_secs(10)) => {
                    Ended::Got(got.unwrap())
                }
            }
        });
        eventually("the waiter queued", Duration::from_secs(5), || {
            queued(&mut con, &name) == 1
        })
        .await;

        held.release().await.unwrap();
        spin(Duration::from_micros(delay));
        let _ = cancel.send(());
        match within("the waiter's task ends", Duration::from_secs(5), task)
            .await
            .unwrap()
        {
            Ended::Cancelled => cancelled_runs += 1,
            Ended::Got(lease) => {
                served_runs += 1;
                // Served before the cancel: dropping the lease releases it in the background.
                assert!(lease.is_some(), "run {run}: the wait ended empty");
                drop(lease);
            }
        }

        // Whatever the race gave, nobody holds the lock for long: the hand-off was passed on
        // or released (a hand-off kept would be held for the 15 s grace, or the 20 s TTL).
        let fresh = eventually_some(
            &format!("run {run} (cancel {delay} µs after the release): the lock is free again"),
            Duration::from_secs(3),
            || async { other.try_acquire(LONG).await.unwrap() },
        )
        .await;
        fresh.release().await.unwrap();
        eventually("the queue is empty", Duration::from_secs(3), || {
            queued(&mut con, &name) == 0
        })
        .await;
    }
    eprintln!(
        "cancel during hand-off: {cancelled_runs} cancelled mid-wait, {served_runs} served first"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. A wait that runs out

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_waiter_whose_wait_runs_out_leaves_the_queue() {
    let server = RedisProcess::start();
    let mut con = raw(&server);
    let name = "runs-out";
    // A 30 s liveness: an entry left behind would stay in the queue long after the wait.
    let holder = lock_on(&[&server], Some(SLOW_LIVENESS), name);
    let waiter = lock_on(&[&server], Some(SLOW_LIVENESS), name);
    let held = holder.try_acquire(LONG).await.unwrap().expect("free");

    let began = Instant::now();
    let got = within(
        "the wait ends",
        Duration::from_secs(5),
        waiter.acquire_timeout(LONG, Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let waited = began.elapsed();
    assert!(got.is_none(), "the lock was held: {got:?}");
    assert!(
        waited >= Duration::from_millis(300),
        "gave up early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "gave up late: {waited:?}");
    assert_eq!(
        queued(&mut con, name),
        0,
        "the waiter left the queue before returning"
    );

    // And the lock is not handed to the waiter that gave up.
    held.release().await.unwrap();
    let fresh = waiter
        .try_acquire(LONG)
        .await
        .unwrap()
        .expect("free at once");
    fresh.release().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 6. Woken by the release

/// Holds the lock on `servers`, queues a waiter (heartbeat 10 s) and releases: the waiter must
/// get the lease well before its next heartbeat.
async fn woken_by_the_release(servers: &[&RedisProcess], name: &str) {
    let mut cons: Vec<redis::Connection> = servers.iter().map(|s| raw(s)).collect();
    let holder = lock_on(servers, Some(SLOW_LIVENESS), name);
    let held = holder.try_acquire(LONG).await.unwrap().expect("free");
    let held_token = held.token();

    let waiter = lock_on(servers, Some(SLOW_LIVENESS), name);
    let task = tokio::spawn(async move {
        waiter
            .acquire_timeout(LONG, Duration::from_secs(20))
            .await
            .unwrap()
    });
    // Blocked in its pops on every server, and queued on a majority at least. (Not always on
    // every server: a quorum round ends once decided, and a straggler's claim whose connection
    // was still opening is never sent — see `a_quorum_waiter_queues_on_every_server_at_once`.)
    for (i, con) in cons.iter_mut().enumerate() {
        eventually(
            &format!("blocked on server {i}"),
            Duration::from_secs(5),
            || blocked_clients(con) >= 1,
        )
        .await;
    }
    let queued_on = cons
        .iter_mut()
        .map(|con| queued(con, name))
        .filter(|&n| n == 1)
        .count();
    assert!(
        queued_on > servers.len() / 2,
        "queued on {queued_on} of {} servers",
        servers.len()
    );
    // Past the first step's quick retries, if any: only the release can wake it now.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let released = Instant::now();
    held.release().await.unwrap();
    let lease = within(
        "woken by the release (a polling waiter would take its 10 s heartbeat)",
        Duration::from_secs(5),
        task,
    )
    .await
    .unwrap()
    .expect("the waiter gets the lease");
    let took = released.elapsed();
    assert!(lease.token() > held_token);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_waiter_is_woken_by_the_release() {
    let server = RedisProcess::start();
    woken_by_the_release(&[&server], "woken").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_quorum_waiter_is_woken_by_the_release() {
    let servers: Vec<RedisProcess> = (0..3).map(|_| RedisProcess::start()).collect();
    let refs: Vec<&RedisProcess> = servers.iter().collect();
    woken_by_the_release(&refs, "woken-quorum").await;
}

// ---------------------------------------------------------------------------------------------
// 7. No starvation on a quorum

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_quorum_waiters_do_not_starve() {
    const TASKS: usize = 6;
    let servers: Vec<RedisProcess> = (0..3).map(|_| RedisProcess::start()).collect();
    let refs: Vec<&RedisProcess> = servers.iter().collect();
    let name = "starve";
    let until = Instant::now() + Duration::from_millis(1500);
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let lock = lock_on(&refs, None, name);
            tokio::spawn(async move {
                let mut grants = 0_u64;
                while Instant::now() < until {
                    let lease = lock
                        .acquire_timeout(Duration::from_secs(2), Duration::from_secs(5))
                        .await
                        .unwrap();
                    if let Some(lease) = lease {
                        grants += 1;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        lease.release().await.unwrap();
                    }
                }
                grants
            })
        })
        .collect();
    let mut counts = Vec::new();
    for task in tasks {
        counts.push(
            within("a task ends", Duration::from_secs(15), task)
                .await
                .unwrap(),
        );
    }
    let total: u64 = counts.iter().sum();
    let mean = total as f64 / TASKS as f64;
    eprintln!("quorum grants per task in 1.5 s: {counts:?}");
    assert!(total >= TASKS as u64, "too few grants at all: {counts:?}");
    for (i, &count) in counts.iter().enumerate() {
        assert!(
            count as f64 >= mean / 3.0,
            "task {i} starved: {count} grants, mean {mean:.1} ({counts:?})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Known gap (ignored): a quorum waiter's first claim round may skip a server

/// The queue's module docs say round 1 (the claim) queues the waiter on each server where it
/// does not win. On a fresh handle the claim round returns once a majority answered `Held`, and
/// the straggler's request — its lazily opened connection still connecting — is dropped unsent:
/// the waiter is then not queued on that server (where the lock *is* held) until its next
/// attempt, a heartbeat (here 10 s) later. Fairness only: it is woken by the other servers'
/// releases, and still blocks on all three. Fails in about one run in five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known gap: a quorum waiter's first claim may skip the server whose connection opened last"]
async fn a_quorum_waiter_queues_on_every_server_at_once() {
    for run in 0..20 {
        let servers: Vec<RedisProcess> = (0..3).map(|_| RedisProcess::start()).collect();
        let refs: Vec<&RedisProcess> = servers.iter().collect();
        let name = "everywhere";
        let lock_key = format!("fencelock:{{{name}}}:lock");
        let mut cons: Vec<redis::Connection> = refs.iter().map(|s| raw(s)).collect();
        let holder = lock_on(&refs, Some(SLOW_LIVENESS), name);
        let held = holder.try_acquire(LONG).await.unwrap().expect("free");
        let waiter = lock_on(&refs, Some(SLOW_LIVENESS), name);
        let task = tokio::spawn(async move {
            waiter
                .acquire_timeout(LONG, Duration::from_secs(3))
                .await
                .unwrap()
        });
        for (i, con) in cons.iter_mut().enumerate() {
            eventually(
                &format!("run {run}: queued on server {i}, where the lock is held"),
                Duration::from_secs(2),
                || {
                    let held_here: bool = redis::cmd("EXISTS").arg(&lock_key).query(con).unwrap();
                    queued(con, name) == 1 || !held_here
                },
            )
            .await;
        }
        task.abort();
        let _ = task.await;
        held.release().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// 8. A crashed holder, a restarted server

/// A holder that crashed (its lease never released) passes the lock, once its TTL has run out,
/// to the waiter, with a larger token — woken by the TTL the queue reports, not its heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_crashed_holders_lock_goes_to_the_first_waiter() {
    let server = RedisProcess::start();
    let name = "crashed-holder";
    let holder = lock_on(&[&server], None, name);
    let held = holder
        .try_acquire(Duration::from_millis(500))
        .await
        .unwrap()
        .expect("free");
    let crashed = held.token();
    std::mem::forget(held); // never released: a crashed holder

    // Heartbeat 10 s: only the holder's TTL, which the queue reports, can wake it early.
    let waiter = lock_on(&[&server], Some(SLOW_LIVENESS), name);
    let started = Instant::now();
    let lease = within(
        "the waiter gets the crashed holder's lock",
        Duration::from_secs(25),
        waiter.acquire_timeout(LONG, Duration::from_secs(20)),
    )
    .await
    .unwrap()
    .expect("the waiter got the lock");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} (a waiter that only heartbeats would take 10 s)"
    );
    assert!(
        lease.token() > crashed,
        "{:?} !> {crashed:?}",
        lease.token()
    );
    lease.release().await.unwrap();
}

/// A restart without persistence (queue, lock and script cache lost) while three waiters wait:
/// each gets the lock in turn, one at a time, none errors, none hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_server_restart_while_waiters_wait_loses_nobody() {
    let mut server = RedisProcess::start();
    let name = "restart";
    let holder = lock_on(&[&server], None, name);
    let held = holder.try_acquire(LONG).await.unwrap().expect("free");

    let inside = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..3 {
        let lock = lock_on(&[&server], None, name);
        let inside = Arc::clone(&inside);
        tasks.push(tokio::spawn(async move {
            let lease = lock
                .acquire_timeout(LONG, Duration::from_secs(15))
                .await
                .expect("no error while waiting")
                .unwrap_or_else(|| panic!("waiter {i} never got the lock"));
            assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
            tokio::time::sleep(Duration::from_millis(20)).await;
            inside.store(false, Ordering::SeqCst);
            lease.release().await.expect("release");
        }));
    }
    {
        let mut con = raw(&server);
        eventually("3 waiters queued", Duration::from_secs(5), || {
            queued(&mut con, name) == 3
        })
        .await;
    }

    server.kill9();
    server.restart();
    within("every waiter is served", Duration::from_secs(20), async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await;
    drop(held); // its lock was lost with the server
}
