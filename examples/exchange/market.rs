//! What every step trades: the listed stocks and their numbered units.

/// The stocks listed on the exchange.
pub const STOCKS: [&str; 4] = ["AAPL", "MSFT", "GOOG", "AMZN"];

/// A unit's id says which stock it belongs to: stock `s`'s units are `s * 1_000_000 + n`.
pub fn unit_id(stock: usize, n: u32) -> u32 {
    stock as u32 * 1_000_000 + n
}
