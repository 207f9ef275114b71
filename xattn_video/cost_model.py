"""Should this attention call run sparse? A cost model from kernel times measured on this GPU.

XAttention only pays off when the attention it skips costs more than the estimate, the block
selection, the index building and the launches it adds. At small token counts (the tiny DiT,
short or low-resolution videos) it does not, and running sparse there is slower than dense.

:func:`calibrate` measures, on the current GPU, for the call's (heads, head dim, dtype, block
size, stride) and a grid of token counts N (1k ... 64k, stopping once dense attention takes
more than ``MAX_DENSE_MS``):

- ``dense``: PyTorch SDPA, what the stock diffusers processors run;
- ``dense_padded``: SDPA with a key-padding mask, what they run for a call with padded keys
  (HunyuanVideo's text padding: one H200 at 119,056 tokens, 454 ms against 316 ms unmasked),
  and so what such a call costs when :func:`dense_call` runs it;
- ``overhead``: what an estimating call adds to the kernel, as the op runs it: the input
  checks, the estimate, the block selection (threshold mode with a budget: the selection
  kernel, the per-sample sort and the budget kernel) and the CSR index lists;
- ``attn_min`` / ``attn_full``: the block-sparse kernel with one key block per query row and
  with every block (with the op's non-finite flag and NaN kernels around it);
- ``gather``: one token permutation of a (heads, N, D) tensor (the ``tile`` order does four);
- ``cluster``: the ``cluster`` order's k-means of q and of k (:func:`.layout.cluster_permutation`,
  one cluster per block; eager only, its large kernels leave no launch cost for a graph to save).

The estimate and the sparse kernel run in the call's precisions (``precision`` /
``estimate_precision``, "bf16" or "fp8", part of the key); dense stays SDPA in the inputs'
dtype, what the stock processors run. A call with key padding is predicted against
``dense_padded`` (``predict(padded=True)``), one without against ``dense``.

Each is timed twice: with back-to-back launches (``eager``: includes the CPU launch cost where
that dominates, what eager mode and a compiled graph without CUDA graphs pay) and replayed
from a CUDA graph (``graph``: device time only, what ``torch.compile(mode="reduce-overhead")``
pays). :class:`~xattn_video.auto_dense.AutoDense` uses the graph times when the transformer
was compiled with CUDA graphs by :func:`xattn_video.hook.compile_below_hook`, else the eager
ones (which err towards dense). :func:`predict` interpolates the measured ratios to dense in log N
(clamped at the ends of the grid: beyond 64k the largest measured ratios are used, which
over-estimate the sparse cost since the fixed overheads shrink relative to N^2 attention) and
models the sparse kernel as linear in the block density between ``attn_min`` and
``attn_full``. The sparse path is chosen when it is predicted to take at most ``MARGIN`` of the
dense time.

Calibrations are cached in memory and on disk, one JSON file per machine under
``$XDG_CACHE_HOME/xattn_video/`` (``~/.cache`` by default; ``XATTN_VIDEO_CACHE_DIR``
overrides), keyed by GPU name, torch and Triton versions, the call's parameters and a
fingerprint of this package's kernel and op code (:func:`code_fingerprint`: an upgrade that
changes what the kernels cost measures again), so a GPU is measured once (about a second per
configuration) and every later process reuses it. Deleting the file forces a new measurement.
Calibrating synchronises the GPU, so it runs at the first eager sparse call of a new
configuration, never inside a captured CUDA graph; under ``torch.compile`` the calibration
must already exist (an eager step, or :func:`calibrate`, made it).

CPU and the ``torch`` reference backend: the model does not apply (:func:`applies` is False)
and every call follows the dense/sparse schedule. The reference backend materialises the score
matrix and runs masked SDPA; it exists to check correctness, is never faster than dense, and
the CPU runs (tests, the CPU demo) are meant to show what the sparse path computes.

Not supported: multi-GPU calibration sharing (each GPU name is measured on its own), dense
baselines other than SDPA (e.g. FlashAttention-3 would move the break-even point; so would an
fp8 dense kernel for fp8 calls).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from .atomic import locked, write_text
from .attention import estimate_block_mask
from .kernels._common import cdiv, check_precision, kv_len_tensor
from .kernels.select import mask_to_indices
from .layout import CLUSTER_ITERS, cluster_permutation
from .library import block_csr, sparse_attention
from .op_checks import resolve_estimate_precision
from .scalars import is_json_number

logger = logging.getLogger(__name__)

MARGIN = 0.95
"""Sparse runs only if predicted at <= 95% of the dense time (model error, launch jitter)."""

N_GRID = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
MAX_DENSE_MS = 30.0
CACHE_VERSION = 5  # 2: overhead on the fused selection path with a budget; 3: graph times;
# 4: the precisions in the key; 5: dense_padded
_MEMO: dict[str, Calibration] = {}


_TIMED_CODE = ("kernels/*.py", "attention.py", "library.py", "layout.py", "cost_model.py")
"""This package's sources whose changes change what a calibration measures."""


@functools.cache
def code_fingerprint() -> str:
    """12 hex digits of the sha256 of the sources in :data:`_TIMED_CODE` (the kernels, their
    launch tables, the op, the ``cluster`` order's k-means and this module's timing method)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(p for pattern in _TIMED_CODE for p in root.glob(pattern)):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class CostKey:
    """What a calibration depends on. ``heads`` is batch x heads of the call; ``code``: the
    package's :func:`code_fingerprint` (a calibration of other kernel code is not reused)."""

    device: str
    torch: str
    triton: str
    dtype: str
    heads: int
    head_dim: int
    block_size: int
    stride: int
    precision: str = "bf16"
    estimate_precision: str = "bf16"
    code: str = field(default_factory=code_fingerprint)

    def id(self) -> str:
        return "|".join(str(v) for v in asdict(self).values())


@dataclass
class Calibration:
    """Measured milliseconds per grid point (all lists have the length of ``n``); the
    ``*_graph`` lists are the same calls replayed from a CUDA graph (empty if capture failed)."""

    n: list[int]
    dense: list[float]
    overhead: list[float]
    attn_min: list[float]
    attn_full: list[float]
    gather: list[float]
    dense_padded: list[float] = field(default_factory=list)
    cluster: list[float] = field(default_factory=list)
    dense_graph: list[float] = field(default_factory=list)
    overhead_graph: list[float] = field(default_factory=list)
    attn_min_graph: list[float] = field(default_factory=list)
    attn_full_graph: list[float] = field(default_factory=list)
    gather_graph: list[float] = field(default_factory=list)
    dense_padded_graph: list[float] = field(default_factory=list)

    def has_graph(self) -> bool:
        """Whether graph times were measured at every grid point."""
        return len(self.dense_graph) == len(self.n) > 0


GRAPH_FIELDS = frozenset(f.name for f in fields(Calibration) if f.name.endswith("_graph"))
"""The CUDA-graph times: all measured at every grid point, or all empty (capture failed)."""


@dataclass(frozen=True)
class Prediction:
    """Predicted milliseconds of one call; ``sparse_wins``: ``sparse_ms <= MARGIN * dense_ms``."""

    dense_ms: float
    sparse_ms: float
    sparse_wins: bool


def dense_call(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: torch.Tensor | None
) -> torch.Tensor:
    """What a call sent dense for cost runs (and ``dense`` / ``dense_padded`` time): SDPA over
    the valid keys, as the stock processors compute it -- with a key-padding mask when
    ``kv_len`` (B,) is given. q/k/v: (B, H, N, D); returns (B, H, N, D)."""
    mask = None
    if kv_len is not None:
        keys = torch.arange(k.shape[2], device=k.device)
        mask = (keys[None, :] < kv_len.to(k.device)[:, None])[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def applies(backend: str, device: torch.device) -> bool:
    """Whether the cost model decides for this resolved backend and device (Triton on CUDA)."""
    return backend == "triton" and torch.device(device).type == "cuda"


def cost_key(
    device: torch.device,
    dtype: torch.dtype,
    heads: int,
    head_dim: int,
    block_size: int,
    stride: int,
    *,
    precision: str = "bf16",
    estimate_precision: str = "auto",
) -> CostKey:
    """The calibration key of a call on ``device`` (a CUDA device); ``precision`` /
    ``estimate_precision``: the sparse kernel's and the estimate's ("bf16" or "fp8"; the
    estimate's "auto" resolved on ``device`` as in the op)."""
    check_precision(precision)
    estimate_precision = resolve_estimate_precision(
        estimate_precision, precision, backend="triton", device=device, head_dim=head_dim
    )
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # pragma: no cover
        triton_version = "none"
    return CostKey(
        torch.cuda.get_device_name(device), torch.__version__, triton_version,
        str(dtype).removeprefix("torch."), int(heads), int(head_dim), int(block_size), int(stride),
        precision, estimate_precision,
    )  # fmt: skip


def cache_path() -> Path:
    """The JSON file holding this machine's calibrations: in ``$XATTN_VIDEO_CACHE_DIR`` (``~``
    expanded; empty counts as unset, as for ``XDG_CACHE_HOME``: it put the cache in the
    working directory, re-measured per directory), else ``$XDG_CACHE_HOME/xattn_video`` or
    ``~/.cache/xattn_video``."""
    root = os.path.expanduser(os.environ.get("XATTN_VIDEO_CACHE_DIR") or "") or None
    if root is None:
        root = os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "xattn_video"
        )
    return Path(root) / f"cost_model_v{CACHE_VERSION}.json"


def _load_all() -> dict[str, dict]:
    path = cache_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        logger.warning("ignoring unreadable cost-model cache %s (%s)", path, err)
        return {}
    if not isinstance(data, dict):
        logger.warning("ignoring cost-model cache %s: not a JSON object", path)
        return {}
    return data


def _parse(raw) -> Calibration | None:
    """``raw`` as a :class:`Calibration` if it is one: the known fields, every measured list as
    long as ``n`` (the :data:`GRAPH_FIELDS` all so or all empty), positive finite numbers; else
    None. An entry with ``dense_padded`` empty, or graph times at some grid points only, was
    accepted and then failed every prediction that reads them, never recalibrated."""
    names = {f.name for f in fields(Calibration)}
    if not isinstance(raw, dict) or not set(raw) <= names or not names - GRAPH_FIELDS <= set(raw):
        return None
    n = raw["n"]
    for vals in raw.values():
        ok = isinstance(vals, list) and all(is_json_number(x) and 0 < x < math.inf for x in vals)
        if not ok:
            return None
    lengths = {len(raw[k]) for k in names - GRAPH_FIELDS}
    graph = {len(raw.get(k, [])) for k in GRAPH_FIELDS}
    if lengths != {len(n)} or graph not in ({0}, {len(n)}):
        return None
    return Calibration(**raw) if n and n == sorted(n) else None


def store(key: CostKey, cal: Calibration) -> None:
    """Keep ``cal`` in memory and in the disk cache (atomic replace of the JSON file, read and
    written under a lock file so that processes storing at once keep each other's entries)."""
    _MEMO[key.id()] = cal
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with locked(path):
            data = _load_all()
            data[key.id()] = asdict(cal)
            write_text(path, json.dumps(data, indent=1))
    except OSError as err:
        logger.warning("could not write the cost-model cache %s (%s)", path, err)


def lookup(key: CostKey) -> Calibration | None:
    """A calibration from memory or the disk cache, or None."""
    cal = _MEMO.get(key.id())
    if cal is None:
        raw = _load_all().get(key.id())
        if raw is not None:
            cal = _parse(raw)
            if cal is None:
                logger.warning("ignoring a malformed cost-model cache entry %s", key.id())
                return None
            _MEMO[key.id()] = cal
    return cal


def _time_ms(fn, reps: int = 5) -> float:
    """Mean milliseconds of ``fn()`` over ``reps`` back-to-back calls (after 2 warm-up calls)."""
    for _ in range(2):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def capture_graph(fn) -> torch.cuda.CUDAGraph | None:
    """``fn()`` captured in a CUDA graph after two warm-up calls on a side stream (the
    recipe of ``torch.cuda.graphs``), or None when capture fails (logged)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except Exception as err:  # noqa: BLE001 - any capture failure: fall back to eager times
        logger.warning("cost model: CUDA-graph capture failed (%s); eager times only", err)
        return None
    return graph


def _graph_ms(fn, reps: int = 5) -> float | None:
    """Mean milliseconds of ``fn()`` replayed from a CUDA graph (None if capture fails)."""
    graph = capture_graph(fn)
    return None if graph is None else _time_ms(graph.replay, reps)


def calibrate(key: CostKey, device: torch.device | str = "cuda") -> Calibration:
    """Measure the kernel times of ``key`` on ``device`` over ``N_GRID`` and cache them (with
    ``device`` current: the timing events and the graph capture use the current device)."""
    with torch.cuda.device(device):
        return _calibrate(key, device)


def _calibrate(key: CostKey, device: torch.device | str) -> Calibration:
    dtype = getattr(torch, key.dtype)
    bs, S, D, BH = key.block_size, key.stride, key.head_dim, key.heads
    g = torch.Generator(device=device).manual_seed(0)
    cal = Calibration([], [], [], [], [], [])
    graph_ok = True  # once a capture fails, no graph times (the lists are all or nothing)
    for n in N_GRID:
        q, k, v = (
            torch.randn(1, BH, n, D, device=device, dtype=dtype, generator=g) for _ in range(3)
        )
        lens = kv_len_tensor(None, 1, n, q.device)
        padded = torch.full((1,), n - n // 16, dtype=torch.int32, device=q.device)
        nb = cdiv(n, bs)

        def overhead(q=q, k=k, lens=lens, n=n):
            mask = estimate_block_mask(
                q, k, threshold=0.9, stride=S, block_size=bs, kv_len=lens, max_density=0.5,
                backend="triton", precision=key.estimate_precision,
            )  # fmt: skip
            return block_csr(mask, kv_len=lens, block_size=bs, n_k=n)

        diag = torch.eye(nb, dtype=torch.bool, device=q.device).expand(1, BH, nb, nb)
        full = torch.ones(1, BH, nb, nb, dtype=torch.bool, device=q.device)
        attn = {}
        for name, m in (("min", diag), ("full", full)):
            counts, idx = mask_to_indices(m)
            attn[name] = lambda c=counts, i=idx, q=q, k=k, v=v, lens=lens: sparse_attention(
                q, k, v, c, i, kv_len=lens, block_size=bs, scale=None, return_lse=False,
                use_triton=True, precision=key.precision,
            )  # fmt: skip
        perm = torch.randperm(n, device=q.device, generator=g)  # not the global RNG's
        fns = {
            "dense": lambda q=q, k=k, v=v: dense_call(q, k, v, None),
            "dense_padded": lambda q=q, k=k, v=v, lens=padded: dense_call(q, k, v, lens),
            "overhead": overhead,
            "attn_min": attn["min"],
            "attn_full": attn["full"],
            "gather": lambda q=q, perm=perm: q.index_select(2, perm),
        }
        cal.cluster.append(_time_ms(functools.partial(_kmeans, (q, k), nb)))
        cal.n.append(n)
        for name, fn in fns.items():
            getattr(cal, name).append(_time_ms(fn))
            g_ms = _graph_ms(fn) if graph_ok else None
            graph_ok = g_ms is not None
            if graph_ok:
                getattr(cal, f"{name}_graph").append(g_ms)
        if not graph_ok:  # all or nothing: drop partial graph times
            for name in fns:
                getattr(cal, f"{name}_graph").clear()
        dense_ms = cal.dense[-1]
        del q, k, v, diag, full, attn
        if dense_ms > MAX_DENSE_MS:
            break
    store(key, cal)
    logger.info("cost model calibrated for %s: %s", key.id(), cal)
    return cal


def _kmeans(xs: tuple[torch.Tensor, ...], n_clusters: int) -> list[torch.Tensor]:
    return [cluster_permutation(x, n_clusters, iters=CLUSTER_ITERS) for x in xs]


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    for i in range(1, len(xs)):
        if x <= xs[i]:
            w = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
            return ys[i - 1] + w * (ys[i] - ys[i - 1])
    return ys[-1]  # pragma: no cover


def predict(
    cal: Calibration,
    n: int,
    density: float,
    *,
    block_size: int,
    refresh: int = 1,
    gathers: int = 0,
    dense_ms: float | None = None,
    graph: bool = False,
    padded: bool = False,
    clusters: bool = False,
) -> Prediction:
    """Predicted (dense, sparse) milliseconds at ``n`` tokens and block ``density``.

    refresh: the mask is estimated every ``refresh`` calls (``mask_refresh``), so the overhead
    counts 1/refresh; gathers: token permutations per call (4 for the ``tile`` order).
    dense_ms: the dense time at ``n`` if known, else extrapolated as N^2 from the grid.
    graph: use the CUDA-graph times (when measured; else the eager ones).
    padded: the call has key padding, so dense means masked SDPA (``dense_padded``).
    clusters: the ``cluster`` order, whose k-means runs with each estimate (1/refresh).
    """
    sfx = "_graph" if graph and cal.has_graph() else ""
    dense = getattr(cal, ("dense_padded" if padded else "dense") + sfx)
    if len(dense) != len(cal.n):
        raise ValueError("the calibration has no dense_padded times; calibrate again")
    xs = [math.log2(x) for x in cal.n]
    x = math.log2(max(n, 1))
    ratio = {
        name: _interp(xs, [a / d for a, d in zip(getattr(cal, name + sfx), dense, strict=True)], x)
        for name in ("overhead", "attn_min", "attn_full", "gather")
    }
    if dense_ms is None:
        i = min(range(len(cal.n)), key=lambda j: abs(xs[j] - x))
        dense_ms = dense[i] * (n / cal.n[i]) ** 2
    d_min = 1.0 / cdiv(n, block_size)
    frac = min(1.0, max(0.0, (density - d_min) / (1.0 - d_min))) if d_min < 1.0 else 1.0
    attn = ratio["attn_min"] + frac * (ratio["attn_full"] - ratio["attn_min"])
    per_mask = ratio["overhead"]
    if clusters:  # eager times in graph mode too (none measured from a graph)
        if len(cal.cluster) != len(cal.n):
            raise ValueError("the calibration has no cluster times; calibrate again")
        per_mask += _interp(xs, [a / d for a, d in zip(cal.cluster, dense, strict=True)], x)
    sparse = per_mask / max(1, refresh) + attn + gathers * ratio["gather"]
    return Prediction(dense_ms, sparse * dense_ms, sparse <= MARGIN)
