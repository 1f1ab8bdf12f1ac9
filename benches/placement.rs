//! fencelock's default `Adaptive` against its fixed strategies `Backoff`, `Spin` and `Yield`,
//! sorted by where the scheduler has placed the threads.
//!
//! On a VM the host moves the virtual CPUs while a bench runs: two threads may be two hardware
//! threads of one core, two cores close together, or two cores far apart, and the hand-over
//! scenarios change winners with the placement. Criterion's samples (`spin_lock.rs`) mix
//! placements, so its ratios move from run to run. This bench runs the threaded scenarios of
//! `spin_lock.rs` in short rounds instead. Each round:
//!
//! 1. reads the placement ([`scenarios::round_trip`]);
//! 2. runs every strategy once, in a shuffled order;
//! 3. reads the placement again, and drops the round if the two readings differ in class.
//!
//! It prints, per placement and scenario, each strategy's throughput relative to the best fixed
//! strategy *of the same round*: the median over rounds, and the lower quartile in brackets.
//! It is a diagnostic, not a target (the targets are read from `spin_lock.rs`).
//!
//! ```text
//! cargo bench --bench placement          # 60 rounds per scenario, about a minute
//! cargo bench --bench placement -- 200   # more rounds
//! cargo bench --bench placement -- 150 strict_turns contended_2   # only these scenarios
//! ```
//!
//! To try a strategy, add it as a column after the fixed ones: a `peer!` for
//! `SpinLock<u64, YourStrategy>`, its name in [`STRATEGIES`] and its runner in `every_strategy!`.

// Shared with `spin_lock.rs`, which uses all of it (the `peer!` macro, fairness's `first_done`).
#[allow(dead_code, unused_imports)]
mod scenarios;

use std::time::Duration;

use fencelock::{Backoff, Spin, SpinLock, Yield};
use scenarios::{round_trip, run, run_long_section, run_random, run_turns, Peer};

/// The strategies compared: the default first, then the fixed ones it is measured against.
const STRATEGIES: [&str; 4] = ["Adaptive", "Backoff", "Spin", "Yield"];

/// Where the fixed strategies are in [`STRATEGIES`]: each round's ratios are to the best of them.
const FIXED: std::ops::Range<usize> = 1..4;

/// One timed run of a scenario with `ops` ops per thread.
type Runner = fn(u64) -> Duration;

/// A scenario: its name in `spin_lock.rs`, ops per thread per run (about 10 ms of work on the
/// benchmarks' machine (docs/benchmarks.md), so that a round rarely straddles a move of the virtual CPUs), and one runner
/// per strategy, in the order of [`STRATEGIES`].
struct Scenario {
    name: &'static str,
    ops: u64,
    runners: [Runner; STRATEGIES.len()],
}

/// The runners of `$scenario` for every strategy.
macro_rules! every_strategy {
    (|$ops:ident| $scenario:ident::<P>($($arg:expr),*)) => {
        [
            |$ops| $scenario::<SpinLock<u64>>($($arg),*),
            |$ops| $scenario::<SpinLock<u64, Backoff>>($($arg),*),
            |$ops| $scenario::<SpinLock<u64, Spin>>($($arg),*),
            |$ops| $scenario::<SpinLock<u64, Yield>>($($arg),*),
        ]
    };
}

fn scenarios() -> [Scenario; 5] {
    /// `run`, timed to the last thread done.
    fn hot<P: Peer>(threads: usize, ops: u64) -> Duration {
        run::<P>(threads, ops).last_done
    }
    [
        Scenario {
            name: "contended_2_threads",
            ops: 1_000_000,
            runners: every_strategy!(|ops| hot::<P>(2, ops)),
        },
        Scenario {
            name: "oversubscribed_8_threads",
            ops: 250_000,
            runners: every_strategy!(|ops| hot::<P>(8, ops)),
        },
        Scenario {
            name: "random_of_64_8_threads",
            ops: 250_000,
            runners: every_strategy!(|ops| run_random::<P>(8, ops)),
        },
        Scenario {
            name: "long_section_4_threads",
            ops: 25_000,
            runners: every_strategy!(|ops| run_long_section::<P>(4, ops)),
        },
        Scenario {
            name: "strict_turns_2_threads",
            ops: 150_000,
            runners: every_strategy!(|ops| run_turns::<P>(ops)),
        },
    ]
}

/// Placement classes, by a cache line's round trip between the two threads: each class's bounds
/// in ns (from, inclusive; to, exclusive) and its name. A reading of 250–300 ns is in none.
const PLACEMENTS: [(f64, f64, &str); 3] = [
    (
        0.0,
        80.0,
        "two hardware threads of one core (round trip < 80 ns)",
    ),
    (80.0, 250.0, "two cores close together (80-250 ns)"),
    (300.0, f64::INFINITY, "two cores far apart (> 300 ns)"),
];

/// The class of a round-trip reading, if it is in one.
fn placement(round_trip_ns: f64) -> Option<usize> {
    PLACEMENTS
        .iter()
        .position(|&(low, high, _)| (low..high).contains(&round_trip_ns))
}

/// The median and the lower quartile of `ratios`.
fn median_and_lower_quartile(ratios: &mut [f64]) -> (f64, f64) {
    ratios.sort_by(f64::total_cmp);
    (ratios[ratios.len() / 2], ratios[ratios.len() / 4])
}

fn main() {
    // `cargo bench` passes `--bench`. A number is the rounds per scenario; any other word keeps
    // only the scenarios whose names contain one of the words.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let rounds: usize = args.iter().find_map(|arg| arg.parse().ok()).unwrap_or(60);
    let words: Vec<&str> = args
        .iter()
        .filter(|arg| arg.parse::<usize>().is_err())
        .map(String::as_str)
        .collect();
    let chosen = |name: &str| words.is_empty() || words.iter().any(|word| name.contains(word));
    // xorshift, fixed seed: the same shuffles every run.
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next_random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // ratios[placement][scenario][strategy]: one per kept round.
    let scenarios = scenarios();
    let mut ratios =
        vec![vec![vec![Vec::new(); STRATEGIES.len()]; scenarios.len()]; PLACEMENTS.len()];
    let mut dropped = vec![0_usize; scenarios.len()];
    for (s, scenario) in scenarios.iter().enumerate() {
        if !chosen(scenario.name) {
            continue;
        }
        let mut order: Vec<usize> = (0..STRATEGIES.len()).collect();
        for _ in 0..rounds {
            for i in (1..order.len()).rev() {
                order.swap(i, (next_random() % (i as u64 + 1)) as usize);
            }
            let before = placement(round_trip());
            let mut nanos_per_op = [0.0; STRATEGIES.len()];
            for &strategy in &order {
                let took = (scenario.runners[strategy])(scenario.ops);
                nanos_per_op[strategy] = took.as_nanos() as f64 / scenario.ops as f64;
            }
            let after = placement(round_trip());
            let Some(class) = before.filter(|_| before == after) else {
                dropped[s] += 1;
                continue;
            };
            let best_fixed = nanos_per_op[FIXED].iter().copied().fold(f64::MAX, f64::min);
            for (strategy, nanos) in nanos_per_op.iter().enumerate() {
                ratios[class][s][strategy].push(best_fixed / nanos);
            }
        }
    }
    println!(
        "Throughput relative to the best fixed strategy of the same round: median [lower quartile]"
    );
    for (class, &(_, _, name)) in PLACEMENTS.iter().enumerate() {
        println!("\nplacement: {name}");
        print!("{:26} {:>6}", "scenario", "rounds");
        for strategy in STRATEGIES {
            print!(" {strategy:>12}");
        }
        println!();
        for (s, scenario) in scenarios.iter().enumerate() {
            let kept = ratios[class][s][0].len();
            if kept == 0 {
                continue;
            }
            print!("{:26} {kept:>6}", scenario.name);
            for strategy in &mut ratios[class][s] {
                let (median, lower_quartile) = median_and_lower_quartile(strategy);
                print!(" {median:>5.2} [{lower_quartile:.2}]");
            }
            println!();
        }
    }
    println!("\nrounds dropped (placement moved during the round), per scenario: {dropped:?}");
}
