//! The async API (feature `tokio`) on tokio, against real servers: the lock's contract on one
//! server and on a quorum of three, many concurrent tasks, and the async kept lease.
#![cfg(feature = "tokio")]

mod support;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fencelock::{FencingToken, LeaseLost};
use fencelock_redis::aio::{LockServer, RedisFenced};
use fencelock_redis::{Error, KeepAlive};
use redis::Commands;
use support::{quick_builder, raw, RedisProcess};

const LONG: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(100);
const PAST_SHORT: Duration = Duration::from_millis(400);

/// `n` servers, an async handle to them (built outside any runtime: it connects lazily), and a
/// fenced ledger on the first.
fn setup(n: usize) -> (Vec<RedisProcess>, LockServer, RedisFenced) {
    let servers: Vec<RedisProcess> = (0..n).map(|_| RedisProcess::start()).collect();
    let clients = servers
        .iter()
        .map(|s| redis::Client::open(s.url()).unwrap())
        .collect();
    let handle = LockServer::with(quick_builder(), clients).unwrap();
    let ledger = RedisFenced::open(&servers[0].url(), "ledger").unwrap();
    (servers, handle, ledger)
}

macro_rules! on_one_and_three {
    ($($body:ident => $one:ident, $three:ident);* $(;)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $one() {
            let (_servers, handle, ledger) = setup(1);
            $body(&handle, &ledger).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $three() {
            let (_servers, handle, ledger) = setup(3);
            $body(&handle, &ledger).await;
        }
    )*};
}

on_one_and_three!(
    one_holder_and_growing_tokens => one_holder_one, one_holder_three;
    stalled_holder_is_taken_over_and_refused => stalled_one, stalled_three;
    acquire_timeout_waits_and_gives_up => acquire_timeout_one, acquire_timeout_three;
    dropped_lease_is_released_in_the_background => dropped_one, dropped_three;
    many_tasks_never_overlap => many_tasks_one, many_tasks_three;
    kept_lease_holds_past_its_ttl_and_stops_on_release => kept_one, kept_three;
);

async fn one_holder_and_growing_tokens(handle: &LockServer, _: &RedisFenced) {
    let lock = handle.lock("one").unwrap();
    let mut last = FencingToken::new(0);
    for _ in 0..10 {
        let lease = lock.try_acquire(LONG).await.unwrap().expect("free");
        assert!(lease.token() > last);
        last = lease.token();
        assert!(lock.try_acquire(LONG).await.unwrap().is_none(), "held");
        lease.release().await.unwrap();
    }
}

async fn stalled_holder_is_taken_over_and_refused(handle: &LockServer, ledger: &RedisFenced) {
    let lock = handle.lock("stall").unwrap();
    let mut stalled = lock.try_acquire(SHORT).await.unwrap().unwrap();
    ledger.write(stalled.token(), &redis::pipe()).await.unwrap();
    tokio::time::sleep(PAST_SHORT).await;
    assert!(!stalled.is_valid());
    let newer = lock.try_acquire(LONG).await.unwrap().expect("taken over");
    ledger.write(newer.token(), &redis::pipe()).await.unwrap();
    let by = newer.token();
    assert!(matches!(
        stalled.renew(LONG).await,
        Err(Error::Lost(LeaseLost::TakenOver { by: b })) if b == by
    ));
    assert!(matches!(
        ledger.write(stalled.token(), &redis::pipe()).await,
        Err(Error::Stale(_))
    ));
    assert_eq!(ledger.highest().await.unwrap(), by);
    newer.release().await.unwrap();
}

async fn acquire_timeout_waits_and_gives_up(handle: &LockServer, _: &RedisFenced) {
    let lock = handle.lock("wait").unwrap();
    let held = lock
        .try_acquire(Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    let newer = lock
        .acquire_timeout(LONG, Duration::from_secs(20))
        .await
        .unwrap()
        .expect("taken over once the TTL ran out");
    assert!(newer.token() > held.token());
    let began = Instant::now();
    assert!(lock
        .acquire_timeout(LONG, Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
    assert!(began.elapsed() >= Duration::from_millis(300));
    std::mem::forget(held);
}

async fn dropped_lease_is_released_in_the_background(handle: &LockServer, _: &RedisFenced) {
    let lock = handle.lock("dropped").unwrap();
    drop(lock.try_acquire(LONG).await.unwrap().unwrap());
    // The release runs in a background task: wait for it (well before the 30 s TTL).
    let again = lock
        .acquire_timeout(LONG, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(again.is_some(), "released in the background");
}

async fn many_tasks_never_overlap(handle: &LockServer, _: &RedisFenced) {
    const TASKS: usize = 64;
    let lock = handle.lock("crowd").unwrap();
    let inside = Arc::new(AtomicBool::new(false));
    let grants = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (lock, inside, grants) = (lock.clone(), inside.clone(), grants.clone());
            tokio::spawn(async move {
                let lease = lock
                    .acquire_timeout(LONG, Duration::from_secs(60))
                    .await
                    .unwrap()
                    .expect("every task gets its turn");
                assert!(!inside.swap(true, SeqCst), "two holders at once");
                grants.lock().unwrap().push(lease.token());
                inside.store(false, SeqCst);
                lease.release().await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let grants = grants.lock().unwrap();
    assert_eq!(grants.len(), TASKS);
    assert!(
        grants.windows(2).all(|w| w[0] < w[1]),
        "tokens out of grant order"
    );
}

async fn kept_lease_holds_past_its_ttl_and_stops_on_release(handle: &LockServer, _: &RedisFenced) {
    let ttl = Duration::from_millis(200);
    let lock = handle.lock("kept").unwrap();
    let kept = lock
        .try_acquire(ttl)
        .await
        .unwrap()
        .unwrap()
        .keep_alive(KeepAlive::default());
    let until = Instant::now() + 10 * ttl;
    while Instant::now() < until {
        assert_eq!(kept.lost(), None);
        assert!(
            lock.try_acquire(ttl).await.unwrap().is_none(),
            "someone got in"
        );
        tokio::time::sleep(ttl / 4).await;
    }
    kept.release().await.unwrap();
    assert!(lock.try_acquire(ttl).await.unwrap().is_some(), "released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_lease_reports_a_killed_server_within_its_ttl() {
    let ttl = Duration::from_millis(200);
    let (mut servers, handle, _ledger) = setup(1);
    let kept = handle
        .lock("killed")
        .unwrap()
        .try_acquire(ttl)
        .await
        .unwrap()
        .unwrap()
        .keep_alive(KeepAlive::default());
    let left = kept.remaining().unwrap();
    let killed_at = Instant::now();
    servers[0].kill9();
    let lost = tokio::time::timeout(Duration::from_secs(10), kept.until_lost())
        .await
        .expect("reported");
    assert_eq!(lost, LeaseLost::Expired);
    assert!(killed_at.elapsed() <= left + Duration::from_secs(2));
    assert_eq!(kept.remaining(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_renewal_after_an_async_release() {
    let (servers, handle, _ledger) = setup(1);
    let lock = handle.lock("released").unwrap();
    let kept = lock
        .try_acquire(Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap()
        .keep_alive(KeepAlive::default().every(Duration::from_millis(20)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    kept.release().await.unwrap();
    let _next = lock.try_acquire(LONG).await.unwrap().unwrap();
    let before: i64 = raw(&servers[0]).pttl("fencelock:{released}:lock").unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after: i64 = raw(&servers[0]).pttl("fencelock:{released}:lock").unwrap();
    assert!(
        after > 25_000 && after < before,
        "{before} -> {after}: touched"
    );
}

#[test]
fn a_lease_dropped_outside_a_runtime_is_left_to_its_ttl() {
    let (servers, handle, _ledger) = setup(1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let lease = runtime
        .block_on(
            handle
                .lock("outside")
                .unwrap()
                .try_acquire(Duration::from_secs(5)),
        )
        .unwrap()
        .unwrap();
    drop(runtime);
    drop(lease); // no runtime: nothing is sent, nothing panics
    let ttl: i64 = raw(&servers[0]).pttl("fencelock:{outside}:lock").unwrap();
    assert!(ttl > 0, "left to expire by its TTL");
}
