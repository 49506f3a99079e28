# mypy: ignore-errors
"""Triton kernels of the fused device binning; the launcher and the contract are in :mod:`twinpeaks._triton`.

This module imports triton at the top: only :mod:`twinpeaks._triton` imports it, lazily. Under
``TRITON_INTERPRET=1`` (set before triton is imported) the kernels run on CPU tensors in Triton's
interpreter; that is how the tests check them.

Everything is computed in float64 (fp32/fp16/bf16 values convert exactly), so every comparison with an
edge and every ``floor(x / 2**e)`` is exact:

* auto grids: ``floor(x * 2**-e)`` with ``2**-e`` built from its bits in two factors (each a normal
  float64); a product can only lose bits by underflow, to a signed zero, which is fixed (``x < 0``
  always floors to ``<= -1``);
* fixed ranges: a linear guess, corrected twice against the float64 edges (``edges[i] <= x < edges[i+1]``,
  the last bin closed), or a binary search over the edges when the launcher finds the guess unsafe.
"""

import triton
import triton.language as tl

# globals inside @triton.jit code must be constexpr
INF = tl.constexpr(float("inf"))
NAN = tl.constexpr(float("nan"))


@triton.jit
def _pow2(k):
    """2**k as float64 for integers k in [-1022, 1023] (scalar or tensor), exactly, from its bits."""
    return ((tl.cast(k, tl.int64) + 1023) << 52).to(tl.float64, bitcast=True)


@triton.jit
def _scales(e):
    """Two float64 factors whose product is 2**-e (|e| <= 2044), each a normal number."""
    ne = -e.to(tl.int64)
    a = ne >> 1
    return _pow2(a), _pow2(ne - a)


@triton.jit
def _floor_scaled(x, s1, s2):
    """floor(x * s1 * s2) for float64 x and power-of-two factors: exact (underflow to -0.0 fixed)."""
    q = tl.floor((x * s1) * s2)
    return tl.where(x < 0, tl.minimum(q, -1.0), q)


@triton.jit
def _ilogb(y):
    """floor(log2(y)) of a positive float64 (scalar or tensor), from its exponent bits (subnormals scaled up)."""
    small = y < _pow2(-1022)  # float64 constants from bits: a float literal here may be taken as float32
    z = tl.where(small, y * _pow2(64), y)
    return ((z.to(tl.int64, bitcast=True) >> 52) & 2047) - 1023 - tl.where(small, 64, 0)


@triton.jit
def _fit_e(mn, mx, B: tl.constexpr, LOG2B: tl.constexpr):
    """The smallest ``e >= max(-1022, floor(log2(max|x|)) - 40)`` over which [mn, mx] fits in B bins
    (``grids.fit_e``; int64 scalar). Fitting is monotone in ``e``: 64 candidates from a lower bound at once."""
    big = tl.maximum(tl.abs(mn), tl.abs(mx))
    lo = tl.maximum(tl.where(big > 0, _ilogb(tl.where(big > 0, big, 1.0)) - 40, -1022), -1022)
    half = mx * 0.5 - mn * 0.5
    # a fitting e has 2**e >= span / B: e >= ilogb(span) - ceil(log2 B); the smallest is a few above (B >= 2)
    e_lo = _ilogb(tl.where(half > 0, half, 1.0)) - LOG2B
    cands = e_lo + tl.arange(0, 64).to(tl.int64)
    s1, s2 = _scales(cands)
    fit = (_floor_scaled(mx, s1, s2) - _floor_scaled(mn, s1, s2)) <= B - 1
    e_fit = tl.min(tl.where(fit, cands, e_lo + 63), 0)
    return tl.where(half > 0, tl.maximum(e_fit, lo), lo)


@triton.jit
def _choose(mn, mx, B: tl.constexpr, LOG2B: tl.constexpr):
    """The grid ``(e, o)`` (int64 scalars) of finite values in [mn, mx] (``grids.choose``): ``e`` from
    :func:`_fit_e`; one value: width about ``|mn| / B``, centred (``e = -6`` for 0)."""
    same = mn == mx
    big = tl.abs(mn)
    e_one = tl.where(mn == 0, -6, tl.maximum(_ilogb(tl.where(big > 0, big, 1.0)) - LOG2B, -1022))
    e = tl.where(same, e_one, _fit_e(mn, mx, B, LOG2B))
    t1, t2 = _scales(e)
    o = _floor_scaled(mn, t1, t2).to(tl.int64) - tl.where(same, B // 2, 0)
    return e, o


@triton.jit
def _coarsen(e_raw, o_raw, counts, mn, mx, has, B: tl.constexpr, BP: tl.constexpr, LOG2B: tl.constexpr):
    """A row's grid after a call with finite min ``mn`` and max ``mx`` (``grids.coarsen``; docs/grids.md).

    ``e_raw, o_raw``: the row's grid (``e`` NaN: unset); ``counts``: its slot row (the occupied bins);
    ``has``: whether the call holds a finite value. Returns the row's grid as int64 ``(e, o)`` (0, 0 while
    unset), the new grid, and whether the counts move (set, occupied and changed).
    """
    unset = e_raw != e_raw
    e_r = tl.where(unset, 0.0, e_raw).to(tl.int64)
    o_r = tl.where(unset, 0.0, o_raw).to(tl.int64)
    j = tl.arange(0, BP)
    occ = tl.load(counts + 1 + j, mask=j < B, other=0) != 0
    first = tl.min(tl.where(occ, j, B), 0)
    last = tl.max(tl.where(occ, j, -1), 0)
    fresh = unset | (last < 0)
    r1, r2 = _scales(-e_r)  # 2**e_r
    inside = (mn >= (o_r.to(tl.float64) * r1) * r2) & (mx < ((o_r + B).to(tl.float64) * r1) * r2)
    amin = tl.minimum(((o_r + first).to(tl.float64) * r1) * r2, mn)
    amax = tl.maximum(((o_r + last).to(tl.float64) * r1) * r2, mx)
    ce, co = _choose(mn, mx, B, LOG2B)
    e2 = tl.maximum(tl.maximum(e_r, ce), _fit_e(amin, amax, B, LOG2B))
    u1, u2 = _scales(e2)
    o2 = _floor_scaled(amin, u1, u2).to(tl.int64)
    e_new = tl.where(~has, e_r, tl.where(fresh, ce, tl.where(inside, e_r, e2)))
    o_new = tl.where(~has, o_r, tl.where(fresh, co, tl.where(inside, o_r, o2)))
    moved = ~fresh & ((e_new != e_r) | (o_new != o_r))
    return e_r, o_r, e_new, o_new, moved


@triton.jit
def _load(x_ptr, k, m, offset, stride, SAMPLED: tl.constexpr, SB: tl.constexpr, BF16: tl.constexpr):
    """Values at logical indices ``k`` (int64) as float64: dense from ``offset``, or blocks of SB, stride apart.

    ``BF16``: ``x_ptr`` holds bfloat16 bits as int16, widened by hand (exact, subnormals included).
    """
    if SAMPLED:
        addr = offset + (k // SB) * stride + (k % SB)
    else:
        addr = offset + k
    if BF16:
        bits = tl.load(x_ptr + addr, mask=m, other=0).to(tl.int32) & 65535
        return (bits << 16).to(tl.float32, bitcast=True).to(tl.float64)
    return tl.load(x_ptr + addr, mask=m, other=0.0).to(tl.float64)


@triton.jit
def _chunk_stats(x, m):
    """Of the values ``x`` where ``m``: finite min and max, min and max of the non-NaN values, the number of
    NaNs, sum, sum of squares and non-zeros (NaN propagates into the sums, as on CPU)."""
    fin = m & (tl.abs(x) < INF)
    num = m & (x == x)
    return (tl.min(tl.where(fin, x, INF), 0), tl.max(tl.where(fin, x, -INF), 0),
            tl.min(tl.where(num, x, INF), 0), tl.max(tl.where(num, x, -INF), 0),
            tl.sum((m & (x != x)).to(tl.int64), 0), tl.sum(tl.where(m, x, 0.0), 0),
            tl.sum(tl.where(m, x * x, 0.0), 0), tl.sum((m & (x != 0)).to(tl.int64), 0))


@triton.jit
def _stats(x_ptr, start, end, offset, stride, SAMPLED: tl.constexpr, SB: tl.constexpr, BF16: tl.constexpr,
           BLOCK: tl.constexpr):
    """:func:`_chunk_stats` of the values at logical indices [start, end), a chunk at a time."""
    fmin = tl.full([], INF, tl.float64)
    fmax = tl.full([], -INF, tl.float64)
    amin = tl.full([], INF, tl.float64)
    amax = tl.full([], -INF, tl.float64)
    s = tl.zeros([], tl.float64)
    q = tl.zeros([], tl.float64)
    nz = tl.zeros([], tl.int64)
    nan = tl.zeros([], tl.int64)
    for i in range(start, end, BLOCK):
        k = tl.arange(0, BLOCK).to(tl.int64) + i
        m = k < end
        x = _load(x_ptr, k, m, offset, stride, SAMPLED, SB, BF16)
        c0, c1, c2, c3, c4, c5, c6, c7 = _chunk_stats(x, m)
        fmin = tl.minimum(fmin, c0)
        fmax = tl.maximum(fmax, c1)
        amin = tl.minimum(amin, c2)
        amax = tl.maximum(amax, c3)
        nan += c4
        s += c5
        q += c6
        nz += c7
    return fmin, fmax, amin, amax, nan, s, q, nz


@triton.jit
def _regrid_row(src, dst, d, o_old, o_new, B: tl.constexpr, SP: tl.constexpr, BP: tl.constexpr,
                ATOMIC: tl.constexpr):
    """Move one slot row's bins from grid (e, o_old) to (e + d, o_new): old bin i -> floor((o_old + i) / 2**d) - o_new.

    New bin j gathers old bins [(o_new + j) * 2**d - o_old, (o_new + j + 1) * 2**d - o_old): a difference of the
    old row's cumulative counts. In place (src == dst) or, ATOMIC, added into dst together with the row's other
    three slots (under, over, nonfinite), which a grid change does not move.
    """
    j = tl.arange(0, BP)
    v = tl.load(src + 1 + j, mask=j < B, other=0)
    cum = tl.cumsum(v, 0)
    w = _pow2(tl.minimum(d, 1023))
    hi = tl.minimum(tl.maximum((o_new + j + 1).to(tl.float64) * w - o_old - 1, -1.0), B - 1.0).to(tl.int32)
    lo = tl.minimum(tl.maximum((o_new + j).to(tl.float64) * w - o_old - 1, -1.0), B - 1.0).to(tl.int32)
    c_hi = tl.where(hi >= 0, tl.gather(cum, tl.maximum(hi, 0), 0), 0)
    c_lo = tl.where(lo >= 0, tl.gather(cum, tl.maximum(lo, 0), 0), 0)
    new = (c_hi - c_lo).to(dst.dtype.element_ty)
    if ATOMIC:
        tl.atomic_add(dst + 1 + j, new, mask=j < B)
        other = (j == 0) | (j == B + 1) | (j == B + 2)
        tl.atomic_add(dst + j, tl.load(src + j, mask=other, other=0).to(dst.dtype.element_ty), mask=other)
    else:
        tl.store(dst + 1 + j, new, mask=j < B)


@triton.jit
def _slot(x, s1, s2, o, lo, hi, norm, edges_ptr, B: tl.constexpr, AUTO: tl.constexpr, SEARCH: tl.constexpr,
          LOG2B: tl.constexpr):
    """Slot (int32) of float64 values: 0 underflow, 1..B the bins, B+1 overflow, B+2 NaN and +-inf."""
    fin = tl.abs(x) < INF
    xs = tl.where(fin, x, 0.0)
    if AUTO:
        b = tl.minimum(tl.maximum(_floor_scaled(xs, s1, s2) - o.to(tl.float64), -1.0), B * 1.0)
        slot = b.to(tl.int32) + 1
    else:
        under = xs < lo
        over = xs > hi
        if SEARCH:  # the largest g with edges[g] <= x
            g_lo = tl.zeros(xs.shape, tl.int32)
            g_hi = tl.full(xs.shape, B - 1, tl.int32)
            for _ in tl.static_range(LOG2B + 1):
                mid = (g_lo + g_hi + 1) // 2
                le = tl.load(edges_ptr + mid) <= xs
                g_lo = tl.where(le, mid, g_lo)
                g_hi = tl.where(le, g_hi, mid - 1)
            g = g_lo
        else:  # numpy's guess, corrected twice: exact when it is at most two bins off (the launcher checks)
            g = tl.minimum(tl.maximum(tl.floor((xs - lo) * norm), 0.0), B - 1.0).to(tl.int32)
            for _ in tl.static_range(2):
                g = tl.maximum(g - (xs < tl.load(edges_ptr + g)).to(tl.int32), 0)
                g = g + ((xs >= tl.load(edges_ptr + g + 1)) & (g < B - 1)).to(tl.int32)
        slot = tl.where(under, 0, tl.where(over, B + 1, g + 1))
    return tl.where(fin, slot, B + 2)


@triton.jit
def _bin_chunk(x, k, m, acc, tacc, s1, s2, o, lo, hi, norm, edges_ptr, cls_ptr, y_ptr, cols,
               B: tl.constexpr, SP: tl.constexpr, BP: tl.constexpr, BP2: tl.constexpr, LOG2B: tl.constexpr,
               AUTO: tl.constexpr, SEARCH: tl.constexpr, MAIN: tl.constexpr, BIN_TRUTH: tl.constexpr,
               BIN_CLS: tl.constexpr, YMODE: tl.constexpr):
    """Slots of a chunk of values (logical indices ``k``, valid where ``m``): added to the main histogram
    ``acc`` and the YES/NO histogram ``tacc`` (returned), and atomically to the per-class rows."""
    slot = _slot(x, s1, s2, o, lo, hi, norm, edges_ptr, B, AUTO, SEARCH, LOG2B)
    if MAIN:
        acc += tl.histogram(slot, BP, mask=m).to(tl.int64)
    if BIN_TRUTH or BIN_CLS:
        c = k % cols
        if BIN_TRUTH:
            if YMODE == 1:
                yv = tl.load(y_ptr + k // cols, mask=m, other=0).to(tl.int64)
                yes = c == tl.minimum(tl.maximum(yv, 0), cols - 1)
            else:
                yes = tl.load(y_ptr + k, mask=m, other=0).to(tl.float32) > 0.5
            tacc += tl.histogram(slot + tl.where(yes, 0, SP), BP2, mask=m).to(tl.int64)
        if BIN_CLS:
            tl.atomic_add(cls_ptr + c * SP + slot, tl.full(slot.shape, 1, cls_ptr.dtype.element_ty), mask=m)
    return acc, tacc


@triton.jit
def _move_rows(src, dst, nrows, SP: tl.constexpr, BP: tl.constexpr):
    """Copy ``nrows`` slot rows to float64 ``dst`` and zero them (the large-call snapshot)."""
    j = tl.arange(0, BP)
    for r in range(nrows):
        v = tl.load(src + r * SP + j, mask=j < SP, other=0)
        tl.store(dst + r * SP + j, v.to(tl.float64), mask=j < SP)
        tl.store(src + r * SP + j, tl.zeros([BP], src.dtype.element_ty), mask=j < SP)


# Lengths, offsets and row addresses change from call to call: compiling a variant for each value that
# happens to be 1 or a multiple of 16 (triton's default) would recompile during training.
@triton.jit(do_not_specialize=["n_bin", "offset", "stride", "per_prog", "counts_ptr", "grid_ptr", "xgrid_ptr",
                               "truth_ptr", "cls_ptr", "n_truth", "n_cls", "row"])
def reduce_kernel(x_ptr, n_bin, offset, stride, per_prog, part_ptr,
                  counts_ptr, grid_ptr, xgrid_ptr, truth_ptr, cls_ptr, snap_ptr, n_truth, n_cls, row,
                  SP: tl.constexpr, BP: tl.constexpr, AUTO: tl.constexpr, SAMPLED: tl.constexpr,
                  SB: tl.constexpr, BF16: tl.constexpr, MAIN: tl.constexpr, XTRA: tl.constexpr,
                  BLOCK: tl.constexpr):
    """First launch of a large call: per-program partial statistics (8 float64 each) into ``part_ptr``.

    With an auto grid, program 0 also moves the row's grids and the slot rows the call regrids (the main
    row when ``MAIN``, the YES/NO and class rows when ``XTRA``) to ``snap_ptr`` (``[grid 2, extras' grid 2,
    main B + 3, YES/NO 2 (B + 3), classes C (B + 3)]``), zeroed: the binning launch adds them back regridded
    while its other programs add the call's counts.
    """
    pid = tl.program_id(0)
    start = pid * per_prog
    end = tl.minimum(start + per_prog, n_bin)
    fmin, fmax, amin, amax, nan, s, q, nz = _stats(x_ptr, start, end, offset, stride, SAMPLED, SB, BF16, BLOCK)
    p = part_ptr + pid * 8
    tl.store(p + 0, fmin)
    tl.store(p + 1, fmax)
    tl.store(p + 2, amin)
    tl.store(p + 3, amax)
    tl.store(p + 4, nan.to(tl.float64))
    tl.store(p + 5, s)
    tl.store(p + 6, q)
    tl.store(p + 7, nz.to(tl.float64))
    if AUTO:
        if pid == 0:
            r64 = row.to(tl.int64)  # step row ``row`` of each buffer
            g = tl.arange(0, 2)
            tl.store(snap_ptr + g, tl.load(grid_ptr + r64 * 2 + g))
            if XTRA:
                tl.store(snap_ptr + 2 + g, tl.load(xgrid_ptr + r64 * 2 + g))
                _move_rows(truth_ptr + r64 * n_truth * SP, snap_ptr + 4 + SP, n_truth, SP, BP)
                _move_rows(cls_ptr + r64 * n_cls * SP, snap_ptr + 4 + SP * (1 + n_truth), n_cls, SP, BP)
            if MAIN:
                _move_rows(counts_ptr + r64 * SP, snap_ptr + 4, 1, SP, BP)


@triton.jit(do_not_specialize=["n_bin", "n_seen", "offset", "stride", "counts_ptr", "sums_ptr", "peaks_ptr",
                               "grid_ptr", "xgrid_ptr", "truth_ptr", "cls_ptr", "n_truth", "n_cls", "y_ptr", "cols",
                               "part_ptr", "n_parts", "per_prog", "snap_ptr", "row"])
def observe_kernel(x_ptr, n_bin, n_seen, offset, stride,
                   counts_ptr, sums_ptr, peaks_ptr, grid_ptr, xgrid_ptr, edges_ptr,
                   truth_ptr, cls_ptr, n_truth, n_cls, y_ptr, cols,
                   part_ptr, n_parts, per_prog, snap_ptr, row,
                   B: tl.constexpr, SP: tl.constexpr, BP: tl.constexpr, BP2: tl.constexpr, LOG2B: tl.constexpr,
                   AUTO: tl.constexpr, SEARCH: tl.constexpr, SAMPLED: tl.constexpr, SB: tl.constexpr,
                   BF16: tl.constexpr,
                   MAIN: tl.constexpr, BIN_TRUTH: tl.constexpr, BIN_CLS: tl.constexpr, YMODE: tl.constexpr,
                   MULTI: tl.constexpr, ONE: tl.constexpr, BLOCK: tl.constexpr, PBLOCK: tl.constexpr):
    """One call into a step row: statistics, grid (auto: coarsen, regrid), then the counts.

    Auto grids follow docs/grids.md as ``twinpeaks.grids`` and the torch path do: a ``MAIN`` call coarsens
    the row's grid (``grid_ptr``, ``[e, o]``, ``e`` NaN: unset) from the main row's occupied bins and the
    call's finite min and max, and regrids the main row; the YES/NO and class rows keep the grid they were
    last counted on (``xgrid_ptr``) and move onto the row's grid only when a call bins into them.

    Single program (``MULTI`` false): everything, in place. ``MULTI``: after :func:`reduce_kernel`, every
    program reads all partials and the snapshot, computes the same grid, bins its share and adds it atomically;
    program 0 alone writes sums, peaks and grids and adds the regridded snapshot.
    """
    pid = tl.program_id(0)
    r64 = row.to(tl.int64)  # step row ``row`` of each buffer (the truth and class buffers: n_truth, n_cls rows)
    counts_ptr += r64 * SP
    sums_ptr += r64 * 5
    peaks_ptr += r64 * 2
    grid_ptr += r64 * 2
    xgrid_ptr += r64 * 2
    truth_ptr += r64 * n_truth * SP
    cls_ptr += r64 * n_cls * SP
    if MULTI:
        start = pid * per_prog
        end = tl.minimum(start + per_prog, n_bin)
        pi = tl.arange(0, PBLOCK)
        pm = pi < n_parts
        fmin = tl.min(tl.load(part_ptr + pi * 8 + 0, mask=pm, other=INF), 0)
        fmax = tl.max(tl.load(part_ptr + pi * 8 + 1, mask=pm, other=-INF), 0)
        amin = tl.min(tl.load(part_ptr + pi * 8 + 2, mask=pm, other=INF), 0)
        amax = tl.max(tl.load(part_ptr + pi * 8 + 3, mask=pm, other=-INF), 0)
        nan = tl.sum(tl.load(part_ptr + pi * 8 + 4, mask=pm, other=0.0), 0)
        s = tl.sum(tl.load(part_ptr + pi * 8 + 5, mask=pm, other=0.0), 0)
        q = tl.sum(tl.load(part_ptr + pi * 8 + 6, mask=pm, other=0.0), 0)
        nz = tl.sum(tl.load(part_ptr + pi * 8 + 7, mask=pm, other=0.0), 0)
    elif ONE:  # the whole call in one chunk: loaded once, binned from registers
        start = 0
        end = n_bin
        k1 = tl.arange(0, BLOCK).to(tl.int64)
        m1 = k1 < n_bin
        x1 = _load(x_ptr, k1, m1, offset, stride, SAMPLED, SB, BF16)
        fmin, fmax, amin, amax, nan, s, q, nz = _chunk_stats(x1, m1)
    else:
        start = 0
        end = n_bin
        fmin, fmax, amin, amax, nan, s, q, nz = _stats(x_ptr, start, end, offset, stride, SAMPLED, SB, BF16, BLOCK)
    if MAIN:
        if pid == 0:
            tl.store(sums_ptr + 0, tl.load(sums_ptr + 0) + s)
            tl.store(sums_ptr + 1, tl.load(sums_ptr + 1) + q)
            tl.store(sums_ptr + 2, tl.load(sums_ptr + 2) + nz.to(tl.float64))
            tl.store(sums_ptr + 3, tl.load(sums_ptr + 3) + n_bin)
            tl.store(sums_ptr + 4, tl.load(sums_ptr + 4) + n_seen)
            # torch.maximum semantics: a NaN on either side wins
            p0 = tl.load(peaks_ptr + 0)
            p1 = tl.load(peaks_ptr + 1)
            has_nan = (nan > 0) | (p0 != p0) | (p1 != p1)
            tl.store(peaks_ptr + 0, tl.where(has_nan, NAN, tl.maximum(p0, -amin)))
            tl.store(peaks_ptr + 1, tl.where(has_nan, NAN, tl.maximum(p1, amax)))
    lo = 0.0
    hi = 0.0
    norm = 0.0
    e = tl.zeros([], tl.int64)
    o = tl.zeros([], tl.int64)
    if AUTO:
        if MULTI:
            gsrc = snap_ptr
            xsrc = snap_ptr + 2
            csrc = snap_ptr + 4
        else:
            gsrc = grid_ptr
            xsrc = xgrid_ptr
            csrc = counts_ptr
        e_raw = tl.load(gsrc + 0)
        o_raw = tl.load(gsrc + 1)
        has = fmin <= fmax
        if MAIN:
            e_r, o_r, e, o, moved = _coarsen(e_raw, o_raw, csrc, tl.where(has, fmin, 0.0), tl.where(has, fmax, 0.0),
                                             has, B, BP, LOG2B)
            g_set = (e_raw == e_raw) | has
            d = tl.where(moved, e - e_r, 0)
            o_old = tl.where(moved, o_r, o)
            if MULTI:
                if pid == 0:  # the snapshot back, regridded (the identity when the grid stays)
                    _regrid_row(csrc, counts_ptr, d, o_old, o, B, SP, BP, True)
            elif moved:
                _regrid_row(counts_ptr, counts_ptr, d, o_old, o, B, SP, BP, False)
            if pid == 0:
                tl.store(grid_ptr + 0, tl.where(g_set, e.to(tl.float64), e_raw))
                tl.store(grid_ptr + 1, tl.where(g_set, o.to(tl.float64), o_raw))
        else:  # YES/NO or class rows only (targets after the forward): on the row's grid as it is
            g_set = e_raw == e_raw
            e = tl.where(g_set, e_raw, 0.0).to(tl.int64)
            o = tl.where(g_set, o_raw, 0.0).to(tl.int64)
        if BIN_TRUTH or BIN_CLS:  # those rows move from the grid they were counted on to the row's
            xe_raw = tl.load(xsrc + 0)
            xo_raw = tl.load(xsrc + 1)
            x_set = xe_raw == xe_raw
            xe = tl.where(x_set, xe_raw, 0.0).to(tl.int64)
            xo = tl.where(x_set, xo_raw, 0.0).to(tl.int64)
            xmoved = x_set & g_set & ((xe != e) | (xo != o))
            dx = tl.where(xmoved, e - xe, 0)
            xo_old = tl.where(xmoved, xo, o)
            if MULTI:
                if pid == 0:
                    for r in range(n_truth):
                        _regrid_row(snap_ptr + 4 + SP * (1 + r), truth_ptr + r * SP, dx, xo_old, o, B, SP, BP, True)
                    for r in range(n_cls):
                        _regrid_row(snap_ptr + 4 + SP * (1 + n_truth + r), cls_ptr + r * SP, dx, xo_old, o,
                                    B, SP, BP, True)
            elif xmoved:
                for r in range(n_truth):
                    _regrid_row(truth_ptr + r * SP, truth_ptr + r * SP, dx, xo_old, o, B, SP, BP, False)
                for r in range(n_cls):
                    _regrid_row(cls_ptr + r * SP, cls_ptr + r * SP, dx, xo_old, o, B, SP, BP, False)
            if pid == 0:
                tl.store(xgrid_ptr + 0, tl.where(g_set, e.to(tl.float64), NAN))
                tl.store(xgrid_ptr + 1, tl.where(g_set, o.to(tl.float64), 0.0))
        if not MULTI:
            tl.debug_barrier()  # the regridded rows are read and added to by other threads below
        # an unset grid (nothing finite binned into the row): finite values count as overflow, as on the torch path
        o = tl.where(g_set, o, -(2 * B + 4))
        e = tl.where(g_set, e, 0)
    else:
        lo = tl.load(edges_ptr + 0)
        hi = tl.load(edges_ptr + B)
        norm = B / (hi - lo)
    s1, s2 = _scales(e)
    acc = tl.zeros([BP], tl.int64)
    tacc = tl.zeros([BP2], tl.int64)
    if ONE:  # the values loaded above, still in registers
        acc, tacc = _bin_chunk(x1, k1, m1, acc, tacc, s1, s2, o, lo, hi, norm, edges_ptr, cls_ptr, y_ptr, cols,
                               B, SP, BP, BP2, LOG2B, AUTO, SEARCH, MAIN, BIN_TRUTH, BIN_CLS, YMODE)
    else:
        for i in range(start, end, BLOCK):
            k = tl.arange(0, BLOCK).to(tl.int64) + i
            m = k < end
            x = _load(x_ptr, k, m, offset, stride, SAMPLED, SB, BF16)
            acc, tacc = _bin_chunk(x, k, m, acc, tacc, s1, s2, o, lo, hi, norm, edges_ptr, cls_ptr, y_ptr, cols,
                                   B, SP, BP, BP2, LOG2B, AUTO, SEARCH, MAIN, BIN_TRUTH, BIN_CLS, YMODE)
    j = tl.arange(0, BP)
    j2 = tl.arange(0, BP2)
    if MAIN:
        if MULTI:
            tl.atomic_add(counts_ptr + j, acc.to(counts_ptr.dtype.element_ty), mask=(j < SP) & (acc > 0))
        else:
            cur = tl.load(counts_ptr + j, mask=j < SP, other=0)
            tl.store(counts_ptr + j, cur + acc.to(counts_ptr.dtype.element_ty), mask=j < SP)
    if BIN_TRUTH:
        if MULTI:
            tl.atomic_add(truth_ptr + j2, tacc.to(truth_ptr.dtype.element_ty), mask=(j2 < 2 * SP) & (tacc > 0))
        else:
            cur2 = tl.load(truth_ptr + j2, mask=j2 < 2 * SP, other=0)
            tl.store(truth_ptr + j2, cur2 + tacc.to(truth_ptr.dtype.element_ty), mask=j2 < 2 * SP)


#: Whether the kernels above were defined for Triton's interpreter (CPU tensors) rather than compiled (CUDA).
INTERPRETED = type(observe_kernel).__name__ == "InterpretedFunction"
