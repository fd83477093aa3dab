// Non-temporal ("streaming") stores for outputs far larger than the caches. A plain store first
// reads its 64-byte line from memory (read for ownership), so a loop that reads two such streams
// and writes a third moves four streams' worth of bytes; streamed, it moves three. Measured on
// the development VM (2 threads, 64 MiB fp32 streams, 2026-12-02): 4.5 ms plain, 3.4 ms
// streamed; at 16 MiB and below the plain stores win, the lines still being in cache.
//
// The loops compute a block of elements into a buffer in L1 and stream the buffer out, which
// keeps one loop body for both paths. Header functions are static: the per-ISA builds include
// this file, and each must keep its own instructions (see cpu/isa.h).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace kx {
namespace cpu {
namespace streaming {

// Whether outputs of this many bytes in all are worth streaming (the threshold is
// set_min_bytes(), 32 MiB by default).
bool worth_it(int64_t output_bytes);
// Returns the previous threshold; tests lower it to run the streamed path on small tensors.
int64_t set_min_bytes(int64_t bytes);

// copy_errors() of the per-ISA build in use (cpu/isa.h), for the tests.
int64_t active_copy_errors();

// Bytes computed into the L1 buffer per block. Measured as above: 64- and 256-byte blocks ran
// 3.98 and 3.45 ms, 4 KiB ones 3.95 ms, storing from registers 3.37 ms.
constexpr int64_t kBlockBytes = 256;

// dst[0, bytes) = src[0, bytes); dst's whole 64-byte lines with non-temporal stores.
static inline void copy(void* dst, const void* src, int64_t bytes) {
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
#if defined(__SSE2__)
  const int64_t head = std::min<int64_t>(bytes, (64 - reinterpret_cast<uintptr_t>(d) % 64) % 64);
  std::memcpy(d, s, static_cast<size_t>(head));
  d += head;
  s += head;
  bytes -= head;
  for (; bytes >= 64; bytes -= 64, d += 64, s += 64) {
#if defined(__AVX512F__)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d), _mm512_loadu_si512(s));
#elif defined(__AVX__)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + 32),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 32)));
#else
    for (int q = 0; q < 64; q += 16)
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + q), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + q)));
#endif
  }
#endif
  std::memcpy(d, s, static_cast<size_t>(bytes));
}

// Orders this thread's streamed stores before whatever it does next (they are weakly ordered,
// and the thread pool's join is not guaranteed to drain them). Called once at the end of each
// chunk or sample a loop streams: it waits for the stores to drain, and once per 4 KiB run it
// cost a DDIM step its gain.
static inline void fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Copies with copy() into a poisoned buffer at every destination offset 0..127 bytes and every
// length 0..320 bytes, and counts the bytes that come out wrong (inside the range: not copied;
// outside: touched). The outputs of the ops are line-aligned fresh tensors, so this is what
// reaches copy()'s unaligned heads and tails; each per-ISA build runs its own.
static inline int64_t copy_errors() {
  alignas(64) unsigned char src[320], dst[128 + 320 + 64];
  for (int i = 0; i < 320; ++i) src[i] = static_cast<unsigned char>(i * 7 + 1);
  int64_t errors = 0;
  for (int offset = 0; offset < 128; ++offset)
    for (int bytes = 0; bytes <= 320; ++bytes) {
      std::memset(dst, 0xEE, sizeof dst);
      copy(dst + offset, src, bytes);
      fence();
      for (int i = 0; i < static_cast<int>(sizeof dst); ++i) {
        const bool inside = i >= offset && i < offset + bytes;
        errors += (inside ? dst[i] != src[i - offset] : dst[i] != 0xEE) ? 1 : 0;
      }
    }
  return errors;
}

// Runs block(k0, n, o, o2) over [0, len): block writes elements k0 .. k0 + n - 1 of the outputs
// out and out2 (out2 may be null) to o[0 .. n) and o2[0 .. n). Unstreamed, that is one call
// writing straight into the outputs; streamed, blocks of kBlockBytes go through a buffer, the
// first one ending where out's first whole 64-byte line begins. The caller fences (fence())
// before its task ends.
template <typename T, typename Block>
static inline void write_blocks(int64_t len, bool stream, T* out, T* out2, Block&& block) {
  if (!stream) {
    block(int64_t(0), len, out, out2);
    return;
  }
  constexpr int64_t kBlock = kBlockBytes / static_cast<int64_t>(sizeof(T));
  alignas(64) T b1[kBlock];
  alignas(64) T b2[kBlock];
  const int64_t lead = (64 - reinterpret_cast<uintptr_t>(out) % 64) % 64 / sizeof(T);
  int64_t k0 = std::min(len, lead);
  if (k0 > 0) block(int64_t(0), k0, out, out2);
  for (; k0 < len; k0 += kBlock) {
    const int64_t n = std::min(kBlock, len - k0);
    block(k0, n, b1, out2 ? b2 : nullptr);
    copy(out + k0, b1, n * static_cast<int64_t>(sizeof(T)));
    if (out2) copy(out2 + k0, b2, n * static_cast<int64_t>(sizeof(T)));
  }
}

}  // namespace streaming
}  // namespace cpu
}  // namespace kx
