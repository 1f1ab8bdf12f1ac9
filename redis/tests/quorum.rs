//! A lease over a majority of independent `redis-server`s (each started here, on its own free
//! 127.0.0.1 port and directory): the single-server contract again, on quorums of 3 and of 1,
//! then servers killed, paused and restarted, a majority down, and a history check.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use fencelock::{FencingToken, LeaseLost};
use fencelock_redis::{try_acquire_all, Error, LockServer, RedisLock};
use redis::Commands;
use support::{behaviour, quick_builder, raw, Persistence, RedisProcess};

fn start(n: usize, persistence: Persistence) -> Vec<RedisProcess> {
    (0..n)
        .map(|_| RedisProcess::start_with(persistence))
        .collect()
}

fn urls(servers: &[RedisProcess]) -> Vec<String> {
    servers.iter().map(RedisProcess::url).collect()
}

fn quorum(servers: &[RedisProcess]) -> LockServer {
    let urls = urls(servers);
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    quick_builder().quorum(&urls).expect("a quorum handle")
}

fn setup(servers: &[RedisProcess]) -> behaviour::Setup {
    let urls = urls(servers);
    behaviour::Setup {
        locks: quorum(servers),
        data: quick_builder().open(&urls[0]).unwrap(),
        reopen: Box::new(move || {
            let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
            LockServer::quorum(&urls).unwrap()
        }),
    }
}

/// One `#[test]` per shared body on a quorum of 3, and one on a quorum of 1.
macro_rules! on_quorums {
    ($($body:ident => $of_three:ident, $of_one:ident);* $(;)?) => {$(
        #[test]
        fn $of_three() {
            behaviour::$body(&setup(&start(3, Persistence::None)));
        }
        #[test]
        fn $of_one() {
            behaviour::$body(&setup(&start(1, Persistence::None)));
        }
    )*};
}

on_quorums!(
    one_holder_at_a_time => three_one_holder_at_a_time, one_one_holder_at_a_time;
    status_shows_the_holder => three_status_shows_the_holder, one_status_shows_the_holder;
    tokens_strictly_increase => three_tokens_strictly_increase, one_tokens_strictly_increase;
    stalled_holder_is_taken_over_and_refused => three_stalled_holder_refused, one_stalled_holder_refused;
    stale_release_is_refused_and_changes_nothing => three_stale_release_refused, one_stale_release_refused;
    a_lost_lease_reports_the_same_loss_every_time => three_same_loss, one_same_loss;
    expired_lease_reports_expired => three_expired_lease, one_expired_lease;
    renew_keeps_others_out => three_renew_keeps_others_out, one_renew_keeps_others_out;
    drop_releases => three_drop_releases, one_drop_releases;
    acquire_timeout_picks_up_a_release => three_acquire_timeout_release, one_acquire_timeout_release;
    acquire_timeout_takes_over_an_expired_lease => three_acquire_timeout_expiry, one_acquire_timeout_expiry;
    acquire_timeout_gives_up_on_time => three_acquire_timeout_gives_up, one_acquire_timeout_gives_up;
    threads_never_overlap_and_tokens_follow_grants => three_threads_never_overlap, one_threads_never_overlap;
    fenced_admits_in_token_order => three_fenced_admits_in_order, one_fenced_admits_in_order;
);

/// A quorum of one is a single server: `try_acquire_all` works on it as on `open`.
#[test]
fn one_try_acquire_all() {
    behaviour::try_acquire_all_is_all_or_nothing(&setup(&start(1, Persistence::None)));
}

#[test]
fn bad_quorums_are_refused() {
    let servers = start(3, Persistence::None);
    let urls = urls(&servers);
    let u: Vec<&str> = urls.iter().map(String::as_str).collect();
    let invalid = |r: Result<LockServer, Error>| matches!(r, Err(Error::InvalidInput(_)));
    assert!(invalid(LockServer::quorum(&[])));
    assert!(invalid(LockServer::quorum(&u[..2])));
    assert!(invalid(LockServer::quorum(&[u[0], u[1], u[0]])));
    let localhost = format!("redis://127.0.0.1:{}/0", servers[0].port());
    assert!(
        invalid(LockServer::quorum(&[u[0], u[1], &localhost])),
        "same server, same db"
    );
    assert!(matches!(
        RedisLock::quorum(&u[..2], "x"),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        LockServer::quorum(&[u[0], "nope", u[2]]),
        Err(Error::Redis(_))
    ));

    let q = LockServer::quorum(&u).unwrap();
    assert_eq!(q.servers(), 3);
    assert!(matches!(q.fenced("x"), Err(Error::InvalidInput(_))));
    let (a, b) = (q.lock("a").unwrap(), q.lock("b").unwrap());
    assert!(matches!(
        try_acquire_all(&[&a, &b], Duration::from_secs(1)),
        Err(Error::InvalidInput(_))
    ));
    assert!(RedisLock::quorum(&u, "fine").is_ok());
}

#[test]
fn the_token_is_stored_on_a_majority_and_the_key_carries_it() {
    let servers = start(3, Persistence::None);
    let lease = quorum(&servers)
        .lock("stored")
        .unwrap()
        .try_acquire(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    let token = lease.token().to_string();
    let mut stored = 0;
    for server in &servers {
        let mut con = raw(server);
        let value: Option<String> = con.get("fencelock:{stored}:lock").unwrap();
        let counter: Option<String> = con.get("fencelock:{stored}:token").unwrap();
        if value
            .as_deref()
            .is_some_and(|v| v.ends_with(&format!(":{token}")))
        {
            assert_eq!(counter.as_deref(), Some(token.as_str()));
            stored += 1;
        }
    }
    assert!(stored >= 2, "the token is stored on a majority: {stored}");
}

/// One server killed mid-run, restarted without persistence; another paused: locking goes on,
/// tokens keep growing, and no call waits for a server it does not need.
#[test]
fn a_minority_down_or_paused_changes_nothing_but_latency() {
    let mut servers = start(3, Persistence::None);
    let handle = quick_builder()
        .io_timeout(Duration::from_secs(3))
        .quorum(
            &urls(&servers)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let lock = handle.lock("minority").unwrap();
    let mut last = FencingToken::new(0);
    let mut round = |what: &str| {
        for _ in 0..10 {
            let began = Instant::now();
            let lease = lock
                .try_acquire(Duration::from_secs(10))
                .unwrap()
                .unwrap_or_else(|| panic!("{what}: granted"));
            assert!(lease.token() > last, "{what}: {} !> {last}", lease.token());
            last = lease.token();
            lease.release().unwrap();
            // Not a timing target: far below the 3 s I/O timeout a stalled server would cost.
            assert!(
                began.elapsed() < Duration::from_secs(2),
                "{what}: waited for a server it did not need"
            );
        }
    };
    round("all up");
    servers[2].kill9();
    round("one killed");
    servers[2].restart(); // empty: it lost its keys and its counter
    round("one restarted empty");
    servers[0].pause();
    round("one paused");
    servers[0].resume();
    round("all back");
}

#[test]
fn tokens_grow_when_a_restarted_minority_lost_its_counters() {
    for persistence in [Persistence::None, Persistence::AppendFsyncAlways] {
        let mut servers = start(3, persistence);
        let handle = quorum(&servers);
        let lock = handle.lock("restart").unwrap();
        let mut last = FencingToken::new(0);
        for victim in [0, 1, 2, 0] {
            // A release that the kill cut off leaves its key (persisted, with an append-only
            // file) until its TTL: wait for it rather than assume it went.
            let lease = lock
                .acquire_timeout(Duration::from_secs(1), Duration::from_secs(15))
                .unwrap()
                .unwrap_or_else(|| panic!("{persistence:?} victim {victim}: never granted"));
            assert!(
                lease.token() > last,
                "{persistence:?}: {} !> {last}",
                lease.token()
            );
            last = lease.token();
            drop(lease);
            servers[victim].kill9();
            servers[victim].restart();
        }
    }
}

#[test]
fn a_majority_down_is_an_error_within_the_timeouts_and_grants_nothing() {
    let mut servers = start(3, Persistence::None);
    let handle = quorum(&servers); // 500 ms connect and I/O timeouts
    let lock = handle.lock("majority").unwrap();
    drop(lock.try_acquire(Duration::from_secs(5)).unwrap().unwrap());
    servers[0].kill9();
    servers[1].pause();
    let began = Instant::now();
    let err = lock.try_acquire(Duration::from_secs(5)).unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(lock
        .acquire_timeout(Duration::from_secs(5), Duration::from_secs(1))
        .is_err());
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
    // Nothing was granted: the one live server holds no key of ours (the claim was released).
    servers[1].resume();
    servers[0].restart();
    // The paused server may still run the claim it received; it ends by its TTL at the latest.
    let lease = lock
        .acquire_timeout(Duration::from_secs(5), Duration::from_secs(20))
        .unwrap()
        .expect("the same handle works once a majority is back");
    lease.release().unwrap();
}

#[test]
fn five_servers_survive_two_failures_not_three() {
    let mut servers = start(5, Persistence::None);
    let handle = quorum(&servers);
    let lock = handle.lock("five").unwrap();
    servers[0].kill9();
    servers[3].kill9();
    let lease = lock
        .try_acquire(Duration::from_secs(5))
        .unwrap()
        .expect("3 of 5");
    let token = lease.token();
    lease.release().unwrap();
    servers[4].kill9();
    assert!(lock
        .try_acquire(Duration::from_secs(5))
        .unwrap_err()
        .is_unavailable());
    servers[0].restart();
    let lease = lock
        .try_acquire(Duration::from_secs(5))
        .unwrap()
        .expect("3 of 5 again");
    assert!(lease.token() > token);
}

#[test]
fn a_lost_quorum_lease_names_the_newer_holder() {
    let servers = start(3, Persistence::None);
    let handle = quorum(&servers);
    let lock = handle.lock("lost").unwrap();
    let mut stalled = lock
        .try_acquire(Duration::from_millis(100))
        .unwrap()
        .unwrap();
    thread::sleep(Duration::from_millis(400));
    let newer = lock.try_acquire(Duration::from_secs(10)).unwrap().unwrap();
    // Too late to renew on a quorum (no validity left): lost, and it says who holds it now.
    assert!(matches!(
        stalled.renew(Duration::from_secs(1)),
        Err(Error::Lost(LeaseLost::TakenOver { by })) if by == newer.token()
    ));
    let stalled = lock.try_acquire(Duration::from_millis(100)).unwrap();
    assert!(stalled.is_none());
    let old = handle.lock("lost2").unwrap();
    let first = old
        .try_acquire(Duration::from_millis(100))
        .unwrap()
        .unwrap();
    thread::sleep(Duration::from_millis(400));
    let second = old.try_acquire(Duration::from_secs(10)).unwrap().unwrap();
    assert!(matches!(
        first.release(),
        Err(Error::Lost(LeaseLost::TakenOver { by })) if by == second.token()
    ));
    drop(newer);
}

/// One grant in the history: its token, its client, and its validity window in nanoseconds of
/// the wall clock (the one clock that threads and processes on this machine share).
#[derive(Clone, Copy, Debug)]
struct Grant {
    token: FencingToken,
    client: usize,
    start: u128,
    end: u128,
}

/// Set in the environment of a child process: it then runs as one client of the history check,
/// `quorum-urls (comma-separated) ledger-url client-number`, and prints its grants.
const HISTORY_CLIENT: &str = "FENCELOCK_HISTORY_CLIENT";
const GRANTS_PER_CLIENT: usize = 12;

fn wall_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// One client: takes the lock `GRANTS_PER_CLIENT` times; a quarter of the time it stalls past
/// its validity before its fenced write (refused if a newer holder wrote).
fn history_client(quorum_urls: &[&str], ledger_url: &str, client: usize) -> (Vec<Grant>, u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let lock = LockServer::quorum(quorum_urls)
        .unwrap()
        .lock("history")
        .unwrap();
    let ledger = LockServer::open(ledger_url)
        .unwrap()
        .fenced("history")
        .unwrap();
    let mut rng = (client as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let (mut grants, mut stalls) = (Vec::new(), 0);
    for _ in 0..GRANTS_PER_CLIENT {
        assert!(Instant::now() < deadline, "history check ran out of time");
        let lease = lock
            .acquire_timeout(Duration::from_millis(150), Duration::from_secs(20))
            .unwrap()
            .unwrap_or_else(|| panic!("client {client} never got the lock"));
        let start = wall_nanos();
        let end_by_validity = start + lease.remaining().unwrap_or_default().as_nanos();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if rng.is_multiple_of(4) {
            stalls += 1;
            thread::sleep(Duration::from_millis(300)); // past its validity
        }
        let mut write = redis::pipe();
        write
            .cmd("RPUSH")
            .arg("history-writes")
            .arg(lease.token().get());
        let _ = ledger.write(lease.token(), &write); // refused if a newer one wrote
        let end = wall_nanos().min(end_by_validity);
        grants.push(Grant {
            token: lease.token(),
            client,
            start,
            end,
        });
        let _ = lease.release();
    }
    (grants, stalls)
}

/// The child side of the history check: does nothing unless started by it.
#[test]
fn history_client_process() {
    let Ok(spec) = std::env::var(HISTORY_CLIENT) else {
        return;
    };
    let parts: Vec<&str> = spec.split(' ').collect();
    let urls: Vec<&str> = parts[0].split(',').collect();
    let (grants, stalls) = history_client(&urls, parts[1], parts[2].parse().unwrap());
    for g in grants {
        println!("grant {} {} {} {}", g.token.get(), g.client, g.start, g.end);
    }
    println!("stalls {stalls}");
}

/// Several clients — threads of this process and child processes — lock one resource for a
/// while; random holders stall past their validity. Every grant's validity window (from
/// `remaining()` right after the grant, cut at the release) and every write a `RedisFenced`
/// admitted are recorded; then: no two windows overlap, tokens order the grants, and the writes
/// were admitted in token order.
#[test]
fn history_check_windows_never_overlap_and_writes_follow_tokens() {
    const THREADS: usize = 3;
    const PROCESSES: usize = 2;
    let servers = start(3, Persistence::None);
    let data = RedisProcess::start();
    let urls = urls(&servers);
    let quorum_urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let ledger_url = data.url();
    let children: Vec<std::process::Child> = (0..PROCESSES)
        .map(|p| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "history_client_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    HISTORY_CLIENT,
                    format!("{} {ledger_url} {}", urls.join(","), THREADS + p),
                )
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("start a client process")
        })
        .collect();
    let (mut grants, mut stalls) = thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|client| {
                let (quorum_urls, ledger_url) = (&quorum_urls, &ledger_url);
                s.spawn(move || history_client(quorum_urls, ledger_url, client))
            })
            .collect();
        threads
            .into_iter()
            .fold((Vec::new(), 0), |(mut all, n), t| {
                let (grants, stalls) = t.join().unwrap();
                all.extend(grants);
                (all, n + stalls)
            })
    });
    for child in children {
        let output = wait_bounded(child, Duration::from_secs(90));
        assert!(output.status.success(), "a client process failed");
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            // The test harness may print its own words before ours on a line.
            let ours = ["grant ", "stalls "]
                .iter()
                .find_map(|word| line.find(word));
            let Some(at) = ours else { continue };
            let words: Vec<&str> = line[at..].split(' ').collect();
            match words.as_slice() {
                ["grant", token, client, start, end] => grants.push(Grant {
                    token: FencingToken::new(token.parse().unwrap()),
                    client: client.parse().unwrap(),
                    start: start.parse().unwrap(),
                    end: end.parse().unwrap(),
                }),
                ["stalls", n] => stalls += n.parse::<u64>().unwrap(),
                _ => {}
            }
        }
    }
    assert_eq!(grants.len(), (THREADS + PROCESSES) * GRANTS_PER_CLIENT);
    assert!(stalls > 0, "the xorshift seeds stall some holders");
    grants.sort_by_key(|g| g.token);
    for pair in grants.windows(2) {
        let (earlier, later) = (&pair[0], &pair[1]);
        assert!(
            earlier.token < later.token,
            "two grants with one token: {:?}",
            earlier.token
        );
        assert!(
            earlier.end <= later.start,
            "validity windows overlap: token {} (client {}) ends {} ns after token {} (client {}) began",
            earlier.token, earlier.client, earlier.end - later.start, later.token, later.client
        );
    }
    let mut con = raw(&data);
    let writes: Vec<u64> = con.lrange("history-writes", 0, -1).unwrap();
    assert!(!writes.is_empty());
    assert!(
        writes.windows(2).all(|w| w[0] <= w[1]),
        "a lower token was admitted after a higher: {writes:?}"
    );
}

/// Waits for `child` at most `limit` (polling, bounded), killing it past that.
fn wait_bounded(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("a client process ran past {limit:?}");
}

/// A server that does not answer connections at all (a listener whose backlog is full, as a
/// host cut off by the network): each connection attempt to it costs a connect timeout, so it is
/// skipped for a growing while after one times out — most calls do not pay for it.
#[test]
fn a_blackholed_minority_is_skipped_not_waited_for() {
    use std::net::{TcpListener, TcpStream};
    let servers = start(2, Persistence::None);
    let blackhole = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = blackhole.local_addr().unwrap();
    // Fill the listener's accept queue (never accepting), so new connections hang.
    let mut fillers = Vec::new();
    let mut hanging = false;
    for _ in 0..4096 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(stream) => fillers.push(stream),
            Err(_) => {
                hanging = true;
                break;
            }
        }
    }
    assert!(hanging, "could not fill the listener's backlog");
    let mut urls = urls(&servers);
    urls.push(format!("redis://{addr}"));
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let connect_timeout = Duration::from_millis(200);
    let handle = quick_builder()
        .connect_timeout(connect_timeout)
        .quorum(&urls)
        .unwrap();
    let lock = handle.lock("blackhole").unwrap();
    let mut slow = 0;
    for _ in 0..20 {
        let began = Instant::now();
        let lease = lock
            .try_acquire(Duration::from_secs(10))
            .unwrap()
            .expect("2 of 3");
        lease.release().unwrap();
        if began.elapsed() >= connect_timeout {
            slow += 1;
        }
    }
    assert!(
        slow <= 5,
        "{slow} of 20 calls waited for the unreachable server"
    );
    drop(fillers);
}
