#!/usr/bin/env bash
# The GPU verification of cbs, as ONE command on a machine with an NVIDIA GPU (≤ 6 minutes on
# an H100/H200), writing one log and one JSON:
#   scripts/gpu-check.sh                 # --device cuda: the real check
#   scripts/gpu-check.sh --device cpu    # the same logic on tiny settings, on any machine
# Options: --bin PATH (the cbs binary; default target/gpu-bundle/cbs[.gz], then
#          target/cuda/release/cbs for cuda, target/release/cbs for cpu),
#          --data DIR (Fashion-MNIST's four .gz files; default target/gpu-bundle/fashion-mnist,
#          then /usr/share/datasets/fashion-mnist), --out DIR (default $OUT, else
#          target/gpu-check), --skip-bench.
#
# Sections (each recorded in gpu-check.json with pass/fail/skip, seconds and figures):
#   device_check  every op's forward and gradients and one training step of each backbone on
#                 the device against the CPU in f64 (`cbs device-check`)
#   train         a Fashion-MNIST run on the device (f32 and bf16) whose loss must fall like
#                 the CPU run's with the same seed
#   resume        the device run split in two halves (--resume) must equal the whole run,
#                 byte for byte (weights, EMA, optimizer); the halves log every 7th step and
#                 read from the device only then (--host-reads logging), the whole run after
#                 every step
#   experts       estimate-splits → train-experts → sample --experts on the device; samples
#                 must agree with the CPU's sampling of the same experts
#   data_parallel the `train` run through the data-parallel code: one rank on the NCCL
#                 backend (TCP on cpu) must give the device run's losses; with two or more
#                 GPUs visible, `cbs launch --gpus 2` must give them to reduction-order
#                 rounding ("skip" on one GPU); on cpu, two launched processes over TCP
#   bench         `cbs bench train` against the PyTorch twin (eager, torch.compile) on the
#                 same device: images/s, ratio, peak memory, MFU
# Exit status: 0 when every section that ran passed.
# `scripts/gpu-bundle.sh` prepares target/gpu-bundle (stripped CUDA binary, gzipped, and the
# data) to carry to a GPU machine that has no Rust toolchain and no network.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda BIN="" DATA="" OUTDIR="${OUT:-}" SKIP_BENCH=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --out) OUTDIR=$2; shift 2 ;;
    --skip-bench) SKIP_BENCH=1; shift ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cpu|cuda|cuda:*) ;; *) echo "gpu-check: --device cpu|cuda[:N]" >&2; exit 2 ;; esac
OUTDIR=${OUTDIR:-target/gpu-check}
mkdir -p "$OUTDIR"
OUTDIR=$(realpath "$OUTDIR")
LOG="$OUTDIR/gpu-check.log"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cbs-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
: > "$LOG"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

# --- the binary and its libraries -------------------------------------------------------
if [ -z "$BIN" ]; then
  if [ -f target/gpu-bundle/cbs.gz ] && [ "$DEVICE" != cpu ]; then
    gzip -dc target/gpu-bundle/cbs.gz > "$WORK/cbs" && chmod +x "$WORK/cbs" && BIN="$WORK/cbs"
  elif [ "$DEVICE" != cpu ]; then BIN=target/cuda/release/cbs
  else BIN=target/release/cbs
  fi
fi
[ -x "$BIN" ] || { log "no cbs binary at $BIN (build it: scripts/build-cuda.sh, or cargo build --release)"; exit 2; }
if [ -z "$DATA" ]; then
  if [ -d target/gpu-bundle/fashion-mnist ]; then DATA=target/gpu-bundle/fashion-mnist
  else DATA=/usr/share/datasets/fashion-mnist; fi
fi
[ -f "$DATA/train-images-idx3-ubyte.gz" ] || { log "no Fashion-MNIST in $DATA"; exit 2; }
DATA=$(realpath "$DATA")
if [ "$DEVICE" != cpu ]; then
  # CUDA 13 run-time libraries: the driver's, then PyTorch's nvidia wheels.
  libs=$(python3 - <<'EOF' 2>/dev/null
import glob, site, os
roots = site.getsitepackages() + [site.getusersitepackages()]
found = set()
for r in roots:
    for name in ("libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libcudart.so.13", "libnvrtc.so.13", "libnccl.so.2"):
        for p in glob.glob(os.path.join(r, "nvidia", "**", name), recursive=True):
            found.add(os.path.dirname(p))
print(":".join(sorted(found)))
EOF
)
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
CBS() { "$BIN" "$@"; }

# --- sizes: the real check on cuda, tiny ones on the cpu ----------------------------------
if [ "$DEVICE" = cpu ]; then
  STEPS=20 EXPERT_STEPS=6 MODELS=sit-nano-4,jit-nano-4,unet-mini,mlp-64
  BENCHES="sit-nano-4:3:16:8"
  HALF=f16
else
  STEPS=200 EXPERT_STEPS=50 MODELS=sit-nano-4,sit-tiny-4,jit-nano-4,jit-mini-4,unet-mini,mlp-64
  # preset:channels:size:batch
  BENCHES="sit-b-2:4:32:256 sit-xl-2:4:32:256 jit-b-4:3:64:128 unet-cifar:3:32:128"
  HALF=bf16
fi

SECTIONS="$WORK/sections.jsonl"
: > "$SECTIONS"
# record NAME STATUS SECONDS JSON-OBJECT-OF-FIGURES
record() { printf '{"section":"%s","status":"%s","seconds":%s,"figures":%s}\n' "$1" "$2" "$3" "$4" >> "$SECTIONS"; log "$1: $2 ($3 s)"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$1" "$(now)"; }

log "gpu-check: device=$DEVICE bin=$BIN data=$DATA out=$OUTDIR"
"$BIN" --version >> "$LOG" 2>&1 || true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$LOG" 2>&1

# --- 1. every op and every backbone's step against the CPU --------------------------------
t0=$(now)
if CBS device-check --device "$DEVICE" --models "$MODELS" --json "$OUTDIR/device-check.json" >> "$LOG" 2>&1; then st=pass; else st=fail; fi
figs=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({'passed': r['passed'], 'failed': r['failed'], 'failures': [c['name']+'/'+c['dtype'] for c in r['checks'] if not c['pass']]}))" "$OUTDIR/device-check.json" 2>/dev/null || echo '{}')
record device_check $st "$(since "$t0")" "$figs"

# --- 2. a Fashion-MNIST run: device (f32, half) against the CPU ---------------------------
CFG="$WORK/fashion.toml"
sed "s|^source = \"fashion_mnist\"|source = \"fashion_mnist\"\ndir = \"$DATA\"|; s|^checkpoint_every = .*|checkpoint_every = $STEPS|; s|^log_every = .*|log_every = 1|" configs/fashion-aux.toml > "$CFG"
train() { CBS train-aux --config "${TRAIN_CFG:-$CFG}" --out "$1" --steps "$2" --device "$3" --precision "$4" ${5:-} >> "$LOG" 2>&1; }
t0=$(now)
ok=1
train "$WORK/cpu" "$STEPS" cpu f32 || ok=0
train "$WORK/dev" "$STEPS" "$DEVICE" f32 || ok=0
train "$WORK/dev-half" "$STEPS" "$DEVICE" "$HALF" || ok=0
figs=$(python3 - "$WORK" <<'EOF'
import json, sys
def losses(run):
    return [json.loads(l)["loss"] for l in open(f"{sys.argv[1]}/{run}/metrics.jsonl")]
out = {}
for run in ("cpu", "dev", "dev-half"):
    try:
        l = losses(run)
    except OSError:
        continue
    k = max(1, len(l) // 5)
    out[run] = {"first": sum(l[:k]) / k, "last": sum(l[-k:]) / k, "steps": len(l)}
    out[run]["falls"] = out[run]["last"] < 0.9 * out[run]["first"]
if "cpu" in out:
    for run, tol in (("dev", 0.10), ("dev-half", 0.15)):
        if run in out:
            rel = abs(out[run]["last"] - out["cpu"]["last"]) / out["cpu"]["last"]
            out[run]["rel_to_cpu"] = rel
            out[run]["tolerance"] = tol
            out[run]["like_cpu"] = rel <= tol
ok = all(r["falls"] for r in out.values()) and all(out[r].get("like_cpu", False) for r in ("dev", "dev-half") if r in out) and len(out) == 3
out["pass"] = ok
print(json.dumps(out))
EOF
)
case "$figs" in *'"pass": true'*) [ $ok = 1 ] && st=pass || st=fail ;; *) st=fail ;; esac
record train $st "$(since "$t0")" "${figs:-{\}}"

# --- 3. exact resume on the device ---------------------------------------------------------
t0=$(now)
HALFWAY=$((STEPS / 2))
st=fail figs='{}'
SPARSE="$WORK/fashion-sparse.toml"
sed "s|^log_every = .*|log_every = 7|" "$CFG" > "$SPARSE"
if TRAIN_CFG=$SPARSE train "$WORK/resumed" "$HALFWAY" "$DEVICE" f32 "--host-reads logging" &&
  TRAIN_CFG=$SPARSE train "$WORK/resumed" "$STEPS" "$DEVICE" f32 "--host-reads logging --resume"; then
  figs=$(python3 - "$WORK/dev" "$WORK/resumed" <<'EOF'
import hashlib, json, os, sys
def latest(run):
    d = os.path.join(run, "checkpoints")
    return os.path.join(d, sorted(os.listdir(d))[-1])
out = {}
for f in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
    h = [hashlib.sha256(open(os.path.join(latest(r), f), "rb").read()).hexdigest() for r in sys.argv[1:]]
    out[f] = h[0] == h[1]
out["pass"] = all(out.values())
print(json.dumps(out))
EOF
)
  case "$figs" in *'"pass": true'*) st=pass ;; esac
fi
record resume $st "$(since "$t0")" "$figs"

# --- 4. experts: splits, training and sampling on the device ---------------------------------
t0=$(now)
st=fail figs='{}'
ECFG="$WORK/experts.toml"
sed "s|^source = \"fashion_mnist\"|source = \"fashion_mnist\"\ndir = \"$DATA\"|" configs/fashion-experts.toml > "$ECFG"
if CBS estimate-splits --aux "$WORK/dev" --experts 2 --trajectories 64 --batch 64 --grid 20 \
      --bootstrap 0 --device "$DEVICE" --out "$WORK/splits" >> "$LOG" 2>&1 &&
   CBS train-experts --splits "$WORK/splits/splits.toml" --config "$ECFG" --steps "$EXPERT_STEPS" \
      --device "$DEVICE" --out "$WORK/experts" >> "$LOG" 2>&1 &&
   CBS sample --experts "$WORK/experts" --num 16 --steps 10 --device "$DEVICE" --out "$WORK/samples-dev" >> "$LOG" 2>&1 &&
   CBS sample --experts "$WORK/experts" --num 16 --steps 10 --device cpu --out "$WORK/samples-cpu" >> "$LOG" 2>&1; then
  figs=$(python3 - "$WORK/samples-dev/samples.npz" "$WORK/samples-cpu/samples.npz" <<'EOF'
import ast, json, sys, zipfile
def images(path):
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.startswith("arr_0") or n.startswith("images"))
        raw = z.read(name)
    hlen = int.from_bytes(raw[8:10], "little")
    header = ast.literal_eval(raw[10:10 + hlen].decode())
    return header, raw[10 + hlen:]
(hd, a), (hc, b) = images(sys.argv[1]), images(sys.argv[2])
same_shape = hd["shape"] == hc["shape"] and hd["descr"] == hc["descr"] and hd["descr"][1:] == "u1"
mad = sum(abs(x - y) for x, y in zip(a, b)) / max(1, len(a))
out = {"shape": list(hd["shape"]), "mean_abs_diff_levels": mad, "tolerance": 2.0}
out["pass"] = bool(same_shape and mad <= 2.0)
print(json.dumps(out))
EOF
)
  case "$figs" in *'"pass": true'*) st=pass ;; esac
fi
record experts $st "$(since "$t0")" "$figs"

# --- 5. data parallelism: the collective path on one device, and a group of two -------------
t0=$(now)
if [ "$DEVICE" = cpu ]; then BACKEND=tcp; REF="$WORK/cpu"; else BACKEND=nccl; REF="$WORK/dev"; fi
GPUS=0
if [ "$DEVICE" != cpu ] && command -v nvidia-smi >/dev/null; then
  GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
ok1=0 ok2=skip
# One rank through the backend's collectives (world size 1).
WORLD_SIZE=1 RANK=0 MASTER_PORT=$((20000 + RANDOM % 20000)) \
  train "$WORK/dp1" "$STEPS" "$DEVICE" f32 "--dist-backend $BACKEND" && ok1=1
# Two ranks: two GPUs, or two CPU processes.
if [ "$DEVICE" = cpu ] || [ "$GPUS" -ge 2 ]; then
  dev2=$DEVICE; [ "$DEVICE" != cpu ] && dev2=cuda
  if CBS launch --gpus 2 -- train-aux --config "$CFG" --out "$WORK/dp2" --steps "$STEPS" \
        --device "$dev2" --precision f32 >> "$LOG" 2>&1; then ok2=1; else ok2=0; fi
fi
figs=$(python3 - "$REF" "$WORK/dp1" "$WORK/dp2" "$ok1" "$ok2" "$GPUS" <<'EOF'
import json, sys
ref, dp1, dp2, ok1, ok2, gpus = sys.argv[1:]
def losses(run):
    try:
        return [json.loads(l)["loss"] for l in open(f"{run}/metrics.jsonl")]
    except OSError:
        return None
def worst(a, b):
    if not a or not b or len(a) != len(b):
        return None
    return max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b))
r = losses(ref)
out = {"gpus_visible": int(gpus)}
d1 = worst(r, losses(dp1)) if ok1 == "1" else None
# One rank: the arithmetic of the plain run (a sum over one rank is exact).
out["one_rank"] = {"max_rel_loss_diff": d1, "tolerance": 1e-6, "pass": d1 is not None and d1 <= 1e-6}
if ok2 == "skip":
    out["two_ranks"] = {"status": "skip", "reason": "one GPU visible"}
    two = True
else:
    d2 = worst(r, losses(dp2)) if ok2 == "1" else None
    # Two ranks: each half batch's gradients, summed in another order.
    out["two_ranks"] = {"max_rel_loss_diff": d2, "tolerance": 1e-3, "pass": d2 is not None and d2 <= 1e-3}
    two = out["two_ranks"]["pass"]
out["pass"] = out["one_rank"]["pass"] and two
print(json.dumps(out))
EOF
)
case "$figs" in *'"pass": true}'*) st=pass ;; *) st=fail ;; esac
record data_parallel $st "$(since "$t0")" "${figs:-{\}}"

# --- 6. benchmarks against the PyTorch twin on the same device -------------------------------
t0=$(now)
if [ "$SKIP_BENCH" = 1 ]; then
  record bench skip 0 '{"reason": "--skip-bench"}'
else
  TORCH=1
  python3 -c "import torch" 2>/dev/null || TORCH=0
  BJ="$WORK/bench.jsonl"
  : > "$BJ"
  for b in $BENCHES; do
    IFS=: read -r model ch size batch <<< "$b"
    common=(--model "$model" --in-channels "$ch" --image-size "$size" --batch "$batch" --steps 5 --warmup 2)
    log "bench $model (${ch}×${size}×${size}, batch $batch)"
    cbs_out=$(CBS bench train "${common[@]}" --precision "$HALF" --device "$DEVICE" 2>&1 | tee -a "$LOG")
    eager="" compiled=""
    if [ $TORCH = 1 ]; then
      eager=$(timeout 120 python3 benches/pytorch_twin.py train "${common[@]}" --device "${DEVICE%%:*}" --precision "$HALF" 2>&1 | tee -a "$LOG")
      if [ "$DEVICE" != cpu ] && [ "$model" = sit-xl-2 ]; then
        compiled=$(timeout 240 python3 benches/pytorch_twin.py train "${common[@]}" --device cuda --precision "$HALF" --compile 2>&1 | tee -a "$LOG")
      fi
    fi
    python3 - "$model" "$batch" "$cbs_out" "$eager" "$compiled" >> "$BJ" <<'EOF'
import json, re, sys
model, batch, outs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def grab(text, key):
    m = re.findall(rf"{key}=([0-9.eE+-]+)", text)
    return float(m[-1]) if m else None
row = {"model": model, "batch": batch}
for name, text in zip(("cbs", "torch_eager", "torch_compile"), outs):
    if text:
        row[name] = {k: grab(text, k) for k in ("images_per_s", "median_step_ms", "peak_device_mb", "peak_rss_mb", "mfu")}
c, e = row.get("cbs", {}).get("images_per_s"), row.get("torch_eager", {}).get("images_per_s")
if c and e:
    row["ratio_vs_eager"] = c / e
k = row.get("torch_compile", {}).get("images_per_s")
if c and k:
    row["ratio_vs_compile"] = c / k
print(json.dumps(row))
EOF
  done
  figs=$(python3 -c "import json,sys; print(json.dumps({'torch': bool(int(sys.argv[2])), 'runs': [json.loads(l) for l in open(sys.argv[1])]}))" "$BJ" "$TORCH")
  # A benchmark informs; it passes when every cbs run produced a figure.
  if python3 -c "import json,sys; rows=[json.loads(l) for l in open(sys.argv[1])]; sys.exit(0 if rows and all(r.get('cbs',{}).get('images_per_s') for r in rows) else 1)" "$BJ"; then st=pass; else st=fail; fi
  record bench $st "$(since "$t0")" "$figs"
fi

# --- the one JSON ------------------------------------------------------------------------------
python3 - "$SECTIONS" "$OUTDIR/gpu-check.json" "$DEVICE" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
summary = {"device": sys.argv[3], "pass": all(r["status"] != "fail" for r in rows), "sections": rows}
open(sys.argv[2], "w").write(json.dumps(summary, indent=2) + "\n")
print(json.dumps({r["section"]: r["status"] for r in rows}))
EOF
if python3 -c "import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))['pass'] else 1)" "$OUTDIR/gpu-check.json"; then
  log "gpu-check: all sections passed ($OUTDIR/gpu-check.json)"
else
  log "gpu-check: FAILED sections (details: $OUTDIR/gpu-check.json, $LOG)"
  exit 1
fi
