// Rotary position embedding on the GPU (RoFormer, Su et al. 2021), in the half-split layout of Llama:
//
//     y = x * cos + rotate_half(x) * sin,    rotate_half(x1, x2) = (-x2, x1)
//
// i.e. y1 = x1 c1 - x2 s1 and y2 = x2 c2 + x1 s2 on the two halves of each head vector. The backward
// pass is the same kernel run "inverse" (see csrc/cpu/rope.cpp): dx1 = g1 c1 + g2 s2, dx2 = g2 c2 - g1 s1.
//
// rope moves bytes and does almost no arithmetic, so the kernel is built around memory traffic:
//   * one pass: every element of x is read once and every element of the output written once;
//   * vectorized: a thread reads and writes 16 bytes at a time (8 bfloat16 values) from each half;
//   * the cos/sin tables are shared by all heads, so a thread loads its slice of them once into
//     registers and then walks over the H heads of its (batch, position), re-using them H times.
// Consecutive threads take consecutive 16-byte pieces of consecutive positions, so a warp's loads of
// one head are one contiguous stretch of memory (coalesced).

#include "common.cuh"

namespace minivlm::cuda {
namespace {

template <typename scalar_t, int V>
__global__ void rope_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
                            const acc_type<scalar_t>* __restrict__ cos, const acc_type<scalar_t>* __restrict__ sin,
                            int64_t B, int64_t H, int64_t T, int64_t D, int64_t xs_b, int64_t xs_h, int64_t xs_t,
                            int64_t cs_b, bool inverse) {
  using acc_t = acc_type<scalar_t>;
  using P = Pack<scalar_t, V>;
  const int64_t half = D / 2, n_vec = half / V;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // one (b, t, vector) per thread
  if (idx >= B * T * n_vec) return;
  const int64_t d = (idx % n_vec) * V, t = (idx / n_vec) % T, b = idx / (n_vec * T);

  // This thread's slice of the tables: c1, c2 (the cos halves) and the two sin halves. Forward: y1
  // uses s1 with a minus, y2 uses s2 with a plus; inverse: y1 uses s2 with a plus, y2 s1 with a minus.
  const acc_t* c = cos + b * cs_b + t * D;
  const acc_t* s = sin + b * cs_b + t * D;
  const acc_t sign = inverse ? acc_t(-1) : acc_t(1);
  const int64_t s_first = inverse ? half : 0, s_second = inverse ? 0 : half;
  acc_t c1[V], c2[V], sa[V], sb[V];
#pragma unroll
  for (int i = 0; i < V; ++i) {
    c1[i] = c[d + i];
    c2[i] = c[half + d + i];
    sa[i] = s[s_first + d + i];
    sb[i] = s[s_second + d + i];
  }

#pragma unroll 4
  for (int64_t h = 0; h < H; ++h) {
    const scalar_t* xr = x + b * xs_b + h * xs_h + t * xs_t;
    scalar_t* yr = out + ((b * H + h) * T + t) * D;
    const P x1 = *reinterpret_cast<const P*>(xr + d);         // 16-byte loads of both halves
    const P x2 = *reinterpret_cast<const P*>(xr + half + d);
    P y1, y2;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const acc_t a = static_cast<acc_t>(x1.v[i]), bb = static_cast<acc_t>(x2.v[i]);
      y1.v[i] = static_cast<scalar_t>(a * c1[i] - sign * bb * sa[i]);   // y1 = x1 c1 - x2 s1
      y2.v[i] = static_cast<scalar_t>(bb * c2[i] + sign * a * sb[i]);   // y2 = x2 c2 + x1 s2
    }
    *reinterpret_cast<P*>(yr + d) = y1;                       // 16-byte stores
    *reinterpret_cast<P*>(yr + half + d) = y2;
  }
}

template <typename scalar_t, int V>
void launch_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& out, bool inverse) {
  using acc_t = acc_type<scalar_t>;
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3);
  const int64_t items = B * T * (D / 2 / V);
  const int threads = 256;
  const int64_t blocks = ceil_div(items, threads);
  rope_kernel<scalar_t, V><<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), cos.const_data_ptr<acc_t>(),
      sin.const_data_ptr<acc_t>(), B, H, T, D, x.stride(0), x.stride(1), x.stride(2),
      cos.size(0) == 1 ? 0 : T * D, inverse);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor rope_impl(const at::Tensor& x_in, const at::Tensor& cos_in, const at::Tensor& sin_in, bool inverse) {
  TORCH_CHECK(x_in.dim() == 4 && x_in.size(3) % 2 == 0, "rope: x must be (B, H, T, D) with D even, got ",
              x_in.sizes());
  TORCH_CHECK(cos_in.sizes() == sin_in.sizes(), "rope: cos and sin must have the same shape");
  TORCH_CHECK(cos_in.device() == x_in.device() && sin_in.device() == x_in.device(),
              "rope: x, cos and sin must be on the same device");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::ScalarType acc = acc_dtype(x_in.scalar_type());
  at::Tensor x = x_in.stride(3) == 1 ? x_in : x_in.contiguous();
  // cos/sin are small (T x D per batch row): bring them to the accumulation type, as (B or 1, T, D).
  at::Tensor cos = cos_in.to(acc).contiguous(), sin = sin_in.to(acc).contiguous();
  if (cos.dim() == 2) { cos = cos.unsqueeze(0); sin = sin.unsqueeze(0); }
  TORCH_CHECK(cos.size(1) == x.size(2) && cos.size(2) == x.size(3) && (cos.size(0) == 1 || cos.size(0) == x.size(0)),
              "rope: cos/sin of shape ", cos_in.sizes(), " do not match x of shape ", x_in.sizes());
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "minivlm_rope_cuda", [&] {
    // 16-byte vectors where every half-row starts on a 16-byte boundary; single elements otherwise.
    constexpr int V = 16 / sizeof(scalar_t);
    const int64_t half = x.size(3) / 2;
    const bool vec = half % V == 0 && x.stride(0) % V == 0 && x.stride(1) % V == 0 && x.stride(2) % V == 0 &&
                     aligned16(x.const_data_ptr()) && aligned16(out.const_data_ptr());
    if (vec) {
      launch_rope<scalar_t, V>(x, cos, sin, out, inverse);
    } else {
      launch_rope<scalar_t, 1>(x, cos, sin, out, inverse);
    }
  });
  return out;
}

at::Tensor rope_cuda(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return rope_impl(x, cos, sin, /*inverse=*/false);
}

at::Tensor rope_backward_cuda(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin) {
  return rope_impl(grad, cos, sin, /*inverse=*/true);
}

}  // namespace

TORCH_LIBRARY_IMPL(minivlm, CUDA, m) {
  m.impl("rope", &rope_cuda);
  m.impl("rope_backward", &rope_backward_cuda);
}

}  // namespace minivlm::cuda
