//! What the lock tells `tracing` (feature `tracing`): a span per acquisition — the lock's name,
//! how it was asked (`try_acquire`, `acquire_timeout`), its outcome, its token and how long it
//! waited — `warn!` for a lease lost, a renewal failed, a fenced write refused and a server
//! skipped, `debug!` for retries and reconnects. Without the feature every macro here expands to
//! nothing (its arguments are not evaluated) and [`acquire`] is the call itself: the hot paths
//! are unchanged.

use fencelock::FencingToken;

use crate::error::Error;

/// `tracing::warn!` under the crate's target, with the feature; nothing without it.
macro_rules! warn_event {
    ($($arg:tt)*) => {
        #[cfg(feature = "tracing")]
        ::tracing::warn!(target: "fencelock_redis", $($arg)*);
    };
}

/// `tracing::debug!` under the crate's target, with the feature; nothing without it.
macro_rules! debug_event {
    ($($arg:tt)*) => {
        #[cfg(feature = "tracing")]
        ::tracing::debug!(target: "fencelock_redis", $($arg)*);
    };
}

pub(crate) use {debug_event, warn_event};

/// Something an acquisition returns: its token is what the span records.
pub(crate) trait Granted {
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    fn token(&self) -> FencingToken;
}

/// Runs the blocking acquisition `attempt` inside its span.
#[inline]
pub(crate) fn acquire<T: Granted>(
    name: &str,
    how: &'static str,
    attempt: impl FnOnce() -> Result<Option<T>, Error>,
) -> Result<Option<T>, Error> {
    #[cfg(not(feature = "tracing"))]
    {
        let _ = (name, how);
        attempt()
    }
    #[cfg(feature = "tracing")]
    {
        let span = span(name, how);
        let began = std::time::Instant::now();
        let result = span.in_scope(attempt);
        record(&span, began, &result);
        result
    }
}

/// Runs the async acquisition `attempt` inside its span.
#[cfg(feature = "tokio")]
#[inline]
pub(crate) async fn acquire_async<T: Granted>(
    name: &str,
    how: &'static str,
    attempt: impl std::future::Future<Output = Result<Option<T>, Error>>,
) -> Result<Option<T>, Error> {
    #[cfg(not(feature = "tracing"))]
    {
        let _ = (name, how);
        attempt.await
    }
    #[cfg(feature = "tracing")]
    {
        use tracing::Instrument;
        let span = span(name, how);
        let began = std::time::Instant::now();
        let result = attempt.instrument(span.clone()).await;
        record(&span, began, &result);
        result
    }
}

#[cfg(feature = "tracing")]
fn span(name: &str, how: &'static str) -> tracing::Span {
    tracing::info_span!(
        target: "fencelock_redis",
        "acquire",
        name,
        how,
        outcome = tracing::field::Empty,
        token = tracing::field::Empty,
        waited_ms = tracing::field::Empty,
    )
}

#[cfg(feature = "tracing")]
fn record<T: Granted>(
    span: &tracing::Span,
    began: std::time::Instant,
    result: &Result<Option<T>, Error>,
) {
    let waited = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
    span.record("waited_ms", waited);
    match result {
        Ok(Some(lease)) => {
            span.record("outcome", "granted");
            span.record("token", lease.token().get());
        }
        Ok(None) => {
            span.record("outcome", "held");
        }
        Err(error) => {
            span.record("outcome", tracing::field::display(error));
        }
    }
    span.in_scope(|| tracing::info!(target: "fencelock_redis", waited_ms = waited, "acquire done"));
}
