//! Parallel loops on candle's own CPU worker threads.
//!
//! candle runs its element-wise CPU ops on a pool of worker threads that spin for a while
//! after each op before they park. Work spread over a second pool (rayon's) competes with
//! those spinning workers for the same cores: on 2 cores a SiT-S/4 training step ran 5–6%
//! faster with candle's pool switched off (`CANDLE_NUM_THREADS=1`), and a JiT step, whose
//! blocks use more of candle's ops, 15% slower. Running the fused kernels, the optimizer and
//! the split matrix products on candle's pool instead keeps one set of threads busy: the
//! workers' spinning then shortens the start of the next loop instead of delaying it
//! (measured: sit-s-4 1565 → 1380 ms, jit-mini-4 350 → 295 ms, sit-mini-4 126 → 80 ms).
//!
//! Every loop here runs inline when called from inside another one (candle's pool takes one
//! call at a time), so nesting is safe and costs nothing; a panic in a loop body is carried
//! past candle's pool to the caller (see [`for_each`]).

use std::cell::Cell;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, PoisonError};

use candle_core::utils::barrier_pool;

thread_local! {
    /// Set while this thread runs the body of a loop from this module.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// The threads a loop spreads over: candle's workers and the calling thread.
pub fn threads() -> usize {
    barrier_pool().n_workers() + 1
}

/// Runs `f` with the nesting flag set on this thread (restored on return and on panic).
fn inside<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            INSIDE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(INSIDE.with(|c| c.replace(true)));
    f()
}

fn nested() -> bool {
    INSIDE.with(Cell::get)
}

/// `f(i)` for every `i` in `0..n`, each exactly once, the indices handed out to the threads
/// as they become free. A panic in `f` reaches the caller after the loop; it is caught
/// inside the loop first, because one crossing candle's pool poisons the pool's lock and
/// every later CPU op of the process (candle's own included) would fail.
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    if n <= 1 || nested() || threads() == 1 {
        return inside(|| (0..n).for_each(&f));
    }
    let first_panic = Mutex::new(None);
    barrier_pool().execute_chunked(n, |r: Range<usize>| {
        let run = AssertUnwindSafe(|| inside(|| r.for_each(&f)));
        if let Err(payload) = std::panic::catch_unwind(run) {
            let mut slot = first_panic.lock().unwrap_or_else(PoisonError::into_inner);
            slot.get_or_insert(payload);
        }
    });
    let payload = first_panic
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(p) = payload {
        std::panic::resume_unwind(p);
    }
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

/// A new `len`-element buffer built chunk by chunk: `f(i, chunk_i)` over `size`-long chunks,
/// each chunk zeroed just before `f` overwrites it, in the task that runs it (the zeroing
/// then costs a pass over cache-resident memory instead of a separate single-threaded
/// `memset` of the whole buffer). `extra` more elements of capacity are reserved.
pub fn build<T: Copy + Send + Sync>(
    len: usize,
    extra: usize,
    size: usize,
    zero: T,
    f: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    let size = size.max(1);
    let mut v: Vec<T> = Vec::with_capacity(len + extra);
    let p = SharedMut(v.spare_capacity_mut().as_mut_ptr());
    for_each(len.div_ceil(size), |i| {
        let lo = i * size;
        // SAFETY: chunk `i` is `lo..min(lo + size, len)` of the spare capacity (≥ len),
        // disjoint from every other chunk; each chunk is visited once.
        let chunk = unsafe { p.slice(lo, size.min(len - lo)) };
        fill(chunk, zero);
        // SAFETY: every element of `chunk` was initialised just above; `MaybeUninit<T>` has
        // `T`'s layout.
        let chunk = unsafe { &mut *(chunk as *mut [std::mem::MaybeUninit<T>] as *mut [T]) };
        f(i, chunk)
    });
    // SAFETY: the loop above initialised all `len` elements (a panic in `f` propagates before
    // this line, leaving `v` empty).
    unsafe { v.set_len(len) };
    v
}

/// Writes `v` to every element (one `memset` when `v`'s bytes are all zero, as a float 0.0's
/// are: an element-by-element loop measured slower than the `memset` it replaced).
fn fill<T: Copy>(chunk: &mut [std::mem::MaybeUninit<T>], v: T) {
    let size = std::mem::size_of::<T>();
    // SAFETY: reads the `size` bytes of the plain value `v`.
    let bytes = unsafe { std::slice::from_raw_parts((&v as *const T).cast::<u8>(), size) };
    if bytes.iter().all(|&b| b == 0) {
        // SAFETY: writes zero bytes to `chunk.len()` elements the slice owns; a `T` whose
        // bytes are all zero is `v` itself, so the elements then hold valid values.
        unsafe { std::ptr::write_bytes(chunk.as_mut_ptr(), 0, chunk.len()) };
    } else {
        chunk.iter_mut().for_each(|x| {
            x.write(v);
        });
    }
}

/// Two new buffers built chunk by chunk together, as [`build`] builds one: `f(i, a_i, b_i)`
/// over `sa`-long chunks of `a` (`la` elements) and `sb`-long chunks of `b` (`lb`). Panics
/// if the chunk counts differ.
pub fn build2<A: Copy + Send + Sync, B: Copy + Send + Sync>(
    (la, sa, za): (usize, usize, A),
    (lb, sb, zb): (usize, usize, B),
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync,
) -> (Vec<A>, Vec<B>) {
    let (sa, sb) = (sa.max(1), sb.max(1));
    let n = la.div_ceil(sa);
    assert_eq!(n, lb.div_ceil(sb), "par::build2: chunk counts differ");
    let (mut a, mut b): (Vec<A>, Vec<B>) = (Vec::with_capacity(la), Vec::with_capacity(lb));
    let pa = SharedMut(a.spare_capacity_mut().as_mut_ptr());
    let pb = SharedMut(b.spare_capacity_mut().as_mut_ptr());
    for_each(n, |i| {
        let (lo_a, lo_b) = (i * sa, i * sb);
        // SAFETY: as in `build`, for each buffer.
        let (ca, cb) = unsafe {
            (
                pa.slice(lo_a, sa.min(la - lo_a)),
                pb.slice(lo_b, sb.min(lb - lo_b)),
            )
        };
        fill(ca, za);
        fill(cb, zb);
        // SAFETY: both chunks were initialised just above.
        let (ca, cb) = unsafe {
            (
                &mut *(ca as *mut [std::mem::MaybeUninit<A>] as *mut [A]),
                &mut *(cb as *mut [std::mem::MaybeUninit<B>] as *mut [B]),
            )
        };
        f(i, ca, cb)
    });
    // SAFETY: every chunk of both buffers was initialised above.
    unsafe {
        a.set_len(la);
        b.set_len(lb);
    }
    (a, b)
}

/// `f(i)` for `i` in `0..n`, the results in index order (a reduction over them then does
/// not depend on which thread ran what).
pub fn map<R: Send + Default + Clone>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let mut out = vec![R::default(); n];
    chunks_mut(&mut out, 1, |i, o| o[0] = f(i));
    out
}
