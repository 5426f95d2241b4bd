#!/usr/bin/env python3
"""Parity of `cbs forward --vae` against diffusers' AutoencoderKL (SD-VAE) with random weights.

OPT-IN developer check, never run in CI (CI reads the committed fixture of
crates/cbs-models/tests/fixtures/vae-tiny). It pip-installs torch, numpy, safetensors and
diffusers into a virtual environment (several GB with PyTorch's default wheels) and re-runs
itself inside it.

    python3 scripts/parity/vae_parity.py [--config tiny|sd] [--size S] [--batch B] [--seed N]
        [--legacy-attention-keys] [--cbs target/release/cbs] [--venv DIR] [--work DIR]
        [--no-cbs] [--fixture DIR]

Configs:
  sd    the architecture of stabilityai/sd-vae-ft-mse: block_out_channels [128, 256, 512, 512],
        layers_per_block 2, 32 groups, 4 latent channels (f = 8); default 1 image of 256x256
  tiny  block_out_channels [16, 32], layers_per_block 1, 8 groups, 4 latent channels (f = 2);
        default 2 images of 16x16

What it does:
  1. builds `diffusers.AutoencoderKL` and sets every parameter to seeded random values
     (GroupNorm weights uniform in [0.8, 1.2], every bias 0.1 * N(0, 1), conv/linear weights
     N(0, 1/fan_in)) so that activations stay O(1) through the network;
  2. saves it with `save_pretrained(WORK/vae, safe_serialization=True)` (config.json and a
     float32 diffusion_pytorch_model.safetensors). With --legacy-attention-keys the mid-block
     attention weights are renamed to the naming of the published sd-vae-ft-mse file
     (to_q -> query, to_k -> key, to_v -> value, to_out.0 -> proj_attn) and the file is checked
     to load back in diffusers to the same weights;
  3. writes WORK/io.safetensors (float32): the inputs `x` (images [B, 3, H, W], uniform in
     [-1, 1]) and `z` (latents [B, 4, H/f, W/f], N(0, 1)); the reference outputs computed in
     float64 `mean`, `logvar` (= encode(x).latent_dist.mean / .logvar; diffusers clamps logvar
     to [-30, 20]) and `decoded` (= decode(z).sample); and the same outputs of the float32
     model as `mean_f32`, `logvar_f32`, `decoded_f32` (PyTorch's own float32 rounding level);
  4. unless --no-cbs, runs
         cbs forward --vae WORK/vae --inputs WORK/io.safetensors --out WORK/cbs.safetensors
     and compares `mean`, `logvar` and `decoded` with the float64 reference: max |cbs - ref|
     relative to max |ref|, target <= 1e-4, printed next to the PyTorch float32 figure.
     Exit status 0 when every check passes, 1 when one fails, 2 when the cbs binary is missing
     (build it with `cargo build --release -p cbs-cli`).

--fixture DIR writes DIR/vae/{config.json, diffusion_pytorch_model.safetensors} and
DIR/io.safetensors instead (without the `_f32` arrays) and skips step 4; it regenerates the
committed golden fixture:

    python3 scripts/parity/vae_parity.py --config tiny --no-cbs \\
        --fixture crates/cbs-models/tests/fixtures/vae-tiny
"""
import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from venv_bootstrap import reexec_in_venv

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["torch", "numpy", "safetensors", "diffusers"]
TOLERANCE = 1e-4

CONFIGS = {
    # stabilityai/sd-vae-ft-mse (config.json of the published model).
    "sd": dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=[128, 256, 512, 512],
        layers_per_block=2,
        norm_num_groups=32,
        act_fn="silu",
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        sample_size=256,
        scaling_factor=0.18215,
    ),
    "tiny": dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=[16, 32],
        layers_per_block=1,
        norm_num_groups=8,
        act_fn="silu",
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        sample_size=16,
        scaling_factor=0.18215,
    ),
}
DEFAULTS = {"sd": dict(size=256, batch=1), "tiny": dict(size=16, batch=2)}
OUTPUTS = ["mean", "logvar", "decoded"]
LEGACY_ATTENTION = re.compile(r"^((?:encoder|decoder)\.mid_block\.attentions\.\d+\.)(to_q|to_k|to_v|to_out\.0)\.")
LEGACY_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def ensure_venv(venv: Path):
    reexec_in_venv(venv, PACKAGES, ['torch', 'numpy', 'safetensors', 'diffusers'], __file__)

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
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / fan_in ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            else:
                continue
            done.update(f"{name}.{p}" for p, _ in module.named_parameters(recurse=False))
    missed = [n for n, _ in model.named_parameters() if n not in done]
    if missed:
        raise SystemExit(f"parameters of unexpected module types were not randomized: {missed}")


def rename_legacy(path: Path):
    """Renames the mid-block attention keys to the old (pre-0.14 diffusers) naming."""
    from safetensors.torch import load_file, save_file

    weights = load_file(str(path))
    renamed = {}
    for key, value in weights.items():
        m = LEGACY_ATTENTION.match(key)
        if m:
            key = m.group(1) + LEGACY_NAMES[m.group(2)] + "." + key[m.end():]
        renamed[key] = value
    changed = sum(a != b for a, b in zip(weights, renamed))
    save_file(renamed, str(path), metadata={"format": "pt"})
    path.chmod(0o644)
    return changed


def rel_err(got, ref):
    scale = ref.abs().max().item()
    return (got.double() - ref.double()).abs().max().item() / max(scale, 1e-30)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    ap.add_argument("--size", type=int, help="image height and width (default: 256 sd, 16 tiny)")
    ap.add_argument("--batch", type=int, help="batch size (default: 1 sd, 2 tiny)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--legacy-attention-keys", action="store_true",
                    help="save the mid-block attention weights as query/key/value/proj_attn")
    ap.add_argument("--cbs", type=Path, default=ROOT / "target" / "release" / "cbs")
    ap.add_argument("--venv", type=Path, default=ROOT / "target" / "torch-venv")
    ap.add_argument("--work", type=Path, default=ROOT / "target" / "vae-parity")
    ap.add_argument("--no-cbs", action="store_true", help="only write the reference files")
    ap.add_argument("--fixture", type=Path,
                    help="write the golden fixture to this directory (implies --no-cbs, no _f32 arrays)")
    args = ap.parse_args()
    ensure_venv(args.venv)

    import torch
    import diffusers
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    t0 = time.time()
    cfg = CONFIGS[args.config]
    size = args.size or DEFAULTS[args.config]["size"]
    batch = args.batch or DEFAULTS[args.config]["batch"]
    f = 2 ** (len(cfg["block_out_channels"]) - 1)
    if size % f:
        raise SystemExit(f"--size {size} is not a multiple of the downsampling factor {f}")
    out_dir = args.fixture or args.work
    fixture = args.fixture is not None
    vae_dir = out_dir / "vae"
    vae_dir.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}; config {args.config}, "
          f"x [{batch}, {cfg['in_channels']}, {size}, {size}], "
          f"z [{batch}, {cfg['latent_channels']}, {size // f}, {size // f}] -> {out_dir}", flush=True)

    # 1. the model, with seeded random weights
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**cfg).eval()
    randomize(vae, torch.Generator().manual_seed(args.seed))
    n_params = sum(p.numel() for p in vae.parameters())

    # 2. save_pretrained (float32 safetensors + config.json)
    vae.save_pretrained(str(vae_dir), safe_serialization=True)
    weights_file = vae_dir / "diffusion_pytorch_model.safetensors"
    if args.legacy_attention_keys:
        changed = rename_legacy(weights_file)
        reloaded = AutoencoderKL.from_pretrained(str(vae_dir), low_cpu_mem_usage=False).state_dict()
        same = reloaded.keys() == vae.state_dict().keys() and all(
            torch.equal(reloaded[k], v) for k, v in vae.state_dict().items())
        if not same:
            raise SystemExit("diffusers does not load the renamed file back to the same weights")
        print(f"renamed {changed} mid-block attention keys to the legacy naming "
              f"(diffusers loads them back identically)")
    print(f"{n_params} parameters saved to {weights_file} "
          f"({weights_file.stat().st_size / 2**20:.1f} MiB)  [{time.time() - t0:.1f} s]", flush=True)

    # 3. inputs and reference outputs
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.rand(batch, cfg["in_channels"], size, size, generator=gen) * 2 - 1
    z = torch.randn(batch, cfg["latent_channels"], size // f, size // f, generator=gen)

    def run(model, dtype):
        with torch.no_grad():
            dist = model.encode(x.to(dtype)).latent_dist
            decoded = model.decode(z.to(dtype)).sample
        return {"mean": dist.mean, "logvar": dist.logvar, "decoded": decoded}

    t1 = time.time()
    out32 = run(vae, torch.float32)
    t2 = time.time()
    out64 = run(vae.double(), torch.float64)
    t3 = time.time()
    print(f"forward float32 {t2 - t1:.1f} s, float64 {t3 - t2:.1f} s", flush=True)

    io = {"x": x, "z": z}
    for k in OUTPUTS:
        io[k] = out64[k].float()
        if not fixture:
            io[f"{k}_f32"] = out32[k]
    for k, v in io.items():
        if not torch.isfinite(v).all():
            raise SystemExit(f"{k} is not finite")
    io = {k: v.contiguous() for k, v in io.items()}
    io_file = out_dir / "io.safetensors"
    save_file(io, str(io_file), metadata={"format": "pt"})
    for path in (weights_file, io_file):
        path.chmod(0o644)  # safetensors writes 0600
    for k in OUTPUTS:
        v = out64[k]
        print(f"  {k:8} {list(v.shape)}  mean {v.mean().item():+.4f}  std {v.std().item():.4f}  "
              f"max|.| {v.abs().max().item():.4f}  torch f32 vs f64 {rel_err(out32[k], v):.2e}")
    std = out64["decoded"].std().item()
    if not 0.1 <= std <= 10:
        print(f"warning: decoded std {std:.3g} is outside [0.1, 10]; the weights scale is off")
    print(f"wrote {io_file}  [{time.time() - t0:.1f} s in all]", flush=True)

    if fixture or args.no_cbs:
        return

    # 4. cbs forward and comparison
    if not args.cbs.exists():
        print(f"\ncbs binary not found: {args.cbs}\n(the reference files are written; build it with "
              f"`cargo build --release -p cbs-cli` or pass --cbs PATH, or use --no-cbs)")
        sys.exit(2)
    out_file = out_dir / "cbs.safetensors"
    cmd = [str(args.cbs), "forward", "--vae", str(vae_dir), "--inputs", str(io_file),
           "--out", str(out_file)]
    print("$ " + " ".join(cmd), flush=True)
    t4 = time.time()
    subprocess.check_call(cmd)
    print(f"cbs forward {time.time() - t4:.1f} s")
    got = load_file(str(out_file))
    failures = 0
    for k in OUTPUTS:
        ref = out64[k]
        if k not in got:
            print(f"{k:8} missing from {out_file}  FAIL")
            failures += 1
            continue
        if list(got[k].shape) != list(ref.shape):
            print(f"{k:8} shape {list(got[k].shape)} != reference {list(ref.shape)}  FAIL")
            failures += 1
            continue
        err = rel_err(got[k], ref)
        ok = err <= TOLERANCE
        failures += not ok
        print(f"{k:8} cbs rel.err {err:.2e}  (torch float32 {rel_err(out32[k], ref):.2e})  "
              f"{'ok' if ok else 'FAIL'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
