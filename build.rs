//! Two jobs. (1) An rpath to libtorch's lib folder, so `target/*/ekphrasis` and the test
//! binaries run without `LD_LIBRARY_PATH`; torch-sys (links = "tch") says where it linked.
//! (2) The c10d shim (`src/distributed/*.cpp`): the data-parallel engine is libtorch's own
//! (Gloo on CPU, NCCL on CUDA), reached through a small C ABI compiled here against the
//! same libtorch, with Gloo's interface headers from `third_party/gloo`.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=src/distributed/c10d_shim.cpp");
    println!("cargo:rerun-if-changed=src/distributed/c10d_nccl.cpp");
    println!("cargo:rerun-if-changed=third_party/gloo");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    let lib = PathBuf::from(lib);
    let cuda = lib.join("libtorch_cuda.so").exists();
    // libtorch_cuda is only pulled in when a symbol needs it; force it in when it
    // exists, so the same build runs on CUDA machines.
    if cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    build_shim(&lib, cuda);
}

/// The CUDA runtime and NCCL headers a pip torch wheel sits beside (`nvidia/*/include`),
/// or those of a system CUDA (`CUDA_HOME`, /usr/local/cuda); None when any is missing.
/// The wheel's own CUDA headers lack `crt/host_config.h` and `nv/target` (pip packages
/// nvidia-cuda-crt and nvidia-cuda-cccl; a CUDA toolkit has both), so a machine without
/// CUDA usually builds without NCCL.
fn cuda_includes(lib: &Path) -> Option<Vec<PathBuf>> {
    let site = lib.parent()?.parent()?; // site-packages/torch/lib → site-packages
    let nvidia = site.join("nvidia");
    let mut runtime: Vec<PathBuf> = std::fs::read_dir(&nvidia)
        .map(|d| d.flatten().map(|e| e.path().join("include")).collect())
        .unwrap_or_default();
    if let Ok(home) = std::env::var("CUDA_HOME") {
        runtime.push(PathBuf::from(home).join("include"));
    }
    runtime.push(PathBuf::from("/usr/local/cuda/include"));
    runtime.retain(|p| p.is_dir());
    let has = |name: &str| runtime.iter().any(|p| p.join(name).exists());
    let complete = [
        "cuda_runtime_api.h",
        "crt/host_config.h",
        "nv/target",
        "nccl.h",
    ];
    complete.iter().all(|h| has(h)).then_some(runtime)
}

fn build_shim(lib: &Path, cuda: bool) {
    let include = lib.parent().map(|t| t.join("include")).unwrap_or_default();
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .opt_level(1)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include("third_party/gloo")
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .define("USE_C10D_GLOO", None)
        .file("src/distributed/c10d_shim.cpp");
    let nccl = if cuda { cuda_includes(lib) } else { None };
    if let Some(dirs) = &nccl {
        build
            .define("USE_C10D_NCCL", None)
            .define("EKPHRASIS_NCCL", None)
            .includes(dirs)
            .file("src/distributed/c10d_nccl.cpp");
        println!("cargo:rustc-cfg=ekphrasis_nccl");
    }
    println!("cargo::rustc-check-cfg=cfg(ekphrasis_nccl)");
    build.compile("ekphrasis_c10d");
}
