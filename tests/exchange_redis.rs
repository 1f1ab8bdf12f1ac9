//! The exchange example's `--redis` mode, end to end: three trader processes against a throwaway
//! `redis-server`, one of them stalling past its lease. The run must pass its own exactly-once
//! check, with the stalled trader's late write refused. Then the same with `--quorum 3`: the
//! leases on three lock servers, the data on a fourth, and one lock server killed with `kill -9`
//! in the middle of trading (the example starts these four servers itself: only then does it
//! kill one). In both modes the sales are then settled under kept leases: the settlement step
//! must settle every sold unit exactly once, and refuse the late write of the settler whose
//! renewals were capped short of its work.
//!
//! Every trader process also trades the hot stock `HOT`, queueing for its one lock: each must
//! hold it at least once, and its units too must be sold exactly once.
//!
//! Runs the example binary that `cargo test` builds (into `target/<profile>/examples/`); it needs
//! `redis-server` on PATH.

#[path = "../redis/tests/support/server.rs"]
mod redis_process;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use redis_process::RedisProcess;

/// The longest the whole run may take before it is killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// `target/<profile>/examples/exchange`, next to this test's `deps/` directory.
fn example_binary() -> PathBuf {
    let me = std::env::current_exe().expect("the test binary's path");
    let profile_dir = me
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let exe = profile_dir
        .join("examples")
        .join(format!("exchange{}", std::env::consts::EXE_SUFFIX));
    assert!(
        exe.is_file(),
        "the exchange example is not built at {}: run `cargo test` (which builds the examples) \
         or `cargo build --example exchange` first",
        exe.display()
    );
    let built = modified(&exe);
    let sources = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/exchange");
    for source in std::fs::read_dir(&sources).expect("examples/exchange/") {
        let source = source.expect("a directory entry").path();
        assert!(
            modified(&source) <= built,
            "{} is older than {}: rebuild it with `cargo build --example exchange` (or run \
             `cargo test` without --test, which builds the examples)",
            exe.display(),
            source.display()
        );
    }
    exe
}

fn modified(path: &std::path::Path) -> SystemTime {
    path.metadata()
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs the example with `args`, reading both of its pipes to their end (bounded by
/// `RUN_TIMEOUT`); asserts that it succeeded and passed its exactly-once check, and returns its
/// output.
fn run_exchange(args: &[&str]) -> String {
    let exe = example_binary();
    let started = Instant::now();
    let mut child = Command::new(&exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));

    // Both pipes are read to their end on threads of their own (the traders inherit stderr, so it
    // closes when the last process of the run is gone); the wait for them is bounded.
    let (done, finished) = mpsc::channel();
    for mut pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let done = done.clone();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = done.send(text);
        });
    }
    let mut outputs = Vec::new();
    for _ in 0..2 {
        let left = RUN_TIMEOUT.saturating_sub(started.elapsed());
        match finished.recv_timeout(left) {
            Ok(text) => outputs.push(text),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the exchange did not finish within {RUN_TIMEOUT:?}: killed it");
            }
        }
    }
    let status = child.wait().expect("wait for the exchange");
    let output = outputs.concat();

    assert!(
        status.success(),
        "the exchange failed ({status}):\n{output}"
    );
    assert!(
        output.contains("exactly-once check passed"),
        "no exactly-once verdict:\n{output}"
    );
    output
}

/// The summary's count of late writes refused.
fn late_writes_refused(output: &str) -> u64 {
    output
        .split("late writes refused: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of late writes refused:\n{output}"))
}

/// The count after `label` in `line` (up to the next comma).
fn count_after(line: &str, label: &str) -> u64 {
    line.split(label)
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count after {label:?} in {line:?}"))
}

/// Asserts that the settlement step ran and passed: every sold unit settled, the capped
/// settler's kept lease lost and its late write refused, and the step's verdict printed.
fn assert_settled(output: &str) {
    assert!(
        output.contains("== settlement: sold units settled under kept RedisLock leases"),
        "no settlement step:\n{output}"
    );
    let line = output
        .lines()
        .find(|line| line.starts_with("  settlement: kept leases: "))
        .unwrap_or_else(|| panic!("no settlement summary line:\n{output}"));
    assert_eq!(count_after(line, "kept leases: "), 5, "{line}");
    assert!(
        line.contains("units settled: 1200 of 1200 sold,"),
        "not every sold unit settled:\n{output}"
    );
    assert_eq!(count_after(line, "leases lost: "), 1, "{line}");
    assert!(
        count_after(line, "late writes refused: ") >= 1,
        "no late write refused in settlement:\n{output}"
    );
    assert!(
        output.contains("the first one's late write (token ")
            && output.contains(
                "was refused (Error::Stale; SQLite's fenced UPDATE: 0 rows), its release said \
                 Error::Lost"
            ),
        "the capped settler's late write was not refused, by Redis and by SQLite:\n{output}"
    );
    assert!(
        output.contains("  sql ledger: ")
            && output.contains("late UPDATEs refused by the database (0 rows)"),
        "no SQL ledger verdict:\n{output}"
    );
    assert!(
        output.contains("settlement check passed"),
        "no settlement verdict:\n{output}"
    );
}

/// The trading step's checks: 3 trader processes, the stalled trader's late write refused, and
/// every process holding the hot stock's queued lock at least once.
fn assert_traded(output: &str) {
    assert_every_process_got_the_hot_stock(output, 3);
    assert!(
        late_writes_refused(output) >= 1,
        "no late write was refused:\n{output}"
    );
    assert!(
        output.contains("processes: 3,"),
        "not 3 processes:\n{output}"
    );
}

/// Every process's `HOT: trader N: A acquisitions` line is there, with A at least 1: all of them
/// queue for the hot stock's lock, and the queue serves each in turn (a count, not a timing).
fn assert_every_process_got_the_hot_stock(output: &str, processes: usize) {
    for process in 0..processes {
        let label = format!("  HOT: trader {process}: ");
        let line = output
            .lines()
            .find(|line| line.starts_with(&label))
            .unwrap_or_else(|| panic!("no hot-stock line for trader {process}:\n{output}"));
        let acquisitions: u64 = line[label.len()..]
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count of acquisitions in {line:?}"));
        assert!(
            acquisitions >= 1,
            "trader {process} never held the hot stock's lock:\n{output}"
        );
    }
    assert!(
        output.contains("  HOT: 600 units, 600 sold, 0 left in the book, 0 sold twice"),
        "the hot stock was not sold out exactly once:\n{output}"
    );
}

#[test]
fn across_processes_every_unit_is_sold_exactly_once_and_the_stalled_write_is_refused() {
    let server = RedisProcess::start();
    let output = run_exchange(&["--redis", &server.url(), "--processes", "3"]);
    assert_traded(&output);
    assert_settled(&output);
}

#[test]
fn on_a_quorum_of_three_a_lock_server_killed_mid_trading_loses_no_unit_and_admits_no_late_write() {
    let output = run_exchange(&["--redis", "--quorum", "3", "--processes", "3"]);
    assert_traded(&output);
    assert!(
        output.contains("-- kill -9 lock server 0 ")
            && output.contains("lock servers: 3, killed: lock server 0 "),
        "no lock server was killed:\n{output}"
    );
    assert!(
        output.contains("under kept RedisLock leases on a quorum of 3 lock servers"),
        "settlement not on the quorum:\n{output}"
    );
    assert_settled(&output);
}
