//! Placeholder, replaced by the SpinLock benchmarks.
fn main() {}
