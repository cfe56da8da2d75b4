// Rotary position embedding on the CPU (RoFormer, Su et al. 2021), in the half-split layout of Llama:
//
//     y = x * cos + rotate_half(x) * sin,    rotate_half(x1, x2) = (-x2, x1)
//
// i.e. for the two halves of each head vector,  y1 = x1 c1 - x2 s1  and  y2 = x2 c2 + x1 s2.
// One pass over x: each (batch, head, position) row of D numbers is read once and written once.
//
// The gradient is the same kernel run "inverse": rope is linear in x, and its transpose maps a gradient
// g to  dx1 = g1 c1 + g2 s2,  dx2 = g2 c2 - g1 s1,  which is the forward formula with the sin halves
// swapped and negated.

#include "common.h"
#include "cpu/kernels.h"

namespace minivlm::cpu {
namespace {

template <typename scalar_t, typename acc_t>
void rope_rows(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& out, bool inverse) {
  using Vec = Vectorized<acc_t>;
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3), half = D / 2;
  const int64_t xs_b = x.stride(0), xs_h = x.stride(1), xs_t = x.stride(2);
  // cos and sin arrive as contiguous (B or 1, T, D) tensors of acc_t; cs_b is 0 when shared by the batch.
  const int64_t cs_b = cos.size(0) == 1 ? 0 : T * D;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const acc_t* cp = cos.const_data_ptr<acc_t>();
  const acc_t* sp = sin.const_data_ptr<acc_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  // Forward: y1 uses s1 with a minus, y2 uses s2 with a plus. Inverse: y1 uses s2 with a plus, y2 uses
  // s1 with a minus. `sign` and the two half offsets express both.
  const acc_t sign = inverse ? acc_t(-1) : acc_t(1);
  const int64_t s_first = inverse ? half : 0, s_second = inverse ? 0 : half;

  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1));
  at::parallel_for(0, B * H * T, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> xbuf, ybuf;  // rows converted to acc_t (only for bfloat16/float16 input)
    if constexpr (!std::is_same_v<scalar_t, acc_t>) { xbuf.resize(D); ybuf.resize(D); }
    for (int64_t row = begin; row < end; ++row) {
      const int64_t t = row % T, h = (row / T) % H, b = row / (T * H);
      const scalar_t* xr_in = xp + b * xs_b + h * xs_h + t * xs_t;
      scalar_t* yr_out = op + row * D;
      const acc_t* c = cp + b * cs_b + t * D;
      const acc_t* s = sp + b * cs_b + t * D;
      const acc_t* xr;
      acc_t* yr;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        xr = xr_in; yr = yr_out;
      } else {
        convert(xr_in, xbuf.data(), D);
        xr = xbuf.data(); yr = ybuf.data();
      }
      const Vec vsign(sign);
      int64_t d = 0;
      for (; d + Vec::size() <= half; d += Vec::size()) {
        Vec x1 = Vec::loadu(xr + d), x2 = Vec::loadu(xr + half + d);
        Vec c1 = Vec::loadu(c + d), c2 = Vec::loadu(c + half + d);
        Vec sa = Vec::loadu(s + s_first + d), sb = Vec::loadu(s + s_second + d);
        (x1 * c1 - vsign * x2 * sa).store(yr + d);      // y1 = x1 c1 - x2 s1
        (x2 * c2 + vsign * x1 * sb).store(yr + half + d);  // y2 = x2 c2 + x1 s2
      }
      for (; d < half; ++d) {  // the tail that does not fill a vector register
        const acc_t x1 = xr[d], x2 = xr[half + d];
        yr[d] = x1 * c[d] - sign * x2 * s[s_first + d];
        yr[half + d] = x2 * c[half + d] + sign * x1 * s[s_second + d];
      }
      if constexpr (!std::is_same_v<scalar_t, acc_t>) convert(yr, yr_out, D);
    }
  });
}

at::Tensor rope_impl(const at::Tensor& x_in, const at::Tensor& cos_in, const at::Tensor& sin_in, bool inverse) {
  TORCH_CHECK(x_in.dim() == 4 && x_in.size(3) % 2 == 0, "rope: x must be (B, H, T, D) with D even, got ",
              x_in.sizes());
  TORCH_CHECK(cos_in.sizes() == sin_in.sizes(), "rope: cos and sin must have the same shape");
  const at::ScalarType acc = acc_type(x_in.scalar_type());
  // The last dimension must be unit-stride for vector loads; a view with another layout is copied once.
  at::Tensor x = x_in.stride(3) == 1 ? x_in : x_in.contiguous();
  // cos/sin are small (T x D per batch row): bring them to acc_t, contiguous, as (B or 1, T, D).
  at::Tensor cos = cos_in.to(acc).contiguous(), sin = sin_in.to(acc).contiguous();
  if (cos.dim() == 2) { cos = cos.unsqueeze(0); sin = sin.unsqueeze(0); }
  TORCH_CHECK(cos.size(1) == x.size(2) && cos.size(2) == x.size(3) &&
                  (cos.size(0) == 1 || cos.size(0) == x.size(0)),
              "rope: cos/sin of shape ", cos_in.sizes(), " do not match x of shape ", x_in.sizes());
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "minivlm_rope", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    rope_rows<scalar_t, acc_t>(x, cos, sin, out, inverse);
  });
  return out;
}

}  // namespace

at::Tensor rope_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return rope_impl(x, cos, sin, /*inverse=*/false);
}

at::Tensor rope_backward_cpu(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin) {
  return rope_impl(grad, cos, sin, /*inverse=*/true);
}

}  // namespace minivlm::cpu
