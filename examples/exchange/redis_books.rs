//! What the `--redis` mode's parent and trader processes share: the sizes of the run, the names
//! of the keys in Redis, how the servers are opened, and the report lines a trader prints for the
//! parent to parse.
//!
//! Every key of a run starts with the run's prefix (`exchange:<run id>:`), so that runs against
//! the same server never meet. A stock's keys all carry its hash tag `{STOCK}` — the book
//! `<prefix>book:{AAPL}`, the sales `<prefix>sold:{AAPL}`, and the library's own lock and fence
//! keys — so a fenced write that moves units between them stays on one slot of a Redis Cluster.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use fencelock_redis::redis::{self, Connection};
use fencelock_redis::LockServer;

use crate::market::STOCKS;

/// Units of each stock on sale; every one must end up sold exactly once.
pub const UNITS_PER_STOCK: u32 = 300;
/// The hot stock: one more book, which every trader process trades on every round once the
/// market opens (see `trader.rs`), so that all of them queue for its one lock — the seed's many
/// servers selling the same stock. Its index follows the listed stocks'.
pub const HOT: &str = "HOT";
pub const HOT_STOCK: usize = STOCKS.len();
/// Units of the hot stock on sale: enough batches that every trader thread gets some.
pub const HOT_UNITS: u32 = 600;
/// The books of a run: the listed stocks, then the hot one.
pub const BOOKS: usize = STOCKS.len() + 1;
/// Units a trader takes from a book under one lease.
pub const BATCH: usize = 10;
/// Trader threads in each trader process.
pub const THREADS: usize = 4;
/// The hidden first argument that makes the example a trader process.
pub const TRADER_FLAG: &str = "--trader";
/// The line a stalling trader prints once it holds AAPL's lease and a batch: only then does the
/// parent start the other traders, so the stall is staged before anyone else can trade.
pub const READY: &str = "ready";
/// The first word of the line a trader process prints once, when its first batch is sold: in the
/// quorum mode the parent kills a lock server when it reads the first such line.
pub const FIRST_SALE: &str = "first-sale";
/// Bounds every call to the server (connect, send, and wait for the reply).
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The symbol of book `stock` (the listed stocks, then `HOT`).
pub fn symbol(stock: usize) -> &'static str {
    STOCKS.get(stock).copied().unwrap_or(HOT)
}

/// The units book `stock` starts with.
pub fn units_of(stock: usize) -> u32 {
    if stock == HOT_STOCK {
        HOT_UNITS
    } else {
        UNITS_PER_STOCK
    }
}

/// The counter of trader processes at their desks: the hot stock opens once it reaches the
/// number of processes.
pub fn desks_key(prefix: &str) -> String {
    format!("{prefix}desks")
}

/// The list of `stock`'s units still for sale.
pub fn book_key(prefix: &str, stock: &str) -> String {
    format!("{prefix}book:{{{stock}}}")
}

/// The list of `stock`'s units sold, in the order they were sold.
pub fn sold_key(prefix: &str, stock: &str) -> String {
    format!("{prefix}sold:{{{stock}}}")
}

/// A plain connection for reading books and sales (the library's pooled connections are its own).
pub fn connect(url: &str) -> Result<Connection, String> {
    let open = || -> redis::RedisResult<Connection> {
        let con = redis::Client::open(url)?.get_connection_with_timeout(IO_TIMEOUT)?;
        con.set_read_timeout(Some(IO_TIMEOUT))?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(con)
    };
    open().map_err(|e| format!("cannot connect to {url}: {e}"))
}

/// The run's lock server — one server, or a quorum of the comma-separated `lock_urls` — and its
/// data server at `data_url`, both with the run's key `prefix`. With a single lock server at
/// `data_url`, one handle serves both.
pub fn open_servers(
    lock_urls: &str,
    data_url: &str,
    prefix: &str,
) -> Result<(LockServer, LockServer), String> {
    let lock_urls: Vec<&str> = lock_urls.split(',').collect();
    let builder = || LockServer::builder().key_prefix(prefix);
    let lock_server = match lock_urls.as_slice() {
        [url] => builder().open(url),
        urls => builder().quorum(urls),
    }
    .map_err(|e| e.to_string())?;
    let data_server = if lock_urls == [data_url] {
        lock_server.clone() // one server keeps both, as in the single-server mode
    } else {
        builder().open(data_url).map_err(|e| e.to_string())?
    };
    Ok((lock_server, data_server))
}

/// What one trader process (or one of its threads) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tally {
    /// Units moved from a book to its sales by an admitted fenced write.
    pub sold: u64,
    /// Admitted fenced writes that moved units.
    pub batches: u64,
    /// Fenced writes refused as stale (a newer lease had written first).
    pub refused: u64,
    /// Releases that found the lease already ended or taken over.
    pub lost: u64,
    /// Calls to a quorum of lock servers that failed (no majority answered, as while a server
    /// was being killed): the thread tried again later. Always 0 on a single lock server.
    pub unavailable: u64,
    /// The lowest and highest fencing token of the leases taken (`u64::MAX`, 0 when none).
    pub token_min: u64,
    pub token_max: u64,
    /// Leases taken on the hot stock, waits for it that ran out, and the longest wait (from the
    /// call to `acquire_timeout` to holding the lease), in microseconds.
    pub hot_acquired: u64,
    pub hot_timeouts: u64,
    pub hot_wait_max_us: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            sold: 0,
            batches: 0,
            refused: 0,
            lost: 0,
            unavailable: 0,
            token_min: u64::MAX,
            token_max: 0,
            hot_acquired: 0,
            hot_timeouts: 0,
            hot_wait_max_us: 0,
        }
    }
}

impl Tally {
    /// Records a lease's token in the range.
    pub fn saw(&mut self, token: u64) {
        self.token_min = self.token_min.min(token);
        self.token_max = self.token_max.max(token);
    }

    /// Adds another tally's counts and token range to this one.
    pub fn add(&mut self, other: &Tally) {
        self.sold += other.sold;
        self.batches += other.batches;
        self.refused += other.refused;
        self.lost += other.lost;
        self.unavailable += other.unavailable;
        self.token_min = self.token_min.min(other.token_min);
        self.token_max = self.token_max.max(other.token_max);
        self.hot_acquired += other.hot_acquired;
        self.hot_timeouts += other.hot_timeouts;
        self.hot_wait_max_us = self.hot_wait_max_us.max(other.hot_wait_max_us);
    }

    /// Records a lease taken on the hot stock after waiting `waited`.
    pub fn hot_wait(&mut self, waited: Duration) {
        self.hot_acquired += 1;
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.hot_wait_max_us = self.hot_wait_max_us.max(us);
    }

    /// The `report ...` line of process `process`.
    pub fn line(&self, process: usize) -> String {
        format!(
            "report process={process} threads={THREADS} sold={} batches={} refused={} lost={} \
             unavailable={} token_min={} token_max={} hot_acquired={} hot_timeouts={} \
             hot_wait_max_us={}",
            self.sold,
            self.batches,
            self.refused,
            self.lost,
            self.unavailable,
            self.token_min,
            self.token_max,
            self.hot_acquired,
            self.hot_timeouts,
            self.hot_wait_max_us
        )
    }

    /// Parses a `report ...` line: the process index and its tally.
    pub fn parse(line: &str) -> Result<(usize, Tally), String> {
        let f = Fields::parse(line, "report")?;
        let tally = Tally {
            sold: f.get("sold")?,
            batches: f.get("batches")?,
            refused: f.get("refused")?,
            lost: f.get("lost")?,
            unavailable: f.get("unavailable")?,
            token_min: f.get("token_min")?,
            token_max: f.get("token_max")?,
            hot_acquired: f.get("hot_acquired")?,
            hot_timeouts: f.get("hot_timeouts")?,
            hot_wait_max_us: f.get("hot_wait_max_us")?,
        };
        Ok((f.get("process")?, tally))
    }
}

/// What the stalled trader saw, from its `stall ...` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StallReport {
    /// The stalled lease's token, and its TTL.
    pub token: u64,
    pub ttl_ms: u64,
    /// How long the holder stalled, from the moment it held its batch to its late write.
    pub stalled_ms: u64,
    /// The units it had read from AAPL's book.
    pub units: usize,
    /// The highest token AAPL's ledger had admitted when the late write arrived.
    pub highest: u64,
    /// Whether the fenced late write was `refused` or `admitted`.
    pub write: String,
    /// Whether the release found the lease `lost` or still `held` (or, on a quorum that did not
    /// answer, `unknown`).
    pub release: String,
    /// How many of its units the newer holder had sold meanwhile, each exactly once.
    pub resold: usize,
    /// The rows its late fenced `UPDATE` of the SQL ledger changed (0: refused).
    pub sql_rows: usize,
}

impl StallReport {
    /// The `stall ...` line.
    pub fn line(&self) -> String {
        format!(
            "stall token={} ttl_ms={} stalled_ms={} units={} highest={} write={} release={} \
             resold={} sql_rows={}",
            self.token,
            self.ttl_ms,
            self.stalled_ms,
            self.units,
            self.highest,
            self.write,
            self.release,
            self.resold,
            self.sql_rows
        )
    }

    /// Parses a `stall ...` line.
    pub fn parse(line: &str) -> Result<StallReport, String> {
        let f = Fields::parse(line, "stall")?;
        Ok(StallReport {
            token: f.get("token")?,
            ttl_ms: f.get("ttl_ms")?,
            stalled_ms: f.get("stalled_ms")?,
            units: f.get("units")?,
            highest: f.get("highest")?,
            write: f.get("write")?,
            release: f.get("release")?,
            resold: f.get("resold")?,
            sql_rows: f.get("sql_rows")?,
        })
    }
}

/// The `key=value` fields of a report line that starts with a given word.
struct Fields<'a> {
    line: &'a str,
    values: HashMap<&'a str, &'a str>,
}

impl<'a> Fields<'a> {
    fn parse(line: &'a str, kind: &str) -> Result<Self, String> {
        let mut words = line.split_whitespace();
        if words.next() != Some(kind) {
            return Err(format!("not a {kind} line: {line:?}"));
        }
        let values = words.filter_map(|word| word.split_once('=')).collect();
        Ok(Self { line, values })
    }

    fn get<T: std::str::FromStr>(&self, key: &str) -> Result<T, String> {
        self.values
            .get(key)
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| format!("no valid {key}= in {:?}", self.line))
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>4} units in {:>3} batches, {} late write(s) refused, {} lease(s) lost",
            self.sold, self.batches, self.refused, self.lost
        )
    }
}
