// The SwiGLU gate over rows `[a | b]` (2m) → `silu(a)·b` (m), and its backward
// `da = g·b·σ(a)·(1 + a·(1 − σ(a)))`, `db = g·a·σ(a)` (see swiglu.rs).
#include "cuda_common.cuh"

template <typename T>
__device__ void swiglu_fwd(const T* x, T* y, size_t rows, size_t m) {
  GRID_STRIDE(i, rows * m) {
    const size_t r = i / m, j = i % m;
    float a = ld(x, r * 2 * m + j), s, sc;
    sigmoid_pair(a, s, sc);
    st(y, i, a * s * ld(x, r * 2 * m + m + j));
  }
}

template <typename T>
__device__ void swiglu_bwd(const T* x, const T* g, T* dx, size_t rows, size_t m) {
  GRID_STRIDE(i, rows * m) {
    const size_t r = i / m, j = i % m;
    const size_t ia = r * 2 * m + j, ib = ia + m;
    float a = ld(x, ia), b = ld(x, ib), gv = ld(g, i), s, sc;
    sigmoid_pair(a, s, sc);
    st(dx, ia, gv * b * s * (1.0f + a * sc));
    st(dx, ib, gv * a * s);
  }
}

#define FWD_SIG(T) const T *x, T *y, size_t rows, size_t m
#define BWD_SIG(T) const T *x, const T *g, T *dx, size_t rows, size_t m
EXPORT_F32_BF16(swiglu_fwd, FWD_SIG, (x, y, rows, m))
EXPORT_F32_BF16(swiglu_bwd, BWD_SIG, (x, g, dx, rows, m))
