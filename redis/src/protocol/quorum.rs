//! The quorum's decisions, without I/O: each tally takes the servers' replies one at a time, in
//! whatever order they arrive, and says as soon as the outcome is decided — a majority agreed,
//! or a majority can no longer agree. A front end sends the requests to every server at once and
//! feeds the replies in; when its deadline passes, it calls `settle`, which counts every server
//! that has not answered as failed.
//!
//! # Why tokens still only grow across servers
//!
//! An acquisition holds the lock only once a majority of the `n` servers *stored* its token `t`
//! (round 2), each only while its key was still present there. Round 1 asked every server for
//! its floor — the larger of its counter and its time in µs — and `t` is one more than the
//! largest floor among the servers that granted. Take any later acquisition: its round-1
//! majority meets our round-2 majority on some server `S` (two majorities of `n` always share
//! one). On `S` it could set its key only after ours was gone, so after our `t` was stored, so
//! it read a floor of at least `t` there and picks a token above `t` — *if `S` still has our
//! `t`*. No timing assumption enters while every server keeps its data (`appendonly yes`,
//! `appendfsync always`). A server that lost it (a restart without persistence, or a counter
//! idle for [`COUNTER_IDLE`](super::COUNTER_IDLE)) floors at its own clock, and `t` may have
//! come from another server's clock: then tokens grow only if the clocks agree to within the
//! time that server was without its data. The meeting server may be exactly the one that lost
//! it, with the only other copies of `t` unreachable, so no protocol can recover `t` there; a
//! delayed restart (keeping the server out for longer than the clock skew) is the remedy, and
//! `tests/quorum_clocks.rs` shows both sides.
//! The *lease* (mutual exclusion in time) additionally assumes bounded clock drift between the
//! client and the servers: its validity is the TTL minus the time since round 1 was sent, minus
//! [`drift_allowance`](super::drift_allowance).
//!
//! # In which order
//!
//! Which rounds an acquisition, a renewal or a release sends, with which deadlines, and what
//! each outcome leads to — the release of an attempt that failed included — is decided by the
//! state machines of [`lease`]; the front ends only run the rounds.

use std::time::Duration;

use fencelock::{FencingToken, LeaseLost};
use redis::Value;

use super::{decode_claim, decode_holder, decode_store, Claim, Holder, MAX_TOKEN};
use crate::error::{Error, InvalidInput};

pub(crate) mod lease;

/// Collects the servers' replies to one round until its outcome is decided. The front ends feed
/// it; it never waits or sends.
pub(crate) trait Tally {
    /// What the round decided.
    type Outcome;
    /// Records `server`'s reply; `Some` once the outcome is decided (later replies are ignored).
    fn record(&mut self, server: usize, reply: Result<Value, Error>) -> Option<Self::Outcome>;
    /// The deadline passed: decides, counting every server that has not answered as failed.
    fn settle(self) -> Self::Outcome;
}

/// How many of `n` servers make a majority.
#[inline]
#[must_use]
pub(crate) const fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// Keeps the first error seen, as the one to report when a majority was unreachable.
#[derive(Debug, Default)]
struct Failures {
    count: usize,
    first: Option<Error>,
}

impl Failures {
    fn record(&mut self, error: Error) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(error);
        }
    }

    #[cold]
    fn into_error(self) -> Error {
        self.first.unwrap_or_else(|| {
            Error::Redis(redis::RedisError::from((
                redis::ErrorKind::Io,
                "fencelock-redis: no answer from a majority of the lock servers within the timeout",
            )))
        })
    }
}

/// The outcome of round 1.
#[derive(Debug)]
pub(crate) enum ClaimOutcome {
    /// A majority granted: store `token` on `granted` (the servers that granted so far).
    Majority {
        token: FencingToken,
        granted: Vec<usize>,
    },
    /// Others hold the lock on too many servers for a majority (with the shortest remaining
    /// TTL a holding server reported).
    Held(Option<Duration>),
    /// A majority did not answer, or answered with errors.
    Unavailable(Error),
}

/// Round 1: which servers granted, and the largest floor among them.
#[derive(Debug)]
pub(crate) struct ClaimTally {
    servers: usize,
    granted: Vec<usize>,
    floor: u64,
    held: usize,
    /// The shortest remaining TTL of another acquisition's key among the servers that hold
    /// one: nothing changes for a waiter before it runs out, unless a release wakes it.
    holder_ttl: Option<Duration>,
    failures: Failures,
}

impl ClaimTally {
    pub(crate) fn new(servers: usize) -> Self {
        Self {
            servers,
            granted: Vec::with_capacity(servers),
            floor: 0,
            held: 0,
            holder_ttl: None,
            failures: Failures::default(),
        }
    }
}

impl Tally for ClaimTally {
    type Outcome = ClaimOutcome;

    fn record(&mut self, server: usize, reply: Result<Value, Error>) -> Option<ClaimOutcome> {
        match reply.and_then(|value| decode_claim(&value)) {
            Ok(Claim::Granted(floor)) => {
                self.granted.push(server);
                self.floor = self.floor.max(floor);
            }
            Ok(Claim::Held(ttl)) => {
                self.held += 1;
                self.holder_ttl = match (self.holder_ttl, ttl) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            Ok(Claim::Behind) => self.held += 1,
            Err(error) => self.failures.record(error),
        }
        self.decided()
    }

    fn settle(mut self) -> ClaimOutcome {
        let answered = self.granted.len() + self.held + self.failures.count;
        self.failures.count += self.servers - answered;
        self.decided().unwrap_or_else(|| self.refused())
    }
}

impl ClaimTally {
    fn decided(&mut self) -> Option<ClaimOutcome> {
        let need = majority(self.servers);
        if self.granted.len() >= need {
            let token = self.floor + 1;
            if token > MAX_TOKEN {
                return Some(ClaimOutcome::Unavailable(Error::InvalidInput(
                    InvalidInput::new("the lock servers' tokens reached 2^53: no token is left"),
                )));
            }
            return Some(ClaimOutcome::Majority {
                token: FencingToken::new(token),
                granted: std::mem::take(&mut self.granted),
            });
        }
        if self.held + self.failures.count > self.servers - need {
            return Some(self.refused());
        }
        None
    }

    fn refused(&mut self) -> ClaimOutcome {
        if self.failures.count >= majority(self.servers) {
            ClaimOutcome::Unavailable(std::mem::take(&mut self.failures).into_error())
        } else {
            ClaimOutcome::Held(self.holder_ttl)
        }
    }
}

impl ClaimOutcome {
    /// Round 1 decided: the token to store and where, or why the attempt ends.
    pub(crate) fn into_store(self) -> Result<(FencingToken, Vec<usize>), Refusal> {
        match self {
            Self::Majority { token, granted } => Ok((token, granted)),
            Self::Held(ttl) => Err(Refusal::Held(ttl)),
            Self::Unavailable(error) => Err(Refusal::Failed(error)),
        }
    }
}

/// Why an acquisition attempt ends without a lease. Every one of them leaves claims to release
/// on every server.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Others hold the lock (or waiters queue first); the holder's shortest remaining TTL seen.
    Held(Option<Duration>),
    /// Granted, but not in time to be valid.
    TooSlow,
    /// A majority did not answer.
    Failed(Error),
}

/// How one acquisition attempt ended, for a front end whose leases are `L`.
#[derive(Debug)]
pub(crate) enum Attempt<L> {
    Granted(L),
    /// Held by others (on a quorum: with the holder's shortest remaining TTL seen).
    Held(Option<Duration>),
    TooSlow,
}

impl<L> Attempt<L> {
    /// The same ending, with the lease made into an `M`.
    pub(crate) fn map<M>(self, lease: impl FnOnce(L) -> M) -> Attempt<M> {
        match self {
            Self::Granted(granted) => Attempt::Granted(lease(granted)),
            Self::Held(ttl) => Attempt::Held(ttl),
            Self::TooSlow => Attempt::TooSlow,
        }
    }

    /// What a single try (`try_acquire`) reports: the lease, `None` if others hold the lock, or
    /// [`LeaseLost::Expired`] for a grant that came back too late to be valid.
    pub(crate) fn into_lease(self) -> Result<Option<L>, Error> {
        match self {
            Self::Granted(lease) => Ok(Some(lease)),
            Self::Held(_) => Ok(None),
            Self::TooSlow => Err(Error::Lost(LeaseLost::Expired)),
        }
    }
}

impl Refusal {
    pub(crate) fn into_attempt<L>(self) -> Result<Attempt<L>, Error> {
        match self {
            Self::Held(ttl) => Ok(Attempt::Held(ttl)),
            Self::TooSlow => Ok(Attempt::TooSlow),
            Self::Failed(error) => Err(error),
        }
    }
}

/// The outcome of round 2, of a renewal, or of a release.
#[derive(Debug)]
pub(crate) enum MajorityOutcome {
    /// A majority did it.
    Done,
    /// A majority can no longer do it: the lease is lost.
    Lost(LeaseLost),
    /// Too many servers failed to answer to tell.
    Unavailable(Error),
}

impl MajorityOutcome {
    /// Round 2 decided: grant the lease, or why not.
    pub(crate) fn into_grant(self) -> Result<(), Refusal> {
        match self {
            Self::Done => Ok(()),
            Self::Lost(_) => Err(Refusal::TooSlow),
            Self::Unavailable(error) => Err(Refusal::Failed(error)),
        }
    }

    /// A renewal decided; it counts only if it was decided `in_time` (before the validity left
    /// ran out).
    pub(crate) fn into_renewal(self, in_time: bool) -> Result<(), Error> {
        match self {
            Self::Done if in_time => Ok(()),
            Self::Done => Err(Error::Lost(LeaseLost::Expired)),
            Self::Lost(lost) => Err(Error::Lost(lost)),
            Self::Unavailable(error) => Err(error),
        }
    }

    /// A release decided.
    pub(crate) fn into_release(self) -> Result<(), Error> {
        self.into_renewal(true)
    }
}

/// Round 2: how many of the servers that granted stored the token.
#[derive(Debug)]
pub(crate) struct StoreTally {
    servers: usize,
    asked: usize,
    stored: usize,
    gone: usize,
    failures: Failures,
}

impl StoreTally {
    /// A tally of `asked` store requests, of `servers` in all.
    pub(crate) fn new(servers: usize, asked: usize) -> Self {
        Self {
            servers,
            asked,
            stored: 0,
            gone: 0,
            failures: Failures::default(),
        }
    }
}

impl Tally for StoreTally {
    type Outcome = MajorityOutcome;

    fn record(&mut self, _server: usize, reply: Result<Value, Error>) -> Option<MajorityOutcome> {
        match reply.and_then(|value| decode_store(&value)) {
            Ok(true) => self.stored += 1,
            Ok(false) => self.gone += 1,
            Err(error) => self.failures.record(error),
        }
        self.decided()
    }

    fn settle(mut self) -> MajorityOutcome {
        let answered = self.stored + self.gone + self.failures.count;
        self.failures.count += self.asked - answered;
        self.decided()
            .unwrap_or_else(|| MajorityOutcome::Unavailable(self.failures.into_error()))
    }
}

impl StoreTally {
    /// Decided once the class of the outcome no longer depends on the replies still due (see
    /// [`majority_class`]): the same facts give the same outcome in any order.
    fn decided(&mut self) -> Option<MajorityOutcome> {
        let pending = self.asked - self.stored - self.gone - self.failures.count;
        match majority_class(self.servers, self.stored, self.failures.count, pending)? {
            Class::Done => Some(MajorityOutcome::Done),
            Class::Lost => Some(MajorityOutcome::Lost(LeaseLost::Expired)),
            Class::Unknown => Some(MajorityOutcome::Unavailable(
                std::mem::take(&mut self.failures).into_error(),
            )),
        }
    }
}

/// The class of a majority round's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// A majority did it.
    Done,
    /// A majority can no longer do it, even if every server that failed had done it.
    Lost,
    /// No majority confirmed it, but the servers that failed could have: nobody can tell.
    Unknown,
}

/// The class of a round where `done` of `servers` did it, `failed` failed to answer, and
/// `pending` have not answered yet (the rest said no) — or `None` while the replies still due
/// could change it. Deciding only then makes the outcome a function of the replies, not of their
/// order: a failure first and a refusal later give what a refusal first and a failure later give.
fn majority_class(servers: usize, done: usize, failed: usize, pending: usize) -> Option<Class> {
    let need = majority(servers);
    if done >= need {
        Some(Class::Done)
    } else if done + failed + pending < need {
        Some(Class::Lost)
    } else if done + pending < need && done + failed >= need {
        Some(Class::Unknown)
    } else if pending == 0 {
        // Unreachable by the arithmetic above (done + failed ≥ need here), kept total.
        Some(Class::Unknown)
    } else {
        None
    }
}

/// A renewal or a release on every server: how many still held this acquisition's key.
#[derive(Debug)]
pub(crate) struct HolderTally {
    servers: usize,
    token: FencingToken,
    ours: usize,
    not_ours: usize,
    newer: Option<FencingToken>,
    failures: Failures,
}

impl HolderTally {
    /// A tally for the lease with `token`, on `servers` servers.
    pub(crate) fn new(servers: usize, token: FencingToken) -> Self {
        Self {
            servers,
            token,
            ours: 0,
            not_ours: 0,
            newer: None,
            failures: Failures::default(),
        }
    }
}

impl Tally for HolderTally {
    type Outcome = MajorityOutcome;

    fn record(&mut self, _server: usize, reply: Result<Value, Error>) -> Option<MajorityOutcome> {
        match reply.and_then(|value| decode_holder(&value)) {
            Ok(Holder::Us) => self.ours += 1,
            Ok(Holder::Nobody | Holder::Other(None)) => self.not_ours += 1,
            Ok(Holder::Other(Some(by))) => {
                self.not_ours += 1;
                if by > self.token {
                    self.newer = self.newer.max(Some(by));
                }
            }
            Err(error) => self.failures.record(error),
        }
        self.decided()
    }

    fn settle(mut self) -> MajorityOutcome {
        let answered = self.ours + self.not_ours + self.failures.count;
        self.failures.count += self.servers - answered;
        self.decided()
            .unwrap_or_else(|| MajorityOutcome::Unavailable(self.failures.into_error()))
    }
}

impl HolderTally {
    /// As [`StoreTally`]'s: decided once the class cannot change — a newer acquisition's token
    /// seen with no majority left to confirm ours is a loss, so "cannot tell" waits for every
    /// reply. A loss names the newest holder seen by then (a reply still due could name a newer
    /// one: the class, not that detail, is independent of the order).
    fn decided(&mut self) -> Option<MajorityOutcome> {
        let pending = self.servers - self.ours - self.not_ours - self.failures.count;
        // A newer acquisition's token on a server, and no majority left to confirm ours: lost
        // to it, whatever the servers that failed did.
        if let Some(by) = self.newer {
            if self.ours + pending < majority(self.servers) {
                return Some(MajorityOutcome::Lost(LeaseLost::TakenOver { by }));
            }
        }
        match majority_class(self.servers, self.ours, self.failures.count, pending)? {
            // A reply still due could show a newer holder, which makes it a loss: wait for it.
            Class::Unknown if pending > 0 => None,
            Class::Done => Some(MajorityOutcome::Done),
            Class::Lost => Some(MajorityOutcome::Lost(match self.newer {
                Some(by) => LeaseLost::TakenOver { by },
                None => LeaseLost::Expired,
            })),
            Class::Unknown => Some(MajorityOutcome::Unavailable(
                std::mem::take(&mut self.failures).into_error(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(floor: u64) -> Result<Value, Error> {
        Ok(Value::Array(vec![
            Value::Int(1),
            Value::BulkString(floor.to_string().into_bytes()),
        ]))
    }

    fn held_for(ms: i64) -> Result<Value, Error> {
        Ok(Value::Array(vec![
            Value::Int(0),
            Value::BulkString(b"abc:7".to_vec()),
            Value::Int(ms),
        ]))
    }

    #[test]
    fn claim_reports_the_holders_shortest_ttl_and_waiters_first_as_held() {
        let mut tally = ClaimTally::new(3);
        assert!(tally.record(0, held_for(900)).is_none());
        match tally.record(1, held_for(250)) {
            Some(ClaimOutcome::Held(ttl)) => {
                assert_eq!(ttl, Some(std::time::Duration::from_millis(250)));
            }
            other => panic!("{other:?}"),
        }
        // Free, but another waiter is first: held, with no TTL to wait for.
        let behind = || Ok(Value::Array(vec![Value::Int(0), Value::BulkString(vec![])]));
        let mut tally = ClaimTally::new(3);
        assert!(tally.record(0, behind()).is_none());
        assert!(matches!(
            tally.record(2, behind()),
            Some(ClaimOutcome::Held(None))
        ));
    }

    fn held() -> Result<Value, Error> {
        Ok(Value::Array(vec![
            Value::Int(0),
            Value::BulkString(b"abc:7".to_vec()),
        ]))
    }

    fn failed() -> Result<Value, Error> {
        Err(Error::Redis(redis::RedisError::from((
            redis::ErrorKind::Io,
            "down",
        ))))
    }

    fn holder(code: i64, value: Option<&str>) -> Result<Value, Error> {
        let mut parts = vec![Value::Int(code)];
        parts.extend(value.map(|v| Value::BulkString(v.as_bytes().to_vec())));
        Ok(Value::Array(parts))
    }

    #[test]
    fn outcomes_say_what_the_front_ends_do() {
        assert!(matches!(
            ClaimOutcome::Held(None).into_store(),
            Err(Refusal::Held(None))
        ));
        assert!(matches!(
            MajorityOutcome::Lost(LeaseLost::Expired).into_grant(),
            Err(Refusal::TooSlow)
        ));
        assert!(MajorityOutcome::Done.into_grant().is_ok());
        assert!(MajorityOutcome::Done.into_renewal(true).is_ok());
        assert!(matches!(
            MajorityOutcome::Done.into_renewal(false),
            Err(Error::Lost(LeaseLost::Expired))
        ));
        assert!(matches!(
            Refusal::TooSlow.into_attempt::<()>(),
            Ok(Attempt::TooSlow)
        ));
        assert!(matches!(
            Attempt::Granted(7).map(|n| n + 1),
            Attempt::Granted(8)
        ));
        assert!(matches!(Attempt::Granted(7).into_lease(), Ok(Some(7))));
        assert!(matches!(Attempt::<u8>::Held(None).into_lease(), Ok(None)));
        assert!(matches!(
            Attempt::<u8>::TooSlow.into_lease(),
            Err(Error::Lost(LeaseLost::Expired))
        ));
    }

    /// Every order of the same replies gives the same class of outcome — done, lost, or cannot
    /// tell: exhaustively, for every mix of replies on 3 and 5 servers, renew/release rounds and
    /// store rounds.
    #[test]
    fn outcomes_do_not_depend_on_the_order_of_the_replies() {
        // Lost is lost: which newer holder a loss names may depend on which replies came first.
        fn class(outcome: &MajorityOutcome) -> &'static str {
            match outcome {
                MajorityOutcome::Done => "done",
                MajorityOutcome::Lost(_) => "lost",
                MajorityOutcome::Unavailable(_) => "unavailable",
            }
        }
        fn permutations(items: &[u8]) -> Vec<Vec<u8>> {
            if items.len() <= 1 {
                return vec![items.to_vec()];
            }
            let mut all = Vec::new();
            for i in 0..items.len() {
                let mut rest = items.to_vec();
                let first = rest.remove(i);
                for mut tail in permutations(&rest) {
                    tail.insert(0, first);
                    all.push(tail);
                }
            }
            all
        }
        // Holder replies: 0 ours, 1 gone, 2 newer holder, 3 failed, 4 no reply (settled).
        let holder_reply = |kind: u8| match kind {
            0 => holder(1, None),
            1 => holder(0, None),
            2 => holder(2, Some("abc:99")),
            _ => failed(),
        };
        for servers in [3_usize, 5] {
            let mut mixes = vec![vec![]];
            for _ in 0..servers {
                let mut next = Vec::new();
                for m in mixes {
                    // Multisets: each mix in non-decreasing order, its permutations below.
                    for k in (0..5).filter(|&k| m.last().is_none_or(|&l| k >= l)) {
                        let mut longer = m.clone();
                        longer.push(k);
                        next.push(longer);
                    }
                }
                mixes = next;
            }
            for mix in &mixes {
                let mut seen = None;
                for order in permutations(mix) {
                    let mut tally = HolderTally::new(servers, FencingToken::new(10));
                    let mut outcome = None;
                    for (server, &kind) in order.iter().enumerate() {
                        if kind == 4 {
                            continue;
                        }
                        if let Some(o) = tally.record(server, holder_reply(kind)) {
                            outcome = Some(o);
                            break;
                        }
                    }
                    let outcome = outcome.unwrap_or_else(|| tally.settle());
                    let got = class(&outcome);
                    assert_eq!(
                        *seen.get_or_insert(got),
                        got,
                        "{servers} servers, {order:?}"
                    );
                }
            }
            // Store rounds: 0 stored, 1 gone, 3 failed, 4 no reply, on the `asked` that granted.
            for asked in majority(servers)..=servers {
                for mix in mixes.iter().filter(|m| m.len() == servers) {
                    let mix: Vec<u8> = mix
                        .iter()
                        .take(asked)
                        .map(|&k| if k == 2 { 1 } else { k })
                        .collect();
                    let mut seen = None;
                    for order in permutations(&mix) {
                        let mut tally = StoreTally::new(servers, asked);
                        let mut outcome = None;
                        for (server, &kind) in order.iter().enumerate() {
                            let reply = match kind {
                                0 => Ok(Value::Int(1)),
                                1 => Ok(Value::Int(0)),
                                3 => failed(),
                                _ => continue,
                            };
                            if let Some(o) = tally.record(server, reply) {
                                outcome = Some(o);
                                break;
                            }
                        }
                        let outcome = outcome.unwrap_or_else(|| tally.settle());
                        let got = class(&outcome);
                        assert_eq!(*seen.get_or_insert(got), got, "store {order:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn majorities() {
        assert_eq!([1, 3, 5, 7].map(majority), [1, 2, 3, 4]);
    }

    #[test]
    fn claim_decides_at_the_majority_with_the_largest_floor_plus_one() {
        let mut tally = ClaimTally::new(3);
        assert!(tally.record(2, granted(100)).is_none());
        match tally.record(0, granted(250)) {
            Some(ClaimOutcome::Majority { token, granted }) => {
                assert_eq!(token, FencingToken::new(251));
                assert_eq!(granted, [2, 0]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn claim_is_refused_as_soon_as_a_majority_is_out_of_reach() {
        let mut tally = ClaimTally::new(3);
        assert!(tally.record(0, held()).is_none());
        assert!(matches!(
            tally.record(1, held()),
            Some(ClaimOutcome::Held(_))
        ));

        let mut tally = ClaimTally::new(3);
        assert!(tally.record(0, granted(1)).is_none());
        assert!(tally.record(1, failed()).is_none());
        assert!(matches!(
            tally.record(2, held()),
            Some(ClaimOutcome::Held(_))
        ));

        let mut tally = ClaimTally::new(3);
        assert!(tally.record(0, failed()).is_none());
        assert!(matches!(
            tally.record(1, failed()),
            Some(ClaimOutcome::Unavailable(_))
        ));
    }

    #[test]
    fn claim_settles_missing_answers_as_failures() {
        let mut tally = ClaimTally::new(5);
        assert!(tally.record(0, granted(1)).is_none());
        assert!(tally.record(1, granted(1)).is_none());
        assert!(matches!(tally.settle(), ClaimOutcome::Unavailable(_)));

        let mut tally = ClaimTally::new(1);
        assert!(matches!(
            tally.record(0, held()),
            Some(ClaimOutcome::Held(_))
        ));
        assert!(matches!(
            ClaimTally::new(3).settle(),
            ClaimOutcome::Unavailable(_)
        ));
    }

    #[test]
    fn claim_refuses_a_token_past_2_pow_53() {
        let mut tally = ClaimTally::new(1);
        assert!(matches!(
            tally.record(0, granted(MAX_TOKEN)),
            Some(ClaimOutcome::Unavailable(Error::InvalidInput(_)))
        ));
    }

    #[test]
    fn store_needs_a_majority_of_all_servers() {
        let mut tally = StoreTally::new(5, 3);
        assert!(tally.record(0, Ok(Value::Int(1))).is_none());
        assert!(tally.record(0, Ok(Value::Int(1))).is_none());
        assert!(matches!(
            tally.record(0, Ok(Value::Int(1))),
            Some(MajorityOutcome::Done)
        ));

        let mut tally = StoreTally::new(3, 2);
        assert!(matches!(
            tally.record(0, Ok(Value::Int(0))),
            Some(MajorityOutcome::Lost(LeaseLost::Expired))
        ));
        let mut tally = StoreTally::new(3, 2);
        assert!(tally.record(0, Ok(Value::Int(1))).is_none());
        assert!(matches!(tally.settle(), MajorityOutcome::Unavailable(_)));
    }

    #[test]
    fn holder_reports_the_newest_holder_seen() {
        let token = FencingToken::new(10);
        let mut tally = HolderTally::new(3, token);
        assert!(tally.record(0, holder(2, Some("n:12"))).is_none());
        assert!(matches!(
            tally.record(0, holder(2, Some("m:11"))),
            Some(MajorityOutcome::Lost(LeaseLost::TakenOver { by })) if by == FencingToken::new(12)
        ));

        let mut tally = HolderTally::new(3, token);
        assert!(tally.record(0, holder(1, None)).is_none());
        assert!(matches!(
            tally.record(0, holder(1, None)),
            Some(MajorityOutcome::Done)
        ));

        let mut tally = HolderTally::new(3, token);
        assert!(tally.record(0, holder(0, None)).is_none());
        assert!(matches!(
            tally.record(0, holder(2, Some("x:"))),
            Some(MajorityOutcome::Lost(LeaseLost::Expired))
        ));

        let mut tally = HolderTally::new(3, token);
        assert!(tally.record(0, holder(1, None)).is_none());
        assert!(tally.record(1, failed()).is_none());
        assert!(matches!(
            tally.record(2, failed()),
            Some(MajorityOutcome::Unavailable(_))
        ));
    }
}
