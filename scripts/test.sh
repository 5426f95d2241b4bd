#!/usr/bin/env bash
# The test command: everything CI runs. Installs the test data if absent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo test --workspace --all-targets
