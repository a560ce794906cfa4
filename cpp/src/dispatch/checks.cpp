#include "dispatch/checks.h"

#include <sstream>

namespace difftree::checks {
namespace {

std::string strides_string(const TensorView& t) {
  std::ostringstream os;
  os << "[";
  for (int i = 0; i < t.ndim; ++i) os << (i ? ", " : "") << t.strides[i];
  os << "]";
  return os.str();
}

}  // namespace

Status descriptor(const TensorView& t, const char* name) {
  if (t.ndim < 0 || t.ndim > kMaxDims)
    return InvalidValue(std::string(name) + ": expected 0 to " + std::to_string(kMaxDims) +
                        " dimensions, got ndim = " + std::to_string(t.ndim));
  for (int d = 0; d < t.ndim; ++d)
    if (t.shape[d] < 0)
      return InvalidValue(std::string(name) + ": negative extent in shape " + shape_string(t));
  // Empty tensors too: their other extents still enter size arithmetic (e.g. [0, 2^62, 2^62]).
  const int64_t elem = dtype_size(t.dtype) > 0 ? dtype_size(t.dtype) : 1;
  int64_t bytes = elem;
  for (int d = 0; d < t.ndim; ++d)
    if (__builtin_mul_overflow(bytes, t.shape[d] > 0 ? t.shape[d] : 1, &bytes))
      return InvalidValue(std::string(name) + ": shape " + shape_string(t) +
                          " is too large (its byte count overflows int64)");
  if (t.numel() == 0) return Status::Ok();  // strides of an empty tensor are never used
  // One past the farthest element from data, in elements, then in bytes.
  int64_t end = 1, end_bytes = 0;
  bool overflow = false;
  for (int d = 0; d < t.ndim && !overflow; ++d) {
    if (t.shape[d] == 1) continue;  // a size-1 dim's stride is never used
    const int64_t s = t.strides[d];
    int64_t step = 0;
    overflow = s == INT64_MIN || __builtin_mul_overflow(s < 0 ? -s : s, t.shape[d] - 1, &step) ||
               __builtin_add_overflow(end, step, &end);
  }
  if (overflow || __builtin_mul_overflow(end, elem, &end_bytes))
    return InvalidValue(std::string(name) + ": strides " + strides_string(t) + " of shape " +
                        shape_string(t) + " address more bytes than int64 can count");
  return Status::Ok();
}

Status ndim(const TensorView& t, const char* name, int expected, const char* layout) {
  DIFFTREE_RETURN_IF_ERROR(descriptor(t, name));
  if (t.ndim == expected) return Status::Ok();
  std::ostringstream os;
  os << name << ": expected a " << expected << "-D tensor " << layout << ", got shape "
     << shape_string(t);
  return InvalidValue(os.str());
}

Status shape(const TensorView& t, const char* name, std::initializer_list<int64_t> expected,
             const char* layout) {
  DIFFTREE_RETURN_IF_ERROR(ndim(t, name, static_cast<int>(expected.size()), layout));
  int i = 0;
  for (int64_t e : expected) {
    if (e != kAnyDim && t.shape[i] != e) {
      std::ostringstream os;
      os << name << ": expected shape " << layout << " = [";
      int j = 0;
      for (int64_t e2 : expected) {
        os << (j ? ", " : "");
        if (e2 != kAnyDim) os << e2; else os << "*";
        ++j;
      }
      os << "], got " << shape_string(t);
      return InvalidValue(os.str());
    }
    ++i;
  }
  return Status::Ok();
}

Status dtype(const TensorView& t, const char* name, std::initializer_list<DType> allowed) {
  for (DType d : allowed)
    if (t.dtype == d) return Status::Ok();
  std::ostringstream os;
  os << name << ": expected dtype ";
  int i = 0;
  for (DType d : allowed) os << (i++ ? " or " : "") << dtype_name(d);
  os << ", got " << dtype_name(t.dtype);
  return InvalidType(os.str());
}

Status contiguous(const TensorView& t, const char* name) {
  if (t.is_contiguous()) return Status::Ok();
  return InvalidValue(std::string(name) +
                      ": expected a contiguous tensor (call .contiguous() first), got shape " +
                      shape_string(t) + " with non-row-major strides");
}

Status data_present(const TensorView& t, const char* name) {
  DIFFTREE_RETURN_IF_ERROR(descriptor(t, name));
  if (t.data != nullptr || t.numel() == 0) return Status::Ok();
  return InvalidValue(std::string(name) + ": tensor has no data pointer");
}

Status same_device(const TensorView& t, const char* name, const TensorView& ref,
                   const char* ref_name) {
  if (t.device == DeviceType::kOther)
    return InvalidValue(std::string(name) + ": expected a cpu or cuda tensor");
  if (t.device == ref.device && (t.device == DeviceType::kCPU || t.device_id == ref.device_id))
    return Status::Ok();
  std::ostringstream os;
  os << name << ": expected the device of " << ref_name << " (" << device_name(ref.device);
  if (ref.device == DeviceType::kCUDA) os << ":" << ref.device_id;
  os << "), got " << device_name(t.device);
  if (t.device == DeviceType::kCUDA) os << ":" << t.device_id;
  return InvalidValue(os.str());
}

Status in_range(int64_t value, const char* name, int64_t lo, int64_t hi) {
  if (value >= lo && value <= hi) return Status::Ok();
  std::ostringstream os;
  os << name << ": expected a value in [" << lo << ", " << hi << "], got " << value;
  return InvalidValue(os.str());
}

Status tensor(const TensorView& t, const char* name, std::initializer_list<DType> allowed,
              const TensorView& device_ref, const char* device_ref_name) {
  DIFFTREE_RETURN_IF_ERROR(descriptor(t, name));
  DIFFTREE_RETURN_IF_ERROR(dtype(t, name, allowed));
  DIFFTREE_RETURN_IF_ERROR(same_device(t, name, device_ref, device_ref_name));
  DIFFTREE_RETURN_IF_ERROR(contiguous(t, name));
  return data_present(t, name);
}

}  // namespace difftree::checks
