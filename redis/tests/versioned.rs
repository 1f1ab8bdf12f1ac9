//! `RedisVersioned`: the seed's concurrency tokens across processes, on a real server. Eight
//! threads and three processes increment one record with `update` and lose no increment; a
//! commit at a stale version changes nothing (value, version, a pipeline's keys); a restart that
//! loses the record issues no version that was already used, and refuses a commit prepared
//! before it; bad input is refused before anything is sent. The same, async, at the end.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use fencelock::Version;
use fencelock_redis::{Error, LockServer, RedisVersioned, MAX_VALUE_LEN};
use support::child::ChildTest;
use support::{quick_builder, raw, RedisProcess};

/// The child process's settings, passed by environment (see [`child_incrementer`]).
const CHILD_URL: &str = "FENCELOCK_TEST_VERSIONED_URL";
const CHILD_INCREMENTS: &str = "FENCELOCK_TEST_VERSIONED_INCREMENTS";
/// What a child prints once its increments are committed.
const CHILD_DONE: &str = "child incrementer committed";

const NAME: &str = "counter";
const THREADS: usize = 8;
const PROCESSES: usize = 3;
const INCREMENTS: usize = 40;
/// Generous bound on the children's run.
const CHILDREN_TIMEOUT: Duration = Duration::from_secs(120);

fn record(redis: &RedisProcess) -> RedisVersioned {
    quick_builder()
        .open(&redis.url())
        .unwrap()
        .versioned(NAME)
        .unwrap()
}

/// Adds one to the record (a decimal number; absent is 0), retrying on conflicts.
fn increment(counter: &RedisVersioned) {
    counter
        .update(|old| {
            let n: u64 = old.map_or(0, |bytes| {
                std::str::from_utf8(bytes).unwrap().parse().unwrap()
            });
            (n + 1).to_string().into_bytes()
        })
        .expect("an increment commits within its attempts");
}

fn value(counter: &RedisVersioned) -> u64 {
    counter
        .load()
        .unwrap()
        .0
        .map_or(0, |b| String::from_utf8(b).unwrap().parse().unwrap())
}

#[test]
fn eight_threads_and_three_processes_lose_no_increment() {
    let redis = RedisProcess::start();
    let increments = INCREMENTS.to_string();
    let env = [(CHILD_URL, redis.url()), (CHILD_INCREMENTS, increments)];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut children: Vec<ChildTest> = (0..PROCESSES)
        .map(|_| ChildTest::spawn("child_incrementer", &env))
        .collect();
    thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                let counter = record(&redis);
                for _ in 0..INCREMENTS {
                    increment(&counter);
                }
            });
        }
    });
    let deadline = Instant::now() + CHILDREN_TIMEOUT;
    for child in &mut children {
        let out = child.output_by(deadline);
        assert!(out.contains(CHILD_DONE), "{out}");
    }
    let total = (THREADS + PROCESSES * 2) * INCREMENTS;
    assert_eq!(value(&record(&redis)), total as u64, "no increment lost");
}

/// Not a test of its own: an incrementing process of the test above (two threads). Does nothing
/// when run directly.
#[test]
#[ignore = "the incrementing process the test above starts; does nothing when run by hand"]
fn child_incrementer() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let increments: usize = std::env::var(CHILD_INCREMENTS).unwrap().parse().unwrap();
    let counter = quick_builder().open(&url).unwrap().versioned(NAME).unwrap();
    thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for _ in 0..increments {
                    increment(&counter);
                }
            });
        }
    });
    println!("{CHILD_DONE}");
}

#[test]
fn a_commit_at_a_stale_version_changes_nothing() {
    let redis = RedisProcess::start();
    let price = record(&redis);
    let (never, v0) = price.load().unwrap();
    assert_eq!(
        (never, v0),
        (None, Version::new(0)),
        "never written: None at 0"
    );
    let v1 = price.commit(v0, b"101").unwrap();
    assert!(v1 > v0);
    // A second writer that loaded at v0 is refused, and told where the record is.
    match price.commit(v0, b"999") {
        Err(Error::Conflict { expected, current }) => assert_eq!((expected, current), (v0, v1)),
        other => panic!("a stale commit must conflict, got {other:?}"),
    }
    assert_eq!(price.load().unwrap(), (Some(b"101".to_vec()), v1));

    // commit_with: the pipeline runs only at the version, and moves it on.
    let mut sale = redis::pipe();
    sale.cmd("RPUSH").arg("sold:{counter}").arg(1);
    let v2 = price.commit_with(v1, &sale).unwrap();
    assert!(v2 > v1);
    assert!(matches!(
        price.commit_with(v1, &sale),
        Err(Error::Conflict { .. })
    ));
    let sold: Vec<u32> = redis::cmd("LRANGE")
        .arg("sold:{counter}")
        .arg(0)
        .arg(-1)
        .query(&mut raw(&redis))
        .unwrap();
    assert_eq!(sold, [1], "the stale pipeline did not run");
    assert_eq!(
        price.load().unwrap(),
        (Some(b"101".to_vec()), v2),
        "value kept, version moved"
    );
}

#[test]
fn a_restart_that_loses_the_record_reuses_no_version() {
    let mut redis = RedisProcess::start(); // no persistence
    let price = record(&redis);
    let mut versions = vec![Version::new(0)];
    for cents in 0..5 {
        let last = *versions.last().unwrap();
        versions.push(price.commit(last, format!("{cents}").as_bytes()).unwrap());
    }
    let before = *versions.last().unwrap();
    redis.kill9();
    redis.restart();
    let (lost, at) = price.load().unwrap();
    assert_eq!((lost, at), (None, Version::new(0)), "the record is gone");
    // A commit prepared before the loss is refused, not taken for a new one.
    assert!(matches!(
        price.commit(before, b"stale"),
        Err(Error::Conflict { current, .. }) if current == Version::new(0)
    ));
    let reborn = price.commit(Version::new(0), b"new").unwrap();
    assert!(
        versions.iter().all(|&used| reborn > used),
        "{reborn} after {versions:?}"
    );
}

#[test]
fn bad_input_is_refused_before_anything_is_sent() {
    let redis = RedisProcess::start();
    let server = quick_builder().open(&redis.url()).unwrap();
    for name in ["", "a{b}", &"x".repeat(fencelock_redis::MAX_NAME_LEN + 1)] {
        assert!(
            matches!(server.versioned(name), Err(Error::InvalidInput(_))),
            "{name:?}"
        );
    }
    let price = server.versioned("price").unwrap();
    let huge = vec![0_u8; MAX_VALUE_LEN + 1];
    assert!(matches!(
        price.commit(Version::new(0), &huge),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        price.commit(Version::new(u64::MAX), b"x"),
        Err(Error::InvalidInput(_))
    ));
    let mut multi = redis::pipe();
    multi.cmd("MULTI");
    assert!(matches!(
        price.commit_with(Version::new(0), &multi),
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(
        price.load().unwrap(),
        (None, Version::new(0)),
        "nothing was written"
    );
    // A record is data on one server, not on a quorum.
    let others: Vec<_> = (0..2).map(|_| RedisProcess::start()).collect();
    let urls = [redis.url(), others[0].url(), others[1].url()];
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let quorum = LockServer::quorum(&urls).unwrap();
    assert!(matches!(
        quorum.versioned("price"),
        Err(Error::InvalidInput(_))
    ));
}

#[cfg(feature = "tokio")]
#[test]
fn the_async_record_commits_optimistically_and_loses_no_increment() {
    let redis = RedisProcess::start();
    let server = fencelock_redis::aio::LockServer::with(
        quick_builder(),
        vec![redis::Client::open(redis.url()).unwrap()],
    )
    .unwrap();
    let counter = server.versioned(NAME).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (_, v0) = counter.load().await.unwrap();
        let v1 = counter.commit(v0, b"0").await.unwrap();
        assert!(matches!(
            counter.commit(v0, b"x").await,
            Err(Error::Conflict { .. })
        ));
        let tasks: Vec<_> = (0..THREADS)
            .map(|_| {
                let counter = counter.clone();
                tokio::spawn(async move {
                    for _ in 0..INCREMENTS {
                        counter
                            .update(|old| {
                                let n: u64 =
                                    std::str::from_utf8(old.unwrap()).unwrap().parse().unwrap();
                                (n + 1).to_string().into_bytes()
                            })
                            .await
                            .expect("an increment commits");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let (value, version) = counter.load().await.unwrap();
        assert_eq!(
            value.unwrap(),
            (THREADS * INCREMENTS).to_string().into_bytes()
        );
        assert!(version > v1);
    });
}
