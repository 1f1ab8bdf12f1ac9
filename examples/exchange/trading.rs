//! Step 1, the seed's "Exclusive Locks": traders buy units from and sell them back to each
//! stock's book, and the book is a `SpinLock`. Every unit has an id; at the end every id must be
//! in exactly one place — a book or one trader's holdings.

use std::fmt::Write;
use std::thread;
use std::time::Instant;

use crossbeam_utils::CachePadded;
use fencelock::SpinLock;

use crate::market::{unit_id, STOCKS};
use crate::rng::Rng;

const UNITS_PER_STOCK: u32 = 1_000;
const TRADERS: usize = 8;
const TRADES_PER_TRADER: usize = 500_000;

/// One stock's order book: the units for sale, and how many trades went through it.
#[derive(Default)]
struct Book {
    for_sale: Vec<u32>,
    sold: u64,
    bought_back: u64,
}

pub fn run() -> Result<String, String> {
    // Padded so that two books never share a cache line: a trader on AAPL does not slow MSFT's.
    let books: Vec<CachePadded<SpinLock<Book>>> = (0..STOCKS.len())
        .map(|stock| {
            let for_sale = (0..UNITS_PER_STOCK).map(|n| unit_id(stock, n)).collect();
            CachePadded::new(SpinLock::new(Book {
                for_sale,
                ..Book::default()
            }))
        })
        .collect();

    let started = Instant::now();
    let holdings: Vec<Vec<Vec<u32>>> = thread::scope(|s| {
        let traders: Vec<_> = (0..TRADERS)
            .map(|trader| {
                let books = &books;
                s.spawn(move || trade(books, trader))
            })
            .collect();
        traders
            .into_iter()
            .map(|t| t.join().expect("trader panicked"))
            .collect()
    });
    let elapsed = started.elapsed();

    // Conservation: every unit is in exactly one place.
    let mut summary = String::new();
    let mut trades = 0;
    for (stock, (book, symbol)) in books.iter().zip(STOCKS).enumerate() {
        let book = book.lock();
        let mut seen: Vec<u32> = book.for_sale.clone();
        for trader in &holdings {
            seen.extend(&trader[stock]);
        }
        seen.sort_unstable();
        let expected: Vec<u32> = (0..UNITS_PER_STOCK).map(|n| unit_id(stock, n)).collect();
        if seen != expected {
            return Err(format!(
                "{symbol}: {} unit records for {UNITS_PER_STOCK} units (lost or sold twice)",
                seen.len()
            ));
        }
        trades += book.sold + book.bought_back;
        let held = UNITS_PER_STOCK as usize - book.for_sale.len();
        writeln!(
            summary,
            "  {symbol}: {:>7} sold, {:>7} bought back, {:>4} in the book, {:>4} held by traders",
            book.sold,
            book.bought_back,
            book.for_sale.len(),
            held
        )
        .unwrap();
    }
    write!(
        summary,
        "  {trades} trades by {TRADERS} traders in {:.2?}: {:.1} M trades/s",
        elapsed,
        trades as f64 / elapsed.as_secs_f64() / 1e6
    )
    .unwrap();
    Ok(summary)
}

/// One trader: buys or sells a unit of a random stock, `TRADES_PER_TRADER` times; returns the
/// units it holds at the end, per stock.
fn trade(books: &[CachePadded<SpinLock<Book>>], trader: usize) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(trader as u64 + 1);
    let mut held: Vec<Vec<u32>> = vec![Vec::new(); books.len()];
    for _ in 0..TRADES_PER_TRADER {
        let stock = rng.below(books.len());
        let sell = rng.below(2) == 0;
        if sell {
            if let Some(unit) = held[stock].pop() {
                let mut book = books[stock].lock();
                book.for_sale.push(unit);
                book.bought_back += 1;
            }
        } else {
            let mut book = books[stock].lock();
            if let Some(unit) = book.for_sale.pop() {
                book.sold += 1;
                drop(book);
                held[stock].push(unit);
            }
        }
    }
    held
}
