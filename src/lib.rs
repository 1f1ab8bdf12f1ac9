//! Low-level lock primitives, each answering one hazard of a system that must never sell the same
//! unit twice.
//!
//! - [`SpinLock`]: an exclusive lock from compare-and-swap — test-and-test-and-set on one byte,
//!   a fenced (`Release`) unlock, and a waiting strategy chosen at the type: [`Spin`], [`Yield`],
//!   [`Backoff`], or [`Adaptive`] (the default), which learns per thread which of the last two
//!   fits. [`SpinLock::try_lock_for`] gives up at a deadline; guards narrow with [`SpinLockGuard::map`] (a [`MappedSpinLockGuard`]). [`RawSpinLock`] is its
//!   protocol alone, and implements lock_api's `RawMutex`, `RawMutexFair` and `RawMutexTimed`.
//! - [`lock_all`], [`try_lock_all`], [`lock_slice`]: several locks at once, without deadlock —
//!   every thread takes them in one global order (each lock's address), and the guards come back
//!   in the caller's order; an array, a tuple of locks of different types, or a slice (a
//!   [`LockSet`]). Naming a lock twice is refused with [`SameLock`] before anything is taken.
//!   [`LockTable`] is a lock per key for keys not known up front, striped in fixed memory.
//!   [`acquire_all`] does the same for [`DeadlineLock`] leases, and returns only a whole set:
//!   every lease running, all ending at the same instant.
//! - [`DeadlineLock`]: a lock whose holder gets a [`Lease`] that ends by itself, so a crashed
//!   holder cannot block everyone forever. Every acquisition — a takeover of an ended lease
//!   included — carries the next [`FencingToken`]; a [`Fenced`] resource refuses writes from a
//!   holder that stalled past its lease and was taken over ([`StaleToken`]). Time comes from a
//!   [`Clock`]: [`MonotonicClock`] by default, [`ManualClock`] in tests.
//! - [`Versioned`]: optimistic concurrency — commit only if the [`Version`] you read is still
//!   current, else get a [`Conflict`] and your value back.
//!
//! Every atomic protocol in the crate is model-checked with [loom](https://docs.rs/loom). Build
//! with `RUSTFLAGS="--cfg loom"` and the crate's atomics and cells become loom's, so that your own
//! loom models see inside our locks.
//!
//! # Example
//!
//! ```
//! use fencelock::SpinLock;
//! use std::thread;
//!
//! static UNITS_LEFT: SpinLock<u32> = SpinLock::new(100);
//!
//! let sold: u32 = thread::scope(|s| {
//!     let traders: Vec<_> = (0..4)
//!         .map(|_| {
//!             s.spawn(|| {
//!                 let mut bought = 0;
//!                 loop {
//!                     let mut left = UNITS_LEFT.lock();
//!                     if *left == 0 {
//!                         return bought;
//!                     }
//!                     *left -= 1;
//!                     bought += 1;
//!                 }
//!             })
//!         })
//!         .collect();
//!     traders.into_iter().map(|t| t.join().unwrap()).sum()
//! });
//! assert_eq!(sold, 100); // no unit sold twice, none lost
//! ```
//!
//! # Features
//!
//! - `std` (default): [`Yield`], [`Backoff`] yielding once spinning stops paying, and
//!   [`Adaptive`] learning per thread (without `std` it is `Backoff` spinning only);
//!   [`DeadlineLock`] and [`MonotonicClock`] (waiting parks through `parking_lot_core`). Without
//!   it the crate is `no_std` and waits by spinning only.
//!   [`SpinLock::try_lock_for`] / [`try_lock_until`](SpinLock::try_lock_until) and lock_api's
//!   `RawMutexTimed` need it too.
//! - `lock_api` (default): `RawSpinLock` implements lock_api 0.5's `RawMutex`, `RawMutexFair` and
//!   (with `std`) `RawMutexTimed`, so `lock_api::Mutex<RawSpinLock, T>` works.
//! - `lock_api_04` (off): the same three traits of lock_api 0.4, for
//!   `lock_api_04::Mutex<RawSpinLock, T>` (the dependency is lock_api 0.4 renamed `lock_api_04`).
//! - `send_guard` (off): [`SpinLockGuard`], [`MappedSpinLockGuard`], `KeyGuard` and the lock_api
//!   guards over `RawSpinLock` become `Send` (for `T: Send`), so a lock may be released on another
//!   thread. Off, they are `!Send` as std's and parking_lot's are; see [`SpinLockGuard`] for why
//!   that is the right default in async code.
//! - `lockdep` (off; implies `std`): each thread records the `SpinLock`s it holds, and a `lock()`
//!   against the global lock order panics naming both call sites, so an ABBA deadlock shows in a
//!   test the first time either order runs. Costs nothing when off.
//! - `tracing` (off; `no_std`-capable): `warn!` events (target `fencelock`) for a [`Lease`]
//!   found lost at `renew` or `release` and a [`Fenced`] write refused, and a `debug!` event per
//!   [`DeadlineLock`] acquisition that had to wait (its token and how long it waited). Only slow
//!   paths emit; off, nothing of it is compiled in.
//!
//! [`lock_slice`] and [`LockTable`] need `std`.

#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs, rust_2018_idioms)]

mod clock;
#[cfg(all(feature = "std", target_has_atomic = "64"))]
mod deadline_lock;
mod fencing;
#[cfg(feature = "std")]
mod lock_table;
mod lockdep;
mod ordered;
mod primitive;
mod raw_spin_lock;
pub mod relax;
mod spin_lock;
mod trace;
mod versioned;

#[cfg(feature = "std")]
pub use crate::lock_table::{KeyGuard, LockTable};
#[cfg(all(feature = "std", target_has_atomic = "64"))]
pub use crate::ordered::acquire_all;
#[cfg(feature = "std")]
pub use crate::ordered::lock_slice;
pub use crate::ordered::{lock_all, try_lock_all, LockSet, SameLock};
pub use crate::raw_spin_lock::RawSpinLock;
#[cfg(feature = "std")]
pub use crate::relax::Yield;
pub use crate::relax::{Adaptive, Backoff, Relax, Spin};
pub use crate::spin_lock::{MappedSpinLockGuard, SpinLock, SpinLockGuard};

/// The README's examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
/// The in-process design notes' examples (`docs/design.md`).
#[cfg(doctest)]
#[doc = include_str!("../docs/design.md")]
struct DesignDoctests;
/// The Redis guide's examples (`docs/redis.md`), compiled only: they need a server.
#[cfg(doctest)]
#[doc = include_str!("../docs/redis.md")]
struct RedisDoctests;
/// The deployment guide's TLS example (`docs/deploying.md`), compiled only.
#[cfg(doctest)]
#[doc = include_str!("../docs/deploying.md")]
struct DeployingDoctests;
pub use crate::clock::Clock;
#[cfg(target_has_atomic = "64")]
pub use crate::clock::ManualClock;
#[cfg(feature = "std")]
pub use crate::clock::MonotonicClock;
#[cfg(all(feature = "std", target_has_atomic = "64"))]
pub use crate::deadline_lock::{DeadlineLock, Lease, LeaseLost};
pub use crate::fencing::{Fenced, FencingToken, StaleToken};
pub use crate::versioned::{Conflict, Version, Versioned};
