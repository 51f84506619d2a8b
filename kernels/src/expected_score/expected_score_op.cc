// ai.surety::ExpectedScore, opset 1: LAGER's head, fused.
//
//   layer_logits [B, L, K], layer_weights [L] or [L, K], score_values [K] (all float32)
//   -> expected_score [B] = sum_k v_k softmax(zbar)_k, probabilities [B, K] = softmax(zbar)
//   with zbar_k = sum_l w_l z_{l,k} ([L]: one weight per layer, LAGER's aggregation)
//     or zbar_k = sum_l W_{l,k} z_{l,k} ([L, K]: one weight per layer and score token, e.g.
//        signed weights fitted on human judgments, where a layer may favour some scores only).
//
// Per row, the weighted sum over layers is accumulated straight into the row of `probabilities`
// (K floats, in L1), the softmax runs in place there with the reload algorithm (K is a handful
// of score tokens: the row is always in cache), and the expectation is fused into its last pass.
// The logits are read once; nothing else touches memory.
#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "common/op_support.h"
#include "isa.h"
#include "ops.h"
#include "softmax/f32_softmax_row.h"

namespace surety {
namespace {

constexpr const char* kOpName = "ExpectedScore";
constexpr size_t kTaskElements = 16384;

const OrtApi& api() { return Ort::GetApi(); }

class ExpectedScoreKernel {
 public:
  ExpectedScoreKernel(const F32SoftmaxKernels& kernels, std::string where)
      : kernels_(kernels), where_(std::move(where)) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* context) const {
    return status_from(where_.c_str(), [&] { Compute(context); });
  }

 private:
  // Input `index`: required, float32, of rank `rank` (0: the caller checks the shape).
  TensorInfo input(OrtKernelContext* context, size_t index, const char* name, size_t rank,
                   const float** data) const {
    const OrtValue* value = nullptr;
    Ort::ThrowOnError(api().KernelContext_GetInput(context, index, &value));
    if (value == nullptr) throw_invalid_argument(where_.c_str(), std::string("input ") + name + " is required");
    const TensorInfo info = tensor_info(Ort::ConstValue(value));
    if (info.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      throw_invalid_argument(where_.c_str(),
                             std::string(name) + " must be float32, got " + element_type_name(info.type));
    }
    if (rank != 0 && info.shape.size() != rank) {
      throw_invalid_argument(where_.c_str(), std::string(name) + " must have rank " + std::to_string(rank) +
                                                 ", got shape " + shape_to_string(info.shape));
    }
    *data = Ort::ConstValue(value).GetTensorData<float>();
    return info;
  }

  void Compute(OrtKernelContext* context) const {
    const char* where = where_.c_str();
    const float* logits = nullptr;
    const float* weights = nullptr;
    const float* values = nullptr;
    const TensorInfo z = input(context, 0, "layer_logits", 3, &logits);
    const TensorInfo w = input(context, 1, "layer_weights", 0, &weights);
    const TensorInfo v = input(context, 2, "score_values", 1, &values);
    const int64_t batch = z.shape[0];
    const int64_t layers = z.shape[1];
    const int64_t classes = z.shape[2];
    // [L]: one weight per layer, shared by the K score tokens; [L, K]: one per (layer, token).
    const Shape per_layer{layers};
    const Shape per_score{layers, classes};
    if (w.shape != per_layer && w.shape != per_score) {
      throw_invalid_argument(where, "layer_weights shape " + shape_to_string(w.shape) +
                                        " is neither [L] = " + shape_to_string(per_layer) + " nor [L, K] = " +
                                        shape_to_string(per_score) + " for layer_logits shape " +
                                        shape_to_string(z.shape) + " [B, L, K]");
    }
    const bool weight_per_score = w.shape.size() == 2;
    if (v.shape[0] != classes) {
      throw_invalid_argument(where, "score_values shape " + shape_to_string(v.shape) +
                                        " does not match the K of layer_logits shape " + shape_to_string(z.shape) +
                                        " [B, L, K] (expected [" + std::to_string(classes) + "])");
    }

    const Shape score_shape{batch};
    const Shape probs_shape{batch, classes};
    OrtValue* score_value = nullptr;
    Ort::ThrowOnError(api().KernelContext_GetOutput(context, 0, score_shape.data(), 1, &score_value));
    float* scores = Ort::UnownedValue(score_value).GetTensorMutableData<float>();
    float* probs = nullptr;
    size_t output_count = 0;
    Ort::ThrowOnError(api().KernelContext_GetOutputCount(context, &output_count));
    if (output_count > 1) {
      OrtValue* probs_value = nullptr;
      Ort::ThrowOnError(api().KernelContext_GetOutput(context, 1, probs_shape.data(), 2, &probs_value));
      if (probs_value != nullptr) probs = Ort::UnownedValue(probs_value).GetTensorMutableData<float>();
    }
    if (batch == 0) return;

    const size_t k = static_cast<size_t>(classes);
    const size_t l = static_cast<size_t>(layers);
    const size_t rows = static_cast<size_t>(batch);
    const size_t rows_per_task = std::max<size_t>(1, kTaskElements / std::max<size_t>(1, k * l));
    const size_t tasks = (rows + rows_per_task - 1) / rows_per_task;
    auto task = [&](size_t t) {
      std::vector<float> scratch(probs == nullptr ? k : 0);
      const size_t end = std::min(rows, (t + 1) * rows_per_task);
      for (size_t b = t * rows_per_task; b < end; ++b) {
        float* p = probs != nullptr ? probs + b * k : scratch.data();
        // Aggregated logits, sum_l w_l z_l or sum_l W_lk z_lk, in the order of the layers (IEEE:
        // 0 * inf is NaN). Both forms round alike (f32_softmax.h), so [L, K] weights constant
        // along K reproduce the [L] form exactly.
        std::fill(p, p + k, 0.0f);
        for (size_t layer = 0; layer < l; ++layer) {
          const float* z_row = logits + (b * l + layer) * k;
          if (weight_per_score) {
            kernels_.vmuladd(k, z_row, weights + layer * k, p);
          } else {
            kernels_.vaxpy(k, z_row, weights[layer], p);
          }
        }
        float lse = 0.0f;
        f32_softmax_row_reload(kernels_, k, p, nullptr, 1.0f, p, &lse, values, &scores[b]);
      }
    };
    parallel_for(Ort::KernelContext(context), tasks, task);
  }

  const F32SoftmaxKernels& kernels_;
  const std::string where_;
};

struct ExpectedScoreOp : Ort::CustomOpBase<ExpectedScoreOp, ExpectedScoreKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    std::string where = kOpName;
    return status_from(kOpName, [&] {
      const std::string node = Ort::ConstKernelInfo(info).GetNodeName();
      if (!node.empty()) where += " (node '" + node + "')";
      Isa isa = Isa::kScalar;
      std::string error;
      if (!select_isa(&isa, &error)) throw Ort::Exception(where + ": " + error, ORT_FAIL);
      *kernel = new ExpectedScoreKernel(f32_softmax_kernels(isa), where);
    });
  }

  const char* GetName() const { return kOpName; }
  size_t GetInputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const {
    return index == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
};

}  // namespace

OrtCustomOp* expected_score_op() {
  static ExpectedScoreOp op;
  return &op;
}

}  // namespace surety
