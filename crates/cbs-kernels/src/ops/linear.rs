//! Linear layers. [`bias_add`]: `y + b` over the last dimension, whose backward sums the
//! gradient row by row (candle sums a broadcast gradient over the leading dimensions with a
//! per-element index division, its reduction's slow path, which made every bias gradient cost
//! more than a pass over memory). [`linear`]: `x·Wᵀ + b` as one graph node: composed, a layer
//! on `[B, N, K]` is five nodes (reshape, transpose, matrix product, bias, reshape), and
//! candle's backward gives every input of every node a zero-filled gradient buffer plus an add
//! (for `[B, N, 4C]` activations, most of the cost of the layer outside the products). Here the
//! forward's product and the backward's three (`dx = g·W`, `dW = gᵀ·x`, `db = Σ g`) run outside
//! the graph, on the slices (`super::gemm`: no zero-filled outputs, the bias as the product's
//! starting value).

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};

use super::gemm::{gemm_into, matmul, Threads, View};
use super::{
    contiguous, last_dim, new_rows, simd_kernel, with_slice, with_slices1, with_slices2,
    with_slices3, with_tensors3, F, PAR_MIN,
};

/// Forward: (y `[…, O]`, b `[O]`) → `y + b`.
struct BiasAdd;
/// Backward of the bias: `g` `[…, O]` → `Σ_rows g` `[O]`.
struct ColumnSum;

fn bias_fwd<T: F>(y: &[T], b: &[T], o: usize) -> Vec<T> {
    new_rows(y.len(), o, &[y], |out, i| {
        for ((out, &y), &b) in out.iter_mut().zip(i[0]).zip(b) {
            *out = T::of(y.f() + b.f());
        }
    })
}

/// Column sums of a row-major `[rows, o]` matrix, accumulated in f64 over blocks of rows
/// (in parallel for large inputs).
fn column_sum<T: F>(g: &[T], o: usize) -> Vec<T> {
    let add = |mut a: Vec<f64>, b: Vec<f64>| {
        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
        a
    };
    let acc = if g.len() >= PAR_MIN {
        // About 32 rows of work per task at least; the blocks' sums added in order.
        let rows_per_task = (PAR_MIN / o).max(32);
        let block = rows_per_task * o;
        crate::par::map(g.len().div_ceil(block), |i| {
            column_sum_block(&g[i * block..g.len().min((i + 1) * block)], o)
        })
        .into_iter()
        .fold(vec![0.0; o], add)
    } else {
        column_sum_block(g, o)
    };
    acc.into_iter().map(T::of).collect()
}

simd_kernel! {
    /// f64 column sums of a block of rows.
    fn column_sum_block<T: F>(rows: &[T], o: usize) -> Vec<f64> {
        let mut acc = vec![0.0f64; o];
        for row in rows.chunks(o) {
            for (a, &g) in acc.iter_mut().zip(row) {
                *a += g.f();
            }
        }
        acc
    }
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
        let out = with_slices2!(op, (s1, l1), (s2, l2), |y, b| bias_fwd(y, b, o));
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
        let out = with_slices1!(op, (s, l), |g| column_sum(g, o));
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

/// The linear node over (x, W, b): forward and backward run their products on the slices
/// directly (see [`super::gemm`]).
struct Linear;

/// `x·Wᵀ + b`: every output row starts as the bias and the product accumulates into it (one
/// write pass fewer than a product followed by a bias addition).
pub(super) fn linear_fwd<T: F>(
    x: &[T],
    w: &[T],
    b: &[T],
    (rows, k, o): (usize, usize, usize),
) -> Vec<T> {
    // The product accumulates onto bias rows, written in parallel (serially, this copy
    // was 1% of a sit-s-4 step with the other thread idle).
    let mut out = if rows * o >= PAR_MIN {
        crate::par::build(rows * o, 0, 64 * o.max(1), T::of(0.0), |_, c| {
            c.chunks_mut(o).for_each(|r| r.copy_from_slice(b))
        })
    } else {
        b.repeat(rows)
    };
    let xv = View::rows(x, rows, k, k);
    let wt = View::rows(w, o, k, k).t(); // Wᵀ: [K, O]
    gemm_into(&mut out, o, xv, wt, true, Threads::All);
    out
}

/// `(dx, dW, db)` = `(g·W, gᵀ·x, Σ_rows g)` for `g` `[rows, O]`.
pub(super) fn linear_bwd<T: F>(
    x: &[T],
    w: &[T],
    g: &[T],
    dims: (usize, usize, usize),
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (_, k, o) = dims;
    let (mut dw, mut db) = (vec![T::of(0.0); o * k], vec![T::of(0.0); o]);
    let dx = linear_bwd_into(x, w, g, dims, &mut dw, &mut db);
    (dx, dw, db)
}

/// [`linear_bwd`] writing `dW` and `db` into the given slices (a block half's packed
/// weight gradient), returning `dx`.
pub(super) fn linear_bwd_into<T: F>(
    x: &[T],
    w: &[T],
    g: &[T],
    (rows, k, o): (usize, usize, usize),
    dw: &mut [T],
    db: &mut [T],
) -> Vec<T> {
    let gv = View::rows(g, rows, o, o);
    let dx = matmul(gv, View::rows(w, o, k, k), Threads::All);
    gemm_into(
        dw,
        k,
        gv.t(),
        View::rows(x, rows, k, k),
        false,
        Threads::All,
    );
    db.copy_from_slice(&column_sum(g, o));
    dx
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (o, k) = lw.shape().dims2()?;
        if lb.dims() != [o] || lx.dims().last() != Some(&k) {
            bail!(
                "{op}: x {:?}, weight {:?}, bias {:?}",
                lx.dims(),
                lw.dims(),
                lb.dims()
            );
        }
        let dims = (lx.shape().elem_count() / k.max(1), k, o);
        let out = with_slices3!(op, (sx, lx), (sw, lw), (sb, lb), |x, w, b| {
            linear_fwd(x, w, b, dims)
        });
        let mut shape = lx.dims().to_vec();
        *shape.last_mut().expect("rank ≥ 1") = o;
        Ok((out, Shape::from(shape)))
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
        let dims = (x.elem_count() / k.max(1), k, o);
        let (x, w, g) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let dev = x.device().clone();
        let (dx, dw, db) = with_tensors3!("fused-linear", (&x, &w, &g), |xs, ws, gs| {
            let (dx, dw, db) = linear_bwd(xs, ws, gs, dims);
            Ok((
                Tensor::from_vec(dx, x.shape(), &dev)?,
                Tensor::from_vec(dw, (o, k), &dev)?,
                Tensor::from_vec(db, o, &dev)?,
            ))
        })?;
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
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, Linear)
}
