//! Builds this package's copy of fencelock with `cfg(loom)`, and only this package's.
fn main() {
    println!("cargo:rustc-check-cfg=cfg(loom)");
    println!("cargo:rustc-cfg=loom");
}
