//! What the crate tells `tracing` (feature `tracing`): `warn!` for a lease found lost (at a
//! renewal or a release) and a fenced write refused, and one `debug!` per acquisition that had to
//! wait (its token, or that it gave up, and how long it waited on the lock's clock). Only slow
//! paths emit: an uncontended lock or an admitted write is unchanged. Without the feature every
//! macro here expands to nothing and its arguments are not evaluated.

/// `tracing::warn!` under the crate's target, with the feature; nothing without it.
macro_rules! warn_event {
    ($($arg:tt)*) => {
        #[cfg(feature = "tracing")]
        ::tracing::warn!(target: "fencelock", $($arg)*);
    };
}

/// `tracing::debug!` under the crate's target, with the feature; nothing without it. (Used by
/// `DeadlineLock`, which needs `std`.)
#[cfg_attr(not(feature = "std"), allow(unused_macros))]
macro_rules! debug_event {
    ($($arg:tt)*) => {
        #[cfg(feature = "tracing")]
        ::tracing::debug!(target: "fencelock", $($arg)*);
    };
}

#[cfg_attr(not(feature = "std"), allow(unused_imports))]
pub(crate) use debug_event;
pub(crate) use warn_event;
