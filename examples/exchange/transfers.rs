//! Step 2, the seed's "Deadlocks": a trade moves cash one way and units the other between two
//! traders' accounts, each account behind its own lock. Every trade names its buyer first, so
//! while one thread locks {A, B} another locks {B, A} — the seed's two threads that hang forever.
//! Taken with `lock_all`, both lock in one global order and every trade completes. A trader
//! picked as both sides names one account twice: `lock_all` refuses it with `SameLock` instead of
//! spinning on a lock its own thread holds. At the end, the cash and the units of every stock
//! across all accounts must be what they were at the start.

use std::fmt::Write;
use std::thread;
use std::time::Instant;

use crossbeam_utils::CachePadded;
use fencelock::{lock_all, SameLock, SpinLock};

use crate::market::STOCKS;
use crate::rng::Rng;

const TRADERS: usize = 6;
const THREADS: usize = 4;
const TRADES_PER_THREAD: usize = 250_000;
const OPENING_CASH: i64 = 1_000_000;
const OPENING_UNITS: u32 = 500;

/// One trader's account: cash and units of each stock.
struct Account {
    cash: i64,
    units: [u32; STOCKS.len()],
}

/// What one thread did.
#[derive(Default)]
struct Tally {
    trades: u64,
    /// Trades not made: the seller lacked the units or the buyer the cash.
    declined: u64,
    /// Trades naming one trader on both sides, refused by `lock_all`.
    self_trades: u64,
}

pub fn run() -> Result<String, String> {
    let accounts: Vec<CachePadded<SpinLock<Account>>> = (0..TRADERS)
        .map(|_| {
            CachePadded::new(SpinLock::new(Account {
                cash: OPENING_CASH,
                units: [OPENING_UNITS; STOCKS.len()],
            }))
        })
        .collect();

    let started = Instant::now();
    let tallies: Vec<Result<Tally, String>> = thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let accounts = &accounts;
                s.spawn(move || trade(accounts, t))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| "a trading thread panicked".to_string())?
            })
            .collect()
    });
    let elapsed = started.elapsed();
    let mut total = Tally::default();
    for tally in tallies {
        let tally = tally?;
        total.trades += tally.trades;
        total.declined += tally.declined;
        total.self_trades += tally.self_trades;
    }

    // Conservation: the cash and each stock's units, summed over every account.
    let mut cash = 0_i64;
    let mut units = [0_u64; STOCKS.len()];
    for account in &accounts {
        let account = account.lock();
        if account.cash < 0 {
            return Err(format!("an account went negative: {}", account.cash));
        }
        cash += account.cash;
        for (sum, held) in units.iter_mut().zip(account.units) {
            *sum += u64::from(held);
        }
    }
    let opening_cash = OPENING_CASH * TRADERS as i64;
    if cash != opening_cash {
        return Err(format!(
            "cash {cash} across accounts, {opening_cash} at the opening"
        ));
    }
    let opening_units = u64::from(OPENING_UNITS) * TRADERS as u64;
    for (symbol, held) in STOCKS.iter().zip(units) {
        if held != opening_units {
            return Err(format!(
                "{symbol}: {held} units across accounts, {opening_units} at the opening"
            ));
        }
    }

    let mut summary = String::new();
    writeln!(
        summary,
        "  {} trades between {TRADERS} accounts ({} declined for lack of cash or units, {} \
         self-trades refused as SameLock)",
        total.trades, total.declined, total.self_trades
    )
    .unwrap();
    write!(
        summary,
        "  cash {cash} and {opening_units} units of each stock, as at the opening; {THREADS} threads \
         in {elapsed:.2?}: {:.1} M trades/s",
        total.trades as f64 / elapsed.as_secs_f64() / 1e6
    )
    .unwrap();
    Ok(summary)
}

/// One thread's trades: a random buyer, seller, stock, quantity and price each time.
fn trade(accounts: &[CachePadded<SpinLock<Account>>], thread: usize) -> Result<Tally, String> {
    let mut rng = Rng::new(thread as u64 + 101);
    let mut tally = Tally::default();
    for _ in 0..TRADES_PER_THREAD {
        let buyer = rng.below(TRADERS);
        let seller = rng.below(TRADERS);
        let stock = rng.below(STOCKS.len());
        let quantity = 1 + rng.below(5) as u32;
        let price = 90 + rng.below(21) as i64;

        // Buyer first: {A, B} here, {B, A} in the thread that drew the opposite pair.
        let [mut buyer, mut seller] = match lock_all([&*accounts[buyer], &*accounts[seller]]) {
            Ok(both) => both,
            Err(SameLock {
                first: 0,
                second: 1,
            }) => {
                tally.self_trades += 1;
                continue;
            }
            Err(other) => return Err(format!("unexpected {other}")),
        };
        let cost = price * i64::from(quantity);
        if seller.units[stock] < quantity || buyer.cash < cost {
            tally.declined += 1;
            continue;
        }
        seller.units[stock] -= quantity;
        buyer.units[stock] += quantity;
        buyer.cash -= cost;
        seller.cash += cost;
        tally.trades += 1;
    }
    Ok(tally)
}
