//! A SiT/DiT block half as one graph node: `x + gate·Attn(LN(x)·(1 + scale) + shift)` and
//! `x + gate·MLP(LN(x)·(1 + scale) + shift)`.
//!
//! candle's backward gives every input of every graph node a zero-filled gradient buffer and
//! an add; inside a block that is about 60 MB of activation gradients per step and block
//! (sit-s-4, batch 32) taking three passes each. As one node, the half's activations never
//! enter the graph: the forward keeps what the backward needs (the MLP's pre-activation
//! and output; the attention's qkv, weights, output and projection) and recomputes the
//! modulated LayerNorm and the GELU. candle's custom ops take at most three inputs, so the
//! half's four weight tensors travel as one flat tensor (`cat` of the flattened weights, whose
//! backward splits the gradient again), and its three modulation vectors as the whole adaLN
//! output `[B, 6C]` with their chunk indices. The kernels are the same as the per-op nodes'.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::attention::{self, Dims};
use super::gated_residual::{gated_bwd, gated_fwd};
use super::linear::{linear_bwd_into, linear_fwd};
use super::modulate::{ln_mod_bwd, ln_mod_fwd};
use super::{contiguous, new_rows, with_slice, F};

/// Which half, with its sizes.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// qkv `[3C, C]` + bias, proj `[C, C]` + bias.
    Attention { heads: usize, scale: f64 },
    /// fc1 `[H, C]` + bias, fc2 `[C, H]` + bias.
    Mlp { hidden: usize },
}

struct Half {
    kind: Kind,
    /// Index of the shift chunk in the `[B, 6C]` adaLN output (scale and gate follow).
    chunk: usize,
    eps: f64,
    saved: Mutex<Option<Vec<Tensor>>>,
}

/// Sizes: batch, tokens, channels.
#[derive(Clone, Copy, Debug)]
struct Bnc {
    b: usize,
    n: usize,
    c: usize,
}

impl Bnc {
    fn rows(&self) -> usize {
        self.b * self.n
    }
}

impl Half {
    /// (out, in) of the two layers.
    fn layers(&self, c: usize) -> [(usize, usize); 2] {
        match self.kind {
            Kind::Attention { .. } => [(3 * c, c), (c, c)],
            Kind::Mlp { hidden } => [(hidden, c), (c, hidden)],
        }
    }

    fn packed_len(&self, c: usize) -> usize {
        self.layers(c).iter().map(|(o, i)| o * i + o).sum()
    }

    fn check(&self, lx: &Layout, la: &Layout, lp: &Layout) -> Result<Bnc> {
        let (b, n, c) = lx.shape().dims3()?;
        if la.dims() != [b, 6 * c] {
            bail!(
                "fused-block: adaLN output {:?}, expected [{b}, {}]",
                la.dims(),
                6 * c
            );
        }
        if lp.dims() != [self.packed_len(c)] {
            bail!(
                "fused-block: packed weights {:?}, expected [{}]",
                lp.dims(),
                self.packed_len(c)
            );
        }
        Ok(Bnc { b, n, c })
    }
}

/// Chunk `k` (of 6) of the adaLN output, contiguous `[B, C]`.
fn chunk<T: F>(ada: &[T], s: Bnc, k: usize) -> Vec<T> {
    ada.chunks(6 * s.c)
        .flat_map(|row| row[k * s.c..(k + 1) * s.c].iter().copied())
        .collect()
}

/// The packed weights as `[W₁, b₁, W₂, b₂]` slices.
fn unpack_weights<T>(p: &[T], layers: [(usize, usize); 2]) -> [&[T]; 4] {
    let [(o1, i1), (o2, i2)] = layers;
    let (w1, rest) = p.split_at(o1 * i1);
    let (b1, rest) = rest.split_at(o1);
    let (w2, b2) = rest.split_at(o2 * i2);
    [w1, b1, w2, b2]
}

fn gelu<T: F>(u: &[T], h: usize) -> Vec<T> {
    new_rows(u.len(), h, &[u], |o, i| T::gelu_row(o, i[0]))
}

/// Forward: the output and the tensors the backward keeps.
fn fwd<T: F>(half: &Half, x: &[T], ada: &[T], p: &[T], s: Bnc) -> (Vec<T>, Vec<Vec<T>>) {
    let Bnc { n, c, .. } = s;
    let rows = s.rows();
    let [w1, b1, w2, b2] = unpack_weights(p, half.layers(c));
    let (shift, scale, gate) = (
        chunk(ada, s, half.chunk),
        chunk(ada, s, half.chunk + 1),
        chunk(ada, s, half.chunk + 2),
    );
    let h = ln_mod_fwd(x, &shift, &scale, n, c, half.eps);
    match half.kind {
        Kind::Attention { heads, scale: sc } => {
            let qkv = linear_fwd(&h, w1, b1, (rows, c, 3 * c));
            let dm = Dims {
                b: s.b,
                n,
                h: heads,
                d: c / heads,
            };
            let (a, pw) = attention::fwd(&qkv, dm, sc);
            let y = linear_fwd(&a, w2, b2, (rows, c, c));
            (gated_fwd(x, &gate, &y, n, c), vec![qkv, pw, a, y])
        }
        Kind::Mlp { hidden } => {
            let u = linear_fwd(&h, w1, b1, (rows, c, hidden));
            let y = linear_fwd(&gelu(&u, hidden), w2, b2, (rows, hidden, c));
            (gated_fwd(x, &gate, &y, n, c), vec![u, y])
        }
    }
}

/// Backward: `(dx, d(adaLN output), d(packed weights))`.
fn bwd<T: F>(
    half: &Half,
    x: &[T],
    ada: &[T],
    p: &[T],
    saved: &[&[T]],
    g: &[T],
    s: Bnc,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let Bnc { b, n, c } = s;
    let rows = s.rows();
    let [w1, _, w2, _] = unpack_weights(p, half.layers(c));
    let (shift, scale, gate) = (
        chunk(ada, s, half.chunk),
        chunk(ada, s, half.chunk + 1),
        chunk(ada, s, half.chunk + 2),
    );
    // out = x + gate·y: dy = g·gate, dgate = Σ_n g·y (packed after dy).
    let y = *saved.last().expect("the layer output is saved");
    let mut dy = gated_bwd(&gate, y, g, n, c);
    let dgate = dy.split_off(rows * c);
    let h = ln_mod_fwd(x, &shift, &scale, n, c, half.eps);
    // The weight gradients are written straight into their packed places.
    let mut grads = crate::par::build(p.len(), 0, 1 << 16, T::of(0.0), |_, _| {});
    let [(o1, i1), (o2, i2)] = half.layers(c);
    let (dw1, rest) = grads.split_at_mut(o1 * i1);
    let (db1, rest) = rest.split_at_mut(o1);
    let (dw2, db2) = rest.split_at_mut(o2 * i2);
    let dh = match half.kind {
        Kind::Attention { heads, scale: sc } => {
            let (qkv, pw, a) = (saved[0], saved[1], saved[2]);
            let da = linear_bwd_into(a, w2, &dy, (rows, c, c), dw2, db2);
            let dm = Dims {
                b,
                n,
                h: heads,
                d: c / heads,
            };
            let dqkv = attention::bwd(qkv, pw, &da, dm, sc);
            linear_bwd_into(&h, w1, &dqkv, (rows, c, 3 * c), dw1, db1)
        }
        Kind::Mlp { hidden } => {
            let u = saved[0];
            // GELU recomputed (2 ms a layer here) rather than kept: keeping it measured no
            // faster and 145 MB larger on sit-s-4.
            let dz = linear_bwd_into(&gelu(u, hidden), w2, &dy, (rows, hidden, c), dw2, db2);
            let du = new_rows(dz.len(), hidden, &[u, &dz], |o, i| {
                T::gelu_bwd_row(o, i[0], i[1])
            });
            drop(dz);
            linear_bwd_into(&h, w1, &du, (rows, c, hidden), dw1, db1)
        }
    };
    // h = LN(x)·(1 + scale) + shift; the residual adds g to dx.
    let mut dx = ln_mod_bwd(x, &scale, &dh, g, n, c, half.eps);
    let dmod = dx.split_off(rows * c); // [dshift (B·C) | dscale (B·C)]
    let mut dada = vec![T::of(0.0); b * 6 * c];
    for (k, part) in [&dmod[..b * c], &dmod[b * c..], &dgate[..]]
        .into_iter()
        .enumerate()
    {
        for (row, src) in dada.chunks_mut(6 * c).zip(part.chunks(c)) {
            let at = (half.chunk + k) * c;
            row[at..at + c].copy_from_slice(src);
        }
    }
    (dx, dada, grads)
}

impl CustomOp3 for Half {
    fn name(&self) -> &'static str {
        "fused-block-half"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sa: &CpuStorage,
        la: &Layout,
        sp: &CpuStorage,
        lp: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let s = self.check(lx, la, lp)?;
        let dev = candle_core::Device::Cpu;
        macro_rules! run {
            ($t:ty, $wrap:path) => {{
                let (out, saved) = fwd::<$t>(
                    self,
                    contiguous(sx, lx, op)?,
                    contiguous(sa, la, op)?,
                    contiguous(sp, lp, op)?,
                    s,
                );
                let saved = saved
                    .into_iter()
                    .map(|v| {
                        let len = v.len();
                        Tensor::from_vec(v, len, &dev)
                    })
                    .collect::<Result<Vec<_>>>()?;
                ($wrap(out), saved)
            }};
        }
        let (out, saved) = match (sx, sa, sp) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                run!(f32, CpuStorage::F32)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                run!(f64, CpuStorage::F64)
            }
            _ => bail!("{op}: only f32 and f64 (all the same) are supported"),
        };
        *self.saved.lock().expect("block state lock") = Some(saved);
        Ok((out, lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        ada: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, n, c) = x.dims3()?;
        let s = Bnc { b, n, c };
        let Some(saved) = self.saved.lock().expect("block state lock").clone() else {
            bail!("fused-block: backward before forward");
        };
        let (x, ada, packed, g) = (
            x.contiguous()?,
            ada.contiguous()?,
            packed.contiguous()?,
            grad.contiguous()?,
        );
        let dev = x.device().clone();
        macro_rules! run {
            ($t:ty) => {{
                let mut guards = Vec::with_capacity(saved.len());
                for t in &saved {
                    guards.push(t.storage_and_layout());
                }
                let mut sv: Vec<&[$t]> = Vec::with_capacity(saved.len());
                for (st, l) in &guards {
                    let candle_core::Storage::Cpu(cs) = &**st else {
                        bail!("fused-block: CPU only");
                    };
                    sv.push(contiguous::<$t>(cs, l, "fused-block")?);
                }
                with_slice::<$t, _>(&x, |xs| {
                    with_slice::<$t, _>(&ada, |a| {
                        with_slice::<$t, _>(&packed, |p| {
                            with_slice::<$t, _>(&g, |gs| {
                                let (dx, da, dp) = bwd(self, xs, a, p, &sv, gs, s);
                                Ok((
                                    Tensor::from_vec(dx, x.shape(), &dev)?,
                                    Tensor::from_vec(da, ada.shape(), &dev)?,
                                    Tensor::from_vec(dp, packed.shape(), &dev)?,
                                ))
                            })
                        })
                    })
                })?
            }};
        }
        let (dx, da, dp) = match x.dtype() {
            DType::F32 => run!(f32),
            DType::F64 => run!(f64),
            dt => bail!("fused-block: only f32 and f64 are supported, got {dt:?}"),
        };
        Ok((Some(dx), Some(da), Some(dp)))
    }
}

/// `[W₁, b₁, W₂, b₂]` flattened into one tensor (a graph `cat`: its backward hands each weight
/// its slice of the packed gradient).
fn pack(weights: [&Tensor; 4]) -> Result<Tensor> {
    let flat = weights
        .iter()
        .map(|w| w.flatten_all())
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&flat, 0)
}

/// `x + gate·proj(attention(qkv(LN(x)·(1 + scale) + shift)))` with (shift, scale, gate) the
/// adaLN chunks `chunk`, `chunk + 1`, `chunk + 2` of `ada` (`[B, 6C]`); `x` `[B, N, C]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_half(
    x: &Tensor,
    ada: &Tensor,
    chunk: usize,
    qkv: (&Tensor, &Tensor),
    proj: (&Tensor, &Tensor),
    heads: usize,
    scale: f64,
    eps: f64,
) -> Result<Tensor> {
    let packed = pack([qkv.0, qkv.1, proj.0, proj.1])?;
    let half = Half {
        kind: Kind::Attention { heads, scale },
        chunk,
        eps,
        saved: Mutex::new(None),
    };
    let c = x.dim(2)?;
    if heads == 0 || c % heads != 0 || chunk + 3 > 6 {
        bail!("fused-block: {c} channels, {heads} heads, chunk {chunk}");
    }
    x.contiguous()?.apply_op3(&ada.contiguous()?, &packed, half)
}

/// `x + gate·fc2(GELU(fc1(LN(x)·(1 + scale) + shift)))` (see [`attention_half`]).
pub fn mlp_half(
    x: &Tensor,
    ada: &Tensor,
    chunk: usize,
    fc1: (&Tensor, &Tensor),
    fc2: (&Tensor, &Tensor),
    eps: f64,
) -> Result<Tensor> {
    let hidden = fc1.0.dim(0)?;
    if chunk + 3 > 6 {
        bail!("fused-block: chunk {chunk}");
    }
    let packed = pack([fc1.0, fc1.1, fc2.0, fc2.1])?;
    let half = Half {
        kind: Kind::Mlp { hidden },
        chunk,
        eps,
        saved: Mutex::new(None),
    };
    x.contiguous()?.apply_op3(&ada.contiguous()?, &packed, half)
}
