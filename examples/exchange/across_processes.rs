//! `--redis`: the exchange across processes. The books live in Redis, and trader *processes*
//! (copies of this example started with the hidden `--trader` arguments, see `trader.rs`) sell
//! their units under `RedisLock` leases, recording each sale through a `RedisFenced` ledger. One
//! trader stalls past its lease on purpose; its late write must be refused.
//!
//! The parent starts a throwaway `redis-server` (unless given a loopback URL), seeds the books,
//! starts the traders, waits for them (bounded: past `TRADERS_TIMEOUT` they are killed and the run
//! fails), and then checks *in Redis* that every unit is in exactly one place — still in its book
//! or sold once — before printing a summary. It exits non-zero if any check fails.
//!
//! Besides the listed stocks there is one hot stock, `HOT`, which every thread of every trader
//! process trades on every round: all of them queue for its one lock in `acquire_timeout`, first
//! come, first served. The summary gives each process's leases on HOT and its longest wait for
//! one, and the same exactly-once check covers HOT's units.
//!
//! Then it settles the sales (`redis_settlement.rs`): settlement work outlives its lease's short
//! TTL, so each settler keeps its `settle:<STOCK>` lease alive (`keep_alive`) and stops writing
//! as soon as `lost()` says the lease is gone; one settler's renewals are capped short of its work,
//! another takes over, and the first one's late write is refused. Redis must then hold every sold
//! unit settled exactly once.
//!
//! Beside the Redis ledgers, the trader processes and the settlers record the same sales and
//! settlements in a SQLite file in a temporary directory of the run (`sql_ledger.rs`), each batch
//! under its lease's token, checked by the database; the parent reads it back at the end.
//!
//! `--quorum N` takes the leases on a quorum of N lock servers instead (`LockServer::quorum`),
//! while the books and ledgers live on a separate data server: a fenced resource is data on one
//! server. Without URLs the parent starts N + 1 throwaway servers, and once a trader reports its
//! first batch sold (a `first-sale` line on its stdout) it kills one lock server with `kill -9`;
//! trading goes on with the others, and the same checks must pass; settlement then keeps its
//! leases alive on the servers left.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fencelock_redis::redis::{self, Connection, ConnectionAddr};
use fencelock_redis::LockServer;

use crate::market::unit_id;
use crate::redis_books::{
    book_key, connect, sold_key, symbol, units_of, StallReport, Tally, BOOKS, FIRST_SALE, HOT,
    READY, THREADS, TRADER_FLAG,
};
use crate::redis_process::{fresh_dir_named, RedisProcess};
use crate::redis_settlement;
use crate::sql_ledger::{self, SqlLedger};

/// Trader processes when `--processes` is not given, and the most allowed.
const DEFAULT_PROCESSES: usize = 3;
const MAX_PROCESSES: usize = 16;
/// The largest quorum of lock servers `--quorum` accepts.
const MAX_QUORUM: usize = 7;
/// The lock server the parent kills in the quorum mode (when it started the servers itself).
const KILLED: usize = 0;
/// The longest the traders may take, all together; then they are killed and the run fails.
const TRADERS_TIMEOUT: Duration = Duration::from_secs(60);
/// Bounds the cleanup of a run's keys (`SCAN` pages of up to 1,000 keys).
const MAX_SCAN_PAGES: usize = 10_000;

const USAGE: &str = "\
usage: exchange --redis [redis://127.0.0.1:PORT] [--processes N]
       exchange --redis [URL,URL,URL] --quorum 3 [--data URL] [--processes N]
  --redis [URL]   without a URL, start a throwaway redis-server on 127.0.0.1 (needs redis-server
                  on PATH); with one, use that server (loopback only: 127.0.0.1, ::1, localhost)
  --quorum N      take the leases on a quorum of N lock servers (N odd, 3 to 7); the books and
                  ledgers live on a separate data server. Without URLs: start N throwaway lock
                  servers and a throwaway data server, and kill -9 one lock server as soon as a
                  trader reports its first batch sold. With N comma-separated URLs after --redis:
                  use those lock servers (none is killed)
  --data URL      with URLs: the data server (default: the first URL after --redis)
  --processes N   trader processes, 1 to 16 (default 3)";

/// Runs the `--redis` mode with the command line's arguments.
pub fn main(args: &[String]) -> ExitCode {
    let options = match Options::parse(args) {
        Ok(options) => options,
        Err(why) => {
            eprintln!("{why}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if options.urls.is_empty() && !on_path("redis-server") {
        eprintln!(
            "redis-server is not on PATH: `--redis` without a URL starts throwaway servers. \
             Install it (`apt-get install -y redis-server` on Debian/Ubuntu, `brew install \
             redis` on macOS), or pass the URL of a server on this machine: --redis \
             redis://127.0.0.1:PORT"
        );
        return ExitCode::from(2);
    }
    let mut servers = Servers::new(&options);
    for url in servers.lock_urls.iter().chain([&servers.data_url]) {
        if let Err(why) = check_loopback(url) {
            eprintln!("{why}");
            return ExitCode::from(2);
        }
    }
    // The parent builds the lock server handle once, so that a bad list (an even number of
    // servers, one named twice) is refused here rather than in every trader.
    let lock_server = match servers.lock_urls.as_slice() {
        [url] => LockServer::open(url),
        urls => LockServer::quorum(&urls.iter().map(String::as_str).collect::<Vec<_>>()),
    };
    let lock_servers = match lock_server {
        Ok(lock_server) => lock_server.servers(),
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    if lock_servers == 1 && servers.lock_urls == [servers.data_url.clone()] {
        let (url, whose) = (&servers.data_url, servers.whose);
        println!(
            "== across processes: books in Redis at {url} ({whose}), RedisLock leases, \
             RedisFenced ledgers"
        );
    } else {
        let ports: Vec<&str> = servers.lock_urls.iter().map(|url| short(url)).collect();
        println!(
            "== across processes: RedisLock leases on {lock_servers} lock server(s) at {} ({}), \
             books and RedisFenced ledgers on a data server at {} ({})",
            ports.join(", "),
            servers.whose,
            servers.data_url,
            if servers.lock_processes.is_empty() {
                "given"
            } else {
                "a throwaway redis-server"
            }
        );
        let killing = if servers.lock_processes.is_empty() {
            "none of them will be killed (the example kills only servers it started)".to_owned()
        } else {
            format!(
                "lock server {KILLED} ({}) will be killed with kill -9 once a trader reports its \
                 first batch sold",
                short(&servers.lock_urls[KILLED])
            )
        };
        println!(
            "   lock servers: {lock_servers}, a lease needs {} of them; {killing}",
            lock_servers / 2 + 1
        );
    }
    match run(&mut servers, options.processes) {
        Ok(summary) => {
            println!("{summary}");
            println!(
                "exactly-once check passed: every unit in exactly one place (book or sold), \
                 none missing, none sold twice"
            );
            println!(
                "settlement check passed: every sold unit of the listed stocks (HOT is only traded) \
                 settled exactly once under kept leases \
                 that outlived their TTL, proceeds matching; the lost lease's late write refused"
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
    /// The lock servers' URLs given after `--redis` (none: start throwaway servers).
    urls: Vec<String>,
    /// `--quorum N`: the number of lock servers, when given.
    quorum: Option<usize>,
    /// `--data URL`: the data server, when given.
    data: Option<String>,
    processes: usize,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Options {
            urls: Vec::new(),
            quorum: None,
            data: None,
            processes: DEFAULT_PROCESSES,
        };
        let mut redis = false;
        let mut args = args.iter().peekable();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--redis" => {
                    redis = true;
                    if let Some(urls) = args.next_if(|next| !next.starts_with("--")) {
                        options.urls = urls.split(',').map(str::to_owned).collect();
                    }
                }
                "--quorum" => {
                    let n = args.next().and_then(|n| n.parse().ok());
                    options.quorum = Some(
                        n.filter(|n| n % 2 == 1 && (3..=MAX_QUORUM).contains(n))
                            .ok_or(format!(
                                "--quorum takes an odd number from 3 to {MAX_QUORUM} (without \
                                 it, the leases live on one server)"
                            ))?,
                    );
                }
                "--data" => {
                    let url = args.next_if(|next| !next.starts_with("--"));
                    options.data = Some(url.ok_or("--data takes a URL")?.clone());
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
        if !redis {
            return Err("--quorum and --data go with --redis".into());
        }
        if options.urls.is_empty() && options.data.is_some() {
            return Err("--data goes with the lock servers' URLs after --redis".into());
        }
        if let Some(n) = options.quorum {
            if !options.urls.is_empty() && options.urls.len() != n {
                return Err(format!(
                    "--quorum {n} needs {n} comma-separated URLs after --redis, not {}",
                    options.urls.len()
                ));
            }
        }
        Ok(options)
    }
}

/// The servers of a run: where the leases live, where the data lives, and the throwaway servers
/// this process started (stopped when dropped).
struct Servers {
    /// One URL, or the quorum's.
    lock_urls: Vec<String>,
    /// The books and ledgers; with one lock server and no `--data`, the same server.
    data_url: String,
    /// The lock servers started here (empty when given URLs, or in the single-server mode,
    /// whose one server is `data_process`).
    lock_processes: Vec<RedisProcess>,
    /// The data server started here, if any.
    _data_process: Option<RedisProcess>,
    whose: &'static str,
}

impl Servers {
    /// The given servers, or throwaway ones started now.
    fn new(options: &Options) -> Self {
        if let Some(first) = options.urls.first() {
            return Self {
                lock_urls: options.urls.clone(),
                data_url: options.data.clone().unwrap_or_else(|| first.clone()),
                lock_processes: Vec::new(),
                _data_process: None,
                whose: "given",
            };
        }
        let data = RedisProcess::start();
        let data_url = data.url();
        match options.quorum {
            None => Self {
                lock_urls: vec![data_url.clone()],
                data_url,
                lock_processes: Vec::new(),
                _data_process: Some(data),
                whose: "a throwaway redis-server",
            },
            Some(n) => {
                let lock_processes: Vec<RedisProcess> =
                    (0..n).map(|_| RedisProcess::start()).collect();
                Self {
                    lock_urls: lock_processes.iter().map(RedisProcess::url).collect(),
                    data_url,
                    lock_processes,
                    _data_process: Some(data),
                    whose: "throwaway redis-servers",
                }
            }
        }
    }

    /// Whether this run kills a lock server: it started a quorum itself.
    fn kills(&self) -> bool {
        !self.lock_processes.is_empty()
    }
}

/// The `host:port` part of a Redis URL, for the shorter lines.
fn short(url: &str) -> &str {
    url.strip_prefix("redis://").unwrap_or(url)
}

/// The lock server killed during the run, and when.
struct Kill {
    server: usize,
    address: String,
    /// The trader whose first sale set it off.
    after: usize,
    /// Units sold (in the data server's sold lists) when it was killed, if they could be read.
    sold_then: Option<u64>,
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

/// Seeds the books, runs the traders (killing a lock server on the way if this run started a
/// quorum), settles the sales (if every trader finished), checks Redis; the summary, or every
/// check that failed.
fn run(servers: &mut Servers, processes: usize) -> Result<String, Vec<String>> {
    let prefix = run_prefix();
    let mut con = connect(&servers.data_url).map_err(|e| vec![e])?;
    seed(&mut con, &prefix).map_err(|e| vec![format!("seeding the books: {e}")])?;
    let sql_dir = TempDir(fresh_dir_named("fencelock-exchange"));
    let sql = sql_dir.0.join(sql_ledger::FILE);
    SqlLedger::create(&sql).map_err(|e| vec![e])?;

    let lock_urls = servers.lock_urls.join(",");
    let data_url = servers.data_url.clone();
    let mut kill = None;
    let mut on_first_sale = |process: usize| {
        if !servers.kills() || kill.is_some() {
            return;
        }
        let sold_then = sold_so_far(&mut con, &prefix).ok();
        let address = short(&servers.lock_urls[KILLED]).to_owned();
        servers.lock_processes[KILLED].kill9();
        let sold = sold_then.map_or("?".to_owned(), |n| n.to_string());
        let left = servers.lock_urls.len() - 1;
        println!(
            "-- kill -9 lock server {KILLED} ({address}): trader {process} reported its first \
             batch sold, {sold} of {} units sold so far; trading goes on with the other {left}",
            (0..BOOKS).map(units_of).sum::<u32>()
        );
        kill = Some(Kill {
            server: KILLED,
            address,
            after: process,
            sold_then,
        });
    };
    let started = Instant::now();
    let traders = run_traders(
        &lock_urls,
        &data_url,
        &prefix,
        &sql,
        processes,
        &mut on_first_sale,
    );
    let elapsed = started.elapsed();
    // Settlement follows trading, on the same servers (in the quorum mode, the lock servers left
    // after the kill), before the run's keys are deleted.
    let settlement = traders
        .is_ok()
        .then(|| redis_settlement::run(&lock_urls, &data_url, &prefix, &sql));
    let stalled_sql = (traders.as_ref().ok())
        .and_then(|(_, stall)| stall.as_ref())
        .map(|stall| stall.sql_rows);
    let sql_checked = settlement.as_ref().map(|(_, _, capped_sql)| {
        let late = [
            ("the stalled trader's", stalled_sql),
            ("the capped settler's", *capped_sql),
        ];
        sql_ledger::check(&sql, &mut con, &prefix, processes, &late)
    });
    let checked = check(&mut con, &prefix);
    let mut cleaned = clean_up(&mut con, &prefix);
    for (server, url) in servers.lock_urls.iter().enumerate() {
        // The library's lock and token keys live on the lock servers (the killed one is gone).
        let killed = kill.as_ref().is_some_and(|kill| kill.server == server);
        if *url != data_url && !killed && cleaned.is_ok() {
            cleaned = connect(url)
                .map_err(|e| redis::RedisError::from((redis::ErrorKind::Io, "connect", e)))
                .and_then(|mut con| clean_up(&mut con, &prefix));
        }
    }

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
    summary.push_str(&hot_lines(&tallies));
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
    if servers.lock_urls.len() > 1 || servers.lock_urls != [data_url.clone()] {
        let n = servers.lock_urls.len();
        let killed = match &kill {
            Some(Kill {
                server,
                address,
                after,
                sold_then,
            }) => {
                let sold = sold_then.map_or("?".to_owned(), |n| n.to_string());
                if *sold_then == Some(found.sold) {
                    problems.push(format!(
                        "lock server {server} was killed only after trading ended ({sold} units \
                         sold)"
                    ));
                }
                format!(
                    "killed: lock server {server} ({address}) with kill -9, after trader \
                     {after}'s first batch, at {sold} units sold, {} sold after it",
                    sold_then.map_or("?".to_owned(), |n| found.sold.saturating_sub(n).to_string())
                )
            }
            None if servers.kills() => {
                problems.push("no trader reported a sale: no lock server was killed".into());
                "killed: none".to_owned()
            }
            None => "killed: none (servers given)".to_owned(),
        };
        summary.push_str(&format!(
            "  lock servers: {n}, {killed}; failed lock calls ridden out: {}; data server: {}\n",
            all.unavailable,
            short(&data_url)
        ));
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
    if let Some((settled, settlement_problems, _)) = settlement {
        summary.push('\n');
        summary.push_str(&settled);
        problems.extend(settlement_problems);
    }
    match sql_checked {
        Some(Ok(line)) => {
            summary.push('\n');
            summary.push_str(&line);
        }
        Some(Err(found)) => problems.extend(found.into_iter().map(|p| format!("sql ledger: {p}"))),
        None => {}
    }
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
    for (stock, symbol) in (0..BOOKS).map(|stock| (stock, symbol(stock))) {
        let units: Vec<u32> = (0..units_of(stock)).map(|n| unit_id(stock, n)).collect();
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

/// The run's temporary directory (the SQL ledger's), removed with its files when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
/// reports, and calls `on_first_sale` with the trader's index on each `first-sale` line (in the
/// order the lines arrive). Bounded by `TRADERS_TIMEOUT` in all.
fn run_traders(
    lock_urls: &str,
    data_url: &str,
    prefix: &str,
    sql: &Path,
    processes: usize,
    on_first_sale: &mut dyn FnMut(usize),
) -> Result<Reports, Vec<String>> {
    let deadline = Instant::now() + TRADERS_TIMEOUT;
    let exe = std::env::current_exe().map_err(|e| vec![format!("no path to this program: {e}")])?;
    let (events, received) = mpsc::channel();
    let spawn = |process: usize| -> Result<Child, String> {
        let stall = if process == 0 { "1" } else { "0" };
        let mut child = Command::new(&exe)
            .args([
                TRADER_FLAG,
                lock_urls,
                data_url,
                &process.to_string(),
                &processes.to_string(),
                prefix,
                stall,
            ])
            .arg(sql)
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
            Ok(Event::Line(process, line)) => {
                if line.split_whitespace().next() == Some(FIRST_SALE) {
                    on_first_sale(process);
                }
                lines[process].push(line);
            }
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
                Some(FIRST_SALE) => Ok(()),
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
    for (stock, symbol) in (0..BOOKS).map(|stock| (stock, symbol(stock))) {
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
        let units = units_of(stock);
        let expected: Vec<u32> = (0..units).map(|n| unit_id(stock, n)).collect();
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
            "  {symbol}: {units} units, {:>3} sold, {} left in the book, {twice} sold twice\n",
            sold.len(),
            book.len()
        ));
        found.units += expected.len();
        found.sold += sold.len() as u64;
    }
    Ok((summary, found))
}

/// Units in every stock's sold list, now.
fn sold_so_far(con: &mut Connection, prefix: &str) -> redis::RedisResult<u64> {
    let mut count = redis::pipe();
    for stock in 0..BOOKS {
        count.llen(sold_key(prefix, symbol(stock)));
    }
    let counts: Vec<u64> = count.query(con)?;
    Ok(counts.iter().sum())
}

/// The hot stock's lines: each process's leases on it and its longest wait for one, then the
/// fewest and most leases against the mean.
fn hot_lines(tallies: &[Tally]) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    let mut lines = String::new();
    for (process, tally) in tallies.iter().enumerate() {
        lines.push_str(&format!(
            "  {HOT}: trader {process}: {} acquisitions, longest wait {:.1} ms, {} wait(s) ran out\n",
            tally.hot_acquired,
            ms(tally.hot_wait_max_us),
            tally.hot_timeouts
        ));
    }
    let counts = tallies.iter().map(|tally| tally.hot_acquired);
    let (fewest, most) = (counts.clone().min(), counts.clone().max());
    let total: u64 = counts.sum();
    let mean = total as f64 / tallies.len().max(1) as f64;
    let longest = tallies.iter().map(|t| t.hot_wait_max_us).max();
    if let (Some(fewest), Some(most), Some(longest)) = (fewest, most, longest) {
        let share = |n: u64| if mean > 0.0 { n as f64 / mean } else { 0.0 };
        lines.push_str(&format!(
            "  {HOT}: {total} acquisitions by {} processes, fewest {fewest} ({:.2}x the mean of \
             {mean:.1}), most {most} ({:.2}x), longest wait of all {:.1} ms (queued \
             acquire_timeout, first come first served)\n",
            tallies.len(),
            share(fewest),
            share(most),
            ms(longest)
        ));
    }
    lines
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
    if stall.sql_rows != 0 {
        return Err(format!(
            "AAPL: the stalled trader's late SQL UPDATE (token {token}) changed {} row(s)",
            stall.sql_rows
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
         the late write was refused (Error::Stale; SQLite's fenced UPDATE: 0 rows), the release \
         said Error::Lost\n"
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
