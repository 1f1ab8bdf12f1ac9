//! Step 3, the seed's "Lock Timeout" and "Fencing Tokens": settlers move sold units from each
//! stock's book to its ledger. A settler takes the book under a `DeadlineLock` lease, so a settler
//! that dies cannot block settlement forever; and it writes the ledger — a `Fenced` resource —
//! with its lease's token, so a settler that merely stalled past its lease cannot write after the
//! settler that took over: its late write is refused with `StaleToken`.
//!
//! One settler is made to stall on purpose (it sleeps — this is the example, not a test), with
//! a batch of AAPL units in hand. Without the fence its late write would settle those units a
//! second time; the conservation check at the end would catch it.

use std::fmt::Write;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use crate::market::{unit_id, STOCKS};
use fencelock::{DeadlineLock, Fenced, FencingToken, LeaseLost, StaleToken};

const UNITS_PER_STOCK: u32 = 2_000;
const BATCH: usize = 10;
const SETTLERS: usize = 4;
/// Long enough that a settler that is not stalled on purpose never outlives its lease.
const LEASE: Duration = Duration::from_millis(500);
/// The stalled settler's lease: it sleeps well past it.
const STALLED_LEASE: Duration = Duration::from_millis(20);

/// Sold units waiting for settlement.
struct Book {
    unsettled: Vec<u32>,
}

/// Where settled units are recorded, in the order they were settled.
#[derive(Default)]
struct Ledger {
    settled: Vec<u32>,
    batches: u64,
}

/// What the stalled settler saw.
struct Stall {
    token: FencingToken,
    slept: Duration,
    refused: Result<(), StaleToken>,
    lost: Result<(), LeaseLost>,
}

pub fn run() -> Result<String, String> {
    let books: Vec<DeadlineLock<Book>> = (0..STOCKS.len())
        .map(|stock| {
            DeadlineLock::new(Book {
                unsettled: (0..UNITS_PER_STOCK).map(|n| unit_id(stock, n)).collect(),
            })
        })
        .collect();
    let ledgers: Vec<Fenced<Ledger>> = STOCKS.iter().map(|_| Fenced::default()).collect();
    let start = Barrier::new(SETTLERS + 1);

    let started = Instant::now();
    let (stall, refusals) = thread::scope(|s| {
        let stalled = s.spawn(|| stall_on_aapl(&books[0], &ledgers[0], &start));
        let settlers: Vec<_> = (0..SETTLERS)
            .map(|settler| {
                let (books, ledgers, start) = (&books, &ledgers, &start);
                s.spawn(move || {
                    start.wait();
                    settle(books, ledgers, settler)
                })
            })
            .collect();
        let refusals: u64 = settlers
            .into_iter()
            .map(|t| t.join().expect("settler panicked"))
            .sum();
        (stalled.join().expect("stalled settler panicked"), refusals)
    });
    let elapsed = started.elapsed();

    let mut summary = String::new();
    for (stock, ((book, ledger), symbol)) in books.into_iter().zip(ledgers).zip(STOCKS).enumerate()
    {
        let highest = ledger.highest();
        let ledger = ledger.into_inner();
        let left = book.into_inner().unsettled;
        let mut seen = ledger.settled.clone();
        seen.extend(&left);
        seen.sort_unstable();
        let expected: Vec<u32> = (0..UNITS_PER_STOCK).map(|n| unit_id(stock, n)).collect();
        if seen != expected {
            return Err(format!(
                "{symbol}: {} unit records for {UNITS_PER_STOCK} units (lost or settled twice)",
                seen.len()
            ));
        }
        if !left.is_empty() {
            return Err(format!("{symbol}: {} units never settled", left.len()));
        }
        writeln!(
            summary,
            "  {symbol}: {:>5} units settled in {:>3} batches, ledger at token {highest}",
            ledger.settled.len(),
            ledger.batches
        )
        .unwrap();
    }

    let Stall {
        token,
        slept,
        refused,
        lost,
    } = stall;
    let Err(refused) = refused else {
        return Err(format!(
            "AAPL: the stalled settler's late write (token {token}) was admitted"
        ));
    };
    if refusals != 0 {
        return Err(format!(
            "{refusals} writes refused from settlers that never stalled"
        ));
    }
    writeln!(
        summary,
        "  AAPL: a settler stalled {slept:.0?} holding a {STALLED_LEASE:?} lease (token {token}); \
         token {} took over; its late write was refused: {refused}",
        token.get() + 1
    )
    .unwrap();
    if let Err(lost) = lost {
        writeln!(summary, "  and its lease said so too: {lost}").unwrap();
    }
    write!(
        summary,
        "  {} units settled by {SETTLERS} settlers in {elapsed:.2?}, each exactly once",
        UNITS_PER_STOCK as usize * STOCKS.len()
    )
    .unwrap();
    Ok(summary)
}

/// The stalled settler: takes AAPL's book with a short lease and reads a batch, lets the others
/// start, then stalls (sleeps) until its lease has run out and a newer token has written the
/// ledger — and only then writes its batch, with its old token.
fn stall_on_aapl(book: &DeadlineLock<Book>, ledger: &Fenced<Ledger>, start: &Barrier) -> Stall {
    let mut lease = book.acquire(STALLED_LEASE);
    let token = lease.token();
    let batch: Vec<u32> = lease
        .with(|book| book.unsettled.iter().rev().take(BATCH).copied().collect())
        .expect("a fresh lease");
    start.wait();

    let stalled = Instant::now();
    while lease.is_valid() || ledger.highest() <= token {
        if stalled.elapsed() > Duration::from_secs(1) {
            break; // nobody took over: the late write below is then admitted, and reported
        }
        thread::sleep(Duration::from_millis(2));
    }
    let slept = stalled.elapsed();

    let refused = ledger.write(token, |ledger| {
        ledger.settled.extend(&batch);
        ledger.batches += 1;
    });
    let lost = lease.with_mut(|book| {
        let keep = book.unsettled.len().saturating_sub(BATCH);
        book.unsettled.truncate(keep);
    });
    Stall {
        token,
        slept,
        refused,
        lost,
    }
}

/// A settler that never stalls: settles batches from every stock, starting with its own, until
/// every book is empty. Returns how many of its writes were refused (none should be).
fn settle(books: &[DeadlineLock<Book>], ledgers: &[Fenced<Ledger>], settler: usize) -> u64 {
    let mut refused = 0;
    let mut empty = vec![false; books.len()];
    let mut stock = settler % books.len();
    while empty.contains(&false) {
        stock = (stock + 1) % books.len();
        if empty[stock] {
            continue;
        }
        let mut lease = books[stock].acquire(LEASE);
        let Ok(batch) = lease.with(|book| {
            let batch: Vec<u32> = book.unsettled.iter().rev().take(BATCH).copied().collect();
            batch
        }) else {
            continue; // the lease ended before we got to read: try again
        };
        if batch.is_empty() {
            empty[stock] = true;
            continue;
        }
        let written = ledgers[stock].write(lease.token(), |ledger| {
            ledger.settled.extend(&batch);
            ledger.batches += 1;
        });
        if written.is_err() {
            refused += 1;
            continue;
        }
        let _ = lease.with_mut(|book| {
            let keep = book.unsettled.len() - batch.len();
            book.unsettled.truncate(keep);
        });
    }
    refused
}
