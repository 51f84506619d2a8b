// The ops of the ai.surety domain; register.cc lists them in its one table.
#pragma once

#include <onnxruntime_c_api.h>

namespace surety {

// Each returns a pointer to an op object in static storage, valid for the life of the process
// (ORT keeps pointers to it in every session that uses the domain).
OrtCustomOp* two_pass_softmax_op();
OrtCustomOp* expected_score_op();
OrtCustomOp* sparse_attention_op();

}  // namespace surety
