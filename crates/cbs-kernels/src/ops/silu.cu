// SiLU `x·σ(x)` and its backward `dx = g·σ(x)·(1 + x·(1 − σ(x)))` (see silu.rs).
#include "cuda_common.cuh"

template <typename T>
__device__ void silu_fwd(const T* x, T* y, size_t rows, size_t cols, float) {
  GRID_STRIDE(i, rows * cols) {
    float v = ld(x, i), s, sc;
    sigmoid_pair(v, s, sc);
    st(y, i, v * s);
  }
}

template <typename T>
__device__ void silu_bwd(const T* x, const T* g, T* dx, size_t rows, size_t cols, float) {
  GRID_STRIDE(i, rows * cols) {
    float v = ld(x, i), s, sc;
    sigmoid_pair(v, s, sc);
    st(dx, i, ld(g, i) * s * (1.0f + v * sc));
  }
}

#define FWD_SIG(T) const T *x, T *y, size_t rows, size_t cols, float p
#define BWD_SIG(T) const T *x, const T *g, T *dx, size_t rows, size_t cols, float p
EXPORT_F32_BF16(silu_fwd, FWD_SIG, (x, y, rows, cols, p))
EXPORT_F32_BF16(silu_bwd, BWD_SIG, (x, g, dx, rows, cols, p))
