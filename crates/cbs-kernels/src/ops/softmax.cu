// Softmax over the last dimension, one block per row, and its backward `dx = y ⊙ (g − Σ g·y)`
// from the saved output (see softmax.rs).
#include "cuda_common.cuh"

template <typename T>
__device__ void softmax_fwd(const T* x, T* y, size_t rows, size_t cols, float) {
  const size_t r = blockIdx.x;
  if (r >= rows) return;  // uniform over the block: no barrier is skipped by part of it
  const T* xr = x + r * cols;
  T* yr = y + r * cols;
  float m = NEG_INF;
  BLOCK_STRIDE(i, cols) m = fmaxf(m, ld(xr, i));
  m = block_max(m);
  float s = 0.0f;
  BLOCK_STRIDE(i, cols) s += expf(ld(xr, i) - m);
  s = block_sum(s);
  BLOCK_STRIDE(i, cols) st(yr, i, expf(ld(xr, i) - m) / s);
}

template <typename T>
__device__ void softmax_bwd(const T* y, const T* g, T* dx, size_t rows, size_t cols, float) {
  const size_t r = blockIdx.x;
  if (r >= rows) return;
  const T* yr = y + r * cols;
  const T* gr = g + r * cols;
  T* dr = dx + r * cols;
  float dot = 0.0f;
  BLOCK_STRIDE(i, cols) dot += ld(yr, i) * ld(gr, i);
  dot = block_sum(dot);
  BLOCK_STRIDE(i, cols) st(dr, i, ld(yr, i) * (ld(gr, i) - dot));
}

#define FWD_SIG(T) const T *x, T *y, size_t rows, size_t cols, float p
#define BWD_SIG(T) const T *y, const T *g, T *dx, size_t rows, size_t cols, float p
EXPORT_F32_BF16(softmax_fwd, FWD_SIG, (x, y, rows, cols, p))
EXPORT_F32_BF16(softmax_bwd, BWD_SIG, (y, g, dx, rows, cols, p))
