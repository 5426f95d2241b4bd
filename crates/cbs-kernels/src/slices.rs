//! Access to CPU storage and output buffers: contiguous slices of storages and saved
//! tensors, the f32/f64 dispatch over one to three storages, and row-wise output builders.

use candle_core::{bail, CpuStorage, Layout, Result, Shape, Tensor, WithDType};

use crate::simd::F;

/// Below this many elements the work is not split across threads.
pub(crate) const PAR_MIN: usize = 1 << 14;

pub(crate) fn contiguous<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// `f` on the CPU slice of a contiguous tensor (the backward passes read their saved
/// tensors this way, outside the graph).
pub(crate) fn with_slice<T: WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> Result<R>,
) -> Result<R> {
    let (st, l) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*st else {
        candle_core::bail!("fused kernels: CPU tensors only");
    };
    f(contiguous::<T>(s, l, "fused kernels")?)
}

/// A new `len`-element buffer from `f(out_row, input_rows)` over matching `row`-long chunks of
/// the output and `inputs`, in parallel for large tensors (each output chunk zeroed in the task
/// that fills it: see [`crate::par::build`]).
pub(crate) fn new_rows<T: F>(
    len: usize,
    row: usize,
    inputs: &[&[T]],
    f: impl Fn(&mut [T], &[&[T]]) + Sync,
) -> Vec<T> {
    let run = |i: usize, o: &mut [T]| {
        let ins: Vec<&[T]> = inputs.iter().map(|x| &x[i * row..(i + 1) * row]).collect();
        f(o, &ins)
    };
    if len >= PAR_MIN {
        crate::par::build(len, 0, row, T::of(0.0), run)
    } else {
        let mut out = vec![T::of(0.0); len];
        out.chunks_mut(row.max(1))
            .enumerate()
            .for_each(|(i, o)| run(i, o));
        out
    }
}

/// Run `$body` with `$a` bound to the contiguous f32 or f64 slice of the storage, wrapping the
/// `Vec` it returns into the matching `CpuStorage`.
macro_rules! with_slices1 {
    ($op:expr, ($s1:expr, $l1:expr), |$a:ident| $body:expr) => {
        match $s1 {
            CpuStorage::F32(_) => {
                let $a = contiguous::<f32>($s1, $l1, $op)?;
                CpuStorage::F32($body)
            }
            CpuStorage::F64(_) => {
                let $a = contiguous::<f64>($s1, $l1, $op)?;
                CpuStorage::F64($body)
            }
            _ => candle_core::bail!("{}: only f32 and f64 are supported", $op),
        }
    };
}
pub(crate) use with_slices1;

/// [`with_slices1`] over two storages of one dtype.
macro_rules! with_slices2 {
    ($op:expr, ($s1:expr, $l1:expr), ($s2:expr, $l2:expr), |$a:ident, $b:ident| $body:expr) => {
        match ($s1, $s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let $a = contiguous::<f32>($s1, $l1, $op)?;
                let $b = contiguous::<f32>($s2, $l2, $op)?;
                CpuStorage::F32($body)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let $a = contiguous::<f64>($s1, $l1, $op)?;
                let $b = contiguous::<f64>($s2, $l2, $op)?;
                CpuStorage::F64($body)
            }
            _ => candle_core::bail!("{}: only f32 and f64 (both the same) are supported", $op),
        }
    };
}
pub(crate) use with_slices2;

/// Run `$body` with `$a`, `$b`, `$c` bound to the contiguous f32 or f64 slices of the three
/// storages, wrapping the `Vec` it returns into the matching `CpuStorage`.
macro_rules! with_slices3 {
    ($op:expr, ($s1:expr, $l1:expr), ($s2:expr, $l2:expr), ($s3:expr, $l3:expr),
     |$a:ident, $b:ident, $c:ident| $body:expr) => {
        match ($s1, $s2, $s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let $a = contiguous::<f32>($s1, $l1, $op)?;
                let $b = contiguous::<f32>($s2, $l2, $op)?;
                let $c = contiguous::<f32>($s3, $l3, $op)?;
                CpuStorage::F32($body)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let $a = contiguous::<f64>($s1, $l1, $op)?;
                let $b = contiguous::<f64>($s2, $l2, $op)?;
                let $c = contiguous::<f64>($s3, $l3, $op)?;
                CpuStorage::F64($body)
            }
            _ => bail!("{}: only f32 and f64 (all the same) are supported", $op),
        }
    };
}
pub(crate) use with_slices3;

/// Run `$body` (returning `Result`) with `$a`, `$b`, `$c` bound to the contiguous f32 or f64
/// slices of three CPU tensors of one dtype (the backward passes' saved tensors).
macro_rules! with_tensors3 {
    ($op:expr, ($ta:expr, $tb:expr, $tc:expr), |$a:ident, $b:ident, $c:ident| $body:expr) => {
        match ($ta.dtype(), $tb.dtype(), $tc.dtype()) {
            (DType::F32, DType::F32, DType::F32) => with_slice::<f32, _>($ta, |$a| {
                with_slice::<f32, _>($tb, |$b| with_slice::<f32, _>($tc, |$c| $body))
            }),
            (DType::F64, DType::F64, DType::F64) => with_slice::<f64, _>($ta, |$a| {
                with_slice::<f64, _>($tb, |$b| with_slice::<f64, _>($tc, |$c| $body))
            }),
            dts => bail!(
                "{}: only f32 and f64 (all the same) are supported, got {dts:?}",
                $op
            ),
        }
    };
}
pub(crate) use with_tensors3;

pub(crate) fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

// Packed gradients: a backward op returns the gradients of all its inputs in one flat
// buffer (the large one first, then per-sample sums), handed out as views of it.

/// A new `len`-element buffer (with room for `extra` more) from `f(i, chunk_i)` over its
/// `chunk`-long pieces, in parallel for large tensors (see [`crate::par::build`]); also the
/// results of `f` in order.
pub(crate) fn new_chunks<T: F, R: Send>(
    len: usize,
    extra: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync + Send,
) -> (Vec<T>, Vec<R>) {
    let zero = T::of(0.0);
    if len >= PAR_MIN {
        let res: Vec<std::sync::Mutex<Option<R>>> = (0..len.div_ceil(chunk.max(1)))
            .map(|_| std::sync::Mutex::new(None))
            .collect();
        let out = crate::par::build(len, extra, chunk, zero, |i, o| {
            *res[i].lock().expect("one writer per chunk") = Some(f(i, o));
        });
        let res = res
            .into_iter()
            .map(|r| r.into_inner().expect("no writer panicked"))
            .map(|r| r.expect("every chunk ran"))
            .collect();
        (out, res)
    } else {
        let mut out = Vec::with_capacity(len + extra);
        out.resize(len, zero);
        let res = out
            .chunks_mut(chunk.max(1))
            .enumerate()
            .map(|(i, o)| f(i, o))
            .collect();
        (out, res)
    }
}

/// `(B, N, C)` of `big` after checking that every `small` is `[B, C]` (and `big2` is `big`'s
/// shape).
pub(crate) fn bnc(
    op: &str,
    big: &Layout,
    big2: Option<&Layout>,
    small: &[&Layout],
) -> Result<(usize, usize, usize)> {
    let (b, n, c) = big.shape().dims3()?;
    if let Some(l) = big2 {
        if l.dims() != big.dims() {
            bail!("{op}: shape mismatch {:?} vs {:?}", big.dims(), l.dims());
        }
    }
    for l in small {
        if l.dims() != [b, c] {
            bail!(
                "{op}: expected a [{b}, {c}] vector per sample, got {:?}",
                l.dims()
            );
        }
    }
    Ok((b, n, c))
}

/// Write per-sample f64 accumulators (`acc[b][k·C + j]`) as `k` contiguous `[B, C]` blocks
/// after `big` (the layout the backward ops return).
pub(crate) fn pack<T: F>(mut big: Vec<T>, acc: &[Vec<f64>], k: usize, c: usize) -> Vec<T> {
    // No-op for buffers made with room for the statistics (a reallocation would copy `big`).
    big.reserve(k * acc.len() * c);
    for q in 0..k {
        for a in acc {
            big.extend(a[q * c..(q + 1) * c].iter().map(|&v| T::of(v)));
        }
    }
    big
}

/// `out` followed by the `width` element-wise sums of the per-sample accumulators, added in
/// sample order (so the result does not depend on how samples were spread over threads).
pub(crate) fn append_sum<T: F>(mut out: Vec<T>, acc: &[Vec<f64>], width: usize) -> Vec<T> {
    let mut sum = vec![0.0f64; width];
    for a in acc {
        sum.iter_mut().zip(a).for_each(|(s, v)| *s += v);
    }
    out.extend(sum.iter().map(|&v| T::of(v)));
    out
}

/// Consecutive views of a packed gradient buffer, one per shape.
pub(crate) fn split_packed(packed: &Tensor, shapes: &[Shape]) -> Result<Vec<Tensor>> {
    let mut at = 0;
    shapes
        .iter()
        .map(|s| {
            let t = packed.narrow(0, at, s.elem_count())?.reshape(s)?;
            at += s.elem_count();
            Ok(t)
        })
        .collect()
}

/// Views of a packed gradient buffer: `[B, N, C]` then `k` blocks of `[B, C]`.
pub(crate) fn unpack(
    packed: &Tensor,
    (b, n, c): (usize, usize, usize),
    k: usize,
) -> Result<Vec<Tensor>> {
    let shapes: Vec<Shape> = std::iter::once(Shape::from((b, n, c)))
        .chain((0..k).map(|_| Shape::from((b, c))))
        .collect();
    split_packed(packed, &shapes)
}
