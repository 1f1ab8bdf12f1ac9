//! What every step trades: the listed stocks and their numbered units.

/// The stocks listed on the exchange.
pub const STOCKS: [&str; 4] = ["AAPL", "MSFT", "GOOG", "AMZN"];

/// A unit's id says which stock it belongs to: stock `s`'s units are `s * 1_000_000 + n`.
pub fn unit_id(stock: usize, n: u32) -> u32 {
    stock as u32 * 1_000_000 + n
}

/// The price a unit sold at, in cents: made up, but fixed by the unit's id (the trading step
/// records no prices), so that the proceeds can be checked.
pub fn price_cents(unit: u32) -> u64 {
    10_000 + u64::from(unit % 997)
}
