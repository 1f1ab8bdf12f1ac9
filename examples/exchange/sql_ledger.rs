//! The `--redis` mode's SQL ledger: the units the trader *processes* sold and the units the
//! settlers settled, in one SQLite file in the run's temporary directory, every write checked by
//! the database against the writer's fencing token (the pattern of `docs/sql.md`).
//!
//! One `ledgers` row per lock — `AAPL` … `HOT` for the sales made under the trading locks,
//! `settle:AAPL` … for the settlement under the settlement locks — whose `fence` is the highest
//! token *of that lock* that has written it: tokens of different locks are not comparable. One
//! `entries` row per unit recorded, with no uniqueness constraint on purpose: what keeps a unit
//! from being recorded twice is the fence, and [`check`] counts.
//!
//! A holder claims its ledger row (raises the fence) before it reads what to write, as it claims
//! the Redis ledger, and [`SqlLedger::record`]s a batch in one SQLite write transaction: the fenced
//! `UPDATE` of the ledger row (0 rows: a newer holder has written; nothing more is done), the unit
//! rows, then the Redis fenced write; it commits only if Redis admitted that too. The transaction
//! holds SQLite's write lock across the Redis write, so the two ledgers take a batch together or
//! neither does — a crash between the Redis write and the commit aside, which the example does
//! not stage.
//!
//! Several processes write the file at once: each connection waits up to [`BUSY_TIMEOUT`] for the
//! write lock rather than failing at once; WAL mode keeps readers and the writer from blocking
//! each other; `synchronous = NORMAL` makes a commit survive a crash of the process, not of the
//! machine (the file is the run's, removed at the end).

use std::path::Path;
use std::time::Duration;

use fencelock::FencingToken;
use fencelock_redis::redis::{self, Connection as RedisConnection};
use rusqlite::{params, Connection, TransactionBehavior};

use crate::market::{price_cents, STOCKS};
use crate::redis_books::{sold_key, symbol, BOOKS};

/// The ledger's file name in the run's temporary directory.
pub const FILE: &str = "ledger.db";
/// The longest a connection waits for the database's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
    CREATE TABLE ledgers (
        name     TEXT PRIMARY KEY,  -- the lock whose tokens fence the ledger
        units    INTEGER NOT NULL,
        proceeds INTEGER NOT NULL,  -- cents
        fence    INTEGER NOT NULL   -- the highest token that has written the ledger
    );
    CREATE TABLE entries (
        ledger      TEXT NOT NULL,
        unit        INTEGER NOT NULL,
        price_cents INTEGER NOT NULL,
        fence       INTEGER NOT NULL  -- the token that wrote it
    );";
const NEW_LEDGER: &str = "INSERT INTO ledgers (name, units, proceeds, fence) VALUES (?1, 0, 0, 0)";
/// Raises the fence, nothing else: 0 rows if a newer token has written.
const CLAIM: &str = "UPDATE ledgers SET fence = ?1 WHERE name = ?2 AND fence <= ?1";
/// Adds a batch to the totals and raises the fence, in one statement: 0 rows if a newer token has
/// written.
const RECORD: &str = "UPDATE ledgers SET units = units + ?2, proceeds = proceeds + ?3, \
    fence = ?1 WHERE name = ?4 AND fence <= ?1";
const ENTRY: &str =
    "INSERT INTO entries (ledger, unit, price_cents, fence) VALUES (?1, ?2, ?3, ?4)";
const FENCE: &str = "SELECT fence FROM ledgers WHERE name = ?1";
const TOTALS: &str = "SELECT units, proceeds FROM ledgers WHERE name = ?1";
const ENTRIES: &str = "SELECT unit FROM entries WHERE ledger = ?1";

/// The settlement ledger of `stock`: the name of its settlement lock.
pub fn settlement(stock: usize) -> String {
    format!("settle:{}", STOCKS[stock])
}

/// How [`SqlLedger::record`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The fenced `UPDATE` changed its row and the Redis write was admitted: committed.
    Written,
    /// The fenced `UPDATE` changed 0 rows: a newer token has written. Nothing was written.
    Stale,
    /// The database admitted the batch, the Redis write did not: rolled back, nothing written.
    RefusedByRedis,
}

/// One process's (or thread's) connection to the ledger file.
pub struct SqlLedger {
    con: Connection,
}

impl SqlLedger {
    /// Creates the file at `path`: the schema, WAL mode, and an empty row for every ledger of the
    /// run (each book's sales, each listed stock's settlement). Before anyone writes.
    pub fn create(path: &Path) -> Result<(), String> {
        let ledger = Self::open(path)?;
        let create = || -> rusqlite::Result<()> {
            // WAL is kept in the file: every later connection uses it too.
            let mode: String =
                (ledger.con).pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            if mode != "wal" {
                return Err(rusqlite::Error::InvalidParameterName(format!(
                    "journal_mode is {mode}, not wal"
                )));
            }
            ledger.con.execute_batch(SCHEMA)?;
            let sales = (0..BOOKS).map(|book| symbol(book).to_owned());
            for name in sales.chain((0..STOCKS.len()).map(settlement)) {
                ledger.con.execute(NEW_LEDGER, [name])?;
            }
            Ok(())
        };
        create().map_err(|e| format!("creating {}: {e}", path.display()))
    }

    /// A connection to the file at `path`.
    pub fn open(path: &Path) -> Result<Self, String> {
        let open = || -> rusqlite::Result<Connection> {
            let con = Connection::open(path)?;
            con.busy_timeout(BUSY_TIMEOUT)?;
            con.pragma_update(None, "synchronous", "NORMAL")?;
            Ok(con)
        };
        let con = open().map_err(|e| format!("opening {}: {e}", path.display()))?;
        Ok(Self { con })
    }

    /// Raises ledger `name`'s fence to `token`: `false` if a newer token has written it.
    pub fn claim(&self, name: &str, token: FencingToken) -> Result<bool, String> {
        let claimed = (self.con)
            .execute(CLAIM, params![column(token)?, name])
            .map_err(|e| format!("claiming the SQL ledger {name}: {e}"))?;
        Ok(claimed == 1)
    }

    /// The highest token that has written ledger `name`.
    pub fn fence(&self, name: &str) -> Result<FencingToken, String> {
        let fence: i64 = (self.con)
            .query_row(FENCE, [name], |row| row.get(0))
            .map_err(|e| format!("reading the SQL ledger {name}'s fence: {e}"))?;
        FencingToken::try_from(fence).map_err(|e| format!("{name}'s fence {fence}: {e}"))
    }

    /// Records `units` in ledger `name` with `token`, together with `redis_write` (the same
    /// batch's fenced write in Redis: `Ok(true)` if admitted), in one transaction that holds the
    /// database's write lock throughout. `redis_write` runs only if the database admitted the
    /// batch; the batch is committed only if it returns `Ok(true)`.
    pub fn record(
        &mut self,
        name: &str,
        token: FencingToken,
        units: &[u32],
        redis_write: impl FnOnce() -> Result<bool, String>,
    ) -> Result<Recorded, String> {
        let fence = column(token)?;
        let failed = |e: rusqlite::Error| format!("recording in the SQL ledger {name}: {e}");
        // IMMEDIATE: the write lock from the start (waiting up to BUSY_TIMEOUT), not at the
        // first write.
        let batch = (self.con)
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed)?;
        let count = i64::try_from(units.len()).map_err(|e| e.to_string())?;
        let proceeds: u64 = units.iter().map(|&unit| price_cents(unit)).sum();
        let proceeds = i64::try_from(proceeds).map_err(|e| e.to_string())?;
        let admitted = batch
            .execute(RECORD, params![fence, count, proceeds, name])
            .map_err(failed)?;
        if admitted == 0 {
            return Ok(Recorded::Stale); // dropping `batch` rolls it back
        }
        for &unit in units {
            let price = i64::try_from(price_cents(unit)).map_err(|e| e.to_string())?;
            (batch.execute(ENTRY, params![name, unit, price, fence])).map_err(failed)?;
        }
        if !redis_write()? {
            return Ok(Recorded::RefusedByRedis);
        }
        batch.commit().map_err(failed)?;
        Ok(Recorded::Written)
    }

    /// Ledger `name`: its units (as recorded, duplicates kept), and its `units` and `proceeds`
    /// totals.
    fn read(&self, name: &str) -> rusqlite::Result<(Vec<u32>, i64, i64)> {
        let (units, proceeds) =
            (self.con).query_row(TOTALS, [name], |row| Ok((row.get(0)?, row.get(1)?)))?;
        let mut entries = self.con.prepare(ENTRIES)?;
        let recorded = entries
            .query_map([name], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok((recorded, units, proceeds))
    }
}

/// A token as the `fence` column holds it (signed 64 bits), checked.
fn column(token: FencingToken) -> Result<i64, String> {
    i64::try_from(token).map_err(|_| format!("token {token} does not fit a SQL integer"))
}

/// Reads the file back, once the traders and the settlers are done: every book's sales ledger
/// and every listed stock's settlement ledger must hold each unit Redis lists as sold exactly
/// once, and nothing else, with totals matching. `late` are the late UPDATEs made on purpose —
/// whose, and the rows each changed (`None`: it was not made) — each of which must have changed
/// none. Returns the step's line, or every problem found.
pub fn check(
    path: &Path,
    con: &mut RedisConnection,
    prefix: &str,
    processes: usize,
    late: &[(&str, Option<usize>)],
) -> Result<String, Vec<String>> {
    let ledger = SqlLedger::open(path).map_err(|e| vec![e])?;
    let mut problems = Vec::new();
    let (mut sold, mut settled) = (0, 0);
    for book in 0..BOOKS {
        let sales: Vec<u32> = redis::cmd("LRANGE")
            .arg(sold_key(prefix, symbol(book)))
            .arg(0)
            .arg(-1)
            .query(con)
            .map_err(|e| vec![format!("reading {}'s sales from Redis: {e}", symbol(book))])?;
        let mut names = vec![symbol(book).to_owned()];
        names.extend((book < STOCKS.len()).then(|| settlement(book)));
        for name in names {
            let (units, total, proceeds) = ledger
                .read(&name)
                .map_err(|e| vec![format!("reading the SQL ledger {name}: {e}")])?;
            if let Some(problem) = compare(&name, &sales, &units, total, proceeds) {
                problems.push(problem);
            }
            if name == symbol(book) {
                sold += units.len();
            } else {
                settled += units.len();
            }
        }
    }
    let mut refused = Vec::new();
    for &(whose, rows) in late {
        match rows {
            Some(0) => refused.push(whose),
            Some(rows) => problems.push(format!("{whose} late UPDATE changed {rows} row(s)")),
            None => problems.push(format!("{whose} late UPDATE was never made")),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(format!(
        "  sql ledger: {sold} units sold by {processes} trader processes and {settled} settled by \
         the settler threads, each recorded once, in SQLite ({}); late UPDATEs refused by the \
         database (0 rows): {}",
        path.display(),
        refused.join(", ")
    ))
}

/// What is wrong with ledger `name`, which should record each of `sales` once: units recorded
/// twice, sold but missing, recorded but never sold, totals that do not add up.
fn compare(name: &str, sales: &[u32], units: &[u32], total: i64, proceeds: i64) -> Option<String> {
    let sorted = |units: &[u32]| {
        let mut units = units.to_vec();
        units.sort_unstable();
        units
    };
    let (mut sales, units) = (sorted(sales), sorted(units));
    sales.dedup(); // Redis's exactly-once check covers the sales themselves
    let twice = units.windows(2).filter(|w| w[0] == w[1]).count();
    let missing = (sales.iter())
        .filter(|u| units.binary_search(u).is_err())
        .count();
    let foreign = (units.iter())
        .filter(|u| sales.binary_search(u).is_err())
        .count();
    let worth: u64 = units.iter().map(|&unit| price_cents(unit)).sum();
    let totals =
        u64::try_from(total) == Ok(units.len() as u64) && u64::try_from(proceeds) == Ok(worth);
    (twice + missing + foreign != 0 || !totals).then(|| {
        format!(
            "{name}: {twice} unit(s) recorded twice, {missing} sold unit(s) missing, {foreign} \
             never sold; totals {total} units and {proceeds} cents for {} entries worth {worth}",
            units.len()
        )
    })
}
