#!/usr/bin/env bash
# docs/results.md, ERD study: on the ring (2-D) and a 16-D mixture (configs/toy/mix16.json),
# train with and without loss weighting (linear path: none, ERD-rms, Min-SNR; GVP path: none,
# ERD-l1) a monolithic mlp-128 and three CBS experts on the knots of that monolithic model
# (each expert S steps, the paper's protocol). Reports per run
# the excess loss over the exact Bayes floor per time bin (`cbs loss-floor`), sample quality
# (`cbs eval-gmm`) and the knots. Finished runs are kept (rerun to resume).
#   scripts/erd_study.sh [OUT_DIR]     (≈ 25 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/erd-study}
S=${S:-4000}
NUM=${NUM:-10000}
cargo build --release -q -p cbs-cli
CBS=target/release/cbs
mkdir -p "$OUT"
summary="$OUT/summary.tsv"
printf 'data\tpath/weighting\tmodel\tknots\tmean_log_likelihood\tsliced_w2\texcess_per_bin\n' > "$summary"
done_run() { [ -f "$1/checkpoints/latest" ] && [ "$(sed -n 's/.*"step": *\([0-9]*\).*/\1/p' "$1/metrics.jsonl" | tail -1)" = "$2" ]; }
excess() { # run dir → the excess column of loss-floor, comma separated
  $CBS loss-floor "$1" --last 10 --points 2000 --csv "$1/loss-floor.csv" > /dev/null
  awk -F, 'NR > 1 { printf "%s%s", (NR > 2 ? "," : ""), ($5 == "" ? "-" : sprintf("%.3f", $5)) }' "$1/loss-floor.csv"
}
quality() { # sample dir, gmm → "mean_ll<TAB>sw2"
  local j; j=$($CBS eval-gmm "$1" --gmm "$2" --json --seed 100)
  printf '%s\t%s' "$(echo "$j" | sed -n 's/.*"mean_log_likelihood": \(.*\),/\1/p')" \
    "$(echo "$j" | sed -n 's/.*"sliced_w2": \(.*\),/\1/p')"
}
for data in ring8 mix16; do
  gmm=configs/toy/$data.json
  # Arms: path/weighting. On the linear path erd_l1 is the plain loss, so ERD is erd_rms there;
  # on the GVP path erd_l1 is (π/2)·sin(πt).
  for arm in linear/none linear/erd_rms linear/min_snr gvp/none gvp/erd_l1; do
    p=${arm%/*}; w=${arm#*/}
    d="$OUT/$data-$p-$w"; mkdir -p "$d"
    cfg="$d/config.toml"
    sed -e "s|^gmm = .*|gmm = \"$gmm\"|" \
      -e "s/^steps = .*/steps = $S\nloss_weighting = \"$w\"\npath = \"$p\"/" \
      configs/toy/ring8-mlp.toml > "$cfg"
    done_run "$d/mono" "$S" || { rm -rf "$d/mono"; $CBS train-aux --config "$cfg" --out "$d/mono" 2>/dev/null; }
    [ -f "$d/splits/splits.toml" ] || $CBS estimate-splits --aux "$d/mono" --experts 3 \
      --trajectories 2048 --bootstrap 0 --out "$d/splits" > /dev/null 2>&1
    knots=$(awk '/^knots/ { on = 1 } on { printf "%s", $0 } on && /\]/ { exit }' \
      "$d/splits/splits.toml" | tr -d ' []' | sed 's/^knots=//; s/,$//' | \
      awk -F, '{ for (i = 1; i <= NF; i++) printf "%s%.3f", (i > 1 ? "," : ""), $i }')
    [ -f "$d/experts/expert-2/checkpoints/latest" ] || { rm -rf "$d/experts"; $CBS train-experts \
      --splits "$d/splits/splits.toml" --config "$cfg" --out "$d/experts" 2>/dev/null; }
    for m in mono experts; do
      src=(--checkpoint "$d/mono"); [ $m = experts ] && src=(--experts "$d/experts")
      [ -f "$d/$m-samples/samples.npz" ] || $CBS sample "${src[@]}" --num "$NUM" --batch "$NUM" \
        --seed 7 --out "$d/$m-samples" 2>/dev/null
      if [ $m = mono ]; then ex=$(excess "$d/mono"); else
        ex=$(for i in 0 1 2; do excess "$d/experts/expert-$i"; echo -n " "; done | \
          awk '{ n = split($0, parts, " "); for (b = 1; b <= 10; b++) { v = "-";
            for (p = 1; p <= n; p++) { split(parts[p], x, ","); if (x[b] != "-") v = x[b] }
            printf "%s%s", (b > 1 ? "," : ""), v } }'); fi
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$data" "$arm" "$m" "$knots" \
        "$(quality "$d/$m-samples" "$gmm")" "$ex" >> "$summary"
    done
  done
done
column -t -s $'\t' "$summary"
