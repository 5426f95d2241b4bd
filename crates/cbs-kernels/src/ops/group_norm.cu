// GroupNorm with affine weight and bias, optionally followed by SiLU (see group_norm.rs): `x`
// [B, C, S], `w`, `b` [C]. One block per (sample, group), whose `C/G·S` values are contiguous.
// The backward's per-sample weight and bias sums go to a [B, 2C] scratch, summed over the
// samples by a second kernel.
#include "cuda_common.cuh"

// The gradient at `y = x̂·w + b`: `g`, or through SiLU `g·σ(y)·(1 + y·(1 − σ(y)))`.
__device__ __forceinline__ float grad_y(float g, float xh, float w, float b, int silu) {
  if (!silu) return g;
  float y = xh * w + b, s, sc;
  sigmoid_pair(y, s, sc);
  return g * s * (1.0f + y * sc);
}

template <typename T>
__device__ void gn_fwd(const T* x, const T* w, const T* b, T* y, size_t bs, size_t c, size_t s,
                       size_t groups, float eps, int silu) {
  const size_t blk = blockIdx.x;
  if (blk >= bs * groups) return;
  const size_t k = blk % groups, cg = c / groups, len = cg * s, base = blk * len;
  float mean, rstd;
  row_stats(x + base, len, eps, mean, rstd);
  BLOCK_STRIDE(e, len) {
    const size_t ch = k * cg + e / s;
    float v = (ld(x, base + e) - mean) * rstd * ld(w, ch) + ld(b, ch);
    if (silu) {
      float sg, sc;
      sigmoid_pair(v, sg, sc);
      v *= sg;
    }
    st(y, base + e, v);
  }
}

// With `x̂` normalised, `gy` the gradient at `y` and `ĝ = gy·w`:
// `dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))` per group into `out[0, B·C·S)`, and
// `[Σ_S gy·x̂ | Σ_S gy]` per channel into `part[sample, 2C]`.
template <typename T>
__device__ void gn_bwd_groups(const T* x, const T* w, const T* b, const T* g, T* out,
                              float* part, size_t bs, size_t c, size_t s, size_t groups,
                              float eps, int silu) {
  const size_t blk = blockIdx.x;
  if (blk >= bs * groups) return;
  const size_t bi = blk / groups, k = blk % groups, cg = c / groups, len = cg * s;
  const size_t base = blk * len;
  float mean, rstd;
  row_stats(x + base, len, eps, mean, rstd);
  float s1 = 0.0f, s2 = 0.0f;  // Σ ĝ and Σ ĝ·x̂ over the group (the same in every thread)
  for (size_t j = 0; j < cg; ++j) {
    const size_t ch = k * cg + j, at = base + j * s;
    const float wc = ld(w, ch), bc = ld(b, ch);
    float a_dw = 0.0f, a_db = 0.0f;
    BLOCK_STRIDE(q, s) {
      float xh = (ld(x, at + q) - mean) * rstd;
      float gy = grad_y(ld(g, at + q), xh, wc, bc, silu);
      a_dw += gy * xh;
      a_db += gy;
    }
    a_dw = block_sum(a_dw);
    a_db = block_sum(a_db);
    if (threadIdx.x == 0) {
      part[bi * 2 * c + ch] = a_dw;
      part[bi * 2 * c + c + ch] = a_db;
    }
    s1 += wc * a_db;
    s2 += wc * a_dw;
  }
  const float m1 = s1 / (float)len, m2 = s2 / (float)len;
  BLOCK_STRIDE(e, len) {
    const size_t ch = k * cg + e / s;
    const float wc = ld(w, ch);
    float xh = (ld(x, base + e) - mean) * rstd;
    float gy = grad_y(ld(g, base + e), xh, wc, ld(b, ch), silu);
    st(out, base + e, rstd * (gy * wc - m1 - xh * m2));
  }
}

// `[dw | db]` = the samples' sums, after dx in `out`. Grid ⌈2C/32⌉, block (32, 32).
template <typename T>
__device__ void gn_bwd_sum(const float* part, T* out, size_t bs, size_t c, size_t s) {
  sum_partials(part, bs, 2 * c, out + bs * c * s);
}

#define FWD_SIG(T)                                                                    \
  const T *x, const T *w, const T *b, T *y, size_t bs, size_t c, size_t s, size_t groups, \
      float eps, int silu
#define GROUPS_SIG(T)                                                                 \
  const T *x, const T *w, const T *b, const T *g, T *out, float *part, size_t bs, size_t c, \
      size_t s, size_t groups, float eps, int silu
#define SUM_SIG(T) const float *part, T *out, size_t bs, size_t c, size_t s
EXPORT_F32_BF16(gn_fwd, FWD_SIG, (x, w, b, y, bs, c, s, groups, eps, silu))
EXPORT_F32_BF16(gn_bwd_groups, GROUPS_SIG, (x, w, b, g, out, part, bs, c, s, groups, eps, silu))
EXPORT_F32_BF16(gn_bwd_sum, SUM_SIG, (part, out, bs, c, s))
