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
 * Layout (qe_lb_pack, bytes = 0): rows in panels of 16 (the last one padded with zero codes),
 * K in blocks of 32 (zero-padded).  Per (panel p, block kb, plane b) 16 uint32 words, word r
 * holding bit b of the codes of row 16p + r at k = 32kb + j in its bit j:
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
enum { QE_LB_PF = 2048 /* software prefetch distance (bytes) of the int8-activation stream */ };
enum { QE_LB_PF8 = 8192 /* the same, into L2, for the one-row W2A8 / W3A8 streams */ };

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

/* Unsigned codes u8 [n, k] (values below 2^bits) in one of the two layouts: bit planes for
 * qe_lb_wo_linear (bytes == 0, see the header) or bytes for qe_lb8_linear (bytes == 1, see
 * "int8 activations" below); both put a (panel, block) in `bits` runs of 16 words. */
QE_LB_EXPORT int qe_lb_pack(const uint8_t* codes, int64_t n, int64_t k, int bits, int bytes,
                            uint32_t* out) {
    if (!codes || !out || n <= 0 || k <= 0 || bits < 1 || bits > 3) return QE_LB_EINVAL;
    if (bytes && bits < 2) return QE_LB_EINVAL;
    const int64_t np = lb_panels(n), kbn = lb_blocks(k);
    memset(out, 0, (size_t)(np * kbn * bits * QE_LB_PR) * 4);
    for (int64_t row = 0; row < n; ++row) {
        const int64_t p = row / QE_LB_PR, r = row % QE_LB_PR;
        for (int64_t c = 0; c < k; ++c) {
            const unsigned u = codes[row * k + c];
            if (u >> bits) return QE_LB_EINVAL;
            const int64_t kb = c / QE_LB_KB, off = c % QE_LB_KB;
            uint32_t* wp = out + ((p * kbn + kb) * bits) * QE_LB_PR + r;
            if (!bytes) {
                for (int b = 0; b < bits; ++b)
                    wp[b * QE_LB_PR] |= (uint32_t)((u >> b) & 1u) << off;
                continue;
            }
            const int64_t h = off / 16, sq = (off % 16) / 4, j = off % 4;
            wp[h * QE_LB_PR] |= (uint32_t)(u & 3u) << (8 * j + 2 * sq);
            if (bits == 3) wp[2 * QE_LB_PR] |= (uint32_t)((u >> 2) & 1u) << (8 * j + off / 4);
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
            if (m0 == 0 && p + 1 < c->np) { /* the next panel's block: read after this chunk */
                const char* next = (const char*)(wp + c->kbn * BITS * QE_LB_PR);
                for (int l = 0; l < BITS; ++l) _mm_prefetch(next + 64 * l, _MM_HINT_T0);
            }
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
 * on bit 3 of the index.  (Two in-lane 4-entry vpermilps on the quad's pairs, or one vpermps
 * and a blend of x[4q + 3], measured slower on Zen 4.)  As on AVX-512, each block prefetches
 * the next panel's: a panel reads only a chunk's 2 KB in a run, too short for the hardware
 * prefetcher (M = 1, 4096^2, 2-bit: 0.89 -> 0.73 ms) -------------------------------------- */
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
        if (m0 == 0 && p + 1 < c->np) { /* and the next panel's scales (a line a group) */
            const int64_t pn = ((p + 1) * c->ng + g) * QE_LB_PR;
            _mm_prefetch((const char*)(c->s + pn), _MM_HINT_T0);
            if (c->sz) _mm_prefetch((const char*)(c->sz + pn), _MM_HINT_T0);
        }
        __m256 acc[2][3][2];
        for (int m = 0; m < MR; ++m)
            for (int b = 0; b < BITS; ++b) acc[m][b][0] = acc[m][b][1] = _mm256_setzero_ps();
        for (int64_t kb = s0; kb < s1; ++kb) {
            const uint32_t* wp = c->w + ((p * c->kbn + kb) * BITS) * QE_LB_PR;
            if (m0 == 0 && p + 1 < c->np) { /* the next panel's block: read after this chunk */
                const char* next = (const char*)(wp + c->kbn * BITS * QE_LB_PR);
                for (int l = 0; l < BITS; ++l) _mm_prefetch(next + 64 * l, _MM_HINT_T0);
            }
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

/* ======================================================================================= */
/* int8 activations (W2A8 / W3A8): codes decoded to bytes in registers, vpdpbusd          */
/* ======================================================================================= */
/*
 *   qe_lb8_linear  y[m,n] = xs[m] * sum_g s[n,g] * I[m,n,g] + bias[n],
 *                  I = sum_{k in g} (u[n,k] - z[n,g]) (xq[m,k] - zx[m])      (exact, int32)
 *                    = dot - z * xqsum[m,g] - zx[m] * (usum[n,g] - Gr * z),
 * Gr the group's real length; wt = usum - Gr z comes per panel and group with z and s.
 * qe_lb8_dyn_linear takes float x and quantizes it first with qe_kernels.c's dynamic quantizer
 * (qe_dyn_quantize_into, the codes the torch path makes, bit for bit) straight into this file's
 * cached workspace: no torch operation and no allocation per call.
 *
 * Layout (qe_lb_pack with bytes = 1), the same size and order as the bit planes: per (panel,
 * block of 32 k) `bits` runs of 16 words, word r for row 16p + r: run 0 and 1 hold the low two
 * bits of the codes of k = 32kb + 16h + 4s + j (run h) at bits 8j + 2s; run 2 (3-bit) holds
 * bit 2 of the code of k = 32kb + 4s + j at bit 8j + s.  So (word >> 2s) & 0x03 in every byte
 * is the 4-element operand of one vpdpbusd (u8 codes x s8 activations) for 16 rows, and bit 2
 * joins it after one more shift and mask.  No product exceeds 7 x 128, so AVX2's vpmaddubsw
 * pairs (2 x 7 x 128 < 32767) cannot saturate: the AVX2 path is exact too.
 *
 * AVX-512 VNNI, one activation row (decode, M = 1): field s of every byte masked in place is
 * u * 4^s (at most 192, still a u8), so ONE AND feeds each vpdpbusd; each s has its own
 * accumulator, shifted back by 2s once per group (exact: K is at most 2^16, and the sums of
 * u * 4^s * x stay below 192 * 128 * K < 2^31).  Two panels (32 weight rows, two streams) are
 * read at once: eight independent vpdpbusd chains, each activation broadcast serving both, and
 * the streams are prefetched QE_LB_PF8 bytes ahead into L2 (more misses in flight than L1
 * takes: 4096^2 from DRAM, one thread, 0.38 -> 0.34 ms against prefetching into L1).
 * Several rows (prefill): register tiles of MR = 8, 4 or 2 rows x 2 panels, codes decoded
 * once to plain bytes (shift + AND) and used by every row of the tile; group sums go through a
 * small float tile in L1.
 *
 * Work is handed out in units of two panels (OpenMP, dynamic).
 */
typedef struct {
    const int8_t* xq;     /* [M, ldx], zero-padded to whole blocks */
    const float* xs;      /* [M] */
    const int32_t* zx;    /* [M], or NULL: 0 */
    const int32_t* xqsum; /* [M, ng] */
    const uint32_t* w;
    const float* s;
    const int32_t* zq;
    const int32_t* wt;
    const float* bias;
    float* y;
    int64_t M, N, ng, np, kbn, gb, ldx; /* gb: blocks per group */
    int bits;
} lb8_ctx;

/* The code of row r at k = 32kb + off from the layout. */
static unsigned lb8_code(const uint32_t* wp, int bits, int64_t off) {
    const int64_t h = off / 16, sq = (off % 16) / 4, j = off % 4;
    unsigned u = (wp[h * QE_LB_PR] >> (8 * j + 2 * sq)) & 3u;
    if (bits == 3) u |= ((wp[2 * QE_LB_PR] >> (8 * j + off / 4)) & 1u) << 2;
    return u;
}

static void lb8_scalar_unit(const lb8_ctx* c, int64_t p0, int npu) {
    for (int64_t p = p0; p < p0 + npu; ++p)
        for (int64_t m = 0; m < c->M; ++m)
            for (int r = 0; r < QE_LB_PR && p * QE_LB_PR + r < c->N; ++r) {
                const int64_t row = p * QE_LB_PR + r;
                float tot = 0.0f;
                for (int64_t g = 0; g < c->ng; ++g) {
                    int32_t dot = 0;
                    for (int64_t kb = g * c->gb; kb < (g + 1) * c->gb; ++kb) {
                        const uint32_t* wp = c->w + ((p * c->kbn + kb) * c->bits) * QE_LB_PR + r;
                        for (int64_t off = 0; off < QE_LB_KB; ++off)
                            dot += (int32_t)lb8_code(wp, c->bits, off) *
                                   c->xq[m * c->ldx + kb * QE_LB_KB + off];
                    }
                    const int64_t pi = (p * c->ng + g) * QE_LB_PR + r;
                    const int32_t zx = c->zx ? c->zx[m] : 0;
                    const int32_t i = dot - c->zq[pi] * c->xqsum[m * c->ng + g] - zx * c->wt[pi];
                    tot += c->s[pi] * (float)i;
                }
                c->y[m * c->N + row] = c->xs[m] * tot + (c->bias ? c->bias[row] : 0.0f);
            }
}

#if QE_LB_X86
#define QE_LB_VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

/* The 16-row byte operand of quad q (0..7) of one block: low bits from run q / 4, bit 2 from
 * run 2 (3-bit). */
#define QE_LB8_DECODE(BITS, LO0, LO1, HI, Q, SHR, SHL, AND, OR, SET1)                       \
    ((BITS) == 3 ? OR(AND(SHR((Q) < 4 ? (LO0) : (LO1), 2 * ((Q) % 4)), SET1(0x03030303)),  \
                      AND((Q) <= 2 ? SHL(HI, 2 - (Q)) : SHR(HI, (Q) - 2), SET1(0x04040404))) \
                 : AND(SHR((Q) < 4 ? (LO0) : (LO1), 2 * ((Q) % 4)), SET1(0x03030303)))

QE_LB_INLINE QE_LB_VNNI __m512i lb8_bcast(const int8_t* p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* I (see above) of one panel and group from the exact dot products, scaled into tot. */
QE_LB_INLINE QE_LB_VNNI __m512 lb8_512_group(const lb8_ctx* c, int64_t p, int64_t g, int64_t m,
                                             __m512i i, __m512 tot) {
    const int64_t pi = (p * c->ng + g) * QE_LB_PR;
    const __m512i xsum = _mm512_set1_epi32(c->xqsum[m * c->ng + g]);
    i = _mm512_sub_epi32(i, _mm512_mullo_epi32(_mm512_loadu_si512((const void*)(c->zq + pi)),
                                               xsum));
    if (c->zx && c->zx[m])
        i = _mm512_sub_epi32(i, _mm512_mullo_epi32(_mm512_loadu_si512((const void*)(c->wt + pi)),
                                                   _mm512_set1_epi32(c->zx[m])));
    return _mm512_fmadd_ps(_mm512_loadu_ps(c->s + pi), _mm512_cvtepi32_ps(i), tot);
}

QE_LB_INLINE QE_LB_VNNI void lb8_512_store(const lb8_ctx* c, int64_t p, int64_t m, __m512 tot) {
    const int64_t rows = c->N - p * QE_LB_PR;
    const __mmask16 live = rows >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rows) - 1u);
    const __m512 b = c->bias ? _mm512_maskz_loadu_ps(live, c->bias + p * QE_LB_PR)
                             : _mm512_setzero_ps();
    _mm512_mask_storeu_ps(c->y + m * c->N + p * QE_LB_PR, live,
                          _mm512_fmadd_ps(_mm512_set1_ps(c->xs[m]), tot, b));
}

/* One activation row m x NP panels from p (decode: in-place masks, see the header). */
QE_LB_INLINE QE_LB_VNNI void lb8_512_gemv(const lb8_ctx* c, int64_t p, int64_t m, const int NP,
                                          const int BITS) {
    const int64_t pw = c->kbn * BITS * QE_LB_PR; /* words a panel */
    const int8_t* xr = c->xq + m * c->ldx;
    __m512 tot[2];
    for (int j = 0; j < NP; ++j) tot[j] = _mm512_setzero_ps();
    for (int64_t g = 0; g < c->ng; ++g) {
        __m512i acc[2][5]; /* [panel][s], [panel][4]: bit 2 */
        for (int j = 0; j < NP; ++j)
            for (int a = 0; a < 5; ++a) acc[j][a] = _mm512_setzero_si512();
        for (int64_t kb = g * c->gb; kb < (g + 1) * c->gb; ++kb) {
            const int8_t* xb = xr + kb * QE_LB_KB;
            /* QE_LB_PF8 bytes ahead in each stream; past the end of its panel, stream j
             * continues with panel j of the next unit (prefetch never faults: past the
             * weights it only costs a wasted request) */
            const int64_t ahead = kb + QE_LB_PF8 / (BITS * 64);
            const int64_t skip = ahead < c->kbn ? 0 : (NP - 1) * pw;
            for (int j = 0; j < NP; ++j) {
                const char* wp = (const char*)(c->w + (p + j) * pw + skip + ahead * BITS * 16);
                for (int l = 0; l < BITS; ++l) _mm_prefetch(wp + 64 * l, _MM_HINT_T1);
            }
            for (int h = 0; h < 2; ++h) { /* run h: k = 32kb + 16h + 4s + j */
                __m512i xv[4];
                for (int s = 0; s < 4; ++s) xv[s] = lb8_bcast(xb + 16 * h + 4 * s);
                for (int j = 0; j < NP; ++j) {
                    const uint32_t* wp = c->w + (p + j) * pw + kb * BITS * QE_LB_PR;
                    const __m512i lo = _mm512_loadu_si512((const void*)(wp + 16 * h));
                    for (int s = 0; s < 4; ++s) {
                        const __m512i u =
                            _mm512_and_si512(lo, _mm512_set1_epi32((int)(0x03030303u << 2 * s)));
                        acc[j][s] = _mm512_dpbusd_epi32(acc[j][s], u, xv[s]);
                    }
                }
            }
            if (BITS == 3)
                for (int j = 0; j < NP; ++j) {
                    const uint32_t* wp = c->w + (p + j) * pw + kb * BITS * QE_LB_PR;
                    const __m512i hi = _mm512_loadu_si512((const void*)(wp + 32));
                    for (int q = 0; q < 8; ++q) {
                        const __m512i hb = _mm512_and_si512(_mm512_srli_epi32(hi, q),
                                                            _mm512_set1_epi32(0x01010101));
                        acc[j][4] = _mm512_dpbusd_epi32(acc[j][4], hb, lb8_bcast(xb + 4 * q));
                    }
                }
        }
        for (int j = 0; j < NP; ++j) {
            const __m512i lo = _mm512_add_epi32(acc[j][0], _mm512_srai_epi32(acc[j][1], 2));
            const __m512i up = _mm512_add_epi32(_mm512_srai_epi32(acc[j][2], 4),
                                                _mm512_srai_epi32(acc[j][3], 6));
            __m512i i = _mm512_add_epi32(lo, up);
            if (BITS == 3) i = _mm512_add_epi32(i, _mm512_slli_epi32(acc[j][4], 2));
            tot[j] = lb8_512_group(c, p + j, g, m, i, tot[j]);
        }
    }
    for (int j = 0; j < NP; ++j) lb8_512_store(c, p + j, m, tot[j]);
}

/* MR activation rows from m0 x NP panels from p: codes decoded once to bytes (shift + AND),
 * used by every row; per-group results accumulate in a float tile (L1). */
QE_LB_INLINE QE_LB_VNNI void lb8_512_tile(const lb8_ctx* c, int64_t p, int64_t m0, const int MR,
                                          const int NP, const int BITS) {
    const int64_t pw = c->kbn * BITS * QE_LB_PR;
    __attribute__((aligned(64))) float tot[8][2][16];
    for (int m = 0; m < MR; ++m)
        for (int j = 0; j < NP; ++j) _mm512_store_ps(tot[m][j], _mm512_setzero_ps());
    for (int64_t g = 0; g < c->ng; ++g) {
        __m512i acc[8][2];
        for (int m = 0; m < MR; ++m)
            for (int j = 0; j < NP; ++j) acc[m][j] = _mm512_setzero_si512();
        for (int64_t kb = g * c->gb; kb < (g + 1) * c->gb; ++kb) {
            __m512i lo0[2], lo1[2], hi[2];
            for (int j = 0; j < NP; ++j) {
                const uint32_t* wp = c->w + (p + j) * pw + kb * BITS * QE_LB_PR;
                lo0[j] = _mm512_loadu_si512((const void*)wp);
                lo1[j] = _mm512_loadu_si512((const void*)(wp + 16));
                hi[j] = BITS == 3 ? _mm512_loadu_si512((const void*)(wp + 32)) : lo0[j];
            }
            for (int q = 0; q < 8; ++q) {
                __m512i u[2];
                for (int j = 0; j < NP; ++j)
                    u[j] = QE_LB8_DECODE(BITS, lo0[j], lo1[j], hi[j], q, _mm512_srli_epi32,
                                         _mm512_slli_epi32, _mm512_and_si512, _mm512_or_si512,
                                         _mm512_set1_epi32);
                for (int m = 0; m < MR; ++m) {
                    const __m512i xv = lb8_bcast(c->xq + (m0 + m) * c->ldx + kb * QE_LB_KB + 4 * q);
                    for (int j = 0; j < NP; ++j)
                        acc[m][j] = _mm512_dpbusd_epi32(acc[m][j], u[j], xv);
                }
            }
        }
        for (int m = 0; m < MR; ++m)
            for (int j = 0; j < NP; ++j)
                _mm512_store_ps(tot[m][j], lb8_512_group(c, p + j, g, m0 + m, acc[m][j],
                                                         _mm512_load_ps(tot[m][j])));
    }
    for (int m = 0; m < MR; ++m)
        for (int j = 0; j < NP; ++j) lb8_512_store(c, p + j, m0 + m, _mm512_load_ps(tot[m][j]));
}

#define QE_LB8_BITS(CALL_2, CALL_3) \
    do {                            \
        if (c->bits == 2)           \
            CALL_2;                 \
        else                        \
            CALL_3;                 \
    } while (0)

/* NP panels from p, every activation row: tiles of 8, 4, 2 rows, then one row. */
QE_LB_INLINE QE_LB_VNNI void lb8_512_panels(const lb8_ctx* c, int64_t p, const int NP) {
    int64_t m = 0;
    for (; m + 8 <= c->M; m += 8)
        QE_LB8_BITS(lb8_512_tile(c, p, m, 8, NP, 2), lb8_512_tile(c, p, m, 8, NP, 3));
    if (m + 4 <= c->M) {
        QE_LB8_BITS(lb8_512_tile(c, p, m, 4, NP, 2), lb8_512_tile(c, p, m, 4, NP, 3));
        m += 4;
    }
    if (m + 2 <= c->M) {
        QE_LB8_BITS(lb8_512_tile(c, p, m, 2, NP, 2), lb8_512_tile(c, p, m, 2, NP, 3));
        m += 2;
    }
    if (m < c->M) QE_LB8_BITS(lb8_512_gemv(c, p, m, NP, 2), lb8_512_gemv(c, p, m, NP, 3));
}

QE_LB_VNNI static void lb8_512_unit(const lb8_ctx* c, int64_t p, int npu) {
    if (npu == 2)
        lb8_512_panels(c, p, 2);
    else
        lb8_512_panels(c, p, 1);
}

/* AVX2: vpmaddubsw (exact here, see above) then vpmaddwd by ones; two halves of 8 rows. */
QE_LB_INLINE QE_LB_AVX2 __m256i lb8_256_dot(__m256i acc, __m256i u, __m256i x) {
    const __m256i pairs = _mm256_maddubs_epi16(u, x);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

QE_LB_INLINE QE_LB_AVX2 void lb8_256_tile(const lb8_ctx* c, int64_t p, int64_t m0, const int MR,
                                          const int BITS) {
    const int64_t rows = c->N - p * QE_LB_PR, ldx = c->ldx;
    __m256 tot[2][2];
    for (int m = 0; m < MR; ++m) tot[m][0] = tot[m][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < c->ng; ++g) {
        __m256i acc[2][2];
        for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_si256();
        for (int64_t kb = g * c->gb; kb < (g + 1) * c->gb; ++kb) {
            const uint32_t* wp = c->w + ((p * c->kbn + kb) * BITS) * QE_LB_PR;
            for (int l = 0; l < BITS; ++l)
                _mm_prefetch((const char*)wp + QE_LB_PF + 64 * l, _MM_HINT_T0);
            for (int hf = 0; hf < 2; ++hf) {
                const __m256i lo0 = _mm256_loadu_si256((const __m256i*)(wp + hf * 8));
                const __m256i lo1 = _mm256_loadu_si256((const __m256i*)(wp + 16 + hf * 8));
                const __m256i hi =
                    BITS == 3 ? _mm256_loadu_si256((const __m256i*)(wp + 32 + hf * 8)) : lo0;
                for (int q = 0; q < 8; ++q) {
                    const __m256i u = QE_LB8_DECODE(BITS, lo0, lo1, hi, q, _mm256_srli_epi32,
                                                    _mm256_slli_epi32, _mm256_and_si256,
                                                    _mm256_or_si256, _mm256_set1_epi32);
                    for (int m = 0; m < MR; ++m) {
                        int32_t xw;
                        memcpy(&xw, c->xq + (m0 + m) * ldx + kb * QE_LB_KB + 4 * q, 4);
                        acc[m][hf] = lb8_256_dot(acc[m][hf], u, _mm256_set1_epi32(xw));
                    }
                }
            }
        }
        const int64_t pi = (p * c->ng + g) * QE_LB_PR;
        for (int hf = 0; hf < 2; ++hf) {
            const __m256i zq = _mm256_loadu_si256((const __m256i*)(c->zq + pi + hf * 8));
            const __m256i wt = _mm256_loadu_si256((const __m256i*)(c->wt + pi + hf * 8));
            const __m256 sv = _mm256_loadu_ps(c->s + pi + hf * 8);
            for (int m = 0; m < MR; ++m) {
                const int32_t zx = c->zx ? c->zx[m0 + m] : 0;
                const __m256i xsum = _mm256_set1_epi32(c->xqsum[(m0 + m) * c->ng + g]);
                __m256i i = _mm256_sub_epi32(acc[m][hf], _mm256_mullo_epi32(zq, xsum));
                if (zx) i = _mm256_sub_epi32(i, _mm256_mullo_epi32(wt, _mm256_set1_epi32(zx)));
                tot[m][hf] = _mm256_fmadd_ps(sv, _mm256_cvtepi32_ps(i), tot[m][hf]);
            }
        }
    }
    for (int m = 0; m < MR; ++m)
        for (int hf = 0; hf < 2; ++hf) {
            float tmp[8];
            _mm256_storeu_ps(tmp, tot[m][hf]);
            for (int r = 0; r < 8 && hf * 8 + r < rows; ++r) {
                const int64_t row = p * QE_LB_PR + hf * 8 + r;
                c->y[(m0 + m) * c->N + row] =
                    c->xs[m0 + m] * tmp[r] + (c->bias ? c->bias[row] : 0.0f);
            }
        }
}

/* The panels of a unit one by one, their activation rows in tiles of 2 (the decode is
 * shared), then one by one. */
QE_LB_AVX2 static void lb8_256_unit(const lb8_ctx* c, int64_t p0, int npu) {
    for (int64_t p = p0; p < p0 + npu; ++p) {
        int64_t m = 0;
        for (; m + 2 <= c->M; m += 2)
            QE_LB8_BITS(lb8_256_tile(c, p, m, 2, 2), lb8_256_tile(c, p, m, 2, 3));
        if (m < c->M) QE_LB8_BITS(lb8_256_tile(c, p, m, 1, 2), lb8_256_tile(c, p, m, 1, 3));
    }
}
#endif

/* Which code qe_lb8_linear runs: 0 scalar, 1 AVX2, 2 AVX-512 VNNI (avx512_vnni path only). */
QE_LB_EXPORT int qe_lb8_path(void) { return qe_lb_path(); }

int qe_dyn_quantize_into(const float* x, int64_t M, int64_t K, int per_token, int symmetric,
                         float eps, int8_t* xq, int64_t ldq, float* xs, int32_t* zx);

/* Checks the arguments both entry points share and fills the weight side of c. */
static int lb8_setup(lb8_ctx* c, const uint32_t* w, const float* s, const int32_t* zq,
                     const int32_t* wt, const float* bias, float* y, int64_t M, int64_t N,
                     int64_t K, int64_t G, int bits) {
    if (!w || !s || !zq || !wt || !y || M < 0 || N <= 0 || K <= 0 || G <= 0) return QE_LB_EINVAL;
    if (K % G || bits < 2 || bits > 3 || (G != K && G % QE_LB_KB) || K > (1 << 16))
        return QE_LB_EINVAL;
    memset(c, 0, sizeof(*c));
    c->w = w, c->s = s, c->zq = zq, c->wt = wt, c->bias = bias, c->y = y;
    c->M = M, c->N = N, c->ng = K / G, c->np = lb_panels(N), c->kbn = lb_blocks(K), c->bits = bits;
    c->gb = c->ng == 1 ? c->kbn : G / QE_LB_KB;
    c->ldx = c->kbn * QE_LB_KB;
    return QE_LB_OK;
}

/* Workspace bytes for M rows: codes [M, ldx], then scales, zero points and group sums. */
static size_t lb8_ws_bytes(const lb8_ctx* c) {
    return (size_t)(c->M * c->ldx + 64) + (size_t)(c->M * (2 + c->ng)) * 4;
}

/* Zero padding of each code row (whole blocks), the per-group code sums, then the panels. */
static void lb8_run(lb8_ctx* c, int8_t* xp, int32_t* xqsum, int64_t K, int nthreads) {
    const int64_t G = K / c->ng;
    for (int64_t m = 0; m < c->M; ++m) {
        int8_t* xr = xp + m * c->ldx;
        memset(xr + K, 0, (size_t)(c->ldx - K));
        for (int64_t g = 0; g < c->ng; ++g) {
            int32_t sum = 0;
            for (int64_t k = g * G; k < (g + 1) * G; ++k) sum += xr[k];
            xqsum[m * c->ng + g] = sum;
        }
    }
    c->xq = xp, c->xqsum = xqsum;
    void (*fn)(const lb8_ctx*, int64_t, int) = lb8_scalar_unit;
#if QE_LB_X86
    const int path = qe_lb_path();
    if (path == 2)
        fn = lb8_512_unit;
    else if (path == 1)
        fn = lb8_256_unit;
#endif
    const int64_t units = (c->np + 1) / 2;
    const int nth = nthreads > 1 && units > 1 ? nthreads : 1;
    (void)nth;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 2) num_threads(nth) if (nth > 1)
#endif
    for (int64_t u = 0; u < units; ++u) fn(c, 2 * u, 2 * u + 1 < c->np ? 2 : 1);
}

QE_LB_EXPORT int qe_lb8_linear(const int8_t* xq, const float* xs, const int32_t* zx,
                               const uint32_t* w, const float* s, const int32_t* zq,
                               const int32_t* wt, const float* bias, float* y, int64_t M,
                               int64_t N, int64_t K, int64_t G, int bits, int nthreads) {
    lb8_ctx c;
    const int rc = lb8_setup(&c, w, s, zq, wt, bias, y, M, N, K, G, bits);
    if (rc != QE_LB_OK || !xq || !xs) return rc != QE_LB_OK ? rc : QE_LB_EINVAL;
    if (M == 0) return QE_LB_OK;
    int cached;
    char* ws = (char*)lb_ws_take(lb8_ws_bytes(&c), &cached);
    if (!ws) return QE_LB_ENOMEM;
    int8_t* xp = (int8_t*)ws;
    for (int64_t m = 0; m < M; ++m) memcpy(xp + m * c.ldx, xq + m * K, (size_t)K);
    c.xs = xs, c.zx = zx;
    lb8_run(&c, xp, (int32_t*)(ws + ((M * c.ldx + 63) & ~(int64_t)63)), K, nthreads);
    lb_ws_give((float*)ws, cached);
    return QE_LB_OK;
}

/* The same from float activations x [M, K], quantized here to int8 per token (per_token) or
 * per tensor, symmetric or not, as qe_kernels.c's dynamic W8A8 / W4A8 entry points do. */
QE_LB_EXPORT int qe_lb8_dyn_linear(const float* x, int per_token, int symmetric, float eps,
                                   const uint32_t* w, const float* s, const int32_t* zq,
                                   const int32_t* wt, const float* bias, float* y, int64_t M,
                                   int64_t N, int64_t K, int64_t G, int bits, int nthreads) {
    lb8_ctx c;
    const int rc = lb8_setup(&c, w, s, zq, wt, bias, y, M, N, K, G, bits);
    if (rc != QE_LB_OK || !x) return rc != QE_LB_OK ? rc : QE_LB_EINVAL;
    if (M == 0) return QE_LB_OK;
    int cached;
    char* ws = (char*)lb_ws_take(lb8_ws_bytes(&c), &cached);
    if (!ws) return QE_LB_ENOMEM;
    int8_t* xp = (int8_t*)ws;
    float* xs = (float*)(ws + ((M * c.ldx + 63) & ~(int64_t)63));
    int32_t* zx = (int32_t*)(xs + M);
    if (qe_dyn_quantize_into(x, M, K, per_token, symmetric, eps, xp, c.ldx, xs, zx) != 0) {
        lb_ws_give((float*)ws, cached);
        return QE_LB_EINVAL;
    }
    c.xs = xs, c.zx = symmetric ? NULL : zx;
    lb8_run(&c, xp, zx + M, K, nthreads);
    lb_ws_give((float*)ws, cached);
    return QE_LB_OK;
}
