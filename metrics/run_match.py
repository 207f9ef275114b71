"""Whether two run directories can be compared like with like (used by ``compare``).

The run.json settings in :data:`MATCH_FIELDS` (the model and its source, the video size, the
denoising steps, the seed, the transformer dtype) change every video, so a quality or speed
comparison of runs that differ in one means nothing: ``compare_runs`` raises
:class:`RunMismatch` before any work, unless ``allow_mismatch=True`` (``--allow-mismatch``), which
turns each difference into a warning; a different video size or frame count
(:data:`SHAPE_FIELDS`) is refused even then, since frames of two sizes cannot be compared, and so
is a different seed, since every video of a run has the run's seed and only videos of the same
prompt and seed are paired (:data:`UNWAIVABLE_FIELDS`), and a run on the CPU against one on a
CUDA GPU (``device``, read from run.json's ``gpu``: ``null`` on the CPU): ``generate`` draws
the noise with a generator on the run's device, and CPU and CUDA generators give different
noise for the same seed, so no pair would share its input. Not
compared: the attention mode, XAttention config and
thresholds file (what is being compared); fps (it only changes the mp4 encoding, not the frames);
the prompt suite and selection (pairs are matched by prompt index, and a pair whose prompt text or
seed differs is left out of the aggregate); the guidance scale (not a ``generate`` setting: the
pipelines' defaults, so the model fixes it); the environment (GPU, ``--ulysses`` degree, compile
mode and package versions only warn: they change the speed-up, not what was generated). A field
missing from an older run.json (or a missing run.json) is not compared, nor one recorded as
``null`` (unknown), except ``model_source`` (:data:`NULL_IS_A_VALUE`): ``null`` there is a
built-in model's own weights, which a run from other weights does not share, and ``gpu`` for
the device type.

Not supported: tolerating "equivalent" values (e.g. a local snapshot of the default model repo
named by path): pass ``allow_mismatch``. Non-CUDA accelerators: ``generate`` records no GPU
name for them, so such a run counts as a CPU run here.
"""

from __future__ import annotations

from typing import Any

from xattn_video.rundir import EAGER

from .run_dir import Run

MATCH_FIELDS = ("model", "model_source", "height", "width", "frames", "steps", "seed", "dtype")
"""run.json settings two compared runs must share (see the module docstring)."""

NULL_IS_A_VALUE = ("model_source",)
"""The :data:`MATCH_FIELDS` whose ``null`` is a value, not "unknown": ``generate`` records no
source for a built-in model (``tiny``: no hub id), and a run of that model from other weights
(``--model-path``) must not compare with it."""

SHAPE_FIELDS = ("height", "width", "frames")
"""The videos' shapes among :data:`MATCH_FIELDS`."""

DEVICE_FIELD = "device"
"""The device type, ``"cpu"`` or ``"cuda"``, derived from run.json's ``gpu`` (a name on CUDA,
``null`` on the CPU; not compared where a run.json lacks the key)."""

UNWAIVABLE_FIELDS = (*SHAPE_FIELDS, "seed", DEVICE_FIELD)
"""The settings no ``allow_mismatch`` can waive: frames of two shapes cannot be compared, and
runs of two seeds or device types have no pair of the same input noise
(``aggregate.same_input``; CPU and CUDA generators differ for the same seed)."""


class RunMismatch(ValueError):
    """The two runs were generated with different ``MATCH_FIELDS`` settings.

    Attributes:
        differences: field -> (dense value, sparse value).
        allowable: no :data:`UNWAIVABLE_FIELDS` differ, so ``allow_mismatch=True`` compares
            anyway.
    """

    def __init__(self, differences: dict[str, tuple[Any, Any]]) -> None:
        self.differences = differences
        self.allowable = allowable(differences)
        remedy = (
            "allow_mismatch=True compares anyway"
            if self.allowable
            else "videos of another size, frame count, seed or device type cannot be compared "
            "at all"
        )
        super().__init__(
            f"the runs were generated with different settings: {self.describe()}; their quality "
            f"and speed-up do not compare like with like ({remedy})"
        )

    def describe(self) -> str:
        """:func:`describe_differences` of these differences."""
        return describe_differences(self.differences)


def allowable(differences: dict[str, tuple[Any, Any]]) -> bool:
    """Whether ``allow_mismatch`` can waive these differences: none of
    :data:`UNWAIVABLE_FIELDS`."""
    return not set(differences) & set(UNWAIVABLE_FIELDS)


def describe_differences(differences: dict[str, tuple[Any, Any]]) -> str:
    """``"steps 2 (dense) vs 4 (sparse), dtype ..."``."""
    return ", ".join(f"{k} {d!r} (dense) vs {s!r} (sparse)" for k, (d, s) in differences.items())


def run_mode(run: Run) -> str:
    """``"eager"`` / ``"compiled:<mode>"`` from run.json (eager when absent: older runs)."""
    return run.record.compile_mode if run.record is not None else EAGER


def device_type(run: Run) -> str | None:
    """``"cuda"`` or ``"cpu"`` from run.json's ``gpu`` (:data:`DEVICE_FIELD`); None when the run
    has no run.json or it has no ``gpu`` key."""
    if run.record is None or "gpu" not in run.recorded:
        return None
    return run.record.device_type


def mismatched_settings(dense: Run, sparse: Run) -> dict[str, tuple[Any, Any]]:
    """The ``MATCH_FIELDS`` whose run.json values differ, then :data:`DEVICE_FIELD`: field ->
    (dense, sparse). Fields missing from either run.json (older files, no run.json) are not
    compared, nor ``null`` ones outside :data:`NULL_IS_A_VALUE`."""
    if dense.record is None or sparse.record is None:
        return {}
    out = {}
    for key in MATCH_FIELDS:
        d, s = getattr(dense.record, key), getattr(sparse.record, key)
        if key in NULL_IS_A_VALUE:
            known = key in dense.recorded and key in sparse.recorded
        else:
            known = d is not None and s is not None
        if known and d != s:
            out[key] = (d, s)
    d, s = device_type(dense), device_type(sparse)
    if d is not None and s is not None and d != s:
        out[DEVICE_FIELD] = (d, s)
    return out


_VERSION_KEYS = ("torch", "triton", "diffusers", "transformers", "cuda")


def run_notes(dense: Run, sparse: Run) -> list[str]:
    """Warnings that do not stop a comparison: a reference run that is not dense (or a sparse
    one that is), other GPUs, ``--ulysses`` degrees, compile modes or package versions."""
    notes = []
    for run, want_dense in ((dense, True), (sparse, False)):
        att = (run.info or {}).get("attention")
        if att is not None and (att == "dense") != want_dense:
            role = "reference (dense)" if want_dense else "sparse"
            notes.append(f"{run.path}: run.json says attention={att!r} for the {role} run")
    if dense.gpu and sparse.gpu and dense.gpu != sparse.gpu:
        notes.append(
            f"runs used different GPUs ({dense.gpu!r} vs {sparse.gpu!r}): speed-ups are not "
            "comparable"
        )
    du, su = ((r.record.ulysses if r.record else None) for r in (dense, sparse))
    if du is not None and su is not None and du != su:
        notes.append(
            f"runs used different --ulysses degrees ({du} vs {su}): each video's time is split "
            "over another number of GPUs, so speed-ups are not comparable"
        )
    if run_mode(dense) != run_mode(sparse):
        notes.append(
            f"runs used different modes (dense {run_mode(dense)}, sparse {run_mode(sparse)}): the "
            "speed-up compares different things; generate both with the same --compile"
        )
    dv, sv = ((r.record.versions if r.record else None) or {} for r in (dense, sparse))
    differ = [
        f"{k} {dv[k]} vs {sv[k]}"
        for k in _VERSION_KEYS
        if dv.get(k) and sv.get(k) and dv[k] != sv[k]
    ]
    if differ:
        notes.append(
            f"runs used different package versions (dense vs sparse: {', '.join(differ)}): "
            "speed-ups and numerics may differ for that reason alone"
        )
    return notes
