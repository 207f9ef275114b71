"""Inline PTX for the Gluon attention kernel: what Gluon (Triton 3.6-3.8) has no API for.

* :func:`named_barrier_sync` / :func:`named_barrier_arrive`: hardware named barriers
  (``bar.sync`` / ``bar.arrive`` with an id and a thread count), FlashAttention-3's tool for
  the two consumer warpgroups' ping-pong. Gluon's mbarrier arrive is one elected thread after a
  warpgroup ``bar.sync``, and Triton 3.6 adds another ``bar.sync`` before the wait that follows
  it; a named barrier is one instruction per side. Ids :data:`PINGPONG_BARRIERS` are above those
  Triton's warp specialization uses (0-2: the default partition, the whole CTA, a worker
  partition; ``tests/test_kernels_gluon.py`` checks the compiled kernel).
* :func:`rescale_rows`: the online softmax's ``acc * alpha`` behind a warp-uniform branch, so
  warps whose 16 rows all have ``alpha == 1`` (the lazy row maximum did not move) skip the
  accumulator's multiplies (64 per thread at head dim 128).
* :func:`pack_e4m3`: fp32 to e4m3, 4 values per register (``cvt.rn.satfinite.e4m3x2``).

Not supported: anything but sm90 PTX; more or fewer than two 4-warp consumer warpgroups
(the barrier thread count is 256); accumulators other than 64 rows x 64 / 128 columns.
"""

from __future__ import annotations

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    HAS_GLUON_LANG = True
except ImportError:  # pragma: no cover - Triton without Gluon
    HAS_GLUON_LANG = False

PINGPONG_BARRIERS = (8, 9)
"""Hardware barrier ids of the two consumer warpgroups' turns (16 exist per CTA)."""


def rescale_asm(n: int) -> str:
    """PTX of :func:`rescale_rows` for ``n`` accumulator values per thread: operands
    $0..$n-1 the outputs (tied to the accumulator inputs $n..$2n-1), $2n..$3n-1 the rows'
    alphas, $3n..$4n-1 the warp's flag (0.0: skip; all equal, $3n is read)."""
    body = " ".join(f"mul.f32 ${i}, ${i}, ${2 * n + i};" for i in range(n))
    return (
        f"{{ .reg .pred q; setp.neu.f32 q, ${3 * n}, 0f00000000; @!q bra.uni SKIP; {body} SKIP: }}"
    )


def rescale_constraints(n: int) -> str:
    """LLVM constraints of :func:`rescale_asm`: outputs tied to the accumulator inputs."""
    return ",".join(["=r"] * n + [str(i) for i in range(n)] + ["r"] * (2 * n))


if HAS_GLUON_LANG:
    _RESCALE_ASM_64 = gl.constexpr(rescale_asm(64))
    _RESCALE_CONS_64 = gl.constexpr(rescale_constraints(64))
    _RESCALE_ASM_32 = gl.constexpr(rescale_asm(32))
    _RESCALE_CONS_32 = gl.constexpr(rescale_constraints(32))

    @gluon.jit
    def _per_thread(bar_id):
        """bar_id once per thread of a 4-warp partition."""
        return gl.full([128], bar_id, gl.int32, layout=gl.BlockedLayout([1], [32], [4], [0]))

    @gluon.jit
    def named_barrier_sync(bar_id):
        """Wait at hardware barrier ``bar_id`` until both consumer warpgroups (256 threads)
        arrived, counting this warpgroup's 128 here."""
        gl.inline_asm_elementwise("bar.sync $1, 256; mov.b32 $0, 0;", "=r,r",
                                  [_per_thread(bar_id)], dtype=gl.int32, is_pure=False,
                                  pack=1)  # fmt: skip

    @gluon.jit
    def named_barrier_arrive(bar_id):
        """Arrive at hardware barrier ``bar_id`` (128 of its 256 threads) without waiting."""
        gl.inline_asm_elementwise("bar.arrive $1, 256; mov.b32 $0, 0;", "=r,r",
                                  [_per_thread(bar_id)], dtype=gl.int32, is_pure=False,
                                  pack=1)  # fmt: skip

    @gluon.jit
    def _warp_any_not_one(alpha):
        """alpha: (rows,) in the accumulator's row layout, 2 rows per thread. Each element:
        1.0 if any row of its warp has alpha != 1, else 0.0 (``vote.sync.any``)."""
        return gl.inline_asm_elementwise(
            "{ .reg .pred p, q; setp.neu.f32 p, $2, 0f3F800000; "
            "setp.neu.or.f32 p, $3, 0f3F800000, p; vote.sync.any.pred q, p, -1; "
            "selp.f32 $0, 0f3F800000, 0f00000000, q; mov.b32 $1, $0; }",
            "=r,=r,r,r", [alpha], dtype=gl.float32, is_pure=True, pack=2)  # fmt: skip

    @gluon.jit
    def rescale_rows(acc, alpha):
        """acc: (64, D) fp32 wgmma accumulator of one warpgroup (D 64 or 128); alpha: (64,)
        in its row layout. acc * alpha per row; warps whose alphas are all 1 skip it."""
        flag = gl.expand_dims(_warp_any_not_one(alpha), 1)
        a = gl.expand_dims(alpha, 1)
        if acc.shape[1] == 128:
            return gl.inline_asm_elementwise(_RESCALE_ASM_64, _RESCALE_CONS_64, [acc, a, flag],
                                             dtype=gl.float32, is_pure=True, pack=64)  # fmt: skip
        else:
            return gl.inline_asm_elementwise(_RESCALE_ASM_32, _RESCALE_CONS_32, [acc, a, flag],
                                             dtype=gl.float32, is_pure=True, pack=32)  # fmt: skip

    @gluon.jit
    def pack_e4m3(p):
        """fp32 -> e4m3 (saturating, round to nearest), packed 4 per register: p's layout must
        hold 4 consecutive operand values per thread (a k_width 4 dot-operand layout)."""
        return gl.inline_asm_elementwise(
            "{ .reg .b16 lo, hi; cvt.rn.satfinite.e4m3x2.f32 lo, $2, $1; "
            "cvt.rn.satfinite.e4m3x2.f32 hi, $4, $3; mov.b32 $0, {lo, hi}; }",
            "=r,r,r,r,r", [p], dtype=gl.float8e4nv, is_pure=True, pack=4)  # fmt: skip
