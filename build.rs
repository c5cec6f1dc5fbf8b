//! Adds an rpath to libtorch's lib folder so `target/*/ekphrasis` and the test binaries
//! run without `LD_LIBRARY_PATH`. torch-sys (links = "tch") tells us where it linked.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        // libtorch_cuda is only pulled in when a symbol needs it; force it in when it
        // exists, so the same build runs on CUDA machines.
        if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
