//! Parallel loops on candle's own CPU worker threads.
//!
//! candle runs its element-wise CPU ops on a pool of worker threads that spin for a while
//! after each op before they park. Work spread over a second pool (rayon's) competes with
//! those spinning workers for the same cores: on 2 cores a SiT-S/4 training step ran 5–6%
//! faster with candle's pool switched off (`CANDLE_NUM_THREADS=1`), and a JiT step, whose
//! blocks use more of candle's ops, 15% slower. Running the fused kernels, the optimizer and
//! the split matrix products on candle's pool instead keeps one set of threads busy: the
//! workers' spinning then shortens the start of the next loop instead of delaying it.
//!
//! Every loop here runs inline when called from inside another one (candle's pool takes one
//! call at a time), so nesting is safe and costs nothing.

use std::cell::Cell;
use std::ops::Range;

use candle_core::utils::barrier_pool;

thread_local! {
    /// Set while this thread runs the body of a loop from this module.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// The threads a loop spreads over: candle's workers and the calling thread.
pub fn threads() -> usize {
    barrier_pool().n_workers() + 1
}

/// Runs `f` with the nesting flag set on this thread.
fn inside<R>(f: impl FnOnce() -> R) -> R {
    let outer = INSIDE.with(|c| c.replace(true));
    let r = f();
    INSIDE.with(|c| c.set(outer));
    r
}

fn nested() -> bool {
    INSIDE.with(Cell::get)
}

/// `f(i)` for every `i` in `0..n`, each exactly once, the indices handed out to the threads
/// as they become free.
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    if n <= 1 || nested() || threads() == 1 {
        return inside(|| (0..n).for_each(&f));
    }
    barrier_pool().execute_chunked(n, |r: Range<usize>| inside(|| r.for_each(&f)));
}

/// A pointer that loop bodies share to write disjoint parts of one buffer.
pub(crate) struct SharedMut<T>(pub(crate) *mut T);
impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}
// SAFETY: every user hands each element to one loop body only (see the callers).
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub(crate) fn new(s: &mut [T]) -> Self {
        Self(s.as_mut_ptr())
    }

    pub(crate) fn ptr(self) -> *mut T {
        self.0
    }

    /// `len` elements from `offset`.
    ///
    /// # Safety
    /// The range lies inside the buffer and no other live slice overlaps it.
    pub(crate) unsafe fn slice<'a>(self, offset: usize, len: usize) -> &'a mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(offset), len)
    }
}

/// `f(i, chunk_i)` over the `size`-long chunks of `out` (the last may be shorter).
pub fn chunks_mut<T: Send>(out: &mut [T], size: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let (len, size) = (out.len(), size.max(1));
    let p = SharedMut::new(out);
    for_each(len.div_ceil(size), |i| {
        let lo = i * size;
        // SAFETY: chunk `i` is `lo..min(lo + size, len)`, inside `out` and disjoint from every
        // other chunk; `for_each` visits each `i` once; `out` stays borrowed until it returns.
        f(i, unsafe { p.slice(lo, size.min(len - lo)) })
    });
}

/// `f(i, a_i, b_i)` over matching chunks of two buffers: `a` in `sa`-long chunks, `b` in
/// `sb`-long ones. Panics if the chunk counts differ (a caller's shape bug).
pub fn chunks_mut2<A: Send, B: Send>(
    a: &mut [A],
    sa: usize,
    b: &mut [B],
    sb: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync,
) {
    let (la, lb, sa, sb) = (a.len(), b.len(), sa.max(1), sb.max(1));
    let n = la.div_ceil(sa);
    assert_eq!(n, lb.div_ceil(sb), "par::chunks_mut2: chunk counts differ");
    let (pa, pb) = (SharedMut::new(a), SharedMut::new(b));
    for_each(n, |i| {
        let (lo_a, lo_b) = (i * sa, i * sb);
        // SAFETY: as in `chunks_mut`, for each buffer.
        let (ca, cb) = unsafe {
            (
                pa.slice(lo_a, sa.min(la - lo_a)),
                pb.slice(lo_b, sb.min(lb - lo_b)),
            )
        };
        f(i, ca, cb)
    });
}

/// `f(i)` for `i` in `0..n`, the results in index order (a reduction over them then does
/// not depend on which thread ran what).
pub fn map<R: Send + Default + Clone>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let mut out = vec![R::default(); n];
    chunks_mut(&mut out, 1, |i, o| o[0] = f(i));
    out
}
