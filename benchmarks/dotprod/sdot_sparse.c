/*
 * sdot_sparse.c - int8-activation SparseLinear kernels for aarch64 with NEON dot-product instructions
 * (-march=armv8.2-a+dotprod), benchmarked by bench_dotprod.py (issue 15, item 2).
 *
 *   Y[t, o] = bias[o] + scale_w[o] * scale_x[t] * sum_i q_x[t, i] * q_w[o, i]
 *
 * W [n, k] is cut into 4x4 tiles (4 outputs x 4 inputs); a kept tile is stored as 16 int8, row-major (row j
 * = output 4r+j, its 4 bytes = inputs 4c..4c+3), zeros where the pattern drops a weight, so `sdot` consumes
 * it whole. Activations are quantized per token inside the measured functions (symmetric, scale_x = max |x|
 * / 127, round to nearest) into q_x laid out [token block of 16][tile column][token][4 inputs], so one tile
 * column's 4 inputs of 16 tokens are 64 contiguous bytes (4 vector registers). Accumulation is int32; the
 * tile row's accumulators are dequantized once (scvtf, one fmul, one fmla with the bias) and stored.
 *
 * Layouts (every function of the measured region starts with dp_):
 *   a  "outputs in lanes": sdot(acc[t], tile, x_group, lane t%4): one sdot = a whole tile (4 outputs x 4
 *      inputs) for one token, 16 sdots per tile for 16 tokens, whatever the pattern keeps.
 *   b  "tokens in lanes": sdot(acc[g][j], x_group g, tile, lane j): one sdot = tile row j (one output x 4
 *      inputs) for 4 tokens; a tile row the pattern empties is skipped. Tiles of a tile row are grouped in
 *      runs of one row mask (bit j: row j keeps a weight), each run a loop specialised for its mask, so a
 *      tile costs 4 sdots per non-empty row.
 *   Both go two tiles per loop step (a run or tile row of odd length starts with one tile alone). gcc 12
 *   -O2 makes of a step 2 ldrh (tile columns), 1 ld1 of both tiles' values, 2 add + 2 ld1 of 4 registers
 *   (activations), a pointer add, cmp, b.hi: 5 instructions per tile besides its sdots (a: 21 per tile,
 *   b: 5 + 4 per non-empty row), plus per run in b a jump-table dispatch (~25).
 *   One token: layout a with a 1-token block (one sdot per tile), 4 tiles per loop step: per tile ldrh,
 *   ldr s (register offset), half an ldp q, sdot, plus 2 adds, cmp, b.hi per step: 4.5 per tile.
 *
 *   sdot_sparse MODE in.bin out.bin    MODE: 0 = everything but the kernel call (baseline), a, b
 *
 * in.bin (little-endian): int32 header {tokens, n, k, tiles, runs}, then float x[tokens][k], int32
 * row_ptr[n/4 + 1], int32 col[tiles], int8 values[tiles][16], int32 run_ptr[n/4 + 1], int32 run_mask[runs],
 * int32 run_end[runs], float scale[n], float bias[n]. out.bin: float y[tokens][n].
 */
#include <arm_neon.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))
#define NOINLINE __attribute__((noinline))
#define BLOCK 16 /* tokens per block: 16 int32x4 accumulators */

typedef struct {
  int n, k;
  const int32_t *row_ptr;  /* [n/4 + 1] first tile of each tile row */
  const uint16_t *col;     /* [tiles] tile column c as the offset of its activations: 64 c bytes (16
                              tokens), c words (1 token); set when loading, as the token block is known */
  const int8_t *values;    /* [tiles][16] */
  const int32_t *run_ptr;  /* layout b: [n/4 + 1] first run of each tile row */
  const uint8_t *run_mask; /* layout b: [runs] non-empty tile rows of the run's tiles */
  const int32_t *run_end;  /* layout b: [runs] one past the run's last tile */
  const float *scale;      /* [n] weight scale per output */
  const float *bias;       /* [n] */
} layer_t;

/* ---- activation quantization (measured) ---- */

INLINE float dp_absmax(const float *row, int k) {
  float32x4_t m0 = vdupq_n_f32(0.0f), m1 = m0, m2 = m0, m3 = m0;
  for (int i = 0; i < k; i += 16) {
    m0 = vmaxq_f32(m0, vabsq_f32(vld1q_f32(row + i)));
    m1 = vmaxq_f32(m1, vabsq_f32(vld1q_f32(row + i + 4)));
    m2 = vmaxq_f32(m2, vabsq_f32(vld1q_f32(row + i + 8)));
    m3 = vmaxq_f32(m3, vabsq_f32(vld1q_f32(row + i + 12)));
  }
  return vmaxvq_f32(vmaxq_f32(vmaxq_f32(m0, m1), vmaxq_f32(m2, m3)));
}

/* 16 floats -> 16 int8 (round to nearest even, saturating), in input order. */
INLINE int8x16_t dp_quantize16(const float *p, float inv) {
  int32x4_t q0 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(p), inv));
  int32x4_t q1 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(p + 4), inv));
  int32x4_t q2 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(p + 8), inv));
  int32x4_t q3 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(p + 12), inv));
  int16x8_t h0 = vqmovn_high_s32(vqmovn_s32(q0), q1);
  int16x8_t h1 = vqmovn_high_s32(vqmovn_s32(q2), q3);
  return vqmovn_high_s16(vqmovn_s16(h0), h1);
}

/* Token t's scale into sx[t]; its int8 values into xq at stride `col_stride` bytes per 4 inputs. */
INLINE void dp_quantize_token(const float *row, int k, int8_t *xq, int col_stride, float *sx) {
  float m = dp_absmax(row, k);
  float inv = m > 0.0f ? 127.0f / m : 0.0f;
  *sx = m / 127.0f;
  if (col_stride == 4) {
    for (int i = 0; i < k; i += 16) {
      vst1q_s8(xq + i, dp_quantize16(row + i, inv));
    }
    return;
  }
  for (int i = 0; i < k; i += 16, xq += 4 * col_stride) {
    int32x4_t w = vreinterpretq_s32_s8(dp_quantize16(row + i, inv));
    vst1q_lane_s32((int32_t *)xq, w, 0);
    vst1q_lane_s32((int32_t *)(xq + col_stride), w, 1);
    vst1q_lane_s32((int32_t *)(xq + 2 * col_stride), w, 2);
    vst1q_lane_s32((int32_t *)(xq + 3 * col_stride), w, 3);
  }
}

/* ---- dequantization of one tile row's accumulators for 16 tokens (measured) ---- */

#define REP4(M, a) M(a, 0) M(a, 1) M(a, 2) M(a, 3)
#define REP16(M) REP4(M, 0) REP4(M, 1) REP4(M, 2) REP4(M, 3)

/* acc_t (lanes: the tile row's 4 outputs) of token t -> y[t][o0..o0+3]. */
#define DEQUANT(g, l)                                                                                      \
  vst1q_f32(y + (size_t)(4 * (g) + (l)) * n,                                                             \
            vfmaq_f32(bias, vcvtq_f32_s32(acc##g##l), vmulq_laneq_f32(sw, sx##g, l)));

/* ---- layout a: outputs in lanes ---- */

#define A_ZERO(g, l) int32x4_t acc##g##l = vdupq_n_s32(0);
#define A_SDOT(g, l) acc##g##l = vdotq_laneq_s32(acc##g##l, w, x##g, l);
/* One tile: its column's 64 activation bytes (one ld1 of 4 registers), its 16 values, 16 sdots. */
#define A_TILE(offset, tile)                                                                               \
  {                                                                                                        \
    int8x16x4_t x = vld1q_s8_x4(xb + (offset));                                                            \
    int8x16_t x0 = x.val[0], x1 = x.val[1], x2 = x.val[2], x3 = x.val[3], w = (tile);                      \
    REP16(A_SDOT)                                                                                          \
  }

NOINLINE void dp_kernel_a16(const layer_t *L, int tokens, const int8_t *xq, const float *sxs, float *out) {
  const int n = L->n, cols = L->k / 4;
  for (int t0 = 0; t0 < tokens; t0 += BLOCK) {
    const int8_t *xb = xq + (size_t)t0 * cols * 4;
    __asm__("" : "+r"(xb)); /* one register: xb + offset is one add */
    for (int r = 0; r < n / 4; ++r) {
      REP16(A_ZERO)
      const int8_t *v = L->values + (size_t)L->row_ptr[r] * 16;
      const uint16_t *c = L->col + L->row_ptr[r], *end = L->col + L->row_ptr[r + 1];
      if ((end - c) & 1) { /* odd count: one tile alone, then two per step */
        A_TILE(c[0], vld1q_s8(v))
        ++c;
        v += 16;
      }
      for (; c < end; c += 2, v += 32) {
        int8x16x2_t w2 = vld1q_s8_x2(v); /* both tiles' values: one ld1 of 2 registers */
        A_TILE(c[0], w2.val[0])
        A_TILE(c[1], w2.val[1])
      }
      const float32x4_t sw = vld1q_f32(L->scale + 4 * r), bias = vld1q_f32(L->bias + 4 * r);
      /* loaded per tile row: kept live across the tile loop they made gcc spill accumulators */
      const float32x4_t sx0 = vld1q_f32(sxs + t0), sx1 = vld1q_f32(sxs + t0 + 4);
      const float32x4_t sx2 = vld1q_f32(sxs + t0 + 8), sx3 = vld1q_f32(sxs + t0 + 12);
      float *y = out + (size_t)t0 * n + 4 * r;
      REP16(DEQUANT)
    }
  }
}

/* One token's 4 int8 at word `index` of `base`, in lane 0: `ldr s` with a register offset, which none of
   the intrinsics' loads yields (ld1r / ld1 lane need the address in a register: one more instruction). */
INLINE int8x16_t dp_load_word(const int8_t *base, uint64_t index) {
  int8x16_t v;
  __asm__("ldr %s0, [%1, %2, lsl 2]" : "=w"(v) : "r"(base), "r"(index));
  return v;
}

/* One token: one sdot per tile (its 4 outputs against the token's 4 inputs), four tiles per step. */
NOINLINE void dp_kernel_a1(const layer_t *L, const int8_t *xq, float sx, float *y) {
  const int32_t *row_ptr = L->row_ptr;
  const uint16_t *col = L->col;
  const int8_t *values = L->values;
  const float *scale = L->scale, *bias = L->bias;
  for (int r = 0; r < L->n / 4; ++r) {
    int32x4_t acc0 = vdupq_n_s32(0), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    const int8_t *v = values + (size_t)row_ptr[r] * 16;
    const uint16_t *c = col + row_ptr[r], *end = col + row_ptr[r + 1];
    for (; (end - c) & 3; ++c, v += 16) {
      acc0 = vdotq_laneq_s32(acc0, vld1q_s8(v), dp_load_word(xq, c[0]), 0);
    }
    for (; c < end; c += 4, v += 64) {
      acc0 = vdotq_laneq_s32(acc0, vld1q_s8(v), dp_load_word(xq, c[0]), 0);
      acc1 = vdotq_laneq_s32(acc1, vld1q_s8(v + 16), dp_load_word(xq, c[1]), 0);
      acc2 = vdotq_laneq_s32(acc2, vld1q_s8(v + 32), dp_load_word(xq, c[2]), 0);
      acc3 = vdotq_laneq_s32(acc3, vld1q_s8(v + 48), dp_load_word(xq, c[3]), 0);
    }
    int32x4_t acc = vaddq_s32(vaddq_s32(acc0, acc1), vaddq_s32(acc2, acc3));
    float32x4_t s = vmulq_n_f32(vld1q_f32(scale + 4 * r), sx);
    vst1q_f32(y + 4 * r, vfmaq_f32(vld1q_f32(bias + 4 * r), vcvtq_f32_s32(acc), s));
  }
}

/* ---- layout b: tokens in lanes, empty tile rows skipped ---- */

/* accGJ: token group G (tokens 4G..4G+3 in lanes), tile row J. */
#define B_ZERO(g, j) int32x4_t acc##g##j = vdupq_n_s32(0);
#define B_ROW(M, j)                                                                                        \
  if ((M) & (1 << (j))) {                                                                                \
    acc0##j = vdotq_laneq_s32(acc0##j, x0, w, j);                                                          \
    acc1##j = vdotq_laneq_s32(acc1##j, x1, w, j);                                                          \
    acc2##j = vdotq_laneq_s32(acc2##j, x2, w, j);                                                          \
    acc3##j = vdotq_laneq_s32(acc3##j, x3, w, j);                                                          \
  }
#define B_TILE(M, offset, tile)                                                                            \
  {                                                                                                        \
    int8x16x4_t x = vld1q_s8_x4(xb + (offset));                                                            \
    int8x16_t x0 = x.val[0], x1 = x.val[1], x2 = x.val[2], x3 = x.val[3], w = (tile);                      \
    B_ROW(M, 0) B_ROW(M, 1) B_ROW(M, 2) B_ROW(M, 3)                                                        \
  }
#define B_RUN(M)                                                                                           \
  case M:                                                                                                  \
    if ((end - c) & 1) {                                                                                   \
      B_TILE(M, c[0], vld1q_s8(v))                                                                         \
      ++c;                                                                                                 \
      v += 16;                                                                                             \
    }                                                                                                      \
    for (; c < end; c += 2, v += 32) {                                                                     \
      int8x16x2_t w2 = vld1q_s8_x2(v);                                                                     \
      B_TILE(M, c[0], w2.val[0])                                                                           \
      B_TILE(M, c[1], w2.val[1])                                                                           \
    }                                                                                                      \
    break;
/* 4x4 transpose of group g's accumulators: rows (tile rows j) x lanes (tokens) -> per token, 4 outputs. */
#define B_TRANSPOSE(g)                                                                                     \
  {                                                                                                        \
    int32x4_t t0 = vtrn1q_s32(acc##g##0, acc##g##1), t1 = vtrn2q_s32(acc##g##0, acc##g##1);                \
    int32x4_t t2 = vtrn1q_s32(acc##g##2, acc##g##3), t3 = vtrn2q_s32(acc##g##2, acc##g##3);                \
    acc##g##0 = vreinterpretq_s32_s64(vtrn1q_s64(vreinterpretq_s64_s32(t0), vreinterpretq_s64_s32(t2)));  \
    acc##g##1 = vreinterpretq_s32_s64(vtrn1q_s64(vreinterpretq_s64_s32(t1), vreinterpretq_s64_s32(t3)));  \
    acc##g##2 = vreinterpretq_s32_s64(vtrn2q_s64(vreinterpretq_s64_s32(t0), vreinterpretq_s64_s32(t2)));  \
    acc##g##3 = vreinterpretq_s32_s64(vtrn2q_s64(vreinterpretq_s64_s32(t1), vreinterpretq_s64_s32(t3)));  \
  }

NOINLINE void dp_kernel_b16(const layer_t *L, int tokens, const int8_t *xq, const float *sxs, float *out) {
  const int n = L->n, cols = L->k / 4;
  for (int t0 = 0; t0 < tokens; t0 += BLOCK) {
    const int8_t *xb = xq + (size_t)t0 * cols * 4;
    __asm__("" : "+r"(xb)); /* one register: xb + offset is one add */
    for (int r = 0; r < n / 4; ++r) {
      REP16(B_ZERO)
      const uint16_t *c = L->col + L->row_ptr[r];
      const int8_t *v = L->values + (size_t)L->row_ptr[r] * 16;
      for (int run = L->run_ptr[r]; run < L->run_ptr[r + 1]; ++run) {
        const uint16_t *end = L->col + L->run_end[run];
        switch (L->run_mask[run]) {
          B_RUN(1) B_RUN(2) B_RUN(3) B_RUN(4) B_RUN(5) B_RUN(6) B_RUN(7) B_RUN(8)
          B_RUN(9) B_RUN(10) B_RUN(11) B_RUN(12) B_RUN(13) B_RUN(14) B_RUN(15)
          default:
            break;
        }
      }
      B_TRANSPOSE(0) B_TRANSPOSE(1) B_TRANSPOSE(2) B_TRANSPOSE(3)
      const float32x4_t sw = vld1q_f32(L->scale + 4 * r), bias = vld1q_f32(L->bias + 4 * r);
      /* loaded per tile row: kept live across the tile loop they made gcc spill accumulators */
      const float32x4_t sx0 = vld1q_f32(sxs + t0), sx1 = vld1q_f32(sxs + t0 + 4);
      const float32x4_t sx2 = vld1q_f32(sxs + t0 + 8), sx3 = vld1q_f32(sxs + t0 + 12);
      float *y = out + (size_t)t0 * n + 4 * r;
      REP16(DEQUANT)
    }
  }
}

/* ---- the measured entry: quantize X, run the kernel, dequantize into y ---- */

NOINLINE void dp_linear(const layer_t *L, char layout, int tokens, const float *x, int8_t *xq, float *sx,
                        float *y) {
  const int k = L->k;
  if (tokens == 1) {
    dp_quantize_token(x, k, xq, 4, sx);
    dp_kernel_a1(L, xq, sx[0], y);
    return;
  }
  for (int t = 0; t < tokens; ++t) {
    int8_t *dst = xq + ((size_t)(t / BLOCK) * (k / 4) * BLOCK + t % BLOCK) * 4;
    dp_quantize_token(x + (size_t)t * k, k, dst, 4 * BLOCK, sx + t);
  }
  if (layout == 'a') {
    dp_kernel_a16(L, tokens, xq, sx, y);
  } else {
    dp_kernel_b16(L, tokens, xq, sx, y);
  }
}

/* ---- harness (not measured) ---- */

static void *read_all(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    return NULL;
  }
  fseek(f, 0, SEEK_END);
  *size = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  void *data = malloc(*size);
  if (data == NULL || fread(data, 1, *size, f) != *size) {
    fclose(f);
    return NULL;
  }
  fclose(f);
  return data;
}

int main(int argc, char **argv) {
  if (argc != 4 || strlen(argv[1]) != 1 || strchr("0ab", argv[1][0]) == NULL) {
    fprintf(stderr, "usage: %s 0|a|b in.bin out.bin\n", argv[0]);
    return 2;
  }
  size_t size;
  const char *p = read_all(argv[2], &size);
  if (p == NULL) {
    fprintf(stderr, "cannot read %s\n", argv[2]);
    return 1;
  }
  int32_t header[5];
  memcpy(header, p, sizeof header);
  p += sizeof header;
  const int tokens = header[0], n = header[1], k = header[2], tiles = header[3], runs = header[4];
  if (n % 4 || k % 16 || !(tokens == 1 || tokens % BLOCK == 0)) {
    fprintf(stderr, "need n %% 4 == 0, k %% 16 == 0, tokens 1 or a multiple of %d\n", BLOCK);
    return 1;
  }
  const float *x = (const float *)p;
  p += (size_t)tokens * k * 4;
  const int32_t *row_ptr = (const int32_t *)p;
  p += (size_t)(n / 4 + 1) * 4;
  const int32_t *col32 = (const int32_t *)p;
  p += (size_t)tiles * 4;
  const int8_t *values = (const int8_t *)p;
  p += (size_t)tiles * 16;
  const int32_t *run_ptr = (const int32_t *)p;
  p += (size_t)(n / 4 + 1) * 4;
  const int32_t *mask32 = (const int32_t *)p;
  p += (size_t)runs * 4;
  const int32_t *run_end = (const int32_t *)p;
  p += (size_t)runs * 4;
  const float *scale = (const float *)p;
  const float *bias = scale + n;

  uint16_t *col = malloc((size_t)tiles * sizeof *col + 2);
  uint8_t *run_mask = malloc((size_t)runs + 1);
  int8_t *xq = calloc((size_t)(tokens + BLOCK) * k, 1);
  float *sx = calloc((size_t)tokens + BLOCK, sizeof *sx);
  float *y = calloc((size_t)tokens * n, sizeof *y);
  if (col == NULL || run_mask == NULL || xq == NULL || sx == NULL || y == NULL) {
    return 1;
  }
  for (int i = 0; i < tiles; ++i) {
    int32_t offset = tokens == 1 ? col32[i] : col32[i] * 4 * BLOCK;
    if (offset > UINT16_MAX) {
      fprintf(stderr, "k too large for 16-bit activation offsets\n");
      return 1;
    }
    col[i] = (uint16_t)offset;
  }
  for (int i = 0; i < runs; ++i) {
    run_mask[i] = (uint8_t)mask32[i];
  }
  layer_t layer = {n, k, row_ptr, col, values, run_ptr, run_mask, run_end, scale, bias};
  if (argv[1][0] != '0') {
    dp_linear(&layer, argv[1][0], tokens, x, xq, sx, y);
  }
  FILE *f = fopen(argv[3], "wb");
  if (f == NULL || fwrite(y, sizeof *y, (size_t)tokens * n, f) != (size_t)tokens * n) {
    fprintf(stderr, "cannot write %s\n", argv[3]);
    return 1;
  }
  fclose(f);
  return 0;
}
