//! Many threads each moving money between a random 2-4 of a few accounts, every transfer taking
//! its accounts with `lock_all` in a random order: the run finishes (no deadlock) and the total is
//! unchanged (no lost update). Shrunk under Miri.
#![cfg(not(loom))]

use std::thread;

use fencelock::{lock_all, lock_slice, SameLock, SpinLock};

const ACCOUNTS: usize = 10;
const OPENING_BALANCE: i64 = 1_000;

/// xorshift64: a deterministic stream per thread.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    /// `K` distinct accounts in random order.
    fn distinct<const K: usize>(&mut self) -> [usize; K] {
        let mut chosen = [usize::MAX; K];
        for k in 0..K {
            chosen[k] = loop {
                let account = self.below(ACCOUNTS);
                if !chosen[..k].contains(&account) {
                    break account;
                }
            };
        }
        chosen
    }
}

/// Moves `amount` from the first account to each of the others, in turn (the first pays all).
fn pay_around(balances: &mut [&mut i64], amount: i64) {
    for k in 1..balances.len() {
        *balances[0] -= amount;
        *balances[k] += amount;
    }
}

#[test]
fn random_transfers_finish_and_conserve_money() {
    let (threads, rounds) = if cfg!(miri) { (3, 30) } else { (8, 20_000) };
    let accounts: Vec<SpinLock<i64>> = (0..ACCOUNTS)
        .map(|_| SpinLock::new(OPENING_BALANCE))
        .collect();
    let refused: usize = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let accounts = &accounts;
                s.spawn(move || {
                    let mut rng = Rng((t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
                    let mut refused = 0;
                    for round in 0..rounds {
                        let amount = rng.below(50) as i64;
                        match 2 + rng.below(3) {
                            2 => {
                                let [a, b] = rng.distinct::<2>().map(|i| &accounts[i]);
                                let [mut a, mut b] = lock_all([a, b]).unwrap();
                                pay_around(&mut [&mut *a, &mut *b], amount);
                            }
                            3 => {
                                let [a, b, c] = rng.distinct::<3>().map(|i| &accounts[i]);
                                let (mut a, mut b, mut c) = lock_all((a, b, c)).unwrap();
                                pay_around(&mut [&mut *a, &mut *b, &mut *c], amount);
                            }
                            _ => {
                                let chosen: Vec<&SpinLock<i64>> =
                                    rng.distinct::<4>().iter().map(|&i| &accounts[i]).collect();
                                let mut guards = lock_slice(&chosen).unwrap();
                                let mut balances: Vec<&mut i64> =
                                    guards.iter_mut().map(|g| &mut **g).collect();
                                pay_around(&mut balances, amount);
                            }
                        }
                        // Now and then a request naming one account twice: refused, harmlessly.
                        if round % 97 == 0 {
                            let [a, b] = rng.distinct::<2>();
                            let same = lock_all([&accounts[a], &accounts[b], &accounts[a]]);
                            assert_eq!(
                                same.err(),
                                Some(SameLock {
                                    first: 0,
                                    second: 2
                                })
                            );
                            refused += 1;
                        }
                    }
                    refused
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert!(refused > 0);
    let total: i64 = accounts.iter().map(|a| *a.lock()).sum();
    assert_eq!(total, OPENING_BALANCE * ACCOUNTS as i64);
    assert!(accounts.iter().all(|a| !a.is_locked()));
}
