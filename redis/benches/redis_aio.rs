//! The async API (feature `tokio`) against the physical limit measured in the same run: two raw
//! async `EVALSHA` round trips of a trivial script on a multiplexed connection.
//!
//! - `aio_round_trip/*`: one task; acquire + release vs the two raw round trips.
//! - `aio_tasks_64/*`: 64 concurrent tasks, each on a resource of its own, all through one
//!   `aio::LockServer`, vs 64 tasks doing the raw round trips on one multiplexed connection. Time
//!   per iteration = every task doing one op.
//!
//! Run: `cargo bench -p fencelock-redis --features tokio --bench redis_aio` (a current-thread
//! runtime; the machine has 2 cores, shared with the server).

#[path = "../tests/support/server.rs"]
mod server;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use fencelock_redis::aio::LockServer;
use redis::Script;

const TTL: Duration = Duration::from_secs(10);
const TASKS: usize = 64;

async fn raw_pair(trivial: &Script, con: &mut redis::aio::MultiplexedConnection, name: &str) {
    let lock = format!("raw:{{{name}}}:lock");
    let counter = format!("raw:{{{name}}}:token");
    let _: i64 = trivial
        .key(&lock)
        .key(&counter)
        .arg("0123456789abcdef0123456789abcdef:")
        .arg(10_000)
        .arg(86_400_000)
        .invoke_async(con)
        .await
        .unwrap();
    let _: i64 = trivial
        .key(&lock)
        .arg("0123456789abcdef0123456789abcdef:")
        .invoke_async(con)
        .await
        .unwrap();
}

fn benches(c: &mut Criterion) {
    let redis = server::RedisProcess::start();
    let url = redis.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = LockServer::open(&url).unwrap();
    let trivial = Script::new("return 1");
    let con = runtime.block_on(async {
        redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    });

    let mut group = c.benchmark_group("aio_round_trip");
    let lock = handle.lock("bench").unwrap();
    group.bench_function("fencelock_acquire_release", |b| {
        b.to_async(&runtime).iter(|| async {
            let lease = lock.try_acquire(TTL).await.unwrap().expect("free");
            lease.release().await.unwrap();
        });
    });
    group.bench_function("raw_evalsha_x2", |b| {
        b.to_async(&runtime).iter(|| {
            let mut con = con.clone();
            let trivial = &trivial;
            async move { raw_pair(trivial, &mut con, "bench").await }
        });
    });
    group.finish();

    let mut group = c.benchmark_group("aio_tasks_64");
    group.sample_size(20);
    let locks: Vec<_> = (0..TASKS)
        .map(|i| handle.lock(&format!("bench-{i}")).unwrap())
        .collect();
    group.bench_function("fencelock_one_handle", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let locks = locks.clone();
            async move {
                let began = Instant::now();
                let tasks: Vec<_> = locks
                    .into_iter()
                    .map(|lock| {
                        tokio::spawn(async move {
                            for _ in 0..iters {
                                let lease = lock.try_acquire(TTL).await.unwrap().expect("own");
                                lease.release().await.unwrap();
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
                began.elapsed()
            }
        });
    });
    group.bench_function("raw_one_connection", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let con = con.clone();
            async move {
                let began = Instant::now();
                let tasks: Vec<_> = (0..TASKS)
                    .map(|i| {
                        let mut con = con.clone();
                        tokio::spawn(async move {
                            let trivial = Script::new("return 1");
                            for _ in 0..iters {
                                raw_pair(&trivial, &mut con, &format!("bench-{i}")).await;
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
                began.elapsed()
            }
        });
    });
    group.finish();
}

criterion_group!(benches_group, benches);
criterion_main!(benches_group);
