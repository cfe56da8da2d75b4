// Attention on the CPU, in the manner of FlashAttention-2 (Dao, 2023): the (Lq x Lk) score matrix is
// never built. Each task takes a block of Br query rows, walks over the keys in blocks of Bc, and keeps
// for each row only its running maximum m, its running softmax denominator l and its unnormalised
// output O (Br x D). With S = scale * Q K^T + mask for the current key block:
//
//     m_new = max(m, rowmax(S))                       the new row maximum
//     P     = exp(S - m_new)                          probabilities up to the final normalisation
//     l     = exp(m - m_new) * l + rowsum(P)          rescale the old sum to the new maximum, add
//     O     = exp(m - m_new) * O + P V                and the same for the output
//
// After the last block O / l is the softmax-weighted sum. m and log(l) (together the log-sum-exp,
// lse = m + log(l)) are saved for the backward pass, which recomputes P = exp(S - m - log(l)) block by
// block instead of storing it. They are kept apart because a mask of finfo.min values makes m about
// -3.4e38, next to which log(l) would vanish in the sum: S - m must be taken first.
//
// Which keys a query row sees:
//   * causal: query i sits at position p = i + Lk - Lq (the queries are the last Lq positions) and sees
//     keys j <= p; a key block wholly after every row of the query block is never visited;
//   * window w: also j > p - w; key blocks wholly before the band are skipped the same way;
//   * attn_mask: a float tensor added to S (a bool mask arrives here already turned into 0 / -inf),
//     read through its strides, so a mask broadcast over batch, heads or queries is never expanded.
// A row that sees no key keeps m = -inf and l = 0; it outputs 0, saves m = -inf, and its gradient is 0.
//
// Grouped-query attention: query head h reads key/value head h / (Hq / Hkv). Nothing is copied; the
// pointer arithmetic picks the head. For decoding (Lq = 1) the group's query heads are stacked as the
// rows of one block, so each key/value head is read from memory once for the whole group.
//
// Work is split with at::parallel_for over (batch, head, query block) in the forward pass and over
// (batch, head) in the backward pass. The block products S = Q K^T, P V and those of the backward pass are
// BLAS matrix products on the blocks; the softmax between them runs on ATen's vector registers.

#include "attention_common.h"
#include "common.h"
#include "cpu/kernels.h"

namespace minivlm::cpu {
namespace {

constexpr int64_t kBlockQ = 64;   // Br: query rows per block
constexpr int64_t kBlockK = 256;  // Bc: keys per block

// Everything the kernels need to know about one call, with q, k, v, the mask (and in the backward pass
// out, grad_out) already in the accumulation type acc_t and unit-stride in their last dimension.
template <typename acc_t>
struct Problem {
  int64_t B, Hq, Hkv, Lq, Lk, D, group;
  acc_t scale;
  bool causal;
  int64_t window;  // 0 = none
  const acc_t *q, *k, *v;
  int64_t qs_b, qs_h, qs_l, ks_b, ks_h, ks_l, vs_b, vs_h, vs_l;
  const acc_t* mask;  // nullptr = none; else read at b*ms_b + h*ms_h + i*ms_q + j*ms_k
  int64_t ms_b, ms_h, ms_q, ms_k;

  // The keys query i may see by position: [first, last]. An empty band has first > last.
  int64_t last_key(int64_t i) const { return causal ? i + Lk - Lq : Lk - 1; }
  int64_t first_key(int64_t i) const {
    return window > 0 ? std::max<int64_t>(0, last_key(i) - window + 1) : 0;
  }
};

// A block of query rows: `rows` rows of q starting at q0 with `q_ld` elements between rows. Row r is
// query index i0 + r * di of head h0 + r * dh (a run of positions of one head, or for decoding the heads
// of one group at one position).
struct Rows {
  int64_t b, h0, dh, i0, di, rows;
};

// S (rows x n, leading dimension ld) gets the mask added and everything outside a row's band set to
// -inf, for keys kb .. kb + n - 1.
template <typename acc_t>
void mask_scores(const Problem<acc_t>& P, const Rows& R, int64_t kb, int64_t n, acc_t* S, int64_t ld) {
  using Vec = Vectorized<acc_t>;
  constexpr acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  for (int64_t r = 0; r < R.rows; ++r) {
    const int64_t h = R.h0 + r * R.dh, i = R.i0 + r * R.di;
    acc_t* s = S + r * ld;
    if (P.mask != nullptr) {
      const acc_t* m = P.mask + R.b * P.ms_b + h * P.ms_h + i * P.ms_q + kb * P.ms_k;
      if (P.ms_k == 1) {
        at::vec::map2<acc_t>([](Vec a, Vec b) { return a + b; }, s, s, m, n);
      } else {
        for (int64_t c = 0; c < n; ++c) s[c] += m[c * P.ms_k];
      }
    }
    // Keys before the window and after the causal edge, clipped to this block.
    const int64_t lo = std::clamp<int64_t>(P.first_key(i) - kb, 0, n);
    const int64_t hi = std::clamp<int64_t>(P.last_key(i) + 1 - kb, lo, n);
    std::fill(s, s + lo, neg_inf);
    std::fill(s + hi, s + n, neg_inf);
  }
}

// The key range [begin, end) that some row of the block may see (its blocks are the ones visited).
template <typename acc_t>
std::pair<int64_t, int64_t> key_range(const Problem<acc_t>& P, const Rows& R) {
  int64_t begin = P.Lk, end = 0;
  for (int64_t r : {int64_t(0), R.rows - 1}) {  // bands move monotonically with i, so the ends suffice
    const int64_t i = R.i0 + r * R.di;
    begin = std::min(begin, P.first_key(i));
    end = std::max(end, P.last_key(i) + 1);
  }
  return {begin, std::max(begin, end)};
}

// ---------------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------------

// Runs the online softmax for one block of rows; writes O (rows x D) normalised, and per row the
// maximum m and log(l) (m is -inf for a row that saw nothing).
// S is scratch of rows x kBlockK; O has leading dimension D.
template <typename acc_t>
void forward_rows(const Problem<acc_t>& P, const Rows& R, int64_t q_ld, acc_t* S, acc_t* O, acc_t* m,
                  acc_t* l) {
  using Vec = Vectorized<acc_t>;
  constexpr acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  const int64_t D = P.D, kvh = R.h0 / P.group;
  const acc_t* Q = P.q + R.b * P.qs_b + R.h0 * P.qs_h + R.i0 * P.qs_l;
  const acc_t* K = P.k + R.b * P.ks_b + kvh * P.ks_h;
  const acc_t* V = P.v + R.b * P.vs_b + kvh * P.vs_h;

  std::fill(O, O + R.rows * D, acc_t(0));
  std::fill(m, m + R.rows, neg_inf);
  std::fill(l, l + R.rows, acc_t(0));

  const auto [k_begin, k_end] = key_range(P, R);
  for (int64_t kb = k_begin; kb < k_end; kb += kBlockK) {
    const int64_t n = std::min(kBlockK, k_end - kb);
    // S = scale * Q K_j^T                                                  (rows x n)
    gemm<acc_t>(false, true, R.rows, n, D, P.scale, Q, q_ld, K + kb * P.ks_l, P.ks_l, acc_t(0), S, kBlockK);
    mask_scores(P, R, kb, n, S, kBlockK);
    for (int64_t r = 0; r < R.rows; ++r) {
      acc_t* s = S + r * kBlockK;
      // m_new = max(m, rowmax(S))
      const acc_t block_max = at::vec::reduce_all<acc_t>(
          [](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, s, n);
      const acc_t m_new = std::max(m[r], block_max);
      if (m_new == neg_inf) {  // nothing visible to this row yet: P = 0, O and l stay 0
        std::fill(s, s + n, acc_t(0));
        continue;
      }
      // P = exp(S - m_new), written over S, and its row sum
      const Vec vmax(m_new);
      Vec vsum(acc_t(0));
      int64_t c = 0;
      for (; c + Vec::size() <= n; c += Vec::size()) {
        Vec p = vexp(Vec::loadu(s + c) - vmax);
        p.store(s + c);
        vsum = vsum + p;
      }
      acc_t sum = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, vsum);
      for (; c < n; ++c) { s[c] = std::exp(s[c] - m_new); sum += s[c]; }
      // l = exp(m - m_new) l + rowsum(P);  O = exp(m - m_new) O   (exp(-inf) = 0 on the first visit)
      const acc_t alpha = std::exp(m[r] - m_new);
      l[r] = alpha * l[r] + sum;
      m[r] = m_new;
      if (alpha != acc_t(1)) {
        acc_t* o = O + r * D;
        at::vec::map<acc_t>([alpha](Vec x) { return x * Vec(alpha); }, o, o, D);
      }
    }
    // O += P V_j                                                          (rows x D)
    gemm<acc_t>(false, false, R.rows, D, n, acc_t(1), S, kBlockK, V + kb * P.vs_l, P.vs_l, acc_t(1), O, D);
  }
  // O = O / l, and l becomes log(l); a row that saw nothing gives 0 (and keeps m = -inf).
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
void attention_forward(const Problem<acc_t>& P, at::Tensor& out, at::Tensor& stats) {
  scalar_t* out_p = out.mutable_data_ptr<scalar_t>();  // contiguous (B, Hq, Lq, D)
  // stats: contiguous (2, B, Hq, Lq); stats[0] = row max m, stats[1] = log(l)
  acc_t* max_p = stats.mutable_data_ptr<acc_t>();
  acc_t* logl_p = max_p + P.B * P.Hq * P.Lq;
  const int64_t D = P.D;

  // Writes a finished block of rows (rows x D in acc_t) to the output.
  auto store = [&](const Rows& R, const acc_t* O, const acc_t* m, const acc_t* logl) {
    for (int64_t r = 0; r < R.rows; ++r) {
      const int64_t row = (R.b * P.Hq + R.h0 + r * R.dh) * P.Lq + R.i0 + r * R.di;
      convert(O + r * D, out_p + row * D, D);
      max_p[row] = m[r];
      logl_p[row] = logl[r];
    }
  };

  if (P.Lq == 1) {
    // Decode: one task per (batch, key/value head); the rows are the group's query heads.
    at::parallel_for(0, P.B * P.Hkv, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> S(P.group * kBlockK), O(P.group * D), m(P.group), l(P.group);
      for (int64_t t = begin; t < end; ++t) {
        const Rows R{t / P.Hkv, (t % P.Hkv) * P.group, 1, 0, 0, P.group};
        forward_rows(P, R, P.qs_h, S.data(), O.data(), m.data(), l.data());
        store(R, O.data(), m.data(), l.data());
      }
    });
    return;
  }

  // Prefill: one task per (batch, head, block of kBlockQ queries). With a causal mask the late query
  // blocks see more keys than the early ones; at::parallel_for hands each thread a contiguous range of
  // tasks, so the blocks of a head are dealt in zig-zag order (0, n-1, 1, n-2, ...) to even the load.
  const int64_t n_qblocks = (P.Lq + kBlockQ - 1) / kBlockQ;
  at::parallel_for(0, P.B * P.Hq * n_qblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> S(kBlockQ * kBlockK), O(kBlockQ * D), m(kBlockQ), l(kBlockQ);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t z = t % n_qblocks, bh = t / n_qblocks;
      const int64_t qb = (z % 2 == 0) ? z / 2 : n_qblocks - 1 - z / 2;
      const int64_t i0 = qb * kBlockQ;
      const Rows R{bh / P.Hq, bh % P.Hq, 0, i0, 1, std::min(kBlockQ, P.Lq - i0)};
      forward_rows(P, R, P.qs_l, S.data(), O.data(), m.data(), l.data());
      store(R, O.data(), m.data(), l.data());
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------
// With P = softmax(S) recomputed from the saved m and log(l), dO the incoming gradient and Di = rowsum(dO_i * O_i):
//     dV = P^T dO,   dP = dO V^T,   dS = P * (dP - Di),   dQ = scale dS K,   dK = scale dS^T Q
// and dS itself is the gradient of a float mask (the mask is added to the scores after scaling).
// One task per (batch, query head) owns that head's dQ rows and its own dK, dV accumulators (B, Hq, Lk,
// D); the heads of a group are summed afterwards, so no two threads ever write the same memory.

template <typename acc_t>
struct Grads {
  const acc_t *dout, *out_dot;  // dO (B, Hq, Lq, D) contiguous; Di = rowsum(dO * O) (B, Hq, Lq)
  const acc_t *row_max, *log_sum;  // m and log(l) of the forward pass, each (B, Hq, Lq)
  acc_t *dq, *dk, *dv;          // (B, Hq, Lq, D), (B, Hq, Lk, D), (B, Hq, Lk, D), contiguous
  acc_t* dmask;                 // (B, Hq, Lq, Lk) or nullptr
};

template <typename acc_t>
void backward_head(const Problem<acc_t>& P, const Grads<acc_t>& G, int64_t b, int64_t h, acc_t* S, acc_t* dP) {
  using Vec = Vectorized<acc_t>;
  constexpr acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  const int64_t D = P.D, kvh = h / P.group, bh = b * P.Hq + h;
  const acc_t* K = P.k + b * P.ks_b + kvh * P.ks_h;
  const acc_t* V = P.v + b * P.vs_b + kvh * P.vs_h;
  acc_t* dK = G.dk + bh * P.Lk * D;
  acc_t* dV = G.dv + bh * P.Lk * D;

  for (int64_t i0 = 0; i0 < P.Lq; i0 += kBlockQ) {
    const Rows R{b, h, 0, i0, 1, std::min(kBlockQ, P.Lq - i0)};
    const acc_t* Q = P.q + b * P.qs_b + h * P.qs_h + i0 * P.qs_l;
    const acc_t* dO = G.dout + (bh * P.Lq + i0) * D;
    const acc_t* m = G.row_max + bh * P.Lq + i0;
    const acc_t* logl = G.log_sum + bh * P.Lq + i0;
    const acc_t* Di = G.out_dot + bh * P.Lq + i0;
    acc_t* dQ = G.dq + (bh * P.Lq + i0) * D;

    const auto [k_begin, k_end] = key_range(P, R);
    for (int64_t kb = k_begin; kb < k_end; kb += kBlockK) {
      const int64_t n = std::min(kBlockK, k_end - kb);
      // S = scale Q K_j^T + mask, then P = exp((S - m) - log l) (0 where masked or the row sees nothing)
      gemm<acc_t>(false, true, R.rows, n, D, P.scale, Q, P.qs_l, K + kb * P.ks_l, P.ks_l, acc_t(0), S, kBlockK);
      mask_scores(P, R, kb, n, S, kBlockK);
      for (int64_t r = 0; r < R.rows; ++r) {
        acc_t* s = S + r * kBlockK;
        if (m[r] == neg_inf) { std::fill(s, s + n, acc_t(0)); continue; }
        const Vec vm(m[r]), vlogl(logl[r]);
        int64_t c = 0;
        for (; c + Vec::size() <= n; c += Vec::size()) vexp((Vec::loadu(s + c) - vm) - vlogl).store(s + c);
        for (; c < n; ++c) s[c] = std::exp((s[c] - m[r]) - logl[r]);
      }
      // dV_j += P^T dO                                                    (n x D)
      gemm<acc_t>(true, false, n, D, R.rows, acc_t(1), S, kBlockK, dO, D, acc_t(1), dV + kb * D, D);
      // dP = dO V_j^T                                                     (rows x n)
      gemm<acc_t>(false, true, R.rows, n, D, acc_t(1), dO, D, V + kb * P.vs_l, P.vs_l, acc_t(0), dP, kBlockK);
      // dS = P * (dP - Di), written over dP
      for (int64_t r = 0; r < R.rows; ++r) {
        const acc_t* p = S + r * kBlockK;
        acc_t* ds = dP + r * kBlockK;
        const Vec vd(Di[r]);
        at::vec::map2<acc_t>([vd](Vec pp, Vec dp) { return pp * (dp - vd); }, ds, p, ds, n);
        if (G.dmask != nullptr) std::copy(ds, ds + n, G.dmask + (bh * P.Lq + i0 + r) * P.Lk + kb);
      }
      // dQ_i += scale dS K_j                                              (rows x D)
      gemm<acc_t>(false, false, R.rows, D, n, P.scale, dP, kBlockK, K + kb * P.ks_l, P.ks_l, acc_t(1), dQ, D);
      // dK_j += scale dS^T Q_i                                            (n x D)
      gemm<acc_t>(true, false, n, D, R.rows, P.scale, dP, kBlockK, Q, P.qs_l, acc_t(1), dK + kb * D, D);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------------

// q, k, v and mask in the accumulation dtype, with unit stride in the last dimension and row strides
// BLAS accepts (a dimension of size 1 may carry any stride; we never step along it).
at::Tensor prepare(const at::Tensor& t, at::ScalarType acc) {
  at::Tensor x = t.to(acc);
  const int64_t D = x.size(-1);
  bool ok = x.stride(-1) == 1 || D == 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) ok = ok && (x.size(d) == 1 || x.stride(d) >= D);
  return ok ? x : x.contiguous();
}

int64_t row_stride(const at::Tensor& t, int64_t dim) {
  return t.size(dim) == 1 ? t.size(-1) : t.stride(dim);  // BLAS wants ld >= D even where unused
}

template <typename acc_t>
Problem<acc_t> make_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                            bool is_causal, double scale, std::optional<int64_t> window) {
  Problem<acc_t> P;
  P.B = q.size(0); P.Hq = q.size(1); P.Lq = q.size(2); P.D = q.size(3);
  P.Hkv = k.size(1); P.Lk = k.size(2); P.group = P.Hq / P.Hkv;
  P.scale = acc_t(scale); P.causal = is_causal; P.window = window.value_or(0);
  P.q = q.const_data_ptr<acc_t>(); P.k = k.const_data_ptr<acc_t>(); P.v = v.const_data_ptr<acc_t>();
  P.qs_b = q.stride(0); P.qs_h = row_stride(q, 1); P.qs_l = row_stride(q, 2);
  P.ks_b = k.stride(0); P.ks_h = k.stride(1); P.ks_l = row_stride(k, 2);
  P.vs_b = v.stride(0); P.vs_h = v.stride(1); P.vs_l = row_stride(v, 2);
  P.mask = mask.defined() ? mask.const_data_ptr<acc_t>() : nullptr;
  if (mask.defined()) {
    P.ms_b = mask.stride(0); P.ms_h = mask.stride(1); P.ms_q = mask.stride(2); P.ms_k = mask.stride(3);
  }
  return P;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                 const at::Tensor& v_in, const std::optional<at::Tensor>& attn_mask,
                                                 bool is_causal, double scale, std::optional<int64_t> window) {
  check_attention_inputs(q_in, k_in, v_in, is_causal, window);
  const at::ScalarType acc = acc_type(q_in.scalar_type());
  const int64_t B = q_in.size(0), Hq = q_in.size(1), Lq = q_in.size(2), D = q_in.size(3), Lk = k_in.size(2);
  at::Tensor out = at::empty({B, Hq, Lq, D}, q_in.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor stats = at::empty({2, B, Hq, Lq}, q_in.options().dtype(acc));
  if (out.numel() == 0) return {out, stats};
  if (Lk == 0) {  // no keys at all: every row sees nothing
    out.zero_();
    stats[0].fill_(-std::numeric_limits<double>::infinity());
    stats[1].zero_();
    return {out, stats};
  }
  at::Tensor q = prepare(q_in, acc), k = prepare(k_in, acc), v = prepare(v_in, acc);
  at::Tensor mask = prepare_mask(attn_mask, acc, {B, Hq, Lq, Lk});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q_in.scalar_type(), "minivlm_attention", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    attention_forward<scalar_t, acc_t>(make_problem<acc_t>(q, k, v, mask, is_causal, scale, window), out, stats);
  });
  return {out, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const std::optional<at::Tensor>& attn_mask, const at::Tensor& out, const at::Tensor& stats_in,
    bool is_causal, double scale, std::optional<int64_t> window, bool mask_grad) {
  check_attention_inputs(q_in, k_in, v_in, is_causal, window);
  const at::ScalarType acc = acc_type(q_in.scalar_type());
  const int64_t B = q_in.size(0), Hq = q_in.size(1), Lq = q_in.size(2), D = q_in.size(3);
  const int64_t Lk = k_in.size(2);
  const auto opts = q_in.options().dtype(acc);
  at::Tensor dq = at::zeros({B, Hq, Lq, D}, opts);
  at::Tensor dk_heads = at::zeros({B, Hq, Lk, D}, opts);  // one accumulator per query head
  at::Tensor dv_heads = at::zeros({B, Hq, Lk, D}, opts);
  at::Tensor dmask = mask_grad ? at::zeros({B, Hq, Lq, Lk}, opts) : at::empty({0}, opts);
  if (dq.numel() > 0 && Lk > 0) {
    at::Tensor q = prepare(q_in, acc), k = prepare(k_in, acc), v = prepare(v_in, acc);
    at::Tensor mask = prepare_mask(attn_mask, acc, {B, Hq, Lq, Lk});
    at::Tensor dout = grad_out.to(acc).contiguous();
    at::Tensor stats = stats_in.to(acc).contiguous();
    at::Tensor out_dot = (dout * out.to(acc)).sum(-1).contiguous();  // Di = rowsum(dO * O)
    AT_DISPATCH_FLOATING_TYPES(acc, "minivlm_attention_backward", [&] {
      using acc_t = scalar_t;
      const Problem<acc_t> P = make_problem<acc_t>(q, k, v, mask, is_causal, scale, window);
      const acc_t* row_max = stats.const_data_ptr<acc_t>();
      const Grads<acc_t> G{dout.const_data_ptr<acc_t>(), out_dot.const_data_ptr<acc_t>(), row_max, row_max + B * Hq * Lq,
                           dq.mutable_data_ptr<acc_t>(), dk_heads.mutable_data_ptr<acc_t>(),
                           dv_heads.mutable_data_ptr<acc_t>(), mask_grad ? dmask.mutable_data_ptr<acc_t>() : nullptr};
      at::parallel_for(0, B * Hq, 1, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> S(kBlockQ * kBlockK), dP(kBlockQ * kBlockK);
        for (int64_t t = begin; t < end; ++t) backward_head(P, G, t / Hq, t % Hq, S.data(), dP.data());
      });
    });
  }
  return finish_attention_grads(dq, dk_heads, dv_heads, dmask, q_in, k_in, v_in);
}

}  // namespace minivlm::cpu
