// The attention forward pass for decoding, T = 1 (one new token per sequence), split over the keys.
//
// A single query row cannot fill a GPU by itself, and decoding reads all of K and V to produce one row per
// head: it is bound by memory bandwidth. So the S keys are split into chunks handled by different blocks
// ("split-K", as in FlashDecoding), each streaming its keys once, in 16-byte loads:
//   * block (split, (b, kv head), row chunk) takes the keys of its split and up to kBr query heads of the
//     kv head's group as its rows, so the group shares one read of K and V;
//   * a key row of D values is read by a "segment" of D / kPack lanes, kPack = 16 bytes of elements per
//     lane; a warp reads 32 / segment keys per step;
//   * the split is one key tile (split_len keys, scores in shared memory), so within a block the steps of
//     FlashAttention-2's Algorithm 1 (Dao, 2023) run once, without rescaling: pass 1 computes S = scale *
//     q K^T + mask (line 8), pass 2 each row's m, P = exp(S - m) and l = rowsum(P) (line 9), pass 3
//     O = P V (line 10); the unnormalised partial (m, l, O) goes to a workspace.
// A second small kernel merges the splits with the online softmax's rescaling (lines 9-10 across splits),
// then normalises and saves m and log(l) (lines 12-13).

#include "attention.cuh"

namespace minivlm::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kBr = 4;  // query rows per block: up to 4 query heads of one group (T = 1)

template <typename scalar_t>
__global__ void __launch_bounds__(kWarps * 32)
    attention_decode_split(const AttentionParams<scalar_t> p, int split_len, int seg, acc_type<scalar_t>* part_o,
                           acc_type<scalar_t>* part_ml) {
  using acc_t = acc_type<scalar_t>;
  constexpr int kPack = 16 / sizeof(scalar_t);  // elements per 16-byte load
  using Vec = Pack<scalar_t, kPack>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* scores = reinterpret_cast<acc_t*>(smem_raw);  // (kBr, split_len) scores S, then P

  const int D = p.D, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int split = blockIdx.x, n_split = gridDim.x;
  const int b = blockIdx.y / p.Hkv, kvh = blockIdx.y % p.Hkv;
  const int h0 = kvh * p.group + blockIdx.z * kBr;  // first query head of this block
  const int rows = min(kBr, p.group - int(blockIdx.z) * kBr);
  const int k_begin = p.first_key(0), k_end = p.last_key(0) + 1;
  const int j0 = k_begin + split * split_len, n = max(0, min(split_len, k_end - j0));

  // The lane's place: segment `sidx` of the warp reads one key, and the lane its 16-byte piece `piece`.
  const int per_warp = 32 / seg, sidx = lane / seg, piece = lane % seg;
  const bool active = piece * kPack < D;
  const scalar_t* K = p.k + b * p.ks_b + kvh * p.ks_h + piece * kPack;
  const scalar_t* V = p.v + b * p.vs_b + kvh * p.vs_h + piece * kPack;

  // This lane's piece of each query row, in acc_t.
  acc_t q[kBr][kPack];
#pragma unroll
  for (int r = 0; r < kBr; ++r)
#pragma unroll
    for (int e = 0; e < kPack; ++e)
      q[r][e] = (r < rows && active) ? static_cast<acc_t>(p.q[b * p.qs_b + (h0 + r) * p.qs_h + piece * kPack + e])
                                     : acc_t(0);

  // Pass 1 (line 8): S[r][j] = scale * q_r . k_j (+ mask). Each segment reduces its lanes' partial dot
  // products.
  const int step = kWarps * per_warp;
  for (int j = warp * per_warp + sidx; j - sidx < n; j += step) {
    Vec kv{};
    if (active && j < n) kv = *reinterpret_cast<const Vec*>(K + int64_t(j0 + j) * p.ks_s);
#pragma unroll
    for (int r = 0; r < kBr; ++r) {
      acc_t dot = acc_t(0);
#pragma unroll
      for (int e = 0; e < kPack; ++e) dot += q[r][e] * static_cast<acc_t>(kv.v[e]);
      for (int offset = seg / 2; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
      if (piece == 0 && j < n && r < rows) {
        acc_t x = p.scale * dot;
        if (p.mask != nullptr) x += p.mask_at(b, h0 + r, 0, j0 + j);
        scores[r * split_len + j] = x;
      }
    }
  }
  __syncthreads();

  // Pass 2 (line 9): for row r (warp r): m = max_j S, P = exp(S - m) written over S, l = sum_j P.
  __shared__ acc_t row_m[kBr], row_l[kBr];
  if (warp < rows) {
    acc_t* s = scores + warp * split_len;
    acc_t mx = neg_inf<acc_t>();
    for (int j = lane; j < n; j += 32) mx = max(mx, s[j]);
    mx = warp_max(mx);
    acc_t sum = acc_t(0);
    for (int j = lane; j < n; j += 32) {
      const acc_t pj = mx == neg_inf<acc_t>() ? acc_t(0) : exp_acc(s[j] - mx);
      s[j] = pj;
      sum += pj;
    }
    sum = warp_sum(sum);
    if (lane == 0) { row_m[warp] = mx; row_l[warp] = sum; }
  }
  __syncthreads();

  // Pass 3 (line 10): O_r = sum_j P[r][j] v_j, each lane over its piece of the dims, for the keys of its
  // segment.
  acc_t o[kBr][kPack];
#pragma unroll
  for (int r = 0; r < kBr; ++r)
#pragma unroll
    for (int e = 0; e < kPack; ++e) o[r][e] = acc_t(0);
  for (int j = warp * per_warp + sidx; j < n; j += step) {
    Vec vv{};
    if (active) vv = *reinterpret_cast<const Vec*>(V + int64_t(j0 + j) * p.vs_s);
#pragma unroll
    for (int r = 0; r < kBr; ++r) {
      const acc_t pj = r < rows ? scores[r * split_len + j] : acc_t(0);
#pragma unroll
      for (int e = 0; e < kPack; ++e) o[r][e] += pj * static_cast<acc_t>(vv.v[e]);
    }
  }
  // Sum the segments of the warp (lanes piece, piece + seg, ...), then the warps through shared memory.
#pragma unroll
  for (int r = 0; r < kBr; ++r)
#pragma unroll
    for (int e = 0; e < kPack; ++e)
      for (int offset = seg; offset < 32; offset *= 2) o[r][e] += __shfl_xor_sync(0xffffffffu, o[r][e], offset);
  __syncthreads();  // the scores are read no more: reuse their memory for the warps' partial outputs
  acc_t* red = scores;  // (kWarps, rows, D)
  if (sidx == 0 && active) {
#pragma unroll
    for (int r = 0; r < kBr; ++r)
#pragma unroll
      for (int e = 0; e < kPack; ++e) red[(warp * kBr + r) * D + piece * kPack + e] = o[r][e];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < rows * D; e += blockDim.x) {
    const int r = e / D, d = e % D;
    acc_t sum = acc_t(0);
    for (int w = 0; w < kWarps; ++w) sum += red[(w * kBr + r) * D + d];
    const int64_t row = int64_t(b) * p.H + h0 + r;  // (b, h) with T = 1
    part_o[(row * n_split + split) * D + d] = sum;
  }
  if (threadIdx.x < rows) {
    const int64_t row = int64_t(b) * p.H + h0 + threadIdx.x;
    part_ml[(row * n_split + split) * 2] = row_m[threadIdx.x];
    part_ml[(row * n_split + split) * 2 + 1] = row_l[threadIdx.x];
  }
}

// Merge the splits of one (b, h) row: m = max_s m_s, l = sum_s exp(m_s - m) l_s,
// out = sum_s exp(m_s - m) O_s / l, the same rescaling the online softmax applies block by block.
template <typename scalar_t>
__global__ void attention_decode_merge(const AttentionParams<scalar_t> p, int n_split,
                                       const acc_type<scalar_t>* part_o, const acc_type<scalar_t>* part_ml) {
  using acc_t = acc_type<scalar_t>;
  const int64_t row = blockIdx.x;  // b * H + h
  const acc_t* ml = part_ml + row * n_split * 2;
  acc_t m = neg_inf<acc_t>();
  for (int s = 0; s < n_split; ++s) m = max(m, ml[2 * s]);
  acc_t l = acc_t(0);
  if (m != neg_inf<acc_t>())
    for (int s = 0; s < n_split; ++s) l += exp_acc(ml[2 * s] - m) * ml[2 * s + 1];
  const bool dead = l == acc_t(0);
  for (int d = threadIdx.x; d < p.D; d += blockDim.x) {
    acc_t o = acc_t(0);
    if (!dead)
      for (int s = 0; s < n_split; ++s) o += exp_acc(ml[2 * s] - m) * part_o[(row * n_split + s) * p.D + d];
    p.out[row * p.D + d] = static_cast<scalar_t>(dead ? acc_t(0) : o / l);  // line 12
  }
  if (threadIdx.x == 0) {  // line 13, as m and log(l)
    p.row_max[row] = dead ? neg_inf<acc_t>() : m;
    p.log_sum[row] = dead ? acc_t(0) : log_acc(l);
  }
}

template <typename scalar_t>
void launch_decode(const AttentionParams<scalar_t>& p, const at::Tensor& q, int device) {
  using acc_t = acc_type<scalar_t>;
  check_grid_rows(p.B, p.Hkv, "attention (decode)");  // gridDim.y = B x Hkv; the merge's B x H is gridDim.x
  constexpr int kPack = 16 / sizeof(scalar_t);
  int seg = 1;
  while (seg * kPack < p.D) seg *= 2;  // lanes per key row, a power of two so shuffles stay inside it
  const int k_begin = p.first_key(0), n_keys = p.last_key(0) + 1 - k_begin;
  const int row_chunks = static_cast<int>(ceil_div(p.group, kBr));
  // Enough splits for about four blocks per multiprocessor, each at least 64 keys, and a score buffer
  // that fits the shared memory.
  const int base_blocks = p.B * p.Hkv * row_chunks;
  int n_split = static_cast<int>(std::min<int64_t>(ceil_div(4 * sm_count(device), base_blocks), ceil_div(n_keys, 64)));
  n_split = std::max(n_split, 1);
  int split_len = static_cast<int>(ceil_div(n_keys, n_split));
  const int max_len = static_cast<int>(32 * 1024 / (kBr * sizeof(acc_t)));
  if (split_len > max_len) {
    split_len = max_len;
    n_split = static_cast<int>(ceil_div(n_keys, split_len));
  }
  const size_t smem = sizeof(acc_t) * std::max<size_t>(size_t(kBr) * split_len, size_t(kWarps) * kBr * p.D);
  auto kernel = attention_decode_split<scalar_t>;
  allow_shared_memory(kernel, smem, device, "attention (decode)");
  auto opts = q.options().dtype(acc_dtype(q.scalar_type()));
  at::Tensor part_o = at::empty({int64_t(p.B) * p.H * n_split * p.D}, opts);
  at::Tensor part_ml = at::empty({int64_t(p.B) * p.H * n_split * 2}, opts);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(n_split, p.B * p.Hkv, row_chunks);
  kernel<<<grid, kWarps * 32, smem, stream>>>(p, split_len, seg, part_o.mutable_data_ptr<acc_t>(),
                                              part_ml.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  attention_decode_merge<scalar_t><<<p.B * p.H, 128, 0, stream>>>(p, n_split, part_o.const_data_ptr<acc_t>(),
                                                                  part_ml.const_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void attention_decode(const AttentionParams<double>& p, const at::Tensor& q, int device) {
  launch_decode(p, q, device);
}
void attention_decode(const AttentionParams<float>& p, const at::Tensor& q, int device) {
  launch_decode(p, q, device);
}
void attention_decode(const AttentionParams<at::BFloat16>& p, const at::Tensor& q, int device) {
  launch_decode(p, q, device);
}
void attention_decode(const AttentionParams<at::Half>& p, const at::Tensor& q, int device) {
  launch_decode(p, q, device);
}

}  // namespace minivlm::cuda
