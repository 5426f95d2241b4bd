#!/usr/bin/env python3
"""Writes the PyTorch-file fixtures of crates/cbs-torch/tests/fixtures with the real torch.save.

OPT-IN developer script, never run in CI (CI reads the committed fixtures). It pip-installs
torch into a virtual environment (several GB with PyTorch's default wheels from PyPI), re-runs
itself inside it and writes, with deterministic values:

  state_dict_zip.pt      a module's state_dict (zip layout, PyTorch >= 1.6)
  state_dict_legacy.pt   the same, `_use_new_zipfile_serialization=False`
  checkpoint.pt          {"model", "ema", "opt", "args": argparse.Namespace, "epoch"}, as SiT,
                         DiT and JiT training scripts save them (zip layout)
  parameter.pt           a bare nn.Parameter (`_rebuild_parameter`)
  expected.json          every tensor's dtype, shape and values as torch.load reads them

    python3 scripts/parity/torch_fixtures.py [--venv DIR] [--out DIR]
"""
import argparse
import json
from pathlib import Path

from venv_bootstrap import reexec_in_venv

ROOT = Path(__file__).resolve().parents[2]


def ensure_venv(venv: Path):
    reexec_in_venv(venv, ['torch', 'numpy'], ['torch', 'numpy'], __file__)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--venv", type=Path, default=ROOT / "target" / "torch-venv")
    ap.add_argument("--out", type=Path, default=ROOT / "crates" / "cbs-torch" / "tests" / "fixtures")
    args = ap.parse_args()
    ensure_venv(args.venv)

    import torch
    from torch import nn

    def values(n, scale=1.0):
        return (torch.arange(n, dtype=torch.float64) * 0.25 - 1.0) * scale

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 4)
            self.norm = nn.LayerNorm(4)
            self.register_buffer("counter", torch.tensor([7, -3], dtype=torch.int64))

    def tiny(scale):
        m = Tiny()
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(values(p.numel(), scale).reshape(p.shape))
        return m

    sd = tiny(1.0).state_dict()
    base = values(24).float()
    extra = {
        "half": values(6).half().reshape(2, 3),
        "bf16": values(5).bfloat16(),
        "f64": values(4),
        # A transposed view: non-contiguous strides over a shared storage.
        "transposed": base.reshape(4, 6).t(),
        # A slice: a storage offset into the same storage.
        "slice": base[7:13].reshape(2, 3),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "mask": torch.tensor([True, False, True]),
    }
    sd_all = dict(sd)
    sd_all.update(extra)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.save(sd_all, out / "state_dict_zip.pt")
    torch.save(sd_all, out / "state_dict_legacy.pt", _use_new_zipfile_serialization=False)

    model = tiny(1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model.norm(model.proj(torch.ones(2, 3))).square().sum()
    loss.backward()
    opt.step()
    ckpt = {
        "model": model.state_dict(),
        "ema": tiny(2.0).state_dict(),
        "opt": opt.state_dict(),
        "args": argparse.Namespace(model="SiT-XL/2", image_size=256, lr=1e-4, flip=True),
        "epoch": 3,
    }
    torch.save(ckpt, out / "checkpoint.pt")
    torch.save(nn.Parameter(values(6).float().reshape(3, 2)), out / "parameter.pt")

    expected = {}
    for name in ["state_dict_zip.pt", "state_dict_legacy.pt", "checkpoint.pt", "parameter.pt"]:
        obj = torch.load(out / name, weights_only=False)
        flat = {}

        def walk(prefix, o):
            if isinstance(o, torch.Tensor):
                flat[prefix] = o
            elif isinstance(o, dict):
                for k, v in o.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            elif isinstance(o, (list, tuple)):
                for i, v in enumerate(o):
                    walk(f"{prefix}.{i}" if prefix else str(i), v)

        walk("", obj)
        expected[name] = {
            k: {
                "dtype": str(t.dtype).removeprefix("torch."),
                "shape": list(t.shape),
                "values": t.detach().double().flatten().tolist() if t.dtype != torch.bool
                else t.flatten().int().tolist(),
            }
            for k, t in flat.items()
        }
    (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} with torch {torch.__version__}")


if __name__ == "__main__":
    main()
