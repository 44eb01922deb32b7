/*
 * Convolution helpers of the Quantization Explorer (built by explorer/kernels/native_build.py,
 * called through ctypes by explorer/kernels/conv_ops.py).
 *
 * Dense int8 convolutions run on oneDNN's int8 convolution where it is exact (VNNI/AMX), or as
 * im2col plus one of our linear kernels; this file holds the parts around them that torch would
 * otherwise do in several passes, plus the one convolution with no library kernel:
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
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__GNUC__)
#define QE_EXPORT __attribute__((visibility("default")))
#else
#define QE_EXPORT
#endif

#define QE_CONV_ABI 1
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
    /* NaN goes to lo, like an out-of-range code; torch leaves it undefined */
    if (!(v >= lo)) return lo;
    return v > hi ? hi : v;
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
    return 0;
}

/* out[(b*hw + p)*c + ch] = clamp(round(x[(b*c + ch)*hw + p] / scale) + zero, lo, hi) + offset */
QE_EXPORT int qe_quant_u8_nhwc(const float *x, uint8_t *out, int64_t n, int64_t c, int64_t hw,
                               float scale, float zero, float lo, float hi, int offset,
                               int nthreads) {
    if (!x || !out || n < 0 || c <= 0 || hw < 0 || !(scale > 0.0f)) return 1;
    if (lo + (float)offset < 0.0f || hi + (float)offset > 255.0f) return 2;
    const int64_t tile = 32; /* pixels per task: 32 x c codes stay in L1 while written */
    const int64_t tiles = (hw + tile - 1) / tile;
    const int64_t tasks = n * tiles;
    (void)nthreads;
    const int par = nthreads > 1 && tasks > 1 && n * c * hw > QE_GRAIN;
    (void)par; /* unused without OpenMP */
#pragma omp parallel for num_threads(nthreads) if (par) schedule(static)
    for (int64_t t = 0; t < tasks; t++) {
        const int64_t b = t / tiles;
        const int64_t p0 = (t % tiles) * tile;
        const int64_t p1 = p0 + tile < hw ? p0 + tile : hw;
        const float *xb = x + b * c * hw;
        uint8_t *ob = out + b * hw * c;
        for (int64_t ch = 0; ch < c; ch++) {
            const float *xc = xb + ch * hw;
            for (int64_t p = p0; p < p1; p++) {
                float q = clampf(round_half_even(xc[p] / scale) + zero, lo, hi);
                ob[p * c + ch] = (uint8_t)((int)q + offset);
            }
        }
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
