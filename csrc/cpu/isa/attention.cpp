// Built once per instruction set with -DKX_ISA_NS=<base|avx2|avx512> and that set's flags
// (see csrc/cpu/isa/coupling.cpp). Torch-free on purpose.
#include "cpu/attention_tiles.h"

namespace kx {
namespace cpu {
namespace KX_ISA_NS {

attnloops::TileOps<float> attention_tile_ops_f32() { return attnloops::tile_ops<float>(); }
attnloops::TileOps<double> attention_tile_ops_f64() { return attnloops::tile_ops<double>(); }

}  // namespace KX_ISA_NS
}  // namespace cpu
}  // namespace kx
