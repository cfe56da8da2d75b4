// The CPU side of minivlm._C: it registers the CPU kernels of every op and forwards each call to the
// kernels of one instruction set, loaded at run time (see cpu/kernels.h for why there are three).
//
// Which one: the best this CPU runs (AVX-512, else AVX2 + FMA, else the plain build), unless the
// environment variable MINIVLM_CPU_ISA names a lower one. torch.ops.minivlm.set_cpu_isa switches
// between them in a running process (the tests run every kernel on every ISA the machine has);
// torch.ops.minivlm.cpu_isa() says which is in use and cpu_isas() which this CPU can run.

#include <dlfcn.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "cpu/kernels.h"

namespace minivlm::cpu {
namespace {

const std::vector<std::string> kIsas = {"avx512", "avx2", "default"};  // best first

// Does this CPU (and its operating system, which must save the wide registers) have every instruction
// the build for `isa` uses? The flags are setup.py's ISA_FLAGS.
bool cpu_runs(const std::string& isa) {
#if defined(__x86_64__)
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (isa == "avx2")
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
  return isa == "default";
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

std::vector<std::string> runnable() {
  std::vector<std::string> out;
  for (const auto& isa : kIsas)
    if (cpu_runs(isa)) out.push_back(isa);
  return out;
}

// The _cpu_<isa> library sits next to this one and shares its file-name suffix (_C.cpython-311-...so).
std::string library_path(const std::string& isa) {
  Dl_info info;
  TORCH_CHECK(dladdr(reinterpret_cast<void*>(&cpu_runs), &info) && info.dli_fname,
              "minivlm: cannot find the path of minivlm._C");
  const std::string self = info.dli_fname;
  const size_t slash = self.rfind('/') + 1;  // 0 when there is no slash
  const size_t suffix = self.find("_C", slash) + 2;
  return self.substr(0, slash) + "_cpu_" + isa + self.substr(suffix);
}

std::mutex load_mutex;
std::atomic<const Kernels*> active{nullptr};
const Kernels* loaded[3] = {nullptr, nullptr, nullptr};  // by position in kIsas; never unloaded

const Kernels* load(const std::string& isa, const char* asked_by) {
  size_t i = 0;
  while (i < kIsas.size() && kIsas[i] != isa) ++i;
  TORCH_CHECK_VALUE(i < kIsas.size(), asked_by, " must be one of ", joined(kIsas), ", got '", isa, "'");
  TORCH_CHECK_VALUE(cpu_runs(isa), asked_by, " asks for ", isa, " but this CPU lacks its instructions; it runs: ",
                    joined(runnable()));
  if (loaded[i] == nullptr) {
    const std::string path = library_path(isa);
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    TORCH_CHECK(handle, "minivlm: cannot load the ", isa, " CPU kernels (", dlerror(),
                "); rebuild with pip install --no-build-isolation -e .");
    auto get = reinterpret_cast<const Kernels* (*)()>(dlsym(handle, "minivlm_cpu_kernels"));
    TORCH_CHECK(get, "minivlm: ", path, " has no minivlm_cpu_kernels()");
    const Kernels* table = get();
    TORCH_CHECK(table->version == kKernelsVersion && isa == table->isa, "minivlm: ", path,
                " is from another build of minivlm; rebuild with pip install --no-build-isolation -e .");
    loaded[i] = table;
  }
  return loaded[i];
}

// The kernels in use; the first call chooses them.
const Kernels& kernels() {
  const Kernels* k = active.load(std::memory_order_acquire);
  if (k != nullptr) return *k;
  std::lock_guard<std::mutex> lock(load_mutex);
  if (active.load() == nullptr) {
    const char* forced = std::getenv("MINIVLM_CPU_ISA");
    active.store(forced && *forced ? load(forced, "MINIVLM_CPU_ISA") : load(runnable().front(), "the CPU"));
  }
  return *active.load();
}

// The ops' CPU kernels: forward to the table.
std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                             const std::optional<at::Tensor>& mask, bool is_causal, double scale,
                                             std::optional<int64_t> window) {
  return kernels().attention(q, k, v, mask, is_causal, scale, window);
}
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& mask, const at::Tensor& out, const at::Tensor& stats, bool is_causal,
    double scale, std::optional<int64_t> window, bool mask_grad) {
  return kernels().attention_backward(grad_out, q, k, v, mask, out, stats, is_causal, scale, window, mask_grad);
}
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return kernels().rope(x, cos, sin);
}
at::Tensor rope_backward(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin) {
  return kernels().rope_backward(grad, cos, sin);
}
at::Tensor causal_mask(const at::Tensor& padding_mask, int64_t q_len, at::ScalarType dtype,
                       std::optional<int64_t> window) {
  return kernels().causal_mask(padding_mask, q_len, dtype, window);
}

}  // namespace

std::string cpu_isa() { return kernels().isa; }

std::string set_cpu_isa(std::string isa) {
  const std::string previous = kernels().isa;
  std::lock_guard<std::mutex> lock(load_mutex);
  active.store(load(isa, "set_cpu_isa: isa"), std::memory_order_release);
  return previous;
}

std::vector<std::string> cpu_isas() { return runnable(); }

TORCH_LIBRARY_IMPL(minivlm, CPU, m) {
  m.impl("attention", &attention);
  m.impl("attention_backward", &attention_backward);
  m.impl("rope", &rope);
  m.impl("rope_backward", &rope_backward);
  m.impl("causal_mask", &causal_mask);
}

}  // namespace minivlm::cpu
