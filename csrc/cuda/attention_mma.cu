// The attention forward pass on the tensor cores, for bfloat16 and float16: Algorithm 1 of FlashAttention-2
// (Dao, 2023, arXiv 2307.08691).
//
// The algorithm is the online softmax of attention_forward.cu; what changes is who does the two matrix
// products. Both S_ij = Q_i K_j^T and O += P_ij V_j run as `mma.sync.m16n8k16` instructions: one warp multiplies a
// 16 x 16 tile of A by a 16 x 8 tile of B into a 16 x 8 float32 accumulator, each thread holding a few
// elements of each in registers, in a layout the PTX manual fixes (lane = 4 * g + t, "g" the group of
// four lanes, "t" the thread in it):
//
//     A (16 x 16): a0 = (g, 2t..2t+1)  a1 = (g + 8, 2t..)  a2 = (g, 8 + 2t..)  a3 = (g + 8, 8 + 2t..)
//     B (16 x 8):  b0 = (2t..2t+1, g)  b1 = (8 + 2t.., g)
//     C (16 x 8):  c0, c1 = (g, 2t..2t+1)                  c2, c3 = (g + 8, 2t..2t+1)
//
// So a thread holds two rows (g and g + 8) of every score tile, and the four threads of a group hold a
// whole row between them: the row max and row sum of the online softmax are a few register operations
// and two shuffles. And the C layout of two adjacent 16 x 8 score tiles is exactly the A layout of a 16 x
// 16 tile, so P goes from the first product into the second without leaving registers.
//
// Tiling and the memory hierarchy, per block of 4 warps:
//   * Br = 64 query rows (16 per warp) of one (batch, head), Bc = 64 keys per tile, D padded to 64 or 128;
//   * Q_i, K_j and V_j tiles sit in shared memory (3 x 64 x 128 bfloat16 = 48 KB); they arrive with
//     `cp.async` (global -> shared without passing through registers), V_j while S = Q K_j^T is being
//     computed and K_{j+1} while O += P V_j is, so the loads hide behind the math;
//   * `ldmatrix` moves 8 x 8 tiles from shared memory into the mma register layout (`.trans` gives the
//     transposed layout V needs). Rows are 256 bytes, so the 16-byte pieces of a row are stored in an
//     XOR-swizzled order (piece c of row r at c ^ (r % 8)): the 8 rows an ldmatrix reads then fall in 8
//     different bank groups instead of one;
//   * S_ij, P_ij, m, l and O stay in registers for the whole walk over the keys (Q's fragments are re-read
//     from shared memory for each key tile, which leaves the registers to O).
// Causal key tiles past every row's diagonal and window tiles before the band are never visited; the
// per-element masking runs only on the tiles that cross an edge (or when a mask tensor is given).
//
// P is rounded for the second product as two 16-bit numbers, P = P_hi + P_lo with P_hi = bf16(P) and
// P_lo = bf16(P - P_hi): O += P_hi V + P_lo V. One rounding of P to bfloat16 would cost 2^-9 relative
// per probability, more than the float32 accumulation the contract promises (and the tests hold every
// kernel to); the pair carries 16 significant bits for one extra mma per P V step.

#include "attention.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace minivlm::cuda {
namespace {

constexpr int kBr = 64;       // Br = 64 query rows per thread block (16 per warp)
constexpr int kBc = 64;       // Bc = 64 keys per tile
constexpr int kWarps = 4;
constexpr float kLog2e = 1.4426950408889634f;

// ---------------------------------------------------------------------------------------------------
// The PTX instructions, one small function each
// ---------------------------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronously; src_bytes = 0 writes zeros (a row or column past the end).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

// Four 8 x 8 tiles of 16-bit values from shared memory; lane L gives the address of row L % 8 of tile L / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c (16 x 8, float32) += a (16 x 16) b (16 x 8), in bfloat16 or float16.
template <typename scalar_t>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats as a pair of 16-bit values in one register (x in the low half), and what they round to.
template <typename scalar_t>
__device__ __forceinline__ uint32_t pack2(float x, float y, float& x_rounded, float& y_rounded) {
  uint32_t r;
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(x, y);
    x_rounded = __low2float(v);
    y_rounded = __high2float(v);
    memcpy(&r, &v, 4);
  } else {
    const __half2 v = __floats2half2_rn(x, y);
    x_rounded = __low2float(v);
    y_rounded = __high2float(v);
    memcpy(&r, &v, 4);
  }
  return r;
}

// Element (row, col) of a swizzled tile with kD columns; col is a multiple of 8 (one 16-byte piece).
template <int kD>
__device__ __forceinline__ int swizzle(int row, int col) {
  return row * kD + (((col / 8) ^ (row % 8)) * 8);
}

// ---------------------------------------------------------------------------------------------------
// The kernel
// ---------------------------------------------------------------------------------------------------

template <typename scalar_t, int kD>
__global__ void __launch_bounds__(kWarps * 32) attention_forward_mma_kernel(const AttentionParams<scalar_t> p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // cp.async, ldmatrix and bf16 mma need compute capability 8.0; the host never launches this there
#else
  constexpr int kPieces = kD / 8;  // 16-byte pieces per row
  extern __shared__ __align__(16) unsigned char smem_raw[];
  scalar_t* Qs = reinterpret_cast<scalar_t*>(smem_raw);  // (Br, kD) swizzled
  scalar_t* Ks = Qs + kBr * kD;                          // (Bc, kD)
  scalar_t* Vs = Ks + kBc * kD;                          // (Bc, kD)

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;  // the mma layout's group and thread in group
  // Line 3: this thread block's query block i of head (b, h) = blockIdx.y, one of Tr = ceil(T / Br). Causal:
  // the last query blocks see the most keys; launching them first evens out the finish.
  const int Tr = (p.T + kBr - 1) / kBr;
  const int q0 = (p.causal ? Tr - 1 - int(blockIdx.x) : int(blockIdx.x)) * kBr;
  const int b = blockIdx.y / p.H, h = blockIdx.y % p.H, kvh = h / p.group;
  const int rows = min(kBr, p.T - q0);
  const scalar_t* Q = p.q + b * p.qs_b + h * p.qs_h;
  const scalar_t* K = p.k + b * p.ks_b + kvh * p.ks_h;
  const scalar_t* V = p.v + b * p.vs_b + kvh * p.vs_h;

  // Issue the copy of a 64-row tile (rows row0.., at most `limit`, row stride ld) into shared memory.
  auto load_tile = [&](scalar_t* dst, const scalar_t* src, int64_t ld, int row0, int limit) {
    for (int c = tid; c < 64 * kPieces; c += kWarps * 32) {
      const int r = c / kPieces, col = (c % kPieces) * 8;
      const bool valid = row0 + r < limit && col < p.D;
      const scalar_t* from = valid ? src + int64_t(row0 + r) * ld + col : src;
      cp_async_16(smem_addr(dst + swizzle<kD>(r, col)), from, valid ? 16 : 0);
    }
  };

  // The key tiles some row of the block may see.
  const int k_begin = p.first_key(q0);
  const int k_end = max(k_begin, min(p.S, p.last_key(q0 + rows - 1) + 1));
  const int kt_begin = k_begin / kBc, kt_end = (k_end + kBc - 1) / kBc;

  // Line 4: Q_i (and line 7 for the first K_j).
  load_tile(Qs, Q, p.qs_t, q0, p.T);
  load_tile(Ks, K, p.ks_s, kt_begin * kBc, p.S);
  cp_async_commit();

  // Line 5: m = -inf, l = 0, O = 0. Per thread: rows g and g + 8 of the warp's 16; O as kD / 8
  // accumulator tiles of 16 x 8.
  const int row_a = q0 + warp * 16 + g, row_b = row_a + 8;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float O[kD / 8][4];
#pragma unroll
  for (int n = 0; n < kD / 8; ++n) O[n][0] = O[n][1] = O[n][2] = O[n][3] = 0.f;

  // Line 6: the key tiles j.
  for (int kt = kt_begin; kt < kt_end; ++kt) {
    const int k0 = kt * kBc;
    cp_async_wait_all();
    __syncthreads();  // K_j (and Q) have landed; every warp is done with V_{j-1}
    load_tile(Vs, V, p.vs_s, k0, p.S);  // line 7: V_j arrives while S_ij = Q_i K_j^T is computed
    cp_async_commit();

    // Line 8: S_ij = Q_i K_j^T: 8 accumulator tiles of 16 x 8 per warp (its 16 rows x the 64 keys).
    float Sij[kBc / 8][4];
#pragma unroll
    for (int n = 0; n < kBc / 8; ++n) Sij[n][0] = Sij[n][1] = Sij[n][2] = Sij[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      // Q_i's 16 x 16 A fragment for dims kk*16.. (re-read from shared memory: registers are scarcer)
      uint32_t qf[4];
      ldmatrix_x4(qf, smem_addr(Qs + swizzle<kD>(warp * 16 + lane % 16, kk * 16 + (lane / 16) * 8)));
#pragma unroll
      for (int np = 0; np < kBc / 16; ++np) {  // two 8-key tiles per ldmatrix
        uint32_t kf[4];
        const int key = np * 16 + (lane % 8) + (lane / 16) * 8, col = kk * 16 + ((lane / 8) % 2) * 8;
        ldmatrix_x4(kf, smem_addr(Ks + swizzle<kD>(key, col)));
        mma_16816<scalar_t>(Sij[2 * np], qf, kf[0], kf[1]);
        mma_16816<scalar_t>(Sij[2 * np + 1], qf, kf[2], kf[3]);
      }
    }

    // S_ij = scale * S_ij (+ mask), -inf outside each row's band; only tiles crossing an edge need the test.
    const bool whole_tile = p.mask == nullptr && k0 + kBc <= p.S && k0 + kBc - 1 <= p.last_key(q0) &&
                            k0 >= p.first_key(q0 + kBr - 1);
#pragma unroll
    for (int n = 0; n < kBc / 8; ++n) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        float x = Sij[n][c] * float(p.scale);
        if (!whole_tile) {
          const int i = c < 2 ? row_a : row_b, j = k0 + n * 8 + 2 * t + (c % 2);
          if (i < p.T && j < p.S && j >= p.first_key(i) && j <= p.last_key(i)) {
            if (p.mask != nullptr) x += p.mask_at(b, h, i, j);
          } else {
            x = -INFINITY;
          }
        }
        Sij[n][c] = x;
      }
    }

    // Lines 9-10, the online softmax for rows g (c = 0, 1) and g + 8 (c = 2, 3): m_new = max(m, rowmax(S_ij)),
    // P_ij = exp(S_ij - m_new), l = exp(m - m_new) l + rowsum(P_ij), O = exp(m - m_new) O.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float mx = m[half];
#pragma unroll
      for (int n = 0; n < kBc / 8; ++n) mx = fmaxf(mx, fmaxf(Sij[n][2 * half], Sij[n][2 * half + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));  // the four threads of the group share a row
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float base = mx == -INFINITY ? 0.f : mx;      // a row with nothing visible yet: P_ij = 0
      const float alpha = exp2f((m[half] - base) * kLog2e);
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < kBc / 8; ++n) {
#pragma unroll
        for (int c = 2 * half; c < 2 * half + 2; ++c) {
          Sij[n][c] = exp2f((Sij[n][c] - base) * kLog2e);  // exp(x) = 2^(x log2 e)
          sum += Sij[n][c];
        }
      }
      l[half] = alpha * l[half] + sum;  // this thread's part of the row sum; summed over the group at the end
      m[half] = mx;
#pragma unroll
      for (int n = 0; n < kD / 8; ++n) {
        O[n][2 * half] *= alpha;
        O[n][2 * half + 1] *= alpha;
      }
    }

    cp_async_wait_all();
    __syncthreads();  // V_j has landed; every warp is done with K_j
    if (kt + 1 < kt_end) {
      load_tile(Ks, K, p.ks_s, k0 + kBc, p.S);  // K_{j+1} arrives while O += P_ij V_j is computed
      cp_async_commit();
    }

    // Line 10: O += P_ij V_j, 16 keys at a time: the C layout of score tiles 2kk, 2kk+1 is the A layout of P_ij.
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      uint32_t hi[4], lo[4];
      float r0, r1;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float* s = &Sij[2 * kk + e / 2][(e % 2) * 2];  // e: a0 a1 a2 a3 = (g, k) (g+8, k) (g, k+8) (g+8, k+8)
        hi[e] = pack2<scalar_t>(s[0], s[1], r0, r1);
        float unused0, unused1;
        lo[e] = pack2<scalar_t>(s[0] - r0, s[1] - r1, unused0, unused1);
      }
#pragma unroll
      for (int dp = 0; dp < kD / 16; ++dp) {  // two 8-wide dim tiles per ldmatrix
        uint32_t vf[4];
        const int key = kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8, col = dp * 16 + (lane / 16) * 8;
        ldmatrix_x4_trans(vf, smem_addr(Vs + swizzle<kD>(key, col)));
        mma_16816<scalar_t>(O[2 * dp], hi, vf[0], vf[1]);
        mma_16816<scalar_t>(O[2 * dp], lo, vf[0], vf[1]);
        mma_16816<scalar_t>(O[2 * dp + 1], hi, vf[2], vf[3]);
        mma_16816<scalar_t>(O[2 * dp + 1], lo, vf[2], vf[3]);
      }
    }
  }
  cp_async_wait_all();

  // Lines 12-15: out = O / l; m and log(l) (the log-sum-exp L = m + log(l) in two terms) saved for the
  // backward pass; a row that saw nothing gives 0.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = l[half];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int i = half == 0 ? row_a : row_b;
    if (i >= p.T) continue;
    const bool dead = sum == 0.f;
    const float inv = dead ? 0.f : 1.f / sum;
    const int64_t row = (int64_t(b) * p.H + h) * p.T + i;
    scalar_t* out = p.out + row * p.D;
#pragma unroll
    for (int n = 0; n < kD / 8; ++n) {
      const int d = n * 8 + 2 * t;
      if (d < p.D) {  // D is a multiple of 8, so d + 1 < D too
        out[d] = static_cast<scalar_t>(O[n][2 * half] * inv);
        out[d + 1] = static_cast<scalar_t>(O[n][2 * half + 1] * inv);
      }
    }
    if (t == 0) {
      p.row_max[row] = dead ? -INFINITY : m[half];
      p.log_sum[row] = dead ? 0.f : logf(sum);
    }
  }
#endif
}

template <typename scalar_t, int kD>
void launch(const AttentionParams<scalar_t>& p) {
  check_grid_rows(p.B, p.H, "attention (tensor-core forward)");
  const size_t smem = size_t(kBr + 2 * kBc) * kD * sizeof(scalar_t);  // 48 KB at kD = 128: no opt-in needed
  const dim3 grid((p.T + kBr - 1) / kBr, p.B * p.H);  // (Tr, B x H)
  attention_forward_mma_kernel<scalar_t, kD><<<grid, kWarps * 32, smem, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void dispatch(const AttentionParams<scalar_t>& p) {
  if (p.D <= 64) {
    launch<scalar_t, 64>(p);
  } else {
    launch<scalar_t, 128>(p);
  }
}

}  // namespace

void attention_forward_mma(const AttentionParams<at::BFloat16>& p) { dispatch(p); }
void attention_forward_mma(const AttentionParams<at::Half>& p) { dispatch(p); }

}  // namespace minivlm::cuda
