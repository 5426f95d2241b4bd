//! Matrix products on slices through the `gemm` crate (the one candle's CPU matmul uses),
//! with what candle's matmul cannot do: write into a strided destination (a head's columns of
//! a `[N, C]` activation), accumulate into it (a bias pre-filled row by row), skip zero-filling
//! the output, and run single-threaded inside a task that is already one of many parallel
//! ones (candle gives every product of a batch its own thread-pool dispatch).

use super::F;

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

/// Whether a product may spread over rayon's threads or must stay on the calling one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Threads {
    One,
    All,
}

fn parallelism(threads: Threads) -> gemm::Parallelism {
    let n = rayon::current_num_threads();
    match threads {
        Threads::All if n > 1 => gemm::Parallelism::Rayon(n),
        _ => gemm::Parallelism::None,
    }
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

/// `dst = a·b` (`+=` with `accumulate`) through `gemm::gemm`, `dst` row-major with row stride
/// `dst_rs`.
///
/// # Safety
/// `dst` must address `(a.rows − 1)·dst_rs + b.cols` writable elements that alias neither
/// operand, the operands must be in bounds, `a.cols == b.rows > 0`.
unsafe fn raw<T: F>(
    dst: *mut T,
    dst_rs: usize,
    a: View<'_, T>,
    b: View<'_, T>,
    accumulate: bool,
    threads: Threads,
) {
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
        parallelism(threads),
    )
}
