#!/usr/bin/env bash
# The opt-in long fuzz run (docs/fuzzing.md): every reader, 10^6 inputs each by default, release
# build, results in target/fuzz/ (summary.txt, log.txt, failing inputs under <target>/).
#   INPUTS=100000 SEED=7 TARGETS="npy npz" scripts/fuzz.sh     # overrides
# Exit status: that of cbs-fuzz (0: no failure; non-zero: a failure, input saved and printed).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
INPUTS=${INPUTS:-1000000}
SEED=${SEED:-0}
TARGETS=${TARGETS:-all}
OUT=${OUT:-target/fuzz}
mkdir -p "$OUT"
cargo build --release -p cbs-fuzz
args=()
for t in $TARGETS; do args+=(--target "$t"); done
cmd=(target/release/cbs-fuzz "${args[@]}" --inputs "$INPUTS" --seed "$SEED" --out "$OUT")
echo "${cmd[*]}" | tee "$OUT/command.txt"
start=$(date +%s)
status=0
"${cmd[@]}" 2> >(tee "$OUT/log.txt" >&2) | tee "$OUT/summary.txt" || status=$?
echo "wall time: $(( $(date +%s) - start )) s, exit status $status" | tee -a "$OUT/summary.txt"
exit "$status"
