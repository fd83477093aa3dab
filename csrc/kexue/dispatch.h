// Runtime value -> compile-time constant switches shared by the CPU and CUDA launchers.
// Each side supplies its own storage types for the half formats through a TypeMap template.
#pragma once
#include "kexue/common.h"

#define KX_BOOL_SWITCH(COND, NAME, ...) \
  [&] {                                 \
    if (COND) {                         \
      constexpr bool NAME = true;       \
      return __VA_ARGS__();             \
    } else {                            \
      constexpr bool NAME = false;      \
      return __VA_ARGS__();             \
    }                                   \
  }()

// TypeMap<DType>::type is the storage type; T names it inside the body.
#define KX_DTYPE_SWITCH(DTYPE, TYPEMAP, T, ...)                               \
  [&] {                                                                       \
    switch (DTYPE) {                                                          \
      case ::kx::DType::F32: {                                                \
        using T = typename TYPEMAP<::kx::DType::F32>::type;                   \
        return __VA_ARGS__();                                                 \
      }                                                                       \
      case ::kx::DType::F64: {                                                \
        using T = typename TYPEMAP<::kx::DType::F64>::type;                   \
        return __VA_ARGS__();                                                 \
      }                                                                       \
      case ::kx::DType::F16: {                                                \
        using T = typename TYPEMAP<::kx::DType::F16>::type;                   \
        return __VA_ARGS__();                                                 \
      }                                                                       \
      default: {                                                              \
        using T = typename TYPEMAP<::kx::DType::BF16>::type;                  \
        return __VA_ARGS__();                                                 \
      }                                                                       \
    }                                                                         \
  }()
