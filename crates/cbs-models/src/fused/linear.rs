//! Linear layers. [`bias_add`]: `y + b` over the last dimension, whose backward sums the
//! gradient row by row (candle sums a broadcast gradient over the leading dimensions with a
//! per-element index division, its reduction's slow path, which made every bias gradient cost
//! more than a pass over memory). [`linear`]: `x·Wᵀ + b` as one graph node: composed, a layer
//! on `[B, N, K]` is five nodes (reshape, transpose, matrix product, bias, reshape), and
//! candle's backward gives every input of every node a zero-filled gradient buffer plus an add
//! (for `[B, N, 4C]` activations, most of the cost of the layer outside the products). Here the
//! forward's product and the backward's three (`dx = g·W`, `dW = gᵀ·x`, `db = Σ g`) run outside
//! the graph, with candle's matrix product.

use std::sync::Mutex;

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

use super::{contiguous, last_dim, par_rows, F, PAR_MIN};

/// Forward: (y `[…, O]`, b `[O]`) → `y + b`.
struct BiasAdd;
/// Backward of the bias: `g` `[…, O]` → `Σ_rows g` `[O]`.
struct ColumnSum;

fn bias_fwd<T: F>(y: &[T], b: &[T], o: usize) -> Vec<T> {
    let mut out = vec![T::of(0.0); y.len()];
    par_rows(&mut out, o, &[y], |out, i| {
        for ((out, &y), &b) in out.iter_mut().zip(i[0]).zip(b) {
            *out = T::of(y.f() + b.f());
        }
    });
    out
}

/// Column sums of a row-major `[rows, o]` matrix, accumulated in f64 over blocks of rows
/// (in parallel for large inputs).
fn column_sum<T: F>(g: &[T], o: usize) -> Vec<T> {
    let block = |rows: &[T]| {
        let mut acc = vec![0.0f64; o];
        for row in rows.chunks(o) {
            for (a, &g) in acc.iter_mut().zip(row) {
                *a += g.f();
            }
        }
        acc
    };
    let add = |mut a: Vec<f64>, b: Vec<f64>| {
        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
        a
    };
    let acc = if g.len() >= PAR_MIN {
        // About 32 rows of work per task at least; rayon splits further as it needs.
        let rows_per_task = (PAR_MIN / o).max(32);
        g.par_chunks(rows_per_task * o)
            .map(block)
            .reduce(|| vec![0.0; o], add)
    } else {
        block(g)
    };
    acc.into_iter().map(T::of).collect()
}

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "fused-bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let o = last_dim(l1);
        if l2.dims() != [o] {
            bail!("{op}: bias {:?} does not match {:?}", l2.dims(), l1.dims());
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(bias_fwd(
                contiguous::<f32>(s1, l1, op)?,
                contiguous(s2, l2, op)?,
                o,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(bias_fwd(
                contiguous::<f64>(s1, l1, op)?,
                contiguous(s2, l2, op)?,
                o,
            )),
            _ => bail!("{op}: only f32 and f64 (matching) are supported"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = grad.contiguous()?.apply_op1_no_bwd(&ColumnSum)?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "fused-bias-add-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let o = last_dim(l);
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(column_sum(contiguous::<f32>(s, l, op)?, o)),
            CpuStorage::F64(_) => CpuStorage::F64(column_sum(contiguous::<f64>(s, l, op)?, o)),
            _ => bail!("{op}: only f32 and f64 are supported"),
        };
        Ok((out, Shape::from(o)))
    }
}

/// `y + b` with `b` of shape `[O]` broadcast over the leading dimensions of `y` (`[…, O]`);
/// the bias gradient is a column sum.
pub fn bias_add(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    if y.elem_count() == 0 {
        return y.broadcast_add(b);
    }
    y.contiguous()?.apply_op2(&b.contiguous()?, BiasAdd)
}

/// The linear node over (x, W, b): its forward adds the bias to the product computed
/// beforehand (`xW`, `[rows, O]`); its backward runs the three products.
struct Linear {
    xw: Mutex<Option<Tensor>>,
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        lx: &Layout,
        _w: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let Some(xw) = self.xw.lock().expect("linear product lock").take() else {
            bail!("{op}: the op can be applied once only");
        };
        let o = lw.dims()[0];
        if lb.dims() != [o] {
            bail!(
                "{op}: bias {:?} does not match weight {:?}",
                lb.dims(),
                lw.dims()
            );
        }
        let (st, l) = xw.storage_and_layout();
        let candle_core::Storage::Cpu(s) = &*st else {
            bail!("{op}: CPU only");
        };
        let out = match (s, sb) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(bias_fwd(
                contiguous::<f32>(s, l, op)?,
                contiguous(sb, lb, op)?,
                o,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(bias_fwd(
                contiguous::<f64>(s, l, op)?,
                contiguous(sb, lb, op)?,
                o,
            )),
            _ => bail!("{op}: only f32 and f64 (matching) are supported"),
        };
        let mut dims = lx.dims().to_vec();
        *dims.last_mut().expect("rank ≥ 1") = o;
        Ok((out, Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (o, k) = w.dims2()?;
        let rows = x.elem_count() / k.max(1);
        let g = grad.detach().contiguous()?.reshape((rows, o))?;
        let x2 = x.detach().reshape((rows, k))?;
        let dx = g.matmul(&w.detach())?.reshape(x.shape())?;
        let dw = g.t()?.matmul(&x2)?;
        let db = g.apply_op1_no_bwd(&ColumnSum)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `x·Wᵀ + b` for `x` `[…, K]`, `W` `[O, K]`, `b` `[O]` → `[…, O]`: one graph node (see the
/// module documentation); the same arithmetic as `candle_nn::Linear`.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (o, k) = w.dims2()?;
    if x.dims().last() != Some(&k) || b.dims() != [o] {
        bail!(
            "linear: x {:?}, weight {:?}, bias {:?}",
            x.dims(),
            w.dims(),
            b.dims()
        );
    }
    let x = x.contiguous()?;
    let rows = x.elem_count() / k.max(1);
    let xw = x.detach().reshape((rows, k))?.matmul(&w.detach().t()?)?;
    x.apply_op3(
        w,
        b,
        Linear {
            xw: Mutex::new(Some(xw)),
        },
    )
}
