#!/usr/bin/env bash
# Prints the markdown table of docs/presets.md: every preset's default geometry and its
# parameter totals, from `cbs inspect` (shapes are recorded, no weights are allocated).
set -euo pipefail
cd "$(dirname "$0")/.."
CBS=${CBS:-target/release/cbs}
echo "| preset | sample shape | classes | parameters (state_dict) | trainable |"
echo "| --- | --- | ---: | ---: | ---: |"
for m in $($CBS inspect --list); do
  $CBS inspect --model "$m" | awk -v m="$m" '
    /^sample shape/ { shape = substr($0, index($0, "["), index($0, "]") - index($0, "[") + 1); classes = $(NF-1) }
    /^total parameters/ { total = $NF }
    /^trainable parameters/ { trainable = $NF }
    END { printf "| `%s` | %s | %s | %s | %s |\n", m, shape, classes, total, trainable }'
done
