// Attention on the GPU, in the manner of FlashAttention-2 (Dao, 2023): the (Lq x Lk) score matrix is
// never stored. The math is the CPU kernel's (csrc/cpu/attention.cpp, docs/kernels.md): for a block of
// Br query rows, walk over the keys in tiles of Bc, keeping per row the running maximum m, the running
// sum l and the unnormalised output O:
//
//     S     = scale * Q K_j^T + mask            m_new = max(m, rowmax(S))        P = exp(S - m_new)
//     l     = exp(m - m_new) * l + rowsum(P)    O     = exp(m - m_new) * O + P V_j
//
// and at the end out = O / l, saving m and log(l) apart for the backward pass (a row that sees no key
// outputs 0 and saves m = -inf, log(l) = 0).
//
// This file holds three kernels and the entry points that choose between them:
//   * attention_forward_plain: every dtype, any head size up to 256, CUDA cores, math in float32
//     (float64 for float64). One block = Br = 16 query rows of one (batch, head); each of its 4 warps
//     owns 4 rows. K and V tiles of Bc = 32 keys are staged in shared memory; in the score step lane j
//     of a warp computes the score of key j, in the P V step lane t owns the output dimensions t,
//     t + 32, ... . Used for float32/float64, and for 16-bit inputs the tensor-core kernel cannot take.
//   * attention_forward_mma (attention_mma.cu): bfloat16/float16 prefill on the tensor cores.
//   * attention_decode_*: Lq = 1 (one new token per sequence). A single query row cannot fill a GPU by
//     itself, so the keys are split into chunks handled by different blocks ("split-K", as in
//     FlashDecoding), each producing a partial (m, l, O); a second small kernel merges the partials
//     with the same rescaling as the online softmax.
// and the backward pass, attention_backward_plain, which recomputes P from the saved m and log(l).
//
// Every kernel runs on the current CUDA stream of the inputs' device, and every launch is checked.

#include "attention.cuh"

namespace minivlm::cuda {
namespace {

// ---------------------------------------------------------------------------------------------------
// Forward, plain path
// ---------------------------------------------------------------------------------------------------

constexpr int kPlainWarps = 4;
constexpr int kPlainRowsPerWarp = 4;
constexpr int kPlainBr = kPlainWarps * kPlainRowsPerWarp;  // 16 query rows per block
constexpr int kPlainBc = 32;                                // keys per tile: one per lane
constexpr int kMaxSlots = 8;                                // output dims per lane: D <= 8 * 32 = 256
constexpr int kMaxHeadDim = 32 * kMaxSlots;

// Shared memory of the plain forward kernel: Q (Br x D), K (Bc x ldk), V (Bc x D), in acc_t. K's rows are
// padded to an odd length so that the 32 lanes, each reading its own key row at the same column, hit
// 32 different banks.
__host__ __device__ inline int padded(int D) { return D | 1; }
template <typename acc_t>
size_t plain_forward_smem(int D) {
  return sizeof(acc_t) * (kPlainBr * D + kPlainBc * padded(D) + kPlainBc * D);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kPlainWarps * 32) attention_forward_plain(const AttentionParams<scalar_t> p) {
  using acc_t = acc_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int D = p.D, ldk = padded(D);
  acc_t* Qs = reinterpret_cast<acc_t*>(smem_raw);  // (Br, D)
  acc_t* Ks = Qs + kPlainBr * D;                   // (Bc, ldk)
  acc_t* Vs = Ks + kPlainBc * ldk;                 // (Bc, D)

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.y / p.Hq, h = blockIdx.y % p.Hq, kvh = h / p.group;  // GQA: kv head by index
  const int q0 = blockIdx.x * kPlainBr, rows = min(kPlainBr, p.Lq - q0);
  const scalar_t* Q = p.q + b * p.qs_b + h * p.qs_h;
  const scalar_t* K = p.k + b * p.ks_b + kvh * p.ks_h;
  const scalar_t* V = p.v + b * p.vs_b + kvh * p.vs_h;

  // Q_i: the block's query rows, converted to acc_t once (rows past Lq are 0).
  for (int e = threadIdx.x; e < kPlainBr * D; e += blockDim.x) {
    const int r = e / D, d = e % D;
    Qs[e] = r < rows ? static_cast<acc_t>(Q[(q0 + r) * p.qs_l + d]) : acc_t(0);
  }

  // Per row of this warp: m, l and O (this lane's dims lane, lane + 32, ...), in registers.
  acc_t m[kPlainRowsPerWarp], l[kPlainRowsPerWarp], O[kPlainRowsPerWarp][kMaxSlots];
#pragma unroll
  for (int r = 0; r < kPlainRowsPerWarp; ++r) {
    m[r] = neg_inf<acc_t>();
    l[r] = acc_t(0);
#pragma unroll
    for (int t = 0; t < kMaxSlots; ++t) O[r][t] = acc_t(0);
  }

  // The keys some row of the block may see; tiles outside [k_begin, k_end) are skipped entirely
  // (causal: about half of them; a window: all but O(window)).
  const int k_begin = p.first_key(q0);
  const int k_end = max(k_begin, min(p.Lk, p.last_key(q0 + rows - 1) + 1));

  for (int kb = k_begin; kb < k_end; kb += kPlainBc) {
    // Stage K_j and V_j in shared memory (keys past k_end are 0 and never used).
    __syncthreads();  // the previous tile is no longer read
    for (int e = threadIdx.x; e < kPlainBc * D; e += blockDim.x) {
      const int j = e / D, d = e % D, key = kb + j;
      const bool valid = key < k_end;
      Ks[j * ldk + d] = valid ? static_cast<acc_t>(K[key * p.ks_l + d]) : acc_t(0);
      Vs[j * D + d] = valid ? static_cast<acc_t>(V[key * p.vs_l + d]) : acc_t(0);
    }
    __syncthreads();

    // S = scale * Q K_j^T (+ mask): lane j holds the score of key kb + j for each of the warp's rows.
    const int key = kb + lane;
    acc_t s[kPlainRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kPlainRowsPerWarp; ++r) s[r] = acc_t(0);
    for (int d = 0; d < D; ++d) {
      const acc_t kd = Ks[lane * ldk + d];
#pragma unroll
      for (int r = 0; r < kPlainRowsPerWarp; ++r) s[r] += Qs[(warp * kPlainRowsPerWarp + r) * D + d] * kd;
    }

    acc_t P[kPlainRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kPlainRowsPerWarp; ++r) {
      const int i = q0 + warp * kPlainRowsPerWarp + r;
      const bool visible = i < p.Lq && key < k_end && key >= p.first_key(i) && key <= p.last_key(i);
      acc_t x = neg_inf<acc_t>();
      if (visible) {
        x = p.scale * s[r];
        if (p.mask != nullptr) x += p.mask_at(b, h, i, key);
      }
      // m_new = max(m, rowmax(S)); P = exp(S - m_new); l = exp(m - m_new) l + rowsum(P); O *= exp(m - m_new)
      const acc_t m_new = max(m[r], warp_max(x));
      if (m_new == neg_inf<acc_t>()) {  // nothing visible to this row yet: P = 0, O and l stay 0
        P[r] = acc_t(0);
        continue;
      }
      P[r] = exp_acc(x - m_new);
      const acc_t alpha = exp_acc(m[r] - m_new);  // 0 on the first visible tile (m = -inf)
      l[r] = alpha * l[r] + warp_sum(P[r]);
      m[r] = m_new;
#pragma unroll
      for (int t = 0; t < kMaxSlots; ++t) O[r][t] *= alpha;
    }

    // O += P V_j: lane t adds sum_j P[r][j] V[j][t + 32 s] for its dims; P[r][j] comes from lane j.
    const int n = min(kPlainBc, k_end - kb);
    for (int j = 0; j < n; ++j) {
      acc_t pj[kPlainRowsPerWarp];
#pragma unroll
      for (int r = 0; r < kPlainRowsPerWarp; ++r) pj[r] = __shfl_sync(0xffffffffu, P[r], j);
#pragma unroll
      for (int t = 0; t < kMaxSlots; ++t) {
        const int d = lane + 32 * t;
        if (d < D) {
          const acc_t vd = Vs[j * D + d];
#pragma unroll
          for (int r = 0; r < kPlainRowsPerWarp; ++r) O[r][t] += pj[r] * vd;
        }
      }
    }
  }

  // out = O / l; a row that saw nothing gives 0 with m = -inf and log(l) = 0.
#pragma unroll
  for (int r = 0; r < kPlainRowsPerWarp; ++r) {
    const int i = q0 + warp * kPlainRowsPerWarp + r;
    if (i >= p.Lq) continue;
    const int64_t row = (int64_t(b) * p.Hq + h) * p.Lq + i;
    const bool dead = l[r] == acc_t(0);
    const acc_t inv = dead ? acc_t(0) : acc_t(1) / l[r];
#pragma unroll
    for (int t = 0; t < kMaxSlots; ++t) {
      const int d = lane + 32 * t;
      if (d < D) p.out[row * D + d] = static_cast<scalar_t>(O[r][t] * inv);
    }
    if (lane == 0) {
      p.row_max[row] = dead ? neg_inf<acc_t>() : m[r];
      p.log_sum[row] = dead ? acc_t(0) : log_acc(l[r]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Forward, decode path (Lq = 1): split the keys across blocks, then merge
// ---------------------------------------------------------------------------------------------------
//
// Decoding reads all of K and V to produce one row per head: it is bound by memory bandwidth, so the
// kernel is built to stream K and V once, in 16-byte loads, from many blocks at once:
//   * block (split, b, kv head, row chunk) takes the keys of its split and up to kDecodeRows query
//     heads of the kv head's group, so the group shares one read of K and V;
//   * a key row of D values is read by a "segment" of D / V lanes, V = 16 bytes of elements per lane;
//     a warp reads 32 / segment keys per step;
//   * pass 1 writes the scores of the split to shared memory, pass 2 takes each row's max and sum
//     there, pass 3 streams V and accumulates P V; the partial (m, l, O) goes to a workspace.
constexpr int kDecodeWarps = 8;
constexpr int kDecodeRows = 4;

template <typename scalar_t>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    attention_decode_split(const AttentionParams<scalar_t> p, int split_len, int seg, acc_type<scalar_t>* part_o,
                           acc_type<scalar_t>* part_ml) {
  using acc_t = acc_type<scalar_t>;
  constexpr int V = 16 / sizeof(scalar_t);  // elements per 16-byte load
  using Vec = Pack<scalar_t, V>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* S = reinterpret_cast<acc_t*>(smem_raw);  // (kDecodeRows, split_len) scores, then P

  const int D = p.D, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int split = blockIdx.x, n_split = gridDim.x;
  const int b = blockIdx.y / p.Hkv, kvh = blockIdx.y % p.Hkv;
  const int h0 = kvh * p.group + blockIdx.z * kDecodeRows;  // first query head of this block
  const int rows = min(kDecodeRows, p.group - int(blockIdx.z) * kDecodeRows);
  const int k_begin = p.first_key(0), k_end = p.last_key(0) + 1;
  const int j0 = k_begin + split * split_len, n = max(0, min(split_len, k_end - j0));

  // The lane's place: segment `sidx` of the warp reads one key, and the lane its 16-byte piece `piece`.
  const int per_warp = 32 / seg, sidx = lane / seg, piece = lane % seg;
  const bool active = piece * V < D;
  const scalar_t* K = p.k + b * p.ks_b + kvh * p.ks_h + piece * V;
  const scalar_t* Vp = p.v + b * p.vs_b + kvh * p.vs_h + piece * V;

  // This lane's piece of each query row, in acc_t.
  acc_t q[kDecodeRows][V];
#pragma unroll
  for (int r = 0; r < kDecodeRows; ++r)
#pragma unroll
    for (int e = 0; e < V; ++e)
      q[r][e] = (r < rows && active) ? static_cast<acc_t>(p.q[b * p.qs_b + (h0 + r) * p.qs_h + piece * V + e]) : acc_t(0);

  // Pass 1: S[r][j] = scale * q_r . k_j (+ mask). Each segment reduces its lanes' partial dot products.
  const int step = kDecodeWarps * per_warp;
  for (int j = warp * per_warp + sidx; j - sidx < n; j += step) {
    Vec kv{};
    if (active && j < n) kv = *reinterpret_cast<const Vec*>(K + int64_t(j0 + j) * p.ks_l);
#pragma unroll
    for (int r = 0; r < kDecodeRows; ++r) {
      acc_t dot = acc_t(0);
#pragma unroll
      for (int e = 0; e < V; ++e) dot += q[r][e] * static_cast<acc_t>(kv.v[e]);
      for (int offset = seg / 2; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
      if (piece == 0 && j < n && r < rows) {
        acc_t x = p.scale * dot;
        if (p.mask != nullptr) x += p.mask_at(b, h0 + r, 0, j0 + j);
        S[r * split_len + j] = x;
      }
    }
  }
  __syncthreads();

  // Pass 2: for row r (warp r): m = max_j S, P = exp(S - m) written over S, l = sum_j P.
  __shared__ acc_t row_m[kDecodeRows], row_l[kDecodeRows];
  if (warp < rows) {
    acc_t* s = S + warp * split_len;
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

  // Pass 3: O_r = sum_j P[r][j] v_j, each lane over its piece of the dims, for the keys of its segment.
  acc_t o[kDecodeRows][V];
#pragma unroll
  for (int r = 0; r < kDecodeRows; ++r)
#pragma unroll
    for (int e = 0; e < V; ++e) o[r][e] = acc_t(0);
  for (int j = warp * per_warp + sidx; j < n; j += step) {
    Vec vv{};
    if (active) vv = *reinterpret_cast<const Vec*>(Vp + int64_t(j0 + j) * p.vs_l);
#pragma unroll
    for (int r = 0; r < kDecodeRows; ++r) {
      const acc_t pj = r < rows ? S[r * split_len + j] : acc_t(0);
#pragma unroll
      for (int e = 0; e < V; ++e) o[r][e] += pj * static_cast<acc_t>(vv.v[e]);
    }
  }
  // Sum the segments of the warp (lanes piece, piece + seg, ...), then the warps through shared memory.
#pragma unroll
  for (int r = 0; r < kDecodeRows; ++r)
#pragma unroll
    for (int e = 0; e < V; ++e)
      for (int offset = seg; offset < 32; offset *= 2) o[r][e] += __shfl_xor_sync(0xffffffffu, o[r][e], offset);
  __syncthreads();  // S is read no more: reuse it for the warps' partial outputs (kDecodeWarps, rows, D)
  acc_t* red = S;
  if (sidx == 0 && active) {
#pragma unroll
    for (int r = 0; r < kDecodeRows; ++r)
#pragma unroll
      for (int e = 0; e < V; ++e) red[(warp * kDecodeRows + r) * D + piece * V + e] = o[r][e];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < rows * D; e += blockDim.x) {
    const int r = e / D, d = e % D;
    acc_t sum = acc_t(0);
    for (int w = 0; w < kDecodeWarps; ++w) sum += red[(w * kDecodeRows + r) * D + d];
    const int64_t row = int64_t(b) * p.Hq + h0 + r;  // (b, h) with Lq = 1
    part_o[(row * n_split + split) * D + d] = sum;
  }
  if (threadIdx.x < rows) {
    const int64_t row = int64_t(b) * p.Hq + h0 + threadIdx.x;
    part_ml[(row * n_split + split) * 2] = row_m[threadIdx.x];
    part_ml[(row * n_split + split) * 2 + 1] = row_l[threadIdx.x];
  }
}

// Merge the splits of one (b, h) row: M = max_s m_s, L = sum_s exp(m_s - M) l_s,
// out = sum_s exp(m_s - M) O_s / L, the same rescaling the online softmax applies block by block.
template <typename scalar_t>
__global__ void attention_decode_merge(const AttentionParams<scalar_t> p, int n_split,
                                       const acc_type<scalar_t>* part_o, const acc_type<scalar_t>* part_ml) {
  using acc_t = acc_type<scalar_t>;
  const int64_t row = blockIdx.x;  // b * Hq + h
  const acc_t* ml = part_ml + row * n_split * 2;
  acc_t M = neg_inf<acc_t>();
  for (int s = 0; s < n_split; ++s) M = max(M, ml[2 * s]);
  acc_t L = acc_t(0);
  if (M != neg_inf<acc_t>())
    for (int s = 0; s < n_split; ++s) L += exp_acc(ml[2 * s] - M) * ml[2 * s + 1];
  const bool dead = L == acc_t(0);
  for (int d = threadIdx.x; d < p.D; d += blockDim.x) {
    acc_t o = acc_t(0);
    if (!dead)
      for (int s = 0; s < n_split; ++s) o += exp_acc(ml[2 * s] - M) * part_o[(row * n_split + s) * p.D + d];
    p.out[row * p.D + d] = static_cast<scalar_t>(dead ? acc_t(0) : o / L);
  }
  if (threadIdx.x == 0) {
    p.row_max[row] = dead ? neg_inf<acc_t>() : M;
    p.log_sum[row] = dead ? acc_t(0) : log_acc(L);
  }
}

template <typename scalar_t>
void launch_decode(const AttentionParams<scalar_t>& p, const at::Tensor& q, int device) {
  using acc_t = acc_type<scalar_t>;
  constexpr int V = 16 / sizeof(scalar_t);
  int seg = 1;
  while (seg * V < p.D) seg *= 2;  // lanes per key row, a power of two so shuffles stay inside it
  const int k_begin = p.first_key(0), n_keys = p.last_key(0) + 1 - k_begin;
  const int row_chunks = static_cast<int>(ceil_div(p.group, kDecodeRows));
  // Enough splits for about four blocks per multiprocessor, each at least 64 keys, and a score buffer
  // that fits the shared memory.
  const int base_blocks = p.B * p.Hkv * row_chunks;
  int n_split = static_cast<int>(std::min<int64_t>(ceil_div(4 * sm_count(device), base_blocks), ceil_div(n_keys, 64)));
  n_split = std::max(n_split, 1);
  int split_len = static_cast<int>(ceil_div(n_keys, n_split));
  const int max_len = static_cast<int>(32 * 1024 / (kDecodeRows * sizeof(acc_t)));
  if (split_len > max_len) {
    split_len = max_len;
    n_split = static_cast<int>(ceil_div(n_keys, split_len));
  }
  const size_t smem = sizeof(acc_t) * std::max<size_t>(size_t(kDecodeRows) * split_len,
                                                       size_t(kDecodeWarps) * kDecodeRows * p.D);
  auto kernel = attention_decode_split<scalar_t>;
  allow_shared_memory(kernel, smem, device, "attention (decode)");
  auto opts = q.options().dtype(acc_dtype(q.scalar_type()));
  at::Tensor part_o = at::empty({int64_t(p.B) * p.Hq * n_split * p.D}, opts);
  at::Tensor part_ml = at::empty({int64_t(p.B) * p.Hq * n_split * 2}, opts);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(n_split, p.B * p.Hkv, row_chunks);
  kernel<<<grid, kDecodeWarps * 32, smem, stream>>>(p, split_len, seg, part_o.mutable_data_ptr<acc_t>(),
                                                    part_ml.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  attention_decode_merge<scalar_t><<<p.B * p.Hq, 128, 0, stream>>>(p, n_split, part_o.const_data_ptr<acc_t>(),
                                                                   part_ml.const_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------
// With P = exp(S - m - log l) recomputed from the saved statistics, dO the incoming gradient and
// Di = rowsum(dO_i * O_i):
//     dV = P^T dO,   dP = dO V^T,   dS = P * (dP - Di),   dQ = scale dS K,   dK = scale dS^T Q
// and dS is also the gradient of a float mask. One block owns 16 keys of one (batch, query head) (4
// warps x 4 keys) and walks over the query tiles (32 rows, one per lane) that can see them: it
// accumulates dK and dV for its keys in registers and writes them once, per query head (the heads of a
// group are summed afterwards, so no two blocks write the same dK); dQ receives contributions from every
// key block, so each block sums its part in shared memory and adds it to a float32 dQ with atomics.

constexpr int kBwdWarps = 4;
constexpr int kBwdKeysPerWarp = 4;
constexpr int kBwdBc = kBwdWarps * kBwdKeysPerWarp;  // 16 keys per block
constexpr int kBwdBr = 32;                           // query rows per tile: one per lane

template <typename acc_t>
struct GradParams {
  const acc_t *dout, *out_dot;     // dO (B, Hq, Lq, D) contiguous, Di = rowsum(dO * O) (B, Hq, Lq)
  const acc_t *row_max, *log_sum;  // the forward pass's m and log(l), (B, Hq, Lq) each
  acc_t *dq, *dk, *dv;             // (B, Hq, Lq, D) accumulated, (B, Hq, Lk, D), (B, Hq, Lk, D)
  acc_t* dmask;                    // (B, Hq, Lq, Lk) or nullptr
};

template <typename acc_t>
size_t backward_smem(int D) {
  return sizeof(acc_t) * (2 * kBwdBr * padded(D) + 2 * kBwdBc * D + kBwdBr * D + 3 * kBwdBr);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kBwdWarps * 32)
    attention_backward_plain(const AttentionParams<scalar_t> p, const GradParams<acc_type<scalar_t>> g) {
  using acc_t = acc_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int D = p.D, ld = padded(D);
  acc_t* Qs = reinterpret_cast<acc_t*>(smem_raw);  // (Br, ld) this tile's queries
  acc_t* dOs = Qs + kBwdBr * ld;                   // (Br, ld) and their output gradients
  acc_t* Ks = dOs + kBwdBr * ld;                   // (Bc, D) the block's keys
  acc_t* Vs = Ks + kBwdBc * D;                     // (Bc, D) and values
  acc_t* dQs = Vs + kBwdBc * D;                    // (Br, D) this block's part of dQ for the tile
  acc_t* tile_m = dQs + kBwdBr * D;                // (Br) m, log(l), Di of the tile's rows
  acc_t* tile_logl = tile_m + kBwdBr;
  acc_t* tile_di = tile_logl + kBwdBr;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.y / p.Hq, h = blockIdx.y % p.Hq, kvh = h / p.group;
  const int64_t bh = blockIdx.y;
  const int k0 = blockIdx.x * kBwdBc;
  for (int e = threadIdx.x; e < kBwdBc * D; e += blockDim.x) {
    const int j = e / D, d = e % D, key = k0 + j;
    Ks[e] = key < p.Lk ? static_cast<acc_t>(p.k[b * p.ks_b + kvh * p.ks_h + key * p.ks_l + d]) : acc_t(0);
    Vs[e] = key < p.Lk ? static_cast<acc_t>(p.v[b * p.vs_b + kvh * p.vs_h + key * p.vs_l + d]) : acc_t(0);
  }

  acc_t dK[kBwdKeysPerWarp][kMaxSlots], dV[kBwdKeysPerWarp][kMaxSlots];
#pragma unroll
  for (int r = 0; r < kBwdKeysPerWarp; ++r)
#pragma unroll
    for (int t = 0; t < kMaxSlots; ++t) dK[r][t] = dV[r][t] = acc_t(0);

  // The queries that may see some key of the block: query i sees key j when
  // first_key(i) <= j <= last_key(i), and both bounds grow with i.
  const int shift = p.Lk - p.Lq;  // position of query i is i + shift
  const int k_last = min(p.Lk, k0 + kBwdBc) - 1;
  const int i_begin = p.causal ? max(0, k0 - shift) : 0;
  const int i_end = p.window > 0 ? min(p.Lq, k_last - shift + p.window) : p.Lq;

  for (int q0 = i_begin; q0 < i_end; q0 += kBwdBr) {
    __syncthreads();  // the previous tile is no longer read
    for (int e = threadIdx.x; e < kBwdBr * D; e += blockDim.x) {
      const int r = e / D, d = e % D, i = q0 + r;
      const bool valid = i < i_end;
      Qs[r * ld + d] = valid ? static_cast<acc_t>(p.q[b * p.qs_b + h * p.qs_h + i * p.qs_l + d]) : acc_t(0);
      dOs[r * ld + d] = valid ? g.dout[(bh * p.Lq + i) * D + d] : acc_t(0);
      dQs[r * D + d] = acc_t(0);
    }
    if (threadIdx.x < kBwdBr) {
      const int i = q0 + threadIdx.x;
      const bool valid = i < i_end;
      tile_m[threadIdx.x] = valid ? g.row_max[bh * p.Lq + i] : neg_inf<acc_t>();
      tile_logl[threadIdx.x] = valid ? g.log_sum[bh * p.Lq + i] : acc_t(0);
      tile_di[threadIdx.x] = valid ? g.out_dot[bh * p.Lq + i] : acc_t(0);
    }
    __syncthreads();

    // Lane = query i of the tile. For each of the warp's keys j: S_ij, P_ij, dP_ij and dS_ij.
    const int i = q0 + lane;
    acc_t P[kBwdKeysPerWarp], dS[kBwdKeysPerWarp];
#pragma unroll
    for (int r = 0; r < kBwdKeysPerWarp; ++r) {
      const int jl = warp * kBwdKeysPerWarp + r, j = k0 + jl;
      acc_t qk = acc_t(0), dov = acc_t(0);
      for (int d = 0; d < D; ++d) {
        qk += Qs[lane * ld + d] * Ks[jl * D + d];
        dov += dOs[lane * ld + d] * Vs[jl * D + d];
      }
      P[r] = dS[r] = acc_t(0);
      const acc_t mi = tile_m[lane];
      if (i < i_end && j < p.Lk && j >= p.first_key(i) && j <= p.last_key(i) && mi != neg_inf<acc_t>()) {
        acc_t s = p.scale * qk;
        if (p.mask != nullptr) s += p.mask_at(b, h, i, j);
        P[r] = exp_acc((s - mi) - tile_logl[lane]);  // P = exp(S - m - log l)
        dS[r] = P[r] * (dov - tile_di[lane]);        // dS = P * (dP - Di)
      }
      if (g.dmask != nullptr && i < i_end && j < p.Lk) g.dmask[(bh * p.Lq + i) * p.Lk + j] = dS[r];
    }

    // dV_j += sum_i P_ij dO_i,  dK_j += sum_i dS_ij Q_i  (this lane's dims),  dQ_i += sum_j dS_ij K_j.
    const int n = min(kBwdBr, i_end - q0);
    for (int ii = 0; ii < n; ++ii) {
      acc_t pi[kBwdKeysPerWarp], dsi[kBwdKeysPerWarp];
#pragma unroll
      for (int r = 0; r < kBwdKeysPerWarp; ++r) {
        pi[r] = __shfl_sync(0xffffffffu, P[r], ii);
        dsi[r] = __shfl_sync(0xffffffffu, dS[r], ii);
      }
#pragma unroll
      for (int t = 0; t < kMaxSlots; ++t) {
        const int d = lane + 32 * t;
        if (d < D) {
          const acc_t doi = dOs[ii * ld + d], qi = Qs[ii * ld + d];
          acc_t dq = acc_t(0);
#pragma unroll
          for (int r = 0; r < kBwdKeysPerWarp; ++r) {
            dV[r][t] += pi[r] * doi;
            dK[r][t] += dsi[r] * qi;
            dq += dsi[r] * Ks[(warp * kBwdKeysPerWarp + r) * D + d];
          }
          atomicAdd(&dQs[ii * D + d], dq);
        }
      }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < n * D; e += blockDim.x) {
      atomicAdd(&g.dq[(bh * p.Lq + q0) * D + e], p.scale * dQs[e]);  // dQ = scale dS K
    }
  }

  // dK = scale dS^T Q and dV, for this block's keys, written once.
#pragma unroll
  for (int r = 0; r < kBwdKeysPerWarp; ++r) {
    const int j = k0 + warp * kBwdKeysPerWarp + r;
    if (j >= p.Lk) continue;
#pragma unroll
    for (int t = 0; t < kMaxSlots; ++t) {
      const int d = lane + 32 * t;
      if (d < D) {
        g.dk[(bh * p.Lk + j) * D + d] = p.scale * dK[r][t];
        g.dv[(bh * p.Lk + j) * D + d] = dV[r][t];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------------

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const std::optional<at::Tensor>& attn_mask, bool is_causal, std::optional<int64_t> window) {
  check_attention_inputs(q, k, v, is_causal, window);
  TORCH_CHECK(q.device() == k.device() && q.device() == v.device(), "attention: q, k, v must be on one device");
  TORCH_CHECK(!attn_mask.has_value() || attn_mask->device() == q.device(), "attention: attn_mask must be on q's device");
  TORCH_CHECK(q.size(3) <= kMaxHeadDim, "attention: the CUDA kernels take head_dim up to ", kMaxHeadDim, ", got ",
              q.size(3));
}

// Unit stride in the last dimension (a view with another layout is copied once); other strides are free.
at::Tensor unit_last_stride(const at::Tensor& t) {
  return (t.stride(-1) == 1 || t.size(-1) == 1) ? t : t.contiguous();
}

template <typename scalar_t>
AttentionParams<scalar_t> make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& mask, bool is_causal, double scale,
                                      std::optional<int64_t> window) {
  using acc_t = acc_type<scalar_t>;
  AttentionParams<scalar_t> p{};
  p.B = q.size(0); p.Hq = q.size(1); p.Lq = q.size(2); p.D = q.size(3);
  p.Hkv = k.size(1); p.Lk = k.size(2); p.group = p.Hq / p.Hkv;
  p.scale = acc_t(scale); p.causal = is_causal;
  // 0 = no window. A window of Lk keys or more hides nothing (the queries are the last Lq of the Lk
  // positions), and keeping it out of int range also keeps the band arithmetic from overflowing.
  p.window = (window.has_value() && *window < p.Lk) ? static_cast<int>(*window) : 0;
  p.q = q.const_data_ptr<scalar_t>(); p.k = k.const_data_ptr<scalar_t>(); p.v = v.const_data_ptr<scalar_t>();
  p.qs_b = q.stride(0); p.qs_h = q.stride(1); p.qs_l = q.stride(2);
  p.ks_b = k.stride(0); p.ks_h = k.stride(1); p.ks_l = k.stride(2);
  p.vs_b = v.stride(0); p.vs_h = v.stride(1); p.vs_l = v.stride(2);
  p.mask = mask.defined() ? mask.const_data_ptr<acc_t>() : nullptr;
  if (mask.defined()) {
    p.ms_b = mask.stride(0); p.ms_h = mask.stride(1); p.ms_q = mask.stride(2); p.ms_k = mask.stride(3);
  }
  return p;
}

// Strides of a dimension of size 1 are never stepped along; count them as aligned.
bool strides_multiple_of(const at::Tensor& t, int64_t n) {
  for (int64_t d = 0; d + 1 < t.dim(); ++d)
    if (t.size(d) > 1 && t.stride(d) % n != 0) return false;
  return true;
}

template <typename scalar_t>
void attention_forward(const AttentionParams<scalar_t>& p, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& v, int device) {
  using acc_t = acc_type<scalar_t>;
  auto stream = c10::cuda::getCurrentCUDAStream();
  constexpr int V = 16 / sizeof(scalar_t);
  const bool kv_vectors = p.D % V == 0 && p.D / V <= 32 && k.stride(-1) == 1 && v.stride(-1) == 1 &&
                          strides_multiple_of(k, V) && strides_multiple_of(v, V) &&
                          aligned16(k.const_data_ptr()) && aligned16(v.const_data_ptr());
  if (p.Lq == 1 && kv_vectors) {
    launch_decode<scalar_t>(p, q, device);
    return;
  }
  if constexpr (std::is_same_v<scalar_t, at::BFloat16> || std::is_same_v<scalar_t, at::Half>) {
    const bool mma_ok = p.D % 8 == 0 && p.D <= 128 && compute_capability_major(device) >= 8 && kv_vectors &&
                        q.stride(-1) == 1 && strides_multiple_of(q, 8) && aligned16(q.const_data_ptr());
    if (mma_ok) {
      attention_forward_mma(p);
      return;
    }
  }
  const size_t smem = plain_forward_smem<acc_t>(p.D);
  auto kernel = attention_forward_plain<scalar_t>;
  allow_shared_memory(kernel, smem, device, "attention (plain forward)");
  const dim3 grid(ceil_div(p.Lq, kPlainBr), p.B * p.Hq);
  kernel<<<grid, kPlainWarps * 32, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                  const at::Tensor& v_in, const std::optional<at::Tensor>& attn_mask,
                                                  bool is_causal, double scale, std::optional<int64_t> window) {
  check_inputs(q_in, k_in, v_in, attn_mask, is_causal, window);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::ScalarType acc = acc_dtype(q_in.scalar_type());
  const int64_t B = q_in.size(0), Hq = q_in.size(1), Lq = q_in.size(2), D = q_in.size(3), Lk = k_in.size(2);
  at::Tensor out = at::empty({B, Hq, Lq, D}, q_in.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor stats = at::empty({2, B, Hq, Lq}, q_in.options().dtype(acc));
  if (out.numel() == 0) return {out, stats};
  if (Lk == 0) {  // no keys at all: every row sees nothing
    out.zero_();
    stats[0].fill_(-std::numeric_limits<double>::infinity());
    stats[1].zero_();
    return {out, stats};
  }
  at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  at::Tensor mask = prepare_mask(attn_mask, acc, {B, Hq, Lq, Lk});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "minivlm_attention_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    AttentionParams<scalar_t> p = make_params<scalar_t>(q, k, v, mask, is_causal, scale, window);
    p.out = out.mutable_data_ptr<scalar_t>();
    p.row_max = stats.mutable_data_ptr<acc_t>();
    p.log_sum = p.row_max + B * Hq * Lq;
    attention_forward<scalar_t>(p, q, k, v, q.get_device());
  });
  return {out, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const std::optional<at::Tensor>& attn_mask, const at::Tensor& out, const at::Tensor& stats_in,
    bool is_causal, double scale, std::optional<int64_t> window, bool mask_grad) {
  check_inputs(q_in, k_in, v_in, attn_mask, is_causal, window);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::ScalarType acc = acc_dtype(q_in.scalar_type());
  const int64_t B = q_in.size(0), Hq = q_in.size(1), Lq = q_in.size(2), D = q_in.size(3);
  const int64_t Lk = k_in.size(2);
  const auto opts = q_in.options().dtype(acc);
  at::Tensor dq = at::zeros({B, Hq, Lq, D}, opts);
  at::Tensor dk_heads = at::zeros({B, Hq, Lk, D}, opts);  // one accumulator per query head
  at::Tensor dv_heads = at::zeros({B, Hq, Lk, D}, opts);
  at::Tensor dmask = mask_grad ? at::zeros({B, Hq, Lq, Lk}, opts) : at::empty({0}, opts);
  if (dq.numel() > 0 && Lk > 0) {
    at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
    at::Tensor mask = prepare_mask(attn_mask, acc, {B, Hq, Lq, Lk});
    at::Tensor dout = grad_out.to(acc).contiguous();
    at::Tensor stats = stats_in.to(acc).contiguous();
    at::Tensor out_dot = (dout * out.to(acc)).sum(-1).contiguous();  // Di = rowsum(dO * O)
    const int device = q.get_device();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "minivlm_attention_backward_cuda", [&] {
      using acc_t = acc_type<scalar_t>;
      const AttentionParams<scalar_t> p = make_params<scalar_t>(q, k, v, mask, is_causal, scale, window);
      const acc_t* row_max = stats.const_data_ptr<acc_t>();
      const GradParams<acc_t> g{dout.const_data_ptr<acc_t>(), out_dot.const_data_ptr<acc_t>(), row_max,
                                row_max + B * Hq * Lq, dq.mutable_data_ptr<acc_t>(), dk_heads.mutable_data_ptr<acc_t>(),
                                dv_heads.mutable_data_ptr<acc_t>(), mask_grad ? dmask.mutable_data_ptr<acc_t>() : nullptr};
      const size_t smem = backward_smem<acc_t>(p.D);
      auto kernel = attention_backward_plain<scalar_t>;
      allow_shared_memory(kernel, smem, device, "attention backward");
      const dim3 grid(ceil_div(Lk, kBwdBc), B * Hq);
      kernel<<<grid, kBwdWarps * 32, smem, c10::cuda::getCurrentCUDAStream()>>>(p, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return finish_attention_grads(dq, dk_heads, dv_heads, dmask, q_in, k_in, v_in);
}

}  // namespace

TORCH_LIBRARY_IMPL(minivlm, CUDA, m) {
  m.impl("attention", &attention_cuda);
  m.impl("attention_backward", &attention_backward_cuda);
}

}  // namespace minivlm::cuda
