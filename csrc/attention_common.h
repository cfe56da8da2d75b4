// Host code of the attention op that the CPU and CUDA kernels share: the checks the kernels rely on, and
// the mask preparation. minivlm/ops.py checks every argument first with a readable error; these checks
// guard direct calls of torch.ops.minivlm.attention.
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <optional>
#include <tuple>

namespace minivlm {

inline void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool is_causal,
                                   std::optional<int64_t> window) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "attention: q, k, v must be 4-D (B, H, L, D)");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "attention: q, k, v must share one dtype");
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == q.size(0) && k.size(3) == q.size(3),
              "attention: k and v must be (B, Hkv, Lk, D) matching q (B, Hq, Lq, D)");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, "attention: k's heads must divide q's heads");
  TORCH_CHECK(!is_causal || q.size(2) <= k.size(2), "attention: is_causal needs Lq <= Lk");
  TORCH_CHECK(!window.has_value() || (*window >= 1 && is_causal), "attention: window needs is_causal and >= 1");
}

// A bool mask becomes 0 / -inf, a float mask is brought to acc; either is then broadcast (as a view) to
// (B, Hq, Lq, Lk). The conversion runs on the mask's own shape, so a broadcast mask stays small.
inline at::Tensor prepare_mask(const std::optional<at::Tensor>& attn_mask, at::ScalarType acc, at::IntArrayRef full) {
  if (!attn_mask.has_value()) return at::Tensor();
  const at::Tensor& m = *attn_mask;
  at::Tensor additive = m.scalar_type() == at::kBool
      ? at::where(m, at::zeros({}, m.options().dtype(acc)),
                  at::full({}, -std::numeric_limits<double>::infinity(), m.options().dtype(acc)))
      : m.to(acc);
  return additive.expand(full);
}

// The backward's results in the inputs' dtypes. dK and dV were accumulated per query head (B, Hq, Lk, D),
// so that no two heads write the same memory; each group's query heads are summed into their kv head here.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> finish_attention_grads(
    const at::Tensor& dq, const at::Tensor& dk_heads, const at::Tensor& dv_heads, const at::Tensor& dmask,
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const int64_t B = k.size(0), Hkv = k.size(1), Lk = k.size(2), D = k.size(3), group = q.size(1) / Hkv;
  at::Tensor dk = group == 1 ? dk_heads : dk_heads.view({B, Hkv, group, Lk, D}).sum(2);
  at::Tensor dv = group == 1 ? dv_heads : dv_heads.view({B, Hkv, group, Lk, D}).sum(2);
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type()), dmask};
}

}  // namespace minivlm
