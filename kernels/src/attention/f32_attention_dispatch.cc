// The table of SparseAttention microkernels per instruction-set path, from the variant list.
#include "attention/f32_attention.h"

namespace surety {
namespace {

constexpr F32AttentionKernels kVariants[] = {
#define SURETY_F32_ATTENTION_VARIANT(isa, gemm) {Isa::isa, gemm},
#include "attention/f32_attention_variants.inc"
#undef SURETY_F32_ATTENTION_VARIANT
};

constexpr Isa kIsaOrder[] = {
#define SURETY_ISA(enumerator, name, suffix) Isa::enumerator,
#include "isa_variants.inc"
#undef SURETY_ISA
};

constexpr bool rows_follow_isa_list() {
  if (sizeof(kVariants) / sizeof(kVariants[0]) != sizeof(kIsaOrder) / sizeof(kIsaOrder[0])) {
    return false;
  }
  for (size_t i = 0; i < sizeof(kIsaOrder) / sizeof(kIsaOrder[0]); ++i) {
    if (kVariants[i].isa != kIsaOrder[i]) return false;
  }
  return true;
}
static_assert(rows_follow_isa_list(),
              "f32_attention_variants.inc needs one row per path of isa_variants.inc, in its order");

}  // namespace

const F32AttentionKernels& f32_attention_kernels(Isa isa) { return kVariants[static_cast<int>(isa)]; }

}  // namespace surety
