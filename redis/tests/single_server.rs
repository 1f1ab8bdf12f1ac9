//! The lock's contract on one real `redis-server` (started per test on a free loopback port),
//! and the bad inputs every front end must refuse.

mod support;

use std::time::{Duration, Instant};

use fencelock::FencingToken;
use fencelock_redis::{Error, LockServer, RedisFenced, RedisLock, MAX_NAME_LEN};
use redis::Commands;
use support::{behaviour, handle, raw, RedisProcess};

/// One `#[test]` per shared body, each on a server of its own.
macro_rules! on_one_server {
    ($($body:ident),* $(,)?) => {$(
        #[test]
        fn $body() {
            let redis = RedisProcess::start();
            let url = redis.url();
            behaviour::$body(&behaviour::Setup {
                locks: handle(&redis),
                data: handle(&redis),
                reopen: Box::new(move || LockServer::open(&url).unwrap()),
            });
        }
    )*};
}

on_one_server!(
    one_holder_at_a_time,
    status_shows_the_holder,
    tokens_strictly_increase,
    stalled_holder_is_taken_over_and_refused,
    stale_release_is_refused_and_changes_nothing,
    a_lost_lease_reports_the_same_loss_every_time,
    expired_lease_reports_expired,
    renew_keeps_others_out,
    drop_releases,
    acquire_timeout_picks_up_a_release,
    acquire_timeout_takes_over_an_expired_lease,
    acquire_timeout_gives_up_on_time,
    threads_never_overlap_and_tokens_follow_grants,
    try_acquire_all_is_all_or_nothing,
    fenced_admits_in_token_order,
);

#[test]
fn fenced_write_runs_every_command_or_none() {
    let redis = RedisProcess::start();
    let ledger = handle(&redis).fenced("AAPL").unwrap();
    let mut sale = redis::pipe();
    sale.cmd("RPUSH").arg("sold:{AAPL}").arg(101).arg(102);
    sale.cmd("INCRBY").arg("count:{AAPL}").arg(2);
    ledger.write(FencingToken::new(10), &sale).unwrap();
    let mut late = redis::pipe();
    late.cmd("RPUSH").arg("sold:{AAPL}").arg(101);
    late.cmd("INCRBY").arg("count:{AAPL}").arg(1);
    assert!(matches!(
        ledger.write(FencingToken::new(9), &late),
        Err(Error::Stale(_))
    ));
    let mut con = raw(&redis);
    let sold: Vec<u32> = con.lrange("sold:{AAPL}", 0, -1).unwrap();
    let count: u32 = con.get("count:{AAPL}").unwrap();
    assert_eq!(
        (sold, count),
        (vec![101, 102], 2),
        "the stale write ran nothing"
    );
    let highest: String = con.get("fencelock:{AAPL}:fenced").unwrap();
    assert_eq!(highest, "10");
}

/// A pipeline with a command Redis refuses inside a script (`MULTI`, a blocking pop, ...) is
/// refused before it is sent: the token is not recorded and nothing runs. (Sent, the script
/// would record the token, then fail on the command.)
#[test]
fn fenced_write_refuses_commands_scripts_cannot_run_before_sending() {
    let redis = RedisProcess::start();
    let ledger = handle(&redis).fenced("MSFT").unwrap();
    for refused in ["MULTI", "BLPOP", "SUBSCRIBE", "WATCH"] {
        let mut pipe = redis::pipe();
        pipe.cmd("RPUSH").arg("sold:{MSFT}").arg(1);
        pipe.cmd(refused).arg("sold:{MSFT}").arg(0);
        assert!(
            matches!(
                ledger.write(FencingToken::new(50), &pipe),
                Err(Error::InvalidInput(_))
            ),
            "{refused}"
        );
    }
    let mut con = raw(&redis);
    let highest: Option<String> = con.get("fencelock:{MSFT}:fenced").unwrap();
    let sold: Vec<u32> = con.lrange("sold:{MSFT}", 0, -1).unwrap();
    assert_eq!(
        (highest, sold),
        (None, vec![]),
        "nothing recorded, nothing ran"
    );
}

#[test]
fn keys_use_the_prefix_and_hash_tag_and_counters_expire() {
    let redis = RedisProcess::start();
    let server = support::quick_builder()
        .key_prefix("x:")
        .open(&redis.url())
        .unwrap();
    let lease = server
        .lock("AAPL")
        .unwrap()
        .try_acquire(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    let mut con = raw(&redis);
    let value: String = con.get("x:{AAPL}:lock").unwrap();
    assert!(value.ends_with(&format!(":{}", lease.token())), "{value}");
    assert_eq!(value.len(), 32 + 1 + lease.token().to_string().len());
    let ttl: i64 = con.pttl("x:{AAPL}:lock").unwrap();
    assert!(ttl > 0 && ttl <= 10_000, "{ttl}");
    // The counter expires a day after its last use: no key is left behind forever.
    let counter_ttl: i64 = con.pttl("x:{AAPL}:token").unwrap();
    assert!(
        counter_ttl > 23 * 3_600_000 && counter_ttl <= 24 * 3_600_000,
        "{counter_ttl}"
    );
    lease.release().unwrap();
    assert!(!con.exists::<_, bool>("x:{AAPL}:lock").unwrap());
}

#[test]
fn tokens_are_server_time_based_and_below_2_pow_53() {
    let redis = RedisProcess::start();
    let token = handle(&redis)
        .lock("t")
        .unwrap()
        .try_acquire(Duration::from_secs(1))
        .unwrap()
        .unwrap()
        .token();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Within a minute of the local clock (the server runs here), in microseconds.
    let diff = (token.get() / 1_000).abs_diff(now_ms);
    assert!(
        diff < 60_000,
        "token {token} is not the server's time in µs: {diff} ms off"
    );
    assert!(token.get() < 1 << 53);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let redis = RedisProcess::start();
    let server = handle(&redis);
    let invalid = |r: Result<RedisLock, Error>| matches!(r, Err(Error::InvalidInput(_)));
    assert!(invalid(server.lock("")));
    assert!(invalid(server.lock("a{b}")));
    assert!(invalid(server.lock(&"n".repeat(100_000))));
    assert!(server.lock(&"n".repeat(MAX_NAME_LEN)).is_ok());
    assert!(matches!(server.fenced(""), Err(Error::InvalidInput(_))));

    let lock = server.lock("ttl").unwrap();
    for ttl in [
        Duration::ZERO,
        Duration::from_millis(1),
        Duration::MAX,
        Duration::from_secs(u64::MAX / 4),
    ] {
        match lock.try_acquire(ttl) {
            Err(Error::InvalidInput(why)) => assert!(why.reason().contains("TTL"), "{why}"),
            other => panic!("ttl {ttl:?}: {other:?}"),
        }
        assert!(matches!(
            lock.acquire_timeout(ttl, Duration::from_secs(1)),
            Err(Error::InvalidInput(_))
        ));
    }
    let mut lease = lock.try_acquire(Duration::from_secs(5)).unwrap().unwrap();
    assert!(matches!(
        lease.renew(Duration::ZERO),
        Err(Error::InvalidInput(_))
    ));
    assert!(lease.is_valid(), "a refused renew changes nothing");
    // A huge wait is a wait without end, not an overflow.
    drop(lease);
    assert!(lock
        .acquire_timeout(Duration::from_secs(1), Duration::MAX)
        .unwrap()
        .is_some());

    for url in ["", "not a url", "http://127.0.0.1:1", "redis://"] {
        assert!(
            matches!(RedisLock::open(url, "x"), Err(Error::Redis(_))),
            "{url:?}"
        );
        assert!(
            matches!(RedisFenced::open(url, "x"), Err(Error::Redis(_))),
            "{url:?}"
        );
    }
    for builder in [
        LockServer::builder().io_timeout(Duration::ZERO),
        LockServer::builder().io_timeout(Duration::MAX),
        LockServer::builder().connect_timeout(Duration::from_secs(7200)),
        LockServer::builder().connect_timeout(Duration::ZERO),
        LockServer::builder().retry_delay(Duration::ZERO, Duration::ZERO),
        LockServer::builder().retry_delay(Duration::from_secs(2), Duration::from_secs(1)),
        LockServer::builder().key_prefix("{"),
    ] {
        assert!(matches!(
            builder.open(&redis.url()),
            Err(Error::InvalidInput(_))
        ));
    }
}

#[test]
fn a_server_that_is_not_there_is_an_error_within_the_timeout() {
    let port = {
        let redis = RedisProcess::start();
        redis.port()
    }; // stopped: nothing listens there now
    let server = support::quick_builder()
        .open(&format!("redis://127.0.0.1:{port}"))
        .unwrap(); // lazy: opening a handle does not connect
    let lock = server.lock("nobody").unwrap();
    let began = Instant::now();
    let err = lock.try_acquire(Duration::from_secs(1)).unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(began.elapsed() < Duration::from_secs(5));
    assert!(lock
        .acquire_timeout(Duration::from_secs(1), Duration::from_secs(2))
        .is_err());
    assert!(server.fenced("nobody").unwrap().highest().is_err());
    assert!(server.ping().is_err());
}

#[test]
fn lease_is_send_and_lock_is_send_sync_clone() {
    fn send_static<T: Send + 'static>() {}
    fn send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    send_static::<fencelock_redis::RedisLease>();
    send_sync_clone::<RedisLock>();
    send_sync_clone::<RedisFenced>();
    send_sync_clone::<LockServer>();
}
