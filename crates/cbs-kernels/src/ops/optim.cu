// The in-place parameter passes (see optim.rs), f32 arithmetic for f32 and bf16 storage:
// AdamW's moments and weight update, the EMA, and per-block partial sums of g² for the
// gradient norm (summed on the host in f64). `one_minus_*` come from the host, computed in
// f64: `1 − β` in f32 would lose digits for β close to 1 (an EMA decay of 0.9999).
#include "cuda_common.cuh"

// `mv` = [m | v] (2n): `m ← β₁m + (1−β₁)g'`, `v ← β₂v + (1−β₂)g'²`, `g' = scale·g`.
template <typename T>
__device__ void adamw_moments(T* mv, const T* g, size_t n, float b1, float one_minus_b1,
                              float b2, float one_minus_b2, float scale) {
  GRID_STRIDE(i, n) {
    float gv = scale * ld(g, i);
    st(mv, i, b1 * ld(mv, i) + one_minus_b1 * gv);
    st(mv, n + i, b2 * ld(mv, n + i) + one_minus_b2 * gv * gv);
  }
}

// `θ ← θ·decay − step_size·m/(√v/bc2_sqrt + eps)`.
template <typename T>
__device__ void adamw_params(T* p, const T* mv, size_t n, float decay, float step_size,
                             float bc2_sqrt, float eps) {
  GRID_STRIDE(i, n) {
    float denom = sqrtf(ld(mv, n + i)) / bc2_sqrt + eps;
    st(p, i, ld(p, i) * decay - step_size * ld(mv, i) / denom);
  }
}

// `e ← decay·e + (1 − decay)·θ`.
template <typename T>
__device__ void ema_update(T* e, const T* p, size_t n, float decay, float one_minus_decay) {
  GRID_STRIDE(i, n) st(e, i, decay * ld(e, i) + one_minus_decay * ld(p, i));
}

template <typename T>
__device__ void sum_sq_partial(const T* x, float* part, size_t n) {
  float s = 0.0f;
  GRID_STRIDE(i, n) {
    float v = ld(x, i);
    s += v * v;
  }
  s = block_sum(s);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

#define MOMENTS_SIG(T)                                                             \
  T *mv, const T *g, size_t n, float b1, float one_minus_b1, float b2, float one_minus_b2, \
      float scale
#define PARAMS_SIG(T) \
  T *p, const T *mv, size_t n, float decay, float step_size, float bc2_sqrt, float eps
#define EMA_SIG(T) T *e, const T *p, size_t n, float decay, float one_minus_decay
#define SUM_SQ_SIG(T) const T *x, float *part, size_t n
EXPORT_F32_BF16(adamw_moments, MOMENTS_SIG, (mv, g, n, b1, one_minus_b1, b2, one_minus_b2, scale))
EXPORT_F32_BF16(adamw_params, PARAMS_SIG, (p, mv, n, decay, step_size, bc2_sqrt, eps))
EXPORT_F32_BF16(ema_update, EMA_SIG, (e, p, n, decay, one_minus_decay))
EXPORT_F32_BF16(sum_sq_partial, SUM_SQ_SIG, (x, part, n))
