// The schemas of minivlm's custom ops. Kernels register per device (TORCH_LIBRARY_IMPL): the CPU ones in
// cpu_dispatch.cpp, which forwards to the kernels of csrc/cpu/ compiled for one instruction set and chosen
// at run time (csrc/cpu/kernels.h), the CUDA ones in csrc/cuda/. The fake kernels and autograd formulas
// live in minivlm/ops.py.
//
// Importing minivlm._C loads this shared library, which runs the registrations below; the ops then
// appear as torch.ops.minivlm.<name>. There is no Python binding: the empty module init is only there so
// that `import minivlm._C` can load the library.

#include <Python.h>
#include <torch/library.h>

namespace minivlm {

namespace cpu {  // cpu_dispatch.cpp: which instruction set's CPU kernels run
std::string cpu_isa();
std::string set_cpu_isa(std::string isa);
std::vector<std::string> cpu_isas();
}  // namespace cpu

TORCH_LIBRARY(minivlm, m) {
  // attention returns (out, stats): stats is (2, B, Hq, Lq) in float32 (float64 for float64 input),
  // stats[0] the row maximum m of the scores (-inf for a row that sees no key) and stats[1] log of the
  // softmax denominator, so the log-sum-exp is m + log(l). The backward recomputes the probabilities
  // from them.
  m.def("attention(Tensor q, Tensor k, Tensor v, Tensor? attn_mask, bool is_causal, float scale, "
        "int? window) -> (Tensor, Tensor)");
  // Returns (dq, dk, dv, dscores). dscores = dL/d(scores) on the full (B, Hq, Lq, Lk) grid, in the
  // accumulation dtype, when mask_grad is true (Python sums it down to the mask's shape); empty otherwise.
  m.def("attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? attn_mask, "
        "Tensor out, Tensor stats, bool is_causal, float scale, int? window, bool mask_grad) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("rope(Tensor x, Tensor cos, Tensor sin) -> Tensor");
  // The gradient of rope with respect to x (rope is linear in x, so it needs only cos and sin).
  m.def("rope_backward(Tensor grad, Tensor cos, Tensor sin) -> Tensor");
  m.def("causal_mask(Tensor padding_mask, int q_len, ScalarType dtype, int? window) -> Tensor");
  // The CPU kernels' instruction set: the one in use ("avx512", "avx2" or "default"), a switch to another
  // (returns the one it replaces), and those this CPU can run, best first.
  m.def("cpu_isa() -> str", &cpu::cpu_isa);
  m.def("set_cpu_isa(str isa) -> str", &cpu::set_cpu_isa);
  m.def("cpu_isas() -> str[]", &cpu::cpu_isas);
}

}  // namespace minivlm

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
