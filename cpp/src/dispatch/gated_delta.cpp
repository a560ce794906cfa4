// Dispatch of the Gated-DeltaNet tree ops (ops.h): shapes, dtypes, devices and contiguity are
// validated once here; the index values (src, path, accepted) are data and are checked by the CPU
// implementation (cpu/gated_delta.cpp), trusted by the CUDA launchers.
#include <cstdint>
#include <string>

#include "cpu/cpu_ops.h"
#include "difftree/ops.h"
#include "dispatch/checks.h"
#include "dispatch/route.h"
#include "launchers.h"

namespace difftree {
namespace {

using checks::kAnyDim;
using dispatch::route;

const std::initializer_list<DType> kFloats = {DType::kFloat32, DType::kFloat16,
                                              DType::kBFloat16};

Status index_tensor(const TensorView& t, const char* name, const TensorView& ref,
                    const char* ref_name) {
  return checks::tensor(t, name, {DType::kInt32, DType::kInt64}, ref, ref_name);
}

// path [B, P] (P >= 1), accepted [B], active [B] bool (optional), on ref's device.
Status check_path(const TensorView& path, const TensorView& accepted, const TensorView* active,
                  int64_t B, const TensorView& ref, const char* ref_name) {
  DIFFTREE_RETURN_IF_ERROR(checks::shape(path, "path", {B, kAnyDim}, "[B, P]"));
  if (path.shape[1] < 1) return InvalidValue("path: expected at least one column (the root)");
  DIFFTREE_RETURN_IF_ERROR(index_tensor(path, "path", ref, ref_name));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(accepted, "accepted", {B}, "[B]"));
  DIFFTREE_RETURN_IF_ERROR(index_tensor(accepted, "accepted", ref, ref_name));
  if (active == nullptr) return Status::Ok();
  DIFFTREE_RETURN_IF_ERROR(checks::shape(*active, "active", {B}, "[B]"));
  return checks::tensor(*active, "active", {DType::kBool}, ref, ref_name);
}

// x [B, N, C] and conv_tail [B, C, K - 1] of one float dtype; src [B, N, K] int32 (K >= 1).
Status check_conv_rows(const TensorView& x, const TensorView& conv_tail, const TensorView& src) {
  DIFFTREE_RETURN_IF_ERROR(checks::ndim(x, "x", 3, "[B, N, C]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(x, "x", kFloats, x, "x"));
  const int64_t B = x.shape[0], N = x.shape[1], C = x.shape[2];
  DIFFTREE_RETURN_IF_ERROR(checks::shape(src, "src", {B, N, kAnyDim}, "[B, N, K]"));
  if (src.shape[2] < 1) return InvalidValue("src: expected K >= 1 (the conv width), got K = 0");
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(src, "src", {DType::kInt32}, x, "x"));
  const int64_t K = src.shape[2];
  DIFFTREE_RETURN_IF_ERROR(checks::shape(conv_tail, "conv_tail", {B, C, K - 1}, "[B, C, K - 1]"));
  return checks::tensor(conv_tail, "conv_tail", {x.dtype}, x, "x");
}

// The values of i32 / i64 index tensors cannot overflow the CPU's int64 arithmetic, but a
// shape past int32 cannot be indexed by int32 src entries: reject it clearly.
Status rows_fit_int32(const TensorView& x, int64_t K) {
  if (x.shape[1] > INT32_MAX - K)
    return InvalidValue("x: expected N + K - 1 to fit in int32 (src is int32), got N = " +
                        std::to_string(x.shape[1]));
  return Status::Ok();
}

}  // namespace

// ---- gdn_conv -------------------------------------------------------------------------------

Status check_gdn_conv(const TensorView& x, const TensorView& conv_tail, const TensorView& weight,
                      const TensorView* bias, const TensorView& src) {
  DIFFTREE_RETURN_IF_ERROR(check_conv_rows(x, conv_tail, src));
  const int64_t C = x.shape[2], K = src.shape[2];
  DIFFTREE_RETURN_IF_ERROR(rows_fit_int32(x, K));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(weight, "weight", {C, K}, "[C, K]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(weight, "weight", {x.dtype}, x, "x"));
  if (bias != nullptr) {
    DIFFTREE_RETURN_IF_ERROR(checks::shape(*bias, "bias", {C}, "[C]"));
    DIFFTREE_RETURN_IF_ERROR(checks::tensor(*bias, "bias", {x.dtype}, x, "x"));
  }
  return Status::Ok();
}

Status gdn_conv(const TensorView& x, const TensorView& conv_tail, const TensorView& weight,
                const TensorView* bias, const TensorView& src, bool activation,
                const TensorView& out, Stream stream) {
  DIFFTREE_RETURN_IF_ERROR(check_gdn_conv(x, conv_tail, weight, bias, src));
  DIFFTREE_RETURN_IF_ERROR(
      checks::shape(out, "out", {x.shape[0], x.shape[1], x.shape[2]}, "[B, N, C] (as x)"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(out, "out", {x.dtype}, x, "x"));
  return route(
      "gdn_conv", x, out.numel() == 0,
      [&] { return cuda::gdn_conv(x, conv_tail, weight, bias, src, activation, out, stream); },
      [&] { return cpu::gdn_conv(x, conv_tail, weight, bias, src, activation, out); });
}

// ---- gdn_conv_commit ------------------------------------------------------------------------

Status check_gdn_conv_commit(const TensorView& conv_tail, const TensorView& x,
                             const TensorView& src, const TensorView& path,
                             const TensorView& accepted, const TensorView* active) {
  DIFFTREE_RETURN_IF_ERROR(check_conv_rows(x, conv_tail, src));
  DIFFTREE_RETURN_IF_ERROR(rows_fit_int32(x, src.shape[2]));
  return check_path(path, accepted, active, x.shape[0], x, "x");
}

Status gdn_conv_commit(const TensorView& conv_tail, const TensorView& x, const TensorView& src,
                       const TensorView& path, const TensorView& accepted,
                       const TensorView* active, Stream stream) {
  DIFFTREE_RETURN_IF_ERROR(check_gdn_conv_commit(conv_tail, x, src, path, accepted, active));
  return route(
      "gdn_conv_commit", x, x.shape[0] == 0,
      [&] { return cuda::gdn_conv_commit(conv_tail, x, src, path, accepted, active, stream); },
      [&] { return cpu::gdn_conv_commit(conv_tail, x, src, path, accepted, active); });
}

// ---- gdn_verify -----------------------------------------------------------------------------

Status check_gdn_verify(const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& g, const TensorView& beta, const TensorView& state,
                        const TensorView* tree_anc) {
  DIFFTREE_RETURN_IF_ERROR(checks::ndim(q, "q", 4, "[B, N, H_k, D_k]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(q, "q", kFloats, q, "q"));
  const int64_t B = q.shape[0], N = q.shape[1], Hk = q.shape[2], Dk = q.shape[3];
  if (Hk < 1 || Dk < 1)
    return InvalidValue("q: expected H_k >= 1 and D_k >= 1, got shape " + shape_string(q));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(k, "k", {B, N, Hk, Dk}, "[B, N, H_k, D_k] (as q)"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(k, "k", {q.dtype}, q, "q"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(v, "v", {B, N, kAnyDim, kAnyDim}, "[B, N, H_v, D_v]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(v, "v", {q.dtype}, q, "q"));
  const int64_t Hv = v.shape[2], Dv = v.shape[3];
  if (Hv < 1 || Hv % Hk != 0)
    return InvalidValue("v: expected H_v a positive multiple of H_k = " + std::to_string(Hk) +
                        ", got H_v = " + std::to_string(Hv));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(g, "g", {B, N, Hv}, "[B, N, H_v]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(g, "g", {DType::kFloat32}, q, "q"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(beta, "beta", {B, N, Hv}, "[B, N, H_v]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(beta, "beta", {DType::kFloat32}, q, "q"));
  DIFFTREE_RETURN_IF_ERROR(
      checks::shape(state, "state", {B, Hv, Dk, Dv}, "[B, H_v, D_k, D_v]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(state, "state", {DType::kFloat32}, q, "q"));
  if (tree_anc != nullptr) {
    DIFFTREE_RETURN_IF_ERROR(
        checks::shape(*tree_anc, "tree_anc", {B, N, anc_words(N)}, "[B, N, ceil(N / 32)]"));
    DIFFTREE_RETURN_IF_ERROR(checks::tensor(*tree_anc, "tree_anc", {DType::kInt32}, q, "q"));
  }
  return Status::Ok();
}

Status gdn_verify(const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& g, const TensorView& beta, const TensorView& state,
                  const TensorView* tree_anc, const TensorView& out, const TensorView& k_hat,
                  const TensorView& delta, const TensorView& gcum, Stream stream) {
  DIFFTREE_RETURN_IF_ERROR(check_gdn_verify(q, k, v, g, beta, state, tree_anc));
  const int64_t B = q.shape[0], N = q.shape[1], Hk = q.shape[2], Dk = q.shape[3];
  const int64_t Hv = v.shape[2], Dv = v.shape[3];
  DIFFTREE_RETURN_IF_ERROR(checks::shape(out, "out", {B, N, Hv, Dv}, "[B, N, H_v, D_v] (as v)"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(out, "out", {q.dtype}, q, "q"));
  DIFFTREE_RETURN_IF_ERROR(
      checks::shape(k_hat, "k_hat", {B, N, Hk, Dk}, "[B, N, H_k, D_k] (as k)"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(k_hat, "k_hat", {DType::kFloat32}, q, "q"));
  DIFFTREE_RETURN_IF_ERROR(
      checks::shape(delta, "delta", {B, N, Hv, Dv}, "[B, N, H_v, D_v] (as v)"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(delta, "delta", {DType::kFloat32}, q, "q"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(gcum, "gcum", {B, N, Hv}, "[B, N, H_v] (as g)"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(gcum, "gcum", {DType::kFloat32}, q, "q"));
  return route(
      "gdn_verify", q, B == 0 || N == 0,
      [&] {
        return cuda::gdn_verify(q, k, v, g, beta, state, tree_anc, out, k_hat, delta, gcum,
                                stream);
      },
      [&] { return cpu::gdn_verify(q, k, v, g, beta, state, tree_anc, out, k_hat, delta, gcum); });
}

// ---- gdn_commit -----------------------------------------------------------------------------

Status check_gdn_commit(const TensorView& state, const TensorView& k_hat, const TensorView& delta,
                        const TensorView& gcum, const TensorView& path, const TensorView& accepted,
                        const TensorView* active) {
  DIFFTREE_RETURN_IF_ERROR(checks::ndim(k_hat, "k_hat", 4, "[B, N, H_k, D_k]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(k_hat, "k_hat", {DType::kFloat32}, k_hat, "k_hat"));
  const int64_t B = k_hat.shape[0], N = k_hat.shape[1], Hk = k_hat.shape[2], Dk = k_hat.shape[3];
  if (Hk < 1) return InvalidValue("k_hat: expected H_k >= 1, got shape " + shape_string(k_hat));
  DIFFTREE_RETURN_IF_ERROR(
      checks::shape(delta, "delta", {B, N, kAnyDim, kAnyDim}, "[B, N, H_v, D_v]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(delta, "delta", {DType::kFloat32}, k_hat, "k_hat"));
  const int64_t Hv = delta.shape[2], Dv = delta.shape[3];
  if (Hv < 1 || Hv % Hk != 0)
    return InvalidValue("delta: expected H_v a positive multiple of H_k = " + std::to_string(Hk) +
                        ", got H_v = " + std::to_string(Hv));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(gcum, "gcum", {B, N, Hv}, "[B, N, H_v]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(gcum, "gcum", {DType::kFloat32}, k_hat, "k_hat"));
  DIFFTREE_RETURN_IF_ERROR(
      checks::shape(state, "state", {B, Hv, Dk, Dv}, "[B, H_v, D_k, D_v]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(state, "state", {DType::kFloat32}, k_hat, "k_hat"));
  return check_path(path, accepted, active, B, k_hat, "k_hat");
}

Status gdn_commit(const TensorView& state, const TensorView& k_hat, const TensorView& delta,
                  const TensorView& gcum, const TensorView& path, const TensorView& accepted,
                  const TensorView* active, Stream stream) {
  DIFFTREE_RETURN_IF_ERROR(
      check_gdn_commit(state, k_hat, delta, gcum, path, accepted, active));
  return route(
      "gdn_commit", k_hat, k_hat.shape[0] == 0,
      [&] {
        return cuda::gdn_commit(state, k_hat, delta, gcum, path, accepted, active, stream);
      },
      [&] { return cpu::gdn_commit(state, k_hat, delta, gcum, path, accepted, active); });
}

}  // namespace difftree
