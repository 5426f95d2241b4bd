// The in-place parameter passes (see optim.rs), f32 arithmetic for f32 and bf16 storage:
// AdamW's moments and weight update, the EMA, the squared gradient norm (per-block partial
// sums, then one block adding them in order) and the step's control values. `one_minus_*`
// come from the host, computed in f64: `1 − β` in f32 would lose digits for β close to 1 (an
// EMA decay of 0.9999).
//
// `ctrl` = [grad_scale, apply, grad_norm] is computed on the device by `step_control`; a pass
// whose `apply` is 0 writes nothing (a non-finite step leaves every buffer as it was).
#include "cuda_common.cuh"

// `mv` = [m | v] (2n): `m ← β₁m + (1−β₁)g'`, `v ← β₂v + (1−β₂)g'²`, `g' = grad_scale·g`.
template <typename T>
__device__ void adamw_moments(T* mv, const T* g, size_t n, float b1, float one_minus_b1,
                              float b2, float one_minus_b2, const float* ctrl) {
  if (ctrl[1] == 0.0f) return;
  const float scale = ctrl[0];
  GRID_STRIDE(i, n) {
    float gv = scale * ld(g, i);
    st(mv, i, b1 * ld(mv, i) + one_minus_b1 * gv);
    st(mv, n + i, b2 * ld(mv, n + i) + one_minus_b2 * gv * gv);
  }
}

// `θ ← θ·decay − step_size·m/(√v/bc2_sqrt + eps)`.
template <typename T>
__device__ void adamw_params(T* p, const T* mv, size_t n, float decay, float step_size,
                             float bc2_sqrt, float eps, const float* ctrl) {
  if (ctrl[1] == 0.0f) return;
  GRID_STRIDE(i, n) {
    float denom = sqrtf(ld(mv, n + i)) / bc2_sqrt + eps;
    st(p, i, ld(p, i) * decay - step_size * ld(mv, i) / denom);
  }
}

// `e ← decay·e + (1 − decay)·θ`.
template <typename T>
__device__ void ema_update(T* e, const T* p, size_t n, float decay, float one_minus_decay,
                           const float* ctrl) {
  if (ctrl[1] == 0.0f) return;
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

// One block: `out[0] = Σ part` in a fixed order.
template <typename T>
__device__ void sum_final(const float* part, size_t parts, T* out) {
  float s = 0.0f;
  BLOCK_STRIDE(i, parts) s += part[i];
  s = block_sum(s);
  if (threadIdx.x == 0) st(out, 0, s);
}

// One thread: the control values from the loss and the k squared norms (added in order), as
// `control_values` in optim.rs.
template <typename T>
__device__ void step_control(const T* loss, const float* sums, size_t k, float max_norm,
                             float* ctrl) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  float s = 0.0f;
  for (size_t i = 0; i < k; ++i) s += sums[i];
  const float norm = sqrtf(s);
  const float l = ld(loss, 0);
  const bool apply = isfinite(l) && isfinite(norm);
  ctrl[0] = (max_norm > 0.0f && norm > max_norm) ? max_norm / (norm + 1e-6f) : 1.0f;
  ctrl[1] = apply ? 1.0f : 0.0f;
  ctrl[2] = norm;
}

#define MOMENTS_SIG(T)                                                             \
  T *mv, const T *g, size_t n, float b1, float one_minus_b1, float b2, float one_minus_b2, \
      const float *ctrl
#define PARAMS_SIG(T)                                                                     \
  T *p, const T *mv, size_t n, float decay, float step_size, float bc2_sqrt, float eps, \
      const float *ctrl
#define EMA_SIG(T) T *e, const T *p, size_t n, float decay, float one_minus_decay, const float *ctrl
#define SUM_SQ_SIG(T) const T *x, float *part, size_t n
#define SUM_FINAL_SIG(T) const float *part, size_t parts, T *out
#define CONTROL_SIG(T) const T *loss, const float *sums, size_t k, float max_norm, float *ctrl
EXPORT_F32_BF16(adamw_moments, MOMENTS_SIG, (mv, g, n, b1, one_minus_b1, b2, one_minus_b2, ctrl))
EXPORT_F32_BF16(adamw_params, PARAMS_SIG, (p, mv, n, decay, step_size, bc2_sqrt, eps, ctrl))
EXPORT_F32_BF16(ema_update, EMA_SIG, (e, p, n, decay, one_minus_decay, ctrl))
EXPORT_F32_BF16(sum_sq_partial, SUM_SQ_SIG, (x, part, n))
EXPORT_F32_BF16(sum_final, SUM_FINAL_SIG, (part, parts, out))
EXPORT_F32_BF16(step_control, CONTROL_SIG, (loss, sums, k, max_norm, ctrl))
