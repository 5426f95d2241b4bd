//! Matrix products on slices through the `gemm` crate (the one candle's CPU matmul uses),
//! with what candle's matmul cannot do: write into a strided destination (a head's columns of
//! a `[N, C]` activation), accumulate into it (a bias pre-filled row by row), skip zero-filling
//! the output, and run single-threaded inside a task that is already one of many parallel
//! ones (candle gives every product of a batch its own thread-pool dispatch).

use crate::par::{self, SharedMut};
use crate::simd::F;
use candle_core::{bail, CpuStorage, Layout, Result, Storage, Tensor, WithDType};

/// A matrix over a slice: element `(i, j)` at `data[i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> View<'a, T> {
    /// Row-major `rows × cols` with row stride `rs` (≥ `cols`).
    pub fn rows(data: &'a [T], rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Every addressed element lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// Whether a product may spread over the worker threads ([`crate::par`]) or must stay on the calling one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Threads {
    One,
    All,
}

/// `dst = a·b` (or `dst += a·b` with `accumulate`), `dst` row-major with row stride `dst_rs`.
///
/// Panics if a view or `dst` is too short for its shape or the inner dimensions differ: the
/// callers derive every shape from tensors they have already checked.
pub(crate) fn gemm_into<T: F>(
    dst: &mut [T],
    dst_rs: usize,
    a: View<'_, T>,
    b: View<'_, T>,
    accumulate: bool,
    threads: Threads,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "gemm: inner dimensions differ");
    assert!(
        a.in_bounds() && b.in_bounds(),
        "gemm: operand out of bounds"
    );
    assert!(
        m == 0 || n == 0 || (m - 1) * dst_rs + n <= dst.len(),
        "gemm: destination out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_rs).take(m) {
                row[..n].fill(T::of(0.0));
            }
        }
        return;
    }
    // SAFETY: every index gemm touches is inside the slices (checked above); `dst` is a
    // unique borrow, so it does not alias `a` or `b`.
    unsafe { raw(dst.as_mut_ptr(), dst_rs, a, b, accumulate, threads) }
}

/// `a·b` into a new row-major `Vec` (`a.rows × b.cols`), written by the product itself
/// (no zero-fill first).
pub(crate) fn matmul<T: F>(a: View<'_, T>, b: View<'_, T>, threads: Threads) -> Vec<T> {
    let (m, n) = (a.rows, b.cols);
    assert_eq!(a.cols, b.rows, "gemm: inner dimensions differ");
    if a.cols == 0 || m == 0 || n == 0 {
        return vec![T::of(0.0); m * n];
    }
    assert!(
        a.in_bounds() && b.in_bounds(),
        "gemm: operand out of bounds"
    );
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: the operands are in bounds (checked above); the destination is the fresh
    // allocation's `m·n` elements, which gemm (with `read_dst = false`, k > 0) writes, every
    // one, before `set_len` exposes them.
    unsafe {
        raw(out.as_mut_ptr(), n, a, b, false, threads);
        out.set_len(m * n);
    }
    out
}

/// `dst = a·b` (`+=` with `accumulate`), `dst` row-major with row stride `dst_rs`, through
/// `gemm::gemm`. With [`Threads::All`] a large product is cut into one block of `dst` per
/// thread (rows when `a` is the larger operand, columns otherwise, so that the operand every
/// block reads whole, and packs for itself, is the smaller one), each block a single-threaded
/// product: measured faster than the crate's own threading, which splits every
/// depth-block of the product into micro-tasks with a barrier between packing and compute.
///
/// # Safety
/// `dst` must address `(a.rows − 1)·dst_rs + b.cols` writable elements that alias neither
/// operand, the operands must be in bounds, `a.cols == b.rows > 0`.
pub(crate) unsafe fn raw<T: F>(
    dst: *mut T,
    dst_rs: usize,
    a: View<'_, T>,
    b: View<'_, T>,
    accumulate: bool,
    threads: Threads,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let parts = match threads {
        Threads::All if m * k * n >= SPLIT_MIN_WORK => par::threads(),
        _ => 1,
    };
    let split_rows = m * k >= k * n;
    let len = if split_rows { m } else { n };
    // Blocks a multiple of the micro-kernel's widest edge, so only the last one is ragged.
    let block = len.div_ceil(parts).next_multiple_of(BLOCK_ALIGN);
    if parts <= 1 || block >= len {
        return one(dst, dst_rs, a, b, accumulate);
    }
    let dst = SharedMut(dst);
    par::for_each(len.div_ceil(block), |i| {
        let (lo, hi) = (i * block, ((i + 1) * block).min(len));
        // SAFETY: block `i` writes rows (or columns) `lo..hi` of `dst` only, disjoint from
        // every other block's; the sub-views stay inside the operands checked by the caller.
        unsafe {
            if split_rows {
                let a_i = View {
                    data: &a.data[lo * a.rs..],
                    rows: hi - lo,
                    ..a
                };
                one(dst.ptr().add(lo * dst_rs), dst_rs, a_i, b, accumulate);
            } else {
                let b_i = View {
                    data: &b.data[lo * b.cs..],
                    cols: hi - lo,
                    ..b
                };
                one(dst.ptr().add(lo), dst_rs, a, b_i, accumulate);
            }
        }
    });
}

/// Below this many multiply-adds a product stays on one thread.
const SPLIT_MIN_WORK: usize = 1 << 21;
/// Row/column blocks of a split product are a multiple of this.
const BLOCK_ALIGN: usize = 48;

/// One single-threaded `gemm::gemm` call.
///
/// # Safety
/// As for [`raw`].
unsafe fn one<T: F>(dst: *mut T, dst_rs: usize, a: View<'_, T>, b: View<'_, T>, accumulate: bool) {
    gemm::gemm(
        a.rows,
        b.cols,
        a.cols,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        a.data.as_ptr(),
        a.cs as isize,
        a.rs as isize,
        b.data.as_ptr(),
        b.cs as isize,
        b.rs as isize,
        T::of(1.0),
        T::of(1.0),
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// `lhs · rhs` for 2-D CPU f32/f64 tensors of any strides, on the products the fused layers
/// use (what `cbs bench matmul` times).
pub fn product(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    let ((m, k), (k2, n)) = (lhs.dims2()?, rhs.dims2()?);
    if k != k2 || lhs.dtype() != rhs.dtype() {
        bail!(
            "product: lhs {:?} {:?} and rhs {:?} {:?} do not multiply",
            lhs.dims(),
            lhs.dtype(),
            rhs.dims(),
            rhs.dtype()
        );
    }
    fn view<'a, T: WithDType>(t: &'a CpuStorage, l: &Layout) -> Result<View<'a, T>> {
        let s = &t.as_slice::<T>()?[l.start_offset()..];
        let (&[rows, cols], &[rs, cs]) = (l.dims(), l.stride()) else {
            bail!("product: 2-D tensors only");
        };
        let v = View {
            data: s,
            rows,
            cols,
            rs,
            cs,
        };
        if !v.in_bounds() {
            bail!("product: layout {l:?} reaches past its storage");
        }
        Ok(v)
    }
    let (sa, la) = lhs.storage_and_layout();
    let (sb, lb) = rhs.storage_and_layout();
    let (Storage::Cpu(sa), Storage::Cpu(sb)) = (&*sa, &*sb) else {
        bail!("product: CPU tensors only");
    };
    let dev = lhs.device();
    match (sa, sb) {
        (CpuStorage::F32(_), CpuStorage::F32(_)) => {
            let out = matmul(view::<f32>(sa, la)?, view::<f32>(sb, lb)?, Threads::All);
            Tensor::from_vec(out, (m, n), dev)
        }
        (CpuStorage::F64(_), CpuStorage::F64(_)) => {
            let out = matmul(view::<f64>(sa, la)?, view::<f64>(sb, lb)?, Threads::All);
            Tensor::from_vec(out, (m, n), dev)
        }
        _ => bail!("product: f32 or f64 only, got {:?}", lhs.dtype()),
    }
}
