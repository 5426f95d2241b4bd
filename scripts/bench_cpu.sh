#!/usr/bin/env bash
# CPU training-step benchmark, cbs vs the PyTorch twin, side by side on this machine with the
# same thread count. Opt-in (installs torch into .venv-bench from PyPI, a large download;
# not part of CI).
#   scripts/bench_cpu.sh [MODEL] [BATCH] [THREADS]     default: sit-s-4 32 2 (32x32x3)
# MODEL: a SiT or JiT preset (sit-s-4, sit-mini-4, jit-mini-4, jit-b-4, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-sit-s-4}; BATCH=${2:-32}; THREADS=${3:-2}; STEPS=${STEPS:-5}
ARGS=(--model "$MODEL" --image-size 32 --in-channels 3 --batch "$BATCH" --steps "$STEPS" --warmup 2)
# PYTHON=path/to/python with torch installed skips the venv (e.g. target/parity-venv/bin/python).
PY=${PYTHON:-.venv-bench/bin/python}
if [ -z "${PYTHON:-}" ] && [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q torch
fi
cargo build --release -q -p cbs-cli
cbs_out=$(RAYON_NUM_THREADS=$THREADS target/release/cbs bench train "${ARGS[@]}")
torch_out=$(OMP_NUM_THREADS=$THREADS "$PY" benches/pytorch_twin.py train \
  "${ARGS[@]}" --threads "$THREADS")
echo "$cbs_out"; echo "$torch_out"
# Both sides print the network's element count: a mismatch means they are not the same model.
cp=$(echo "$cbs_out" | sed -n 's/.* params=\([0-9]*\) .*/\1/p')
pp=$(echo "$torch_out" | sed -n 's/.* params=\([0-9]*\) .*/\1/p')
if [ "$cp" != "$pp" ]; then
  echo "error: cbs builds $cp parameters, the PyTorch twin $pp: not the same network" >&2
  exit 1
fi
c=$(echo "$cbs_out" | sed -n 's/^median_step_ms=//p')
p=$(echo "$torch_out" | sed -n 's/^median_step_ms=//p')
awk -v c="$c" -v p="$p" 'BEGIN { printf "step time cbs / pytorch = %.2f (%.1f ms vs %.1f ms)\n", c / p, c, p }'
