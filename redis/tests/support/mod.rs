//! Shared by the Redis integration tests: the server process, and small helpers.

#![allow(dead_code, unused_imports)]

pub mod behaviour;
pub mod child;
pub mod clock;
pub mod cluster;
pub mod sentinel;
pub mod server;

use std::time::Duration;

use fencelock_redis::{LockServer, LockServerBuilder};

pub use server::{Options, Persistence, RedisProcess};

/// Short timeouts, so fault tests end quickly; still generous for a loopback server.
pub fn quick_builder() -> LockServerBuilder {
    LockServer::builder()
        .connect_timeout(Duration::from_millis(500))
        .io_timeout(Duration::from_millis(500))
}

/// A handle to `redis` with [`quick_builder`]'s timeouts.
pub fn handle(redis: &RedisProcess) -> LockServer {
    quick_builder().open(&redis.url()).expect("open a handle")
}

/// A raw connection to `redis`, for checking keys behind the crate's back.
pub fn raw(redis: &RedisProcess) -> redis::Connection {
    let client = redis::Client::open(redis.url()).expect("client");
    let con = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("raw connection");
    con.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    con
}
pub mod proxy;
pub mod tls;
