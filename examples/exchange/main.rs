//! The seed's stock exchange, in one process: many traders, several stocks, and never the same
//! unit sold twice.
//!
//! Each step answers one hazard of the seed article with one of fencelock's primitives, and ends
//! by checking that nothing was lost or duplicated. Run with
//! `cargo run --release --example exchange`; the process exits non-zero if any check fails.

mod market;
mod rng;
mod settlement;
mod trading;
mod transfers;

use std::process::ExitCode;

/// A step of the run: its summary when every check passed, otherwise what failed.
type Step = fn() -> Result<String, String>;

fn main() -> ExitCode {
    let steps: [(&str, Step); 3] = [
        (
            "trading: each stock's book behind its own SpinLock",
            trading::run,
        ),
        (
            "transfers: two accounts per trade, taken with lock_all in one global order",
            transfers::run,
        ),
        (
            "settlement: books under DeadlineLock leases, ledgers fenced by their tokens",
            settlement::run,
        ),
    ];
    let mut failed = false;
    for (name, step) in steps {
        println!("== {name}");
        match step() {
            Ok(summary) => println!("{summary}"),
            Err(why) => {
                println!("FAILED: {why}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        println!("all checks passed: no unit lost, none sold twice");
        ExitCode::SUCCESS
    }
}
