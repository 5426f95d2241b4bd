#!/usr/bin/env bash
# The main job: the whole CBS pipeline on Fashion-MNIST, on the CPU.
#   train-aux → estimate-splits → train-experts → sample → eval-fid (classifier features)
# Output: runs/pipeline/{aux, splits/{splits.toml,monitor.png,monitor.csv}, experts,
#   samples/{grid.png,samples.npz,classifier-fid.json}, classifier/{...,real-data-fid.json}}
#   RUN=runs/other EXPERTS=4 EXPERT_STEPS=800 NUM=1000 scripts/pipeline.sh   # overrides
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
RUN=${RUN:-runs/pipeline}
EXPERTS=${EXPERTS:-3}
NUM=${NUM:-500}
cargo build --release -p cbs-cli
CBS=target/release/cbs
if [ -e "$RUN" ]; then
  echo "$RUN exists; remove it or set RUN=another/dir" >&2
  exit 1
fi
$CBS train-aux --config configs/fashion-aux.toml --out "$RUN/aux"
$CBS estimate-splits --aux "$RUN/aux" --experts "$EXPERTS" --trajectories 128 --batch 128 \
  --out "$RUN/splits"
$CBS train-experts --splits "$RUN/splits/splits.toml" --config configs/fashion-experts.toml \
  ${EXPERT_STEPS:+--steps "$EXPERT_STEPS"} --out "$RUN/experts"
$CBS sample --experts "$RUN/experts" --num "$NUM" --steps 30 --solver heun --cfg-scale 3 \
  --nrow 10 --seed 0 --out "$RUN/samples"
# Sample quality without downloadable Inception weights: FID / IS / precision-recall in the
# feature space of a classifier trained here (NOT comparable with Inception FID), next to the
# same metrics for as many real training images (the floor at this sample size).
$CBS train-classifier --config configs/fashion-classifier.toml --real-sample "$NUM" \
  --out "$RUN/classifier"
FEATURES="classifier:$RUN/classifier"
$CBS eval-fid "$RUN/samples" "$RUN/classifier/reference.npz" --features "$FEATURES" --json \
  > "$RUN/samples/classifier-fid.json"
$CBS eval-fid "$RUN/classifier/train-sample.npz" "$RUN/classifier/reference.npz" \
  --features "$FEATURES" --json > "$RUN/classifier/real-data-fid.json"
echo "splits: $RUN/splits/splits.toml (plot: $RUN/splits/monitor.png)"
echo "samples: $RUN/samples/grid.png (one class per column), $RUN/samples/samples.npz"
echo "classifier-space FID of $NUM samples vs the test set (real data: in brackets):"
fid() { sed -n 's/^  "fid": \([0-9.]*\).*/\1/p' "$1"; }
echo "  FID $(fid "$RUN/samples/classifier-fid.json") [$(fid "$RUN/classifier/real-data-fid.json")]"
