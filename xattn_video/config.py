"""``XAttentionConfig``: every knob of XAttention in a diffusers pipeline, plus model presets.

The CLI flags map 1:1 onto the fields (``--warmup-steps`` <-> ``warmup_steps``); see
:func:`xattn_video.config.config_fields` for the generated mapping.

Per-layer, per-head thresholds come from a calibration file (``thresholds_file``, see
:mod:`xattn_video.thresholds`). Not supported: causal models.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .attention import BACKENDS, BLOCK_SIZES, STRIDES
from .op_checks import check_estimate_kernel, check_precision, resolve_estimate_precision
from .scalars import is_integer, is_real

SELECTIONS = ("threshold", "ratio")
TEXT_POLICIES = ("dense", "sparse")
TOKEN_ORDERS = ("raster", "tile", "hilbert", "cluster")
DENSE_KERNELS = ("stock", "xattn")


@dataclass(frozen=True)
class XAttentionConfig:
    """Configuration of XAttention for a video DiT (frozen; build a new one with ``replace``)."""

    threshold: float = 0.9
    """Threshold mode: per query-block row keep the smallest set of key blocks whose estimated
    attention mass reaches this fraction (0, 1]. Higher keeps more blocks (denser, closer to
    dense attention). The paper uses 0.9 and 0.95."""

    stride: int = 8
    """Antidiagonal stride S of the estimate (2, 4, 8 or 16; must divide ``block_size``). The
    estimate costs about 1/(2S) of dense attention FLOPs; larger S is cheaper but coarser."""

    block_size: int = 128
    """Tokens per block, for both queries and keys (64 or 128 on GPU; 16/32 for tests)."""

    selection: Literal["threshold", "ratio"] = "threshold"
    """``threshold``: adaptive blocks per row reaching ``threshold`` of the mass (XAttention).
    ``ratio``: keep the top ``ratio`` fraction of key blocks per row (pins the density, for
    benchmarks)."""

    ratio: float = 0.3
    """Kept fraction of key blocks per row in ``ratio`` mode, in (0, 1]. Ignored otherwise."""

    warmup_steps: int = 5
    """Denoising steps run with dense attention before switching to XAttention (the paper: 5
    of 50). Steps are counted from 0 within each pipeline call, from the first step it runs
    (a video-to-video call with ``strength`` 0.5 of 50 steps runs steps 0-24); a Heun-type
    scheduler's two forwards a step count as one step."""

    dense_last_steps: int = 0
    """Final denoising steps that run dense again (needs the pipeline's step count, read from
    the scheduler)."""

    dense_layers: tuple[int, ...] = ()
    """Indices of attention layers that always run dense, in the model's processor order
    (HunyuanVideo: 0-19 double-stream blocks, 20-59 single-stream blocks; Wan: block index,
    then Wan VACE's control blocks: ``len(blocks) + j``)."""

    text_policy: Literal["dense", "sparse"] = "dense"
    """Joint text tokens (HunyuanVideo): ``dense`` keeps every block holding a valid text token
    dense as a query row and a key column; ``sparse`` lets text blocks compete in the selection
    like video blocks (the paper's behaviour). Padded text keys are never attended either way."""

    token_order: Literal["raster", "tile", "hilbert", "cluster"] = "raster"
    """Order of video tokens inside the attention: ``raster`` as the model emits them (the
    paper), ``tile`` permutes them into 3-D tiles of ``tile_size`` latent tokens so each block
    is a compact space-time cube, ``hilbert`` along a 3-D Hilbert curve over the latent grid,
    ``cluster`` per head by k-means on the keys (key order) and on the queries (query order),
    started from the tile order -- computed in every call (reused with the mask under
    ``mask_refresh``); all are undone afterwards."""

    tile_size: tuple[int, int, int] = (2, 8, 8)
    """(frames, height, width) of a tile in latent tokens, for ``token_order='tile'`` and
    ``'cluster'`` (whose k-means starts from the tile order). Its volume should equal
    ``block_size`` (2*8*8 = 128); edge tiles may be smaller."""

    max_density: float = 1.0
    """Density budget per attention call, in (0, 1]: at most this share of the (query block,
    key block) pairs is kept even if ``threshold`` is not reached, the budget going to the
    blocks holding the largest share of their row's estimated mass (text blocks and each row's
    best block are always kept). 1.0: no budget."""

    thresholds_file: str = ""
    """Path of a per-(layer, head) thresholds JSON written by ``xattn-video calibrate``: the
    layers it lists use their heads' thresholds instead of ``threshold``. It must have been
    calibrated with this config's stride, block size, token order, text policy and (for the
    tile and cluster orders) tile size. Empty: one ``threshold`` everywhere. Not with
    ``selection="ratio"``, which uses no threshold."""

    mask_refresh: int = 1
    """Re-estimate the block mask every this many sparse steps per layer and reuse it in
    between (1: estimate at every step, as the paper)."""

    backend: Literal["auto", "triton", "torch"] = "auto"
    """Kernel backend: ``triton`` (CUDA), ``torch`` (PyTorch reference, CPU), ``auto`` (Triton
    on CUDA, torch otherwise)."""

    precision: Literal["bf16", "fp8"] = "bf16"
    """Arithmetic of the sparse attention: ``bf16`` (the model's dtype) or ``fp8`` (Q.K^T and
    P.V in e4m3 with per-block scales on Hopper GPUs, Triton backend; the mask estimate follows
    it unless ``estimate_precision`` says otherwise). fp8 is faster and less exact (about 5%
    relative L2 error on random inputs)."""

    estimate_precision: Literal["auto", "bf16", "fp8"] = "auto"
    """Arithmetic of the mask estimate: ``bf16``, ``fp8`` (Q.K^T in e4m3 with one scale per
    block: 25-42% less estimate time on the H200; on the Triton backend sm90+ GPUs only, the
    torch backend emulates it; head dim >= 32) or ``auto`` (the default): fp8 with fp8
    attention, and with bf16 attention on the Triton backend on Hopper GPUs (sm90: H100 / H200)
    at head dim 64 or 128, where it was measured to keep the masks and the quality; bf16
    elsewhere. Masks can differ from bf16 ones where
    blocks' estimated masses nearly tie (0.13% of block pairs on the trained tiny DiT)."""

    estimate_kernel: Literal["auto", "prefer-gluon"] = "auto"
    """Kernel of the mask estimate on the Triton backend: ``auto`` (the Triton estimate) or
    ``prefer-gluon``, the experimental warp-specialized Gluon estimate wherever it was measured
    faster on this GPU (``kernels.tuning.GLUON_ESTIMATE``; on the H200 from 32k query tokens:
    bf16 stride 8, fp8 strides 8 / 16, 13-24% less estimate time), the Triton one elsewhere.
    Same scores up to accumulation order. Not the default because one GPU test run stalled
    inside it and the cause is unknown (docs/attention-kernels.md, "Estimate"); the torch
    backend ignores it, and ``auto_dense``'s cost model still times the Triton estimate."""

    dense_kernel: Literal["stock", "xattn"] = "stock"
    """Attention of the dense calls (warm-up and ``dense_last_steps`` steps, ``dense_layers``):
    ``stock`` runs the model's own diffusers processor, bit-identical to a run without
    XAttention; ``xattn`` runs the XAttention kernel with every block selected -- exact
    attention over the valid keys, in the model's dtype, the key padding passed as lengths
    instead of a mask (one H200, 119,056 tokens with HunyuanVideo's text padding: 287 ms a
    call against 454 ms for SDPA with the padding mask and 314 ms for cuDNN on the valid keys
    alone; ``benchmarks/probe_dense_padded.py``). Calls that ``auto_dense`` sends dense stay
    SDPA."""

    collect_stats: bool = True
    """Record the block density of every call. The numbers stay on the GPU and are copied to
    the host in one transfer when read (``stats.summary()``), so recording adds no sync."""

    auto_dense: bool = True
    """Run a sparse-phase attention call dense when the cost model (kernel times measured once
    on this GPU, :mod:`xattn_video.cost_model`) predicts the sparse path to be slower at this
    token count and the layer's measured density (the estimate, the token order's gathers and
    the ``cluster`` order's k-means included), so XAttention is not slower than dense beyond the
    model's error. Counted in the stats (``num_cost_dense_calls``). Applies to the Triton
    backend on CUDA only. Turn off for research runs that must run the schedule exactly."""

    def __post_init__(self) -> None:
        _check_field_types(self)  # first: the range checks below rely on the types
        if not (0.0 < float(self.threshold) <= 1.0):
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.block_size not in BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {BLOCK_SIZES}, got {self.block_size}")
        if self.stride not in STRIDES or self.block_size % self.stride:
            raise ValueError(
                f"stride must be one of {STRIDES} and divide block_size={self.block_size}, "
                f"got {self.stride}"
            )
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if not (0.0 < float(self.ratio) <= 1.0):
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        for name in ("warmup_steps", "dense_last_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (0.0 < float(self.max_density) <= 1.0):
            raise ValueError(f"max_density must be in (0, 1], got {self.max_density}")
        if not isinstance(self.thresholds_file, str):
            raise ValueError(f"thresholds_file must be a path string, got {self.thresholds_file!r}")
        if self.mask_refresh < 1:
            raise ValueError(f"mask_refresh must be >= 1, got {self.mask_refresh}")
        if self.text_policy not in TEXT_POLICIES:
            raise ValueError(
                f"text_policy must be one of {TEXT_POLICIES}, got {self.text_policy!r}"
            )
        if self.token_order not in TOKEN_ORDERS:
            raise ValueError(f"token_order must be one of {TOKEN_ORDERS}, got {self.token_order!r}")
        if len(self.tile_size) != 3 or min(self.tile_size) < 1:
            raise ValueError(f"tile_size must be 3 positive ints, got {self.tile_size}")
        if not isinstance(self.auto_dense, bool):
            raise ValueError(f"auto_dense must be a bool, got {self.auto_dense!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        check_precision(self.precision)
        if self.precision == "fp8" and self.backend == "torch":
            raise ValueError("precision='fp8' needs backend 'triton' or 'auto' (Hopper GPUs)")
        resolve_estimate_precision(
            self.estimate_precision,
            self.precision,
            backend=self.backend,
            device=None,
            head_dim=None,
        )
        check_estimate_kernel(self.estimate_kernel)
        if self.dense_kernel not in DENSE_KERNELS:
            raise ValueError(
                f"dense_kernel must be one of {DENSE_KERNELS}, got {self.dense_kernel!r}"
            )
        if any(int(i) < 0 for i in self.dense_layers):
            raise ValueError(f"dense_layers must be non-negative, got {self.dense_layers}")
        object.__setattr__(self, "dense_layers", tuple(int(i) for i in self.dense_layers))
        object.__setattr__(self, "tile_size", tuple(int(i) for i in self.tile_size))
        if self.thresholds_file:  # last: it compares fields checked above with the file's
            if self.selection == "ratio":  # was loaded, recorded in run.json and never used
                raise ValueError(
                    "thresholds_file gives per-head thresholds, which selection='ratio' does "
                    "not use: pass selection='threshold' (the default) or no thresholds file"
                )
            from . import thresholds as _thresholds

            _thresholds.check_file_matches(self.thresholds_file, self)

    def replace(self, **changes: Any) -> XAttentionConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def resolved(
        self, device: torch.device | str | None = None, head_dim: int | None = None
    ) -> XAttentionConfig:
        """This config with ``estimate_precision`` "auto" replaced by what it stands for on
        ``device``, where the model runs (None: no GPU), at the model's attention ``head_dim``
        (None: not known): fp8 with fp8 attention, and with bf16 attention on the Triton
        backend on Hopper GPUs at head dim 64 or 128
        (:func:`.op_checks.resolve_estimate_precision`), bf16 elsewhere. What a run record
        stores, so that it says what ran. (The other "auto" fields depend on the GPU and on the
        call, and stay.)"""
        return self.replace(
            estimate_precision=resolve_estimate_precision(
                self.estimate_precision,
                self.precision,
                backend=self.backend,
                device=device,
                head_dim=head_dim,
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of all fields."""
        d = dataclasses.asdict(self)
        d["dense_layers"] = list(self.dense_layers)
        d["tile_size"] = list(self.tile_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> XAttentionConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown XAttentionConfig fields: {sorted(unknown)}")
        kw = dict(d)
        for key in ("dense_layers", "tile_size"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> XAttentionConfig:
        """Preset by name (see ``PRESETS``), with optional field overrides.

        ``hunyuanvideo`` and ``wan`` are the real models'; ``tiny`` is the random-weight test
        models' (the CLI's ``tiny-hunyuan`` and ``tiny-wan``, also accepted as names here);
        ``tiny-dit`` is the trained tiny DiT's, which the CLI calls ``--model tiny``."""
        key = PRESET_ALIASES.get(name.lower(), name.lower())
        if key not in PRESETS:
            raise ValueError(
                f"unknown model preset {name!r}; known: {sorted(PRESETS)} (the CLI's --model "
                "tiny, the trained tiny DiT, uses 'tiny-dit')"
            )
        return cls(**{**PRESETS[key], **overrides})


@functools.cache
def _field_hints() -> dict[str, Any]:
    return typing.get_type_hints(XAttentionConfig)


def _as_float(value: Any) -> float:
    """float(value), an int too large for a float as +-inf (the range checks then refuse it
    with the field's ValueError, not an OverflowError)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _check_field_types(cfg: XAttentionConfig) -> None:
    """ValueError naming the field for a value of the wrong type (``warmup_steps=1.5`` or
    ``'3'``, ``collect_stats='no'``); numpy scalars are accepted and stored as Python
    bool / int / float, lists for tuple fields as tuples."""
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), _field_hints()[f.name]
        origin = typing.get_origin(hint)
        is_int = is_integer(value)
        if hint is bool:
            ok, want = isinstance(value, (bool, np.bool_)), "a bool"
            value = bool(value) if ok else value
        elif hint is int:
            ok, want = is_int, "an int"
            value = int(value) if ok else value
        elif hint is float:
            ok = is_real(value)
            want, value = "a number", _as_float(value) if ok else value
        elif hint is str or origin is Literal:
            ok, want = isinstance(value, str), "a string"
        elif origin is tuple:
            ok = isinstance(value, (tuple, list)) and all(is_integer(x) for x in value)
            want = "a tuple of ints"
            value = tuple(int(x) for x in value) if ok else value
        else:  # a field type this check does not know: fail loudly, like the CLI does
            raise TypeError(f"no type check for XAttentionConfig.{f.name}: {hint!r}")
        if not ok:
            raise ValueError(f"{f.name} must be {want}, got {value!r} ({type(value).__name__})")
        object.__setattr__(cfg, f.name, value)


PRESETS: dict[str, dict[str, Any]] = {
    # The XAttention paper's HunyuanVideo setting (run_vbench.py): tau 0.9, S=8, 5/50 dense.
    "hunyuanvideo": dict(threshold=0.9, stride=8, block_size=128, warmup_steps=5),
    # HunyuanVideo 1.5 (the same joint [video, text] attention, 50 steps by default): the same.
    "hunyuanvideo15": dict(threshold=0.9, stride=8, block_size=128, warmup_steps=5),
    # Wan 2.1/2.2 video self-attention (no joint text): peers keep ~20% of the steps dense.
    "wan": dict(threshold=0.9, stride=8, block_size=128, warmup_steps=10),
    # CPU-sized random-weight models (tests): small blocks so short sequences have many blocks.
    "tiny": dict(threshold=0.9, stride=4, block_size=16, warmup_steps=1, backend="auto"),
    # The trained tiny DiT (pipelines/tiny/assets/tiny_dit): Hilbert order, 2 dense warm-up
    # steps of 30, then tau 0.97 under a 0.357 density budget with the mask re-estimated every
    # 3rd step: effective density <= 0.40 with >= 30 dB mean and >= 25 dB worst video vs dense
    # on held-out videos at 17,408 tokens (H200, docs/results/sweep_methods_h200*.json; the
    # earlier tile / no warm-up / budget 0.4 preset: 30.86 dB, worst 23.43).
    "tiny-dit": dict(
        threshold=0.97,
        max_density=0.357,
        stride=8,
        block_size=128,
        warmup_steps=2,
        mask_refresh=3,
        token_order="hilbert",
    ),
}


PRESET_ALIASES = {"tiny-hunyuan": "tiny", "tiny-wan": "tiny"}
"""The CLI's random-weight models, by their ``--model`` names, -> their preset."""


def config_fields() -> list[dataclasses.Field]:
    """The dataclass fields, in order (the CLI builds one flag per field)."""
    return list(dataclasses.fields(XAttentionConfig))


def field_docs() -> dict[str, str]:
    """Field name -> its docstring (read from this module's source), for CLI help texts."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(XAttentionConfig))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr):
            if isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
