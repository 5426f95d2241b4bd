#!/usr/bin/env bash
# The main job: the whole CBS pipeline on Fashion-MNIST, on the CPU.
#   train-aux → estimate-splits → train-experts → sample
# Output: runs/pipeline/{aux, splits/{splits.toml,monitor.png,monitor.csv}, experts, samples/grid.png}
#   RUN=runs/other EXPERTS=4 EXPERT_STEPS=800 scripts/pipeline.sh   # overrides
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
RUN=${RUN:-runs/pipeline}
EXPERTS=${EXPERTS:-3}
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
$CBS sample --experts "$RUN/experts" --num 100 --steps 30 --solver heun --cfg-scale 3 \
  --nrow 10 --seed 0 --out "$RUN/samples"
echo "splits: $RUN/splits/splits.toml (plot: $RUN/splits/monitor.png)"
echo "samples: $RUN/samples/grid.png (one class per column), $RUN/samples/samples.npz"
