//! With the `tracing` feature: an acquisition's span carries the lock's name, how it was asked,
//! its outcome, its token and how long it waited; a lease found lost, a fenced write refused and
//! a quorum server skipped are warnings. Checked on what a `fmt` subscriber prints.

#![cfg(feature = "tracing")]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fencelock::FencingToken;
use fencelock_redis::Error;
use support::{handle, RedisProcess};

/// What the subscriber printed.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Runs `body` with a subscriber at `debug` that prints into the returned buffer.
fn traced(body: impl FnOnce()) -> String {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, body);
    captured.text()
}

#[test]
fn an_acquisition_is_a_span_with_its_name_outcome_token_and_wait() {
    let redis = RedisProcess::start();
    let lock = handle(&redis).lock("AAPL").unwrap();
    let mut token = FencingToken::new(0);
    let printed = traced(|| {
        let lease = lock.try_acquire(Duration::from_secs(5)).unwrap().unwrap();
        token = lease.token();
        assert!(lock.try_acquire(Duration::from_secs(5)).unwrap().is_none());
        lease.release().unwrap();
    });
    let granted = printed
        .lines()
        .find(|line| line.contains("outcome=\"granted\""))
        .unwrap_or_else(|| panic!("no granted acquisition in:\n{printed}"));
    assert!(
        granted.contains("acquire{name=\"AAPL\" how=\"try_acquire\""),
        "{granted}"
    );
    assert!(
        granted.contains(&format!("token={}", token.get())),
        "{granted}"
    );
    assert!(granted.contains("waited_ms="), "{granted}");
    assert!(printed.contains("outcome=\"held\""), "{printed}");
}

#[test]
fn a_lost_lease_and_a_refused_fenced_write_are_warnings() {
    let redis = RedisProcess::start();
    let server = handle(&redis);
    let lock = server.lock("MSFT").unwrap();
    let ledger = server.fenced("MSFT").unwrap();
    let printed = traced(|| {
        let mut stalled = lock
            .try_acquire(Duration::from_millis(50))
            .unwrap()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300)); // past its TTL, generously
        let newer = lock.try_acquire(Duration::from_secs(5)).unwrap().unwrap();
        ledger.write(newer.token(), &redis::pipe()).unwrap();
        assert!(matches!(
            ledger.write(stalled.token(), &redis::pipe()),
            Err(Error::Stale(_))
        ));
        assert!(matches!(
            stalled.renew(Duration::from_secs(1)),
            Err(Error::Lost(_))
        ));
        newer.release().unwrap();
    });
    assert!(
        printed.contains("WARN") && printed.contains("fenced write refused"),
        "{printed}"
    );
    assert!(
        printed.contains("lease lost: a renewal found it"),
        "{printed}"
    );
    assert!(printed.contains("name=MSFT"), "{printed}");
}

#[test]
fn a_quorum_server_that_times_out_is_skipped_with_a_warning() {
    let servers: Vec<_> = (0..2).map(|_| RedisProcess::start()).collect();
    let silent = support::proxy::Unreachable::start(); // connects hang
    let urls = [servers[0].url(), servers[1].url(), silent.url()];
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let quorum = support::quick_builder()
        .connect_timeout(Duration::from_millis(100))
        .quorum(&urls)
        .unwrap();
    let lock = quorum.lock("IBM").unwrap();
    let printed = traced(|| {
        // The first rounds decide without the silent server; its connect times out meanwhile.
        for _ in 0..20 {
            let lease = lock.try_acquire(Duration::from_secs(5)).unwrap().unwrap();
            lease.release().unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert!(printed.contains("server skipped"), "{printed}");
}
