//! fencelock's lease + fencing-token contract across processes and machines, on a Redis server.
//!
//! The seed's exchange runs many horizontally scaled servers selling the same stock: an
//! in-process lock no longer helps. A [`RedisLock`] is one named resource's lock on a Redis
//! server; [`try_acquire`](RedisLock::try_acquire) gives a [`RedisLease`] that ends by itself
//! (a crashed holder blocks nobody for longer than its TTL) and carries a
//! [`FencingToken`](fencelock::FencingToken) larger than every earlier acquisition's. A
//! [`RedisFenced`] resource refuses writes whose token is below the highest it admitted, so a
//! holder that stalled past its lease — and does not know it — cannot overwrite the newer
//! holder's work.
//!
//! ```
//! # #[path = "../tests/support/server.rs"] mod server;
//! # let redis = server::RedisProcess::start(); // a throwaway redis-server on 127.0.0.1
//! # let url = redis.url();
//! use std::time::Duration;
//! use fencelock_redis::LockServer;
//!
//! let server = LockServer::open(&url)?; // "redis://127.0.0.1:6379"; connects lazily
//! let (book, ledger) = (server.lock("AAPL")?, server.fenced("AAPL")?);
//! if let Some(lease) = book.acquire_timeout(Duration::from_secs(5), Duration::from_secs(1))? {
//!     let mut sale = redis::pipe();
//!     sale.cmd("RPUSH").arg("sold:{AAPL}").arg(101);
//!     ledger.write(lease.token(), &sale)?; // Error::Stale if a newer holder wrote first
//!     lease.release()?;                      // Error::Lost if it had already ended
//! }
//! # Ok::<(), fencelock_redis::Error>(())
//! ```
//!
//! # The protocol
//!
//! Acquire is one round trip: a Lua script (sent with `EVALSHA`, loaded again after `NOSCRIPT`)
//! that sets the lock key if it is absent, with a millisecond TTL, and issues the next token from
//! the resource's counter; the key's value is a fresh 128-bit nonce and the token, so a stale
//! holder is told *who* took over. Renew and release are compare-and-`PEXPIRE` and
//! compare-and-`DEL` scripts. [`try_acquire_all`] locks several resources of one server in one
//! script, all or nothing. The scripts, key names, reply decoding and validity arithmetic live in
//! one module, `protocol`, that the front ends only call. Connections live in the [`LockServer`]
//! handle, pooled and shared by every lock made from it; each call is bounded by the connect and
//! I/O timeouts.
//!
//! # Waiting in line: a hot lock served in order
//!
//! [`acquire_timeout`](RedisLock::acquire_timeout) does not poll. A caller that finds the lock
//! held joins the lock's queue on the server and blocks (`BLPOP`) on a wake-up list of its own;
//! the release, in the same script, hands the lock with a new token to the first waiter still
//! alive and pushes the token to that waiter's list. So waiters are served first come, first
//! served, nobody can take the lock between a release and the waiter it goes to, and no
//! [`try_acquire`](RedisLock::try_acquire) takes a free lock that live waiters queue for.
//!
//! - While it waits, a waiter sends one step (its heartbeat) and one blocking pop every third of
//!   the [liveness window](LockServerBuilder::liveness) (1 s by default); the first in line blocks
//!   no longer than the holder's remaining TTL, so a crashed holder's lock goes to it when it
//!   expires.
//! - A waiter that dies (`kill -9`) stops its heartbeats and is dropped within the window; a lock
//!   handed to it is held for half the window until it confirms, then passed on. A waiter whose
//!   `wait` runs out leaves the queue before `acquire_timeout` returns.
//! - A server restart that loses the queue strands nobody: each waiter's next step joins again
//!   with its old ticket, and connection errors are retried until `wait` is over.
//! - A lease's validity counts from before the step that confirmed the hand-off was sent: the
//!   hand-off itself is only a reservation.
//!
//! On a quorum, a grant takes two rounds over several servers and cannot be handed off in one
//! script: waiters queue on every server under one ticket (their own clock's µs when they began
//! to wait), a free lock is claimed only by the first live waiter there, and a release wakes that
//! waiter, which listens on every server at once and claims at once. FIFO across servers is not
//! promised (clocks of different clients order them), but the oldest waiter wins on every server
//! it queues on, so nobody starves.
//!
//! ## Every key a lock uses
//!
//! For a lock `name` under the key prefix `p` (default `fencelock:`), all on one Redis Cluster
//! slot thanks to the `{name}` hash tag:
//!
//! | key | type | holds | expires |
//! |---|---|---|---|
//! | `p{name}:lock` | string | the holder's `nonce:token` | with the lease's TTL (a hand-off: half the liveness window, until confirmed) |
//! | `p{name}:token` | string | the last token issued | [`COUNTER_IDLE`] after its last use |
//! | `p{name}:queue` | sorted set | waiters by ticket | twice the longest liveness window after the last waiter's last step |
//! | `p{name}:alive` | sorted set | waiters by liveness deadline (server ms) | as `queue` |
//! | `p{name}:wake:<nonce>` | list | one waiter's wake-ups | half its liveness window (10 s on a quorum) |
//! | `p{name}:fenced` | string | the highest token a [`RedisFenced`] admitted | never (it is the resource's data) |
//! | `p{name}:record` | hash | a [`RedisVersioned`] record's value (`d`) and version (`v`) | never (it is the data) |
//!
//! # Deploying
//!
//! The guide is `docs/deploying.md` in the repository; in short:
//! - **TLS** (feature `tls`): see below.
//! - **An ACL user of its own**, allowed the keys under the prefix (`~fencelock:*`) and the
//!   commands the lock sends and its scripts run — `ping evalsha eval script|load blpop rpush
//!   pexpire get set del exists pttl time zadd zrange zscore zrem zrank` (`role` behind
//!   Sentinel; `cluster|slots command|getkeys` on a Cluster) — plus the keys and
//!   commands of your fenced pipelines. A wrong password or a refused command is an
//!   [`Error::Redis`] that says so, before anything runs as another user.
//! - **Timeouts** ([`LockServerBuilder`]): connect and I/O, 1 s each by default; a lease's TTL
//!   should be many I/O timeouts long.
//! - **Failures** are typed: [`Error::Redis`] within the timeouts for a server that is down,
//!   paused or refusing ([`Error::is_unavailable`] for the first two), [`Error::Lost`] for a lease
//!   that ended, [`Error::Stale`] for a fenced write refused, [`Error::InvalidInput`] before
//!   anything is sent.
//!
//! # TLS
//!
//! With the `tls` feature, `rediss://` URLs work everywhere a URL is taken (rustls underneath):
//! one server and async through redis-rs, a quorum's own sockets through rustls directly. A
//! private CA and a client certificate come in as [`redis::TlsCertificates`], on
//! `LockServerBuilder::tls_certificates` (which a quorum needs) or in clients made with
//! [`redis::Client::build_with_tls`]. A failed handshake is an [`Error::Redis`] within the connect
//! timeout, never a fallback to plaintext.
//!
//! # Async
//!
//! With the `tokio` feature, [`aio`](crate#async) has the same types with `async fn` where they
//! talk to a server: `aio::{LockServer, RedisLock, RedisLease, RedisFenced, KeptLease}`, over
//! redis-rs's multiplexed connections, a quorum's requests concurrent on the calling task.
//!
//! # Tracing
//!
//! With the `tracing` feature, each acquisition is a span (`acquire`, target `fencelock_redis`)
//! with the lock's `name`, `how` it was asked (`try_acquire`, `acquire_timeout`), its
//! `outcome` (`granted`, `held`, or the error), its `token` and `waited_ms`; a lease found lost
//! (by a renewal or at release), a renewal that failed, a fenced write refused and a quorum
//! server skipped are `warn!` events; a waiter's retries and new connections are `debug!`.
//! Without the feature nothing of it is compiled in.
//!
//! # Work that outlives a TTL
//!
//! [`RedisLease::keep_alive`] hands the lease to a renewer thread and returns a [`KeptLease`]:
//! renewed every third of the TTL (see [`KeepAlive`]) until released, capped, or lost — and a
//! lost lease says so ([`KeptLease::lost`]) no later than its last validity would have ended,
//! instead of the holder writing on.
//!
//! # Optimistic versions: the seed's concurrency tokens
//!
//! [`RedisVersioned`] (from [`LockServer::versioned`]) is [`fencelock::Versioned`] across
//! processes: [`load`](RedisVersioned::load) a record with its [`Version`](fencelock::Version),
//! work holding nothing, and [`commit`](RedisVersioned::commit) only if nobody committed
//! meanwhile — otherwise [`Error::Conflict`] and nothing is written; one round trip each.
//! [`commit_with`](RedisVersioned::commit_with) runs a pipeline under the same check, and
//! [`update`](RedisVersioned::update) is the load-change-commit loop with bounded retries.
//! Versions grow as tokens do (the larger of the old one + 1 and the server's time in µs), so a
//! record lost in a restart is recreated above every version issued before.
//!
//! # A quorum of independent servers
//!
//! [`LockServer::quorum`] spreads each lease over an odd number `2f + 1` of independent servers,
//! any `f` of which may be down, paused or slow: the same [`RedisLock`], [`RedisLease`] and
//! errors, a majority deciding every call. Unlike Redlock, every lease still carries a token
//! larger than every earlier lease's: round 1 claims the key on every server and reads each
//! server's floor (the larger of its counter and its time in µs); round 2 stores
//! `max(floor) + 1` only where the claim is still present, and the lease holds once a majority
//! stored it. When that keeps tokens growing — every server keeps its data, or the clocks of
//! those that lose it agree with the others to within the time a restart takes — is argued in
//! the `protocol::quorum` module and shown under [Topologies](#topologies). The blocking API
//! asks every server at once from the caller's thread (non-blocking sockets) and returns as soon
//! as a majority decided; it never waits for a server it does not need.
//!
//! ```
//! # #[path = "../tests/support/server.rs"] mod server;
//! # let servers: Vec<_> = (0..3).map(|_| server::RedisProcess::start()).collect();
//! # let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
//! # let (a, b, c) = (urls[0].as_str(), urls[1].as_str(), urls[2].as_str());
//! use std::time::Duration;
//! use fencelock_redis::RedisLock;
//!
//! let lock = RedisLock::quorum(&[a, b, c], "AAPL")?; // three independent servers
//! let lease = lock.try_acquire(Duration::from_secs(5))?.expect("free");
//! assert!(lock.try_acquire(Duration::from_secs(5))?.is_none());
//! lease.release()?;
//! # Ok::<(), fencelock_redis::Error>(())
//! ```
//!
//! # What is assumed, and what happens when it breaks
//!
//! - **Mutual exclusion of leases** assumes the server's clock and ours advance at about the same
//!   rate: [`RedisLease::remaining`] is the TTL counted from *before* the request was sent, minus
//!   [`drift_allowance`] (1% of the TTL + 2 ms). Redis expires keys by its *wall* clock: a step
//!   forward of the server's clock ends leases early, and two clients can then both believe they
//!   hold the lock. So does a server that restarts having lost the key (no persistence, or a
//!   failover to a replica that missed the write), and so does a holder that stalls after
//!   checking `remaining()`. None of these can be prevented by a lock; all of them are caught by
//!   fencing: the older holder's writes to a [`RedisFenced`] resource are refused.
//! - **Tokens only grow** while the resource's token counter survives, *or* while the clock of
//!   the server that issues the next token is ahead of every token issued before: each token is
//!   the larger of the counter + 1 and the server's time in µs. So a counter lost in a restart,
//!   or expired after [`COUNTER_IDLE`] without use, is reborn above every token issued before
//!   (given fewer than one token per microsecond on average; a Redis server issues far fewer),
//!   and a replica promoted after missing the last grants issues tokens above them if its clock
//!   is behind the old master's by less than the failover took. Only a lost counter *and* a
//!   clock that went back (or, after a failover, lags) together can repeat a token. Tokens stay
//!   below 2⁵³, exact in Lua's doubles, until the year 2255.
//! - **A fenced resource** keeps its highest token as a key beside its data, with no TTL: what
//!   survives a crash is what the server's persistence keeps (`appendonly yes` with
//!   `appendfsync always` keeps every acknowledged write across `kill -9`).
//!
//! - **A quorum's lease** additionally assumes bounded clock drift between the client and every
//!   server (its validity counts from before round 1 was sent); its *tokens* assume that every
//!   server keeps its data (`appendfsync always`), or that the clocks of the servers agree to
//!   within the time a restart that loses data takes (see [Topologies](#topologies)).
//!
//! The tests in `redis/tests/` start real servers and show each case: a stalled holder taken
//! over, `kill -9` with and without an append-only file, a paused server, a key expiring early,
//! a counter lost together with the clock going back, a minority and a majority of a quorum down,
//! a quorum server that lost its data beside a clock an hour ahead, a failover to a replica that
//! missed the last grants, a cluster slot moved and a cluster master killed.
//!
//! # Topologies
//!
//! Each lock lives on one *lock server*: a single Redis server, a quorum of independent servers,
//! the master that owns the lock's slot in a Redis Cluster, or the master a group of Sentinels
//! names. What each promises, and what breaks it:
//!
//! | | exclusion (one holder at a time) | tokens (each larger than every earlier one) | tested by |
//! |---|---|---|---|
//! | [one server](LockServer::open) | while the server keeps the key: lost in a restart without `appendfsync always`; its clock's rate close to ours | while the counter survives, or the server's clock does not go back | `--test single_server --test faults` |
//! | [quorum](LockServer::quorum) of `2f + 1` | while a majority is up and keeps its keys; bounded drift between the client and each server | if **every** server keeps its data; or, for a server that loses it, if its clock is no further behind the others' than the restart took (and within [`COUNTER_IDLE`]) | `--test quorum --test quorum_clocks` |
//! | [cluster](LockServer::cluster) | as one server, on the master that owns the name's slot; a slot that moves keeps its keys (`MIGRATE`) | as one server; a master's failover to its replica as Sentinel, below | `--test cluster` |
//! | [Sentinel](LockServer::sentinel) | lost across a failover to a replica that missed the grant: two holders can overlap | a promoted replica issues above the old master's tokens if its clock is behind the old master's by less than the failover took (seconds: `down-after-milliseconds` + election) | `--test sentinel` |
//!
//! (Each command is `cargo test -p fencelock-redis …`; every test starts its own servers.)
//!
//! - **Quorum.** The token argument needs the server where two majorities meet to remember the
//!   first one's token. A server restarted without its data remembers nothing and floors at its
//!   own clock: if the token came from another server's clock running ahead of it, a later
//!   majority through it can issue a smaller token, and a stale holder's fenced write is then
//!   admitted. `quorum_clocks` runs exactly that (one clock an hour ahead, one server restarted
//!   empty) and shows the token going back, and that either half of the condition — the server
//!   keeping its data, or the clocks in step — keeps tokens growing. Redis's own advice holds
//!   here too: `appendfsync always`, or keep a server that lost its data out for longer than the
//!   clock skew you cannot rule out ("delayed restart").
//! - **Cluster.** Each name's keys share its `{name}` hash tag, so a lock, its counter, its queue
//!   and its fenced resource all live on the name's slot. A fenced pipeline on a cluster may
//!   only touch keys that carry the resource's name as their hash tag (`sold:{AAPL}`): any
//!   other key is refused with [`Error::InvalidInput`] before anything runs (the script checks
//!   every key with `COMMAND GETKEYS` first). [`try_acquire_all`] takes locks of one slot only.
//!   A master that dies makes its slots' calls fail with [`Error::Redis`] within a few timeouts;
//!   the other slots keep working (with `cluster-require-full-coverage no`).
//! - **Sentinel.** Replication is asynchronous: a failover can lose the last grants and the lock
//!   key with them, so two holders can overlap — which only fencing catches. The token's time
//!   floor makes the promoted replica issue tokens above the lost ones (a counter alone would
//!   issue them again), so the old holder's fenced write is refused once the new holder has
//!   written. It cannot be refused when the resource's highest token was itself lost in the
//!   failover (written on the old master after replication stopped): keep fenced resources whose
//!   history matters on a server that does not fail over, or on a quorum-protected store.
//!   `WAIT` for a replica's acknowledgement is not used: it cannot run inside the script that
//!   grants, costs a round trip per grant, and narrows the window without closing it.
//!
//! Compared with the anchors: Redisson's `RFencedLock` takes its token from `INCR`, which a
//! failover that lost increments repeats; Redlock gives no token at all and its exclusion rests
//! on timing, and Redisson deprecated its `RedissonRedLock`.

#![warn(missing_docs, rust_2018_idioms)]

#[cfg(feature = "tokio")]
pub mod aio;
mod endpoint;
mod error;
mod fanout;
mod fenced;
mod keep_alive;
mod lock;
mod node;
mod protocol;
mod server;
#[cfg(feature = "tls")]
mod tls;
mod trace;
mod versioned;

pub use error::{Error, InvalidInput};
pub use fenced::RedisFenced;
pub use keep_alive::{KeepAlive, KeptLease};
pub use lock::{try_acquire_all, LockStatus, RedisLease, RedisLock};
pub use protocol::queue::{MAX_LIVENESS, MIN_LIVENESS};
pub use protocol::versioned::{MAX_VALUE_LEN, UPDATE_ATTEMPTS};
pub use protocol::{
    drift_allowance, COUNTER_IDLE, MAX_NAME_LEN, MAX_PREFIX_LEN, MAX_TOKEN, MAX_TTL, MIN_TTL,
};
pub use server::{LockServer, LockServerBuilder};
pub use versioned::RedisVersioned;

/// The crate page's example (`redis/README.md`), compiled as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Re-exported so that users name the same `redis` version this crate speaks (for
/// [`redis::Client`] and [`redis::Pipeline`]).
pub use redis;
