// The ops of minivlm._C that only the compiled build has: which instruction set's CPU kernels run.
//
// The schemas of the three kernels' ops (attention, rope, causal_mask and their backward ops) are not
// here: minivlm/ops.py defines them with torch.library, so that they, their fake kernels and their autograd
// formulas exist whether or not this library is built (the reference math needs no compiler). The C++
// side only implements them, per device (TORCH_LIBRARY_IMPL): the CPU kernels in cpu_dispatch.cpp, which
// forwards to the kernels of csrc/cpu/ compiled for one instruction set and chosen at run time
// (csrc/cpu/kernels.h), the CUDA ones in csrc/cuda/. Python owns the namespace (its `Library("minivlm",
// "DEF")`), so this file adds to it with TORCH_LIBRARY_FRAGMENT.
//
// Importing minivlm._C loads this shared library, which runs the registrations; the ops then appear as
// torch.ops.minivlm.<name>. There is no Python binding: the empty module init is only there so that
// `import minivlm._C` can load the library.

#include <Python.h>
#include <torch/library.h>

namespace minivlm {

namespace cpu {  // cpu_dispatch.cpp: which instruction set's CPU kernels run
std::string cpu_isa();
std::string set_cpu_isa(std::string isa);
std::vector<std::string> cpu_isas();
}  // namespace cpu

TORCH_LIBRARY_FRAGMENT(minivlm, m) {
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
