// Library entry points: RegisterCustomOps (called by ORT) and SuretyKernelsIsa (called by
// Python's surety_serving.kernels.isa()). The ops of the ai.surety domain are listed once, in kOps.
#include <onnxruntime_cxx_api.h>

#include <mutex>
#include <string>

#include "isa.h"
#include "ops.h"

#define SURETY_EXPORT __attribute__((visibility("default")))

namespace surety {
namespace {

constexpr const char* kDomain = "ai.surety";

// The op table: adding an op to the library is one line here.
using OpFactory = OrtCustomOp* (*)();
constexpr OpFactory kOps[] = {
    two_pass_softmax_op,
    expected_score_op,
    sparse_attention_op,
};

// One domain for the process, built on first registration and never freed: every session that
// registered the library keeps pointers into it (and into the ops) for as long as it lives, and
// Python may tear sessions down after this library's static destructors would have run.
OrtCustomOpDomain* domain(const OrtApi& api, OrtStatus** status) {
  static std::once_flag once;
  static OrtCustomOpDomain* domain = nullptr;
  static OrtStatus* (*create)(const OrtApi&, OrtCustomOpDomain**) = [](const OrtApi& ort,
                                                                       OrtCustomOpDomain** out) {
    if (OrtStatus* s = ort.CreateCustomOpDomain(kDomain, out)) return s;
    for (OpFactory op : kOps) {
      if (OrtStatus* s = ort.CustomOpDomain_Add(*out, op())) return s;
    }
    return static_cast<OrtStatus*>(nullptr);
  };
  static OrtStatus* first_error = nullptr;
  std::call_once(once, [&] { first_error = create(api, &domain); });
  if (first_error != nullptr) {
    *status = api.CreateStatus(api.GetErrorCode(first_error), api.GetErrorMessage(first_error));
    return nullptr;
  }
  return domain;
}

}  // namespace
}  // namespace surety

extern "C" SURETY_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // The runtime is older than the headers this library was built against. Version 1 of the
    // API is always there and is enough to say so.
    const OrtApi* v1 = api_base->GetApi(1);
    if (v1 == nullptr) return nullptr;  // nothing to report an error with
    std::string message = "ai.surety kernels: onnxruntime " +
                          std::string(api_base->GetVersionString()) +
                          " does not provide ORT API version " + std::to_string(ORT_API_VERSION) +
                          ", which the library was built against";
    return v1->CreateStatus(ORT_FAIL, message.c_str());
  }
  Ort::InitApi(api);
  OrtStatus* status = nullptr;
  OrtCustomOpDomain* domain = surety::domain(*api, &status);
  if (domain == nullptr) return status;
  return api->AddCustomOpDomain(options, domain);
}

extern "C" SURETY_EXPORT const char* SuretyKernelsIsa(const char** error) {
  return surety::isa_name_or_error(error);
}
