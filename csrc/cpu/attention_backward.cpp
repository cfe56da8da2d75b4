// The attention backward pass on the CPU: the steps of Algorithm 2 of FlashAttention-2 (Dao, 2023, arXiv
// 2307.08691), with the paper's names. P_ij is recomputed block by block from the m and log(l) the forward
// pass saved (together the log-sum-exp L = m + log(l)), never stored. With dO the incoming gradient and
// D_i = rowsum(dO_i * O_i) (the paper's D, called Di here to keep it apart from the head width D):
//
//     P_ij  = exp(S_ij - L_i)          dV_j += P_ij^T dO_i          dP_ij = dO_i V_j^T
//     dS_ij = P_ij * (dP_ij - D_i)     dQ_i += scale dS_ij K_j      dK_j += scale dS_ij^T Q_i
//
// and dS_ij itself is the gradient of a float mask (the mask is added to the scores after scaling).
//
// The loop order differs from the paper's. Algorithm 2 loops over key blocks j outside (line 5) and query
// blocks i inside (line 8): on a GPU one thread block then owns dK_j and dV_j on chip for the whole inner
// loop, and dQ_i, which every key block adds to, is read, updated and written back to memory (line 15)
// with atomic adds between thread blocks. Here the order is Algorithm 1's: query blocks i outside, key
// blocks j inside. One task owns a whole (batch, query head): it is the only writer of that head's dQ rows
// and of its own dK, dV accumulators (B, H, S, D), so neither order needs atomics, and this one
//   * visits, for each query block, only the key blocks key_range finds, the same skipping as the forward;
//   * keeps Q_i, dO_i and the dQ_i rows (Br x D) in cache across the whole inner loop;
// while dK_j and dV_j are accumulated in memory (BLAS with beta = 1), each key block once per query block.
// The query heads of a group are summed into their key/value head at the end (AttentionGrads::finish).

#include "attention_common.h"
#include "common.h"
#include "cpu/kernels.h"

namespace minivlm::cpu {
namespace {

constexpr int64_t kBr = 64;   // Br: query rows per block Q_i
constexpr int64_t kBc = 256;  // Bc: keys per block K_j, V_j

template <typename acc_t>
struct Grads {
  const acc_t *dout, *out_dot;  // dO (B, H, T, D) contiguous; Di = rowsum(dO * O) (B, H, T)
  const acc_t *row_max, *log_sum;  // m and log(l) of the forward pass, each (B, H, T)
  acc_t *dq, *dk, *dv;          // (B, H, T, D), (B, H, S, D), (B, H, S, D), contiguous
  acc_t* dmask;                 // (B, H, T, S) or nullptr
};

// The whole backward pass of one (batch, query head). Sij and dPij are scratch of kBr x kBc each.
template <typename acc_t>
void backward_head(const Problem<acc_t>& p, const Grads<acc_t>& G, int64_t b, int64_t h, acc_t* Sij, acc_t* dPij) {
  using Vec = Vectorized<acc_t>;
  constexpr acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  const int64_t D = p.D, kvh = h / p.group, bh = b * p.H + h;
  const acc_t* K = p.k + b * p.ks_b + kvh * p.ks_h;
  const acc_t* V = p.v + b * p.vs_b + kvh * p.vs_h;
  acc_t* dK = G.dk + bh * p.S * D;
  acc_t* dV = G.dv + bh * p.S * D;

  // Line 8 (here the outer loop): the query blocks i.
  for (int64_t i0 = 0; i0 < p.T; i0 += kBr) {
    const Rows R{b, h, 0, i0, 1, std::min(kBr, p.T - i0)};
    // Line 9: Q_i, dO_i, L_i (as m and log l), D_i and dQ_i, read and written in place.
    const acc_t* Q = p.q + b * p.qs_b + h * p.qs_h + i0 * p.qs_t;
    const acc_t* dO = G.dout + (bh * p.T + i0) * D;
    const acc_t* m = G.row_max + bh * p.T + i0;
    const acc_t* logl = G.log_sum + bh * p.T + i0;
    const acc_t* Di = G.out_dot + bh * p.T + i0;
    acc_t* dQ = G.dq + (bh * p.T + i0) * D;

    // Line 5 (here the inner loop): the key blocks j this query block may see; K_j, V_j read in place (line 6).
    const auto [k_begin, k_end] = key_range(p, R);
    for (int64_t kb = k_begin; kb < k_end; kb += kBc) {
      const int64_t n = std::min(kBc, k_end - kb);
      // Line 10: S_ij = scale Q_i K_j^T + mask. Line 11: P_ij = exp((S_ij - m) - log l), written over
      // S_ij (0 where masked or where the row sees nothing).
      gemm<acc_t>(false, true, R.rows, n, D, p.scale, Q, p.qs_t, K + kb * p.ks_s, p.ks_s, acc_t(0), Sij, kBc);
      mask_scores(p, R, kb, n, Sij, kBc);
      for (int64_t r = 0; r < R.rows; ++r) {
        acc_t* s = Sij + r * kBc;
        if (m[r] == neg_inf) { std::fill(s, s + n, acc_t(0)); continue; }
        const Vec vm(m[r]), vlogl(logl[r]);
        int64_t c = 0;
        for (; c + Vec::size() <= n; c += Vec::size()) vexp((Vec::loadu(s + c) - vm) - vlogl).store(s + c);
        for (; c < n; ++c) s[c] = std::exp((s[c] - m[r]) - logl[r]);
      }
      // Line 12: dV_j += P_ij^T dO_i                                                 (n x D)
      gemm<acc_t>(true, false, n, D, R.rows, acc_t(1), Sij, kBc, dO, D, acc_t(1), dV + kb * D, D);
      // Line 13: dP_ij = dO_i V_j^T                                                  (rows x n)
      gemm<acc_t>(false, true, R.rows, n, D, acc_t(1), dO, D, V + kb * p.vs_s, p.vs_s, acc_t(0), dPij, kBc);
      // Line 14: dS_ij = P_ij * (dP_ij - D_i), written over dP_ij
      for (int64_t r = 0; r < R.rows; ++r) {
        const acc_t* pij = Sij + r * kBc;
        acc_t* ds = dPij + r * kBc;
        const Vec vd(Di[r]);
        at::vec::map2<acc_t>([vd](Vec pp, Vec dp) { return pp * (dp - vd); }, ds, pij, ds, n);
        if (G.dmask != nullptr) std::copy(ds, ds + n, G.dmask + (bh * p.T + i0 + r) * p.S + kb);
      }
      // Line 15: dQ_i += scale dS_ij K_j                                             (rows x D)
      gemm<acc_t>(false, false, R.rows, D, n, p.scale, dPij, kBc, K + kb * p.ks_s, p.ks_s, acc_t(1), dQ, D);
      // Line 16: dK_j += scale dS_ij^T Q_i                                           (n x D)
      gemm<acc_t>(true, false, n, D, R.rows, p.scale, dPij, kBc, Q, p.qs_t, acc_t(1), dK + kb * D, D);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const std::optional<at::Tensor>& attn_mask, const at::Tensor& out, const at::Tensor& stats_in,
    bool is_causal, double scale, std::optional<int64_t> window, bool mask_grad) {
  check_attention_inputs(q_in, k_in, v_in, is_causal, window);
  const at::ScalarType acc = acc_type(q_in.scalar_type());
  const int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2), S = k_in.size(2);
  // Line 3: dQ = 0; dK and dV start at 0 too, since they are accumulated across query blocks.
  AttentionGrads grads(q_in, k_in, acc, mask_grad);
  if (grads.needs_kernel(k_in)) {
    at::Tensor q = prepare(q_in, acc), k = prepare(k_in, acc), v = prepare(v_in, acc);
    at::Tensor mask = prepare_mask(attn_mask, acc, {B, H, T, S});
    at::Tensor dout = grad_out.to(acc).contiguous();
    at::Tensor stats = stats_in.to(acc).contiguous();
    at::Tensor out_dot = (dout * out.to(acc)).sum(-1).contiguous();  // line 4: Di = rowsum(dO * O)
    AT_DISPATCH_FLOATING_TYPES(acc, "minivlm_attention_backward", [&] {
      using acc_t = scalar_t;
      const Problem<acc_t> p = make_problem<acc_t>(q, k, v, mask, is_causal, scale, window);
      const acc_t* row_max = stats.const_data_ptr<acc_t>();
      const Grads<acc_t> G{dout.const_data_ptr<acc_t>(), out_dot.const_data_ptr<acc_t>(), row_max, row_max + B * H * T,
                           grads.dq.mutable_data_ptr<acc_t>(), grads.dk_heads.mutable_data_ptr<acc_t>(),
                           grads.dv_heads.mutable_data_ptr<acc_t>(),
                           mask_grad ? grads.dmask.mutable_data_ptr<acc_t>() : nullptr};
      // One task per (batch, query head).
      at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> Sij(kBr * kBc), dPij(kBr * kBc);
        for (int64_t t = begin; t < end; ++t) backward_head(p, G, t / H, t % H, Sij.data(), dPij.data());
      });
    });
  }
  return grads.finish(q_in, k_in, v_in);
}

}  // namespace minivlm::cpu
