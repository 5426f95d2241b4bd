// LayerNorm over the last dimension without affine parameters, one block per row, and its
// backward `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))` with the statistics recomputed (see
// layer_norm.rs). `eps` is the op's parameter.
#include "cuda_common.cuh"

template <typename T>
__device__ void layer_norm_fwd(const T* x, T* y, size_t rows, size_t cols, float eps) {
  const size_t r = blockIdx.x;
  if (r >= rows) return;
  const T* xr = x + r * cols;
  T* yr = y + r * cols;
  float mean, rstd;
  row_stats(xr, cols, eps, mean, rstd);
  BLOCK_STRIDE(i, cols) st(yr, i, (ld(xr, i) - mean) * rstd);
}

template <typename T>
__device__ void layer_norm_bwd(const T* x, const T* g, T* dx, size_t rows, size_t cols,
                               float eps) {
  const size_t r = blockIdx.x;
  if (r >= rows) return;
  const T* xr = x + r * cols;
  const T* gr = g + r * cols;
  T* dr = dx + r * cols;
  float mean, rstd;
  row_stats(xr, cols, eps, mean, rstd);
  float sg = 0.0f, sgx = 0.0f;
  BLOCK_STRIDE(i, cols) {
    float gv = ld(gr, i);
    sg += gv;
    sgx += gv * (ld(xr, i) - mean) * rstd;
  }
  const float mg = block_sum(sg) / (float)cols;
  const float mgx = block_sum(sgx) / (float)cols;
  BLOCK_STRIDE(i, cols) {
    float xh = (ld(xr, i) - mean) * rstd;
    st(dr, i, rstd * (ld(gr, i) - mg - xh * mgx));
  }
}

#define FWD_SIG(T) const T *x, T *y, size_t rows, size_t cols, float eps
#define BWD_SIG(T) const T *x, const T *g, T *dx, size_t rows, size_t cols, float eps
EXPORT_F32_BF16(layer_norm_fwd, FWD_SIG, (x, y, rows, cols, eps))
EXPORT_F32_BF16(layer_norm_bwd, BWD_SIG, (x, g, dx, rows, cols, eps))
