//! The library's URLs through the command: an ACL user's, and TLS (`rediss://`) with a private
//! CA and a client certificate.

#[path = "../../redis/tests/support/server.rs"]
mod server;
mod support;
#[path = "../../redis/tests/support/tls.rs"]
mod tls;

use fencelock_redis::redis;
use server::RedisProcess;
use support::{run_args, Fencelock};

const USAGE: i32 = 64;
const UNAVAILABLE: i32 = 69;

#[test]
fn an_acl_user_s_url_works_and_a_wrong_password_is_69() {
    let server = RedisProcess::start();
    let mut admin = redis::Client::open(server.url())
        .and_then(|client| client.get_connection())
        .expect("the default user");
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "locker", "on", ">secret", "~*", "&*", "+@all"])
        .query(&mut admin)
        .expect("ACL SETUSER");
    let url = |password: &str| format!("redis://locker:{password}@127.0.0.1:{}", server.port());

    let ok = Fencelock::run(&run_args(
        &url("secret"),
        &["acl", "--", "sh", "-c", "exit 5"],
    ));
    assert_eq!((ok.code, ok.stderr.as_str()), (Some(5), ""), "{ok:?}");

    let refused = Fencelock::run(&run_args(&url("wrong"), &["acl", "--", "true"]));
    assert_eq!(refused.code, Some(UNAVAILABLE), "{refused:?}");
    assert_eq!(refused.stderr.lines().count(), 1, "{refused:?}");
    assert!(
        refused.stderr.contains("redis://locker:***@127.0.0.1"),
        "{refused:?}"
    );
    assert!(
        !refused.stderr.contains("wrong"),
        "no password printed: {refused:?}"
    );
}

#[test]
fn tls_with_a_private_ca_and_a_client_certificate() {
    let certs = tls::Certificates::make();
    let path = |p: &std::path::Path| p.to_str().expect("UTF-8").to_owned();
    let (ca, cert, key) = (
        path(&certs.ca_cert),
        path(&certs.client_cert),
        path(&certs.client_key),
    );
    let script = "echo \"token $FENCELOCK_TOKEN\"";

    // Server verified with --tls-ca.
    let server = tls::start_tls(&certs, false);
    let url = server.url(); // rediss://127.0.0.1:PORT
    let args = |url: &str, extra: &[&str]| {
        let mut all = vec!["run", "--redis", url, "--tls-ca", &ca];
        all.extend_from_slice(extra);
        all.extend_from_slice(&["tls", "--", "sh", "-c", script]);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let ok = Fencelock::run(&args(&url, &[]));
    assert_eq!(ok.code, Some(0), "{ok:?}");
    assert!(ok.stdout[0].starts_with("token "), "{ok:?}");
    let status = Fencelock::run(&["status", "--redis", &url, "--tls-ca", &ca, "tls"]);
    assert_eq!(
        (status.code, status.stdout[0].as_str()),
        (Some(0), "lock tls: free")
    );
    // Without the CA, the system's roots do not know the test CA: refused, nothing ran.
    let unverified = Fencelock::run(&run_args(&url, &["tls", "--", "sh", "-c", script]));
    assert_eq!(unverified.code, Some(UNAVAILABLE), "{unverified:?}");
    assert!(unverified.stdout.is_empty());

    // Mutual TLS: the server requires the client certificate.
    let mutual = tls::start_tls(&certs, true);
    let url = mutual.url();
    let ok = Fencelock::run(&args(&url, &["--tls-cert", &cert, "--tls-key", &key]));
    assert_eq!(ok.code, Some(0), "{ok:?}");
    let refused = Fencelock::run(&args(&url, &[]));
    assert_eq!(
        refused.code,
        Some(UNAVAILABLE),
        "no client certificate: {refused:?}"
    );

    // A certificate without its key, or a file that is not there: usage.
    let no_key = Fencelock::run(&args(&url, &["--tls-cert", &cert]));
    assert_eq!(no_key.code, Some(USAGE), "{no_key:?}");
    let missing = ["--tls-cert", &cert, "--tls-key", "/nonexistent.pem"];
    let missing = Fencelock::run(&args(&url, &missing));
    assert_eq!(missing.code, Some(USAGE), "{missing:?}");
    assert!(missing
        .stderr
        .starts_with("fencelock: cannot read --tls-key /nonexistent.pem: "));
}
