// Storage types of the CPU kernels for each kx::DType.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "kexue/common.h"

namespace kx {
namespace cpu {
template <DType D> struct TypeMap;
template <> struct TypeMap<DType::F32> { using type = float; };
template <> struct TypeMap<DType::F64> { using type = double; };
template <> struct TypeMap<DType::F16> { using type = c10::Half; };
template <> struct TypeMap<DType::BF16> { using type = c10::BFloat16; };

// Bytes of one element of each storage type.
inline size_t elem_size(DType d) { return d == DType::F64 ? 8 : d == DType::F32 ? 4 : 2; }

// Work split that depends only on the problem size, never on the thread count, so the partial
// sums (and so every reduction) are bitwise reproducible on any machine.
constexpr int64_t kChunk = 16384;        // elements of one sample handled by one task
constexpr int64_t kGrainElems = 32768;   // below this much work, stay on one thread
}  // namespace cpu
}  // namespace kx
