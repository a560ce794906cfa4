#include "difftree/dlpack_view.h"

#include <string>

namespace difftree {
namespace {

DType to_dtype(DLDataType t) {
  if (t.lanes != 1) return DType::kOther;
  switch (t.code) {
    case kDLInt:
      return t.bits == 32 ? DType::kInt32 : t.bits == 64 ? DType::kInt64 : DType::kOther;
    case kDLUInt:
      return t.bits == 8 ? DType::kUInt8 : DType::kOther;
    case kDLBool:
      return t.bits == 8 ? DType::kBool : DType::kOther;
    case kDLFloat:
      return t.bits == 32 ? DType::kFloat32 : t.bits == 16 ? DType::kFloat16 : DType::kOther;
    case kDLBfloat:
      return t.bits == 16 ? DType::kBFloat16 : DType::kOther;
    default:
      return DType::kOther;
  }
}

}  // namespace

Status view_from_dlpack(const DLTensor& t, const char* name, TensorView* out) {
  if (t.ndim < 0 || t.ndim > kMaxDims)
    return InvalidValue(std::string(name) + ": expected at most " + std::to_string(kMaxDims) +
                        " dimensions, got " + std::to_string(t.ndim));
  TensorView v;
  v.data = t.data ? static_cast<char*>(t.data) + t.byte_offset : nullptr;
  v.dtype = to_dtype(t.dtype);
  v.device = t.device.device_type == kDLCPU    ? DeviceType::kCPU
             : t.device.device_type == kDLCUDA ? DeviceType::kCUDA
                                               : DeviceType::kOther;
  v.device_id = t.device.device_id;
  v.ndim = t.ndim;
  int64_t stride = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    v.shape[d] = t.shape[d];
    v.strides[d] = t.strides ? t.strides[d] : stride;
    stride *= t.shape[d];
  }
  *out = v;
  return Status::Ok();
}

}  // namespace difftree
