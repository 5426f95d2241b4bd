// Host emulation of the CUDA subset the ops' kernels use, so that a `.cu` file's kernels can run
// on the CPU (one std::thread per CUDA thread, one block at a time, std::barrier for
// __syncthreads and the warp shuffles). Only a logic check (indexing, tiling, masking,
// barriers); not CUDA's memory model, and the WMMA path (`__CUDA_ARCH__ >= 800`) is not
// compiled here: the FMA tiles run for both dtypes. See attention_emu.cpp.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <cstdio>
#include <cstddef>

#define CBS_HOST_EMULATION 1
#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __shared__
#define __align__(n)
#define __launch_bounds__(n)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
extern thread_local dim3 threadIdx;
extern dim3 blockIdx, blockDim, gridDim;

struct __nv_bfloat16 {
  uint16_t bits;
  __nv_bfloat16() = default;
  explicit __nv_bfloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);  // round to nearest even (no NaN inputs here)
    bits = (uint16_t)(u >> 16);
  }
};
inline float __bfloat162float(__nv_bfloat16 b) {
  uint32_t u = (uint32_t)b.bits << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
inline void __trap() {
  std::fprintf(stderr, "__trap()\n");
  std::abort();
}

void __syncthreads();
float __shfl_xor_sync(unsigned, float v, int o);
unsigned dynamic_smem_size();
