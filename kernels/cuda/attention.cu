// Flash-attention forward on CUDA (f32 arithmetic; f32 or bf16 K/V), same semantics as
// emollm::attention (kernels/cpu/kernels.h): GQA, causal with q_pos0 or bidirectional.
//
// A block of 4 warps owns 16 query rows of one head (4 rows per warp) and walks the visible
// KV range in tiles of 32 keys staged in shared memory (K padded to D+1 floats per row so that
// lane j reading key j is conflict-free). Per tile, lane j computes the scores of key j for the
// warp's 4 rows; the online softmax keeps (m, l) per row in every lane and rescales the output
// accumulators, whose head dims are spread over the lanes (dim d = lane + 32c). Scores live only
// in registers. Scores are in log2 units (q pre-scaled by scale * log2 e) so exp2 is used.
//
// Split-KV (decode, or any launch with fewer blocks than multiprocessors): grid.z splits the KV
// range; each split writes unnormalised (o, m, l) to the workspace and attn_merge_kernel
// combines them.
#include <cmath>

#include "cuda_common.cuh"
#include "cuda_kernels.h"

namespace emollm {
namespace cuda {
namespace {

constexpr int FA_WARPS = 4, FA_R = 4, FA_BQ = FA_WARPS * FA_R, FA_BKV = 32, FA_NT = FA_WARPS * 32;
constexpr int FA_MAX_SPLITS = 64;
constexpr float LOG2E = 1.4426950408889634f;

struct FaArgs {
  const float* q;
  const void* k;
  const void* v;
  float* out;
  int64_t ldq, ldk, ldv, ldo;
  int n_q, n_kv, n_heads, group, D;
  float scale_log2;  // scale * log2(e)
  int causal;
  int64_t q_pos0;
  int64_t kv_chunk;   // keys per split (multiple of FA_BKV)
  float* part_o;      // [splits][n_q][n_heads][D] or null (no split)
  float* part_ml;     // [splits][n_q][n_heads][2]
};

using detail::warp_max;
using detail::warp_sum;

// DC: output dims per lane (ceil(D/32) rounded up); DFIX: compile-time head_dim or 0 (runtime).
template <typename KT, int DC, int DFIX>
__global__ void __launch_bounds__(FA_NT) flash_attn_kernel(FaArgs a) {
  const int D = DFIX > 0 ? DFIX : a.D;
  extern __shared__ __align__(16) float smem[];
  float* Qs = smem;                      // [BQ][D]
  float* Ks = Qs + FA_BQ * D;            // [BKV][D+1]
  float* Vs = Ks + FA_BKV * (D + 1);     // [BKV][D]
  const KT* K = static_cast<const KT*>(a.k);
  const KT* V = static_cast<const KT*>(a.v);

  const int h = blockIdx.y, kvh = h / a.group;
  const int q0 = blockIdx.x * FA_BQ;
  const int split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  for (int e = threadIdx.x; e < FA_BQ * D; e += FA_NT) {
    const int r = e / D, d = e - r * D, qi = q0 + r;
    Qs[e] = qi < a.n_q ? a.q[int64_t(qi) * a.ldq + int64_t(h) * D + d] * a.scale_log2 : 0.0f;
  }

  // KV range of this block: its split, cut at the last key any of its rows sees.
  const int64_t kv_begin = int64_t(split) * a.kv_chunk;
  int64_t kv_end = min(int64_t(a.n_kv), kv_begin + a.kv_chunk);
  if (a.causal) kv_end = min(kv_end, a.q_pos0 + min(q0 + FA_BQ, a.n_q));

  float m[FA_R], l[FA_R], o[FA_R][DC];
  int64_t lim[FA_R];  // keys visible to each row: j < lim
#pragma unroll
  for (int i = 0; i < FA_R; ++i) {
    const int qi = q0 + warp * FA_R + i;
    m[i] = -INFINITY;
    l[i] = 0.0f;
    lim[i] = qi >= a.n_q ? 0 : (a.causal ? a.q_pos0 + qi + 1 : int64_t(a.n_kv));
#pragma unroll
    for (int c = 0; c < DC; ++c) o[i][c] = 0.0f;
  }
  const float* Qw = Qs + warp * FA_R * D;

  for (int64_t kv0 = kv_begin; kv0 < kv_end; kv0 += FA_BKV) {
    __syncthreads();  // the previous tile is consumed (and Q is stored, first time round)
    for (int e = threadIdx.x; e < FA_BKV * D; e += FA_NT) {
      const int j = e / D, d = e - j * D;
      const int64_t kj = kv0 + j;
      float kx = 0.0f, vx = 0.0f;
      if (kj < kv_end) {
        kx = detail::load_f32(K + kj * a.ldk + int64_t(kvh) * D + d);
        vx = detail::load_f32(V + kj * a.ldv + int64_t(kvh) * D + d);
      }
      Ks[j * (D + 1) + d] = kx;
      Vs[j * D + d] = vx;
    }
    __syncthreads();

    // Scores of key kv0 + lane for the warp's rows.
    float s[FA_R];
#pragma unroll
    for (int i = 0; i < FA_R; ++i) s[i] = 0.0f;
    const float* krow = Ks + lane * (D + 1);
    if constexpr (DFIX > 0 && DFIX % 4 == 0) {
#pragma unroll 4
      for (int d = 0; d < DFIX; d += 4) {
        const float k0 = krow[d], k1 = krow[d + 1], k2 = krow[d + 2], k3 = krow[d + 3];
#pragma unroll
        for (int i = 0; i < FA_R; ++i) {
          const float4 qv = *reinterpret_cast<const float4*>(Qw + i * DFIX + d);
          s[i] = fmaf(qv.x, k0, s[i]);
          s[i] = fmaf(qv.y, k1, s[i]);
          s[i] = fmaf(qv.z, k2, s[i]);
          s[i] = fmaf(qv.w, k3, s[i]);
        }
      }
    } else {
      for (int d = 0; d < D; ++d) {
        const float kd = krow[d];
#pragma unroll
        for (int i = 0; i < FA_R; ++i) s[i] = fmaf(Qw[i * D + d], kd, s[i]);
      }
    }

    // Online softmax update.
    const int64_t j = kv0 + lane;
    float p[FA_R];
#pragma unroll
    for (int i = 0; i < FA_R; ++i) {
      const bool vis = j < kv_end && j < lim[i];
      const float si = vis ? s[i] : -INFINITY;
      const float m_new = fmaxf(m[i], warp_max(si));
      float alpha = 1.0f;
      if (m_new == -INFINITY) {
        p[i] = 0.0f;  // nothing visible to this row yet
      } else {
        alpha = exp2f(m[i] - m_new);  // m = -inf gives 0
        p[i] = exp2f(si - m_new);     // masked gives 0
      }
      l[i] = l[i] * alpha + warp_sum(p[i]);
      m[i] = m_new;
#pragma unroll
      for (int c = 0; c < DC; ++c) o[i][c] *= alpha;
    }

    // o += P V over the tile's keys.
    const int nkeys = int(min(int64_t(FA_BKV), kv_end - kv0));
    for (int jj = 0; jj < nkeys; ++jj) {
      float pj[FA_R];
#pragma unroll
      for (int i = 0; i < FA_R; ++i) pj[i] = __shfl_sync(0xffffffffu, p[i], jj);
      const float* vrow = Vs + jj * D;
#pragma unroll
      for (int c = 0; c < DC; ++c) {
        const int d = lane + 32 * c;
        if ((DFIX > 0 && DFIX % 32 == 0) || d < D) {
          const float vd = vrow[d];
#pragma unroll
          for (int i = 0; i < FA_R; ++i) o[i][c] = fmaf(pj[i], vd, o[i][c]);
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < FA_R; ++i) {
    const int qi = q0 + warp * FA_R + i;
    if (qi >= a.n_q) continue;
    if (a.part_o) {
      const int64_t idx = (int64_t(split) * a.n_q + qi) * a.n_heads + h;
      float* po = a.part_o + idx * D;
#pragma unroll
      for (int c = 0; c < DC; ++c) {
        const int d = lane + 32 * c;
        if (d < D) po[d] = o[i][c];
      }
      if (lane == 0) { a.part_ml[idx * 2] = m[i]; a.part_ml[idx * 2 + 1] = l[i]; }
    } else {
      const float inv = 1.0f / l[i];
      float* orow = a.out + int64_t(qi) * a.ldo + int64_t(h) * D;
#pragma unroll
      for (int c = 0; c < DC; ++c) {
        const int d = lane + 32 * c;
        if (d < D) orow[d] = o[i][c] * inv;
      }
    }
  }
}

// One block per (query, head): combines the splits' (o, m, l).
__global__ void attn_merge_kernel(const float* part_o, const float* part_ml, float* out, int64_t ldo, int n_q,
                                  int n_heads, int D, int splits) {
  const int qi = blockIdx.x / n_heads, h = blockIdx.x % n_heads;
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, part_ml[((int64_t(s) * n_q + qi) * n_heads + h) * 2]);
  float L = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const int64_t idx = (int64_t(s) * n_q + qi) * n_heads + h;
    const float ms = part_ml[idx * 2];
    if (ms != -INFINITY) L += part_ml[idx * 2 + 1] * exp2f(ms - M);
  }
  const float inv = 1.0f / L;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const int64_t idx = (int64_t(s) * n_q + qi) * n_heads + h;
      const float ms = part_ml[idx * 2];
      if (ms != -INFINITY) acc += part_o[idx * D + d] * exp2f(ms - M);
    }
    out[int64_t(qi) * ldo + int64_t(h) * D + d] = acc * inv;
  }
}

void validate(const float* q, const void* k, const void* v, DType kv_type, float* out, const AttentionParams& p) {
  EMOLLM_CHECK_ARG(q && k && v && out, "cuda attention: null pointer");
  EMOLLM_CHECK_ARG(p.n_q > 0 && p.n_kv > 0, "attention: n_q and n_kv must be positive");
  EMOLLM_CHECK_ARG(p.n_heads > 0 && p.n_kv_heads > 0 && p.head_dim > 0,
                   "attention: n_heads, n_kv_heads and head_dim must be positive");
  EMOLLM_CHECK_ARG(p.n_heads % p.n_kv_heads == 0, "attention: n_heads must be a multiple of n_kv_heads");
  EMOLLM_CHECK_ARG(p.n_heads <= 65535, "cuda attention: n_heads out of range");
  EMOLLM_CHECK_ARG(p.n_q < (int64_t(1) << 30) && p.n_kv < (int64_t(1) << 31), "cuda attention: too many tokens");
  const int64_t qw = p.n_heads * p.head_dim, kw = p.n_kv_heads * p.head_dim;
  EMOLLM_CHECK_ARG(p.ldq >= qw, "attention: ldq must be >= n_heads * head_dim");
  EMOLLM_CHECK_ARG(p.ldo >= qw, "attention: ldo must be >= n_heads * head_dim");
  EMOLLM_CHECK_ARG(p.ldk >= kw, "attention: ldk must be >= n_kv_heads * head_dim");
  EMOLLM_CHECK_ARG(p.ldv >= kw, "attention: ldv must be >= n_kv_heads * head_dim");
  EMOLLM_CHECK_ARG(p.q_pos0 >= 0, "attention: q_pos0 must be >= 0");
  EMOLLM_CHECK_ARG(!p.causal || p.n_kv >= p.q_pos0 + p.n_q, "attention: causal attention needs n_kv >= q_pos0 + n_q");
  EMOLLM_CHECK_ARG(std::isfinite(p.scale), "attention: scale must be finite");
  if (kv_type != DType::F32 && kv_type != DType::BF16)
    throw Error(ErrorCode::Unsupported, "cuda attention: K/V must be f32 or bf16");
  if (p.head_dim > 256) throw Error(ErrorCode::Unsupported, "cuda attention: head_dim > 256");
}

struct SplitPlan {
  int splits = 1;
  int64_t chunk = 0;
};
SplitPlan plan_splits(const AttentionParams& p, int sms) {
  SplitPlan sp;
  const int64_t kv_eff = p.causal ? p.q_pos0 + p.n_q : p.n_kv;
  sp.chunk = ((kv_eff + FA_BKV - 1) / FA_BKV) * FA_BKV;
  const int64_t blocks = ((p.n_q + FA_BQ - 1) / FA_BQ) * p.n_heads;
  if (blocks >= sms || kv_eff < 4 * FA_BKV) return sp;
  int64_t want = (2 * int64_t(sms) + blocks - 1) / blocks;
  want = std::min<int64_t>(want, std::min<int64_t>(FA_MAX_SPLITS, kv_eff / (2 * FA_BKV)));
  if (want <= 1) return sp;
  int64_t chunk = (kv_eff + want - 1) / want;
  chunk = ((chunk + FA_BKV - 1) / FA_BKV) * FA_BKV;
  sp.chunk = chunk;
  sp.splits = int((kv_eff + chunk - 1) / chunk);
  return sp;
}
size_t split_bytes(const AttentionParams& p, int splits) {
  if (splits <= 1) return 0;
  return size_t(splits) * size_t(p.n_q) * size_t(p.n_heads) * (size_t(p.head_dim) + 2) * sizeof(float);
}

template <typename KT, int DC, int DFIX>
void launch_fa(const FaArgs& a, dim3 grid, cudaStream_t st) {
  const size_t smem = size_t(FA_BQ * a.D + FA_BKV * (a.D + 1) + FA_BKV * a.D) * sizeof(float);
  if (smem > 48 * 1024)
    detail::check(cudaFuncSetAttribute(flash_attn_kernel<KT, DC, DFIX>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       int(smem)),
                  "cuda attention: shared memory limit");
  flash_attn_kernel<KT, DC, DFIX><<<grid, FA_NT, smem, st>>>(a);
}

template <typename KT>
void dispatch_fa(const FaArgs& a, dim3 grid, cudaStream_t st) {
  switch (a.D) {
    case 64: return launch_fa<KT, 2, 64>(a, grid, st);
    case 80: return launch_fa<KT, 3, 80>(a, grid, st);
    case 128: return launch_fa<KT, 4, 128>(a, grid, st);
    default: break;
  }
  if (a.D <= 64) return launch_fa<KT, 2, 0>(a, grid, st);
  if (a.D <= 128) return launch_fa<KT, 4, 0>(a, grid, st);
  return launch_fa<KT, 8, 0>(a, grid, st);
}

}  // namespace

size_t attention_workspace_bytes(const AttentionParams& p) {
  if (p.n_q <= 0 || p.n_kv <= 0 || p.n_heads <= 0 || p.head_dim <= 0) return 0;
  return split_bytes(p, plan_splits(p, detail::sm_count()).splits);
}

void attention(const float* q, const void* k, const void* v, DType kv_type, float* out, const AttentionParams& p,
               void* workspace, size_t workspace_bytes, Stream stream) {
  validate(q, k, v, kv_type, out, p);
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const float scale = p.scale != 0.0f ? p.scale : float(1.0 / std::sqrt(double(p.head_dim)));
  FaArgs a{};
  a.q = q; a.k = k; a.v = v; a.out = out;
  a.ldq = p.ldq; a.ldk = p.ldk; a.ldv = p.ldv; a.ldo = p.ldo;
  a.n_q = int(p.n_q); a.n_kv = int(p.n_kv); a.n_heads = int(p.n_heads);
  a.group = int(p.n_heads / p.n_kv_heads); a.D = int(p.head_dim);
  a.scale_log2 = scale * LOG2E;
  a.causal = p.causal ? 1 : 0;
  a.q_pos0 = p.q_pos0;

  SplitPlan sp = workspace ? plan_splits(p, detail::sm_count()) : SplitPlan{};
  if (sp.splits > 1 && workspace_bytes < split_bytes(p, sp.splits)) sp = SplitPlan{};
  if (sp.splits <= 1) {
    sp.splits = 1;
    sp.chunk = p.n_kv;
  }
  a.kv_chunk = sp.chunk;
  a.part_o = nullptr;
  a.part_ml = nullptr;
  if (sp.splits > 1) {
    a.part_o = static_cast<float*>(workspace);
    a.part_ml = a.part_o + size_t(sp.splits) * size_t(p.n_q) * size_t(p.n_heads) * size_t(p.head_dim);
  }
  const dim3 grid(unsigned((p.n_q + FA_BQ - 1) / FA_BQ), unsigned(p.n_heads), unsigned(sp.splits));
  if (kv_type == DType::F32) dispatch_fa<float>(a, grid, st);
  else dispatch_fa<uint16_t>(a, grid, st);
  detail::check_launch("cuda attention");
  if (sp.splits > 1) {
    attn_merge_kernel<<<unsigned(p.n_q * p.n_heads), 128, 0, st>>>(a.part_o, a.part_ml, out, p.ldo, a.n_q,
                                                                    a.n_heads, a.D, sp.splits);
    detail::check_launch("cuda attention (merge)");
  }
}

}  // namespace cuda
}  // namespace emollm
