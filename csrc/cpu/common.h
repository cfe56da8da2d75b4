// Helpers shared by the CPU kernels: the accumulation type, matrix products on blocks, vector exp; and what
// the two attention files (attention_forward.cpp, attention_backward.cpp) share: the description of one
// call, the blocks of query rows, the masking of a score block and the preparation of the inputs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

namespace minivlm::cpu {

using at::vec::Vectorized;

// The math runs in float32 for float32/bfloat16/float16 input and in float64 for float64 input.
inline at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// exp on a whole vector register. float: ATen's polynomial exp (max error 2 ulp, plain intrinsics);
// double: ATen's exp (SLEEF, 1 ulp). Both give 0 for -inf, which masked scores rely on.
inline Vectorized<float> vexp(const Vectorized<float>& x) { return x.exp_u20(); }
inline Vectorized<double> vexp(const Vectorized<double>& x) { return x.exp(); }

// Fortran BLAS, which torch's CPU library carries (MKL or OpenBLAS). Declared weak: where the symbol is
// absent they are null and gemm() below falls back to at::mm on the same memory.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
}

// C = alpha * op(A) @ op(B) + beta * C on row-major blocks, op = transpose where asked.
// op(A) is M x K, op(B) is K x N, C is M x N; lda/ldb/ldc are the row strides as stored.
// beta = 0 ignores what C held (it may be uninitialized).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum: C = beta * C
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  auto blas = std::is_same_v<T, float> ? (void*)sgemm_ : (void*)dgemm_;
  if (blas != nullptr) {
    // BLAS is column-major, and a row-major matrix is its transpose in column-major. So we ask for
    // C^T = op(B)^T op(A)^T, passing B first: a row-major block that is not transposed is, to BLAS,
    // already the transpose it needs ('N'), and one we want transposed is 'T'.
    const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
    const int m = N, n = M, k = K, la = ldb, lb = lda, lc = ldc;
    if constexpr (std::is_same_v<T, float>)
      sgemm_(&ta, &tb, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
    else
      dgemm_(&ta, &tb, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
    return;
  }
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto view = [&](const T* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
    auto t = at::from_blob(const_cast<T*>(p), {trans ? cols : rows, trans ? rows : cols}, {ld, 1}, opts);
    return trans ? t.t() : t;
  };
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  c.addmm_(view(A, M, K, lda, trans_a), view(B, K, N, ldb, trans_b), beta, alpha);
}

// dst[0:n] = src[0:n] converted, vectorized where ATen has a conversion for the pair.
template <typename src_t, typename dst_t>
inline void convert(const src_t* src, dst_t* dst, int64_t n) {
  if constexpr (std::is_same_v<src_t, dst_t>) {
    std::copy(src, src + n, dst);
  } else {
    at::vec::convert(src, dst, n);
  }
}

// ---------------------------------------------------------------------------------------------------
// Attention: what the forward pass (attention_forward.cpp) and the backward pass (attention_backward.cpp)
// share. Names follow docs/notation.md: q (B, H, T, D), k and v (B, Hkv, S, D); inside the kernels the
// FlashAttention-2 names: S_ij the scores of query block i and key block j, P_ij their exponentials, m and l
// each row's running maximum and sum, L = m + log(l) the log-sum-exp.
// ---------------------------------------------------------------------------------------------------

// Internal linkage, as if each attention file had written them itself: each file's copy is compiled
// and inlined for that file alone.
namespace {

// Everything the kernels need to know about one call, with q, k, v, the mask (and in the backward pass
// out, grad_out) already in the accumulation type acc_t and unit-stride in their last dimension.
template <typename acc_t>
struct Problem {
  int64_t B, H, Hkv, T, S, D, group;  // group = H / Hkv query heads per key/value head
  acc_t scale;
  bool causal;
  int64_t window;  // 0 = none
  const acc_t *q, *k, *v;
  int64_t qs_b, qs_h, qs_t, ks_b, ks_h, ks_s, vs_b, vs_h, vs_s;
  const acc_t* mask;  // nullptr = none; else read at b*ms_b + h*ms_h + i*ms_t + j*ms_s
  int64_t ms_b, ms_h, ms_t, ms_s;

  // The keys query i may see by position: [first, last]. An empty band has first > last.
  // Query i sits at position i + S - T (the queries are the last T of the S positions).
  int64_t last_key(int64_t i) const { return causal ? i + S - T : S - 1; }
  int64_t first_key(int64_t i) const {
    return window > 0 ? std::max<int64_t>(0, last_key(i) - window + 1) : 0;
  }
};

// A block of query rows (the paper's Q_i): `rows` rows starting at query i0 of head h0. Row r is query
// index i0 + r * di of head h0 + r * dh (a run of positions of one head, or for decoding the heads of one
// group at one position).
struct Rows {
  int64_t b, h0, dh, i0, di, rows;
};

// Sij (rows x n, leading dimension ld) gets the mask added and everything outside a row's band set to
// -inf, for keys kb .. kb + n - 1.
template <typename acc_t>
void mask_scores(const Problem<acc_t>& p, const Rows& R, int64_t kb, int64_t n, acc_t* Sij, int64_t ld) {
  using Vec = Vectorized<acc_t>;
  constexpr acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  for (int64_t r = 0; r < R.rows; ++r) {
    const int64_t h = R.h0 + r * R.dh, i = R.i0 + r * R.di;
    acc_t* s = Sij + r * ld;
    if (p.mask != nullptr) {
      const acc_t* mrow = p.mask + R.b * p.ms_b + h * p.ms_h + i * p.ms_t + kb * p.ms_s;
      if (p.ms_s == 1) {
        at::vec::map2<acc_t>([](Vec a, Vec b) { return a + b; }, s, s, mrow, n);
      } else {
        for (int64_t c = 0; c < n; ++c) s[c] += mrow[c * p.ms_s];
      }
    }
    // Keys before the window and after the causal edge, clipped to this block.
    const int64_t lo = std::clamp<int64_t>(p.first_key(i) - kb, 0, n);
    const int64_t hi = std::clamp<int64_t>(p.last_key(i) + 1 - kb, lo, n);
    std::fill(s, s + lo, neg_inf);
    std::fill(s + hi, s + n, neg_inf);
  }
}

// The key range [begin, end) that some row of the block may see: the key blocks K_j the loops visit.
template <typename acc_t>
std::pair<int64_t, int64_t> key_range(const Problem<acc_t>& p, const Rows& R) {
  int64_t begin = p.S, end = 0;
  for (int64_t r : {int64_t(0), R.rows - 1}) {  // bands move monotonically with i, so the ends suffice
    const int64_t i = R.i0 + r * R.di;
    begin = std::min(begin, p.first_key(i));
    end = std::max(end, p.last_key(i) + 1);
  }
  return {begin, std::max(begin, end)};
}

// q, k, v and mask in the accumulation dtype, with unit stride in the last dimension and row strides
// BLAS accepts (a dimension of size 1 may carry any stride; we never step along it).
inline at::Tensor prepare(const at::Tensor& t, at::ScalarType acc) {
  at::Tensor x = t.to(acc);
  const int64_t D = x.size(-1);
  bool ok = x.stride(-1) == 1 || D == 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) ok = ok && (x.size(d) == 1 || x.stride(d) >= D);
  return ok ? x : x.contiguous();
}

inline int64_t row_stride(const at::Tensor& t, int64_t dim) {
  return t.size(dim) == 1 ? t.size(-1) : t.stride(dim);  // BLAS wants ld >= D even where unused
}

template <typename acc_t>
Problem<acc_t> make_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                            bool is_causal, double scale, std::optional<int64_t> window) {
  Problem<acc_t> p;
  p.B = q.size(0); p.H = q.size(1); p.T = q.size(2); p.D = q.size(3);
  p.Hkv = k.size(1); p.S = k.size(2); p.group = p.H / p.Hkv;
  p.scale = acc_t(scale); p.causal = is_causal; p.window = window.value_or(0);
  p.q = q.const_data_ptr<acc_t>(); p.k = k.const_data_ptr<acc_t>(); p.v = v.const_data_ptr<acc_t>();
  p.qs_b = q.stride(0); p.qs_h = row_stride(q, 1); p.qs_t = row_stride(q, 2);
  p.ks_b = k.stride(0); p.ks_h = k.stride(1); p.ks_s = row_stride(k, 2);
  p.vs_b = v.stride(0); p.vs_h = v.stride(1); p.vs_s = row_stride(v, 2);
  p.mask = mask.defined() ? mask.const_data_ptr<acc_t>() : nullptr;
  if (mask.defined()) {
    p.ms_b = mask.stride(0); p.ms_h = mask.stride(1); p.ms_t = mask.stride(2); p.ms_s = mask.stride(3);
  }
  return p;
}

}  // namespace
}  // namespace minivlm::cpu
