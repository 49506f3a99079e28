/*
 * twinpeaks._cbin: the CPU binning kernel (docs/grids.md), over a tensor's memory.
 *
 * One call reads float32 / float16 / bfloat16 / float64 elements (all of them, or
 * evenly spaced blocks of them), upcasts them to float64 (exactly), and adds into
 * a layer's step row:
 *   counts[B + 3]  underflow, bins 0..B-1, overflow, nonfinite (NaN, +-inf)
 *   sums[5]        sum, sum of squares, non-zeros, elements binned, elements seen (n)
 *   peaks[2]       -min, max (NaN if any element is NaN, like torch.aminmax)
 * The row buffers are float64 (the recorder's device rows on CPU).
 *
 * Two kinds of grid (docs/grids.md, reference: twinpeaks/grids.py):
 *  - fixed: B + 1 float64 edges (numpy's linspace). Bins as numpy.histogram on
 *    the float64 values: half-open bins, the last one closed. A first guess from
 *    the linear scale is corrected by comparing with the edges themselves.
 *  - auto: the row's aligned binary grid (e, o) (2 doubles; e NaN = unset). A
 *    first pass finds the finite min and max of what is binned; the row's grid
 *    is coarsened to hold them and its counts regridded (exact); then every
 *    finite x goes to bin floor(x * 2**-e) - o: exact, no correction needed.
 * Each of LANES interleaved histograms and running stats takes every LANES-th
 * element, so that runs of equal values (a ReLU's zeros) do not serialise on
 * one counter.
 *
 * No torch or numpy headers: Python passes raw addresses (tensor.data_ptr()).
 * Python decides everything else (dtype, sampling plan, grid kind).
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


/* ---- grids: the same functions as twinpeaks/grids.py ---------------------------------- */
#define E_MIN (-1022)
#define RESOLUTION 40
#define ZERO_E (-6)

static int floor_log2(double x) { int ex; frexp(x, &ex); return ex - 1; }
static int ceil_log2(double x) { int ex; double m = frexp(x, &ex); return m == 0.5 ? ex - 1 : ex; }

/* floor(x / 2**e) as a double (exact; +-inf past the double range) */
static double bin_of(double x, int64_t e) {
    double q = floor(ldexp(x, (int)-e));
    return (q == 0 && x < 0) ? -1.0 : q; /* a negative value that underflowed to -0.0 */
}

static int fits(double mn, double mx, int64_t e, int bins) { return bin_of(mx, e) - bin_of(mn, e) <= bins - 1; }

static int64_t fit_e(double mn, double mx, int bins) {
    double big = fabs(mn) > fabs(mx) ? fabs(mn) : fabs(mx);
    int64_t lo = E_MIN;
    if (big > 0 && floor_log2(big) - RESOLUTION > lo) lo = floor_log2(big) - RESOLUTION;
    double span = mx * 0.5 - mn * 0.5, per = span / bins;
    int64_t e = lo;
    if (per > 0 && ceil_log2(per) - 1 > e) e = ceil_log2(per) - 1;
    while (e > lo && fits(mn, mx, e - 1, bins)) e--;
    while (!fits(mn, mx, e, bins)) e++;
    return e;
}

static void choose(double mn, double mx, int bins, int64_t *e, int64_t *o) {
    if (mn == mx) {
        *e = mn == 0 ? ZERO_E : floor_log2(fabs(mn)) - ceil_log2(bins);
        if (*e < E_MIN) *e = E_MIN;
        *o = (int64_t)bin_of(mn, *e) - bins / 2;
    } else {
        *e = fit_e(mn, mx, bins);
        *o = (int64_t)bin_of(mn, *e);
    }
}

/* floor(v / 2**k), k >= 0 */
static int64_t shift_floor(int64_t v, int64_t k) {
    if (k >= 62) return v < 0 ? -1 : 0;
    return v >= 0 ? v >> k : -((-v - 1) >> k) - 1;
}

/* The row's grid after a call with finite min mn and max mx; regrids counts in place when it changes. */
static void coarsen_row(double *grid, double *counts, int bins, double mn, double mx) {
    int64_t e, o, ce, co;
    choose(mn, mx, bins, &ce, &co);
    int first = -1, last = -1;
    if (!isnan(grid[0]))
        for (int i = 0; i < bins; i++)
            if (counts[1 + i] != 0) { if (first < 0) first = i; last = i; }
    if (first < 0) { /* unset, or nothing finite in the row yet */
        grid[0] = (double)ce;
        grid[1] = (double)co;
        return;
    }
    e = (int64_t)grid[0];
    o = (int64_t)grid[1];
    if (mn >= ldexp((double)o, (int)e) && mx < ldexp((double)(o + bins), (int)e)) return;
    double amin = ldexp((double)(o + first), (int)e), amax = ldexp((double)(o + last), (int)e);
    amin = mn < amin ? mn : amin;
    amax = mx > amax ? mx : amax;
    int64_t e2 = fit_e(amin, amax, bins);
    e2 = e2 > e ? e2 : e;
    e2 = e2 > ce ? e2 : ce;
    int64_t o2 = (int64_t)bin_of(amin, e2);
    double *tmp = (double *)calloc((size_t)bins, sizeof(double));
    if (!tmp) return; /* keep the old grid: values outside it go to under/overflow */
    for (int i = first; i <= last; i++) {
        if (counts[1 + i] == 0) continue;
        int64_t j = shift_floor(o + i, e2 - e) - o2;
        if (j < 0) counts[0] += counts[1 + i];
        else if (j >= bins) counts[bins + 1] += counts[1 + i];
        else tmp[j] += counts[1 + i];
    }
    memcpy(counts + 1, tmp, (size_t)bins * sizeof(double));
    free(tmp);
    grid[0] = (double)e2;
    grid[1] = (double)o2;
}

/* ---- binning ------------------------------------------------------------------------------ */
typedef struct {
    const double *edges; /* fixed: B + 1 edges */
    const double *fix;   /* fixed: the edges with the last one +inf */
    int bins;
    double lo, hi, scale; /* fixed: edges[0], edges[B], B / (hi - lo) */
    int coarse;           /* fixed: the scaled guess may be more than one bin off: search */
    double gscale;        /* auto: 2**-e */
    int64_t go;           /* auto: o */
    int64_t *hist;        /* LANES x (bins + 3), lane-major */
    int64_t stride;       /* hist lane stride */
    double sum, sq;
    int64_t nz;
    double mn, mx;
} acc_t;

/* fixed: the slot of anything off the fast path (out of range, NaN, +-inf, or a coarse guess) */
static int64_t slot_slow_fixed(const acc_t *a, double x) {
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

static inline int64_t slot_fixed(const acc_t *a, double x) {
    if ((x >= a->lo) & (x <= a->hi) & !a->coarse) {
        int b = (int)((x - a->lo) * a->scale);
        b = b > a->bins - 1 ? a->bins - 1 : b;
        b -= x < a->fix[b];
        b += x >= a->fix[b + 1];
        return b + 1;
    }
    return slot_slow_fixed(a, x);
}

/* auto: floor(x * 2**-e) - o, exact; nothing finite falls outside the grid (guarded anyway) */
static inline int64_t slot_auto(const acc_t *a, double x) {
    if (!(x - x == 0)) return a->bins + 2;
    double t = x * a->gscale;
    int64_t q = (int64_t)t;
    q -= t < (double)q;
    q -= (t == 0) & (x < 0); /* float64 values: a negative value that underflowed to -0.0 */
    int64_t s = q - a->go;
    if ((uint64_t)s < (uint64_t)a->bins) return s + 1;
    return s < 0 ? 0 : a->bins + 1;
}

/* One element: slot into lane L's histogram, and the lane's running stats. */
#define TAKE(L, X, SLOT)                                             \
    do {                                                             \
        const double x_ = (X);                                       \
        h##L[SLOT(a, x_)]++;                                         \
        sum##L += x_;                                                \
        sq##L += x_ * x_;                                            \
        nz##L += x_ != 0.0;                                          \
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

static inline double load_f32(float v) { return v; }
static inline double load_f16(uint16_t v) { return f16_table[v]; }
static inline double load_bf16(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
static inline double load_f64(double v) { return v; }

/* `blocks` runs of `block` elements, the i-th at element i * stride (one run: all of them). */
#define DEFINE_SPAN(NAME, CTYPE, LOAD, SLOT)                                                        \
    static void NAME(acc_t *a, const void *data, int64_t block, int64_t blocks, int64_t stride) {   \
        const CTYPE *base = (const CTYPE *)data;                                                    \
        int64_t *restrict h0 = a->hist, *restrict h1 = h0 + a->stride;                              \
        int64_t *restrict h2 = h1 + a->stride, *restrict h3 = h2 + a->stride;                       \
        double sum0 = 0, sum1 = 0, sum2 = 0, sum3 = 0, sq0 = 0, sq1 = 0, sq2 = 0, sq3 = 0;          \
        int64_t nz0 = 0, nz1 = 0, nz2 = 0, nz3 = 0;                                                 \
        double mn0 = INFINITY, mn1 = INFINITY, mn2 = INFINITY, mn3 = INFINITY;                      \
        double mx0 = -INFINITY, mx1 = -INFINITY, mx2 = -INFINITY, mx3 = -INFINITY;                  \
        PREFETCH_FIRST_RUNS();                                                                      \
        for (int64_t r = 0; r < blocks; r++) {                                                      \
            const CTYPE *p = base + r * stride;                                                     \
            PREFETCH_RUN_AHEAD(r, p);                                                               \
            int64_t i = 0;                                                                          \
            for (; i + LANES <= block; i += LANES) {                                                \
                TAKE(0, LOAD(p[i]), SLOT);                                                          \
                TAKE(1, LOAD(p[i + 1]), SLOT);                                                      \
                TAKE(2, LOAD(p[i + 2]), SLOT);                                                      \
                TAKE(3, LOAD(p[i + 3]), SLOT);                                                      \
            }                                                                                       \
            for (; i < block; i++) TAKE(0, LOAD(p[i]), SLOT);                                       \
        }                                                                                           \
        a->sum = (sum0 + sum1) + (sum2 + sum3);                                                     \
        a->sq = (sq0 + sq1) + (sq2 + sq3);                                                          \
        a->nz = nz0 + nz1 + nz2 + nz3;                                                              \
        mn0 = mn1 < mn0 ? mn1 : mn0; mn2 = mn3 < mn2 ? mn3 : mn2; a->mn = mn2 < mn0 ? mn2 : mn0;    \
        mx0 = mx1 > mx0 ? mx1 : mx0; mx2 = mx3 > mx2 ? mx3 : mx2; a->mx = mx2 > mx0 ? mx2 : mx0;    \
    }

/* The first pass of an auto grid: finite min and max (mn > mx: nothing finite). */
#define DEFINE_MINMAX(NAME, CTYPE, LOAD)                                                            \
    static void NAME(const void *data, int64_t block, int64_t blocks, int64_t stride,              \
                     double *mn_out, double *mx_out) {                                              \
        const CTYPE *base = (const CTYPE *)data;                                                    \
        double mn0 = INFINITY, mn1 = INFINITY, mx0 = -INFINITY, mx1 = -INFINITY;                    \
        PREFETCH_FIRST_RUNS();                                                                      \
        for (int64_t r = 0; r < blocks; r++) {                                                      \
            const CTYPE *p = base + r * stride;                                                     \
            PREFETCH_RUN_AHEAD(r, p);                                                               \
            int64_t i = 0;                                                                          \
            for (; i + 2 <= block; i += 2) {                                                        \
                const double x0 = LOAD(p[i]), x1 = LOAD(p[i + 1]);                                  \
                const int f0 = x0 - x0 == 0, f1 = x1 - x1 == 0;                                     \
                mn0 = f0 && x0 < mn0 ? x0 : mn0; mx0 = f0 && x0 > mx0 ? x0 : mx0;                   \
                mn1 = f1 && x1 < mn1 ? x1 : mn1; mx1 = f1 && x1 > mx1 ? x1 : mx1;                   \
            }                                                                                       \
            for (; i < block; i++) {                                                                \
                const double x0 = LOAD(p[i]);                                                       \
                const int f0 = x0 - x0 == 0;                                                        \
                mn0 = f0 && x0 < mn0 ? x0 : mn0; mx0 = f0 && x0 > mx0 ? x0 : mx0;                   \
            }                                                                                       \
        }                                                                                           \
        *mn_out = mn1 < mn0 ? mn1 : mn0;                                                            \
        *mx_out = mx1 > mx0 ? mx1 : mx0;                                                            \
    }

#if defined(__SSE2__)
#include <emmintrin.h>
/* SSE2 (every x86-64): the stats (in float64) and the first pass's min/max four elements at
   a time; the slot of each element and the counter increments stay scalar, lane by lane into
   the LANES histograms (the same slot functions as the portable path). */
#define LOADV_f32(p, i) _mm_loadu_ps((p) + (i))
#define LOADV_bf16(p, i) \
    _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64((const __m128i *)((p) + (i)))))
#define LOADV_f16(p, i) \
    _mm_set_ps(f16_table[(p)[(i) + 3]], f16_table[(p)[(i) + 2]], f16_table[(p)[(i) + 1]], f16_table[(p)[i]])
/* four elements as two float64 pairs */
#define LOAD2_f32(p, i, lo, hi) do { const __m128 x_ = LOADV_f32(p, i); lo = _mm_cvtps_pd(x_); hi = _mm_cvtps_pd(_mm_movehl_ps(x_, x_)); } while (0)
#define LOAD2_bf16(p, i, lo, hi) do { const __m128 x_ = LOADV_bf16(p, i); lo = _mm_cvtps_pd(x_); hi = _mm_cvtps_pd(_mm_movehl_ps(x_, x_)); } while (0)
#define LOAD2_f16(p, i, lo, hi) do { const __m128 x_ = LOADV_f16(p, i); lo = _mm_cvtps_pd(x_); hi = _mm_cvtps_pd(_mm_movehl_ps(x_, x_)); } while (0)
#define LOAD2_f64(p, i, lo, hi) do { lo = _mm_loadu_pd((p) + (i)); hi = _mm_loadu_pd((p) + (i) + 2); } while (0)

#define DEFINE_SPAN_SSE(NAME, CTYPE, LOAD2, LOAD, SLOT)                                             \
    static void NAME(acc_t *a, const void *data, int64_t block, int64_t blocks, int64_t stride) {   \
        const CTYPE *base = (const CTYPE *)data;                                                    \
        int64_t *restrict h[LANES];                                                                 \
        for (int l = 0; l < LANES; l++) h[l] = a->hist + l * a->stride;                             \
        const __m128d zero = _mm_setzero_pd();                                                      \
        __m128d s_lo = zero, s_hi = zero, q_lo = zero, q_hi = zero;                                 \
        __m128d mn = _mm_set1_pd(INFINITY), mx = _mm_set1_pd(-INFINITY);                            \
        __m128i nz = _mm_setzero_si128();                                                           \
        double sum_t = 0, sq_t = 0, mn_t = INFINITY, mx_t = -INFINITY;                              \
        int64_t nz_t = 0;                                                                           \
        double xs[4];                                                                               \
        PREFETCH_FIRST_RUNS();                                                                      \
        for (int64_t r = 0; r < blocks; r++) {                                                      \
            const CTYPE *p = base + r * stride;                                                     \
            PREFETCH_RUN_AHEAD(r, p);                                                               \
            int64_t i = 0;                                                                          \
            for (; i + 4 <= block; i += 4) {                                                        \
                __m128d x_lo, x_hi;                                                                 \
                LOAD2(p, i, x_lo, x_hi);                                                            \
                s_lo = _mm_add_pd(s_lo, x_lo);                                                      \
                s_hi = _mm_add_pd(s_hi, x_hi);                                                      \
                q_lo = _mm_add_pd(q_lo, _mm_mul_pd(x_lo, x_lo));                                    \
                q_hi = _mm_add_pd(q_hi, _mm_mul_pd(x_hi, x_hi));                                    \
                mn = _mm_min_pd(x_lo, _mm_min_pd(x_hi, mn)); /* NaN keeps mn: it shows in sq */     \
                mx = _mm_max_pd(x_lo, _mm_max_pd(x_hi, mx));                                        \
                nz = _mm_sub_epi64(nz, _mm_castpd_si128(_mm_cmpneq_pd(x_lo, zero)));                \
                nz = _mm_sub_epi64(nz, _mm_castpd_si128(_mm_cmpneq_pd(x_hi, zero)));                \
                _mm_storeu_pd(xs, x_lo);                                                            \
                _mm_storeu_pd(xs + 2, x_hi);                                                        \
                h[0][SLOT(a, xs[0])]++;                                                             \
                h[1][SLOT(a, xs[1])]++;                                                             \
                h[2][SLOT(a, xs[2])]++;                                                             \
                h[3][SLOT(a, xs[3])]++;                                                             \
            }                                                                                       \
            for (; i < block; i++) {                                                                \
                const double v = LOAD(p[i]);                                                        \
                h[0][SLOT(a, v)]++;                                                                 \
                sum_t += v;                                                                         \
                sq_t += v * v;                                                                      \
                nz_t += v != 0.0;                                                                   \
                mn_t = v < mn_t ? v : mn_t;                                                         \
                mx_t = v > mx_t ? v : mx_t;                                                         \
            }                                                                                       \
        }                                                                                           \
        double d[2], f[2], m2[2], x2[2];                                                            \
        int64_t c[2];                                                                               \
        _mm_storeu_pd(d, _mm_add_pd(s_lo, s_hi));                                                   \
        _mm_storeu_pd(f, _mm_add_pd(q_lo, q_hi));                                                   \
        _mm_storeu_si128((__m128i *)c, nz);                                                         \
        _mm_storeu_pd(m2, mn);                                                                      \
        _mm_storeu_pd(x2, mx);                                                                      \
        a->sum = d[0] + d[1] + sum_t;                                                               \
        a->sq = f[0] + f[1] + sq_t;                                                                 \
        a->nz = c[0] + c[1] + nz_t;                                                                 \
        a->mn = mn_t;                                                                               \
        a->mx = mx_t;                                                                               \
        for (int l = 0; l < 2; l++) {                                                               \
            a->mn = m2[l] < a->mn ? m2[l] : a->mn;                                                  \
            a->mx = x2[l] > a->mx ? x2[l] : a->mx;                                                  \
        }                                                                                           \
    }

/* finite min/max, four float32 (or two float64) lanes: non-finite lanes are replaced by +-inf */
#define DEFINE_MINMAX_SSE(NAME, CTYPE, LOADV, LOAD)                                                 \
    static void NAME(const void *data, int64_t block, int64_t blocks, int64_t stride,              \
                     double *mn_out, double *mx_out) {                                              \
        const CTYPE *base = (const CTYPE *)data;                                                    \
        const __m128 inf = _mm_set1_ps(INFINITY), ninf = _mm_set1_ps(-INFINITY);                    \
        const __m128 absmask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));                         \
        __m128 mn = inf, mx = ninf;                                                                 \
        double mn_t = INFINITY, mx_t = -INFINITY;                                                   \
        PREFETCH_FIRST_RUNS();                                                                      \
        for (int64_t r = 0; r < blocks; r++) {                                                      \
            const CTYPE *p = base + r * stride;                                                     \
            PREFETCH_RUN_AHEAD(r, p);                                                               \
            int64_t i = 0;                                                                          \
            for (; i + 4 <= block; i += 4) {                                                        \
                const __m128 x = LOADV(p, i);                                                       \
                const __m128 fin = _mm_cmplt_ps(_mm_and_ps(x, absmask), inf);                       \
                mn = _mm_min_ps(mn, _mm_or_ps(_mm_and_ps(fin, x), _mm_andnot_ps(fin, inf)));        \
                mx = _mm_max_ps(mx, _mm_or_ps(_mm_and_ps(fin, x), _mm_andnot_ps(fin, ninf)));       \
            }                                                                                       \
            for (; i < block; i++) {                                                                \
                const double x0 = LOAD(p[i]);                                                       \
                const int f0 = x0 - x0 == 0;                                                        \
                mn_t = f0 && x0 < mn_t ? x0 : mn_t; mx_t = f0 && x0 > mx_t ? x0 : mx_t;             \
            }                                                                                       \
        }                                                                                           \
        float m4[4], x4[4];                                                                         \
        _mm_storeu_ps(m4, mn);                                                                      \
        _mm_storeu_ps(x4, mx);                                                                      \
        for (int l = 0; l < 4; l++) {                                                               \
            mn_t = m4[l] < mn_t ? m4[l] : mn_t;                                                     \
            mx_t = x4[l] > mx_t ? x4[l] : mx_t;                                                     \
        }                                                                                           \
        *mn_out = mn_t;                                                                             \
        *mx_out = mx_t;                                                                             \
    }

static void minmax_f64_sse(const void *data, int64_t block, int64_t blocks, int64_t stride, double *mn_out,
                           double *mx_out) {
    const double *base = (const double *)data;
    const __m128d inf = _mm_set1_pd(INFINITY), ninf = _mm_set1_pd(-INFINITY);
    const __m128d absmask = _mm_castsi128_pd(_mm_set1_epi64x(0x7fffffffffffffffLL));
    __m128d mn = inf, mx = ninf;
    double mn_t = INFINITY, mx_t = -INFINITY;
    PREFETCH_FIRST_RUNS();
    for (int64_t r = 0; r < blocks; r++) {
        const double *p = base + r * stride;
        PREFETCH_RUN_AHEAD(r, p);
        int64_t i = 0;
        for (; i + 2 <= block; i += 2) {
            const __m128d x = _mm_loadu_pd(p + i);
            const __m128d fin = _mm_cmplt_pd(_mm_and_pd(x, absmask), inf);
            mn = _mm_min_pd(mn, _mm_or_pd(_mm_and_pd(fin, x), _mm_andnot_pd(fin, inf)));
            mx = _mm_max_pd(mx, _mm_or_pd(_mm_and_pd(fin, x), _mm_andnot_pd(fin, ninf)));
        }
        for (; i < block; i++) {
            const double x0 = p[i];
            const int f0 = x0 - x0 == 0;
            mn_t = f0 && x0 < mn_t ? x0 : mn_t;
            mx_t = f0 && x0 > mx_t ? x0 : mx_t;
        }
    }
    double m2[2], x2[2];
    _mm_storeu_pd(m2, mn);
    _mm_storeu_pd(x2, mx);
    for (int l = 0; l < 2; l++) {
        mn_t = m2[l] < mn_t ? m2[l] : mn_t;
        mx_t = x2[l] > mx_t ? x2[l] : mx_t;
    }
    *mn_out = mn_t;
    *mx_out = mx_t;
}
#endif

typedef void (*span_fn)(acc_t *, const void *, int64_t, int64_t, int64_t);
typedef void (*minmax_fn)(const void *, int64_t, int64_t, int64_t, double *, double *);

/* the portable path, and the SSE2 one where the compiler targets it; tests run both (simd()) */
DEFINE_SPAN(span_f32_fixed, float, load_f32, slot_fixed)
DEFINE_SPAN(span_f16_fixed, uint16_t, load_f16, slot_fixed)
DEFINE_SPAN(span_bf16_fixed, uint16_t, load_bf16, slot_fixed)
DEFINE_SPAN(span_f64_fixed, double, load_f64, slot_fixed)
DEFINE_SPAN(span_f32_auto, float, load_f32, slot_auto)
DEFINE_SPAN(span_f16_auto, uint16_t, load_f16, slot_auto)
DEFINE_SPAN(span_bf16_auto, uint16_t, load_bf16, slot_auto)
DEFINE_SPAN(span_f64_auto, double, load_f64, slot_auto)
DEFINE_MINMAX(minmax_f32, float, load_f32)
DEFINE_MINMAX(minmax_f16, uint16_t, load_f16)
DEFINE_MINMAX(minmax_bf16, uint16_t, load_bf16)
DEFINE_MINMAX(minmax_f64, double, load_f64)
static const span_fn scalar_spans[2][4] = {{span_f32_fixed, span_f16_fixed, span_bf16_fixed, span_f64_fixed},
                                           {span_f32_auto, span_f16_auto, span_bf16_auto, span_f64_auto}};
static const minmax_fn scalar_minmax[4] = {minmax_f32, minmax_f16, minmax_bf16, minmax_f64};
#if defined(__SSE2__)
DEFINE_SPAN_SSE(span_f32_fixed_sse, float, LOAD2_f32, load_f32, slot_fixed)
DEFINE_SPAN_SSE(span_f16_fixed_sse, uint16_t, LOAD2_f16, load_f16, slot_fixed)
DEFINE_SPAN_SSE(span_bf16_fixed_sse, uint16_t, LOAD2_bf16, load_bf16, slot_fixed)
DEFINE_SPAN_SSE(span_f64_fixed_sse, double, LOAD2_f64, load_f64, slot_fixed)
DEFINE_SPAN_SSE(span_f32_auto_sse, float, LOAD2_f32, load_f32, slot_auto)
DEFINE_SPAN_SSE(span_f16_auto_sse, uint16_t, LOAD2_f16, load_f16, slot_auto)
DEFINE_SPAN_SSE(span_bf16_auto_sse, uint16_t, LOAD2_bf16, load_bf16, slot_auto)
DEFINE_SPAN_SSE(span_f64_auto_sse, double, LOAD2_f64, load_f64, slot_auto)
DEFINE_MINMAX_SSE(minmax_f32_sse, float, LOADV_f32, load_f32)
DEFINE_MINMAX_SSE(minmax_f16_sse, uint16_t, LOADV_f16, load_f16)
DEFINE_MINMAX_SSE(minmax_bf16_sse, uint16_t, LOADV_bf16, load_bf16)
static const span_fn simd_spans[2][4] = {
    {span_f32_fixed_sse, span_f16_fixed_sse, span_bf16_fixed_sse, span_f64_fixed_sse},
    {span_f32_auto_sse, span_f16_auto_sse, span_bf16_auto_sse, span_f64_auto_sse}};
static const minmax_fn simd_minmax[4] = {minmax_f32_sse, minmax_f16_sse, minmax_bf16_sse, minmax_f64_sse};
static int use_simd = 1;
#else
#define simd_spans scalar_spans
#define simd_minmax scalar_minmax
static int use_simd = 0;
#endif

/*
 * observe(data, dtype, n, stride, blocks, block, edges, grid, bins, counts, sums, peaks)
 *   blocks == 0: read n contiguous elements from data;
 *   otherwise:   read `blocks` runs of `block` elements starting at data + i * stride.
 * Addresses are ints (tensor.data_ptr()). edges != 0: a fixed grid, float64[bins + 1];
 * otherwise grid: the row's auto grid, float64[2] (e, o; e NaN = unset), updated in place.
 * counts, sums and peaks are float64 rows of bins + 3, 5 and 2.
 */
static PyObject *observe(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 12) {
        PyErr_SetString(PyExc_TypeError, "observe() takes 12 arguments");
        return NULL;
    }
    long long v[12];
    for (int i = 0; i < 12; i++) {
        v[i] = PyLong_AsLongLong(args[i]);
        if (v[i] == -1 && PyErr_Occurred()) return NULL;
    }
    const void *data = (const void *)(uintptr_t)v[0];
    int dtype = (int)v[1];
    int64_t n = v[2], stride = v[3], blocks = v[4], block = v[5];
    const double *edges = (const double *)(uintptr_t)v[6];
    double *grid = (double *)(uintptr_t)v[7];
    int bins = (int)v[8];
    double *counts = (double *)(uintptr_t)v[9], *sums = (double *)(uintptr_t)v[10], *peaks = (double *)(uintptr_t)v[11];
    int fixed = edges != NULL;
    if (!(dtype >= F32 && dtype <= F64) || bins < 1 || (!fixed && (!grid || bins < 2)) || n < 0 || blocks < 0 ||
        (blocks && (block < 1 || stride < block))) {
        PyErr_SetString(PyExc_ValueError, "observe(): bad dtype, bins, grid or sampling plan");
        return NULL;
    }
    span_fn span = (use_simd ? simd_spans : scalar_spans)[!fixed][dtype];
    acc_t a;
    memset(&a, 0, sizeof a);
    a.bins = bins;
    a.stride = bins + 3;
    a.hist = (int64_t *)calloc((size_t)LANES * (size_t)a.stride + (fixed ? (size_t)bins + 1 : 0), sizeof(int64_t));
    if (!a.hist) return PyErr_NoMemory();
    if (fixed) {
        a.edges = edges;
        a.lo = edges[0];
        a.hi = edges[bins];
        a.scale = (double)bins / (a.hi - a.lo);
        /* rounding in (x - lo) * scale and in numpy's edges is a few float64 ulps of the
           largest |edge|, in bins; with a wide margin below one bin the guess is at most
           one bin off, otherwise search the edges */
        double big = fabs(a.lo) > fabs(a.hi) ? fabs(a.lo) : fabs(a.hi);
        a.coarse = !(((big * a.scale + bins) * ldexp(1.0, -46)) < 0.25) || !isfinite(a.scale);
        double *fix = (double *)(a.hist + LANES * a.stride);
        memcpy(fix, edges, (size_t)bins * sizeof(double));
        fix[bins] = INFINITY;
        a.fix = fix;
    }
    int64_t total = blocks ? blocks * block : n;
    if (total > 0) {
        Py_BEGIN_ALLOW_THREADS
        if (!fixed) {
            double mn, mx;
            minmax_fn mm = (use_simd ? simd_minmax : scalar_minmax)[dtype];
            if (blocks) mm(data, block, blocks, stride, &mn, &mx);
            else mm(data, n, 1, 0, &mn, &mx);
            if (mn <= mx) coarsen_row(grid, counts, bins, mn, mx);
            if (isnan(grid[0])) { /* nothing finite yet: every element goes to nonfinite */
                a.gscale = 1.0;
                a.go = 0;
            } else {
                a.gscale = ldexp(1.0, -(int)grid[0]);
                a.go = (int64_t)grid[1];
            }
        }
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

/* grid(mn, mx, bins): the grid `choose` gives (tests compare it with twinpeaks.grids.choose) */
static PyObject *grid_of(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "grid() takes 3 arguments");
        return NULL;
    }
    double mn = PyFloat_AsDouble(args[0]), mx = PyFloat_AsDouble(args[1]);
    long bins = PyLong_AsLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (!(isfinite(mn) && isfinite(mx) && mn <= mx && bins >= 2)) {
        PyErr_SetString(PyExc_ValueError, "grid(): needs finite mn <= mx and bins >= 2");
        return NULL;
    }
    int64_t e, o;
    choose(mn, mx, (int)bins, &e, &o);
    return Py_BuildValue("(LL)", (long long)e, (long long)o);
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
     "observe(data, dtype, n, stride, blocks, block, edges, grid, bins, counts, sums, peaks): bin into a step row."},
    {"grid", (PyCFunction)(void (*)(void))grid_of, METH_FASTCALL, "grid(mn, mx, bins): the auto grid (e, o) of [mn, mx]."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cbin", "twinpeaks' CPU binning kernel.", -1, methods};

PyMODINIT_FUNC PyInit__cbin(void) {
    for (uint32_t h = 0; h < 65536; h++) f16_table[h] = half_to_float((uint16_t)h);
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "ABI", 2) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
