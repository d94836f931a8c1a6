//! Links the `snapstore` executable as a fixed-address (non-PIE) program.
//!
//! Every command is a process start, and a position-independent
//! executable of this size has ~27 000 relocations for the dynamic loader
//! to apply and the pages they dirty to fault in, before `main`: about a
//! third of a `result` lookup's instructions. A fixed-address executable
//! has none. Shared libraries and the backend plugins stay
//! position-independent (and randomized); only the executable's own image
//! is at a fixed address. Set SNAPSTORE_PIE=1 to build a PIE instead.
fn main() {
    println!("cargo:rerun-if-env-changed=SNAPSTORE_PIE");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if linux_gnu && std::env::var_os("SNAPSTORE_PIE").is_none() {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
