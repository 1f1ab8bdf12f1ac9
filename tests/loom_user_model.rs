//! How a service that embeds fencelock model-checks its own code with loom.
//!
//! Built with `RUSTFLAGS="--cfg loom"`, fencelock's atomics and cells are loom's, so a model of
//! *your* code sees inside our locks:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test --test loom_user_model
//! ```
//!
//! Without `--cfg loom` this file is empty. The crate's own models live in `loom-tests/`.
#![cfg(loom)]

use fencelock::SpinLock;
use loom::sync::Arc;
use loom::thread;

/// A user's inventory type: two traders buy from one stock under our lock; loom checks every
/// interleaving, and would report a data race if the lock did not order them.
#[test]
fn users_can_model_check_code_built_on_spin_lock() {
    loom::model(|| {
        let units_left = Arc::new(SpinLock::new(1_u32));
        let buy = |units_left: &SpinLock<u32>| {
            let mut left = units_left.lock();
            if *left > 0 {
                *left -= 1;
                true
            } else {
                false
            }
        };
        let other = {
            let units_left = Arc::clone(&units_left);
            thread::spawn(move || buy(&units_left))
        };
        let mine = buy(&units_left);
        let theirs = other.join().unwrap();
        // The one unit is sold exactly once.
        assert!(mine ^ theirs);
        assert_eq!(*units_left.lock(), 0);
    });
}
