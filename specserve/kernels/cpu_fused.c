// Fused element-wise steps of a Llama layer on CPU: residual add + RMSNorm, RoPE + KV-cache write,
// SiLU-and-multiply.
//
// Why: at decode the weights stream in ~14 ms (bfloat16), and the ~25 small PyTorch ops per layer around
// them cost several ms more in dispatch and allocation. Each function replaces 3-8 of those ops with one
// call. Numerics follow the PyTorch path: float32 maths, rounding to bfloat16 where PyTorch rounds.
// Dimensions must be multiples of 16 (the Python side checks and otherwise keeps the PyTorch ops).
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu_common.h"


// sum = x + h (rounded to the dtype, as PyTorch's add), or no sum when h is NULL (then x is normalised);
// out = RMSNorm(sum) * weight. bfloat16 as the HF reference: normalise in float32, round, multiply by
// the bfloat16 weight, round again.
void specserve_add_rms_norm(const void* x, const void* h, void* sum, void* out, const void* weight,
                            int rows, int dim, float eps, int bf16) {
  for (int r = 0; r < rows; r++) {
    const int64_t base = (int64_t)r * dim;
    const void* src = x;
    __m512 ss = _mm512_setzero_ps();
    for (int d = 0; d < dim; d += 16) {
      __m512 v = load16(x, base + d, bf16);
      if (h) {
        v = _mm512_add_ps(v, load16(h, base + d, bf16));
        if (bf16) v = round_bf16(v);
        store16(sum, base + d, v, bf16);
      }
      ss = _mm512_fmadd_ps(v, v, ss);
    }
    if (h) src = sum;
    __m512 inv = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(ss) / dim + eps));
    for (int d = 0; d < dim; d += 16) {
      __m512 v = _mm512_mul_ps(load16(src, base + d, bf16), inv);
      if (bf16) v = round_bf16(v);
      store16(out, base + d, _mm512_mul_ps(v, load16(weight, d, bf16)), bf16);
    }
  }
}

// qkv [T, (H + 2 Hkv) D] (one fused projection) -> q_out [T, H, D] rotated; k rotated and v copied into
// the caches [num_slots, Hkv, D] at slots[t]. cos/sin [T, D] with the rotate-half sign folded into sin
// (RotaryEmbedding's tables): x' = x * cos + [x2, x1] * sin. bfloat16 rounds x * cos first and the sum
// once, as PyTorch's mul and addcmul do. D is a multiple of 32 (each half a multiple of 16).
void specserve_rope_write_kv(const void* qkv, const void* cos, const void* sin, void* q_out, void* k_cache,
                             void* v_cache, const int64_t* slots, int T, int H, int Hkv, int D, int bf16) {
  const int width = (H + 2 * Hkv) * D, half = D / 2;
  const size_t esz = bf16 ? 2 : 4;
  for (int t = 0; t < T; t++) {
    const int64_t row = (int64_t)t * width, cs = (int64_t)t * D;
    for (int head = 0; head < H + Hkv; head++) {
      const int64_t src = row + (int64_t)head * D;
      void* dst = head < H ? q_out : k_cache;
      const int64_t dbase = head < H ? ((int64_t)t * H + head) * D : (slots[t] * Hkv + (head - H)) * D;
      for (int d = 0; d < D; d += 16) {
        __m512 xv = load16(qkv, src + d, bf16);
        __m512 other = load16(qkv, src + (d < half ? d + half : d - half), bf16);
        __m512 xc = _mm512_mul_ps(xv, load16(cos, cs + d, bf16));
        if (bf16) xc = round_bf16(xc);
        store16(dst, dbase + d, _mm512_fmadd_ps(other, load16(sin, cs + d, bf16), xc), bf16);
      }
    }
    for (int kvh = 0; kvh < Hkv; kvh++) {
      const int64_t src = row + (int64_t)(H + Hkv + kvh) * D, dst = (slots[t] * Hkv + kvh) * D;
      memcpy((char*)v_cache + dst * esz, (const char*)qkv + src * esz, (size_t)D * esz);
    }
  }
}

// gate_up [T, 2 I] -> out [T, I] = silu(gate) * up; bfloat16 rounds silu's result first, as PyTorch does.
void specserve_silu_mul(const void* gate_up, void* out, int T, int I, int bf16) {
  for (int t = 0; t < T; t++) {
    const int64_t g = (int64_t)t * 2 * I, o = (int64_t)t * I;
    for (int i = 0; i < I; i += 16) {
      __m512 x = load16(gate_up, g + i, bf16);
      __m512 s = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), exp512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
      if (bf16) s = round_bf16(s);
      store16(out, o + i, _mm512_mul_ps(s, load16(gate_up, g + I + i, bf16)), bf16);
    }
  }
}
