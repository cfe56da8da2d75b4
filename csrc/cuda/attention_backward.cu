// The attention backward pass on the GPU, and the op `attention_backward`: Algorithm 2 of FlashAttention-2
// (Dao, 2023, arXiv 2307.08691), in the paper's loop order. P_ij is recomputed from the m and log(l) the
// forward pass saved (together the log-sum-exp L = m + log(l)), never stored. With dO the incoming
// gradient and D_i = rowsum(dO_i * O_i) (the paper's D, called Di here to keep it apart from the head
// width D):
//
//     P_ij  = exp(S_ij - L_i)          dV_j += P_ij^T dO_i          dP_ij = dO_i V_j^T
//     dS_ij = P_ij * (dP_ij - D_i)     dQ_i += scale dS_ij K_j      dK_j += scale dS_ij^T Q_i
//
// and dS_ij is also the gradient of a float mask. One thread block owns one key block j of Bc = 16 keys of
// one (batch, query head) (4 warps x 4 keys; the paper's outer loop, line 5, runs in parallel, Tc =
// ceil(S / Bc) blocks per head) and walks over the query tiles i of Br = 32 rows (one per lane) that can
// see them (the inner loop, line 8). It accumulates dK_j and dV_j in registers and writes them once (line
// 18), per query head (the heads of a group are summed afterwards, so no two blocks write the same dK);
// dQ_i receives contributions from every key block, so each block sums its part in shared memory and adds
// it to a float32 dQ with atomics (line 15).

#include "attention.cuh"

namespace minivlm::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kKeysPerWarp = 4;
constexpr int kBc = kWarps * kKeysPerWarp;  // Bc = 16 keys per thread block
constexpr int kBr = 32;                     // Br = 32 query rows per tile: one per lane

template <typename acc_t>
struct GradParams {
  const acc_t *dout, *out_dot;     // dO (B, H, T, D) contiguous, Di = rowsum(dO * O) (B, H, T)
  const acc_t *row_max, *log_sum;  // the forward pass's m and log(l), (B, H, T) each
  acc_t *dq, *dk, *dv;             // (B, H, T, D) accumulated, (B, H, S, D), (B, H, S, D)
  acc_t* dmask;                    // (B, H, T, S) or nullptr
};

template <typename acc_t>
size_t backward_smem(int D) {
  return sizeof(acc_t) * (2 * kBr * padded(D) + 2 * kBc * D + kBr * D + 3 * kBr);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kWarps * 32)
    attention_backward_plain(const AttentionParams<scalar_t> p, const GradParams<acc_type<scalar_t>> g) {
  using acc_t = acc_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int D = p.D, ld = padded(D);
  acc_t* Qs = reinterpret_cast<acc_t*>(smem_raw);  // (Br, ld) this tile's queries
  acc_t* dOs = Qs + kBr * ld;                      // (Br, ld) and their output gradients
  acc_t* Ks = dOs + kBr * ld;                      // (Bc, D) the block's keys
  acc_t* Vs = Ks + kBc * D;                        // (Bc, D) and values
  acc_t* dQs = Vs + kBc * D;                       // (Br, D) this block's part of dQ for the tile
  acc_t* tile_m = dQs + kBr * D;                   // (Br) m, log(l), Di of the tile's rows
  acc_t* tile_logl = tile_m + kBr;
  acc_t* tile_di = tile_logl + kBr;

  // Line 5: this thread block's key block j = blockIdx.x of head (b, h) = blockIdx.y. Line 6: K_j, V_j.
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.y / p.H, h = blockIdx.y % p.H, kvh = h / p.group;
  const int64_t bh = blockIdx.y;
  const int k0 = blockIdx.x * kBc;
  for (int e = threadIdx.x; e < kBc * D; e += blockDim.x) {
    const int j = e / D, d = e % D, key = k0 + j;
    Ks[e] = key < p.S ? static_cast<acc_t>(p.k[b * p.ks_b + kvh * p.ks_h + key * p.ks_s + d]) : acc_t(0);
    Vs[e] = key < p.S ? static_cast<acc_t>(p.v[b * p.vs_b + kvh * p.vs_h + key * p.vs_s + d]) : acc_t(0);
  }

  // Line 7: dK_j = 0, dV_j = 0, in registers (this lane's dims of the warp's keys).
  acc_t dK[kKeysPerWarp][kMaxSlots], dV[kKeysPerWarp][kMaxSlots];
#pragma unroll
  for (int r = 0; r < kKeysPerWarp; ++r)
#pragma unroll
    for (int t = 0; t < kMaxSlots; ++t) dK[r][t] = dV[r][t] = acc_t(0);

  // The queries that may see some key of the block: query i sees key j when
  // first_key(i) <= j <= last_key(i), and both bounds grow with i.
  const int shift = p.S - p.T;  // position of query i is i + shift
  const int k_last = min(p.S, k0 + kBc) - 1;
  const int i_begin = p.causal ? max(0, k0 - shift) : 0;
  const int i_end = p.window > 0 ? min(p.T, k_last - shift + p.window) : p.T;

  // Line 8: the query tiles i.
  for (int q0 = i_begin; q0 < i_end; q0 += kBr) {
    // Line 9: Q_i, dO_i, m and log(l) (L_i), Di; this block's part of dQ_i starts at 0.
    __syncthreads();  // the previous tile is no longer read
    for (int e = threadIdx.x; e < kBr * D; e += blockDim.x) {
      const int r = e / D, d = e % D, i = q0 + r;
      const bool valid = i < i_end;
      Qs[r * ld + d] = valid ? static_cast<acc_t>(p.q[b * p.qs_b + h * p.qs_h + i * p.qs_t + d]) : acc_t(0);
      dOs[r * ld + d] = valid ? g.dout[(bh * p.T + i) * D + d] : acc_t(0);
      dQs[r * D + d] = acc_t(0);
    }
    if (threadIdx.x < kBr) {
      const int i = q0 + threadIdx.x;
      const bool valid = i < i_end;
      tile_m[threadIdx.x] = valid ? g.row_max[bh * p.T + i] : neg_inf<acc_t>();
      tile_logl[threadIdx.x] = valid ? g.log_sum[bh * p.T + i] : acc_t(0);
      tile_di[threadIdx.x] = valid ? g.out_dot[bh * p.T + i] : acc_t(0);
    }
    __syncthreads();

    // Lane = query i of the tile. For each of the warp's keys j: S_ij (line 10) and dP_ij (line 13) as dot
    // products, then P_ij (line 11) and dS_ij (line 14).
    const int i = q0 + lane;
    acc_t P[kKeysPerWarp], dS[kKeysPerWarp];
#pragma unroll
    for (int r = 0; r < kKeysPerWarp; ++r) {
      const int jl = warp * kKeysPerWarp + r, j = k0 + jl;
      acc_t qk = acc_t(0), dov = acc_t(0);
      for (int d = 0; d < D; ++d) {
        qk += Qs[lane * ld + d] * Ks[jl * D + d];
        dov += dOs[lane * ld + d] * Vs[jl * D + d];
      }
      P[r] = dS[r] = acc_t(0);
      const acc_t mi = tile_m[lane];
      if (i < i_end && j < p.S && j >= p.first_key(i) && j <= p.last_key(i) && mi != neg_inf<acc_t>()) {
        acc_t s = p.scale * qk;
        if (p.mask != nullptr) s += p.mask_at(b, h, i, j);
        P[r] = exp_acc((s - mi) - tile_logl[lane]);  // P_ij = exp(S_ij - m - log l)
        dS[r] = P[r] * (dov - tile_di[lane]);        // dS_ij = P_ij * (dP_ij - Di)
      }
      if (g.dmask != nullptr && i < i_end && j < p.S) g.dmask[(bh * p.T + i) * p.S + j] = dS[r];
    }

    // Line 12: dV_j += sum_i P_ij dO_i; line 16: dK_j += sum_i dS_ij Q_i (this lane's dims); line 15, on
    // chip: dQ_i += sum_j dS_ij K_j.
    const int n = min(kBr, i_end - q0);
    for (int ii = 0; ii < n; ++ii) {
      acc_t pi[kKeysPerWarp], dsi[kKeysPerWarp];
#pragma unroll
      for (int r = 0; r < kKeysPerWarp; ++r) {
        pi[r] = __shfl_sync(0xffffffffu, P[r], ii);
        dsi[r] = __shfl_sync(0xffffffffu, dS[r], ii);
      }
#pragma unroll
      for (int t = 0; t < kMaxSlots; ++t) {
        const int d = lane + 32 * t;
        if (d < D) {
          const acc_t doi = dOs[ii * ld + d], qi = Qs[ii * ld + d];
          acc_t dq = acc_t(0);
#pragma unroll
          for (int r = 0; r < kKeysPerWarp; ++r) {
            dV[r][t] += pi[r] * doi;
            dK[r][t] += dsi[r] * qi;
            dq += dsi[r] * Ks[(warp * kKeysPerWarp + r) * D + d];
          }
          atomicAdd(&dQs[ii * D + d], dq);
        }
      }
    }
    // Line 15, to memory: add this block's part of dQ_i to dQ, with atomics (other key blocks add theirs).
    __syncthreads();
    for (int e = threadIdx.x; e < n * D; e += blockDim.x) {
      atomicAdd(&g.dq[(bh * p.T + q0) * D + e], p.scale * dQs[e]);  // dQ = scale dS K
    }
  }

  // Line 18: dK_j = scale dS^T Q and dV_j, for this block's keys, written once.
#pragma unroll
  for (int r = 0; r < kKeysPerWarp; ++r) {
    const int j = k0 + warp * kKeysPerWarp + r;
    if (j >= p.S) continue;
#pragma unroll
    for (int t = 0; t < kMaxSlots; ++t) {
      const int d = lane + 32 * t;
      if (d < D) {
        g.dk[(bh * p.S + j) * D + d] = p.scale * dK[r][t];
        g.dv[(bh * p.S + j) * D + d] = dV[r][t];
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const std::optional<at::Tensor>& attn_mask, const at::Tensor& out, const at::Tensor& stats_in,
    bool is_causal, double scale, std::optional<int64_t> window, bool mask_grad) {
  check_inputs(q_in, k_in, v_in, attn_mask, is_causal, window);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::ScalarType acc = acc_dtype(q_in.scalar_type());
  const int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2), S = k_in.size(2);
  // Line 3: dQ = 0 (the blocks add to it); dK and dV are written whole by their key blocks.
  AttentionGrads grads(q_in, k_in, acc, mask_grad);
  if (grads.needs_kernel(k_in)) {
    check_grid_rows(B, H, "attention backward");
    at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
    at::Tensor mask = prepare_mask(attn_mask, acc, {B, H, T, S});
    at::Tensor dout = grad_out.to(acc).contiguous();
    at::Tensor stats = stats_in.to(acc).contiguous();
    at::Tensor out_dot = (dout * out.to(acc)).sum(-1).contiguous();  // line 4: Di = rowsum(dO * O)
    const int device = q.get_device();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "minivlm_attention_backward_cuda", [&] {
      using acc_t = acc_type<scalar_t>;
      const AttentionParams<scalar_t> p = make_params<scalar_t>(q, k, v, mask, is_causal, scale, window);
      const acc_t* row_max = stats.const_data_ptr<acc_t>();
      const GradParams<acc_t> g{dout.const_data_ptr<acc_t>(), out_dot.const_data_ptr<acc_t>(), row_max,
                                row_max + B * H * T, grads.dq.mutable_data_ptr<acc_t>(),
                                grads.dk_heads.mutable_data_ptr<acc_t>(), grads.dv_heads.mutable_data_ptr<acc_t>(),
                                mask_grad ? grads.dmask.mutable_data_ptr<acc_t>() : nullptr};
      const size_t smem = backward_smem<acc_t>(p.D);
      auto kernel = attention_backward_plain<scalar_t>;
      allow_shared_memory(kernel, smem, device, "attention backward");
      const dim3 grid(ceil_div(S, kBc), B * H);  // (Tc, B x H)
      kernel<<<grid, kWarps * 32, smem, c10::cuda::getCurrentCUDAStream()>>>(p, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return grads.finish(q_in, k_in, v_in);
}

}  // namespace

TORCH_LIBRARY_IMPL(minivlm, CUDA, m) {
  m.impl("attention_backward", &attention_backward_cuda);
}

}  // namespace minivlm::cuda
