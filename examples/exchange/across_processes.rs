//! `--redis`: the exchange across processes. The books live in Redis, and trader *processes*
//! (copies of this example started with the hidden `--trader` arguments, see `trader.rs`) sell
//! their units under `RedisLock` leases, recording each sale through a `RedisFenced` ledger. One
//! trader stalls past its lease on purpose; its late write must be refused.
//!
//! The parent starts a throwaway `redis-server` (unless given a loopback URL), seeds the books,
//! starts the traders, waits for them (bounded: past `TRADERS_TIMEOUT` they are killed and the run
//! fails), and then checks *in Redis* that every unit is in exactly one place — still in its book
//! or sold once — before printing a summary. It exits non-zero if any check fails.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fencelock_redis::redis::{self, Connection, ConnectionAddr};

use crate::market::{unit_id, STOCKS};
use crate::redis_books::{
    book_key, connect, sold_key, StallReport, Tally, READY, THREADS, TRADER_FLAG, UNITS_PER_STOCK,
};
use crate::redis_process::RedisProcess;

/// Trader processes when `--processes` is not given, and the most allowed.
const DEFAULT_PROCESSES: usize = 3;
const MAX_PROCESSES: usize = 16;
/// The longest the traders may take, all together; then they are killed and the run fails.
const TRADERS_TIMEOUT: Duration = Duration::from_secs(60);
/// Bounds the cleanup of a run's keys (`SCAN` pages of up to 1,000 keys).
const MAX_SCAN_PAGES: usize = 10_000;

const USAGE: &str = "usage: exchange --redis [redis://127.0.0.1:PORT] [--processes N]";

/// Runs the `--redis` mode with the command line's arguments.
pub fn main(args: &[String]) -> ExitCode {
    let options = match Options::parse(args) {
        Ok(options) => options,
        Err(why) => {
            eprintln!("{why}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (_server, url, whose) = match options.url {
        Some(url) => (None, url, "given"),
        None => {
            if !on_path("redis-server") {
                eprintln!(
                    "redis-server is not on PATH: `--redis` without a URL starts a throwaway \
                     one. Install it (`apt-get install -y redis-server` on Debian/Ubuntu, \
                     `brew install redis` on macOS), or pass the URL of a server on this \
                     machine: --redis redis://127.0.0.1:PORT"
                );
                return ExitCode::from(2);
            }
            let server = RedisProcess::start();
            let url = server.url();
            (Some(server), url, "a throwaway redis-server")
        }
    };
    if let Err(why) = check_loopback(&url) {
        eprintln!("{why}");
        return ExitCode::from(2);
    }

    println!(
        "== across processes: books in Redis at {url} ({whose}), RedisLock leases, \
         RedisFenced ledgers"
    );
    match run(&url, options.processes) {
        Ok(summary) => {
            println!("{summary}");
            println!(
                "exactly-once check passed: every unit in exactly one place (book or sold), \
                 none missing, none sold twice"
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for problem in problems {
                println!("FAILED: {problem}");
            }
            ExitCode::FAILURE
        }
    }
}

struct Options {
    url: Option<String>,
    processes: usize,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Options {
            url: None,
            processes: DEFAULT_PROCESSES,
        };
        let mut args = args.iter().peekable();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--redis" => {
                    options.url = args.next_if(|next| !next.starts_with("--")).cloned();
                }
                "--processes" => {
                    let n = args.next().and_then(|n| n.parse().ok());
                    options.processes =
                        n.filter(|n| (1..=MAX_PROCESSES).contains(n))
                            .ok_or(format!(
                                "--processes takes a number from 1 to {MAX_PROCESSES}"
                            ))?;
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(options)
    }
}

/// Whether an executable named `program` is in one of PATH's directories.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| is_file(&dir.join(program))))
}

fn is_file(path: &Path) -> bool {
    path.metadata().is_ok_and(|m| m.is_file())
}

/// This example writes and deletes keys: it only talks to a server on this machine.
fn check_loopback(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| format!("bad Redis URL {url:?}: {e}"))?;
    let local = match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(host, _) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        ConnectionAddr::Unix(_) => true,
        _ => false,
    };
    if local {
        Ok(())
    } else {
        Err(format!(
            "{url}: the exchange writes test keys, so it only runs against a server on this \
             machine (127.0.0.1, ::1, localhost or a unix socket)"
        ))
    }
}

/// Seeds the books, runs the traders, checks Redis; the summary, or every check that failed.
fn run(url: &str, processes: usize) -> Result<String, Vec<String>> {
    let prefix = run_prefix();
    let mut con = connect(url).map_err(|e| vec![e])?;
    seed(&mut con, &prefix).map_err(|e| vec![format!("seeding the books: {e}")])?;

    let started = Instant::now();
    let traders = run_traders(url, &prefix, processes);
    let elapsed = started.elapsed();
    let checked = check(&mut con, &prefix);
    let cleaned = clean_up(&mut con, &prefix);

    let (mut summary, found) =
        checked.map_err(|e| vec![format!("reading the books back from Redis: {e}")])?;
    let mut problems = found.problems;
    let (tallies, stall) = match traders {
        Ok(reports) => reports,
        Err(failures) => {
            problems.extend(failures);
            return Err(problems);
        }
    };
    let mut all = Tally::default();
    for (process, tally) in tallies.iter().enumerate() {
        summary.push_str(&format!("  trader {process}: {THREADS} threads, {tally}\n"));
        all.add(tally);
    }
    if all.sold != found.sold {
        problems.push(format!(
            "the traders report {} units sold, Redis holds {} sales",
            all.sold, found.sold
        ));
    }
    match stall_line(stall.as_ref()) {
        Ok(line) => summary.push_str(&line),
        Err(problem) => problems.push(problem),
    }
    if let Err(e) = cleaned {
        summary.push_str(&format!("  (could not delete the run's keys: {e})\n"));
    }
    summary.push_str(&format!(
        "  processes: {processes}, threads: {}, units: {}, sold: {}, late writes refused: {}, \
         leases lost: {}, elapsed: {elapsed:.2?}, tokens: {}..={}",
        processes * THREADS,
        found.units,
        found.sold,
        all.refused,
        all.lost,
        all.token_min,
        all.token_max
    ));
    if problems.is_empty() {
        Ok(summary)
    } else {
        println!("{summary}");
        Err(problems)
    }
}

/// A prefix no other run shares: this process's id and the time.
fn run_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("exchange:{}-{nanos}:", std::process::id())
}

/// Every stock's book holds all its units; nothing is sold.
fn seed(con: &mut Connection, prefix: &str) -> redis::RedisResult<()> {
    let mut seed = redis::pipe();
    seed.atomic();
    for (stock, symbol) in STOCKS.iter().enumerate() {
        let units: Vec<u32> = (0..UNITS_PER_STOCK).map(|n| unit_id(stock, n)).collect();
        let (book, sold) = (book_key(prefix, symbol), sold_key(prefix, symbol));
        seed.del(&book).ignore().del(&sold).ignore();
        seed.rpush(&book, units).ignore();
    }
    seed.query(con)
}

/// What the traders printed: each process's tally (in process order), and the stall.
type Reports = (Vec<Tally>, Option<StallReport>);

/// A line from a trader's stdout, or the end of it.
enum Event {
    Line(usize, String),
    Closed(usize),
}

/// The trader processes, killed (and reaped) when dropped unless they have exited.
struct Traders(Vec<Child>);

impl Drop for Traders {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // Harmless for a process already reaped by `wait`: nothing is signalled then.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the stalling trader, and the others once it has staged its stall; collects their
/// reports. Bounded by `TRADERS_TIMEOUT` in all.
fn run_traders(url: &str, prefix: &str, processes: usize) -> Result<Reports, Vec<String>> {
    let deadline = Instant::now() + TRADERS_TIMEOUT;
    let exe = std::env::current_exe().map_err(|e| vec![format!("no path to this program: {e}")])?;
    let (events, received) = mpsc::channel();
    let spawn = |process: usize| -> Result<Child, String> {
        let stall = if process == 0 { "1" } else { "0" };
        let mut child = Command::new(&exe)
            .args([TRADER_FLAG, url, &process.to_string(), prefix, stall])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting trader {process}: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let events = events.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if events.send(Event::Line(process, line)).is_err() {
                    return;
                }
            }
            let _ = events.send(Event::Closed(process));
        });
        Ok(child)
    };

    let mut traders = Traders(vec![spawn(0).map_err(|e| vec![e])?]);
    let mut lines: Vec<Vec<String>> = vec![Vec::new(); processes];
    let (mut ready, mut closed) = (false, 0);
    while !ready || closed < traders.0.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(Event::Line(0, line)) if !ready && line == READY => {
                ready = true;
                for process in 1..processes {
                    traders.0.push(spawn(process).map_err(|e| vec![e])?);
                }
            }
            Ok(Event::Line(process, line)) => lines[process].push(line),
            Ok(Event::Closed(0)) if !ready => {
                return Err(vec![format!(
                    "trader 0 ended before staging its stall: {}",
                    lines[0].join(" | ")
                )]);
            }
            Ok(Event::Closed(_)) => closed += 1,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                return Err(vec![format!(
                    "the traders did not finish within {TRADERS_TIMEOUT:?}: killed them"
                )]);
            }
        }
    }

    let mut problems = Vec::new();
    for (process, child) in traders.0.iter_mut().enumerate() {
        match child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => problems.push(format!("trader {process} exited with {status}")),
            Err(e) => problems.push(format!("trader {process}: {e}")),
        }
    }
    let mut tallies = vec![None; processes];
    let mut stall = None;
    for (process, lines) in lines.iter().enumerate() {
        for line in lines {
            let parsed = match line.split_whitespace().next() {
                Some("report") => Tally::parse(line).map(|(p, tally)| tallies[p] = Some(tally)),
                Some("stall") => StallReport::parse(line).map(|s| stall = Some(s)),
                Some("error") => Err(format!("trader {process}: {line}")),
                _ => Err(format!("trader {process} printed {line:?}")),
            };
            if let Err(problem) = parsed {
                problems.push(problem);
            }
        }
    }
    let tallies: Vec<Tally> = tallies
        .into_iter()
        .enumerate()
        .filter_map(|(process, tally)| {
            if tally.is_none() {
                problems.push(format!("trader {process} sent no report"));
            }
            tally
        })
        .collect();
    if problems.is_empty() {
        Ok((tallies, stall))
    } else {
        Err(problems)
    }
}

/// What Redis holds at the end, over all stocks.
struct Found {
    units: usize,
    sold: u64,
    /// Every way a stock's units are not each in exactly one place.
    problems: Vec<String>,
}

/// Reads every book and every stock's sales back from Redis: each unit must be in exactly one of
/// them, and no book may keep a unit (the traders stop only when every book is empty).
fn check(con: &mut Connection, prefix: &str) -> redis::RedisResult<(String, Found)> {
    let mut summary = String::new();
    let mut found = Found {
        units: 0,
        sold: 0,
        problems: Vec::new(),
    };
    for (stock, symbol) in STOCKS.iter().enumerate() {
        let book: Vec<u32> = redis::cmd("LRANGE")
            .arg(book_key(prefix, symbol))
            .arg(0)
            .arg(-1)
            .query(con)?;
        let sold: Vec<u32> = redis::cmd("LRANGE")
            .arg(sold_key(prefix, symbol))
            .arg(0)
            .arg(-1)
            .query(con)?;
        let mut seen: Vec<u32> = book.iter().chain(&sold).copied().collect();
        seen.sort_unstable();
        let places = seen.len();
        seen.dedup();
        let twice = places - seen.len();
        let expected: Vec<u32> = (0..UNITS_PER_STOCK).map(|n| unit_id(stock, n)).collect();
        let missing = expected
            .iter()
            .filter(|u| seen.binary_search(u).is_err())
            .count();
        let foreign = seen.len() + missing - expected.len();
        if twice + missing + foreign != 0 {
            found.problems.push(format!(
                "{symbol}: {twice} unit record(s) twice, {missing} unit(s) missing, \
                 {foreign} foreign unit(s)"
            ));
        }
        if !book.is_empty() {
            found
                .problems
                .push(format!("{symbol}: {} unit(s) never sold", book.len()));
        }
        summary.push_str(&format!(
            "  {symbol}: {UNITS_PER_STOCK} units, {:>3} sold, {} left in the book, {twice} sold twice\n",
            sold.len(),
            book.len()
        ));
        found.units += expected.len();
        found.sold += sold.len() as u64;
    }
    Ok((summary, found))
}

/// The summary line of the stall, or why it does not show what it should.
fn stall_line(stall: Option<&StallReport>) -> Result<String, String> {
    let Some(stall) = stall else {
        return Err("trader 0 sent no stall report".into());
    };
    let StallReport {
        token,
        ttl_ms,
        stalled_ms,
        units,
        highest,
        ..
    } = stall;
    if stall.write != "refused" {
        return Err(format!(
            "AAPL: the stalled trader's late write (token {token}, ledger at {highest}) was {}",
            stall.write
        ));
    }
    if stall.release != "lost" {
        return Err("AAPL: the stalled trader's release found its lease still held".into());
    }
    if stall.resold != *units {
        return Err(format!(
            "AAPL: only {} of the stalled trader's {units} units were sold exactly once",
            stall.resold
        ));
    }
    Ok(format!(
        "  AAPL: trader 0 stalled {stalled_ms} ms holding a {ttl_ms} ms lease (token {token}) and \
         {units} units; a newer lease took over and sold those units (ledger at token {highest}); \
         the late write was refused (Error::Stale), the release said Error::Lost\n"
    ))
}

/// Deletes every key of the run (books, sales, and the library's lock, token and fence keys).
fn clean_up(con: &mut Connection, prefix: &str) -> redis::RedisResult<()> {
    let mut cursor = 0_u64;
    for _ in 0..MAX_SCAN_PAGES {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query(con)?;
        if !keys.is_empty() {
            redis::cmd("DEL").arg(&keys).query::<()>(con)?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(())
}
