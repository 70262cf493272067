// Row and elementwise kernels (cuda_kernels.h), the same contracts as kernels/cpu/kernels.h:
// norms and softmax (one block per row, block reductions in f32), activations and adds
// (grid-stride), RoPE from device positions and frequencies, embedding rows of every weight
// dtype, the gated head sum of the unfused projection, and on-device token sampling.
#include <cuda_fp16.h>

#include <cmath>

#include "cuda_common.cuh"
#include "cuda_kernels.h"

namespace emollm {
namespace cuda {
namespace {

constexpr int ROW_NT = 256;

using detail::f16_bits_to_f32;
using detail::warp_max;
using detail::warp_sum;
using detail::block_max;
using detail::block_sum;

__global__ void rmsnorm_kernel(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int n, float eps) {
  __shared__ float scratch[33];
  const float* xr = x + int64_t(blockIdx.x) * ldx;
  float* yr = y + int64_t(blockIdx.x) * ldy;
  float ss = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) ss = fmaf(xr[j], xr[j], ss);
  ss = block_sum(ss, scratch);
  const float inv = rsqrtf(ss / float(n) + eps);
  for (int j = threadIdx.x; j < n; j += blockDim.x) yr[j] = xr[j] * inv * (w ? __ldg(w + j) : 1.0f);
}

__global__ void layernorm_kernel(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy,
                                 int n, float eps) {
  __shared__ float scratch[33];
  const float* xr = x + int64_t(blockIdx.x) * ldx;
  float* yr = y + int64_t(blockIdx.x) * ldy;
  float s = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += xr[j];
  const float mean = block_sum(s, scratch) / float(n);
  float s2 = 0.0f;  // two passes: the variance of (x - mean), no cancellation
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    const float d = xr[j] - mean;
    s2 = fmaf(d, d, s2);
  }
  const float rstd = rsqrtf(block_sum(s2, scratch) / float(n) + eps);
  for (int j = threadIdx.x; j < n; j += blockDim.x)
    yr[j] = (xr[j] - mean) * rstd * (w ? __ldg(w + j) : 1.0f) + (b ? __ldg(b + j) : 0.0f);
}

// torch's special values fall out of the arithmetic: an all -inf row has max -inf and
// exp(-inf - -inf) = NaN; +inf gives inf - inf = NaN; a NaN entry makes the sum NaN.
__global__ void softmax_kernel(const float* x, int64_t ldx, float* y, int64_t ldy, int n) {
  __shared__ float scratch[33];
  const float* xr = x + int64_t(blockIdx.x) * ldx;
  float* yr = y + int64_t(blockIdx.x) * ldy;
  float m = -INFINITY;
  for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, xr[j]);
  m = block_max(m, scratch);
  float s = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += expf(xr[j] - m);
  s = block_sum(s, scratch);
  const float inv = 1.0f / s;
  for (int j = threadIdx.x; j < n; j += blockDim.x) yr[j] = expf(xr[j] - m) * inv;
}

template <Unary OP>
__global__ void unary_kernel(const float* x, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    if constexpr (OP == Unary::Silu) y[i] = v / (1.0f + expf(-v));
    else if constexpr (OP == Unary::GeluErf) y[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    else y[i] = v / (1.0f + expf(-1.702f * v));
  }
}

__global__ void swiglu_kernel(const float* g, const float* u, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = g[i];
    y[i] = v / (1.0f + expf(-v)) * u[i];
  }
}

__global__ void add_kernel(const float* a, const float* b, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = a[i] + b[i];
}

__global__ void gated_acc_kernel(float* Y, int64_t ldy, const float* tmp, int64_t ld_tmp, const float* g, int n,
                                 bool first) {
  const int64_t t = blockIdx.y;
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < n; c += gridDim.x * blockDim.x) {
    const float add = __ldg(g + c) * tmp[t * ld_tmp + c];
    float* yp = Y + t * ldy + c;
    *yp = first ? add : *yp + add;
  }
}

template <RowOp OP>
__global__ void row_bcast_kernel(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int n,
                                 bool accumulate) {
  const int64_t r = blockIdx.y;
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < n; c += gridDim.x * blockDim.x) {
    const float xv = x[r * ldx + c], vv = __ldg(v + c);
    float* yp = y + r * ldy + c;
    if constexpr (OP == RowOp::AddRow) *yp = xv + vv;
    else if constexpr (OP == RowOp::MulRow) *yp = xv * vv;
    else *yp = accumulate ? fmaf(xv, vv, *yp) : xv * vv;
  }
}

__global__ void scale_kernel(const float* x, float s, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = s * x[i];
}

// kind: 0 f32, 1 f16, 2 bf16 (bits in uint16_t).
__device__ __forceinline__ float load_any(const void* p, int kind, int64_t i) {
  if (kind == 0) return static_cast<const float*>(p)[i];
  const uint16_t b = static_cast<const uint16_t*>(p)[i];
  return kind == 1 ? __half2float(__ushort_as_half(b)) : detail::bf16_bits_to_f32(b);
}
__device__ __forceinline__ void store_any(void* p, int kind, int64_t i, float v) {
  if (kind == 0) {
    static_cast<float*>(p)[i] = v;
  } else if (kind == 1) {
    static_cast<uint16_t*>(p)[i] = __half_as_ushort(__float2half_rn(v));
  } else {
    uint32_t u = __float_as_uint(v);  // round to nearest even, NaN stays NaN (as f32_to_bf16)
    uint16_t b;
    if ((u & 0x7fffffffu) > 0x7f800000u) b = uint16_t((u >> 16) | 0x40);
    else b = uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    static_cast<uint16_t*>(p)[i] = b;
  }
}
__global__ void convert_kernel(const void* src, int sk, void* dst, int dk, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    store_any(dst, dk, i, load_any(src, sk, i));
}

__global__ void patches_kernel(const float* img, float* cols, int64_t ld_cols, int C, int H, int W, int P, int ph,
                               int pw, int64_t n_rows) {
  const int64_t re = int64_t(C) * P * P, total = n_rows * re;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / re;
    const int c = int(i - r * re);
    const int ch = c / (P * P), ky = (c / P) % P, kx = c % P;
    const int64_t b = r / (int64_t(ph) * pw);
    const int py = int((r / pw) % ph), px = int(r % pw);
    cols[r * ld_cols + c] = __ldg(img + ((b * C + ch) * H + int64_t(py) * P + ky) * W + int64_t(px) * P + kx);
  }
}

// One block per token: the token's cos/sin computed once in double (as kernels/cpu/rope.cpp:
// angle = position * freq_scale * inv_freq[i], rounded to f32 after cos / sin) into shared
// memory, then every head's pairs rotated with them.
__global__ void rope_kernel(float* x, int64_t ld, int n_heads, int head_dim, int half, int interleaved,
                            const int32_t* positions, const double* inv_freq, double freq_scale) {
  extern __shared__ float cs[];  // [2 * half]: the cosines, then the sines
  const int t = blockIdx.x;
  const double pos = double(__ldg(positions + t)) * freq_scale;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    double sn, cn;
    sincos(pos * __ldg(inv_freq + i), &sn, &cn);
    cs[i] = float(cn);
    cs[half + i] = float(sn);
  }
  __syncthreads();
  float* row = x + int64_t(t) * ld;
  for (int k = threadIdx.x; k < n_heads * half; k += blockDim.x) {
    const int h = k / half, i = k % half;
    float* v = row + int64_t(h) * head_dim;
    const int ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
    const float a = v[ia], b = v[ib], c = cs[i], s = cs[half + i];
    v[ia] = a * c - b * s;
    v[ib] = b * c + a * s;
  }
}

template <DType T>
__global__ void embedding_kernel(const uint8_t* table, int64_t row_bytes, int64_t vocab, int dim, const int32_t* ids,
                                 float* out, int64_t ld_out) {
  const int i = blockIdx.x;
  const int32_t id = __ldg(ids + i);
  float* o = out + int64_t(i) * ld_out;
  if (id < 0 || int64_t(id) >= vocab) {  // never read outside the table: a NaN row marks the bad id
    for (int j = threadIdx.x; j < dim; j += blockDim.x) o[j] = __int_as_float(0x7fc00000);
    return;
  }
  const uint8_t* row = table + int64_t(id) * row_bytes;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) {
    float v;
    if constexpr (T == DType::F32) v = __ldg(reinterpret_cast<const float*>(row) + j);
    else if constexpr (T == DType::F16) v = f16_bits_to_f32(__ldg(reinterpret_cast<const unsigned short*>(row) + j));
    else if constexpr (T == DType::BF16)
      v = detail::bf16_bits_to_f32(__ldg(reinterpret_cast<const unsigned short*>(row) + j));
    else if constexpr (T == DType::Q8_0) {
      const uint8_t* blk = row + int64_t(j / 32) * 34;
      v = f16_bits_to_f32(__ldg(reinterpret_cast<const unsigned short*>(blk))) *
          float(int8_t(__ldg(blk + 2 + j % 32)));
    } else {
      const uint8_t* blk = row + int64_t(j / 32) * 18;
      const int e = j % 32;
      const uint8_t q = __ldg(blk + 2 + (e & 15));
      v = f16_bits_to_f32(__ldg(reinterpret_cast<const unsigned short*>(blk))) * float(int(e < 16 ? q & 15 : q >> 4) - 8);
    }
    o[j] = v;
  }
}

// ------------------------------------------------------------------ sampling (one block)
constexpr int SAMPLE_NT = 1024;

// Order-preserving map of floats to unsigned keys (larger float -> larger key); NaN -> 0.
__device__ __forceinline__ uint32_t order_key(float f) {
  if (f != f) return 0u;
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}


__global__ void __launch_bounds__(SAMPLE_NT) sample_kernel(const float* logits, int n, SampleParams sp, int32_t* out) {
  __shared__ float fscratch[33];
  __shared__ uint32_t uscratch[33];
  __shared__ uint32_t best_key[SAMPLE_NT / 32];
  __shared__ int best_idx[SAMPLE_NT / 32];
  __shared__ float chunk_mass[SAMPLE_NT];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;

  const bool greedy = sp.temperature <= 0.0f || sp.top_k == 1;
  // Argmax by key (NaN has the lowest key), lowest index on ties.
  uint32_t bk = 0u;
  int bi = 0x7fffffff;
  for (int i = tid; i < n; i += SAMPLE_NT) {
    const uint32_t k = order_key(logits[i]);
    if (k > bk || (k == bk && i < bi)) { bk = k; bi = i; }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const uint32_t ok = __shfl_xor_sync(0xffffffffu, bk, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ok > bk || (ok == bk && oi < bi)) { bk = ok; bi = oi; }
  }
  if (lane == 0) { best_key[warp] = bk; best_idx[warp] = bi; }
  __syncthreads();
  if (tid == 0) {
    uint32_t k = best_key[0];
    int ix = best_idx[0];
    for (int w = 1; w < SAMPLE_NT / 32; ++w)
      if (best_key[w] > k || (best_key[w] == k && best_idx[w] < ix)) { k = best_key[w]; ix = best_idx[w]; }
    best_idx[0] = ix;
  }
  __syncthreads();
  const int argmax = best_idx[0];
  if (greedy) {
    if (tid == 0) *out = argmax;
    return;
  }
  const float inv_t = 1.0f / sp.temperature;
  const float m = logits[argmax] * inv_t;
  auto prob = [&](int i) {
    const float x = logits[i];
    return x == x ? expf(x * inv_t - m) : 0.0f;  // NaN never gets mass
  };

  // top-k: the largest key t with count(key >= t) >= k, bit by bit from the top.
  uint32_t tk = 0u;
  if (sp.top_k > 0 && sp.top_k < n) {
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t cand = tk | (1u << bit);
      uint32_t c = 0;
      for (int i = tid; i < n; i += SAMPLE_NT) c += order_key(logits[i]) >= cand ? 1u : 0u;
      if (block_sum(c, uscratch) >= uint32_t(sp.top_k)) tk = cand;
    }
  }
  auto mass_from = [&](uint32_t t) {
    float s = 0.0f;
    for (int i = tid; i < n; i += SAMPLE_NT)
      if (order_key(logits[i]) >= t) s += prob(i);
    return block_sum(s, fscratch);
  };
  // top-p: the largest t >= tk whose mass is still >= top_p of the top-k mass.
  uint32_t tp = tk;
  if (sp.top_p < 1.0f) {
    const float need = sp.top_p * mass_from(tk);
    uint32_t t = 0u;
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t cand = t | (1u << bit);
      if (mass_from(cand > tk ? cand : tk) >= need) t = cand;
    }
    tp = t > tk ? t : tk;
  }
  // Inverse CDF in index order: per-thread contiguous chunks, a serial scan of the chunk sums.
  const int chunk = (n + SAMPLE_NT - 1) / SAMPLE_NT;
  const int lo = tid * chunk, hi = min(n, lo + chunk);
  float cm = 0.0f;
  for (int i = lo; i < hi; ++i)
    if (order_key(logits[i]) >= tp) cm += prob(i);
  chunk_mass[tid] = cm;
  __syncthreads();
  if (tid == 0) {
    float total = 0.0f;
    for (int c = 0; c < SAMPLE_NT; ++c) total += chunk_mass[c];
    const float target = sp.u * total;
    float acc = 0.0f;
    int pick = -1, last = argmax;
    for (int c = 0; c < SAMPLE_NT && pick < 0; ++c) {
      if (chunk_mass[c] <= 0.0f) continue;
      if (acc + chunk_mass[c] <= target) { acc += chunk_mass[c]; continue; }
      const int clo = c * chunk, chi = min(n, clo + chunk);
      for (int i = clo; i < chi; ++i) {
        if (order_key(logits[i]) < tp) continue;
        const float p = prob(i);
        if (p <= 0.0f) continue;
        last = i;
        acc += p;
        if (acc > target) { pick = i; break; }
      }
    }
    *out = pick >= 0 ? pick : last;  // rounding left target past the end: the last candidate
  }
}

using detail::grid_for;

void check_rows(const char* what, int64_t ldx, int64_t ldy, int64_t rows, int64_t n) {
  EMOLLM_CHECK_ARG(rows >= 0 && n >= 0, std::string(what) + ": negative shape");
  EMOLLM_CHECK_ARG(rows < (int64_t(1) << 31) && n < (int64_t(1) << 31), std::string(what) + ": shape too large");
  EMOLLM_CHECK_ARG(rows <= 1 || (ldx >= n && ldy >= n), std::string(what) + ": leading dimension smaller than n");
}

}  // namespace

void rmsnorm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int64_t rows, int64_t n, float eps,
             Stream stream) {
  check_rows("cuda rmsnorm", ldx, ldy, rows, n);
  if (rows == 0 || n == 0) return;
  rmsnorm_kernel<<<unsigned(rows), ROW_NT, 0, reinterpret_cast<cudaStream_t>(stream)>>>(x, ldx, w, y, ldy, int(n), eps);
  detail::check_launch("cuda rmsnorm");
}

void layernorm(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy, int64_t rows,
               int64_t n, float eps, Stream stream) {
  check_rows("cuda layernorm", ldx, ldy, rows, n);
  if (rows == 0 || n == 0) return;
  layernorm_kernel<<<unsigned(rows), ROW_NT, 0, reinterpret_cast<cudaStream_t>(stream)>>>(x, ldx, w, b, y, ldy,
                                                                                          int(n), eps);
  detail::check_launch("cuda layernorm");
}

void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n, Stream stream) {
  check_rows("cuda softmax", ldx, ldy, rows, n);
  if (rows == 0 || n == 0) return;
  softmax_kernel<<<unsigned(rows), ROW_NT, 0, reinterpret_cast<cudaStream_t>(stream)>>>(x, ldx, y, ldy, int(n));
  detail::check_launch("cuda softmax");
}

void unary(Unary op, const float* x, float* y, int64_t n, Stream stream) {
  EMOLLM_CHECK_ARG(n >= 0, "cuda unary: negative n");
  if (n == 0) return;
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const unsigned g = grid_for(n, ROW_NT);
  switch (op) {
    case Unary::Silu: unary_kernel<Unary::Silu><<<g, ROW_NT, 0, st>>>(x, y, n); break;
    case Unary::GeluErf: unary_kernel<Unary::GeluErf><<<g, ROW_NT, 0, st>>>(x, y, n); break;
    case Unary::QuickGelu: unary_kernel<Unary::QuickGelu><<<g, ROW_NT, 0, st>>>(x, y, n); break;
  }
  detail::check_launch("cuda activation");
}

void swiglu(const float* gate, const float* up, float* y, int64_t n, Stream stream) {
  EMOLLM_CHECK_ARG(n >= 0, "cuda swiglu: negative n");
  if (n == 0) return;
  swiglu_kernel<<<grid_for(n, ROW_NT), ROW_NT, 0, reinterpret_cast<cudaStream_t>(stream)>>>(gate, up, y, n);
  detail::check_launch("cuda swiglu");
}

void add(const float* a, const float* b, float* y, int64_t n, Stream stream) {
  EMOLLM_CHECK_ARG(n >= 0, "cuda add: negative n");
  if (n == 0) return;
  add_kernel<<<grid_for(n, ROW_NT), ROW_NT, 0, reinterpret_cast<cudaStream_t>(stream)>>>(a, b, y, n);
  detail::check_launch("cuda add");
}

void gated_accumulate(float* Y, int64_t ldy, const float* tmp, int64_t ld_tmp, const float* g, int64_t rows,
                      int64_t n, bool first, Stream stream) {
  check_rows("cuda gated_accumulate", ld_tmp, ldy, rows, n);
  EMOLLM_CHECK_ARG(rows <= 65535, "cuda gated_accumulate: too many rows");
  if (rows == 0 || n == 0) return;
  const dim3 grid(unsigned((n + ROW_NT - 1) / ROW_NT), unsigned(rows));
  gated_acc_kernel<<<grid, ROW_NT, 0, reinterpret_cast<cudaStream_t>(stream)>>>(Y, ldy, tmp, ld_tmp, g, int(n), first);
  detail::check_launch("cuda gated_accumulate");
}

void row_broadcast(RowOp op, const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows,
                   int64_t n, bool accumulate, Stream stream) {
  check_rows("cuda row op", ldx, ldy, rows, n);
  EMOLLM_CHECK_ARG(rows <= 65535, "cuda row op: too many rows (65535 at most per call)");
  if (rows == 0 || n == 0) return;
  const dim3 grid{unsigned((n + ROW_NT - 1) / ROW_NT), unsigned(rows)};
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  switch (op) {
    case RowOp::AddRow: row_bcast_kernel<RowOp::AddRow><<<grid, ROW_NT, 0, st>>>(x, ldx, v, y, ldy, int(n), accumulate); break;
    case RowOp::MulRow: row_bcast_kernel<RowOp::MulRow><<<grid, ROW_NT, 0, st>>>(x, ldx, v, y, ldy, int(n), accumulate); break;
    case RowOp::MulRowAdd:
      row_bcast_kernel<RowOp::MulRowAdd><<<grid, ROW_NT, 0, st>>>(x, ldx, v, y, ldy, int(n), accumulate);
      break;
  }
  detail::check_launch("cuda row op");
}

void scale(const float* x, float s, float* y, int64_t n, Stream stream) {
  EMOLLM_CHECK_ARG(n >= 0, "cuda scale: negative n");
  if (n == 0) return;
  scale_kernel<<<grid_for(n, ROW_NT), ROW_NT, 0, reinterpret_cast<cudaStream_t>(stream)>>>(x, s, y, n);
  detail::check_launch("cuda scale");
}

void convert(const void* src, DType src_type, void* dst, DType dst_type, int64_t n, Stream stream) {
  auto kind = [](DType t) {
    switch (t) {
      case DType::F32: return 0;
      case DType::F16: return 1;
      case DType::BF16: return 2;
      default:
        throw Error(ErrorCode::Unsupported, std::string("cuda convert: ") + dtype_name(t) + " (f32, f16, bf16 only)");
    }
  };
  const int sk = kind(src_type), dk = kind(dst_type);
  EMOLLM_CHECK_ARG(n >= 0, "cuda convert: negative n");
  if (n == 0) return;
  convert_kernel<<<grid_for(n, ROW_NT), ROW_NT, 0, reinterpret_cast<cudaStream_t>(stream)>>>(src, sk, dst, dk, n);
  detail::check_launch("cuda convert");
}

void extract_patches(const float* images, float* cols, int64_t ld_cols, const PatchParams& p, Stream stream) {
  EMOLLM_CHECK_ARG(p.batch >= 0 && p.channels > 0 && p.patch > 0 && p.height >= 0 && p.width >= 0,
                   "extract_patches: bad shape");
  EMOLLM_CHECK_ARG(p.height % p.patch == 0 && p.width % p.patch == 0,
                   "extract_patches: height and width must be multiples of patch");
  const int64_t re = p.row_elems(), ld = ld_cols ? ld_cols : re;
  EMOLLM_CHECK_ARG(ld >= re, "extract_patches: ld_cols smaller than a patch row");
  EMOLLM_CHECK_ARG(p.channels * p.height * p.width < (int64_t(1) << 31), "extract_patches: image too large");
  const int64_t rows = p.batch * p.patches_h() * p.patches_w();
  if (rows == 0) return;
  patches_kernel<<<grid_for(rows * re, ROW_NT), ROW_NT, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      images, cols, ld, int(p.channels), int(p.height), int(p.width), int(p.patch), int(p.patches_h()),
      int(p.patches_w()), rows);
  detail::check_launch("cuda extract_patches");
}

namespace {
// rope() and rope_backward(): the backward rotates by the negated angles (angle_sign -1).
void rope_launch(const char* what, float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                 int64_t rot_dim, RopeLayout layout, const int32_t* positions, const double* inv_freq,
                 double freq_scale, Stream stream) {
  const std::string w(what);
  EMOLLM_CHECK_ARG(n_tokens >= 0 && n_heads >= 0 && head_dim > 0, w + ": bad shape");
  EMOLLM_CHECK_ARG(rot_dim > 0 && rot_dim <= head_dim && rot_dim % 2 == 0, w + ": rot_dim must be even, <= head_dim");
  EMOLLM_CHECK_ARG(n_tokens <= 1 || ld >= n_heads * head_dim, w + ": ld smaller than n_heads * head_dim");
  EMOLLM_CHECK_ARG(n_tokens < (int64_t(1) << 31) && n_heads * head_dim < (int64_t(1) << 31), w + ": shape too large");
  if (n_tokens == 0 || n_heads == 0) return;
  EMOLLM_CHECK_ARG(positions != nullptr && inv_freq != nullptr, w + ": null positions or frequencies");
  const int half = int(rot_dim / 2);
  rope_kernel<<<unsigned(n_tokens), 128, size_t(2 * half) * sizeof(float), reinterpret_cast<cudaStream_t>(stream)>>>(
      x, ld, int(n_heads), int(head_dim), half, layout == RopeLayout::Interleaved ? 1 : 0, positions, inv_freq,
      freq_scale);
  detail::check_launch(what);
}
}  // namespace

void rope(float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t rot_dim, RopeLayout layout,
          const int32_t* positions, const double* inv_freq, float freq_scale, Stream stream) {
  rope_launch("cuda rope", x, ld, n_tokens, n_heads, head_dim, rot_dim, layout, positions, inv_freq,
              double(freq_scale), stream);
}

void rope_backward(float* dx, int64_t ld, int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t rot_dim,
                   RopeLayout layout, const int32_t* positions, const double* inv_freq, float freq_scale,
                   Stream stream) {
  rope_launch("cuda rope_backward", dx, ld, n_tokens, n_heads, head_dim, rot_dim, layout, positions, inv_freq,
              -double(freq_scale), stream);
}

void embedding(const void* table, DType dtype, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n, float* out,
               int64_t ld_out, Stream stream) {
  EMOLLM_CHECK_ARG(vocab >= 0 && dim >= 0 && n >= 0 && dim < (int64_t(1) << 31) && n < (int64_t(1) << 31),
                   "cuda embedding: bad shape");
  EMOLLM_CHECK_ARG(n <= 1 || ld_out >= dim, "cuda embedding: ld_out smaller than dim");
  if (dtype == DType::Q8_0 || dtype == DType::Q4_0)
    EMOLLM_CHECK_ARG(dim % 32 == 0, "cuda embedding: q8_0/q4_0 rows need dim % 32 == 0");
  if (n == 0 || dim == 0) return;
  const int64_t rb = int64_t(dtype_row_bytes(dtype, dim));
  const uint8_t* t = static_cast<const uint8_t*>(table);
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::F32: embedding_kernel<DType::F32><<<unsigned(n), ROW_NT, 0, st>>>(t, rb, vocab, int(dim), ids, out, ld_out); break;
    case DType::F16: embedding_kernel<DType::F16><<<unsigned(n), ROW_NT, 0, st>>>(t, rb, vocab, int(dim), ids, out, ld_out); break;
    case DType::BF16: embedding_kernel<DType::BF16><<<unsigned(n), ROW_NT, 0, st>>>(t, rb, vocab, int(dim), ids, out, ld_out); break;
    case DType::Q8_0: embedding_kernel<DType::Q8_0><<<unsigned(n), ROW_NT, 0, st>>>(t, rb, vocab, int(dim), ids, out, ld_out); break;
    case DType::Q4_0: embedding_kernel<DType::Q4_0><<<unsigned(n), ROW_NT, 0, st>>>(t, rb, vocab, int(dim), ids, out, ld_out); break;
    default:
      throw Error(ErrorCode::Unsupported, std::string("cuda embedding: table dtype ") + dtype_name(dtype) +
                                              " has no CUDA kernel (f32, f16, bf16, q8_0, q4_0)");
  }
  detail::check_launch("cuda embedding");
}

void sample(const float* logits, int64_t n, const SampleParams& sp, int32_t* out_token, Stream stream) {
  EMOLLM_CHECK_ARG(n > 0 && n < (int64_t(1) << 31), "cuda sample: n must be positive");
  EMOLLM_CHECK_ARG(logits && out_token, "cuda sample: null pointer");
  EMOLLM_CHECK_ARG(sp.u >= 0.0f && sp.u < 1.0f, "cuda sample: u must be in [0, 1)");
  EMOLLM_CHECK_ARG(std::isfinite(sp.temperature) && std::isfinite(sp.top_p) && sp.top_p > 0.0f,
                   "cuda sample: temperature must be finite and top_p in (0, 1]");
  sample_kernel<<<1, SAMPLE_NT, 0, reinterpret_cast<cudaStream_t>(stream)>>>(logits, int(n), sp, out_token);
  detail::check_launch("cuda sample");
}

}  // namespace cuda
}  // namespace emollm
