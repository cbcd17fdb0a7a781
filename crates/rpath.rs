// Embed LibTorch's library directory as an rpath in every binary and test of
// the crate that uses this build script, so they run without LD_LIBRARY_PATH.
// torch-sys passes the directory to crates that depend on it directly as
// DEP_TCH_LIBTORCH_LIB.
//
// Also keep libtorch_cuda as a dependency: nothing references its symbols, so
// the linker's --as-needed would drop it and LibTorch would see no CUDA device.
//
// `pub` so that a crate with its own build script (the runner's) can load this
// file as a module and call it.
pub fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
