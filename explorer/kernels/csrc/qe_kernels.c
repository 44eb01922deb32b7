/*
 * qe_kernels.c -- hand-written integer kernels for the quantization explorer.
 *
 * Compiled at first use by explorer/kernels/native.py (gcc/cc, -O3 -fPIC -shared -fopenmp
 * -std=c11, deliberately WITHOUT -march=native) and loaded with ctypes.  The vector code
 * paths are compiled with __attribute__((target(...))) and selected at run time with
 * __builtin_cpu_supports (qe_isa: scalar, avx2, avx_vnni, avx512_vnni), so one .so runs on
 * any x86-64; other architectures get the portable scalar code only.  The VNNI paths of the
 * int8 and W4A8 kernels read repacked weights (see "Repacked weights" near the end).
 *
 * All matrices are row-major and contiguous.  Exported entry points (return 0 on success,
 * a negative QE_E* code otherwise):
 *
 *   qe_wo_linear   y[M,N] = x[M,K] . W^T + bias, W[n,k] = s[n,g] * (code[n,k] - z[n,g]),
 *                  g = k / G.  bits=4: unsigned nibbles packed 2 per byte (element 2j in the
 *                  low nibble of byte j, 2j+1 in the high nibble), z = 8 when zeros == NULL.
 *                  bits=8: signed int8 codes, z = 0 when zeros == NULL.
 *   qe_int8_gemm   out[M,N] = sum_k xq[m,k] * wq[n,k], exact int8 x int8 -> int32.
 *   qe_w8a8_linear y[m,n] = (acc[m,n] - zx[m] * wsum[n]) * xs[m] * ws[n] + bias[n].
 *   qe_w4a8_linear y[m,n] = xs[m] * sum_k (code[n,k] - z[n,g]) * (xq[m,k] - zx[m]) * s[n,g]
 *                  + bias[n]: int8 activations x 4-bit codes, exact integer dot per group
 *                  (see its section at the end of this file).
 *   qe_byte_sum    sum of all bytes of a buffer (unsigned): a plain streaming read, the
 *                  bandwidth floor that `explorer bench` sets each kernel against.
 *
 * Weight-only kernel (float activations).  Per group g the kernel accumulates
 * acc = sum_k code[n,k] * x[m,k] with the *raw* codes (4 bit: unsigned 0..15) in float32 FMA
 * and corrects the zero point afterwards with per-group activation sums:
 *     y[m,n] = sum_g s[n,g] * acc_g - sum_g s[n,g] * z[n,g] * xsum[m,g] + bias[n]
 * so the hot loop never subtracts the zero point.  A 32-byte load of codes is viewed as 8
 * int32 lanes; for 4 bit lane l holds elements 8l..8l+7 (nibble t = element 8l+t), so x is
 * permuted once per call into xp[b*64 + 8t + l] = x[b*64 + 8l + t] and nibble position t of
 * all 8 lanes multiplies one contiguous x vector.  Decode:
 *   M == 1: (w & (0xF << 4t)) for t < 4 and ((w >> 16) & (0xF << 4(t-4))) for t >= 4 equal
 *           u * 16^(t mod 4) exactly, so one AND + one vcvtdq2ps decodes 8 codes and the
 *           16^-(t mod 4) is folded into xp (an exact power-of-two scaling); eight
 *           accumulators per row, no spills.
 *   M  > 1: (w >> 4t) & 0xF (the decode is shared by 4 activation rows, so the extra shift is
 *           cheap and a single mask register leaves room for a 4 x 2 register tile).
 * 8-bit decode is vpmovsxbd + vcvtdq2ps, x in natural order.  Within one 64-element 4-bit
 * block lanes 0-3 and 4-7 may belong to different groups (G = 32), so partial sums are
 * flushed with a scale vector (s[g_lo] x4, s[g_hi] x4) whenever the lane->group mapping
 * changes; groups must be multiples of 32 or the whole row.
 *
 * Integer kernels.  vpmaddubsw (u8 x s8 -> saturating s16 pair sums) cannot be used: with the
 * full int8 range a pair sum reaches 2 * 128 * 128 = 32768 (or 65280 with an offset-binary
 * operand), which saturates.  Instead both operands are sign-extended to int16 (x once per
 * call, w with vpmovsxbw) and multiplied with vpmaddwd (s16 x s16 -> s32 pair sums, exact),
 * then accumulated with vpaddd.  |sum| <= K * 2^14, exact in int32 for K <= 131071.
 *
 * Threads: OpenMP (the process shares torch's libgomp.so.1).  Output columns are handed out
 * in tiles of QE_NT through an atomic counter (each thread owns the columns it claimed); the
 * dynamic split matters on shared VMs whose vCPUs run at very different speeds.  Register
 * tiles of MR activation rows x NR weight rows let M > 1 reuse decoded weights; for M > 1
 * the K dimension is chunked so an MR-row slice of x stays in L1 while it meets every column
 * of the tile.  The next tile's weight rows are software-prefetched (the weight rows are
 * short, 2-4 KiB streams that the hardware prefetcher ramps up on too late).  The per-call
 * workspace is cached between calls (no page faults in steady state).
 */
#ifndef QE_VNNI_PASS /* the file proper; the VNNI template is at the end */
#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* madvise under -std=c11 */
#endif
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__)
#include <immintrin.h>
#define QE_HAVE_X86 1
#else
#define QE_HAVE_X86 0
#endif

#define QE_EXPORT __attribute__((visibility("default")))

enum { QE_OK = 0, QE_EINVAL = -1, QE_ENOMEM = -2 };

/* Blocking parameters. */
#ifndef QE_NT
#define QE_NT 16 /* columns per work tile (the tile's weights stay in L1/L2) */
#endif
#ifndef QE_MP
#define QE_MP 32 /* activation rows per panel (bounds the partial-sum buffer) */
#endif
#ifndef QE_WO_KC
#define QE_WO_KC 1024 /* K chunk (elements) when several row blocks share a tile */
#endif
#ifndef QE_I8_MR
#define QE_I8_MR 4 /* activation rows per register tile of the integer kernels (4 or 6) */
#endif
#ifndef QE_I8_KC
#define QE_I8_KC 2048 /* same for the integer kernels */
#endif
#define QE_MAX_K 131071 /* int8 kernels: K * 128 * 128 must fit in int32 */

/* Instruction-set paths, best last.  A path is taken only if the CPU has every feature it
 * needs; qe_set_isa forces a lower one (tests run each path the CPU has). */
enum { QE_ISA_SCALAR = 0, QE_ISA_AVX2 = 1, QE_ISA_AVXVNNI = 2, QE_ISA_AVX512VNNI = 3 };
#define QE_ISA_MAX QE_ISA_AVX512VNNI

static int qe_forced_isa = -1; /* -1: the best path the CPU has */

static int qe_cpu_has(int isa) {
#if QE_HAVE_X86
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    switch (isa) {
        case QE_ISA_SCALAR: return 1;
        case QE_ISA_AVX2: return avx2;
        case QE_ISA_AVXVNNI: return avx2 && __builtin_cpu_supports("avxvnni");
        case QE_ISA_AVX512VNNI:
            return avx2 && __builtin_cpu_supports("avx512f") &&
                   __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                   __builtin_cpu_supports("avx512vnni");
        default: return 0;
    }
#else
    return isa == QE_ISA_SCALAR;
#endif
}

static int qe_effective_isa(void) {
    if (qe_forced_isa >= 0) return qe_forced_isa;
    for (int isa = QE_ISA_MAX; isa > QE_ISA_SCALAR; --isa)
        if (qe_cpu_has(isa)) return isa;
    return QE_ISA_SCALAR;
}

QE_EXPORT int qe_abi_version(void) { return 1; }

/* The path the kernels take: 0 scalar, 1 avx2 (+fma), 2 avx_vnni (256-bit vpdpbusd),
 * 3 avx512_vnni.  The weight-only kernels and qe_byte_sum use their AVX2 code from 1 up (the
 * weight-only ones their AVX-512F row kernels at M = 1 on 3, see qe_wo_isa); the int8 and
 * W4A8 kernels have a vpdpbusd path for 2 and 3 (see "Repacked weights" below). */
QE_EXPORT int qe_isa(void) { return qe_effective_isa(); }

/* 1 if this CPU can run path `isa`, else 0. */
QE_EXPORT int qe_isa_supported(int isa) { return isa >= 0 && isa <= QE_ISA_MAX && qe_cpu_has(isa); }

/* Force path `isa` (-1: back to the best the CPU has); returns qe_isa(), or QE_EINVAL (and
 * changes nothing) when the CPU cannot run that path. */
QE_EXPORT int qe_set_isa(int isa) {
    if (isa < 0) {
        qe_forced_isa = -1;
    } else {
        if (!qe_isa_supported(isa)) return QE_EINVAL;
        qe_forced_isa = isa;
    }
    return qe_effective_isa();
}

QE_EXPORT int qe_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static int qe_thread_num(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static int qe_num_threads(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

static int64_t qe_min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Split n items into nth contiguous ranges whose starts are multiples of align. */
static void qe_split(int64_t n, int64_t align, int nth, int tid, int64_t* b, int64_t* e) {
    int64_t units = (n + align - 1) / align;
    int64_t per = units / nth, rem = units % nth;
    int64_t ub = tid * per + (tid < rem ? tid : rem);
    int64_t ue = ub + per + (tid < rem ? 1 : 0);
    *b = qe_min64(ub * align, n);
    *e = qe_min64(ue * align, n);
}

static void* qe_alloc(size_t bytes) {
    size_t sz = (bytes + 63) & ~(size_t)63;
    if (sz == 0) sz = 64;
    return aligned_alloc(64, sz);
}

/* Cached workspaces, reused across calls so that steady-state calls neither allocate nor
 * page-fault (fresh pages are expensive, notably in VMs): slot 0 for a kernel's own buffers,
 * slot 1 for the dynamically quantized activations, held while the kernel runs.  A call that
 * finds its slot busy (calls from several threads at once) falls back to a private
 * allocation.  *cached is the slot + 1, or 0 for a private allocation. */
typedef struct {
    char* buf;
    size_t cap;
    int busy;
} qe_ws_slot;
static qe_ws_slot qe_ws_slots[2];

static char* qe_ws_take(int slot, size_t bytes, int* cached) {
    qe_ws_slot* w = &qe_ws_slots[slot];
    *cached = 0;
    if (__atomic_exchange_n(&w->busy, 1, __ATOMIC_ACQUIRE) == 0) {
        if (w->cap < bytes) {
            free(w->buf);
            w->cap = (bytes + 4095) & ~(size_t)4095;
            w->buf = (char*)aligned_alloc(64, w->cap);
            if (!w->buf) w->cap = 0;
        }
        if (w->buf) {
            *cached = slot + 1;
            return w->buf;
        }
        __atomic_store_n(&w->busy, 0, __ATOMIC_RELEASE);
    }
    return (char*)qe_alloc(bytes);
}

static char* qe_ws_get(size_t bytes, int* cached) { return qe_ws_take(0, bytes, cached); }

static void qe_ws_put(char* mem, int cached) {
    if (cached)
        __atomic_store_n(&qe_ws_slots[cached - 1].busy, 0, __ATOMIC_RELEASE);
    else
        free(mem);
}

static size_t qe_round64(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

/* Defined with the repacked-weight kernels at the end of the file: the int8 and W4A8 entry
 * points on raw weights repack them per call and run those kernels on the VNNI paths. */
struct qe_i8_ctx_s;
struct qe_w4a8_ctx_s;
static int qe_i8_run_packed(const struct qe_i8_ctx_s* c, int nthreads);
static int qe_w4a8_run_packed(const struct qe_w4a8_ctx_s* c, int nthreads);

/* ======================================================================================= */
/* Weight-only linear                                                                      */
/* ======================================================================================= */

typedef struct {
    const float* x;
    const uint8_t* codes;
    const float* scales;
    const float* zeros;
    const float* bias;
    float* y;
    int64_t M, N, K, G, ng;
    int bits;
    /* AVX2 workspace */
    int64_t be;     /* elements per block: 64 (4 bit) or 32 (8 bit) */
    int64_t bb;     /* bytes per block per weight row: 32 */
    int64_t nblk;   /* blocks per row (last one possibly partial) */
    int64_t nfull;  /* complete blocks per row */
    int64_t ldw;    /* bytes per weight row */
    int64_t ldx;    /* floats per row of xp (nblk * be) */
    float* xp;      /* [M, ldx] permuted / padded activations */
    float* xsum;    /* [M, ng] per-group activation sums */
    int32_t* ga;    /* [nblk] group of lanes 0-3 */
    int32_t* gb;    /* [nblk] group of lanes 4-7 */
    uint8_t* flush; /* [nblk] lane->group mapping changes after this block */
    int corr;       /* zero-point correction needed */
    float zconst;   /* zero point when zeros == NULL */
    char* tws;      /* per-thread workspace base */
    size_t tws_stride;
    int64_t* next;  /* shared work counter (first unclaimed column) */
} qe_wo_ctx;

/* ---- scalar fallback ------------------------------------------------------------------- */

static void qe_wo_scalar_cols(const qe_wo_ctx* c, int64_t n0, int64_t n1) {
    const int64_t K = c->K, G = c->G, ng = c->ng;
    for (int64_t n = n0; n < n1; ++n) {
        const float* s = c->scales + n * ng;
        const float* z = c->zeros ? c->zeros + n * ng : NULL;
        for (int64_t m = 0; m < c->M; ++m) {
            const float* xr = c->x + m * K;
            float y = 0.0f;
            for (int64_t g = 0; g < ng; ++g) {
                float zz = z ? z[g] : c->zconst;
                float acc = 0.0f;
                if (c->bits == 4) {
                    const uint8_t* w = c->codes + n * (K / 2);
                    for (int64_t k = g * G; k < (g + 1) * G; ++k) {
                        int code = (w[k >> 1] >> ((k & 1) * 4)) & 0xF;
                        acc += ((float)code - zz) * xr[k];
                    }
                } else {
                    const int8_t* w = (const int8_t*)c->codes + n * K;
                    for (int64_t k = g * G; k < (g + 1) * G; ++k)
                        acc += ((float)w[k] - zz) * xr[k];
                }
                y += s[g] * acc;
            }
            if (c->bias) y += c->bias[n];
            c->y[m * c->N + n] = y;
        }
    }
}

#if QE_HAVE_X86
#define QE_AVX2 __attribute__((target("avx2,fma")))
#define QE_INLINE static inline __attribute__((always_inline))

QE_AVX2 QE_INLINE float qe_hsum_ps(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

QE_AVX2 QE_INLINE int32_t qe_hsum_epi32(__m256i v) {
    __m128i lo = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    lo = _mm_add_epi32(lo, _mm_shuffle_epi32(lo, 0x4E));
    lo = _mm_add_epi32(lo, _mm_shuffle_epi32(lo, 0xB1));
    return _mm_cvtsi128_si32(lo);
}

QE_AVX2 static float qe_dot_avx2(const float* a, const float* b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float r = qe_hsum_ps(_mm256_add_ps(s0, s1));
    for (; i < n; ++i) r += a[i] * b[i];
    return r;
}

/* Per-group sums of one activation row (float32, 4 x 8 lanes, pairwise at the end). */
QE_AVX2 static void qe_wo_xsum_row_avx2(const qe_wo_ctx* c, int64_t m) {
    const float* xr = c->x + m * c->K;
    const int64_t G = c->G;
    for (int64_t g = 0; g < c->ng; ++g) {
        const float* p = xr + g * G;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        int64_t k = 0;
        for (; k + 32 <= G; k += 32) {
            s0 = _mm256_add_ps(s0, _mm256_loadu_ps(p + k));
            s1 = _mm256_add_ps(s1, _mm256_loadu_ps(p + k + 8));
            s2 = _mm256_add_ps(s2, _mm256_loadu_ps(p + k + 16));
            s3 = _mm256_add_ps(s3, _mm256_loadu_ps(p + k + 24));
        }
        float r = qe_hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
        for (; k < G; ++k) r += p[k];
        c->xsum[m * c->ng + g] = r;
    }
}

/* Permute (4 bit) or copy (8 bit) one activation row into xp, zero padded to nblk blocks. */
QE_AVX2 static void qe_wo_prep_row(const qe_wo_ctx* c, int64_t m) {
    const float* xr = c->x + m * c->K;
    float* xo = c->xp + m * c->ldx;
    const int64_t K = c->K;
    if (c->bits == 8) {
        memcpy(xo, xr, (size_t)K * sizeof(float));
        for (int64_t k = K; k < c->ldx; ++k) xo[k] = 0.0f;
    } else {
        /* M == 1 (qe_wo4_row1) decodes nibble t as u * 16^(t mod 4) (nibbles 4..7 from
         * w >> 16); the M > 1 kernels decode u itself */
        static const float scl_row[8] = {1.0f, 1.0f / 16, 1.0f / 256, 1.0f / 4096,
                                         1.0f, 1.0f / 16, 1.0f / 256, 1.0f / 4096};
        static const float scl_one[8] = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
        const float* scl = c->M == 1 ? scl_row : scl_one;
        for (int64_t b = 0; b < c->nfull; ++b) {
            const float* src = xr + b * 64;
            float* dst = xo + b * 64;
            /* 8x8 transpose: row l of src = elements 8l..8l+7; row t of dst = src[8l + t]. */
            __m256 r0 = _mm256_loadu_ps(src + 0), r1 = _mm256_loadu_ps(src + 8);
            __m256 r2 = _mm256_loadu_ps(src + 16), r3 = _mm256_loadu_ps(src + 24);
            __m256 r4 = _mm256_loadu_ps(src + 32), r5 = _mm256_loadu_ps(src + 40);
            __m256 r6 = _mm256_loadu_ps(src + 48), r7 = _mm256_loadu_ps(src + 56);
            __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
            __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
            __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
            __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
            __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
            __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
            __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
            __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
            __m256 o0 = _mm256_permute2f128_ps(u0, u4, 0x20);
            __m256 o1 = _mm256_permute2f128_ps(u1, u5, 0x20);
            __m256 o2 = _mm256_permute2f128_ps(u2, u6, 0x20);
            __m256 o3 = _mm256_permute2f128_ps(u3, u7, 0x20);
            __m256 o4 = _mm256_permute2f128_ps(u0, u4, 0x31);
            __m256 o5 = _mm256_permute2f128_ps(u1, u5, 0x31);
            __m256 o6 = _mm256_permute2f128_ps(u2, u6, 0x31);
            __m256 o7 = _mm256_permute2f128_ps(u3, u7, 0x31);
            _mm256_store_ps(dst + 0, _mm256_mul_ps(o0, _mm256_set1_ps(scl[0])));
            _mm256_store_ps(dst + 8, _mm256_mul_ps(o1, _mm256_set1_ps(scl[1])));
            _mm256_store_ps(dst + 16, _mm256_mul_ps(o2, _mm256_set1_ps(scl[2])));
            _mm256_store_ps(dst + 24, _mm256_mul_ps(o3, _mm256_set1_ps(scl[3])));
            _mm256_store_ps(dst + 32, _mm256_mul_ps(o4, _mm256_set1_ps(scl[4])));
            _mm256_store_ps(dst + 40, _mm256_mul_ps(o5, _mm256_set1_ps(scl[5])));
            _mm256_store_ps(dst + 48, _mm256_mul_ps(o6, _mm256_set1_ps(scl[6])));
            _mm256_store_ps(dst + 56, _mm256_mul_ps(o7, _mm256_set1_ps(scl[7])));
        }
        for (int64_t b = c->nfull; b < c->nblk; ++b) {
            for (int t = 0; t < 8; ++t)
                for (int l = 0; l < 8; ++l) {
                    int64_t k = b * 64 + 8 * l + t;
                    xo[b * 64 + 8 * t + l] = k < K ? xr[k] * scl[t] : 0.0f;
                }
        }
    }
}

typedef struct {
    const float* xp;
    int64_t ldx;
    const uint8_t* w[2];
    const uint8_t* wt[2];
    const float* s[2];
    int64_t nfull;
    const int32_t* ga;
    const int32_t* gb;
    const uint8_t* flush;
    float* buf;
    int64_t ldbuf;
    int64_t pf;   /* prefetch distance in bytes (next column tile), 0 = none */
    int row1;     /* M == 1, 4 bit: use qe_wo4_row1 (x pre-scaled by 16^-(t mod 4)) */
} qe_wo_micro_args;

/* Flush MR x NR accumulators into buf with the lane scale vector (lanes 0-3: group ga,
 * lanes 4-7: group gb) of each weight row. */
QE_AVX2 QE_INLINE void qe_wo_flush(const int MR, const int NR, __m256 acc[4][2],
                                   const qe_wo_micro_args* a, int64_t b) {
    const int32_t ga = a->ga[b], gb = a->gb[b];
#pragma GCC unroll 2
    for (int j = 0; j < NR; ++j) {
        const __m256 sv = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_set1_ps(a->s[j][ga])),
                                               _mm_set1_ps(a->s[j][gb]), 1);
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i) {
            float* bp = a->buf + i * a->ldbuf + j * 8;
            _mm256_store_ps(bp, _mm256_fmadd_ps(acc[i][j], sv, _mm256_load_ps(bp)));
            acc[i][j] = _mm256_setzero_ps();
        }
    }
}

/* M > 1, 4 bit: MR activation rows x NR weight rows over blocks [b0, b1).  The decode
 * (w >> 4t) & 0xF is shared by the MR rows; x is the permuted, *unscaled* copy.  Scaled
 * partial sums are flushed into buf[i * ldbuf + j * 8 .. +8]. */
QE_AVX2 QE_INLINE void qe_wo4_micro(const int MR, const int NR, const qe_wo_micro_args* a,
                                    int64_t b0, int64_t b1) {
    const int64_t nfull = a->nfull, pf = a->pf;
    const float* x0 = a->xp;
    const float* x1 = x0 + a->ldx;
    const float* x2 = x1 + a->ldx;
    const float* x3 = x2 + a->ldx;
    const uint8_t* w0 = a->w[0];
    const uint8_t* w1 = a->w[1];
    const __m256i m = _mm256_set1_epi32(0xF);
    __m256 acc[4][2];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
    for (int64_t b = b0; b < b1; ++b) {
        __m256i wv[2];
        if (b < nfull) {
            wv[0] = _mm256_loadu_si256((const __m256i*)(w0 + b * 32));
            if (NR > 1) wv[1] = _mm256_loadu_si256((const __m256i*)(w1 + b * 32));
            if (pf) {
                _mm_prefetch((const char*)(w0 + b * 32 + pf), _MM_HINT_T0);
                if (NR > 1) _mm_prefetch((const char*)(w1 + b * 32 + pf), _MM_HINT_T0);
            }
        } else {
            wv[0] = _mm256_loadu_si256((const __m256i*)a->wt[0]);
            if (NR > 1) wv[1] = _mm256_loadu_si256((const __m256i*)a->wt[1]);
        }
        const int64_t o = b * 64;
#pragma GCC unroll 8
        for (int t = 0; t < 8; ++t) {
            __m256 d[2];
#pragma GCC unroll 2
            for (int j = 0; j < NR; ++j) {
                __m256i v = t == 0   ? _mm256_and_si256(wv[j], m)
                            : t == 7 ? _mm256_srli_epi32(wv[j], 28)
                                     : _mm256_and_si256(_mm256_srli_epi32(wv[j], 4 * t), m);
                d[j] = _mm256_cvtepi32_ps(v);
            }
#pragma GCC unroll 4
            for (int i = 0; i < MR; ++i) {
                const float* xr = i == 0 ? x0 : i == 1 ? x1 : i == 2 ? x2 : x3;
                __m256 xv = _mm256_load_ps(xr + o + 8 * t);
#pragma GCC unroll 2
                for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(d[j], xv, acc[i][j]);
            }
        }
        if (a->flush[b] || b + 1 == b1) qe_wo_flush(MR, NR, acc, a, b);
    }
}

/* M = 1 specialisation: one weight row, eight accumulators (one per nibble position).
 * Nibbles 4..7 are decoded from (w >> 16) with the masks of nibbles 0..3, so only four mask
 * registers are live and nothing spills. */
QE_AVX2 static void qe_wo4_row1(const qe_wo_micro_args* a, int64_t b0, int64_t b1) {
    const float* xb0 = a->xp;
    const uint8_t* w0 = a->w[0];
    const int64_t nfull = a->nfull, pf = a->pf;
    const __m256i m0 = _mm256_set1_epi32(0xF), m1 = _mm256_set1_epi32(0xF0);
    const __m256i m2 = _mm256_set1_epi32(0xF00), m3 = _mm256_set1_epi32(0xF000);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    __m256 tot = _mm256_setzero_ps();
    for (int64_t b = b0; b < b1; ++b) {
        __m256i w;
        if (b < nfull) {
            w = _mm256_loadu_si256((const __m256i*)(w0 + b * 32));
            if (pf) _mm_prefetch((const char*)(w0 + b * 32 + pf), _MM_HINT_T0);
        } else {
            w = _mm256_loadu_si256((const __m256i*)a->wt[0]);
        }
        const __m256i wh = _mm256_srli_epi32(w, 16);
        const float* xb = xb0 + b * 64;
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(w, m0)), _mm256_load_ps(xb + 0), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(w, m1)), _mm256_load_ps(xb + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(w, m2)), _mm256_load_ps(xb + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(w, m3)), _mm256_load_ps(xb + 24), a3);
        a4 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(wh, m0)), _mm256_load_ps(xb + 32), a4);
        a5 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(wh, m1)), _mm256_load_ps(xb + 40), a5);
        a6 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(wh, m2)), _mm256_load_ps(xb + 48), a6);
        a7 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(wh, m3)), _mm256_load_ps(xb + 56), a7);
        if (a->flush[b] || b + 1 == b1) {
            const int32_t ga = a->ga[b], gb = a->gb[b];
            __m256 sv = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_set1_ps(a->s[0][ga])),
                                             _mm_set1_ps(a->s[0][gb]), 1);
            __m256 sum = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                       _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
            tot = _mm256_fmadd_ps(sum, sv, tot);
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = _mm256_setzero_ps();
        }
    }
    _mm256_store_ps(a->buf, _mm256_add_ps(tot, _mm256_load_ps(a->buf)));
}

/* 8 bit: MR activation rows x NR weight rows over 32-element blocks [b0, b1) (natural x
 * order); decode vpmovsxbd + vcvtdq2ps shared by the MR rows.  MR = 1 uses four accumulators
 * per row (t = 0..3) to hide the FMA latency. */
QE_AVX2 QE_INLINE void qe_wo8_micro(const int MR, const int NR, const qe_wo_micro_args* a,
                                    int64_t b0, int64_t b1) {
    const int64_t nfull = a->nfull, pf = a->pf;
    const float* x0 = a->xp;
    const float* x1 = x0 + a->ldx;
    const float* x2 = x1 + a->ldx;
    const float* x3 = x2 + a->ldx;
    const uint8_t* w0 = a->w[0];
    const uint8_t* w1 = a->w[1];
    __m256 acc[4][2], acc1[2][4];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
    if (MR == 1)
#pragma GCC unroll 2
        for (int j = 0; j < NR; ++j)
#pragma GCC unroll 4
            for (int q = 0; q < 4; ++q) acc1[j][q] = _mm256_setzero_ps();
    for (int64_t b = b0; b < b1; ++b) {
        const uint8_t* p[2];
        if (b < nfull) {
            p[0] = w0 + b * 32;
            p[1] = w1 + b * 32;
            if (pf) {
                _mm_prefetch((const char*)(p[0] + pf), _MM_HINT_T0);
                if (NR > 1) _mm_prefetch((const char*)(p[1] + pf), _MM_HINT_T0);
            }
        } else {
            p[0] = a->wt[0];
            p[1] = a->wt[1];
        }
        const int64_t o = b * 32;
#pragma GCC unroll 4
        for (int t = 0; t < 4; ++t) {
            __m256 d[2];
#pragma GCC unroll 2
            for (int j = 0; j < NR; ++j)
                d[j] = _mm256_cvtepi32_ps(
                    _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(p[j] + 8 * t))));
            if (MR == 1) {
                __m256 xv = _mm256_load_ps(x0 + o + 8 * t);
#pragma GCC unroll 2
                for (int j = 0; j < NR; ++j) acc1[j][t] = _mm256_fmadd_ps(d[j], xv, acc1[j][t]);
                continue;
            }
#pragma GCC unroll 4
            for (int i = 0; i < MR; ++i) {
                const float* xr = i == 0 ? x0 : i == 1 ? x1 : i == 2 ? x2 : x3;
                __m256 xv = _mm256_load_ps(xr + o + 8 * t);
#pragma GCC unroll 2
                for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(d[j], xv, acc[i][j]);
            }
        }
        if (a->flush[b] || b + 1 == b1) {
            if (MR == 1)
#pragma GCC unroll 2
                for (int j = 0; j < NR; ++j) {
                    acc[0][j] = _mm256_add_ps(_mm256_add_ps(acc1[j][0], acc1[j][1]),
                                              _mm256_add_ps(acc1[j][2], acc1[j][3]));
#pragma GCC unroll 4
                    for (int q = 0; q < 4; ++q) acc1[j][q] = _mm256_setzero_ps();
                }
            qe_wo_flush(MR, NR, acc, a, b);
        }
    }
}

#define QE_WO_DISPATCH(FN, MR, NR, A, B0, B1)                                                  \
    do {                                                                                       \
        if ((NR) == 2) {                                                                       \
            switch (MR) {                                                                      \
                case 1: FN(1, 2, A, B0, B1); break;                                            \
                case 2: FN(2, 2, A, B0, B1); break;                                            \
                case 3: FN(3, 2, A, B0, B1); break;                                            \
                default: FN(4, 2, A, B0, B1); break;                                           \
            }                                                                                  \
        } else {                                                                               \
            switch (MR) {                                                                      \
                case 1: FN(1, 1, A, B0, B1); break;                                            \
                case 2: FN(2, 1, A, B0, B1); break;                                            \
                case 3: FN(3, 1, A, B0, B1); break;                                            \
                default: FN(4, 1, A, B0, B1); break;                                           \
            }                                                                                  \
        }                                                                                      \
    } while (0)

QE_AVX2 static void qe_wo4_call(int mr, int nr, const qe_wo_micro_args* a, int64_t b0,
                                int64_t b1) {
    if (a->row1) {
        qe_wo4_row1(a, b0, b1);
        return;
    }
#define QE_CALL4(MR, NR, A, B0, B1) qe_wo4_micro(MR, NR, A, B0, B1)
    QE_WO_DISPATCH(QE_CALL4, mr, nr, a, b0, b1);
#undef QE_CALL4
}

QE_AVX2 static void qe_wo8_call(int mr, int nr, const qe_wo_micro_args* a, int64_t b0,
                                int64_t b1) {
#define QE_CALL8(MR, NR, A, B0, B1) qe_wo8_micro(MR, NR, A, B0, B1)
    QE_WO_DISPATCH(QE_CALL8, mr, nr, a, b0, b1);
#undef QE_CALL8
}

/* The next column tile of QE_NT weight rows for this thread (-1: none left), its row count in
 * *nt, and the rows' partial last blocks copied into `tails` (`width` bytes a row, zero-padded),
 * so that the micro-kernels read whole blocks.  Tiles are handed out dynamically: the vCPUs of a
 * shared machine often run at very different speeds, and a static split then waits for the
 * slowest thread. */
static int64_t qe_wo_claim(const qe_wo_ctx* c, uint8_t* tails, int64_t width, int64_t* nt) {
    const int64_t n0 = __atomic_fetch_add(c->next, (int64_t)QE_NT, __ATOMIC_RELAXED);
    if (n0 >= c->N) return -1;
    *nt = qe_min64(QE_NT, c->N - n0);
    if (c->nfull < c->nblk) {
        const int64_t tb = c->ldw - c->nfull * c->bb; /* tail bytes per row */
        for (int64_t j = 0; j < *nt; ++j) {
            memset(tails + j * width, 0, (size_t)width);
            memcpy(tails + j * width, c->codes + (n0 + j) * c->ldw + c->nfull * c->bb,
                   (size_t)tb);
        }
    }
    return n0;
}

QE_AVX2 static void qe_wo_avx2_thread(const qe_wo_ctx* c, int tid, int nth) {
    (void)nth;
    char* ws = c->tws + (size_t)tid * c->tws_stride;
    float* buf = (float*)ws;                                         /* [QE_MP][QE_NT][8] */
    uint8_t* tails = (uint8_t*)(ws + sizeof(float) * QE_MP * QE_NT * 8); /* [QE_NT][32] */
    float* sz = (float*)(tails + QE_NT * 32);                        /* [QE_NT][ng] */
    const int64_t ldbuf = QE_NT * 8;
    const int64_t M = c->M, N = c->N, ng = c->ng;
    const int64_t kcb = (M > 1) ? (QE_WO_KC / c->be) : c->nblk; /* blocks per chunk */

    for (;;) { /* column tiles, handed out dynamically */
        int64_t nt;
        const int64_t n0 = qe_wo_claim(c, tails, 32, &nt);
        if (n0 < 0) break;
        if (c->corr) {
            for (int64_t j = 0; j < nt; ++j) {
                const float* s = c->scales + (n0 + j) * ng;
                const float* z = c->zeros ? c->zeros + (n0 + j) * ng : NULL;
                for (int64_t g = 0; g < ng; ++g) sz[j * ng + g] = s[g] * (z ? z[g] : c->zconst);
            }
        }
        for (int64_t m0 = 0; m0 < M; m0 += QE_MP) {
            const int64_t mp = qe_min64(QE_MP, M - m0);
            for (int64_t i = 0; i < mp; ++i) memset(buf + i * ldbuf, 0, sizeof(float) * 8 * nt);
            for (int64_t cb = 0; cb < c->nblk; cb += kcb) {
                const int64_t ce = qe_min64(cb + kcb, c->nblk);
                for (int64_t i0 = 0; i0 < mp; i0 += 4) {
                    const int mr = (int)qe_min64(4, mp - i0);
                    const int64_t nrmax = (c->bits == 4 && M == 1) ? 1 : 2;
                    for (int64_t j0 = 0; j0 < nt; j0 += nrmax) {
                        const int nr = (int)qe_min64(nrmax, nt - j0);
                        qe_wo_micro_args a;
                        a.xp = c->xp + (m0 + i0) * c->ldx;
                        a.ldx = c->ldx;
                        for (int j = 0; j < 2; ++j) {
                            int64_t jj = j0 + (j < nr ? j : 0);
                            a.w[j] = c->codes + (n0 + jj) * c->ldw;
                            a.wt[j] = tails + jj * 32;
                            a.s[j] = c->scales + (n0 + jj) * ng;
                        }
                        a.nfull = c->nfull;
                        a.ga = c->ga;
                        a.gb = c->gb;
                        a.flush = c->flush;
                        a.buf = buf + i0 * ldbuf + j0 * 8;
                        a.ldbuf = ldbuf;
                        a.pf = i0 == 0 ? nr * c->ldw : 0;
                        a.row1 = c->bits == 4 && M == 1;
                        if (c->bits == 4)
                            qe_wo4_call(mr, nr, &a, cb, ce);
                        else
                            qe_wo8_call(mr, nr, &a, cb, ce);
                    }
                }
            }
            for (int64_t i = 0; i < mp; ++i) {
                const int64_t m = m0 + i;
                float* yr = c->y + m * N;
                for (int64_t j = 0; j < nt; ++j) {
                    const int64_t n = n0 + j;
                    float v = qe_hsum_ps(_mm256_load_ps(buf + i * ldbuf + j * 8));
                    if (c->corr) v -= qe_dot_avx2(sz + j * ng, c->xsum + m * ng, ng);
                    if (c->bias) v += c->bias[n];
                    yr[n] = v;
                }
            }
        }
    }
}
/* ---- AVX-512, M = 1 -------------------------------------------------------------------- */
/* One activation row (a decode step) streams each weight row once, so the kernel is a
 * sequence of dot products and nothing is reused: what bounds it is the instructions per
 * code, not registers.  Blocks of 128 elements (64 bytes of 4-bit codes, 128 of 8-bit), eight
 * accumulators (enough independent FMA chains), the group scale applied once per group
 * (flush), the zero point through xsum as on AVX2.  The block's four 32-element quarters may
 * lie in different groups (G = 32, 64): ga[b] is the group of quarter 0 and gb[b] holds the
 * offsets of quarters 0..3 from it, one byte each.  4 bit: the AVX2 decode (one AND + one
 * vcvtdq2ps per 16 codes, x pre-scaled by 16^-(t mod 4)) on 16 lanes of 8 nibbles, lane l
 * holding elements 8l..8l+7 of the block, so x is permuted into xp[b*128 + 16t + l]; lanes
 * 4j..4j+3 are quarter j.  8 bit: vpmovsxbd + vcvtdq2ps, x in natural order, vectors 2j and
 * 2j + 1 are quarter j.  Taken for K <= QE_WO_K512 only: with longer rows x no longer stays
 * in L1 next to the weight stream, and this single-stream loop then ran slower than the AVX2
 * tiles (4096 x 8192 int8: 3.24 ms against 2.59; 4096 x 11008: 4.3-4.7 against 3.2-3.4, also
 * with x in L1-sized K chunks or other prefetch distances). */
#define QE_AVX512 __attribute__((target("avx2,fma,avx512f")))
#ifndef QE_WO_PF512
#define QE_WO_PF512 1024 /* software prefetch distance (bytes) of the 4-bit stream */
#endif
#ifndef QE_WO_PF512_8
#define QE_WO_PF512_8 512 /* the same for 8 bit */
#endif
#ifndef QE_WO_K512
#define QE_WO_K512 4096 /* longest K the AVX-512 path takes (16 KiB of x) */
#endif

/* The per-lane scales of block b (lane l: group ga[b] + offset of quarter l / 4). */
QE_AVX512 QE_INLINE __m512 qe_wo_sv512(const qe_wo_ctx* c, const float* s, int64_t b) {
    const int32_t g0 = c->ga[b];
    const uint32_t offs = (uint32_t)c->gb[b];
    if (offs == 0) return _mm512_set1_ps(s[g0]);
    __m128 q4;
    if (offs == 0x03020100u)
        q4 = _mm_loadu_ps(s + g0);
    else
        q4 = _mm_setr_ps(s[g0 + (offs & 0xFF)], s[g0 + ((offs >> 8) & 0xFF)],
                         s[g0 + ((offs >> 16) & 0xFF)], s[g0 + (offs >> 24)]);
    const __m512i qidx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    return _mm512_permutexvar_ps(qidx, _mm512_castps128_ps512(q4));
}

/* sum_k x[k] * code[n, k] * s[n, k / G] of one weight row (before the zero-point term),
 * 4 bit: w the row's codes, wt its zero-padded tail block, s its scales.  The prefetches run
 * on into the next row (rows are contiguous). */
QE_AVX512 static float qe_wo4_row512(const qe_wo_ctx* c, const uint8_t* w, const uint8_t* wt,
                                      const float* s) {
    const __m512i m0 = _mm512_set1_epi32(0xF), m1 = _mm512_set1_epi32(0xF0);
    const __m512i m2 = _mm512_set1_epi32(0xF00), m3 = _mm512_set1_epi32(0xF000);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    __m512 tot = _mm512_setzero_ps();
    const int64_t nfull = c->nfull, nblk = c->nblk;
    for (int64_t b = 0; b < nblk; ++b) {
        __m512i v;
        if (b < nfull) {
            v = _mm512_loadu_si512((const void*)(w + b * 64));
            if (QE_WO_PF512) _mm_prefetch((const char*)(w + b * 64 + QE_WO_PF512), _MM_HINT_T0);
        } else {
            v = _mm512_loadu_si512((const void*)wt);
        }
        const __m512i vh = _mm512_srli_epi32(v, 16);
        const float* xb = c->xp + b * 128;
        a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, m0)), _mm512_load_ps(xb + 0), a0);
        a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, m1)), _mm512_load_ps(xb + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, m2)), _mm512_load_ps(xb + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, m3)), _mm512_load_ps(xb + 48), a3);
        a4 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(vh, m0)), _mm512_load_ps(xb + 64), a4);
        a5 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(vh, m1)), _mm512_load_ps(xb + 80), a5);
        a6 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(vh, m2)), _mm512_load_ps(xb + 96), a6);
        a7 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(vh, m3)), _mm512_load_ps(xb + 112), a7);
        if (c->flush[b]) {
            const __m512 sum =
                _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                              _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
            tot = _mm512_fmadd_ps(sum, qe_wo_sv512(c, s, b), tot);
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = _mm512_setzero_ps();
        }
    }
    return _mm512_reduce_add_ps(tot);
}

/* The same for 8-bit codes (quarter j = vectors 2j, 2j + 1). */
QE_AVX512 static float qe_wo8_row512(const qe_wo_ctx* c, const uint8_t* w, const uint8_t* wt,
                                      const float* s) {
    __m512 a[8];
#pragma GCC unroll 8
    for (int v = 0; v < 8; ++v) a[v] = _mm512_setzero_ps();
    __m512 tot = _mm512_setzero_ps();
    const int64_t nfull = c->nfull, nblk = c->nblk;
    for (int64_t b = 0; b < nblk; ++b) {
        const uint8_t* p = b < nfull ? w + b * 128 : wt;
        if (QE_WO_PF512_8 && b < nfull) {
            _mm_prefetch((const char*)(p + QE_WO_PF512_8), _MM_HINT_T0);
            _mm_prefetch((const char*)(p + QE_WO_PF512_8 + 64), _MM_HINT_T0);
        }
        const float* xb = c->xp + b * 128;
#pragma GCC unroll 8
        for (int v = 0; v < 8; ++v)
            a[v] = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(p + 16 * v)))),
                _mm512_load_ps(xb + 16 * v), a[v]);
        if (c->flush[b]) {
            const int32_t g0 = c->ga[b];
            const uint32_t offs = (uint32_t)c->gb[b];
            if (offs == 0) {
                const __m512 sum = _mm512_add_ps(
                    _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])),
                    _mm512_add_ps(_mm512_add_ps(a[4], a[5]), _mm512_add_ps(a[6], a[7])));
                tot = _mm512_fmadd_ps(sum, _mm512_set1_ps(s[g0]), tot);
            } else {
#pragma GCC unroll 4
                for (int j = 0; j < 4; ++j)
                    tot = _mm512_fmadd_ps(_mm512_add_ps(a[2 * j], a[2 * j + 1]),
                                          _mm512_set1_ps(s[g0 + ((offs >> (8 * j)) & 0xFF)]), tot);
            }
#pragma GCC unroll 8
            for (int v = 0; v < 8; ++v) a[v] = _mm512_setzero_ps();
        }
    }
    return _mm512_reduce_add_ps(tot);
}

/* The one activation row into xp: 8 bit a zero-padded copy, 4 bit permuted to
 * xp[b*128 + 16t + l] = x[b*128 + 8l + t] * 16^-(t mod 4) (exact power-of-two scaling). */
QE_AVX512 static void qe_wo_prep_row512(const qe_wo_ctx* c) {
    const float* xr = c->x;
    float* xo = c->xp;
    const int64_t K = c->K;
    if (c->bits == 8) {
        memcpy(xo, xr, (size_t)K * sizeof(float));
        for (int64_t k = K; k < c->ldx; ++k) xo[k] = 0.0f;
        return;
    }
    static const float scl[4] = {1.0f, 1.0f / 16, 1.0f / 256, 1.0f / 4096};
    const __m512i lane8 = _mm512_setr_epi32(0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104,
                                            112, 120);
    for (int64_t b = 0; b < c->nfull; ++b)
        for (int t = 0; t < 8; ++t) {
            const __m512 g = _mm512_i32gather_ps(_mm512_add_epi32(lane8, _mm512_set1_epi32(t)),
                                                 xr + b * 128, 4);
            _mm512_store_ps(xo + b * 128 + 16 * t, _mm512_mul_ps(g, _mm512_set1_ps(scl[t & 3])));
        }
    for (int64_t b = c->nfull; b < c->nblk; ++b)
        for (int t = 0; t < 8; ++t)
            for (int l = 0; l < 16; ++l) {
                const int64_t k = b * 128 + 8 * l + t;
                xo[b * 128 + 16 * t + l] = k < K ? xr[k] * scl[t & 3] : 0.0f;
            }
}

/* Column tiles of QE_NT rows handed out as on AVX2 (see qe_wo_avx2_thread). */
QE_AVX512 static void qe_wo512_thread(const qe_wo_ctx* c, int tid) {
    uint8_t* tails = (uint8_t*)(c->tws + (size_t)tid * c->tws_stride); /* [QE_NT][128] */
    float* sz = (float*)(tails + QE_NT * 128);                            /* [ng] */
    const int64_t ng = c->ng;
    for (;;) {
        int64_t nt;
        const int64_t n0 = qe_wo_claim(c, tails, 128, &nt);
        if (n0 < 0) break;
        for (int64_t j = 0; j < nt; ++j) {
            const int64_t n = n0 + j;
            const float* s = c->scales + n * ng;
            const uint8_t* w = c->codes + n * c->ldw;
            float v = c->bits == 4 ? qe_wo4_row512(c, w, tails + j * 128, s)
                                   : qe_wo8_row512(c, w, tails + j * 128, s);
            if (c->corr) {
                const float* z = c->zeros ? c->zeros + n * ng : NULL;
                for (int64_t g = 0; g < ng; ++g) sz[g] = s[g] * (z ? z[g] : c->zconst);
                v -= qe_dot_avx2(sz, c->xsum, ng);
            }
            if (c->bias) v += c->bias[n];
            c->y[n] = v;
        }
    }
}

#endif /* QE_HAVE_X86 */

#if QE_HAVE_X86
/* M = 1 on the AVX-512 path: see qe_wo4_row512. */
static int qe_wo_run512(qe_wo_ctx* c, int nthreads) {
    const int64_t K = c->K, G = c->G, ng = c->ng;
    c->be = 128;
    c->bb = c->bits == 4 ? 64 : 128;
    c->nblk = (K + 127) / 128;
    c->nfull = K / 128;
    c->ldw = c->bits == 4 ? K / 2 : K;
    c->ldx = c->nblk * 128;
    const size_t o_xsum = qe_round64(sizeof(float) * (size_t)c->ldx);
    const size_t o_ga = o_xsum + qe_round64(sizeof(float) * (size_t)ng);
    const size_t o_gb = o_ga + qe_round64(sizeof(int32_t) * (size_t)c->nblk);
    const size_t o_fl = o_gb + qe_round64(sizeof(int32_t) * (size_t)c->nblk);
    const size_t o_tws = o_fl + qe_round64((size_t)c->nblk);
    c->tws_stride = qe_round64(QE_NT * 128) + qe_round64(sizeof(float) * (size_t)ng);
    int cached;
    char* mem = qe_ws_get(o_tws + c->tws_stride * (size_t)nthreads, &cached);
    if (!mem) return QE_ENOMEM;
    c->xp = (float*)mem;
    c->xsum = (float*)(mem + o_xsum);
    c->ga = (int32_t*)(mem + o_ga);
    c->gb = (int32_t*)(mem + o_gb);
    c->flush = (uint8_t*)(mem + o_fl);
    c->tws = mem + o_tws;
    int64_t next = 0;
    c->next = &next;
    for (int64_t b = 0; b < c->nblk; ++b) {
        const int64_t g0 = b * 128 / G;
        uint32_t offs = 0;
        for (int j = 1; j < 4; ++j)
            offs |= (uint32_t)(qe_min64(b * 128 + 32 * j, K - 1) / G - g0) << (8 * j);
        c->ga[b] = (int32_t)g0;
        c->gb[b] = (int32_t)offs;
    }
    for (int64_t b = 0; b < c->nblk; ++b)
        c->flush[b] = (uint8_t)(b + 1 == c->nblk || c->ga[b + 1] != c->ga[b] ||
                                c->gb[b + 1] != c->gb[b]);
    qe_wo_prep_row512(c);
    if (c->corr) qe_wo_xsum_row_avx2(c, 0);
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    qe_wo512_thread(c, qe_thread_num());
    qe_ws_put(mem, cached);
    return QE_OK;
}
#endif

QE_EXPORT int qe_wo_linear(const float* x, const void* codes, const float* scales,
                           const float* zeros, const float* bias, float* y, int64_t M, int64_t N,
                           int64_t K, int64_t G, int bits, int nthreads) {
    if (!x || !codes || !scales || !y || M < 0 || N < 0 || K <= 0 || G <= 0 || K % G != 0)
        return QE_EINVAL;
    if (bits != 4 && bits != 8) return QE_EINVAL;
    if (bits == 4 && (K & 1)) return QE_EINVAL;
    if (G != K && G % 32 != 0) return QE_EINVAL;
    if (M == 0 || N == 0) return QE_OK;
    if (nthreads < 1) nthreads = 1;

    qe_wo_ctx c;
    memset(&c, 0, sizeof(c));
    c.x = x;
    c.codes = (const uint8_t*)codes;
    c.scales = scales;
    c.zeros = zeros;
    c.bias = bias;
    c.y = y;
    c.M = M;
    c.N = N;
    c.K = K;
    c.G = G;
    c.ng = K / G;
    c.bits = bits;
    c.zconst = bits == 4 ? 8.0f : 0.0f;
    c.corr = zeros != NULL || bits == 4;

    const int isa = qe_effective_isa();
    if (isa == 0) {
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
        {
            int64_t nb, ne;
            qe_split(N, 1, qe_num_threads(), qe_thread_num(), &nb, &ne);
            qe_wo_scalar_cols(&c, nb, ne);
        }
        return QE_OK;
    }
#if QE_HAVE_X86
    if (isa >= QE_ISA_AVX512VNNI && M == 1 && K <= QE_WO_K512) return qe_wo_run512(&c, nthreads);
    c.be = bits == 4 ? 64 : 32;
    c.bb = 32;
    c.nblk = (K + c.be - 1) / c.be;
    c.nfull = K / c.be;
    c.ldw = bits == 4 ? K / 2 : K;
    c.ldx = c.nblk * c.be;
    size_t o_xp = 0;
    size_t o_xsum = o_xp + qe_round64(sizeof(float) * (size_t)(M * c.ldx));
    size_t o_ga = o_xsum + qe_round64(sizeof(float) * (size_t)(M * c.ng));
    size_t o_gb = o_ga + qe_round64(sizeof(int32_t) * (size_t)c.nblk);
    size_t o_fl = o_gb + qe_round64(sizeof(int32_t) * (size_t)c.nblk);
    size_t o_tws = o_fl + qe_round64((size_t)c.nblk);
    c.tws_stride = qe_round64(sizeof(float) * QE_MP * QE_NT * 8) + qe_round64(QE_NT * 32) +
                   qe_round64(sizeof(float) * QE_NT * (size_t)c.ng);
    int cached;
    char* mem = qe_ws_get(o_tws + c.tws_stride * (size_t)nthreads, &cached);
    if (!mem) return QE_ENOMEM;
    c.xp = (float*)(mem + o_xp);
    c.xsum = (float*)(mem + o_xsum);
    c.ga = (int32_t*)(mem + o_ga);
    c.gb = (int32_t*)(mem + o_gb);
    c.flush = (uint8_t*)(mem + o_fl);
    c.tws = mem + o_tws;
    int64_t next = 0;
    c.next = &next;
    for (int64_t b = 0; b < c.nblk; ++b) {
        int64_t k0 = b * c.be;
        int64_t k1 = qe_min64(k0 + 32, K - 1);
        c.ga[b] = (int32_t)(k0 / G);
        c.gb[b] = (int32_t)(bits == 4 ? k1 / G : k0 / G);
    }
    for (int64_t b = 0; b < c.nblk; ++b)
        c.flush[b] = (uint8_t)(b + 1 == c.nblk || c.ga[b + 1] != c.ga[b] || c.gb[b + 1] != c.gb[b]);

    /* Activation prep on the calling thread (cheap next to the GEMM): no barrier inside the
     * parallel region, so the caller starts on column tiles while the workers wake up. */
    for (int64_t m = 0; m < M; ++m) {
        qe_wo_prep_row(&c, m);
        if (c.corr) qe_wo_xsum_row_avx2(&c, m);
    }
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    qe_wo_avx2_thread(&c, qe_thread_num(), qe_num_threads());
    qe_ws_put(mem, cached);
    return QE_OK;
#else
    return QE_EINVAL;
#endif
}

/* The path qe_wo_linear takes for M activation rows of length K: 0 scalar, 1 avx2, 3 its
 * AVX-512 code (M = 1 and K <= QE_WO_K512 on the avx512_vnni level; the code itself needs
 * AVX-512F only).  Everything else runs the AVX2 code on every SIMD level. */
QE_EXPORT int qe_wo_isa(int64_t M, int64_t K) {
    const int isa = qe_effective_isa();
    if (isa == QE_ISA_SCALAR) return QE_ISA_SCALAR;
    return isa >= QE_ISA_AVX512VNNI && M == 1 && K <= QE_WO_K512 ? QE_ISA_AVX512VNNI : QE_ISA_AVX2;
}

/* ======================================================================================= */
/* Streaming read (the bandwidth floor)                                                    */
/* ======================================================================================= */

/* What reading `bytes` bytes costs when nothing else is done with them: each thread sums a
 * contiguous slice with vpsadbw (one op per 32 bytes), so the loop is bound by the memory
 * system, as a weight-streaming GEMV at M = 1 would be if its arithmetic were free.  The sum
 * (of the bytes as unsigned values) is returned so the reads cannot be optimised away and so
 * that tests can check them. */
#if QE_HAVE_X86
QE_AVX2 static int64_t qe_byte_sum_avx2(const uint8_t* p, int64_t n) {
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    const __m256i z = _mm256_setzero_si256();
    int64_t i = 0;
    for (; i + 128 <= n; i += 128) {
        s0 = _mm256_add_epi64(s0, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i*)(p + i)), z));
        s1 = _mm256_add_epi64(s1, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i*)(p + i + 32)), z));
        s2 = _mm256_add_epi64(s2, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i*)(p + i + 64)), z));
        s3 = _mm256_add_epi64(s3, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i*)(p + i + 96)), z));
    }
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
    int64_t r = _mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 1) +
                _mm256_extract_epi64(s, 2) + _mm256_extract_epi64(s, 3);
    for (; i < n; ++i) r += p[i];
    return r;
}
#endif

static int64_t qe_byte_sum_scalar(const uint8_t* p, int64_t n) {
    int64_t r = 0;
    for (int64_t i = 0; i < n; ++i) r += p[i];
    return r;
}

QE_EXPORT int64_t qe_byte_sum(const void* data, int64_t bytes, int nthreads) {
    if (!data || bytes <= 0) return 0;
    if (nthreads < 1) nthreads = 1;
    const uint8_t* p = (const uint8_t*)data;
    const int isa = qe_effective_isa();
    int64_t total = 0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1) reduction(+ : total)
    {
        int64_t b, e;
        qe_split(bytes, 4096, qe_num_threads(), qe_thread_num(), &b, &e);
#if QE_HAVE_X86
        if (isa)
            total += qe_byte_sum_avx2(p + b, e - b);
        else
#endif
            total += qe_byte_sum_scalar(p + b, e - b);
    }
    (void)isa;
    return total;
}

/* ======================================================================================= */
/* Integer GEMM (exact) and W8A8 linear                                                   */
/* ======================================================================================= */

typedef struct qe_i8_ctx_s {
    const int8_t* xq;
    const int8_t* wq;
    int32_t* out;      /* int8_gemm output or NULL */
    float* y;          /* w8a8 output or NULL */
    const float* xs;
    const int32_t* zx;
    const float* ws;
    const int32_t* wsum;
    const float* bias;
    int64_t M, N, K;
    int64_t ldx;       /* int16 per row of x16 (K rounded up to 16) */
    int64_t nsteps;    /* ldx / 16 */
    int64_t nfull;     /* K / 16 */
    int16_t* x16;
    char* tws;
    size_t tws_stride;
    int64_t* next;
} qe_i8_ctx;

static void qe_i8_epilogue(const qe_i8_ctx* c, int64_t m, int64_t n, int32_t acc) {
    if (c->out) {
        c->out[m * c->N + n] = acc;
    } else {
        int64_t d = (int64_t)acc;
        if (c->zx) d -= (int64_t)c->zx[m] * (int64_t)c->wsum[n];
        double v = (double)d * (double)c->xs[m] * (double)c->ws[n];
        if (c->bias) v += (double)c->bias[n];
        c->y[m * c->N + n] = (float)v;
    }
}

static void qe_i8_scalar_cols(const qe_i8_ctx* c, int64_t n0, int64_t n1) {
    const int64_t K = c->K;
    for (int64_t n = n0; n < n1; ++n) {
        const int8_t* w = c->wq + n * K;
        for (int64_t m = 0; m < c->M; ++m) {
            const int8_t* xr = c->xq + m * K;
            int32_t acc = 0;
            for (int64_t k = 0; k < K; ++k) acc += (int32_t)xr[k] * (int32_t)w[k];
            qe_i8_epilogue(c, m, n, acc);
        }
    }
}

#if QE_HAVE_X86
QE_AVX2 static void qe_i8_prep_row(const qe_i8_ctx* c, int64_t m) {
    const int8_t* xr = c->xq + m * c->K;
    int16_t* xo = c->x16 + m * c->ldx;
    int64_t k = 0;
    for (; k + 16 <= c->K; k += 16)
        _mm256_store_si256((__m256i*)(xo + k),
                           _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(xr + k))));
    for (; k < c->K; ++k) xo[k] = xr[k];
    for (; k < c->ldx; ++k) xo[k] = 0;
}

typedef struct {
    const int16_t* x;
    int64_t ldx;
    const int8_t* w[2];
    const int8_t* wt[2];
    int64_t nfull;
    int32_t* buf;
    int64_t ldbuf;
    int64_t pf;
} qe_i8_micro_args;

QE_AVX2 QE_INLINE void qe_i8_step(const int MR, const int NR, __m256i acc[QE_I8_MR][2],
                                  const int16_t* x, int64_t ldx, const int8_t* p0,
                                  const int8_t* p1) {
    __m256i wv[2];
    wv[0] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)p0));
    if (NR > 1) wv[1] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)p1));
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
        __m256i xv = _mm256_load_si256((const __m256i*)(x + i * ldx));
        if (NR > 1) __asm__("" : "+x"(xv)); /* one load, reused by all NR columns */
#pragma GCC unroll 2
        for (int j = 0; j < NR; ++j) {
            acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(xv, wv[j]));
            /* keep one accumulator chain per (i, j): stops gcc from re-associating the
             * unrolled integer sums into trees that spill */
            __asm__("" : "+x"(acc[i][j]));
        }
    }
}

/* MR activation rows x NR weight rows over 16-element steps [s0, s1); int32 partial sums are
 * added to buf[i * ldbuf + j * 8 .. +8]. */
QE_AVX2 QE_INLINE void qe_i8_micro(const int MR, const int NR, const qe_i8_micro_args* a,
                                   int64_t s0, int64_t s1) {
    const int16_t* x = a->x;
    const int64_t ldx = a->ldx, pf = a->pf;
    const int8_t* w0 = a->w[0];
    const int8_t* w1 = NR > 1 ? a->w[1] : a->w[0];
    __m256i acc[QE_I8_MR][2];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_si256();
    const int64_t se = s1 < a->nfull ? s1 : a->nfull;
    int64_t s = s0;
    for (; s + 4 <= se; s += 4) {
        if (pf) {
            _mm_prefetch((const char*)(w0 + s * 16 + pf), _MM_HINT_T0);
            if (NR > 1) _mm_prefetch((const char*)(w1 + s * 16 + pf), _MM_HINT_T0);
        }
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u)
            qe_i8_step(MR, NR, acc, x + (s + u) * 16, ldx, w0 + (s + u) * 16, w1 + (s + u) * 16);
    }
    for (; s < se; ++s) qe_i8_step(MR, NR, acc, x + s * 16, ldx, w0 + s * 16, w1 + s * 16);
    if (s < s1) qe_i8_step(MR, NR, acc, x + s * 16, ldx, a->wt[0], a->wt[1]);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
        for (int j = 0; j < NR; ++j) {
            __m256i* bp = (__m256i*)(a->buf + i * a->ldbuf + j * 8);
            _mm256_store_si256(bp, _mm256_add_epi32(_mm256_load_si256(bp), acc[i][j]));
        }
}

QE_AVX2 static void qe_i8_call(int mr, int nr, const qe_i8_micro_args* a, int64_t s0,
                               int64_t s1) {
#define QE_I8_CASE(MR)                                \
    case MR:                                          \
        if (nr == 2)                                  \
            qe_i8_micro(MR, 2, a, s0, s1);            \
        else                                          \
            qe_i8_micro(MR, 1, a, s0, s1);            \
        break;
    switch (mr) {
        QE_I8_CASE(1)
        QE_I8_CASE(2)
        QE_I8_CASE(3)
        QE_I8_CASE(4)
#if QE_I8_MR > 4
        QE_I8_CASE(5)
        QE_I8_CASE(6)
#endif
        default: break;
    }
#undef QE_I8_CASE
}

QE_AVX2 static void qe_i8_avx2_thread(const qe_i8_ctx* c, int tid, int nth) {
    (void)nth;
    char* ws = c->tws + (size_t)tid * c->tws_stride;
    int32_t* buf = (int32_t*)ws;                                          /* [MP][NT][8] */
    int8_t* tails = (int8_t*)(ws + sizeof(int32_t) * QE_MP * QE_NT * 8); /* [NT][16] */
    const int64_t ldbuf = QE_NT * 8;
    const int64_t M = c->M, K = c->K;
    const int64_t kcs = (M > QE_I8_MR) ? (QE_I8_KC / 16) : c->nsteps;

    /* Column tiles are handed out dynamically: the vCPUs of a shared machine often run at
     * very different speeds, and a static split then waits for the slowest thread. */
    for (;;) {
        const int64_t n0 = __atomic_fetch_add(c->next, (int64_t)QE_NT, __ATOMIC_RELAXED);
        if (n0 >= c->N) break;
        const int64_t nt = qe_min64(QE_NT, c->N - n0);
        if (c->nfull < c->nsteps) {
            const int64_t tb = K - c->nfull * 16;
            for (int64_t j = 0; j < nt; ++j) {
                memset(tails + j * 16, 0, 16);
                memcpy(tails + j * 16, c->wq + (n0 + j) * K + c->nfull * 16, (size_t)tb);
            }
        }
        for (int64_t m0 = 0; m0 < M; m0 += QE_MP) {
            const int64_t mp = qe_min64(QE_MP, M - m0);
            for (int64_t i = 0; i < mp; ++i)
                memset(buf + i * ldbuf, 0, sizeof(int32_t) * 8 * nt);
            for (int64_t cs = 0; cs < c->nsteps; cs += kcs) {
                const int64_t ce = qe_min64(cs + kcs, c->nsteps);
                for (int64_t i0 = 0; i0 < mp; i0 += QE_I8_MR) {
                    const int mr = (int)qe_min64(QE_I8_MR, mp - i0);
                    for (int64_t j0 = 0; j0 < nt; j0 += 2) {
                        const int nr = (int)qe_min64(2, nt - j0);
                        qe_i8_micro_args a;
                        a.x = c->x16 + (m0 + i0) * c->ldx;
                        a.ldx = c->ldx;
                        for (int j = 0; j < 2; ++j) {
                            int64_t jj = j0 + (j < nr ? j : 0);
                            a.w[j] = c->wq + (n0 + jj) * K;
                            a.wt[j] = tails + jj * 16;
                        }
                        a.nfull = c->nfull;
                        a.buf = buf + i0 * ldbuf + j0 * 8;
                        a.ldbuf = ldbuf;
                        a.pf = i0 == 0 ? nr * K : 0;
                        qe_i8_call(mr, nr, &a, cs, ce);
                    }
                }
            }
            for (int64_t i = 0; i < mp; ++i)
                for (int64_t j = 0; j < nt; ++j)
                    qe_i8_epilogue(c, m0 + i, n0 + j,
                                   qe_hsum_epi32(_mm256_load_si256(
                                       (const __m256i*)(buf + i * ldbuf + j * 8))));
        }
    }
}
#endif /* QE_HAVE_X86 */

static int qe_i8_run(qe_i8_ctx* c, int nthreads) {
    const int64_t M = c->M, N = c->N, K = c->K;
    if (M == 0 || N == 0) return QE_OK;
    if (nthreads < 1) nthreads = 1;
    const int isa = qe_effective_isa();
    if (isa >= QE_ISA_AVXVNNI) return qe_i8_run_packed(c, nthreads);
    if (isa == 0) {
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
        {
            int64_t nb, ne;
            qe_split(N, 1, qe_num_threads(), qe_thread_num(), &nb, &ne);
            qe_i8_scalar_cols(c, nb, ne);
        }
        return QE_OK;
    }
#if QE_HAVE_X86
    c->ldx = (K + 15) / 16 * 16;
    c->nsteps = c->ldx / 16;
    c->nfull = K / 16;
    size_t o_tws = qe_round64(sizeof(int16_t) * (size_t)(M * c->ldx));
    c->tws_stride = qe_round64(sizeof(int32_t) * QE_MP * QE_NT * 8) + qe_round64(QE_NT * 16);
    int cached;
    char* mem = qe_ws_get(o_tws + c->tws_stride * (size_t)nthreads, &cached);
    if (!mem) return QE_ENOMEM;
    c->x16 = (int16_t*)mem;
    c->tws = mem + o_tws;
    int64_t next = 0;
    c->next = &next;
    for (int64_t m = 0; m < M; ++m) qe_i8_prep_row(c, m); /* see qe_wo_linear */
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    qe_i8_avx2_thread(c, qe_thread_num(), qe_num_threads());
    qe_ws_put(mem, cached);
    return QE_OK;
#else
    return QE_EINVAL;
#endif
}

QE_EXPORT int qe_int8_gemm(const int8_t* xq, const int8_t* wq, int32_t* out, int64_t M,
                           int64_t N, int64_t K, int nthreads) {
    if (!xq || !wq || !out || M < 0 || N < 0 || K < 0 || K > QE_MAX_K) return QE_EINVAL;
    if (K == 0) {
        memset(out, 0, sizeof(int32_t) * (size_t)(M * N));
        return QE_OK;
    }
    qe_i8_ctx c;
    memset(&c, 0, sizeof(c));
    c.xq = xq;
    c.wq = wq;
    c.out = out;
    c.M = M;
    c.N = N;
    c.K = K;
    return qe_i8_run(&c, nthreads);
}

QE_EXPORT int qe_w8a8_linear(const int8_t* xq, const float* xs, const int32_t* zx,
                             const int8_t* wq, const float* ws, const int32_t* wsum,
                             const float* bias, float* y, int64_t M, int64_t N, int64_t K,
                             int nthreads) {
    if (!xq || !xs || !wq || !ws || !y || M < 0 || N < 0 || K <= 0 || K > QE_MAX_K)
        return QE_EINVAL;
    if (zx && !wsum) return QE_EINVAL;
    qe_i8_ctx c;
    memset(&c, 0, sizeof(c));
    c.xq = xq;
    c.wq = wq;
    c.y = y;
    c.xs = xs;
    c.zx = zx;
    c.ws = ws;
    c.wsum = wsum;
    c.bias = bias;
    c.M = M;
    c.N = N;
    c.K = K;
    return qe_i8_run(&c, nthreads);
}

/* ======================================================================================= */
/* W8A8 with dynamic activation quantization fused in                                     */
/* ======================================================================================= */

/* Dynamic 8-bit activation quantization exactly as explorer/quant/primitives.py does it, so the
 * codes (and so the outputs) equal those of the Python path bit for bit:
 *   lo = min(min x, 0), hi = max(max x, 0) over the row (per token) or the whole batch;
 *   symmetric:  scale = max(max(-lo, hi) / 127, eps), z = 0, q = clamp(rne(x / scale), -128, 127);
 *   asymmetric: scale = max((hi - lo) / 255, eps), z = clamp(-rne(lo / scale), 0, 255),
 *               q = clamp(rne(x / scale) + z, 0, 255) - 128 (the int8 domain), z - 128.
 * rne = round half to even (the default rounding mode); all arithmetic in float32. */
/* Round half to even for |v| < 2^22 (adding 1.5 * 2^23 leaves no fraction bits, and the
 * default rounding mode rounds ties to even); larger values are already integers. */
static float qe_rne(float v) {
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    if (!(v > -4194304.0f && v < 4194304.0f)) return v;
    return (v + magic) - magic; /* not folded: no -ffast-math */
}

#if QE_HAVE_X86
/* vminps(x, a) is exactly x < a ? x : a (the second operand on NaN and on equal zeros), so
 * this gives the scalar loop's result, 32 elements at a time. */
QE_AVX2 static int64_t qe_dyn_range_avx2(const float* x, int64_t n, float* a, float* b) {
    __m256 lo[4], hi[4];
    for (int j = 0; j < 4; ++j) lo[j] = hi[j] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int j = 0; j < 4; ++j) {
            const __m256 v = _mm256_loadu_ps(x + i + 8 * j);
            lo[j] = _mm256_min_ps(v, lo[j]);
            hi[j] = _mm256_max_ps(v, hi[j]);
        }
    float l[32], h[32];
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(l + 8 * j, lo[j]), _mm256_storeu_ps(h + 8 * j, hi[j]);
    for (int j = 0; j < 32; ++j) {
        *a = l[j] < *a ? l[j] : *a;
        *b = h[j] > *b ? h[j] : *b;
    }
    return i;
}
#endif

static void qe_dyn_range(const float* x, int64_t n, float* lo, float* hi) {
    float a = 0.0f, b = 0.0f; /* the range always includes 0 */
    int64_t i = 0;
#if QE_HAVE_X86
    if (qe_effective_isa()) i = qe_dyn_range_avx2(x, n, &a, &b);
#endif
    for (; i < n; ++i) {
        a = x[i] < a ? x[i] : a;
        b = x[i] > b ? x[i] : b;
    }
    *lo = a < *lo ? a : *lo;
    *hi = b > *hi ? b : *hi;
}

static void qe_dyn_qparams(float lo, float hi, int symmetric, float eps, float* scale,
                           int32_t* zero) {
    float s;
    if (symmetric) {
        float amax = -lo > hi ? -lo : hi;
        s = amax / 127.0f;
    } else {
        s = (hi - lo) / 255.0f;
    }
    s = s < eps ? eps : s;
    *scale = s;
    if (symmetric) {
        *zero = 0;
    } else {
        float z = 0.0f - qe_rne(lo / s);
        z = z < 0.0f ? 0.0f : (z > 255.0f ? 255.0f : z);
        *zero = (int32_t)z - 128; /* int8 domain */
    }
}

static void qe_dyn_quantize_row(const float* x, int8_t* q, int64_t n, float scale,
                                int32_t zero, int symmetric, int64_t from) {
    /* codes in [qmin, qmax] of the stored range; asymmetric codes shift into int8 by -128 */
    const float zf = symmetric ? 0.0f : (float)(zero + 128);
    const float qmin = symmetric ? -128.0f : 0.0f, qmax = symmetric ? 127.0f : 255.0f;
    const int shift = symmetric ? 0 : 128;
    for (int64_t i = from; i < n; ++i) {
        float v = qe_rne(x[i] / scale) + zf;
        v = v < qmin ? qmin : (v > qmax ? qmax : v);
        q[i] = (int8_t)((int)v - shift);
    }
}

#if QE_HAVE_X86
/* The same, 32 codes at a time (vdivps and vroundps compute the same float32 values). */
QE_AVX2 static void qe_dyn_quantize_row_avx2(const float* x, int8_t* q, int64_t n, float scale,
                                             int32_t zero, int symmetric) {
    const __m256 sv = _mm256_set1_ps(scale);
    const __m256 zf = _mm256_set1_ps(symmetric ? 0.0f : (float)(zero + 128));
    const __m256 lo = _mm256_set1_ps(symmetric ? -128.0f : 0.0f);
    const __m256 hi = _mm256_set1_ps(symmetric ? 127.0f : 255.0f);
    const __m256i shift = _mm256_set1_epi32(symmetric ? 0 : 128);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i v[4];
        for (int j = 0; j < 4; ++j) {
            __m256 r = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + i + 8 * j), sv),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            r = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, zf), lo), hi);
            v[j] = _mm256_sub_epi32(_mm256_cvtps_epi32(r), shift);
        }
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]),
                                       _mm256_packs_epi32(v[2], v[3]));
        _mm256_storeu_si256((__m256i*)(q + i), _mm256_permutevar8x32_epi32(p, order));
    }
    qe_dyn_quantize_row(x, q, n, scale, zero, symmetric, i);
}
#endif

/* Dynamic activations of the W8A8 and W4A8 kernels: x [M, K] quantized to int8 per token or
 * per tensor, with their scales and zero points (one allocation, freed by the caller). */
typedef struct {
    char* mem; /* released with qe_ws_put(mem, cached) */
    int cached;
    int8_t* xq;
    float* xs;
    int32_t* zx;
} qe_dyn_acts;

/* The same into the caller's buffers: codes xq [M, ldq] (the first K of each row), scales xs
 * [M] and zero points zx [M] (qe_lowbit.c quantizes into its own cached workspace). */
QE_EXPORT int qe_dyn_quantize_into(const float* x, int64_t M, int64_t K, int per_token,
                                   int symmetric, float eps, int8_t* xq, int64_t ldq, float* xs,
                                   int32_t* zx) {
    if (!x || !xq || !xs || !zx || M < 0 || K <= 0 || ldq < K) return QE_EINVAL;
    if (per_token) {
        for (int64_t m = 0; m < M; ++m) {
            float lo = 0.0f, hi = 0.0f;
            qe_dyn_range(x + m * K, K, &lo, &hi);
            qe_dyn_qparams(lo, hi, symmetric, eps, xs + m, zx + m);
        }
    } else if (M > 0) {
        float lo = 0.0f, hi = 0.0f;
        qe_dyn_range(x, M * K, &lo, &hi);
        qe_dyn_qparams(lo, hi, symmetric, eps, xs, zx);
        for (int64_t m = 1; m < M; ++m) xs[m] = xs[0], zx[m] = zx[0];
    }
    for (int64_t m = 0; m < M; ++m) {
#if QE_HAVE_X86
        if (qe_effective_isa()) {
            qe_dyn_quantize_row_avx2(x + m * K, xq + m * ldq, K, xs[m], zx[m], symmetric);
            continue;
        }
#endif
        qe_dyn_quantize_row(x + m * K, xq + m * ldq, K, xs[m], zx[m], symmetric, 0);
    }
    return QE_OK;
}

static int qe_dyn_quantize(const float* x, int64_t M, int64_t K, int per_token, int symmetric,
                           float eps, qe_dyn_acts* a) {
    const size_t o_q = qe_round64((size_t)(M * K));
    const size_t o_s = qe_round64(sizeof(float) * (size_t)M);
    a->mem = qe_ws_take(1, o_q + o_s + sizeof(int32_t) * (size_t)M, &a->cached);
    if (!a->mem) return QE_ENOMEM;
    a->xq = (int8_t*)a->mem;
    a->xs = (float*)(a->mem + o_q);
    a->zx = (int32_t*)(a->mem + o_q + o_s);
    const int rc = qe_dyn_quantize_into(x, M, K, per_token, symmetric, eps, a->xq, K, a->xs, a->zx);
    if (rc != QE_OK) qe_ws_put(a->mem, a->cached);
    return rc;
}

QE_EXPORT int qe_w8a8_dyn_linear(const float* x, int per_token, int symmetric, float eps,
                                 const int8_t* wq, const float* ws, const int32_t* wsum,
                                 const float* bias, float* y, int64_t M, int64_t N, int64_t K,
                                 int nthreads) {
    if (!x || !wq || !ws || !y || M < 0 || N < 0 || K <= 0 || K > QE_MAX_K) return QE_EINVAL;
    if (!symmetric && !wsum) return QE_EINVAL;
    if (M == 0 || N == 0) return QE_OK;
    qe_dyn_acts a;
    if (qe_dyn_quantize(x, M, K, per_token, symmetric, eps, &a)) return QE_ENOMEM;
    int8_t* xq = a.xq;
    float* xs = a.xs;
    int32_t* zx = a.zx;
    int rc = qe_w8a8_linear(xq, xs, symmetric ? NULL : zx, wq, ws, wsum, bias, y, M, N, K,
                            nthreads);
    qe_ws_put(a.mem, a.cached);
    return rc;
}

/* ======================================================================================= */
/* W4A8 linear: int4 weights (per group) x int8 activations, exact integer dot per group    */
/* ======================================================================================= */
/*
 * y[m,n] = xs[m] * ( sum_g ws[n,g] * D[m,n,g] - sum_g wzs[n,g] * Sx[m,g] - zx[m] * cz[n] )
 *          + bias[n]
 * with D[m,n,g] = sum_{k in g} code[n,k] * xq[m,k] (codes unsigned 0..15, xq int8),
 * Sx[m,g] = sum_{k in g} xq[m,k], wzs = ws * z (the weight zero point, 8 when symmetric) and
 * cz[n] = sum_g ws[n,g] * (sum_{k in g} code[n,k] - G * z[n,g]) (only with an activation zero
 * point zx).  Expanding (code - z)(xq - zx) gives exactly these terms.
 *
 * Unlike int8 x int8 (see above), an unsigned nibble times int8 fits vpmaddubsw: a pair sum is
 * at most 2 * 15 * 128 = 3840 in magnitude.  The AVX2 path reads 64 codes (32 bytes) at a time:
 * the low nibbles are elements 0, 2, ..., 62 of the block and the high nibbles 1, 3, ..., 63,
 * so x is permuted once per call to match (xp[64b + j] = x[64b + 2j], xp[64b + 32 + j] =
 * x[64b + 2j + 1]) and one AND, one shift and one AND decode all 64.  Two vpmaddubsw per
 * block are summed in int16 for up to QE_W4A8_I16 blocks (|sum| <= 4 * 2 * 3840 < 32768), then
 * widened with vpmaddwd(1) into int32, and converted and scaled once per group with one FMA.
 * The low 128-bit half of a block holds, in its low and its high nibbles, the elements
 * [64b, 64b + 32), the high half [64b + 32, 64b + 64); group boundaries (multiples of 32)
 * never cut a half, so each half has one group (qe_w4a8_blocks) and a flush scales with a
 * (s[g_lo] x4, s[g_hi] x4) vector.  A final 32-element chunk (K = 64b + 32) is read in natural order.  The zero-point
 * terms are float dot products over groups, once per output.  Register tiles: 1 x 4 (row x
 * columns) for M == 1, 2 x 2 otherwise; the next weight rows are prefetched at the pace the
 * current ones are read (without it the short row streams reach about half the read rate).
 */

#define QE_W4A8_I16 4 /* 64-element blocks summed in int16 before widening */

typedef struct qe_w4a8_ctx_s {
    const int8_t* xq;
    const float* xs;
    const int32_t* zx;
    const uint8_t* codes;
    const float* ws;
    const float* wzs;
    const float* cz;
    const float* bias;
    float* y;
    int64_t M, N, K, G, ng;
    float* sx;        /* [M, ng] per-group activation sums */
    int8_t* xp;       /* [M, K] activations permuted to the nibble order of 64-blocks */
    int32_t* glo;     /* [nb] group of the low half (elements 64b .. 64b + 31) of block b */
    int32_t* ghi;     /* [nb] group of the high half */
    uint8_t* flush;   /* [nb] bit 0: widen int16 after block b; bit 1: convert and scale */
    int64_t nb;       /* complete 64-element blocks */
    int64_t* next;
} qe_w4a8_ctx;

static float qe_w4a8_out(const qe_w4a8_ctx* c, int64_t m, int64_t n, float acc, float corr) {
    double v = (double)acc - (double)corr;
    if (c->zx) v -= (double)c->zx[m] * (double)c->cz[n];
    v *= (double)c->xs[m];
    if (c->bias) v += (double)c->bias[n];
    return (float)v;
}

static void qe_w4a8_scalar_cols(const qe_w4a8_ctx* c, int64_t n0, int64_t n1) {
    const int64_t K = c->K, G = c->G, ng = c->ng;
    for (int64_t n = n0; n < n1; ++n) {
        const uint8_t* w = c->codes + n * (K / 2);
        for (int64_t m = 0; m < c->M; ++m) {
            const int8_t* xr = c->xq + m * K;
            float acc = 0.0f, corr = 0.0f;
            for (int64_t g = 0; g < ng; ++g) {
                int32_t d = 0;
                for (int64_t k = g * G; k < (g + 1) * G; ++k)
                    d += (int32_t)((w[k >> 1] >> ((k & 1) * 4)) & 0xF) * (int32_t)xr[k];
                acc += c->ws[n * ng + g] * (float)d;
                corr += c->wzs[n * ng + g] * c->sx[m * ng + g];
            }
            c->y[m * c->N + n] = qe_w4a8_out(c, m, n, acc, corr);
        }
    }
}

/* Block plan: the group of each half of each 64-block, and where partial sums are flushed. */
static void qe_w4a8_blocks(qe_w4a8_ctx* c) {
    const int64_t nb = c->nb, G = c->G;
    int run = 0;
    for (int64_t b = 0; b < nb; ++b) {
        c->glo[b] = (int32_t)(64 * b / G);
        c->ghi[b] = (int32_t)((64 * b + 32) / G);
    }
    for (int64_t b = 0; b < nb; ++b) {
        const int last = b + 1 == nb;
        const int regroup = last || c->glo[b + 1] != c->glo[b] || c->ghi[b + 1] != c->ghi[b];
        ++run;
        const int widen = regroup || run == QE_W4A8_I16;
        if (widen) run = 0;
        c->flush[b] = (uint8_t)(widen | (regroup << 1));
    }
}

#if QE_HAVE_X86
QE_AVX2 static float qe_dot_f32(const float* a, const float* b, int64_t n) {
    __m256 s = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        s = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s);
    float r = qe_hsum_ps(s);
    for (; i < n; ++i) r += a[i] * b[i];
    return r;
}

/* MR activation rows (from m0) x NR weight rows (n[0..NR)) over all K; out[i][j] is the
 * scaled sum sum_g ws[n,g] * D[m,n,g].  pf: the next NR weight rows (contiguous, NR * K/2
 * bytes), prefetched at the pace this call reads its own (or NULL). */
QE_AVX2 QE_INLINE void qe_w4a8_micro(const int MR, const int NR, const qe_w4a8_ctx* c,
                                     int64_t m0, const int64_t* n, const uint8_t* pf,
                                     float out[2][4]) {
    const int64_t K = c->K, ng = c->ng, nb = c->nb;
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const uint8_t* w[4];
    const float* s[4];
    const int8_t* x[2];
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) w[j] = c->codes + n[j] * (K / 2), s[j] = c->ws + n[j] * ng;
#pragma GCC unroll 2
    for (int i = 0; i < MR; ++i) x[i] = c->xp + (m0 + i) * K;
    __m256 facc[2][4];
    __m256i iacc[2][4], hacc[2][4];
#pragma GCC unroll 2
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) {
            facc[i][j] = _mm256_setzero_ps();
            iacc[i][j] = _mm256_setzero_si256();
            hacc[i][j] = _mm256_setzero_si256();
        }
    for (int64_t b = 0; b < nb; ++b) {
        if (pf) {
            _mm_prefetch((const char*)(pf + b * 32 * NR), _MM_HINT_T0);
            if (NR > 2) _mm_prefetch((const char*)(pf + b * 32 * NR + 64), _MM_HINT_T0);
        }
        __m256i lo[4], hi[4];
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) {
            const __m256i v = _mm256_loadu_si256((const __m256i*)(w[j] + b * 32));
            lo[j] = _mm256_and_si256(v, low4);
            hi[j] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
        }
#pragma GCC unroll 2
        for (int i = 0; i < MR; ++i) {
            const __m256i xl = _mm256_loadu_si256((const __m256i*)(x[i] + b * 64));
            const __m256i xh = _mm256_loadu_si256((const __m256i*)(x[i] + b * 64 + 32));
#pragma GCC unroll 4
            for (int j = 0; j < NR; ++j)
                hacc[i][j] = _mm256_add_epi16(
                    hacc[i][j], _mm256_add_epi16(_mm256_maddubs_epi16(lo[j], xl),
                                                 _mm256_maddubs_epi16(hi[j], xh)));
        }
        const int flush = c->flush[b];
        if (flush & 1) {
#pragma GCC unroll 2
            for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
                for (int j = 0; j < NR; ++j) {
                    iacc[i][j] = _mm256_add_epi32(iacc[i][j], _mm256_madd_epi16(hacc[i][j], ones));
                    hacc[i][j] = _mm256_setzero_si256();
                }
        }
        if (flush & 2) {
            const int32_t ga = c->glo[b], gb = c->ghi[b];
#pragma GCC unroll 4
            for (int j = 0; j < NR; ++j) {
                const __m256 sv = _mm256_set_m128(_mm_set1_ps(s[j][gb]), _mm_set1_ps(s[j][ga]));
#pragma GCC unroll 2
                for (int i = 0; i < MR; ++i) {
                    facc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[i][j]), sv, facc[i][j]);
                    iacc[i][j] = _mm256_setzero_si256();
                }
            }
        }
    }
    if (K > nb * 64) { /* a last 32-element chunk, natural order (x too: see qe_w4a8_permute) */
        const int64_t k = nb * 64, g = k / c->G;
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) {
            __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(w[j] + k / 2)));
            v = _mm256_and_si256(_mm256_or_si256(v, _mm256_slli_epi16(v, 4)), low4);
            const __m256 sv = _mm256_broadcast_ss(s[j] + g);
#pragma GCC unroll 2
            for (int i = 0; i < MR; ++i) {
                const __m256i xv = _mm256_loadu_si256((const __m256i*)(x[i] + k));
                const __m256i d = _mm256_madd_epi16(_mm256_maddubs_epi16(v, xv), ones);
                facc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), sv, facc[i][j]);
            }
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) out[i][j] = qe_hsum_ps(facc[i][j]);
}

QE_AVX2 static void qe_w4a8_avx2_thread(const qe_w4a8_ctx* c) {
    const int64_t M = c->M, N = c->N, ng = c->ng;
    float out[2][4];
    const int nr_max = M == 1 ? 4 : 2;
    /* Tiles are claimed one ahead, so the last rows of a tile prefetch the first rows of this
     * thread's next tile rather than of a tile another thread may be reading. */
    int64_t n0 = __atomic_fetch_add(c->next, (int64_t)QE_NT, __ATOMIC_RELAXED);
    while (n0 < N) {
        const int64_t after = __atomic_fetch_add(c->next, (int64_t)QE_NT, __ATOMIC_RELAXED);
        const int64_t n1 = qe_min64(n0 + QE_NT, N);
        for (int64_t j0 = n0; j0 < n1; j0 += nr_max) {
            const int nr = (int)qe_min64(nr_max, n1 - j0);
            int64_t n[4];
            for (int j = 0; j < 4; ++j) n[j] = j0 + (j < nr ? j : 0); /* pad with a copy */
            const int64_t jn = j0 + nr_max < n1 ? j0 + nr_max : after;
            const uint8_t* next_rows = jn + nr_max <= N ? c->codes + jn * (c->K / 2) : NULL;
            for (int64_t m0 = 0; m0 < M;) {
                const int mr = (int)qe_min64(M - m0, 2);
                const uint8_t* pf = m0 == 0 ? next_rows : NULL;
                if (M == 1)
                    qe_w4a8_micro(1, 4, c, m0, n, pf, out);
                else if (mr == 2)
                    qe_w4a8_micro(2, 2, c, m0, n, pf, out);
                else
                    qe_w4a8_micro(1, 2, c, m0, n, pf, out);
                for (int i = 0; i < mr; ++i)
                    for (int j = 0; j < nr; ++j) {
                        const int64_t m = m0 + i;
                        const float corr = qe_dot_f32(c->wzs + n[j] * ng, c->sx + m * ng, ng);
                        c->y[m * N + n[j]] = qe_w4a8_out(c, m, n[j], out[i][j], corr);
                    }
                m0 += mr;
            }
        }
        n0 = after;
    }
}
#endif /* QE_HAVE_X86 */

/* xp: each complete 64-block in nibble order (even elements, then odd), the rest as is. */
static void qe_w4a8_permute(const int8_t* x, int8_t* xp, int64_t K, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b)
        for (int64_t j = 0; j < 32; ++j) {
            xp[b * 64 + j] = x[b * 64 + 2 * j];
            xp[b * 64 + 32 + j] = x[b * 64 + 2 * j + 1];
        }
    for (int64_t k = nb * 64; k < K; ++k) xp[k] = x[k];
}

QE_EXPORT int qe_w4a8_linear(const int8_t* xq, const float* xs, const int32_t* zx,
                             const uint8_t* codes, const float* ws, const float* wzs,
                             const float* cz, const float* bias, float* y, int64_t M, int64_t N,
                             int64_t K, int64_t G, int nthreads) {
    if (!xq || !xs || !codes || !ws || !wzs || !y || M < 0 || N < 0 || K <= 0 || G <= 0)
        return QE_EINVAL;
    if (K % 32 || G % 32 || K % G || K > QE_MAX_K || (zx && !cz)) return QE_EINVAL;
    if (M == 0 || N == 0) return QE_OK;
    if (nthreads < 1) nthreads = 1;
    qe_w4a8_ctx c;
    memset(&c, 0, sizeof(c));
    c.xq = xq, c.xs = xs, c.zx = zx, c.codes = codes, c.ws = ws, c.wzs = wzs, c.cz = cz;
    c.bias = bias, c.y = y, c.M = M, c.N = N, c.K = K, c.G = G, c.ng = K / G, c.nb = K / 64;
    if (qe_effective_isa() >= QE_ISA_AVXVNNI) return qe_w4a8_run_packed(&c, nthreads);
    const size_t nb = (size_t)c.nb;
    const size_t o_xp = qe_round64(sizeof(float) * (size_t)(M * c.ng));
    const size_t o_g = o_xp + qe_round64((size_t)(M * K));
    char* mem = (char*)qe_alloc(o_g + 2 * sizeof(int32_t) * nb + nb + 64);
    if (!mem) return QE_ENOMEM;
    c.sx = (float*)mem;
    c.xp = (int8_t*)(mem + o_xp);
    c.glo = (int32_t*)(mem + o_g);
    c.ghi = c.glo + nb;
    c.flush = (uint8_t*)(c.ghi + nb);
    for (int64_t m = 0; m < M; ++m) {
        for (int64_t g = 0; g < c.ng; ++g) {
            int32_t t = 0;
            for (int64_t k = g * G; k < (g + 1) * G; ++k) t += xq[m * K + k];
            c.sx[m * c.ng + g] = (float)t;
        }
        qe_w4a8_permute(xq + m * K, c.xp + m * K, K, c.nb);
    }
    qe_w4a8_blocks(&c);
    int64_t next = 0;
    c.next = &next;
    const int isa = qe_effective_isa();
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
#if QE_HAVE_X86
        if (isa) {
            qe_w4a8_avx2_thread(&c);
        } else
#endif
        {
            int64_t nb0, ne;
            qe_split(N, 1, qe_num_threads(), qe_thread_num(), &nb0, &ne);
            qe_w4a8_scalar_cols(&c, nb0, ne);
        }
    }
    (void)isa;
    free(mem);
    return QE_OK;
}

/* qe_w4a8_linear on float activations quantized here, per token or per tensor, with the
 * arithmetic of qe_w8a8_dyn_linear (bit-identical codes to the torch primitives). */
QE_EXPORT int qe_w4a8_dyn_linear(const float* x, int per_token, int symmetric, float eps,
                                 const uint8_t* codes, const float* ws, const float* wzs,
                                 const float* cz, const float* bias, float* y, int64_t M,
                                 int64_t N, int64_t K, int64_t G, int nthreads) {
    if (!x || M < 0 || K <= 0 || K > QE_MAX_K || (!symmetric && !cz)) return QE_EINVAL;
    if (M == 0 || N == 0) return QE_OK;
    qe_dyn_acts a;
    if (qe_dyn_quantize(x, M, K, per_token, symmetric, eps, &a)) return QE_ENOMEM;
    int8_t* xq = a.xq;
    float* xs = a.xs;
    int32_t* zx = a.zx;
    int rc = qe_w4a8_linear(xq, xs, symmetric ? NULL : zx, codes, ws, wzs, cz, bias, y, M, N, K,
                            G, nthreads);
    qe_ws_put(a.mem, a.cached);
    return rc;
}

/* ======================================================================================= */
/* Repacked weights: interleaved row panels for vpdpbusd                                   */
/* ======================================================================================= */
/*
 * At M = 1 a linear layer is a stream over its weights, and reading row after row (each a
 * separate 2-4 KiB stream, plus its scales elsewhere) reaches well under the read rate.  So
 * the prepared layers keep their weights repacked, as llama.cpp's repacked Q4_0 / Q4_K do,
 * into panels of QE_PR = 16 rows whose K dimension is interleaved at the width one vpdpbusd
 * consumes: for a panel, the bytes of one K step of all 16 rows are adjacent, so one 64-byte
 * load is one vector of 16 output columns, and the M = 1 kernel reads each panel (and the
 * whole matrix, panel after panel) as one contiguous buffer.  No horizontal sums: lane r of
 * an accumulator is output column 16p + r.
 *
 * int8 (W8A8, int8 GEMM): [panel][K/4 steps][16 rows][4 bytes], K padded with zeros to a
 * multiple of 4, N to a multiple of 16; then int32 wsum[16 * panels] (row sums of the codes).
 * vpdpbusd multiplies *unsigned* bytes by signed bytes, so the activations enter as
 * xq + 128 (xq ^ 0x80, 0..255) and the product gains 128 * wsum[n], subtracted in the
 * epilogue.  The accumulator wraps modulo 2^32 (vpdpbusd does not saturate) and so does the
 * correction; the difference is the exact int32 result whenever that fits (|K| <= 131071).
 *
 * W4A8: codes [panel][K/8 steps][16 rows][4 bytes], byte j of a row holding element 8s + j
 * in its low nibble and 8s + 4 + j in its high nibble, so (v & 15) and (v >> 4 & 15) are
 * two vectors of unsigned codes that meet the signed activations at 8s .. 8s+3 and
 * 8s+4 .. 8s+7 (plain broadcasts, no permutation of x); then float ws[panel][group][16] and,
 * for asymmetric weights, wzs = ws * z in the same order.  Symmetric codes (z = 8) subtract
 * 8 * sum_k x per group in integers.  Groups are multiples of 32 elements (4 K steps), so a
 * group never ends inside a step and the per-group flush is one convert and one FMA.
 *
 * Paths: avx512_vnni (one zmm per panel K step), avx_vnni (two ymm), avx2 (two ymm, the
 * vpdpbusd emulated exactly, see below) and a scalar loop over the same layout (the
 * reference for the layout).  So every x86-64 path streams the same bytes; the packed entry
 * points answer QE_EISA only where no path reads the layout.
 *
 * AVX2 has no vpdpbusd.  W4A8 uses vpmaddubsw (u8 x s8 -> saturating s16 pair sums), which
 * is exact here because the unsigned operand is a 4-bit code: a pair sum is at most
 * 2 * 15 * 128 = 3840 in magnitude, the two nibble halves' sum 7680, then vpmaddwd with ones
 * widens to int32 (the four products a vpdpbusd lane would add).  int8 weights span the full
 * int8 range, where vpmaddubsw can saturate (and the xq + 128 operand certainly would), so
 * W8A8 sign-extends each 16-byte half of a panel vector to int16 (vpmovsxbw) and multiplies
 * it with the activations widened once per call (int16 x int16 pair sums, always exact);
 * lanes 2r and 2r + 1 of the two accumulators then hold halves of row r's sum, added once at
 * the end of the panel (vphaddd).  No + 128 offset, so no row-sum correction either.
 */
#define QE_PR 16 /* rows per panel */
#ifndef QE_PF_BYTES
#define QE_PF_BYTES 2048 /* prefetch distance in the M = 1 weight streams (AVX2 W8A8, AVX-VNNI) */
#endif
#ifndef QE_PF_BYTES_2
/* The AVX2 W4A8 M = 1 weight stream (one panel, see qe_p4_m1) reads faster 4 KiB ahead.
 * 4096 x 4096, 1 thread, thread CPU time, interleaved with qe_byte_sum (24.9 GB/s): g32 /
 * g128 0.38 / 0.32 ms, against 0.58 / 0.44 with two panels and 2 KiB, and 0.40 / 0.34 with
 * one panel and 2 KiB (1 KiB: 0.43 / 0.35; 6 and 8 KiB within the noise of 4 KiB).  AVX2
 * W8A8 stays at QE_PF_BYTES: 4 KiB was 0-4 % slower there (4096 x 11008: 1.66 / 1.60 ms) */
#define QE_PF_BYTES_2 4096
#endif
#ifndef QE_PF_BYTES_512
/* The AVX-512 kernels stream faster on the hardware prefetcher alone: 4096 x 4096 W8A8 at
 * M = 1 read 113 % of qe_byte_sum's rate without software prefetch, 86-88 % with 2048 bytes
 * (W4A8 g128 97-119 % against 86-104 %), while AVX2 W4A8 gains from it (131-154 % against
 * 98-126 %): one thread, thread CPU time, variants interleaved in one process. */
#define QE_PF_BYTES_512 0
#endif
#ifndef QE_PF_GEMM
/* the same for M > 1 on the VNNI paths (W8A8): at M = 8 the first row tile streams the panels
 * from memory.  4096 x 4096 on AVX-512, 1 thread, both orders interleaved: M = 8 1.08 / 1.19 ms
 * against 1.22 / 1.44 without it, M = 16 1.75 / 1.78 against 1.84 / 1.88, M = 32 and 64 equal
 * within 2 % (2048 and 8192 bytes were no better than 4096) */
#define QE_PF_GEMM 4096
#endif
#ifndef QE_P8_AVX2_MR
#define QE_P8_AVX2_MR 6 /* W8A8 on AVX2, M > 1: most rows of a register tile (see qe_p8_gemm_2) */
#endif
#ifndef QE_P8_AVX2_KB
/* ... its K block in steps of 4 K (4096 K: one block up to K = 4096).  4096 x 4096, 1 thread,
 * interleaved: M = 32 / 64 6.95 / 13.26 ms against 7.10 / 13.52 with 128 steps (512 K, the
 * block in L1), M = 8 / 16 equal within 1 % */
#define QE_P8_AVX2_KB 1024
#endif
#ifndef QE_P8_AVX2_TC
#define QE_P8_AVX2_TC 10 /* row tiles sharing one partial-sum buffer (<= 60 rows) */
#endif
enum { QE_EISA = -3 };

static int64_t qe_panels(int64_t N) { return (N + QE_PR - 1) / QE_PR; }

/* The AVX2 W8A8 row tiles: M rows in qe_p8_ntiles(M) tiles of as even a size as possible, tile
 * j from row j * M / t (M = 8: 4 + 4, 16: 6 + 5 + 5, 64: 9 x 6 + 2 x 5; M = 1: one row). */
static int64_t qe_p8_ntiles(int64_t M) { return (M + QE_P8_AVX2_MR - 1) / QE_P8_AVX2_MR; }

/* Transparent huge pages under a repacked buffer: the kernels stream it, and with 4 KiB pages
 * each panel stream crosses a page (a TLB miss) every 64 K steps.  MADV_HUGEPAGE before the
 * buffer is first written (fresh pages then fault in huge), MADV_COLLAPSE after (pages the
 * allocator reused).  Only the whole 2 MiB pages inside the buffer; hints, errors ignored.
 * 4096 x 4096 W8A8, 1 thread, CPU time, one run: M = 1 0.59 ms against 0.71-0.73 on 4 KiB
 * pages, M = 8 0.90-0.91 against 1.06 (fbgemm's dynamic int8 1.03), M = 64 5.55 against
 * 5.74-5.82.  Only here, at prepare time: the per-call repack (qe_i8_run_packed) skips it. */
#ifndef QE_MADV_COLLAPSE
#define QE_MADV_COLLAPSE 25 /* Linux >= 6.1; older kernels answer EINVAL */
#endif
static void qe_hugepages(void* p, size_t bytes, int collapse) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)2 << 20;
    const uintptr_t b = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    const uintptr_t e = ((uintptr_t)p + bytes) & ~(huge - 1);
    if (e > b)
        (void)madvise((void*)b, (size_t)(e - b), collapse ? QE_MADV_COLLAPSE : MADV_HUGEPAGE);
#else
    (void)p, (void)bytes, (void)collapse;
#endif
}

/* Bytes of the repacked int8 weights [N, K] (codes, then the int32 row sums). */
QE_EXPORT int64_t qe_i8_packed_bytes(int64_t N, int64_t K) {
    if (N <= 0 || K <= 0) return QE_EINVAL;
    const int64_t np = qe_panels(N);
    return np * ((K + 3) / 4) * 64 + np * QE_PR * 4;
}

static int qe_pack_i8_into(const int8_t* wq, int64_t N, int64_t K, void* out) {
    if (!wq || !out || N <= 0 || K <= 0 || K > QE_MAX_K) return QE_EINVAL;
    const int64_t np = qe_panels(N), k4 = (K + 3) / 4;
    int8_t* d = (int8_t*)out;
    int32_t* wsum = (int32_t*)(d + np * k4 * 64);
    for (int64_t p = 0; p < np; ++p)
        for (int64_t r = 0; r < QE_PR; ++r) {
            const int64_t n = p * QE_PR + r;
            const int8_t* src = n < N ? wq + n * K : NULL;
            int32_t sum = 0;
            for (int64_t k = 0; k < k4 * 4; ++k) {
                const int8_t v = (src && k < K) ? src[k] : 0;
                d[((p * k4 + k / 4) * QE_PR + r) * 4 + k % 4] = v;
                sum += v;
            }
            wsum[n] = sum;
        }
    return QE_OK;
}

/* The layer's repacked weights (prepared once, read by every call): on huge pages. */
QE_EXPORT int qe_pack_i8(const int8_t* wq, int64_t N, int64_t K, void* out) {
    if (!wq || !out || N <= 0 || K <= 0 || K > QE_MAX_K) return QE_EINVAL;
    qe_hugepages(out, (size_t)qe_i8_packed_bytes(N, K), 0);
    const int rc = qe_pack_i8_into(wq, N, K, out);
    qe_hugepages(out, (size_t)qe_i8_packed_bytes(N, K), 1);
    return rc;
}

/* Bytes of the repacked 4-bit weights [N, K] with groups of G (codes, ws, and wzs if asym). */
QE_EXPORT int64_t qe_w4_packed_bytes(int64_t N, int64_t K, int64_t G, int asym) {
    if (N <= 0 || K <= 0 || G <= 0 || K % 32 || G % 32 || K % G) return QE_EINVAL;
    const int64_t np = qe_panels(N);
    return np * (K / 8) * 64 + np * (K / G) * QE_PR * 4 * (asym ? 2 : 1);
}

/* codes uint8 [N, K/2] (element 2j in the low nibble of byte j), ws [N, K/G], wzs [N, K/G]
 * (ws times the zero point) or NULL for symmetric codes (zero point 8). */
static int qe_pack_w4_into(const uint8_t* codes, const float* ws, const float* wzs, int64_t N,
                           int64_t K, int64_t G, void* out) {
    if (!codes || !ws || !out || qe_w4_packed_bytes(N, K, G, wzs != NULL) < 0) return QE_EINVAL;
    const int64_t np = qe_panels(N), k8 = K / 8, ng = K / G;
    uint8_t* d = (uint8_t*)out;
    float* s = (float*)(d + np * k8 * 64);
    float* z = s + np * ng * QE_PR;
    for (int64_t p = 0; p < np; ++p)
        for (int64_t r = 0; r < QE_PR; ++r) {
            const int64_t n = p * QE_PR + r;
            const uint8_t* src = n < N ? codes + n * (K / 2) : NULL;
            for (int64_t st = 0; st < k8; ++st)
                for (int64_t j = 0; j < 4; ++j) {
                    uint8_t v = 0;
                    if (src) {
                        const int64_t klo = 8 * st + j, khi = klo + 4;
                        const int lo = (src[klo >> 1] >> ((klo & 1) * 4)) & 0xF;
                        const int hi = (src[khi >> 1] >> ((khi & 1) * 4)) & 0xF;
                        v = (uint8_t)(lo | (hi << 4));
                    }
                    d[((p * k8 + st) * QE_PR + r) * 4 + j] = v;
                }
            for (int64_t g = 0; g < ng; ++g) {
                s[(p * ng + g) * QE_PR + r] = src ? ws[n * ng + g] : 0.0f;
                if (wzs) z[(p * ng + g) * QE_PR + r] = src ? wzs[n * ng + g] : 0.0f;
            }
        }
    return QE_OK;
}

/* The layer's repacked 4-bit weights, on huge pages as qe_pack_i8's.  W4A8 at M = 1, 1
 * thread, thread CPU time, interleaved: 4096 x 11008 g32 / g128 on the AVX2 path 0.98 /
 * 0.87 ms against 1.07 / 0.95 on 4 KiB pages (AVX-512 0.95 / 0.77 against 1.05 / 0.83). */
QE_EXPORT int qe_pack_w4(const uint8_t* codes, const float* ws, const float* wzs, int64_t N,
                         int64_t K, int64_t G, void* out) {
    const int64_t bytes = qe_w4_packed_bytes(N, K, G, wzs != NULL);
    if (!codes || !ws || !out || bytes < 0) return QE_EINVAL;
    qe_hugepages(out, (size_t)bytes, 0);
    const int rc = qe_pack_w4_into(codes, ws, wzs, N, K, G, out);
    qe_hugepages(out, (size_t)bytes, 1);
    return rc;
}

typedef struct {
    const int8_t* xq;  /* [M, K] activations (scalar path) */
    const uint8_t* xu; /* [M, ldx] xq + 128, zero padded (VNNI paths) */
    const int16_t* xw; /* xq widened to int16, zero padded, the row tiles of qe_p8_ntiles
                        * interleaved by 4 K: [tile][K/4][rows][4] (AVX2 path) */
    int64_t ldx;
    const int8_t* w;   /* repacked codes */
    const int32_t* wsum;
    int64_t M, N, K, k4, np;
    int32_t* out;      /* int8 GEMM output, or NULL */
    float* y;          /* W8A8 output */
    const float* xs;
    const int32_t* zx;
    const float* ws;
    const float* bias;
    int64_t* next;
} qe_p8_ctx;

/* cnt outputs of row m from column n0 on; offset: acc carries + 128 * wsum (VNNI paths).
 * Inlined into the vector kernels so that the float64 epilogue is vectorized there. */
static inline __attribute__((always_inline)) void qe_p8_store(const qe_p8_ctx* c, int64_t m, int64_t n0, const int32_t* acc, int cnt,
                        int offset) {
    for (int t = 0; t < cnt; ++t) {
        const int64_t n = n0 + t;
        const int32_t d =
            offset ? (int32_t)((uint32_t)acc[t] - 128u * (uint32_t)c->wsum[n]) : acc[t];
        if (c->out) {
            c->out[m * c->N + n] = d;
            continue;
        }
        int64_t e = d;
        if (c->zx) e -= (int64_t)c->zx[m] * (int64_t)c->wsum[n];
        double v = (double)e * (double)c->xs[m] * (double)c->ws[n];
        if (c->bias) v += (double)c->bias[n];
        c->y[m * c->N + n] = (float)v;
    }
}

static void qe_p8_scalar_panels(const qe_p8_ctx* c, int64_t p0, int64_t p1) {
    const int64_t k4 = c->k4, K = c->K;
    for (int64_t p = p0; p < p1; ++p)
        for (int64_t r = 0; r < QE_PR && p * QE_PR + r < c->N; ++r) {
            const int8_t* w = c->w + p * k4 * 64 + r * 4;
            for (int64_t m = 0; m < c->M; ++m) {
                const int8_t* x = c->xq + m * K;
                int32_t acc = 0;
                for (int64_t k = 0; k < K; ++k) acc += (int32_t)x[k] * w[(k / 4) * 64 + k % 4];
                qe_p8_store(c, m, p * QE_PR + r, &acc, 1, 0);
            }
        }
}

typedef struct {
    const int8_t* xq; /* [M, K] */
    const uint8_t* w; /* repacked codes */
    const float* ws;  /* [panels, ng, 16] */
    const float* wzs; /* same, or NULL: symmetric (zero point 8) */
    const int32_t* sxi; /* [M, ng] per-group activation sums */
    const float* sxf;
    int64_t M, N, K, G, ng, k8, np;
    const float* xs;
    const int32_t* zx;
    const float* cz;
    const float* bias;
    float* y;
    int64_t* next;
} qe_p4_ctx;

static inline __attribute__((always_inline)) void qe_p4_store(const qe_p4_ctx* c, int64_t m, int64_t n0, const float* acc, int cnt) {
    for (int t = 0; t < cnt; ++t) {
        const int64_t n = n0 + t;
        double v = (double)acc[t];
        if (c->zx) v -= (double)c->zx[m] * (double)c->cz[n];
        v *= (double)c->xs[m];
        if (c->bias) v += (double)c->bias[n];
        c->y[m * c->N + n] = (float)v;
    }
}

static void qe_p4_scalar_panels(const qe_p4_ctx* c, int64_t p0, int64_t p1) {
    const int64_t k8 = c->k8, ng = c->ng, G = c->G, K = c->K;
    for (int64_t p = p0; p < p1; ++p)
        for (int64_t r = 0; r < QE_PR && p * QE_PR + r < c->N; ++r) {
            const uint8_t* w = c->w + p * k8 * 64 + r * 4;
            for (int64_t m = 0; m < c->M; ++m) {
                const int8_t* x = c->xq + m * K;
                float acc = 0.0f;
                for (int64_t g = 0; g < ng; ++g) {
                    int32_t d = 0;
                    for (int64_t k = g * G; k < (g + 1) * G; ++k) {
                        const uint8_t v = w[(k / 8) * 64 + k % 4];
                        d += (int32_t)((k % 8 < 4) ? (v & 0xF) : (v >> 4)) * x[k];
                    }
                    const int64_t o = (p * ng + g) * QE_PR + r;
                    if (c->wzs)
                        acc += c->ws[o] * (float)d - c->wzs[o] * c->sxf[m * ng + g];
                    else
                        acc += c->ws[o] * (float)(d - 8 * c->sxi[m * ng + g]);
                }
                qe_p4_store(c, m, p * QE_PR + r, &acc, 1);
            }
        }
}

#if QE_HAVE_X86
#define QE_VNNI_PASS 512
#include __FILE__
#undef QE_VNNI_PASS
#define QE_VNNI_PASS 256
#include __FILE__
#undef QE_VNNI_PASS
#define QE_VNNI_PASS 2
#include __FILE__
#undef QE_VNNI_PASS
#endif

#if QE_HAVE_X86
/* One activation row widened to int16 into its row tile (stride 4 * mr per 4 K), zero padded
 * to ldx (a multiple of 64): 8 K at a time. */
QE_AVX2 static void qe_p8_widen_row(const int8_t* x, int64_t K, int64_t ldx, int64_t mr,
                                    int16_t* o) {
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        int64_t v;
        memcpy(&v, x + k, sizeof(v));
        const __m128i w = _mm_cvtepi8_epi16(_mm_cvtsi64_si128(v));
        _mm_storel_epi64((__m128i*)(o + k * mr), w);
        _mm_storel_epi64((__m128i*)(o + (k + 4) * mr), _mm_unpackhi_epi64(w, w));
    }
    for (; k < ldx; ++k) o[k / 4 * 4 * mr + k % 4] = k < K ? x[k] : 0;
}
#endif

/* Runs a W8A8 / int8 GEMM context on repacked weights (c->xq set; xu made here). */
static int qe_p8_run(const qe_p8_ctx* args, int nthreads) {
    if (args->M == 0 || args->N == 0) return QE_OK;
    if (nthreads < 1) nthreads = 1;
    const int isa = qe_effective_isa();
    int64_t next = 0;
    qe_p8_ctx ctx = *args;
    qe_p8_ctx* c = &ctx;
    c->next = &next;
    if (isa == QE_ISA_SCALAR) {
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
        {
            int64_t pb, pe;
            qe_split(c->np, 1, qe_num_threads(), qe_thread_num(), &pb, &pe);
            qe_p8_scalar_panels(c, pb, pe);
        }
        return QE_OK;
    }
#if QE_HAVE_X86
    c->ldx = (int64_t)qe_round64((size_t)(c->k4 * 4));
    const int wide = isa == QE_ISA_AVX2; /* int16 activations, see "Repacked weights" */
    int cached;
    char* xmem = qe_ws_get((size_t)(c->M * c->ldx) * (wide ? 2 : 1), &cached);
    if (!xmem) return QE_ENOMEM;
    const int64_t nt = qe_p8_ntiles(c->M);
    for (int64_t m = 0, j = 0; m < c->M; ++m) {
        const int8_t* x = c->xq + m * c->K;
        if (wide) { /* one stream of the tile's rows per K step (see qe_p8_gemm_2) */
            if (m >= (j + 1) * c->M / nt) ++j;
            const int64_t m0 = j * c->M / nt, mr = (j + 1) * c->M / nt - m0;
            qe_p8_widen_row(x, c->K, c->ldx, mr, (int16_t*)xmem + m0 * c->ldx + 4 * (m - m0));
        } else {
            uint8_t* o = (uint8_t*)xmem + m * c->ldx;
            for (int64_t k = 0; k < c->K; ++k) o[k] = (uint8_t)x[k] ^ 0x80u;
            memset(o + c->K, 0, (size_t)(c->ldx - c->K));
        }
    }
    c->xu = (const uint8_t*)xmem;
    c->xw = (const int16_t*)xmem;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        if (isa == QE_ISA_AVX512VNNI)
            qe_p8_thread_512(c);
        else if (isa == QE_ISA_AVXVNNI)
            qe_p8_thread_256(c);
        else if (c->M == 1)
            qe_p8_thread_2(c);
        else
            qe_p8_gemm_2(c);
    }
    qe_ws_put(xmem, cached);
    return QE_OK;
#else
    return QE_EISA;
#endif
}

static void qe_p8_init(qe_p8_ctx* c, const int8_t* xq, const void* packed, int64_t M, int64_t N,
                       int64_t K) {
    memset(c, 0, sizeof(*c));
    c->xq = xq;
    c->M = M, c->N = N, c->K = K, c->k4 = (K + 3) / 4, c->np = qe_panels(N);
    c->w = (const int8_t*)packed;
    c->wsum = (const int32_t*)(c->w + c->np * c->k4 * 64);
}

static int qe_i8_run_packed(const struct qe_i8_ctx_s* c, int nthreads) {
    if (c->M == 0 || c->N == 0) return QE_OK;
    const int64_t bytes = qe_i8_packed_bytes(c->N, c->K);
    void* packed = qe_alloc((size_t)bytes);
    if (!packed) return QE_ENOMEM;
    int rc = qe_pack_i8_into(c->wq, c->N, c->K, packed); /* per call: no page hints */
    if (rc == QE_OK) {
        qe_p8_ctx p;
        qe_p8_init(&p, c->xq, packed, c->M, c->N, c->K);
        p.out = c->out, p.y = c->y, p.xs = c->xs, p.zx = c->zx, p.ws = c->ws, p.bias = c->bias;
        rc = qe_p8_run(&p, nthreads);
    }
    free(packed);
    return rc;
}

QE_EXPORT int qe_int8_gemm_packed(const int8_t* xq, const void* packed, int32_t* out, int64_t M,
                                  int64_t N, int64_t K, int nthreads) {
    if (!xq || !packed || !out || M < 0 || N < 0 || K <= 0 || K > QE_MAX_K) return QE_EINVAL;
    qe_p8_ctx c;
    qe_p8_init(&c, xq, packed, M, N, K);
    c.out = out;
    return qe_p8_run(&c, nthreads);
}

QE_EXPORT int qe_w8a8_packed_linear(const int8_t* xq, const float* xs, const int32_t* zx,
                                    const void* packed, const float* ws, const float* bias,
                                    float* y, int64_t M, int64_t N, int64_t K, int nthreads) {
    if (!xq || !xs || !packed || !ws || !y || M < 0 || N < 0 || K <= 0 || K > QE_MAX_K)
        return QE_EINVAL;
    qe_p8_ctx c;
    qe_p8_init(&c, xq, packed, M, N, K);
    c.y = y, c.xs = xs, c.zx = zx, c.ws = ws, c.bias = bias;
    return qe_p8_run(&c, nthreads);
}

QE_EXPORT int qe_w8a8_dyn_packed_linear(const float* x, int per_token, int symmetric, float eps,
                                        const void* packed, const float* ws, const float* bias,
                                        float* y, int64_t M, int64_t N, int64_t K,
                                        int nthreads) {
    if (!x || !packed || !ws || !y || M < 0 || N < 0 || K <= 0 || K > QE_MAX_K)
        return QE_EINVAL;
    if (M == 0 || N == 0) return QE_OK;
    qe_dyn_acts a;
    if (qe_dyn_quantize(x, M, K, per_token, symmetric, eps, &a)) return QE_ENOMEM;
    int rc = qe_w8a8_packed_linear(a.xq, a.xs, symmetric ? NULL : a.zx, packed, ws, bias, y, M,
                                   N, K, nthreads);
    qe_ws_put(a.mem, a.cached);
    return rc;
}

/* Runs a W4A8 context on repacked weights: per-group activation sums, then the panels. */
static int qe_p4_run(const qe_p4_ctx* args, int nthreads) {
    if (args->M == 0 || args->N == 0) return QE_OK;
    if (nthreads < 1) nthreads = 1;
    qe_p4_ctx ctx = *args;
    qe_p4_ctx* c = &ctx;
    const int isa = qe_effective_isa();
    const int64_t M = c->M, K = c->K, G = c->G, ng = c->ng;
    int cached;
    char* mem = qe_ws_get(qe_round64(sizeof(int32_t) * (size_t)(M * ng)) * 2, &cached);
    if (!mem) return QE_ENOMEM;
    int32_t* sxi = (int32_t*)mem;
    float* sxf = (float*)(mem + qe_round64(sizeof(int32_t) * (size_t)(M * ng)));
    for (int64_t m = 0; m < M; ++m)
        for (int64_t g = 0; g < ng; ++g) {
            int32_t t = 0;
            for (int64_t k = g * G; k < (g + 1) * G; ++k) t += c->xq[m * K + k];
            sxi[m * ng + g] = t;
            sxf[m * ng + g] = (float)t;
        }
    c->sxi = sxi, c->sxf = sxf;
    int64_t next = 0;
    c->next = &next;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
#if QE_HAVE_X86
        if (isa == QE_ISA_AVX512VNNI)
            qe_p4_thread_512(c);
        else if (isa == QE_ISA_AVXVNNI)
            qe_p4_thread_256(c);
        else if (isa == QE_ISA_AVX2)
            qe_p4_thread_2(c);
        else
#endif
        {
            int64_t pb, pe;
            qe_split(c->np, 1, qe_num_threads(), qe_thread_num(), &pb, &pe);
            qe_p4_scalar_panels(c, pb, pe);
        }
    }
    qe_ws_put(mem, cached);
    return QE_OK;
}

static void qe_p4_init(qe_p4_ctx* c, const int8_t* xq, const void* packed, int asym, int64_t M,
                       int64_t N, int64_t K, int64_t G) {
    memset(c, 0, sizeof(*c));
    c->xq = xq;
    c->M = M, c->N = N, c->K = K, c->G = G, c->ng = K / G, c->k8 = K / 8, c->np = qe_panels(N);
    c->w = (const uint8_t*)packed;
    c->ws = (const float*)(c->w + c->np * c->k8 * 64);
    c->wzs = asym ? c->ws + c->np * c->ng * QE_PR : NULL;
}

static int qe_w4a8_run_packed(const struct qe_w4a8_ctx_s* c, int nthreads) {
    const int64_t bytes = qe_w4_packed_bytes(c->N, c->K, c->G, 1);
    void* packed = qe_alloc((size_t)bytes);
    if (!packed) return QE_ENOMEM;
    int rc = qe_pack_w4_into(c->codes, c->ws, c->wzs, c->N, c->K, c->G, packed); /* no hints */
    if (rc == QE_OK) {
        qe_p4_ctx p;
        qe_p4_init(&p, c->xq, packed, 1, c->M, c->N, c->K, c->G);
        p.xs = c->xs, p.zx = c->zx, p.cz = c->cz, p.bias = c->bias, p.y = c->y;
        rc = qe_p4_run(&p, nthreads);
    }
    free(packed);
    return rc;
}

QE_EXPORT int qe_w4a8_packed_linear(const int8_t* xq, const float* xs, const int32_t* zx,
                                    const void* packed, int asym, const float* cz,
                                    const float* bias, float* y, int64_t M, int64_t N, int64_t K,
                                    int64_t G, int nthreads) {
    if (!xq || !xs || !packed || !y || M < 0 || N < 0 || (zx && !cz)) return QE_EINVAL;
    if (qe_w4_packed_bytes(N > 0 ? N : 1, K, G, asym) < 0 || K > QE_MAX_K) return QE_EINVAL;
    qe_p4_ctx c;
    qe_p4_init(&c, xq, packed, asym, M, N, K, G);
    c.xs = xs, c.zx = zx, c.cz = cz, c.bias = bias, c.y = y;
    return qe_p4_run(&c, nthreads);
}

QE_EXPORT int qe_w4a8_dyn_packed_linear(const float* x, int per_token, int symmetric, float eps,
                                        const void* packed, int asym, const float* cz,
                                        const float* bias, float* y, int64_t M, int64_t N,
                                        int64_t K, int64_t G, int nthreads) {
    if (!x || M < 0 || K <= 0 || K > QE_MAX_K || (!symmetric && !cz)) return QE_EINVAL;
    if (M == 0 || N == 0) return QE_OK;
    qe_dyn_acts a;
    if (qe_dyn_quantize(x, M, K, per_token, symmetric, eps, &a)) return QE_ENOMEM;
    int rc = qe_w4a8_packed_linear(a.xq, a.xs, symmetric ? NULL : a.zx, packed, asym, cz, bias,
                                   y, M, N, K, G, nthreads);
    qe_ws_put(a.mem, a.cached);
    return rc;
}

#else /* QE_VNNI_PASS: the VNNI kernels, compiled once per vector width */
/*
 * This part of the file is included three times by the file itself (#include __FILE__, so
 * the library's cache key, a hash of this one file, covers it): QE_VNNI_PASS 512 gives the
 * avx512_vnni kernels (*_512, one zmm = one panel K step of 16 rows), 256 the avx_vnni ones
 * (*_256, two ymm per panel step), 2 the avx2 ones (*_2, two ymm, no vpdpbusd: QV_EMU).
 * qv_* name the few vector operations they use; qv_dp2(acc, a, b, c, d) adds the four-byte
 * dot products of a . b and c . d to acc (a and c unsigned, b and d signed bytes).
 */
#if QE_VNNI_PASS == 512
#define QV __m512i
#define QVF __m512
#define QV_LANES 16
#define QV_MR 8  /* W8A8 activation rows per register tile (x 2 vectors: 16 accumulators) */
#define QV_MR4 4 /* W4A8: int and float accumulators per (row, vector) */
#define QV_TARGET __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))
#define QV_SFX(name) name##_512
#define qv_load(p) _mm512_loadu_si512((const void*)(p))
#define qv_set1(v) _mm512_set1_epi32(v)
#define qv_set1b(v) _mm512_set1_epi8(v)
#define qv_zero() _mm512_setzero_si512()
#define qv_dp(acc, u8, s8) _mm512_dpbusd_epi32(acc, u8, s8)
#define qv_add(a, b) _mm512_add_epi32(a, b)
#define qv_sub(a, b) _mm512_sub_epi32(a, b)
#define qv_and(a, b) _mm512_and_si512(a, b)
#define qv_andnot(a, b) _mm512_andnot_si512(a, b)
#define qv_srai(a, n) _mm512_srai_epi32(a, n)
#define qv_srli16(a, n) _mm512_srli_epi16(a, n)
#define qv_store(p, v) _mm512_storeu_si512((void*)(p), v)
#define qvf_cvt(a) _mm512_cvtepi32_ps(a)
#define qvf_fma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define qvf_fnma(a, b, c) _mm512_fnmadd_ps(a, b, c)
#define qvf_load(p) _mm512_loadu_ps(p)
#define qvf_set1(v) _mm512_set1_ps(v)
#define qvf_zero() _mm512_setzero_ps()
#define qvf_store(p, v) _mm512_storeu_ps(p, v)
#else
#define QV __m256i
#define QVF __m256
#define QV_LANES 8
#if QE_VNNI_PASS == 2
#define QV_MR 1 /* W8A8 at M = 1 only: M > 1 runs qe_p8_gemm_2 */
#define QV_MR4 2
#define QV_TARGET __attribute__((target("avx2,fma")))
#define QV_SFX(name) name##_2
#else
#define QV_MR 4
#define QV_MR4 2
#define QV_TARGET __attribute__((target("avx2,fma,avxvnni")))
#define QV_SFX(name) name##_256
#endif
#define qv_load(p) _mm256_loadu_si256((const __m256i*)(p))
#define qv_set1(v) _mm256_set1_epi32(v)
#define qv_set1b(v) _mm256_set1_epi8(v)
#define qv_zero() _mm256_setzero_si256()
#if QE_VNNI_PASS == 2
#define qv_dp(acc, u8, s8) qv_dp2(acc, u8, s8, qv_zero(), qv_zero())
#else
#define qv_dp(acc, u8, s8) _mm256_dpbusd_avx_epi32(acc, u8, s8)
#endif
#define qv_add(a, b) _mm256_add_epi32(a, b)
#define qv_sub(a, b) _mm256_sub_epi32(a, b)
#define qv_and(a, b) _mm256_and_si256(a, b)
#define qv_andnot(a, b) _mm256_andnot_si256(a, b)
#define qv_srai(a, n) _mm256_srai_epi32(a, n)
#define qv_srli16(a, n) _mm256_srli_epi16(a, n)
#define qv_store(p, v) _mm256_storeu_si256((__m256i*)(p), v)
#define qvf_cvt(a) _mm256_cvtepi32_ps(a)
#define qvf_fma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define qvf_fnma(a, b, c) _mm256_fnmadd_ps(a, b, c)
#define qvf_load(p) _mm256_loadu_ps(p)
#define qvf_set1(v) _mm256_set1_ps(v)
#define qvf_zero() _mm256_setzero_ps()
#define qvf_store(p, v) _mm256_storeu_ps(p, v)
#endif
#define QV_SUB (QE_PR / QV_LANES) /* vectors per panel K step */
#if QE_VNNI_PASS == 512
#define QV_PF QE_PF_BYTES_512
#else
#define QV_PF QE_PF_BYTES
#endif
#if QE_VNNI_PASS == 2
/* Exact only while a*b + a'*b' stays within int16 per pair, i.e. for 4-bit codes as a and c
 * (see "Repacked weights"): the W4A8 kernel's operands.  The W8A8 kernel has its own code. */
#define QV_EMU 1
#define qv_dot16(acc16, a, b, c, d) /* int16 lanes: at most 7680 a step in magnitude */ \
    _mm256_add_epi16(acc16, _mm256_add_epi16(_mm256_maddubs_epi16(a, b), _mm256_maddubs_epi16(c, d)))
#define qv_widen(acc, acc16) _mm256_add_epi32(acc, _mm256_madd_epi16(acc16, _mm256_set1_epi16(1)))
#define qv_dp2(acc, a, b, c, d) qv_widen(acc, qv_dot16(qv_zero(), a, b, c, d))
#else
#define QV_EMU 0
#define qv_dp2(acc, a, b, c, d) qv_dp(qv_dp(acc, a, b), c, d)
#define qv_dot16(acc16, a, b, c, d) (acc16) /* AVX2 only */
#define qv_widen(acc, acc16) (acc)
#endif

static inline int32_t QV_SFX(qe_ld32)(const void* p) {
    int32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

#if QV_EMU
/* W8A8 on AVX2 at M = 1 (M > 1: qe_p8_gemm_2): NV vectors of 8 columns over all K.  A
 * vector's 32 bytes (rows 0-3 and 4-7, four K each) are sign-extended in two halves; vpmaddwd
 * with the four int16 activations of the step (broadcast as one 64-bit lane) leaves two
 * partial sums per row, folded at the end.  See "Repacked weights" for why not vpmaddubsw.
 * All NV vectors are read at once (one stream per panel). */
QV_TARGET QE_INLINE void QV_SFX(qe_p8_micro)(const int MR, const int NV, const qe_p8_ctx* c,
                                             int64_t m0, int64_t p0) {
    const int64_t k4 = c->k4, ldx = c->ldx;
    const int16_t* x = c->xw + m0 * ldx; /* [K/4][MR][4] */
    const int VG = MR == 1 ? NV : 1; /* vectors per pass over K */
    for (int q0 = 0; q0 < NV; q0 += VG) {
        const int8_t* w[4];
        __m256i lo[QV_MR][4], hi[QV_MR][4];
#pragma GCC unroll 4
        for (int q = 0; q < VG; ++q) {
            const int v = q0 + q;
            w[q] = c->w + (p0 + v / QV_SUB) * k4 * 64 + (v % QV_SUB) * QV_LANES * 4;
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i) lo[i][q] = hi[i][q] = _mm256_setzero_si256();
        }
        for (int64_t kk = 0; kk < k4; ++kk) {
            __m256i wl[4], wh[4];
#pragma GCC unroll 4
            for (int q = 0; q < VG; ++q) {
                const int8_t* src = w[q] + kk * 64;
                if (MR == 1 && QV_PF && q % QV_SUB == 0) /* once per 64-byte line */
                    _mm_prefetch((const char*)(src + QV_PF), _MM_HINT_T0);
                wl[q] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)src));
                wh[q] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(src + 16)));
            }
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i) {
                int64_t x4;
                memcpy(&x4, x + (kk * MR + i) * 4, sizeof(x4));
                const __m256i xb = _mm256_set1_epi64x(x4);
#pragma GCC unroll 4
                for (int q = 0; q < VG; ++q) {
                    lo[i][q] = _mm256_add_epi32(lo[i][q], _mm256_madd_epi16(wl[q], xb));
                    hi[i][q] = _mm256_add_epi32(hi[i][q], _mm256_madd_epi16(wh[q], xb));
                }
            }
        }
        int32_t tmp[QV_LANES];
#pragma GCC unroll 4
        for (int q = 0; q < VG; ++q) {
            const int v = q0 + q;
            const int64_t n0 = (p0 + v / QV_SUB) * QE_PR + (v % QV_SUB) * QV_LANES;
            const int cnt = (int)qe_min64(QV_LANES, c->N - n0);
            for (int i = 0; i < MR; ++i) {
                if (cnt <= 0) break;
                /* rows 0 1 4 5 | 2 3 6 7 after the pairwise add; 64-bit lanes 0 2 1 3: 0-7 */
                const __m256i r =
                    _mm256_permute4x64_epi64(_mm256_hadd_epi32(lo[i][q], hi[i][q]), 0xD8);
                qv_store(tmp, r);
                qe_p8_store(c, m0 + i, n0, tmp, cnt, 0);
            }
        }
    }
}

/* W8A8 on AVX2 at M > 1: MR <= QE_P8_AVX2_MR activation rows x one vector of 8 columns over
 * `steps` K steps from w (a panel's vector at the block's first step) and x (the row tile's
 * int16 activations at that step, [steps][MR][4]); the 8 sums per row are stored to (first) or
 * added to C (row stride QE_PR).  vpmovsxbw of the weights once per step for all MR rows, then
 * per row one 64-bit broadcast and two vpmaddwd (int16 pairs, exact for all int8) into two
 * accumulators: 2 * MR + 2 + 2 = 16 ymm registers at MR = 6.  In an L1-resident loop on the
 * AMD EPYC (Zen 4) this reaches 86 multiply-adds/ns at MR = 6, 85 at 5, 83 at 4: the int16
 * scheme's ceiling (two vector operations per 16 multiply-adds, no vpdpwssd on AVX2).  The
 * sign-transfer scheme (vpsignb, vpmaddubsw, vpmaddwd with ones, vpaddd) costs as many
 * operations per multiply-add (75 in the conv helper's test), and fbgemm's cheaper
 * vpmaddubsw chain saturates.  From pf (the next panel, or NULL) one line every pfn steps from
 * step pf0 is prefetched into L2: spread over all micro calls of a panel, the next panel
 * streams in while this one computes (at M = 8 a burst at the first tile outran DRAM). */
QV_TARGET QE_INLINE void QV_SFX(qe_p8_gemm_micro)(const int MR, const int16_t* x,
                                                  const int8_t* w, int64_t steps, int32_t* C,
                                                  int first, const int8_t* pf, int64_t pf0,
                                                  int64_t pfn) {
    __m256i lo[QE_P8_AVX2_MR], hi[QE_P8_AVX2_MR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) lo[i] = hi[i] = _mm256_setzero_si256();
    for (int64_t s = 0; s < steps; ++s) {
        const int8_t* src = w + s * 64;
        if (pf && s == pf0) { /* one line of the next panel every pfn steps */
            _mm_prefetch((const char*)(pf + s * 64), _MM_HINT_T1);
            pf0 += pfn;
        }
        const __m256i wl = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)src));
        const __m256i wh = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(src + 16)));
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            /* one row's step in asm: from intrinsics GCC 12 adds register moves around the
             * accumulators (L1-resident loop: 67 / 74 multiply-adds/ns at MR = 3 / 4 against
             * 79 / 82, and spills at MR = 6 without an empty asm barrier) */
            __m256i t1, t2;
            __asm__("vpbroadcastq (%[xp]), %[t1]\n\t"
                    "vpmaddwd %[t1], %[wl], %[t2]\n\t"
                    "vpmaddwd %[t1], %[wh], %[t1]\n\t"
                    "vpaddd %[t2], %[lo], %[lo]\n\t"
                    "vpaddd %[t1], %[hi], %[hi]"
                    : [lo] "+x"(lo[i]), [hi] "+x"(hi[i]), [t1] "=&x"(t1), [t2] "=&x"(t2)
                    : [wl] "x"(wl), [wh] "x"(wh), [xp] "r"(x + (s * MR + i) * 4));
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) { /* columns 0 1 4 5 | 2 3 6 7, then 64-bit lanes 0 2 1 3 */
        __m256i r = _mm256_permute4x64_epi64(_mm256_hadd_epi32(lo[i], hi[i]), 0xD8);
        if (!first) r = _mm256_add_epi32(r, _mm256_loadu_si256((const __m256i*)(C + i * QE_PR)));
        _mm256_storeu_si256((__m256i*)(C + i * QE_PR), r);
    }
}

/* qe_p8_store for 8 outputs of the fused W8A8 epilogue in float64 vectors (AVX2: 4 lanes), the
 * same operations in the same order, so the same floats (see qe_p8_epilogue16_512). */
QV_TARGET static inline void QV_SFX(qe_p8_epilogue8)(const qe_p8_ctx* c, int64_t m, int64_t n0,
                                                     const int32_t* acc) {
    const __m256d xs = _mm256_set1_pd((double)c->xs[m]);
#pragma GCC unroll 2
    for (int h = 0; h < 8; h += 4) {
        __m256d e = _mm256_cvtepi32_pd(_mm_loadu_si128((const __m128i*)(acc + h)));
        if (c->zx) {
            const __m128i wsum = _mm_loadu_si128((const __m128i*)(c->wsum + n0 + h));
            e = _mm256_sub_pd(e, _mm256_mul_pd(_mm256_set1_pd((double)c->zx[m]),
                                               _mm256_cvtepi32_pd(wsum)));
        }
        const __m256d ws = _mm256_cvtps_pd(_mm_loadu_ps(c->ws + n0 + h));
        __m256d v = _mm256_mul_pd(_mm256_mul_pd(e, xs), ws);
        if (c->bias) v = _mm256_add_pd(v, _mm256_cvtps_pd(_mm_loadu_ps(c->bias + n0 + h)));
        _mm_storeu_ps(c->y + m * c->N + n0 + h, _mm256_cvtpd_ps(v));
    }
}

QV_TARGET static void QV_SFX(qe_p8_gemm_call)(int mr, const int16_t* x, const int8_t* w,
                                              int64_t steps, int32_t* C, int first,
                                              const int8_t* pf, int64_t pf0, int64_t pfn) {
    switch (mr) {
#if QE_P8_AVX2_MR >= 6
        case 6: QV_SFX(qe_p8_gemm_micro)(6, x, w, steps, C, first, pf, pf0, pfn); break;
#endif
#if QE_P8_AVX2_MR >= 5
        case 5: QV_SFX(qe_p8_gemm_micro)(5, x, w, steps, C, first, pf, pf0, pfn); break;
#endif
        case 4: QV_SFX(qe_p8_gemm_micro)(4, x, w, steps, C, first, pf, pf0, pfn); break;
        case 3: QV_SFX(qe_p8_gemm_micro)(3, x, w, steps, C, first, pf, pf0, pfn); break;
        case 2: QV_SFX(qe_p8_gemm_micro)(2, x, w, steps, C, first, pf, pf0, pfn); break;
        default: QV_SFX(qe_p8_gemm_micro)(1, x, w, steps, C, first, pf, pf0, pfn); break;
    }
}

/* One panel (16 columns) a claim, the next one claimed ahead so that its weights can be
 * prefetched while this one computes (see qe_p8_gemm_micro_2); per group of QE_P8_AVX2_TC row
 * tiles (the first group prefetches), K blocks of QE_P8_AVX2_KB steps into int32 partial sums
 * C, every tile and both vectors of the panel over one block before the next (the panel's
 * block stays in L2, a tile's activations in L1 for the second vector); then the epilogue.
 * 4096 x 4096 W8A8, 1 thread, thread CPU time, interleaved with fbgemm's dynamic linear under
 * FBGEMM_ENABLE_INSTRUCTIONS=AVX2 (load 5.0): M = 8 / 16 / 32 / 64 1.84 / 3.40 / 6.74 / 13.15
 * ms (73 / 79 / 80 / 82 multiply-adds/ns) against 2.36 / 4.20 / 7.91 / 15.33 ms for the
 * previous 4-row tiles (intrinsics, no K blocks, no prefetch) and fbgemm's 1.58 / 3.01 / 5.96
 * / 11.53 (saturating vpmaddubsw, 85-93 multiply-adds/ns). */
QV_TARGET static void QV_SFX(qe_p8_gemm)(const qe_p8_ctx* c) {
    const int64_t k4 = c->k4, ldx = c->ldx, M = c->M, nt = qe_p8_ntiles(M);
    int32_t C[QE_P8_AVX2_TC * QE_P8_AVX2_MR * QE_PR];
    for (int64_t p = __atomic_fetch_add(c->next, 1, __ATOMIC_RELAXED), pn; p < c->np; p = pn) {
        pn = __atomic_fetch_add(c->next, 1, __ATOMIC_RELAXED); /* this thread's next panel */
        const int8_t* wp = c->w + p * k4 * 64;
        const int8_t* wn = pn < c->np ? c->w + pn * k4 * 64 : NULL;
        const int64_t n0 = p * QE_PR;
        const int cnt = (int)qe_min64(QE_PR, c->N - n0);
        for (int64_t j0 = 0; j0 < nt; j0 += QE_P8_AVX2_TC) {
            const int64_t j1 = qe_min64(nt, j0 + QE_P8_AVX2_TC), r0 = j0 * M / nt;
            const int64_t nc = 2 * (j1 - j0); /* micro calls per K block, sharing the prefetch */
            for (int64_t kb = 0; kb < k4; kb += QE_P8_AVX2_KB) {
                const int64_t steps = qe_min64(QE_P8_AVX2_KB, k4 - kb);
                for (int64_t j = j0; j < j1; ++j) {
                    const int64_t m0 = j * M / nt, mr = (j + 1) * M / nt - m0;
                    const int16_t* x = c->xw + m0 * ldx + kb * 4 * mr;
                    int32_t* Cj = C + (m0 - r0) * QE_PR;
                    const int8_t* pf = j0 == 0 && wn ? wn + kb * 64 : NULL;
                    const int64_t ci = 2 * (j - j0);
                    const int8_t* wk = wp + kb * 64;
                    QV_SFX(qe_p8_gemm_call)((int)mr, x, wk, steps, Cj, kb == 0, pf, ci, nc);
                    QV_SFX(qe_p8_gemm_call)((int)mr, x, wk + 32, steps, Cj + 8, kb == 0, pf, ci + 1,
                                            nc);
                }
            }
            for (int64_t m = r0; m < j1 * M / nt; ++m) {
                const int32_t* a = C + (m - r0) * QE_PR;
                if (cnt == QE_PR && !c->out) {
                    QV_SFX(qe_p8_epilogue8)(c, m, n0, a);
                    QV_SFX(qe_p8_epilogue8)(c, m, n0 + 8, a + 8);
                } else {
                    qe_p8_store(c, m, n0, a, cnt, 0);
                }
            }
        }
    }
}
#else
#if QE_VNNI_PASS == 512
/* qe_p8_store for 16 outputs of the fused W8A8 epilogue, in float64 vectors: the same
 * operations in the same order, so the same floats.  (double)d - zx * wsum is the scalar's
 * int64 difference exactly: |zx * wsum| < 2^33 and every value is an integer below 2^53. */
QV_TARGET static inline void qe_p8_epilogue16_512(const qe_p8_ctx* c, int64_t m, int64_t n0,
                                                  __m512i acc) {
    const __m512i wsum = _mm512_loadu_si512((const void*)(c->wsum + n0));
    const __m512i d = _mm512_sub_epi32(acc, _mm512_slli_epi32(wsum, 7)); /* - 128 wsum, mod 2^32 */
    const __m512d xs = _mm512_set1_pd((double)c->xs[m]);
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
        const __m256i dh = h ? _mm512_extracti64x4_epi64(d, 1) : _mm512_castsi512_si256(d);
        __m512d e = _mm512_cvtepi32_pd(dh);
        if (c->zx) {
            const __m256i wh =
                h ? _mm512_extracti64x4_epi64(wsum, 1) : _mm512_castsi512_si256(wsum);
            e = _mm512_sub_pd(e, _mm512_mul_pd(_mm512_set1_pd((double)c->zx[m]),
                                               _mm512_cvtepi32_pd(wh)));
        }
        __m512d v = _mm512_mul_pd(_mm512_mul_pd(e, xs),
                                  _mm512_cvtps_pd(_mm256_loadu_ps(c->ws + n0 + 8 * h)));
        if (c->bias) v = _mm512_add_pd(v, _mm512_cvtps_pd(_mm256_loadu_ps(c->bias + n0 + 8 * h)));
        _mm256_storeu_ps(c->y + m * c->N + n0 + 8 * h, _mm512_cvtpd_ps(v));
    }
}
#endif
/* W8A8: MR activation rows x NV vectors (of QV_LANES columns) over all K.  At MR = 1 two
 * accumulator chains per vector (even and odd K steps) hide the vpdpbusd latency. */
QV_TARGET QE_INLINE void QV_SFX(qe_p8_micro)(const int MR, const int NV, const qe_p8_ctx* c,
                                             int64_t m0, int64_t p0) {
    const int64_t k4 = c->k4, ldx = c->ldx;
    const uint8_t* x = c->xu + m0 * ldx;
    const int8_t* w[4];
    QV acc[QV_MR][4], odd[4];
#pragma GCC unroll 4
    for (int q = 0; q < NV; ++q) {
        w[q] = c->w + (p0 + q / QV_SUB) * k4 * 64 + (q % QV_SUB) * QV_LANES * 4;
        odd[q] = qv_zero();
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) acc[i][q] = qv_zero();
    }
    int64_t kk = 0;
    if (MR == 1) {
        for (; kk + 2 <= k4; kk += 2) {
            const QV x0 = qv_set1(QV_SFX(qe_ld32)(x + 4 * kk));
            const QV x1 = qv_set1(QV_SFX(qe_ld32)(x + 4 * kk + 4));
#pragma GCC unroll 4
            for (int q = 0; q < NV; ++q) {
                if (QV_PF) { /* both lines of the two steps (64 bytes each) */
                    _mm_prefetch((const char*)(w[q] + kk * 64 + QV_PF), _MM_HINT_T0);
                    _mm_prefetch((const char*)(w[q] + kk * 64 + 64 + QV_PF), _MM_HINT_T0);
                }
                acc[0][q] = qv_dp(acc[0][q], x0, qv_load(w[q] + kk * 64));
                odd[q] = qv_dp(odd[q], x1, qv_load(w[q] + kk * 64 + 64));
            }
        }
    }
    for (; kk < k4; ++kk) {
        QV wv[4];
#pragma GCC unroll 4
        for (int q = 0; q < NV; ++q) {
            if (QE_PF_GEMM && q % QV_SUB == 0)
                _mm_prefetch((const char*)(w[q] + kk * 64 + QE_PF_GEMM), _MM_HINT_T0);
            wv[q] = qv_load(w[q] + kk * 64);
        }
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const QV xb = qv_set1(QV_SFX(qe_ld32)(x + i * ldx + 4 * kk));
#pragma GCC unroll 4
            for (int q = 0; q < NV; ++q) acc[i][q] = qv_dp(acc[i][q], xb, wv[q]);
        }
    }
    int32_t tmp[QV_LANES];
#pragma GCC unroll 4
    for (int q = 0; q < NV; ++q) {
        const int64_t n0 = (p0 + q / QV_SUB) * QE_PR + (q % QV_SUB) * QV_LANES;
        const int cnt = (int)qe_min64(QV_LANES, c->N - n0);
        if (MR == 1) acc[0][q] = qv_add(acc[0][q], odd[q]);
        for (int i = 0; i < MR; ++i) {
            if (cnt <= 0) break;
#if QE_VNNI_PASS == 512
            if (cnt == QV_LANES && !c->out) {
                qe_p8_epilogue16_512(c, m0 + i, n0, acc[i][q]);
                continue;
            }
#endif
            qv_store(tmp, acc[i][q]);
            qe_p8_store(c, m0 + i, n0, tmp, cnt, 1);
        }
    }
}
#endif /* QV_EMU */

QV_TARGET static void QV_SFX(qe_p8_call)(int mr, int nv, const qe_p8_ctx* c, int64_t m0,
                                         int64_t p0) {
#define QE_P8_CASE(MR)                                  \
    case MR:                                            \
        if (nv == 2)                                    \
            QV_SFX(qe_p8_micro)(MR, 2, c, m0, p0);      \
        else                                            \
            QV_SFX(qe_p8_micro)(MR, 1, c, m0, p0);      \
        break;
    switch (mr) {
        case 1: /* nv: the tile's vectors, fewer in the last tile */
            if (nv == 4)
                QV_SFX(qe_p8_micro)(1, 4, c, m0, p0);
            else if (nv == 3)
                QV_SFX(qe_p8_micro)(1, 3, c, m0, p0);
            else if (nv == 2)
                QV_SFX(qe_p8_micro)(1, 2, c, m0, p0);
            else
                QV_SFX(qe_p8_micro)(1, 1, c, m0, p0);
            break;
#if QV_MR > 1
        QE_P8_CASE(2)
        QE_P8_CASE(3)
        QE_P8_CASE(4)
#endif
#if QV_MR > 4
        QE_P8_CASE(5)
        QE_P8_CASE(6)
#endif
#if QV_MR > 6
        QE_P8_CASE(7)
        QE_P8_CASE(8)
#endif
        default: break;
    }
#undef QE_P8_CASE
}

/* Tiles of panels are claimed from a shared counter (see the module comment on threads). */
QV_TARGET static void QV_SFX(qe_p8_thread)(const qe_p8_ctx* c) {
    /* M = 1: four vectors (4 panels on AVX-512, 2 on AVX2), as several weight streams read
     * faster than one (4096 x 4096 AVX-512: 0.68 ms with 4 panels, 0.76 with 2, 0.97 with 1;
     * AVX2 at K = 11008: 1.58 ms with 2, 1.77 with 1, equal at K = 4096); M > 1: two vectors */
    const int64_t tile = (c->M == 1 ? 4 : 2) / QV_SUB;
    for (;;) {
        const int64_t p0 = __atomic_fetch_add(c->next, tile, __ATOMIC_RELAXED);
        if (p0 >= c->np) break;
        const int nv = (int)(qe_min64(tile, c->np - p0) * QV_SUB);
        for (int64_t m0 = 0; m0 < c->M;) {
            const int mr = (int)qe_min64(QV_MR, c->M - m0);
            QV_SFX(qe_p8_call)(mr, nv, c, m0, p0);
            m0 += mr;
        }
    }
}

/* W4A8: MR activation rows x NV vectors over all K, group by group. */
QV_TARGET QE_INLINE void QV_SFX(qe_p4_micro)(const int MR, const int NV, const qe_p4_ctx* c,
                                             int64_t m0, int64_t p0) {
    const int64_t k8 = c->k8, ng = c->ng, gs = c->G / 8, K = c->K;
    const QV low = qv_set1b(0x0F);
    const uint8_t* w[4];
    const float* s[4];
    const float* z[4];
    QVF facc[QV_MR4][4];
#pragma GCC unroll 4
    for (int q = 0; q < NV; ++q) {
        const int64_t p = p0 + q / QV_SUB, h = (q % QV_SUB) * QV_LANES;
        w[q] = c->w + p * k8 * 64 + h * 4;
        s[q] = c->ws + p * ng * QE_PR + h;
        z[q] = c->wzs ? c->wzs + p * ng * QE_PR + h : NULL;
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i) facc[i][q] = qvf_zero();
    }
    for (int64_t g = 0; g < ng; ++g) {
        QV ia[QV_MR4][4], ib[4];
#pragma GCC unroll 4
        for (int q = 0; q < NV; ++q) {
            ib[q] = qv_zero();
#pragma GCC unroll 4
            for (int i = 0; i < MR; ++i) ia[i][q] = qv_zero();
        }
        for (int64_t st = g * gs; st < (g + 1) * gs; ++st) {
            QV lo[4], hi[4];
#pragma GCC unroll 4
            for (int q = 0; q < NV; ++q) {
                const QV v = qv_load(w[q] + st * 64);
                if (MR == 1 && QV_PF && q % QV_SUB == 0) /* once per 64-byte line */
                    _mm_prefetch((const char*)(w[q] + st * 64 + QV_PF), _MM_HINT_T0);
                lo[q] = qv_and(v, low);
                /* M = 1: the high nibbles in place (16 x code), its own accumulator, shifted
                 * back per group: one operation less per vector than a shift and a mask
                 * (not on AVX2: 16 x code would saturate vpmaddubsw) */
                hi[q] = MR == 1 && !QV_EMU ? qv_andnot(low, v) : qv_and(qv_srli16(v, 4), low);
            }
#pragma GCC unroll 4
            for (int i = 0; i < MR; ++i) {
                const int8_t* xr = c->xq + (m0 + i) * K + 8 * st;
                const QV xa = qv_set1(QV_SFX(qe_ld32)(xr)), xb = qv_set1(QV_SFX(qe_ld32)(xr + 4));
#pragma GCC unroll 4
                for (int q = 0; q < NV; ++q) {
                    if (MR == 1 && !QV_EMU) {
                        ia[0][q] = qv_dp(ia[0][q], lo[q], xa);
                        ib[q] = qv_dp(ib[q], hi[q], xb);
                    } else if (MR == 1) { /* AVX2: int16 sums, widened every 4 steps */
                        ib[q] = qv_dot16(ib[q], lo[q], xa, hi[q], xb);
                    } else {
                        ia[i][q] = qv_dp2(ia[i][q], lo[q], xa, hi[q], xb);
                    }
                }
            }
            /* 4 x 7680 < 32768, and a group is a whole number of 4 steps (32 elements) */
            if (MR == 1 && QV_EMU && (st - g * gs) % 4 == 3) {
#pragma GCC unroll 4
                for (int q = 0; q < NV; ++q) {
                    ia[0][q] = qv_widen(ia[0][q], ib[q]);
                    ib[q] = qv_zero();
                }
            }
        }
#pragma GCC unroll 4
        for (int q = 0; q < NV; ++q) {
            const QVF sv = qvf_load(s[q] + g * QE_PR);
            if (MR == 1 && !QV_EMU) ia[0][q] = qv_add(ia[0][q], qv_srai(ib[q], 4)); /* 16 | ib */
#pragma GCC unroll 4
            for (int i = 0; i < MR; ++i) {
                const int64_t mg = (m0 + i) * ng + g;
                if (z[q]) {
                    facc[i][q] = qvf_fma(qvf_cvt(ia[i][q]), sv, facc[i][q]);
                    facc[i][q] =
                        qvf_fnma(qvf_load(z[q] + g * QE_PR), qvf_set1(c->sxf[mg]), facc[i][q]);
                } else {
                    const QV d = qv_sub(ia[i][q], qv_set1(8 * c->sxi[mg]));
                    facc[i][q] = qvf_fma(qvf_cvt(d), sv, facc[i][q]);
                }
            }
        }
    }
    float tmp[QV_LANES];
#pragma GCC unroll 4
    for (int q = 0; q < NV; ++q) {
        const int64_t n0 = (p0 + q / QV_SUB) * QE_PR + (q % QV_SUB) * QV_LANES;
        const int cnt = (int)qe_min64(QV_LANES, c->N - n0);
        for (int i = 0; i < MR; ++i) {
            if (cnt <= 0) break;
            qvf_store(tmp, facc[i][q]);
            qe_p4_store(c, m0 + i, n0, tmp, cnt);
        }
    }
}

#if QV_EMU
/* W4A8 at M = 1 on AVX2: one panel (two vectors of 8 columns) over all K.  One panel at a
 * time, not the two or four of the vpdpbusd paths: with one weight stream (and the prefetch
 * QE_PF_BYTES_2 ahead running into the next panel) AVX2 reads faster than with two or four
 * interleaved streams (4096 x 4096 g128, 1 thread: 0.34 ms against 0.42-0.47).  Per 4 K
 * steps, int16 sums of the two vpmaddubsw per vector (4 x 7680 < 32768), widened once with
 * vpmaddwd; per group the int32 sums, less 8 x the group's activation sum (or with the
 * float zero term), meet the scales in one FMA, in qe_p4_micro's order: the same floats. */
QV_TARGET static void QV_SFX(qe_p4_m1)(const qe_p4_ctx* c, int64_t p) {
    const int64_t k8 = c->k8, ng = c->ng, gs = c->G / 8;
    const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    const int8_t* x = c->xq;
    const uint8_t* w = c->w + p * k8 * 64;
    const float* s = c->ws + p * ng * QE_PR;
    const float* z = c->wzs ? c->wzs + p * ng * QE_PR : NULL;
    __m256 f0 = _mm256_setzero_ps(), f1 = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
        __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
        for (int64_t b = g * gs; b < (g + 1) * gs; b += 4) {
            __m256i h0 = _mm256_setzero_si256(), h1 = _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int t = 0; t < 4; ++t) {
                const uint8_t* src = w + (b + t) * 64;
                if (QE_PF_BYTES_2) _mm_prefetch((const char*)(src + QE_PF_BYTES_2), _MM_HINT_T0);
                const __m256i xa = _mm256_set1_epi32(QV_SFX(qe_ld32)(x + 8 * (b + t)));
                const __m256i xb = _mm256_set1_epi32(QV_SFX(qe_ld32)(x + 8 * (b + t) + 4));
                const __m256i v0 = _mm256_loadu_si256((const __m256i*)src);
                const __m256i v1 = _mm256_loadu_si256((const __m256i*)(src + 32));
                h0 = qv_dot16(h0, _mm256_and_si256(v0, low), xa,
                              _mm256_and_si256(_mm256_srli_epi16(v0, 4), low), xb);
                h1 = qv_dot16(h1, _mm256_and_si256(v1, low), xa,
                              _mm256_and_si256(_mm256_srli_epi16(v1, 4), low), xb);
            }
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(h0, ones));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(h1, ones));
        }
        const __m256 s0 = _mm256_loadu_ps(s + g * QE_PR), s1 = _mm256_loadu_ps(s + g * QE_PR + 8);
        if (z) {
            const __m256 sx = _mm256_set1_ps(c->sxf[g]);
            f0 = _mm256_fnmadd_ps(_mm256_loadu_ps(z + g * QE_PR), sx,
                                  _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0), s0, f0));
            f1 = _mm256_fnmadd_ps(_mm256_loadu_ps(z + g * QE_PR + 8), sx,
                                  _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1), s1, f1));
        } else {
            const __m256i sx8 = _mm256_set1_epi32(8 * c->sxi[g]);
            f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(a0, sx8)), s0, f0);
            f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(a1, sx8)), s1, f1);
        }
    }
    float tmp[16];
    _mm256_storeu_ps(tmp, f0);
    _mm256_storeu_ps(tmp + 8, f1);
    qe_p4_store(c, 0, p * QE_PR, tmp, (int)qe_min64(QE_PR, c->N - p * QE_PR));
}
#endif

QV_TARGET static void QV_SFX(qe_p4_call1)(int nv, const qe_p4_ctx* c, int64_t m0, int64_t p0) {
    switch (nv) {
        case 3: QV_SFX(qe_p4_micro)(1, 3, c, m0, p0); break;
        case 2: QV_SFX(qe_p4_micro)(1, 2, c, m0, p0); break;
        default: QV_SFX(qe_p4_micro)(1, 1, c, m0, p0); break;
    }
}

QV_TARGET static void QV_SFX(qe_p4_call)(int mr, int nv, const qe_p4_ctx* c, int64_t m0,
                                         int64_t p0) {
#define QE_P4_CASE(MR)                                  \
    case MR:                                            \
        if (nv == 2)                                    \
            QV_SFX(qe_p4_micro)(MR, 2, c, m0, p0);      \
        else                                            \
            QV_SFX(qe_p4_micro)(MR, 1, c, m0, p0);      \
        break;
    switch (mr) {
        case 1: /* M = 1 reads four vectors a step: eight independent vpdpbusd chains */
            if (nv == 4)
                QV_SFX(qe_p4_micro)(1, 4, c, m0, p0);
            else
                QV_SFX(qe_p4_call1)(nv, c, m0, p0);
            break;
        QE_P4_CASE(2)
#if QV_MR4 > 2
        QE_P4_CASE(3)
        QE_P4_CASE(4)
#endif
        default: break;
    }
#undef QE_P4_CASE
}

QV_TARGET static void QV_SFX(qe_p4_thread)(const qe_p4_ctx* c) {
#if QV_EMU
    if (c->M == 1) { /* AVX2: one panel a claim (see qe_p4_m1) */
        for (;;) {
            const int64_t p = __atomic_fetch_add(c->next, 1, __ATOMIC_RELAXED);
            if (p >= c->np) break;
            QV_SFX(qe_p4_m1)(c, p);
        }
        return;
    }
#endif
    const int64_t tile = (c->M == 1 ? 4 : 2) / QV_SUB; /* vectors a step: 4 at M = 1, else 2 */
    for (;;) {
        const int64_t p0 = __atomic_fetch_add(c->next, tile, __ATOMIC_RELAXED);
        if (p0 >= c->np) break;
        const int nv = (int)(qe_min64(tile, c->np - p0) * QV_SUB);
        for (int64_t m0 = 0; m0 < c->M;) {
            const int mr = (int)qe_min64(QV_MR4, c->M - m0);
            QV_SFX(qe_p4_call)(mr, nv, c, m0, p0);
            m0 += mr;
        }
    }
}

#undef QV
#undef QVF
#undef QV_LANES
#undef QV_MR
#undef QV_MR4
#undef QV_TARGET
#undef QV_SFX
#undef QV_SUB
#undef QV_PF
#undef QV_EMU
#undef qv_dp2
#undef qv_dot16
#undef qv_widen
#undef qv_load
#undef qv_set1
#undef qv_set1b
#undef qv_zero
#undef qv_dp
#undef qv_add
#undef qv_sub
#undef qv_and
#undef qv_andnot
#undef qv_srai
#undef qv_srli16
#undef qv_store
#undef qvf_cvt
#undef qvf_fma
#undef qvf_fnma
#undef qvf_load
#undef qvf_set1
#undef qvf_zero
#undef qvf_store
#endif /* QE_VNNI_PASS */
