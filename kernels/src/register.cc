// Library entry points: RegisterCustomOps (called by ORT) and SuretyKernelsIsa (called by Python).
#include <onnxruntime_cxx_api.h>

#include "isa.h"

#define SURETY_EXPORT __attribute__((visibility("default")))

extern "C" SURETY_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    return nullptr;
  }
  Ort::InitApi(api);
  (void)options;
  return nullptr;
}

extern "C" SURETY_EXPORT const char* SuretyKernelsIsa(const char** error) {
  return surety::isa_name_or_error(error);
}
