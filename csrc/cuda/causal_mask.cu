// The additive mask of a causal decoder on the GPU, written in one pass (see csrc/cpu/causal_mask.cpp):
//
//     mask[b, 0, i, j] = 0               if key j is a real token and  p - window < j <= p
//                      = finfo(dtype).min otherwise,        where p = i + (S - q_len)
//
// The kernel only writes: one block per output row (b, i), its threads striding over the row 16 bytes
// at a time (8 bfloat16 values per store), each value decided by two comparisons and a lookup of the
// padding row, which all the rows of a batch row share and so is read from the cache.

#include "common.cuh"

namespace minivlm::cuda {
namespace {

template <typename scalar_t>
__global__ void causal_mask_kernel(const bool* __restrict__ pad, scalar_t* __restrict__ out, int64_t q_len,
                                   int64_t S, int64_t window, scalar_t masked, bool vectorized) {
  constexpr int V = 16 / sizeof(scalar_t);
  const int64_t row = blockIdx.x;                         // (b, i) flattened
  const int64_t b = row / q_len, i = row % q_len;
  const int64_t p = i + (S - q_len);                      // query i's position: the last key it sees
  const int64_t lo = window > 0 ? p - window + 1 : 0;     // the first key it sees
  const bool* pad_row = pad + b * S;
  scalar_t* o = out + row * S;
  const scalar_t zero = scalar_t(0);
  auto value = [&](int64_t j) { return (j >= lo && j <= p && pad_row[j]) ? zero : masked; };
  if (vectorized) {  // S * sizeof(scalar_t) is a multiple of 16: every row starts aligned
    for (int64_t j0 = int64_t(threadIdx.x) * V; j0 < S; j0 += int64_t(blockDim.x) * V) {
      Pack<scalar_t, V> pack;
#pragma unroll
      for (int t = 0; t < V; ++t) pack.v[t] = value(j0 + t);
      *reinterpret_cast<Pack<scalar_t, V>*>(o + j0) = pack;
    }
  } else {
    for (int64_t j = threadIdx.x; j < S; j += blockDim.x) o[j] = value(j);
  }
}

at::Tensor causal_mask_cuda(const at::Tensor& padding_mask, int64_t q_len, at::ScalarType dtype,
                            std::optional<int64_t> window) {
  TORCH_CHECK(padding_mask.dim() == 2, "causal_mask: padding_mask must be (B, S), got ", padding_mask.sizes());
  const int64_t B = padding_mask.size(0), S = padding_mask.size(1);
  TORCH_CHECK(1 <= q_len && q_len <= S, "causal_mask: need 1 <= q_len <= S=", S, ", got ", q_len);
  TORCH_CHECK(!window.has_value() || *window >= 1, "causal_mask: window must be >= 1");
  const c10::cuda::CUDAGuard guard(padding_mask.device());
  at::Tensor pad = padding_mask.ne(0).contiguous();  // (B, S) bool: 1 byte a key, tiny next to the output
  at::Tensor out = at::empty({B, 1, q_len, S}, padding_mask.options().dtype(dtype));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "minivlm_causal_mask_cuda", [&] {
    const bool vectorized = (S * sizeof(scalar_t)) % 16 == 0 && aligned16(out.const_data_ptr());
    causal_mask_kernel<scalar_t><<<B * q_len, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        pad.const_data_ptr<bool>(), out.mutable_data_ptr<scalar_t>(), q_len, S, window.value_or(0),
        std::numeric_limits<scalar_t>::lowest(), vectorized);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(minivlm, CUDA, m) { m.impl("causal_mask", &causal_mask_cuda); }

}  // namespace minivlm::cuda
