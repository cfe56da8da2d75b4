// The CPU kernels as one table of function pointers, and the run-time choice of instruction set.
//
// The kernels in this folder are compiled three times, each time into its own small shared library next
// to minivlm._C: for AVX-512 (`_cpu_avx512`), for AVX2 + FMA (`_cpu_avx2`) and for plain x86-64 or any
// other CPU (`_cpu_default`). ATen's at::vec::Vectorized<float> becomes 16, 8 or 1-4 lanes wide
// accordingly. Each library exports one function, minivlm_cpu_kernels(), that returns its table below;
// everything else in it is hidden (-fvisibility=hidden), so that no inline function compiled for AVX-512
// can stand in for its plain twin in another library.
//
// minivlm._C registers the CPU kernels of the ops (dispatch.cpp). On the first call it loads the best
// library this CPU can run, or the one MINIVLM_CPU_ISA names, and forwards every call through the
// table. This is how ATen itself ships one binary for every x86-64: compile a kernel per ISA, choose at
// run time.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace minivlm::cpu {

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const std::optional<at::Tensor>& attn_mask, bool is_causal,
                                                 double scale, std::optional<int64_t> window);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& attn_mask, const at::Tensor& out, const at::Tensor& stats, bool is_causal,
    double scale, std::optional<int64_t> window, bool mask_grad);
at::Tensor rope_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor rope_backward_cpu(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor causal_mask_cpu(const at::Tensor& padding_mask, int64_t q_len, at::ScalarType dtype,
                           std::optional<int64_t> window);

// One instruction set's kernels. `version` guards against loading a library from another build.
struct Kernels {
  int version;
  const char* isa;  // "avx512", "avx2" or "default"
  decltype(&attention_cpu) attention;
  decltype(&attention_backward_cpu) attention_backward;
  decltype(&rope_cpu) rope;
  decltype(&rope_backward_cpu) rope_backward;
  decltype(&causal_mask_cpu) causal_mask;
};

constexpr int kKernelsVersion = 1;

}  // namespace minivlm::cpu

// Exported by each _cpu_<isa> library.
extern "C" const minivlm::cpu::Kernels* minivlm_cpu_kernels();
