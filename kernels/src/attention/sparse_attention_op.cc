// ai.surety::SparseAttention, opset 1: ORT glue (attributes, validation, threading) around
// f32_sparse_attention.
//
//   Q [B, S, H·d], K [B, T, H·d], V [B, T, H·dv] float32, key_padding_mask (optional) [B, T]
//   bool / int32 / int64 (nonzero = keep)  ->  Y [B, S, H·dv], rho (optional) [B, H, S]
#include <string>
#include <vector>

#include "attention/sparse_attention.h"
#include "common/op_support.h"
#include "isa.h"
#include "ops.h"

namespace surety {
namespace {

constexpr const char* kOpName = "SparseAttention";

const OrtApi& api() { return Ort::GetApi(); }

// The string attributes, as data: each name and the enumerator it selects.
template <typename Enum>
struct Choice {
  const char* name;
  Enum value;
};
constexpr Choice<AttentionPattern> kPatterns[] = {
    {"dense", AttentionPattern::kDense},
    {"band", AttentionPattern::kBand},
    {"block_local_global", AttentionPattern::kBlockLocalGlobal},
};
constexpr Choice<MassEstimator> kEstimators[] = {
    {"none", MassEstimator::kNone},
    {"sampled", MassEstimator::kSampled},
    {"gaussian", MassEstimator::kGaussian},
};

template <typename Enum, size_t N>
Enum choose(const std::string& where, const char* attribute, const std::string& value, const Choice<Enum> (&choices)[N]) {
  std::string known;
  for (const Choice<Enum>& c : choices) {
    if (value == c.name) return c.value;
    known += known.empty() ? "" : ", ";
    known += c.name;
  }
  throw_invalid_argument(where.c_str(), std::string("attribute ") + attribute + "='" + value +
                                            "' is not one of: " + known);
}

SparseAttentionConfig read_config(const OrtKernelInfo* info, const std::string& where) {
  SparseAttentionConfig c;  // its defaults are the attributes' defaults
  const char* w = where.c_str();
  c.num_heads = int_attribute(info, "num_heads", 0);  // required: 0 when absent
  if (c.num_heads <= 0) throw_invalid_argument(w, "attribute num_heads is required and must be positive");
  c.scale = float_attribute(info, "scale", c.scale);
  const int64_t causal = int_attribute(info, "causal", c.causal ? 1 : 0);
  if (causal != 0 && causal != 1) throw_invalid_argument(w, "attribute causal=" + std::to_string(causal) + " is not 0 or 1");
  c.causal = causal == 1;
  c.pattern = choose(where, "pattern", string_attribute(info, "pattern", "dense"), kPatterns);
  c.window = int_attribute(info, "window", c.window);
  c.density = float_attribute(info, "density", c.density);
  c.block_size = int_attribute(info, "block_size", c.block_size);
  c.num_local_blocks = int_attribute(info, "num_local_blocks", c.num_local_blocks);
  c.num_global = int_attribute(info, "num_global", c.num_global);
  c.estimator = choose(where, "estimator", string_attribute(info, "estimator", "none"), kEstimators);
  c.sample_stride = int_attribute(info, "sample_stride", c.sample_stride);
  if (c.window < 0) throw_invalid_argument(w, "attribute window must be >= 0, got " + std::to_string(c.window));
  if (c.pattern == AttentionPattern::kBand && c.window == 0 && !(c.density > 0.0f && c.density <= 1.0f)) {
    throw_invalid_argument(w, "pattern 'band' needs window > 0 or density in (0, 1], got window=0, density=" +
                                  std::to_string(c.density));
  }
  if (c.block_size <= 0) throw_invalid_argument(w, "attribute block_size must be positive, got " + std::to_string(c.block_size));
  if (c.num_local_blocks < 0 || c.num_global < 0) {
    throw_invalid_argument(w, "attributes num_local_blocks and num_global must be >= 0, got " +
                                  std::to_string(c.num_local_blocks) + " and " + std::to_string(c.num_global));
  }
  if (c.sample_stride <= 0) {
    throw_invalid_argument(w, "attribute sample_stride must be positive, got " + std::to_string(c.sample_stride));
  }
  return c;
}

class SparseAttentionKernel {
 public:
  SparseAttentionKernel(const F32AttentionKernels& gemm, const F32SoftmaxKernels& softmax, SparseAttentionConfig config,
                        std::string where, size_t input_count, size_t output_count)
      : gemm_(gemm),
        softmax_(softmax),
        config_(config),
        where_(std::move(where)),
        input_count_(input_count),
        output_count_(output_count) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* context) const {
    return status_from(where_.c_str(), [&] { Compute(context); });
  }

 private:
  const OrtValue* input(OrtKernelContext* context, size_t index) const {
    if (index >= input_count_) return nullptr;
    const OrtValue* value = nullptr;
    Ort::ThrowOnError(api().KernelContext_GetInput(context, index, &value));
    return value;
  }

  TensorInfo float3(OrtKernelContext* context, size_t index, const char* name, const char* layout) const {
    const OrtValue* value = input(context, index);
    if (value == nullptr) throw_invalid_argument(where_.c_str(), std::string("input ") + name + " is required");
    const TensorInfo t = tensor_info(Ort::ConstValue(value));
    if (t.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      throw_invalid_argument(where_.c_str(), std::string(name) + " must be float32, got " + element_type_name(t.type));
    }
    if (t.shape.size() != 3) {
      throw_invalid_argument(where_.c_str(), std::string(name) + " must be " + layout + ", got shape " +
                                                 shape_to_string(t.shape));
    }
    return t;
  }

  void Compute(OrtKernelContext* context) const {
    const char* w = where_.c_str();
    const TensorInfo q = float3(context, 0, "Q", "[B, S, H*d]");
    const TensorInfo k = float3(context, 1, "K", "[B, T, H*d]");
    const TensorInfo v = float3(context, 2, "V", "[B, T, H*dv]");
    const int64_t heads = config_.num_heads;
    const std::string shapes = "Q " + shape_to_string(q.shape) + ", K " + shape_to_string(k.shape) + ", V " +
                               shape_to_string(v.shape) + ", num_heads=" + std::to_string(heads);
    if (k.shape[0] != q.shape[0] || v.shape[0] != q.shape[0] || v.shape[1] != k.shape[1]) {
      throw_invalid_argument(w, "batch and key counts disagree: " + shapes);
    }
    if (k.shape[2] != q.shape[2]) throw_invalid_argument(w, "Q and K widths differ: " + shapes);
    if (q.shape[2] == 0 || q.shape[2] % heads != 0 || v.shape[2] % heads != 0) {
      throw_invalid_argument(w, "num_heads must divide the (positive) Q width and the V width: " + shapes);
    }
    SparseAttentionProblem p;
    p.batch = q.shape[0];
    p.queries = q.shape[1];
    p.keys = k.shape[1];
    p.d = q.shape[2] / heads;
    p.dv = v.shape[2] / heads;
    p.q = Ort::ConstValue(input(context, 0)).GetTensorData<float>();
    p.k = Ort::ConstValue(input(context, 1)).GetTensorData<float>();
    p.v = Ort::ConstValue(input(context, 2)).GetTensorData<float>();

    std::vector<uint8_t> keep;
    if (const OrtValue* mask_value = input(context, 3)) {
      const Ort::ConstValue mask(mask_value);
      const TensorInfo m = tensor_info(mask);
      if (m.shape != Shape{p.batch, p.keys}) {
        throw_invalid_argument(w, "key_padding_mask must be [B, T] = " + shape_to_string({p.batch, p.keys}) +
                                      ", got " + shape_to_string(m.shape));
      }
      keep.resize(static_cast<size_t>(p.batch * p.keys));
      switch (m.type) {
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: {
          const bool* data = mask.GetTensorData<bool>();
          for (size_t i = 0; i < keep.size(); ++i) keep[i] = data[i] ? 1 : 0;
          break;
        }
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: {
          const int32_t* data = mask.GetTensorData<int32_t>();
          for (size_t i = 0; i < keep.size(); ++i) keep[i] = data[i] != 0;
          break;
        }
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: {
          const int64_t* data = mask.GetTensorData<int64_t>();
          for (size_t i = 0; i < keep.size(); ++i) keep[i] = data[i] != 0;
          break;
        }
        default:
          throw_invalid_argument(w, std::string("key_padding_mask must be bool, int32 or int64, got ") +
                                        element_type_name(m.type));
      }
      p.keep = keep.data();
    }

    const int64_t y_shape[3] = {p.batch, p.queries, heads * p.dv};
    OrtValue* y_value = nullptr;
    Ort::ThrowOnError(api().KernelContext_GetOutput(context, 0, y_shape, 3, &y_value));
    p.y = Ort::UnownedValue(y_value).GetTensorMutableData<float>();
    if (output_count_ > 1) {
      const int64_t rho_shape[3] = {p.batch, heads, p.queries};
      OrtValue* rho_value = nullptr;
      Ort::ThrowOnError(api().KernelContext_GetOutput(context, 1, rho_shape, 3, &rho_value));
      if (rho_value != nullptr) p.rho = Ort::UnownedValue(rho_value).GetTensorMutableData<float>();
    }

    const Ort::KernelContext ctx(context);
    const TaskRunner run = [&ctx](size_t count, const std::function<void(size_t)>& fn) {
      auto task = [&fn](size_t i) { fn(i); };
      parallel_for(ctx, count, task);
    };
    f32_sparse_attention(gemm_, softmax_, config_, p, run);
  }

  const F32AttentionKernels& gemm_;
  const F32SoftmaxKernels& softmax_;
  const SparseAttentionConfig config_;
  const std::string where_;
  const size_t input_count_;
  const size_t output_count_;
};

struct SparseAttentionOp : Ort::CustomOpBase<SparseAttentionOp, SparseAttentionKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& ort, const OrtKernelInfo* info, void** kernel) const {
    std::string where = kOpName;
    return status_from(kOpName, [&] {
      const std::string node = Ort::ConstKernelInfo(info).GetNodeName();
      if (!node.empty()) where += " (node '" + node + "')";
      const SparseAttentionConfig config = read_config(info, where);
      Isa isa = Isa::kScalar;
      std::string error;
      if (!select_isa(&isa, &error)) throw Ort::Exception(where + ": " + error, ORT_FAIL);
      size_t input_count = 0;
      size_t output_count = 0;
      Ort::ThrowOnError(ort.KernelInfo_GetInputCount(info, &input_count));
      Ort::ThrowOnError(ort.KernelInfo_GetOutputCount(info, &output_count));
      *kernel = new SparseAttentionKernel(f32_attention_kernels(isa), f32_softmax_kernels(isa), config, where,
                                          input_count, output_count);
    });
  }

  const char* GetName() const { return kOpName; }
  size_t GetInputTypeCount() const { return 4; }
  // The mask's type is checked at run time (bool, int32 or int64).
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 3 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index < 3 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const {
    return index == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
};

}  // namespace

OrtCustomOp* sparse_attention_op() {
  static SparseAttentionOp op;
  return &op;
}

}  // namespace surety
