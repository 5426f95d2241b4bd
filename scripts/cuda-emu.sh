#!/usr/bin/env bash
# Runs the attention CUDA kernels' source (crates/cbs-kernels/src/ops/attention.cu) on the CPU
# under a thread-per-CUDA-thread emulator (crates/cbs-kernels/tests/cuda_emu) against an f64
# reference: the plain FMA path and, with -DCBS_EMU_WMMA, the WMMA tensor-core path. It checks
# the kernels' indexing, tiling, tails and shared-memory sizes; it cannot check what only real
# hardware shows (memory ordering, the hardware's WMMA fragment layout, speed).
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
