#!/usr/bin/env bash
# Runs CUDA kernels' source on the CPU under a thread-per-CUDA-thread emulator
# (crates/cbs-kernels/tests/cuda_emu) against host references:
# - attention.cu against an f64 attention: the plain FMA path and, with -DCBS_EMU_WMMA, the WMMA
#   tensor-core path;
# - optim.cu and mse.cu: the squared norm, the step control values, the AdamW/EMA passes reading
#   them (a refused step writes nothing), the loss and its backward.
# It checks the kernels' indexing, tiling, tails, reductions and shared-memory sizes; it cannot
# check what only real hardware shows (memory ordering, the hardware's WMMA fragment layout,
# speed).
set -euo pipefail
cd "$(dirname "$0")/../crates/cbs-kernels/tests/cuda_emu"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for variant in fma wmma; do
  flags=()
  [ "$variant" = wmma ] && flags=(-DCBS_EMU_WMMA)
  g++ -std=c++20 -O2 -pthread "${flags[@]}" -Iinclude -I../../src/ops attention_emu.cpp \
    -o "$out/attention_emu_$variant"
  echo "attention.cu on the CPU emulator ($variant):"
  "$out/attention_emu_$variant"
done
g++ -std=c++20 -O2 -pthread -Iinclude -I../../src/ops optim_emu.cpp -o "$out/optim_emu"
"$out/optim_emu"
