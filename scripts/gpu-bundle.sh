#!/usr/bin/env bash
# Prepare what a GPU machine without Rust or network needs to run scripts/gpu-check.sh:
#   target/gpu-bundle/cbs.gz          the stripped CUDA build (scripts/build-cuda.sh), gzipped
#   target/gpu-bundle/fashion-mnist/  the four Fashion-MNIST .gz files
# and check that, with the repository, it fits the 64 MiB a transfer may carry. On the GPU
# machine, from the repository root: scripts/gpu-check.sh (it finds the bundle by itself).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-cuda.sh
B=target/gpu-bundle
rm -rf "$B"
mkdir -p "$B/fashion-mnist"
gzip -9 -c target/cuda/release/cbs > "$B/cbs.gz"
cp /usr/share/datasets/fashion-mnist/*.gz "$B/fashion-mnist/"
bundle=$(du -sb "$B" | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
total=$((bundle + tree))
echo "bundle $((bundle >> 20)) MiB + tracked files $((tree >> 20)) MiB = $((total >> 20)) MiB"
if [ "$total" -gt $((64 << 20)) ]; then
  echo "over the 64 MiB a transfer carries" >&2
  exit 1
fi
