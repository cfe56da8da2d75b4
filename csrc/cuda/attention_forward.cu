// The attention forward pass on the GPU's CUDA cores, and the op `attention` that chooses between the
// forward algorithms. Both forward kernels here and in attention_mma.cu are Algorithm 1 of FlashAttention-2
// (Dao, 2023, arXiv 2307.08691); the math is the CPU kernel's (csrc/cpu/attention_forward.cpp,
// docs/kernels.md). The (T x S) score matrix is never stored: q is cut into Tr = ceil(T / Br) blocks Q_i,
// one per thread block (lines 1-3), which walks over the key tiles K_j, V_j of Bc keys (line 6), keeping
// per row the running maximum m, the running sum l and the unnormalised output O:
//
//     S_ij  = scale * Q_i K_j^T + mask                (line 8)
//     m_new = max(m, rowmax(S_ij))                     (line 9)
//     P_ij  = exp(S_ij - m_new)                        (line 9)
//     l     = exp(m - m_new) * l + rowsum(P_ij)        (line 9)
//     O     = exp(m - m_new) * O + P_ij V_j            (line 10)
//
// and at the end out = O / l (line 12), saving the log-sum-exp L = m + log(l) as its two terms m and log(l)
// for the backward pass (line 13; a row that sees no key outputs 0 and saves m = -inf, log(l) = 0).
//
// attention_cuda chooses:
//   * attention_decode (attention_decode.cu): T = 1 with k and v readable in 16-byte vectors;
//   * attention_forward_mma (attention_mma.cu): bfloat16/float16 on the tensor cores, where it applies;
//   * attention_forward_plain (this file): everything else: every dtype, any head size up to 256, CUDA
//     cores, math in float32 (float64 for float64). One thread block = Br = 16 query rows of one (batch,
//     head); each of its 4 warps owns 4 rows. K_j and V_j tiles of Bc = 32 keys are staged in shared memory;
//     in the score step lane j of a warp computes the score of key j, in the P V step lane t owns the
//     output dimensions t, t + 32, ... .
//
// Every kernel runs on the current CUDA stream of the inputs' device, and every launch is checked.

#include "attention.cuh"

namespace minivlm::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;
constexpr int kBr = kWarps * kRowsPerWarp;  // Br = 16 query rows per thread block
constexpr int kBc = 32;                     // Bc = 32 keys per tile: one per lane

// Shared memory of the plain forward kernel: Q_i (Br x D), K_j (Bc x ldk), V_j (Bc x D), in acc_t. K_j's
// rows are padded (padded(), attention.cuh), since the 32 lanes each read their own key row.
template <typename acc_t>
size_t plain_forward_smem(int D) {
  return sizeof(acc_t) * (kBr * D + kBc * padded(D) + kBc * D);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kWarps * 32) attention_forward_plain(const AttentionParams<scalar_t> p) {
  using acc_t = acc_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int D = p.D, ldk = padded(D);
  acc_t* Qs = reinterpret_cast<acc_t*>(smem_raw);  // (Br, D)
  acc_t* Ks = Qs + kBr * D;                        // (Bc, ldk)
  acc_t* Vs = Ks + kBc * ldk;                      // (Bc, D)

  // Line 3: this thread block's query block i = blockIdx.x of head (b, h) = blockIdx.y.
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.y / p.H, h = blockIdx.y % p.H, kvh = h / p.group;  // GQA: kv head by index
  const int q0 = blockIdx.x * kBr, rows = min(kBr, p.T - q0);
  const scalar_t* Q = p.q + b * p.qs_b + h * p.qs_h;
  const scalar_t* K = p.k + b * p.ks_b + kvh * p.ks_h;
  const scalar_t* V = p.v + b * p.vs_b + kvh * p.vs_h;

  // Line 4: Q_i, the block's query rows, converted to acc_t once (rows past T are 0).
  for (int e = threadIdx.x; e < kBr * D; e += blockDim.x) {
    const int r = e / D, d = e % D;
    Qs[e] = r < rows ? static_cast<acc_t>(Q[(q0 + r) * p.qs_t + d]) : acc_t(0);
  }

  // Line 5: per row of this warp, m = -inf, l = 0 and O = 0 (this lane's dims lane, lane + 32, ...), in
  // registers.
  acc_t m[kRowsPerWarp], l[kRowsPerWarp], O[kRowsPerWarp][kMaxSlots];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = neg_inf<acc_t>();
    l[r] = acc_t(0);
#pragma unroll
    for (int t = 0; t < kMaxSlots; ++t) O[r][t] = acc_t(0);
  }

  // The keys some row of the block may see; tiles outside [k_begin, k_end) are skipped entirely
  // (causal: about half of them; a window: all but O(window)).
  const int k_begin = p.first_key(q0);
  const int k_end = max(k_begin, min(p.S, p.last_key(q0 + rows - 1) + 1));

  // Line 6: the key tiles j.
  for (int kb = k_begin; kb < k_end; kb += kBc) {
    // Line 7: stage K_j and V_j in shared memory (keys past k_end are 0 and never used).
    __syncthreads();  // the previous tile is no longer read
    for (int e = threadIdx.x; e < kBc * D; e += blockDim.x) {
      const int j = e / D, d = e % D, key = kb + j;
      const bool valid = key < k_end;
      Ks[j * ldk + d] = valid ? static_cast<acc_t>(K[key * p.ks_s + d]) : acc_t(0);
      Vs[j * D + d] = valid ? static_cast<acc_t>(V[key * p.vs_s + d]) : acc_t(0);
    }
    __syncthreads();

    // Line 8: S_ij = scale * Q_i K_j^T (+ mask): lane j holds the score of key kb + j for each of the warp's
    // rows.
    const int key = kb + lane;
    acc_t s[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) s[r] = acc_t(0);
    for (int d = 0; d < D; ++d) {
      const acc_t kd = Ks[lane * ldk + d];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) s[r] += Qs[(warp * kRowsPerWarp + r) * D + d] * kd;
    }

    acc_t P[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int i = q0 + warp * kRowsPerWarp + r;
      const bool visible = i < p.T && key < k_end && key >= p.first_key(i) && key <= p.last_key(i);
      acc_t x = neg_inf<acc_t>();
      if (visible) {
        x = p.scale * s[r];
        if (p.mask != nullptr) x += p.mask_at(b, h, i, key);
      }
      // Line 9: m_new = max(m, rowmax(S_ij)); P_ij = exp(S_ij - m_new); l = exp(m - m_new) l + rowsum(P_ij).
      // Line 10, first half: O *= exp(m - m_new).
      const acc_t m_new = max(m[r], warp_max(x));
      if (m_new == neg_inf<acc_t>()) {  // nothing visible to this row yet: P_ij = 0, O and l stay 0
        P[r] = acc_t(0);
        continue;
      }
      P[r] = exp_acc(x - m_new);
      const acc_t alpha = exp_acc(m[r] - m_new);  // 0 on the first visible tile (m = -inf)
      l[r] = alpha * l[r] + warp_sum(P[r]);
      m[r] = m_new;
#pragma unroll
      for (int t = 0; t < kMaxSlots; ++t) O[r][t] *= alpha;
    }

    // Line 10, second half: O += P_ij V_j: lane t adds sum_j P[r][j] V[j][t + 32 s] for its dims; P[r][j]
    // comes from lane j.
    const int n = min(kBc, k_end - kb);
    for (int j = 0; j < n; ++j) {
      acc_t pj[kRowsPerWarp];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) pj[r] = __shfl_sync(0xffffffffu, P[r], j);
#pragma unroll
      for (int t = 0; t < kMaxSlots; ++t) {
        const int d = lane + 32 * t;
        if (d < D) {
          const acc_t vd = Vs[j * D + d];
#pragma unroll
          for (int r = 0; r < kRowsPerWarp; ++r) O[r][t] += pj[r] * vd;
        }
      }
    }
  }

  // Lines 12-15: out = O / l, and m, log(l) saved; a row that saw nothing gives 0 with m = -inf and
  // log(l) = 0.
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int i = q0 + warp * kRowsPerWarp + r;
    if (i >= p.T) continue;
    const int64_t row = (int64_t(b) * p.H + h) * p.T + i;
    const bool dead = l[r] == acc_t(0);
    const acc_t inv = dead ? acc_t(0) : acc_t(1) / l[r];
#pragma unroll
    for (int t = 0; t < kMaxSlots; ++t) {
      const int d = lane + 32 * t;
      if (d < D) p.out[row * D + d] = static_cast<scalar_t>(O[r][t] * inv);
    }
    if (lane == 0) {
      p.row_max[row] = dead ? neg_inf<acc_t>() : m[r];
      p.log_sum[row] = dead ? acc_t(0) : log_acc(l[r]);
    }
  }
}

// Chooses the forward algorithm for one call (see the top of this file) and launches it.
template <typename scalar_t>
void attention_forward(const AttentionParams<scalar_t>& p, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& v, int device) {
  using acc_t = acc_type<scalar_t>;
  auto stream = c10::cuda::getCurrentCUDAStream();
  constexpr int kPack = 16 / sizeof(scalar_t);  // elements per 16-byte load
  const bool kv_vectors = p.D % kPack == 0 && p.D / kPack <= 32 && k.stride(-1) == 1 && v.stride(-1) == 1 &&
                          strides_multiple_of(k, kPack) && strides_multiple_of(v, kPack) &&
                          aligned16(k.const_data_ptr()) && aligned16(v.const_data_ptr());
  if (p.T == 1 && kv_vectors) {
    attention_decode(p, q, device);
    return;
  }
  if constexpr (std::is_same_v<scalar_t, at::BFloat16> || std::is_same_v<scalar_t, at::Half>) {
    const bool mma_ok = p.D % 8 == 0 && p.D <= 128 && compute_capability_major(device) >= 8 && kv_vectors &&
                        q.stride(-1) == 1 && strides_multiple_of(q, 8) && aligned16(q.const_data_ptr());
    if (mma_ok) {
      attention_forward_mma(p);
      return;
    }
  }
  check_grid_rows(p.B, p.H, "attention (plain forward)");
  const size_t smem = plain_forward_smem<acc_t>(p.D);
  auto kernel = attention_forward_plain<scalar_t>;
  allow_shared_memory(kernel, smem, device, "attention (plain forward)");
  const dim3 grid(ceil_div(p.T, kBr), p.B * p.H);  // (Tr, B x H)
  kernel<<<grid, kWarps * 32, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                  const at::Tensor& v_in, const std::optional<at::Tensor>& attn_mask,
                                                  bool is_causal, double scale, std::optional<int64_t> window) {
  check_inputs(q_in, k_in, v_in, attn_mask, is_causal, window);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::ScalarType acc = acc_dtype(q_in.scalar_type());
  at::Tensor out, stats;
  if (!attention_outputs(q_in, k_in, acc, out, stats)) return {out, stats};
  const int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2), S = k_in.size(2);
  at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  at::Tensor mask = prepare_mask(attn_mask, acc, {B, H, T, S});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "minivlm_attention_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    AttentionParams<scalar_t> p = make_params<scalar_t>(q, k, v, mask, is_causal, scale, window);
    p.out = out.mutable_data_ptr<scalar_t>();
    p.row_max = stats.mutable_data_ptr<acc_t>();
    p.log_sum = p.row_max + B * H * T;
    attention_forward<scalar_t>(p, q, k, v, q.get_device());
  });
  return {out, stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(minivlm, CUDA, m) {
  m.impl("attention", &attention_cuda);
}

}  // namespace minivlm::cuda
