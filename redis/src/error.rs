//! The one error type of the crate.

use std::borrow::Cow;
use std::fmt;

use fencelock::{LeaseLost, StaleToken, Version};

/// What went wrong in a call to the lock server.
///
/// `Display` says what happened and what to do; [`source`](std::error::Error::source) keeps the
/// underlying cause.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The lease is no longer held: it ran out ([`LeaseLost::Expired`]), or a newer acquisition
    /// holds the lock ([`LeaseLost::TakenOver`], with its token). Nothing was changed.
    Lost(LeaseLost),
    /// A fenced write carried a token below the highest the resource admitted: none of its
    /// commands ran.
    Stale(StaleToken),
    /// A versioned commit found the record at another version than the one it was prepared
    /// from: another writer committed first (or the record was lost, `current` 0). Nothing was
    /// written; load again and retry.
    Conflict {
        /// The version the commit expected (the one its caller loaded).
        expected: Version,
        /// The version the record had when the commit was refused.
        current: Version,
    },
    /// The call was refused before anything was sent: an empty or over-long name, a TTL out of
    /// range, a lock named twice, locks on different servers, ...
    InvalidInput(InvalidInput),
    /// The server could not be reached, did not answer within the timeouts, or answered
    /// something unexpected. Whether the request took effect is unknown: a lock it may have
    /// granted expires by its TTL.
    Redis(redis::RedisError),
}

impl Error {
    /// `true` for [`Error::Conflict`].
    #[must_use]
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }

    /// `true` for [`Error::Lost`].
    #[must_use]
    pub fn is_lost(&self) -> bool {
        matches!(self, Self::Lost(_))
    }

    /// `true` for a connection or timeout failure, or a topology in motion (a Sentinel
    /// failover, a cluster slot migrating or a cluster master down): the same call may succeed
    /// later.
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        use redis::{ErrorKind, ServerErrorKind as Server};
        match self {
            Self::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || matches!(
                        e.kind(),
                        ErrorKind::Server(
                            Server::ReadOnly
                                | Server::Moved
                                | Server::Ask
                                | Server::TryAgain
                                | Server::ClusterDown
                                | Server::MasterDown
                                | Server::BusyLoading
                        ) | ErrorKind::MasterNameNotFoundBySentinel
                            | ErrorKind::ClusterConnectionNotFound
                    )
            }
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lost(lost) => write!(
                f,
                "lease lost: {lost}; stop writing with its token and acquire the lock again"
            ),
            Self::Stale(stale) => write!(
                f,
                "fenced write refused, nothing ran: {stale}; this holder lost its lease"
            ),
            Self::Conflict { expected, current } => write!(
                f,
                "versioned commit refused, nothing written: the record is at {current}, not at \
                 {expected} as loaded; load it again and retry"
            ),
            Self::InvalidInput(invalid) => write!(f, "invalid input: {invalid}"),
            Self::Redis(e) => write!(
                f,
                "lock server unavailable or misbehaving ({e}); whether the request took effect \
                 is unknown, retry later"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Lost(lost) => Some(lost),
            Self::Stale(stale) => Some(stale),
            Self::Conflict { .. } => None,
            Self::InvalidInput(invalid) => Some(invalid),
            Self::Redis(e) => Some(e),
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(e)
    }
}

impl From<InvalidInput> for Error {
    fn from(invalid: InvalidInput) -> Self {
        Self::InvalidInput(invalid)
    }
}

/// Why an input was refused, and what to do instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidInput {
    reason: Cow<'static, str>,
}

impl InvalidInput {
    pub(crate) fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// The reason, as `Display` prints it.
    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for InvalidInput {}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}

    #[test]
    fn is_a_send_sync_static_error() {
        assert_error::<Error>();
        let lost = Error::Lost(LeaseLost::Expired);
        assert!(lost.is_lost() && !lost.is_unavailable());
        assert!(lost.to_string().contains("acquire the lock again"));
        assert!(std::error::Error::source(&lost).is_some());
    }
}
