//! Nothing to build: this script exists for its build-dependency on syn
//! (see Cargo.toml).
fn main() {}
