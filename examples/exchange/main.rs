//! The seed's stock exchange, in one process: many traders, several stocks, and never the same
//! unit sold twice.
//!
//! Each step answers one hazard of the seed article with one of fencelock's primitives, and ends
//! by checking that nothing was lost or duplicated. Run with
//! `cargo run --release --example exchange`; the process exits non-zero if any check fails.
//!
//! `cargo run --release --example exchange -- --redis [URL] [--processes N]` runs the exchange
//! across processes instead, on a Redis server (see `across_processes.rs`), and then settles the
//! sales under kept leases (`redis_settlement.rs`), recording both in a SQLite ledger as well
//! (`sql_ledger.rs`); add `--quorum 3` to take the leases on a quorum of three lock servers, one of
//! which is killed mid-run.

mod across_processes;
mod market;
mod redis_books;
#[path = "../../redis/tests/support/server.rs"]
mod redis_process;
mod redis_settlement;
mod rng;
mod settlement;
mod sql_ledger;
mod trader;
mod trading;
mod transfers;

use std::process::ExitCode;

/// A step of the run: its summary when every check passed, otherwise what failed.
type Step = fn() -> Result<String, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(redis_books::TRADER_FLAG) {
        return trader::main(&args[1..]);
    }
    if args
        .iter()
        .any(|arg| matches!(arg.as_str(), "--redis" | "--quorum" | "--data"))
    {
        return across_processes::main(&args);
    }
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
