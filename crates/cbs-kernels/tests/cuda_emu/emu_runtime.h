// The emulator's run time, shared by the *_emu.cpp programs (include once per program, after
// emu.h): the thread-index globals, block and warp barriers, shared memory, and `launch`, which
// runs a grid one block at a time with one std::thread per CUDA thread.
#pragma once
#include <functional>
#include <thread>
#include <vector>

thread_local dim3 threadIdx;
dim3 blockIdx, blockDim, gridDim;
alignas(128) unsigned char smem_raw[256 * 1024];
static unsigned g_dyn_smem = 0;
static std::barrier<>* g_block_bar = nullptr;
static std::barrier<>* g_warp_bar[32];
static float g_slots[32][32];

void __syncthreads() { g_block_bar->arrive_and_wait(); }
float __shfl_xor_sync(unsigned, float v, int o) {
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  g_warp_bar[w]->arrive_and_wait();
  g_slots[w][l] = v;
  g_warp_bar[w]->arrive_and_wait();
  return g_slots[w][l ^ o];
}
unsigned dynamic_smem_size() { return g_dyn_smem; }
void cbs_warp_sync() { g_warp_bar[threadIdx.x / 32]->arrive_and_wait(); }


static void launch(dim3 grid, unsigned threads, unsigned smem, const std::function<void()>& body) {
  gridDim = grid;
  blockDim = dim3{threads, 1, 1};
  g_dyn_smem = smem;
  std::barrier<> bb(threads);
  g_block_bar = &bb;
  std::vector<std::barrier<>*> wb;
  for (unsigned w = 0; w < threads / 32; ++w) g_warp_bar[w] = new std::barrier<>(32);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = dim3{x, y, z};
        std::memset(smem_raw, 0xff, sizeof smem_raw);  // NaN garbage: unset reads show up
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < threads; ++t)
          ts.emplace_back([&, t] {
            threadIdx = dim3{t, 1, 1};
            body();
          });
        for (auto& t : ts) t.join();
      }
  for (unsigned w = 0; w < threads / 32; ++w) delete g_warp_bar[w];
}
