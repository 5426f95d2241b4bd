#!/usr/bin/env python3
"""Parity of `cbs forward` on checkpoints written by the reference SiT code (random weights).

OPT-IN developer check, never run in CI. It pip-installs torch, timm and safetensors into a
virtual environment (several GB with PyTorch's default wheels) and imports the reference
`models.py` from a SiT checkout given by path (https://github.com/willisma/SiT; not vendored).

    python3 scripts/parity/checkpoint_parity.py --sit PATH/TO/SiT [--model SiT-S/2]
        [--cbs target/release/cbs] [--venv DIR] [--work DIR]

For the model (default SiT-S/2 at 256 px: 4×32×32 latents, 1000 classes, learn_sigma) it
  1. builds the reference network, sets every parameter (the zero-initialised adaLN and final
     layers included) to seeded random values, and a second set for the EMA;
  2. saves what SiT's train.py saves, {"model", "ema", "opt" (AdamW state), "args"
     (argparse.Namespace)}, in the zip layout and in the legacy layout, and the EMA weights
     alone as a bare state_dict (the layout of the released SiT-XL-2-256x256.pt);
  3. runs the reference forward (eval mode) on seeded x, t, y (the null class included) and
     `cbs forward --checkpoint FILE --model PRESET --inputs in.safetensors` on each file;
  4. compares the raw output (velocity and variance channels) and the velocity; target: max
     absolute difference <= 1e-4 relative to the largest magnitude.
Exit status 0 when every check passes.
"""
import argparse
import copy
import subprocess
import sys
from pathlib import Path

from venv_bootstrap import reexec_in_venv

ROOT = Path(__file__).resolve().parents[2]
PRESETS = {"SiT-S/2": "sit-s-2", "SiT-B/2": "sit-b-2", "SiT-S/4": "sit-s-4", "SiT-XL/2": "sit-xl-2"}


def ensure_venv(venv: Path):
    reexec_in_venv(venv, ['torch', 'numpy', 'timm', 'safetensors'], ['torch', 'numpy', 'timm', 'safetensors'], __file__)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sit", type=Path, required=True, help="a SiT checkout (models.py)")
    ap.add_argument("--model", default="SiT-S/2", choices=sorted(PRESETS))
    ap.add_argument("--cbs", type=Path, default=ROOT / "target" / "release" / "cbs")
    ap.add_argument("--venv", type=Path, default=ROOT / "target" / "torch-venv")
    ap.add_argument("--work", type=Path, default=ROOT / "target" / "checkpoint-parity")
    args = ap.parse_args()
    ensure_venv(args.venv)

    import torch
    from safetensors.torch import load_file, save_file
    sys.path.insert(0, str(args.sit.resolve()))
    from models import SiT_models

    torch.manual_seed(0)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    model = SiT_models[args.model](input_size=32, num_classes=1000, learn_sigma=True)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.05)
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    x = torch.randn(4, 4, 32, 32)
    t = torch.tensor([0.0, 0.3, 0.71, 0.999])
    y = torch.tensor([3, 999, 1000, 17])  # 1000: the null class
    model(x, t, y).square().mean().backward()
    opt.step()
    ema.eval()
    model.eval()
    with torch.no_grad():
        ref_ema = ema(x, t, y)
        ref_model = model(x, t, y)
    ckpt = {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "opt": opt.state_dict(),
        "args": argparse.Namespace(model=args.model, image_size=256, num_classes=1000,
                                   global_batch_size=256, lr=1e-4),
    }
    files = {
        "train_zip.pt": ("ema", ref_ema),
        "train_legacy.pt": ("ema", ref_ema),
        "train_model.pt": ("model", ref_model),
        "released.pt": ("ema", ref_ema),
    }
    torch.save(ckpt, work / "train_zip.pt")
    torch.save(ckpt, work / "train_legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(ckpt, work / "train_model.pt")
    torch.save(ema.state_dict(), work / "released.pt")
    save_file({"x": x, "t": t, "y": y}, str(work / "in.safetensors"))

    failures = 0
    for name, (weights, ref) in files.items():
        out = work / f"out-{name}.safetensors"
        cmd = [str(args.cbs), "forward", "--checkpoint", str(work / name), "--model",
               PRESETS[args.model], "--inputs", str(work / "in.safetensors"), "--out", str(out),
               "--weights", weights]
        subprocess.check_call(cmd)
        got = load_file(str(out))
        scale = ref.abs().max().item()
        # SiT's forward returns the velocity half of the final layer; cbs's `output` has both.
        err_out = (got["output"][:, :4] - ref).abs().max().item() / scale
        err_vel = (got["velocity"] - ref[:, :4]).abs().max().item() / scale
        ok = err_out <= 1e-4 and err_vel <= 1e-4
        failures += not ok
        print(f"{name:18} weights={weights:5} output rel.err {err_out:.2e}  velocity rel.err "
              f"{err_vel:.2e}  {'ok' if ok else 'FAIL'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
