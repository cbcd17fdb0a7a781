// The runner's build script:
// - links every plugin crate: `$OUT_DIR/plugins.rs` gets `use <crate> as _;`
//   for each dependency whose Cargo.toml declares
//   `[package.metadata.brain-rs] plugin = true` (see plugins.rs);
// - embeds LibTorch's rpath and keeps libtorch_cuda, like every crate (../rpath.rs).

#[path = "plugins.rs"]
mod plugins;
#[path = "../rpath.rs"]
mod rpath;

use std::path::PathBuf;

fn main() {
    rpath::main();

    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let found = match plugins::discover(&dir.join("Cargo.toml")) {
        Ok(found) => found,
        Err(e) => panic!("discovering plugin crates: {e}"),
    };
    for path in &found.read {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for (name, member) in &found.unlinked {
        println!(
            "cargo:warning=plugin crate `{name}` ({}) is not a dependency of the runner, so its \
             plugins are not registered: add `{name} = {{ path = \"…\" }}` to crates/runner/Cargo.toml",
            member.display()
        );
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("plugins.rs");
    std::fs::write(&out, found.source).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
