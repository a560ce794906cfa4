#include "difftree/dlpack_view.h"

#include <cstdint>
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
    return InvalidValue(std::string(name) + ": expected 0 to " + std::to_string(kMaxDims) +
                        " dimensions, got ndim = " + std::to_string(t.ndim));
  if (t.ndim > 0 && t.shape == nullptr)
    return InvalidValue(std::string(name) + ": shape is NULL for a " + std::to_string(t.ndim) +
                        "-D tensor");
  if (t.data != nullptr && t.byte_offset > UINTPTR_MAX - reinterpret_cast<uintptr_t>(t.data))
    return InvalidValue(std::string(name) + ": byte_offset " + std::to_string(t.byte_offset) +
                        " runs past the end of the address space");
  TensorView v;
  v.data = t.data ? reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(t.data) + t.byte_offset)
                  : nullptr;
  v.dtype = to_dtype(t.dtype);
  v.device = t.device.device_type == kDLCPU    ? DeviceType::kCPU
             : t.device.device_type == kDLCUDA ? DeviceType::kCUDA
                                               : DeviceType::kOther;
  v.device_id = t.device.device_id;
  v.ndim = t.ndim;
  for (int d = 0; d < t.ndim; ++d) v.shape[d] = t.shape[d];
  // NULL strides mean compact row-major (DLPack); extents and strides are checked by the op.
  if (t.strides != nullptr) {
    for (int d = 0; d < t.ndim; ++d) v.strides[d] = t.strides[d];
  } else {
    set_contiguous_strides(&v);
  }
  *out = v;
  return Status::Ok();
}

}  // namespace difftree
