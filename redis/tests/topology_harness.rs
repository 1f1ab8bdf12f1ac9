//! The Cluster and Sentinel harnesses (`support::cluster`, `support::sentinel`) checked with raw
//! redis-rs connections only: a cluster that routes, moves a slot (`ASK`, then `MOVED`) and loses
//! a master; a Sentinel group that fails over to a replica whose replication was stalled, losing
//! the write made during the stall.

mod support;

use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterConnection};
use redis::Commands;
use support::cluster::RedisCluster;
use support::sentinel::SentinelGroup;
use support::RedisProcess;

/// Bound on a command through the cluster client that must fail (its master is dead).
const FAILS_WITHIN: Duration = Duration::from_secs(5);

/// The key the library keeps a lock's state in (its slot is `slot_of(name)`).
fn lock_key(name: &str) -> String {
    format!("fencelock:{{{name}}}:lock")
}

fn cluster_connection(cluster: &RedisCluster) -> ClusterConnection {
    ClusterClient::builder(cluster.urls())
        .connection_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(500))
        .retries(3)
        .build()
        .expect("cluster client")
        .get_connection()
        .expect("cluster connection")
}

/// A plain connection to one server (no redirections followed).
fn direct(node: &RedisProcess) -> redis::Connection {
    support::raw(node)
}

#[test]
fn cluster_starts_and_routes() {
    let start = Instant::now();
    let mut cluster = RedisCluster::start(3);
    let started = start.elapsed();
    let names = cluster.names_on_every_master(2);
    let mut con = cluster_connection(&cluster);

    // Every master serves its names, and our slot function agrees with the server's.
    for (n, name) in names.iter().enumerate() {
        let (key, owner) = (lock_key(name), n / 2);
        let slot = RedisCluster::slot_of(name);
        assert_eq!(RedisCluster::slot_of(&key), slot);
        let keyslot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query(&mut direct(cluster.node(owner)))
            .unwrap();
        assert_eq!(keyslot, slot, "{key}");
        assert_eq!(cluster.owner_of_slot(slot), owner, "{key}");
        let () = con.set(&key, n).unwrap();
        assert_eq!(con.get::<_, usize>(&key).unwrap(), n);
        let on_owner: usize = direct(cluster.node(owner)).get(&key).unwrap();
        assert_eq!(on_owner, n);
    }

    // A whole move: the cluster client follows MOVED with its old slot map.
    let (moved, slot) = (lock_key(&names[0]), RedisCluster::slot_of(&names[0]));
    cluster.move_slot(slot, 1);
    assert_eq!(cluster.owner_of_slot(slot), 1);
    assert_eq!(con.get::<_, usize>(&moved).unwrap(), 0);
    assert_eq!(direct(cluster.node(1)).get::<_, usize>(&moved).unwrap(), 0);
    let refused = direct(cluster.node(0)).get::<_, usize>(&moved).unwrap_err();
    assert_eq!(refused.code(), Some("MOVED"), "{refused}");

    // A move step by step. Begun: the owner serves the keys it has, and a new key goes to the
    // target (ASK).
    let (name, slot) = (&names[4], RedisCluster::slot_of(&names[4]));
    let token = format!("fencelock:{{{name}}}:token");
    cluster.begin_move_slot(slot, 0);
    assert_eq!(con.get::<_, usize>(lock_key(name)).unwrap(), 4);
    let () = con.set(&token, 44).unwrap();
    assert_eq!(con.get::<_, usize>(&token).unwrap(), 44);
    let asked = direct(cluster.node(2)).get::<_, usize>(&token).unwrap_err();
    assert_eq!(asked.code(), Some("ASK"), "{asked}");
    // Keys migrated: a script on both keys is asked to the target and served there.
    cluster.migrate_slot_keys(slot, 0);
    assert_eq!(cluster.owner_of_slot(slot), 2, "still the owner mid-move");
    let both =
        redis::Script::new("return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}");
    let values: (usize, usize) = both
        .key(lock_key(name))
        .key(&token)
        .invoke(&mut con)
        .unwrap();
    assert_eq!(values, (4, 44));
    let asked = direct(cluster.node(2))
        .get::<_, usize>(lock_key(name))
        .unwrap_err();
    assert_eq!(asked.code(), Some("ASK"), "{asked}");
    // Finished: the target owns the slot, the old owner answers MOVED.
    cluster.finish_move_slot(slot, 0);
    assert_eq!(cluster.owner_of_slot(slot), 0);
    let values: (usize, usize) = both
        .key(lock_key(name))
        .key(&token)
        .invoke(&mut con)
        .unwrap();
    assert_eq!(values, (4, 44));
    let moved = direct(cluster.node(2)).get::<_, usize>(&token).unwrap_err();
    assert_eq!(moved.code(), Some("MOVED"), "{moved}");

    // Master 0 dies: its slots fail, master 1's keep working.
    let (alive, dead) = (lock_key(&names[2]), lock_key(&names[1]));
    assert_eq!(cluster.owner_of_slot(RedisCluster::slot_of(&names[1])), 0);
    let killed = Instant::now();
    cluster.kill_master(0);
    let flagged = killed.elapsed();
    let () = con.set(&alive, 22).unwrap();
    assert_eq!(con.get::<_, usize>(&alive).unwrap(), 22);
    let asked = Instant::now();
    let err = con.get::<_, usize>(&dead).unwrap_err();
    let failed_after = asked.elapsed();
    assert!(failed_after < FAILS_WITHIN, "failed after {failed_after:?}");
    // A fresh client too: it learns the slot map from a live node, which still names master 0.
    let mut fresh = cluster_connection(&cluster);
    let asked = Instant::now();
    let fresh_err = fresh.get::<_, usize>(&dead).unwrap_err();
    let fresh_failed_after = asked.elapsed();
    assert!(fresh_failed_after < FAILS_WITHIN);
    assert_eq!(fresh.get::<_, usize>(&alive).unwrap(), 22);
    eprintln!(
        "cluster: started in {started:?}; master 0 flagged fail {flagged:?} after kill -9; \
         its key failed after {failed_after:?} ({err}), with a fresh client after \
         {fresh_failed_after:?} ({fresh_err}); total {:?}",
        start.elapsed()
    );
}

#[test]
fn sentinel_fails_over_with_a_stalled_replica() {
    let start = Instant::now();
    let mut group = SentinelGroup::start();
    let started = start.elapsed();
    let (m, r) = (group.master().port(), group.replica().port());
    assert_eq!(group.master_ports_by_sentinel(), [Some(m); 3]);

    let () = direct(group.master()).set("k", 1).unwrap();
    group.wait_replica_caught_up();
    assert_eq!(direct(group.replica()).get::<_, i64>("k").unwrap(), 1);

    group.stall_replication();
    let () = direct(group.master()).set("k", 2).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(direct(group.replica()).get::<_, i64>("k").unwrap(), 1);

    let failover = group.fail_over_by_killing_master();
    let ports = group.master_ports_by_sentinel();
    assert!(
        ports.iter().filter(|&&p| p == Some(r)).count() >= 2,
        "{ports:?}"
    );
    // The write made during the stall is lost: the new master has the old value.
    assert_eq!(direct(group.replica()).get::<_, i64>("k").unwrap(), 1);
    eprintln!(
        "sentinel: started in {started:?}; failover took {failover:?}; total {:?}",
        start.elapsed()
    );
}
