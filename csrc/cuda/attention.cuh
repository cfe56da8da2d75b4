// What the attention kernels (csrc/cuda/attention.cu, attention_mma.cu) share: the description of one
// call, passed to every kernel by value.
#pragma once

#include "attention_common.h"
#include "common.cuh"

namespace minivlm::cuda {

// One attention call: q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D) in scalar_t with unit stride in the last
// dimension (the other strides are free: transposed and sliced views are read in place), an optional
// additive mask in the accumulation type read through its strides (0 for a broadcast dimension), and
// where the results go: out (B, Hq, Lq, D) contiguous, row_max and log_sum (B, Hq, Lq) each.
template <typename scalar_t>
struct AttentionParams {
  using acc_t = acc_type<scalar_t>;
  const scalar_t *q, *k, *v;
  scalar_t* out;
  acc_t *row_max, *log_sum;  // stats[0] = m, stats[1] = log(l)
  const acc_t* mask;         // nullptr = none
  int64_t ms_b, ms_h, ms_q, ms_k;
  int64_t qs_b, qs_h, qs_l, ks_b, ks_h, ks_l, vs_b, vs_h, vs_l;
  int B, Hq, Hkv, Lq, Lk, D, group;
  acc_t scale;
  bool causal;
  int window;  // 0 = none

  // The keys query i may see by position: [first_key(i), last_key(i)]; empty when first > last.
  // Query i sits at position i + Lk - Lq (the queries are the last Lq positions).
  __host__ __device__ int last_key(int i) const { return causal ? i + Lk - Lq : Lk - 1; }
  __host__ __device__ int first_key(int i) const {
    const int lo = last_key(i) - window + 1;
    return window > 0 && lo > 0 ? lo : 0;
  }
  __host__ __device__ acc_t mask_at(int b, int h, int i, int j) const {
    return mask[b * ms_b + h * ms_h + i * ms_q + j * ms_k];
  }
};

// The tensor-core forward kernel for bfloat16 and float16 (csrc/cuda/attention_mma.cu). The caller has
// checked that it applies: D <= 128 and a multiple of 8, 16-byte aligned rows, compute capability >= 8.
void attention_forward_mma(const AttentionParams<at::BFloat16>& p);
void attention_forward_mma(const AttentionParams<at::Half>& p);

}  // namespace minivlm::cuda
