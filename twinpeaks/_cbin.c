/*
 * twinpeaks._cbin: the CPU binning kernel, one pass over a tensor's memory.
 *
 * One call reads float32 / float16 / bfloat16 / float64 elements (all of them, or
 * evenly spaced blocks of them), and adds into a layer's step row:
 *   counts[B + 3]  underflow, bins 0..B-1, overflow, nonfinite (NaN, +-inf)
 *   sums[3]        sum, sum of squares, non-zeros
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

/* `blocks` runs of `block` elements, the i-th at element i * stride (one run: all of them).
   Sampled runs lie farther apart than hardware prefetchers follow: ask AHEAD runs ahead. */
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
        for (int64_t r = 0; r < blocks && r < AHEAD && blocks > 1; r++) {                          \
            PREFETCH(base + r * stride);                                                            \
            PREFETCH(base + r * stride + block - 1);                                                \
        }                                                                                           \
        for (int64_t r = 0; r < blocks; r++) {                                                      \
            const CTYPE *p = base + r * stride;                                                     \
            if (r + AHEAD < blocks) {                                                               \
                PREFETCH(p + AHEAD * stride);                                                       \
                PREFETCH(p + AHEAD * stride + block - 1);                                           \
            }                                                                                       \
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

static inline float load_f32(float v) { return v; }
static inline float load_f16(uint16_t v) { return f16_table[v]; }
static inline float load_bf16(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
static inline float load_f64(double v) { return (float)v; }

DEFINE_SPAN(span_f32, float, load_f32)
DEFINE_SPAN(span_f16, uint16_t, load_f16)
DEFINE_SPAN(span_bf16, uint16_t, load_bf16)
DEFINE_SPAN(span_f64, double, load_f64)

typedef void (*span_fn)(acc_t *, const void *, int64_t, int64_t, int64_t);

/*
 * observe(data, dtype, n, stride, blocks, block, edges, bins, counts, sums, peaks)
 *   blocks == 0: read n contiguous elements from data;
 *   otherwise:   read `blocks` runs of `block` elements starting at data + i * stride.
 * Addresses are ints (tensor.data_ptr()); edges is float32[bins + 1]; counts,
 * sums and peaks are float64 rows of bins + 3, 3 and 2.
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
    span_fn span = dtype == F32 ? span_f32 : dtype == F16 ? span_f16 : dtype == BF16 ? span_bf16
                 : dtype == F64 ? span_f64 : NULL;
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

static PyMethodDef methods[] = {
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
