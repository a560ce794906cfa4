#include "difftree/tensor.h"

#include <sstream>

namespace difftree {

TensorView make_view(void* data, DType dtype, std::initializer_list<int64_t> shape,
                     DeviceType device, int device_id) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.device_id = device_id;
  t.ndim = static_cast<int>(shape.size());
  int i = 0;
  for (int64_t s : shape) {
    if (i == kMaxDims) break;
    t.shape[i++] = s;
  }
  if (t.ndim <= kMaxDims) set_contiguous_strides(&t);
  return t;
}

void set_contiguous_strides(TensorView* t) {
  uint64_t stride = 1;  // unsigned: wraps instead of overflowing
  for (int d = t->ndim - 1; d >= 0; --d) {
    t->strides[d] = static_cast<int64_t>(stride);
    stride *= static_cast<uint64_t>(t->shape[d]);
  }
}

int dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kInt32:
    case DType::kFloat32:
      return 4;
    case DType::kInt64:
      return 8;
    case DType::kUInt8:
    case DType::kBool:
      return 1;
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    default:
      return 0;
  }
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kUInt8: return "uint8";
    case DType::kBool: return "bool";
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    default: return "an unsupported dtype";
  }
}

const char* device_name(DeviceType device) {
  switch (device) {
    case DeviceType::kCPU: return "cpu";
    case DeviceType::kCUDA: return "cuda";
    default: return "an unsupported device";
  }
}

std::string shape_string(const TensorView& t) {
  std::ostringstream os;
  os << "[";
  for (int i = 0; i < t.ndim && i < kMaxDims; ++i) os << (i ? ", " : "") << t.shape[i];
  if (t.ndim > kMaxDims) os << ", ...";
  os << "]";
  return os.str();
}

}  // namespace difftree
