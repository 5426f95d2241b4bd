#!/usr/bin/env bash
# The main job on a fresh machine: install, build, train a small SiT on Fashion-MNIST (CPU),
# sample a grid. Output: runs/quickstart/{checkpoints,metrics.jsonl,samples/grid.png}.
#   RUN=runs/other STEPS=2000 scripts/quickstart.sh   # overrides
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
RUN=${RUN:-runs/quickstart}
cargo build --release -p cbs-cli
CBS=target/release/cbs
if [ -e "$RUN/checkpoints/latest" ]; then
  echo "$RUN already holds a run; continuing it (delete the directory to start over)"
  $CBS train-aux --out "$RUN" --resume ${STEPS:+--steps "$STEPS"}
else
  $CBS train-aux --config configs/quickstart.toml --out "$RUN" ${STEPS:+--steps "$STEPS"}
fi
$CBS sample --checkpoint "$RUN" --num 100 --steps 50 --solver heun --cfg-scale 3 --seed 0 --nrow 10 \
  --out "$RUN/samples"
echo "samples: $RUN/samples/grid.png (one class per column), $RUN/samples/samples.npz"
