"""Per-(layer, head) XAttention thresholds: the versioned JSON ``xattn-video calibrate`` writes,
and how thresholds are chosen from the calibration curves it stores.

The file keeps, for every calibrated layer and head, two curves over a grid of thresholds
``taus``: ``mass[h][g]``, the mean share of the *true* attention mass that the estimated block
mask at ``taus[g]`` keeps (per query-block row, video rows only), and ``density[h][g]``, that
mask's block density (with the dense text rows, as the run measures it). From them
:func:`choose_thresholds` picks the thresholds:

- ``target_mass=m``: per head the smallest tau whose mask keeps at least m of the true mass
  (1.0 when none does) -- every head is held to the same quality, whatever it costs;
- ``target_density=d``: thresholds that keep as much true mass in total as this allocation
  finds at a mean density of at most d over all layers and heads (Lagrangian allocation: each
  head takes the tau maximising ``mass - lam * density``, with ``lam`` bisected to meet the
  budget, then what is left of the budget spent greedily by mass gained per density added) --
  blocks go to the heads where they hold the most mass. A heuristic: the best total only where
  each head's mass is concave in its density (measured curves need not be). A ``d`` below the
  density of every head at its smallest tau warns and gets that density.

Re-targeting needs no new calibration run (:func:`retarget`). The file also records what it was
measured on (model, its family, config, prompts, seeds, steps) and must match the config it is
used with (stride, block size, token order, tile size, text policy: they change the estimate)
and the model it is applied to: ``apply_xattention`` checks before any step runs that every
listed layer exists with that head count (:func:`check_fits`, ``ValueError``) and warns when
the file was calibrated on another model family (:func:`file_family`).

Not supported: per-step or per-row thresholds; thresholds for layers the file does not list
(those use the config's uniform ``threshold``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import warnings
from functools import lru_cache
from typing import Any

import torch

from . import atomic
from .scalars import is_json_int, is_json_number, is_real

FORMAT = "xattn-video thresholds v1"
"""Value of the file's ``format`` key; files of another format raise ``ValueError``."""

MATCH_FIELDS = ("stride", "block_size", "token_order", "tile_size", "text_policy")
"""Config fields a thresholds file must agree with (they change the estimate it measured)."""


def default_taus() -> list[float]:
    """The threshold grid of a calibration: 0.30 to 0.99 in steps of 0.01, then 0.995 and 1."""
    return [round(0.30 + 0.01 * i, 4) for i in range(70)] + [0.995, 1.0]


def _check_curves(taus: list[float], curve: list[list[float]], what: str, layer: Any) -> None:
    if (
        not isinstance(curve, list)
        or not curve
        or any(not isinstance(c, list) or len(c) != len(taus) for c in curve)
    ):
        raise ValueError(f"thresholds file: layer {layer} {what} must be H lists of {len(taus)}")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for c in curve for v in c):
        # a NaN was taken as a head that never reaches its target: thresholds far above it
        raise ValueError(f"thresholds file: layer {layer} {what} must hold finite numbers")


def check_targets(target_mass: float | None, target_density: float | None) -> None:
    """``ValueError`` unless exactly one target is given, a number in (0, 1]; what
    :func:`choose_thresholds` checks, for callers that must refuse a bad target before the
    calibration it would be applied to (``xattn-video calibrate``)."""
    if (target_mass is None) == (target_density is None):
        raise ValueError("give exactly one of target_mass and target_density")
    name, value = ("target_mass", target_mass) if target_mass is not None else (
        "target_density", target_density)  # fmt: skip
    if not (is_real(value) and 0.0 < value <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value}")


def check_taus(taus: Any, what: str = "taus") -> None:
    """``ValueError`` unless ``taus`` is a non-empty increasing list of numbers in (0, 1]."""
    if (
        not isinstance(taus, list)
        or not taus
        or not all(is_json_number(t) and 0.0 < t <= 1.0 for t in taus)
        or sorted(taus) != taus
    ):
        raise ValueError(f"{what} must be increasing values in (0, 1], got {taus!r}")


def choose_thresholds(
    layers: list[dict[str, Any]],
    taus: list[float],
    *,
    target_mass: float | None = None,
    target_density: float | None = None,
) -> list[list[float]]:
    """Thresholds [layer][head] from the curves of ``layers`` (dicts with ``mass`` and
    ``density``: H lists over ``taus``); exactly one target is given (see the module docstring).
    """
    check_targets(target_mass, target_density)
    mass = [torch.tensor(layer["mass"], dtype=torch.float64) for layer in layers]  # (H, G) each
    dens = [torch.tensor(layer["density"], dtype=torch.float64) for layer in layers]
    tau = torch.tensor(taus, dtype=torch.float64)
    if target_mass is not None:
        out = []
        for m in mass:
            ok = m >= target_mass - 1e-12
            none = torch.full((m.shape[0],), -1, dtype=torch.long)  # (a bool -1 was True: 1)
            first = torch.where(ok.any(-1), ok.double().argmax(-1), none)
            out.append([1.0 if int(i) < 0 else float(tau[int(i)]) for i in first])
        return out
    M, D = torch.cat(mass), torch.cat(dens)  # (sum H, G)

    def pick(lam: float) -> torch.Tensor:
        # highest mass - lam * density; ties to the smaller tau
        return (M - lam * D).argmax(-1)

    def mean_density(idx: torch.Tensor) -> float:
        return float(D.gather(-1, idx[:, None]).mean())

    lo, hi = 0.0, 1.0
    while mean_density(pick(hi)) > target_density and hi < 1e6:
        hi *= 2.0
    if mean_density(pick(lo)) <= target_density:
        idx = pick(lo)
    else:
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if mean_density(pick(mid)) > target_density:
                lo = mid
            else:
                hi = mid
        idx = pick(hi)
    if mean_density(idx) > target_density + 1e-9:
        warnings.warn(
            f"target_density {target_density} is below the lowest density the calibrated taus "
            f"reach ({mean_density(idx):.4g}, every head at its sparsest); the thresholds reach "
            "that instead (for less, calibrate with lower taus: calibrate_pipeline(taus=...) "
            "in Python; the command line's grid is default_taus())",
            stacklevel=2,
        )
    idx = _fill_budget(M, D, idx, target_density * M.shape[0])
    flat = [float(tau[int(i)]) for i in idx]
    out, start = [], 0
    for m in mass:
        out.append(flat[start : start + m.shape[0]])
        start += m.shape[0]
    return out


def _fill_budget(
    M: torch.Tensor, D: torch.Tensor, idx: torch.Tensor, budget: float
) -> torch.Tensor:
    """Spend what the Lagrangian choice left of the budget: repeatedly move one head to the
    higher tau with the best mass gain per density added that still fits (curves are not
    concave, so the Lagrangian alone can stop short)."""
    idx = idx.clone()
    for _ in range(M.numel()):
        cur_d = D.gather(-1, idx[:, None])
        cur_m = M.gather(-1, idx[:, None])
        dd, dm = D - cur_d, M - cur_m
        ok = (dm > 1e-12) & (cur_d.sum() + dd <= budget + 1e-9)
        if not bool(ok.any()):
            break
        gain = torch.where(dd > 0, dm / dd.clamp_min(1e-12), torch.full_like(dm, float("inf")))
        best = int(torch.where(ok, gain, torch.full_like(gain, -1.0)).argmax())
        idx[best // M.shape[1]] = best % M.shape[1]
    return idx


def retarget(
    data: dict[str, Any], *, target_mass: float | None = None, target_density: float | None = None
) -> dict[str, Any]:
    """A copy of a thresholds file's dict with thresholds chosen for another target."""
    validate(data)
    out = json.loads(json.dumps(data))
    thr = choose_thresholds(
        out["layers"], out["taus"], target_mass=target_mass, target_density=target_density
    )
    for layer, t in zip(out["layers"], thr, strict=True):
        layer["thresholds"] = t
    out["target"] = {"mass": target_mass, "density": target_density}
    out["expected_density"] = expected_density(out)
    return out


def expected_density(data: dict[str, Any]) -> float:
    """Mean calibration density of the chosen thresholds over all layers and heads: the
    calibrated density at each head's tau (the nearest grid tau for one off the grid); a tau of
    1.0 the grid lacks (a ``target_mass`` no grid tau reached) keeps every block: 1.0."""
    taus = data["taus"]
    grid_keeps_all = max(taus) >= 1.0
    vals = []
    for layer in data["layers"]:
        for h, t in enumerate(layer["thresholds"]):
            if t >= 1.0 and not grid_keeps_all:
                vals.append(1.0)
                continue
            g = min(range(len(taus)), key=lambda i: abs(taus[i] - t))
            vals.append(layer["density"][h][g])
    return float(sum(vals) / len(vals))


def validate(data: dict[str, Any]) -> None:
    """``ValueError`` naming what is wrong unless ``data`` is a thresholds file's dict."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"not a thresholds file: format must be {FORMAT!r}, got {got!r}")
    for key in ("model", "config", "taus", "layers"):
        if key not in data:
            raise ValueError(f"thresholds file: missing key {key!r}")
    if not isinstance(data["config"], dict):
        raise ValueError("thresholds file: config must be an object of XAttentionConfig fields")
    taus = data["taus"]
    check_taus(taus, "thresholds file: taus")
    layers = data["layers"]
    if not isinstance(layers, list) or not layers or not all(isinstance(x, dict) for x in layers):
        # a layer 1 raised AttributeError; no layers at all divided by zero in the summary
        raise ValueError("thresholds file: layers must be a non-empty list of objects")
    seen = set()
    for layer in layers:
        idx = layer.get("layer")
        if not is_json_int(idx) or idx < 0 or idx in seen:
            raise ValueError(f"thresholds file: bad or repeated layer index {idx!r}")
        seen.add(idx)
        thr = layer.get("thresholds")
        if (
            not isinstance(thr, list)
            or not thr
            or not all(is_json_number(t) and 0.0 < t <= 1.0 for t in thr)
        ):
            raise ValueError(f"thresholds file: layer {idx} thresholds must be in (0, 1]")
        _check_curves(taus, layer.get("mass", []), "mass", idx)
        _check_curves(taus, layer.get("density", []), "density", idx)
        if len(layer["mass"]) != len(thr) or len(layer["density"]) != len(thr):
            raise ValueError(f"thresholds file: layer {idx} curves and thresholds differ in H")


TILED_ORDERS = frozenset({"tile", "cluster"})
"""Token orders that depend on ``tile_size`` (``cluster``'s k-means starts from the tile order)."""


def check_matches(data: dict[str, Any], config: dict[str, Any]) -> None:
    """``ValueError`` if the file was calibrated with other estimate settings than ``config``
    (a dict of XAttentionConfig fields)."""
    cal = data["config"]
    for name in MATCH_FIELDS:
        a, b = cal.get(name), config.get(name)
        if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
            a, b = list(a or []), list(b or [])
        if name == "tile_size" and not TILED_ORDERS & {
            cal.get("token_order"),
            config["token_order"],
        }:
            continue  # the tile size only matters for the orders built from tiles
        if name == "text_policy" and file_family(data) == "wan":
            continue  # Wan's self-attention has no text tokens: the policy changes nothing
        if a != b:
            raise ValueError(
                f"thresholds file was calibrated with {name}={a!r}, the config has {name}={b!r}; "
                "calibrate again with these settings"
            )


def file_family(data: dict[str, Any]) -> str | None:
    """The model family (``"hunyuanvideo"`` / ``"hunyuanvideo15"`` / ``"wan"``) a thresholds
    dict was calibrated on: its ``family`` key (written by the calibration), else read from its
    ``model`` name (``HunyuanVideo-1.5`` / ``hunyuanvideo15``, else a name holding ``hunyuan``,
    or a word starting with ``wan``, as ``wan2.2`` or ``tiny-wan``); None when none says (e.g.
    ``tiny``)."""
    family = data.get("family")
    if isinstance(family, str) and family:
        return family
    name = str(data.get("model", "")).lower()
    if re.search(r"hunyuan[-_ ]?video[-_ ]?1\.?5", name):
        return "hunyuanvideo15"
    if "hunyuan" in name:
        return "hunyuanvideo"
    if re.search(r"(^|[^a-z])wan", name):
        return "wan"
    return None


def check_fits(data: dict[str, Any], heads: dict[int, int | None], model: str, path: str) -> None:
    """``ValueError`` unless every layer the thresholds dict lists is one of the model's target
    layers (``heads``: layer index -> its head count, None when unknown) with that many heads.
    model: the transformer's name and path: the file, for the messages. Layers the file does
    not list are fine (they use the config's uniform threshold)."""
    listed = layer_thresholds(data)
    extra = sorted(set(listed) - set(heads))
    if extra:
        shown = ", ".join(map(str, extra[:8])) + (", ..." if len(extra) > 8 else "")
        span = f"0-{len(heads) - 1}" if heads else "none"
        raise ValueError(
            f"thresholds file {path!r} lists {len(extra)} layer(s) that {model} does not have "
            f"([{shown}]; it has {len(heads)} attention layers: {span}); calibrate this model"
        )
    for layer, thr in sorted(listed.items()):
        if heads[layer] is not None and len(thr) != heads[layer]:
            raise ValueError(
                f"thresholds file {path!r} has {len(thr)} heads for layer {layer}, {model} has "
                f"{heads[layer]}; calibrate this model"
            )


def save_thresholds(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write a thresholds dict as JSON (validated first), atomically: a write that fails (a full
    disk, a value JSON cannot hold) leaves an existing file as it was, not truncated."""
    validate(data)
    atomic.write_text(path, json.dumps(data, indent=1) + "\n")


def load_thresholds(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a thresholds file (parsed once per path and version: modification
    time, inode and size; each call returns its own copy, so a caller's edits do not reach
    later loads)."""
    return copy.deepcopy(shared_thresholds(path))


def shared_thresholds(path: str | os.PathLike[str]) -> dict[str, Any]:
    """:func:`load_thresholds` without the copy: the one parsed dict of the file's current
    contents, the same object on every call until the file changes. Read-only: for the hot
    path (the sparse path's per-layer cache compares it by identity, and a deep copy per
    attention call cost ~57 ms on the CPU for a HunyuanVideo-sized file)."""
    return _load(*_version(path))


def shared_layer_thresholds(
    path: str | os.PathLike[str], config: Any = None
) -> dict[int, tuple[float, ...]]:
    """:func:`layer_thresholds` of :func:`shared_thresholds`: one dict per version of the file
    (the same object until the file changes). Read-only, for the sparse path. ``config``: the
    (hashable) XAttentionConfig the file must match (:func:`check_matches`), checked once per
    version: a file calibrated again in place with other settings during a run is refused, as
    a new config would refuse it, not used with the old settings."""
    p, version = _version(path)
    if config is not None:
        _check_version(p, version, config)
    return _layers(p, version)


def check_file_matches(path: str | os.PathLike[str], config: Any) -> None:
    """``ValueError`` unless the file as it is now was calibrated with the estimate settings of
    ``config`` (a hashable XAttentionConfig; :func:`check_matches`), checked once per version
    of the file: what a new config and the sparse path's re-reads both check."""
    _check_version(*_version(path), config)


@lru_cache(maxsize=16)
def _check_version(path: str, version: tuple[int, int, int], config: Any) -> None:
    check_matches(_load(path, version), dataclasses.asdict(config))


def _version(path: str | os.PathLike[str]) -> tuple[str, tuple[int, int, int]]:
    """(path, version) of a thresholds file, the version its modification time, inode and size
    (a file replaced within one timestamp tick -- coarse clocks, FAT, some NFS -- is still a
    new version: atomic writes give it a new inode); ValueError when it is not a file."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        what = "is a directory, not a file" if os.path.isdir(p) else "does not exist"
        raise ValueError(f"thresholds file {p!r} {what}")
    st = os.stat(p)
    return p, (st.st_mtime_ns, st.st_ino, st.st_size)


@lru_cache(maxsize=16)
def _layers(path: str, version: tuple[int, int, int]) -> dict[int, tuple[float, ...]]:
    return layer_thresholds(_load(path, version))


@lru_cache(maxsize=16)
def _load(path: str, version: tuple[int, int, int]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"thresholds file {path!r} is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"thresholds file {path!r} is not a JSON text file (a thresholds file is what "
            f"`xattn-video calibrate` writes): {exc}"
        ) from None
    except OSError as exc:  # unreadable (permissions, a folder): one error line, not a traceback
        raise ValueError(f"thresholds file {path!r} can't be read: {exc.strerror or exc}") from None
    validate(data)
    return data


def layer_thresholds(data: dict[str, Any]) -> dict[int, tuple[float, ...]]:
    """layer index -> per-head thresholds, from a validated thresholds dict."""
    return {
        int(layer["layer"]): tuple(float(t) for t in layer["thresholds"])
        for layer in data["layers"]
    }


def summary(data: dict[str, Any]) -> str:
    """One line: layers, heads, threshold range and mean, expected density."""
    thr = [t for layer in data["layers"] for t in layer["thresholds"]]
    return (
        f"{len(data['layers'])} layers x {len(data['layers'][0]['thresholds'])} heads, tau "
        f"{min(thr):.3f}..{max(thr):.3f} (mean {sum(thr) / len(thr):.3f}), expected density "
        f"{expected_density(data):.3f}"
    )


__all__ = [
    "FORMAT",
    "MATCH_FIELDS",
    "check_file_matches",
    "check_fits",
    "check_matches",
    "check_targets",
    "choose_thresholds",
    "default_taus",
    "expected_density",
    "file_family",
    "layer_thresholds",
    "load_thresholds",
    "retarget",
    "save_thresholds",
    "shared_thresholds",
    "summary",
    "validate",
]
