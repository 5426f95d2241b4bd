// Runs attention.cu's kernels on the CPU under emu.h and compares them with a direct f64
// attention (forward, lse, qkv gradient), f32 and bf16, several shapes (N not a multiple of the
// tiles, d not a multiple of 16). Also checks that the shared-memory sizes attention_cuda.rs
// computes (mirrored in `smem_bytes` below) are enough (the kernels trap otherwise).
//   g++ -std=c++20 -O2 -pthread -Iinclude -I../../src/ops attention_emu.cpp -o /tmp/attention_emu
//   /tmp/attention_emu
// With -DCBS_EMU_WMMA the bf16 kernels take their WMMA path (include/mma.h emulates it).
#ifdef CBS_EMU_WMMA
#define __CUDA_ARCH__ 800
#endif
#include "emu.h"
#include <type_traits>

#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "emu_runtime.h"

#include "attention.cu"

// The Rust side's sizes (attention_cuda.rs `smem_bytes`), mirrored.
static size_t rup(size_t b) { return (b + 127) / 128 * 128; }
enum Kern { FWD, KV, Q };
static size_t smem_bytes(Kern k, bool half, int d) {
  const size_t es = half ? 2 : 4;
  const int dp = (d + 15) / 16 * 16;
  const int bq = k == KV ? 32 : (half ? 64 : 32), bk = k == KV ? (half ? 64 : 32) : (half ? 64 : 32);
  const size_t ldt = half ? dp + 8 : dp + 1, lds = half ? bk + 4 : bk + 1,
               ldo = half ? dp + 4 : dp + 1, ldp = bk + 8;
  const size_t tile_q = rup(bq * ldt * es), tile_k = rup(bk * ldt * es), score = rup(bq * lds * 4),
               p = half ? rup(bq * ldp * es) : 0, stat = rup(bq * 4);
  switch (k) {
    case FWD: return tile_q + 2 * tile_k + score + p + rup(bq * ldo * 4) + 3 * stat;
    case KV: return 2 * tile_k + 2 * tile_q + 2 * score + 2 * p + 2 * rup(bk * ldo * 4) + 2 * stat;
    case Q: return 2 * tile_q + 2 * tile_k + 2 * score + p + rup(bq * ldo * 4) + 2 * stat;
  }
  return 0;
}

template <typename T> T to(float v) { return T(v); }
template <> float to<float>(float v) { return v; }
static float fl(float v) { return v; }
static float fl(bf16 v) { return __bfloat162float(v); }

struct Err {
  double num = 0, den = 0;
  void add(double a, double b) { num += (a - b) * (a - b); den += b * b; }
  double rel() const { return std::sqrt(num / (den > 0 ? den : 1)); }
};

template <typename T>
static bool run(int B, int N, int H, int d, double tol) {
  const bool half = sizeof(T) == 2;
  const int C = H * d, C3 = 3 * C;
  const float scale = 1.0f / std::sqrt((float)d);
  std::mt19937 rng(B * 1000 + N * 10 + d);
  std::normal_distribution<float> nd;
  std::vector<T> qkv(B * N * C3), go(B * N * C);
  for (auto& x : qkv) x = to<T>(nd(rng));
  for (auto& x : go) x = to<T>(nd(rng));
  std::vector<T> out(B * N * C), dqkv(B * N * C3, to<T>(NAN));
  std::vector<float> lse(B * H * N, NAN), dsum(B * H * N, NAN);
  const bool big = d > 64;
  using Fwd = void (*)(const T*, T*, float*, int, int, int, float);
  using Bwd = void (*)(const T*, const T*, const float*, const float*, T*, int, int, int, float);
  using Pre = void (*)(const T*, const T*, float*, int, int, int, int);
  Fwd f;
  Bwd kv, q;
  Pre pre;
  if constexpr (sizeof(T) == 2) {
    f = big ? attention_fwd128_bf16 : attention_fwd64_bf16;
    kv = big ? attention_bwd_kv128_bf16 : attention_bwd_kv64_bf16;
    q = big ? attention_bwd_q128_bf16 : attention_bwd_q64_bf16;
    pre = attention_bwd_pre_bf16;
  } else {
    f = big ? attention_fwd128_f32 : attention_fwd64_f32;
    kv = big ? attention_bwd_kv128_f32 : attention_bwd_kv64_f32;
    q = big ? attention_bwd_q128_f32 : attention_bwd_q64_f32;
    pre = attention_bwd_pre_f32;
  }
  const unsigned bq = half ? 64 : 32, bk = half ? 64 : 32, kvbk = half ? 64 : 32;
  launch(dim3{(N + bq - 1) / bq, (unsigned)H, (unsigned)B}, 128, smem_bytes(FWD, half, d),
         [&] { f(qkv.data(), out.data(), lse.data(), N, H, d, scale); });
  const size_t rows = (size_t)B * H * N;
  launch(dim3{(unsigned)((rows * 32 + 255) / 256), 1, 1}, 256, 0,
         [&] { pre(out.data(), go.data(), dsum.data(), B, N, H, d); });
  launch(dim3{(N + kvbk - 1) / kvbk, (unsigned)H, (unsigned)B}, 128, smem_bytes(KV, half, d),
         [&] { kv(qkv.data(), go.data(), lse.data(), dsum.data(), dqkv.data(), N, H, d, scale); });
  launch(dim3{(N + bq - 1) / bq, (unsigned)H, (unsigned)B}, 128, smem_bytes(Q, half, d),
         [&] { q(qkv.data(), go.data(), lse.data(), dsum.data(), dqkv.data(), N, H, d, scale); });
  (void)bk;

  // Reference in f64 from the same (rounded) inputs.
  Err eo, el, eq, ek, ev;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      auto X = [&](int t, int part, int j) { return (double)fl(qkv[((size_t)b * N + t) * C3 + part * C + h * d + j]); };
      auto G = [&](int t, int j) { return (double)fl(go[((size_t)b * N + t) * C + h * d + j]); };
      std::vector<double> P(N * N), O(N * d, 0), dP(N * N);
      for (int i = 0; i < N; ++i) {
        double mx = -INFINITY;
        for (int j = 0; j < N; ++j) {
          double s = 0;
          for (int e = 0; e < d; ++e) s += X(i, 0, e) * X(j, 1, e);
          P[i * N + j] = s * scale;
          mx = std::max(mx, s * scale);
        }
        double l = 0;
        for (int j = 0; j < N; ++j) l += std::exp(P[i * N + j] - mx);
        el.add(lse[((size_t)b * H + h) * N + i], mx + std::log(l));
        for (int j = 0; j < N; ++j) P[i * N + j] = std::exp(P[i * N + j] - mx) / l;
        for (int e = 0; e < d; ++e) {
          double o = 0;
          for (int j = 0; j < N; ++j) o += P[i * N + j] * X(j, 2, e);
          O[i * d + e] = o;
          eo.add(fl(out[((size_t)b * N + i) * C + h * d + e]), o);
        }
      }
      for (int i = 0; i < N; ++i) {
        double dot = 0;
        for (int j = 0; j < N; ++j) {
          double s = 0;
          for (int e = 0; e < d; ++e) s += G(i, e) * X(j, 2, e);
          dP[i * N + j] = s;
          dot += s * P[i * N + j];
        }
        for (int j = 0; j < N; ++j) dP[i * N + j] = P[i * N + j] * (dP[i * N + j] - dot);  // dS
      }
      for (int t = 0; t < N; ++t)
        for (int e = 0; e < d; ++e) {
          double dq = 0, dk = 0, dv = 0;
          for (int j = 0; j < N; ++j) {
            dq += dP[t * N + j] * X(j, 1, e);
            dk += dP[j * N + t] * X(j, 0, e);
            dv += P[j * N + t] * G(j, e);
          }
          const size_t base = ((size_t)b * N + t) * C3 + h * d + e;
          eq.add(fl(dqkv[base]), dq * scale);
          ek.add(fl(dqkv[base + C]), dk * scale);
          ev.add(fl(dqkv[base + 2 * C]), dv);
        }
    }
  bool nan = false;
  for (auto& x : dqkv) nan |= std::isnan(fl(x));
  const double worst = std::max({eo.rel(), el.rel(), eq.rel(), ek.rel(), ev.rel()});
  const bool ok = !nan && worst <= tol;
  std::printf("%s %-4s B=%d N=%3d H=%d d=%3d  out %.2e lse %.2e dq %.2e dk %.2e dv %.2e %s\n",
              ok ? "ok  " : "FAIL", half ? "bf16" : "f32", B, N, H, d, eo.rel(), el.rel(), eq.rel(),
              ek.rel(), ev.rel(), nan ? "(NaN/unwritten in dqkv)" : "");
  return ok;
}

int main() {
  const int shapes[][4] = {{2, 16, 4, 16}, {1, 5, 1, 64}, {2, 70, 2, 72}, {1, 33, 1, 128},
                           {1, 130, 2, 32}, {1, 64, 1, 64}, {1, 97, 1, 40}};
  int fails = 0;
  for (auto& s : shapes) {
    fails += !run<float>(s[0], s[1], s[2], s[3], 1e-5);
    fails += !run<bf16>(s[0], s[1], s[2], s[3], 2e-2);
  }
  for (int d : {32, 64, 72, 128})
    for (bool half : {false, true})
      std::printf("smem %s d=%3d: fwd %zu  bwd_kv %zu  bwd_q %zu bytes\n", half ? "bf16" : "f32 ", d,
                  smem_bytes(FWD, half, d), smem_bytes(KV, half, d), smem_bytes(Q, half, d));
  std::printf("%s\n", fails ? "FAILED" : "all passed");
  return fails ? 1 : 0;
}
