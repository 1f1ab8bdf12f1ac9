//! Sanity checks of the TLS test support: certificates made with `openssl`, and a TLS-only
//! `redis-server` that answers `redis-cli --tls` but not plaintext.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use support::server::ping_tls;
use support::tls::{self, Certificates};

/// Sends a plaintext `PING` to 127.0.0.1:`port` and returns what came back within 1 s.
fn plaintext_reply(port: u16) -> Vec<u8> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return Vec::new();
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let _ = stream.write_all(b"PING\r\n");
    let mut reply = Vec::new();
    let mut buf = [0_u8; 256];
    // Bounded: at most a few reads, each at most 1 s.
    for _ in 0..4 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    reply
}

fn contains_pong(reply: &[u8]) -> bool {
    reply.windows(5).any(|w| w == b"+PONG")
}

#[test]
fn certificates_are_pem_files() {
    let certs = Certificates::make();
    for cert in [
        &certs.ca_cert,
        &certs.server_cert,
        &certs.client_cert,
        &certs.other_ca_cert,
    ] {
        let text = String::from_utf8(tls::pem(cert)).unwrap();
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{text}");
    }
    for key in [&certs.server_key, &certs.client_key] {
        let text = String::from_utf8(tls::pem(key)).unwrap();
        assert!(
            text.starts_with("-----BEGIN PRIVATE KEY-----"),
            "PKCS#8: {text}"
        );
    }
    let dir = certs.dir.clone();
    drop(certs);
    assert!(
        !dir.exists(),
        "the certificates' directory is removed on drop"
    );
}

fn check_tls_server(require_client_cert: bool) {
    let certs = Certificates::make();
    let mut redis = tls::start_tls(&certs, require_client_cert);
    let files = certs.tls_files(require_client_cert);
    assert_eq!(redis.url(), format!("rediss://127.0.0.1:{}", redis.port()));
    assert!(ping_tls(redis.port(), &files), "TLS PING answered");

    let reply = plaintext_reply(redis.port());
    assert!(
        !contains_pong(&reply),
        "a plaintext PING must not be answered: {:?}",
        String::from_utf8_lossy(&reply)
    );

    // Verifying the server with an unrelated CA fails.
    let wrong_ca = support::server::TlsFiles {
        ca: certs.other_ca_cert.clone(),
        ..files.clone()
    };
    assert!(!ping_tls(redis.port(), &wrong_ca), "wrong CA must fail");

    // A TLS server comes back after kill -9.
    redis.kill9();
    assert!(!ping_tls(redis.port(), &files));
    redis.restart();
    assert!(
        ping_tls(redis.port(), &files),
        "TLS PING answered after restart"
    );
}

#[test]
fn tls_server_with_client_certificates() {
    check_tls_server(true);
}

#[test]
fn tls_server_without_client_certificates() {
    check_tls_server(false);
}

#[test]
fn tls_server_requiring_client_certificates_rejects_clients_without_one() {
    use std::process::{Command, Stdio};
    let certs = Certificates::make();
    let redis = tls::start_tls(&certs, true);
    // Bounded by coreutils' `timeout`.
    let out = Command::new("timeout")
        .args(["5", "redis-cli", "--tls"])
        .arg("--cacert")
        .arg(&certs.ca_cert)
        .args(["-h", "127.0.0.1", "-p"])
        .arg(redis.port().to_string())
        .arg("PING")
        .stdin(Stdio::null())
        .output()
        .expect("run timeout 5 redis-cli");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("PONG"),
        "no client certificate, no PONG"
    );
}
