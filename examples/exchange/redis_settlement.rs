//! The `--redis` mode's settlement step, after trading: work that outlives its lease's TTL, done
//! under a *kept* lease.
//!
//! Settling a stock means going through its sold list in order and, batch by batch, recording
//! each unit in the stock's settlement ledger and adding its price to the stock's proceeds. Each
//! batch takes a while (confirming the buyers' payments, say: a sleep here, this is the example),
//! so a stock's settlement takes several times its lease's TTL. The TTL is short on purpose — a
//! settler that dies holds its stock up for a moment only — so the settler keeps the lease alive:
//! `RedisLease::keep_alive` renews it in the background, and before each batch's write the
//! settler asks `KeptLease::lost()` (no I/O), stopping the moment a renewal failed or came late.
//! Every write is a `RedisFenced` write with the kept lease's token, after a claim as in trading
//! (see `trader.rs`): a settler that learns of its loss too late is refused anyway.
//!
//! AAPL's settlement shows the failure side. Its first settler keeps its lease with a `max_hold`
//! shorter than its work — the cap that stops a stuck worker from holding a resource forever — so
//! renewals stop halfway: `lost()` says `Expired`, and the settler stops writing, a prepared batch
//! in hand. A second settler, waiting for AAPL's lock all along, takes it with a newer token,
//! claims the ledger and settles the rest. Once it has claimed (it says so on a channel: no timer
//! decides the order), the first settler writes its batch anyway, on purpose: the write must be
//! refused with `Error::Stale`, and its release must say `Error::Lost`.
//!
//! Then the parent reads every stock's settlement back from Redis: the ledger must hold each sold
//! unit exactly once and nothing else, and the proceeds must be the sum of those units' prices.
//!
//! Beside the Redis ledger, each settler records the same batches in the run's SQLite file
//! (`sql_ledger.rs`): it claims its stock's `settle:<STOCK>` row after the Redis ledger, and each
//! batch goes into both in one SQLite transaction whose fenced `UPDATE` carries the kept lease's
//! token. The capped settler's late write is made to the database as well, on its own, and must
//! change 0 rows; `across_processes.rs` reads the file back.
//!
//! The settlement's lock and fenced ledger are both named `settle:<STOCK>`, and its data keys
//! carry that name's hash tag (`<prefix>settled:{settle:AAPL}`, `<prefix>proceeds:{settle:AAPL}`),
//! so a settlement's fenced write stays on one slot of a Redis Cluster; the sold lists are only
//! read. In the quorum mode the leases live on the lock servers left after the kill, the ledgers
//! on the data server.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use fencelock::LeaseLost;
use fencelock_redis::redis::{self, Connection};
use fencelock_redis::{Error, KeepAlive, KeptLease, RedisFenced, RedisLock};

use crate::market::{price_cents, STOCKS};
use crate::redis_books::{connect, open_servers, sold_key};
use crate::sql_ledger::{self, Recorded, SqlLedger};

/// The settlement lease's TTL: short, so that a settler that dies blocks its stock's settlement
/// for a moment only.
const SETTLE_TTL: Duration = Duration::from_millis(600);
/// How often a kept lease is renewed: a renewal may come up to three intervals late before the
/// lease is lost, a margin a loaded machine's scheduler stays well within.
const RENEW_EVERY: Duration = Duration::from_millis(150);
/// Units settled by one fenced write.
const SETTLE_BATCH: usize = 20;
/// The work of settling one batch, simulated: a stock's 300 sold units take 15 batches, 1.8 s,
/// three TTLs — and the settler that takes over from the capped one still works past one TTL.
const BATCH_WORK: Duration = Duration::from_millis(120);
/// The cap on every kept lease's renewals: a settler stuck for good cannot hold a stock's
/// settlement forever.
const MAX_HOLD: Duration = Duration::from_secs(20);
/// The capped settler's cap: well short of its work, so its renewals stop halfway.
const CAPPED_HOLD: Duration = Duration::from_millis(200);
/// The stock whose first settler is capped.
const CAPPED_STOCK: usize = 0;
/// The longest a first settler waits for its stock's settlement lock.
const ACQUIRE_WAIT: Duration = Duration::from_secs(5);
/// The longest the second settler waits for the capped one's lease to end, and the capped one
/// for the second one's claim; past it, its late write goes out anyway (and, admitted, fails the
/// run).
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// Runs the settlement step on the run's servers and the SQL ledger at `sql`, once trading is
/// over: its lines (a `==` header first), every check that failed, and the rows the capped
/// settler's late SQL `UPDATE` changed (`None` if it made none).
pub fn run(
    lock_urls: &str,
    data_url: &str,
    prefix: &str,
    sql: &Path,
) -> (String, Vec<String>, Option<usize>) {
    let on_quorum = match lock_urls.split(',').count() {
        1 => String::new(),
        n => format!(" on a quorum of {n} lock servers"),
    };
    let mut summary = format!(
        "== settlement: sold units settled under kept RedisLock leases{on_quorum} ({} ms TTL, \
         renewed every {} ms by keep_alive), into RedisFenced settlement ledgers\n",
        SETTLE_TTL.as_millis(),
        RENEW_EVERY.as_millis(),
    );
    let mut problems = Vec::new();
    let settled = settle_and_check(
        lock_urls,
        data_url,
        prefix,
        sql,
        &mut summary,
        &mut problems,
    );
    let late_sql = settled.unwrap_or_else(|problem| {
        problems.push(problem);
        None
    });
    let problems = problems
        .into_iter()
        .map(|problem| format!("settlement: {problem}"))
        .collect();
    (summary.trim_end().to_owned(), problems, late_sql)
}

/// Settles every stock, then checks Redis: the summary lines go to `summary`, the problems found
/// to `problems`; the rows the capped settler's late SQL `UPDATE` changed; an error if the step
/// could not run or be checked at all.
fn settle_and_check(
    lock_urls: &str,
    data_url: &str,
    prefix: &str,
    sql: &Path,
    summary: &mut String,
    problems: &mut Vec<String>,
) -> Result<Option<usize>, String> {
    let office = Office::open(lock_urls, data_url, prefix, sql)?;
    let started = Instant::now();
    let mut holds = Vec::new();
    for settler in settle_every_stock(&office)? {
        match settler {
            Ok(hold) => holds.push(hold),
            Err(problem) => problems.push(problem),
        }
    }
    let elapsed = started.elapsed();
    let mut con = connect(&office.url)?;
    check(&office, &mut con, &holds, elapsed, summary, problems)
        .map_err(|e| format!("reading the settlement back from Redis: {e}"))?;
    Ok(holds.iter().find_map(|hold| hold.late_sql))
}

/// The settlement's handles: a lock per stock on the lock server (one server or a quorum), a
/// fenced ledger per stock on the data server, both named `settle:<STOCK>`.
struct Office {
    /// The data server: sales, settlement ledgers and proceeds.
    url: String,
    prefix: String,
    locks: Vec<RedisLock>,
    ledgers: Vec<RedisFenced>,
    /// The SQL ledger's file: each settler thread opens its own connection.
    sql: PathBuf,
}

impl Office {
    fn open(lock_urls: &str, data_url: &str, prefix: &str, sql: &Path) -> Result<Self, String> {
        let (lock_server, data_server) = open_servers(lock_urls, data_url, prefix)?;
        let names: Vec<String> = STOCKS
            .iter()
            .map(|stock| format!("settle:{stock}"))
            .collect();
        Ok(Self {
            url: data_url.to_owned(),
            prefix: prefix.to_owned(),
            locks: names
                .iter()
                .map(|name| lock_server.lock(name).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?,
            ledgers: names
                .iter()
                .map(|name| data_server.fenced(name).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?,
            sql: sql.to_owned(),
        })
    }

    /// The list of `stock`'s settled units, in the order they were settled.
    fn settled(&self, stock: usize) -> String {
        format!("{}settled:{{settle:{}}}", self.prefix, STOCKS[stock])
    }

    /// The sum of the prices of `stock`'s settled units, in cents.
    fn proceeds(&self, stock: usize) -> String {
        format!("{}proceeds:{{settle:{}}}", self.prefix, STOCKS[stock])
    }

    /// The list of `stock`'s sold units (written by the traders, only read here).
    fn sold(&self, stock: usize) -> String {
        sold_key(&self.prefix, STOCKS[stock])
    }

    /// The commands that settle `units` of `stock`. Like a sale, they settle the units again if
    /// run twice — which is why they run only inside a fenced write.
    fn settlement(&self, stock: usize, units: &[u32]) -> redis::Pipeline {
        let mut settlement = redis::pipe();
        settlement.cmd("RPUSH").arg(self.settled(stock)).arg(units);
        settlement
            .cmd("INCRBY")
            .arg(self.proceeds(stock))
            .arg(units.iter().map(|&unit| price_cents(unit)).sum::<u64>());
        settlement
    }
}

/// What one settler did under one kept lease.
struct Hold {
    stock: usize,
    token: u64,
    settling: Settling,
    /// From `keep_alive` to the release.
    held: Duration,
    /// The capped settler's late write of its batch in hand, made on purpose once a newer
    /// settler had claimed (`None` for the others).
    late_write: Option<Result<(), Error>>,
    /// The rows the same late write's fenced SQL `UPDATE` changed (`None` for the others).
    late_sql: Option<usize>,
    released: Result<(), Error>,
}

impl Hold {
    /// Releases `kept` (which stops its renewer first) and records the hold that ends there.
    fn released(
        stock: usize,
        kept: KeptLease,
        since: Instant,
        settling: Settling,
        late: Option<(Result<(), Error>, usize)>,
    ) -> Self {
        let token = kept.token().get();
        let released = kept.release();
        let (late_write, late_sql) = late.map_or((None, None), |(w, rows)| (Some(w), Some(rows)));
        Hold {
            stock,
            token,
            settling,
            held: since.elapsed(),
            late_write,
            late_sql,
            released,
        }
    }

    /// Its writes refused as stale: a batch's, when the loss came between `lost()` and the write,
    /// and the late write made on purpose.
    fn refused(&self) -> usize {
        let batch = self
            .settling
            .stopped
            .as_ref()
            .is_some_and(|s| matches!(s.why, Stop::Refused));
        let late = matches!(self.late_write, Some(Err(Error::Stale(_))));
        usize::from(batch) + usize::from(late)
    }
}

/// How a settler's work under one kept lease ended.
struct Settling {
    /// Admitted writes, and the units they settled.
    batches: usize,
    units: usize,
    /// Set if it stopped before the end.
    stopped: Option<Stopped>,
}

/// A settler that stopped before the end: why, when, and the batch it had prepared but not
/// written.
struct Stopped {
    why: Stop,
    /// After `keep_alive`.
    after: Duration,
    in_hand: Vec<u32>,
}

/// Why a settler stopped before the end.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// `KeptLease::lost` said so, before the batch's write.
    Lost(LeaseLost),
    /// `lost()` still said no, but the write was refused: the lease ended between the two and a
    /// newer settler had claimed.
    Refused,
}

/// Every stock's settlement: a first settler per stock, and for the capped stock a second one
/// that takes over. What each settler did (or why it could not), in no particular order; an
/// error if a first settler could not take its lease.
fn settle_every_stock(office: &Office) -> Result<Vec<Result<Hold, String>>, String> {
    // The first settlers take their leases before any settler thread starts: the capped one must
    // hold its stock's lock before the second settler asks for it.
    let mut firsts = Vec::new();
    for (stock, lock) in office.locks.iter().enumerate() {
        let lease = lock
            .acquire_timeout(SETTLE_TTL, ACQUIRE_WAIT)
            .map_err(|e| format!("{}: {e}", lock.name()))?
            .ok_or_else(|| format!("{}: never came free", lock.name()))?;
        let cap = if stock == CAPPED_STOCK {
            CAPPED_HOLD
        } else {
            MAX_HOLD
        };
        let since = Instant::now();
        firsts.push((lease.keep_alive(policy(cap)), since));
    }

    let (claims, claimed) = mpsc::channel();
    let mut claimed = Some(claimed);
    Ok(thread::scope(|s| {
        let second = s.spawn(move || second_settler(office, CAPPED_STOCK, &claims));
        let firsts: Vec<_> = firsts
            .into_iter()
            .enumerate()
            .map(|(stock, (kept, since))| {
                if stock == CAPPED_STOCK {
                    let claimed = claimed.take().expect("one capped stock");
                    s.spawn(move || capped_settler(office, stock, kept, since, &claimed))
                } else {
                    s.spawn(move || settler(office, stock, kept, since, None))
                }
            })
            .collect();
        firsts
            .into_iter()
            .chain([second])
            .map(|settler| {
                settler
                    .join()
                    .unwrap_or_else(|_| Err("a settler thread panicked".into()))
            })
            .collect()
    }))
}

/// Renewing every `RENEW_EVERY`, for at most `cap`.
fn policy(cap: Duration) -> KeepAlive {
    KeepAlive::default().every(RENEW_EVERY).max_hold(cap)
}

/// A settler handed a kept lease: settles what is left of `stock`, then releases.
fn settler(
    office: &Office,
    stock: usize,
    kept: KeptLease,
    since: Instant,
    claims: Option<&Sender<u64>>,
) -> Result<Hold, String> {
    let settling = settle(office, stock, &kept, since, claims)?;
    Ok(Hold::released(stock, kept, since, settling, None))
}

/// The capped settler: settles until its lease is lost, waits (bounded) until the second
/// settler has claimed the ledger, writes its batch in hand anyway, and releases.
fn capped_settler(
    office: &Office,
    stock: usize,
    kept: KeptLease,
    since: Instant,
    claimed: &Receiver<u64>,
) -> Result<Hold, String> {
    let settling = settle(office, stock, &kept, since, None)?;
    let Some(Stopped { in_hand, .. }) = &settling.stopped else {
        return Err(format!(
            "{}: the capped settler finished its work: its lease was never lost",
            STOCKS[stock]
        ));
    };
    // Past the wait nobody has taken over: the writes below are then admitted, and reported.
    let _ = claimed.recv_timeout(TAKEOVER_WAIT);
    let late_write = office.ledgers[stock].write(kept.token(), &office.settlement(stock, in_hand));
    // The database's check on its own (no Redis write beside it): 0 rows, or 1 if admitted.
    let late_sql = SqlLedger::open(&office.sql)?.record(
        &sql_ledger::settlement(stock),
        kept.token(),
        in_hand,
        || Ok(true),
    )?;
    let late_rows = usize::from(late_sql != Recorded::Stale);
    Ok(Hold::released(
        stock,
        kept,
        since,
        settling,
        Some((late_write, late_rows)),
    ))
}

/// The second settler: waits for the capped stock's lock, keeps its lease, settles the rest and
/// says on `claims` when it has claimed the ledger.
fn second_settler(office: &Office, stock: usize, claims: &Sender<u64>) -> Result<Hold, String> {
    let lock = &office.locks[stock];
    let lease = lock
        .acquire_timeout(SETTLE_TTL, TAKEOVER_WAIT)
        .map_err(|e| format!("{}: {e}", lock.name()))?
        .ok_or_else(|| {
            format!(
                "{}: the second settler waited {TAKEOVER_WAIT:?}: the capped lease never ended",
                lock.name()
            )
        })?;
    let since = Instant::now();
    settler(
        office,
        stock,
        lease.keep_alive(policy(MAX_HOLD)),
        since,
        Some(claims),
    )
}

/// Settles what is left of `stock` under `kept` (kept alive since `since`): claims the ledger (an
/// empty fenced write) and the SQL ledger's row (then `claims` hears the token), reads how far
/// settlement got, and settles the rest batch by batch into both, asking `kept.lost()` before
/// each write and stopping as soon as the lease is lost.
fn settle(
    office: &Office,
    stock: usize,
    kept: &KeptLease,
    since: Instant,
    claims: Option<&Sender<u64>>,
) -> Result<Settling, String> {
    let ledger = &office.ledgers[stock];
    let write = |commands: &redis::Pipeline| match ledger.write(kept.token(), commands) {
        Ok(()) => Ok(true),
        Err(Error::Stale(_)) => Ok(false),
        Err(e) => Err(format!("fenced write on {}: {e}", ledger.name())),
    };
    let (mut sql, sql_name) = (SqlLedger::open(&office.sql)?, sql_ledger::settlement(stock));
    if !write(&redis::pipe())? || !sql.claim(&sql_name, kept.token())? {
        return Err(format!(
            "{}: a fresh lease's claim was refused",
            ledger.name()
        ));
    }
    if let Some(claims) = claims {
        let _ = claims.send(kept.token().get());
    }
    // Settlement goes through the sold list in order, so the ledger's length is how far it got.
    let mut con = connect(&office.url)?;
    let done: usize = redis::cmd("LLEN")
        .arg(office.settled(stock))
        .query(&mut con)
        .map_err(|e| format!("reading {}: {e}", office.settled(stock)))?;
    let left: Vec<u32> = redis::cmd("LRANGE")
        .arg(office.sold(stock))
        .arg(done)
        .arg(-1)
        .query(&mut con)
        .map_err(|e| format!("reading {}: {e}", office.sold(stock)))?;

    let mut settling = Settling {
        batches: 0,
        units: 0,
        stopped: None,
    };
    for batch in left.chunks(SETTLE_BATCH) {
        thread::sleep(BATCH_WORK); // the batch's work
        let stop = |why| Stopped {
            why,
            after: since.elapsed(),
            in_hand: batch.to_vec(),
        };
        if let Some(lost) = kept.lost() {
            settling.stopped = Some(stop(Stop::Lost(lost)));
            break;
        }
        let recorded = sql.record(&sql_name, kept.token(), batch, || {
            write(&office.settlement(stock, batch))
        })?;
        if recorded != Recorded::Written {
            settling.stopped = Some(stop(Stop::Refused));
            break;
        }
        settling.batches += 1;
        settling.units += batch.len();
    }
    Ok(settling)
}

/// What Redis holds for one stock's settlement.
struct Ledger {
    sold: Vec<u32>,
    settled: Vec<u32>,
    proceeds: u64,
}

impl Ledger {
    fn read(office: &Office, con: &mut Connection, stock: usize) -> redis::RedisResult<Self> {
        let list = |con: &mut Connection, key: String| {
            redis::cmd("LRANGE").arg(key).arg(0).arg(-1).query(con)
        };
        let proceeds: Option<u64> = redis::cmd("GET").arg(office.proceeds(stock)).query(con)?;
        Ok(Self {
            sold: list(con, office.sold(stock))?,
            settled: list(con, office.settled(stock))?,
            proceeds: proceeds.unwrap_or(0),
        })
    }

    /// How many times `unit` was settled.
    fn times_settled(&self, unit: u32) -> usize {
        self.settled.iter().filter(|&&u| u == unit).count()
    }
}

/// Checks every stock's settlement in Redis against its sales, and every hold against what it
/// should show; writes the summary lines, and pushes every problem found.
fn check(
    office: &Office,
    con: &mut Connection,
    holds: &[Hold],
    elapsed: Duration,
    summary: &mut String,
    problems: &mut Vec<String>,
) -> redis::RedisResult<()> {
    let (mut sold, mut settled, mut batches) = (0, 0, 0);
    let mut takeover = None;
    for (stock, symbol) in STOCKS.iter().enumerate() {
        let ledger = Ledger::read(office, con, stock)?;
        let sorted = |units: &[u32]| {
            let mut units = units.to_vec();
            units.sort_unstable();
            units.dedup();
            units
        };
        let (units, sold_units) = (sorted(&ledger.settled), sorted(&ledger.sold));
        let twice = ledger.settled.len() - units.len();
        let missing = (sold_units.iter())
            .filter(|unit| units.binary_search(unit).is_err())
            .count();
        let foreign = (units.iter())
            .filter(|unit| sold_units.binary_search(unit).is_err())
            .count();
        if twice + missing + foreign != 0 {
            problems.push(format!(
                "{symbol}: {twice} unit(s) settled twice, {missing} sold unit(s) never settled, \
                 {foreign} unit(s) settled but never sold"
            ));
        }
        let worth: u64 = ledger.sold.iter().map(|&unit| price_cents(unit)).sum();
        if ledger.proceeds != worth {
            problems.push(format!(
                "{symbol}: proceeds {} for sales worth {}",
                dollars(ledger.proceeds),
                dollars(worth)
            ));
        }

        let mine: Vec<&Hold> = holds.iter().filter(|hold| hold.stock == stock).collect();
        let admitted: usize = mine.iter().map(|hold| hold.settling.units).sum();
        if admitted != ledger.settled.len() {
            problems.push(format!(
                "{symbol}: the settlers report {admitted} units settled, Redis holds {}",
                ledger.settled.len()
            ));
        }
        let stock_batches: usize = mine.iter().map(|hold| hold.settling.batches).sum();
        let leases = if stock == CAPPED_STOCK {
            for second in mine.iter().filter(|hold| hold.late_write.is_none()) {
                check_kept(second, problems);
            }
            match takeover_line(&ledger, &mine) {
                Ok(line) => takeover = Some(line),
                Err(problem) => problems.push(problem),
            }
            let tokens: Vec<String> = mine.iter().map(|hold| hold.token.to_string()).collect();
            format!("{} kept leases (tokens {})", mine.len(), tokens.join(", "))
        } else {
            for hold in &mine {
                check_kept(hold, problems);
            }
            match mine.as_slice() {
                [hold] => format!(
                    "1 kept lease (token {}) held {:.2?} = {:.1} TTLs, {}",
                    hold.token,
                    hold.held,
                    hold.held.as_secs_f64() / SETTLE_TTL.as_secs_f64(),
                    released(&hold.released)
                ),
                _ => format!("{} kept leases", mine.len()),
            }
        };
        let proceeds = if ledger.proceeds == worth {
            format!("{} = their prices", dollars(ledger.proceeds))
        } else {
            format!(
                "{} for sales worth {}",
                dollars(ledger.proceeds),
                dollars(worth)
            )
        };
        summary.push_str(&format!(
            "  {symbol}: {:>3} sold, {:>3} settled in {stock_batches:>2} batches, {twice} settled \
             twice, proceeds {proceeds}; {leases}\n",
            ledger.sold.len(),
            ledger.settled.len(),
        ));
        sold += ledger.sold.len();
        settled += ledger.settled.len();
        batches += stock_batches;
    }
    if let Some(line) = takeover {
        summary.push_str(&line);
    }
    let lost = holds
        .iter()
        .filter(|hold| hold.settling.stopped.is_some())
        .count();
    let refused: usize = holds.iter().map(Hold::refused).sum();
    summary.push_str(&format!(
        "  settlement: kept leases: {}, units settled: {settled} of {sold} sold, batches: \
         {batches}, late writes refused: {refused}, leases lost: {lost}, elapsed: {elapsed:.2?}",
        holds.len()
    ));
    Ok(())
}

/// A hold that should have kept its lease to the end: settled everything left, outlived its TTL,
/// and released a lease still held.
fn check_kept(hold: &Hold, problems: &mut Vec<String>) {
    let (symbol, token) = (STOCKS[hold.stock], hold.token);
    if let Some(stopped) = &hold.settling.stopped {
        problems.push(format!(
            "{symbol}: the kept lease (token {token}) was lost after {} batches ({}): a renewal \
             failed or came late",
            hold.settling.batches, stopped.why
        ));
    }
    if let Err(e) = &hold.released {
        problems.push(format!(
            "{symbol}: releasing the kept lease (token {token}): {e}"
        ));
    }
    if hold.held <= SETTLE_TTL {
        problems.push(format!(
            "{symbol}: the settlement under token {token} took {:.2?}, within one TTL: nothing \
             was kept alive",
            hold.held
        ));
    }
}

/// The line of the capped stock's takeover, or why it does not show what it should: the capped
/// settler stopped when its lease was lost, the second settler (newer token) settled the rest
/// including the first one's batch in hand, once; the late write was refused, the release lost.
fn takeover_line(ledger: &Ledger, holds: &[&Hold]) -> Result<String, String> {
    let symbol = STOCKS[CAPPED_STOCK];
    let (Some(capped), Some(second)) = (
        holds.iter().find(|hold| hold.late_write.is_some()),
        holds.iter().find(|hold| hold.late_write.is_none()),
    ) else {
        return Err(format!(
            "{symbol}: {} settler(s) reported, not the capped one and the one that took over",
            holds.len()
        ));
    };
    let Some(stopped) = &capped.settling.stopped else {
        return Err(format!("{symbol}: the capped settler never stopped"));
    };
    let (token, newer) = (capped.token, second.token);
    if let Some(rows @ 1..) = capped.late_sql {
        return Err(format!(
            "{symbol}: the capped settler's late SQL UPDATE (token {token}) changed {rows} row(s)"
        ));
    }
    if newer <= token {
        return Err(format!(
            "{symbol}: the settler that took over has token {newer}, not above {token}"
        ));
    }
    match &capped.late_write {
        Some(Err(Error::Stale(_))) => {}
        Some(Ok(())) => {
            return Err(format!(
                "{symbol}: the capped settler's late write (token {token}) was admitted"
            ))
        }
        Some(Err(e)) => return Err(format!("{symbol}: the capped settler's late write: {e}")),
        None => return Err(format!("{symbol}: the capped settler made no late write")),
    }
    let lost = match &capped.released {
        Err(Error::Lost(lost)) => *lost,
        Ok(()) => {
            return Err(format!(
                "{symbol}: the capped settler's release found its lease still held"
            ))
        }
        Err(e) => return Err(format!("{symbol}: the capped settler's release: {e}")),
    };
    let once = stopped
        .in_hand
        .iter()
        .filter(|&&unit| ledger.times_settled(unit) == 1)
        .count();
    if once != stopped.in_hand.len() {
        return Err(format!(
            "{symbol}: only {once} of the {} units the capped settler had in hand were settled \
             exactly once",
            stopped.in_hand.len()
        ));
    }
    let work = BATCH_WORK * ledger.sold.len().div_ceil(SETTLE_BATCH) as u32;
    Ok(format!(
        "  {symbol}: the first settler's renewals were capped at {} ms (max_hold), short of \
         its {work:.1?} of work: after {} batches, {:.0?} in, {} and it stopped writing, {} \
         units in hand\n  \
         {symbol}: a waiting settler took over with token {newer}, settled the other {} batches \
         (those units once) and {}; the first one's late write (token {token}) was refused \
         (Error::Stale; SQLite's fenced UPDATE: 0 rows), its release said Error::Lost ({})\n",
        CAPPED_HOLD.as_millis(),
        capped.settling.batches,
        stopped.after,
        stopped.why,
        stopped.in_hand.len(),
        second.settling.batches,
        released(&second.released),
        lost_name(lost)
    ))
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Lost(lost) => write!(f, "lost() said {} ({lost})", lost_name(*lost)),
            Stop::Refused => f.write_str("lost() had not said so yet, but its write was refused"),
        }
    }
}

/// A `LeaseLost` as the code names it.
fn lost_name(lost: LeaseLost) -> String {
    match lost {
        LeaseLost::Expired => "Expired".to_owned(),
        LeaseLost::TakenOver { by } => format!("TakenOver {{ by: {by} }}"),
    }
}

/// What a release that should have found its lease held said, for the summary.
fn released(released: &Result<(), Error>) -> &'static str {
    match released {
        Ok(()) => "released Ok",
        Err(_) => "its release FAILED",
    }
}

/// Cents as dollars.
fn dollars(cents: u64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}
