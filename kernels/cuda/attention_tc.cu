// Flash attention on tensor cores (cuda_kernels.h attention_tc): bf16 mma.sync m16n8k16 with f32
// accumulation, FlashAttention-2 style. A block of 4 warps owns 64 query rows of one head (16 per
// warp) and walks the visible keys in tiles of 64 staged in shared memory as bf16. Per tile, a
// warp computes its 16 x 64 scores S = Q K^T in registers, applies the mask, updates the online
// softmax (m, l) per row, rescales its output accumulators, and multiplies P V with P taken
// straight from the score registers (the accumulator layout of one mma is the A-operand layout of
// the next). Nothing of size n_q x n_kv exists anywhere.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16): g = lane / 4, t = lane % 4.
//   A (16x16, row-major): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B (16x8, "col"):      b0 = B[2t..2t+1][g],  b1 = B[2t+8..2t+9][g]
//   C (16x8, f32):        c0, c1 = C[g][2t], C[g][2t+1];  c2, c3 = C[g+8][2t], C[g+8][2t+1]
#include <cmath>

#include "cuda_common.cuh"
#include "cuda_kernels.h"

namespace emollm {
namespace cuda {
namespace {

constexpr int TA_WARPS = 4, TA_BQ = 16 * TA_WARPS, TA_BKV = 64, TA_NT = 32 * TA_WARPS;
constexpr float TA_LOG2E = 1.4426950408889634f;

struct TaArgs {
  const float* q;
  const void* k;
  const void* v;
  float* out;
  int64_t ldq, ldk, ldv, ldo;
  int n_q, n_kv, n_heads, group;
  float scale_log2;
  int causal;
  int64_t q_pos0;
  int vec;  // K/V rows and the tensors are 16-byte aligned: staged 8 elements per load
};

__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  return uint32_t(f32_to_bf16_bits(lo)) | (uint32_t(f32_to_bf16_bits(hi)) << 16);
}
__device__ __forceinline__ uint16_t kv_bits(const float* p) { return f32_to_bf16_bits(__ldg(p)); }
__device__ __forceinline__ uint16_t kv_bits(const uint16_t* p) {
  return __ldg(reinterpret_cast<const unsigned short*>(p));
}

// 8 consecutive K/V elements as bf16 bits in one uint4 (16-byte aligned source).
__device__ __forceinline__ uint4 load8_bf16(const uint16_t* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
__device__ __forceinline__ uint4 load8_bf16(const float* p) {
  const float4 x = __ldg(reinterpret_cast<const float4*>(p)), y = __ldg(reinterpret_cast<const float4*>(p) + 1);
  return make_uint4(pack_bf16(x.x, x.y), pack_bf16(x.z, x.w), pack_bf16(y.x, y.y), pack_bf16(y.z, y.w));
}

// Stages keys kv0 .. kv0 + TA_BKV - 1 (zero past kv_end) of head kvh into Ks / Vs as bf16. With
// a.vec each thread issues all its 16-byte loads of a matrix before it stores any (the scalar
// loop, one 2- or 4-byte load per element, left the tile's load latency exposed).
template <typename KT, int D>
__device__ __forceinline__ void stage_kv(const TaArgs& a, const KT* K, const KT* V, uint16_t* Ks, uint16_t* Vs,
                                         int64_t kv0, int64_t kv_end, int kvh) {
  constexpr int LD = D + 8;
  if (a.vec) {
    constexpr int CPR = D / 8, PER = TA_BKV * CPR / TA_NT;
    static_assert(TA_BKV * CPR % TA_NT == 0, "chunks per thread");
#pragma unroll
    for (int m = 0; m < 2; ++m) {
      const KT* src = m == 0 ? K : V;
      const int64_t ld = m == 0 ? a.ldk : a.ldv;
      uint16_t* dst = m == 0 ? Ks : Vs;
      uint4 c[PER];
#pragma unroll
      for (int i = 0; i < PER; ++i) {
        const int e = threadIdx.x + i * TA_NT, j = e / CPR, d = (e % CPR) * 8;
        const int64_t kj = kv0 + j;
        c[i] = kj < kv_end ? load8_bf16(src + kj * ld + int64_t(kvh) * D + d) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int i = 0; i < PER; ++i) {
        const int e = threadIdx.x + i * TA_NT, j = e / CPR, d = (e % CPR) * 8;
        *reinterpret_cast<uint4*>(dst + j * LD + d) = c[i];
      }
    }
    return;
  }
  for (int e = threadIdx.x; e < TA_BKV * D; e += TA_NT) {
    const int j = e / D, d = e % D;
    const int64_t kj = kv0 + j;
    uint16_t kb = 0, vb = 0;
    if (kj < kv_end) {
      kb = kv_bits(K + kj * a.ldk + int64_t(kvh) * D + d);
      vb = kv_bits(V + kj * a.ldv + int64_t(kvh) * D + d);
    }
    Ks[j * LD + d] = kb;
    Vs[j * LD + d] = vb;
  }
}

// The B fragment (b0, b1) of V[kk .. kk+15][d0 .. d0+7] (B[k = key][n = d]) from shared memory in
// one ldmatrix.trans: lanes 0-7 address keys kk .. kk+7, lanes 8-15 keys kk+8 .. kk+15 (lanes
// 16-31's addresses are not read by .x2). Four 16-bit shared loads per fragment before.
__device__ __forceinline__ void v_fragment(const uint16_t* Vs, int ld, int kk, int d0, int lane, uint32_t& b0,
                                           uint32_t& b1) {
  const uint32_t addr = uint32_t(__cvta_generic_to_shared(Vs + (kk + (lane & 15)) * ld + d0));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(b0), "=r"(b1) : "r"(addr));
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <typename KT, int D>
__global__ void __launch_bounds__(TA_NT) flash_attn_tc_kernel(TaArgs a) {
  constexpr int LD = D + 8;  // bf16 elements per staged row (the pad spreads the banks)
  extern __shared__ __align__(16) uint16_t sm[];
  uint16_t* Qs = sm;                 // [TA_BQ][LD]
  uint16_t* Ks = Qs + TA_BQ * LD;    // [TA_BKV][LD]
  uint16_t* Vs = Ks + TA_BKV * LD;   // [TA_BKV][LD]
  const KT* K = static_cast<const KT*>(a.k);
  const KT* V = static_cast<const KT*>(a.v);
  const int h = blockIdx.y, kvh = h / a.group, q0 = blockIdx.x * TA_BQ;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

  // Q, pre-scaled by scale * log2(e) so the softmax uses exp2, rounded to bf16.
  for (int e = threadIdx.x; e < TA_BQ * D; e += TA_NT) {
    const int r = e / D, d = e % D, qi = q0 + r;
    const float x = qi < a.n_q ? __ldg(a.q + int64_t(qi) * a.ldq + int64_t(h) * D + d) * a.scale_log2 : 0.0f;
    Qs[r * LD + d] = f32_to_bf16_bits(x);
  }

  // This warp's rows g and g + 8 (of its 16), their visible-key limits.
  const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;
  const int64_t lim0 = r0 >= a.n_q ? 0 : (a.causal ? a.q_pos0 + r0 + 1 : int64_t(a.n_kv));
  const int64_t lim1 = r1 >= a.n_q ? 0 : (a.causal ? a.q_pos0 + r1 + 1 : int64_t(a.n_kv));
  int64_t kv_end = a.n_kv;
  if (a.causal) kv_end = min(kv_end, a.q_pos0 + min(q0 + TA_BQ, a.n_q));

  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
  const uint16_t* Qw = Qs + warp * 16 * LD;

  for (int64_t kv0 = 0; kv0 < kv_end; kv0 += TA_BKV) {
    __syncthreads();  // the previous tile is consumed (and Q is staged, the first time)
    stage_kv<KT, D>(a, K, V, Ks, Vs, kv0, kv_end, kvh);
    __syncthreads();

    // S = Q K^T for 16 rows x 64 keys: 8 n-tiles of 8 keys.
    float s[TA_BKV / 8][4];
#pragma unroll
    for (int n = 0; n < TA_BKV / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int k0 = 0; k0 < D; k0 += 16) {
      const uint32_t a0 = *reinterpret_cast<const uint32_t*>(Qw + g * LD + k0 + 2 * t);
      const uint32_t a1 = *reinterpret_cast<const uint32_t*>(Qw + (g + 8) * LD + k0 + 2 * t);
      const uint32_t a2 = *reinterpret_cast<const uint32_t*>(Qw + g * LD + k0 + 8 + 2 * t);
      const uint32_t a3 = *reinterpret_cast<const uint32_t*>(Qw + (g + 8) * LD + k0 + 8 + 2 * t);
#pragma unroll
      for (int n = 0; n < TA_BKV / 8; ++n) {
        const uint16_t* kr = Ks + (n * 8 + g) * LD + k0;  // B[k = d][n = key] = K[key][d]
        const uint32_t b0 = *reinterpret_cast<const uint32_t*>(kr + 2 * t);
        const uint32_t b1 = *reinterpret_cast<const uint32_t*>(kr + 8 + 2 * t);
        mma_bf16(s[n], a0, a1, a2, a3, b0, b1);
      }
    }

    // Mask, then the online softmax per row (a row's 64 scores live in the 4 lanes of a quad).
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int n = 0; n < TA_BKV / 8; ++n) {
      const int64_t j = kv0 + n * 8 + 2 * t;
      if (j >= lim0) s[n][0] = -INFINITY;
      if (j + 1 >= lim0) s[n][1] = -INFINITY;
      if (j >= lim1) s[n][2] = -INFINITY;
      if (j + 1 >= lim1) s[n][3] = -INFINITY;
      mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
      mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    // A row with nothing visible yet keeps m = -inf: subtract 0 instead (exp2(-inf) = 0, no NaN).
    const float base0 = mn0 == -INFINITY ? 0.0f : mn0, base1 = mn1 == -INFINITY ? 0.0f : mn1;
    const float al0 = exp2f(m0 - base0), al1 = exp2f(m1 - base1);
    m0 = mn0;
    m1 = mn1;
    float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
    for (int n = 0; n < TA_BKV / 8; ++n) {
      s[n][0] = exp2f(s[n][0] - base0);
      s[n][1] = exp2f(s[n][1] - base0);
      s[n][2] = exp2f(s[n][2] - base1);
      s[n][3] = exp2f(s[n][3] - base1);
      ps0 += s[n][0] + s[n][1];
      ps1 += s[n][2] + s[n][3];
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      ps0 += __shfl_xor_sync(0xffffffffu, ps0, off);
      ps1 += __shfl_xor_sync(0xffffffffu, ps1, off);
    }
    l0 = l0 * al0 + ps0;
    l1 = l1 * al1 + ps1;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      o[j][0] *= al0;
      o[j][1] *= al0;
      o[j][2] *= al1;
      o[j][3] *= al1;
    }

    // O += P V: P's A fragments for keys kk .. kk+15 are the score tiles kk/8 and kk/8 + 1.
#pragma unroll
    for (int kk = 0; kk < TA_BKV; kk += 16) {
      const int n = kk / 8;
      const uint32_t a0 = pack_bf16(s[n][0], s[n][1]);
      const uint32_t a1 = pack_bf16(s[n][2], s[n][3]);
      const uint32_t a2 = pack_bf16(s[n + 1][0], s[n + 1][1]);
      const uint32_t a3 = pack_bf16(s[n + 1][2], s[n + 1][3]);
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        uint32_t b0, b1;  // B[k = key][n = d] = V[key][d], columns d = j*8 .. j*8+7
        v_fragment(Vs, LD, kk, j * 8, lane, b0, b1);
        mma_bf16(o[j], a0, a1, a2, a3, b0, b1);
      }
    }
  }

  // Normalise and store rows g and g + 8 of this warp.
  const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    const int d = j * 8 + 2 * t;
    if (r0 < a.n_q) {
      float* op = a.out + int64_t(r0) * a.ldo + int64_t(h) * D + d;
      op[0] = o[j][0] * inv0;
      op[1] = o[j][1] * inv0;
    }
    if (r1 < a.n_q) {
      float* op = a.out + int64_t(r1) * a.ldo + int64_t(h) * D + d;
      op[0] = o[j][2] * inv1;
      op[1] = o[j][3] * inv1;
    }
  }
}

template <typename KT, int D>
void launch_tc(const TaArgs& a, cudaStream_t st) {
  const size_t smem = size_t(TA_BQ + 2 * TA_BKV) * (D + 8) * sizeof(uint16_t);
  if (smem > 48 * 1024)
    detail::check(cudaFuncSetAttribute(flash_attn_tc_kernel<KT, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       int(smem)),
                  "cuda attention_tc: shared memory limit");
  const dim3 grid(unsigned((a.n_q + TA_BQ - 1) / TA_BQ), unsigned(a.n_heads));
  flash_attn_tc_kernel<KT, D><<<grid, TA_NT, smem, st>>>(a);
}

}  // namespace

bool attention_tc_supported(const AttentionParams& p, DType kv_type) {
  return (p.head_dim == 64 || p.head_dim == 128) && (kv_type == DType::F32 || kv_type == DType::BF16);
}

void attention_tc(const float* q, const void* k, const void* v, DType kv_type, float* out, const AttentionParams& p,
                  Stream stream) {
  EMOLLM_CHECK_ARG(q && k && v && out, "cuda attention_tc: null pointer");
  EMOLLM_CHECK_ARG(p.n_q > 0 && p.n_kv > 0 && p.n_heads > 0 && p.n_kv_heads > 0,
                   "attention: n_q, n_kv, n_heads and n_kv_heads must be positive");
  EMOLLM_CHECK_ARG(p.n_heads % p.n_kv_heads == 0, "attention: n_heads must be a multiple of n_kv_heads");
  EMOLLM_CHECK_ARG(p.n_heads <= 65535 && p.n_q < (int64_t(1) << 30) && p.n_kv < (int64_t(1) << 31),
                   "cuda attention_tc: shape out of range");
  const int64_t qw = p.n_heads * p.head_dim, kw = p.n_kv_heads * p.head_dim;
  EMOLLM_CHECK_ARG(p.ldq >= qw && p.ldo >= qw && p.ldk >= kw && p.ldv >= kw, "attention: leading dimension too small");
  EMOLLM_CHECK_ARG(p.q_pos0 >= 0, "attention: q_pos0 must be >= 0");
  EMOLLM_CHECK_ARG(!p.causal || p.n_kv >= p.q_pos0 + p.n_q, "attention: causal attention needs n_kv >= q_pos0 + n_q");
  EMOLLM_CHECK_ARG(std::isfinite(p.scale), "attention: scale must be finite");
  if (!attention_tc_supported(p, kv_type))
    throw Error(ErrorCode::Unsupported, "cuda attention_tc: head_dim 64 or 128 with f32 or bf16 K/V only");
  const float scale = p.scale != 0.0f ? p.scale : float(1.0 / std::sqrt(double(p.head_dim)));
  TaArgs a{};
  a.q = q; a.k = k; a.v = v; a.out = out;
  a.ldq = p.ldq; a.ldk = p.ldk; a.ldv = p.ldv; a.ldo = p.ldo;
  a.n_q = int(p.n_q); a.n_kv = int(p.n_kv); a.n_heads = int(p.n_heads); a.group = int(p.n_heads / p.n_kv_heads);
  a.scale_log2 = scale * TA_LOG2E;
  a.causal = p.causal ? 1 : 0;
  a.q_pos0 = p.q_pos0;
  const bool bf = kv_type == DType::BF16;
  // 16-byte K/V loads: every row start (a multiple of ld) and head offset (kvh * D) 16-byte aligned
  const int64_t per16 = bf ? 8 : 4;
  a.vec = detail::aligned(k, 16) && detail::aligned(v, 16) && p.ldk % per16 == 0 && p.ldv % per16 == 0 ? 1 : 0;
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  if (p.head_dim == 64) bf ? launch_tc<uint16_t, 64>(a, st) : launch_tc<float, 64>(a, st);
  else bf ? launch_tc<uint16_t, 128>(a, st) : launch_tc<float, 128>(a, st);
  detail::check_launch("cuda attention_tc");
}

}  // namespace cuda
}  // namespace emollm
