// Helpers shared by the CPU kernels: the accumulation type, matrix products on blocks, vector exp.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>
#include <limits>

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

}  // namespace minivlm::cpu
