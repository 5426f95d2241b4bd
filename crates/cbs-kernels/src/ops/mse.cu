// The mean squared error over all elements (see mse.rs): per-block partial sums of (a − b)²,
// then one block sums them in a fixed order (deterministic, no atomics) and divides by n.
// The backward writes `k·(a − b)` and its negation (`k = 2·g/n`, the upstream gradient `g` read
// on the device; k in double as on the host).
#include "cuda_common.cuh"

template <typename T>
__device__ void mse_partial(const T* a, const T* b, float* part, size_t n) {
  float s = 0.0f;
  GRID_STRIDE(i, n) {
    float d = ld(a, i) - ld(b, i);
    s += d * d;
  }
  s = block_sum(s);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// One block.
template <typename T>
__device__ void mse_final(const float* part, size_t parts, T* out, size_t n) {
  float s = 0.0f;
  BLOCK_STRIDE(i, parts) s += part[i];
  s = block_sum(s);
  if (threadIdx.x == 0) st(out, 0, s / (float)n);
}

template <typename T>
__device__ void mse_bwd(const T* a, const T* b, const T* g, T* out, size_t n) {
  const float k = (float)(2.0 * (double)ld(g, 0) / (double)n);
  GRID_STRIDE(i, n) {
    float d = k * (ld(a, i) - ld(b, i));
    st(out, i, d);
    st(out, n + i, -d);
  }
}

#define PARTIAL_SIG(T) const T *a, const T *b, float *part, size_t n
#define FINAL_SIG(T) const float *part, size_t parts, T *out, size_t n
#define BWD_SIG(T) const T *a, const T *b, const T *g, T *out, size_t n
EXPORT_F32_BF16(mse_partial, PARTIAL_SIG, (a, b, part, n))
EXPORT_F32_BF16(mse_final, FINAL_SIG, (part, parts, out, n))
EXPORT_F32_BF16(mse_bwd, BWD_SIG, (a, b, g, out, n))
