// Host emulation of the WMMA subset attention.cu uses (built with -DCBS_EMU_WMMA, which also
// defines __CUDA_ARCH__ 800 so that the kernels take their WMMA path): every lane of a warp
// holds the whole 16×16 tile; the store is done by lane 0 between two warp barriers.
#pragma once
#ifdef CBS_EMU_WMMA
void cbs_warp_sync();
namespace nvcuda {
namespace wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };
template <typename Use, int M, int N, int K, typename E, typename Layout = void>
struct fragment {
  float v[16][16];
};
template <typename E>
inline float emu_f(E x) { return (float)x; }
inline float emu_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename Use, typename E, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, E, Layout>& f, const E* p, unsigned ldm) {
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      f.v[r][c] = emu_f(std::is_same<Layout, row_major>::value ? p[r * ldm + c] : p[c * ldm + r]);
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p,
                             unsigned ldm, layout_t l) {
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.v[r][c] = l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}
inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float x) {
  for (auto& row : f.v)
    for (auto& e : row) e = x;
}
template <typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                     const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[16][16];
  for (int r = 0; r < 16; ++r)
    for (int col = 0; col < 16; ++col) {
      float s = c.v[r][col];
      for (int k = 0; k < 16; ++k) s += a.v[r][k] * b.v[k][col];
      out[r][col] = s;
    }
  std::memcpy(d.v, out, sizeof out);
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t l) {
  cbs_warp_sync();
  if (threadIdx.x % 32 == 0)
    for (int r = 0; r < 16; ++r)
      for (int c = 0; c < 16; ++c) (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.v[r][c];
  cbs_warp_sync();
}
}  // namespace wmma
}  // namespace nvcuda
#endif
