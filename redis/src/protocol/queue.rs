//! Waiting for a held lock, without I/O: the queue of waiters on the server, and the waiter's
//! state machine that both front ends drive.
//!
//! # The queue (one server)
//!
//! A caller of [`acquire_timeout`](crate::RedisLock::acquire_timeout) that finds the lock held
//! *joins its queue*: a sorted set of waiters by ticket (the server's time in µs when it first
//! joined, kept across its later steps, so its place never moves back) and a second sorted set of
//! each waiter's *liveness deadline*, moved forward by every step it takes. Then it blocks on a
//! list of its own (`BLPOP p{name}:wake:<nonce>`) for one heartbeat at most, and takes its next
//! step — which is also its heartbeat.
//!
//! - **Direct hand-off.** The release script, in the same script as the release, gives the lock
//!   to the first waiter whose liveness has not run out: a new token from the counter, the lock
//!   key set to that waiter's nonce and token, and the token pushed to its wake-up list. Nobody
//!   can take the lock in between, so waiters are served first come, first served.
//! - **No barging.** A try (`try_acquire`, or a waiter that is not first) that finds the lock
//!   free while live waiters queue does not take it: it hands it to the first of them.
//! - **The hand-off is held for the grace only** (half the liveness window) until the waiter's
//!   next step confirms it with the waiter's own TTL; the lease's validity counts from before
//!   that step was sent. A waiter that vanished loses the hand-off when the grace runs out, and
//!   the next waiter's step — a heartbeat at most later — takes the lock: within the window.
//! - **A waiter that died** (`kill -9`) stops moving its liveness deadline; once it has passed,
//!   any script that looks at the head of the queue drops it. The first *live* waiter is served.
//! - **A waiter that gives up** leaves the queue in its last step, which still takes the lock if
//!   it is free and the waiter is first, and confirms a hand-off that reached it meanwhile.
//! - **A crashed holder**: each step returns the lock's remaining TTL; the first waiter blocks no
//!   longer than that, and takes the lock when it expires.
//! - **Faults**: the wake-up is a list, not a message: it waits for the waiter across a
//!   reconnect, and each step sees a hand-off by itself (the lock holds its nonce). A server that
//!   lost the queue (a restart) is joined again at the next step, with the waiter's ticket.
//!   Connection errors while waiting are retried with the handle's retry delays until the wait
//!   is over; any other error ends it.
//! - **No leaked keys**: both sets expire twice the liveness window after the last step of the
//!   last waiter, a wake-up list after the grace.
//!
//! While it waits, a waiter sends one step and one `BLPOP` per heartbeat (a third of the
//! liveness window, 1 s by default): about six requests a second, however long the holder holds.
//!
//! # On a quorum
//!
//! A grant takes two rounds over several servers, so it cannot be handed off inside one script.
//! A waiter's ticket is its own clock's time in µs when it started waiting, the same on every
//! server; round 1 (the claim) queues it on each server where it does not win, and a free lock is
//! claimed only by the first live waiter there (or by anyone when nobody waits). A release wakes
//! the first live waiter on each server, which tries at once. So the oldest waiter wins on every
//! server it queues on, and nobody starves; order between waiters whose clocks disagree follows
//! their clocks, which is fairness, not safety. A waiter listens on one server at a time (the
//! release reaches every server) and tries every heartbeat in any case.

use std::time::{Duration, Instant, SystemTime};

use fencelock::FencingToken;
use redis::Value;

use super::quorum::lease::{Acquisition, LeaseState, Retries};
use super::quorum::Attempt;
use super::{decode_token, unexpected, LockKeys, Nonce, Request};
use crate::error::{Error, InvalidInput};
use crate::protocol;

/// The shortest liveness window accepted: its heartbeat (a third) must leave room for a round
/// trip and a scheduler's delay.
pub const MIN_LIVENESS: Duration = Duration::from_millis(30);

/// The longest liveness window accepted.
pub const MAX_LIVENESS: Duration = Duration::from_secs(3600);

/// How long a waiter may stop answering before it is dropped from the queue, and with it the
/// waiter's heartbeat and hand-off grace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Liveness {
    window: Duration,
}

impl Liveness {
    /// # Errors
    /// [`Error::InvalidInput`] outside [`MIN_LIVENESS`]..=[`MAX_LIVENESS`].
    pub(crate) fn new(window: Duration) -> Result<Self, Error> {
        if !(MIN_LIVENESS..=MAX_LIVENESS).contains(&window) {
            return Err(InvalidInput::new(format!(
                "a liveness window of {window:?} is outside {MIN_LIVENESS:?}..={MAX_LIVENESS:?}: \
                 a waiter heartbeats every third of it, and a dead one blocks the queue for it"
            ))
            .into());
        }
        Ok(Self { window })
    }

    /// A waiter's liveness deadline is this far after its last step.
    pub(crate) fn alive_ms(self) -> u64 {
        // ≤ an hour: fits.
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }

    /// How long a hand-off waits for its waiter to confirm it: half the window.
    pub(crate) fn grace_ms(self) -> u64 {
        (self.alive_ms() / 2).max(1)
    }

    /// The longest a waiter blocks between two steps: a third of the window, so that two
    /// heartbeats can be late before it is dropped.
    pub(crate) fn heartbeat(self) -> Duration {
        self.window / 3
    }
}

/// What a waiter's step on one server answered (see `WAIT` in [`super`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WaitReply {
    /// The lock is the waiter's, with this token, for the TTL it asked for.
    Granted(FencingToken),
    /// Still queued: its ticket, the lock's remaining TTL (`None`: no TTL or no key), and how
    /// many waiters are before it.
    Queued {
        ticket: String,
        holder_ttl: Option<Duration>,
        rank: u64,
    },
    /// It left the queue.
    Left,
}

/// Decodes `WAIT`'s reply.
pub(crate) fn decode_wait(reply: &Value) -> Result<WaitReply, Error> {
    let Value::Array(parts) = reply else {
        return Err(unexpected(format!("unexpected wait reply {reply:?}")));
    };
    match parts.as_slice() {
        [Value::Int(1), token] => Ok(WaitReply::Granted(decode_token(token)?)),
        [Value::Int(2)] => Ok(WaitReply::Left),
        [Value::Int(0), ticket, Value::Int(pttl), Value::Int(rank)] => {
            let ticket = decode_token(ticket)?.get().to_string();
            Ok(WaitReply::Queued {
                ticket,
                holder_ttl: u64::try_from(*pttl).ok().map(Duration::from_millis),
                rank: u64::try_from(*rank).unwrap_or(0),
            })
        }
        _ => Err(unexpected(format!("unexpected wait reply {reply:?}"))),
    }
}

/// What a front end does next for a waiter.
pub(crate) enum WaitStep<'k> {
    /// One server: send this step (`WAIT`), then call [`Waiting::answered`].
    Ask(Request),
    /// A quorum: run this acquisition attempt (its claims queue the waiter), then call
    /// [`Waiting::attempted`].
    Attempt(Acquisition<'k>),
    /// `BLPOP key timeout` on every server at once (one server, or each of a quorum's), then
    /// call [`Waiting::woken`] once the first returns (whether or not it popped anything: the
    /// next step finds out). The front end then ends the other pops early by pushing a short-lived
    /// element to the same key on their servers ([`protocol::unblock`]).
    ///
    /// `precise`: the timeout is the end of the wait or of the holder's TTL, not a heartbeat, and
    /// must be kept on the client's clock. A server times blocked commands out only at its cron
    /// (every 100 ms at the default `hz 10`), so a heartbeat may run that much late — harmless —
    /// but a precise block waits on the client's side and drops its connection if nothing came.
    Block {
        key: String,
        timeout: Duration,
        precise: bool,
    },
    /// Sleep (a connection error is retried), then call [`Waiting::slept`].
    Sleep(Duration),
    /// One server: release this grant that came back too late to be valid (errors ignored: it
    /// ends by its grace or TTL), then call [`Waiting::slept`].
    Release(Request),
    /// The wait is over: send the request, if any, to every server, best effort (a quorum's
    /// waiter leaving its queues), and return the decision.
    Done(Result<Option<LeaseState>, Error>, Option<Request>),
}

/// A waiter of `acquire_timeout`, from its first step to a lease, the end of its wait, or an
/// error. [`driver::wait`](super::driver::wait) drives it, for both front ends:
///
/// ```text
/// step = waiting.start(now)
/// loop:
///   Ask(request)               → reply = send(request); step = waiting.answered(reply, now)
///   Attempt(acquisition)       → step = waiting.attempted(perform(acquisition), now)
///   Block { server, key, timeout } → r = BLPOP on server; step = waiting.woken(r, now)
///   Sleep(d)                   → sleep d; step = waiting.slept(now)
///   Release(request)           → send request, ignore reply; step = waiting.slept(now)
///   Done(decision, leave)      → send leave (if any) to every server; return decision
/// ```
pub(crate) struct Waiting<'k> {
    servers: usize,
    keys: &'k LockKeys,
    ttl: Duration,
    ttl_ms: u64,
    nonce: Nonce,
    /// How the queue names it: `nonce:grace_ms` on one server, `nonce:` on a quorum.
    waiter: String,
    liveness: Liveness,
    /// Its place in the queue: empty until a single server assigned one; on a quorum, its own
    /// clock's µs when the wait started.
    ticket: String,
    give_up: Option<Instant>,
    errors: Retries,
    /// When the step in flight was sent (a grant's validity counts from it).
    sent: Instant,
}

impl<'k> Waiting<'k> {
    /// A waiter on `servers` servers for `keys`, wanting a lease of `ttl`, for at most `wait`
    /// from `now`; connection errors are retried after `retry` delays (min, max).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a TTL out of range (nothing is to be sent).
    pub(crate) fn new(
        servers: usize,
        keys: &'k LockKeys,
        ttl: Duration,
        wait: Duration,
        liveness: Liveness,
        retry: (Duration, Duration),
        now: Instant,
    ) -> Result<Self, Error> {
        let ttl_ms = protocol::ttl_millis(ttl)?;
        let nonce = Nonce::new();
        let (waiter, ticket) = if servers == 1 {
            let waiter = format!("{}{}", nonce.prefix(), liveness.grace_ms());
            (waiter, String::new())
        } else {
            let micros = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros());
            (nonce.prefix().to_owned(), micros.to_string())
        };
        Ok(Self {
            servers,
            keys,
            ttl,
            ttl_ms,
            nonce,
            waiter,
            liveness,
            ticket,
            give_up: now.checked_add(wait),
            errors: Retries::new(wait, retry.0, retry.1, now),
            sent: now,
        })
    }

    /// The first step.
    pub(crate) fn start(&mut self, now: Instant) -> WaitStep<'k> {
        self.step(now)
    }

    /// How much of the wait is left at `now`.
    fn left(&self, now: Instant) -> Duration {
        self.give_up
            .map_or(Duration::MAX, |end| end.saturating_duration_since(now))
    }

    /// The next step: `WAIT` on one server (leaving once the wait is over), an attempt on a
    /// quorum.
    fn step(&mut self, now: Instant) -> WaitStep<'k> {
        self.sent = now;
        if self.servers == 1 {
            let leave = self.left(now).is_zero();
            return WaitStep::Ask(protocol::wait(
                self.keys,
                &self.nonce,
                &self.waiter,
                self.ttl_ms,
                self.liveness.alive_ms(),
                &self.ticket,
                leave,
            ));
        }
        let waiter = (self.ticket.clone(), self.liveness.alive_ms());
        match Acquisition::waiting(
            self.servers,
            self.keys,
            self.ttl,
            self.nonce.clone(),
            waiter,
            now,
        ) {
            Ok(acquisition) => WaitStep::Attempt(acquisition),
            Err(error) => self.over(Err(error)),
        }
    }

    /// Blocks on the wake-up list until the next heartbeat, the holder's TTL (if first), or the
    /// end of the wait, whichever comes first.
    fn block(&self, holder_ttl: Option<Duration>, now: Instant) -> WaitStep<'k> {
        let heartbeat = self.liveness.heartbeat();
        let mut timeout = heartbeat.min(self.left(now));
        if let Some(ttl) = holder_ttl {
            // One millisecond past it: the key has expired when the next step arrives.
            timeout = timeout.min(ttl + Duration::from_millis(1));
        }
        WaitStep::Block {
            key: self.keys.wake(&self.nonce),
            timeout,
            precise: timeout < heartbeat,
        }
    }

    /// The wait is over with `decision`; a quorum's waiter leaves its queues (everywhere: a
    /// grant took it out only where it was stored).
    fn over(&self, decision: Result<Option<LeaseState>, Error>) -> WaitStep<'k> {
        let leave =
            (self.servers > 1).then(|| protocol::leave(self.keys, &self.nonce, &self.waiter));
        WaitStep::Done(decision, leave)
    }

    /// What a waiter abandoned mid-wait (an async caller's future dropped) sends to every
    /// server, best effort: it leaves the queue, and passes on a hand-off that may have reached
    /// it (a release that finds the lock not this nonce's changes nothing).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn abandon(&self) -> [Request; 2] {
        [
            protocol::leave(self.keys, &self.nonce, &self.waiter),
            protocol::release(self.keys, &self.nonce, self.servers),
        ]
    }

    /// A step failed: a connection error is retried after a delay until the wait is over (then
    /// reported); any other error ends the wait.
    fn failed(&mut self, error: Error, now: Instant) -> WaitStep<'k> {
        if !error.is_unavailable() {
            return self.over(Err(error));
        }
        match self.errors.after_miss(now) {
            Some(delay) => WaitStep::Sleep(delay),
            None => self.over(Err(error)),
        }
    }

    /// The one server's reply to [`WaitStep::Ask`].
    pub(crate) fn answered(
        &mut self,
        reply: Result<(Value, bool), Error>,
        now: Instant,
    ) -> WaitStep<'k> {
        let reply = match reply.and_then(|(reply, _)| decode_wait(&reply)) {
            Ok(reply) => reply,
            Err(error) => return self.failed(error, now),
        };
        match reply {
            WaitReply::Granted(token) => {
                let valid_until = protocol::valid_until(self.sent, self.ttl);
                if now >= valid_until {
                    // Too late to use: passed on to the next waiter; this one queues again.
                    return WaitStep::Release(protocol::release(self.keys, &self.nonce, 1));
                }
                let lease = LeaseState::granted(self.nonce.clone(), token, self.ttl, valid_until);
                WaitStep::Done(Ok(Some(lease)), None)
            }
            WaitReply::Left => WaitStep::Done(Ok(None), None),
            WaitReply::Queued {
                ticket,
                holder_ttl,
                rank,
            } => {
                self.ticket = ticket;
                if self.left(now).is_zero() {
                    return self.step(now);
                }
                self.block(holder_ttl.filter(|_| rank == 0), now)
            }
        }
    }

    /// A quorum's attempt decided (see [`WaitStep::Attempt`]).
    pub(crate) fn attempted(
        &mut self,
        decision: Result<Attempt<LeaseState>, Error>,
        now: Instant,
    ) -> WaitStep<'k> {
        match decision {
            // Round 2 took it out of the queue only where it stored the token: a server that
            // granted too late for round 2 would keep it first in line there (and, with a server
            // down, block every other waiter) until its liveness ran out.
            Ok(Attempt::Granted(lease)) => self.over(Ok(Some(lease))),
            Ok(_) if self.left(now).is_zero() => self.over(Ok(None)),
            Ok(Attempt::TooSlow) => self.step(now),
            // Nothing changes before the holder's key runs out, unless a release wakes us.
            Ok(Attempt::Held(holder_ttl)) => self.block(holder_ttl, now),
            Err(error) => self.failed(error, now),
        }
    }

    /// The `BLPOP`s of [`WaitStep::Block`] returned (`Ok` if any did), or all failed. On a
    /// quorum, failed pops are not waited out: the attempt that follows tells what is up; on one
    /// server the failure is retried as any step's.
    pub(crate) fn woken(&mut self, popped: Result<(), Error>, now: Instant) -> WaitStep<'k> {
        match popped {
            Ok(()) => self.step(now),
            Err(_) if self.servers > 1 => self.step(now),
            Err(error) => self.failed(error, now),
        }
    }

    /// After [`WaitStep::Sleep`] or [`WaitStep::Release`]: the next step (the last one, if the
    /// wait is over).
    pub(crate) fn slept(&mut self, now: Instant) -> WaitStep<'k> {
        self.step(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn keys() -> LockKeys {
        LockKeys::new("t:", "stock").unwrap()
    }

    fn queued(ticket: &str, pttl: i64, rank: i64) -> Result<(Value, bool), Error> {
        Ok((
            Value::Array(vec![
                Value::Int(0),
                bulk(ticket),
                Value::Int(pttl),
                Value::Int(rank),
            ]),
            false,
        ))
    }

    fn granted(token: &str) -> Result<(Value, bool), Error> {
        Ok((Value::Array(vec![Value::Int(1), bulk(token)]), false))
    }

    fn down() -> Error {
        Error::Redis(redis::RedisError::from((redis::ErrorKind::Io, "down")))
    }

    fn liveness() -> Liveness {
        Liveness::new(Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn liveness_bounds_and_derived_times() {
        assert!(Liveness::new(Duration::ZERO).is_err());
        assert!(Liveness::new(ms(29)).is_err());
        assert!(Liveness::new(MAX_LIVENESS + ms(1)).is_err());
        let l = liveness();
        assert_eq!((l.alive_ms(), l.grace_ms()), (1000, 500));
        assert_eq!(l.heartbeat(), Duration::from_nanos(333_333_333));
    }

    #[test]
    fn decodes_wait_replies() {
        assert_eq!(
            decode_wait(&granted("42").unwrap().0).unwrap(),
            WaitReply::Granted(FencingToken::new(42))
        );
        assert_eq!(
            decode_wait(&queued("1700000000000001", 250, 0).unwrap().0).unwrap(),
            WaitReply::Queued {
                ticket: "1700000000000001".into(),
                holder_ttl: Some(ms(250)),
                rank: 0
            }
        );
        assert_eq!(
            decode_wait(&Value::Array(vec![Value::Int(2)])).unwrap(),
            WaitReply::Left
        );
        assert!(decode_wait(&Value::Nil).is_err());
        assert!(decode_wait(&Value::Array(vec![Value::Int(0)])).is_err());
    }

    fn request_args(step: &WaitStep<'_>) -> Vec<String> {
        let WaitStep::Ask(request) = step else {
            panic!("expected a step to send")
        };
        request
            .evalsha()
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn one_server_queues_blocks_for_a_heartbeat_and_keeps_its_ticket() {
        let (keys, t0) = (keys(), Instant::now());
        let mut w = Waiting::new(
            1,
            &keys,
            ms(5000),
            ms(2000),
            liveness(),
            (ms(2), ms(64)),
            t0,
        )
        .unwrap();
        let first = w.start(t0);
        let args = request_args(&first);
        // EVALSHA sha 5 lock counter queue alive wake  waiter ttl idle alive ticket leave
        assert_eq!(args[2], "5");
        assert_eq!(args[7], keys.wake(&w.nonce));
        assert!(
            args[8].ends_with(":500"),
            "waiter = nonce:grace: {}",
            args[8]
        );
        assert_eq!((args[9].as_str(), args[11].as_str()), ("5000", "1000"));
        assert_eq!((args[12].as_str(), args[13].as_str()), ("", "0"));

        // Held for 5 s by another, this waiter second: a heartbeat's block.
        match w.answered(queued("77", 5000, 1), t0 + ms(1)) {
            WaitStep::Block {
                key,
                timeout,
                precise,
            } => {
                assert_eq!(key, keys.wake(&w.nonce));
                assert_eq!(timeout, liveness().heartbeat());
                assert!(!precise, "a heartbeat may run late");
            }
            _ => panic!("expected to block"),
        }
        // The ticket the server gave is sent with every later step.
        let args = request_args(&w.woken(Ok(()), t0 + ms(300)));
        assert_eq!(args[12], "77");

        // First in line, the holder's key ends in 20 ms: blocks until just after, on our clock.
        match w.answered(queued("77", 20, 0), t0 + ms(301)) {
            WaitStep::Block {
                timeout, precise, ..
            } => assert_eq!((timeout, precise), (ms(21), true)),
            _ => panic!("expected to block"),
        }
    }

    #[test]
    fn one_server_grant_counts_from_the_step_that_got_it() {
        let (keys, t0) = (keys(), Instant::now());
        let ttl = ms(5000);
        let mut w = Waiting::new(1, &keys, ttl, ms(2000), liveness(), (ms(2), ms(64)), t0).unwrap();
        let _ = w.start(t0);
        let _ = w.answered(queued("77", 5000, 0), t0 + ms(1));
        let _ = w.woken(Ok(()), t0 + ms(40));
        match w.answered(granted("9"), t0 + ms(41)) {
            WaitStep::Done(Ok(Some(lease)), None) => {
                assert_eq!(lease.token(), FencingToken::new(9));
                assert_eq!(lease.valid_until(), protocol::valid_until(t0 + ms(40), ttl));
            }
            _ => panic!("expected a lease"),
        }
        // Granted after its validity: released (passed on), then queued again.
        let mut w = Waiting::new(1, &keys, ttl, ms(9000), liveness(), (ms(2), ms(64)), t0).unwrap();
        let _ = w.start(t0);
        assert!(matches!(
            w.answered(granted("9"), t0 + ttl),
            WaitStep::Release(r) if r.is_release()
        ));
        assert!(matches!(w.slept(t0 + ttl), WaitStep::Ask(_)));
    }

    #[test]
    fn one_server_leaves_when_the_wait_is_over() {
        let (keys, t0) = (keys(), Instant::now());
        let mut w =
            Waiting::new(1, &keys, ms(5000), ms(100), liveness(), (ms(2), ms(64)), t0).unwrap();
        let _ = w.start(t0);
        match w.answered(queued("5", 5000, 0), t0 + ms(1)) {
            WaitStep::Block { timeout, .. } => assert_eq!(timeout, ms(99)),
            _ => panic!("expected to block"),
        }
        let last = w.woken(Ok(()), t0 + ms(100));
        assert_eq!(request_args(&last)[13], "1", "the last step leaves");
        // Still queued when leaving is impossible to tell apart from a race: asked again.
        assert!(matches!(
            w.answered(queued("5", 5000, 0), t0 + ms(101)),
            WaitStep::Ask(_)
        ));
        assert!(matches!(
            w.answered(Ok((Value::Array(vec![Value::Int(2)]), false)), t0 + ms(102)),
            WaitStep::Done(Ok(None), None)
        ));
    }

    #[test]
    fn connection_errors_are_retried_until_the_wait_is_over_others_end_it() {
        let (keys, t0) = (keys(), Instant::now());
        let mut w =
            Waiting::new(1, &keys, ms(5000), ms(100), liveness(), (ms(2), ms(8)), t0).unwrap();
        let _ = w.start(t0);
        assert!(matches!(w.answered(Err(down()), t0), WaitStep::Sleep(_)));
        assert!(matches!(w.woken(Err(down()), t0), WaitStep::Sleep(_)));
        assert!(matches!(
            w.answered(Err(down()), t0 + ms(100)),
            WaitStep::Done(Err(Error::Redis(_)), None)
        ));
        let refused = Error::Redis(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "NOPERM",
        )));
        let mut w =
            Waiting::new(1, &keys, ms(5000), ms(100), liveness(), (ms(2), ms(8)), t0).unwrap();
        let _ = w.start(t0);
        assert!(matches!(
            w.answered(Err(refused), t0),
            WaitStep::Done(Err(Error::Redis(_)), None)
        ));
    }

    #[test]
    fn a_quorum_attempts_blocks_and_leaves_everywhere() {
        let (keys, t0) = (keys(), Instant::now());
        let mut w =
            Waiting::new(3, &keys, ms(5000), ms(100), liveness(), (ms(2), ms(8)), t0).unwrap();
        assert!(matches!(w.start(t0), WaitStep::Attempt(_)));
        assert!(
            !w.ticket.is_empty(),
            "its own clock's µs, the same on every server"
        );
        match w.attempted(Ok(Attempt::Held(None)), t0 + ms(1)) {
            WaitStep::Block { timeout, .. } => assert_eq!(timeout, ms(99)),
            _ => panic!("expected to block"),
        }
        // Pops that failed are not slept on: the next attempt tells.
        assert!(matches!(
            w.woken(Err(down()), t0 + ms(2)),
            WaitStep::Attempt(_)
        ));
        // A holder whose key runs out in 40 ms: blocks no longer than that.
        match w.attempted(Ok(Attempt::Held(Some(ms(40)))), t0 + ms(3)) {
            WaitStep::Block { timeout, .. } => assert_eq!(timeout, ms(41)),
            _ => panic!("expected to block"),
        }
        match w.attempted(Ok(Attempt::Held(Some(ms(2)))), t0 + ms(100)) {
            WaitStep::Done(Ok(None), Some(leave)) => assert!(!leave.is_release()),
            _ => panic!("expected to give up and leave"),
        }
    }
}

/// The queue's scripts on a real server, against a reference model.
#[cfg(test)]
mod model;
