//! A Redis Cluster of three masters as the lock server (`LockServer::cluster`): every lock lives
//! on the master that owns its name's slot. Locks spread over all masters are exclusive,
//! renewable and hand their tokens on in order; a fenced pipeline may touch only keys of its
//! resource's slot; `try_acquire_all` refuses names on different slots before sending; a slot
//! moved to another master keeps its locks and tokens (`MOVED` followed, nothing lost); a killed
//! master fails its slots' calls as typed errors within the timeouts while the others work on.
//! The same, async, at the end.
//!
//! Each test starts its own cluster (three `redis-server --cluster-enabled yes` on 127.0.0.1,
//! joined by `redis-cli --cluster create`).

mod support;

use std::time::{Duration, Instant};

#[cfg(feature = "tokio")]
use fencelock_redis::aio;
use fencelock_redis::{try_acquire_all, Error, LockServer};
use support::cluster::RedisCluster;

const TTL: Duration = Duration::from_secs(10);

/// A handle given every master's URL: a new connection (after an error drops one) starts from
/// any of them that is up.
fn handle(cluster: &RedisCluster) -> LockServer {
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    support::quick_builder()
        .cluster(&urls)
        .expect("a cluster handle")
}

/// A raw cluster connection, for checking keys behind the crate's back.
fn raw(cluster: &RedisCluster) -> redis::cluster::ClusterConnection {
    redis::cluster::ClusterClient::builder(cluster.urls())
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2))
        .build()
        .expect("cluster client")
        .get_connection()
        .expect("raw cluster connection")
}

#[test]
fn locks_on_every_master_are_exclusive_renewable_and_their_tokens_grow() {
    let cluster = RedisCluster::start(3);
    let server = handle(&cluster);
    let names = cluster.names_on_every_master(2);
    let owners: std::collections::BTreeSet<usize> = names
        .iter()
        .map(|name| cluster.owner_of_slot(RedisCluster::slot_of(name)))
        .collect();
    assert_eq!(owners.len(), 3, "the names cover every master");
    for name in &names {
        let lock = server.lock(name).unwrap();
        let mut first = lock.try_acquire(TTL).unwrap().expect("a free lock");
        assert!(
            lock.try_acquire(TTL).unwrap().is_none(),
            "{name}: exclusive"
        );
        first.renew(TTL).expect("renewed on its master");
        let token = first.token();
        first.release().unwrap();
        let second = lock.try_acquire(TTL).unwrap().expect("free again");
        assert!(second.token() > token, "{name}: tokens grow");
        // The keys are on the master that owns the name's slot.
        let mut con = raw(&cluster);
        let held: Option<String> = redis::cmd("GET")
            .arg(format!("fencelock:{{{name}}}:lock"))
            .query(&mut con)
            .unwrap();
        assert!(held.is_some_and(|v| v.ends_with(&second.token().get().to_string())));
        second.release().unwrap();
    }
}

#[test]
fn a_waiter_on_a_cluster_is_woken_by_the_release() {
    let cluster = RedisCluster::start(3);
    let server = handle(&cluster);
    let lock = server.lock("AAPL").unwrap();
    let held = lock.try_acquire(TTL).unwrap().expect("free");
    let token = held.token();
    let waiter = {
        let lock = lock.clone();
        std::thread::spawn(move || lock.acquire_timeout(TTL, Duration::from_secs(20)))
    };
    // The waiter is in the queue (its entry is on the name's master) before the release.
    let mut con = raw(&cluster);
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis::cmd("ZCARD")
        .arg("fencelock:{AAPL}:queue")
        .query::<u64>(&mut con)
        .unwrap()
        == 0
    {
        assert!(Instant::now() < deadline, "the waiter never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
    held.release().unwrap();
    let next = waiter.join().unwrap().unwrap().expect("handed over");
    assert!(next.token() > token);
    next.release().unwrap();
}

#[test]
fn a_fenced_pipeline_on_a_cluster_touches_only_keys_of_its_resources_slot() {
    let cluster = RedisCluster::start(3);
    let server = handle(&cluster);
    let lock = server.lock("AAPL").unwrap();
    let ledger = server.fenced("AAPL").unwrap();
    let old = lock.try_acquire(TTL).unwrap().expect("free");
    let old_token = old.token();
    old.release().unwrap();
    let lease = lock.try_acquire(TTL).unwrap().expect("free");

    let mut sale = redis::pipe();
    sale.cmd("RPUSH").arg("sold:{AAPL}").arg(101);
    sale.cmd("INCRBY").arg("proceeds:{AAPL}").arg(5);
    ledger
        .write(lease.token(), &sale)
        .expect("keys on the resource's slot");

    // A key of another slot, after one of the right slot: refused, and neither ran.
    let mut stray = redis::pipe();
    stray.cmd("RPUSH").arg("sold:{AAPL}").arg(102);
    stray.cmd("SET").arg("sold:MSFT").arg("x");
    match ledger.write(lease.token(), &stray) {
        Err(Error::InvalidInput(why)) => assert!(why.to_string().contains("sold:MSFT"), "{why}"),
        other => panic!("a key of another slot must be refused, got {other:?}"),
    }
    // A key without a hash tag that happens to hash elsewhere, in a multi-key command.
    let mut multi = redis::pipe();
    multi.cmd("DEL").arg("sold:{AAPL}").arg("proceeds");
    assert!(matches!(
        ledger.write(lease.token(), &multi),
        Err(Error::InvalidInput(_))
    ));
    let mut con = raw(&cluster);
    let sold: Vec<u64> = redis::cmd("LRANGE")
        .arg("sold:{AAPL}")
        .arg(0)
        .arg(-1)
        .query(&mut con)
        .unwrap();
    assert_eq!(sold, [101], "nothing of a refused pipeline ran");
    let stray_set: Option<String> = redis::cmd("GET").arg("sold:MSFT").query(&mut con).unwrap();
    assert_eq!(stray_set, None);

    // The older holder is refused, as on one server.
    assert!(matches!(
        ledger.write(old_token, &sale),
        Err(Error::Stale(_))
    ));
    assert_eq!(ledger.highest().unwrap(), lease.token());
    lease.release().unwrap();
}

#[test]
fn a_versioned_record_on_a_cluster_commits_on_its_slot_only() {
    let cluster = RedisCluster::start(3);
    let server = handle(&cluster);
    let price = server.versioned("AAPL").unwrap();
    let (_, v0) = price.load().unwrap();
    let v1 = price.commit(v0, b"101").unwrap();
    let mut sale = redis::pipe();
    sale.cmd("RPUSH").arg("sold:{AAPL}").arg(1);
    let v2 = price.commit_with(v1, &sale).unwrap();
    let mut stray = redis::pipe();
    stray.cmd("RPUSH").arg("sold:{AAPL}").arg(2);
    stray.cmd("SET").arg("sold:MSFT").arg("x");
    assert!(matches!(
        price.commit_with(v2, &stray),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        price.commit(v1, b"stale"),
        Err(Error::Conflict { .. })
    ));
    assert_eq!(price.load().unwrap(), (Some(b"101".to_vec()), v2));
    let sold: Vec<u32> = redis::cmd("LRANGE")
        .arg("sold:{AAPL}")
        .arg(0)
        .arg(-1)
        .query(&mut raw(&cluster))
        .unwrap();
    assert_eq!(sold, [1], "nothing of the refused pipeline ran");
}

#[test]
fn try_acquire_all_on_a_cluster_takes_locks_of_one_slot_only() {
    let cluster = RedisCluster::start(3);
    let server = handle(&cluster);
    let (aapl, msft) = (server.lock("AAPL").unwrap(), server.lock("MSFT").unwrap());
    assert_ne!(RedisCluster::slot_of("AAPL"), RedisCluster::slot_of("MSFT"));
    assert!(matches!(
        try_acquire_all(&[&aapl, &msft], TTL),
        Err(Error::InvalidInput(_))
    ));
    assert!(
        aapl.try_acquire(TTL).unwrap().is_some(),
        "nothing was taken"
    );

    // Two names whose slots coincide (names cannot carry braces, so find two).
    let mut by_slot = std::collections::HashMap::new();
    let (a, b) = (0..100_000)
        .find_map(|i| {
            let name = format!("n{i}");
            by_slot
                .insert(RedisCluster::slot_of(&name), name.clone())
                .map(|other| (other, name))
        })
        .expect("two names on one slot");
    let (a, b) = (server.lock(&a).unwrap(), server.lock(&b).unwrap());
    let both = try_acquire_all(&[&a, &b], TTL).unwrap().expect("both free");
    assert_eq!(both.len(), 2);
    for lease in both {
        lease.release().unwrap();
    }
}

#[test]
fn a_slot_moved_to_another_master_keeps_its_locks_and_tokens() {
    let mut cluster = RedisCluster::start(3);
    let server = handle(&cluster);
    let name = "AAPL";
    let slot = RedisCluster::slot_of(name);
    let from = cluster.owner_of_slot(slot);
    let to = (from + 1) % 3;
    let lock = server.lock(name).unwrap();
    let warm = lock.try_acquire(TTL).unwrap().expect("free");
    let mut last = warm.token();
    warm.release().unwrap();
    let held = lock.try_acquire(TTL).unwrap().expect("free");
    assert!(held.token() > last);
    last = held.token();
    let ledger = server.fenced(name).unwrap();
    let sale = |unit: u32| {
        let mut sale = redis::pipe();
        sale.cmd("RPUSH").arg("sold:{AAPL}").arg(unit);
        sale
    };
    ledger.write(held.token(), &sale(1)).unwrap();

    // Mid-migration: the slot is MIGRATING on its owner, nothing moved yet. Calls are answered
    // by the owner, or refused as a topology in motion (TRYAGAIN/ASK) — never wrongly granted.
    cluster.begin_move_slot(slot, to);
    match lock.try_acquire(TTL) {
        Ok(None) => {}
        Err(e) => assert!(e.is_unavailable(), "a typed, retryable error: {e}"),
        Ok(Some(lease)) => panic!("granted while held: {lease:?}"),
    }
    cluster.finish_move_slot(slot, to);
    assert_eq!(cluster.owner_of_slot(slot), to);

    // After the move: the key moved with its TTL, so the lock is still held; the handle
    // follows MOVED to the new owner.
    assert!(
        lock.try_acquire(TTL).unwrap().is_none(),
        "still held after the move"
    );
    held.release().expect("released on the new owner");
    for unit in 2..5 {
        let lease = lock.try_acquire(TTL).unwrap().expect("free");
        assert!(lease.token() > last, "tokens keep growing on the new owner");
        last = lease.token();
        // The fenced write's connection (which never sends twice) meets MOVED once, and is
        // replaced.
        ledger.write(lease.token(), &sale(unit)).unwrap();
        lease.release().unwrap();
    }
    let sold: Vec<u32> = redis::cmd("LRANGE")
        .arg("sold:{AAPL}")
        .arg(0)
        .arg(-1)
        .query(&mut raw(&cluster))
        .unwrap();
    assert_eq!(sold, [1, 2, 3, 4], "each sale once, none lost in the move");
    assert_eq!(ledger.highest().unwrap(), last);
}

#[test]
fn a_killed_master_fails_its_slots_as_typed_errors_while_the_others_work() {
    let mut cluster = RedisCluster::start(3);
    let server = handle(&cluster);
    let names = cluster.names_on_every_master(1);
    let owner = |name: &String| cluster.owner_of_slot(RedisCluster::slot_of(name));
    let dead = names.iter().find(|n| owner(n) == 0).unwrap().clone();
    let alive: Vec<String> = names.iter().filter(|n| owner(n) != 0).cloned().collect();
    for name in &names {
        server
            .lock(name)
            .unwrap()
            .try_acquire(TTL)
            .unwrap()
            .unwrap()
            .release()
            .unwrap();
    }
    cluster.kill_master(0);
    let started = Instant::now();
    match server.lock(&dead).unwrap().try_acquire(TTL) {
        Err(e) => assert!(e.is_unavailable(), "typed as unavailable: {e}"),
        Ok(other) => panic!("a dead master's slot answered: {other:?}"),
    }
    // Bounded by a few connect and I/O timeouts (500 ms each here); generous margin.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    for name in &alive {
        let lease = server
            .lock(name)
            .unwrap()
            .try_acquire(TTL)
            .expect("another master's slot works")
            .expect("free");
        lease.release().unwrap();
    }
}

#[cfg(feature = "tokio")]
#[test]
fn the_async_cluster_handle_locks_waits_and_fences() {
    let cluster = RedisCluster::start(3);
    let urls = cluster.urls();
    // One URL is enough while its node is up: the others are found through it.
    let server = aio::LockServer::cluster_with(support::quick_builder(), &[urls[0].as_str()])
        .expect("an async cluster handle");
    let names = cluster.names_on_every_master(1);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        for name in &names {
            let lock = server.lock(name).unwrap();
            let held = lock.try_acquire(TTL).await.unwrap().expect("free");
            assert!(lock.try_acquire(TTL).await.unwrap().is_none());
            let token = held.token();
            let ledger = server.fenced(name).unwrap();
            let mut sale = redis::pipe();
            sale.cmd("RPUSH").arg(format!("sold:{{{name}}}")).arg(1);
            ledger.write(token, &sale).await.unwrap();
            let mut stray = redis::pipe();
            stray.cmd("SET").arg("elsewhere").arg(1);
            assert!(matches!(
                ledger.write(token, &stray).await,
                Err(Error::InvalidInput(_))
            ));
            let waiter = {
                let lock = lock.clone();
                tokio::spawn(
                    async move { lock.acquire_timeout(TTL, Duration::from_secs(20)).await },
                )
            };
            // Whether the waiter queued before the release or not, it gets the lock.
            held.release().await.unwrap();
            let next = waiter.await.unwrap().unwrap().expect("handed over");
            assert!(next.token() > token);
            next.release().await.unwrap();
        }
    });
}
