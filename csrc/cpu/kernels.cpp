// The table of this library's kernels (see kernels.h). Compiled once per instruction set, with that
// set's flags, together with attention_forward.cpp, attention_backward.cpp, rope.cpp and causal_mask.cpp.

#include "cpu/kernels.h"

#ifndef MINIVLM_ISA
#error "setup.py defines MINIVLM_ISA for each build of the CPU kernels"
#endif

extern "C" __attribute__((visibility("default"))) const minivlm::cpu::Kernels* minivlm_cpu_kernels() {
  using namespace minivlm::cpu;
  static const Kernels table{kKernelsVersion, MINIVLM_ISA,    &attention_cpu,  &attention_backward_cpu,
                             &rope_cpu,       &rope_backward_cpu, &causal_mask_cpu};
  return &table;
}
