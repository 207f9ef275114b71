"""Kernel choice and launch configurations per (GPU name, N bucket, head dim, precision).

Which sparse-attention kernel runs (:func:`attention_kernel_for`): the Gluon kernel
(:mod:`.sparse_attention_gluon`, warp-specialized, ping-pong) on sm90 GPUs for bf16/fp16
inputs with head dim 64 or 128, block size 128, TMA-compatible strides and at least 32k query
tokens (the "large" bucket, where it was measured: 1.04-1.11x cuDNN's dense rate on the H200
vs 0.78-0.84x for the Triton Hopper kernel); under the same conditions also for
``precision="fp8"`` at head dim 128 (1.13-1.36x the Triton fp8 kernel,
docs/results/bench_attention_h200_6f8035e.json; see :func:`choose_kernel`); the Triton Hopper
kernel (:mod:`.sparse_attention_hopper`) for the rest of what fits Hopper-class GPUs (compute
capability >= 9: fp8 at head dim 64, fewer than 32k query tokens, block size 64, sm100); the
portable kernel (:mod:`.sparse_attention`) everywhere else (other GPUs, fp32, the CPU
interpreter).

The estimate (:func:`estimate_kernel_for`): the Triton kernel, or the Gluon one
(:mod:`.estimate_gluon`) when forced (``kernel="gluon"``, with the tile / ring measured for the
GPU in :data:`GLUON_ESTIMATE`). ``kernel="auto"`` would pick it where the table has an entry,
from 32k query tokens, but only with :data:`GLUON_ESTIMATE_AUTO`, which is off: the Gluon
estimate took 2-16% less time on the H200 (``280e08d``; 18-19% more at S=16 and 67k tokens),
but one GPU test run stalled inside it (see there).
``kernel="prefer-gluon"`` is that choice with the gate open, per call: the opt-in behind
``XAttentionConfig.estimate_kernel``.

Launch configurations come from :data:`MEASURED`, filled only from runs on the named GPU
(``docs/results/bench_attention_h200*.json``; the estimate's also from the H100,
``docs/results/probe_estimate_*_h100_*.json``, its Gluon entry from
``docs/results/bench_attention_h100_2680fd0*.json``). A GPU that is not in the table gets
:data:`SAFE_HOPPER`, a configuration without warp specialization or lazy rescaling that the
GPU tests check on every Hopper card they run on: correct first, tuned where measured.

Not supported: autotuning at run time (the table is measured offline by
``benchmarks/sweep_hopper.py``); per-GPU tables for non-Hopper cards (the portable kernel keeps
its own defaults).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

HOPPER_KEYS = (
    "BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "WARP_SPEC", "RESCALE_THRESHOLD", "FP8_PV",
)  # fmt: skip
KERNELS = ("auto", "gluon", "hopper", "portable")

GLUON_STAGES: dict[tuple[str, str, int], int] = {("NVIDIA H200", "bf16", 128): 3}
"""K/V ring depth of the Gluon kernel per (GPU name, precision, head dim), from
docs/results/probe_gluon_h200.json (119,056 tokens, bf16: 3 stages 631 vs 618 TFLOP/s at
density 1.0, equal at 0.1-0.5; a second run, probe_gluon_fp8_h200.json, has them equal, and
fp8 best or equal with 2); anything else gets 2 (less shared memory, checked on every GPU test
run)."""

SAFE_HOPPER: dict = dict(
    BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, WARP_SPEC=False,
    RESCALE_THRESHOLD=0.0, FP8_PV=False,
)  # fmt: skip
"""Fallback for Hopper GPUs without measurements (block_size 128, D 128; smaller blocks/dims
are clamped in :func:`hopper_attention_config`)."""

# (GPU name, precision, head dim, N bucket) -> config. Only from measurements on that GPU:
# docs/results/bench_attention_h200_sweep_hopper.json (B=1, 24 heads, N=119,056, density 0.3).
# H200 bf16: 128x128 tiles, 8 warps, 2 stages, no warp specialization (Triton 3.6 leaves the
# 8-warp loop unspecialized; 4-warp specialization spills: 211 TFLOP/s), no lazy rescale (-4%).
# H200 fp8: Q.K and P.V both e4m3, 3 stages (595 vs 544 TFLOP/s for bf16 P.V).
# H200 bf16 head dim 64 below 32k tokens (the tiny DiT: 4 heads, 17,411 tokens;
# docs/results/profile_small_call_h200.json): 64-row query tiles double the programs of a
# grid that is only ~4 waves deep: 0.338 vs 0.499 ms at density 0.33 (128-row tiles; 64x64
# tiles 0.407, 3 stages 0.398, 8 warps 0.520).
MEASURED: dict[tuple[str, str, int, str], dict] = {
    ("NVIDIA H200", "bf16", 128, "large"): dict(SAFE_HOPPER),
    ("NVIDIA H200", "fp8", 128, "large"): dict(SAFE_HOPPER, num_stages=3, FP8_PV=True),
    ("NVIDIA H200", "bf16", 64, "small"): dict(SAFE_HOPPER, BLOCK_M=64, num_warps=4),
}


class EstimateLaunch(NamedTuple):
    """A measured launch of the Triton estimate (:mod:`.estimate`)."""

    tiles: tuple[int, int, int, int]
    """(BLOCK_M, BLOCK_N, num_warps, num_stages)."""
    flatten: bool
    """Flatten the key-tile x stride loop nest into one loop."""
    fast_log2: bool = True
    """The block log-sum-exp's log2 on the MUFU unit (``lg2.approx``); False keeps libdevice's
    ``log2f``, for tiles whose register budget ``lg2.approx`` pushes into spills."""


SAFE_ESTIMATE = EstimateLaunch((128, 128, 8, 3), False)
"""Estimate fallback (a GPU outside :data:`ESTIMATE_MEASURED`; the H100 before it had entries)."""

# (GPU name, precision, stride, head dim, N bucket or "any") -> launch. H200
# (docs/results/bench_attention_h200*.json, N=119,056): flattening the key-tile x stride loop
# nest removes the spills of the nested loop (S=8 bf16: 29.4 -> 25.1 ms); at S=16 and for fp8,
# 64x128 tiles with 4 warps win (fp8: S=8 17.1 ms, S=16 9.2-9.4 ms). lg2.approx
# (docs/results/probe_estimate_lg2_h200.json, 119,056 tokens): bf16 S=8 4% and fp8 S=8 / 16 7% /
# 2% faster, but bf16 S=16's 64x128 tiles spill 76 bytes instead of 16 with it (ptxas -v, not
# committed) and ran 9% slower, so that entry keeps log2f. Head dim 64 below 32k tokens
# (docs/results/profile_small_call_h200.json, 4 heads, 17,411 tokens, S=8): 64x128 tiles, 4
# warps, 3 stages 0.112 ms vs 0.123 for 128x128 (32-row tiles 0.17-0.20: too little work per
# program); same masks. Ring depths re-timed interleaved (benchmarks/probe_estimate_tiles.py,
# docs/results/probe_estimate_tiles_*_h200_{010f4c2,32a259f}.json): bf16 S=16's 64x128 tiles
# take 14.8-14.9 ms with 3 stages against 14.9-16.0 with 4 at 119,056 tokens (4.55-4.60 vs
# 4.57-4.82 at 67,576; same scores bit for bit; lg2.approx still 14-15% slower there); every
# other entry stays the fastest or within 1% (fp8 S=8 3 stages: 15.5 vs 15.6 ms).
ESTIMATE_MEASURED: dict[tuple[str, str, int, int, str], EstimateLaunch] = {
    ("NVIDIA H200", "bf16", 8, 128, "any"): EstimateLaunch((128, 128, 8, 3), True),
    ("NVIDIA H200", "bf16", 16, 128, "any"): EstimateLaunch((64, 128, 4, 3), True, False),
    # fp8 S=8: 128x256 tiles on 8 warps, 4 stages (docs/results/probe_estimate_tiles_fp8_s8_h200_
    # 1ce56b9*.json, interleaved, 3 rounds): 14.56 vs 15.66 ms at 119,056 tokens (3 stages 14.79),
    # 4.19 vs 5.39 at 67,576 (3 stages 4.15); scores within 1.7e-8, masks differ in <= 7.7e-7.
    ("NVIDIA H200", "fp8", 8, 128, "any"): EstimateLaunch((128, 256, 8, 4), True),
    ("NVIDIA H200", "fp8", 16, 128, "any"): EstimateLaunch((64, 128, 4, 4), True),
    ("NVIDIA H200", "bf16", 8, 64, "small"): EstimateLaunch((64, 128, 4, 3), True),
    # H100 (docs/results/probe_estimate_tiles_h100_f4d3f33.json, 119,056 tokens, flattened,
    # lg2.approx, 2 rounds; against the fallback's tiles: bf16 S=16 0.84x, fp8 S=8 0.92x, fp8
    # S=16 0.98x; bf16 S=8 keeps them) and probe_estimate_flatten_h100_f4d3f33-h100table.json
    # (these entries against the fallback as it ran before, not flattened, interleaved: 0.87x,
    # 0.79x, 0.77x, 0.88x; same scores, max |diff| <= 3.7e-9).
    ("NVIDIA H100 80GB HBM3", "bf16", 8, 128, "any"): EstimateLaunch((128, 128, 8, 3), True),
    ("NVIDIA H100 80GB HBM3", "bf16", 16, 128, "any"): EstimateLaunch((64, 128, 4, 3), True),
    # fp8 S=8: 128x256 tiles on 8 warps, 3 stages (docs/results/probe_estimate_tiles_*_h100_3019f3a
    # .json, interleaved, 3 rounds): 14.87-14.90 vs 15.45-15.80 ms at 119,056 tokens, 4.20 vs 5.13
    # at 67,576; block scores within 1.7e-8, selection differs in <= 7.7e-7 of blocks (near-ties).
    ("NVIDIA H100 80GB HBM3", "fp8", 8, 128, "any"): EstimateLaunch((128, 256, 8, 3), True),
    ("NVIDIA H100 80GB HBM3", "fp8", 16, 128, "any"): EstimateLaunch((64, 128, 4, 4), True),
}


def estimate_config(
    name: str | None, precision: str, stride: int, head_dim: int, n: int | None = None
) -> EstimateLaunch:
    """Estimate launch for this GPU at ``n`` query tokens: the entry measured for this N bucket,
    else the one for any N, else :data:`SAFE_ESTIMATE`."""
    if n is not None:
        hit = ESTIMATE_MEASURED.get((name, precision, stride, head_dim, n_bucket(n)))
        if hit is not None:
            return hit
    return ESTIMATE_MEASURED.get((name, precision, stride, head_dim, "any"), SAFE_ESTIMATE)


AUTOMATIC_ESTIMATE_KERNELS = ("auto", "prefer-gluon")
"""The estimate choices that decide by the table (the others force a kernel); also the op's
``estimate_kernel`` values."""
ESTIMATE_KERNELS = (*AUTOMATIC_ESTIMATE_KERNELS, "gluon", "triton")

# H200 (docs/results/probe_estimate_gluon_h200.json; 119,056 / 67,576 tokens, 24 heads, Gluon vs
# Triton ms in one run): bf16 S=8 21.7 vs 25.1 / 6.84 vs 7.91; fp8 S=8 14.1 vs 16.9 / 4.48 vs
# 5.89; fp8 S=16 7.66 vs 9.14 / 3.31 vs 3.29. Left out: bf16 S=16 (14.7 vs 15.0 / 5.40 vs 4.54:
# the Triton kernel's 64-row tiles win once the query chunks re-read per key tile leave the L2).
GLUON_ESTIMATE: dict[tuple[str, str, int, int], tuple[int, int]] = {
    ("NVIDIA H200", "bf16", 8, 128): (128, 3),
    ("NVIDIA H200", "fp8", 8, 128): (128, 6),
    ("NVIDIA H200", "fp8", 16, 128): (128, 6),
    # H100 (docs/results/bench_attention_h100_2680fd0{,_run2}_{119056,67576}.json, two runs on
    # two machines, the forced Gluon estimate on the default tile / ring vs the Triton one, each
    # with its own quantization): fp8 S=8 15.2 vs 16.2-16.6 ms / 4.67-4.74 vs 5.57-5.65. Left
    # out: fp8 S=16 (8.6-8.9 vs 10.0 ms at 119k but 3.6 vs 3.0 at 67k), bf16 (S=8 34.1-34.7 vs
    # 26.1-26.3 ms at 119k; S=16 20.1 vs 15.8-16.0).
    ("NVIDIA H100 80GB HBM3", "fp8", 8, 128): (128, 6),
}
"""(GPU name, precision, stride, head dim) -> (key groups per tile, ring depth) of the Gluon
estimate (:mod:`.estimate_gluon`), only where it was measured faster than the Triton estimate;
what ``kernel="gluon"`` runs there, and what ``kernel="auto"`` would pick from 32k query tokens
with :data:`GLUON_ESTIMATE_AUTO`."""

GLUON_ESTIMATE_AUTO = False
"""Whether ``kernel="auto"`` picks the Gluon estimate where :data:`GLUON_ESTIMATE` has an entry.
Off: on the H200, one run of ``tests/test_gpu_estimate_gluon.py`` stalled (killed after ~200 s)
in its fp8 test at 119,056 tokens (stride 16, key padding), which cycles through four tile /
ring / overlap variants, and passed in other runs of the same code. benchmarks/
probe_estimate_stall.py then launched every variant 300 times on the tests' inputs without a
stall (docs/results/probe_estimate_stall_h200.log): not reproduced, not explained, so the op
keeps the Triton estimate, which cannot stall (no barriers). Since then the kernel fences its
barriers' initialization for the TMA unit, a race that would fit (docs/attention-kernels.md);
one clean pass since does not show the stall gone."""

GLUON_ESTIMATE_DEFAULT = {"bf16": (128, 3), "fp8": (128, 6)}
"""Tiles / ring depth of the forced Gluon estimate on a GPU without measurements (both fit
sm90's shared memory: 197 KB)."""


def choose_estimate_kernel(
    *, is_cuda: bool, capability: int, dtype: torch.dtype, head_dim: int, block_size: int,
    stride: int, aligned: bool, n: int, has_gluon: bool, measured: bool, kernel: str = "auto",
) -> str:  # fmt: skip
    """``"gluon"`` or ``"triton"`` for the estimate (``capability``: major version; ``n``: query
    tokens; ``measured``: this GPU / precision / stride / head dim is in :data:`GLUON_ESTIMATE`).
    ``kernel``: "auto" / "prefer-gluon" pick the Gluon kernel where it fits, was measured and
    ``n`` is in the "large" bucket (for "auto", :func:`estimate_kernel_for` first applies
    :data:`GLUON_ESTIMATE_AUTO`); "gluon" / "triton" force one.

    Raises ValueError for an unknown ``kernel`` or a forced ``"gluon"`` that cannot run."""
    if kernel not in ESTIMATE_KERNELS:
        raise ValueError(f"kernel must be one of {ESTIMATE_KERNELS}, got {kernel!r}")
    fits = (
        is_cuda
        and capability == 9
        and has_gluon
        and dtype in (torch.float16, torch.bfloat16)
        and head_dim in (64, 128)
        and block_size == 128
        and stride in (8, 16, 32)
        and aligned
    )
    if kernel == "gluon":
        if not fits:
            raise ValueError(
                "kernel='gluon' needs an sm90 GPU, Triton >= 3.6, bf16/fp16 q/k with head dim "
                "64 or 128, block_size 128, stride 8/16/32 and 16-byte aligned strides"
            )
        return "gluon"
    if kernel in AUTOMATIC_ESTIMATE_KERNELS and fits and measured and n_bucket(n) == "large":
        return "gluon"
    return "triton"


def estimate_kernel_for(
    q: torch.Tensor, k: torch.Tensor, stride: int, block_size: int, precision: str = "bf16",
    kernel: str = "auto",
) -> tuple[str, tuple[int, int]]:  # fmt: skip
    """(``"gluon"`` or ``"triton"``, the Gluon estimate's (key groups per tile, ring depth)) for
    q: (B, H, Nq, D), k: (B, H, Nk, D) on their GPU; ``kernel`` as in
    :func:`choose_estimate_kernel`."""
    from ._common import tma_aligned
    from .sparse_attention_gluon import HAS_GLUON

    hit = GLUON_ESTIMATE.get((gpu_name(q), precision, stride, q.shape[-1]))
    gate_closed = kernel == "auto" and not GLUON_ESTIMATE_AUTO
    if kernel in AUTOMATIC_ESTIMATE_KERNELS and (hit is None or gate_closed):  # one lookup a call
        return "triton", hit or GLUON_ESTIMATE_DEFAULT[precision]
    cap = torch.cuda.get_device_capability(q.device)[0] if q.is_cuda else 0
    choice = choose_estimate_kernel(
        is_cuda=q.is_cuda, capability=cap, dtype=q.dtype, head_dim=q.shape[-1],
        block_size=block_size, stride=stride, aligned=tma_aligned(q, k), n=q.shape[-2],
        has_gluon=HAS_GLUON, measured=hit is not None, kernel=kernel,
    )  # fmt: skip
    return choice, hit or GLUON_ESTIMATE_DEFAULT[precision]


def n_bucket(n: int) -> str:
    """Sequence-length bucket of the table: ``small`` (< 32k tokens) or ``large``."""
    return "small" if n < 32768 else "large"


@functools.lru_cache(maxsize=8)
def _device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def gpu_name(t: torch.Tensor) -> str | None:
    """CUDA device name of ``t`` (None on CPU)."""
    if not t.is_cuda:
        return None
    return _device_name(t.device.index if t.device.index is not None else 0)


def _clamp(cfg: dict, block_size: int, head_dim: int) -> dict:
    cfg = dict(cfg)
    cfg["BLOCK_M"] = min(cfg["BLOCK_M"], block_size)
    cfg["BLOCK_N"] = min(cfg["BLOCK_N"], block_size)
    if cfg["BLOCK_M"] * head_dim < 128 * 128:
        cfg["num_warps"] = min(cfg["num_warps"], 4)
    return cfg


def lookup_config(name: str | None, precision: str, head_dim: int, n: int, block_size: int) -> dict:
    """Table entry for (GPU name, precision, head dim, N bucket), else :data:`SAFE_HOPPER`;
    tiles clamped to ``block_size``. ``name`` None (CPU interpreter): small tiles."""
    if name is None:
        return dict(SAFE_HOPPER, BLOCK_M=min(32, block_size), BLOCK_N=min(16, block_size),
                    num_warps=4, num_stages=1)  # fmt: skip
    cfg = MEASURED.get((name, precision, head_dim, n_bucket(n)), SAFE_HOPPER)
    return _clamp(cfg, block_size, head_dim)


def shipped_configs() -> list[tuple[str, dict]]:
    """Every (precision, config) the table holds, as handed out at block 128 and head dim 128:
    what the GPU tests run at full size (the tiles clamped for block 64 are tested apart)."""
    out = [("bf16", SAFE_HOPPER), ("fp8", SAFE_HOPPER)]
    for (_, prec, _, _), cfg in MEASURED.items():
        if (prec, cfg) not in out:
            out.append((prec, cfg))
    return out


def hopper_attention_config(q: torch.Tensor, block_size: int, precision: str = "bf16") -> dict:
    """Launch config of the Hopper kernel for q: (B, H, N, D) on q's GPU (see :func:`lookup_config`)."""
    return lookup_config(gpu_name(q), precision, q.shape[-1], q.shape[-2], block_size)


def gluon_stages(name: str | None, head_dim: int, precision: str = "bf16") -> int:
    """K/V ring depth of the Gluon kernel on this GPU (:data:`GLUON_STAGES`, else 2)."""
    return GLUON_STAGES.get((name, precision, head_dim), 2)


def choose_kernel(
    *, is_cuda: bool, capability: int, dtype: torch.dtype, head_dim: int, block_size: int,
    aligned: bool, interpreter: bool, kernel: str = "auto", n: int = 0,
    precision: str = "bf16", has_gluon: bool = False,
) -> str:  # fmt: skip
    """Pure decision behind :func:`attention_kernel_for` (``capability``: major version; ``n``:
    query tokens; ``has_gluon``: this Triton runs the Gluon kernel, see
    :data:`.sparse_attention_gluon.MIN_TRITON`)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    fits = (
        is_cuda
        and capability >= 9
        and head_dim in (64, 128)
        and block_size >= 64
        and dtype in (torch.float16, torch.bfloat16)
        and aligned
    )
    gluon_fits = fits and has_gluon and capability == 9 and block_size == 128
    if kernel == "gluon":
        if not gluon_fits:
            raise ValueError(
                "kernel='gluon' needs an sm90 GPU, Triton >= 3.6, bf16/fp16 q/k/v with head "
                "dim 64 or 128, block_size 128 and 16-byte aligned strides"
            )
        return "gluon"
    if kernel == "hopper":
        if not (fits or (interpreter and not is_cuda and aligned)):
            raise ValueError(
                "kernel='hopper' needs an sm90+ GPU (or TRITON_INTERPRET=1 on CPU), Triton >= 3.4 "
                "(TMA descriptors), fp16/bf16 q/k/v with head dim 64 or 128, block_size >= 64 "
                "and 16-byte aligned strides"
            )
        return "hopper"
    if kernel == "portable":
        return "portable"
    # fp8 too, at head dim 128: since P goes to the fp8 P.V operand without shuffles, the Gluon
    # fp8 kernel is 1.13-1.36x the Triton fp8 kernel at densities 0.1-1.0, 67k / 119k tokens
    # (docs/results/bench_attention_h200_6f8035e.json; it was 0.98-1.02x before). Its fp8 path
    # is tested and measured at head dim 128 only, so fp8 at 64 stays on the Triton kernel.
    if gluon_fits and n_bucket(n) == "large" and (precision == "bf16" or head_dim == 128):
        return "gluon"
    return "hopper" if fits else "portable"


def attention_kernel_for(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int, kernel: str = "auto",
    precision: str = "bf16",
) -> str:  # fmt: skip
    """``"gluon"``, ``"hopper"`` or ``"portable"`` for q, k, v: (B, H, N, D); ``kernel``
    forces one.

    Raises ValueError when a forced ``kernel`` cannot run these inputs.
    """
    from ._common import interpreter_enabled, tma_aligned
    from .sparse_attention_gluon import HAS_GLUON

    cap = torch.cuda.get_device_capability(q.device)[0] if q.is_cuda else 0
    return choose_kernel(
        is_cuda=q.is_cuda, capability=cap, dtype=q.dtype, head_dim=q.shape[-1],
        block_size=block_size, aligned=tma_aligned(q, k, v), interpreter=interpreter_enabled(),
        kernel=kernel, n=q.shape[-2], precision=precision, has_gluon=HAS_GLUON,
    )  # fmt: skip
