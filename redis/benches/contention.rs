//! One hot lock, many clients: the seed's exchange, where every server sells the same stock.
//!
//! `cargo bench -p fencelock-redis --bench contention [-- SECONDS]`: K = 1, 2, 8 and 32 clients,
//! each with its own `LockServer` (as separate processes would have), loop `acquire_timeout` →
//! hold → `release` on one lock for SECONDS (default 3) per run, with holds of 0 and 1 ms, on one
//! server and on a quorum of 3 (servers started here, on 127.0.0.1). Per run it prints the
//! throughput against one client's in the same topology and hold, the fewest and most
//! acquisitions of a client against the mean, and the waits' p50, p99 and max; then the issue's
//! targets, each marked `ok` or `MISS`. Plain `main`, not criterion: the figures are ratios and
//! distributions of one run, not a per-iteration time.
//!
//! The machine has 2 cores: 8 and 32 client threads (plus the servers) oversubscribe it.

#[path = "../tests/support/server.rs"]
mod server;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use fencelock_redis::LockServer;
use server::RedisProcess;

const CLIENTS: [usize; 4] = [1, 2, 8, 32];
const HOLDS_MS: [u64; 2] = [0, 1];
/// Long enough that no lease runs out while it is held here.
const TTL: Duration = Duration::from_secs(10);
/// Longer than any wait here: a client that never gets the lock shows as a missing count.
const WAIT: Duration = Duration::from_secs(30);

/// What one run measured.
struct Run {
    /// Acquisitions per client.
    counts: Vec<usize>,
    /// Every wait, from calling `acquire_timeout` to holding the lease.
    waits: Vec<Duration>,
    elapsed: Duration,
}

impl Run {
    fn throughput(&self) -> f64 {
        self.counts.iter().sum::<usize>() as f64 / self.elapsed.as_secs_f64()
    }

    fn spread(&self) -> (f64, f64) {
        let mean = self.counts.iter().sum::<usize>() as f64 / self.counts.len() as f64;
        let min = *self.counts.iter().min().unwrap() as f64;
        let max = *self.counts.iter().max().unwrap() as f64;
        (min / mean, max / mean)
    }

    fn quantile(&self, q: f64) -> Duration {
        let mut waits = self.waits.clone();
        waits.sort_unstable();
        let i = ((waits.len() as f64 - 1.0) * q).round() as usize;
        waits.get(i).copied().unwrap_or_default()
    }
}

/// K clients, each with its own handle to `urls`, on one lock for `seconds`.
fn run(urls: &[String], clients: usize, hold: Duration, seconds: Duration) -> Run {
    let start = Arc::new(Barrier::new(clients + 1));
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let urls: Vec<String> = urls.to_vec();
            let start = Arc::clone(&start);
            thread::spawn(move || {
                let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
                let server = LockServer::quorum(&refs).expect("a handle");
                let lock = server.lock("hot").expect("a lock");
                server.ping().expect("the servers answer");
                start.wait();
                let end = Instant::now() + seconds;
                let (mut count, mut waits) = (0, Vec::new());
                while Instant::now() < end {
                    let asked = Instant::now();
                    let lease = lock
                        .acquire_timeout(TTL, WAIT)
                        .expect("no server error")
                        .expect("the lock within 30 s");
                    waits.push(asked.elapsed());
                    count += 1;
                    hold_for(hold);
                    lease.release().expect("released while held");
                }
                (count, waits)
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    let mut result = Run {
        counts: Vec::new(),
        waits: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for worker in workers {
        let (count, waits) = worker.join().expect("a client thread");
        result.counts.push(count);
        result.waits.extend(waits);
    }
    result.elapsed = began.elapsed();
    result
}

/// The floor of any queue with a woken waiter that confirms its hand-off, on raw round trips:
/// K threads pass a baton round a ring — each blocks on `BLPOP` of its own list, confirms with one
/// `EVAL "return 1"`, holds, and pushes to the next thread's list (its release) — against one
/// thread doing `EVAL "return 1"` (its acquire), holding, and `EVAL "return 1"` (its release).
/// Throughput of the ring over the single thread's, same server, same hold.
fn raw_hand_off_floor(url: &str, clients: usize, hold: Duration, seconds: Duration) -> f64 {
    let client = redis::Client::open(url).expect("a client");
    let single = {
        let mut con = client.get_connection().expect("a connection");
        let began = Instant::now();
        let mut pairs = 0_u64;
        while began.elapsed() < seconds {
            eval_one(&mut con);
            hold_for(hold);
            eval_one(&mut con);
            pairs += 1;
        }
        pairs as f64 / began.elapsed().as_secs_f64()
    };
    let key = move |i: usize| format!("floor:{{ring}}:{}", i % clients);
    let mut con = client.get_connection().expect("a connection");
    let keys: Vec<String> = (0..clients).map(key).collect();
    redis::cmd("DEL")
        .arg(keys)
        .query::<()>(&mut con)
        .expect("DEL");
    let passes = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + seconds;
    let began = Instant::now();
    let ring: Vec<_> = (0..clients)
        .map(|i| {
            let (client, passes) = (client.clone(), Arc::clone(&passes));
            thread::spawn(move || {
                let mut con = client.get_connection().expect("a connection");
                while Instant::now() < end {
                    let got: Option<(String, String)> = redis::cmd("BLPOP")
                        .arg(key(i))
                        .arg(0.2)
                        .query(&mut con)
                        .expect("BLPOP");
                    if got.is_none() {
                        continue;
                    }
                    eval_one(&mut con); // the waiter confirms
                    hold_for(hold);
                    // Relaxed: a count read after every thread was joined.
                    passes.fetch_add(1, Relaxed);
                    push(&mut con, &key(i + 1)); // the release hands over
                }
            })
        })
        .collect();
    push(&mut con, &key(0));
    for thread in ring {
        thread.join().expect("a ring thread");
    }
    let ring = passes.load(Relaxed) as f64 / began.elapsed().as_secs_f64();
    ring / single
}

/// One raw round trip: the cheapest script call.
fn eval_one(con: &mut redis::Connection) {
    redis::cmd("EVAL")
        .arg("return 1")
        .arg(0)
        .query::<i64>(con)
        .expect("EVAL return 1");
}

fn push(con: &mut redis::Connection, key: &str) {
    redis::cmd("RPUSH")
        .arg(key)
        .arg(1)
        .query::<i64>(con)
        .expect("RPUSH");
}

fn hold_for(hold: Duration) {
    if !hold.is_zero() {
        thread::sleep(hold);
    }
}

/// The server's own time per uncontended acquire + release (`INFO commandstats`, the scripts'
/// `EVALSHA`s over `pairs` pairs): what queueing adds when nobody waits.
fn server_time_per_pair(url: &str, pairs: u32) -> Duration {
    let lock = LockServer::open(url).unwrap().lock("uncontended").unwrap();
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query::<()>(&mut con)
        .unwrap();
    for _ in 0..pairs {
        lock.try_acquire(TTL).unwrap().unwrap().release().unwrap();
    }
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut con)
        .unwrap();
    let usec: f64 = info
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split(',').find_map(|p| p.strip_prefix("usec=")))
        .and_then(|n| n.parse().ok())
        .expect("cmdstat_evalsha usec");
    Duration::from_secs_f64(usec / 1e6 / f64::from(pairs))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds = args
        .iter()
        .find_map(|a| a.parse::<f64>().ok())
        .map_or(Duration::from_secs(3), Duration::from_secs_f64);
    // `one` or `quorum` runs that topology alone.
    let only = |topology: &str| {
        !args.iter().any(|a| a == "one" || a == "quorum") || args.iter().any(|a| a == topology)
    };
    let one = [RedisProcess::start()];
    let three = [
        RedisProcess::start(),
        RedisProcess::start(),
        RedisProcess::start(),
    ];
    let mut misses = 0;
    println!(
        "one hot lock, {seconds:?} per run; 2-core machine: 8 and 32 clients oversubscribe it"
    );
    println!(
        "| servers | clients | hold | throughput vs 1 client | fewest / most vs mean | wait p50 | wait p99 | wait max |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (topology, servers) in [("1", &one[..]), ("quorum of 3", &three[..])] {
        if !only(if topology == "1" { "one" } else { "quorum" }) {
            continue;
        }
        let urls: Vec<String> = servers.iter().map(RedisProcess::url).collect();
        for hold_ms in HOLDS_MS {
            let hold = Duration::from_millis(hold_ms);
            let mut single = None;
            for k in CLIENTS {
                let r = run(&urls, k, hold, seconds);
                let base = *single.get_or_insert(r.throughput());
                let ratio = r.throughput() / base;
                let (fewest, most) = r.spread();
                let max = r.quantile(1.0);
                println!(
                    "| {topology} | {k} | {hold_ms} ms | {ratio:.2}x ({:.0}/s) | {fewest:.2} / {most:.2} | {} | {} | {} |",
                    r.throughput(),
                    ms(r.quantile(0.5)),
                    ms(r.quantile(0.99)),
                    ms(max),
                );
                // The targets.
                let mut check = |what: &str, ok: bool| {
                    if !ok {
                        misses += 1;
                    }
                    eprintln!(
                        "  {} {topology}, {k} clients, {hold_ms} ms: {what}",
                        if ok { "ok  " } else { "MISS" }
                    );
                };
                if topology == "1" && hold_ms == 1 && (k == 8 || k == 32) {
                    check(&format!("throughput {ratio:.2}x >= 0.9x"), ratio >= 0.9);
                    check(
                        &format!("fewest {fewest:.2}x >= 0.5x the mean"),
                        fewest >= 0.5,
                    );
                    let bound =
                        (hold + Duration::from_millis(5)) * k as u32 + Duration::from_millis(50);
                    check(
                        &format!("max wait {} <= {}", ms(max), ms(bound)),
                        max <= bound,
                    );
                }
                if topology != "1" && k == 8 && hold_ms == 1 {
                    check(&format!("throughput {ratio:.2}x >= 0.7x"), ratio >= 0.7);
                    check(
                        &format!("fewest {fewest:.2}x >= 0.33x the mean"),
                        fewest >= 0.33,
                    );
                }
            }
        }
    }
    if only("one") {
        println!();
        let per_pair = server_time_per_pair(&one[0].url(), 20_000);
        println!(
            "uncontended: the server's time per acquire + release, 20 000 pairs: {:.2} µs",
            per_pair.as_secs_f64() * 1e6
        );
        println!();
        println!("the floor of a hand-off to a woken waiter that confirms it, raw round trips (see raw_hand_off_floor):");
        for k in [8, 32] {
            let floor = raw_hand_off_floor(&one[0].url(), k, Duration::from_millis(1), seconds);
            println!("| 1 | {k} | 1 ms | raw ring {floor:.2}x one raw client |");
        }
    }
    eprintln!("targets missed: {misses}");
}
