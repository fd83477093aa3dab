// nvcuda::wmma for the SIMT emulator. WMMA's fragment layout is opaque by contract, so here every
// lane holds the whole tile (row-major in x[]): element-wise loops over num_elements stay correct,
// and load/store/mma are warp collectives run once per warp. Their arguments must be warp-uniform
// and the fragments identical in every lane (a kernel that makes them differ relies on a layout
// WMMA does not promise): both are checked. Pointers must be 256-bit aligned and ldm a multiple
// of 16 bytes, as the CUDA programming guide requires.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstring>
#include <string>
#include <type_traits>

#include "simt/scheduler.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void> class fragment {
 public:
  static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
  enum { num_elements = rows * cols };
  using element_type = T;
  using storage_element_type = T;
  T x[num_elements];
};

namespace detail {

template <typename T> float to_float(T v) {
  if constexpr (std::is_same<T, __half>::value)
    return __half2float(v);
  else if constexpr (std::is_same<T, __nv_bfloat16>::value)
    return __bfloat162float(v);
  else
    return static_cast<float>(v);
}
template <typename T> T from_float(float v) {
  if constexpr (std::is_same<T, __half>::value)
    return __float2half_rn(v);
  else if constexpr (std::is_same<T, __nv_bfloat16>::value)
    return __float2bfloat16_rn(v);
  else
    return static_cast<T>(v);
}

struct MemRecord {
  void* frag;
  const void* ptr;
  unsigned ldm;
  bool col_major;
};

using ::kx::simt::fail;
using ::kx::simt::Thread;

template <typename T> void check_uniform_and_aligned(Thread* const* lanes, const char* op) {
  const MemRecord& r0 = *static_cast<MemRecord*>(lanes[0]->record);
  for (int l = 1; l < 32; ++l) {
    const MemRecord& r = *static_cast<MemRecord*>(lanes[l]->record);
    if (r.ptr != r0.ptr || r.ldm != r0.ldm || r.col_major != r0.col_major)
      fail(std::string(op) + ": lane " + std::to_string(l) +
           " passes another pointer, ldm or layout than lane 0 (they must be warp-uniform)");
  }
  ::kx::simt::check_aligned(r0.ptr, 32, op);
  if ((r0.ldm * sizeof(T)) % 16 != 0)
    fail(std::string(op) + ": ldm = " + std::to_string(r0.ldm) + " elements is not a multiple of 16 bytes");
}

template <typename Frag> void same_in_every_lane(Thread* const* lanes, const Frag* const* frags, const char* op) {
  for (int l = 1; l < 32; ++l)
    if (std::memcmp(frags[l]->x, frags[0]->x, sizeof(frags[0]->x)) != 0)
      fail(std::string(op) + ": the fragment of lane " + std::to_string(l) +
           " differs from lane 0's; the kernel relies on a fragment layout WMMA does not promise");
  (void)lanes;
}

template <typename Frag> void complete_load(Thread* const* lanes, unsigned) {
  using T = typename Frag::element_type;
  check_uniform_and_aligned<T>(lanes, "wmma::load_matrix_sync");
  const MemRecord& r0 = *static_cast<MemRecord*>(lanes[0]->record);
  const T* p = static_cast<const T*>(r0.ptr);
  Frag& f0 = *static_cast<Frag*>(r0.frag);
  for (int i = 0; i < Frag::rows; ++i)
    for (int j = 0; j < Frag::cols; ++j)
      f0.x[i * Frag::cols + j] = r0.col_major ? p[static_cast<size_t>(j) * r0.ldm + i] : p[static_cast<size_t>(i) * r0.ldm + j];
  for (int l = 1; l < 32; ++l)
    std::memcpy(static_cast<Frag*>(static_cast<MemRecord*>(lanes[l]->record)->frag)->x, f0.x, sizeof(f0.x));
}

template <typename Frag> void complete_store(Thread* const* lanes, unsigned) {
  using T = typename Frag::element_type;
  check_uniform_and_aligned<T>(lanes, "wmma::store_matrix_sync");
  const Frag* frags[32];
  for (int l = 0; l < 32; ++l) frags[l] = static_cast<const Frag*>(static_cast<MemRecord*>(lanes[l]->record)->frag);
  same_in_every_lane(lanes, frags, "wmma::store_matrix_sync");
  const MemRecord& r0 = *static_cast<MemRecord*>(lanes[0]->record);
  T* p = static_cast<T*>(const_cast<void*>(r0.ptr));
  for (int i = 0; i < Frag::rows; ++i)
    for (int j = 0; j < Frag::cols; ++j)
      (r0.col_major ? p[static_cast<size_t>(j) * r0.ldm + i] : p[static_cast<size_t>(i) * r0.ldm + j]) =
          frags[0]->x[i * Frag::cols + j];
}

template <typename FD, typename FA, typename FB, typename FC> struct MmaRecord {
  FD* d;
  const FA* a;
  const FB* b;
  const FC* c;
};

template <typename FD, typename FA, typename FB, typename FC> void complete_mma(Thread* const* lanes, unsigned) {
  using R = MmaRecord<FD, FA, FB, FC>;
  const FA* as[32];
  const FB* bs[32];
  const FC* cs[32];
  for (int l = 0; l < 32; ++l) {
    const R& r = *static_cast<R*>(lanes[l]->record);
    as[l] = r.a;
    bs[l] = r.b;
    cs[l] = r.c;
  }
  same_in_every_lane(lanes, as, "wmma::mma_sync (a)");
  same_in_every_lane(lanes, bs, "wmma::mma_sync (b)");
  same_in_every_lane(lanes, cs, "wmma::mma_sync (c)");
  constexpr int M = FA::rows, K = FA::cols, N = FB::cols;
  using TD = typename FD::element_type;
  TD out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float acc = to_float(cs[0]->x[i * N + j]);
      for (int k = 0; k < K; ++k) acc += to_float(as[0]->x[i * K + k]) * to_float(bs[0]->x[k * N + j]);
      out[i * N + j] = from_float<TD>(acc);
    }
  for (int l = 0; l < 32; ++l) std::memcpy(static_cast<R*>(lanes[l]->record)->d->x, out, sizeof(out));
}

}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const typename fragment<Use, M, N, K, T, L>::element_type& v) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = v;
}

template <typename Use, int M, int N, int K, typename T, typename L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same<Use, accumulator>::value, "accumulators load with an explicit layout_t");
  detail::MemRecord r{&f, p, ldm, std::is_same<L, col_major>::value};
  ::kx::simt::warp_collective("wmma::load_matrix_sync", 0xffffffffu, &r,
                              &detail::complete_load<fragment<Use, M, N, K, T, L>>);
}

template <int M, int N, int K, typename T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t layout) {
  detail::MemRecord r{&f, p, ldm, layout == mem_col_major};
  ::kx::simt::warp_collective("wmma::load_matrix_sync", 0xffffffffu, &r,
                              &detail::complete_load<fragment<accumulator, M, N, K, T>>);
}

template <int M, int N, int K, typename T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
  detail::MemRecord r{const_cast<fragment<accumulator, M, N, K, T>*>(&f), p, ldm, layout == mem_col_major};
  ::kx::simt::warp_collective("wmma::store_matrix_sync", 0xffffffffu, &r,
                              &detail::complete_store<fragment<accumulator, M, N, K, T>>);
}

template <int M, int N, int K, typename TD, typename TA, typename LA, typename TB, typename LB, typename TC>
inline void mma_sync(fragment<accumulator, M, N, K, TD>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC>& c,
                     bool satf = false) {
  (void)satf;
  using R = detail::MmaRecord<fragment<accumulator, M, N, K, TD>, fragment<matrix_a, M, N, K, TA, LA>,
                              fragment<matrix_b, M, N, K, TB, LB>, fragment<accumulator, M, N, K, TC>>;
  R r{&d, &a, &b, &c};
  ::kx::simt::warp_collective("wmma::mma_sync", 0xffffffffu, &r,
                              &detail::complete_mma<typename std::remove_pointer<decltype(r.d)>::type,
                                                    fragment<matrix_a, M, N, K, TA, LA>,
                                                    fragment<matrix_b, M, N, K, TB, LB>,
                                                    fragment<accumulator, M, N, K, TC>>);
}

}  // namespace wmma
}  // namespace nvcuda
