// Runs optim.cu's and mse.cu's kernels on the CPU under emu.h against host references: the
// squared norm (partials + ordered final sum), the step control values (clipping, the
// non-finite guard), the AdamW moment and weight updates and the EMA reading the control
// (a refused step writes nothing), and the loss with its backward reading the upstream
// gradient on the device. f32 and bf16.
//   g++ -std=c++20 -O2 -pthread -Iinclude -I../../src/ops optim_emu.cpp -o /tmp/optim_emu
#include "emu.h"
// One block runs at a time here, so a function-local static is exactly block-shared memory.
#undef __shared__
#define __shared__ static
using std::isfinite;

#include <random>
#include <vector>

#include "emu_runtime.h"

#include "optim.cu"
#include "mse.cu"

static int failures = 0;
static void check(bool ok, const char* what, double got, double want) {
  if (!ok) {
    std::printf("  FAIL %s: got %.9g, want %.9g\n", what, got, want);
    ++failures;
  }
}

template <typename T> static T to(float v) { return T(v); }
template <> float to<float>(float v) { return v; }
static float fl(float v) { return v; }
static float fl(bf16 v) { return __bfloat162float(v); }

// The launch shape of cuda.rs `elementwise`.
static dim3 grid_for(size_t n) {
  size_t b = (n + 255) / 256;
  if (b < 1) b = 1;
  if (b > 4096) b = 4096;
  return dim3{(unsigned)b, 1, 1};
}

template <typename T>
static void run(const char* name, double tol) {
  std::printf("%s:\n", name);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  const size_t n = 5003;
  std::vector<T> g(n), p(n), e(n), mv(2 * n);
  for (auto& x : g) x = to<T>(nd(rng));
  for (auto& x : p) x = to<T>(nd(rng));
  for (auto& x : e) x = to<T>(nd(rng));
  for (size_t i = 0; i < 2 * n; ++i) mv[i] = to<T>(i < n ? 0.1f * nd(rng) : 0.01f * std::fabs(nd(rng)));

  // Squared norm: partials, then one block.
  const dim3 grid = grid_for(n);
  std::vector<float> part(grid.x, NAN);
  std::vector<T> sum(1, to<T>(NAN));
  const T* gp = g.data();
  launch(grid, 256, 0, [&] {
    if constexpr (sizeof(T) == 4) sum_sq_partial_f32(gp, part.data(), n);
    else sum_sq_partial_bf16(gp, part.data(), n);
  });
  const size_t parts = grid.x;
  float sums_f32 = NAN;
  launch(dim3{1, 1, 1}, 1024, 0, [&] { sum_final_f32(part.data(), parts, &sums_f32); });
  double want = 0;
  for (auto x : g) want += (double)fl(x) * fl(x);
  check(std::fabs(sums_f32 - want) <= 1e-5 * want, "sum_sq", sums_f32, want);

  // Control values: ‖g‖ = √(sums) over two "parameters" (the same one twice).
  float sums[2] = {sums_f32, sums_f32};
  const float norm = std::sqrt(2.0f * sums_f32);
  float ctrl[3] = {NAN, NAN, NAN};
  T loss = to<T>(0.5f);
  launch(dim3{1, 1, 1}, 32, 0, [&] {
    if constexpr (sizeof(T) == 4) step_control_f32(&loss, sums, 2, 1.0f, ctrl);
    else step_control_bf16(&loss, sums, 2, 1.0f, ctrl);
  });
  check(std::fabs(ctrl[2] - norm) <= 1e-6 * norm, "control norm", ctrl[2], norm);
  check(ctrl[1] == 1.0f, "control apply", ctrl[1], 1);
  check(std::fabs(ctrl[0] - 1.0f / (norm + 1e-6f)) <= 1e-6f, "control scale", ctrl[0],
        1.0 / norm);
  float unclipped[3];
  launch(dim3{1, 1, 1}, 32, 0, [&] {
    if constexpr (sizeof(T) == 4) step_control_f32(&loss, sums, 2, 0.0f, unclipped);
    else step_control_bf16(&loss, sums, 2, 0.0f, unclipped);
  });
  check(unclipped[0] == 1.0f && unclipped[1] == 1.0f, "control without clipping", unclipped[0], 1);
  if constexpr (sizeof(T) == 4) {
    for (float bad_loss : {NAN, INFINITY}) {
      float c[3];
      float l = bad_loss;
      launch(dim3{1, 1, 1}, 32, 0, [&] { step_control_f32(&l, sums, 2, 1.0f, c); });
      check(c[1] == 0.0f, "control refuses a non-finite loss", c[1], 0);
    }
    float inf_sums[2] = {1.0f, INFINITY};
    float c[3];
    float l = 0.5f;
    launch(dim3{1, 1, 1}, 32, 0, [&] { step_control_f32(&l, inf_sums, 2, 1.0f, c); });
    check(c[1] == 0.0f, "control refuses a non-finite norm", c[1], 0);
  }

  // The passes, refused then applied with scale 0.5.
  const float b1 = 0.9f, b2 = 0.999f, c1 = 0.1f, c2 = 0.001f;
  const float decay = 1.0f - 1e-5f, step = 1e-2f, bc2 = std::sqrt(0.001f), eps = 1e-8f;
  for (int applied = 0; applied < 2; ++applied) {
    float c[3] = {0.5f, (float)applied, 1.0f};
    std::vector<T> mv1 = mv, p1 = p, e1 = e;
    T *mvp = mv1.data(), *pp = p1.data(), *ep = e1.data();
    const T* mvc = mv1.data();
    const T* pc = p1.data();
    launch(grid, 256, 0, [&] {
      if constexpr (sizeof(T) == 4) adamw_moments_f32(mvp, gp, n, b1, c1, b2, c2, c);
      else adamw_moments_bf16(mvp, gp, n, b1, c1, b2, c2, c);
    });
    launch(grid, 256, 0, [&] {
      if constexpr (sizeof(T) == 4) adamw_params_f32(pp, mvc, n, decay, step, bc2, eps, c);
      else adamw_params_bf16(pp, mvc, n, decay, step, bc2, eps, c);
    });
    launch(grid, 256, 0, [&] {
      if constexpr (sizeof(T) == 4) ema_update_f32(ep, pc, n, 0.99f, 0.01f, c);
      else ema_update_bf16(ep, pc, n, 0.99f, 0.01f, c);
    });
    double worst = 0;
    for (size_t i = 0; i < n; ++i) {
      double gi = 0.5 * fl(g[i]);
      double m = applied ? b1 * fl(mv[i]) + c1 * gi : fl(mv[i]);
      double v = applied ? b2 * fl(mv[n + i]) + c2 * gi * gi : fl(mv[n + i]);
      // The weight update reads the stored (rounded) moments, as the kernel does.
      double ms = fl(mv1[i]), vs = fl(mv1[n + i]);
      double pw = applied ? fl(p[i]) * decay - step * ms / (std::sqrt(vs) / bc2 + eps) : fl(p[i]);
      double ew = applied ? 0.99 * fl(e[i]) + 0.01 * fl(p1[i]) : fl(e[i]);
      double errs[4] = {std::fabs(fl(mv1[i]) - m) / (std::fabs(m) + 1e-3),
                        std::fabs(fl(mv1[n + i]) - v) / (std::fabs(v) + 1e-3),
                        std::fabs(fl(p1[i]) - pw) / (std::fabs(pw) + 1e-3),
                        std::fabs(fl(e1[i]) - ew) / (std::fabs(ew) + 1e-3)};
      for (double x : errs) worst = x > worst ? x : worst;
      if (!applied) {
        // Refused: bit for bit what was there.
        bool same = std::memcmp(&mv1[i], &mv[i], sizeof(T)) == 0 &&
                    std::memcmp(&mv1[n + i], &mv[n + i], sizeof(T)) == 0 &&
                    std::memcmp(&p1[i], &p[i], sizeof(T)) == 0 &&
                    std::memcmp(&e1[i], &e[i], sizeof(T)) == 0;
        if (!same) {
          check(false, "a refused step wrote", (double)i, -1);
          break;
        }
      }
    }
    check(worst <= tol, applied ? "applied passes" : "refused passes", worst, tol);
    std::printf("  %s passes: worst relative error %.3g\n", applied ? "applied" : "refused", worst);
  }

  // The loss and its backward with the upstream gradient on the device.
  std::vector<T> a(n), b(n), out(2 * n, to<T>(NAN));
  for (auto& x : a) x = to<T>(nd(rng));
  for (auto& x : b) x = to<T>(nd(rng));
  std::vector<float> mpart(grid.x, NAN);
  T mse_out = to<T>(NAN);
  const T *ap = a.data(), *bp = b.data();
  launch(grid, 256, 0, [&] {
    if constexpr (sizeof(T) == 4) mse_partial_f32(ap, bp, mpart.data(), n);
    else mse_partial_bf16(ap, bp, mpart.data(), n);
  });
  launch(dim3{1, 1, 1}, 1024, 0, [&] {
    if constexpr (sizeof(T) == 4) mse_final_f32(mpart.data(), parts, &mse_out, n);
    else mse_final_bf16(mpart.data(), parts, &mse_out, n);
  });
  double mse_want = 0;
  for (size_t i = 0; i < n; ++i) mse_want += std::pow((double)fl(a[i]) - fl(b[i]), 2);
  mse_want /= n;
  check(std::fabs(fl(mse_out) - mse_want) <= tol * mse_want, "mse", fl(mse_out), mse_want);
  T up = to<T>(3.0f);
  launch(grid, 256, 0, [&] {
    if constexpr (sizeof(T) == 4) mse_bwd_f32(ap, bp, &up, out.data(), n);
    else mse_bwd_bf16(ap, bp, &up, out.data(), n);
  });
  double worst = 0;
  for (size_t i = 0; i < n; ++i) {
    double d = 6.0 / n * ((double)fl(a[i]) - fl(b[i]));
    worst = std::max(worst, std::fabs(fl(out[i]) - d) / (std::fabs(d) + 1e-6));
    worst = std::max(worst, std::fabs(fl(out[n + i]) + d) / (std::fabs(d) + 1e-6));
  }
  check(worst <= tol, "mse backward", worst, tol);
  std::printf("  mse backward: worst relative error %.3g\n", worst);
}

int main() {
  run<float>("optim.cu + mse.cu, f32", 1e-5);
  run<bf16>("optim.cu + mse.cu, bf16", 8e-3);
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all passed\n");
  return 0;
}
