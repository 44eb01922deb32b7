/*
 * qe_lowbit.c -- 2- and 3-bit weight-only linear kernels (float activations), linked into the
 * same library as qe_kernels.c (one build hash, one instruction-set switch: qe_isa()).
 *
 *   qe_lb_wo_linear  y[M,N] = x[M,K] . W^T + bias,  W[n,k] = s[n,g] * (u[n,k] - z[n,g]),
 *                    u the stored unsigned code (0..2^bits-1), g = k / G.
 *
 * Idea: bit-serial table lookup (T-MAC, Wei et al. 2024, "T-MAC: CPU Renaissance via Table
 * Lookup for Low-Bit LLM Deployment on Edge"), kept in float so the kernel computes the same
 * function as the float reference.  A code is the sum of its bit planes, u = sum_b 2^b u_b, so
 *     sum_k u[n,k] x[k] = sum_b 2^b sum_q T_q[ bits of plane b of row n at k = 4q..4q+3 ]
 * with one 16-entry table per quad of activations, T_q[i] = sum_{j<4, bit j of i} x[4q+j],
 * built once per call and shared by every weight row.  On AVX-512 one vpermps looks up 16
 * weight rows at once (the table is one zmm, the 4-bit indices are the low bits of each 32-bit
 * lane): 64 one-bit products per lookup, against 16 products per FMA of a dequantize-then-FMA
 * kernel, and nothing to decode but a shift.  AVX2 looks up 8 rows with two 8-entry vpermps
 * and a blend; the scalar path decodes code by code from the same layout (the reference for
 * the layout).
 *
 * Layout (qe_lb_pack): rows in panels of 16 (the last one padded with zero codes), K in blocks
 * of 32 (zero-padded).  Per (panel p, block kb, plane b) 16 uint32 words, word r holding bit b
 * of the codes of row 16p + r at k = 32kb + j in its bit j:
 *     word index ((p * KB + kb) * bits + b) * 16 + r,     KB = ceil(K / 32).
 * So a panel streams bits * 64 bytes per 32 columns: exactly bits/8 bytes a weight.
 *
 * Zero points are not subtracted in the loop: per segment of blocks (a segment never crosses a
 * group) the kernel sums acc = sum u x and adds s * acc - (s z) * xseg, xseg the sum of x over
 * the segment (per call).  Groups must be multiples of 32 or the whole row (per channel /
 * tensor; then K need not be a multiple of 32).  Scales come per panel and group as 16 floats
 * (qe_lb_panel_params); s z likewise for asymmetric weights, else z = 2^(bits-1).
 *
 * Order of work: panels in units of QE_LB_PG panels (OpenMP, dynamic: shared VMs run their
 * vCPUs at different speeds), and within a unit K chunks outermost, so one chunk's tables (for
 * every activation row) stay in L1/L2 while they meet every panel of the unit; partial sums go
 * through y.  Activation rows in register tiles of up to 4 (AVX-512) or 2 (AVX2), and in
 * passes of QE_LB_MB rows, so the tables of a long prefill never take more than 64 x K x 16 B.
 * Accumulation is float32 (tables, lookups, per-segment sums), so results differ from a float64
 * reference by ordinary float32 summation error.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__)
#include <immintrin.h>
#define QE_LB_X86 1
#else
#define QE_LB_X86 0
#endif

#define QE_LB_EXPORT __attribute__((visibility("default")))
#define QE_LB_INLINE static inline __attribute__((always_inline))

enum { QE_LB_OK = 0, QE_LB_EINVAL = -1, QE_LB_ENOMEM = -2 };
enum { QE_LB_PR = 16, QE_LB_KB = 32, QE_LB_Q = 8 /* quads a block */, QE_LB_PG = 8 };
enum { QE_LB_CHUNK = 16 /* blocks of 32 per K chunk (at most) */ };
enum { QE_LB_MB = 64 /* activation rows per pass: their tables take 64 x K x 16 bytes */ };

int qe_isa(void); /* qe_kernels.c: 0 scalar, 1 avx2, 2 avx_vnni, 3 avx512_vnni */

static int64_t lb_panels(int64_t n) { return (n + QE_LB_PR - 1) / QE_LB_PR; }
static int64_t lb_blocks(int64_t k) { return (k + QE_LB_KB - 1) / QE_LB_KB; }

/* Which code the current instruction-set path runs: 0 scalar, 1 AVX2, 2 AVX-512. */
QE_LB_EXPORT int qe_lb_path(void) {
    const int isa = qe_isa();
    return isa >= 3 ? 2 : isa >= 1 ? 1 : 0;
}

QE_LB_EXPORT int64_t qe_lb_packed_bytes(int64_t n, int64_t k, int bits) {
    if (n <= 0 || k <= 0 || bits < 1 || bits > 3) return QE_LB_EINVAL;
    return lb_panels(n) * lb_blocks(k) * bits * QE_LB_PR * 4;
}

/* Bit-plane layout of unsigned codes u8 [n, k] (values below 2^bits; see the header). */
QE_LB_EXPORT int qe_lb_pack(const uint8_t* codes, int64_t n, int64_t k, int bits, uint32_t* out) {
    if (!codes || !out || n <= 0 || k <= 0 || bits < 1 || bits > 3) return QE_LB_EINVAL;
    const int64_t np = lb_panels(n), kbn = lb_blocks(k);
    memset(out, 0, (size_t)(np * kbn * bits * QE_LB_PR) * 4);
    for (int64_t row = 0; row < n; ++row) {
        const int64_t p = row / QE_LB_PR, r = row % QE_LB_PR;
        for (int64_t c = 0; c < k; ++c) {
            const unsigned u = codes[row * k + c];
            if (u >> bits) return QE_LB_EINVAL;
            const int64_t kb = c / QE_LB_KB, j = c % QE_LB_KB;
            for (int b = 0; b < bits; ++b)
                out[((p * kbn + kb) * bits + b) * QE_LB_PR + r] |= (uint32_t)((u >> b) & 1u) << j;
        }
    }
    return QE_LB_OK;
}

/* Per-row, per-group values f32 [n, ng] in panel order [panels, ng, 16] (padding rows 0). */
QE_LB_EXPORT int qe_lb_panel_params(const float* v, int64_t n, int64_t ng, float* out) {
    if (!v || !out || n <= 0 || ng <= 0) return QE_LB_EINVAL;
    const int64_t np = lb_panels(n);
    for (int64_t p = 0; p < np; ++p)
        for (int64_t g = 0; g < ng; ++g)
            for (int64_t r = 0; r < QE_LB_PR; ++r) {
                const int64_t row = p * QE_LB_PR + r;
                out[(p * ng + g) * QE_LB_PR + r] = row < n ? v[row * ng + g] : 0.0f;
            }
    return QE_LB_OK;
}

typedef struct {
    const float* x;
    const uint32_t* w;
    const float* s;  /* [np, ng, 16] */
    const float* sz; /* [np, ng, 16] scale x zero, or NULL: zero = zc */
    const float* bias;
    float* y;
    int64_t M, N, K, G, ng, np, kbn;
    int bits;
    float zc;
    int64_t seg;   /* blocks per segment (a segment stays inside one group) */
    int64_t nseg;  /* segments a row */
    int64_t chunk; /* blocks per K chunk, a multiple of seg */
    int64_t gb;    /* blocks per group (0: one group a row) */
    const float* tab;  /* [M, kbn * 8, 16] quad tables */
    const float* xseg; /* [M, nseg] activation sums per segment */
} lb_ctx;

/* T[q][i] = sum of x[4q + j] over the set bits j of i, in ascending j (same rounding on every
 * path); x beyond K counts as 0. */
static void lb_tables(const float* x, int64_t K, int64_t kbn, float* t) {
    for (int64_t q = 0; q < kbn * QE_LB_Q; ++q) {
        float* tq = t + q * 16;
        tq[0] = 0.0f;
        for (int j = 0; j < 4; ++j) {
            const int64_t k = 4 * q + j;
            const float xj = k < K ? x[k] : 0.0f;
            const int half = 1 << j;
            for (int i = 0; i < half; ++i) tq[half + i] = tq[i] + xj;
        }
    }
}

static int64_t lb_group_of_segment(const lb_ctx* c, int64_t sgi) {
    return c->gb ? (sgi * c->seg) / c->gb : 0;
}

/* ---- scalar path: the reference for the layout ------------------------------------------ */

static void lb_scalar_panel(const lb_ctx* c, int64_t p, int64_t kb0, int64_t kb1) {
    const int bits = c->bits;
    for (int64_t m = 0; m < c->M; ++m) {
        const float* x = c->x + m * c->K;
        for (int r = 0; r < QE_LB_PR; ++r) {
            const int64_t row = p * QE_LB_PR + r;
            if (row >= c->N) break;
            float tot = kb0 ? c->y[m * c->N + row] : (c->bias ? c->bias[row] : 0.0f);
            for (int64_t s0 = kb0; s0 < kb1; s0 += c->seg) {
                const int64_t sgi = s0 / c->seg, g = lb_group_of_segment(c, sgi);
                const int64_t s1 = s0 + c->seg < c->kbn ? s0 + c->seg : c->kbn;
                float acc = 0.0f;
                for (int64_t kb = s0; kb < s1; ++kb) {
                    const uint32_t* wp = c->w + ((p * c->kbn + kb) * bits) * QE_LB_PR + r;
                    for (int j = 0; j < QE_LB_KB; ++j) {
                        const int64_t k = kb * QE_LB_KB + j;
                        if (k >= c->K) break;
                        unsigned u = 0;
                        for (int b = 0; b < bits; ++b) u |= ((wp[b * QE_LB_PR] >> j) & 1u) << b;
                        acc += (float)u * x[k];
                    }
                }
                const int64_t pi = (p * c->ng + g) * QE_LB_PR + r;
                const float s = c->s[pi], sz = c->sz ? c->sz[pi] : s * c->zc;
                tot += s * acc - sz * c->xseg[m * c->nseg + sgi];
            }
            c->y[m * c->N + row] = tot;
        }
    }
}

#if QE_LB_X86
/* ---- AVX-512: one zmm = 16 weight rows, one vpermps = one 4-bit lookup per row ---------- */
#define QE_LB_512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl")))

QE_LB_INLINE QE_LB_512 void lb512_tile(const lb_ctx* c, int64_t p, int64_t kb0, int64_t kb1,
                                        int64_t m0, const int MR, const int BITS) {
    enum { NS = 2 }; /* two accumulator sets (even/odd quads): the adds' latency chains */
    const int ns = MR <= 2 ? NS : 1;
    const int64_t rows = c->N - p * QE_LB_PR;
    const __mmask16 live = rows >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rows) - 1u);
    const int64_t qn = c->kbn * QE_LB_Q * 16; /* floats of one activation row's tables */
    __m512 tot[4];
    for (int m = 0; m < MR; ++m) {
        float* yr = c->y + (m0 + m) * c->N + p * QE_LB_PR;
        if (kb0)
            tot[m] = _mm512_maskz_loadu_ps(live, yr);
        else
            tot[m] = c->bias ? _mm512_maskz_loadu_ps(live, c->bias + p * QE_LB_PR)
                             : _mm512_setzero_ps();
    }
    for (int64_t s0 = kb0; s0 < kb1; s0 += c->seg) {
        const int64_t sgi = s0 / c->seg, g = lb_group_of_segment(c, sgi);
        const int64_t s1 = s0 + c->seg < c->kbn ? s0 + c->seg : c->kbn;
        __m512 acc[4][3][NS];
        for (int m = 0; m < MR; ++m)
            for (int b = 0; b < BITS; ++b)
                for (int h = 0; h < NS; ++h) acc[m][b][h] = _mm512_setzero_ps();
        for (int64_t kb = s0; kb < s1; ++kb) {
            const uint32_t* wp = c->w + ((p * c->kbn + kb) * BITS) * QE_LB_PR;
            __m512i v[3];
            for (int b = 0; b < BITS; ++b) v[b] = _mm512_loadu_si512((const void*)(wp + b * 16));
            const float* tb = c->tab + m0 * qn + kb * QE_LB_Q * 16;
            for (int q = 0; q < QE_LB_Q; ++q) {
                const int h = ns == 2 ? (q & 1) : 0;
                for (int b = 0; b < BITS; ++b) {
                    const __m512i idx = q ? _mm512_srli_epi32(v[b], 4 * q) : v[b];
                    for (int m = 0; m < MR; ++m) {
                        const __m512 t = _mm512_loadu_ps(tb + m * qn + q * 16);
                        acc[m][b][h] = _mm512_add_ps(acc[m][b][h], _mm512_permutexvar_ps(idx, t));
                    }
                }
            }
        }
        const int64_t pi = (p * c->ng + g) * QE_LB_PR;
        const __m512 s = _mm512_loadu_ps(c->s + pi);
        const __m512 sz =
            c->sz ? _mm512_loadu_ps(c->sz + pi) : _mm512_mul_ps(s, _mm512_set1_ps(c->zc));
        for (int m = 0; m < MR; ++m) {
            __m512 a = acc[m][BITS - 1][0];
            if (ns == 2) a = _mm512_add_ps(a, acc[m][BITS - 1][1]);
            for (int b = BITS - 2; b >= 0; --b) { /* a = 2 a + plane b: Horner over the planes */
                __m512 pb = acc[m][b][0];
                if (ns == 2) pb = _mm512_add_ps(pb, acc[m][b][1]);
                a = _mm512_fmadd_ps(a, _mm512_set1_ps(2.0f), pb);
            }
            tot[m] = _mm512_fmadd_ps(s, a, tot[m]);
            const __m512 xs = _mm512_set1_ps(c->xseg[(m0 + m) * c->nseg + sgi]);
            tot[m] = _mm512_fnmadd_ps(sz, xs, tot[m]);
        }
    }
    for (int m = 0; m < MR; ++m)
        _mm512_mask_storeu_ps(c->y + (m0 + m) * c->N + p * QE_LB_PR, live, tot[m]);
}

/* The activation rows of one panel in register tiles of MR rows, then one by one. */
#define QE_LB_PANEL(NAME, TILE, MR, TARGET)                                     \
    TARGET static void NAME(const lb_ctx* c, int64_t p, int64_t kb0, int64_t kb1) { \
        int64_t m = 0;                                                          \
        for (; m + (MR) <= c->M; m += (MR)) {                                   \
            if (c->bits == 2)                                                   \
                TILE(c, p, kb0, kb1, m, (MR), 2);                               \
            else                                                                \
                TILE(c, p, kb0, kb1, m, (MR), 3);                               \
        }                                                                       \
        for (; m < c->M; ++m) {                                                 \
            if (c->bits == 2)                                                   \
                TILE(c, p, kb0, kb1, m, 1, 2);                                  \
            else                                                                \
                TILE(c, p, kb0, kb1, m, 1, 3);                                  \
        }                                                                       \
    }

QE_LB_PANEL(lb512_panel, lb512_tile, 4, QE_LB_512)

/* ---- AVX2: two ymm halves of 8 rows; a 16-entry lookup is two 8-entry vpermps + a blend
 * on bit 3 of the index --------------------------------------------------------------------- */
#define QE_LB_AVX2 __attribute__((target("avx2,fma")))

QE_LB_INLINE QE_LB_AVX2 __m256 lb256_lookup(__m256i idx, __m256 lo, __m256 hi) {
    const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)); /* bit 3 -> sign */
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
                            sel);
}

QE_LB_INLINE QE_LB_AVX2 void lb256_tile(const lb_ctx* c, int64_t p, int64_t kb0, int64_t kb1,
                                         int64_t m0, const int MR, const int BITS) {
    const int64_t rows = c->N - p * QE_LB_PR;
    const int64_t qn = c->kbn * QE_LB_Q * 16;
    float* ybuf[2];
    __m256 tot[2][2];
    for (int m = 0; m < MR; ++m) {
        ybuf[m] = c->y + (m0 + m) * c->N + p * QE_LB_PR;
        for (int hf = 0; hf < 2; ++hf) {
            float tmp[8] = {0};
            const float* src = kb0 ? ybuf[m] : c->bias ? c->bias + p * QE_LB_PR : NULL;
            for (int r = 0; r < 8 && hf * 8 + r < rows && src; ++r) tmp[r] = src[hf * 8 + r];
            tot[m][hf] = _mm256_loadu_ps(tmp);
        }
    }
    for (int64_t s0 = kb0; s0 < kb1; s0 += c->seg) {
        const int64_t sgi = s0 / c->seg, g = lb_group_of_segment(c, sgi);
        const int64_t s1 = s0 + c->seg < c->kbn ? s0 + c->seg : c->kbn;
        __m256 acc[2][3][2];
        for (int m = 0; m < MR; ++m)
            for (int b = 0; b < BITS; ++b) acc[m][b][0] = acc[m][b][1] = _mm256_setzero_ps();
        for (int64_t kb = s0; kb < s1; ++kb) {
            const uint32_t* wp = c->w + ((p * c->kbn + kb) * BITS) * QE_LB_PR;
            const float* tb = c->tab + m0 * qn + kb * QE_LB_Q * 16;
            for (int q = 0; q < QE_LB_Q; ++q)
                for (int b = 0; b < BITS; ++b)
                    for (int hf = 0; hf < 2; ++hf) {
                        const __m256i v =
                            _mm256_loadu_si256((const __m256i*)(wp + b * 16 + hf * 8));
                        const __m256i idx = q ? _mm256_srli_epi32(v, 4 * q) : v;
                        for (int m = 0; m < MR; ++m) {
                            const float* t = tb + m * qn + q * 16;
                            acc[m][b][hf] = _mm256_add_ps(
                                acc[m][b][hf],
                                lb256_lookup(idx, _mm256_loadu_ps(t), _mm256_loadu_ps(t + 8)));
                        }
                    }
        }
        const int64_t pi = (p * c->ng + g) * QE_LB_PR;
        for (int hf = 0; hf < 2; ++hf) {
            const __m256 s = _mm256_loadu_ps(c->s + pi + hf * 8);
            const __m256 sz = c->sz ? _mm256_loadu_ps(c->sz + pi + hf * 8)
                                    : _mm256_mul_ps(s, _mm256_set1_ps(c->zc));
            for (int m = 0; m < MR; ++m) {
                __m256 a = acc[m][BITS - 1][hf];
                for (int b = BITS - 2; b >= 0; --b)
                    a = _mm256_fmadd_ps(a, _mm256_set1_ps(2.0f), acc[m][b][hf]);
                tot[m][hf] = _mm256_fmadd_ps(s, a, tot[m][hf]);
                tot[m][hf] = _mm256_fnmadd_ps(
                    sz, _mm256_set1_ps(c->xseg[(m0 + m) * c->nseg + sgi]), tot[m][hf]);
            }
        }
    }
    for (int m = 0; m < MR; ++m)
        for (int hf = 0; hf < 2; ++hf) {
            float tmp[8];
            _mm256_storeu_ps(tmp, tot[m][hf]);
            for (int r = 0; r < 8 && hf * 8 + r < rows; ++r) ybuf[m][hf * 8 + r] = tmp[r];
        }
}

QE_LB_PANEL(lb256_panel, lb256_tile, 2, QE_LB_AVX2)
#endif

typedef void (*lb_panel_fn)(const lb_ctx*, int64_t, int64_t, int64_t);

/* One unit of QE_LB_PG panels, K chunks outermost (see the header). */
static void lb_unit(const lb_ctx* c, lb_panel_fn fn, int64_t unit) {
    const int64_t p0 = unit * QE_LB_PG;
    const int64_t p1 = p0 + QE_LB_PG < c->np ? p0 + QE_LB_PG : c->np;
    for (int64_t kb0 = 0; kb0 < c->kbn; kb0 += c->chunk) {
        const int64_t kb1 = kb0 + c->chunk < c->kbn ? kb0 + c->chunk : c->kbn;
        for (int64_t p = p0; p < p1; ++p) fn(c, p, kb0, kb1);
    }
}

/* One cached workspace (tables + segment sums), reused while no other call holds it, so that
 * steady-state calls neither allocate nor page-fault. */
static float* lb_ws = NULL;
static size_t lb_ws_cap = 0;
static int lb_ws_busy = 0;

static float* lb_ws_take(size_t bytes, int* cached) {
    *cached = __atomic_exchange_n(&lb_ws_busy, 1, __ATOMIC_ACQUIRE) == 0;
    if (*cached && lb_ws_cap < bytes) {
        free(lb_ws);
        lb_ws_cap = (bytes + 4095) & ~(size_t)4095;
        lb_ws = (float*)aligned_alloc(64, lb_ws_cap);
        if (!lb_ws) lb_ws_cap = 0;
    }
    if (*cached && lb_ws) return lb_ws;
    if (*cached) __atomic_store_n(&lb_ws_busy, 0, __ATOMIC_RELEASE);
    *cached = 0;
    return (float*)aligned_alloc(64, (bytes + 63) & ~(size_t)63);
}

static void lb_ws_give(float* mem, int cached) {
    if (cached)
        __atomic_store_n(&lb_ws_busy, 0, __ATOMIC_RELEASE);
    else
        free(mem);
}

QE_LB_EXPORT int qe_lb_wo_linear(const float* x, const uint32_t* w, const float* scales,
                                 const float* szero, const float* bias, float* y, int64_t M,
                                 int64_t N, int64_t K, int64_t G, int bits, int nthreads) {
    if (!x || !w || !scales || !y || M < 0 || N <= 0 || K <= 0 || G <= 0 || K % G)
        return QE_LB_EINVAL;
    if (bits < 2 || bits > 3 || (G != K && G % QE_LB_KB)) return QE_LB_EINVAL;
    if (M == 0) return QE_LB_OK;
    lb_ctx c = {0};
    c.x = x, c.w = w, c.s = scales, c.sz = szero, c.bias = bias, c.y = y;
    c.M = M, c.N = N, c.K = K, c.G = G, c.ng = K / G, c.bits = bits;
    c.np = lb_panels(N), c.kbn = lb_blocks(K);
    c.zc = (float)(1 << (bits - 1));
    if (c.ng == 1) {
        c.gb = 0;
        c.seg = c.kbn < QE_LB_CHUNK ? c.kbn : QE_LB_CHUNK;
    } else {
        c.gb = G / QE_LB_KB;
        c.seg = c.gb < QE_LB_CHUNK ? c.gb : QE_LB_CHUNK;
        while (c.gb % c.seg) --c.seg; /* a divisor of the group: segments never straddle one */
    }
    c.chunk = c.seg * (QE_LB_CHUNK / c.seg > 0 ? QE_LB_CHUNK / c.seg : 1);
    c.nseg = (c.kbn + c.seg - 1) / c.seg;
    const int64_t tq = c.kbn * QE_LB_Q * 16;
    const int64_t mb = M < QE_LB_MB ? M : QE_LB_MB;
    int cached;
    float* ws = lb_ws_take((size_t)(mb * tq + mb * c.nseg) * sizeof(float), &cached);
    if (!ws) return QE_LB_ENOMEM;
    lb_panel_fn fn = lb_scalar_panel;
#if QE_LB_X86
    const int path = qe_lb_path();
    if (path == 2)
        fn = lb512_panel;
    else if (path == 1)
        fn = lb256_panel;
#endif
    const int64_t units = (c.np + QE_LB_PG - 1) / QE_LB_PG;
    const int nth = nthreads > 1 && units > 1 ? nthreads : 1;
    (void)nth;
    for (int64_t m0 = 0; m0 < M; m0 += mb) { /* row blocks bound the tables' memory */
        c.x = x + m0 * K, c.y = y + m0 * N, c.M = M - m0 < mb ? M - m0 : mb;
        float* tab = ws;
        float* xseg = ws + c.M * tq;
        for (int64_t m = 0; m < c.M; ++m) {
            const float* xr = c.x + m * K;
            lb_tables(xr, K, c.kbn, tab + m * tq);
            for (int64_t sgi = 0; sgi < c.nseg; ++sgi) {
                const int64_t k0 = sgi * c.seg * QE_LB_KB, k1e = k0 + c.seg * QE_LB_KB;
                const int64_t k1 = k1e < K ? k1e : K;
                float sum = 0.0f;
                for (int64_t k = k0; k < k1; ++k) sum += xr[k];
                xseg[m * c.nseg + sgi] = sum;
            }
        }
        c.tab = tab, c.xseg = xseg;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nth) if (nth > 1)
#endif
        for (int64_t u = 0; u < units; ++u) lb_unit(&c, fn, u);
    }
    lb_ws_give(ws, cached);
    return QE_LB_OK;
}
