//! TLS against plaintext, in one run (feature `tls`): acquire + release on one server and on a
//! quorum of 3, each over `redis://` and over `rediss://` (servers with certificates made here
//! by the `openssl` CLI), so the cost of TLS reads as a ratio of neighbours.
//!
//! `cargo bench -p fencelock-redis --features tls --bench redis_tls`. 2-core machine: the
//! client and the servers share it.

#[path = "../tests/support/server.rs"]
mod server;
#[path = "../tests/support/tls.rs"]
mod tls;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use fencelock_redis::{LockServer, RedisLock};

const TTL: Duration = Duration::from_secs(10);

fn acquire_release(lock: &RedisLock) {
    let lease = lock.try_acquire(TTL).unwrap().expect("free");
    lease.release().unwrap();
}

fn benches(c: &mut Criterion) {
    let certs = tls::Certificates::make();
    let plain: Vec<_> = (0..3).map(|_| server::RedisProcess::start()).collect();
    let secure: Vec<_> = (0..3).map(|_| tls::start_tls(&certs, false)).collect();
    let roots = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(tls::pem(&certs.ca_cert)),
    };
    let handle = |servers: &[server::RedisProcess], n: usize| {
        let urls: Vec<String> = servers[..n].iter().map(server::RedisProcess::url).collect();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        LockServer::builder()
            .tls_certificates(roots.clone())
            .quorum(&urls)
            .unwrap()
            .lock("tls-bench")
            .unwrap()
    };
    let mut group = c.benchmark_group("tls");
    for (name, lock) in [
        ("one_plain", handle(&plain, 1)),
        ("one_tls", handle(&secure, 1)),
        ("quorum_3_plain", handle(&plain, 3)),
        ("quorum_3_tls", handle(&secure, 3)),
    ] {
        group.bench_function(name, |b| b.iter(|| acquire_release(&lock)));
    }
    group.finish();
}

criterion_group!(benches_group, benches);
criterion_main!(benches_group);
