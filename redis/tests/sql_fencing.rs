//! Fencing tokens and optimistic versions checked where the data lives: a SQL database (SQLite,
//! through rusqlite, built in), on a real file in a fresh temporary directory. Every SQLite
//! statement of `docs/sql.md` is one of the constants below, and
//! [`every_sqlite_statement_of_the_guide_is_run_here`] fails if the guide and this file part.
//!
//! A "stalled" holder is one that does nothing while another waits in line for its lock
//! (`acquire_timeout`, bounded): the waiter gets the lock when the stalled lease runs out, with a
//! newer token. No test sleeps; every wait is bounded in time.

mod support;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use fencelock::{FencingToken, Version};
use fencelock_redis::{Error, LockServer, RedisLease, RedisLock};
use rusqlite::{params, Connection};
use support::child::ChildTest;
use support::{handle, quick_builder, RedisProcess};

// The guide's statements (`docs/sql.md`), run as written there. `?1` is the token or the version
// read, `?2` the new balance, `?3` the account.
const CREATE_ACCOUNTS: &str = "CREATE TABLE accounts (id INTEGER PRIMARY KEY, \
    balance INTEGER NOT NULL, fence INTEGER NOT NULL DEFAULT 0, \
    version INTEGER NOT NULL DEFAULT 0)";
const FENCED_UPDATE: &str =
    "UPDATE accounts SET balance = ?2, fence = ?1 WHERE id = ?3 AND fence <= ?1";
const FENCED_UPSERT: &str = "INSERT INTO accounts (id, balance, fence) VALUES (?3, ?2, ?1) \
    ON CONFLICT (id) DO UPDATE SET balance = excluded.balance, fence = excluded.fence \
    WHERE excluded.fence >= accounts.fence";
const CLAIM: &str = "UPDATE accounts SET fence = ?1 WHERE id = ?2 AND fence <= ?1";
const READ_FENCE: &str = "SELECT fence FROM accounts WHERE id = ?1";
const UNCHECKED_UPDATE: &str = "UPDATE accounts SET balance = ?2, fence = ?1 WHERE id = ?3";
const READ_VERSIONED: &str = "SELECT balance, version FROM accounts WHERE id = ?1";
const VERSIONED_UPDATE: &str =
    "UPDATE accounts SET balance = ?2, version = version + 1 WHERE id = ?3 AND version = ?1";

/// Every SQLite statement the guide shows.
const GUIDE: [&str; 8] = [
    CREATE_ACCOUNTS,
    FENCED_UPDATE,
    FENCED_UPSERT,
    CLAIM,
    READ_FENCE,
    UNCHECKED_UPDATE,
    READ_VERSIONED,
    VERSIONED_UPDATE,
];

/// The account every test writes.
const ACCOUNT: i64 = 1;
/// The stalled holder's lease: it runs out while a newer holder waits in line.
const STALL_TTL: Duration = Duration::from_millis(300);
/// Leases that must not run out during a test.
const TTL: Duration = Duration::from_secs(10);
/// The longest a newer holder waits for a stalled lease to run out (it takes `STALL_TTL`).
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);
/// How long a connection waits for SQLite's write lock before `SQLITE_BUSY`: writers queue for
/// it instead of failing at once, and never longer than this.
const BUSY: Duration = Duration::from_secs(5);

/// A database file in a fresh temporary directory, removed (with the directory) on drop.
struct Database {
    dir: PathBuf,
    path: PathBuf,
}

impl Database {
    /// The guide's table, in WAL mode, with [`ACCOUNT`] at `balance` (fence and version 0).
    fn new(balance: i64) -> Self {
        let dir = support::server::fresh_dir_named("fencelock-sql");
        let path = dir.join("accounts.db");
        let con = open(&path);
        // WAL: a reader does not block the writer, nor the writer a reader, so processes that
        // share the file wait only for each other's writes; the mode is kept in the file, so
        // every later connection uses it too.
        let mode: String = con
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        con.execute(CREATE_ACCOUNTS, []).unwrap();
        con.execute(
            "INSERT INTO accounts (id, balance) VALUES (?1, ?2)",
            params![ACCOUNT, balance],
        )
        .unwrap();
        Self { dir, path }
    }

    fn open(&self) -> Connection {
        open(&self.path)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A connection to `path` that waits for the write lock up to [`BUSY`].
fn open(path: &Path) -> Connection {
    let con = Connection::open(path).unwrap();
    con.busy_timeout(BUSY).unwrap();
    con
}

/// The account's balance and fence.
fn row(con: &Connection) -> (i64, i64) {
    con.query_row(
        "SELECT balance, fence FROM accounts WHERE id = ?1",
        [ACCOUNT],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .unwrap()
}

/// A lease's token as the `fence` column holds it.
fn fence(lease: &RedisLease) -> i64 {
    i64::try_from(lease.token()).expect("a Redis token is below 2^53")
}

/// The stalled holder: a lease that runs out after [`STALL_TTL`] if nobody renews it.
fn stalled_holder(lock: &RedisLock) -> RedisLease {
    lock.try_acquire(STALL_TTL)
        .unwrap()
        .expect("the lock is free")
}

/// The newer holder: waits in line until the stalled lease has run out, and gets the lock with a
/// newer token.
fn newer_holder(lock: &RedisLock, stalled: &RedisLease) -> RedisLease {
    let newer = lock
        .acquire_timeout(TTL, TAKEOVER_WAIT)
        .unwrap()
        .expect("the stalled lease ran out within the wait");
    assert!(newer.token() > stalled.token());
    newer
}

/// A holder reads the balance, stalls past its lease; a newer holder adds 50 (twice, under one
/// token: `<=` admits it); the stalled holder's late write of what it computed is refused by the
/// database, and the row keeps the newer holder's balance and fence.
#[test]
fn a_stale_holders_update_is_refused_by_the_database() {
    let redis = RedisProcess::start();
    let db = Database::new(100);
    let con = db.open();
    let lock = handle(&redis).lock("account:1").unwrap();

    let a = stalled_holder(&lock);
    let (read_by_a, _) = row(&con);
    let b = newer_holder(&lock, &a);
    for balance in [150, 200] {
        let written = con
            .execute(FENCED_UPDATE, params![fence(&b), balance, ACCOUNT])
            .unwrap();
        assert_eq!(written, 1, "the holder's own token is admitted again");
    }
    let late = con
        .execute(FENCED_UPDATE, params![fence(&a), read_by_a - 30, ACCOUNT])
        .unwrap();
    assert_eq!(late, 0, "the stale holder's write is refused");
    assert_eq!(row(&con), (200, fence(&b)));
    assert!(matches!(a.release(), Err(Error::Lost(_))));
    b.release().unwrap();
}

/// The wrong way, for contrast: the holder checks the fence with a `SELECT`, stalls, and writes
/// without a check. The newer holder's write is lost and the fence goes back.
#[test]
fn a_check_in_a_select_before_the_write_lets_the_stale_write_through() {
    let redis = RedisProcess::start();
    let db = Database::new(100);
    let con = db.open();
    let lock = handle(&redis).lock("account:1").unwrap();

    let a = stalled_holder(&lock);
    let seen: i64 = con.query_row(READ_FENCE, [ACCOUNT], |r| r.get(0)).unwrap();
    assert!(seen <= fence(&a), "A's check passes");
    let b = newer_holder(&lock, &a);
    let written = con
        .execute(FENCED_UPDATE, params![fence(&b), 150, ACCOUNT])
        .unwrap();
    assert_eq!(written, 1);
    let late = con
        .execute(UNCHECKED_UPDATE, params![fence(&a), 70, ACCOUNT])
        .unwrap();
    assert_eq!(late, 1, "nothing refuses the stale write");
    assert_eq!(
        row(&con),
        (70, fence(&a)),
        "B's 150 is gone, the fence went back"
    );
    b.release().unwrap();
}

/// A newer holder that reads before it writes claims the row first. Without the claim, the stale
/// holder's late write lands between the newer holder's read and write (it is still the highest
/// token the row has seen) and is overwritten unseen; with it, the late write is refused.
#[test]
fn a_claim_before_the_read_refuses_a_late_write_between_read_and_write() {
    let redis = RedisProcess::start();
    let lock = handle(&redis).lock("account:1").unwrap();
    for claim in [false, true] {
        let db = Database::new(100);
        let con = db.open();
        let a = stalled_holder(&lock);
        let b = newer_holder(&lock, &a);
        if claim {
            let claimed = con.execute(CLAIM, params![fence(&b), ACCOUNT]).unwrap();
            assert_eq!(claimed, 1);
        }
        let (read_by_b, _) = row(&con);
        let late = con
            .execute(FENCED_UPDATE, params![fence(&a), 70, ACCOUNT])
            .unwrap();
        let written = con
            .execute(FENCED_UPDATE, params![fence(&b), read_by_b + 50, ACCOUNT])
            .unwrap();
        assert_eq!(written, 1);
        assert_eq!(row(&con), (150, fence(&b)));
        // Without the claim the late write was admitted, then overwritten by a write computed
        // from a read that never saw it.
        assert_eq!(late, usize::from(!claim));
        assert!(matches!(a.release(), Err(Error::Lost(_))));
        b.release().unwrap();
    }
}

/// The upsert inserts a missing row, lets a newer token and the same token again replace it, and
/// leaves it alone for an older token.
#[test]
fn an_upsert_with_a_stale_fence_changes_nothing() {
    let db = Database::new(0);
    let con = db.open();
    let id = ACCOUNT + 1;
    let upsert = |token: u64, balance: i64| {
        let token = i64::try_from(FencingToken::new(token)).unwrap();
        let changed = con
            .execute(FENCED_UPSERT, params![token, balance, id])
            .unwrap();
        let row: (i64, i64) = con
            .query_row(
                "SELECT balance, fence FROM accounts WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        (changed, row)
    };
    assert_eq!(upsert(5, 10), (1, (10, 5)), "inserted");
    assert_eq!(upsert(7, 20), (1, (20, 7)), "a newer token replaces it");
    assert_eq!(
        upsert(7, 25),
        (1, (25, 7)),
        "the same token again replaces it"
    );
    assert_eq!(
        upsert(6, 99),
        (0, (25, 7)),
        "an older token changes nothing"
    );
}

/// Eight threads, each with its own connection, add 1 fifty times with the version check and a
/// bounded retry: no increment is lost. Then a commit prepared at a version another writer has
/// since moved past changes nothing.
#[test]
fn an_optimistic_version_column_loses_no_update() {
    const THREADS: usize = 8;
    const INCREMENTS: usize = 50;
    /// Bounds the retries of one increment (each retry follows another thread's commit).
    const MAX_ATTEMPTS: usize = 10_000;
    let db = Database::new(0);

    /// Reads the balance and its version, and commits balance + 1 at that version: 1 row, or 0
    /// if another commit came between.
    fn try_increment(con: &Connection) -> usize {
        let (balance, version): (i64, i64) = con
            .query_row(READ_VERSIONED, [ACCOUNT], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        let read = Version::try_from(version).expect("versions are not negative");
        let read = i64::try_from(read).unwrap();
        con.execute(VERSIONED_UPDATE, params![read, balance + 1, ACCOUNT])
            .unwrap()
    }

    let retries: usize = thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let con = db.open();
                s.spawn(move || {
                    let mut retries = 0;
                    for _ in 0..INCREMENTS {
                        let attempts = (1..=MAX_ATTEMPTS)
                            .find(|_| try_increment(&con) == 1)
                            .expect("an increment committed within MAX_ATTEMPTS");
                        retries += attempts - 1;
                    }
                    retries
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });

    let con = db.open();
    let total = i64::try_from(THREADS * INCREMENTS).unwrap();
    let (balance, version): (i64, i64) = con
        .query_row(READ_VERSIONED, [ACCOUNT], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!(
        (balance, Version::try_from(version).unwrap()),
        (total, Version::new(THREADS as u64 * INCREMENTS as u64)),
        "no update lost ({retries} retries after a conflict)"
    );

    // A stale commit, deterministically: read, another writer commits, commit at the read version.
    let other = db.open();
    let (read_balance, read_version): (i64, i64) = con
        .query_row(READ_VERSIONED, [ACCOUNT], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!(try_increment(&other), 1);
    let stale = con
        .execute(
            VERSIONED_UPDATE,
            params![read_version, read_balance + 1000, ACCOUNT],
        )
        .unwrap();
    assert_eq!(stale, 0, "the commit at a stale version is refused");
    let now: (i64, i64) = con
        .query_row(READ_VERSIONED, [ACCOUNT], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!(
        now,
        (total + 1, read_version + 1),
        "only the other writer's commit"
    );
}

/// Tokens and versions go into a signed 64-bit column checked, and come back equal; what does not
/// fit is an error, where `as` would have wrapped it to a negative number.
#[test]
fn tokens_and_versions_convert_to_sql_integers_checked() {
    assert!(i64::try_from(FencingToken::new(u64::MAX)).is_err());
    assert!(i64::try_from(FencingToken::new(1 << 63)).is_err());
    assert!(i64::try_from(Version::new(u64::MAX)).is_err());
    assert!(FencingToken::try_from(-1_i64).is_err());
    assert!(Version::try_from(i64::MIN).is_err());

    let db = Database::new(0);
    let con = db.open();
    con.execute("CREATE TABLE numbers (n INTEGER NOT NULL)", [])
        .unwrap();
    let values = [0, 1, (1 << 53) - 1, i64::MAX as u64];
    for value in values {
        let token = i64::try_from(FencingToken::new(value)).unwrap();
        let version = i64::try_from(Version::new(value)).unwrap();
        con.execute(
            "INSERT INTO numbers (n) VALUES (?1), (?2)",
            params![token, version],
        )
        .unwrap();
    }
    let mut read = con
        .prepare("SELECT n, typeof(n) FROM numbers ORDER BY rowid")
        .unwrap();
    let back: Vec<(i64, String)> = read
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(back.len(), 2 * values.len());
    for (pair, value) in back.chunks(2).zip(values) {
        assert!(pair.iter().all(|(_, kind)| kind == "integer"));
        assert_eq!(
            FencingToken::try_from(pair[0].0),
            Ok(FencingToken::new(value))
        );
        assert_eq!(Version::try_from(pair[1].0), Ok(Version::new(value)));
    }

    // Why not `as`: a token past i64::MAX wraps to a negative number. The newest holder's
    // update is then refused as stale, and a row it inserts has a fence any older token passes.
    let wrapped = (1_u64 << 63) as i64;
    let older = i64::try_from(FencingToken::new(5)).unwrap();
    let refused = con
        .execute(FENCED_UPDATE, params![wrapped, 1, ACCOUNT])
        .unwrap();
    assert_eq!(refused, 0, "the newest holder is refused");
    let new_row = ACCOUNT + 1;
    let inserted = con
        .execute(FENCED_UPSERT, params![wrapped, 1, new_row])
        .unwrap();
    let overwritten = con
        .execute(FENCED_UPSERT, params![older, 2, new_row])
        .unwrap();
    assert_eq!(
        (inserted, overwritten),
        (1, 1),
        "the older token overwrote the newest"
    );
}

// Several processes, one database file, Redis leases.

/// The child process's settings, passed by environment (see [`child_incrementer`]).
const CHILD_URL: &str = "FENCELOCK_SQL_CHILD_URL";
const CHILD_DB: &str = "FENCELOCK_SQL_CHILD_DB";
/// The first word of the child's report line.
const CHILD_DONE: &str = "sql-child-done";
/// Child processes, threads in each, increments by each thread.
const CHILDREN: usize = 3;
const CHILD_THREADS: usize = 4;
const INCREMENTS: usize = 20;
/// The counter's lock: every increment of the account takes it.
const COUNTER_LOCK: &str = "counter";
/// The longest a thread waits in line for the counter's lock (11 others hold it briefly).
const COUNTER_WAIT: Duration = Duration::from_secs(20);
/// The longest the children may take, all together; then they are killed and the test fails.
const CHILDREN_TIMEOUT: Duration = Duration::from_secs(90);

/// Not a test of its own: the process the multi-process test starts. Its threads increment the
/// account under the counter's Redis lease, with the fence check; it prints how many increments
/// it made, how many rows its UPDATEs changed, and its highest token. Does nothing when run
/// directly.
#[test]
#[ignore = "the incrementing process the other test starts; does nothing when run by hand"]
fn child_incrementer() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let path = PathBuf::from(std::env::var(CHILD_DB).expect(CHILD_DB));
    let server = quick_builder().open(&url).unwrap();
    let done: Vec<(usize, u64)> = thread::scope(|s| {
        let threads: Vec<_> = (0..CHILD_THREADS)
            .map(|_| s.spawn(|| increment_under_leases(&server, &path)))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let rows: usize = done.iter().map(|(rows, _)| rows).sum();
    let highest = done.iter().map(|&(_, token)| token).max().unwrap_or(0);
    println!(
        "{CHILD_DONE} increments={} rows={rows} highest={highest}",
        CHILD_THREADS * INCREMENTS
    );
}

/// [`INCREMENTS`] times: take the counter's lease (waiting in line), read the balance, write it
/// plus one with the fence check, release. Returns the rows the UPDATEs changed and the highest
/// token.
fn increment_under_leases(server: &LockServer, path: &Path) -> (usize, u64) {
    let con = open(path);
    let lock = server.lock(COUNTER_LOCK).unwrap();
    let (mut rows, mut highest) = (0, 0);
    for _ in 0..INCREMENTS {
        let lease = lock
            .acquire_timeout(TTL, COUNTER_WAIT)
            .expect("no error while waiting")
            .expect("the counter's lock within the wait");
        let balance: i64 = con
            .query_row(
                "SELECT balance FROM accounts WHERE id = ?1",
                [ACCOUNT],
                |r| r.get(0),
            )
            .unwrap();
        rows += con
            .execute(FENCED_UPDATE, params![fence(&lease), balance + 1, ACCOUNT])
            .unwrap();
        highest = highest.max(lease.token().get());
        lease.release().expect("the lease was still held");
    }
    (rows, highest)
}

/// Three processes of four threads each increment one row of one SQLite file, each increment
/// under the counter's Redis lease and checked by its fence: the counter ends at the number of
/// increments, every UPDATE changed exactly one row, and the fence is the highest token issued.
#[test]
fn several_processes_share_one_database_file_under_redis_leases_and_no_increment_is_lost() {
    let redis = RedisProcess::start();
    let db = Database::new(0);
    let db_path = db.path.to_string_lossy().into_owned();
    let env = [(CHILD_URL, redis.url()), (CHILD_DB, db_path)];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut children: Vec<ChildTest> = (0..CHILDREN)
        .map(|_| ChildTest::spawn("child_incrementer", &env))
        .collect();

    let deadline = Instant::now() + CHILDREN_TIMEOUT;
    let mut reports = Vec::new();
    for (i, child) in children.iter_mut().enumerate() {
        let out = child.output_by(deadline);
        // libtest may print its own `test child_incrementer ... ` before it on the line.
        let report = out
            .lines()
            .find_map(|line| line.split_once(CHILD_DONE).map(|(_, after)| after))
            .unwrap_or_else(|| panic!("child {i} printed no report:\n{out}"));
        let field = |key: &str| -> u64 {
            report
                .split_whitespace()
                .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("child {i}: no {key}= in {report:?}"))
        };
        reports.push((field("increments"), field("rows"), field("highest")));
    }

    let total = (CHILDREN * CHILD_THREADS * INCREMENTS) as u64;
    let increments: u64 = reports.iter().map(|r| r.0).sum();
    let rows: u64 = reports.iter().map(|r| r.1).sum();
    let highest = reports.iter().map(|r| r.2).max().unwrap();
    assert_eq!(
        (increments, rows),
        (total, total),
        "every UPDATE changed one row"
    );
    let (balance, fence) = row(&db.open());
    assert_eq!(u64::try_from(balance).unwrap(), total, "no increment lost");
    assert_eq!(
        FencingToken::try_from(fence).unwrap(),
        FencingToken::new(highest),
        "the fence is the last holder's token"
    );
}

/// Each SQLite statement of `docs/sql.md` (its `sql` blocks without a `-- PostgreSQL` or
/// `-- MySQL` first line, comments dropped, whitespace folded) is one of [`GUIDE`], which the
/// tests above run: a statement changed in the guide alone fails here.
#[test]
fn every_sqlite_statement_of_the_guide_is_run_here() {
    let guide = include_str!("../../docs/sql.md");
    let normal = |sql: &str| {
        let words: Vec<&str> = sql
            .lines()
            .map(|line| line.split_once("--").map_or(line, |(code, _)| code))
            .flat_map(str::split_whitespace)
            .collect();
        words
            .join(" ")
            .replace("( ", "(")
            .replace(" )", ")")
            .trim_end_matches(';')
            .to_owned()
    };
    let known: Vec<String> = GUIDE.iter().map(|sql| normal(sql)).collect();
    let (mut shown, mut others) = (Vec::new(), 0);
    for block in guide.split("```sql\n").skip(1) {
        let block = block.split("```").next().unwrap();
        if block.starts_with("-- PostgreSQL") || block.starts_with("-- MySQL") {
            others += 1;
            continue;
        }
        shown.extend(block.split(';').map(normal).filter(|s| !s.is_empty()));
    }
    for statement in &shown {
        assert!(
            known.contains(statement),
            "docs/sql.md shows a statement no test runs:\n{statement}"
        );
    }
    for statement in &known {
        assert!(
            shown.contains(statement),
            "a statement of GUIDE is not in docs/sql.md:\n{statement}"
        );
    }
    assert_eq!(others, 2, "the guide's PostgreSQL and MySQL blocks");
}
