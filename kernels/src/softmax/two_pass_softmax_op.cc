// ai.surety::TwoPassSoftmax, opset 1: ORT glue (validation, broadcasting, threading) around the
// row algorithms of f32_softmax_row.h.
//
//   X [..., D] float32, scale (optional) float32 broadcastable to [..., 1],
//   mask (optional) bool broadcastable to X (false = excluded)
//   -> Y float32 like X, log_sum_exp (optional) float32 [..., 1]
//
// Written against Ort::CustomOpBase rather than the lite API: `mask` may be given without
// `scale` (an empty input name in the middle), which the lite API's optional handling does not
// cover, so presence is checked here input by input.
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/op_support.h"
#include "isa.h"
#include "ops.h"
#include "softmax/f32_softmax_row.h"

namespace surety {
namespace {

constexpr const char* kOpName = "TwoPassSoftmax";

// Rows are handed to the thread pool in tasks of at least this many elements, so that a task's
// work dwarfs its scheduling cost (MLAS uses the same figure for its softmax).
constexpr size_t kTaskElements = 16384;
// Two-pass rows at least twice this long are split into chunks of this many elements: each
// chunk's (mantissa, exponent) partial is computed as its own task, the partials of a row are
// merged, and the scaling pass is split the same way. This lets one long row use every thread.
constexpr size_t kSplitChunkElements = 32768;

// The pass-2 output is written with streaming (non-temporal) stores when Y alone is larger than
// the last-level cache a core can use: its lines would be evicted before anyone reads them, so
// the write-allocate read that an ordinary store costs is wasted (16 -> 12 B per element).
// sysconf's L3 figure is taken when smaller than kMaxLastLevelCacheBytes, the L3 of one AMD Zen
// core complex: in VMs (the benchmark machine included) sysconf reports the whole socket's L3
// (256 MiB there), of which one core reaches only its complex's 32 MiB.
constexpr size_t kMaxLastLevelCacheBytes = size_t{32} << 20;

size_t last_level_cache_bytes() {
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (l3 > 0 && static_cast<size_t>(l3) < kMaxLastLevelCacheBytes) return static_cast<size_t>(l3);
  return kMaxLastLevelCacheBytes;
}

const OrtApi& api() { return Ort::GetApi(); }

// The data of one row of the problem.
struct Row {
  const float* x;
  float* y;
  float* lse;
  const uint8_t* mask;  // per element, or null
  float scale;
  bool excluded;  // a row-wide mask of false
};

struct Problem {
  const float* x = nullptr;
  float* y = nullptr;
  float* lse = nullptr;  // null when the output is absent
  const float* scale = nullptr;
  RowBroadcast scale_rows;
  const uint8_t* mask = nullptr;
  RowBroadcast mask_rows;
  bool mask_per_element = false;
  int64_t rows = 0;
  int64_t length = 0;

  // lse is null in the row when the output is absent (nothing computes it then).
  Row row(int64_t r) const {
    Row v{x + r * length, y + r * length, lse != nullptr ? lse + r : nullptr, nullptr, 1.0f,
          false};
    if (scale != nullptr) v.scale = scale[scale_rows.offset(r)];
    if (mask != nullptr) {
      const uint8_t* m = mask + mask_rows.offset(r);
      if (mask_per_element) {
        v.mask = m;
      } else {
        v.excluded = *m == 0;
      }
    }
    return v;
  }
};

class TwoPassSoftmaxKernel {
 public:
  TwoPassSoftmaxKernel(const F32SoftmaxKernels& kernels, SoftmaxAlgorithm algorithm,
                       std::string where, size_t input_count, size_t output_count)
      : kernels_(kernels),
        algorithm_(algorithm),
        where_(std::move(where)),
        nontemporal_min_bytes_(last_level_cache_bytes()),
        input_count_(input_count),
        output_count_(output_count) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* context) const {
    return status_from(where_.c_str(), [&] { Compute(context); });
  }

 private:
  // A present input, or null when the node leaves it out (absent or empty name).
  static const OrtValue* optional_input(OrtKernelContext* context, size_t count, size_t index) {
    if (index >= count) return nullptr;
    const OrtValue* value = nullptr;
    Ort::ThrowOnError(api().KernelContext_GetInput(context, index, &value));
    return value;
  }

  // X's element type and shape. Read into a fixed array for ranks up to 8 (a std::vector
  // otherwise): on a [1, 10] input the op's glue costs as much as the softmax, and a heap
  // allocation is a measurable part of it.
  struct XInfo {
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    size_t rank = 0;
    int64_t inline_dims[8] = {};
    Shape heap_dims;
    const int64_t* dims = inline_dims;
    Shape shape() const { return Shape(dims, dims + rank); }
  };

  static void read_x_info(const OrtValue* value, XInfo* x) {
    OrtTensorTypeAndShapeInfo* info = nullptr;
    Ort::ThrowOnError(api().GetTensorTypeAndShape(value, &info));
    const Ort::TensorTypeAndShapeInfo owner(info);  // releases it
    Ort::ThrowOnError(api().GetTensorElementType(info, &x->type));
    Ort::ThrowOnError(api().GetDimensionsCount(info, &x->rank));
    int64_t* dims = x->inline_dims;
    if (x->rank > 8) {
      x->heap_dims.resize(x->rank);
      dims = x->heap_dims.data();
    }
    Ort::ThrowOnError(api().GetDimensions(info, dims, x->rank));
    x->dims = dims;
  }

  void Compute(OrtKernelContext* context) const {
    const char* where = where_.c_str();
    const OrtValue* x_value = optional_input(context, input_count_, 0);
    if (x_value == nullptr) throw_invalid_argument(where, "input X is required");
    XInfo x;
    read_x_info(x_value, &x);
    if (x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      throw_invalid_argument(where, std::string("X must be float32, got ") + element_type_name(x.type));
    }
    if (x.rank == 0) {
      throw_invalid_argument(where, "X must have rank >= 1 (softmax is along the last axis), got a scalar");
    }

    Problem p;
    p.length = x.dims[x.rank - 1];
    p.rows = 1;
    for (size_t i = 0; i + 1 < x.rank; ++i) p.rows *= x.dims[i];
    p.x = Ort::ConstValue(x_value).GetTensorData<float>();

    if (const OrtValue* scale_value = optional_input(context, input_count_, 1)) {
      const TensorInfo s = tensor_info(Ort::ConstValue(scale_value));
      if (s.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        throw_invalid_argument(where, std::string("scale must be float32, got ") + element_type_name(s.type));
      }
      const Shape x_shape = x.shape();
      Shape row_shape = x_shape;  // [..., 1]: the shape of scale and log_sum_exp
      row_shape.back() = 1;
      if (!broadcasts_to(s.shape, row_shape)) {
        throw_invalid_argument(where, "scale shape " + shape_to_string(s.shape) + " is not broadcastable to " +
                                          shape_to_string(row_shape) + " (X shape " +
                                          shape_to_string(x_shape) + " with its last axis reduced to 1)");
      }
      p.scale = Ort::ConstValue(scale_value).GetTensorData<float>();
      p.scale_rows = RowBroadcast(x_shape, s.shape);
    }
    if (const OrtValue* mask_value = optional_input(context, input_count_, 2)) {
      const TensorInfo m = tensor_info(Ort::ConstValue(mask_value));
      if (m.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL) {
        throw_invalid_argument(where, std::string("mask must be bool, got ") + element_type_name(m.type));
      }
      const Shape x_shape = x.shape();
      if (!broadcasts_to(m.shape, x_shape)) {
        throw_invalid_argument(where, "mask shape " + shape_to_string(m.shape) + " is not broadcastable to X shape " +
                                          shape_to_string(x_shape));
      }
      // ORT stores bool as one byte holding 0 or 1.
      p.mask = reinterpret_cast<const uint8_t*>(Ort::ConstValue(mask_value).GetTensorData<bool>());
      p.mask_rows = RowBroadcast(x_shape, m.shape);
      p.mask_per_element = !m.shape.empty() && m.shape.back() != 1;
    }

    OrtValue* y_value = nullptr;
    Ort::ThrowOnError(api().KernelContext_GetOutput(context, 0, x.dims, x.rank, &y_value));
    p.y = Ort::UnownedValue(y_value).GetTensorMutableData<float>();
    if (output_count_ > 1) {
      Shape row_shape = x.shape();
      row_shape.back() = 1;
      OrtValue* lse_value = nullptr;
      Ort::ThrowOnError(
          api().KernelContext_GetOutput(context, 1, row_shape.data(), row_shape.size(), &lse_value));
      if (lse_value != nullptr) p.lse = Ort::UnownedValue(lse_value).GetTensorMutableData<float>();
    }

    if (p.rows == 0) return;
    Ort::KernelContext ctx(context);
    const size_t length = static_cast<size_t>(p.length);
    const size_t total = static_cast<size_t>(p.rows) * length;
    const SoftmaxAlgorithm algorithm =
        algorithm_ == SoftmaxAlgorithm::kAuto ? choose_softmax_algorithm(length, total) : algorithm_;
    const bool two_pass = algorithm == SoftmaxAlgorithm::kTwoPass;
    const bool nontemporal = two_pass && total * sizeof(float) > nontemporal_min_bytes_;
    if (two_pass && length >= 2 * kSplitChunkElements) {
      ComputeSplitRows(ctx, p, nontemporal);
    } else {
      ComputeRows(ctx, p, algorithm, nontemporal);
    }
  }

  // Whole rows per task.
  void ComputeRows(const Ort::KernelContext& ctx, const Problem& p, SoftmaxAlgorithm algorithm,
                   bool nontemporal) const {
    const size_t length = static_cast<size_t>(p.length);
    const size_t rows = static_cast<size_t>(p.rows);
    const size_t rows_per_task = std::max<size_t>(1, kTaskElements / std::max<size_t>(1, length));
    const size_t tasks = (rows + rows_per_task - 1) / rows_per_task;
    auto task = [&](size_t t) {
      const size_t end = std::min(rows, (t + 1) * rows_per_task);
      for (size_t r = t * rows_per_task; r < end; ++r) {
        const Row v = p.row(static_cast<int64_t>(r));
        if (v.excluded) {
          f32_softmax_row_excluded(length, v.y, v.lse);
        } else {
          f32_softmax_row(kernels_, algorithm, length, v.x, v.mask, v.scale, v.y, v.lse, nontemporal);
        }
      }
    };
    parallel_for(ctx, tasks, task);
  }

  // Two-pass with every row cut into chunks: pass 1 per chunk, merge per row, pass 2 per chunk.
  void ComputeSplitRows(const Ort::KernelContext& ctx, const Problem& p, bool nontemporal) const {
    const size_t length = static_cast<size_t>(p.length);
    const size_t rows = static_cast<size_t>(p.rows);
    const size_t chunks = (length + kSplitChunkElements - 1) / kSplitChunkElements;
    std::vector<ExtExpSum> parts(rows * chunks);
    auto chunk_of = [&](size_t t, size_t* begin) {
      *begin = (t % chunks) * kSplitChunkElements;
      return std::min(kSplitChunkElements, length - *begin);
    };
    auto pass1 = [&](size_t t) {
      const Row v = p.row(static_cast<int64_t>(t / chunks));
      if (v.excluded) {
        parts[t] = {0.0f, -65536.0f};
        return;
      }
      size_t begin = 0;
      const size_t n = chunk_of(t, &begin);
      parts[t] = kernels_.raddextexp(n, v.x + begin, v.mask != nullptr ? v.mask + begin : nullptr, v.scale);
    };
    parallel_for(ctx, rows * chunks, pass1);

    std::vector<ExtExpSum> sums(rows);
    std::vector<uint8_t> in_domain(rows);
    for (size_t r = 0; r < rows; ++r) {
      sums[r] = ext_exp_sum_merge(&parts[r * chunks], chunks);
      in_domain[r] = ext_exp_sum_in_domain(sums[r]) ? 1 : 0;
      if (in_domain[r] && p.lse != nullptr) p.lse[r] = ext_exp_sum_log(sums[r]);
    }

    auto pass2 = [&](size_t t) {
      const size_t r = t / chunks;
      const Row v = p.row(static_cast<int64_t>(r));
      if (in_domain[r]) {
        size_t begin = 0;
        const size_t n = chunk_of(t, &begin);
        f32_softmax_row_scale_ext(kernels_, n, v.x + begin, v.mask != nullptr ? v.mask + begin : nullptr,
                                  v.scale, sums[r], v.y + begin, nontemporal);
      } else if (t % chunks == 0) {
        // Rare rows (NaN, +inf, nothing kept, values beyond the two-pass domain) go through the
        // exact reload algorithm as a whole, in one task.
        if (v.excluded) {
          f32_softmax_row_excluded(length, v.y, v.lse);
        } else {
          f32_softmax_row_reload(kernels_, length, v.x, v.mask, v.scale, v.y, v.lse);
        }
      }
    };
    parallel_for(ctx, rows * chunks, pass2);
  }

  const F32SoftmaxKernels& kernels_;
  const SoftmaxAlgorithm algorithm_;
  const std::string where_;
  const size_t nontemporal_min_bytes_;
  // The node's input and output counts (read once, at kernel creation).
  const size_t input_count_;
  const size_t output_count_;
};

struct TwoPassSoftmaxOp : Ort::CustomOpBase<TwoPassSoftmaxOp, TwoPassSoftmaxKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& ort, const OrtKernelInfo* info, void** kernel) const {
    std::string where = kOpName;
    return status_from(kOpName, [&] {
      const std::string node = Ort::ConstKernelInfo(info).GetNodeName();
      if (!node.empty()) where += " (node '" + node + "')";
      const int64_t algorithm = int_attribute(info, "algorithm", 0);
      if (algorithm < 0 || algorithm > 2) {
        throw_invalid_argument(where.c_str(), "attribute algorithm=" + std::to_string(algorithm) +
                                                  " is not 0 (auto), 1 (two-pass) or 2 (reload)");
      }
      Isa isa = Isa::kScalar;
      std::string error;
      if (!select_isa(&isa, &error)) throw Ort::Exception(where + ": " + error, ORT_FAIL);
      size_t input_count = 0;
      size_t output_count = 0;
      Ort::ThrowOnError(ort.KernelInfo_GetInputCount(info, &input_count));
      Ort::ThrowOnError(ort.KernelInfo_GetOutputCount(info, &output_count));
      *kernel = new TwoPassSoftmaxKernel(f32_softmax_kernels(isa), static_cast<SoftmaxAlgorithm>(algorithm),
                                         where, input_count, output_count);
    });
  }

  const char* GetName() const { return kOpName; }
  size_t GetInputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 2 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const {
    return index == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
};

}  // namespace

OrtCustomOp* two_pass_softmax_op() {
  static TwoPassSoftmaxOp op;
  return &op;
}

}  // namespace surety
