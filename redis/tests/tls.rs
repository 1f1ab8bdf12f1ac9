//! TLS (feature `tls`), against `redis-server --tls-port` servers with certificates made here by
//! the `openssl` CLI: the lock's contract over TLS on one server and on a quorum of 3, blocking
//! and async; mutual TLS; and the failures — a server certificate from another CA, a missing
//! client certificate where the server demands one, a plaintext URL to a TLS-only port — each an
//! `Error::Redis` within the connect timeout (plus a little), never a hang, a panic, or a
//! fallback to plaintext.
#![cfg(feature = "tls")]

mod support;

use std::time::{Duration, Instant};

use fencelock_redis::{Error, LockServer};
use support::tls::{pem, start_tls, Certificates};
use support::{behaviour, quick_builder, RedisProcess};

const TTL: Duration = Duration::from_secs(10);
/// The quick builder's connect timeout is 500 ms: a failure must come well within this.
const FAILS_WITHIN: Duration = Duration::from_secs(3);

fn certificates(certs: &Certificates, client: bool, ca: bool) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: client.then(|| redis::ClientTlsConfig {
            client_cert: pem(&certs.client_cert),
            client_key: pem(&certs.client_key),
        }),
        root_cert: Some(pem(if ca {
            &certs.ca_cert
        } else {
            &certs.other_ca_cert
        })),
    }
}

fn urls(servers: &[RedisProcess]) -> Vec<String> {
    servers.iter().map(RedisProcess::url).collect()
}

/// The contract's core over TLS, on one server and on a quorum of 3 (mutual TLS: the servers
/// demand a client certificate).
#[test]
fn the_contract_holds_over_mutual_tls_on_one_server_and_a_quorum() {
    let certs = Certificates::make();
    let servers: Vec<RedisProcess> = (0..3).map(|_| start_tls(&certs, true)).collect();
    let urls = urls(&servers);
    let tls = certificates(&certs, true, true);
    let one = {
        let (url, tls) = (urls[0].clone(), tls.clone());
        move || {
            quick_builder()
                .tls_certificates(tls.clone())
                .open(&url)
                .unwrap()
        }
    };
    let quorum = {
        let (urls, tls) = (urls.clone(), tls.clone());
        move || {
            let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
            quick_builder()
                .tls_certificates(tls.clone())
                .quorum(&refs)
                .unwrap()
        }
    };
    behaviour::on_one_server_and_a_quorum(one, quorum, || {
        // The bodies' keys are shared between the two runs: start the next from scratch.
        for url in &urls {
            let client = redis::Client::build_with_tls(url.as_str(), tls.clone()).unwrap();
            let mut con = client
                .get_connection_with_timeout(Duration::from_secs(2))
                .unwrap();
            redis::cmd("FLUSHALL").query::<()>(&mut con).unwrap();
        }
    });
}

/// The async API over TLS: clients made with redis-rs's `build_with_tls`, one server and a
/// quorum.
#[cfg(feature = "tokio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_over_tls_on_one_server_and_a_quorum() {
    let certs = Certificates::make();
    let servers: Vec<RedisProcess> = (0..3).map(|_| start_tls(&certs, true)).collect();
    let tls = certificates(&certs, true, true);
    let client = |url: &str| redis::Client::build_with_tls(url, tls.clone()).unwrap();
    let one =
        fencelock_redis::aio::LockServer::with(quick_builder(), vec![client(&servers[0].url())])
            .unwrap();
    let quorum = fencelock_redis::aio::LockServer::with(
        quick_builder(),
        servers.iter().map(|s| client(&s.url())).collect(),
    )
    .unwrap();
    for server in [one, quorum] {
        let lock = server.lock("async-tls").unwrap();
        let lease = lock.try_acquire(TTL).await.unwrap().expect("free");
        assert!(lock.try_acquire(TTL).await.unwrap().is_none(), "held");
        // A waiter, then the release: it gets the lock whether it queued before or after.
        let waiter = {
            let lock = lock.clone();
            tokio::spawn(async move { lock.acquire_timeout(TTL, Duration::from_secs(5)).await })
        };
        lease.release().await.unwrap();
        let next = waiter
            .await
            .unwrap()
            .unwrap()
            .expect("the lock, after the release");
        next.release().await.unwrap();
    }
}

/// Every way of getting TLS wrong fails as `Error::Redis`, within the timeouts: a certificate
/// from another CA, no client certificate where the server demands one, plaintext to a TLS
/// port — on one server and on a quorum.
#[test]
fn tls_failures_are_errors_within_the_timeouts_never_plaintext() {
    let certs = Certificates::make();
    let demanding: Vec<RedisProcess> = (0..3).map(|_| start_tls(&certs, true)).collect();
    let urls = urls(&demanding);
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let plaintext: Vec<String> = demanding
        .iter()
        .map(|s| format!("redis://127.0.0.1:{}", s.port()))
        .collect();
    let plain_refs: Vec<&str> = plaintext.iter().map(String::as_str).collect();
    let cases: Vec<(&str, LockServer, LockServer)> = vec![
        (
            "a server certificate from another CA",
            quick_builder()
                .tls_certificates(certificates(&certs, true, false))
                .open(refs[0])
                .unwrap(),
            quick_builder()
                .tls_certificates(certificates(&certs, true, false))
                .quorum(&refs)
                .unwrap(),
        ),
        (
            "no client certificate where the server demands one",
            quick_builder()
                .tls_certificates(certificates(&certs, false, true))
                .open(refs[0])
                .unwrap(),
            quick_builder()
                .tls_certificates(certificates(&certs, false, true))
                .quorum(&refs)
                .unwrap(),
        ),
        (
            "a plaintext URL to a TLS-only port",
            quick_builder().open(plain_refs[0]).unwrap(),
            quick_builder().quorum(&plain_refs).unwrap(),
        ),
    ];
    for (what, one, quorum) in cases {
        for (topology, server) in [("one server", one), ("a quorum", quorum)] {
            let lock = server.lock("tls-fails").unwrap();
            let began = Instant::now();
            let result = lock.try_acquire(TTL);
            assert!(
                matches!(result, Err(Error::Redis(_))),
                "{what}, {topology}: expected Error::Redis, got {result:?}"
            );
            assert!(
                began.elapsed() < FAILS_WITHIN,
                "{what}, {topology}: took {:?}",
                began.elapsed()
            );
        }
    }
}

/// The builder's certificates apply to `rediss://` URLs; a plain `redis://` server beside them
/// (say, during a migration) is reached in plaintext, as its URL says.
#[test]
fn certificates_on_the_builder_leave_plaintext_urls_plain() {
    let certs = Certificates::make();
    let plain = RedisProcess::start();
    let lock = quick_builder()
        .tls_certificates(certificates(&certs, false, true))
        .open(&plain.url())
        .unwrap()
        .lock("plain-beside-tls")
        .unwrap();
    lock.try_acquire(TTL)
        .unwrap()
        .expect("free")
        .release()
        .unwrap();
}
