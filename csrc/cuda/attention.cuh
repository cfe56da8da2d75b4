// What the CUDA attention files share: the description of one call (passed to every kernel by value), the
// host code that builds it from the op's tensors, the limits of the launches, and the launchers one file
// calls in another. One file per algorithm:
//   * attention_forward.cu   the op `attention`: chooses an algorithm; the plain forward (CUDA cores)
//   * attention_mma.cu       the forward on the tensor cores (bfloat16, float16)
//   * attention_decode.cu    the forward for T = 1, split over the keys (split-K), then merged
//   * attention_backward.cu  the op `attention_backward`
// Names follow docs/notation.md: q (B, H, T, D), k and v (B, Hkv, S, D); inside the kernels the
// FlashAttention-2 names (Dao, 2023): Br, Bc, Q_i, K_j, V_j, S_ij, P_ij, m, l, O.
#pragma once

#include "attention_common.h"
#include "common.cuh"

namespace minivlm::cuda {

// The plain forward and the backward kernels keep a row of D values in registers, kMaxSlots per lane of
// a warp: D <= 8 * 32 = 256 (minivlm/_checks.py holds the same number, CUDA_MAX_HEAD_DIM).
constexpr int kMaxSlots = 8;
constexpr int kMaxHeadDim = 32 * kMaxSlots;

// gridDim.y and gridDim.z hold at most 65535 blocks each (gridDim.x 2^31 - 1). The launchers give one grid
// row (gridDim.y) to each (batch, head), so B x heads may not exceed this (minivlm/_checks.py holds the same
// number, CUDA_MAX_BATCH_HEADS, and says so with a ValueError before any launch).
constexpr int64_t kMaxGridRows = 65535;

inline void check_grid_rows(int64_t B, int64_t heads, const char* what) {
  TORCH_CHECK(B * heads <= kMaxGridRows, what, ": the CUDA kernels take batch x heads up to ", kMaxGridRows,
              " (one grid row per (batch, head)), got ", B, " x ", heads, " = ", B * heads, "; split the batch");
}

// Shared-memory rows of D values, padded to an odd length: the 32 lanes of a warp, each reading its own
// row at the same column, then hit 32 different banks.
__host__ __device__ inline int padded(int D) { return D | 1; }

// One attention call: q (B, H, T, D), k and v (B, Hkv, S, D) in scalar_t with unit stride in the last
// dimension (the other strides are free: transposed and sliced views are read in place), an optional
// additive mask in the accumulation type read through its strides (0 for a broadcast dimension), and
// where the results go: out (B, H, T, D) contiguous, row_max and log_sum (B, H, T) each.
template <typename scalar_t>
struct AttentionParams {
  using acc_t = acc_type<scalar_t>;
  const scalar_t *q, *k, *v;
  scalar_t* out;
  acc_t *row_max, *log_sum;  // stats[0] = m, stats[1] = log(l): the log-sum-exp L = m + log(l) in two terms
  const acc_t* mask;         // nullptr = none
  int64_t ms_b, ms_h, ms_t, ms_s;
  int64_t qs_b, qs_h, qs_t, ks_b, ks_h, ks_s, vs_b, vs_h, vs_s;
  int B, H, Hkv, T, S, D, group;  // group = H / Hkv query heads per key/value head
  acc_t scale;
  bool causal;
  int window;  // 0 = none

  // The keys query i may see by position: [first_key(i), last_key(i)]; empty when first > last.
  // Query i sits at position i + S - T (the queries are the last T positions).
  __host__ __device__ int last_key(int i) const { return causal ? i + S - T : S - 1; }
  __host__ __device__ int first_key(int i) const {
    const int lo = last_key(i) - window + 1;
    return window > 0 && lo > 0 ? lo : 0;
  }
  __host__ __device__ acc_t mask_at(int b, int h, int i, int j) const {
    return mask[b * ms_b + h * ms_h + i * ms_t + j * ms_s];
  }
};

// ---------------------------------------------------------------------------------------------------
// Host code of both ops: checks, the inputs' layout, the parameters
// ---------------------------------------------------------------------------------------------------

inline void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const std::optional<at::Tensor>& attn_mask, bool is_causal, std::optional<int64_t> window) {
  check_attention_inputs(q, k, v, is_causal, window);
  TORCH_CHECK(q.device() == k.device() && q.device() == v.device(), "attention: q, k, v must be on one device");
  TORCH_CHECK(!attn_mask.has_value() || attn_mask->device() == q.device(), "attention: attn_mask must be on q's device");
  TORCH_CHECK(q.size(3) <= kMaxHeadDim, "attention: the CUDA kernels take head_dim up to ", kMaxHeadDim, ", got ",
              q.size(3));
}

// Unit stride in the last dimension (a view with another layout is copied once); other strides are free.
inline at::Tensor unit_last_stride(const at::Tensor& t) {
  return (t.stride(-1) == 1 || t.size(-1) == 1) ? t : t.contiguous();
}

// Strides of a dimension of size 1 are never stepped along; count them as aligned.
inline bool strides_multiple_of(const at::Tensor& t, int64_t n) {
  for (int64_t d = 0; d + 1 < t.dim(); ++d)
    if (t.size(d) > 1 && t.stride(d) % n != 0) return false;
  return true;
}

template <typename scalar_t>
AttentionParams<scalar_t> make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& mask, bool is_causal, double scale,
                                      std::optional<int64_t> window) {
  using acc_t = acc_type<scalar_t>;
  AttentionParams<scalar_t> p{};
  p.B = q.size(0); p.H = q.size(1); p.T = q.size(2); p.D = q.size(3);
  p.Hkv = k.size(1); p.S = k.size(2); p.group = p.H / p.Hkv;
  p.scale = acc_t(scale); p.causal = is_causal;
  // 0 = no window. A window of S keys or more hides nothing (the queries are the last T of the S
  // positions), and keeping it out of int range also keeps the band arithmetic from overflowing.
  p.window = (window.has_value() && *window < p.S) ? static_cast<int>(*window) : 0;
  p.q = q.const_data_ptr<scalar_t>(); p.k = k.const_data_ptr<scalar_t>(); p.v = v.const_data_ptr<scalar_t>();
  p.qs_b = q.stride(0); p.qs_h = q.stride(1); p.qs_t = q.stride(2);
  p.ks_b = k.stride(0); p.ks_h = k.stride(1); p.ks_s = k.stride(2);
  p.vs_b = v.stride(0); p.vs_h = v.stride(1); p.vs_s = v.stride(2);
  p.mask = mask.defined() ? mask.const_data_ptr<acc_t>() : nullptr;
  if (mask.defined()) {
    p.ms_b = mask.stride(0); p.ms_h = mask.stride(1); p.ms_t = mask.stride(2); p.ms_s = mask.stride(3);
  }
  return p;
}

// ---------------------------------------------------------------------------------------------------
// The launchers attention_forward.cu calls in the other files
// ---------------------------------------------------------------------------------------------------

// The tensor-core forward kernel for bfloat16 and float16 (attention_mma.cu). The caller has checked that
// it applies: D <= 128 and a multiple of 8, 16-byte aligned rows, compute capability >= 8.
void attention_forward_mma(const AttentionParams<at::BFloat16>& p);
void attention_forward_mma(const AttentionParams<at::Half>& p);

// The decode forward, T = 1 (attention_decode.cu). The caller has checked that k and v may be read in
// 16-byte vectors with D / (16 bytes of elements) <= 32. q gives the device and options of the workspace.
void attention_decode(const AttentionParams<double>& p, const at::Tensor& q, int device);
void attention_decode(const AttentionParams<float>& p, const at::Tensor& q, int device);
void attention_decode(const AttentionParams<at::BFloat16>& p, const at::Tensor& q, int device);
void attention_decode(const AttentionParams<at::Half>& p, const at::Tensor& q, int device);

}  // namespace minivlm::cuda
