//! A lease's operations — acquiring, renewing, releasing — as state machines without I/O: each
//! says which request or round comes next and decides from what came back, so that a front end
//! (blocking or async) only sends, waits and hands the answers in. The order of the rounds, their
//! deadlines, the validity checks and the cleanup releases are written here once.
//!
//! # Driving an operation
//!
//! An [`Operation`] is made from the number of servers, the lock's keys and, where it needs one,
//! the lease; [`driver::perform`](super::super::driver::perform) then loops, for both front ends
//! (each a [`Driver`](super::super::driver::Driver) that only sends and waits):
//!
//! ```text
//! step = operation.start(now)
//! loop:
//!   Step::Ask(operation, request)  → send `request` to the one server;
//!                                    step = operation.answered(reply and whether it was sent twice, now)
//!   Step::Round(operation, round)  → send `round.request` to each of `round.servers` at once and
//!                                    feed the replies to `round.tally` until it decides, or settle
//!                                    it at the deadline: the I/O timeout, never past
//!                                    `round.valid_until`; step = operation.decided(outcome, now)
//!   Step::Done(decision, release)  → send `release`, if any, to every server, best effort and in
//!                                    the background where the front end can (claims nobody will
//!                                    use); return `decision`
//! ```
//!
//! Each step consumes the operation and hands it back with the next request, so nothing can be
//! sent for an operation that is done. The clock is handed in as `now`, a function the machine
//! calls only where a decision needs the time (`Instant::now` in the front ends, a fixed reading
//! in the tests): before an acquisition's or a renewal's first request, from which its validity
//! counts; when a grant, a quorum's round of an acquisition, or a quorum's renewal comes back, to
//! tell whether it is still valid (a round cut short by the validity is too late, not a failure);
//! and when a quorum's release round starts, which no validity bounds.
//!
//! # The steps
//!
//! A single server is asked once — one script, one round trip, nothing allocated beyond the
//! request and its reply. A quorum (see [`super`] for why its tokens only grow) takes rounds:
//!
//! | operation | one server | a quorum | decision |
//! |---|---|---|---|
//! | [`Acquisition`] | `ACQUIRE` | claim on every server (round 1), then store the token on those that granted (round 2) | `Granted(lease)`, `Held`, `TooSlow`, or the error, with the release to send where claims may be left |
//! | [`Renewal`] | `RENEW` | renew on every server; if the validity had already run out, release on every server instead, to learn who holds the lock now | renewed (the [`LeaseState`] updated), lost (`Expired` or `TakenOver`), or the error |
//! | [`Release`] | `RELEASE` | release on every server | released, lost, or the error |
//!
//! Acquisition: `Granted` only while the lease is still valid when the last reply arrives (its
//! validity is the TTL from before the first request, minus the drift allowance); a grant that
//! came back later is `TooSlow` and released. On a single server `Held` and errors leave nothing
//! to release (the script takes all or nothing); on a quorum every outcome but a grant releases
//! on every server, since some servers may have granted the claim.
//!
//! Renewal: on one server the server is the judge, even past the local validity; on a quorum a
//! renewal counts only if a majority renewed before the validity left ran out — after that,
//! another acquisition's majority may already hold the lock. A lost lease is no longer held;
//! freeing what may be left of it on a quorum is the front end's, in the background, as for a
//! dropped lease.

use core::iter::Chain;
use core::ops::Range;
use std::time::{Duration, Instant};

use fencelock::{FencingToken, LeaseLost};
use redis::Value;

use super::{
    Attempt, ClaimOutcome, ClaimTally, HolderTally, MajorityOutcome, Refusal, StoreTally, Tally,
};
use crate::error::Error;
use crate::protocol::{self, Holder, LockKeys, Nonce, Request};

/// One lease operation as a state machine: which request or round comes next, and what it
/// decided. See the [module docs](self) for the loop that drives it.
pub(crate) trait Operation: Sized {
    /// What its rounds are tallied with (a quorum only).
    type Tally: Tally;
    /// What the operation decides.
    type Decision;

    /// The first request or round.
    fn start(self, now: impl FnOnce() -> Instant) -> Step<Self>;

    /// The one server's reply to [`Step::Ask`]'s request.
    fn answered(self, reply: Answer, now: impl FnOnce() -> Instant) -> Step<Self>;

    /// What [`Step::Round`]'s tally decided (or settled to at the deadline).
    fn decided(
        self,
        outcome: <Self::Tally as Tally>::Outcome,
        now: impl FnOnce() -> Instant,
    ) -> Step<Self>;
}

/// The one server's reply to [`Step::Ask`]'s request, with whether the request was sent twice (a
/// reused connection that turned out closed); or why there is none.
pub(crate) type Answer = Result<(Value, bool), Error>;

/// What a front end does next for an operation.
pub(crate) enum Step<O: Operation> {
    /// Send the request to the one server, then call [`Operation::answered`].
    Ask(O, Request),
    /// Run the round, then call [`Operation::decided`].
    Round(O, Round<O::Tally>),
    /// The operation is over: send the release, if any, to every server (best effort, errors
    /// ignored, in the background where the front end can), and return the decision.
    Done(O::Decision, Option<Request>),
}

/// One round of a quorum: the same request to several servers at once.
#[derive(Debug)]
pub(crate) struct Round<T> {
    /// Whom to send it to.
    pub(crate) servers: Servers,
    /// What to send each of them.
    pub(crate) request: Request,
    /// Replies after this are worthless: the round's deadline is the front end's I/O timeout,
    /// never past this.
    pub(crate) valid_until: Instant,
    /// What to feed the replies to.
    pub(crate) tally: T,
}

/// The servers of a round, by index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Servers {
    /// Every one of this many.
    All(usize),
    /// These (the ones that granted round 1).
    Only(Vec<usize>),
}

impl IntoIterator for Servers {
    type Item = usize;
    type IntoIter = Chain<Range<usize>, std::vec::IntoIter<usize>>;

    fn into_iter(self) -> Self::IntoIter {
        match self {
            Self::All(n) => (0..n).chain(Vec::new()),
            Self::Only(servers) => (0..0).chain(servers),
        }
    }
}

/// A granted lease, apart from where it lives: what its renewals and release need, and its
/// validity on the local clock.
#[derive(Debug)]
pub(crate) struct LeaseState {
    nonce: Nonce,
    token: FencingToken,
    /// The TTL it was granted or last renewed with.
    ttl: Duration,
    valid_until: Instant,
    /// Still to be released: false after a release, or once it is known lost.
    held: bool,
    /// How it was lost, once a renewal found out: every later call reports the same loss.
    lost: Option<LeaseLost>,
}

impl LeaseState {
    /// The lease of the acquisition `nonce`, granted `token` for `ttl`, valid until `valid_until`.
    pub(crate) fn granted(
        nonce: Nonce,
        token: FencingToken,
        ttl: Duration,
        valid_until: Instant,
    ) -> Self {
        Self {
            nonce,
            token,
            ttl,
            valid_until,
            held: true,
            lost: None,
        }
    }

    /// Its fencing token.
    #[inline]
    pub(crate) fn token(&self) -> FencingToken {
        self.token
    }

    /// The TTL it was granted or last renewed with.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When it stops being valid on the local clock.
    pub(crate) fn valid_until(&self) -> Instant {
        self.valid_until
    }

    /// Whether it is still to be released.
    pub(crate) fn is_held(&self) -> bool {
        self.held
    }

    /// How long it is still valid at `now`: `None` once that has passed, or once it is no
    /// longer held.
    #[inline]
    pub(crate) fn remaining(&self, now: Instant) -> Option<Duration> {
        if !self.held {
            return None;
        }
        Some(self.valid_until.saturating_duration_since(now)).filter(|d| !d.is_zero())
    }

    /// It is lost (or dropped): no release is owed any more, only a best-effort one of what may
    /// be left of it.
    pub(crate) fn lose(&mut self) {
        self.held = false;
    }

    /// A renewal found it lost, as `lost`: it stays lost, and says so the same way every time.
    fn lose_to(&mut self, lost: LeaseLost) {
        self.held = false;
        self.lost.get_or_insert(lost);
    }

    /// The error for a call on a lease that is no longer held: the loss a renewal found, else
    /// `Expired` (released, dropped, or lost without a word from a server).
    pub(crate) fn no_longer_held(&self) -> Error {
        Error::Lost(self.lost.unwrap_or(LeaseLost::Expired))
    }

    /// The request that releases it on a server of `keys`, one of `servers`.
    pub(crate) fn release_request(&self, keys: &LockKeys, servers: usize) -> Request {
        protocol::release(keys, &self.nonce, servers)
    }
}

/// An acquisition attempt of one lock: decides `Granted(lease)`, `Held`, `TooSlow`, or an error.
pub(crate) struct Acquisition<'k> {
    servers: usize,
    keys: &'k LockKeys,
    nonce: Nonce,
    ttl: Duration,
    ttl_ms: u64,
    valid_until: Instant,
    /// A quorum's waiter: its ticket and liveness ms, so that its claims queue it (see
    /// [`queue`](crate::protocol::queue)).
    waiter: Option<(String, u64)>,
}

impl<'k> Acquisition<'k> {
    /// An attempt on `servers` servers to take `keys` for `ttl`, its first request to be sent
    /// right after `now()`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a TTL out of range (nothing is to be sent).
    pub(crate) fn new(
        servers: usize,
        keys: &'k LockKeys,
        ttl: Duration,
        now: impl FnOnce() -> Instant,
    ) -> Result<Self, Error> {
        let ttl_ms = protocol::ttl_millis(ttl)?;
        Ok(Self::of(
            servers,
            keys,
            ttl,
            ttl_ms,
            Nonce::new(),
            None,
            now(),
        ))
    }

    fn of(
        servers: usize,
        keys: &'k LockKeys,
        ttl: Duration,
        ttl_ms: u64,
        nonce: Nonce,
        waiter: Option<(String, u64)>,
        now: Instant,
    ) -> Self {
        Self {
            servers,
            keys,
            nonce,
            ttl,
            ttl_ms,
            valid_until: protocol::valid_until(now, ttl),
            waiter,
        }
    }

    /// An attempt of a quorum's waiter `nonce` (the same nonce for all its attempts: a claim
    /// left from an earlier one counts again, with its TTL renewed), queued with `waiter`'s
    /// ticket and liveness ms where it does not win; its first request sent right after `now`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub(crate) fn waiting(
        servers: usize,
        keys: &'k LockKeys,
        ttl: Duration,
        nonce: Nonce,
        waiter: (String, u64),
        now: Instant,
    ) -> Result<Self, Error> {
        let ttl_ms = protocol::ttl_millis(ttl)?;
        Ok(Self::of(
            servers,
            keys,
            ttl,
            ttl_ms,
            nonce,
            Some(waiter),
            now,
        ))
    }

    /// What releases whatever this attempt may have claimed, on each server (for a front end
    /// whose attempt is abandoned mid-way).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn release_claims(&self) -> Request {
        protocol::release_claims(self.keys, &self.nonce, self.servers)
    }

    /// Granted `token`: the lease, if still valid `now`.
    fn granted(self, token: FencingToken, now: impl FnOnce() -> Instant) -> Step<Self> {
        if now() >= self.valid_until {
            return self.refused(Refusal::TooSlow);
        }
        let lease = LeaseState::granted(self.nonce, token, self.ttl, self.valid_until);
        Step::Done(Ok(Attempt::Granted(lease)), None)
    }

    /// No lease: release whatever was claimed, everywhere.
    fn refused(self, refusal: Refusal) -> Step<Self> {
        let release = protocol::release_claims(self.keys, &self.nonce, self.servers);
        Step::Done(refusal.into_attempt(), Some(release))
    }
}

/// An acquisition's rounds on a quorum: the claim (round 1), then storing the token (round 2).
#[derive(Debug)]
pub(crate) enum AcquisitionTally {
    Claim(ClaimTally),
    /// Storing this token.
    Store(FencingToken, StoreTally),
}

/// What an acquisition's round decided.
#[derive(Debug)]
pub(crate) enum AcquisitionRound {
    Claimed(ClaimOutcome),
    /// Round 2 of this token.
    Stored(FencingToken, MajorityOutcome),
}

impl Tally for AcquisitionTally {
    type Outcome = AcquisitionRound;

    fn record(&mut self, server: usize, reply: Result<Value, Error>) -> Option<AcquisitionRound> {
        match self {
            Self::Claim(tally) => tally.record(server, reply).map(AcquisitionRound::Claimed),
            Self::Store(token, tally) => tally
                .record(server, reply)
                .map(|stored| AcquisitionRound::Stored(*token, stored)),
        }
    }

    fn settle(self) -> AcquisitionRound {
        match self {
            Self::Claim(tally) => AcquisitionRound::Claimed(tally.settle()),
            Self::Store(token, tally) => AcquisitionRound::Stored(token, tally.settle()),
        }
    }
}

impl Operation for Acquisition<'_> {
    type Tally = AcquisitionTally;
    type Decision = Result<Attempt<LeaseState>, Error>;

    fn start(self, _now: impl FnOnce() -> Instant) -> Step<Self> {
        if self.servers == 1 {
            let request = protocol::acquire([self.keys], &self.nonce, self.ttl_ms);
            return Step::Ask(self, request);
        }
        let round = Round {
            servers: Servers::All(self.servers),
            request: protocol::claim(
                self.keys,
                &self.nonce,
                self.ttl_ms,
                self.waiter
                    .as_ref()
                    .map(|(ticket, alive)| (ticket.as_str(), *alive)),
            ),
            valid_until: self.valid_until,
            tally: AcquisitionTally::Claim(ClaimTally::new(self.servers)),
        };
        Step::Round(self, round)
    }

    fn answered(self, reply: Answer, now: impl FnOnce() -> Instant) -> Step<Self> {
        match reply.and_then(|(reply, _)| protocol::decode_acquire(&reply, 1)) {
            Ok(Some(tokens)) => self.granted(tokens[0], now),
            // The script took nothing: nothing to release.
            Ok(None) => Step::Done(Ok(Attempt::Held(None)), None),
            Err(error) => Step::Done(Err(error), None),
        }
    }

    fn decided(self, outcome: AcquisitionRound, now: impl FnOnce() -> Instant) -> Step<Self> {
        // A round that ended at (or after) the validity was cut short by it, not by the servers:
        // whatever its tally says of the replies still missing, the grant came too late — which
        // a waiter retries — not an unreachable majority.
        let now = now();
        if now >= self.valid_until {
            return self.refused(Refusal::TooSlow);
        }
        match outcome {
            AcquisitionRound::Claimed(claimed) => match claimed.into_store() {
                Ok((token, granted)) => {
                    let round = Round {
                        tally: AcquisitionTally::Store(
                            token,
                            StoreTally::new(self.servers, granted.len()),
                        ),
                        servers: Servers::Only(granted),
                        request: protocol::store(self.keys, &self.nonce, token),
                        valid_until: self.valid_until,
                    };
                    Step::Round(self, round)
                }
                Err(refusal) => self.refused(refusal),
            },
            AcquisitionRound::Stored(token, stored) => match stored.into_grant() {
                Ok(()) => self.granted(token, || now),
                Err(refusal) => self.refused(refusal),
            },
        }
    }
}

/// The round that releases `lease` on every one of `servers`, decided by a majority.
fn release_round(
    servers: usize,
    keys: &LockKeys,
    lease: &LeaseState,
    now: impl FnOnce() -> Instant,
) -> Round<HolderTally> {
    Round {
        servers: Servers::All(servers),
        request: lease.release_request(keys, servers),
        // No validity to respect: only the I/O timeout bounds it.
        valid_until: now() + protocol::MAX_TTL,
        tally: HolderTally::new(servers, lease.token),
    }
}

/// A renewal of a lease to a new TTL: decides renewed (and updates the [`LeaseState`]), lost, or
/// an error.
pub(crate) struct Renewal<'l> {
    servers: usize,
    keys: &'l LockKeys,
    lease: &'l mut LeaseState,
    ttl: Duration,
    ttl_ms: u64,
    sent: Instant,
}

impl<'l> Renewal<'l> {
    /// A renewal on `servers` servers of `lease` on `keys` to `ttl`, its first request to be sent
    /// right after `now()`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a TTL out of range; [`Error::Lost`] if the lease is no longer
    /// held, as it was lost (else `Expired`). Nothing is to be sent then.
    pub(crate) fn new(
        servers: usize,
        keys: &'l LockKeys,
        lease: &'l mut LeaseState,
        ttl: Duration,
        now: impl FnOnce() -> Instant,
    ) -> Result<Self, Error> {
        let ttl_ms = protocol::ttl_millis(ttl)?;
        if !lease.held {
            return Err(lease.no_longer_held());
        }
        Ok(Self {
            servers,
            keys,
            lease,
            ttl,
            ttl_ms,
            sent: now(),
        })
    }

    /// On a quorum, a lease whose validity ran out before the renewal was sent is lost: another
    /// acquisition may hold the lock already.
    fn too_late(&self) -> bool {
        self.servers > 1 && self.sent >= self.lease.valid_until
    }

    fn done(self, renewed: Result<(), Error>) -> Step<Self> {
        match &renewed {
            Ok(()) => {
                self.lease.valid_until = protocol::valid_until(self.sent, self.ttl);
                self.lease.ttl = self.ttl;
            }
            Err(Error::Lost(lost)) => {
                crate::trace::warn_event!(name = %self.keys.name, %lost, "lease lost: a renewal found it");
                self.lease.lose_to(*lost);
            }
            Err(_error) => {
                crate::trace::warn_event!(name = %self.keys.name, error = %_error, "renewal failed");
            }
        }
        Step::Done(renewed, None)
    }
}

impl Operation for Renewal<'_> {
    type Tally = HolderTally;
    type Decision = Result<(), Error>;

    fn start(self, _now: impl FnOnce() -> Instant) -> Step<Self> {
        if self.servers == 1 {
            let request = protocol::renew(self.keys, &self.lease.nonce, self.ttl_ms);
            return Step::Ask(self, request);
        }
        if self.too_late() {
            // Lost. Releasing it everywhere also tells whether a newer acquisition holds it.
            self.lease.lose();
            let round = release_round(self.servers, self.keys, self.lease, || self.sent);
            return Step::Round(self, round);
        }
        let round = Round {
            servers: Servers::All(self.servers),
            request: protocol::renew(self.keys, &self.lease.nonce, self.ttl_ms),
            valid_until: self.lease.valid_until,
            tally: HolderTally::new(self.servers, self.lease.token),
        };
        Step::Round(self, round)
    }

    fn answered(self, reply: Answer, _now: impl FnOnce() -> Instant) -> Step<Self> {
        // One server is the judge, even past the local validity: nobody else can have held the
        // lock while it kept this lease's key.
        let renewed = reply
            .and_then(|(reply, _)| protocol::decode_holder(&reply))
            .and_then(Holder::into_result);
        self.done(renewed)
    }

    fn decided(self, outcome: MajorityOutcome, now: impl FnOnce() -> Instant) -> Step<Self> {
        if self.too_late() {
            let lost = match outcome.into_release() {
                Err(Error::Lost(lost)) => lost,
                _ => LeaseLost::Expired,
            };
            return self.done(Err(Error::Lost(lost)));
        }
        let in_time = now() < self.lease.valid_until;
        self.done(outcome.into_renewal(in_time))
    }
}

/// The release of a lease: decides released, lost, or an error.
pub(crate) struct Release<'l> {
    servers: usize,
    keys: &'l LockKeys,
    lease: &'l LeaseState,
}

impl<'l> Release<'l> {
    /// The release on `servers` servers of `lease` on `keys`. The lease is no longer held from
    /// here on, whatever the servers answer.
    ///
    /// # Errors
    /// [`Error::Lost`] if the lease is no longer held — with the loss a renewal found, else
    /// `Expired` (nothing is to be sent).
    pub(crate) fn new(
        servers: usize,
        keys: &'l LockKeys,
        lease: &'l mut LeaseState,
    ) -> Result<Self, Error> {
        if !lease.held {
            return Err(lease.no_longer_held());
        }
        lease.lose();
        Ok(Self {
            servers,
            keys,
            lease,
        })
    }
}

impl Release<'_> {
    /// Tells `tracing` (with the feature) that the release found the lease already lost.
    #[inline]
    fn lost_at_release(&self, _released: &Result<(), Error>) {
        if let Err(Error::Lost(_lost)) = _released {
            crate::trace::warn_event!(name = %self.keys.name, lost = %_lost, "lease lost: found at release");
        }
    }
}

impl Operation for Release<'_> {
    type Tally = HolderTally;
    type Decision = Result<(), Error>;

    fn start(self, now: impl FnOnce() -> Instant) -> Step<Self> {
        if self.servers == 1 {
            let request = self.lease.release_request(self.keys, 1);
            return Step::Ask(self, request);
        }
        let round = release_round(self.servers, self.keys, self.lease, now);
        Step::Round(self, round)
    }

    fn answered(self, reply: Answer, _now: impl FnOnce() -> Instant) -> Step<Self> {
        let released = reply.and_then(|(reply, resent)| {
            match protocol::decode_holder(&reply)? {
                // Sent twice, the first may have deleted the key: either way the lock is free
                // and this lease no longer holds it.
                Holder::Nobody if resent => Ok(()),
                holder => holder.into_result(),
            }
        });
        self.lost_at_release(&released);
        Step::Done(released, None)
    }

    fn decided(self, outcome: MajorityOutcome, _now: impl FnOnce() -> Instant) -> Step<Self> {
        let released = outcome.into_release();
        self.lost_at_release(&released);
        Step::Done(released, None)
    }
}

/// The waits between the tries of an acquisition with a time limit: a jittered delay that
/// doubles from `min` to `max`, never past the end of the wait.
#[derive(Debug)]
pub(crate) struct Retries {
    give_up: Option<Instant>,
    delay: Duration,
    max: Duration,
}

impl Retries {
    /// Tries from `now` until `wait` has passed, the delays between them from `min` to `max`.
    pub(crate) fn new(wait: Duration, min: Duration, max: Duration, now: Instant) -> Self {
        Self {
            give_up: now.checked_add(wait),
            delay: min,
            max,
        }
    }

    /// A try did not get the lock at `now`: how long to sleep before the next one, or `None` to
    /// give up (the wait is over).
    pub(crate) fn after_miss(&mut self, now: Instant) -> Option<Duration> {
        let left = self
            .give_up
            .map_or(Duration::MAX, |end| end.saturating_duration_since(now));
        if left.is_zero() {
            return None;
        }
        let sleep = jittered(self.delay).min(left);
        // Saturating: the builder accepts delays up to Duration::MAX.
        self.delay = self.delay.saturating_mul(2).min(self.max);
        Some(sleep)
    }
}

/// A delay drawn uniformly from `[delay / 2, delay]`, so waiters that collided do not collide
/// again in lockstep.
fn jittered(delay: Duration) -> Duration {
    let half = delay / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    let extra = protocol::random_words()[0] % nanos.saturating_add(1);
    half + Duration::from_nanos(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn keys() -> LockKeys {
        LockKeys::new("t:", "stock").unwrap()
    }

    /// Where the machine must not read the clock.
    fn no_clock() -> Instant {
        panic!("the clock was read where no decision needs it")
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn down() -> Result<Value, Error> {
        Err(Error::Redis(redis::RedisError::from((
            redis::ErrorKind::Io,
            "down",
        ))))
    }

    fn claimed(floor: u64) -> Result<Value, Error> {
        Ok(Value::Array(vec![Value::Int(1), bulk(&floor.to_string())]))
    }

    fn claim_held() -> Result<Value, Error> {
        Ok(Value::Array(vec![Value::Int(0), bulk("other:7")]))
    }

    fn us() -> Result<Value, Error> {
        Ok(Value::Array(vec![Value::Int(1)]))
    }

    fn nobody() -> Result<Value, Error> {
        Ok(Value::Array(vec![Value::Int(0)]))
    }

    fn newer(token: u64) -> Result<Value, Error> {
        Ok(Value::Array(vec![
            Value::Int(2),
            bulk(&format!("other:{token}")),
        ]))
    }

    /// The same command, to the byte.
    fn same(a: &Request, b: &Request) -> bool {
        a.evalsha().get_packed_command() == b.evalsha().get_packed_command()
    }

    fn ask<O: Operation>(step: Step<O>) -> (O, Request) {
        match step {
            Step::Ask(operation, request) => (operation, request),
            _ => panic!("expected one request to the one server"),
        }
    }

    fn round<O: Operation>(step: Step<O>) -> (O, Round<O::Tally>) {
        match step {
            Step::Round(operation, round) => (operation, round),
            _ => panic!("expected a round"),
        }
    }

    fn done<O: Operation>(step: Step<O>) -> (O::Decision, Option<Request>) {
        match step {
            Step::Done(decision, release) => (decision, release),
            _ => panic!("expected a decision"),
        }
    }

    /// Feeds scripted replies to the round's tally, as a front end would, and settles it at the
    /// deadline if they do not decide it.
    fn run<T: Tally>(round: Round<T>, replies: Vec<(usize, Result<Value, Error>)>) -> T::Outcome {
        let mut tally = round.tally;
        for (server, reply) in replies {
            if let Some(outcome) = tally.record(server, reply) {
                return outcome;
            }
        }
        tally.settle()
    }

    fn held_lease(token: u64, granted_at: Instant) -> LeaseState {
        let valid_until = protocol::valid_until(granted_at, TTL);
        LeaseState::granted(Nonce::new(), FencingToken::new(token), TTL, valid_until)
    }

    #[test]
    fn servers_of_a_round() {
        assert_eq!(Servers::All(3).into_iter().collect::<Vec<_>>(), [0, 1, 2]);
        let only = Servers::Only(vec![2, 0]).into_iter().collect::<Vec<_>>();
        assert_eq!(only, [2, 0]);
    }

    #[test]
    fn one_server_acquires_in_one_request() {
        let (keys, t0) = (keys(), Instant::now());
        let acquisition = Acquisition::new(1, &keys, TTL, || t0).unwrap();
        let nonce = acquisition.nonce.clone();
        let (acquisition, request) = ask(acquisition.start(no_clock));
        assert!(same(&request, &protocol::acquire([&keys], &nonce, 10_000)));

        let reply = Ok((Value::Array(vec![bulk("42")]), false));
        let (decision, release) = done(acquisition.answered(reply, || t0 + ms(3)));
        assert!(release.is_none());
        let Ok(Attempt::Granted(lease)) = decision else {
            panic!("{decision:?}")
        };
        assert_eq!(lease.token(), FencingToken::new(42));
        assert_eq!(lease.valid_until(), protocol::valid_until(t0, TTL));
        assert!(lease.is_held());
        assert_eq!(lease.remaining(t0), Some(ms(9_898)));
        assert_eq!((lease.ttl(), lease.nonce), (TTL, nonce));
    }

    #[test]
    fn one_server_held_or_failed_leaves_nothing_to_release() {
        let (keys, t0) = (keys(), Instant::now());
        let (acquisition, _) = ask(Acquisition::new(1, &keys, TTL, || t0)
            .unwrap()
            .start(no_clock));
        let (decision, release) = done(acquisition.answered(Ok((Value::Nil, false)), no_clock));
        assert!(matches!(decision, Ok(Attempt::Held(_))));
        assert!(release.is_none());

        let (acquisition, _) = ask(Acquisition::new(1, &keys, TTL, || t0)
            .unwrap()
            .start(no_clock));
        let failed = down().map(|value| (value, false));
        let (decision, release) = done(acquisition.answered(failed, no_clock));
        assert!(matches!(decision, Err(Error::Redis(_))));
        assert!(release.is_none());
    }

    #[test]
    fn one_server_grant_that_came_back_too_late_is_released() {
        let (keys, t0) = (keys(), Instant::now());
        let acquisition = Acquisition::new(1, &keys, TTL, || t0).unwrap();
        let nonce = acquisition.nonce.clone();
        let (acquisition, _) = ask(acquisition.start(no_clock));
        let reply = Ok((Value::Array(vec![bulk("42")]), false));
        let (decision, release) = done(acquisition.answered(reply, || t0 + TTL));
        assert!(matches!(decision, Ok(Attempt::TooSlow)));
        assert!(same(
            &release.unwrap(),
            &protocol::release(&keys, &nonce, 1)
        ));
    }

    #[test]
    fn a_ttl_out_of_range_sends_nothing() {
        let keys = keys();
        assert!(matches!(
            Acquisition::new(3, &keys, ms(1), no_clock),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn a_quorum_claims_everywhere_then_stores_where_granted() {
        let (keys, t0) = (keys(), Instant::now());
        let acquisition = Acquisition::new(3, &keys, TTL, || t0).unwrap();
        let nonce = acquisition.nonce.clone();
        let valid_until = protocol::valid_until(t0, TTL);

        let (acquisition, claim) = round(acquisition.start(no_clock));
        assert_eq!(claim.servers, Servers::All(3));
        assert!(same(
            &claim.request,
            &protocol::claim(&keys, &nonce, 10_000, None)
        ));
        assert_eq!(claim.valid_until, valid_until);
        let claimed = run(claim, vec![(2, claimed(100)), (0, claimed(250))]);

        // Deciding to store reads the clock (a round cut short by the validity is too late); the
        // store round has the same deadline.
        let (acquisition, store) = round(acquisition.decided(claimed, || t0 + ms(1)));
        let token = FencingToken::new(251);
        assert_eq!(store.servers, Servers::Only(vec![2, 0]));
        assert!(same(&store.request, &protocol::store(&keys, &nonce, token)));
        assert_eq!(store.valid_until, valid_until);
        let stored = run(store, vec![(0, Ok(Value::Int(1))), (2, Ok(Value::Int(1)))]);

        let (decision, release) = done(acquisition.decided(stored, || t0 + ms(2)));
        assert!(release.is_none());
        let Ok(Attempt::Granted(lease)) = decision else {
            panic!("{decision:?}")
        };
        assert_eq!((lease.token(), lease.valid_until()), (token, valid_until));
    }

    /// Runs a quorum-of-3 acquisition on scripted replies: `claims` for round 1, `stores` for
    /// round 2 (if it comes to that), the decision read at `decided_at`.
    fn quorum_attempt(
        claims: Vec<(usize, Result<Value, Error>)>,
        stores: Vec<(usize, Result<Value, Error>)>,
        decided_at: Duration,
    ) -> (Result<Attempt<LeaseState>, Error>, Option<Request>, Nonce) {
        let (keys, t0) = (keys(), Instant::now());
        let acquisition = Acquisition::new(3, &keys, TTL, || t0).unwrap();
        let nonce = acquisition.nonce.clone();
        let (acquisition, claim) = round(acquisition.start(no_clock));
        let step = acquisition.decided(run(claim, claims), || t0 + decided_at);
        let (decision, release) = match step {
            Step::Round(acquisition, store) => {
                done(acquisition.decided(run(store, stores), || t0 + decided_at))
            }
            step => done(step),
        };
        if let Some(release) = &release {
            assert!(same(release, &protocol::release_claims(&keys, &nonce, 3)));
        }
        (decision, release, nonce)
    }

    #[test]
    fn a_quorum_round_cut_short_by_the_validity_is_too_late_not_unreachable() {
        // Round 1 settled at the validity with one grant and the rest missing: counted as
        // failures by the tally, but the attempt is too late (a waiter retries), not an error.
        let (decision, release, _) = quorum_attempt(vec![(0, claimed(5))], vec![], TTL);
        assert!(matches!(decision, Ok(Attempt::TooSlow)), "{decision:?}");
        assert!(release.is_some());
    }

    #[test]
    fn a_quorum_held_by_a_majority_releases_everywhere() {
        let (decision, release, _) = quorum_attempt(
            vec![(0, claimed(5)), (1, claim_held()), (2, claim_held())],
            vec![],
            ms(1),
        );
        assert!(matches!(decision, Ok(Attempt::Held(_))));
        assert!(release.is_some());
    }

    #[test]
    fn a_quorum_unreachable_is_an_error_and_releases_everywhere() {
        // Nobody answered by the deadline: settled, every server counted as failed.
        let (decision, release, _) = quorum_attempt(vec![], vec![], ms(1));
        assert!(matches!(decision, Err(Error::Redis(_))));
        assert!(release.is_some());

        let (decision, release, _) = quorum_attempt(vec![(0, down()), (1, down())], vec![], ms(1));
        assert!(matches!(decision, Err(Error::Redis(_))));
        assert!(release.is_some());
    }

    #[test]
    fn a_quorum_grant_whose_store_lost_the_key_is_too_slow_and_released() {
        let (decision, release, _) = quorum_attempt(
            vec![(0, claimed(5)), (1, claimed(5))],
            vec![(1, Ok(Value::Int(0)))],
            ms(1),
        );
        assert!(matches!(decision, Ok(Attempt::TooSlow)));
        assert!(release.is_some());
    }

    #[test]
    fn a_quorum_grant_stored_after_the_validity_is_too_slow_and_released() {
        let (decision, release, _) = quorum_attempt(
            vec![(0, claimed(5)), (1, claimed(5))],
            vec![(0, Ok(Value::Int(1))), (1, Ok(Value::Int(1)))],
            TTL,
        );
        assert!(matches!(decision, Ok(Attempt::TooSlow)));
        assert!(release.is_some());
    }

    #[test]
    fn one_server_renewal_is_judged_by_the_server_even_past_the_validity() {
        let (keys, t0) = (keys(), Instant::now());
        let mut lease = held_lease(10, t0);
        let sent = t0 + ms(20_000);
        let ttl = ms(20_000);
        let renewal = Renewal::new(1, &keys, &mut lease, ttl, || sent).unwrap();
        let (renewal, request) = ask(renewal.start(no_clock));
        assert!(same(
            &request,
            &protocol::renew(&keys, &renewal.lease.nonce, 20_000)
        ));
        let (renewed, release) = done(renewal.answered(us().map(|v| (v, false)), no_clock));
        assert!(renewed.is_ok() && release.is_none());
        assert_eq!(lease.valid_until(), protocol::valid_until(sent, ttl));
        assert_eq!(lease.ttl(), ttl);
        assert!(lease.is_held());
    }

    #[test]
    fn one_server_renewal_lost_or_failed() {
        let (keys, t0) = (keys(), Instant::now());
        let mut lease = held_lease(10, t0);
        let renewal = Renewal::new(1, &keys, &mut lease, TTL, || t0 + ms(1)).unwrap();
        let (renewal, _) = ask(renewal.start(no_clock));
        let (renewed, _) = done(renewal.answered(down().map(|v| (v, false)), no_clock));
        assert!(matches!(renewed, Err(Error::Redis(_))));
        // An error changes nothing: still held, same validity.
        assert!(lease.is_held());
        assert_eq!(lease.valid_until(), protocol::valid_until(t0, TTL));

        let renewal = Renewal::new(1, &keys, &mut lease, TTL, || t0 + ms(1)).unwrap();
        let (renewal, _) = ask(renewal.start(no_clock));
        let (renewed, _) = done(renewal.answered(newer(12).map(|v| (v, false)), no_clock));
        assert!(matches!(
            renewed,
            Err(Error::Lost(LeaseLost::TakenOver { by })) if by == FencingToken::new(12)
        ));
        assert!(!lease.is_held());
        assert_eq!(lease.remaining(t0), None);
        // Lost stays lost, for the same reason: nothing is sent again.
        let taken_over = |r: Result<_, Error>| {
            matches!(
                r,
                Err(Error::Lost(LeaseLost::TakenOver { by })) if by == FencingToken::new(12)
            )
        };
        assert!(taken_over(
            Renewal::new(1, &keys, &mut lease, TTL, no_clock).map(drop)
        ));
        assert!(taken_over(Release::new(1, &keys, &mut lease).map(drop)));
        // A TTL out of range is refused first.
        assert!(matches!(
            Renewal::new(1, &keys, &mut lease, ms(1), no_clock),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn a_quorum_renewal_counts_if_a_majority_renewed_in_time() {
        let (keys, t0) = (keys(), Instant::now());
        let mut lease = held_lease(10, t0);
        let valid_until = lease.valid_until();
        let sent = t0 + ms(3_000);
        let renewal = Renewal::new(3, &keys, &mut lease, TTL, || sent).unwrap();
        let (renewal, renew) = round(renewal.start(no_clock));
        assert_eq!(renew.servers, Servers::All(3));
        assert!(same(
            &renew.request,
            &protocol::renew(&keys, &renewal.lease.nonce, 10_000)
        ));
        // No reply counts after the validity left.
        assert_eq!(renew.valid_until, valid_until);
        let outcome = run(renew, vec![(1, us()), (2, us())]);
        let (renewed, release) = done(renewal.decided(outcome, || sent + ms(1)));
        assert!(renewed.is_ok() && release.is_none());
        assert_eq!(lease.valid_until(), protocol::valid_until(sent, TTL));
    }

    #[test]
    fn a_quorum_renewal_decided_after_the_validity_is_lost() {
        let (keys, t0) = (keys(), Instant::now());
        let mut lease = held_lease(10, t0);
        let valid_until = lease.valid_until();
        let renewal = Renewal::new(3, &keys, &mut lease, TTL, || t0 + ms(1)).unwrap();
        let (renewal, renew) = round(renewal.start(no_clock));
        let outcome = run(renew, vec![(0, us()), (1, us())]);
        let (renewed, _) = done(renewal.decided(outcome, || valid_until));
        assert!(matches!(renewed, Err(Error::Lost(LeaseLost::Expired))));
        assert!(!lease.is_held());
        assert_eq!(lease.valid_until(), valid_until);
    }

    #[test]
    fn a_quorum_renewal_unavailable_changes_nothing() {
        let (keys, t0) = (keys(), Instant::now());
        let mut lease = held_lease(10, t0);
        let renewal = Renewal::new(3, &keys, &mut lease, TTL, || t0 + ms(1)).unwrap();
        let (renewal, renew) = round(renewal.start(no_clock));
        let outcome = run(renew, vec![(0, us()), (1, down())]);
        let (renewed, _) = done(renewal.decided(outcome, || t0 + ms(2)));
        assert!(matches!(renewed, Err(Error::Redis(_))));
        assert!(lease.is_held());
        assert_eq!(lease.valid_until(), protocol::valid_until(t0, TTL));
    }

    #[test]
    fn a_quorum_renewal_sent_too_late_releases_everywhere_and_names_the_newer_holder() {
        let (keys, t0) = (keys(), Instant::now());
        let mut lease = held_lease(10, t0);
        let late = lease.valid_until();
        let renewal = Renewal::new(3, &keys, &mut lease, TTL, || late).unwrap();
        let (renewal, release) = round(renewal.start(no_clock));
        assert!(!renewal.lease.is_held(), "lost before the round is sent");
        assert!(same(
            &release.request,
            &protocol::release(&keys, &renewal.lease.nonce, 3)
        ));
        assert_eq!(release.servers, Servers::All(3));
        assert_eq!(release.valid_until, late + protocol::MAX_TTL);
        let outcome = run(release, vec![(0, newer(12)), (2, newer(11))]);
        let (renewed, _) = done(renewal.decided(outcome, no_clock));
        assert!(matches!(
            renewed,
            Err(Error::Lost(LeaseLost::TakenOver { by })) if by == FencingToken::new(12)
        ));

        // Released everywhere, or unreachable: Expired all the same.
        for replies in [vec![(0, us()), (1, us())], vec![]] {
            let mut lease = held_lease(10, t0);
            let renewal = Renewal::new(3, &keys, &mut lease, TTL, || late + ms(5)).unwrap();
            let (renewal, release) = round(renewal.start(no_clock));
            let (renewed, _) = done(renewal.decided(run(release, replies), no_clock));
            assert!(matches!(renewed, Err(Error::Lost(LeaseLost::Expired))));
            assert!(!lease.is_held());
        }
    }

    #[test]
    fn one_server_release() {
        let (keys, t0) = (keys(), Instant::now());
        let mut lease = held_lease(10, t0);
        let release = Release::new(1, &keys, &mut lease).unwrap();
        assert!(
            !release.lease.is_held(),
            "released, whatever the server says"
        );
        let (release, request) = ask(release.start(no_clock));
        assert!(same(
            &request,
            &protocol::release(&keys, &release.lease.nonce, 1)
        ));
        let (released, cleanup) = done(release.answered(us().map(|v| (v, false)), no_clock));
        assert!(released.is_ok() && cleanup.is_none());
        assert!(matches!(
            Release::new(1, &keys, &mut lease),
            Err(Error::Lost(LeaseLost::Expired))
        ));

        // Gone: expired; but sent twice, the first may have deleted it.
        for (resent, expired) in [(false, true), (true, false)] {
            let mut lease = held_lease(10, t0);
            let (release, _) = ask(Release::new(1, &keys, &mut lease).unwrap().start(no_clock));
            let (released, _) = done(release.answered(nobody().map(|v| (v, resent)), no_clock));
            assert_eq!(
                matches!(released, Err(Error::Lost(LeaseLost::Expired))),
                expired
            );
            assert_eq!(released.is_ok(), !expired);
        }
    }

    #[test]
    fn a_quorum_release_is_decided_by_a_majority() {
        let (keys, t0) = (keys(), Instant::now());
        let mut lease = held_lease(10, t0);
        let release = Release::new(3, &keys, &mut lease).unwrap();
        let (release, round_) = round(release.start(|| t0 + ms(7)));
        assert!(round_.request.is_release());
        assert_eq!(round_.valid_until, t0 + ms(7) + protocol::MAX_TTL);
        let outcome = run(round_, vec![(0, us()), (1, nobody()), (2, us())]);
        let (released, cleanup) = done(release.decided(outcome, no_clock));
        assert!(released.is_ok() && cleanup.is_none());

        let mut lease = held_lease(10, t0);
        let (release, round_) = round(Release::new(3, &keys, &mut lease).unwrap().start(|| t0));
        let outcome = run(round_, vec![(0, nobody()), (1, newer(20))]);
        let (released, _) = done(release.decided(outcome, no_clock));
        assert!(matches!(
            released,
            Err(Error::Lost(LeaseLost::TakenOver { by })) if by == FencingToken::new(20)
        ));
    }

    #[test]
    fn retries_double_with_jitter_and_stop_when_the_wait_is_over() {
        let t0 = Instant::now();
        let mut retries = Retries::new(ms(100), ms(2), ms(8), t0);
        for (low, high) in [(1, 2), (2, 4), (4, 8), (4, 8)] {
            let sleep = retries.after_miss(t0).unwrap();
            assert!(ms(low) <= sleep && sleep <= ms(high), "{sleep:?}");
        }
        // Never past the end of the wait.
        assert!(retries.after_miss(t0 + ms(99)).unwrap() <= ms(1));
        assert_eq!(retries.after_miss(t0 + ms(100)), None);

        assert_eq!(
            Retries::new(Duration::ZERO, ms(2), ms(8), t0).after_miss(t0),
            None
        );
        let mut forever = Retries::new(Duration::MAX, ms(2), ms(8), t0);
        assert!(forever.after_miss(t0 + ms(1_000_000)).is_some());
        // The largest delays the builder accepts saturate instead of overflowing.
        let mut huge = Retries::new(ms(100), Duration::MAX, Duration::MAX, t0);
        for _ in 0..3 {
            assert!(huge.after_miss(t0).unwrap() <= ms(100));
        }
    }
}
