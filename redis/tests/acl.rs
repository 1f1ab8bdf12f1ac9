//! ACL users on every path (issue 18, its security bug first): a wrong password or an unknown
//! user is an `Error::Redis` that says so — on one server, on a quorum, and async — and never a
//! connection that goes on as the server's open `default` user (Redis's out-of-the-box setup).
//!
//! Every server here is started by the test on 127.0.0.1; every wait is bounded.

mod support;

use std::time::Duration;

use fencelock_redis::{Error, LockServer};
use support::{behaviour, quick_builder, raw, RedisProcess};

/// The least a lock client needs, as docs/deploying.md gives it: its keys under the prefix, the
/// commands it sends (`EVALSHA`, `EVAL`, `SCRIPT LOAD`, `PING`; `BLPOP`, `RPUSH`, `PEXPIRE` while
/// waiting; `GET` for a fenced resource's highest token) and those its scripts run — nothing
/// else. A fenced resource's own data keys and commands are the application's to add: here the
/// test bodies' `stall-value`, `fenced-order-list` (`SET`, `RPUSH`).
const MINIMAL_RULE: &[&str] = &[
    "on",
    ">secret",
    "resetkeys",
    "~fencelock:*",
    "resetchannels",
    "-@all",
    "+ping",
    "+evalsha",
    "+eval",
    "+script|load",
    "+blpop",
    "+rpush",
    "+pexpire",
    "+get",
    "+set",
    "+del",
    "+exists",
    "+pttl",
    "+time",
    "+zadd",
    "+zrange",
    "+zscore",
    "+zrem",
    "+zrank",
];

/// Adds the user `minimal` with [`MINIMAL_RULE`] (and the test bodies' data keys) on `redis`.
fn add_minimal_user(redis: &RedisProcess) {
    let mut con = raw(redis);
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("minimal")
        .arg(MINIMAL_RULE)
        .arg("~stall-value")
        .arg("~fenced-order-list")
        .query(&mut con)
        .unwrap();
}

/// The lock's whole contract on one server and on a quorum of 3, as a user with exactly the
/// minimal rule; and a key outside it is refused (`NOPERM`) — with nothing run.
#[test]
fn the_contract_holds_for_a_user_with_the_minimal_rule() {
    let servers: Vec<RedisProcess> = (0..3).map(|_| RedisProcess::start()).collect();
    servers.iter().for_each(add_minimal_user);
    let urls: Vec<String> = servers
        .iter()
        .map(|s| url_as(s, "minimal", "secret"))
        .collect();
    let first = urls[0].clone();
    let one = move || quick_builder().open(&first).unwrap();
    let all = urls.clone();
    let quorum = move || {
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        quick_builder().quorum(&refs).unwrap()
    };
    behaviour::on_one_server_and_a_quorum(one.clone(), quorum, || {
        for server in &servers {
            let () = redis::cmd("FLUSHALL").query(&mut raw(server)).unwrap();
        }
    });
    // A fenced write to a key outside the rule: NOPERM, and the refused command did not run.
    let ledger = one().fenced("outside").unwrap();
    let lease = one()
        .lock("outside")
        .unwrap()
        .try_acquire(TTL)
        .unwrap()
        .unwrap();
    let mut write = redis::pipe();
    write.cmd("SET").arg("not-allowed").arg(1);
    match ledger.write(lease.token(), &write) {
        Err(Error::Redis(e)) => {
            let text = e.to_string();
            assert!(
                text.contains("NOPERM") || text.contains("can't access"),
                "{text}"
            );
        }
        other => panic!("expected NOPERM, got {other:?}"),
    }
    let exists: bool = redis::cmd("EXISTS")
        .arg("not-allowed")
        .query(&mut raw(&servers[0]))
        .unwrap();
    assert!(!exists, "the refused command did not run");
}

const TTL: Duration = Duration::from_secs(10);

/// Adds the user `locker` (password `secret`) on `redis`; the `default` user stays open.
fn add_user(redis: &RedisProcess) {
    let mut con = raw(redis);
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("locker")
        .arg("on")
        .arg(">secret")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query(&mut con)
        .unwrap();
}

fn url_as(redis: &RedisProcess, user: &str, password: &str) -> String {
    format!("redis://{user}:{password}@127.0.0.1:{}", redis.port())
}

fn lock_keys(redis: &RedisProcess) -> Vec<String> {
    redis::cmd("KEYS")
        .arg("fencelock:*")
        .query(&mut raw(redis))
        .unwrap()
}

fn refused_as_auth(result: Result<impl std::fmt::Debug, Error>) {
    match result {
        Err(Error::Redis(e)) => {
            let text = e.to_string();
            assert!(
                text.contains("WRONGPASS") || text.to_lowercase().contains("auth"),
                "the error says the login failed: {text}"
            );
        }
        other => panic!("expected an authentication error, got {other:?}"),
    }
}

/// The quorum's own sockets used to send `AUTH user pass` and discard the reply: with a wrong
/// password on servers whose `default` user is open, leases were granted and keys written as
/// `default`.
#[test]
fn a_quorum_refuses_a_wrong_password_or_an_unknown_user() {
    let servers: Vec<RedisProcess> = (0..3).map(|_| RedisProcess::start()).collect();
    servers.iter().for_each(add_user);
    for (user, password) in [("locker", "wrong"), ("nobody", "secret")] {
        let urls: Vec<String> = servers.iter().map(|s| url_as(s, user, password)).collect();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        let lock = quick_builder().quorum(&urls).unwrap().lock("acl").unwrap();
        refused_as_auth(lock.try_acquire(TTL));
        refused_as_auth(lock.acquire_timeout(TTL, Duration::from_millis(200)));
    }
    for server in &servers {
        assert_eq!(
            lock_keys(server),
            Vec::<String>::new(),
            "nothing was written"
        );
    }
    // The right password works.
    let urls: Vec<String> = servers
        .iter()
        .map(|s| url_as(s, "locker", "secret"))
        .collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let lock = LockServer::quorum(&urls).unwrap().lock("acl").unwrap();
    lock.try_acquire(TTL)
        .unwrap()
        .expect("free")
        .release()
        .unwrap();
}

#[test]
fn one_server_refuses_a_wrong_password_or_an_unknown_user() {
    let redis = RedisProcess::start();
    add_user(&redis);
    for (user, password) in [("locker", "wrong"), ("nobody", "secret")] {
        let lock = quick_builder()
            .open(&url_as(&redis, user, password))
            .unwrap()
            .lock("acl")
            .unwrap();
        refused_as_auth(lock.try_acquire(TTL));
    }
    assert_eq!(lock_keys(&redis), Vec::<String>::new());
}

#[cfg(feature = "tokio")]
#[tokio::test]
async fn async_refuses_a_wrong_password_on_one_server_and_a_quorum() {
    let servers: Vec<RedisProcess> = (0..3).map(|_| RedisProcess::start()).collect();
    servers.iter().for_each(add_user);
    let one = fencelock_redis::aio::RedisLock::open(&url_as(&servers[0], "locker", "wrong"), "acl")
        .unwrap();
    refused_as_auth(one.try_acquire(TTL).await);
    let urls: Vec<String> = servers
        .iter()
        .map(|s| url_as(s, "locker", "wrong"))
        .collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let quorum = fencelock_redis::aio::RedisLock::quorum(&urls, "acl").unwrap();
    refused_as_auth(quorum.try_acquire(TTL).await);
    for server in &servers {
        assert_eq!(lock_keys(server), Vec::<String>::new());
    }
}

/// A user without the script commands gets a typed `Error::Redis` that says it has no
/// permission, within the timeouts, on one server and on a quorum — and nothing is written.
#[test]
fn a_user_without_the_script_commands_is_told_so() {
    let servers: Vec<RedisProcess> = (0..3).map(|_| RedisProcess::start()).collect();
    for server in &servers {
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("noscripts")
            .arg(
                &[
                    "on",
                    ">secret",
                    "~fencelock:*",
                    "-@all",
                    "+ping",
                    "+get",
                    "+set",
                ][..],
            )
            .query(&mut raw(server))
            .unwrap();
    }
    let urls: Vec<String> = servers
        .iter()
        .map(|s| url_as(s, "noscripts", "secret"))
        .collect();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    for server in [
        quick_builder().open(refs[0]).unwrap(),
        quick_builder().quorum(&refs).unwrap(),
    ] {
        match server.lock("noscripts").unwrap().try_acquire(TTL) {
            Err(Error::Redis(e)) => {
                let text = e.to_string();
                assert!(
                    text.contains("NOPERM") || text.contains("permission"),
                    "{text}"
                );
            }
            other => panic!("expected NOPERM, got {other:?}"),
        }
    }
    for server in &servers {
        assert_eq!(
            lock_keys(server),
            Vec::<String>::new(),
            "nothing was written"
        );
    }
}
