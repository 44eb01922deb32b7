/*
 * Convolution helpers of the Quantization Explorer (built by explorer/kernels/native_build.py,
 * called through ctypes by explorer/kernels/conv_ops.py).
 *
 * Our own int8 convolutions (qe_conv_a8, qe_dwconv_a8: see the section below) compete, by
 * measured time, with oneDNN's int8 convolution where it is exact (VNNI/AMX) and with im2col
 * plus one of our linear kernels; this file also holds the parts around those that torch would
 * otherwise do in several passes, and the weight-only depthwise convolution:
 *
 * qe_quant_u8_nhwc  float NCHW activations -> uint8 NHWC codes in one pass (quantize + the
 *                   layout change oneDNN wants), with the arithmetic of
 *                   explorer.quant.primitives.quantize: float32 division, round half to even,
 *                   add the zero point, clamp.  Bit-identical codes.
 * qe_im2col_f32     float NCHW -> the [N*Ho*Wo, Kpad] patch matrix (PyTorch's weight order:
 *                   channel, kernel row, kernel column), zero-filled outside the image and in
 *                   the columns K..Kpad-1 (so K can be padded to what a linear kernel needs).
 * qe_dwconv_wo      depthwise convolution of float activations with weights read from their
 *                   stored codes (any width 2..8: signed int8 at 8 bits, else the packed
 *                   little-endian bitstream of explorer.quant.packing), one scale and zero point
 *                   per channel.  Each channel's kh*kw taps are decoded to float in registers
 *                   (scale * (code - zero), the same float32 value the reference dequantizes),
 *                   then the plane is convolved; sums are float32, so results are close to the
 *                   float reference, not bit-identical.
 *
 * Rounding: (v + 1.5 * 2^23) - 1.5 * 2^23 rounds to nearest even for |v| < 2^22 in the default
 * rounding mode (larger floats are integers already, and clamp anyway), so no libm call and the
 * loop vectorizes.  Compiled without -ffast-math, which would fold it away.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define QC_X86 1
#include <immintrin.h>
#else
#define QC_X86 0
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__GNUC__)
#define QE_EXPORT __attribute__((visibility("default")))
#else
#define QE_EXPORT
#endif

#if QC_X86
#define QC_AVX2 __attribute__((target("avx2,fma")))
#define QC_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl")))
#endif

#define QE_CONV_ABI 2
/* Elements of work below which a call stays on one thread: a parallel region costs a few
 * microseconds on an idle machine, and a scheduler time slice per barrier on a loaded one, more
 * than small layers (a mobile network's 4x4 maps) take in all (torch's grain is 32768 too). */
#define QE_GRAIN 32768

QE_EXPORT int qe_conv_abi_version(void) { return QE_CONV_ABI; }

QE_EXPORT int qe_conv_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static inline float round_half_even(float v) {
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    float a = v < 0.0f ? -v : v;
    return a < 4194304.0f ? (v + magic) - magic : v;
}

static inline float clampf(float v, float lo, float hi) {
    /* NaN goes to lo, like an out-of-range code; torch leaves it undefined.  Selects, not
     * branches: they vectorize on AVX2 too (a branch per code mispredicts on signed data) */
    const float a = v >= lo ? v : lo;
    return a > hi ? hi : a;
}

static inline void qparams_from_range(float lo, float hi, int symmetric, float eps,
                                      float *scale_out, int *zero_out) {
    float scale;
    if (symmetric) {
        const float amax = -lo > hi ? -lo : hi;
        scale = amax / 127.0f;
    } else {
        scale = (hi - lo) / 255.0f;
    }
    if (!(scale >= eps)) scale = eps;
    int zero = 0;
    if (!symmetric) zero = (int)clampf(0.0f - round_half_even(lo / scale), 0.0f, 255.0f);
    *scale_out = scale;
    *zero_out = zero;
}

/* Dynamic per-tensor 8-bit qparams of x[0..count), the arithmetic of
 * explorer.quant.primitives.choose_qparams in float32: the range widened to hold 0; symmetric:
 * scale = max(-lo, hi) / 127, zero 0; else scale = (hi - lo) / 255 and
 * zero = clamp(0 - round(lo / scale), 0, 255); scales below eps become eps. */
QE_EXPORT int qe_act_qparams(const float *x, int64_t count, int symmetric, float eps,
                             float *scale_out, int *zero_out, int nthreads) {
    if (!x || !scale_out || !zero_out || count <= 0) return 1;
    float lo = 0.0f, hi = 0.0f; /* the range always holds 0 */
    (void)nthreads;
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1 && count > 2 * QE_GRAIN) \
    reduction(min : lo) reduction(max : hi) schedule(static)
    for (int64_t i = 0; i < count; i++) {
        const float v = x[i];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    qparams_from_range(lo, hi, symmetric, eps, scale_out, zero_out);
    return 0;
}

static void qc_quant_rows(int isa, const float *x, int x_nhwc, int64_t n, int64_t c, int64_t hw,
                          int64_t cp, float s0, float z0, const float *xs, const int32_t *zp,
                          float lo, float hi, int offset, uint8_t *xb);
static int qe_conv_isa_now(void);

/* out[(b*hw + p)*c + ch] = clamp(round(x[(b*c + ch)*hw + p] / scale) + zero, lo, hi) + offset;
 * hw == 1: x is already pixel-major (NHWC), a plain element-wise map.  Vectorized per
 * instruction set (qc_quant_rows), split over the batch (or pixels) across threads. */
QE_EXPORT int qe_quant_u8_nhwc(const float *x, uint8_t *out, int64_t n, int64_t c, int64_t hw,
                               float scale, float zero, float lo, float hi, int offset,
                               int nthreads) {
    if (!x || !out || n < 0 || c <= 0 || hw < 0 || !(scale > 0.0f)) return 1;
    if (lo + (float)offset < 0.0f || hi + (float)offset > 255.0f) return 2;
    const int isa = qe_conv_isa_now();
    const int64_t per = hw > 1 ? 1 : 256; /* images, or pixels, a task */
    const int64_t tasks = (n + per - 1) / per;
    (void)nthreads;
    const int par = nthreads > 1 && tasks > 1 && n * c * hw > QE_GRAIN;
    (void)par; /* unused without OpenMP */
#pragma omp parallel for num_threads(nthreads) if (par) schedule(static)
    for (int64_t t = 0; t < tasks; t++) {
        const int64_t b0 = t * per, nb = b0 + per < n ? per : n - b0;
        qc_quant_rows(isa, x + b0 * c * hw, hw == 1, nb, c, hw, c, scale, zero, NULL, NULL, lo,
                      hi, offset, out + b0 * hw * c);
    }
    return 0;
}

/* First and one-past-last output index o (in [0, out)) whose input index o*s + off lies in
 * [0, in); off = kernel offset minus padding. */
static inline void valid_range(int64_t in, int64_t out, int64_t s, int64_t off, int64_t *o0,
                               int64_t *o1) {
    int64_t lo = off >= 0 ? 0 : (-off + s - 1) / s;
    int64_t hi = in - 1 - off < 0 ? 0 : (in - 1 - off) / s + 1;
    if (hi > out) hi = out;
    if (lo > hi) lo = hi;
    *o0 = lo;
    *o1 = hi;
}

QE_EXPORT int qe_im2col_f32(const float *x, float *out, int64_t n, int64_t c, int64_t h,
                            int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                            int64_t pw, int64_t dh, int64_t dw, int64_t ho, int64_t wo,
                            int64_t kpad, int nthreads) {
    if (!x || !out || n < 0 || c <= 0 || h <= 0 || w <= 0 || kh <= 0 || kw <= 0 || sh <= 0 ||
        sw <= 0 || dh <= 0 || dw <= 0 || ph < 0 || pw < 0 || ho < 0 || wo < 0)
        return 1;
    const int64_t k = c * kh * kw;
    if (kpad < k) return 2;
    const int64_t rows = n * ho;
    (void)nthreads;
    /* one task per output row (b, oy): its wo patch rows are written front to back */
    const int par = nthreads > 1 && rows > 1 && rows * wo * kpad > QE_GRAIN;
    (void)par; /* unused without OpenMP */
#pragma omp parallel for num_threads(nthreads) if (par) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t b = r / ho, oy = r % ho;
        float *orow = out + r * wo * kpad;
        for (int64_t ox = 0; ox < wo; ox++) {
            float *o = orow + ox * kpad;
            for (int64_t ch = 0; ch < c; ch++) {
                const float *xc = x + (b * c + ch) * h * w;
                for (int64_t ky = 0; ky < kh; ky++) {
                    const int64_t iy = oy * sh - ph + ky * dh;
                    float *ok = o + (ch * kh + ky) * kw;
                    if (iy < 0 || iy >= h) {
                        memset(ok, 0, (size_t)kw * sizeof(float));
                        continue;
                    }
                    const float *xr = xc + iy * w;
                    for (int64_t kx = 0; kx < kw; kx++) {
                        const int64_t ix = ox * sw - pw + kx * dw;
                        ok[kx] = (ix >= 0 && ix < w) ? xr[ix] : 0.0f;
                    }
                }
            }
            if (kpad > k) memset(o + k, 0, (size_t)(kpad - k) * sizeof(float));
        }
    }
    return 0;
}

/* Stored code i of a packed little-endian bitstream of `bits`-bit codes (bits < 8). */
static inline int packed_code(const uint8_t *data, int64_t i, int bits) {
    const int64_t bit = i * bits;
    const int64_t byte = bit >> 3;
    const int shift = (int)(bit & 7);
    unsigned v = data[byte];
    if (shift + bits > 8) v |= (unsigned)data[byte + 1] << 8;
    return (int)((v >> shift) & ((1u << bits) - 1u));
}

QE_EXPORT int qe_dwconv_wo(const float *x, const void *codes, int bits, const float *scale,
                           const float *zero, const float *bias, float *y, int64_t n, int64_t c,
                           int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                           int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t ho, int64_t wo,
                           int nthreads) {
    if (!x || !codes || !scale || !zero || !y || n < 0 || c <= 0 || h <= 0 || w <= 0 ||
        kh <= 0 || kw <= 0 || sh <= 0 || sw <= 0 || dh <= 0 || dw <= 0 || ph < 0 || pw < 0 ||
        ho < 0 || wo < 0)
        return 1;
    if (bits < 2 || bits > 8) return 2;
    const int64_t taps = kh * kw;
    if (taps > 64) return 3; /* the taps live in a stack array */
    const int64_t planes = n * c;
    (void)nthreads;
    const int par = nthreads > 1 && planes > 1 && planes * ho * wo * taps > QE_GRAIN;
    (void)par; /* unused without OpenMP */
#pragma omp parallel for num_threads(nthreads) if (par) schedule(static)
    for (int64_t pl = 0; pl < planes; pl++) {
        const int64_t ch = pl % c;
        float tap[64];
        for (int64_t t = 0; t < taps; t++) {
            const int64_t i = ch * taps + t;
            const int code = bits == 8 ? (int)((const int8_t *)codes)[i]
                                       : packed_code((const uint8_t *)codes, i, bits);
            tap[t] = ((float)code - zero[ch]) * scale[ch];
        }
        const float b0 = bias ? bias[ch] : 0.0f;
        const float *xp = x + pl * h * w;
        float *yp = y + pl * ho * wo;
        for (int64_t oy = 0; oy < ho; oy++) {
            float *yr = yp + oy * wo;
            for (int64_t ox = 0; ox < wo; ox++) yr[ox] = b0;
            for (int64_t ky = 0; ky < kh; ky++) {
                const int64_t iy = oy * sh - ph + ky * dh;
                if (iy < 0 || iy >= h) continue;
                const float *xr = xp + iy * w;
                for (int64_t kx = 0; kx < kw; kx++) {
                    const float wt = tap[ky * kw + kx];
                    const int64_t off = kx * dw - pw;
                    int64_t o0, o1;
                    valid_range(w, wo, sw, off, &o0, &o1);
                    if (sw == 1) {
                        for (int64_t ox = o0; ox < o1; ox++) yr[ox] += wt * xr[ox + off];
                    } else {
                        for (int64_t ox = o0; ox < o1; ox++) yr[ox] += wt * xr[ox * sw + off];
                    }
                }
            }
        }
    }
    return 0;
}


/* ---------------------------------------------------------------------------------------------
 * Int8 convolutions of our own (W8A8: uint8/int8 activation codes x symmetric int8 weights).
 *
 * qe_conv_a8     dense convolution as an implicit GEMM over output pixels: the input is
 *                quantized once into uint8 NHWC codes (channels padded to a multiple of 4 with
 *                the zero point's code), and each output pixel's patch row is read straight
 *                from there, tap by tap (no patch matrix).  Weights are packed once
 *                (qe_conv_a8_pack) into panels of 16 output channels, 4 consecutive K values
 *                per int32 lane, K ordered (kernel row, kernel column, channel) as NHWC reads
 *                it: the layout AVX-512 VNNI's vpdpbusd multiplies (64 uint8 x int8 products an
 *                instruction).  The micro-kernel keeps 4 pixels x 64 outputs in 16 registers.
 *                The same panels follow as int16, K in pairs, for the AVX2 path's vpmaddwd
 *                (4 pixels x 16 outputs in 8 registers).
 *                The int32 sums are exact; the epilogue is
 *                y = (float)(acc - zu * wsum[o]) * (xs * ws[o]) + bias[o]
 *                in float32, the same operations on every path, so the paths agree bit for bit.
 *                Activations per tensor (any geometry), per pixel (1x1 without padding, where
 *                a pixel is a patch row), or per patch row with any window: then each row is
 *                quantized on its own into a uint8 patch matrix (an im2col in C, fused with
 *                the quantization) that the same GEMM reads.  Output: float NHWC [N,Ho,Wo,O].
 * qe_dwconv_a8   depthwise convolution of int8 activation codes with int8 weight codes, in
 *                float32 on the integer values (code - zero) x weight code: each product is an
 *                integer below 2^15 and a sum of at most 64 of them is below 2^24, so float32
 *                holds them exactly: the integer result, vectorized across channels (NHWC) by
 *                the compiler for each instruction set.  Output: float NHWC.
 *
 * Instruction-set paths (numbered as in qe_kernels.c): 0 scalar, 1 avx2, 3 avx512_vnni, for
 * both kernels.  The dense kernel's AVX2 path multiplies int16 codes by int16 copies of the
 * panels with vpmaddwd (qc_conv_avx2), exact where vpmaddubsw's int16 pairs would saturate.
 * qe_conv_set_isa forces a lower path (tests run each path the CPU has).
 * ------------------------------------------------------------------------------------------- */

enum { QC_ISA_SCALAR = 0, QC_ISA_AVX2 = 1, QC_ISA_AVXVNNI = 2, QC_ISA_AVX512VNNI = 3 };
static int qc_forced_isa = -1;

static int qc_cpu_has(int isa) {
#if QC_X86 && defined(__GNUC__)
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    switch (isa) {
        case QC_ISA_SCALAR: return 1;
        case QC_ISA_AVX2: return avx2;
        case QC_ISA_AVX512VNNI:
            return avx2 && __builtin_cpu_supports("avx512f") &&
                   __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                   __builtin_cpu_supports("avx512vnni");
        default: return 0;
    }
#else
    return isa == QC_ISA_SCALAR;
#endif
}

/* 1 if this CPU has path `isa` (0 scalar, 1 avx2, 3 avx512_vnni; 2, AVX-VNNI, is not a path
 * of this library). */
QE_EXPORT int qe_conv_isa_supported(int isa) { return isa >= 0 && qc_cpu_has(isa); }

/* Force path `isa` (-1: the best the CPU has); 1 if the CPU lacks it. */
QE_EXPORT int qe_conv_set_isa(int isa) {
    if (isa < 0) {
        qc_forced_isa = -1;
        return 0;
    }
    if (!qc_cpu_has(isa)) return 1;
    qc_forced_isa = isa;
    return 0;
}

QE_EXPORT int qe_conv_isa(void) { return qe_conv_isa_now(); }

static int qe_conv_isa_now(void) {
    if (qc_forced_isa >= 0) return qc_forced_isa;
    if (qc_cpu_has(QC_ISA_AVX512VNNI)) return QC_ISA_AVX512VNNI;
    if (qc_cpu_has(QC_ISA_AVX2)) return QC_ISA_AVX2;
    return QC_ISA_SCALAR;
}

#define QC_PR 16 /* output channels per weight panel */
#define QC_MAX_K 65536 /* K * 255 * 128 < 2^31: the int32 sums cannot overflow */

static inline int64_t qc_round4(int64_t v) { return (v + 3) / 4 * 4; }

/* Bytes of the packed weights of a dense convolution: int8 codes, int32 sums per output, then
 * the codes again as int16 for the AVX2 path (qc_conv_avx2). */
QE_EXPORT int64_t qe_conv_a8_packed_bytes(int64_t o, int64_t c, int64_t taps) {
    if (o <= 0 || c <= 0 || taps <= 0) return -1;
    const int64_t np = (o + QC_PR - 1) / QC_PR;
    return np * taps * qc_round4(c) * QC_PR * 3 + np * QC_PR * 4;
}

/* w: int8 [O, C, kh*kw] (PyTorch's order) -> panels [O/16][taps * Cp/4][16][4], sums, and
 * int16 panels [O/16][taps * Cp/2][16][2]. */
QE_EXPORT int qe_conv_a8_pack(const int8_t *w, int64_t o, int64_t c, int64_t taps, void *out) {
    if (!w || !out || o <= 0 || c <= 0 || taps <= 0) return 1;
    const int64_t cp = qc_round4(c), np = (o + QC_PR - 1) / QC_PR, k4 = taps * cp / 4;
    int8_t *d = (int8_t *)out;
    int32_t *wsum = (int32_t *)(d + np * k4 * 64);
    int16_t *d16 = (int16_t *)(wsum + np * QC_PR);
    memset(out, 0, (size_t)qe_conv_a8_packed_bytes(o, c, taps));
    for (int64_t n = 0; n < o; n++) {
        const int64_t p = n / QC_PR, r = n % QC_PR;
        int32_t sum = 0;
        for (int64_t t = 0; t < taps; t++)
            for (int64_t ch = 0; ch < c; ch++) {
                const int8_t v = w[(n * c + ch) * taps + t];
                const int64_t k = t * cp + ch;
                d[((p * k4 + k / 4) * QC_PR + r) * 4 + k % 4] = v;
                d16[((p * k4 * 2 + k / 2) * QC_PR + r) * 2 + k % 2] = v;
                sum += v;
            }
        wsum[n] = sum;
    }
    return 0;
}

typedef struct {
    const uint8_t *xb;  /* [N, H, W, Cp] codes, shifted to uint8 */
    const uint8_t *pad; /* Cp codes of the zero point: padding pixels */
    const int16_t *x16, *pad16; /* AVX2 path: xb and pad widened to int16 */
    const int8_t *wp;   /* packed panels */
    const int32_t *wsum;
    const int16_t *w16; /* the panels as int16, K in pairs (AVX2) */
    const float *ws, *bias;
    const float *xs;   /* per input pixel (per_token), else NULL */
    const int32_t *zu; /* same */
    float xs0;
    int32_t zu0;
    float *y;
    int64_t n, h, w, cp, o, np, k4, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo;
} qc_conv_ctx;

/* Input pixel of output pixel m under tap (ky, kx), or -1 when it lies in the padding. */
static inline int64_t qc_in_pixel(const qc_conv_ctx *c, int64_t m, int64_t ky, int64_t kx) {
    const int64_t b = m / (c->ho * c->wo), r = m % (c->ho * c->wo);
    const int64_t iy = (r / c->wo) * c->sh - c->ph + ky * c->dh;
    const int64_t ix = (r % c->wo) * c->sw - c->pw + kx * c->dw;
    if (iy < 0 || iy >= c->h || ix < 0 || ix >= c->w) return -1;
    return (b * c->h + iy) * c->w + ix;
}

static inline void qc_row_qparams(const qc_conv_ctx *c, int64_t m, float *xs, int32_t *zu) {
    if (c->xs) { /* per pixel: 1x1, stride 1, no padding, so output pixel m reads pixel m */
        *xs = c->xs[m];
        *zu = c->zu[m];
    } else {
        *xs = c->xs0;
        *zu = c->zu0;
    }
}

static void qc_conv_scalar(const qc_conv_ctx *c, int64_t m0, int64_t m1) {
    const int64_t taps = c->kh * c->kw;
    for (int64_t m = m0; m < m1; m++) {
        float xs;
        int32_t zu;
        qc_row_qparams(c, m, &xs, &zu);
        for (int64_t n = 0; n < c->o; n++) {
            const int64_t p = n / QC_PR, r = n % QC_PR;
            int32_t acc = 0;
            for (int64_t t = 0; t < taps; t++) {
                const int64_t pix = qc_in_pixel(c, m, t / c->kw, t % c->kw);
                const uint8_t *xp = pix < 0 ? c->pad : c->xb + pix * c->cp;
                for (int64_t ch = 0; ch < c->cp; ch++) {
                    const int64_t k = t * c->cp + ch;
                    acc += (int32_t)xp[ch] * c->wp[((p * c->k4 + k / 4) * QC_PR + r) * 4 + k % 4];
                }
            }
            const float v = (float)(acc - zu * c->wsum[n]) * (xs * c->ws[n]);
            c->y[m * c->o + n] = c->bias ? v + c->bias[n] : v;
        }
    }
}

#if QC_X86
#define QC_VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

/* Pixels m..m+3 (rows past m1 read the padding and are not stored) x panels pb..pb+NR-1. */
static inline __attribute__((always_inline)) QC_VNNI void
qc_vnni_tile(const qc_conv_ctx *c, int64_t m, int64_t m1, int64_t pb, const int NR) {
    __m512i acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = _mm512_setzero_si512();
    const int64_t cq = c->cp / 4, pstride = c->k4 * 64;
    /* each pixel's image and top-left input corner, once per tile: no division per tap */
    int64_t img[4], y0[4], x0[4];
    for (int i = 0; i < 4; i++) {
        const int64_t mi = m + i < m1 ? m + i : m, r = mi % (c->ho * c->wo);
        img[i] = m + i < m1 ? mi / (c->ho * c->wo) : -1;
        y0[i] = (r / c->wo) * c->sh - c->ph;
        x0[i] = (r % c->wo) * c->sw - c->pw;
    }
    for (int64_t ky = 0; ky < c->kh; ky++)
        for (int64_t kx = 0; kx < c->kw; kx++) {
            const uint8_t *xp[4];
            for (int i = 0; i < 4; i++) {
                const int64_t iy = y0[i] + ky * c->dh, ix = x0[i] + kx * c->dw;
                const int in = img[i] >= 0 && iy >= 0 && iy < c->h && ix >= 0 && ix < c->w;
                xp[i] = in ? c->xb + ((img[i] * c->h + iy) * c->w + ix) * c->cp : c->pad;
            }
            const int8_t *wt = c->wp + pb * pstride + (ky * c->kw + kx) * cq * 64;
            for (int64_t q = 0; q < cq; q++) {
                __m512i wv[4];
                for (int j = 0; j < NR; j++)
                    wv[j] = _mm512_loadu_si512((const void *)(wt + j * pstride + q * 64));
                for (int i = 0; i < 4; i++) {
                    int32_t x4;
                    memcpy(&x4, xp[i] + q * 4, 4);
                    const __m512i xv = _mm512_set1_epi32(x4);
                    for (int j = 0; j < NR; j++) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], xv, wv[j]);
                }
            }
        }
    for (int i = 0; i < 4 && m + i < m1; i++) {
        float xs;
        int32_t zu;
        qc_row_qparams(c, m + i, &xs, &zu);
        const __m512i zv = _mm512_set1_epi32(zu);
        const __m512 xsv = _mm512_set1_ps(xs);
        for (int j = 0; j < NR; j++) {
            const int64_t n0 = (pb + j) * QC_PR;
            const int64_t cnt = c->o - n0 < QC_PR ? c->o - n0 : QC_PR;
            const __mmask16 mask = (__mmask16)((1u << cnt) - 1u);
            const __m512i ws = _mm512_loadu_si512((const void *)(c->wsum + n0));
            const __m512i d = _mm512_sub_epi32(acc[i][j], _mm512_mullo_epi32(zv, ws));
            const __m512 scale = _mm512_mul_ps(xsv, _mm512_maskz_loadu_ps(mask, c->ws + n0));
            __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(d), scale);
            if (c->bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, c->bias + n0));
            _mm512_mask_storeu_ps(c->y + (m + i) * c->o + n0, mask, v);
        }
    }
}

QC_VNNI static void qc_conv_vnni(const qc_conv_ctx *c, int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; m += 4) {
        int64_t pb = 0;
        for (; pb + 4 <= c->np; pb += 4) qc_vnni_tile(c, m, m1, pb, 4);
        switch (c->np - pb) {
            case 3: qc_vnni_tile(c, m, m1, pb, 3); break;
            case 2: qc_vnni_tile(c, m, m1, pb, 2); break;
            case 1: qc_vnni_tile(c, m, m1, pb, 1); break;
            default: break;
        }
    }
}
#endif

/* o[i] = clamp(round(x[i] / s) + z, lo, hi) + off, i < len, as bytes (lo + off >= 0,
 * hi + off <= 255).  GCC vectorizes the scalar loop for AVX-512 (vpmovdb narrows the codes) but
 * not for AVX2, so the AVX2 path spells it out: the same float32 operations (vdivps, the
 * magic-number rounding where |v| < 2^22, maxps(v, lo), which gives lo for NaN like clampf,
 * then minps), truncated and packed to bytes. */
static inline void qc_codes_scalar(const float *x, int64_t len, float s, float z, float lo,
                                   float hi, float off, uint8_t *restrict o) {
    for (int64_t i = 0; i < len; i++)
        o[i] = (uint8_t)(int)(clampf(round_half_even(x[i] / s) + z, lo, hi) + off);
}

#if QC_X86
/* clamp(round(x / s) + z, lo, hi) of 8 floats, with the scalar path's float32 operations. */
static inline __attribute__((always_inline)) QC_AVX2 __m256 qc_code8(const float *x, __m256 sv,
                                                                     __m256 zv, __m256 lov,
                                                                     __m256 hiv) {
    const __m256 magic = _mm256_set1_ps(12582912.0f), big = _mm256_set1_ps(4194304.0f);
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 v = _mm256_div_ps(_mm256_loadu_ps(x), sv);
    const __m256 r = _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
    v = _mm256_blendv_ps(v, r, _mm256_cmp_ps(_mm256_and_ps(v, absm), big, _CMP_LT_OQ));
    return _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(v, zv), lov), hiv);
}

QC_AVX2 static void qc_codes_avx2(const float *x, int64_t len, float s, float z, float lo,
                                  float hi, float off, uint8_t *o) {
    const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(z), lov = _mm256_set1_ps(lo);
    const __m256 hiv = _mm256_set1_ps(hi), offv = _mm256_set1_ps(off);
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) {
        const __m256 v = qc_code8(x + i, sv, zv, lov, hiv);
        const __m256i q = _mm256_cvttps_epi32(_mm256_add_ps(v, offv));
        const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        _mm_storel_epi64((__m128i *)(o + i), _mm_packus_epi16(w, w));
    }
    qc_codes_scalar(x + i, len - i, s, z, lo, hi, off, o + i);
}

/* The depthwise kernel's codes minus the zero point, as floats (GCC left this loop scalar for
 * AVX2 as well). */
QC_AVX2 static void qc_fcodes_avx2(const float *x, int64_t len, float s, float z, float lo,
                                   float hi, float *o) {
    const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(z), lov = _mm256_set1_ps(lo);
    const __m256 hiv = _mm256_set1_ps(hi);
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) _mm256_storeu_ps(o + i, _mm256_sub_ps(qc_code8(x + i, sv, zv, lov, hiv), zv));
    for (; i < len; i++) o[i] = clampf(round_half_even(x[i] / s) + z, lo, hi) - z;
}
#endif

/* Codes of x (NCHW, or NHWC when x_nhwc) into xb [N*H*W, cp]: clamp(round(x / s) + z, lo, hi)
 * + offset, s and z per tensor (xs == NULL) or per pixel; channels c..cp-1 get z + offset.
 * NCHW input goes through a 32-pixel tile per channel, so the arithmetic runs on contiguous
 * vectors and only the byte stores are strided.  v256: the AVX2 instance (qc_codes_avx2). */
static inline __attribute__((always_inline)) void
qc_quant_body(const float *x, int x_nhwc, int64_t n, int64_t c, int64_t hw, int64_t cp, float s0,
              float z0, const float *xs, const int32_t *zp, float lo, float hi, int offset,
              uint8_t *xb, const int v256) {
    const float off = (float)offset;
    for (int64_t b = 0; b < n; b++) {
        if (x_nhwc || xs) {
            for (int64_t p = 0; p < hw; p++) {
                const int64_t pix = b * hw + p;
                const float s = xs ? xs[pix] : s0;
                const float z = xs ? (float)(zp[pix] - offset) : z0;
                uint8_t *restrict o = xb + pix * cp;
                if (x_nhwc) {
#if QC_X86
                    if (v256) {
                        qc_codes_avx2(x + pix * c, c, s, z, lo, hi, off, o);
                    } else
#endif
                        qc_codes_scalar(x + pix * c, c, s, z, lo, hi, off, o);
                } else {
                    const float *xr = x + b * c * hw + p;
                    for (int64_t ch = 0; ch < c; ch++)
                        o[ch] = (uint8_t)(int)(clampf(round_half_even(xr[ch * hw] / s) + z, lo, hi) +
                                               off);
                }
                for (int64_t ch = c; ch < cp; ch++) o[ch] = (uint8_t)(int)(z + off);
            }
            continue;
        }
        for (int64_t p0 = 0; p0 < hw; p0 += 32) {
            const int64_t len = hw - p0 < 32 ? hw - p0 : 32;
            uint8_t tile[32];
            for (int64_t ch = 0; ch < c; ch++) {
                const float *xr = x + (b * c + ch) * hw + p0;
#if QC_X86
                if (v256) {
                    qc_codes_avx2(xr, len, s0, z0, lo, hi, off, tile);
                } else
#endif
                    qc_codes_scalar(xr, len, s0, z0, lo, hi, off, tile);
                uint8_t *o = xb + (b * hw + p0) * cp + ch;
                for (int64_t p = 0; p < len; p++) o[p * cp] = tile[p];
            }
            for (int64_t p = 0; p < len; p++)
                for (int64_t ch = c; ch < cp; ch++)
                    xb[(b * hw + p0 + p) * cp + ch] = (uint8_t)(int)(z0 + off);
        }
    }
}

/* The same for the depthwise kernel: float codes minus the zero point, NHWC with a border of
 * ph rows and pw columns left for zeros ([N, H + 2ph, W + 2pw, c]): the code of a padding
 * zero minus the zero point is 0, so the convolution needs no bounds checks. */
static inline __attribute__((always_inline)) void
qc_quantf_body(const float *x, int x_nhwc, int64_t n, int64_t c, int64_t h, int64_t w,
               int64_t ph, int64_t pw, float s, float z, float lo, float hi, float *xf,
               const int v256) {
    const int64_t hw = h * w, hp = h + 2 * ph, wp = w + 2 * pw;
    for (int64_t b = 0; b < n; b++) {
        if (x_nhwc) {
            for (int64_t y = 0; y < h; y++) {
                const float *restrict xr = x + (b * h + y) * w * c;
                float *restrict o = xf + ((b * hp + y + ph) * wp + pw) * c;
#if QC_X86
                if (v256) {
                    qc_fcodes_avx2(xr, w * c, s, z, lo, hi, o);
                    continue;
                }
#endif
                for (int64_t i = 0; i < w * c; i++)
                    o[i] = clampf(round_half_even(xr[i] / s) + z, lo, hi) - z;
            }
            continue;
        }
        for (int64_t p0 = 0; p0 < hw; p0 += 32) {
            const int64_t len = hw - p0 < 32 ? hw - p0 : 32;
            float tile[32];
            int64_t dst[32];
            for (int64_t p = 0; p < len; p++)
                dst[p] = ((b * hp + (p0 + p) / w + ph) * wp + (p0 + p) % w + pw) * c;
            for (int64_t ch = 0; ch < c; ch++) {
                const float *restrict xr = x + (b * c + ch) * hw + p0;
#if QC_X86
                if (v256)
                    qc_fcodes_avx2(xr, len, s, z, lo, hi, tile);
                else
#endif
                    for (int64_t p = 0; p < len; p++)
                        tile[p] = clampf(round_half_even(xr[p] / s) + z, lo, hi) - z;
                for (int64_t p = 0; p < len; p++) xf[dst[p] + ch] = tile[p];
            }
        }
    }
}

#define QC_QUANT_ARGS                                                                          \
    const float *x, int x_nhwc, int64_t n, int64_t c, int64_t hw, int64_t cp, float s0, float z0, \
        const float *xs, const int32_t *zp, float lo, float hi, int offset, uint8_t *xb
#define QC_QUANT_CALL x, x_nhwc, n, c, hw, cp, s0, z0, xs, zp, lo, hi, offset, xb
#define QC_QUANTF_ARGS                                                                          \
    const float *x, int x_nhwc, int64_t n, int64_t c, int64_t h, int64_t w, int64_t ph,         \
        int64_t pw, float s, float z, float lo, float hi, float *xf
#define QC_QUANTF_CALL x, x_nhwc, n, c, h, w, ph, pw, s, z, lo, hi, xf

static void qc_quant_scalar(QC_QUANT_ARGS) { qc_quant_body(QC_QUANT_CALL, 0); }
static void qc_quantf_scalar(QC_QUANTF_ARGS) { qc_quantf_body(QC_QUANTF_CALL, 0); }
#if QC_X86
QC_AVX2 static void qc_quant_avx2(QC_QUANT_ARGS) { qc_quant_body(QC_QUANT_CALL, 1); }
QC_AVX512 static void qc_quant_avx512(QC_QUANT_ARGS) { qc_quant_body(QC_QUANT_CALL, 0); }
QC_AVX2 static void qc_quantf_avx2(QC_QUANTF_ARGS) { qc_quantf_body(QC_QUANTF_CALL, 1); }
QC_AVX512 static void qc_quantf_avx512(QC_QUANTF_ARGS) { qc_quantf_body(QC_QUANTF_CALL, 0); }
#endif

static void qc_quant_rows(int isa, QC_QUANT_ARGS) {
#if QC_X86
    if (isa >= QC_ISA_AVX512VNNI) {
        qc_quant_avx512(QC_QUANT_CALL);
        return;
    }
    if (isa >= QC_ISA_AVX2) {
        qc_quant_avx2(QC_QUANT_CALL);
        return;
    }
#endif
    (void)isa;
    qc_quant_scalar(QC_QUANT_CALL);
}

static void qc_quantf_rows(int isa, QC_QUANTF_ARGS) {
#if QC_X86
    if (isa >= QC_ISA_AVX512VNNI) {
        qc_quantf_avx512(QC_QUANTF_CALL);
        return;
    }
    if (isa >= QC_ISA_AVX2) {
        qc_quantf_avx2(QC_QUANTF_CALL);
        return;
    }
#endif
    (void)isa;
    qc_quantf_scalar(QC_QUANTF_CALL);
}

#if QC_X86
QC_AVX512 static void qc_range_avx512(const float *x, int64_t count, float *lo, float *hi) {
    __m512 l = _mm512_setzero_ps(), h = _mm512_setzero_ps();
    for (int64_t i = 0; i + 16 <= count; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        l = _mm512_min_ps(v, l);
        h = _mm512_max_ps(v, h);
    }
    /* the lanes hold no NaN (min_ps keeps its second operand on one), so a tree reduction
     * finds the same extremes (a zero's sign aside, which no qparam depends on) */
    const float lm = _mm512_reduce_min_ps(l), hm = _mm512_reduce_max_ps(h);
    *lo = lm < *lo ? lm : *lo;
    *hi = hm > *hi ? hm : *hi;
}

QC_AVX2 static void qc_range_avx2(const float *x, int64_t count, float *lo, float *hi) {
    __m256 l = _mm256_setzero_ps(), h = _mm256_setzero_ps();
    for (int64_t i = 0; i + 8 <= count; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        l = _mm256_min_ps(v, l);
        h = _mm256_max_ps(v, h);
    }
    float lv[8], hv[8];
    _mm256_storeu_ps(lv, l);
    _mm256_storeu_ps(hv, h);
    for (int j = 0; j < 8; j++) {
        *lo = lv[j] < *lo ? lv[j] : *lo;
        *hi = hv[j] > *hi ? hv[j] : *hi;
    }
}
#endif

/* The range [lo, hi] of x[0..count) together with 0 (NaN skipped), as qe_act_qparams takes it:
 * min_ps(v, lo) is "v < lo ? v : lo", the scalar loop's choice, so every path finds the same. */
static void qc_range(int isa, const float *x, int64_t count, float *lo_out, float *hi_out) {
    float lo = 0.0f, hi = 0.0f;
    int64_t i = 0;
#if QC_X86
    if (isa >= QC_ISA_AVX512VNNI) {
        qc_range_avx512(x, count, &lo, &hi);
        i = count / 16 * 16;
    } else if (isa >= QC_ISA_AVX2) {
        qc_range_avx2(x, count, &lo, &hi);
        i = count / 8 * 8;
    }
#endif
    (void)isa;
    for (; i < count; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    *lo_out = lo;
    *hi_out = hi;
}

/* Per-pixel dynamic qparams (per_token): the range of each pixel's channels, with 0. */
static void qc_pixel_qparams(int isa, const float *x, int x_nhwc, int64_t n, int64_t c,
                             int64_t hw, int symmetric, float eps, int offset, float *xs,
                             int32_t *zu) {
    for (int64_t b = 0; b < n; b++)
        for (int64_t p = 0; p < hw; p++) {
            float lo = 0.0f, hi = 0.0f;
            if (x_nhwc) { /* a pixel's channels are contiguous: the vector range */
                qc_range(isa, x + (b * hw + p) * c, c, &lo, &hi);
            } else {
                for (int64_t ch = 0; ch < c; ch++) {
                    const float v = x[(b * c + ch) * hw + p];
                    lo = v < lo ? v : lo;
                    hi = v > hi ? v : hi;
                }
            }
            int zero;
            qparams_from_range(lo, hi, symmetric, eps, &xs[b * hw + p], &zero);
            zu[b * hw + p] = zero + offset;
        }
}

#if QC_X86
/* The AVX2 path (no VNNI).  vpmaddubsw multiplies uint8 by int8 and adds each pair into an
 * int16 that SATURATES: a code up to 255 times a weight of magnitude 128 overflows
 * (2 * 255 * 127 > 32767), which is why oneDNN's AVX2 int8 convolution is not exact.  This
 * path multiplies int16 instead: vpmaddwd takes the codes (widened once per call) and weights
 * (widened at packing, pairs of K per int32 lane) and adds each pair of products into an int32,
 * exact (2 * 255 * 128 < 2^31); vpaddd accumulates.  16 products for two instructions, one of
 * them a multiply; sign transfer on uint8 (|a| x sign(a) * w through vpsignb + vpmaddubsw +
 * vpmaddwd) needs three multiply-port instructions per 32 and measured 14 % slower on Zen 4,
 * and cannot negate a weight of -128.  The int32 sums and the float epilogue are the scalar
 * path's. */
QC_AVX2 static void qc_widen16(const uint8_t *xb, int64_t count, int16_t *out) {
    for (int64_t i = 0; i < count; i++) out[i] = (int16_t)xb[i];
}

static inline __attribute__((always_inline)) QC_AVX2 __m256i qc_bcast2(const int16_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

#define QC_MADD2(c0, c1, a)                                                                     \
    do {                                                                                       \
        const __m256i a_ = (a);                                                                \
        c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(a_, w0));                                  \
        c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(a_, w1));                                  \
    } while (0)

/* Stores pixel i's sums of panel pb: y = (float)(acc - zu * wsum) * (xs * ws) + bias. */
static inline __attribute__((always_inline)) QC_AVX2 void
qc_avx2_store(const qc_conv_ctx *c, int64_t m, int64_t pb, __m256i a0, __m256i a1) {
    float xs;
    int32_t zu;
    qc_row_qparams(c, m, &xs, &zu);
    const __m256i zv = _mm256_set1_epi32(zu);
    const __m256 xsv = _mm256_set1_ps(xs);
    for (int j = 0; j < 2; j++) {
        const int64_t n0 = pb * QC_PR + 8 * j;
        const int64_t cnt = c->o - n0 < 8 ? c->o - n0 : 8;
        if (cnt <= 0) break;
        const __m256i ws = _mm256_loadu_si256((const __m256i *)(c->wsum + n0));
        const __m256i d = _mm256_sub_epi32(j ? a1 : a0, _mm256_mullo_epi32(zv, ws));
        float *yo = c->y + m * c->o + n0;
        if (cnt == 8) { /* no masked stores: vmaskmovps to memory is microcoded on AMD */
            const __m256 scale = _mm256_mul_ps(xsv, _mm256_loadu_ps(c->ws + n0));
            __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(d), scale);
            if (c->bias) v = _mm256_add_ps(v, _mm256_loadu_ps(c->bias + n0));
            _mm256_storeu_ps(yo, v);
            continue;
        }
        int32_t dv[8];
        _mm256_storeu_si256((__m256i *)dv, d);
        for (int64_t t = 0; t < cnt; t++) { /* the same operations, one lane at a time */
            const float v = (float)dv[t] * (xs * c->ws[n0 + t]);
            yo[t] = c->bias ? v + c->bias[n0 + t] : v;
        }
    }
}

/* Pixels m..m+3 (those at or past m1 read the padding and are not stored: img -1), given their
 * images and top-left input corners, x panel pb: 4 x 2 accumulators of 8 outputs, named (GCC
 * spills an array of them). */
QC_AVX2 static void qc_avx2_tile(const qc_conv_ctx *c, int64_t m, int64_t m1, int64_t pb,
                                 const int64_t *img, const int64_t *y0, const int64_t *x0) {
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00;
    __m256i c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    const int64_t cp = c->cp, kq = cp / 2; /* K pairs a tap */
    const int16_t *wp = c->w16 + pb * c->k4 * 2 * 32;
    for (int64_t ky = 0; ky < c->kh; ky++)
        for (int64_t kx = 0; kx < c->kw; kx++) {
            const int16_t *xp[4];
            for (int i = 0; i < 4; i++) {
                const int64_t iy = y0[i] + ky * c->dh, ix = x0[i] + kx * c->dw;
                const int in = img[i] >= 0 && iy >= 0 && iy < c->h && ix >= 0 && ix < c->w;
                xp[i] = in ? c->x16 + ((img[i] * c->h + iy) * c->w + ix) * cp : c->pad16;
            }
            const int16_t *wt = wp + (ky * c->kw + kx) * kq * 32;
#pragma GCC unroll 2
            for (int64_t q = 0; q < kq; q++) {
                const __m256i w0 = _mm256_loadu_si256((const __m256i *)(wt + q * 32));
                const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wt + q * 32 + 16));
                QC_MADD2(c00, c01, qc_bcast2(xp[0] + 2 * q));
                QC_MADD2(c10, c11, qc_bcast2(xp[1] + 2 * q));
                QC_MADD2(c20, c21, qc_bcast2(xp[2] + 2 * q));
                QC_MADD2(c30, c31, qc_bcast2(xp[3] + 2 * q));
            }
        }
    qc_avx2_store(c, m, pb, c00, c01);
    if (m + 1 < m1) qc_avx2_store(c, m + 1, pb, c10, c11);
    if (m + 2 < m1) qc_avx2_store(c, m + 2, pb, c20, c21);
    if (m + 3 < m1) qc_avx2_store(c, m + 3, pb, c30, c31);
}

/* Each tile's pixel geometry is found once for all panels, by division for its first pixel
 * and counting on for the others: with a short K (a 1x1 over 32 channels: 16 steps a tile),
 * 64-bit divisions per pixel and panel took longer than the products. */
QC_AVX2 static void qc_conv_avx2(const qc_conv_ctx *c, int64_t m0, int64_t m1) {
    const int64_t hwo = c->ho * c->wo;
    for (int64_t m = m0; m < m1; m += 4) {
        int64_t img[4], y0[4], x0[4];
        int64_t b = m / hwo, oy = m % hwo / c->wo, ox = m % c->wo;
        for (int i = 0; i < 4; i++) {
            img[i] = m + i < m1 ? b : -1;
            y0[i] = oy * c->sh - c->ph;
            x0[i] = ox * c->sw - c->pw;
            if (++ox == c->wo) {
                ox = 0;
                if (++oy == c->ho) oy = 0, b++;
            }
        }
        for (int64_t pb = 0; pb < c->np; pb++) qc_avx2_tile(c, m, m1, pb, img, y0, x0);
    }
}
#endif

/* The implicit GEMM over every output pixel of ctx (4 pixels a task). */
static int qc_conv_gemm(const qc_conv_ctx *ctx, int isa, int nthreads) {
    const int64_t m = ctx->n * ctx->ho * ctx->wo, blocks = (m + 3) / 4;
    const int par = nthreads > 1 && blocks > 1 && m * ctx->o * ctx->k4 * 4 > 8 * QE_GRAIN;
    (void)par;
    (void)nthreads;
    char *mem = NULL;
    qc_conv_ctx sc;
#if QC_X86
    if (isa == QC_ISA_AVX2) { /* the codes widened to int16 (see qc_conv_avx2) */
        const int64_t count = ctx->n * ctx->h * ctx->w * ctx->cp, cp = ctx->cp;
        mem = malloc(sizeof(int16_t) * (size_t)(count + cp));
        if (!mem) return 4;
        sc = *ctx;
        int16_t *x16 = (int16_t *)mem;
        qc_widen16(ctx->xb, count, x16);
        qc_widen16(ctx->pad, cp, x16 + count);
        sc.x16 = x16, sc.pad16 = x16 + count;
        ctx = &sc;
    }
#endif
#pragma omp parallel for num_threads(nthreads) if (par) schedule(static)
    for (int64_t bl = 0; bl < blocks; bl++) {
        const int64_t m0 = bl * 4, m1 = m0 + 4 < m ? m0 + 4 : m;
#if QC_X86
        if (isa == QC_ISA_AVX512VNNI) {
            qc_conv_vnni(ctx, m0, m1);
            continue;
        }
        if (mem) {
            qc_conv_avx2(ctx, m0, m1);
            continue;
        }
#endif
        qc_conv_scalar(ctx, m0, m1);
    }
    free(mem);
    (void)isa;
    return 0;
}

/* Mode 3, activations per patch row (per token) with any window: each output pixel's patch
 * row gathered as floats (zeros for padding taps and channels, which the range holds anyway),
 * its range taken and the row quantized with its own qparams, vectorized, into a uint8 patch
 * matrix [M, taps * cp] in the packed weights' K order: an im2col in C, fused with the
 * quantization.  The GEMM then runs it as a 1x1 convolution over M pixels with per-pixel
 * qparams.  fb: kp floats of scratch. */
static inline __attribute__((always_inline)) void
qc_patch_body(int isa, const float *x, int x_nhwc, const qc_conv_ctx *g, int symmetric,
              float eps, float lo, float hi, int offset, int64_t c, int64_t r0, int64_t r1,
              uint8_t *pm, float *xs, int32_t *zu, float *fb) {
    const int64_t cp = g->cp, kp = g->kh * g->kw * cp, hw = g->h * g->w;
    const int64_t step = x_nhwc ? 1 : hw;
    const float off = (float)offset;
    for (int64_t m = r0; m < r1; m++) {
        const int64_t b = m / (g->ho * g->wo), r = m % (g->ho * g->wo);
        const int64_t y0 = (r / g->wo) * g->sh - g->ph, x0 = (r % g->wo) * g->sw - g->pw;
        memset(fb, 0, sizeof(float) * (size_t)kp);
        for (int64_t ky = 0; ky < g->kh; ky++)
            for (int64_t kx = 0; kx < g->kw; kx++) {
                const int64_t iy = y0 + ky * g->dh, ix = x0 + kx * g->dw;
                if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w) continue;
                const float *xr =
                    x_nhwc ? x + ((b * g->h + iy) * g->w + ix) * c : x + b * c * hw + iy * g->w + ix;
                float *dst = fb + (ky * g->kw + kx) * cp;
                for (int64_t ch = 0; ch < c; ch++) dst[ch] = xr[ch * step];
            }
        float rl, rh, s;
        int zi;
        qc_range(isa, fb, kp, &rl, &rh);
        qparams_from_range(rl, rh, symmetric, eps, &s, &zi);
        const float z = (float)zi;
        xs[m] = s;
        zu[m] = zi + offset;
        uint8_t *restrict row = pm + m * kp;
#if QC_X86
        if (isa == QC_ISA_AVX2) {
            qc_codes_avx2(fb, kp, s, z, lo, hi, off, row);
            continue;
        }
#endif
        for (int64_t i = 0; i < kp; i++)
            row[i] = (uint8_t)(int)(clampf(round_half_even(fb[i] / s) + z, lo, hi) + off);
    }
}

#define QC_PATCH_ARGS                                                                          \
    int isa, const float *x, int x_nhwc, const qc_conv_ctx *g, int symmetric, float eps,        \
        float lo, float hi, int offset, int64_t c, int64_t r0, int64_t r1, uint8_t *pm,         \
        float *xs, int32_t *zu, float *fb
#define QC_PATCH_CALL isa, x, x_nhwc, g, symmetric, eps, lo, hi, offset, c, r0, r1, pm, xs, zu, fb
static void qc_patch_scalar(QC_PATCH_ARGS) { qc_patch_body(QC_PATCH_CALL); }
#if QC_X86
QC_AVX2 static void qc_patch_avx2(QC_PATCH_ARGS) { qc_patch_body(QC_PATCH_CALL); }
QC_AVX512 static void qc_patch_avx512(QC_PATCH_ARGS) { qc_patch_body(QC_PATCH_CALL); }
#endif

static void qc_patch_rows(QC_PATCH_ARGS) {
#if QC_X86
    if (isa >= QC_ISA_AVX512VNNI) {
        qc_patch_avx512(QC_PATCH_CALL);
        return;
    }
    if (isa >= QC_ISA_AVX2) {
        qc_patch_avx2(QC_PATCH_CALL);
        return;
    }
#endif
    (void)isa;
    qc_patch_scalar(QC_PATCH_CALL);
}

/* Patch rows of per-tensor codes (modes 0 and 2) for a narrow input (cp <= QC_NARROW): the
 * codes of each tap copied from xb (the zero point's for padding) into a uint8 patch matrix,
 * so that the GEMM reads K contiguous bytes a row instead of cp bytes a tap (an RGB stem: 4). */
#define QC_NARROW 16
static inline void qc_copy_codes(uint8_t *dst, const uint8_t *src, int64_t n) {
    switch (n) { /* constant sizes: a move each, not a call */
        case 4: memcpy(dst, src, 4); break;
        case 8: memcpy(dst, src, 8); break;
        case 16: memcpy(dst, src, 16); break;
        default: memcpy(dst, src, (size_t)n); break;
    }
}

static void qc_gather_rows(const qc_conv_ctx *g, uint8_t *pm, int64_t r0, int64_t r1) {
    const int64_t cp = g->cp, kp = g->kh * g->kw * cp, hwo = g->ho * g->wo;
    int64_t b = r0 / hwo, oy = r0 % hwo / g->wo, ox = r0 % g->wo; /* then counted up */
    for (int64_t m = r0; m < r1; m++) {
        const int64_t y0 = oy * g->sh - g->ph, x0 = ox * g->sw - g->pw;
        const int cols_in = g->dw == 1 && x0 >= 0 && x0 + g->kw <= g->w;
        uint8_t *row = pm + m * kp;
        for (int64_t ky = 0; ky < g->kh; ky++) {
            const int64_t iy = y0 + ky * g->dh;
            uint8_t *dst = row + ky * g->kw * cp;
            if (iy >= 0 && iy < g->h && cols_in) { /* the kernel row's taps are adjacent */
                qc_copy_codes(dst, g->xb + ((b * g->h + iy) * g->w + x0) * cp, g->kw * cp);
                continue;
            }
            for (int64_t kx = 0; kx < g->kw; kx++) {
                const int64_t ix = x0 + kx * g->dw;
                const int in = iy >= 0 && iy < g->h && ix >= 0 && ix < g->w;
                qc_copy_codes(dst + kx * cp, in ? g->xb + ((b * g->h + iy) * g->w + ix) * cp : g->pad,
                              cp);
            }
        }
        if (++ox == g->wo) {
            ox = 0;
            if (++oy == g->ho) oy = 0, b++;
        }
    }
}

/* Modes 3 (x != NULL: rows quantized on their own) and narrow 0/2 (x == NULL: rows gathered
 * from ctx->xb) of qe_conv_a8: the patch matrix, then the GEMM over it as a 1x1 convolution. */
static int qc_conv_a8_rows(int isa, const float *x, int x_nhwc, int64_t c, qc_conv_ctx *ctx,
                           int symmetric, float eps, float lo, float hi, int offset,
                           int nthreads) {
    const int64_t m = ctx->n * ctx->ho * ctx->wo, kp = ctx->kh * ctx->kw * ctx->cp;
    const size_t pm_bytes = ((size_t)(m * kp) + 63) / 64 * 64;
    const size_t pad_bytes = ((size_t)kp + 63) / 64 * 64;
    char *mem = malloc(pm_bytes + pad_bytes + (x ? (size_t)m * 8 : 0));
    if (!mem) return 4;
    uint8_t *pm = (uint8_t *)mem;
    float *xs = x ? (float *)(mem + pm_bytes + pad_bytes) : NULL;
    int32_t *zu = x ? (int32_t *)(xs + m) : NULL;
    memset(mem + pm_bytes, 0, pad_bytes); /* rows past the end of a tile read it; never stored */
    const int par = nthreads > 1 && m > 1 && m * kp > QE_GRAIN;
    int failed = 0;
    (void)par;
    (void)nthreads;
#pragma omp parallel num_threads(nthreads) if (par)
    {
        float *fb = x ? malloc(sizeof(float) * (size_t)kp) : NULL;
        if (x && !fb) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < m; r += 16) {
            const int64_t r1 = r + 16 < m ? r + 16 : m;
            if (!x)
                qc_gather_rows(ctx, pm, r, r1);
            else if (fb)
                qc_patch_rows(isa, x, x_nhwc, ctx, symmetric, eps, lo, hi, offset, c, r, r1, pm,
                              xs, zu, fb);
        }
        free(fb);
    }
    if (failed) {
        free(mem);
        return 4;
    }
    qc_conv_ctx rows = *ctx; /* the patch matrix as a 1x1 convolution over M pixels */
    rows.xb = pm, rows.pad = (const uint8_t *)(mem + pm_bytes);
    if (x) rows.xs = xs, rows.zu = zu;
    rows.n = 1, rows.h = m, rows.w = 1, rows.cp = kp, rows.ho = m, rows.wo = 1;
    rows.kh = rows.kw = rows.sh = rows.sw = rows.dh = rows.dw = 1, rows.ph = rows.pw = 0;
    const int rc = qc_conv_gemm(&rows, isa, nthreads);
    free(mem);
    return rc;
}

/* Dense int8 convolution (see above).  mode 0: per tensor, scale and zero given; 1: per pixel,
 * computed here from symmetric and eps (1x1, stride 1, no padding only); 2: per tensor, computed
 * here over all of x (the caller checks that the convolution reads every pixel); 3: per patch
 * row, any window (qc_conv_a8_rows).
 * lo, hi: the code range; offset: 128 for symmetric codes (to uint8), else 0. */
QE_EXPORT int qe_conv_a8(const float *x, int x_nhwc, int64_t n, int64_t c, int64_t h, int64_t w,
                         int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                         int64_t dh, int64_t dw, int64_t ho, int64_t wo, int mode,
                         int symmetric, float eps, float scale, int zero, float lo, float hi,
                         int offset, const void *packed, int64_t o, const float *ws,
                         const float *bias, float *y, int nthreads) {
    if (!x || !packed || !ws || !y || n < 0 || c <= 0 || h <= 0 || w <= 0 || kh <= 0 ||
        kw <= 0 || sh <= 0 || sw <= 0 || dh <= 0 || dw <= 0 || ph < 0 || pw < 0 || ho < 0 ||
        wo < 0 || o <= 0)
        return 1;
    if (lo + (float)offset < 0.0f || hi + (float)offset > 255.0f) return 2;
    const int per_token = mode == 1;
    if (per_token && (kh != 1 || kw != 1 || sh != 1 || sw != 1 || ph != 0 || pw != 0)) return 3;
    if (mode < 0 || mode > 3) return 1;
    const int isa = qe_conv_isa();
    const int64_t cp = qc_round4(c), hw = h * w, pixels = n * hw, m = n * ho * wo;
    if (kh * kw * cp > QC_MAX_K) return 5; /* int32 sums of 255 x 128 products */
    if (m == 0) return 0;
    if (mode == 2) {
        float rlo, rhi;
        qc_range(isa, x, pixels * c, &rlo, &rhi);
        qparams_from_range(rlo, rhi, symmetric, eps, &scale, &zero);
    }
    if (!(scale > 0.0f) && !per_token && mode != 3) return 1;
    const int64_t np = (o + QC_PR - 1) / QC_PR;
    qc_conv_ctx ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.wp = (const int8_t *)packed;
    ctx.k4 = kh * kw * cp / 4;
    ctx.wsum = (const int32_t *)(ctx.wp + np * ctx.k4 * 64);
    ctx.w16 = (const int16_t *)(ctx.wsum + np * QC_PR);
    ctx.ws = ws, ctx.bias = bias, ctx.y = y;
    ctx.n = n, ctx.h = h, ctx.w = w, ctx.cp = cp, ctx.o = o, ctx.np = np;
    ctx.kh = kh, ctx.kw = kw, ctx.sh = sh, ctx.sw = sw, ctx.ph = ph, ctx.pw = pw;
    ctx.dh = dh, ctx.dw = dw, ctx.ho = ho, ctx.wo = wo;
    if (mode == 3)
        return qc_conv_a8_rows(isa, x, x_nhwc, c, &ctx, symmetric, eps, lo, hi, offset, nthreads);
    const size_t xb_bytes = (size_t)(pixels * cp), pad_off = (xb_bytes + 63) / 64 * 64;
    const size_t qp_off = pad_off + ((size_t)cp + 63) / 64 * 64;
    char *mem = malloc(qp_off + (per_token ? (size_t)pixels * 8 : 0));
    if (!mem) return 4;
    float *xs = NULL;
    int32_t *zu = NULL;
    if (per_token) {
        xs = (float *)(mem + qp_off);
        zu = (int32_t *)(xs + pixels);
        qc_pixel_qparams(isa, x, x_nhwc, n, c, hw, symmetric, eps, offset, xs, zu);
    }
    qc_quant_rows(isa, x, x_nhwc, n, c, hw, cp, scale, (float)zero, xs, zu, lo, hi, offset,
                  (uint8_t *)mem);
    memset(mem + pad_off, zero + offset, (size_t)cp); /* per_token: 1x1 unpadded, never read */
    ctx.xb = (const uint8_t *)mem;
    ctx.pad = (const uint8_t *)(mem + pad_off);
    ctx.xs = xs, ctx.zu = zu, ctx.xs0 = scale, ctx.zu0 = zero + offset;
    int rc = 0;
    if (!per_token && cp <= QC_NARROW && kh * kw > 1)
        rc = qc_conv_a8_rows(isa, NULL, x_nhwc, c, &ctx, symmetric, eps, lo, hi, offset, nthreads);
    else
        rc = qc_conv_gemm(&ctx, isa, nthreads);
    free(mem);
    return rc;
}

/* --- depthwise ------------------------------------------------------------------------------ */

typedef struct {
    const float *xf; /* [N, H, W, C]: code - zero, integers */
    const float *wt; /* [taps, C]: weight codes */
    const float *mult, *bias;
    float *y;
    int64_t c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo;
} qc_dw_ctx;

/* One output pixel's channels cb..cb+len-1, len <= QC_DWB: the taps' products summed in tap
 * order in a register block, then scaled.  The vector versions fuse each multiply-add, which
 * changes nothing: a product of codes is an integer below 2^15, exact in float32 either way;
 * the scaling is a separate multiply and add on every path, so the paths agree bit for bit. */
#define QC_DWB 64
/* np (<= 4) neighbouring output pixels of a row, pixel p reading from base + p * pstep and
 * writing yo + p * C, channels cb..cb+len-1 (len <= QC_DWB). */
typedef void (*qc_dw_block_fn)(const qc_dw_ctx *, const float *, int64_t, int, const int64_t *,
                               const int64_t *, int, int64_t, int64_t, float *);

static inline void qc_dw_block_scalar(const qc_dw_ctx *c, const float *base, int64_t pstep,
                                      int np, const int64_t *off, const int64_t *tap, int nt,
                                      int64_t cb, int64_t len, float *yo) {
    for (int p = 0; p < np; p++) {
        const float *bp = base + p * pstep;
        float *yp = yo + p * c->c;
        float acc[QC_DWB];
        for (int64_t j = 0; j < len; j++) acc[j] = 0.0f;
        for (int t = 0; t < nt; t++)
            for (int64_t j = 0; j < len; j++)
                acc[j] += bp[off[t] + cb + j] * c->wt[tap[t] * c->c + cb + j];
        for (int64_t j = 0; j < len; j++) {
            const float v = acc[j] * c->mult[cb + j];
            yp[cb + j] = c->bias ? v + c->bias[cb + j] : v;
        }
    }
}

#if QC_X86
/* NP pixels x NSB 16-channel sums (both constant once inlined): NP * NSB independent chains of
 * multiply-adds, so the taps' latency overlaps. */
static inline __attribute__((always_inline)) QC_AVX512 void
qc_dw_sub512(const qc_dw_ctx *c, const float *base, int64_t pstep, const int64_t *off,
             const int64_t *tap, int nt, int64_t cb, int64_t len, float *yo, const int NP,
             const int NSB) {
    __mmask16 k[4];
    __m512 acc[4][4];
    for (int j = 0; j < NSB; j++) {
        const int64_t rest = len - 16 * j;
        k[j] = rest >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rest) - 1u);
        for (int p = 0; p < NP; p++) acc[p][j] = _mm512_setzero_ps();
    }
    for (int t = 0; t < nt; t++) {
        const float *xv = base + off[t] + cb, *wv = c->wt + tap[t] * c->c + cb;
        for (int j = 0; j < NSB; j++) {
            const __m512 w = _mm512_maskz_loadu_ps(k[j], wv + 16 * j);
            for (int p = 0; p < NP; p++)
                acc[p][j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k[j], xv + p * pstep + 16 * j),
                                            w, acc[p][j]);
        }
    }
    for (int j = 0; j < NSB; j++) {
        const int64_t o = cb + 16 * j;
        const __m512 mult = _mm512_maskz_loadu_ps(k[j], c->mult + o);
        const __m512 bias = c->bias ? _mm512_maskz_loadu_ps(k[j], c->bias + o) : mult;
        for (int p = 0; p < NP; p++) {
            __m512 v = _mm512_mul_ps(acc[p][j], mult);
            if (c->bias) v = _mm512_add_ps(v, bias);
            _mm512_mask_storeu_ps(yo + p * c->c + o, k[j], v);
        }
    }
}

#define QC_DW512(NP)                                                                           \
    switch ((len + 15) / 16) {                                                                 \
        case 4: qc_dw_sub512(c, base, pstep, off, tap, nt, cb, len, yo, NP, 4); break;         \
        case 3: qc_dw_sub512(c, base, pstep, off, tap, nt, cb, len, yo, NP, 3); break;         \
        case 2: qc_dw_sub512(c, base, pstep, off, tap, nt, cb, len, yo, NP, 2); break;         \
        default: qc_dw_sub512(c, base, pstep, off, tap, nt, cb, len, yo, NP, 1); break;        \
    }

QC_AVX512 static inline void qc_dw_block_avx512(const qc_dw_ctx *c, const float *base,
                                                int64_t pstep, int np, const int64_t *off,
                                                const int64_t *tap, int nt, int64_t cb,
                                                int64_t len, float *yo) {
    if (np == 4) {
        QC_DW512(4)
        return;
    }
    for (int p = 0; p < np; p++, base += pstep, yo += c->c) {
        QC_DW512(1)
    }
}

/* NP pixels x NSB full 8-channel sums (AVX2, 16 registers: NP * NSB <= 8). */
static inline __attribute__((always_inline)) QC_AVX2 void
qc_dw_sub256(const qc_dw_ctx *c, const float *base, int64_t pstep, const int64_t *off,
             const int64_t *tap, int nt, int64_t cb, float *yo, const int NP, const int NSB) {
    __m256 acc[2][4];
    for (int p = 0; p < NP; p++)
        for (int j = 0; j < NSB; j++) acc[p][j] = _mm256_setzero_ps();
    for (int t = 0; t < nt; t++) {
        const float *xv = base + off[t] + cb, *wv = c->wt + tap[t] * c->c + cb;
        for (int j = 0; j < NSB; j++) {
            const __m256 w = _mm256_loadu_ps(wv + 8 * j);
            for (int p = 0; p < NP; p++)
                acc[p][j] = _mm256_fmadd_ps(_mm256_loadu_ps(xv + p * pstep + 8 * j), w, acc[p][j]);
        }
    }
    for (int j = 0; j < NSB; j++) {
        const int64_t o = cb + 8 * j;
        for (int p = 0; p < NP; p++) {
            __m256 v = _mm256_mul_ps(acc[p][j], _mm256_loadu_ps(c->mult + o));
            if (c->bias) v = _mm256_add_ps(v, _mm256_loadu_ps(c->bias + o));
            _mm256_storeu_ps(yo + p * c->c + o, v);
        }
    }
}

/* One pixel pair (NP 2) or pixel (NP 1): 32-channel chunks, then 16, then 8, then scalar. */
static inline __attribute__((always_inline)) QC_AVX2 void
qc_dw_avx2_pixels(const qc_dw_ctx *c, const float *base, int64_t pstep, const int64_t *off,
                  const int64_t *tap, int nt, int64_t cb, int64_t len, float *yo, const int NP) {
    for (; len >= 32; cb += 32, len -= 32) qc_dw_sub256(c, base, pstep, off, tap, nt, cb, yo, NP, 4);
    if (len >= 16) {
        qc_dw_sub256(c, base, pstep, off, tap, nt, cb, yo, NP, 2);
        cb += 16, len -= 16;
    }
    if (len >= 8) {
        qc_dw_sub256(c, base, pstep, off, tap, nt, cb, yo, NP, 1);
        cb += 8, len -= 8;
    }
    if (len > 0) qc_dw_block_scalar(c, base, pstep, NP, off, tap, nt, cb, len, yo);
}

QC_AVX2 static inline void qc_dw_block_avx2(const qc_dw_ctx *c, const float *base,
                                            int64_t pstep, int np, const int64_t *off,
                                            const int64_t *tap, int nt, int64_t cb, int64_t len,
                                            float *yo) {
    int p = 0;
    for (; p + 2 <= np; p += 2)
        qc_dw_avx2_pixels(c, base + p * pstep, pstep, off, tap, nt, cb, len, yo + p * c->c, 2);
    if (p < np) qc_dw_avx2_pixels(c, base + p * pstep, pstep, off, tap, nt, cb, len, yo + p * c->c, 1);
}
#endif

/* Output rows r0..r1 (of N * Ho) on the zero-bordered codes: every tap of every output pixel
 * lies at a fixed offset from its corner; up to 4 pixels of a row at a time, the channels in
 * blocks of QC_DWB. */
static inline __attribute__((always_inline)) void
qc_dw_body(const qc_dw_ctx *c, int64_t r0, int64_t r1, qc_dw_block_fn block) {
    const int64_t C = c->c, taps = c->kh * c->kw, pstep = c->sw * C;
    int64_t off[64], tap[64];
    for (int64_t t = 0; t < taps; t++) {
        off[t] = ((t / c->kw) * c->dh * c->w + (t % c->kw) * c->dw) * C;
        tap[t] = t;
    }
    for (int64_t r = r0; r < r1; r++) {
        const int64_t b = r / c->ho, oy = r % c->ho;
        for (int64_t ox = 0; ox < c->wo; ox += 4) {
            const int np = c->wo - ox < 4 ? (int)(c->wo - ox) : 4;
            const float *base = c->xf + ((b * c->h + oy * c->sh) * c->w + ox * c->sw) * C;
            float *yo = c->y + (r * c->wo + ox) * C;
            for (int64_t cb = 0; cb < C; cb += QC_DWB)
                block(c, base, pstep, np, off, tap, (int)taps, cb,
                      C - cb < QC_DWB ? C - cb : QC_DWB, yo);
        }
    }
}

static void qc_dw_scalar(const qc_dw_ctx *c, int64_t r0, int64_t r1) {
    qc_dw_body(c, r0, r1, qc_dw_block_scalar);
}
#if QC_X86
QC_AVX2 static void qc_dw_avx2(const qc_dw_ctx *c, int64_t r0, int64_t r1) {
    qc_dw_body(c, r0, r1, qc_dw_block_avx2);
}
QC_AVX512 static void qc_dw_avx512(const qc_dw_ctx *c, int64_t r0, int64_t r1) {
    qc_dw_body(c, r0, r1, qc_dw_block_avx512);
}
#endif

/* Zero the border of a [H + 2ph, W + 2pw, c] buffer (the interior is written per image). */
static void qc_zero_border(float *img, int64_t h, int64_t w, int64_t ph, int64_t pw, int64_t c) {
    const int64_t wp = w + 2 * pw;
    memset(img, 0, sizeof(float) * (size_t)(ph * wp * c));
    memset(img + (ph + h) * wp * c, 0, sizeof(float) * (size_t)(ph * wp * c));
    for (int64_t y = ph; y < ph + h; y++) {
        memset(img + y * wp * c, 0, sizeof(float) * (size_t)(pw * c));
        memset(img + (y * wp + pw + w) * c, 0, sizeof(float) * (size_t)(pw * c));
    }
}

static void qc_dw_rows(int isa, const qc_dw_ctx *c, int64_t r0, int64_t r1) {
#if QC_X86
    if (isa >= QC_ISA_AVX512VNNI) {
        qc_dw_avx512(c, r0, r1);
        return;
    }
    if (isa >= QC_ISA_AVX2) {
        qc_dw_avx2(c, r0, r1);
        return;
    }
#endif
    (void)isa;
    qc_dw_scalar(c, r0, r1);
}

/* Depthwise int8 convolution (see above): activations per tensor (codes lo..hi): scale and zero
 * given (mode 0) or computed here over all of x (mode 2, from symmetric and eps),
 * weight codes wt [taps, C] as floats, per-channel weight scales ws. Output float NHWC. */
QE_EXPORT int qe_dwconv_a8(const float *x, int x_nhwc, int64_t n, int64_t c, int64_t h,
                           int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                           int64_t pw, int64_t dh, int64_t dw, int64_t ho, int64_t wo,
                           int mode, int symmetric, float eps, float scale, int zero, float lo,
                           float hi, const float *wt,
                           const float *ws, const float *bias, float *y, int nthreads) {
    if (!x || !wt || !ws || !y || n < 0 || c <= 0 || h <= 0 || w <= 0 || kh <= 0 || kw <= 0 ||
        sh <= 0 || sw <= 0 || dh <= 0 || dw <= 0 || ph < 0 || pw < 0 || ho < 0 || wo < 0 ||
        (mode != 0 && mode != 2))
        return 1;
    if (kh * kw > 64) return 3; /* beyond, sums could pass 2^24 */
    const int64_t hw = h * w, rows = n * ho;
    if (rows == 0 || wo == 0) return 0;
    const int isa = qe_conv_isa();
    if (mode == 2) {
        float rlo, rhi;
        qc_range(isa, x, n * hw * c, &rlo, &rhi);
        qparams_from_range(rlo, rhi, symmetric, eps, &scale, &zero);
    }
    if (!(scale > 0.0f)) return 1;
    const int64_t hp = h + 2 * ph, wp = w + 2 * pw, plane = hp * wp * c;
    float *mult = malloc(sizeof(float) * (size_t)c);
    if (!mult) return 4;
    for (int64_t ch = 0; ch < c; ch++) mult[ch] = scale * ws[ch];
    const qc_dw_ctx ctx = {NULL, wt, mult, bias, y, c, hp, wp, kh, kw, sh, sw, 0, 0, dh, dw, ho, wo};
    const int par = nthreads > 1 && rows > 1 && rows * wo * c * kh * kw > QE_GRAIN;
    int failed = 0;
    (void)nthreads;
    if (n == 1 || !par) {
        /* One image at a time into one buffer (its codes stay in cache for the convolution
         * that reads them); a single image splits its rows across the threads. */
        float *buf = malloc(sizeof(float) * (size_t)plane);
        if (!buf) {
            free(mult);
            return 4;
        }
        qc_zero_border(buf, h, w, ph, pw, c);
        for (int64_t b = 0; b < n; b++) {
            qc_quantf_rows(isa, x + b * c * h * w, x_nhwc, 1, c, h, w, ph, pw, scale,
                           (float)zero, lo, hi, buf);
            qc_dw_ctx img = ctx;
            img.xf = buf, img.y = y + b * ho * wo * c;
            const int64_t tasks = par ? nthreads : 1, per = (ho + tasks - 1) / tasks;
            (void)per;
#pragma omp parallel for num_threads(nthreads) if (par) schedule(static)
            for (int64_t t = 0; t < tasks; t++) {
                const int64_t r0 = t * per, r1 = r0 + per < ho ? r0 + per : ho;
                if (r0 < r1) qc_dw_rows(isa, &img, r0, r1);
            }
        }
        free(buf);
    } else {
#pragma omp parallel num_threads(nthreads)
        { /* images across the threads, each into a buffer of the thread's */
            float *buf = malloc(sizeof(float) * (size_t)plane);
            if (!buf) {
#pragma omp atomic write
                failed = 1;
            } else {
                qc_zero_border(buf, h, w, ph, pw, c);
            }
#pragma omp for schedule(static)
            for (int64_t b = 0; b < n; b++) {
                if (!buf) continue;
                qc_quantf_rows(isa, x + b * c * h * w, x_nhwc, 1, c, h, w, ph, pw, scale,
                               (float)zero, lo, hi, buf);
                qc_dw_ctx img = ctx;
                img.xf = buf, img.y = y + b * ho * wo * c;
                qc_dw_rows(isa, &img, 0, ho);
            }
            free(buf);
        }
    }
    free(mult);
    return failed ? 4 : 0;
}

/* qe_conv_a8 and qe_dwconv_a8 with their scalar arguments in two arrays, which the caller
 * builds once per layer and input shape: one conversion each instead of thirty per call.
 * p: n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, mode, symmetric, zero, offset, o, nhwc
 * f: eps, scale, lo, hi.  (qe_dwconv_a8_p ignores offset and o: O is C.) */
QE_EXPORT int qe_conv_a8_p(const float *x, float *y, const int64_t *p, const float *f,
                           const void *weights, const float *ws, const float *bias,
                           int nthreads) {
    if (!p || !f) return 1;
    return qe_conv_a8(x, (int)p[19], p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9],
                      p[10], p[11], p[12], p[13], (int)p[14], (int)p[15], f[0], f[1], (int)p[16],
                      f[2], f[3], (int)p[17], weights, p[18], ws, bias, y, nthreads);
}

QE_EXPORT int qe_dwconv_a8_p(const float *x, float *y, const int64_t *p, const float *f,
                             const void *weights, const float *ws, const float *bias,
                             int nthreads) {
    if (!p || !f) return 1;
    return qe_dwconv_a8(x, (int)p[19], p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8],
                        p[9], p[10], p[11], p[12], p[13], (int)p[14], (int)p[15], f[0], f[1],
                        (int)p[16], f[2], f[3], (const float *)weights, ws, bias, y, nthreads);
}
