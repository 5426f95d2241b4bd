#!/usr/bin/env bash
# The test command: everything CI runs. Installs the test data if absent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# A fresh clone gains nothing from incremental caches, which would double the build on disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# rustfmt and clippy come with rustup's default profile; a minimal toolchain lacks them.
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
# The GPU verification script's own logic, on tiny settings on the CPU, with the binary the
# tests just built (so the script is tested before any GPU time is spent on it).
scripts/gpu-check.sh --device cpu --bin target/debug/cbs --out target/gpu-check-cpu
# The attention CUDA kernels' logic, emulated on the CPU (g++; no GPU, no CUDA toolkit).
scripts/cuda-emu.sh
# The `cuda` feature must compile (nvcc included) though no GPU is here to run it.
# CBS_SKIP_CUDA_BUILD=1 skips this step for a quick local run.
if [ "${CBS_SKIP_CUDA_BUILD:-0}" != 1 ]; then
  scripts/build-cuda.sh
fi
