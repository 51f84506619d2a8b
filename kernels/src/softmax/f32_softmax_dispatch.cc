// The table of softmax microkernels per instruction-set path, expanded from the variant list.
#include "softmax/f32_softmax.h"

namespace surety {
namespace {

constexpr F32SoftmaxKernels kVariants[] = {
#define SURETY_F32_SOFTMAX_VARIANT(isa, raddextexp, vscaleextexp, rmax, raddstoreexpminusmax, \
                                   vmulc, vaxpy, vmuladd, vmulc_rdot)                           \
  {Isa::isa, raddextexp, vscaleextexp, rmax, raddstoreexpminusmax, vmulc, vaxpy, vmuladd,       \
   vmulc_rdot},
#include "softmax/f32_softmax_variants.inc"
#undef SURETY_F32_SOFTMAX_VARIANT
};

static_assert(rows_follow_isa_list(kVariants),
              "f32_softmax_variants.inc needs one row per path of isa_variants.inc, in its order");

}  // namespace

const F32SoftmaxKernels& f32_softmax_kernels(Isa isa) { return kVariants[static_cast<int>(isa)]; }

}  // namespace surety
