//! acquire + release on a real `redis-server` (started here, on a free 127.0.0.1 port), against
//! the physical limit measured in the same run: two raw `EVALSHA` round trips of trivial scripts.
//!
//! - `round_trip/*`: one thread. `fencelock` = `try_acquire` + `release`; `raw_evalsha_x2` =
//!   two `EVALSHA`s of `return 1` with the same keys and arguments, on one connection.
//! - `threads_8/*`: 8 threads, each locking its own resource. `fencelock_shared_handle` = all
//!   through one `LockServer`; `raw_private_connections` = the two raw round trips, each thread
//!   on a connection of its own. Time per iteration = every thread doing one op.
//!
//! - `quorum/*`: acquire + release on one server (`single`), on a quorum of 3 (`quorum_3`), and on
//!   a quorum of 3 with one server paused by SIGSTOP (`quorum_3_one_paused`), in one run.
//!
//! - `topology/*`: acquire + release on one server (`single`) and on a Redis Cluster of three
//!   masters (`cluster_3`, the lock on one of them), in one run.
//! - `token/*`: the cost of the token's time floor — the server-side part of acquire that
//!   issue 19 changed — as two raw scripts: the token as the counter + 1 (`counter_only`,
//!   before) and as the larger of that and the server's time in µs (`counter_or_time`, now),
//!   each issued 1,000 times inside one script call, so that the time per iteration is the
//!   server's time for 1,000 tokens (one `TIME` call each more, now) plus one round trip.
//!
//! - `versioned/*`: an optimistic update on one server, uncontended: `load_commit` =
//!   `RedisVersioned::load` + `commit` (one `HMGET`, one script); `raw_hmget_evalsha` = an `HMGET`
//!   and a trivial `EVALSHA` with the same key and value, on one connection.
//!
//! Run: `cargo bench -p fencelock-redis --bench redis_lock`. The machine has 2 cores: 8 threads
//! (plus the server) are oversubscribed, and the ratio is what to read, not the absolute times.

#[path = "../tests/support/cluster.rs"]
mod cluster;
#[path = "../tests/support/proxy.rs"]
mod proxy;
#[path = "../tests/support/server.rs"]
mod server;

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use fencelock_redis::LockServer;
use redis::Script;

const TTL: Duration = Duration::from_secs(10);
const THREADS: usize = 8;

fn raw_connection(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(1))
        .unwrap()
}

/// Two trivial script round trips, shaped like acquire (2 keys, 3 args) and release (1 key, 1 arg).
fn raw_pair(trivial: &Script, con: &mut redis::Connection, name: &str) {
    let lock = format!("raw:{{{name}}}:lock");
    let counter = format!("raw:{{{name}}}:token");
    let _: i64 = trivial
        .key(&lock)
        .key(&counter)
        .arg("0123456789abcdef0123456789abcdef")
        .arg(10_000)
        .arg(86_400_000)
        .invoke(con)
        .unwrap();
    let _: i64 = trivial
        .key(&lock)
        .arg("0123456789abcdef0123456789abcdef:1")
        .invoke(con)
        .unwrap();
}

fn benches(c: &mut Criterion) {
    let redis = server::RedisProcess::start();
    let url = redis.url();
    let handle = LockServer::open(&url).unwrap();
    let trivial = Script::new("return 1");

    let mut group = c.benchmark_group("round_trip");
    let lock = handle.lock("bench").unwrap();
    group.bench_function("fencelock_acquire_release", |b| {
        b.iter(|| {
            lock.try_acquire(TTL)
                .unwrap()
                .expect("free")
                .release()
                .unwrap();
        });
    });
    let mut con = raw_connection(&url);
    group.bench_function("raw_evalsha_x2", |b| {
        b.iter(|| raw_pair(&trivial, &mut con, "bench"));
    });
    group.finish();

    let mut group = c.benchmark_group("threads_8");
    group.sample_size(20);
    let locks: Vec<_> = (0..THREADS)
        .map(|i| handle.lock(&format!("bench-{i}")).unwrap())
        .collect();
    group.bench_function("fencelock_shared_handle", |b| {
        b.iter_custom(|iters| {
            let start = Barrier::new(THREADS + 1);
            thread::scope(|s| {
                for lock in &locks {
                    let start = &start;
                    s.spawn(move || {
                        start.wait();
                        for _ in 0..iters {
                            lock.try_acquire(TTL)
                                .unwrap()
                                .expect("own resource")
                                .release()
                                .unwrap();
                        }
                    });
                }
                start.wait();
                Instant::now() // the scope joins every thread before `elapsed` is read
            })
            .elapsed()
        });
    });
    let mut cons: Vec<_> = (0..THREADS).map(|_| raw_connection(&url)).collect();
    group.bench_function("raw_private_connections", |b| {
        b.iter_custom(|iters| {
            let start = Barrier::new(THREADS + 1);
            thread::scope(|s| {
                for (i, con) in cons.iter_mut().enumerate() {
                    let (start, trivial) = (&start, &trivial);
                    s.spawn(move || {
                        start.wait();
                        for _ in 0..iters {
                            raw_pair(trivial, con, &format!("bench-{i}"));
                        }
                    });
                }
                start.wait();
                Instant::now()
            })
            .elapsed()
        });
    });
    group.finish();

    let three: Vec<_> = (0..3).map(|_| server::RedisProcess::start()).collect();
    let urls: Vec<String> = three.iter().map(server::RedisProcess::url).collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let quorum = LockServer::quorum(&urls).unwrap();
    let mut group = c.benchmark_group("quorum");
    let single = handle.lock("quorum-bench").unwrap();
    let of_three = quorum.lock("quorum-bench").unwrap();
    let acquire_release = |lock: &fencelock_redis::RedisLock| {
        let lease = lock.try_acquire(TTL);
        let lease = lease.unwrap_or_else(|e| panic!("acquire: {e}"));
        let lease = lease.expect("the lock is free");
        lease.release().unwrap_or_else(|e| panic!("release: {e}"));
    };
    group.bench_function("single", |b| b.iter(|| acquire_release(&single)));
    group.bench_function("quorum_3", |b| b.iter(|| acquire_release(&of_three)));
    let mut three = three;
    three[2].pause();
    group.bench_function("quorum_3_one_paused", |b| {
        b.iter(|| acquire_release(&of_three));
    });
    three[2].resume();
    group.finish();
}

/// This thread's CPU time (user + system), from `/proc/thread-self/stat` (10 ms ticks).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("the thread's stat");
    // Fields counted after the command name's closing parenthesis: utime, stime are 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat format") + 2..]
        .split(' ')
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// A quorum of 3 behind proxies that delay every reply 2 ms (issue 18's measure of the driver):
/// acquire + release against the sum of its three rounds' delays — three blocking `PING`s
/// through the same proxy — and the calling thread's CPU time while it waits.
fn delayed(c: &mut Criterion) {
    let delay = Duration::from_millis(2);
    let servers: Vec<_> = (0..3).map(|_| server::RedisProcess::start()).collect();
    let proxies: Vec<proxy::Proxy> = servers
        .iter()
        .map(|s| proxy::Proxy::start(s.port()))
        .collect();
    for p in &proxies {
        p.set(proxy::Mode::Delay(delay));
    }
    let urls: Vec<String> = proxies.iter().map(proxy::Proxy::url).collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let lock = LockServer::quorum(&urls).unwrap().lock("delayed").unwrap();
    let mut ping = std::net::TcpStream::connect(("127.0.0.1", proxies[0].port())).unwrap();
    ping.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let pong = |stream: &mut std::net::TcpStream| {
        use std::io::{Read, Write};
        stream.write_all(b"PING\r\n").unwrap();
        let mut reply = [0_u8; 7];
        stream.read_exact(&mut reply).unwrap();
    };
    let mut group = c.benchmark_group("delayed_2ms");
    group.sample_size(20);
    group.bench_function("raw_ping_x3", |b| {
        b.iter(|| {
            for _ in 0..3 {
                pong(&mut ping);
            }
        });
    });
    let (mut wall, mut cpu) = (Duration::ZERO, Duration::ZERO);
    group.bench_function("quorum_3", |b| {
        b.iter_custom(|iters| {
            let (began, cpu0) = (Instant::now(), thread_cpu());
            for _ in 0..iters {
                let lease = lock.try_acquire(TTL).unwrap().expect("free");
                lease.release().unwrap();
            }
            let elapsed = began.elapsed();
            wall += elapsed;
            cpu += thread_cpu() - cpu0;
            elapsed
        });
    });
    group.finish();
    eprintln!(
        "delayed_2ms/quorum_3: the calling thread's CPU time was {:.1}% of the wall time \
         (target: at most 10%)",
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(f64::MIN_POSITIVE)
    );
}

/// One server against a cluster of three, and the token's time floor (see the module docs).
fn topology(c: &mut Criterion) {
    let single = server::RedisProcess::start();
    let cluster = cluster::RedisCluster::start(3);
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let on_one = LockServer::open(&single.url()).unwrap();
    let on_cluster = LockServer::cluster(&urls).unwrap();
    let mut group = c.benchmark_group("topology");
    for (name, server) in [("single", &on_one), ("cluster_3", &on_cluster)] {
        let lock = server.lock("topology-bench").unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                lock.try_acquire(TTL)
                    .unwrap()
                    .expect("free")
                    .release()
                    .unwrap()
            });
        });
    }
    group.finish();

    let mut con = raw_connection(&single.url());
    let mut group = c.benchmark_group("token");
    group.sample_size(30);
    for (name, body) in [
        ("counter_only", COUNTER_ONLY),
        ("counter_or_time", COUNTER_OR_TIME),
    ] {
        let script = Script::new(&format!(
            "{body}\nfor _ = 1, 999 do next_token(KEYS[1], ARGV[1]) end\n\
             return next_token(KEYS[1], ARGV[1])"
        ));
        let key = format!("bench:{{{name}}}:token");
        group.bench_function(name, |b| {
            b.iter(|| {
                let _: String = script.key(&key).arg(86_400_000).invoke(&mut con).unwrap();
            });
        });
    }
    group.finish();
}

/// The token before issue 19: the counter + 1, the server's time only where there is none.
const COUNTER_ONLY: &str = r"
local function next_token(counter, idle_ms)
  local last = redis.call('GET', counter)
  local token
  if last then
    token = tonumber(last) + 1
  else
    local time = redis.call('TIME')
    token = tonumber(time[1]) * 1000000 + tonumber(time[2])
  end
  local digits = string.format('%.0f', token)
  redis.call('SET', counter, digits, 'PX', idle_ms)
  return digits
end";

/// The token now: never below the server's time in µs (as `protocol::NEXT_TOKEN_LUA`).
const COUNTER_OR_TIME: &str = r"
local function next_token(counter, idle_ms)
  local time = redis.call('TIME')
  local token = tonumber(time[1]) * 1000000 + tonumber(time[2])
  local last = redis.call('GET', counter)
  if last and tonumber(last) >= token then
    token = tonumber(last) + 1
  end
  local digits = string.format('%.0f', token)
  redis.call('SET', counter, digits, 'PX', idle_ms)
  return digits
end";

/// An optimistic update against its two raw round trips (see the module docs).
fn versioned(c: &mut Criterion) {
    let redis = server::RedisProcess::start();
    let record = LockServer::open(&redis.url())
        .unwrap()
        .versioned("bench")
        .unwrap();
    let value = b"0123456789abcdef0123456789abcdef".as_slice();
    let trivial = Script::new("return 1");
    let mut con = raw_connection(&redis.url());
    let mut group = c.benchmark_group("versioned");
    group.bench_function("load_commit", |b| {
        b.iter(|| {
            let (_, version) = record.load().unwrap();
            record.commit(version, value).unwrap();
        });
    });
    group.bench_function("raw_hmget_evalsha", |b| {
        b.iter(|| {
            let _: redis::Value = redis::cmd("HMGET")
                .arg("raw:{bench}:record")
                .arg("d")
                .arg("v")
                .query(&mut con)
                .unwrap();
            let _: i64 = trivial
                .key("raw:{bench}:record")
                .arg(1)
                .arg(value)
                .invoke(&mut con)
                .unwrap();
        });
    });
    group.finish();
}

criterion_group!(benches_group, benches, delayed, topology, versioned);
criterion_main!(benches_group);
