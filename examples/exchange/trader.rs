//! A trader process of the `--redis` mode, started by the parent as
//! `exchange --trader <lock urls> <data url> <process> <processes> <key prefix> <stall: 0|1>
//! <sql ledger file>`.
//!
//! `<lock urls>` is one URL, or several separated by commas: then the leases are taken on a
//! quorum of those servers (`LockServer::quorum`). The books and the fenced ledgers live on the
//! one server at `<data url>` (a fenced resource is data on one server, never on a quorum); with
//! a single lock server it may be the same URL, and then one handle serves both.
//!
//! Its threads sell units from the books in Redis, one batch at a time: take the stock's
//! `RedisLock` lease, *claim* the stock's `RedisFenced` ledger with the lease's token (an empty
//! fenced write), read a batch from the head of the book, then move the batch from the book to the
//! sales in one fenced write with the same token, and release. The fenced write is the only place
//! units move, so a holder whose lease ended cannot move any once a newer holder has claimed.
//!
//! Each batch is also recorded in the run's SQLite file (`sql_ledger.rs`), which every trader
//! process writes: the thread claims the stock's row there after the Redis ledger, and the sale
//! goes into both in one SQLite transaction whose fenced `UPDATE` carries the lease's token.
//!
//! Why claim before reading: a newer holder reads the book only after its claim, so an older
//! holder's write either landed before that claim (and the newer holder reads the book without
//! those units) or comes after it and is refused. Without the claim, a late write could slip in
//! between the newer holder's read and its write, and both would sell the same units.
//!
//! Process 0 also stages the stall: before the other traders start it takes AAPL's lease with a
//! short TTL and reads a batch, then (in its first thread) sleeps past the lease until a newer
//! holder has written AAPL's ledger — a holder that read the same units, still at the head of the
//! book, and sold them. Its late write, which would sell them again, must be refused: by Redis,
//! and, made to the database on its own, by the SQL ledger's fence (0 rows).
//!
//! Every process also trades the hot stock `HOT` (see `redis_books.rs`): each thread sells one
//! batch of it on every round, between its batches of the listed stocks, so that every thread of
//! every process queues for HOT's one lock. It waits in `acquire_timeout`'s queue (first come,
//! first served, handed the lock by the release) for up to `HOT_WAIT`, and the process reports
//! how many leases it took on HOT and its longest wait for one. HOT opens once every trader
//! process is at its desk — each counts itself in at `<prefix>desks` on the data server — so
//! that a process started later still finds units on it.
//!
//! On a quorum, a lock call can fail while a lock server dies (no majority answered in time, say
//! when the two servers that granted a claim are asked to store the token and one of them is
//! gone): the thread counts it, pauses, and tries again. Such a call moved no unit — only fenced
//! writes do, on the data server — so trying again is safe. On a single server a lock error
//! still ends the trader, as before.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use fencelock_redis::redis::{self, Connection};
use fencelock_redis::{Error, RedisFenced, RedisLease, RedisLock};

use crate::market::STOCKS;
use crate::redis_books::{
    book_key, connect, desks_key, open_servers, sold_key, symbol, StallReport, Tally, BATCH, BOOKS,
    FIRST_SALE, HOT_STOCK, READY, THREADS,
};
use crate::sql_ledger::{Recorded, SqlLedger};

/// Long enough that a trader that is not stalled on purpose never outlives its lease.
const LEASE: Duration = Duration::from_secs(2);
/// The stalled trader's lease: it sleeps past it.
const STALL_LEASE: Duration = Duration::from_millis(100);
/// How long a thread waits for a busy stock before trying the next one.
const ACQUIRE_WAIT: Duration = Duration::from_millis(100);
/// How long a thread waits in the hot stock's queue: far longer than the queue ever takes, since
/// every thread wants it.
const HOT_WAIT: Duration = Duration::from_secs(5);
/// How often a thread whose listed stocks are sold out looks again whether HOT has opened.
const OPENING_POLL: Duration = Duration::from_millis(2);
/// Bounds on one thread's work: batches attempted, and time.
const MAX_ATTEMPTS: usize = 20_000;
const THREAD_DEADLINE: Duration = Duration::from_secs(40);
/// The longest the stalled trader waits for someone to take over; past it, its late write goes
/// out anyway (and is admitted: the parent then fails the run).
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);
/// How often the stalled trader looks at the ledger while it waits.
const STALL_POLL: Duration = Duration::from_millis(5);
/// The pause after a quorum's lock call failed, before the thread tries again.
const UNAVAILABLE_PAUSE: Duration = Duration::from_millis(10);

/// The stock whose trader stalls.
const STALLED_STOCK: usize = 0;

/// Runs a trader process; prints its report (or `error ...`) on stdout for the parent.
pub fn main(args: &[String]) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            println!("error {}", why.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// One process's handles, shared by every thread: a lock per stock on the lock server (one server
/// or a quorum), a ledger per stock on the data server.
struct Desk {
    /// The data server: books, sales and ledgers.
    url: String,
    prefix: String,
    process: usize,
    /// Trader processes in the run: HOT opens once that many are at their desks.
    processes: u64,
    /// Whether HOT has opened (seen by one of this process's threads).
    open: AtomicBool,
    /// Whether the locks live on a quorum, whose lock calls may fail while a server dies.
    quorum: bool,
    /// A lock and a ledger per book: the listed stocks, then HOT.
    locks: Vec<RedisLock>,
    ledgers: Vec<RedisFenced>,
    /// The SQL ledger's file: each thread opens its own connection.
    sql: PathBuf,
    /// Whether this process has printed its `first-sale` line.
    first_sale: AtomicBool,
}

impl Desk {
    /// Whether a lock call's error is one to ride out: a server error on a quorum.
    fn rides_out(&self, error: &Error) -> bool {
        self.quorum && matches!(error, Error::Redis(_))
    }

    /// Prints the `first-sale` line, once per process, after `units` were sold from `stock`.
    fn sold(&self, stock: usize, units: usize) {
        if !self.first_sale.swap(true, Relaxed) {
            println!(
                "{FIRST_SALE} process={} stock={} units={units}",
                self.process,
                symbol(stock)
            );
        }
    }

    /// Whether HOT is open: every trader process has counted itself in.
    fn hot_open(&self, con: &mut Connection) -> Result<bool, String> {
        if !self.open.load(Relaxed) {
            let desks: Option<u64> = redis::cmd("GET")
                .arg(desks_key(&self.prefix))
                .query(con)
                .map_err(|e| format!("reading the desks: {e}"))?;
            if desks.unwrap_or(0) >= self.processes {
                self.open.store(true, Relaxed);
            }
        }
        Ok(self.open.load(Relaxed))
    }

    fn book(&self, stock: usize) -> String {
        book_key(&self.prefix, symbol(stock))
    }

    fn sold_list(&self, stock: usize) -> String {
        sold_key(&self.prefix, symbol(stock))
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let [lock_urls, data_url, process, processes, prefix, stall, sql] = args else {
        return Err(format!(
            "expected <lock urls> <data url> <process> <processes> <prefix> <stall> <sql ledger>, \
             got {args:?}"
        ));
    };
    let process: usize = process.parse().map_err(|_| "bad process index")?;
    let processes: u64 = processes.parse().map_err(|_| "bad number of processes")?;
    let (lock_server, data_server) = open_servers(lock_urls, data_url, prefix)?;
    let desk = Desk {
        url: data_url.clone(),
        prefix: prefix.clone(),
        process,
        processes,
        open: AtomicBool::new(false),
        quorum: lock_server.servers() > 1,
        locks: (0..BOOKS)
            .map(|stock| lock_server.lock(symbol(stock)).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?,
        ledgers: (0..BOOKS)
            .map(|stock| data_server.fenced(symbol(stock)).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?,
        sql: PathBuf::from(sql),
        first_sale: AtomicBool::new(false),
    };

    let mut staged = match stall.as_str() {
        "1" => {
            let staged = Staged::stage(&desk)?;
            println!("{READY}");
            Some(staged)
        }
        _ => None,
    };
    redis::cmd("INCR")
        .arg(desks_key(prefix))
        .query::<u64>(&mut connect(data_url)?)
        .map_err(|e| format!("counting in at the desks: {e}"))?;
    let outcomes = thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (desk, staged) = (&desk, staged.take());
                let first = (process * THREADS + thread) % STOCKS.len();
                s.spawn(move || trade(desk, first, staged))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("a trader thread panicked".into()))
            })
            .collect::<Vec<_>>()
    });

    let mut total = Tally::default();
    for outcome in outcomes {
        let (tally, stall) = outcome?;
        total.add(&tally);
        if let Some(stall) = stall {
            println!("{}", stall.line());
        }
    }
    println!("{}", total.line(process));
    Ok(())
}

/// One trader thread: finishes the staged stall if it was handed one, then sells until every
/// book is empty: a batch of the next listed stock not sold out, then (once HOT is open) a batch
/// of HOT, round after round.
fn trade(
    desk: &Desk,
    first: usize,
    staged: Option<Staged>,
) -> Result<(Tally, Option<StallReport>), String> {
    let mut con = connect(&desk.url)?;
    let mut sql = SqlLedger::open(&desk.sql)?;
    let mut tally = Tally::default();
    let stall = match staged {
        Some(staged) => Some(staged.stall(desk, &mut con, &mut sql, &mut tally)?),
        None => None,
    };
    let started = Instant::now();
    let mut empty = [false; BOOKS];
    let mut next = first;
    for _ in 0..MAX_ATTEMPTS {
        let listed = (0..STOCKS.len())
            .map(|i| (next + i) % STOCKS.len())
            .find(|&stock| !empty[stock]);
        if listed.is_none() && empty[HOT_STOCK] {
            return Ok((tally, stall));
        }
        if started.elapsed() > THREAD_DEADLINE {
            return Err(format!("still selling after {THREAD_DEADLINE:?}"));
        }
        if let Some(stock) = listed {
            next = stock + 1; // one batch per stock in turn spreads the threads over the books
            let sold = sell_batch(desk, &mut con, &mut sql, stock, ACQUIRE_WAIT, &mut tally)?;
            if sold == Batch::BookEmpty {
                empty[stock] = true;
            }
        }
        if !empty[HOT_STOCK] {
            if desk.hot_open(&mut con)? {
                let hot = sell_batch(desk, &mut con, &mut sql, HOT_STOCK, HOT_WAIT, &mut tally)?;
                empty[HOT_STOCK] = hot == Batch::BookEmpty;
            } else if listed.is_none() {
                thread::sleep(OPENING_POLL);
            }
        }
    }
    Err(format!(
        "books still not empty after {MAX_ATTEMPTS} batches"
    ))
}

#[derive(Debug, PartialEq, Eq)]
enum Batch {
    Sold,
    BookEmpty,
    /// The lock stayed held, or a newer holder claimed the ledger first: nothing moved.
    NotNow,
}

/// Sells one batch of `stock` under a lease, waiting for it up to `wait`: claim the ledgers (Redis,
/// then SQL), read, move (and record in SQL), release. On HOT, counts the lease and its wait, or
/// the wait that ran out.
fn sell_batch(
    desk: &Desk,
    con: &mut Connection,
    sql: &mut SqlLedger,
    stock: usize,
    wait: Duration,
    tally: &mut Tally,
) -> Result<Batch, String> {
    let called = Instant::now();
    let lease = match desk.locks[stock].acquire_timeout(LEASE, wait) {
        Ok(lease) => lease,
        Err(e) if desk.rides_out(&e) => {
            tally.unavailable += 1;
            thread::sleep(UNAVAILABLE_PAUSE);
            return Ok(Batch::NotNow);
        }
        Err(e) => return Err(e.to_string()),
    };
    let Some(lease) = lease else {
        tally.hot_timeouts += u64::from(stock == HOT_STOCK);
        return Ok(Batch::NotNow);
    };
    if stock == HOT_STOCK {
        tally.hot_wait(called.elapsed());
    }
    tally.saw(lease.token().get());
    let ledger = &desk.ledgers[stock];
    let batch = if !fenced_write(ledger, &lease, &redis::pipe(), tally)? {
        Batch::NotNow
    } else if !sql.claim(symbol(stock), lease.token())? {
        tally.refused += 1;
        Batch::NotNow
    } else {
        let units = read_batch(con, &desk.book(stock))?;
        if units.is_empty() {
            Batch::BookEmpty
        } else {
            let sale = sale(desk, stock, &units);
            let redis_write = || fenced_write(ledger, &lease, &sale, tally);
            match sql.record(symbol(stock), lease.token(), &units, redis_write)? {
                Recorded::Written => {
                    tally.sold += units.len() as u64;
                    tally.batches += 1;
                    desk.sold(stock, units.len());
                    Batch::Sold
                }
                Recorded::Stale => {
                    tally.refused += 1;
                    Batch::NotNow
                }
                Recorded::RefusedByRedis => Batch::NotNow, // counted by `fenced_write`
            }
        }
    };
    release(desk, lease, tally)?;
    Ok(batch)
}

/// The units at the head of a book, at most a batch.
fn read_batch(con: &mut Connection, book: &str) -> Result<Vec<u32>, String> {
    redis::cmd("LRANGE")
        .arg(book)
        .arg(0)
        .arg(BATCH - 1)
        .query(con)
        .map_err(|e| format!("reading {book}: {e}"))
}

/// The commands that move `units` from `stock`'s book to its sales. Each runs whatever the book
/// holds: `LREM` of a unit already gone does nothing, but `RPUSH` would record it sold again —
/// which is why these commands run only inside a fenced write.
fn sale(desk: &Desk, stock: usize, units: &[u32]) -> redis::Pipeline {
    let (book, sold) = (desk.book(stock), desk.sold_list(stock));
    let mut sale = redis::pipe();
    for unit in units {
        sale.cmd("LREM").arg(&book).arg(1).arg(unit);
    }
    sale.cmd("RPUSH").arg(&sold).arg(units);
    sale
}

/// A fenced write with the lease's token: `true` if admitted, `false` (counted) if refused as
/// stale.
fn fenced_write(
    ledger: &RedisFenced,
    lease: &RedisLease,
    commands: &redis::Pipeline,
    tally: &mut Tally,
) -> Result<bool, String> {
    match ledger.write(lease.token(), commands) {
        Ok(()) => Ok(true),
        Err(Error::Stale(_)) => {
            tally.refused += 1;
            Ok(false)
        }
        Err(e) => Err(format!("fenced write on {}: {e}", ledger.name())),
    }
}

/// What a release found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Released {
    /// The lease was still held.
    Held,
    /// It had ended, or been taken over (counted).
    Lost,
    /// A quorum did not answer (counted): the lease ends by its TTL.
    Unknown,
}

/// Releases a lease, and says what the release found.
fn release(desk: &Desk, lease: RedisLease, tally: &mut Tally) -> Result<Released, String> {
    let name = lease.name().to_owned();
    match lease.release() {
        Ok(()) => Ok(Released::Held),
        Err(Error::Lost(_)) => {
            tally.lost += 1;
            Ok(Released::Lost)
        }
        Err(e) if desk.rides_out(&e) => {
            tally.unavailable += 1;
            Ok(Released::Unknown)
        }
        Err(e) => Err(format!("releasing {name}: {e}")),
    }
}

/// The stalling trader's lease on AAPL and the batch it read, before anyone else trades.
struct Staged {
    lease: RedisLease,
    units: Vec<u32>,
}

impl Staged {
    /// Takes AAPL's lease with a short TTL, claims its ledgers and reads a batch.
    fn stage(desk: &Desk) -> Result<Self, String> {
        let lease = desk.locks[STALLED_STOCK]
            .acquire_timeout(STALL_LEASE, Duration::from_secs(5))
            .map_err(|e| e.to_string())?
            .ok_or("the stalled stock's lock never came free")?;
        let mut ignored = Tally::default();
        let ledger = &desk.ledgers[STALLED_STOCK];
        let claimed = fenced_write(ledger, &lease, &redis::pipe(), &mut ignored)?
            && SqlLedger::open(&desk.sql)?.claim(symbol(STALLED_STOCK), lease.token())?;
        if !claimed {
            return Err("a fresh lease's claim was refused".into());
        }
        let units = read_batch(&mut connect(&desk.url)?, &desk.book(STALLED_STOCK))?;
        if units.is_empty() {
            return Err("the stalled stock's book is empty before trading began".into());
        }
        Ok(Self { lease, units })
    }

    /// The stall itself: sleep past the lease, and on until a newer holder has claimed both
    /// ledgers; then try the late write (to Redis, then to the database on its own) and the
    /// release, and see where the batch went.
    fn stall(
        self,
        desk: &Desk,
        con: &mut Connection,
        sql: &mut SqlLedger,
        tally: &mut Tally,
    ) -> Result<StallReport, String> {
        let Self { lease, units } = self;
        let token = lease.token().get();
        tally.saw(token);
        let ledger = &desk.ledgers[STALLED_STOCK];
        let stalled = Instant::now();
        thread::sleep(STALL_LEASE);
        let highest = || ledger.highest().map(|t| t.get()).map_err(|e| e.to_string());
        let sql_fence = |sql: &SqlLedger| sql.fence(symbol(STALLED_STOCK)).map(|t| t.get());
        while (highest()? <= token || sql_fence(sql)? <= token) && stalled.elapsed() < TAKEOVER_WAIT
        {
            thread::sleep(STALL_POLL);
        }
        let stalled_ms = stalled.elapsed().as_millis() as u64;
        let highest = highest()?;

        let admitted = fenced_write(ledger, &lease, &sale(desk, STALLED_STOCK, &units), tally)?;
        if admitted {
            tally.sold += units.len() as u64;
            tally.batches += 1;
        }
        // The database's check on its own (no Redis write beside it): 0 rows, or 1 if admitted.
        let late_sql = sql.record(symbol(STALLED_STOCK), lease.token(), &units, || Ok(true))?;
        let released = release(desk, lease, tally)?;
        let sold = desk.sold_list(STALLED_STOCK);
        // The newer holder claimed the ledger before it sold (two fenced writes): its sale may
        // still be on its way. Look until every unit is sold once (or the takeover's bound).
        let resold = loop {
            let mut once = 0;
            for unit in &units {
                let places: Vec<u64> = redis::cmd("LPOS")
                    .arg(&sold)
                    .arg(unit)
                    .arg("COUNT")
                    .arg(0)
                    .query(con)
                    .map_err(|e| format!("looking for unit {unit} in {sold}: {e}"))?;
                once += usize::from(places.len() == 1);
            }
            if once == units.len() || stalled.elapsed() >= TAKEOVER_WAIT {
                break once;
            }
            thread::sleep(STALL_POLL);
        };
        Ok(StallReport {
            token,
            ttl_ms: STALL_LEASE.as_millis() as u64,
            stalled_ms,
            units: units.len(),
            highest,
            write: if admitted { "admitted" } else { "refused" }.into(),
            release: match released {
                Released::Held => "held",
                Released::Lost => "lost",
                Released::Unknown => "unknown",
            }
            .into(),
            resold,
            sql_rows: usize::from(late_sql != Recorded::Stale),
        })
    }
}
