// Gated-DeltaNet tree ops on the device (placeholder until the kernels land: every launcher
// reports Unsupported, so CUDA tensors get a clear error instead of a missing symbol).
#include "launchers.h"

namespace difftree::cuda {

namespace {
Status not_yet(const char* op) {
  return Unsupported(std::string(op) + ": no CUDA kernel in this build yet");
}
}  // namespace

Status gdn_conv(const TensorView&, const TensorView&, const TensorView&, const TensorView*,
                const TensorView&, bool, const TensorView&, Stream) {
  return not_yet("gdn_conv");
}
Status gdn_conv_commit(const TensorView&, const TensorView&, const TensorView&,
                       const TensorView&, const TensorView&, const TensorView*, Stream) {
  return not_yet("gdn_conv_commit");
}
Status gdn_verify(const TensorView&, const TensorView&, const TensorView&, const TensorView&,
                  const TensorView&, const TensorView&, const TensorView*, const TensorView&,
                  const TensorView&, const TensorView&, const TensorView&, Stream) {
  return not_yet("gdn_verify");
}
Status gdn_commit(const TensorView&, const TensorView&, const TensorView&, const TensorView&,
                  const TensorView&, const TensorView&, const TensorView*, Stream) {
  return not_yet("gdn_commit");
}

}  // namespace difftree::cuda
