//! The seed's stock exchange, in one process: many traders, several stocks, and never the same
//! unit sold twice.
//!
//! Each step answers one hazard of the seed article with one of fencelock's primitives, and ends
//! by checking that nothing was lost or duplicated. Run with
//! `cargo run --release --example exchange`; the process exits non-zero if any check fails.

mod rng;
mod settlement;
mod trading;

use std::process::ExitCode;

/// A step of the exchange: its name, and what runs it (a summary, or what failed).
type Step = (&'static str, fn() -> Result<String, String>);

fn main() -> ExitCode {
    let steps: [Step; 2] = [
        (
            "trading: each stock's book behind its own SpinLock",
            trading::run,
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
