// The table of SparseAttention microkernels per instruction-set path, from the variant list.
#include "attention/f32_attention.h"

namespace surety {
namespace {

constexpr F32AttentionKernels kVariants[] = {
#define SURETY_F32_ATTENTION_VARIANT(isa, gemm) {Isa::isa, gemm},
#include "attention/f32_attention_variants.inc"
#undef SURETY_F32_ATTENTION_VARIANT
};

static_assert(rows_follow_isa_list(kVariants),
              "f32_attention_variants.inc needs one row per path of isa_variants.inc, in its order");

}  // namespace

const F32AttentionKernels& f32_attention_kernels(Isa isa) { return kVariants[static_cast<int>(isa)]; }

}  // namespace surety
