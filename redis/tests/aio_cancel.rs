//! The async API under cancellation and herds (issue 17, items 1 and 2), against real servers:
//! an acquisition dropped mid-flight (a `timeout`, a `select!`) leaves no lock behind on one
//! server or on a quorum, and a herd of tasks on one handle opens one connection per server —
//! on a fresh handle and again after the server restarted.
//!
//! Every wait is bounded; only 127.0.0.1 is used; timing asserts are generous upper bounds.
#![cfg(feature = "tokio")]

mod support;

use std::time::{Duration, Instant};

use fencelock_redis::aio::LockServer;
use support::{quick_builder, raw, RedisProcess};

/// Longer than any bound here: a claim left behind would hold the lock this long.
const TTL: Duration = Duration::from_secs(20);
const SOON: Duration = Duration::from_secs(3);

fn handle(servers: &[&RedisProcess]) -> LockServer {
    let clients = servers
        .iter()
        .map(|s| redis::Client::open(s.url()).expect("client"))
        .collect();
    LockServer::with(quick_builder(), clients).expect("async handle")
}

fn lock_key(name: &str) -> String {
    format!("fencelock:{{{name}}}:lock")
}

/// Polls `check` every few ms until it holds; panics (saying `what`) after [`SOON`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + SOON;
    while !check() {
        assert!(Instant::now() < deadline, "not within {SOON:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `try_acquire` whose replies take longer than the caller waits: the server is paused with the
/// request in flight, the future is dropped at 50 ms, and the server resumes. The request then
/// runs and grants the lock to nobody; the cleanup sent when the future was dropped (queued
/// behind it on the same connection) must free it, long before its 20 s TTL.
async fn cancelled_acquire_leaves_no_lock(servers: &mut [RedisProcess], name: &str) {
    let refs: Vec<&RedisProcess> = servers.iter().collect();
    let lock = handle(&refs).lock(name).unwrap();
    // Connections open and scripts loaded: the request goes out at once when it is made.
    lock.try_acquire(TTL)
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    for server in servers.iter_mut() {
        server.pause();
    }
    let cancelled = tokio::time::timeout(Duration::from_millis(50), lock.try_acquire(TTL)).await;
    assert!(
        cancelled.is_err(),
        "the paused servers cannot have answered"
    );
    for server in servers.iter_mut() {
        server.resume();
    }
    let mut cons: Vec<redis::Connection> = servers.iter().map(raw).collect();
    eventually("the cancelled claim is released everywhere", || {
        cons.iter_mut().all(|con| {
            let exists: bool = redis::cmd("EXISTS").arg(lock_key(name)).query(con).unwrap();
            !exists
        })
    })
    .await;
    let refs: Vec<&RedisProcess> = servers.iter().collect();
    let other = handle(&refs).lock(name).unwrap();
    let lease = other.try_acquire(TTL).await.unwrap();
    assert!(lease.is_some(), "free for the next caller");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_acquire_leaves_no_lock_on_one_server() {
    let mut servers = [RedisProcess::start()];
    cancelled_acquire_leaves_no_lock(&mut servers, "cancel-one").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_acquire_leaves_no_lock_on_a_quorum() {
    let mut servers = [
        RedisProcess::start(),
        RedisProcess::start(),
        RedisProcess::start(),
    ];
    cancelled_acquire_leaves_no_lock(&mut servers, "cancel-quorum").await;
}

/// Connections the server accepted so far.
fn connections_received(con: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(con).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_connections_received in INFO stats")
}

/// 500 tasks calling at once on a fresh handle.
async fn herd(server: &LockServer) -> usize {
    let calls = (0..500).map(|i| {
        let lock = server.lock(&format!("herd-{i}")).unwrap();
        tokio::spawn(async move { lock.try_acquire(TTL).await.map(|lease| lease.is_some()) })
    });
    let mut granted = 0;
    for call in calls.collect::<Vec<_>>() {
        granted += usize::from(matches!(call.await, Ok(Ok(true))));
    }
    granted
}

/// A herd of 500 tasks starting together on a fresh handle opens one connection, not one per
/// task (each with its handshake and script loads) — and so does the herd after the server
/// restarted and every task's first call met the dead connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_of_tasks_opens_one_connection() {
    let mut redis = RedisProcess::start();
    let server = handle(&[&redis]);
    let mut con = raw(&redis);
    let before = connections_received(&mut con);
    assert_eq!(herd(&server).await, 500, "every task got its own lock");
    let opened = connections_received(&mut con) - before;
    assert_eq!(opened, 1, "one connection for the whole herd");

    redis.kill9();
    redis.restart();
    let mut con = raw(&redis);
    let before = connections_received(&mut con);
    // The first calls meet the dead connection and fail; the rest share one new connection.
    let _ = herd(&server).await;
    let _ = herd(&server).await;
    let opened = connections_received(&mut con) - before;
    assert!(opened <= 2, "{opened} connections after the restart");
}
