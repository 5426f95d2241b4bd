#!/usr/bin/env python3
"""PyTorch twin of `cbs bench train` / `cbs bench sample`: the same SiT, JiT or UNet, the same
step.

Opt-in (needs torch; `scripts/bench_cpu.sh` installs it into a virtual environment).
Prints the same closing line as `cbs bench`: `median_step_ms=<value>`.

The SiT here is written from the published architecture facts (adaLN-Zero blocks, [cos, sin]
time features, fixed 2-D sin-cos positions, learn_sigma output halves), and the JiT likewise
(bottleneck patch embedding, RMSNorm, per-head qk-norm, 2-D RoPE, SwiGLU, in-context class
tokens; attention by `F.scaled_dot_product_attention`), and the guided-diffusion UNet as
torchcfm builds it, with the same parameter names and counts as `cbs inspect`, so both sides
run the same arithmetic:
  python3 benches/pytorch_twin.py train --model sit-s-4 --image-size 32 --in-channels 3 --batch 32
  python3 benches/pytorch_twin.py train --model jit-mini-4 --image-size 32 --in-channels 3
  python3 benches/pytorch_twin.py train --model unet-mini --image-size 32 --in-channels 3
"""
import argparse
import copy
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SIZES = {"s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16), "xl": (28, 1152, 16),
         "tiny": (6, 192, 3), "mini": (4, 128, 4), "nano": (2, 64, 2)}


def sincos_2d(dim, grid):
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")

    def axis(pos):
        a = pos.reshape(-1, 1).double() * omega[None]
        return torch.cat([a.sin(), a.cos()], dim=1)

    return torch.cat([axis(cols), axis(rows)], dim=1).float()[None]


class Attention(nn.Module):
    def __init__(self, h, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(h, 3 * h)
        self.proj = nn.Linear(h, h)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if x.is_cuda:  # what SiT's timm attention runs on a GPU: the fused kernel
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
            out = attn.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, h, hidden):
        super().__init__()
        self.fc1 = nn.Linear(h, hidden)
        self.fc2 = nn.Linear(hidden, h)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    def __init__(self, h, heads):
        super().__init__()
        self.attn = Attention(h, heads)
        self.mlp = Mlp(h, 4 * h)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(h, 6 * h))

    def forward(self, x, c):
        sm, cm, gm, sp, cp, gp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gm[:, None] * self.attn(modulate(F.layer_norm(x, x.shape[-1:], eps=1e-6), sm, cm))
        return x + gp[:, None] * self.mlp(modulate(F.layer_norm(x, x.shape[-1:], eps=1e-6), sp, cp))


class Final(nn.Module):
    def __init__(self, h, p, out):
        super().__init__()
        self.linear = nn.Linear(h, p * p * out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(h, 2 * h))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(F.layer_norm(x, x.shape[-1:], eps=1e-6), shift, scale))


class SiT(nn.Module):
    def __init__(self, depth, h, heads, patch, size, chans, classes):
        super().__init__()
        self.p, self.c, self.g = patch, chans, size // patch
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(chans, h, patch, patch)
        self.register_buffer("pos_embed", sincos_2d(h, self.g))
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, h), nn.SiLU(), nn.Linear(h, h))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(classes + 1, h)
        self.blocks = nn.ModuleList(Block(h, heads) for _ in range(depth))
        self.final_layer = Final(h, patch, 2 * chans)
        for m in self.modules():  # random everywhere: timing needs no adaLN-Zero
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, x, t, y):
        h = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        half = 128
        f = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        a = t[:, None] * f[None]
        c = self.t_embedder.mlp(torch.cat([a.cos(), a.sin()], -1)) + self.y_embedder.embedding_table(y)
        for blk in self.blocks:
            h = blk(h, c)
        out = self.final_layer(h, c)
        b, p, g, oc = x.shape[0], self.p, self.g, 2 * self.c
        img = out.reshape(b, g, g, p, p, oc).permute(0, 5, 1, 3, 2, 4).reshape(b, oc, g * p, g * p)
        return img[:, : self.c]


# ----------------------------------------------------------------------------- JiT

JIT_SIZES = {"b": (12, 768, 12, 128, 32, 4), "l": (24, 1024, 16, 128, 32, 8),
             "h": (32, 1280, 16, 256, 32, 10), "mini": (4, 128, 4, 64, 8, 1),
             "nano": (2, 64, 2, 16, 4, 1)}  # depth, hidden, heads, bottleneck, in-context len/start


def rope_tables(d, grid, cls):
    """(cos, sin) [cls + grid², d]: rows rotate the first d/2 channels, columns the last d/2,
    consecutive channel pairs share an angle; class tokens are not rotated."""
    half = d // 2
    freqs = 1.0 / 10000 ** (torch.arange(half // 2, dtype=torch.float32) * 2 / half)
    rows, cols = torch.meshgrid(torch.arange(grid).float(), torch.arange(grid).float(), indexing="ij")

    def axis(pos):
        return (pos.reshape(-1, 1) * freqs[None]).repeat_interleave(2, dim=1)

    ang = torch.cat([axis(rows), axis(cols)], dim=1)
    return (torch.cat([torch.ones(cls, d), ang.cos()]), torch.cat([torch.zeros(cls, d), ang.sin()]))


def rotate_half(x):
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-b, a), dim=-1).flatten(-2)


class JitAttention(nn.Module):
    def __init__(self, h, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(h, 3 * h)
        self.q_norm = nn.RMSNorm(h // heads, eps=1e-6)
        self.k_norm = nn.RMSNorm(h // heads, eps=1e-6)
        self.proj = nn.Linear(h, h)

    def forward(self, x, cos, sin):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class SwiGlu(nn.Module):
    def __init__(self, h, hidden):
        super().__init__()
        self.w12 = nn.Linear(h, 2 * hidden)
        self.w3 = nn.Linear(hidden, h)

    def forward(self, x):
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class JitBlock(nn.Module):
    def __init__(self, h, heads):
        super().__init__()
        self.norm1 = nn.RMSNorm(h, eps=1e-6)
        self.attn = JitAttention(h, heads)
        self.norm2 = nn.RMSNorm(h, eps=1e-6)
        self.mlp = SwiGlu(h, int(int(h * 4.0) * 2 / 3))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(h, 6 * h))

    def forward(self, x, c, cos, sin):
        sm, cm, gm, sp, cp, gp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gm[:, None] * self.attn(modulate(self.norm1(x), sm, cm), cos, sin)
        return x + gp[:, None] * self.mlp(modulate(self.norm2(x), sp, cp))


class Jit(nn.Module):
    """Predicts the clean image; trained on the velocity (x̂ − z_t) / max(1 − t, 0.05)."""

    def __init__(self, depth, h, heads, bottleneck, icl, ics, patch, size, chans, classes):
        super().__init__()
        self.p, self.c, self.g, self.icl, self.ics = patch, chans, size // patch, icl, ics
        self.x_embedder = nn.Module()
        self.x_embedder.proj1 = nn.Conv2d(chans, bottleneck, patch, patch, bias=False)
        self.x_embedder.proj2 = nn.Conv2d(bottleneck, h, 1)
        self.register_buffer("pos_embed", sincos_2d(h, self.g))
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, h), nn.SiLU(), nn.Linear(h, h))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(classes + 1, h)
        self.in_context_posemb = nn.Parameter(torch.randn(1, icl, h) * 0.02)
        self.blocks = nn.ModuleList(JitBlock(h, heads) for _ in range(depth))
        self.final_layer = nn.Module()
        self.final_layer.norm_final = nn.RMSNorm(h, eps=1e-6)
        self.final_layer.linear = nn.Linear(h, patch * patch * chans)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(h, 2 * h))
        self.rope = rope_tables(h // heads, self.g, 0)
        self.rope_ic = rope_tables(h // heads, self.g, icl)
        for m in self.modules():  # random everywhere: timing needs no adaLN-Zero
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, x, t, y):
        h = self.x_embedder.proj2(self.x_embedder.proj1(x)).flatten(2).transpose(1, 2) + self.pos_embed
        f = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
        a = t[:, None] * f[None]
        y_emb = self.y_embedder.embedding_table(y)
        c = self.t_embedder.mlp(torch.cat([a.cos(), a.sin()], -1)) + y_emb
        for i, blk in enumerate(self.blocks):
            if self.icl and i == self.ics:
                h = torch.cat([y_emb[:, None] + self.in_context_posemb, h], dim=1)
            cos, sin = self.rope_ic if self.icl and i >= self.ics else self.rope
            h = blk(h, c, cos, sin)
        if self.icl:
            h = h[:, self.icl:]
        fl = self.final_layer
        shift, scale = fl.adaLN_modulation(c).chunk(2, dim=1)
        out = fl.linear(modulate(fl.norm_final(h), shift, scale))
        b, p, g = x.shape[0], self.p, self.g
        return out.reshape(b, g, g, p, p, self.c).permute(0, 5, 1, 3, 2, 4).reshape(x.shape)


# ----------------------------------------------------------------------------- UNet

# model_channels, res blocks, attention resolutions, channel mult, heads, channels per head,
# dropout (torchcfm's CIFAR-10 model and the small CPU size).
UNETS = {"cifar": (128, 2, (16,), (1, 2, 2, 2), 4, 64, 0.1),
         "mini": (32, 1, (8,), (1, 2, 2), 2, 32, 0.0)}


class ResBlock(nn.Module):
    def __init__(self, cin, cout, ted, dropout):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(32, cin), nn.SiLU(),
                                       nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(ted, cout))
        self.out_layers = nn.Sequential(nn.GroupNorm(32, cout), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """GroupNorm, 1x1 qkv, guided-diffusion's legacy head order ([head][q|k|v][ch])."""

    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(32, c)
        self.qkv = nn.Conv1d(c, 3 * c, 1)
        self.proj_out = nn.Conv1d(c, c, 1)

    def forward(self, x):
        b, c, hh, ww = x.shape
        xt = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(xt))
        ch = c // self.heads
        q, k, v = qkv.reshape(b * self.heads, 3 * ch, -1).split(ch, dim=1)
        scale = ch ** -0.25
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(-1)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
        return (xt + self.proj_out(a)).reshape(b, c, hh, ww)


class Downsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.op = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    """The guided-diffusion UNet as torchcfm's wrapper builds it (no scale-shift norm,
    conv resampling), predicting the velocity."""

    def __init__(self, mc, nres, attn_res, mult, heads, head_ch, dropout, size, chans, classes):
        super().__init__()
        ted, self.mc = 4 * mc, mc
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        self.label_emb = nn.Embedding(classes + 1, ted) if classes else None
        attn_ds = [size // r for r in attn_res]

        def attn(c):
            return AttentionBlock(c, c // head_ch if head_ch else heads)

        ch = mc * mult[0]
        self.input_blocks = nn.ModuleList([nn.ModuleList([nn.Conv2d(chans, ch, 3, padding=1)])])
        skips, ds = [ch], 1
        for level, m in enumerate(mult):
            for _ in range(nres):
                layers = [ResBlock(ch, mc * m, ted, dropout)]
                ch = mc * m
                if ds in attn_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(nn.ModuleList(layers))
                skips.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
                ds *= 2
        self.middle_block = nn.ModuleList([ResBlock(ch, ch, ted, dropout), attn(ch),
                                           ResBlock(ch, ch, ted, dropout)])
        self.output_blocks = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(nres + 1):
                layers = [ResBlock(ch + skips.pop(), mc * m, ted, dropout)]
                ch = mc * m
                if ds in attn_ds:
                    layers.append(attn(ch))
                if level and i == nres:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(nn.ModuleList(layers))
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(ch, chans, 3, padding=1))

    @staticmethod
    def run(block, h, emb):
        for layer in block:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x, t, y):
        half = self.mc // 2
        f = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        a = t[:, None] * f[None]
        emb = self.time_embed(torch.cat([a.cos(), a.sin()], -1))
        if self.label_emb is not None:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for block in self.input_blocks:
            h = self.run(block, h, emb)
            hs.append(h)
        h = self.run(self.middle_block, h, emb)
        for block in self.output_blocks:
            h = self.run(block, torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def build(a):
    if a.model.startswith("unet-"):
        return UNet(*UNETS[a.model.split("-")[1]], a.image_size, a.in_channels, a.num_classes)
    family, size, patch = a.model.split("-")
    if family == "jit":
        depth, h, heads, bottleneck, icl, ics = JIT_SIZES[size]
        return Jit(depth, h, heads, bottleneck, icl, ics, int(patch), a.image_size,
                   a.in_channels, a.num_classes)
    depth, h, heads = SIZES[size]
    return SiT(depth, h, heads, int(patch), a.image_size, a.in_channels, a.num_classes)


def bench_matmul(a):
    """Twin of `cbs bench matmul`: one f32 product [M, K]·[K, N], median of --steps."""
    m, k, n = (int(v) for v in a.shape.split(","))
    lhs = torch.randn(k, m).t() if a.lhs_transposed else torch.randn(m, k)
    rhs = torch.randn(k, n)
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        lhs @ rhs
        if i >= a.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    print(f"pytorch matmul: [{m}, {k}]·[{k}, {n}] lhs_transposed={a.lhs_transposed} "
          f"threads={a.threads} torch={torch.__version__}")
    print(f"gflops={2 * m * k * n / med / 1e6:.1f}")
    print(f"median_ms={med:.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["train", "sample", "matmul"])
    ap.add_argument("--model", default="sit-s-4")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--in-channels", type=int, default=3)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="f32", choices=["f32", "tf32", "bf16", "f16"],
                    help="bf16/f16: autocast (f32 weights, optimizer and EMA), as cbs")
    ap.add_argument("--shape", default="2048,384,1536", help="matmul: M,K,N")
    ap.add_argument("--lhs-transposed", action="store_true", help="matmul: lhs = [K, M]ᵀ")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.what == "matmul":
        return bench_matmul(a)
    dev = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = a.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = a.precision == "tf32"
    half = {"bf16": torch.bfloat16, "f16": torch.float16}.get(a.precision)
    model = build(a).to(dev)
    jit = isinstance(model, Jit)
    n_params = sum(t.numel() for t in model.state_dict().values())  # buffers included
    fwd = torch.compile(model) if a.compile else model
    b, shape = a.batch, (a.batch, a.in_channels, a.image_size, a.image_size)
    x0, x1 = torch.randn(shape, device=dev), torch.randn(shape, device=dev)
    t, y = torch.rand(b, device=dev), torch.randint(0, a.num_classes, (b,), device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def autocast():
        return torch.autocast(dev.type, dtype=half, enabled=half is not None)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    ema = copy.deepcopy(model).requires_grad_(False)
    times, phases = [], []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        if a.what == "train":
            tb = t[:, None, None, None]
            xt = tb * x1 + (1 - tb) * x0
            with autocast():
                pred = fwd(xt, t, y).float()  # the loss in f32, as cbs
            if jit:  # velocity through the predicted image, as cbs trains JiT
                denom = (1 - tb).clamp_min(0.05)
                loss = F.mse_loss((pred - xt) / denom, (x1 - xt) / denom)
            else:
                loss = F.mse_loss(pred, x1 - x0)
            sync()
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sync()
            t2 = time.perf_counter()
            opt.step()
            sync()
            t3 = time.perf_counter()
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.mul_(0.9999).add_(pm, alpha=1 - 0.9999)
            sync()
            t4 = time.perf_counter()
            if i >= a.warmup:
                phases.append([(t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t4 - t3) * 1e3])
        else:
            with torch.no_grad(), autocast():
                fwd(x0, t, y)
            sync()
        if i >= a.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    if phases:
        # Same split as `cbs bench train`: forward (with loss), backward, optimizer, EMA.
        f, bw, o, e = (sum(p[k] for p in phases) / len(phases) for k in range(4))
        print(f"phase ms (mean): forward {f:.1f}, backward {bw:.1f}, optimizer {o:.1f}, ema {e:.1f}")
    print(f"pytorch {a.what}: model={a.model} params={n_params} batch={b} threads={a.threads} "
          f"compile={a.compile} device={a.device} precision={a.precision} "
          f"torch={torch.__version__}")
    print(f"images_per_s={b * 1000 / med:.2f}")
    print(f"peak_rss_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")
    if dev.type == "cuda":
        print(f"peak_device_mb={torch.cuda.max_memory_allocated() / 2**20:.1f}")
    print(f"median_step_ms={med:.3f}")


if __name__ == "__main__":
    main()
