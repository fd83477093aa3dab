// RoPE attention with custom masks (MODELS.md E1-E2), shared by the CPU and CUDA kernels.
//
// Shapes: q [B, H, Lq, d], k/v [B, Hkv, Lk, d], H = G·Hkv (GQA: query head h reads kv head h/G).
// Queries sit at the last Lq of the Lk key positions (offset = Lk − Lq), which is what causal
// masks and segment rules compare.
//
// RoPE (Su et al.): pair p of a head vector is rotated by angle pos·inv_freq[p] and multiplied by
// rope_scale (YaRN's attention temperature; 1 otherwise). Pairs are (p, p + d/2) in the "half"
// (GPT-NeoX) layout and (2p, 2p + 1) in the "interleaved" (GPT-J) layout. Angles and cos/sin are
// computed in the accumulation type from positions and inverse frequencies, never from tables.
//
// Masks, all combined with AND: causal (key ≤ query); segment rules from the source length S_b
// (segment ids are monotone 0/1, so they reduce to it): "unilm" — a source query sees the source,
// a target query sees the source and the target up to itself (key visible iff cumsum(seg)[k] ≤
// cumsum(seg)[q]); "uniae" — a source query sees the source, a target query sees key 0 ([CLS])
// and the target up to itself; key lengths (padding); and a dense boolean mask as a fallback.
#pragma once
#include "kexue/common.h"

namespace kx {
namespace attn {

enum class Rule : int { None = 0, UniLM = 1, UniAE = 2 };

struct Mask {
  bool causal = false;
  int64_t offset = 0;             // Lk − Lq
  Rule rule = Rule::None;
  const int64_t* src_len = nullptr;  // [B]: source length S_b (rule != None)
  const int64_t* key_len = nullptr;  // [B]: keys ≥ key_len[b] are padding
  const uint8_t* dense = nullptr;    // attn_mask, 1 = visible, read at the strides below
  int64_t dense_sb = 0, dense_sh = 0, dense_sq = 0, dense_sk = 0;
};

struct Rope {
  const void* inv_freq = nullptr;   // [d/2], accumulation type; null: no rotation
  double scale = 1.0;               // rope_scale
  bool interleaved = false;
  const void* positions = nullptr;  // [Bp, Lk] accumulation type; null: 0..Lk−1
  int64_t positions_batch_stride = 0;  // Lk, or 0 when one row serves every sample
};

struct Args {
  DType dtype;
  int64_t B = 0, H = 0, Hkv = 0, Lq = 0, Lk = 0, d = 0;
  double scale = 1.0;  // the softmax scale
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  void* lse = nullptr;  // [B, H, Lq] accumulation type; +inf for rows with nothing visible
  Rope rope;
  Mask mask;
  void* workspace = nullptr;
};

struct GradArgs {
  Args fwd;  // q, k, v, out, lse as in the forward
  const void* grad_out = nullptr;
  void* grad_q = nullptr;
  void* grad_k = nullptr;
  void* grad_v = nullptr;
};

// The rotation alone: x [B, H, L, d] (any leading dims folded into B·H with one positions row
// per B), y = rope_scale·R(pos)·x, or its transpose (the backward) when inverse.
struct RopeArgs {
  DType dtype;
  int64_t B = 0, H = 0, L = 0, d = 0;
  const void* x = nullptr;
  void* out = nullptr;
  Rope rope;
  bool inverse = false;
};

// Element index of the two members of pair p.
KX_HOST_DEVICE int64_t pair_lo(int64_t p, int64_t d, bool interleaved) { return interleaved ? 2 * p : p; }
KX_HOST_DEVICE int64_t pair_hi(int64_t p, int64_t d, bool interleaved) { return interleaved ? 2 * p + 1 : p + d / 2; }

template <typename A> KX_HOST_DEVICE A position(const Rope& r, int64_t b, int64_t pos_index) {
  return r.positions ? static_cast<const A*>(r.positions)[b * r.positions_batch_stride + pos_index]
                     : static_cast<A>(pos_index);
}

// Rotates the pair (x1, x2) by the angle whose cosine and sine are c and s (negated when
// inverse) and scales it.
template <typename A> KX_HOST_DEVICE void rotate_cs(A& x1, A& x2, A c, A s, A scale, bool inverse) {
  const A sn = inverse ? -s : s;
  const A y1 = x1 * c - x2 * sn, y2 = x1 * sn + x2 * c;
  x1 = y1 * scale;
  x2 = y2 * scale;
}

template <typename A> KX_HOST_DEVICE void sin_cos(A angle, A* s, A* c) {
#if defined(__CUDA_ARCH__)
  if (sizeof(A) == 4) {
    float sf, cf;
    ::sincosf(static_cast<float>(angle), &sf, &cf);
    *s = static_cast<A>(sf);
    *c = static_cast<A>(cf);
  } else {
    double sd, cd;
    ::sincos(static_cast<double>(angle), &sd, &cd);
    *s = static_cast<A>(sd);
    *c = static_cast<A>(cd);
  }
#else
  *s = std::sin(angle);
  *c = std::cos(angle);
#endif
}

// Rotates the pair (x1, x2) by angle (negated when inverse) and scales it.
template <typename A> KX_HOST_DEVICE void rotate(A& x1, A& x2, A angle, A scale, bool inverse) {
  A s, c;
  sin_cos(angle, &s, &c);
  rotate_cs(x1, x2, c, s, scale, inverse);
}

// Keys visible to query i (an index into Lq) of sample b by the structured masks (causal, key
// lengths, segment rule): [0, a1) ∪ [b0, b1). The rules make every row at most two intervals, so
// the CPU kernel masks whole runs instead of testing keys one by one.
struct Span {
  int64_t a1 = 0, b0 = 0, b1 = 0;
};

KX_HOST_DEVICE bool span_contains(const Span& s, int64_t j) { return j < s.a1 || (j >= s.b0 && j < s.b1); }

KX_HOST_DEVICE Span visible_span(const Mask& m, int64_t b, int64_t i, int64_t Lk) {
  const int64_t qi = i + m.offset;  // the query's index among the key positions
  int64_t end = Lk;
  if (m.causal && qi + 1 < end) end = qi + 1;
  if (m.key_len && m.key_len[b] < end) end = m.key_len[b];
  Span s;
  s.a1 = end;
  if (m.rule != Rule::None) {
    const int64_t S = m.src_len[b];
    if (qi < S) {
      s.a1 = S < end ? S : end;  // a source query sees the source
    } else {
      const int64_t upto = qi + 1 < end ? qi + 1 : end;  // target keys up to the query
      if (m.rule == Rule::UniLM) {
        s.a1 = upto;  // the whole source and the target up to itself
      } else {        // UniAE: [CLS] and the target up to itself
        s.a1 = (S < 1 ? S : 1) < end ? (S < 1 ? S : 1) : end;
        s.b0 = S;
        s.b1 = upto;
      }
    }
  }
  return s;
}

KX_HOST_DEVICE bool dense_visible(const Mask& m, int64_t b, int64_t h, int64_t i, int64_t j) {
  return !m.dense || m.dense[b * m.dense_sb + h * m.dense_sh + i * m.dense_sq + j * m.dense_sk];
}

// Is key j visible to query i (indices into Lq and Lk) of sample b, head h?
KX_HOST_DEVICE bool visible(const Mask& m, int64_t b, int64_t h, int64_t i, int64_t j, int64_t Lk) {
  return span_contains(visible_span(m, b, i, Lk), j) && dense_visible(m, b, h, i, j);
}

// True only when no key in [j0, j1) is visible to any query in [i0, i1) by the structured masks
// (the dense mask is not consulted: a block it hides is computed and masked element-wise).
KX_HOST_DEVICE bool block_hidden(const Mask& m, int64_t b, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  const int64_t q_last = i1 - 1 + m.offset, q_first = i0 + m.offset;
  if (m.causal && j0 > q_last) return true;
  if (m.key_len && j0 >= m.key_len[b]) return true;
  if (m.rule != Rule::None) {
    const int64_t S = m.src_len[b];
    // Target keys (j ≥ S) are visible only to target queries at or after them.
    if (j0 >= S && j0 > q_last) return true;
    // Source queries see only source keys.
    if (q_last < S && j0 >= S) return true;
    // UniAE: target queries see source key 0 only.
    if (m.rule == Rule::UniAE && q_first >= S && j1 <= S && j0 > 0) return true;
  }
  return false;
}

// True only when every key in [j0, j1) is visible to every query in [i0, i1) by the structured
// masks and there is no dense mask: the tensor-core kernels then skip the per-element test. The
// caller keeps the block inside [0, Lq) × [0, Lk).
KX_HOST_DEVICE bool block_visible(const Mask& m, int64_t b, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  if (m.dense) return false;
  const int64_t q_first = i0 + m.offset, q_last = i1 - 1 + m.offset, j_last = j1 - 1;
  if (m.causal && j_last > q_first) return false;
  if (m.key_len && j1 > m.key_len[b]) return false;
  if (m.rule == Rule::None) return true;
  const int64_t S = m.src_len[b];
  const bool cls_only = S >= 1 && j1 <= 1;  // key 0, which UniAE's target queries see
  if (q_first >= S)  // target queries only
    return m.rule == Rule::UniLM ? j_last <= q_first : cls_only || (j0 >= S && j_last <= q_first);
  if (q_last < S) return j1 <= S;  // source queries only: they see the source
  // Both: UniLM's target queries see the whole source too, UniAE's only key 0.
  return m.rule == Rule::UniLM ? j1 <= S : cls_only;
}

}  // namespace attn
}  // namespace kx
