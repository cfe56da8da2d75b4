// The attention forward pass on the CPU: Algorithm 1 of FlashAttention-2 (Dao, 2023, arXiv 2307.08691),
// with the paper's names. The (T x S) score matrix is never built. q (B, H, T, D) is cut into Tr =
// ceil(T / Br) blocks Q_i of Br rows, k and v (B, Hkv, S, D) into Tc = ceil(S / Bc) blocks K_j, V_j of Bc
// keys (Algorithm 1, lines 1-2). Each task takes one Q_i (line 3), walks over the key blocks (line 6),
// and keeps for each row only its running maximum m, its running softmax denominator l and its
// unnormalised output O (Br x D). With S_ij = scale * Q_i K_j^T + mask for the current key block:
//
//     m_new = max(m, rowmax(S_ij))                    the new row maximum                  (line 9)
//     P_ij  = exp(S_ij - m_new)                       probabilities up to the normalisation (line 9)
//     l     = exp(m - m_new) * l + rowsum(P_ij)       rescale the old sum to the new maximum (line 9)
//     O     = exp(m - m_new) * O + P_ij V_j           and the same for the output           (line 10)
//
// After the last block O / l is the softmax-weighted sum (line 12). The paper saves the log-sum-exp
// L = m + log(l) (line 13); we save its two terms m and log(l) apart, and the backward pass recomputes
// P_ij = exp((S_ij - m) - log(l)) block by block instead of storing it. They are kept apart because a
// mask of finfo.min values makes m about -3.4e38, next to which log(l) would vanish in the sum: S_ij - m
// must be taken first.
//
// Which keys a query row sees:
//   * causal: query i sits at position p = i + S - T (the queries are the last T positions) and sees
//     keys j <= p; a key block wholly after every row of the query block is never visited;
//   * window w: also j > p - w; key blocks wholly before the band are skipped the same way;
//   * attn_mask: a float tensor added to S_ij (a bool mask arrives here already turned into 0 / -inf),
//     read through its strides, so a mask broadcast over batch, heads or queries is never expanded.
// A row that sees no key keeps m = -inf and l = 0; it outputs 0, saves m = -inf, and its gradient is 0.
//
// Grouped-query attention: query head h reads key/value head h / (H / Hkv). Nothing is copied; the
// pointer arithmetic picks the head. For decoding (T = 1) the group's query heads are stacked as the
// rows of one block, so each key/value head is read from memory once for the whole group.
//
// Work is split with at::parallel_for over (batch, head, query block). The block products S_ij = Q_i K_j^T
// and P_ij V_j are BLAS matrix products on the blocks (gemm in common.h); the softmax between them runs
// on ATen's vector registers. The shared pieces (Problem, Rows, mask_scores, key_range, make_problem)
// are in common.h.

#include "attention_common.h"
#include "common.h"
#include "cpu/kernels.h"

namespace minivlm::cpu {
namespace {

constexpr int64_t kBr = 64;   // Br: query rows per block Q_i
constexpr int64_t kBc = 256;  // Bc: keys per block K_j, V_j

// Algorithm 1, lines 4-13, for one block of rows: the online softmax over the visible key blocks. Writes
// O (rows x D) normalised, and per row the maximum m and log(l) (m is -inf for a row that saw nothing).
// Sij is scratch of rows x kBc (S_ij, then P_ij written over it); O has leading dimension D.
template <typename acc_t>
void forward_rows(const Problem<acc_t>& p, const Rows& R, int64_t q_ld, acc_t* Sij, acc_t* O, acc_t* m,
                  acc_t* l) {
  using Vec = Vectorized<acc_t>;
  constexpr acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  const int64_t D = p.D, kvh = R.h0 / p.group;
  // Line 4: Q_i is read in place (BLAS takes its row stride q_ld), as are K_j and V_j in line 7.
  const acc_t* Q = p.q + R.b * p.qs_b + R.h0 * p.qs_h + R.i0 * p.qs_t;
  const acc_t* K = p.k + R.b * p.ks_b + kvh * p.ks_h;
  const acc_t* V = p.v + R.b * p.vs_b + kvh * p.vs_h;

  // Line 5: O = 0, l = 0, m = -inf.
  std::fill(O, O + R.rows * D, acc_t(0));
  std::fill(m, m + R.rows, neg_inf);
  std::fill(l, l + R.rows, acc_t(0));

  // Line 6: the key blocks j, only those some row of the block may see.
  const auto [k_begin, k_end] = key_range(p, R);
  for (int64_t kb = k_begin; kb < k_end; kb += kBc) {
    const int64_t n = std::min(kBc, k_end - kb);
    // Line 8: S_ij = scale * Q_i K_j^T, then the mask and the band                    (rows x n)
    gemm<acc_t>(false, true, R.rows, n, D, p.scale, Q, q_ld, K + kb * p.ks_s, p.ks_s, acc_t(0), Sij, kBc);
    mask_scores(p, R, kb, n, Sij, kBc);
    for (int64_t r = 0; r < R.rows; ++r) {
      acc_t* s = Sij + r * kBc;
      // Line 9: m_new = max(m, rowmax(S_ij))
      const acc_t block_max = at::vec::reduce_all<acc_t>(
          [](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, s, n);
      const acc_t m_new = std::max(m[r], block_max);
      if (m_new == neg_inf) {  // nothing visible to this row yet: P_ij = 0, O and l stay 0
        std::fill(s, s + n, acc_t(0));
        continue;
      }
      // Line 9: P_ij = exp(S_ij - m_new), written over S_ij, and its row sum
      const Vec vmax(m_new);
      Vec vsum(acc_t(0));
      int64_t c = 0;
      for (; c + Vec::size() <= n; c += Vec::size()) {
        Vec e = vexp(Vec::loadu(s + c) - vmax);
        e.store(s + c);
        vsum = vsum + e;
      }
      acc_t sum = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, vsum);
      for (; c < n; ++c) { s[c] = std::exp(s[c] - m_new); sum += s[c]; }
      // Line 9: l = exp(m - m_new) l + rowsum(P_ij); line 10, first half: O = exp(m - m_new) O
      // (exp(-inf) = 0 on the first visit)
      const acc_t alpha = std::exp(m[r] - m_new);
      l[r] = alpha * l[r] + sum;
      m[r] = m_new;
      if (alpha != acc_t(1)) {
        acc_t* o = O + r * D;
        at::vec::map<acc_t>([alpha](Vec x) { return x * Vec(alpha); }, o, o, D);
      }
    }
    // Line 10, second half: O += P_ij V_j                                              (rows x D)
    gemm<acc_t>(false, false, R.rows, D, n, acc_t(1), Sij, kBc, V + kb * p.vs_s, p.vs_s, acc_t(1), O, D);
  }
  // Line 12: O = O / l. Line 13: l becomes log(l), the second term of L = m + log(l). A row that saw
  // nothing gives 0 (and keeps m = -inf).
  for (int64_t r = 0; r < R.rows; ++r) {
    acc_t* o = O + r * D;
    if (l[r] == acc_t(0)) {
      std::fill(o, o + D, acc_t(0));
      m[r] = neg_inf;
    } else {
      const acc_t inv = acc_t(1) / l[r];
      at::vec::map<acc_t>([inv](Vec x) { return x * Vec(inv); }, o, o, D);
      l[r] = std::log(l[r]);
    }
  }
}

template <typename scalar_t, typename acc_t>
void attention_forward(const Problem<acc_t>& p, at::Tensor& out, at::Tensor& stats) {
  scalar_t* out_p = out.mutable_data_ptr<scalar_t>();  // contiguous (B, H, T, D)
  // stats: contiguous (2, B, H, T); stats[0] = row max m, stats[1] = log(l)
  acc_t* max_p = stats.mutable_data_ptr<acc_t>();
  acc_t* logl_p = max_p + p.B * p.H * p.T;
  const int64_t D = p.D;

  // Lines 14-15: write a finished block of rows (rows x D in acc_t) to the output, and its m and log(l).
  auto store = [&](const Rows& R, const acc_t* O, const acc_t* m, const acc_t* logl) {
    for (int64_t r = 0; r < R.rows; ++r) {
      const int64_t row = (R.b * p.H + R.h0 + r * R.dh) * p.T + R.i0 + r * R.di;
      convert(O + r * D, out_p + row * D, D);
      max_p[row] = m[r];
      logl_p[row] = logl[r];
    }
  };

  if (p.T == 1) {
    // Decode: one task per (batch, key/value head); the rows are the group's query heads.
    at::parallel_for(0, p.B * p.Hkv, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> Sij(p.group * kBc), O(p.group * D), m(p.group), l(p.group);
      for (int64_t t = begin; t < end; ++t) {
        const Rows R{t / p.Hkv, (t % p.Hkv) * p.group, 1, 0, 0, p.group};
        forward_rows(p, R, p.qs_h, Sij.data(), O.data(), m.data(), l.data());
        store(R, O.data(), m.data(), l.data());
      }
    });
    return;
  }

  // Prefill, line 3: one task per (batch, head, query block i), Tr blocks per head. With a causal mask the
  // late query blocks see more keys than the early ones; at::parallel_for hands each thread a contiguous
  // range of tasks, so the blocks of a head are dealt in zig-zag order (0, Tr-1, 1, Tr-2, ...) to even
  // the load.
  const int64_t Tr = (p.T + kBr - 1) / kBr;
  at::parallel_for(0, p.B * p.H * Tr, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> Sij(kBr * kBc), O(kBr * D), m(kBr), l(kBr);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t z = t % Tr, bh = t / Tr;
      const int64_t i = (z % 2 == 0) ? z / 2 : Tr - 1 - z / 2;
      const int64_t i0 = i * kBr;
      const Rows R{bh / p.H, bh % p.H, 0, i0, 1, std::min(kBr, p.T - i0)};
      forward_rows(p, R, p.qs_t, Sij.data(), O.data(), m.data(), l.data());
      store(R, O.data(), m.data(), l.data());
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                 const at::Tensor& v_in, const std::optional<at::Tensor>& attn_mask,
                                                 bool is_causal, double scale, std::optional<int64_t> window) {
  check_attention_inputs(q_in, k_in, v_in, is_causal, window);
  const at::ScalarType acc = acc_type(q_in.scalar_type());
  at::Tensor out, stats;
  if (!attention_outputs(q_in, k_in, acc, out, stats)) return {out, stats};
  const int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2), S = k_in.size(2);
  at::Tensor q = prepare(q_in, acc), k = prepare(k_in, acc), v = prepare(v_in, acc);
  at::Tensor mask = prepare_mask(attn_mask, acc, {B, H, T, S});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q_in.scalar_type(), "minivlm_attention", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    attention_forward<scalar_t, acc_t>(make_problem<acc_t>(q, k, v, mask, is_causal, scale, window), out, stats);
  });
  return {out, stats};
}

}  // namespace minivlm::cpu
