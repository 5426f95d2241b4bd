// The gated residual `x + gate·h` (see gated_residual.rs): `x`, `h` [B, N, C], `gate` [B, C].
// The backward writes `dh = g·gate` and then `dgate = Σ_n g·h` after it (dx is g itself).
#include "cuda_common.cuh"

template <typename T>
__device__ void gated_fwd(const T* x, const T* gate, const T* h, T* y, size_t bs, size_t n,
                          size_t c) {
  GRID_STRIDE(i, bs * n * c) {
    const size_t b = i / (n * c), j = i % c;
    st(y, i, ld(x, i) + ld(gate, b * c + j) * ld(h, i));
  }
}

template <typename T>
__device__ void gated_bwd_dh(const T* gate, const T* g, T* out, size_t bs, size_t n, size_t c) {
  GRID_STRIDE(i, bs * n * c) {
    const size_t b = i / (n * c), j = i % c;
    st(out, i, ld(g, i) * ld(gate, b * c + j));
  }
}

// Grid (⌈C/32⌉, B), block (32, 32).
template <typename T>
__device__ void gated_bwd_cols(const T* h, const T* g, T* out, size_t bs, size_t n, size_t c) {
  const size_t b = blockIdx.y, j = blockIdx.x * 32 + threadIdx.x;
  float acc = 0.0f;
  if (j < c) {
    for (size_t t = threadIdx.y; t < n; t += 32) {
      const size_t e = (b * n + t) * c + j;
      acc += ld(g, e) * ld(h, e);
    }
  }
  acc = col_sum(acc);
  if (threadIdx.y == 0 && j < c) st(out, bs * n * c + b * c + j, acc);
}

#define FWD_SIG(T) const T *x, const T *gate, const T *h, T *y, size_t bs, size_t n, size_t c
#define DH_SIG(T) const T *gate, const T *g, T *out, size_t bs, size_t n, size_t c
#define COLS_SIG(T) const T *h, const T *g, T *out, size_t bs, size_t n, size_t c
EXPORT_F32_BF16(gated_fwd, FWD_SIG, (x, gate, h, y, bs, n, c))
EXPORT_F32_BF16(gated_bwd_dh, DH_SIG, (gate, g, out, bs, n, c))
EXPORT_F32_BF16(gated_bwd_cols, COLS_SIG, (h, g, out, bs, n, c))
