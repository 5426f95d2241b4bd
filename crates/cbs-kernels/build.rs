//! With the `cuda` feature: each `src/ops/<op>.cu` compiled by nvcc to `$OUT_DIR/<op>.ptx`, which
//! the op's Rust side embeds (`include_str!`) and loads at first use. Without it: nothing.
//!
//! nvcc comes from `$CUDA_HOME/bin` (else `PATH`); the target is `sm_$CUDA_COMPUTE_CAP` (90 when
//! unset: no GPU is needed to build, so none is queried).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let ops = Path::new("src/ops");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(ops)
        .expect("src/ops is readable")
        .map(|e| e.expect("src/ops entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu" || e == "cuh"))
        .collect();
    sources.sort();
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let nvcc = nvcc();
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap = cap.trim().replace('.', "");
    if cap.is_empty() || !cap.chars().all(|c| c.is_ascii_alphanumeric()) {
        panic!("CUDA_COMPUTE_CAP={cap:?} is not a compute capability such as 90 or 80");
    }
    // All files at once: nvcc is single-threaded, and each file is independent.
    let jobs: Vec<_> = sources
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .map(|src| {
            let stem = src.file_stem().expect("a .cu file has a stem");
            let ptx = out.join(stem).with_extension("ptx");
            let child = Command::new(&nvcc)
                .arg(format!("-arch=sm_{cap}"))
                .args(["--ptx", "-O3", "-std=c++17", "-o"])
                .arg(&ptx)
                .arg(src)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
            (src.clone(), child)
        })
        .collect();
    let failed: Vec<String> = jobs
        .into_iter()
        .filter_map(|(src, mut child)| {
            let ok = child.wait().is_ok_and(|s| s.success());
            (!ok).then(|| src.display().to_string())
        })
        .collect();
    if !failed.is_empty() {
        panic!(
            "nvcc failed on {} (its errors are above)",
            failed.join(", ")
        );
    }
}

/// `$CUDA_HOME/bin/nvcc` when set, else `nvcc` from `PATH`; a clear error when neither runs.
fn nvcc() -> PathBuf {
    let nvcc = match std::env::var_os("CUDA_HOME") {
        Some(home) => Path::new(&home).join("bin").join("nvcc"),
        None => PathBuf::from("nvcc"),
    };
    match Command::new(&nvcc).arg("--version").output() {
        Ok(o) if o.status.success() => nvcc,
        _ => panic!(
            "the `cuda` feature needs nvcc: none runs as {} (set CUDA_HOME to a CUDA toolkit, or \
             put its bin/ on PATH; scripts/build-cuda.sh installs one)",
            nvcc.display()
        ),
    }
}
