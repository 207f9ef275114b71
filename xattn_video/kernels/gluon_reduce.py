"""Row reductions of a wgmma accumulator in Gluon as trees, for the Gluon attention kernel.

Triton 3.6 reduces the values a thread holds one after another: the row maximum of a (64, 128)
tile is a chain of 31 dependent ``FMNMX`` per row, 31 ``FADD`` for the row sum (Triton 3.8
builds a tree itself). :func:`row_max` / :func:`row_sum` pair the thread's values level by
level (depth 5: 31 operations, at most 16 independent per level), then reduce across the row's 4
lanes with ``gl.max`` / ``gl.sum``. Every level is a reshape / permute / split over a column bit
that lives in registers, so no value moves between threads or through shared memory
(``tests/test_kernels_gluon.py`` compiles the kernel and counts the shuffles).

Not supported: layouts other than the wgmma accumulator's (NVMMA v3, 4 warps along the rows)
with 128 columns, i.e. column bit 0 and bits 3-6 in registers and bits 1-2 across lanes.
"""

from __future__ import annotations

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    HAS_GLUON_LANG = True
except ImportError:  # pragma: no cover - Triton without Gluon
    HAS_GLUON_LANG = False

if HAS_GLUON_LANG:

    @gluon.jit
    def _combine(a, b, MAX: gl.constexpr):
        if MAX:
            return gl.maximum(a, b)
        else:
            return a + b

    @gluon.jit
    def _halve(x, MAX: gl.constexpr):
        """x: (R, W) whose top column bit is held in registers -> (R, W / 2), the two halves
        combined: one level of the tree."""
        R: gl.constexpr = x.shape[0]
        W: gl.constexpr = x.shape[1]
        a, b = gl.split(gl.permute(gl.reshape(x, [R, 2, W // 2]), [0, 2, 1]))
        return _combine(a, b, MAX)

    @gluon.jit
    def _row_reduce(s, MAX: gl.constexpr):
        """s: (R, 128) in the wgmma accumulator layout -> (R,) in its row layout."""
        R: gl.constexpr = s.shape[0]
        a, b = gl.split(gl.reshape(s, [R, s.shape[1] // 2, 2]))  # column bit 0
        x = _combine(a, b, MAX)
        x = _halve(_halve(_halve(_halve(x, MAX), MAX), MAX), MAX)  # column bits 6, 5, 4, 3
        row: gl.constexpr = gl.SliceLayout(1, s.type.layout)
        if MAX:  # the 4 lanes of the row (column bits 1-2)
            return gl.convert_layout(gl.max(x, axis=1), row)
        else:
            return gl.convert_layout(gl.sum(x, axis=1), row)

    @gluon.jit
    def row_max(s):
        """s: (R, 128) wgmma accumulator -> (R,) row maxima in its row layout."""
        return _row_reduce(s, True)

    @gluon.jit
    def row_sum(s):
        """s: (R, 128) wgmma accumulator -> (R,) row sums in its row layout."""
        return _row_reduce(s, False)
