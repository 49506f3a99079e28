/*
 * twinpeaks._cbin: the CPU binning kernel, one pass over a tensor's memory.
 *
 * One call reads float32 / float16 / bfloat16 / float64 elements (all of them, or
 * evenly spaced blocks of them), and adds into a layer's step row:
 *   counts[B + 3]  underflow, bins 0..B-1, overflow, nonfinite (NaN, +-inf)
 *   sums[5]        sum, sum of squares, non-zeros, elements binned, elements seen (n)
 *   peaks[2]       -min, max (NaN if any element is NaN, like torch.aminmax)
 * The row buffers are float64 (the recorder's device rows on CPU).
 *
 * Bins are exact against the B + 1 float32 edges, like numpy.histogram on the
 * values upcast to float32: half-open bins, the last one closed. A first guess
 * from the linear scale is corrected by comparing with the edges themselves.
 * Each of LANES interleaved histograms and running stats takes every LANES-th
 * element, so that runs of equal values (a ReLU's zeros) do not serialise on
 * one counter.
 *
 * No torch or numpy headers: Python passes raw addresses (tensor.data_ptr()).
 * Python decides everything else (dtype, sampling plan, bounds).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { F32 = 0, F16 = 1, BF16 = 2, F64 = 3 };
#define LANES 4
/* sampled blocks are farther apart than hardware prefetchers follow: ask this many blocks ahead */
#define AHEAD 8
#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)(p))
#endif
#if defined(_MSC_VER)
#define restrict __restrict
#endif

static float f16_table[65536];

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {  /* subnormal half: a normal float */
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

typedef struct {
    const float *edges;
    const float *fix; /* edges with the last one +inf */
    int bins;
    float lo, hi, scale;
    int coarse;
    int64_t *hist;  /* LANES x (bins + 3), lane-major */
    int64_t stride; /* hist lane stride */
    double sum, sq;
    int64_t nz;
    float mn, mx;
} acc_t;

/* The slot of anything off the fast path: out of range, NaN, +-inf, or a range
   float32 cannot scale to bins (then: the largest b with edges[b] <= x). */
static int64_t slot_slow(const acc_t *a, float x) {
    if (!isfinite(x)) return a->bins + 2;
    if (x < a->lo) return 0;
    if (x > a->hi) return a->bins + 1;
    int lo = 0, hi = a->bins - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (a->edges[mid] <= x) lo = mid; else hi = mid - 1;
    }
    return lo + 1;
}

/* The slot of one element (SSE2 tails). */
static inline int64_t slot_of_scalar(const acc_t *a, float x) {
    if ((x >= a->lo) & (x <= a->hi) & !a->coarse) {
        int b = (int)((x - a->lo) * a->scale);
        b = b > a->bins - 1 ? a->bins - 1 : b;
        b -= x < a->fix[b];
        b += x >= a->fix[b + 1];
        return b + 1;
    }
    return slot_slow(a, x);
}

/* One element: slot into lane L's histogram, and the lane's running stats.
   In range, the scaled guess is at most one bin off (checked once per call, see
   `coarse`): it is fixed without branches, as values on an edge (exact zeros) come
   at random. `e` is the edges with the last one +inf, so that hi stays in the last
   bin (numpy closes it). */
#define TAKE(L, X)                                                   \
    do {                                                             \
        const float x_ = (X);                                        \
        int64_t s_;                                                  \
        if ((x_ >= lo) & (x_ <= hi) & !coarse) {                     \
            int b_ = (int)((x_ - lo) * scale);                       \
            b_ = b_ > last ? last : b_;                              \
            b_ -= x_ < e[b_];                                        \
            b_ += x_ >= e[b_ + 1];                                   \
            s_ = b_ + 1;                                             \
        } else {                                                     \
            s_ = slot_slow(a, x_);                                   \
        }                                                            \
        h##L[s_]++;                                                  \
        sum##L += x_;                                                \
        sq##L += (double)x_ * x_;                                    \
        nz##L += x_ != 0.0f;                                         \
        mn##L = x_ < mn##L ? x_ : mn##L;                             \
        mx##L = x_ > mx##L ? x_ : mx##L;                             \
    } while (0)

/* Sampled runs lie farther apart than hardware prefetchers follow: ask for the first AHEAD runs, then,
   at each run, for the one AHEAD runs later (first and last element: a run may straddle cache lines).
   Used inside the span functions below (base, stride, block, blocks are theirs). */
#define PREFETCH_FIRST_RUNS()                                             \
    for (int64_t r_ = 0; r_ < blocks && r_ < AHEAD && blocks > 1; r_++) { \
        PREFETCH(base + r_ * stride);                                     \
        PREFETCH(base + r_ * stride + block - 1);                         \
    }
#define PREFETCH_RUN_AHEAD(r, p)                       \
    if ((r) + AHEAD < blocks) {                        \
        PREFETCH((p) + AHEAD * stride);                \
        PREFETCH((p) + AHEAD * stride + block - 1);    \
    }

/* `blocks` runs of `block` elements, the i-th at element i * stride (one run: all of them). */
#define DEFINE_SPAN(NAME, CTYPE, LOAD)                                                              \
    static void NAME(acc_t *a, const void *data, int64_t block, int64_t blocks, int64_t stride) {   \
        const CTYPE *base = (const CTYPE *)data;                                                    \
        const float *restrict e = a->fix;                                                           \
        const float lo = a->lo, hi = a->hi, scale = a->scale;                                       \
        const int last = a->bins - 1, coarse = a->coarse;                                           \
        int64_t *restrict h0 = a->hist, *restrict h1 = h0 + a->stride;                              \
        int64_t *restrict h2 = h1 + a->stride, *restrict h3 = h2 + a->stride;                       \
        double sum0 = 0, sum1 = 0, sum2 = 0, sum3 = 0, sq0 = 0, sq1 = 0, sq2 = 0, sq3 = 0;          \
        int64_t nz0 = 0, nz1 = 0, nz2 = 0, nz3 = 0;                                                 \
        float mn0 = INFINITY, mn1 = INFINITY, mn2 = INFINITY, mn3 = INFINITY;                       \
        float mx0 = -INFINITY, mx1 = -INFINITY, mx2 = -INFINITY, mx3 = -INFINITY;                   \
        PREFETCH_FIRST_RUNS();                                                                      \
        for (int64_t r = 0; r < blocks; r++) {                                                      \
            const CTYPE *p = base + r * stride;                                                     \
            PREFETCH_RUN_AHEAD(r, p);                                                               \
            int64_t i = 0;                                                                          \
            for (; i + LANES <= block; i += LANES) {                                                \
                TAKE(0, LOAD(p[i]));                                                                \
                TAKE(1, LOAD(p[i + 1]));                                                            \
                TAKE(2, LOAD(p[i + 2]));                                                            \
                TAKE(3, LOAD(p[i + 3]));                                                            \
            }                                                                                       \
            for (; i < block; i++) TAKE(0, LOAD(p[i]));                                             \
        }                                                                                           \
        a->sum = (sum0 + sum1) + (sum2 + sum3);                                                     \
        a->sq = (sq0 + sq1) + (sq2 + sq3);                                                          \
        a->nz = nz0 + nz1 + nz2 + nz3;                                                              \
        mn0 = mn1 < mn0 ? mn1 : mn0; mn2 = mn3 < mn2 ? mn3 : mn2; a->mn = mn2 < mn0 ? mn2 : mn0;    \
        mx0 = mx1 > mx0 ? mx1 : mx0; mx2 = mx3 > mx2 ? mx3 : mx2; a->mx = mx2 > mx0 ? mx2 : mx0;    \
    }

#if defined(__SSE2__)
#include <emmintrin.h>
/* SSE2 (every x86-64): four elements at a time for the range test, the scaled
   guess and the stats (sums in float64, as in the scalar path); the edge fix and
   the counter increments stay scalar, lane by lane into the LANES histograms. */
#define LOADV_f32(p, i) _mm_loadu_ps((p) + (i))
#define LOADV_bf16(p, i) \
    _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64((const __m128i *)((p) + (i)))))
#define LOADV_f16(p, i) \
    _mm_set_ps(f16_table[(p)[(i) + 3]], f16_table[(p)[(i) + 2]], f16_table[(p)[(i) + 1]], f16_table[(p)[i]])
#define LOADV_f64(p, i) \
    _mm_movelh_ps(_mm_cvtpd_ps(_mm_loadu_pd((p) + (i))), _mm_cvtpd_ps(_mm_loadu_pd((p) + (i) + 2)))

#define DEFINE_SPAN_SSE(NAME, CTYPE, LOADV, LOAD)                                                   \
    static void NAME(acc_t *a, const void *data, int64_t block, int64_t blocks, int64_t stride) {   \
        const CTYPE *base = (const CTYPE *)data;                                                    \
        const float *restrict e = a->fix;                                                           \
        const float lo = a->lo, hi = a->hi, scale = a->scale;                                       \
        const int last = a->bins - 1, coarse = a->coarse;                                           \
        int64_t *restrict h[LANES];                                                                 \
        for (int l = 0; l < LANES; l++) h[l] = a->hist + l * a->stride;                             \
        const __m128 vlo = _mm_set1_ps(lo), vhi = _mm_set1_ps(hi), vscale = _mm_set1_ps(scale);     \
        const __m128 vtop = _mm_set1_ps((float)last), zero = _mm_setzero_ps();                      \
        __m128d s_lo = _mm_setzero_pd(), s_hi = _mm_setzero_pd(), q_lo = s_lo, q_hi = s_lo;         \
        __m128 mn = _mm_set1_ps(INFINITY), mx = _mm_set1_ps(-INFINITY);                             \
        __m128i nz = _mm_setzero_si128();                                                           \
        int64_t nz_wide = 0, since = 0;                                                             \
        double sum_t = 0, sq_t = 0;                                                                 \
        int64_t nz_t = 0;                                                                           \
        float mn_t = INFINITY, mx_t = -INFINITY;                                                    \
        float xs[4];                                                                                \
        int32_t bs[4];                                                                              \
        PREFETCH_FIRST_RUNS();                                                                      \
        for (int64_t r = 0; r < blocks; r++) {                                                      \
            const CTYPE *p = base + r * stride;                                                     \
            PREFETCH_RUN_AHEAD(r, p);                                                               \
            int64_t i = 0;                                                                          \
            for (; i + 4 <= block; i += 4) {                                                        \
                const __m128 x = LOADV(p, i);                                                       \
                const __m128d x_lo = _mm_cvtps_pd(x), x_hi = _mm_cvtps_pd(_mm_movehl_ps(x, x));     \
                s_lo = _mm_add_pd(s_lo, x_lo);                                                      \
                s_hi = _mm_add_pd(s_hi, x_hi);                                                      \
                q_lo = _mm_add_pd(q_lo, _mm_mul_pd(x_lo, x_lo));                                    \
                q_hi = _mm_add_pd(q_hi, _mm_mul_pd(x_hi, x_hi));                                    \
                mn = _mm_min_ps(x, mn); /* a NaN lane keeps mn: NaN shows in the sum of squares */  \
                mx = _mm_max_ps(x, mx);                                                             \
                nz = _mm_sub_epi32(nz, _mm_castps_si128(_mm_cmpneq_ps(x, zero)));                   \
                if (++since == (1 << 28)) { /* int32 lanes: move to int64 before they overflow */  \
                    int32_t c[4];                                                                   \
                    _mm_storeu_si128((__m128i *)c, nz);                                             \
                    nz_wide += (int64_t)c[0] + c[1] + c[2] + c[3];                                  \
                    nz = _mm_setzero_si128();                                                       \
                    since = 0;                                                                      \
                }                                                                                   \
                const __m128 in = _mm_and_ps(_mm_cmpge_ps(x, vlo), _mm_cmple_ps(x, vhi));           \
                const int all_in = _mm_movemask_ps(in) == 15 && !coarse;                            \
                const __m128 t = _mm_min_ps(_mm_mul_ps(_mm_sub_ps(x, vlo), vscale), vtop);          \
                _mm_storeu_si128((__m128i *)bs, _mm_cvttps_epi32(_mm_and_ps(t, in)));               \
                _mm_storeu_ps(xs, x);                                                               \
                for (int l = 0; l < 4; l++) {                                                       \
                    const float v = xs[l];                                                          \
                    int64_t s_;                                                                     \
                    if (all_in || ((v >= lo) & (v <= hi) & !coarse)) {                              \
                        int b_ = bs[l];                                                             \
                        b_ -= v < e[b_];                                                            \
                        b_ += v >= e[b_ + 1];                                                       \
                        s_ = b_ + 1;                                                                \
                    } else {                                                                        \
                        s_ = slot_slow(a, v);                                                       \
                    }                                                                               \
                    h[l][s_]++;                                                                     \
                }                                                                                   \
            }                                                                                       \
            for (; i < block; i++) {                                                                \
                const float v = LOAD(p[i]);                                                         \
                h[0][slot_of_scalar(a, v)]++;                                                       \
                sum_t += v;                                                                         \
                sq_t += (double)v * v;                                                              \
                nz_t += v != 0.0f;                                                                  \
                mn_t = v < mn_t ? v : mn_t;                                                         \
                mx_t = v > mx_t ? v : mx_t;                                                         \
            }                                                                                       \
        }                                                                                           \
        double d[2], f[2];                                                                          \
        _mm_storeu_pd(d, _mm_add_pd(s_lo, s_hi));                                                   \
        _mm_storeu_pd(f, _mm_add_pd(q_lo, q_hi));                                                   \
        a->sum = d[0] + d[1] + sum_t;                                                               \
        a->sq = f[0] + f[1] + sq_t;                                                                 \
        int32_t c[4];                                                                               \
        _mm_storeu_si128((__m128i *)c, nz);                                                         \
        a->nz = nz_wide + (int64_t)c[0] + c[1] + c[2] + c[3] + nz_t;                                \
        float m4[4], x4[4];                                                                         \
        _mm_storeu_ps(m4, mn);                                                                      \
        _mm_storeu_ps(x4, mx);                                                                      \
        a->mn = mn_t;                                                                               \
        a->mx = mx_t;                                                                               \
        for (int l = 0; l < 4; l++) {                                                               \
            a->mn = m4[l] < a->mn ? m4[l] : a->mn;                                                  \
            a->mx = x4[l] > a->mx ? x4[l] : a->mx;                                                  \
        }                                                                                           \
    }
#endif

static inline float load_f32(float v) { return v; }
static inline float load_f16(uint16_t v) { return f16_table[v]; }
static inline float load_bf16(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
static inline float load_f64(double v) { return (float)v; }

typedef void (*span_fn)(acc_t *, const void *, int64_t, int64_t, int64_t);

/* the portable path, and the SSE2 one where the compiler targets it; tests run both (simd()) */
DEFINE_SPAN(span_f32, float, load_f32)
DEFINE_SPAN(span_f16, uint16_t, load_f16)
DEFINE_SPAN(span_bf16, uint16_t, load_bf16)
DEFINE_SPAN(span_f64, double, load_f64)
static const span_fn scalar_spans[4] = {span_f32, span_f16, span_bf16, span_f64};
#if defined(__SSE2__)
DEFINE_SPAN_SSE(span_f32_sse, float, LOADV_f32, load_f32)
DEFINE_SPAN_SSE(span_f16_sse, uint16_t, LOADV_f16, load_f16)
DEFINE_SPAN_SSE(span_bf16_sse, uint16_t, LOADV_bf16, load_bf16)
DEFINE_SPAN_SSE(span_f64_sse, double, LOADV_f64, load_f64)
static const span_fn simd_spans[4] = {span_f32_sse, span_f16_sse, span_bf16_sse, span_f64_sse};
static int use_simd = 1;
#else
static const span_fn *simd_spans = scalar_spans;
static int use_simd = 0;
#endif

/*
 * observe(data, dtype, n, stride, blocks, block, edges, bins, counts, sums, peaks)
 *   blocks == 0: read n contiguous elements from data;
 *   otherwise:   read `blocks` runs of `block` elements starting at data + i * stride.
 * Addresses are ints (tensor.data_ptr()); edges is float32[bins + 1]; counts,
 * sums and peaks are float64 rows of bins + 3, 5 and 2.
 */
static PyObject *observe(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "observe() takes 11 arguments");
        return NULL;
    }
    long long v[11];
    for (int i = 0; i < 11; i++) {
        v[i] = PyLong_AsLongLong(args[i]);
        if (v[i] == -1 && PyErr_Occurred()) return NULL;
    }
    const void *data = (const void *)(uintptr_t)v[0];
    int dtype = (int)v[1];
    int64_t n = v[2], stride = v[3], blocks = v[4], block = v[5];
    const float *edges = (const float *)(uintptr_t)v[6];
    int bins = (int)v[7];
    double *counts = (double *)(uintptr_t)v[8], *sums = (double *)(uintptr_t)v[9], *peaks = (double *)(uintptr_t)v[10];
    span_fn span = dtype >= F32 && dtype <= F64 ? (use_simd ? simd_spans : scalar_spans)[dtype] : NULL;
    if (!span || bins < 1 || n < 0 || blocks < 0 || (blocks && (block < 1 || stride < block))) {
        PyErr_SetString(PyExc_ValueError, "observe(): bad dtype, bins or sampling plan");
        return NULL;
    }
    acc_t a;
    memset(&a, 0, sizeof a);
    a.edges = edges;
    a.bins = bins;
    a.lo = edges[0];
    a.hi = edges[bins];
    a.scale = (float)bins / (a.hi - a.lo);
    /* rounding in (x - lo) * scale and in the edges is a few float32 ulps of the
       largest |edge|, in bins; with a wide margin below one bin the guess is at most
       one bin off, otherwise search the edges */
    {
        double big = fabs((double)a.lo) > fabs((double)a.hi) ? fabs((double)a.lo) : fabs((double)a.hi);
        a.coarse = !(((big * (double)a.scale + bins) * ldexp(1.0, -18)) < 0.25) || !isfinite(a.scale);
    }
    a.stride = bins + 3;
    a.hist = (int64_t *)calloc((size_t)LANES * (size_t)a.stride + (size_t)bins / 2 + 1, sizeof(int64_t));
    if (!a.hist) return PyErr_NoMemory();
    {
        float *fix = (float *)(a.hist + LANES * a.stride);
        memcpy(fix, edges, (size_t)bins * sizeof(float));
        fix[bins] = INFINITY;
        a.fix = fix;
    }
    int64_t total = blocks ? blocks * block : n;
    if (total > 0) {
        Py_BEGIN_ALLOW_THREADS
        if (blocks) span(&a, data, block, blocks, stride);
        else span(&a, data, n, 1, 0);
        Py_END_ALLOW_THREADS
    }
    for (int l = 0; l < LANES; l++)
        for (int64_t k = 0; k < a.stride; k++) counts[k] += (double)a.hist[l * a.stride + k];
    free(a.hist);
    sums[0] += a.sum;
    sums[1] += a.sq;
    sums[2] += (double)a.nz;
    sums[3] += (double)total;
    sums[4] += (double)n;
    if (total > 0) {  /* torch.maximum semantics: a NaN on either side wins; x * x is NaN only for a NaN */
        if (isnan(a.sq)) {
            peaks[0] = peaks[1] = NAN;
        } else {
            if (-a.mn > peaks[0]) peaks[0] = -a.mn;
            if (a.mx > peaks[1]) peaks[1] = a.mx;
        }
    }
    Py_RETURN_NONE;
}

/* simd(): whether the SSE2 path is used; simd(flag): switch it (tests check both paths), returns the old value */
static PyObject *simd(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    int old = use_simd;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "simd() takes at most 1 argument");
        return NULL;
    }
    if (nargs == 1) {
        int flag = PyObject_IsTrue(args[0]);
        if (flag < 0) return NULL;
#if defined(__SSE2__)
        use_simd = flag;
#else
        if (flag) {
            PyErr_SetString(PyExc_ValueError, "this build has no SIMD path");
            return NULL;
        }
#endif
    }
    return PyBool_FromLong(old);
}

static PyMethodDef methods[] = {
    {"simd", (PyCFunction)(void (*)(void))simd, METH_FASTCALL, "simd([flag]): whether (or set that) the SSE2 path runs."},
    {"observe", (PyCFunction)(void (*)(void))observe, METH_FASTCALL,
     "observe(data, dtype, n, stride, blocks, block, edges, bins, counts, sums, peaks): bin into a step row."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cbin", "twinpeaks' CPU binning kernel.", -1, methods};

PyMODINIT_FUNC PyInit__cbin(void) {
    for (uint32_t h = 0; h < 65536; h++) f16_table[h] = half_to_float((uint16_t)h);
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "ABI", 1) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
