#!/usr/bin/env python3
"""Parity check of cbs's FID Inception (crates/cbs-eval/src/inception.rs) against pytorch-fid.

OPT-IN developer check, never run in CI: it pip-installs torch, torchvision and pytorch-fid
(several GB with PyTorch's default CUDA-enabled wheels) into a virtual environment and needs a
release build of the `inception_dump` example.

    python3 scripts/parity/inception_parity.py [--work DIR] [--venv DIR] [--n N] [--size S]
                                               [--features FEATURES]

What it does:
  1. creates the venv (default target/parity-venv) and installs the packages, then re-runs
     itself inside it;
  2. builds `cargo build --release -p cbs-eval --example inception_dump` (plus
     `--features FEATURES` when given) and lets it write
     deterministic random weights for the whole FID-Inception state_dict (safetensors) and
     deterministic test images (two sets of N images at S×S, one small set at 400×320 to
     exercise downsampling), f32 NCHW in [0, 1];
  3. builds pytorch-fid's own FID Inception (`pytorch_fid.inception.InceptionV3`, i.e.
     `fid_inception_v3()` with its FIDInceptionA/C/E_1/E_2 blocks) with those weights — its
     weight download is replaced by the dict read from the safetensors file — and computes
     pool3, the unbiased logits (pool3 · fc.weightᵀ) and the ADM sFID features (first 7
     channels of Mixed_6d.branch1x1, NHWC-flattened);
  4. runs the Rust network on the same images and compares (target: max relative difference
     of pool3 ≤ 1e-4, relative to the largest magnitude), and FID / sFID between the two sets
     computed with pytorch-fid's `calculate_frechet_distance` from either side's features;
  5. saves the weights with torch.save in both the zip and the legacy (pre-1.6) formats and
     checks that the Rust loader reads both to bit-identical features.

Exit status 0 when every check passes.
"""

import argparse
import json
import subprocess
import time
import sys
from pathlib import Path

from venv_bootstrap import reexec_in_venv

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["torch", "torchvision", "pytorch-fid", "numpy", "scipy"]


def ensure_venv(venv: Path):
    reexec_in_venv(venv, PACKAGES, ['torch', 'torchvision', 'pytorch_fid', 'scipy', 'numpy'], __file__)

def run(cmd):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def read_safetensors(path: Path):
    import numpy as np
    import torch

    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    dtypes = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "F16": np.float16}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        arr = np.frombuffer(data[base + a : base + b], dtype=dtypes[info["dtype"]])
        out[name] = torch.from_numpy(arr.reshape(info["shape"]).copy())
    return out


def torch_features(state_dict, images):
    import torch
    import pytorch_fid.inception as pfi

    # pytorch-fid downloads its weights inside fid_inception_v3(); hand it ours instead.
    pfi.load_state_dict_from_url = lambda *args, **kwargs: state_dict
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    mixed_6d = model.blocks[2][6]  # Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d, 6e
    captured = {}
    mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.__setitem__("s", o))
    fc = state_dict["fc.weight"]
    pools, logits, spatials = [], [], []
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, images.shape[0], 4):
            x = torch.from_numpy(images[start : start + 4])
            pool = model(x)[0].flatten(1)
            pools.append(pool)
            logits.append(pool @ fc.T)
            s = captured["s"][:, :7].permute(0, 2, 3, 1).flatten(1)
            spatials.append(s)
    secs = time.perf_counter() - started
    print(
        f"speed: pytorch-fid {images.shape[0] / secs:.3f} images/s "
        f"({torch.get_num_threads()} threads, batch 4, resize included)",
        flush=True,
    )
    cat = lambda xs: torch.cat(xs).numpy().astype("float64")
    return cat(pools), cat(logits), cat(spatials)


def rust_features(exe: Path, weights: Path, images: Path, prefix: Path):
    import numpy as np

    run([exe, "features", weights, images, prefix, 4])
    return tuple(
        np.load(f"{prefix}.{part}.npy").astype("float64") for part in ("pool", "logits", "spatial")
    )


def max_rel(a, b):
    import numpy as np

    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def fid(a, b):
    import numpy as np
    from pytorch_fid.fid_score import calculate_frechet_distance

    return float(
        calculate_frechet_distance(
            a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
        )
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(ROOT / "target" / "inception-parity"))
    ap.add_argument("--venv", default=str(ROOT / "target" / "parity-venv"))
    ap.add_argument("--n", type=int, default=8, help="images per set")
    ap.add_argument("--size", type=int, default=32, help="side of the test images")
    ap.add_argument("--seed", type=int, default=0, help="weights seed")
    ap.add_argument("--features", default="", help="cargo features of cbs-eval to build the example with")
    args = ap.parse_args()
    ensure_venv(Path(args.venv))

    import numpy as np
    import torch

    torch.set_grad_enabled(False)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    features = ["--features", args.features] if args.features else []
    run(["cargo", "build", "--release", "-p", "cbs-eval", "--example", "inception_dump", *features])
    exe = ROOT / "target" / "release" / "examples" / "inception_dump"
    weights = work / "weights.safetensors"
    run([exe, "weights", weights, args.seed])
    sets = {"a": (args.n, args.size, args.size, 1), "b": (args.n, args.size, args.size, 2), "c": (2, 400, 320, 3)}
    for name, (n, h, w, seed) in sets.items():
        run([exe, "images", work / f"{name}.npy", n, h, w, seed])

    sd = read_safetensors(weights)
    ok = True
    feats = {}
    for name in sets:
        imgs = np.load(work / f"{name}.npy")
        t = torch_features(sd, imgs)
        r = rust_features(exe, weights, work / f"{name}.npy", work / f"rust_{name}")
        feats[name] = (t, r)
        for part, tv, rv, tol in zip(("pool3", "logits", "spatial"), t, r, (1e-4, 1e-4, 1e-4)):
            rel = max_rel(rv, tv)
            status = "ok" if rel <= tol else "FAIL"
            ok &= rel <= tol
            print(f"set {name} {imgs.shape}: {part:8s} max rel diff {rel:.3e} (max |x| {np.abs(tv).max():.3g}) {status}")

    (ta, ra), (tb, rb) = feats["a"], feats["b"]
    for i, part in ((0, "FID"), (2, "sFID")):
        f_t, f_r = fid(ta[i], tb[i]), fid(ra[i], rb[i])
        rel = abs(f_t - f_r) / max(abs(f_t), 1e-30)
        print(f"{part} a↔b: torch features {f_t:.6f}, rust features {f_r:.6f}, rel diff {rel:.2e}")
        ok &= rel <= 1e-3

    # The Rust loader must read torch.save's zip and legacy formats to the same weights.
    for fmt, zipped in (("zip", True), ("legacy", False)):
        pth = work / f"weights_{fmt}.pth"
        torch.save(sd, pth, _use_new_zipfile_serialization=zipped)
        r = rust_features(exe, pth, work / "a.npy", work / f"rust_a_{fmt}")
        same = all(np.array_equal(x, y) for x, y in zip(r, feats["a"][1]))
        print(f"{fmt} .pth → Rust features identical to safetensors: {same}")
        ok &= same

    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
