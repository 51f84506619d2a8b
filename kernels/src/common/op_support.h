// What every op's ORT glue shares: error statuses with messages that name the op, shape
// formatting, numpy-style broadcasting of an operand over the rows of X, and ParallelFor.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace surety {

using Shape = std::vector<int64_t>;

// "[2, 3, 5]".
std::string shape_to_string(const Shape& shape);

// Throws an Ort::Exception with ORT_INVALID_ARGUMENT and "<op>: <message>"; the op's ComputeV2
// turns it into the status ORT reports.
[[noreturn]] void throw_invalid_argument(const char* op, const std::string& message);

// Runs `body`, turning any exception into an OrtStatus (never lets one cross into ORT).
template <typename Body>
OrtStatus* status_from(const char* op, Body&& body) noexcept {
  try {
    body();
    return nullptr;
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, (std::string(op) + ": " + e.what()).c_str());
  } catch (...) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, (std::string(op) + ": unknown error").c_str());
  }
}

// An operand broadcast (numpy rules, aligned on the right) over the rows of X, where a row is
// one index of X's leading dimensions (all but the last). offset(row) is the element offset of
// the operand's data for that row.
class RowBroadcast {
 public:
  RowBroadcast() = default;
  // `operand` has rank <= rank(x_shape) and each of its leading dimensions is 1 or X's.
  // `row_stride` is the operand's extent along X's last axis (1 or D).
  RowBroadcast(const Shape& x_shape, const Shape& operand);
  int64_t offset(int64_t row) const;

 private:
  Shape dims_;     // X's leading dimensions
  Shape strides_;  // the operand's element stride per leading dimension, 0 where broadcast
};

// Whether `operand` broadcasts to `target` under numpy rules without changing `target`: rank no
// larger, and each dimension (aligned on the right) 1 or equal.
bool broadcasts_to(const Shape& operand, const Shape& target);

// Runs fn(i) for i in [0, count) on the session's intra-op pool (inline when count <= 1).
template <typename Fn>
void parallel_for(const Ort::KernelContext& ctx, size_t count, Fn& fn) {
  if (count == 0) return;
  if (count == 1) {
    fn(size_t{0});
    return;
  }
  ctx.ParallelFor([](void* user, size_t i) { (*static_cast<Fn*>(user))(i); }, count, 0, &fn);
}

// The tensor element type and shape of an input or output value.
struct TensorInfo {
  ONNXTensorElementDataType type;
  Shape shape;
};
TensorInfo tensor_info(const Ort::ConstValue& value);

const char* element_type_name(ONNXTensorElementDataType type);

// A node attribute, or `fallback` when the node leaves it out.
int64_t int_attribute(const OrtKernelInfo* info, const char* name, int64_t fallback);
float float_attribute(const OrtKernelInfo* info, const char* name, float fallback);
std::string string_attribute(const OrtKernelInfo* info, const char* name, const char* fallback);

}  // namespace surety
