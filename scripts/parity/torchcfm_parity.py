#!/usr/bin/env python3
"""Parity of `cbs forward` on checkpoints written by torchcfm's CIFAR-10 example (random weights).

OPT-IN developer check, never run in CI. It pip-installs torch, numpy, safetensors and torchcfm
(https://github.com/atong01/conditional-flow-matching; from PyPI, not vendored) into a virtual
environment (several GB with PyTorch's default wheels) and re-runs itself inside it.

    python3 scripts/parity/torchcfm_parity.py [--batch B] [--seed N]
        [--cbs target/release/cbs] [--venv DIR] [--work DIR]

What it does:
  1. builds `torchcfm.models.unet.UNetModelWrapper` with the arguments of
     examples/images/cifar10/train_cifar10.py (dim (3, 32, 32), 128 channels, channel_mult
     [1, 2, 2, 2], 2 res blocks, attention at 16 px with 64-channel heads, dropout 0.1), the
     network of the `unet-cifar` preset, and checks that its state_dict has the names and
     shapes `cbs inspect --model unet-cifar` prints; sets every parameter (the zero-initialised
     output convolutions included) to seeded random values scaled so that activations stay
     O(1), and an independent seeded set for the EMA model;
  2. saves what train_cifar10.py saves, {"net_model", "ema_model", "sched" (LambdaLR warmup),
     "optim" (Adam state after one step), "step"}, with `torch.save` in the zip layout and in
     the legacy layout (`_use_new_zipfile_serialization=False`);
  3. does the same for a class-conditional variant (class_cond=True, num_classes=10: its label
     table has exactly 10 rows, no null class), zip layout;
  4. runs the reference forward `model(t, x, y)` in eval mode (dropout off) on seeded x
     [B, 3, 32, 32] and t in (0, 1) (values near 0 and 1 included; torchcfm feeds t to the
     sinusoidal embedding unscaled, 0 = noise, 1 = data), and labels y for the conditional
     network, then
         cbs forward --checkpoint FILE --model unet-cifar [--num-classes 10] \\
             --inputs in.safetensors --out out.safetensors --weights ema|model
     on each file and compares `velocity` with the reference output of the matching weights
     (ema_model / net_model): max |cbs - ref| relative to max |ref|, target <= 1e-4. One line
     per (file, weights) with that figure and the entry `cbs` reports having used.
Exit status 0 when every check passes, 1 when one fails, 2 when the cbs binary is missing
(build it with `cargo build --release -p cbs-cli`).
"""
import argparse
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

from venv_bootstrap import reexec_in_venv

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["torch", "numpy", "safetensors", "torchcfm"]
TOLERANCE = 1e-4
PRESET = "unet-cifar"
NUM_CLASSES = 10

# UNetModelWrapper arguments of torchcfm's examples/images/cifar10/train_cifar10.py.
CIFAR10_UNET = dict(
    dim=(3, 32, 32),
    num_res_blocks=2,
    num_channels=128,
    channel_mult=[1, 2, 2, 2],
    num_heads=4,
    num_head_channels=64,
    attention_resolutions="16",
    dropout=0.1,
)
LR = 2e-4
WARMUP = 5000
ENTRY = re.compile(r"entry `([^`]+)`")


def ensure_venv(venv: Path):
    reexec_in_venv(venv, PACKAGES, ['torch', 'numpy', 'safetensors', 'torchcfm.models.unet'], __file__)

def randomize(model, gen):
    """Seeded random values for every parameter, scaled so activations stay O(1)."""
    import torch
    from torch import nn

    done = set()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.GroupNorm):
                module.weight.copy_(0.8 + 0.4 * torch.rand(module.weight.shape, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / fan_in ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
            else:
                continue
            done.update(f"{name}.{p}" for p, _ in module.named_parameters(recurse=False))
    missed = [n for n, _ in model.named_parameters() if n not in done]
    if missed:
        raise SystemExit(f"parameters of unexpected module types were not randomized: {missed}")


def check_shapes(cbs: Path, model, num_classes):
    """The reference state_dict against `cbs inspect`; returns a list of differences."""
    cmd = [str(cbs), "inspect", "--model", PRESET, "--json"]
    if num_classes:
        cmd += ["--num-classes", str(num_classes)]
    ours = json.loads(subprocess.check_output(cmd))["tensors"]
    ref = {k: list(v.shape) for k, v in model.state_dict().items()}
    diffs = []
    for key in sorted(set(ref) | set(ours)):
        if ref.get(key) != ours.get(key):
            if (num_classes and key == "label_emb.weight" and ref[key] == [num_classes, ref[key][1]]
                    and ours.get(key) == [num_classes + 1, ref[key][1]]):
                # A cbs-built conditional model has a null-class row for guidance; torchcfm's
                # table has none, and `cbs` loads such a file as a model without a null class.
                continue
            diffs.append(f"{key}: torchcfm {ref.get(key)} cbs {ours.get(key)}")
    return diffs


def train_state(model, x, t, y):
    """Adam + LambdaLR as train_cifar10.py builds them, after one step (populated state)."""
    import torch

    optim = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda=lambda s: min(s, WARMUP) / WARMUP)
    model.train()
    optim.zero_grad()
    model(t, x, y=y).square().mean().backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optim.step()  # lr is 0 at step 0 of the warmup: the weights do not move
    sched.step()
    return optim, sched


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cbs", type=Path, default=ROOT / "target" / "release" / "cbs")
    ap.add_argument("--venv", type=Path, default=ROOT / "target" / "torch-venv")
    ap.add_argument("--work", type=Path, default=ROOT / "target" / "torchcfm-parity")
    args = ap.parse_args()
    ensure_venv(args.venv)

    import torch
    import torchcfm
    from safetensors.torch import load_file, save_file
    from torchcfm.models.unet.unet import UNetModelWrapper

    if not args.cbs.exists():
        print(f"{args.cbs} not found (cargo build --release -p cbs-cli)", file=sys.stderr)
        sys.exit(2)
    print(f"torchcfm {torchcfm.__version__}, torch {torch.__version__}", flush=True)
    torch.manual_seed(args.seed)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    b = args.batch
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(b, 3, 32, 32, generator=gen)
    t = torch.rand(b, generator=gen) * 0.98 + 0.01
    t[0], t[-1] = 1e-3, 0.999
    y = torch.randint(0, NUM_CLASSES, (b,), generator=gen)
    y[0], y[-1] = 0, NUM_CLASSES - 1
    save_file({"x": x, "t": t}, str(work / "in.safetensors"))
    save_file({"x": x, "t": t, "y": y}, str(work / "in-cond.safetensors"))

    variants = {
        # name: (UNetModelWrapper extra arguments, --num-classes, labels, files and layouts)
        "uncond": ({}, None, None, {"train_zip.pt": True, "train_legacy.pt": False}),
        "cond": (dict(class_cond=True, num_classes=NUM_CLASSES), NUM_CLASSES, y,
                 {"cond_zip.pt": True}),
    }
    failures = 0
    checks = []
    for seed_offset, (variant, (extra, num_classes, labels, files)) in enumerate(variants.items()):
        net_model = UNetModelWrapper(**CIFAR10_UNET, **extra)
        diffs = check_shapes(args.cbs, net_model, num_classes)
        if diffs:
            print(f"{variant}: the reference network and `cbs inspect --model {PRESET}` differ:")
            for d in diffs:
                print(f"  {d}")
            failures += 1
            continue
        randomize(net_model, torch.Generator().manual_seed(100 * args.seed + 1 + 2 * seed_offset))
        ema_model = copy.deepcopy(net_model)
        randomize(ema_model, torch.Generator().manual_seed(100 * args.seed + 2 + 2 * seed_offset))
        optim, sched = train_state(net_model, x, t, labels)
        net_model.eval()
        ema_model.eval()
        with torch.no_grad():
            refs = {"ema": ema_model(t, x, y=labels), "model": net_model(t, x, y=labels)}
        ckpt = {
            "net_model": net_model.state_dict(),
            "ema_model": ema_model.state_dict(),
            "sched": sched.state_dict(),
            "optim": optim.state_dict(),
            "step": 20000,
        }
        for name, zip_layout in files.items():
            torch.save(ckpt, work / name, _use_new_zipfile_serialization=zip_layout)
            inputs = "in-cond.safetensors" if labels is not None else "in.safetensors"
            for weights in ("ema", "model"):
                checks.append((name, weights, num_classes, inputs, refs[weights]))

    for name, weights, num_classes, inputs, ref in checks:
        out = work / f"out-{name}-{weights}.safetensors"
        cmd = [str(args.cbs), "forward", "--checkpoint", str(work / name), "--model", PRESET,
               "--inputs", str(work / inputs), "--out", str(out), "--weights", weights]
        if num_classes:
            cmd += ["--num-classes", str(num_classes)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            print(f"{name:16} weights={weights:5} cbs failed (exit {run.returncode}):\n"
                  f"{run.stderr.strip()}")
            failures += 1
            continue
        m = ENTRY.search(run.stderr)
        entry = m.group(1) if m else "?"
        got = load_file(str(out))["velocity"]
        scale = ref.abs().max().item()
        err = (got - ref).abs().max().item() / scale
        ok = got.shape == ref.shape and err <= TOLERANCE
        failures += not ok
        print(f"{name:16} weights={weights:5} entry `{entry}`  max|ref| {scale:.3g}  "
              f"velocity rel.err {err:.2e}  {'ok' if ok else 'FAIL'}", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
