#!/usr/bin/env bash
# docs/results.md §3, "knots from differently trained auxiliary models" (paper §4.5): the CBS
# knots (path acceleration, N = 3, 128 trajectories, 90% bootstrap intervals) of four
# auxiliary models on Fashion-MNIST — the default (sit-nano-4, 10% of the data, 400 steps),
# a quarter of the steps, 2% of the data, and the experts' size (sit-mini-4) — per seed.
# Finished runs are kept (rerun to resume). Writes OUT/knots.tsv.
#   scripts/aux_knots.sh [OUT_DIR]     (≈ 15 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/aux-knots}
SEEDS=${SEEDS:-0 1 2}
cargo build --release -q -p cbs-cli
CBS=target/release/cbs
mkdir -p "$OUT"
tsv="$OUT/knots.tsv"
printf 'aux\tseed\tknots\tintervals\n' > "$tsv"
for variant in default short less-data larger; do
  cfg="$OUT/aux-$variant.toml"
  case $variant in
    default) cp configs/fashion-aux.toml "$cfg" ;;
    short) sed 's/^steps = 400/steps = 100/' configs/fashion-aux.toml > "$cfg" ;;
    less-data) sed 's/^data_fraction = 0.1/data_fraction = 0.02/' configs/fashion-aux.toml > "$cfg" ;;
    larger) sed 's/^preset = "sit-nano-4".*/preset = "sit-mini-4"/' configs/fashion-aux.toml > "$cfg" ;;
  esac
  for seed in $SEEDS; do
    run="$OUT/$variant-seed$seed"
    if [ ! -f "$run/splits/splits.toml" ]; then
      resume=""; [ -f "$run/aux/checkpoints/latest" ] && resume="--resume"
      $CBS train-aux --config "$cfg" --seed "$seed" --out "$run/aux" $resume
      rm -rf "$run/splits"
      $CBS estimate-splits --aux "$run/aux" --experts 3 --trajectories 128 --batch 128 \
        --seed "$seed" --out "$run/splits"
    fi
    knots=$(awk '/^knots = \[/{on=1; next} on && /^\]/{on=0} on {gsub(/[ ,]/, ""); printf "%s%.4f", (n++ ? "," : ""), $0}' \
      "$run/splits/splits.toml")
    iv=$(awk -F' = ' '/^lo = /{lo=$2} /^hi = /{printf "%s[%.4f,%.4f]", (n++ ? " " : ""), lo, $2}' \
      "$run/splits/splits.toml")
    printf '%s\t%s\t%s\t%s\n' "$variant" "$seed" "$knots" "$iv" >> "$tsv"
  done
done
column -t -s $'\t' "$tsv"
