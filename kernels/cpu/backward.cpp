// Backward kernels (backward.h). Straightforward loops written so the compiler vectorises the
// inner (contiguous) dimension; rows are split over the pool where they are independent.
#include "backward.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "backward_internal.h"
#include "kernels.h"
#include "row_parallel.h"

#include "../../base/error.h"

namespace emollm {

namespace {
constexpr int64_t kRowBlock = 32;  // weight rows dequantised at once in gemm_backward_x

inline float sigmoidf(float x) { return 1.0f / (1.0f + std::exp(-x)); }
}  // namespace

// ---------------------------------------------------------------- matrix products
namespace {
// out[c, r] = in[r, c] for a rows x cols block (in stride ldi, out stride ldo).
void transpose(const float* in, int64_t ldi, float* out, int64_t ldo, int64_t rows, int64_t cols) {
  constexpr int64_t B = 32;
  for (int64_t r0 = 0; r0 < rows; r0 += B)
    for (int64_t c0 = 0; c0 < cols; c0 += B)
      for (int64_t r = r0; r < std::min(rows, r0 + B); ++r)
        for (int64_t c = c0; c < std::min(cols, c0 + B); ++c) out[c * ldo + r] = in[r * ldi + c];
}
// Reused per-thread work buffers (slot 0..3): the backward GEMMs transpose operands of tens of MB
// per call; fresh allocations would page-fault and zero them every time. Grown, never shrunk.
float* scratch(int slot, size_t n) {
  thread_local std::vector<float> buf[4];
  if (buf[slot].size() < n) {
    buf[slot] = std::vector<float>();
    buf[slot].resize(n);
  }
  return buf[slot].data();
}
// Above this many rows the products run through gemm() on transposed operands (its vectorised
// paths); the transposes cost O(N K + M N + M K) against the product's O(M N K).
constexpr int64_t kGemmPathMinRows = 16;
constexpr int64_t kGemmPathMaxTempFloats = int64_t(16) << 20;  // 64 MiB of transposed weights
}  // namespace

void gemm_backward_x(const float* dY, int64_t lddy, const void* W, DType wtype, float* dX, int64_t lddx, int64_t M,
                     int64_t N, int64_t K, bool accumulate, ThreadPool* pool) {
  EMOLLM_CHECK_ARG(M >= 0 && N > 0 && K > 0, "gemm_backward_x: bad shape");
  EMOLLM_CHECK_ARG(K % dtype_block_elems(wtype) == 0, "gemm_backward_x: K not a multiple of the weight block size");
  if (M == 0) return;
  // BF16 weights on AVX512-BF16: the NN product against the stored rows (no weight copy); F16
  // weights the same, each packed panel rounded to bf16
  if (wtype == DType::BF16 &&
      backward_detail::gemm_backward_x_bf16(dY, lddy, static_cast<const uint16_t*>(W), dX, lddx, M, N, K, accumulate,
                                            pool))
    return;
  if (wtype == DType::F16 &&
      backward_detail::gemm_backward_x_f16(dY, lddy, static_cast<const uint16_t*>(W), dX, lddx, M, N, K, accumulate,
                                           pool))
    return;
  const size_t row_bytes = dtype_row_bytes(wtype, K);
  const auto* wb = static_cast<const uint8_t*>(W);
  if (M >= kGemmPathMinRows && N * K <= kGemmPathMaxTempFloats) {
    // dX^T [K, M] = W^T [K, N] * dY^T: gemm(X = W^T, W = dY as an f32 [M, N] weight)
    float* wt = scratch(0, size_t(N * K));
    float* out = scratch(1, size_t(K * M));
    float* rows = scratch(2, size_t(kRowBlock * K));
    for (int64_t n0 = 0; n0 < N; n0 += kRowBlock) {  // dequantise a block of rows, then transpose it
      const int64_t nb = std::min(kRowBlock, N - n0);
      for (int64_t j = 0; j < nb; ++j) {
        const void* src = wb + size_t(n0 + j) * row_bytes;
        if (wtype == DType::F32) std::copy_n(static_cast<const float*>(src), K, rows + j * K);
        else dequantize_row(wtype, src, rows + j * K, K);
      }
      transpose(rows, K, wt + n0, N, nb, K);
    }
    const float* dyp = dY;
    if (lddy != N) {
      float* dy = scratch(3, size_t(M * N));
      for (int64_t m = 0; m < M; ++m) std::copy_n(dY + m * lddy, N, dy + m * N);
      dyp = dy;
    }
    gemm(wt, N, dyp, DType::F32, nullptr, out, M, K, M, N, pool);
    float* tr = scratch(0, size_t(M * K));  // wt is no longer needed
    transpose(out, M, tr, K, K, M);         // tr [M, K]
    for (int64_t m = 0; m < M; ++m) {
      float* dx = dX + m * lddx;
      const float* t = tr + m * K;
      if (accumulate)
        for (int64_t c = 0; c < K; ++c) dx[c] += t[c];
      else
        std::copy_n(t, K, dx);
    }
    return;
  }
  // Small M: rows of dX are split over the pool; each thread dequantises the weight rows in
  // blocks of kRowBlock and sums n in ascending order (one fixed reduction order per element).
  auto run_rows = [&](int64_t m0, int64_t m1) {
    std::vector<float> wf(size_t(kRowBlock * K));
    if (!accumulate)
      for (int64_t m = m0; m < m1; ++m) std::fill(dX + m * lddx, dX + m * lddx + K, 0.0f);
    for (int64_t n0 = 0; n0 < N; n0 += kRowBlock) {
      const int64_t nb = std::min(kRowBlock, N - n0);
      const bool f32 = wtype == DType::F32;  // f32 rows are read in place
      if (!f32)
        for (int64_t j = 0; j < nb; ++j) dequantize_row(wtype, wb + size_t(n0 + j) * row_bytes, wf.data() + j * K, K);
      for (int64_t m = m0; m < m1; ++m) {
        float* dx = dX + m * lddx;
        const float* dy = dY + m * lddy + n0;
        for (int64_t j = 0; j < nb; ++j) {
          const float g = dy[j];
          if (g == 0.0f) continue;
          const float* w = f32 ? reinterpret_cast<const float*>(wb + size_t(n0 + j) * row_bytes) : wf.data() + j * K;
          for (int64_t c = 0; c < K; ++c) dx[c] += g * w[c];
        }
      }
    }
  };
  detail::for_rows(pool, M, N * K / std::max<int64_t>(1, M) + N * 4, run_rows);
}

void gemm_backward_w(const float* dY, int64_t lddy, const float* X, int64_t ldx, float* dW, float* dB, int64_t M,
                     int64_t N, int64_t K, ThreadPool* pool) {
  EMOLLM_CHECK_ARG(M >= 0 && N > 0 && K > 0, "gemm_backward_w: bad shape");
  if (M == 0) return;
  if (dB)
    for (int64_t n = 0; n < N; ++n) {
      double bsum = 0.0;
      for (int64_t m = 0; m < M; ++m) bsum += dY[m * lddy + n];
      dB[n] += float(bsum);
    }
  if (M >= kGemmPathMinRows) {
    // dW [N, K] += dY^T [N, M] * X [M, K] = gemm(X = dY^T, W = X^T [K, M])
    float* dyt = scratch(0, size_t(N * M));
    float* xt = scratch(1, size_t(K * M));
    float* out = scratch(2, size_t(N * K));
    transpose(dY, lddy, dyt, M, M, N);
    transpose(X, ldx, xt, M, M, K);
    gemm(dyt, M, xt, DType::F32, nullptr, out, K, N, K, M, pool);
    for (int64_t i = 0; i < N * K; ++i) dW[i] += out[i];
    return;
  }
  detail::for_rows(pool, N, M * K, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      float* dw = dW + n * K;
      for (int64_t m = 0; m < M; ++m) {
        const float g = dY[m * lddy + n];
        if (g == 0.0f) continue;
        const float* x = X + m * ldx;
        for (int64_t c = 0; c < K; ++c) dw[c] += g * x[c];
      }
    }
  });
}

// ---------------------------------------------------------------- normalisation
void rmsnorm_backward(const float* x, int64_t ldx, const float* w, const float* dy, int64_t lddy, float* dx,
                      int64_t lddx, int64_t rows, int64_t n, float eps, bool accumulate, ThreadPool* pool) {
  EMOLLM_CHECK_ARG(rows >= 0 && n > 0, "rmsnorm_backward: bad shape");
  detail::for_rows(pool, rows, n * 4, [&](int64_t r0, int64_t r1) {
    std::vector<float> g(static_cast<size_t>(n));
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * ldx;
      const float* dyr = dy + r * lddy;
      float* dxr = dx + r * lddx;
      double ss = 0.0, dot = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        ss += double(xr[i]) * double(xr[i]);
        g[size_t(i)] = w ? w[i] * dyr[i] : dyr[i];
        dot += double(xr[i]) * double(g[size_t(i)]);
      }
      const double rinv = 1.0 / std::sqrt(ss / double(n) + double(eps));
      const float a = float(rinv), b = float(rinv * rinv * rinv * dot / double(n));
      if (accumulate)
        for (int64_t i = 0; i < n; ++i) dxr[i] += a * g[size_t(i)] - b * xr[i];
      else
        for (int64_t i = 0; i < n; ++i) dxr[i] = a * g[size_t(i)] - b * xr[i];
    }
  });
}

// ---------------------------------------------------------------- activations
void gelu_erf_backward(const float* x, const float* dy, float* dx, int64_t n, ThreadPool* pool) {
  detail::for_elements(pool, n, [&](int64_t b, int64_t e) {
    constexpr double kInvSqrt2 = 0.70710678118654752440, kInvSqrt2Pi = 0.39894228040143267794;
    for (int64_t i = b; i < e; ++i) {
      const double v = x[i];
      const double cdf = 0.5 * (1.0 + std::erf(v * kInvSqrt2));
      const double pdf = kInvSqrt2Pi * std::exp(-0.5 * v * v);
      dx[i] = float(double(dy[i]) * (cdf + v * pdf));
    }
  });
}

void silu_backward(const float* x, const float* dy, float* dx, int64_t n, ThreadPool* pool) {
  detail::for_elements(pool, n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float s = sigmoidf(x[i]);
      dx[i] = dy[i] * s * (1.0f + x[i] * (1.0f - s));
    }
  });
}

void swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup, int64_t n,
                     ThreadPool* pool) {
  if (backward_detail::swiglu_backward(gate, up, dy, dgate, dup, n, pool)) return;
  detail::for_elements(pool, n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float gv = gate[i], uv = up[i], d = dy[i];
      const float s = sigmoidf(gv);
      const float silu_g = gv * s;
      dgate[i] = d * uv * s * (1.0f + gv * (1.0f - s));
      dup[i] = d * silu_g;
    }
  });
}

// ---------------------------------------------------------------- rope
void rope_backward(float* dx, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
                   const RopeParams& p, ThreadPool* pool) {
  // A rotation's transpose is the rotation by the opposite angle; angles are linear in the
  // position (every scaling rescales inv_freq or the position), so negated positions invert it.
  std::vector<int32_t> neg(size_t(std::max<int64_t>(0, n_tokens)));
  for (int64_t t = 0; t < n_tokens; ++t) neg[size_t(t)] = -positions[t];
  rope(dx, ld, n_tokens, n_heads, neg.data(), p, pool);
}

// ---------------------------------------------------------------- attention
namespace {
void check_attention(const AttentionParams& p) {
  EMOLLM_CHECK_ARG(p.n_q >= 0 && p.n_kv > 0 && p.n_heads > 0 && p.n_kv_heads > 0 && p.head_dim > 0,
                   "attention_backward: bad shape");
  EMOLLM_CHECK_ARG(p.n_heads % p.n_kv_heads == 0, "attention_backward: n_heads not a multiple of n_kv_heads");
  if (p.kv_dtype != DType::F32 || p.kv_block_size != 0)
    throw Error(ErrorCode::Unsupported, "attention_backward: the K/V must be contiguous f32 (no paged or half KV cache)");
}
// Visible kv tokens of query i: [0, end)
inline int64_t visible(const AttentionParams& p, int64_t i) {
  return p.causal ? std::min(p.n_kv, p.q_pos0 + i + 1) : p.n_kv;
}
}  // namespace

void attention_backward(const float* q, const float* k, const float* v, const float* out, const float* dout,
                        const float* lse, float* dq, float* dk, float* dv, const AttentionParams& p,
                        ThreadPool* pool) {
  check_attention(p);
  if (backward_detail::attention_backward_bf16_applies(p) &&
      backward_detail::attention_backward_bf16(q, k, v, out, dout, lse, dq, dk, dv, p, pool))
    return;
  if (backward_detail::attention_backward(q, k, v, out, dout, lse, dq, dk, dv, p, pool)) return;
  const int64_t D = p.head_dim, G = p.n_heads / p.n_kv_heads, nq = p.n_q, nkv = p.n_kv;
  const float scale = p.scale != 0.0f ? p.scale : 1.0f / std::sqrt(float(D));
  for (int64_t j = 0; j < nkv; ++j) {
    std::fill(dk + j * p.ldk, dk + j * p.ldk + p.n_kv_heads * D, 0.0f);
    std::fill(dv + j * p.ldv, dv + j * p.ldv + p.n_kv_heads * D, 0.0f);
  }
  // One task per kv head: it owns dk / dv of that head and dq of its query heads, so no two
  // threads write the same element and the sums run in a fixed order.
  auto per_kv_head = [&](int64_t h0, int64_t h1) {
    std::vector<float> prob(static_cast<size_t>(nkv)), dp(static_cast<size_t>(nkv));
    for (int64_t hk = h0; hk < h1; ++hk) {
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = hk * G + g;
        for (int64_t i = 0; i < nq; ++i) {
          const float* qi = q + i * p.ldq + h * D;
          const float* oi = out + i * p.ldo + h * D;
          const float* doi = dout + i * p.ldo + h * D;
          float* dqi = dq + i * p.ldq + h * D;
          const int64_t end = visible(p, i);
          std::fill(dqi, dqi + D, 0.0f);
          if (end <= 0) continue;
          // recompute the probabilities of row i: exp(s - lse) with the forward's log-sum-exp,
          // else with the row's maximum and sum
          float mx = -INFINITY;
          for (int64_t j = 0; j < end; ++j) {
            const float* kj = k + j * p.ldk + hk * D;
            float s = 0.0f;
            for (int64_t c = 0; c < D; ++c) s += qi[c] * kj[c];
            prob[size_t(j)] = s * scale;
            mx = std::max(mx, prob[size_t(j)]);
          }
          float iz = 1.0f;
          if (lse) {
            const float l = lse[i * p.n_heads + h];
            for (int64_t j = 0; j < end; ++j) prob[size_t(j)] = std::exp(prob[size_t(j)] - l);
          } else {
            double z = 0.0;
            for (int64_t j = 0; j < end; ++j) {
              prob[size_t(j)] = std::exp(prob[size_t(j)] - mx);
              z += prob[size_t(j)];
            }
            iz = float(1.0 / z);
          }
          float Di = 0.0f;
          for (int64_t c = 0; c < D; ++c) Di += doi[c] * oi[c];
          for (int64_t j = 0; j < end; ++j) {
            const float pj = prob[size_t(j)] * iz;
            const float* vj = v + j * p.ldv + hk * D;
            float* dvj = dv + j * p.ldv + hk * D;
            float dpj = 0.0f;
            for (int64_t c = 0; c < D; ++c) {
              dpj += doi[c] * vj[c];
              dvj[c] += pj * doi[c];
            }
            const float ds = pj * (dpj - Di) * scale;
            if (ds == 0.0f) continue;
            const float* kj = k + j * p.ldk + hk * D;
            float* dkj = dk + j * p.ldk + hk * D;
            for (int64_t c = 0; c < D; ++c) {
              dqi[c] += ds * kj[c];
              dkj[c] += ds * qi[c];
            }
          }
        }
      }
    }
  };
  if (pool && pool->size() > 1 && p.n_kv_heads > 1 && nq * nkv * D * G > 16384)
    pool->parallel_for(p.n_kv_heads, 1, per_kv_head);
  else
    per_kv_head(0, p.n_kv_heads);
}

// ---------------------------------------------------------------- loss
double cross_entropy(const float* logits, int64_t ld, const int32_t* targets, int64_t rows, int64_t V, float scale,
                     float* dlogits, ThreadPool* pool) {
  EMOLLM_CHECK_ARG(rows >= 0 && V > 0, "cross_entropy: bad shape");
  for (int64_t r = 0; r < rows; ++r)
    EMOLLM_CHECK_ARG(targets[r] >= 0 && targets[r] < V, "cross_entropy: target id out of range");
  std::vector<double> loss(size_t(rows), 0.0);
  detail::for_rows(pool, rows, V * 3, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = logits + r * ld;
      float mx = -INFINITY;
      for (int64_t i = 0; i < V; ++i) mx = std::max(mx, x[i]);
      double z = 0.0;
      for (int64_t i = 0; i < V; ++i) z += std::exp(double(x[i] - mx));
      const double lz = std::log(z) + double(mx);
      loss[size_t(r)] = lz - double(x[targets[r]]);
      if (dlogits) {
        float* d = dlogits + r * ld;
        for (int64_t i = 0; i < V; ++i) d[i] = float(std::exp(double(x[i]) - lz)) * scale;
        d[targets[r]] -= scale;
      }
    }
  });
  double sum = 0.0;
  for (double l : loss) sum += l;
  return sum;
}

// ---------------------------------------------------------------- optimizer
void adamw_update(float* value, const float* grad, float* m, float* v, int64_t n, const AdamWStep& s,
                  ThreadPool* pool) {
  EMOLLM_CHECK_ARG(n >= 0, "adamw_update: negative size");
  detail::for_elements(pool, n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float g = float(double(grad[i]) * s.clip);
      m[i] = s.b1 * m[i] + (1.0f - s.b1) * g;
      v[i] = s.b2 * v[i] + (1.0f - s.b2) * g * g;
      const double mh = double(m[i]) / s.bc1, vh = double(v[i]) / s.bc2;
      value[i] -= s.decay * value[i];
      value[i] -= float(s.lr * mh / (std::sqrt(vh) + s.eps));
    }
  });
}

double sum_squares(const float* x, int64_t n) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * double(x[i]);
  return ss;
}

// ---------------------------------------------------------------- scalar references
namespace ref {

void gemm_backward_x(const float* dY, const float* W, float* dX, int64_t M, int64_t N, int64_t K) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < K; ++c) {
      double s = 0.0;
      for (int64_t n = 0; n < N; ++n) s += double(dY[m * N + n]) * double(W[n * K + c]);
      dX[m * K + c] = float(s);
    }
}

void attention_backward(const float* q, const float* k, const float* v, const float* out, const float* dout,
                        float* dq, float* dk, float* dv, const AttentionParams& p) {
  (void)out;  // the reference recomputes everything from the definition, in double
  check_attention(p);
  const int64_t D = p.head_dim, G = p.n_heads / p.n_kv_heads;
  const double scale = p.scale != 0.0f ? p.scale : 1.0 / std::sqrt(double(D));
  std::vector<double> dqd(size_t(p.n_q * p.n_heads * D), 0.0), dkd(size_t(p.n_kv * p.n_kv_heads * D), 0.0),
      dvd(dkd.size(), 0.0);
  for (int64_t h = 0; h < p.n_heads; ++h) {
    const int64_t hk = h / G;
    for (int64_t i = 0; i < p.n_q; ++i) {
      const int64_t end = visible(p, i);
      if (end <= 0) continue;
      std::vector<double> s(static_cast<size_t>(end)), P(static_cast<size_t>(end)), dP(static_cast<size_t>(end));
      double mx = -INFINITY;
      for (int64_t j = 0; j < end; ++j) {
        double a = 0;
        for (int64_t c = 0; c < D; ++c) a += double(q[i * p.ldq + h * D + c]) * double(k[j * p.ldk + hk * D + c]);
        s[size_t(j)] = a * scale;
        mx = std::max(mx, s[size_t(j)]);
      }
      double z = 0;
      for (int64_t j = 0; j < end; ++j) z += std::exp(s[size_t(j)] - mx);
      for (int64_t j = 0; j < end; ++j) P[size_t(j)] = std::exp(s[size_t(j)] - mx) / z;
      // dP_j = dO . v_j ; dS = P (dP - sum_j P_j dP_j)
      double sum = 0;
      for (int64_t j = 0; j < end; ++j) {
        double a = 0;
        for (int64_t c = 0; c < D; ++c) a += double(dout[i * p.ldo + h * D + c]) * double(v[j * p.ldv + hk * D + c]);
        dP[size_t(j)] = a;
        sum += P[size_t(j)] * a;
      }
      for (int64_t j = 0; j < end; ++j) {
        const double ds = P[size_t(j)] * (dP[size_t(j)] - sum) * scale;
        for (int64_t c = 0; c < D; ++c) {
          dqd[size_t((i * p.n_heads + h) * D + c)] += ds * double(k[j * p.ldk + hk * D + c]);
          dkd[size_t((j * p.n_kv_heads + hk) * D + c)] += ds * double(q[i * p.ldq + h * D + c]);
          dvd[size_t((j * p.n_kv_heads + hk) * D + c)] += P[size_t(j)] * double(dout[i * p.ldo + h * D + c]);
        }
      }
    }
  }
  for (int64_t i = 0; i < p.n_q; ++i)
    for (int64_t c = 0; c < p.n_heads * D; ++c) dq[i * p.ldq + c] = float(dqd[size_t(i * p.n_heads * D + c)]);
  for (int64_t j = 0; j < p.n_kv; ++j)
    for (int64_t c = 0; c < p.n_kv_heads * D; ++c) {
      dk[j * p.ldk + c] = float(dkd[size_t(j * p.n_kv_heads * D + c)]);
      dv[j * p.ldv + c] = float(dvd[size_t(j * p.n_kv_heads * D + c)]);
    }
}

}  // namespace ref
}  // namespace emollm
