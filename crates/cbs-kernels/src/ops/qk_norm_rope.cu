// JiT's per-head RMS qk-norm fused with the 2-D RoPE on the [B, N, 3·H·d] qkv layout (see
// qk_norm_rope.rs): `w` [2, d] = (q_norm, k_norm) weights, `rope` [2, N, d] = (cos, sin). One
// block per token, one warp per q or k head at a time (d ≤ a few hundred); v is copied.
#include "cuda_common.cuh"

// Pairs (2i, 2i+1): `(y₀·cos₀ − y₁·sin₀, y₁·cos₁ + y₀·sin₁)` with `y = x·rstd·w`.
template <typename T>
__device__ void qk_rope_fwd(const T* x, const T* w, const T* rope, T* y, size_t rows, size_t n,
                            size_t heads, size_t d, float eps) {
  const size_t r = blockIdx.x;
  if (r >= rows) return;
  const size_t c = heads * d, c3 = 3 * c, t = r % n;
  const T* xr = x + r * c3;
  T* yr = y + r * c3;
  const T* cs = rope + t * d;
  const T* sn = rope + n * d + t * d;
  const unsigned lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (size_t hs = threadIdx.x >> 5; hs < 2 * heads; hs += warps) {
    const T* xh = xr + hs * d;
    T* yh = yr + hs * d;
    const T* wp = w + (hs / heads) * d;  // q heads use wq, k heads wk
    float ss = 0.0f;
    for (size_t i = lane; i < d; i += 32) {
      float v = ld(xh, i);
      ss += v * v;
    }
    const float rstd = 1.0f / sqrtf(warp_sum(ss) / (float)d + eps);
    for (size_t p = lane; 2 * p < d; p += 32) {
      const size_t i = 2 * p;
      float y0 = ld(xh, i) * rstd * ld(wp, i);
      float y1 = ld(xh, i + 1) * rstd * ld(wp, i + 1);
      st(yh, i, y0 * ld(cs, i) - y1 * ld(sn, i));
      st(yh, i + 1, y1 * ld(cs, i + 1) + y0 * ld(sn, i + 1));
    }
  }
  for (size_t i = 2 * c + threadIdx.x; i < c3; i += blockDim.x) yr[i] = xr[i];
}

// The gradient at the normalised value `y` of element `i` of a head: the rotation transposed,
// `dy₀ = g₀·cos₀ + g₁·sin₁`, `dy₁ = g₁·cos₁ − g₀·sin₀`.
template <typename T>
__device__ __forceinline__ float rope_grad(const T* g, const T* cs, const T* sn, size_t i) {
  if ((i & 1) == 0) return ld(g, i) * ld(cs, i) + ld(g, i + 1) * ld(sn, i + 1);
  return ld(g, i) * ld(cs, i) - ld(g, i - 1) * ld(sn, i - 1);
}

// `dx = rstd·(gy·w − x̂·mean(gy·w·x̂))` per q/k head into `out[0, B·N·3C)`, v's gradient passed
// through; each head's rstd into `rstds` [B·N, 2H].
template <typename T>
__device__ void qk_rope_bwd_rows(const T* x, const T* w, const T* rope, const T* g, T* out,
                                 float* rstds, size_t rows, size_t n, size_t heads, size_t d,
                                 float eps) {
  const size_t r = blockIdx.x;
  if (r >= rows) return;
  const size_t c = heads * d, c3 = 3 * c, t = r % n;
  const T* xr = x + r * c3;
  const T* gr = g + r * c3;
  T* dr = out + r * c3;
  const T* cs = rope + t * d;
  const T* sn = rope + n * d + t * d;
  const unsigned lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (size_t hs = threadIdx.x >> 5; hs < 2 * heads; hs += warps) {
    const T* xh = xr + hs * d;
    const T* gh = gr + hs * d;
    T* dh = dr + hs * d;
    const T* wp = w + (hs / heads) * d;
    float ss = 0.0f, m = 0.0f;
    for (size_t i = lane; i < d; i += 32) {
      float v = ld(xh, i);
      ss += v * v;
      m += rope_grad(gh, cs, sn, i) * ld(wp, i) * v;
    }
    const float rstd = 1.0f / sqrtf(warp_sum(ss) / (float)d + eps);
    m = warp_sum(m) * rstd / (float)d;
    for (size_t i = lane; i < d; i += 32) {
      float xhat = ld(xh, i) * rstd;
      st(dh, i, rstd * (rope_grad(gh, cs, sn, i) * ld(wp, i) - xhat * m));
    }
    if (lane == 0) rstds[r * 2 * heads + hs] = rstd;
  }
  for (size_t i = 2 * c + threadIdx.x; i < c3; i += blockDim.x) dr[i] = gr[i];
}

// Partial `dw[j] = Σ gy·x̂` (j = part·d + i) over the heads of `part` in tokens
// [k·chunk, (k+1)·chunk) into `partial[k, 2d]`. Grid (⌈2d/32⌉, chunks), block (32, 32).
template <typename T>
__device__ void qk_rope_bwd_dw(const T* x, const T* rope, const T* g, const float* rstds,
                               float* partial, size_t rows, size_t n, size_t heads, size_t d,
                               size_t chunk) {
  const size_t j = blockIdx.x * 32 + threadIdx.x, k = blockIdx.y;
  const size_t c3 = 3 * heads * d;
  const size_t r0 = k * chunk, r1 = min(r0 + chunk, rows);
  float acc = 0.0f;
  if (j < 2 * d && r0 < r1) {
    const size_t part = j / d, i = j % d;
    for (size_t q = threadIdx.y; q < (r1 - r0) * heads; q += 32) {
      const size_t r = r0 + q / heads, hs = part * heads + q % heads, t = r % n;
      const size_t base = r * c3 + hs * d;
      float gy = rope_grad(g + base, rope + t * d, rope + n * d + t * d, i);
      acc += gy * ld(x, base + i) * rstds[r * 2 * heads + hs];
    }
  }
  acc = col_sum(acc);
  if (threadIdx.y == 0 && j < 2 * d) partial[k * 2 * d + j] = acc;
}

// `dw` = the chunks' partial sums, after dqkv in `out`. Grid ⌈2d/32⌉, block (32, 32).
template <typename T>
__device__ void qk_rope_bwd_sum(const float* partial, T* out, size_t chunks, size_t rows,
                                size_t heads, size_t d) {
  sum_partials(partial, chunks, 2 * d, out + rows * 3 * heads * d);
}

#define FWD_SIG(T)                                                                           \
  const T *x, const T *w, const T *rope, T *y, size_t rows, size_t n, size_t heads, size_t d, \
      float eps
#define ROWS_SIG(T)                                                                       \
  const T *x, const T *w, const T *rope, const T *g, T *out, float *rstds, size_t rows, \
      size_t n, size_t heads, size_t d, float eps
#define DW_SIG(T)                                                                         \
  const T *x, const T *rope, const T *g, const float *rstds, float *partial, size_t rows, \
      size_t n, size_t heads, size_t d, size_t chunk
#define SUM_SIG(T) \
  const float *partial, T *out, size_t chunks, size_t rows, size_t heads, size_t d
EXPORT_F32_BF16(qk_rope_fwd, FWD_SIG, (x, w, rope, y, rows, n, heads, d, eps))
EXPORT_F32_BF16(qk_rope_bwd_rows, ROWS_SIG, (x, w, rope, g, out, rstds, rows, n, heads, d, eps))
EXPORT_F32_BF16(qk_rope_bwd_dw, DW_SIG, (x, rope, g, rstds, partial, rows, n, heads, d, chunk))
EXPORT_F32_BF16(qk_rope_bwd_sum, SUM_SIG, (partial, out, chunks, rows, heads, d))
