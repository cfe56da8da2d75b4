// Helpers shared by the CUDA kernels: the accumulation type, conversions, warp reductions, launches.
//
// Only c10's CUDA headers are included (stream, device guard, launch check). ATen/cuda/CUDAContext.h
// would pull in cuSPARSE and cuBLAS headers that a torch wheel keeps in its own nvidia/ folder, which
// the build then could not find on a machine whose toolkit lacks them.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

namespace minivlm::cuda {

// The math runs in float32 for float32/bfloat16/float16 input and in float64 for float64 input, as on
// the CPU: at::opmath_type<scalar_t> is float for the 16-bit types and the type itself otherwise.
template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;

inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

template <typename T>
__device__ __forceinline__ T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// exp in the accumulation type: the correctly rounded-to-a-few-ulp library functions (not the
// approximate intrinsics), so the float32 and float64 paths meet the same bounds as the CPU kernels.
__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }

// Sum and maximum over the 32 lanes of a warp (every lane gets the result), by butterfly shuffles.
template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

template <typename T>
__device__ __forceinline__ T warp_max(T x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x = max(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Number of multiprocessors and the largest dynamic shared memory a block may opt in to, on `device`.
inline int sm_count(int device) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

inline int max_shared_optin(int device) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return n;
}

inline int compute_capability_major(int device) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrComputeCapabilityMajor, device));
  return n;
}

// A kernel may use more than 48 KB of dynamic shared memory only after asking for it.
template <typename Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes, int device, const char* what) {
  TORCH_CHECK(bytes <= static_cast<size_t>(max_shared_optin(device)), what, " needs ", bytes,
              " bytes of shared memory per block, more than this GPU's ", max_shared_optin(device));
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
}

// N values of T loaded and stored as one aligned vector: Pack<at::BFloat16, 8> is one 16-byte access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// True when `p` may be read with 16-byte vector loads.
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace minivlm::cuda
