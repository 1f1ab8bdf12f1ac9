//! The async `KeptLease` (feature `tokio`) against a real server: a schedule that keeps the
//! leases it can keep, and a wait that sleeps (rather than spins) once its renewer is gone.
#![cfg(feature = "tokio")]

mod support;

use std::time::{Duration, Instant};

use fencelock::LeaseLost;
use fencelock_redis::aio::{KeptLease, LockServer, RedisLock};
use fencelock_redis::KeepAlive;
use support::{quick_builder, RedisProcess};

const TTL: Duration = Duration::from_secs(1);

/// An async handle to `redis` (built outside any runtime: it connects lazily).
fn handle(redis: &RedisProcess) -> LockServer {
    let client = redis::Client::open(redis.url()).unwrap();
    LockServer::with(quick_builder(), vec![client]).unwrap()
}

/// Checks, for `hold`, that `kept` stays held while another client is refused the lock.
async fn stays_held(kept: &KeptLease, other: &RedisLock, hold: Duration) {
    let until = Instant::now() + hold;
    while Instant::now() < until {
        assert_eq!(kept.lost(), None, "lost within {hold:?}");
        assert!(kept.remaining().is_some());
        assert!(
            other.try_acquire(TTL).await.unwrap().is_none(),
            "someone got in"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_the_validity_cannot_cover_is_clamped() {
    // A 1 s TTL is valid for 1 s minus the drift allowance (988 ms): a renewal every 995 ms
    // would always come too late. The schedule renews in time instead.
    let redis = RedisProcess::start();
    let lock = handle(&redis).lock("nearly").unwrap();
    let other = handle(&redis).lock("nearly").unwrap();
    let kept = lock
        .try_acquire(TTL)
        .await
        .unwrap()
        .unwrap()
        .keep_alive(KeepAlive::default().every(Duration::from_millis(995)));
    stays_held(&kept, &other, 3 * TTL).await;
    kept.release().await.unwrap();
    assert!(other.try_acquire(TTL).await.unwrap().is_some(), "released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_with_little_validity_left_is_renewed_in_time() {
    // The default interval is a third of the TTL (333 ms), but only ~200 ms are left when the
    // lease is handed over: the first renewal must come against what is left.
    let redis = RedisProcess::start();
    let lock = handle(&redis).lock("short-left").unwrap();
    let other = handle(&redis).lock("short-left").unwrap();
    let lease = lock.try_acquire(TTL).await.unwrap().unwrap();
    let wait = lease.remaining().unwrap();
    tokio::time::sleep(wait.saturating_sub(Duration::from_millis(200))).await;
    let left = lease.remaining().expect("still valid");
    assert!(left < TTL / 3, "{left:?}");
    let kept = lease.keep_alive(KeepAlive::default());
    stays_held(&kept, &other, TTL + TTL / 2).await;
    kept.release().await.unwrap();
}

/// CPU time (user + system) this thread has used so far, from `/proc/thread-self/stat`, in
/// clock ticks of 10 ms (`USER_HZ` is 100 on Linux).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
    // The command name may hold spaces: the fields that follow it start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); `fields[0]` is field 3 (state).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[test]
fn until_lost_does_not_spin_once_the_renewer_is_gone() {
    let redis = RedisProcess::start();
    let lock = handle(&redis).lock("orphan").unwrap();
    let ttl = Duration::from_secs(2);
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let kept = first.block_on(async {
        let lease = lock.try_acquire(ttl).await.unwrap().unwrap();
        lease.keep_alive(KeepAlive::default())
    });
    assert_eq!(kept.lost(), None);
    drop(first); // the renewer task, and the lease it owned, go with the runtime

    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A current-thread runtime polls on this thread: its CPU time is the wait's.
    let (cpu, began) = (thread_cpu(), Instant::now());
    let lost = second.block_on(async {
        tokio::time::timeout(2 * ttl, kept.until_lost())
            .await
            .expect("reported within the validity")
    });
    let (cpu, wall) = (thread_cpu() - cpu, began.elapsed());
    assert_eq!(lost, LeaseLost::Expired);
    // Generous: a sleeping wait uses next to nothing; the spin used all of it (~2 s).
    assert!(
        cpu <= wall / 4 + Duration::from_millis(50),
        "{cpu:?} of CPU in {wall:?}"
    );
    // Nothing renews the lease any more (and the renewer's drop gave it up): lost, and it stays
    // so.
    assert_eq!(kept.lost(), Some(LeaseLost::Expired));
    assert_eq!(kept.remaining(), None);
}
