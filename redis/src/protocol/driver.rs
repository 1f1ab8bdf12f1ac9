//! The loops that drive the state machines, written once for both front ends: a front end is a
//! [`Driver`] — it sends, waits and reports what came back — and [`perform`] and [`wait`] run
//! an operation or a waiter to its end over it.
//!
//! The driver's methods return futures. The async front end's are real ones; the blocking front
//! end's block the calling thread and are ready the first time they are polled, so
//! [`run_blocking`] runs the same loop on the caller's thread without a runtime.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::queue::{WaitStep, Waiting};
use super::quorum::lease::{Answer, LeaseState, Operation, Servers, Step};
use super::quorum::Tally;
use super::Request;
use crate::error::Error;

/// What a front end does for the state machines: move bytes, and wait.
pub(crate) trait Driver: Sync {
    /// The one server's reply to `request`, and whether it was sent twice.
    fn ask(&self, request: &Request) -> impl Future<Output = Answer> + Send;

    /// One round of a quorum: `request` to each of `servers` at once, the replies fed to `tally`
    /// until it decides or `deadline` passes.
    fn round<T: Tally + Send>(
        &self,
        servers: Servers,
        request: &Request,
        deadline: Instant,
        tally: T,
    ) -> impl Future<Output = T::Outcome> + Send
    where
        T::Outcome: Send;

    /// Sends `request` to every server without waiting for the replies (cleanup).
    fn forget(&self, request: &Request);

    /// The longest a round may wait: the I/O timeout, never past `valid_until`.
    fn round_deadline(&self, valid_until: Instant) -> Instant;

    /// `BLPOP key` on every server at once until the first returns (see [`WaitStep::Block`]).
    fn block(
        &self,
        key: &str,
        timeout: Duration,
        precise: bool,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Sleeps (a waiter retrying after a connection error).
    fn sleep(&self, delay: Duration) -> impl Future<Output = ()> + Send;
}

/// Runs `operation` to its decision: its request on the single server, or its rounds on the
/// quorum (see [`Operation`]); the cleanup it leaves is sent without waiting.
pub(crate) async fn perform<D: Driver, O: Operation + Send>(driver: &D, operation: O) -> O::Decision
where
    O::Tally: Send,
    <O::Tally as Tally>::Outcome: Send,
{
    let mut step = operation.start(Instant::now);
    loop {
        step = match step {
            Step::Ask(operation, request) => {
                let reply = driver.ask(&request).await;
                operation.answered(reply, Instant::now)
            }
            Step::Round(operation, round) => {
                let deadline = driver.round_deadline(round.valid_until);
                let decided = driver
                    .round(round.servers, &round.request, deadline, round.tally)
                    .await;
                operation.decided(decided, Instant::now)
            }
            Step::Done(decision, cleanup) => {
                if let Some(cleanup) = cleanup {
                    driver.forget(&cleanup);
                }
                return decision;
            }
        };
    }
}

/// Runs a waiter from its first step to a lease, the end of its wait, or an error (see
/// [`Waiting`]).
pub(crate) async fn wait<D: Driver>(
    driver: &D,
    waiting: &mut Waiting<'_>,
) -> Result<Option<LeaseState>, Error> {
    let mut step = waiting.start(Instant::now());
    loop {
        step = match step {
            WaitStep::Ask(request) => {
                let reply = driver.ask(&request).await;
                waiting.answered(reply, Instant::now())
            }
            WaitStep::Attempt(acquisition) => {
                let decision = perform(driver, acquisition).await;
                waiting.attempted(decision, Instant::now())
            }
            WaitStep::Block {
                key,
                timeout,
                precise,
            } => {
                let popped = driver.block(&key, timeout, precise).await;
                waiting.woken(popped, Instant::now())
            }
            WaitStep::Sleep(delay) => {
                crate::trace::debug_event!(?delay, "waiter retrying after a connection error");
                driver.sleep(delay).await;
                waiting.slept(Instant::now())
            }
            WaitStep::Release(request) => {
                // Best effort: an unanswered release ends by the grant's TTL.
                let _ = driver.ask(&request).await;
                waiting.slept(Instant::now())
            }
            WaitStep::Done(decision, leave) => {
                if let Some(leave) = leave {
                    driver.forget(&leave);
                }
                return decision;
            }
        };
    }
}

/// Runs `future` on the caller's thread, for a driver whose futures block and are ready when
/// first polled (the blocking front end): no runtime, no waker needed. Should one ever not be
/// ready, it is polled again — it can only be waiting on the thread's own blocking calls.
pub(crate) fn run_blocking<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
}
