// Device helpers shared by the ops' CUDA kernels: f32/bf16 element access (arithmetic is f32
// for both), block and column reductions, and the exported-kernel macro.
//
// Block sizes: every kernel here is launched with blockDim.x a multiple of 32 (at most 1024),
// and kernels that use `col_sum` with a (32, 32) block (see src/cuda.rs).
#pragma once
#include <cuda_bf16.h>
#include <stddef.h>

typedef __nv_bfloat16 bf16;

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float ld(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16* p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float* p, size_t i, float v) { p[i] = v; }
// Round to nearest even, as `half::bf16::from_f32` does on the CPU.
__device__ __forceinline__ void st(bf16* p, size_t i, float v) { p[i] = __float2bfloat16_rn(v); }

// Grid-stride loop over `[0, n)`.
#define GRID_STRIDE(i, n)                                                        \
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)(n); \
       i += (size_t)blockDim.x * gridDim.x)

// Block-stride loop over `[0, n)` (one block working on one row).
#define BLOCK_STRIDE(i, n) for (size_t i = threadIdx.x; i < (size_t)(n); i += blockDim.x)

// One `extern "C"` kernel per dtype around a templated device function: `SIG(T)` is the
// parameter list written with `T`, `ARGS` the argument list that forwards it.
#define EXPORT_F32_BF16(name, SIG, ARGS)                               \
  extern "C" __global__ void name##_f32(SIG(float)) { name<float> ARGS; } \
  extern "C" __global__ void name##_bf16(SIG(bf16)) { name<bf16> ARGS; }

// `(σ(v), 1 − σ(v))` without cancellation: both from `e^{−|v|}`, as the CPU kernels do.
__device__ __forceinline__ void sigmoid_pair(float v, float& s, float& sc) {
  float e = expf(-fabsf(v));
  float a = 1.0f / (1.0f + e);
  float b = e * a;
  if (v >= 0.0f) {
    s = a;
    sc = b;
  } else {
    s = b;
    sc = a;
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The sum (or max) of `v` over the block, returned to every thread. Deterministic for a given
// block size. Starts with a barrier so that consecutive calls can share the scratch.
template <bool MAX>
__device__ __forceinline__ float block_reduce(float v) {
  __shared__ float scratch[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  v = MAX ? warp_max(v) : warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < warps ? scratch[lane] : (MAX ? NEG_INF : 0.0f);
    w = MAX ? warp_max(w) : warp_sum(w);
    if (lane == 0) scratch[0] = w;
  }
  __syncthreads();
  return scratch[0];
}

__device__ __forceinline__ float block_sum(float v) { return block_reduce<false>(v); }
__device__ __forceinline__ float block_max(float v) { return block_reduce<true>(v); }

// Mean and `1/√(var + eps)` of a row of `n`, two passes as the CPU's `row_stats`; every thread
// of the block calls it and gets the result.
template <typename T>
__device__ __forceinline__ void row_stats(const T* x, size_t n, float eps, float& mean,
                                          float& rstd) {
  float s = 0.0f;
  BLOCK_STRIDE(i, n) s += ld(x, i);
  mean = block_sum(s) / (float)n;
  float q = 0.0f;
  BLOCK_STRIDE(i, n) {
    float d = ld(x, i) - mean;
    q += d * d;
  }
  rstd = 1.0f / sqrtf(block_sum(q) / (float)n + eps);
}

// Column sums in a (32, 32) block: `v` of thread (x, y) summed over y, in y order; the result is
// valid in the threads with threadIdx.y == 0. Every thread of the block must call it.
__device__ __forceinline__ float col_sum(float v) {
  __shared__ float tile[32][33];
  tile[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  float s = 0.0f;
  if (threadIdx.y == 0) {
    for (int j = 0; j < 32; ++j) s += tile[j][threadIdx.x];
  }
  __syncthreads();
  return s;
}

// `out[j] = Σ_r part[r·cols + j]` over `rows` f32 partial rows, as T, in a (32, 32) block per
// 32 columns (grid.x = ⌈cols/32⌉): the second, deterministic stage of per-sample or per-chunk
// sums.
template <typename T>
__device__ __forceinline__ void sum_partials(const float* part, size_t rows, size_t cols,
                                             T* out) {
  const size_t j = blockIdx.x * 32 + threadIdx.x;
  float s = 0.0f;
  if (j < cols) {
    for (size_t r = threadIdx.y; r < rows; r += 32) s += part[r * cols + j];
  }
  s = col_sum(s);
  if (threadIdx.y == 0 && j < cols) st(out, j, s);
}
