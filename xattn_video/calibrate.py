"""Calibration of per-(layer, head) XAttention thresholds against the true attention mass.

XAttention keeps, per query-block row, the blocks holding ``threshold`` of the *estimated*
mass. How much of the *true* attention mass that keeps differs from head to head (some heads'
estimates are sharp, others flat), so one threshold over-spends on some heads and starves
others. The calibration runs a model on a few prompts with exact attention routed through the
sparse path (all blocks kept, the config's token order applied, so the estimate sees what it
will see at inference), and for sampled denoising steps it measures per layer and head:

1. the true block mass: exact softmax probabilities summed per (query block, key block);
2. the estimated block scores (the op's estimate, same stride / block size / order);
3. for every threshold ``tau`` of a grid: the estimate's selection at ``tau`` (the same rule as
   the op: blocks in descending estimated order until ``tau`` of the row's estimated mass,
   text rows / columns forced dense), the share of each row's true mass it keeps, and its
   block count -- i.e. the smallest exact block set covering a target mass is mapped back to
   the estimate's mass through the curve ``tau -> true mass kept``.

The curves are averaged over video rows, samples and steps and saved in a thresholds file
(:mod:`xattn_video.thresholds`), with the thresholds for a target (the true mass every head
must keep, or a mean density to spend where it keeps the most mass). ``XAttentionConfig``'s
``thresholds_file`` loads it.

Not supported: calibrating per denoising step or per row; models other than those the
processors support; resuming an interrupted calibration (it is cheap: a few dense videos);
context-parallel (Ulysses) transformers, refused (each rank sees its share of the heads);
two-expert pipelines (Wan 2.2 A14B's ``transformer_2``): both experts number their layers
0..N-1 at run time (one controller, shared ``dense_layers`` and stats), so a file's layer ``i``
would apply to both; :func:`calibrate_pipeline` refuses them (``ValueError``) rather than average
the two experts' heads into one set of thresholds.
"""

from __future__ import annotations

import datetime
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from . import __version__
from . import attention as _attention
from .attention import dense_blocks
from .config import XAttentionConfig
from .parallel import ulysses_group
from .thresholds import (
    FORMAT,
    check_targets,
    check_taus,
    choose_thresholds,
    default_taus,
    expected_density,
    validate,
)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


MASS_CHUNK_BYTES = 2**32
"""fp32 logits of one row chunk of :func:`true_block_mass` (4 GiB; two such tensors live at once:
2048 rows at HunyuanVideo 720p were 22 GiB each, ~67 GiB with the softmax and its padding)."""


def mass_chunk_rows(batch_heads: int, n_keys: int, block_size: int) -> int:
    """Query rows per chunk of :func:`true_block_mass` by default: whole blocks whose fp32
    logits (``batch_heads`` x rows x ``n_keys``) fit :data:`MASS_CHUNK_BYTES`, at least one."""
    rows = MASS_CHUNK_BYTES // (4 * max(1, batch_heads * n_keys))
    return max(block_size, rows // block_size * block_size)


def true_block_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block_size: int,
    kv_len: torch.Tensor | None = None,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Exact softmax mass per (query block, key block), summed over the block's query rows.

    q: (B, H, Nq, D), k: (B, H, Nk, D); kv_len: (B,) int, keys >= kv_len[b] get no mass.
    Returns (B, H, Nbq, Nbk) float64; every valid query row contributes 1 in total, so a full
    query block's row of blocks sums to ``block_size``. Computed in fp32 in row chunks
    (``chunk_rows``, rounded to whole blocks; None: :func:`mass_chunk_rows`).
    """
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    nbq, nbk = _cdiv(Nq, block_size), _cdiv(Nk, block_size)
    lens = torch.full((B,), Nk, device=q.device) if kv_len is None else kv_len.to(q.device)
    key_ok = torch.arange(Nk, device=q.device)[None, :] < lens[:, None]  # (B, Nk)
    kf = k.float()
    scale = D**-0.5
    rows = mass_chunk_rows(B * H, Nk, block_size) if chunk_rows is None else chunk_rows
    chunk = max(block_size, (rows // block_size) * block_size)
    out = torch.zeros(B, H, nbq, nbk, dtype=torch.float64, device=q.device)
    for r0 in range(0, Nq, chunk):
        r1 = min(Nq, r0 + chunk)
        logits = torch.einsum("bhnd,bhmd->bhnm", q[:, :, r0:r1].float(), kf).mul_(scale)
        logits.masked_fill_(~key_ok[:, None, None, :], float("-inf"))
        p = torch.softmax(logits, dim=-1)
        del logits  # one chunk-sized tensor at a time from here
        if Nk % block_size:
            p = F.pad(p, (0, nbk * block_size - Nk))
        p = p.view(B, H, r1 - r0, nbk, block_size).sum(-1)
        rows = r1 - r0
        p = F.pad(p, (0, 0, 0, _cdiv(rows, block_size) * block_size - rows))
        p = p.view(B, H, -1, block_size, nbk).sum(3)
        out[:, :, r0 // block_size : r0 // block_size + p.shape[2]] = p.double()
    return out


def mass_curves(
    scores: torch.Tensor,
    true_mass: torch.Tensor,
    taus: Sequence[float],
    *,
    block_size: int,
    kv_len: torch.Tensor | None = None,
    dense_from: int | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """True mass kept and blocks kept by the threshold selection at every ``tau``.

    scores: (B, H, Nbq, Nbk) estimated block mass; true_mass: the same shape, from
    :func:`true_block_mass`; taus: G thresholds in (0, 1]; kv_len: (B,) int valid keys;
    dense_from: first token whose rows / columns are forced dense (text), as in the op.
    Returns float64 sums over samples: ``kept`` (H, G) sum of per-row kept shares and ``rows``
    (H,) over the counted rows (query-block rows that are not forced and hold true mass: the
    mass a threshold keeps); ``blocks`` (H, G) kept blocks and ``pairs`` (H,) valid (row, key
    block) pairs over the counted rows and the forced ones (which keep every valid block), so
    ``blocks / pairs`` is the density the run measures and computes.
    """
    B, H, nbq, nbk = scores.shape
    dev = scores.device
    n_k = nbk * block_size
    lens = torch.full((B,), n_k, device=dev) if kv_len is None else kv_len.to(dev)
    valid = (torch.arange(nbk, device=dev) * block_size)[None, :] < lens[:, None]  # (B, Nbk)
    fcols = dense_blocks(dense_from, B, n_k, block_size, dev)
    frows = dense_blocks(dense_from, B, nbq * block_size, block_size, dev)
    fcols = torch.zeros(B, nbk, dtype=torch.bool, device=dev) if fcols is None else fcols[:, :nbk]
    frows = torch.zeros(B, nbq, dtype=torch.bool, device=dev) if frows is None else frows[:, :nbq]
    fcols = fcols & valid
    s = scores.double().masked_fill(~valid[:, None, None, :], 0.0)
    t = true_mass.double().masked_fill(~valid[:, None, None, :], 0.0)
    s_sorted, order = torch.sort(s, dim=-1, descending=True, stable=True)
    csum = s_sorted.cumsum(-1)
    before = csum - s_sorted
    total = csum[..., -1:]
    tau = torch.tensor(list(taus), dtype=torch.float64, device=dev)
    G = tau.numel()
    # count[g] = blocks kept at tau[g]: ranks whose mass before them is < tau * total (>= 1)
    cmp = before[..., None, :] < tau.view(1, 1, 1, G, 1) * total[..., None, :]
    count = cmp.sum(-1).clamp(min=1)  # (B, H, Nbq, G)
    n_valid = valid.sum(-1).view(B, 1, 1, 1).expand(B, H, nbq, G)
    count = torch.where(tau.view(1, 1, 1, G) >= 1.0, n_valid, count).clamp(max=nbk)
    fc = fcols[:, None, None, :].expand(B, H, nbq, nbk)
    nf_sorted = ~fc.gather(-1, order)
    t_sorted = t.gather(-1, order)
    cum_t = (t_sorted * nf_sorted).cumsum(-1)
    cum_n = nf_sorted.double().cumsum(-1)
    forced_t = (t * fc).sum(-1, keepdim=True)  # (B, H, Nbq, 1)
    forced_n = fc.double().sum(-1, keepdim=True)
    kept = forced_t + cum_t.gather(-1, count - 1)
    blocks = forced_n + cum_n.gather(-1, count - 1)
    row_true = t.sum(-1, keepdim=True)
    counted = (~frows[:, None, :, None]) & (row_true > 0)  # (B, H, Nbq, 1)
    share = torch.where(counted, kept / row_true.clamp_min(1e-300), 0.0)
    forced = frows[:, None, :, None] & (row_true > 0)  # dense rows: every valid block
    blocks = torch.where(counted, blocks, torch.where(forced, n_valid.double(), 0.0))
    rows = counted.double().sum(dim=(0, 2, 3))  # (H,)
    in_density = (counted | forced).double()
    pairs = (in_density * valid.sum(-1).view(B, 1, 1, 1).double()).sum(dim=(0, 2, 3))
    return {
        "kept": share.sum(dim=(0, 2)),
        "blocks": blocks.sum(dim=(0, 2)),
        "rows": rows,
        "pairs": pairs,
    }


class Calibrator:
    """Accumulates :func:`mass_curves` per layer over the observed calls.

    cfg: the XAttention config being calibrated (stride, block size, token order, text policy
    are taken from it); taus: the threshold grid (default :func:`default_taus`); steps: the
    denoising steps to measure (None: all). :meth:`observe` is the sparse path's observer.
    """

    def __init__(
        self,
        cfg: XAttentionConfig,
        *,
        taus: Sequence[float] | None = None,
        steps: Sequence[int] | None = None,
    ) -> None:
        self.cfg = cfg
        self.taus = list(taus) if taus is not None else default_taus()
        check_taus(self.taus)  # here, not after the calibration's calls
        self.steps = None if steps is None else frozenset(int(s) for s in steps)
        self.sums: dict[int, dict[str, torch.Tensor]] = {}
        self.calls = 0
        self.seconds = 0.0

    def wants(self, step: int) -> bool:
        """Whether calls at this denoising step are measured."""
        return self.steps is None or int(step) in self.steps

    def observe(
        self,
        layer: int,
        step: int,
        q: torch.Tensor,
        k: torch.Tensor,
        kv_len: torch.Tensor | None,
        dense_from: int | None,
    ) -> None:
        """Measure one attention call. q, k: (B, H, N, D) in the config's token order."""
        if not self.wants(step):
            return
        t0 = time.perf_counter()
        cfg = self.cfg
        scores = _attention.block_scores(q, k, stride=cfg.stride, block_size=cfg.block_size,
                              kv_len=kv_len, backend=cfg.backend)  # fmt: skip
        true = true_block_mass(q, k, block_size=cfg.block_size, kv_len=kv_len)
        cur = mass_curves(scores, true, self.taus, block_size=cfg.block_size, kv_len=kv_len,
                          dense_from=dense_from)  # fmt: skip
        acc = self.sums.get(layer)
        if acc is None:
            self.sums[layer] = {k_: v.detach().cpu() for k_, v in cur.items()}
        else:
            for k_, v in cur.items():
                acc[k_] += v.detach().cpu()
        self.calls += 1
        self.seconds += time.perf_counter() - t0

    def curves(self) -> list[dict[str, Any]]:
        """Per layer (sorted): ``layer``, ``mass`` (H lists over taus), ``density`` (same)."""
        out = []
        for layer in sorted(self.sums):
            acc = self.sums[layer]
            mass = acc["kept"] / acc["rows"].clamp(min=1)[:, None]
            dens = acc["blocks"] / acc["pairs"].clamp(min=1)[:, None]
            out.append({
                "layer": int(layer),
                "mass": [[round(float(x), 6) for x in row] for row in mass],
                "density": [[round(float(x), 6) for x in row] for row in dens],
            })  # fmt: skip
        return out

    def result(
        self,
        *,
        model: str,
        target_mass: float | None = None,
        target_density: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The thresholds file's dict (see :mod:`xattn_video.thresholds`)."""
        if not self.sums:
            raise ValueError("nothing was calibrated: no sparse-path call was observed")
        layers = self.curves()
        thr = choose_thresholds(layers, self.taus, target_mass=target_mass,
                                target_density=target_density)  # fmt: skip
        for layer, t in zip(layers, thr, strict=True):
            layer["thresholds"] = t
        cfg = self.cfg.to_dict()
        data = {
            "format": FORMAT,
            "model": model,
            "config": {
                k: cfg[k]
                for k in (
                    "stride",
                    "block_size",
                    "token_order",
                    "tile_size",
                    "text_policy",
                    "backend",
                )
            },  # fmt: skip
            "target": {"mass": target_mass, "density": target_density},
            "taus": self.taus,
            "layers": layers,
            "calls_measured": self.calls,
            "measure_seconds": round(self.seconds, 3),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "xattn_video_version": __version__,
            **(meta or {}),
        }
        data["expected_density"] = expected_density(data)
        validate(data)
        return data


_FIXED_VALUES: dict[str, Any] = {
    "threshold": 1.0,
    "selection": "threshold",
    "ratio": None,  # None: has no effect in a calibration, left as set
    "max_density": 1.0,
    "mask_refresh": 1,
    "dense_layers": (),
    "dense_kernel": None,
    "thresholds_file": "",
    "collect_stats": False,
    "auto_dense": False,
    "estimate_precision": None,
    "precision": "bf16",  # exact attention: fp8 would change what the next layers see
}
"""What :func:`calibration_config` sets: every block kept, every layer sparse, no budget."""

CALIBRATION_FIXED = tuple(_FIXED_VALUES)
"""Config fields a calibration does not take from its config: :func:`calibration_config` fixes
them (every block kept in bf16 attention, every step and layer sparse, so no dense kernel runs
and ``ratio`` has no effect), and the estimate it measures is the bf16 one
(:func:`.attention.block_scores`; a file serves both estimate precisions, whose masks agree up
to near-ties). ``warmup_steps`` / ``dense_last_steps`` only choose the steps measured."""


def calibration_config(cfg: XAttentionConfig) -> XAttentionConfig:
    """The config the calibration runs with: ``cfg``'s estimate settings, every step and layer
    through the sparse path (no cost-model dense calls: ``auto_dense`` off), all blocks kept
    (exact attention), no budget or thresholds file (:data:`CALIBRATION_FIXED`)."""
    fixed = {k: v for k, v in _FIXED_VALUES.items() if v is not None}
    return cfg.replace(warmup_steps=0, dense_last_steps=0, **fixed)


def _default_steps(pipe: Any) -> int:
    """``num_inference_steps``'s default in ``pipe``'s call (50 in diffusers' video pipelines);
    ``ValueError`` when it has none."""
    param = inspect.signature(pipe.__call__).parameters.get("num_inference_steps")
    if param is None or not isinstance(param.default, int) or param.default < 1:
        raise ValueError(
            f"{type(pipe).__name__} has no default num_inference_steps: give it in the calls, "
            "or the steps to measure"
        )
    return param.default


def calibrate_pipeline(
    pipe: Any,
    cfg: XAttentionConfig,
    calls: Sequence[dict[str, Any]],
    *,
    model: str,
    target_mass: float | None = None,
    target_density: float | None = None,
    steps: Sequence[int] | None = None,
    taus: Sequence[float] | None = None,
    meta: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Calibrate per-(layer, head) thresholds of ``cfg`` on ``pipe``.

    calls: keyword arguments of each pipeline call (prompt / condition, size, steps, generator);
    steps: denoising steps measured (None: the ones that run sparse, from ``cfg.warmup_steps``
    to the last ``cfg.dense_last_steps`` left out, of the calls' ``num_inference_steps`` or the
    pipeline's default); progress: called with (calls done, calls) after each call.
    Exactly one of ``target_mass`` / ``target_density``, and ``taus``, are checked before any
    call runs.
    Returns the thresholds file's dict (``save_thresholds`` writes it). A pipeline with a
    second expert (``pipe.transformer_2``, Wan 2.2 A14B) raises ``ValueError``: see the module
    docstring.
    """
    from .apply import apply_xattention

    if getattr(pipe, "transformer_2", None) is not None:
        raise ValueError(
            f"{type(pipe).__name__} has a second expert (pipe.transformer_2, Wan 2.2 A14B): "
            "per-expert thresholds are not supported (a thresholds file holds one "
            "transformer's layers, and at run time both experts would read them); run this "
            "pipeline with the config's uniform threshold (no thresholds_file), or calibrate "
            "a single-transformer model"
        )
    for tr in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)):
        if ulysses_group(getattr(tr, "_parallel_config", None)) is not None:
            raise ValueError(
                "calibrate_pipeline on a context-parallel (Ulysses) transformer: each rank sees "
                "its share of the heads only, so each would write a file of H/P heads; "
                "calibrate in one process (a calibration runs a few short videos)"
            )
    check_targets(target_mass, target_density)  # before the calls, not after them
    if not calls:
        raise ValueError("calls is empty: give the keyword arguments of at least one call")
    if steps is None:
        n = max(int(c.get("num_inference_steps", 0) or _default_steps(pipe)) for c in calls)
        steps = range(cfg.warmup_steps, n - cfg.dense_last_steps)
        if not steps:
            raise ValueError(
                f"no step runs sparse: warmup_steps={cfg.warmup_steps} and dense_last_steps="
                f"{cfg.dense_last_steps} cover all {n} steps"
            )
    cal = Calibrator(cfg, taus=taus, steps=steps)
    t0 = time.perf_counter()
    with apply_xattention(pipe, calibration_config(cfg)) as handle:
        handle.controller.observer = cal
        for i, kw in enumerate(calls):
            pipe(**kw)
            if progress is not None:
                progress(i + 1, len(calls))
    meta = dict(meta or {})
    meta.setdefault("steps_measured", sorted(cal.steps) if cal.steps is not None else "all")
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    meta.setdefault("family", handle.model)  # apply_xattention warns when applied to another
    return cal.result(model=model, target_mass=target_mass, target_density=target_density,
                      meta=meta)  # fmt: skip
