// Memory-efficient multi-head self-attention (FlashAttention-2 style) on the fused qkv layout of
// attention.rs: `qkv` [B, N, 3C], channels (q|k|v, head, d), C = H·d; output [B, N, C], channels
// (head, d); `softmax(scale·q·kᵀ)·v` per (image, head). No N×N matrix is ever stored: the
// forward keeps the output and the per-row log-sum-exp `lse` [B, H, N] (f32,
// `lse = max + log Σ exp(scale·s − max)`), and the backward recomputes `P = exp(scale·S − lse)`
// tile by tile. COMPILED, NOT YET RUN ON A GPU: `scripts/gpu-check.sh` (cbs device-check) is the
// check.
//
// Kernels (each `<name><DMAX>_<f32|bf16>`, DMAX = 64 for d ≤ 64, else 128; 1 ≤ d ≤ 128):
//   attention_fwd      grid (⌈N/BQ⌉, H, B): one block per query tile; loops over key tiles
//                      with the online softmax (running max m, sum l, O rescaled by
//                      α = exp(m_old − m_new)); writes O/l and lse = m + log l.
//   attention_bwd_pre  grid-stride, one warp per (b, h, row): D = rowsum(dO ⊙ O) → [B, H, N].
//   attention_bwd_kv   grid (⌈N/BK⌉, H, B): one block per key tile, loops over query tiles:
//                      S = Q·Kᵀ, dP = dO·Vᵀ, P = exp(scale·S − lse), dS = P ⊙ (dP − D),
//                      dV += Pᵀ·dO, dK += dSᵀ·Q; writes scale·dK and dV into dqkv.
//   attention_bwd_q    grid (⌈N/BQ⌉, H, B): one block per query tile, loops over key tiles:
//                      the same S, dP, dS, then dQ += dS·K; writes scale·dQ into dqkv.
// dQ has its own pass (two more tile products) instead of atomicAdd from the key-tile blocks:
// every gradient element is then summed in a fixed order, so training on the GPU is bitwise
// reproducible (gpu-check's exact-resume test hashes the checkpoints), and no zeroed f32
// scratch or conversion pass is needed. The three backward kernels write disjoint parts of
// dqkv (q | k, v), which together cover it.
//
// Block: 128 threads (4 warps). Tiles (BQ query rows × BK key rows): f32 32 × 32, bf16 64 × 64
// (attention_bwd_kv in bf16: 32 × 64, to stay under A100's 163 KiB). The head width is padded to
// dp = ⌈d/16⌉·16 with zeros; padded keys (row ≥ N) are zero in K and V and get P = 0 (−inf
// scores in the forward), padded query rows are zero and never stored.
//
// Tile products: bf16 on sm_80+ uses WMMA (16×16×16 bf16 fragments, f32 accumulation; each
// warp owns whole 16×16 output blocks, loaded from and stored to shared memory, so no
// fragment-layout assumptions); f32 (and bf16 below sm_80) uses FMA register tiles (thread
// (tx, ty) of a 16 × 8 grid owns rows ty + 8i, columns tx + 16j). All arithmetic is f32.
//
// Shared memory (dynamic, each array 128-byte aligned; T = the dtype; "ld" = row stride in
// elements: T tiles dp + 8 (bf16) / dp + 1 (f32), f32 score tiles BK + 4 / BK + 1, bf16 P tiles
// BK + 8, f32 accumulators dp + 4 / dp + 1); the f32 kernels use the score tiles as P/dS in
// place:
//   fwd:     Q, K, V [·][dp] T; S [BQ][BK] f32; P [BQ][BK] bf16; O [BQ][dp] f32; m, l, α [BQ]
//   bwd_kv:  K, V, Q, dO T; S, dP f32; P, dS bf16; dK, dV [BK][dp] f32; lse, D [BQ]
//   bwd_q:   Q, dO, K, V T; S, dP f32; dS bf16; dQ [BQ][dp] f32; lse, D [BQ]
// e.g. d = 128: fwd 70 KiB (f32) / 111 KiB (bf16), bwd_kv 105 / 142 KiB, bwd_q 89 / 144 KiB;
// d = 72: fwd 41 / 69 KiB. attention_cuda.rs computes the same sizes (keep `smem_bytes` there in
// step with `Smem` here), raises the kernels' dynamic shared-memory limit to them, and each
// kernel traps if it was launched with less.
#include "cuda_common.cuh"

#include <mma.h>
#include <type_traits>

// The dynamic shared memory (outside the anonymous namespace: one array for the whole module).
extern __shared__ __align__(128) unsigned char smem_raw[];

namespace {

constexpr int THREADS = 128;
constexpr int WARPS = THREADS / 32;

template <typename T>
struct Cfg;
template <>
struct Cfg<float> {
  static constexpr bool HALF = false;
  static constexpr int BQ = 32, BK = 32, KV_BQ = 32, KV_BK = 32;
};
template <>
struct Cfg<bf16> {
  static constexpr bool HALF = true;
  static constexpr int BQ = 64, BK = 64, KV_BQ = 32, KV_BK = 64;
};

// Row strides (elements), as in the header.
template <typename T>
__device__ __forceinline__ int ld_tile(int dp) {
  return Cfg<T>::HALF ? dp + 8 : dp + 1;
}
template <typename T>
__device__ __forceinline__ int ld_score(int bk) {
  return Cfg<T>::HALF ? bk + 4 : bk + 1;
}
template <typename T>
__device__ __forceinline__ int ld_acc(int dp) {
  return Cfg<T>::HALF ? dp + 4 : dp + 1;
}

// Bump allocator over the dynamic shared memory, every array 128-byte aligned.
struct Smem {
  unsigned char* base;
  size_t off;
  template <typename E>
  __device__ __forceinline__ E* take(size_t count) {
    E* p = reinterpret_cast<E*>(base + off);
    off += (count * sizeof(E) + 127) & ~(size_t)127;
    return p;
  }
};

#ifndef CBS_HOST_EMULATION
__device__ __forceinline__ unsigned dynamic_smem_size() {
  unsigned r;
  asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
  return r;
}
#endif

// Launched with less shared memory than the layout needs: stop with a launch error rather than
// write past it. Uniform over the block.
__device__ __forceinline__ void check_smem(const Smem& s) {
  if (s.off > dynamic_smem_size()) __trap();
}

// `C[r][c] (+)= Σ_{k<K} A(r, k)·B(k, c)` for r < R, c < cn ≤ CMAX: A(r, k) = A[r·lda + k]
// (A[k·lda + r] when AT), B(k, c) = B[k·ldb + c] (B[c·ldb + k] when BT); C f32. FMA register
// tiles; every thread of the block calls it.
template <int R, int CMAX, bool AT, bool BT, bool ACC, typename E>
__device__ __forceinline__ void mm_fma(const E* A, int lda, const E* B, int ldb, float* C, int ldc,
                                       int cn, int K) {
  constexpr int TX = 16, TY = THREADS / TX;
  constexpr int RI = R / TY, CJ = CMAX / TX;
  static_assert(R % TY == 0 && CMAX % TX == 0, "tile sizes");
  const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;
  float acc[RI][CJ];
#pragma unroll
  for (int i = 0; i < RI; ++i)
#pragma unroll
    for (int j = 0; j < CJ; ++j) acc[i][j] = 0.0f;
  for (int k = 0; k < K; ++k) {
    float a[RI], b[CJ];
#pragma unroll
    for (int i = 0; i < RI; ++i) {
      const int r = ty + TY * i;
      a[i] = ld(A, AT ? (size_t)k * lda + r : (size_t)r * lda + k);
    }
#pragma unroll
    for (int j = 0; j < CJ; ++j) {
      const int c = tx + TX * j;
      b[j] = c < cn ? ld(B, BT ? (size_t)c * ldb + k : (size_t)k * ldb + c) : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < RI; ++i)
#pragma unroll
      for (int j = 0; j < CJ; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
#pragma unroll
  for (int i = 0; i < RI; ++i)
#pragma unroll
    for (int j = 0; j < CJ; ++j) {
      const int r = ty + TY * i, c = tx + TX * j;
      if (c < cn) {
        float* p = C + (size_t)r * ldc + c;
        *p = ACC ? *p + acc[i][j] : acc[i][j];
      }
    }
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
// The same product with WMMA: bf16 operands, f32 accumulation; R, cn and K multiples of 16,
// every array 32-byte aligned at multiples of 16 rows and columns (the strides are multiples
// of 8 elements). Warp w computes the 16×16 output blocks w, w + 4, …
template <int R, bool AT, bool BT, bool ACC>
__device__ __forceinline__ void mm_wmma(const bf16* A, int lda, const bf16* B, int ldb, float* C,
                                        int ldc, int cn, int K) {
  using namespace nvcuda;
  typedef typename std::conditional<AT, wmma::col_major, wmma::row_major>::type LA;
  typedef typename std::conditional<BT, wmma::col_major, wmma::row_major>::type LB;
  const int warp = threadIdx.x >> 5;
  const int cb = cn / 16, blocks = (R / 16) * cb;
  for (int f = warp; f < blocks; f += WARPS) {
    const int i = f / cb, j = f % cb;
    float* cp = C + (size_t)i * 16 * ldc + j * 16;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    if (ACC) {
      wmma::load_matrix_sync(acc, cp, ldc, wmma::mem_row_major);
    } else {
      wmma::fill_fragment(acc, 0.0f);
    }
    for (int k = 0; k < K; k += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LA> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LB> b;
      const bf16* ap = AT ? A + (size_t)k * lda + i * 16 : A + (size_t)i * 16 * lda + k;
      const bf16* bp = BT ? B + (size_t)j * 16 * ldb + k : B + (size_t)k * ldb + j * 16;
      wmma::load_matrix_sync(a, ap, lda);
      wmma::load_matrix_sync(b, bp, ldb);
      wmma::mma_sync(acc, a, b, acc);
    }
    wmma::store_matrix_sync(cp, acc, ldc, wmma::mem_row_major);
  }
}
#endif

template <int R, int CMAX, bool AT, bool BT, bool ACC, typename E>
__device__ __forceinline__ void mm(const E* A, int lda, const E* B, int ldb, float* C, int ldc,
                                   int cn, int K) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same<E, bf16>::value) {
    mm_wmma<R, AT, BT, ACC>(A, lda, B, ldb, C, ldc, cn, K);
  } else {
    mm_fma<R, CMAX, AT, BT, ACC>(A, lda, B, ldb, C, ldc, cn, K);
  }
#else
  mm_fma<R, CMAX, AT, BT, ACC>(A, lda, B, ldb, C, ldc, cn, K);
#endif
}

// `rows` rows of one head, `dp` wide, into a T tile (row stride ldt): element (r, j) from
// `src[(row0 + r)·stride + j]`, zero where row0 + r ≥ n or j ≥ d. Plain copies (no rounding).
template <typename T>
__device__ __forceinline__ void load_tile(T* dst, int ldt, const T* src, size_t stride, int row0,
                                          int rows, int n, int d, int dp) {
  for (int idx = threadIdx.x; idx < rows * dp; idx += THREADS) {
    const int r = idx / dp, j = idx % dp;
    const int t = row0 + r;
    T v;
    if (t < n && j < d) {
      v = src[(size_t)t * stride + j];
    } else {
      v = T(0.0f);
    }
    dst[(size_t)r * ldt + j] = v;
  }
}

__device__ __forceinline__ void zero_f32(float* p, int rows, int cols, int ldc) {
  for (int idx = threadIdx.x; idx < rows * cols; idx += THREADS) {
    p[(size_t)(idx / cols) * ldc + idx % cols] = 0.0f;
  }
}

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename T, int DMAX>
__device__ void attention_fwd(const T* qkv, T* out, float* lse, int n, int heads, int d,
                              float scale) {
  constexpr int BQ = Cfg<T>::BQ, BK = Cfg<T>::BK;
  const int dp = (d + 15) & ~15;
  const int ldt = ld_tile<T>(dp), lds = ld_score<T>(BK), ldo = ld_acc<T>(dp);
  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
  const size_t c = (size_t)heads * d, c3 = 3 * c;
  const T* base = qkv + (size_t)b * n * c3 + (size_t)h * d;

  Smem s{smem_raw, 0};
  T* Qs = s.take<T>((size_t)BQ * ldt);
  T* Ks = s.take<T>((size_t)BK * ldt);
  T* Vs = s.take<T>((size_t)BK * ldt);
  float* Ss = s.take<float>((size_t)BQ * lds);
  T* Ps;
  int ldp;
  if constexpr (Cfg<T>::HALF) {
    ldp = BK + 8;
    Ps = s.take<T>((size_t)BQ * ldp);
  } else {
    ldp = lds;
    Ps = reinterpret_cast<T*>(Ss);  // f32: P overwrites S in place
  }
  float* Os = s.take<float>((size_t)BQ * ldo);
  float* m_s = s.take<float>(BQ);
  float* l_s = s.take<float>(BQ);
  float* a_s = s.take<float>(BQ);
  check_smem(s);

  load_tile(Qs, ldt, base, c3, q0, BQ, n, d, dp);
  zero_f32(Os, BQ, dp, ldo);
  for (int r = threadIdx.x; r < BQ; r += THREADS) {
    m_s[r] = NEG_INF;
    l_s[r] = 0.0f;
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  for (int k0 = 0; k0 < n; k0 += BK) {
    __syncthreads();  // the previous tile's products are done with K, V and P
    load_tile(Ks, ldt, base + c, c3, k0, BK, n, d, dp);
    load_tile(Vs, ldt, base + 2 * c, c3, k0, BK, n, d, dp);
    __syncthreads();
    mm<BQ, BK, false, true, false>(Qs, ldt, Ks, ldt, Ss, lds, BK, dp);  // S = Q·Kᵀ
    __syncthreads();
    // Online softmax, one warp per row. Key k0 < n is valid, so the new max is finite.
    for (int r = warp; r < BQ; r += WARPS) {
      float* row = Ss + (size_t)r * lds;
      float mx = NEG_INF;
      for (int j = lane; j < BK; j += 32) {
        const float v = k0 + j < n ? row[j] * scale : NEG_INF;
        row[j] = v;
        mx = fmaxf(mx, v);
      }
      mx = warp_max(mx);
      const float m_old = m_s[r];
      const float m_new = fmaxf(m_old, mx);
      float sum = 0.0f;
      for (int j = lane; j < BK; j += 32) {
        const float p = expf(row[j] - m_new);  // exp(−inf) = 0 for padded keys
        sum += p;
        st(Ps, (size_t)r * ldp + j, p);  // same element, same thread: safe in place (f32)
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        const float alpha = expf(m_old - m_new);  // 0 on the first tile (m_old = −inf)
        a_s[r] = alpha;
        l_s[r] = l_s[r] * alpha + sum;
        m_s[r] = m_new;
      }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < BQ * dp; idx += THREADS) {
      const int r = idx / dp, j = idx % dp;
      Os[(size_t)r * ldo + j] *= a_s[r];
    }
    __syncthreads();
    mm<BQ, DMAX, false, false, true>(Ps, ldp, Vs, ldt, Os, ldo, dp, BK);  // O += P·V
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < BQ * d; idx += THREADS) {
    const int r = idx / d, j = idx % d;
    const int t = q0 + r;
    if (t < n) {
      st(out, ((size_t)b * n + t) * c + (size_t)h * d + j, Os[(size_t)r * ldo + j] / l_s[r]);
    }
  }
  for (int r = threadIdx.x; r < BQ; r += THREADS) {
    const int t = q0 + r;
    if (t < n) lse[((size_t)b * heads + h) * n + t] = m_s[r] + logf(l_s[r]);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward.

// D[b, h, t] = Σ_j dO[b, t, h·d + j]·O[b, t, h·d + j], one warp per (b, h, t) row.
template <typename T>
__device__ void attention_bwd_pre(const T* o, const T* go, float* dsum, int bsz, int n, int heads,
                                  int d) {
  const size_t rows = (size_t)bsz * heads * n;
  const size_t c = (size_t)heads * d;
  const unsigned lane = threadIdx.x & 31;
  const size_t warps = ((size_t)gridDim.x * blockDim.x) >> 5;
  for (size_t w = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5; w < rows; w += warps) {
    const size_t t = w % n, bh = w / n, h = bh % heads, b = bh / heads;
    const size_t off = (b * n + t) * c + h * d;
    float s = 0.0f;
    for (int j = lane; j < d; j += 32) s += ld(go, off + j) * ld(o, off + j);
    s = warp_sum(s);
    if (lane == 0) dsum[w] = s;
  }
}

// P = exp(scale·S − lse) and dS = P ⊙ (dP − D) for a BQ × BK tile pair (rows q0.., keys k0..),
// zero outside the valid rows and keys; written as T into Ps / dSs (in place over S / dP for
// f32: each element read and written by the same thread).
template <typename T, int BQ, int BK>
__device__ __forceinline__ void probs_and_dscores(const float* Ss, const float* dPs, int lds,
                                                  T* Ps, T* dSs, int ldp, const float* lse_s,
                                                  const float* d_s, int q0, int k0, int n,
                                                  float scale) {
  for (int idx = threadIdx.x; idx < BQ * BK; idx += THREADS) {
    const int r = idx / BK, j = idx % BK;
    const bool valid = q0 + r < n && k0 + j < n;
    const float p = valid ? expf(Ss[(size_t)r * lds + j] * scale - lse_s[r]) : 0.0f;
    const float ds = p * (dPs[(size_t)r * lds + j] - d_s[r]);
    if (Ps != nullptr) st(Ps, (size_t)r * ldp + j, p);
    st(dSs, (size_t)r * ldp + j, ds);
  }
}

// Per-row lse and D of the query tile into shared memory (0 for padded rows).
__device__ __forceinline__ void load_stats(float* lse_s, float* d_s, const float* lse,
                                           const float* dsum, size_t row_base, int q0, int rows,
                                           int n) {
  for (int r = threadIdx.x; r < rows; r += THREADS) {
    const int t = q0 + r;
    lse_s[r] = t < n ? lse[row_base + t] : 0.0f;
    d_s[r] = t < n ? dsum[row_base + t] : 0.0f;
  }
}

// `acc·mul` (f32 [rows][dp], stride lda) into dqkv's part at `dst` (stride 3C), rows row0..
template <typename T>
__device__ __forceinline__ void store_grad(T* dst, size_t stride, const float* acc, int lda,
                                           int row0, int rows, int n, int d, float mul) {
  for (int idx = threadIdx.x; idx < rows * d; idx += THREADS) {
    const int r = idx / d, j = idx % d;
    const int t = row0 + r;
    if (t < n) st(dst, (size_t)t * stride + j, acc[(size_t)r * lda + j] * mul);
  }
}

template <typename T, int DMAX>
__device__ void attention_bwd_kv(const T* qkv, const T* go, const float* lse, const float* dsum,
                                 T* dqkv, int n, int heads, int d, float scale) {
  constexpr int BQ = Cfg<T>::KV_BQ, BK = Cfg<T>::KV_BK;
  const int dp = (d + 15) & ~15;
  const int ldt = ld_tile<T>(dp), lds = ld_score<T>(BK), ldo = ld_acc<T>(dp);
  const int k0 = blockIdx.x * BK, h = blockIdx.y, b = blockIdx.z;
  const size_t c = (size_t)heads * d, c3 = 3 * c;
  const T* base = qkv + (size_t)b * n * c3 + (size_t)h * d;
  const T* gbase = go + (size_t)b * n * c + (size_t)h * d;
  const size_t row_base = ((size_t)b * heads + h) * n;

  Smem s{smem_raw, 0};
  T* Ks = s.take<T>((size_t)BK * ldt);
  T* Vs = s.take<T>((size_t)BK * ldt);
  T* Qs = s.take<T>((size_t)BQ * ldt);
  T* dOs = s.take<T>((size_t)BQ * ldt);
  float* Ss = s.take<float>((size_t)BQ * lds);
  float* dPs = s.take<float>((size_t)BQ * lds);
  T *Ps, *dSs;
  int ldp;
  if constexpr (Cfg<T>::HALF) {
    ldp = BK + 8;
    Ps = s.take<T>((size_t)BQ * ldp);
    dSs = s.take<T>((size_t)BQ * ldp);
  } else {
    ldp = lds;
    Ps = reinterpret_cast<T*>(Ss);
    dSs = reinterpret_cast<T*>(dPs);
  }
  float* dKs = s.take<float>((size_t)BK * ldo);
  float* dVs = s.take<float>((size_t)BK * ldo);
  float* lse_s = s.take<float>(BQ);
  float* d_s = s.take<float>(BQ);
  check_smem(s);

  load_tile(Ks, ldt, base + c, c3, k0, BK, n, d, dp);
  load_tile(Vs, ldt, base + 2 * c, c3, k0, BK, n, d, dp);
  zero_f32(dKs, BK, dp, ldo);
  zero_f32(dVs, BK, dp, ldo);

  for (int q0 = 0; q0 < n; q0 += BQ) {
    __syncthreads();  // the previous tile's products are done with Q, dO, P and dS
    load_tile(Qs, ldt, base, c3, q0, BQ, n, d, dp);
    load_tile(dOs, ldt, gbase, c, q0, BQ, n, d, dp);
    load_stats(lse_s, d_s, lse, dsum, row_base, q0, BQ, n);
    __syncthreads();
    mm<BQ, BK, false, true, false>(Qs, ldt, Ks, ldt, Ss, lds, BK, dp);    // S = Q·Kᵀ
    mm<BQ, BK, false, true, false>(dOs, ldt, Vs, ldt, dPs, lds, BK, dp);  // dP = dO·Vᵀ
    __syncthreads();
    probs_and_dscores<T, BQ, BK>(Ss, dPs, lds, Ps, dSs, ldp, lse_s, d_s, q0, k0, n, scale);
    __syncthreads();
    mm<BK, DMAX, true, false, true>(Ps, ldp, dOs, ldt, dVs, ldo, dp, BQ);  // dV += Pᵀ·dO
    mm<BK, DMAX, true, false, true>(dSs, ldp, Qs, ldt, dKs, ldo, dp, BQ);  // dK += dSᵀ·Q
  }
  __syncthreads();
  T* dst = dqkv + (size_t)b * n * c3 + (size_t)h * d;
  store_grad(dst + c, c3, dKs, ldo, k0, BK, n, d, scale);
  store_grad(dst + 2 * c, c3, dVs, ldo, k0, BK, n, d, 1.0f);
}

template <typename T, int DMAX>
__device__ void attention_bwd_q(const T* qkv, const T* go, const float* lse, const float* dsum,
                                T* dqkv, int n, int heads, int d, float scale) {
  constexpr int BQ = Cfg<T>::BQ, BK = Cfg<T>::BK;
  const int dp = (d + 15) & ~15;
  const int ldt = ld_tile<T>(dp), lds = ld_score<T>(BK), ldo = ld_acc<T>(dp);
  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
  const size_t c = (size_t)heads * d, c3 = 3 * c;
  const T* base = qkv + (size_t)b * n * c3 + (size_t)h * d;
  const T* gbase = go + (size_t)b * n * c + (size_t)h * d;
  const size_t row_base = ((size_t)b * heads + h) * n;

  Smem s{smem_raw, 0};
  T* Qs = s.take<T>((size_t)BQ * ldt);
  T* dOs = s.take<T>((size_t)BQ * ldt);
  T* Ks = s.take<T>((size_t)BK * ldt);
  T* Vs = s.take<T>((size_t)BK * ldt);
  float* Ss = s.take<float>((size_t)BQ * lds);
  float* dPs = s.take<float>((size_t)BQ * lds);
  T* dSs;
  int ldp;
  if constexpr (Cfg<T>::HALF) {
    ldp = BK + 8;
    dSs = s.take<T>((size_t)BQ * ldp);
  } else {
    ldp = lds;
    dSs = reinterpret_cast<T*>(dPs);
  }
  float* dQs = s.take<float>((size_t)BQ * ldo);
  float* lse_s = s.take<float>(BQ);
  float* d_s = s.take<float>(BQ);
  check_smem(s);

  load_tile(Qs, ldt, base, c3, q0, BQ, n, d, dp);
  load_tile(dOs, ldt, gbase, c, q0, BQ, n, d, dp);
  load_stats(lse_s, d_s, lse, dsum, row_base, q0, BQ, n);
  zero_f32(dQs, BQ, dp, ldo);

  for (int k0 = 0; k0 < n; k0 += BK) {
    __syncthreads();  // the previous tile's product is done with K and dS
    load_tile(Ks, ldt, base + c, c3, k0, BK, n, d, dp);
    load_tile(Vs, ldt, base + 2 * c, c3, k0, BK, n, d, dp);
    __syncthreads();
    mm<BQ, BK, false, true, false>(Qs, ldt, Ks, ldt, Ss, lds, BK, dp);    // S = Q·Kᵀ
    mm<BQ, BK, false, true, false>(dOs, ldt, Vs, ldt, dPs, lds, BK, dp);  // dP = dO·Vᵀ
    __syncthreads();
    probs_and_dscores<T, BQ, BK>(Ss, dPs, lds, (T*)nullptr, dSs, ldp, lse_s, d_s, q0, k0, n,
                                 scale);
    __syncthreads();
    mm<BQ, DMAX, false, false, true>(dSs, ldp, Ks, ldt, dQs, ldo, dp, BK);  // dQ += dS·K
  }
  __syncthreads();
  store_grad(dqkv + (size_t)b * n * c3 + (size_t)h * d, c3, dQs, ldo, q0, BQ, n, d, scale);
}

}  // namespace

#define FWD_SIG(T) const T *qkv, T *out, float *lse, int n, int heads, int d, float scale
#define PRE_SIG(T) const T *o, const T *go, float *dsum, int bsz, int n, int heads, int d
#define BWD_SIG(T)                                                                     \
  const T *qkv, const T *go, const float *lse, const float *dsum, T *dqkv, int n, int heads, \
      int d, float scale

#define EXPORT_DMAX(name, DMAX, SIG, ARGS)                                                   \
  extern "C" __global__ void __launch_bounds__(THREADS) name##DMAX##_f32(SIG(float)) {      \
    name<float, DMAX> ARGS;                                                                  \
  }                                                                                          \
  extern "C" __global__ void __launch_bounds__(THREADS) name##DMAX##_bf16(SIG(bf16)) {      \
    name<bf16, DMAX> ARGS;                                                                   \
  }

EXPORT_DMAX(attention_fwd, 64, FWD_SIG, (qkv, out, lse, n, heads, d, scale))
EXPORT_DMAX(attention_fwd, 128, FWD_SIG, (qkv, out, lse, n, heads, d, scale))
EXPORT_DMAX(attention_bwd_kv, 64, BWD_SIG, (qkv, go, lse, dsum, dqkv, n, heads, d, scale))
EXPORT_DMAX(attention_bwd_kv, 128, BWD_SIG, (qkv, go, lse, dsum, dqkv, n, heads, d, scale))
EXPORT_DMAX(attention_bwd_q, 64, BWD_SIG, (qkv, go, lse, dsum, dqkv, n, heads, d, scale))
EXPORT_DMAX(attention_bwd_q, 128, BWD_SIG, (qkv, go, lse, dsum, dqkv, n, heads, d, scale))
EXPORT_F32_BF16(attention_bwd_pre, PRE_SIG, (o, go, dsum, bsz, n, heads, d))
