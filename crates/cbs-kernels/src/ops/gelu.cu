// GELU (tanh form) as `x·σ(2u)`, `u = √(2/π)·(x + c·x³)`, and its backward
// `dx = g·(s + 2·x·u'·s·(1 − s))`, `s = σ(2u)`, `u' = √(2/π)·(1 + 3c·x²)` (see gelu.rs).
#include "cuda_common.cuh"

#define SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_C 0.044715f

template <typename T>
__device__ void gelu_fwd(const T* x, T* y, size_t rows, size_t cols, float) {
  GRID_STRIDE(i, rows * cols) {
    float v = ld(x, i), s, sc;
    sigmoid_pair(2.0f * SQRT_2_OVER_PI * (v + GELU_C * v * v * v), s, sc);
    st(y, i, v * s);
  }
}

template <typename T>
__device__ void gelu_bwd(const T* x, const T* g, T* dx, size_t rows, size_t cols, float) {
  GRID_STRIDE(i, rows * cols) {
    float v = ld(x, i), s, sc;
    sigmoid_pair(2.0f * SQRT_2_OVER_PI * (v + GELU_C * v * v * v), s, sc);
    float du = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_C * v * v);
    st(dx, i, ld(g, i) * (s + 2.0f * v * du * s * sc));
  }
}

#define FWD_SIG(T) const T *x, T *y, size_t rows, size_t cols, float p
#define BWD_SIG(T) const T *x, const T *g, T *dx, size_t rows, size_t cols, float p
EXPORT_F32_BF16(gelu_fwd, FWD_SIG, (x, y, rows, cols, p))
EXPORT_F32_BF16(gelu_bwd, BWD_SIG, (x, g, dx, rows, cols, p))
