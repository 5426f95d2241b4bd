// RMSNorm fused with the adaLN modulation (see rms_norm.rs): `x` [B, N, C], `a` (the per-sample
// multiplier w·(1 + scale)) and `shift` [B, C]. One block per token; the backward's per-sample
// sums in a second kernel from the per-token `rstd` the first one stores.
#include "cuda_common.cuh"

template <typename T>
__device__ float rms_rstd(const T* x, size_t c, float eps) {
  float s = 0.0f;
  BLOCK_STRIDE(i, c) {
    float v = ld(x, i);
    s += v * v;
  }
  return 1.0f / sqrtf(block_sum(s) / (float)c + eps);
}

// `y = x·rstd·a + shift`.
template <typename T>
__device__ void rms_mod_fwd(const T* x, const T* a, const T* shift, T* y, size_t rows, size_t n,
                            size_t c, float eps) {
  const size_t r = blockIdx.x;
  if (r >= rows) return;
  const size_t b = r / n;
  const T* xr = x + r * c;
  const float rstd = rms_rstd(xr, c, eps);
  BLOCK_STRIDE(i, c) st(y, r * c + i, ld(xr, i) * rstd * ld(a, b * c + i) + ld(shift, b * c + i));
}

// `dx = rstd·(g·a − x̂·mean(g·a·x̂))` into `out[0, B·N·C)`; each token's rstd into `stats`.
template <typename T>
__device__ void rms_mod_bwd_rows(const T* x, const T* a, const T* g, T* out, float* stats,
                                 size_t rows, size_t n, size_t c, float eps) {
  const size_t r = blockIdx.x;
  if (r >= rows) return;
  const T* xr = x + r * c;
  const T* gr = g + r * c;
  const T* ar = a + (r / n) * c;
  const float rstd = rms_rstd(xr, c, eps);
  float s = 0.0f;
  BLOCK_STRIDE(i, c) s += ld(gr, i) * ld(ar, i) * ld(xr, i);
  const float m = block_sum(s) * rstd / (float)c;
  BLOCK_STRIDE(i, c) {
    float xh = ld(xr, i) * rstd;
    st(out, r * c + i, rstd * (ld(gr, i) * ld(ar, i) - xh * m));
  }
  if (threadIdx.x == 0) stats[r] = rstd;
}

// `da = Σ_n g·x̂`, `dshift = Σ_n g` per (sample, channel), after dx in `out`. Grid (⌈C/32⌉, B),
// block (32, 32).
template <typename T>
__device__ void rms_mod_bwd_cols(const T* x, const T* g, const float* stats, T* out, size_t bs,
                                 size_t n, size_t c) {
  const size_t b = blockIdx.y, j = blockIdx.x * 32 + threadIdx.x;
  float a_a = 0.0f, a_sh = 0.0f;
  if (j < c) {
    for (size_t t = threadIdx.y; t < n; t += 32) {
      const size_t r = b * n + t;
      float gv = ld(g, r * c + j);
      a_a += gv * ld(x, r * c + j) * stats[r];
      a_sh += gv;
    }
  }
  a_a = col_sum(a_a);
  a_sh = col_sum(a_sh);
  if (threadIdx.y == 0 && j < c) {
    const size_t total = bs * n * c;
    st(out, total + b * c + j, a_a);
    st(out, total + bs * c + b * c + j, a_sh);
  }
}

#define FWD_SIG(T) \
  const T *x, const T *a, const T *shift, T *y, size_t rows, size_t n, size_t c, float eps
#define ROWS_SIG(T)                                                                          \
  const T *x, const T *a, const T *g, T *out, float *stats, size_t rows, size_t n, size_t c, \
      float eps
#define COLS_SIG(T) const T *x, const T *g, const float *stats, T *out, size_t bs, size_t n, size_t c
EXPORT_F32_BF16(rms_mod_fwd, FWD_SIG, (x, a, shift, y, rows, n, c, eps))
EXPORT_F32_BF16(rms_mod_bwd_rows, ROWS_SIG, (x, a, g, out, stats, rows, n, c, eps))
EXPORT_F32_BF16(rms_mod_bwd_cols, COLS_SIG, (x, g, stats, out, bs, n, c))
