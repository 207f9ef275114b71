"""Ulysses sequence parallelism for XAttention, on diffusers' context-parallel engine.

diffusers (0.42.1) splits a transformer's sequence over ranks with
``transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=P), cp_plan=...)``:
hooks split the tokens before the first block and gather them after ``proj_out``, and every
attention processor gets ``_parallel_config``. This module adds what XAttention needs on top:

- :func:`context_parallel_plan`: the plan. Wan ships one (``WanTransformer3DModel._cp_plan``,
  returned as is). HunyuanVideo has none; ours splits the video tokens and the text tokens
  (dim 1 of ``hidden_states`` / ``encoder_hidden_states`` at the first block, so the
  transformer builds its [B, 1, 1, N] key-padding mask over the *whole* sequence, in global
  [video, text] order, and passes it unsplit), the rotary tables (rows = video tokens, split
  after ``rope``) and gathers the video tokens after ``proj_out``.
- :func:`ulysses_attention`: the all-to-alls around an attention op. Each rank holds
  [video_r, text_r] (N/P tokens, all H heads); one all-to-all gives every rank all N tokens of
  H/P heads in the order [v_0, t_0, v_1, t_1, ...]; a cached permutation turns that into the
  one-GPU order [video (t-major raster), text], so the op (dense SDPA or XAttention) sees
  exactly the one-GPU sequence for its heads, key padding and text policy included; the
  inverse permutation and a second all-to-all go back.
- :class:`GatheredStats`: density records gathered over the Ulysses ranks, so every rank
  records the one-GPU numbers (all H heads, the whole sequence) once per call.
- :class:`GatheredState`: the controller with those stats; it gives ``auto_dense`` the Ulysses
  group, over which its decisions are all-reduced, so no rank runs a layer dense while another
  runs it sparse (their collectives would not match).
- :func:`enable_context_parallel`: ``enable_parallelism`` with our plan, optional
  data-parallel groups (mesh ``("dp", "ring", "ulysses")``), and the CPU workaround below.
- :func:`check_parallel_inputs`: clear ``ValueError`` s for token or head counts that do not
  divide by P (diffusers itself only asserts), called by the check hook
  :func:`attach_parallel_check`.

CPU workaround (tests only, never active on a machine with an accelerator): diffusers 0.42.1's
``_resolve_parallel_config`` computes ``rank % torch.accelerator.device_count()``, which divides
by zero on a CPU-only machine. :func:`enable_context_parallel` then sees the count as 1 for the
duration of that call and gives diffusers a CPU device mesh; when any accelerator is present the
count is non-zero and nothing is patched.

Not supported (``ValueError``): ring attention (``ring_degree > 1``), ``ulysses_anything``
(uneven splits), a ``max_density`` budget (:func:`check_parallel_config`), token counts (video
T'*H'*W', text length) or head counts not divisible by the Ulysses degree, HunyuanVideo-I2V's
``token_replace`` blocks, HunyuanVideo Framepack, context parallelism combined with tensor
parallelism. The stock ``HunyuanVideoAttnProcessor2_0`` under
our HunyuanVideo plan is exact only without text padding (it applies the global-order mask to
the rank-interleaved keys); the XAttention processors handle the layout in both phases.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models._modeling_parallel import (
    ContextParallelConfig,
    ContextParallelInput,
    ContextParallelOutput,
)
from diffusers.models.attention_dispatch import _all_to_all_dim_exchange, dispatch_attention_fn

from .sparse_path import dense_attention, sparse_attention, xattn_dense
from .stats import XAttentionStats

CHECK_HOOK_NAME = "xattention_cp_check"

_HV_CLASSES = ("HunyuanVideoTransformer3DModel",)
_UNSUPPORTED = ("HunyuanVideoFramepackTransformer3DModel",)


def _class_names(module: torch.nn.Module) -> list[str]:
    return [cls.__name__ for cls in type(module).__mro__]


def context_parallel_plan(transformer: torch.nn.Module) -> dict[str, Any]:
    """The context-parallel plan for ``transformer.enable_parallelism(cp_plan=...)``.

    HunyuanVideo: ours (see the module docstring); Wan: diffusers' ``_cp_plan``. Other models
    raise ``ValueError`` naming the class.
    """
    names = _class_names(transformer)
    if any(n in _UNSUPPORTED for n in names):
        raise ValueError(
            f"context parallelism with XAttention does not support {type(transformer).__name__} "
            "(its history tokens and rotary tables do not split like one video grid)"
        )
    if any(n in _HV_CLASSES for n in names):
        cfg = transformer.config
        if getattr(cfg, "image_condition_type", None) == "token_replace":
            raise ValueError(
                "context_parallel_plan does not support HunyuanVideo's image_condition_type="
                "'token_replace' (its first-frame token count is a global position)"
            )
        first = (
            "transformer_blocks.0"
            if len(transformer.transformer_blocks)
            else "single_transformer_blocks.0"
        )
        return {
            "rope": {
                0: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
                1: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
            },
            first: {
                "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
                "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
            },
            "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
        }
    plan = getattr(type(transformer), "_cp_plan", None)
    if "WanTransformer3DModel" in names and plan is not None:
        return plan
    raise ValueError(
        f"no context-parallel plan for {type(transformer).__name__}; supported: "
        "HunyuanVideoTransformer3DModel, WanTransformer3DModel"
    )


# -- the Ulysses group --------------------------------------------------------------------------
def ulysses_group(parallel_config: Any) -> tuple[Any, int] | None:
    """(process group, degree P) of a processor's ``_parallel_config``, or None without context
    parallelism. Raises ``ValueError`` for the combinations XAttention does not support."""
    if parallel_config is None:
        return None
    cp = getattr(parallel_config, "context_parallel_config", parallel_config)
    if cp is None:
        return None
    if not isinstance(cp, ContextParallelConfig):
        raise ValueError(f"unsupported parallel config {type(parallel_config).__name__}")
    if cp.ring_degree > 1:
        raise ValueError(
            f"XAttention supports Ulysses context parallelism only; got ring_degree="
            f"{cp.ring_degree} (use ContextParallelConfig(ulysses_degree=P))"
        )
    if cp.ulysses_anything:
        raise ValueError(
            "XAttention does not support ulysses_anything=True (uneven splits); use token and "
            "head counts divisible by ulysses_degree"
        )
    if cp._ulysses_mesh is None:
        raise ValueError("the context-parallel config is not set up (call enable_parallelism)")
    return cp._ulysses_mesh.get_group(), int(cp.ulysses_degree)


_ORDERS: dict[tuple[int, int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def check_parallel_config(cfg: Any) -> None:
    """``ValueError`` for an ``XAttentionConfig`` that Ulysses can't run as one GPU does: a
    ``max_density`` budget is spent over all of a sample's heads, which the ranks split (each
    would budget its H/P heads alone: other blocks, other densities)."""
    if cfg.max_density < 1.0:
        raise ValueError(
            f"max_density={cfg.max_density} is not supported under Ulysses sequence "
            "parallelism: its budget is spent over all heads of a sample, which the ranks "
            "split; use a threshold or ratio without a budget (max_density=1.0)"
        )


def joint_order(
    n_video: int, n_text: int, degree: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm, inv), (P*(n_video+n_text),) int64: ``x[:, perm]`` turns the rank-interleaved
    order [v_0, t_0, v_1, t_1, ...] (n_video + n_text tokens per rank) into [v_0 .. v_P-1,
    t_0 .. t_P-1]; ``inv`` undoes it. Cached per (sizes, device)."""
    key = (n_video, n_text, degree, str(device))
    if key not in _ORDERS:
        local = n_video + n_text
        starts = torch.arange(degree, device=device)[:, None] * local
        video = (starts + torch.arange(n_video, device=device)[None, :]).reshape(-1)
        text = (starts + n_video + torch.arange(n_text, device=device)[None, :]).reshape(-1)
        perm = torch.cat([video, text])
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.numel(), device=device)
        _ORDERS[key] = (perm, inv)
    return _ORDERS[key]


def ulysses_attention(
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    group: Any,
    degree: int,
    n_text: int = 0,
) -> torch.Tensor:
    """Run ``fn`` on the whole sequence with H/P heads per rank; returns [B, n, H, D].

    query/key/value: [B, n, H, D] on each rank: its ``n - n_text`` video tokens then its
    ``n_text`` text tokens (n_text = 0: video only). ``fn(q, k, v)`` gets [B, P*n, H/P, D] in the
    one-GPU order [all video, all text] and returns a tensor of that shape.
    """
    heads = query.shape[2]
    if heads % degree:
        raise ValueError(
            f"the head count ({heads}) must be divisible by the Ulysses degree ({degree})"
        )
    n_video = query.shape[1] - n_text
    q, k, v = (_all_to_all_dim_exchange(x.contiguous(), 2, 1, group) for x in (query, key, value))
    inv = None
    if n_text and degree > 1:
        perm, inv = joint_order(n_video, n_text, degree, q.device)
        q, k, v = (x.index_select(1, perm) for x in (q, k, v))
    out = fn(q, k, v)
    if inv is not None:
        out = out.index_select(1, inv)
    return _all_to_all_dim_exchange(out.contiguous(), 1, 2, group)


class GatheredStats:
    """An :class:`XAttentionStats` view for one Ulysses call: ``record`` / ``add`` gather the
    per-head densities of all ranks (rank r holds heads r*H/P .. (r+1)*H/P - 1, a list or a
    device tensor) and record the call once with all H heads and their mean, as one GPU would
    -- so every rank holds the same records and the same density feedback. Other attributes
    are forwarded."""

    def __init__(self, stats: XAttentionStats, group: Any, device: torch.device) -> None:
        self._stats = stats
        self._group = group
        self._device = device

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stats, name)

    def _gather(self, heads: list[float] | torch.Tensor) -> list[float] | torch.Tensor:
        is_tensor = isinstance(heads, torch.Tensor)
        local = (
            heads.detach().reshape(-1).contiguous()
            if is_tensor
            else torch.tensor(heads, dtype=torch.float64, device=self._device)
        )
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size(self._group))]
        dist.all_gather(parts, local, group=self._group)
        full = torch.cat(parts)
        return full if is_tensor else full.tolist()

    def record(self, *, heads: list[float] | torch.Tensor | None = None, **kw: Any) -> None:
        if heads is not None:
            heads = self._gather(heads)
            kw["density"] = None if isinstance(heads, torch.Tensor) else sum(heads) / len(heads)
        self._stats.record(heads=heads, **kw)

    def add(self, layer: int, *, heads: torch.Tensor | None = None, **kw: Any) -> None:
        self._stats.add(layer, heads=None if heads is None else self._gather(heads), **kw)


class GatheredState:
    """The controller seen through :class:`GatheredStats` (``stats`` replaced, the rest
    forwarded), for the sparse path of one Ulysses call. It gives the controller's
    ``auto_dense`` the group, so that its decisions agree over the ranks: every rank must take
    the same branch (the sparse path's stats gather is a collective, and the processors branch
    on ``controller.is_sparse``), but each decides from its own GPU's calibration;
    :class:`~xattn_video.auto_dense.AutoDense` all-reduces each decision where it is made
    (dense if any rank says dense) and stores the agreed value."""

    def __init__(self, controller: Any, group: Any, device: torch.device, heads: int) -> None:
        self._controller = controller
        self.stats = GatheredStats(controller.stats, group, device)
        # this rank's heads of the layer (rank r: r*H/P ..): its slice of per-head thresholds
        self.heads = {
            "first_head": dist.get_rank(group) * heads,
            "total_heads": dist.get_world_size(group) * heads,
        }
        auto_dense = getattr(controller, "auto_dense", None)
        if auto_dense is not None:
            auto_dense.group = group

    def __getattr__(self, name: str) -> Any:
        return getattr(self._controller, name)


def processor_attention(
    controller: Any,
    attn: torch.nn.Module,
    layer: int,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    group: Any,
    degree: int,
    n_text: int,
    sparse: bool,
    kv_len: torch.Tensor | None,
    dense_from: int | None,
    zero_padded_queries: bool = False,
    attention_mask: torch.Tensor | None = None,
    backend: Any = None,
) -> torch.Tensor:
    """One XAttention processor call under Ulysses; returns [B, n, H, D] (this rank's tokens).

    query/key/value: [B, n, H, D], this rank's ``n - n_text`` video then ``n_text`` text
    tokens. kv_len / dense_from: for the whole sequence (one-GPU values). ``sparse``: the
    sparse path (:func:`xattn_video.sparse_path.sparse_attention`, stats gathered over ranks,
    masks cached per rank for its H/P heads); else dense: ``dispatch_attention_fn`` with the
    whole-sequence ``attention_mask`` and the processor's ``backend``, as on one GPU, or
    :func:`xattn_video.sparse_path.dense_attention` with ``dense_kernel="xattn"``
    (:func:`~xattn_video.sparse_path.xattn_dense`).
    zero_padded_queries: zero query rows at positions >= kv_len first (``text_policy="sparse"``).
    """
    n_video = (query.shape[1] - n_text) * degree
    if sparse:
        check_parallel_config(controller.cfg)

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not sparse and xattn_dense(controller, layer):
            return dense_attention(controller.cfg, q, k, v, kv_len=kv_len)
        if not sparse:
            return dispatch_attention_fn(
                q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                backend=backend, parallel_config=None,
            )  # fmt: skip
        if zero_padded_queries and kv_len is not None:
            valid = torch.arange(q.shape[1], device=q.device)[None, :] < kv_len[:, None]
            q = q * valid[:, :, None, None].to(q.dtype)
        state = GatheredState(controller, group, q.device, heads=q.shape[2])
        return sparse_attention(
            state, attn, layer, q, k, v, n_video=n_video, kv_len=kv_len, dense_from=dense_from
        )

    return ulysses_attention(fn, query, key, value, group=group, degree=degree, n_text=n_text)


# -- input checks ---------------------------------------------------------------------------------
def _patch_size(transformer: torch.nn.Module) -> tuple[int, int, int]:
    p = transformer.config.patch_size
    if isinstance(p, (tuple, list)):
        return tuple(int(x) for x in p)
    return (int(getattr(transformer.config, "patch_size_t", 1) or 1), int(p), int(p))


def check_parallel_inputs(
    transformer: torch.nn.Module,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None = None,
) -> None:
    """``ValueError`` if the transformer's context-parallel split cannot divide this input.

    hidden_states: [B, C, T, H, W] latents; encoder_hidden_states: [B, L, C_text] (split for
    HunyuanVideo, not for Wan). No-op without context parallelism.
    """
    pc = getattr(transformer, "_parallel_config", None)
    ug = ulysses_group(pc)
    if ug is None:
        return
    P = ug[1]
    heads = int(transformer.config.num_attention_heads)
    if heads % P:
        raise ValueError(f"num_attention_heads ({heads}) must be divisible by ulysses_degree {P}")
    T, H, W = hidden_states.shape[-3:]
    pt, ph, pw = _patch_size(transformer)
    grid = (T // pt, H // ph, W // pw)
    n_video = math.prod(grid)
    if n_video % P:
        raise ValueError(
            f"the video token count {n_video} (latent grid {grid}) is not divisible by "
            f"ulysses_degree {P}: choose a height / width / frame count giving a multiple of {P}"
        )
    if encoder_hidden_states is not None and any(
        n in _HV_CLASSES for n in _class_names(transformer)
    ):
        L = encoder_hidden_states.shape[1]
        if L % P:
            raise ValueError(
                f"the text length {L} (encoder_hidden_states dim 1) is not divisible by "
                f"ulysses_degree {P}: pad the prompt embeddings to a multiple of {P} "
                "(max_sequence_length)"
            )


class _ParallelCheckHook(ModelHook):
    """Runs :func:`check_parallel_inputs` before every forward of the transformer."""

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        hs = kwargs.get("hidden_states", args[0] if args else None)
        ehs = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        if isinstance(hs, torch.Tensor) and hs.ndim == 5:
            check_parallel_inputs(
                module, hs, ehs if isinstance(ehs, torch.Tensor) and ehs.ndim == 3 else None
            )
        return args, kwargs


def attach_parallel_check(transformer: torch.nn.Module) -> None:
    """Register the input-check hook on ``transformer`` (idempotent)."""
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(CHECK_HOOK_NAME) is None:
        registry.register_hook(_ParallelCheckHook(), CHECK_HOOK_NAME)


# -- enabling ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def _cpu_device_count() -> Iterator[bool]:
    """On a machine without any accelerator, make ``torch.accelerator.device_count()`` return 1
    inside the block (diffusers 0.42.1 takes ``rank % device_count()``); yields whether it
    patched. With an accelerator present nothing is changed."""
    original = torch.accelerator.device_count
    if original() > 0:
        yield False
        return
    torch.accelerator.device_count = lambda: 1
    try:
        yield True
    finally:
        torch.accelerator.device_count = original


def make_mesh(ulysses_degree: int, device_type: str | None = None):
    """A ``("dp", "ring", "ulysses")`` device mesh of shape (world / P, 1, P): ranks
    g*P .. g*P+P-1 form data-parallel group g. ``ValueError`` if P does not divide the world."""
    world = dist.get_world_size()
    if ulysses_degree < 1 or world % ulysses_degree:
        raise ValueError(f"ulysses_degree ({ulysses_degree}) must divide the world size ({world})")
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(
        device_type,
        (world // ulysses_degree, 1, ulysses_degree),
        mesh_dim_names=("dp", "ring", "ulysses"),
    )


def enable_context_parallel(
    transformer: torch.nn.Module, ulysses_degree: int, *, mesh: Any = None
) -> ContextParallelConfig:
    """``transformer.enable_parallelism`` with Ulysses degree P and :func:`context_parallel_plan`.

    Needs ``torch.distributed`` initialised (torchrun / accelerate launch). mesh: default
    :func:`make_mesh` (data-parallel groups of P consecutive ranks). Registers the input-check
    hook. Returns the ``ContextParallelConfig`` (its ``_ulysses_mesh`` / ``_mesh`` set up).
    """
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("enable_context_parallel needs torch.distributed initialised (torchrun)")
    if ulysses_degree < 2:
        raise ValueError(f"ulysses_degree must be >= 2, got {ulysses_degree}")
    for module in transformer.modules():  # XAttention applied first: its config, before a split
        controller = getattr(getattr(module, "processor", None), "controller", None)
        if controller is not None:
            check_parallel_config(controller.cfg)
            break
    plan = context_parallel_plan(transformer)
    mesh = mesh if mesh is not None else make_mesh(ulysses_degree)
    config = ContextParallelConfig(ulysses_degree=ulysses_degree, mesh=mesh)
    with _cpu_device_count():
        transformer.enable_parallelism(config=config, cp_plan=plan)
    attach_parallel_check(transformer)
    return config
