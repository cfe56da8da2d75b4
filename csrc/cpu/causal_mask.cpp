// The additive mask of a causal decoder, written in one pass:
//
//     mask[b, 0, i, j] = 0               if key j is a real token and  p - window < j <= p
//                      = finfo(dtype).min otherwise,        where p = i + (S - q_len)
//
// p is query i's absolute position: the queries are the last q_len of the S positions (with a KV cache
// the earlier keys come from previous steps). Without a window the lower bound is -infinity.
// Each row is three runs: [0, lo) masked, [lo, p] visible unless padding, (p, S) masked (the future).
// The middle run depends only on the batch row's padding, so it is built once per batch row ("the
// padding row") and copied: the whole kernel is then fills and copies, as fast as writing the output.

#include "common.h"
#include "cpu/kernels.h"

namespace minivlm::cpu {
namespace {

template <typename scalar_t>
void fill_mask(const bool* pad, scalar_t* out, int64_t B, int64_t q_len, int64_t S, int64_t window) {
  const scalar_t zero = scalar_t(0), masked = std::numeric_limits<scalar_t>::lowest();
  const int64_t offset = S - q_len;
  // padding_rows[b, j] = 0 for a real token, masked for padding: (B, S), small next to the output.
  std::vector<scalar_t> padding_rows(B * S);
  for (int64_t j = 0; j < B * S; ++j) padding_rows[j] = pad[j] ? zero : masked;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(S, 1));
  at::parallel_for(0, B * q_len, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / q_len, i = row % q_len;
      const int64_t p = i + offset;                                    // last visible key
      const int64_t lo = window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;  // first visible key
      const scalar_t* padding_row = padding_rows.data() + b * S;
      scalar_t* o = out + row * S;
      std::fill(o, o + lo, masked);                                     // before the window
      std::copy(padding_row + lo, padding_row + p + 1, o + lo);         // the band: padding decides
      std::fill(o + p + 1, o + S, masked);                              // the future
    }
  });
}

}  // namespace

at::Tensor causal_mask_cpu(const at::Tensor& padding_mask, int64_t q_len, at::ScalarType dtype,
                           std::optional<int64_t> window) {
  TORCH_CHECK(padding_mask.dim() == 2, "causal_mask: padding_mask must be (B, S), got ", padding_mask.sizes());
  const int64_t B = padding_mask.size(0), S = padding_mask.size(1);
  TORCH_CHECK(1 <= q_len && q_len <= S, "causal_mask: need 1 <= q_len <= S=", S, ", got ", q_len);
  TORCH_CHECK(!window.has_value() || *window >= 1, "causal_mask: window must be >= 1");
  at::Tensor pad = padding_mask.ne(0).contiguous();  // (B, S) bool, 1 byte a key: tiny next to the output
  at::Tensor out = at::empty({B, 1, q_len, S}, padding_mask.options().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "minivlm_causal_mask", [&] {
    fill_mask<scalar_t>(pad.const_data_ptr<bool>(), out.mutable_data_ptr<scalar_t>(), B, q_len, S,
                        window.value_or(0));
  });
  return out;
}

}  // namespace minivlm::cpu
