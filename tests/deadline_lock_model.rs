//! A state-machine property test of `DeadlineLock` with a `Fenced` resource: random sequences of
//! acquire / advance the clock / renew / with_mut / release / drop / fenced write by several
//! clients, each checked against a reference model of what the lock must do.
//!
//! After every step: at most one lease is valid, and it is the one the model says; tokens are
//! strictly increasing; stale operations are refused with the model's error and change nothing.
#![cfg(not(loom))]

use std::sync::Arc;
use std::time::Duration;

use fencelock::{DeadlineLock, Fenced, FencingToken, Lease, LeaseLost, ManualClock, StaleToken};
use proptest::prelude::*;

const CLIENTS: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    Acquire { client: usize, lease: Length },
    Advance { millis: u64 },
    Renew { client: usize, lease: Length },
    WithMut { client: usize, add: u64 },
    Release { client: usize },
    Drop { client: usize },
    FencedWrite { client: usize, add: u64 },
}

/// A lease length: a few milliseconds, zero, or the saturating maximum.
#[derive(Clone, Copy, Debug)]
enum Length {
    Millis(u64),
    Max,
}

impl Length {
    fn duration(self) -> Duration {
        match self {
            Self::Millis(ms) => Duration::from_millis(ms),
            Self::Max => Duration::MAX,
        }
    }

    fn nanos(self) -> u64 {
        match self {
            Self::Millis(ms) => ms * 1_000_000,
            Self::Max => u64::MAX,
        }
    }
}

fn length() -> impl Strategy<Value = Length> {
    prop_oneof![
        8 => (0..20_u64).prop_map(Length::Millis),
        1 => Just(Length::Max),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let client = 0..CLIENTS;
    prop_oneof![
        3 => (client.clone(), length()).prop_map(|(client, lease)| Op::Acquire { client, lease }),
        3 => (0..15_u64).prop_map(|millis| Op::Advance { millis }),
        2 => (client.clone(), length()).prop_map(|(client, lease)| Op::Renew { client, lease }),
        2 => (client.clone(), 1..100_u64).prop_map(|(client, add)| Op::WithMut { client, add }),
        1 => client.clone().prop_map(|client| Op::Release { client }),
        1 => client.clone().prop_map(|client| Op::Drop { client }),
        2 => (client, 1..100_u64).prop_map(|(client, add)| Op::FencedWrite { client, add }),
    ]
}

/// What the lock must be doing.
#[derive(Default)]
struct Model {
    /// The clock, in nanoseconds (saturating, as `ManualClock`).
    now: u64,
    /// The last generation issued.
    generation: u64,
    /// Whether that generation's lease has not been released.
    held: bool,
    /// When that generation's lease ends.
    deadline: u64,
    /// Each client's lease, if it has one: (generation, deadline).
    leases: [Option<(u64, u64)>; CLIENTS],
    /// The lock's data.
    value: u64,
    /// The fenced resource: highest token admitted, and its value.
    fenced_highest: u64,
    fenced_value: u64,
}

impl Model {
    /// Whether client `c`'s lease is still usable, and if not, why.
    fn check(&self, (generation, deadline): (u64, u64)) -> Result<(), LeaseLost> {
        if generation != self.generation {
            Err(LeaseLost::TakenOver {
                by: FencingToken::new(generation + 1),
            })
        } else if self.now >= deadline {
            Err(LeaseLost::Expired)
        } else {
            Ok(())
        }
    }

    /// Releasing (or dropping) lease `generation`: frees the lock only if it is the latest.
    fn release(&mut self, generation: u64) -> Result<(), LeaseLost> {
        if generation == self.generation {
            self.held = false;
            Ok(())
        } else {
            Err(LeaseLost::TakenOver {
                by: FencingToken::new(generation + 1),
            })
        }
    }
}

type Lock = DeadlineLock<u64, Arc<ManualClock>>;

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let clock = Arc::new(ManualClock::new());
    let lock: Lock = DeadlineLock::with_clock(0, Arc::clone(&clock));
    let fenced = Fenced::new(0_u64);
    let mut leases: [Option<Lease<'_, u64, Arc<ManualClock>>>; CLIENTS] = Default::default();
    let mut model = Model::default();

    for op in ops {
        match *op {
            Op::Acquire { client, lease } => {
                if leases[client].is_some() {
                    continue; // one lease per client; `Drop` lets go of it
                }
                let acquired = lock.try_acquire(lease.duration());
                let may = !model.held || model.now >= model.deadline;
                prop_assert_eq!(acquired.is_some(), may, "try_acquire at {}", model.now);
                if let Some(acquired) = acquired {
                    model.generation += 1;
                    model.held = true;
                    model.deadline = model.now.saturating_add(lease.nanos());
                    prop_assert_eq!(acquired.token().get(), model.generation);
                    model.leases[client] = Some((model.generation, model.deadline));
                    leases[client] = Some(acquired);
                }
            }
            Op::Advance { millis } => {
                clock.advance(Duration::from_millis(millis));
                model.now = model.now.saturating_add(millis * 1_000_000);
            }
            Op::Renew { client, lease } => {
                let (Some(held), Some(known)) = (leases[client].as_mut(), model.leases[client])
                else {
                    continue;
                };
                let expected = model.check(known);
                prop_assert_eq!(held.renew(lease.duration()), expected);
                if expected.is_ok() {
                    model.deadline = model.now.saturating_add(lease.nanos());
                    model.leases[client] = Some((known.0, model.deadline));
                }
            }
            Op::WithMut { client, add } => {
                let (Some(held), Some(known)) = (leases[client].as_mut(), model.leases[client])
                else {
                    continue;
                };
                let expected = model.check(known);
                let mut ran = false;
                let result = held.with_mut(|value| {
                    ran = true;
                    *value += add;
                    *value
                });
                if expected.is_ok() {
                    model.value += add;
                }
                prop_assert_eq!(result, expected.map(|()| model.value));
                prop_assert_eq!(ran, expected.is_ok());
            }
            Op::Release { client } => {
                let (Some(held), Some(known)) =
                    (leases[client].take(), model.leases[client].take())
                else {
                    continue;
                };
                prop_assert_eq!(held.release(), model.release(known.0));
            }
            Op::Drop { client } => {
                if let (Some(held), Some(known)) =
                    (leases[client].take(), model.leases[client].take())
                {
                    drop(held);
                    let _ = model.release(known.0);
                }
            }
            Op::FencedWrite { client, add } => {
                let Some(known) = model.leases[client] else {
                    continue;
                };
                let token = FencingToken::new(known.0);
                let result = fenced.write(token, |value| *value += add);
                if known.0 >= model.fenced_highest {
                    prop_assert_eq!(result, Ok(()));
                    model.fenced_highest = known.0;
                    model.fenced_value += add;
                } else {
                    prop_assert_eq!(
                        result,
                        Err(StaleToken {
                            presented: token,
                            highest: FencingToken::new(model.fenced_highest),
                        })
                    );
                }
            }
        }

        // After every step: validity as the model says, and at most one valid lease.
        let mut valid = 0;
        for (held, known) in leases.iter().zip(&model.leases) {
            if let (Some(held), Some(known)) = (held, known) {
                let expected = model.check(*known).is_ok();
                prop_assert_eq!(held.is_valid(), expected);
                if expected {
                    prop_assert_eq!(
                        held.remaining(),
                        Some(Duration::from_nanos(known.1 - model.now))
                    );
                }
                valid += usize::from(expected);
            }
        }
        prop_assert!(valid <= 1, "{} valid leases", valid);
        prop_assert_eq!(fenced.highest().get(), model.fenced_highest);
        prop_assert_eq!(fenced.read(|value| *value), model.fenced_value);
    }

    drop(leases);
    prop_assert_eq!(lock.into_inner(), model.value);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 512 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn deadline_lock_behaves_as_its_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(&ops)?;
    }
}
