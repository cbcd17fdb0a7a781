// Embed LibTorch's library directory as an rpath in every binary and test of
// the crate that uses this build script, so they run without LD_LIBRARY_PATH.
// torch-sys passes the directory to crates that depend on it directly as
// DEP_TCH_LIBTORCH_LIB.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
