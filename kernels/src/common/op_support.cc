#include "common/op_support.h"

namespace surety {

std::string shape_to_string(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

void throw_invalid_argument(const char* op, const std::string& message) {
  throw Ort::Exception(std::string(op) + ": " + message, ORT_INVALID_ARGUMENT);
}

bool broadcasts_to(const Shape& operand, const Shape& target) {
  if (operand.size() > target.size()) return false;
  const size_t pad = target.size() - operand.size();
  for (size_t i = 0; i < operand.size(); ++i) {
    if (operand[i] != 1 && operand[i] != target[pad + i]) return false;
  }
  return true;
}

RowBroadcast::RowBroadcast(const Shape& x_shape, const Shape& operand) {
  const size_t rank = x_shape.size();
  const size_t pad = rank - operand.size();
  Shape aligned(rank, 1);
  for (size_t i = 0; i < operand.size(); ++i) aligned[pad + i] = operand[i];
  Shape contiguous(rank, 1);
  for (size_t i = rank; i-- > 1;) contiguous[i - 1] = contiguous[i] * aligned[i];
  for (size_t i = 0; i + 1 < rank; ++i) {
    dims_.push_back(x_shape[i]);
    strides_.push_back(aligned[i] == 1 ? 0 : contiguous[i]);
  }
}

int64_t RowBroadcast::offset(int64_t row) const {
  int64_t offset = 0;
  for (size_t i = dims_.size(); i-- > 0;) {
    if (strides_[i] != 0) offset += (row % dims_[i]) * strides_[i];
    row /= dims_[i];
  }
  return offset;
}

int64_t int_attribute(const OrtKernelInfo* info, const char* name, int64_t fallback) {
  int64_t value = fallback;
  if (OrtStatus* absent = Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &value)) {
    Ort::GetApi().ReleaseStatus(absent);
    return fallback;
  }
  return value;
}

float float_attribute(const OrtKernelInfo* info, const char* name, float fallback) {
  float value = fallback;
  if (OrtStatus* absent = Ort::GetApi().KernelInfoGetAttribute_float(info, name, &value)) {
    Ort::GetApi().ReleaseStatus(absent);
    return fallback;
  }
  return value;
}

std::string string_attribute(const OrtKernelInfo* info, const char* name, const char* fallback) {
  size_t size = 0;
  if (OrtStatus* absent = Ort::GetApi().KernelInfoGetAttribute_string(info, name, nullptr, &size)) {
    Ort::GetApi().ReleaseStatus(absent);
    return fallback;
  }
  std::string value(size, '\0');
  Ort::ThrowOnError(Ort::GetApi().KernelInfoGetAttribute_string(info, name, value.data(), &size));
  value.resize(size > 0 ? size - 1 : 0);  // the size counts the terminating NUL
  return value;
}

TensorInfo tensor_info(const Ort::ConstValue& value) {
  const Ort::TensorTypeAndShapeInfo info = value.GetTensorTypeAndShapeInfo();
  return {info.GetElementType(), info.GetShape()};
}

const char* element_type_name(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT:
      return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE:
      return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16:
      return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16:
      return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL:
      return "bool";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32:
      return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64:
      return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8:
      return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8:
      return "int8";
    default:
      return "an unsupported element type";
  }
}

}  // namespace surety
