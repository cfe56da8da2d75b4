// Host code of the attention ops that the CPU and CUDA kernels share: the checks the kernels rely on, the
// mask preparation, and the allocation and finishing of the results. minivlm/ops.py checks every argument
// first with a readable error; these checks guard direct calls of torch.ops.minivlm.attention.
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <optional>
#include <tuple>

namespace minivlm {

inline void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool is_causal,
                                   std::optional<int64_t> window) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "attention: q, k, v must be 4-D: q (B, H, T, D), k and v (B, Hkv, S, D)");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "attention: q, k, v must share one dtype");
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == q.size(0) && k.size(3) == q.size(3),
              "attention: k and v must be (B, Hkv, S, D) matching q (B, H, T, D)");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, "attention: k's heads must divide q's heads");
  TORCH_CHECK(!is_causal || q.size(2) <= k.size(2),
              "attention: is_causal needs T <= S (the queries are the last T of the S key positions)");
  TORCH_CHECK(!window.has_value() || (*window >= 1 && is_causal), "attention: window needs is_causal and >= 1");
}

// A bool mask becomes 0 / -inf, a float mask is brought to acc; either is then broadcast (as a view) to
// (B, H, T, S). The conversion runs on the mask's own shape, so a broadcast mask stays small.
inline at::Tensor prepare_mask(const std::optional<at::Tensor>& attn_mask, at::ScalarType acc, at::IntArrayRef full) {
  if (!attn_mask.has_value()) return at::Tensor();
  const at::Tensor& m = *attn_mask;
  at::Tensor additive = m.scalar_type() == at::kBool
      ? at::where(m, at::zeros({}, m.options().dtype(acc)),
                  at::full({}, -std::numeric_limits<double>::infinity(), m.options().dtype(acc)))
      : m.to(acc);
  return additive.expand(full);
}

// The forward's results, allocated: out (B, H, T, D) contiguous in q's dtype, and stats (2, B, H, T) in the
// accumulation dtype acc (stats[0] = m, stats[1] = log(l)). Returns false where no kernel needs to run: an
// empty output, or no keys at all (S = 0), where every row sees nothing and gets what such a row gets
// (out 0, m = -inf, log(l) = 0).
inline bool attention_outputs(const at::Tensor& q, const at::Tensor& k, at::ScalarType acc, at::Tensor& out,
                              at::Tensor& stats) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), S = k.size(2);
  out = at::empty({B, H, T, D}, q.options().memory_format(at::MemoryFormat::Contiguous));
  stats = at::empty({2, B, H, T}, q.options().dtype(acc));
  if (out.numel() == 0) return false;
  if (S == 0) {
    out.zero_();
    stats[0].fill_(-std::numeric_limits<double>::infinity());
    stats[1].zero_();
    return false;
  }
  return true;
}

// The backward's gradients while they are accumulated, in the accumulation dtype: dq (B, H, T, D); dk and
// dv one per query head, (B, H, S, D), so that no two heads write the same memory; dmask (B, H, T, S) when
// the mask's gradient is asked for, else empty.
struct AttentionGrads {
  at::Tensor dq, dk_heads, dv_heads, dmask;

  // All zero (FlashAttention-2's Algorithm 2, line 3).
  AttentionGrads(const at::Tensor& q, const at::Tensor& k, at::ScalarType acc, bool mask_grad) {
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), S = k.size(2);
    const auto opts = q.options().dtype(acc);
    dq = at::zeros({B, H, T, D}, opts);
    dk_heads = at::zeros({B, H, S, D}, opts);
    dv_heads = at::zeros({B, H, S, D}, opts);
    dmask = mask_grad ? at::zeros({B, H, T, S}, opts) : at::empty({0}, opts);
  }

  // Anything to compute? Not for an empty q, nor without keys (the gradients are then 0).
  bool needs_kernel(const at::Tensor& k) const { return dq.numel() > 0 && k.size(2) > 0; }

  // The results in the inputs' dtypes, each group's query heads summed into their kv head.
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> finish(const at::Tensor& q, const at::Tensor& k,
                                                                    const at::Tensor& v) const {
    const int64_t B = k.size(0), Hkv = k.size(1), S = k.size(2), D = k.size(3), group = q.size(1) / Hkv;
    at::Tensor dk = group == 1 ? dk_heads : dk_heads.view({B, Hkv, group, S, D}).sum(2);
    at::Tensor dv = group == 1 ? dv_heads : dv_heads.view({B, Hkv, group, S, D}).sum(2);
    return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type()), dmask};
  }
};

}  // namespace minivlm
