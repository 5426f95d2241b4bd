//! Small layers whose every input and weight receives a gradient.
//!
//! candle's own fused `layer_norm`, `softmax_last_dim` and the default `LayerNorm` module
//! return no gradient (silently). Each function here takes the run's [`Kernels`] policy: under
//! `Kernels::Fused`, CPU f32/f64 tensors take the kernels of `cbs_kernels`, which have
//! hand-written backward passes; otherwise (`Kernels::Composed`, other devices and dtypes) the
//! [`composed`] versions, which candle differentiates op by op. Besides the single ops (LayerNorm, softmax, GELU, SiLU), the
//! transformer-block pieces are fused whole: [`layer_norm_modulate`], [`gated_residual`],
//! [`linear`], [`attention`], JiT's [`rms_norm_modulate`], [`qk_norm_rope`] and [`swiglu`],
//! the UNet's [`group_norm`] (with SiLU), and the loss [`mse`] — each one graph node instead
//! of several, which matters because candle's backward gives every input of every node a
//! zero-filled gradient buffer plus an add.

use candle_core::{Result, Tensor};
use candle_nn::Linear;
use cbs_kernels as fused;
pub use cbs_kernels::Kernels;
use cbs_kernels::Op;

/// Op-by-op versions (any device), kept as the reference the fused kernels are tested against.
pub mod composed {
    use candle_core::{DType, Result, Tensor, D};

    /// `f(x)` computed in f32 when `x` is half precision (f16/bf16), returned in `x`'s dtype:
    /// statistics over a row (norms, softmax) reduce in f32, as under PyTorch's autocast.
    pub fn in_f32(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        match x.dtype() {
            DType::F16 | DType::BF16 => f(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype()),
            _ => f(x),
        }
    }

    pub fn layer_norm_no_affine(x: &Tensor, eps: f64) -> Result<Tensor> {
        in_f32(x, |x| {
            let mean = x.mean_keepdim(D::Minus1)?;
            let xc = x.broadcast_sub(&mean)?;
            let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
            xc.broadcast_div(&(var + eps)?.sqrt()?)
        })
    }

    pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
        in_f32(x, |x| candle_nn::ops::softmax(x, D::Minus1))
    }

    /// candle's `gelu` is the tanh approximation (`gelu_erf` is the exact one).
    pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
        x.gelu()
    }

    pub fn silu(x: &Tensor) -> Result<Tensor> {
        x.silu()
    }

    pub fn layer_norm_modulate(
        x: &Tensor,
        shift: &Tensor,
        scale: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        super::modulate(&layer_norm_no_affine(x, eps)?, shift, scale)
    }

    pub fn gated_residual(x: &Tensor, gate: &Tensor, h: &Tensor) -> Result<Tensor> {
        x + h.broadcast_mul(&gate.unsqueeze(1)?)?
    }

    /// `w·x / √(mean(x²) + eps)` over the last dimension, in f32 for half-precision inputs
    /// (as JiT's reference).
    pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
        let dtype = x.dtype();
        let up = matches!(dtype, DType::F16 | DType::BF16);
        let (xf, wf) = if up {
            (x.to_dtype(DType::F32)?, w.to_dtype(DType::F32)?)
        } else {
            (x.clone(), w.clone())
        };
        let inv = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?
            .sqrt()?
            .recip()?;
        let y = xf.broadcast_mul(&inv)?.broadcast_mul(&wf)?;
        if up {
            y.to_dtype(dtype)
        } else {
            Ok(y)
        }
    }

    pub fn rms_norm_modulate(
        x: &Tensor,
        w: &Tensor,
        shift: &Tensor,
        scale: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        super::modulate(&rms_norm(x, w, eps)?, shift, scale)
    }

    /// Per-head RMS norm of q and k (weights `wq`, `wk`), RoPE on both, v unchanged:
    /// `[B, N, 3·H·d]` in and out.
    pub fn qk_norm_rope(
        qkv: &Tensor,
        wq: &Tensor,
        wk: &Tensor,
        rope: &crate::jit::rope::Rope,
        heads: usize,
        eps: f64,
    ) -> Result<Tensor> {
        let (b, n, c3) = qkv.dims3()?;
        let c = c3 / 3;
        let d = c / heads;
        let parts = qkv
            .reshape((b, n, 3, heads, d))? // [B, N, 3, H, d]
            .permute((2, 0, 3, 1, 4))?; // [3, B, H, N, d]
        let q = rope.apply(&rms_norm(&parts.get(0)?.contiguous()?, wq, eps)?)?; // [B, H, N, d]
        let k = rope.apply(&rms_norm(&parts.get(1)?.contiguous()?, wk, eps)?)?; // [B, H, N, d]
        let v = parts.get(2)?; // [B, H, N, d]
        let tokens = |t: Tensor| t.transpose(1, 2)?.reshape((b, n, c)); // [B, N, H·d]
        Tensor::cat(&[tokens(q)?, tokens(k)?, tokens(v)?], 2) // [B, N, 3C]
    }

    /// GroupNorm (`groups` groups, affine `w`, `b`: `[C]`) of `x` (`[B, C, …]`), in at least
    /// f32 (half-precision inputs are upcast, as the reference), then SiLU if `act`.
    pub fn group_norm(
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        groups: usize,
        eps: f64,
        act: bool,
    ) -> Result<Tensor> {
        let dtype = x.dtype();
        let internal = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let dims = x.dims().to_vec();
        let c = dims[1];
        let xg = x.to_dtype(internal)?.reshape((dims[0], groups, ()))?; // [B, G, C/G·S]
        let xn = layer_norm_no_affine(&xg, eps)?.reshape((dims[0], c, ()))?; // [B, C, S]
        let w = w.to_dtype(internal)?.reshape((c, 1))?; // [C, 1]
        let b = b.to_dtype(internal)?.reshape((c, 1))?; // [C, 1]
        let y = xn.broadcast_mul(&w)?.broadcast_add(&b)?.reshape(dims)?; // [B, C, …]
        let y = if act { silu(&y)? } else { y };
        y.to_dtype(dtype)
    }

    pub fn swiglu(x: &Tensor) -> Result<Tensor> {
        let m = x.dim(D::Minus1)? / 2;
        let a = x.narrow(D::Minus1, 0, m)?;
        let b = x.narrow(D::Minus1, m, m)?;
        silu(&a)? * b
    }

    pub fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
        cbs_flow::interpolant::mse_composed(a, b)
    }

    pub fn bias_add(y: &Tensor, b: &Tensor) -> Result<Tensor> {
        y.broadcast_add(b)
    }

    pub fn attention(qkv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
        let (b, n, c3) = qkv.dims3()?;
        let c = c3 / 3;
        let d = c / heads;
        let qkv = qkv
            .reshape((b, n, 3, heads, d))? // [B, N, 3, H, d]
            .permute((2, 0, 3, 1, 4))?; // [3, B, H, N, d]
        let q = (qkv.get(0)?.contiguous()? * scale)?; // [B, H, N, d]
        let k = qkv.get(1)?.contiguous()?; // [B, H, N, d]
        let v = qkv.get(2)?.contiguous()?; // [B, H, N, d]
        let attn = softmax_last(&q.matmul(&k.t()?)?)?; // [B, H, N, N]
        attn.matmul(&v)? // [B, H, N, d]
            .transpose(1, 2)? // [B, N, H, d]
            .reshape((b, n, c)) // [B, N, C]
    }

    /// candle_nn's own `Linear::forward`, on a contiguous input: with a strided `[B, N, K]`
    /// input it multiplies by a batch-broadcast weight, and candle 0.11.1's CPU matrix product
    /// gets that wrong when the left operand is a transposed view.
    pub fn linear(lin: &candle_nn::Linear, x: &Tensor) -> Result<Tensor> {
        candle_nn::Module::forward(lin, &x.contiguous()?)
    }
}

/// LayerNorm over the last dimension without affine parameters.
pub fn layer_norm_no_affine(k: Kernels, x: &Tensor, eps: f64) -> Result<Tensor> {
    if k.fuses_op(Op::LayerNorm, &[x]) {
        fused::layer_norm_no_affine(x, eps)
    } else {
        composed::layer_norm_no_affine(x, eps)
    }
}

/// Softmax over the last dimension.
pub fn softmax_last(k: Kernels, x: &Tensor) -> Result<Tensor> {
    if k.fuses_op(Op::SoftmaxLast, &[x]) {
        fused::softmax_last(x)
    } else {
        composed::softmax_last(x)
    }
}

/// GELU, tanh approximation.
pub fn gelu_tanh(k: Kernels, x: &Tensor) -> Result<Tensor> {
    if k.fuses_op(Op::GeluTanh, &[x]) {
        fused::gelu_tanh(x)
    } else {
        composed::gelu_tanh(x)
    }
}

/// SiLU, `x·σ(x)`.
pub fn silu(k: Kernels, x: &Tensor) -> Result<Tensor> {
    if k.fuses_op(Op::Silu, &[x]) {
        fused::silu(x)
    } else {
        composed::silu(x)
    }
}

/// LayerNorm over the last dimension (no affine, epsilon `eps`) followed by the adaLN
/// modulation: `LN(x)·(1 + scale) + shift`, `x`: `[B, N, C]`, `shift`, `scale`: `[B, C]`.
/// The same as `modulate(&layer_norm_no_affine(x, eps)?, shift, scale)`.
pub fn layer_norm_modulate(
    k: Kernels,
    x: &Tensor,
    shift: &Tensor,
    scale: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    if k.fuses_op(Op::LayerNormModulate, &[x, shift, scale]) {
        fused::layer_norm_modulate(x, shift, scale, eps)
    } else {
        composed::layer_norm_modulate(x, shift, scale, eps)
    }
}

/// The adaLN-Zero gated residual `x + gate·h`: `x`, `h`: `[B, N, C]`, `gate`: `[B, C]`
/// broadcast over the tokens.
pub fn gated_residual(k: Kernels, x: &Tensor, gate: &Tensor, h: &Tensor) -> Result<Tensor> {
    if k.fuses_op(Op::GatedResidual, &[x, gate, h]) {
        fused::gated_residual(x, gate, h)
    } else {
        composed::gated_residual(x, gate, h)
    }
}

/// JiT's RMSNorm (learned weight `w`, epsilon `eps`) followed by the adaLN modulation:
/// `RMS(x)·w·(1 + scale) + shift`, `x`: `[B, N, C]`, `w`: `[C]`, `shift`, `scale`: `[B, C]`.
pub fn rms_norm_modulate(
    k: Kernels,
    x: &Tensor,
    w: &Tensor,
    shift: &Tensor,
    scale: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    if k.fuses_op(Op::RmsNormModulate, &[x, w, shift, scale]) {
        // The per-sample multiplier w·(1 + scale) is [B, C]: cheap to compose.
        let a = scale.affine(1.0, 1.0)?.broadcast_mul(w)?;
        fused::rms_norm_modulate(x, &a, shift, eps)
    } else {
        composed::rms_norm_modulate(x, w, shift, scale, eps)
    }
}

/// JiT's per-head RMS qk-norm (weights `wq`, `wk`: `[d]`) and 2-D RoPE on a fused projection
/// `qkv` `[B, N, 3·H·d]` (channels (q|k|v, head, d)), v unchanged; same layout out, ready for
/// [`attention`].
pub fn qk_norm_rope(
    k: Kernels,
    qkv: &Tensor,
    wq: &Tensor,
    wk: &Tensor,
    rope: &crate::jit::rope::Rope,
    heads: usize,
    eps: f64,
) -> Result<Tensor> {
    if k.fuses_op(Op::QkNormRope, &[qkv, wq, wk, rope.table()]) {
        let w = Tensor::stack(&[wq, wk], 0)?; // [2, d]
        fused::qk_norm_rope(qkv, &w, rope.table(), heads, eps)
    } else {
        composed::qk_norm_rope(qkv, wq, wk, rope, heads, eps)
    }
}

/// GroupNorm over `groups` groups of the channels of `x` (`[B, C, …]`, epsilon `eps`) with the
/// affine weight and bias `w`, `b` (`[C]`), followed by SiLU when `act` is set.
pub fn group_norm(
    k: Kernels,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    groups: usize,
    eps: f64,
    act: bool,
) -> Result<Tensor> {
    if k.fuses_op(Op::GroupNorm, &[x, w, b]) && x.rank() >= 2 {
        fused::group_norm(x, w, b, groups, eps, act)
    } else {
        composed::group_norm(x, w, b, groups, eps, act)
    }
}

/// SwiGLU gate: `[…, 2m]` = `[a | b]` → `silu(a)·b` (`[…, m]`).
pub fn swiglu(k: Kernels, x: &Tensor) -> Result<Tensor> {
    if k.fuses_op(Op::SwiGlu, &[x]) {
        fused::swiglu(x)
    } else {
        composed::swiglu(x)
    }
}

/// Mean over all elements of `(a − b)²` (a scalar).
pub fn mse(k: Kernels, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if k.fuses_op(Op::Mse, &[a, b]) {
        fused::mse(a, b)
    } else {
        composed::mse(a, b)
    }
}

/// `y + b` with the bias `b` (`[O]`) broadcast over the leading dimensions of `y` (`[…, O]`).
pub fn bias_add(k: Kernels, y: &Tensor, b: &Tensor) -> Result<Tensor> {
    if k.fuses(&[y, b]) {
        fused::bias_add(y, b)
    } else {
        composed::bias_add(y, b)
    }
}

/// A linear layer, `x·Wᵀ + b` over the last dimension: the same arithmetic as
/// `candle_nn::Linear::forward`, as one graph node on the CPU.
pub fn linear(k: Kernels, lin: &Linear, x: &Tensor) -> Result<Tensor> {
    match lin.bias() {
        Some(b) if k.fuses(&[x, lin.weight(), b]) && x.rank() >= 2 => {
            fused::linear(x, lin.weight(), b)
        }
        _ => composed::linear(lin, x),
    }
}

/// Multi-head self-attention `softmax(scale·q·kᵀ)·v` from a fused qkv projection: `qkv`
/// `[B, N, 3C]` with channels ordered (q|k|v, head, d) → `[B, N, C]` with channels (head, d).
pub fn attention(k: Kernels, qkv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    // On CUDA the memory-efficient kernel takes head widths up to 128; others run composed.
    if k.fuses_attention(qkv, heads) {
        fused::attention(qkv, heads, scale)
    } else {
        composed::attention(qkv, heads, scale)
    }
}

/// The attention half of an adaLN-Zero block:
/// `x + gate·proj(attention(qkv(LN(x)·(1 + scale) + shift)))`, with (shift, scale, gate) the
/// chunks `chunk..chunk + 3` of the six in `ada` (`[B, 6C]`). One graph node on the CPU ([`fused::attention_half`]); elsewhere the same ops
/// one by one.
#[allow(clippy::too_many_arguments)]
pub fn attention_half(
    k: Kernels,
    x: &Tensor,
    ada: &Tensor,
    chunk: usize,
    qkv: &Linear,
    proj: &Linear,
    heads: usize,
    scale: f64,
    eps: f64,
) -> Result<Tensor> {
    if let (Some(bq), Some(bp)) = (qkv.bias(), proj.bias()) {
        if k.fuses(&[x, ada, qkv.weight(), bq, proj.weight(), bp]) {
            return fused::attention_half(
                x,
                ada,
                chunk,
                (qkv.weight(), bq),
                (proj.weight(), bp),
                heads,
                scale,
                eps,
            );
        }
    }
    let m = chunk_last(ada, 6)?;
    let h = layer_norm_modulate(k, x, &m[chunk], &m[chunk + 1], eps)?;
    let a = linear(k, proj, &attention(k, &linear(k, qkv, &h)?, heads, scale)?)?;
    gated_residual(k, x, &m[chunk + 2], &a)
}

/// The MLP half of an adaLN-Zero block: `x + gate·fc2(GELU(fc1(LN(x)·(1 + scale) + shift)))`
/// (see [`attention_half`]).
pub fn mlp_half(
    k: Kernels,
    x: &Tensor,
    ada: &Tensor,
    chunk: usize,
    fc1: &Linear,
    fc2: &Linear,
    eps: f64,
) -> Result<Tensor> {
    if let (Some(b1), Some(b2)) = (fc1.bias(), fc2.bias()) {
        if k.fuses(&[x, ada, fc1.weight(), b1, fc2.weight(), b2]) {
            return fused::mlp_half(x, ada, chunk, (fc1.weight(), b1), (fc2.weight(), b2), eps);
        }
    }
    let m = chunk_last(ada, 6)?;
    let h = layer_norm_modulate(k, x, &m[chunk], &m[chunk + 1], eps)?;
    let y = linear(k, fc2, &gelu_tanh(k, &linear(k, fc1, &h)?)?)?;
    gated_residual(k, x, &m[chunk + 2], &y)
}

/// adaLN modulation: `x·(1 + scale) + shift` with `shift`, `scale` of shape `[B, C]`
/// broadcast over the tokens of `x` (`[B, N, C]`).
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let shift = shift.unsqueeze(1)?; // [B, 1, C]
    let scale = scale.unsqueeze(1)?; // [B, 1, C]
    x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)
}

/// Split `[B, k·C]` into `k` chunks of `[B, C]` along dim 1 (torch's `chunk(k, dim=1)`).
pub fn chunk_last(x: &Tensor, k: usize) -> Result<Vec<Tensor>> {
    let c = x.dim(1)? / k;
    (0..k).map(|i| x.narrow(1, i * c, c)).collect()
}
