// LayerNorm (no affine) fused with the adaLN modulation `·(1 + scale) + shift` (see
// modulate.rs): `x` [B, N, C], `shift`, `scale` [B, C]. One block per token; the backward's
// per-sample sums in a second kernel over (32 channels × sample) tiles, from the per-token
// statistics the first one stores.
#include "cuda_common.cuh"

// `y = x̂·(1 + scale) + shift`.
template <typename T>
__device__ void ln_mod_fwd(const T* x, const T* shift, const T* scale, T* y, size_t rows,
                           size_t n, size_t c, float eps) {
  const size_t r = blockIdx.x;
  if (r >= rows) return;
  const size_t b = r / n;
  const T* xr = x + r * c;
  float mean, rstd;
  row_stats(xr, c, eps, mean, rstd);
  BLOCK_STRIDE(i, c) {
    float xh = (ld(xr, i) - mean) * rstd;
    st(y, r * c + i, xh * (1.0f + ld(scale, b * c + i)) + ld(shift, b * c + i));
  }
}

// With `ĝ = g·(1 + scale)`: `dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))` into `out[0, B·N·C)`;
// (mean, rstd) of each token into `stats`.
template <typename T>
__device__ void ln_mod_bwd_rows(const T* x, const T* scale, const T* g, T* out, float* stats,
                                size_t rows, size_t n, size_t c, float eps) {
  const size_t r = blockIdx.x;
  if (r >= rows) return;
  const T* xr = x + r * c;
  const T* gr = g + r * c;
  const T* sc = scale + (r / n) * c;
  float mean, rstd;
  row_stats(xr, c, eps, mean, rstd);
  float sg = 0.0f, sgx = 0.0f;
  BLOCK_STRIDE(i, c) {
    float gh = ld(gr, i) * (1.0f + ld(sc, i));
    sg += gh;
    sgx += gh * (ld(xr, i) - mean) * rstd;
  }
  const float mg = block_sum(sg) / (float)c;
  const float mgx = block_sum(sgx) / (float)c;
  BLOCK_STRIDE(i, c) {
    float gh = ld(gr, i) * (1.0f + ld(sc, i));
    float xh = (ld(xr, i) - mean) * rstd;
    st(out, r * c + i, rstd * (gh - mg - xh * mgx));
  }
  if (threadIdx.x == 0) {
    stats[2 * r] = mean;
    stats[2 * r + 1] = rstd;
  }
}

// `dshift = Σ_n g`, `dscale = Σ_n g·x̂` per (sample, channel), after the `[B·N·C]` of dx in
// `out`. Grid (⌈C/32⌉, B), block (32, 32).
template <typename T>
__device__ void ln_mod_bwd_cols(const T* x, const T* g, const float* stats, T* out, size_t bs,
                                size_t n, size_t c) {
  const size_t b = blockIdx.y, j = blockIdx.x * 32 + threadIdx.x;
  float a_sh = 0.0f, a_sc = 0.0f;
  if (j < c) {
    for (size_t t = threadIdx.y; t < n; t += 32) {
      const size_t r = b * n + t;
      float gv = ld(g, r * c + j);
      a_sh += gv;
      a_sc += gv * (ld(x, r * c + j) - stats[2 * r]) * stats[2 * r + 1];
    }
  }
  a_sh = col_sum(a_sh);
  a_sc = col_sum(a_sc);
  if (threadIdx.y == 0 && j < c) {
    const size_t total = bs * n * c;
    st(out, total + b * c + j, a_sh);
    st(out, total + bs * c + b * c + j, a_sc);
  }
}

#define FWD_SIG(T)                                                                  \
  const T *x, const T *shift, const T *scale, T *y, size_t rows, size_t n, size_t c, \
      float eps
#define ROWS_SIG(T)                                                                   \
  const T *x, const T *scale, const T *g, T *out, float *stats, size_t rows, size_t n, \
      size_t c, float eps
#define COLS_SIG(T) const T *x, const T *g, const float *stats, T *out, size_t bs, size_t n, size_t c
EXPORT_F32_BF16(ln_mod_fwd, FWD_SIG, (x, shift, scale, y, rows, n, c, eps))
EXPORT_F32_BF16(ln_mod_bwd_rows, ROWS_SIG, (x, scale, g, out, stats, rows, n, c, eps))
EXPORT_F32_BF16(ln_mod_bwd_cols, COLS_SIG, (x, g, stats, out, bs, n, c))
