#!/usr/bin/env python3
"""Parity of `cbs forward` on checkpoints written by the reference JiT code (random weights).

OPT-IN developer check, never run in CI. It pip-installs torch, numpy, safetensors, einops and
timm into a virtual environment (several GB with PyTorch's default wheels), re-runs itself
inside it and imports the reference `denoiser.py`, `model_jit.py`, `util/misc.py` and
`util/lr_sched.py` from a JiT checkout given by path (https://github.com/LTH14/JiT; not
vendored). The argument namespace is the one of `get_args_parser()` in the checkout's
`main_jit.py`, read from that file (main_jit.py itself imports the data and evaluation
dependencies, which are not installed).

    python3 scripts/parity/jit_parity.py --jit PATH/TO/JiT [--model JiT-B/16] [--img-size 256]
        [--batch B] [--seed N] [--cbs target/release/cbs] [--venv DIR] [--work DIR]

What it does, for the model (default JiT-B/16 at 256 px, 1000 classes):
  1. builds the reference `Denoiser(args)` with main_jit.py's default arguments (dropout 0,
     t_eps 0.05) and checks that its state_dict, less the `net.` prefix, has the names and
     shapes `cbs inspect --model PRESET --json` prints; sets every trainable parameter (the
     zero-initialised adaLN and final layers included) to seeded random values scaled so that
     activations stay O(1) (the frozen sin-cos `pos_embed` keeps its value, as in training),
     and `ema_params1` / `ema_params2` to two more independent seeded sets (Parameters, as
     main_jit.py makes them for a run from scratch);
  2. takes one training step as engine_jit.py does (lr from util/lr_sched.py after the warmup,
     AdamW with util/misc.py's weight-decay groups and betas (0.9, 0.95), `update_ema()`), then
     saves with util/misc.py's own `save_model` ({"model", "optimizer", "epoch", "args"
     (argparse.Namespace), "model_ema1", "model_ema2"}, keys under `net.`) to
     `checkpoint-last.pth` (zip layout) and the same dict in the legacy layout;
  3. runs the reference network in eval mode on seeded z [B, 3, H, W] (t·image + (1 − t)·noise,
     the reference's interpolation: t = 0 noise, t = 1 data, the cbs convention), t in (0, 1)
     with values near 0 and 1, labels y with the null class `class_num`, for the raw weights
     and for the EMA weights swapped in as engine_jit.py's `evaluate` does (`ema_params1`), and
     converts the clean-image prediction to a velocity with the reference's
     `(x_pred − z) / (1 − t).clamp_min(t_eps)`;
  4. runs
         cbs forward --checkpoint FILE --model PRESET --image-size H \\
             --inputs in.safetensors --out out.safetensors --weights ema|model
     on each file and compares `output` (the clean-image prediction) and `velocity` with the
     reference of the same weights: max |cbs - ref| relative to max |ref|, target <= 1e-4.
     One line per (file, weights) with the figures and the entry `cbs` reports having used.
Each checkpoint file holds the weights, both EMAs and the AdamW state: about 2.6 GB for JiT-B/16.

The reference code calls `.cuda()` on tensors it creates (RoPE tables, attention bias) and
decorates its blocks with `@torch.compile`; the check runs it on the CPU in float32, with
`Tensor.cuda` made the identity while the reference code runs and TorchDynamo disabled (eager
execution of the same operations).
Exit status 0 when every check passes, 1 when one fails, 2 when the cbs binary is missing
(build it with `cargo build --release -p cbs-cli`).
"""
import argparse
import ast
import contextlib
import copy
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

from venv_bootstrap import reexec_in_venv

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["torch", "numpy", "safetensors", "einops", "timm"]
TOLERANCE = 1e-4
PRESETS = {
    "JiT-B/16": "jit-b-16",
    "JiT-B/32": "jit-b-32",
    "JiT-L/16": "jit-l-16",
    "JiT-L/32": "jit-l-32",
    "JiT-H/16": "jit-h-16",
    "JiT-H/32": "jit-h-32",
}
ENTRY = re.compile(r"entry `([^`]+)`")


def ensure_venv(venv: Path):
    reexec_in_venv(venv, PACKAGES, ['torch', 'numpy', 'safetensors', 'einops', 'timm'], __file__)

def reference_args(jit: Path, argv):
    """Parse `argv` with `get_args_parser()` of the checkout's main_jit.py (that function only)."""
    source = (jit / "main_jit.py").read_text()
    tree = ast.parse(source)
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_args_parser"]
    if not funcs:
        raise SystemExit(f"{jit / 'main_jit.py'} has no get_args_parser()")
    scope = {"argparse": argparse}
    exec(compile(ast.Module(body=funcs, type_ignores=[]), str(jit / "main_jit.py"), "exec"), scope)
    return scope["get_args_parser"]().parse_args(argv)


@contextlib.contextmanager
def cpu_reference(torch):
    """`Tensor.cuda` as the identity while the reference code runs on the CPU."""
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = saved


def randomize(net, gen):
    """Seeded random values for every trainable parameter, scaled so activations stay O(1)."""
    import torch
    from torch import nn

    done = set()
    with torch.no_grad():
        for name, module in net.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / fan_in ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
            elif type(module).__name__ == "RMSNorm":
                module.weight.copy_(0.8 + 0.4 * torch.rand(module.weight.shape, generator=gen))
            else:
                continue
            done.update(f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False))
        for name, p in net.named_parameters():
            if name.endswith("in_context_posemb"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
                done.add(name)
    missed = [n for n, p in net.named_parameters() if p.requires_grad and n not in done]
    if missed:
        raise SystemExit(f"parameters of unexpected module types were not randomized: {missed}")


def check_shapes(cbs: Path, preset: str, img_size: int, denoiser):
    """The reference state_dict (less `net.`) against `cbs inspect`; a list of differences."""
    cmd = [str(cbs), "inspect", "--model", preset, "--image-size", str(img_size), "--json"]
    ours = json.loads(subprocess.check_output(cmd))["tensors"]
    ref = {}
    for k, v in denoiser.state_dict().items():
        if not k.startswith("net."):
            return [f"{k}: a Denoiser state_dict key outside `net.`"]
        ref[k[len("net."):]] = list(v.shape)
    return [f"{key}: reference {ref.get(key)} cbs {ours.get(key)}"
            for key in sorted(set(ref) | set(ours)) if ref.get(key) != ours.get(key)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jit", type=Path, required=True,
                    help="a JiT checkout (denoiser.py, model_jit.py, util/, main_jit.py)")
    ap.add_argument("--model", default="JiT-B/16", choices=sorted(PRESETS))
    ap.add_argument("--img-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cbs", type=Path, default=ROOT / "target" / "release" / "cbs")
    ap.add_argument("--venv", type=Path, default=ROOT / "target" / "torch-venv")
    ap.add_argument("--work", type=Path, default=ROOT / "target" / "jit-parity")
    args = ap.parse_args()
    ensure_venv(args.venv)

    import torch
    from safetensors.torch import load_file, save_file

    if not args.cbs.exists():
        print(f"{args.cbs} not found (cargo build --release -p cbs-cli)", file=sys.stderr)
        sys.exit(2)
    if args.batch < 3:
        raise SystemExit("--batch must be at least 3 (t near 0 and 1, the null class)")
    torch._dynamo.config.disable = True
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast.*")
    jit = args.jit.resolve()
    sys.path.insert(0, str(jit))
    from denoiser import Denoiser
    import util.lr_sched as lr_sched
    import util.misc as misc

    print(f"torch {torch.__version__}, reference {jit}", flush=True)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    preset = PRESETS[args.model]
    ref_args = reference_args(jit, ["--model", args.model, "--img_size", str(args.img_size),
                                    "--output_dir", str(work), "--seed", str(args.seed)])
    # What main() and init_distributed_mode add under torchrun (one process).
    ref_args.rank, ref_args.gpu, ref_args.distributed, ref_args.dist_backend = 0, 0, True, "nccl"
    if ref_args.lr is None:
        ref_args.lr = ref_args.blr * ref_args.batch_size * ref_args.world_size / 256
    num_classes = ref_args.class_num

    torch.manual_seed(args.seed)
    b, s = args.batch, args.img_size
    gen = torch.Generator().manual_seed(args.seed)
    image = torch.rand(b, 3, s, s, generator=gen) * 2 - 1
    noise = torch.randn(b, 3, s, s, generator=gen) * ref_args.noise_scale
    t = torch.rand(b, generator=gen) * 0.98 + 0.01
    t[0], t[-1] = 1e-3, 0.999
    z = t.view(-1, 1, 1, 1) * image + (1 - t.view(-1, 1, 1, 1)) * noise
    y = torch.randint(0, num_classes, (b,), generator=gen)
    y[0], y[1], y[-1] = 0, num_classes, num_classes - 1  # num_classes: the null class
    save_file({"x": z, "t": t, "y": y}, str(work / "in.safetensors"))

    with cpu_reference(torch):
        denoiser = Denoiser(ref_args)
        diffs = check_shapes(args.cbs, preset, s, denoiser)
        if diffs:
            print(f"the reference {args.model} state_dict and `cbs inspect --model {preset}` differ:")
            for d in diffs:
                print(f"  {d}")
            sys.exit(1)
        randomize(denoiser.net, torch.Generator().manual_seed(100 * args.seed + 1))
        for k in (1, 2):
            ema = copy.deepcopy(denoiser)
            randomize(ema.net, torch.Generator().manual_seed(100 * args.seed + 1 + k))
            setattr(denoiser, f"ema_params{k}", copy.deepcopy(list(ema.parameters())))
            del ema

        # One step of engine_jit.train_one_epoch (float32 here), past the warmup.
        param_groups = misc.add_weight_decay(denoiser, ref_args.weight_decay)
        optimizer = torch.optim.AdamW(param_groups, lr=ref_args.lr, betas=(0.9, 0.95))
        lr_sched.adjust_learning_rate(optimizer, ref_args.warmup_epochs + 0.5, ref_args)
        denoiser.train()
        loss = denoiser(image, y.clamp(max=num_classes - 1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        denoiser.update_ema()
        epoch = ref_args.warmup_epochs

        # The EMA weights swapped in as engine_jit.evaluate does.
        ema_denoiser = copy.deepcopy(denoiser)
        ema_state_dict = copy.deepcopy(denoiser.state_dict())
        for i, (name, _value) in enumerate(denoiser.named_parameters()):
            ema_state_dict[name] = denoiser.ema_params1[i]
        ema_denoiser.load_state_dict(ema_state_dict)

        refs = {}
        with torch.no_grad():
            for weights, d in (("model", denoiser), ("ema", ema_denoiser)):
                d.eval()
                x_pred = d.net(z, t, y)
                v_pred = (x_pred - z) / (1.0 - t.view(-1, 1, 1, 1)).clamp_min(d.t_eps)
                refs[weights] = (x_pred, v_pred)
        del ema_denoiser

    files = {"checkpoint-last.pth": True, "checkpoint-last-legacy.pth": False}
    misc.save_model(args=ref_args, model_without_ddp=denoiser, optimizer=optimizer, epoch=epoch,
                    epoch_name="last")
    saved = misc.save_on_master
    misc.save_on_master = lambda obj, _path: torch.save(
        obj, work / "checkpoint-last-legacy.pth", _use_new_zipfile_serialization=False)
    try:
        misc.save_model(args=ref_args, model_without_ddp=denoiser, optimizer=optimizer,
                        epoch=epoch, epoch_name="last")
    finally:
        misc.save_on_master = saved
    del denoiser, optimizer

    failures = 0
    print(f"{args.model} at {s} px ({preset}), batch {b}, t {[round(v, 4) for v in t.tolist()]}, "
          f"y {y.tolist()}, t_eps {ref_args.t_eps}", flush=True)
    for name in files:
        for weights in ("ema", "model"):
            out = work / f"out-{name}-{weights}.safetensors"
            cmd = [str(args.cbs), "forward", "--checkpoint", str(work / name), "--model", preset,
                   "--image-size", str(s), "--inputs", str(work / "in.safetensors"),
                   "--out", str(out), "--weights", weights]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                print(f"{name:27} weights={weights:5} cbs failed (exit {run.returncode}):\n"
                      f"{run.stderr.strip()}")
                failures += 1
                continue
            m = ENTRY.search(run.stderr)
            entry = m.group(1) if m else "?"
            got = load_file(str(out))
            x_ref, v_ref = refs[weights]
            errs = []
            for key, ref in (("output", x_ref), ("velocity", v_ref)):
                if got[key].shape != ref.shape:
                    errs.append((key, float("inf"), ref.abs().max().item()))
                    continue
                scale = ref.abs().max().item()
                errs.append((key, (got[key] - ref).abs().max().item() / scale, scale))
            ok = all(e <= TOLERANCE for _, e, _ in errs)
            failures += not ok
            figures = "  ".join(f"{k} rel.err {e:.2e} (max|ref| {m:.3g})" for k, e, m in errs)
            print(f"{name:27} weights={weights:5} entry `{entry}`  {figures}  "
                  f"{'ok' if ok else 'FAIL'}", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
