//! A master and its replica behind three Sentinels as the lock server
//! (`LockServer::sentinel`): the handle follows a failover, and tokens never repeat across it.
//!
//! Replication is asynchronous. The replica here is fed through a TCP proxy that the tests stall
//! (pausing the replica would not do: the kernel buffers the master's stream and the replica
//! catches up when it resumes), so grants made meanwhile never reach it; then the master is
//! killed and the Sentinels promote the replica. The promoted replica's counter is *behind*
//! the tokens the old master issued — shown on the counter key itself and on a plain `INCR`
//! counter kept beside it, which repeats its values: a counter alone would issue used tokens
//! again. A token is also never below the server's time in µs, so the promoted replica (whose
//! clock is the old master's here, within the failover's seconds) issues above all of them.
//! The lock key is lost with those grants, so two holders overlap; the old holder's fenced
//! write is refused once the new holder has written.

mod support;

use std::time::{Duration, Instant};

use fencelock::FencingToken;
#[cfg(feature = "tokio")]
use fencelock_redis::aio;
use fencelock_redis::{Error, LockServer, RedisLock};
use support::sentinel::{SentinelGroup, MASTER_NAME};

const TTL: Duration = Duration::from_secs(30);
/// How long the handle may take to find the promoted replica after the failover.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(30);

fn handle(group: &SentinelGroup) -> LockServer {
    let urls = group.sentinel_urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    support::quick_builder()
        .sentinel(MASTER_NAME, &urls)
        .expect("a Sentinel handle")
}

/// One acquire + release; the token.
fn cycle(lock: &RedisLock) -> FencingToken {
    let lease = lock.try_acquire(TTL).unwrap().expect("a free lock");
    let token = lease.token();
    lease.release().unwrap();
    token
}

/// The first acquisition after a failover: calls fail as a topology in motion (typed as
/// unavailable) until the handle finds the promoted replica. Bounded.
fn first_after_failover(lock: &RedisLock) -> fencelock_redis::RedisLease {
    let deadline = Instant::now() + FOLLOW_TIMEOUT;
    loop {
        match lock.try_acquire(TTL) {
            Ok(Some(lease)) => return lease,
            Ok(None) => panic!("the lock is held after the failover, by nobody"),
            Err(e) => {
                assert!(
                    e.is_unavailable(),
                    "a failover is typed as unavailable: {e}"
                );
                assert!(Instant::now() < deadline, "never found the new master: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn get(con: &mut redis::Connection, key: &str) -> Option<u64> {
    redis::cmd("GET").arg(key).query(con).unwrap()
}

#[test]
fn tokens_after_a_failover_are_above_every_token_before_it_even_those_the_replica_missed() {
    let mut group = SentinelGroup::start();
    let server = handle(&group);
    let lock = server.lock("AAPL").unwrap();
    let mut master = support::raw(group.master());
    let mut issued = Vec::new();
    let mut incr = || {
        redis::cmd("INCR")
            .arg("control:{AAPL}")
            .query::<u64>(&mut master)
            .unwrap()
    };

    // Three grants the replica receives, and three it misses.
    for _ in 0..3 {
        issued.push(cycle(&lock));
        incr();
    }
    group.wait_replica_caught_up();
    group.stall_replication();
    for _ in 0..3 {
        issued.push(cycle(&lock));
        incr();
    }
    let last_before = *issued.iter().max().unwrap();
    let took = group.fail_over_by_killing_master();
    eprintln!("failover took {took:?}");

    // The promoted replica is behind: its counter for the lock, and a plain INCR counter.
    let mut promoted = support::raw(group.replica());
    let counter = get(&mut promoted, "fencelock:{AAPL}:token").expect("replicated counter");
    assert!(
        counter < last_before.get(),
        "the stall must have lost grants (counter {counter}, last token {})",
        last_before.get()
    );
    let control: u64 = redis::cmd("INCR")
        .arg("control:{AAPL}")
        .query(&mut promoted)
        .unwrap();
    assert_eq!(
        control, 4,
        "a counter alone issues 4 again, which the old master issued"
    );

    // The handle follows the failover; every token is above every token issued before.
    let first = first_after_failover(&lock);
    assert!(
        first.token() > last_before,
        "{:?} after {last_before:?}",
        first.token()
    );
    let mut last = first.token();
    first.release().unwrap();
    for _ in 0..3 {
        let token = cycle(&lock);
        assert!(token > last);
        last = token;
    }
}

/// The assumption broken: the promoted replica's clock lags the old master's by an hour, far
/// more than the failover took, so its time floor is below the tokens it missed — and tokens
/// go back. (The docs state the bound; NTP keeps real servers far inside it.)
#[test]
fn a_promoted_replica_whose_clock_lags_by_more_than_the_failover_issues_smaller_tokens() {
    let mut group = SentinelGroup::start_with_replica_clock(-3600);
    let server = handle(&group);
    let lock = server.lock("AAPL").unwrap();
    cycle(&lock);
    group.wait_replica_caught_up();
    group.stall_replication();
    let missed = cycle(&lock);
    group.fail_over_by_killing_master();
    let after = first_after_failover(&lock);
    assert!(
        after.token() < missed,
        "with the clock an hour behind, the token goes back: {:?} after {missed:?}",
        after.token()
    );
    after.release().unwrap();
}

#[test]
fn the_old_holders_fenced_write_is_refused_on_the_promoted_replica() {
    let mut group = SentinelGroup::start();
    let server = handle(&group);
    let lock = server.lock("AAPL").unwrap();
    let ledger = server.fenced("AAPL").unwrap();
    let sale = |who: &str| {
        let mut sale = redis::pipe();
        sale.cmd("RPUSH").arg("sold:{AAPL}").arg(who);
        sale
    };
    let warm = lock.try_acquire(TTL).unwrap().expect("free");
    ledger.write(warm.token(), &sale("warm-up")).unwrap();
    warm.release().unwrap();
    group.wait_replica_caught_up();

    // A's grant never reaches the replica; the failover loses it, and the lock key with it.
    group.stall_replication();
    let a = lock.try_acquire(TTL).unwrap().expect("free");
    group.fail_over_by_killing_master();

    // B takes the lock on the promoted replica while A still believes it holds it.
    let b = first_after_failover(&lock);
    assert!(
        a.is_valid(),
        "two holders overlap: exclusion was lost in the failover"
    );
    assert!(
        b.token() > a.token(),
        "B's token is above A's, which the replica never saw"
    );
    ledger.write(b.token(), &sale("B")).unwrap();

    // A's late write is refused; its release says it had lost the lease.
    match ledger.write(a.token(), &sale("A")) {
        Err(Error::Stale(stale)) => assert_eq!(stale.highest, b.token()),
        other => panic!("the old holder's write must be refused, got {other:?}"),
    }
    let sold: Vec<String> = redis::cmd("LRANGE")
        .arg("sold:{AAPL}")
        .arg(0)
        .arg(-1)
        .query(&mut support::raw(group.replica()))
        .unwrap();
    assert_eq!(sold, ["warm-up", "B"]);
    assert!(matches!(a.release(), Err(Error::Lost(_))));
    b.release().unwrap();
}

#[cfg(feature = "tokio")]
#[test]
fn the_async_handle_follows_a_failover_and_its_tokens_still_grow() {
    let mut group = SentinelGroup::start();
    let urls = group.sentinel_urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let server = aio::LockServer::sentinel_with(support::quick_builder(), MASTER_NAME, &urls)
        .expect("an async Sentinel handle");
    let lock = server.lock("AAPL").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut last = FencingToken::new(0);
    runtime.block_on(async {
        for _ in 0..3 {
            let lease = lock.try_acquire(TTL).await.unwrap().expect("free");
            assert!(lease.token() > last);
            last = lease.token();
            lease.release().await.unwrap();
        }
    });
    group.wait_replica_caught_up();
    group.stall_replication();
    runtime.block_on(async {
        let lease = lock.try_acquire(TTL).await.unwrap().expect("free");
        last = lease.token();
        lease.release().await.unwrap();
    });
    group.fail_over_by_killing_master();
    runtime.block_on(async {
        let deadline = Instant::now() + FOLLOW_TIMEOUT;
        let lease = loop {
            match lock.try_acquire(TTL).await {
                Ok(Some(lease)) => break lease,
                Ok(None) => panic!("held after the failover, by nobody"),
                Err(e) => {
                    assert!(e.is_unavailable(), "typed as unavailable: {e}");
                    assert!(Instant::now() < deadline, "never found the new master: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert!(lease.token() > last, "above the grant the replica missed");
        lease.release().await.unwrap();
    });
}
