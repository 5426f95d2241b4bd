#!/usr/bin/env bash
# docs/results.md, first result: on the ring8 mixture with the MLP backbone, compare
#   monolithic (one mlp-128, S steps) / uniform N=3 / CBS N=3 (three mlp-128, S/3 steps each:
#   the same total training steps), and the paper's protocol where every expert gets the
#   baseline's full schedule (S steps each: `uniform-full`, `cbs-full`, 3× the compute),
# over 3 seeds: mean log-likelihood under the true mixture and sliced W2 to true samples.
# CBS knots come from a separate small auxiliary model (mlp-64, 10% of the data, 2000 steps).
#   scripts/ring8_experiment.sh [OUT_DIR]     (≈ 10 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/ring8-experiment}
S=${S:-6000}
NUM=${NUM:-10000}
cargo build --release -q -p cbs-cli
CBS=target/release/cbs
CFG=configs/toy/ring8-mlp.toml
GMM=configs/toy/ring8.json
rm -rf "$OUT"; mkdir -p "$OUT"
AUXCFG="$OUT/aux.toml"
sed -e 's/^preset = .*/preset = "mlp-64"/' -e 's/^num_samples = .*/num_samples = 6554/' \
  -e 's/^steps = .*/steps = 2000/' "$CFG" > "$AUXCFG"
results="$OUT/results.tsv"
printf 'method\tseed\tmean_log_likelihood\tsliced_w2\n' > "$results"
evaluate() { # method seed sample_dir
  local j; j=$($CBS eval-gmm "$3" --gmm "$GMM" --json --seed 100)
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" \
    "$(echo "$j" | sed -n 's/.*"mean_log_likelihood": \(.*\),/\1/p')" \
    "$(echo "$j" | sed -n 's/.*"sliced_w2": \(.*\),/\1/p')" >> "$results"
}
for seed in 0 1 2; do
  d="$OUT/seed$seed"
  $CBS train-aux --config "$AUXCFG" --seed "$seed" --out "$d/aux" 2>/dev/null
  $CBS estimate-splits --aux "$d/aux" --experts 3 --trajectories 4096 --seed "$seed" \
    --out "$d/splits" 2>/dev/null | grep '^knots' | sed "s/^/seed $seed: /" 
  $CBS train-aux --config "$CFG" --seed "$seed" --steps "$S" --out "$d/mono" 2>/dev/null
  $CBS sample --checkpoint "$d/mono" --num "$NUM" --batch "$NUM" --seed 7 --out "$d/mono/samples" 2>/dev/null
  evaluate monolithic "$seed" "$d/mono/samples"
  for m in uniform cbs uniform-full cbs-full; do
    case $m in uniform*) src=(--uniform 3) ;; *) src=(--splits "$d/splits/splits.toml") ;; esac
    case $m in *-full) steps=$S ;; *) steps=$((S / 3)) ;; esac
    $CBS train-experts "${src[@]}" --config "$CFG" --seed "$seed" --steps "$steps" --out "$d/$m" 2>/dev/null
    $CBS sample --experts "$d/$m" --num "$NUM" --batch "$NUM" --seed 7 --out "$d/$m/samples" 2>/dev/null
    evaluate "$m" "$seed" "$d/$m/samples"
  done
done
echo
awk -F'\t' 'NR > 1 { n[$1]++; a[$1] += $3; aa[$1] += $3 * $3; b[$1] += $4; bb[$1] += $4 * $4 }
  END {
    printf "| method | mean log-likelihood (↑) | sliced W2 (↓) |\n| --- | --- | --- |\n";
    split("monolithic uniform cbs uniform-full cbs-full", order, " ");
    for (i = 1; i <= 5; i++) { m = order[i]; k = n[m];
      ma = a[m] / k; sa = sqrt((aa[m] - k * ma * ma) / (k - 1));
      mb = b[m] / k; sb = sqrt((bb[m] - k * mb * mb) / (k - 1));
      printf "| %s | %.4f ± %.4f | %.4f ± %.4f |\n", m, ma, sa, mb, sb } }' "$results"
echo "per-run figures: $results"
