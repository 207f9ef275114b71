"""The model registry: which models the CLI knows, their defaults, and loading them by name.

``load_pipeline(model, ...)`` returns a ready pipeline on the requested device; ``MODELS`` holds
each model's defaults (resolution, frames, steps, fps, the ``XAttentionConfig`` preset name and
the extra pipeline-call arguments). Real weights (HunyuanVideo, Wan 2.1) load with diffusers'
recipes here; the tiny models are built by :mod:`xattn_video.pipelines.tiny` (the one tiny-model
factory, ``tiny.factory``, and the trained DiT, ``tiny.pipeline``). Three tiny models need
nothing downloaded:

* ``tiny``: the small trained video DiT shipped in ``pipelines/tiny/assets/tiny_dit/``
  (``xattn_video.pipelines.tiny.pipeline.TinyVideoPipeline``: a 10 M parameter
  ``HunyuanVideoTransformer3DModel`` in pixel space, trained on synthetic camera-motion clips
  over scikit-image photos). Its videos have real structure, so dense vs. XAttention quality
  numbers mean something for this model; the prompt text is only keyword / hash mapped to its
  3 condition tokens (no language understanding).
* ``tiny-hunyuan`` and ``tiny-wan``: ``HunyuanVideoPipeline`` / ``WanPipeline`` built with
  random weights and locally built tokenizers, small enough to generate 32x32x9 frames in 4
  steps on a CPU in about a second, with head dim 16 so the Triton kernels can run them too.
  Their tokenizers are character level (lower-cased ASCII letters, digits and punctuation; any
  other character is ``<unk>``), so every prompt gives its own embedding and any text is
  accepted.

Caution / not supported:
    * ``tiny-hunyuan`` and ``tiny-wan`` have random weights: their videos are noise-like
      patterns, useful only to compare dense and sparse attention on the same computation,
      never to judge quality.
    * Image-to-video pipelines, HunyuanVideo 1.5 and LoRA loading. Wan 2.2's two-expert
      text-to-video folders (``transformer_2``) load through ``model_path`` of ``wan`` (both
      experts run XAttention), with the Wan 2.1 preset: there is no Wan 2.2 entry.
    * CPU offload and quantised weights (``load_pipeline`` moves the whole pipeline to one
      device; an 80 GB GPU holds HunyuanVideo in bf16/fp16).
    * ``model_id`` downloads go through the Hugging Face cache as usual; set
      ``HF_HUB_OFFLINE=1`` to forbid them. The trained ``tiny`` loads local folders only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .tiny.factory import build_tiny_hunyuan_pipeline, build_tiny_wan_pipeline

__all__ = ["MODELS", "ModelSpec", "get_model_spec", "load_pipeline"]

TINY_PROMPT_TEMPLATE: dict[str, Any] = {"template": "{}", "crop_start": 0}
"""The tiny Llama encoder has no chat template: use the prompt as is."""


@dataclass(frozen=True)
class ModelSpec:
    """Defaults of one model name accepted by :func:`load_pipeline` and the CLI."""

    name: str
    """The model name (``--model``)."""
    family: str
    """``"hunyuanvideo"`` or ``"wan"``: which diffusers pipeline class loads its weights."""
    height: int
    """Default video height in pixels."""
    width: int
    """Default video width in pixels."""
    frames: int
    """Default number of frames (4k+1)."""
    steps: int
    """Default number of denoising steps."""
    fps: int
    """Frames per second of the written mp4."""
    preset: str
    """Name of the ``XAttentionConfig`` preset (``XAttentionConfig.from_preset``)."""
    default_id: str | None = None
    """Hugging Face repo id loaded when neither a path nor an id is given (None: a tiny model,
    built or shipped with the package)."""
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for every pipeline call (e.g. the tiny prompt template)."""
    random_weights: bool = False
    """True for the models built with random weights (their videos say nothing about quality)."""
    head_dim: int = 128
    """Attention head dim of its transformer (what ``estimate_precision="auto"`` resolves at
    in the run record, :func:`xattn_video.op_checks.fp8_estimate_by_default`)."""
    heads: int | None = None
    """Attention heads of the default weights' transformer (the ``--ulysses`` degrees checked
    before the model loads, :func:`~xattn_video.pipelines.multiprocess.heads_refusal`)."""
    text_tokens: int | None = None
    """A fixed count of text tokens per prompt (the tiny DiT's condition tokens), which
    ``--ulysses`` must divide; None where prompts are padded to ``max_sequence_length``."""

    @property
    def is_tiny(self) -> bool:
        """True for the small offline models (``tiny``, ``tiny-hunyuan``, ``tiny-wan``): built
        or shipped with the package, nothing downloaded."""
        return self.default_id is None


MODELS: dict[str, ModelSpec] = {
    "hunyuanvideo": ModelSpec(
        name="hunyuanvideo",
        family="hunyuanvideo",
        height=720,
        width=1280,
        frames=129,
        steps=50,
        fps=24,
        preset="hunyuanvideo",
        default_id="hunyuanvideo-community/HunyuanVideo",
        heads=24,
    ),
    "wan": ModelSpec(
        name="wan",
        family="wan",
        height=480,
        width=832,
        frames=81,
        steps=50,
        fps=16,
        preset="wan",
        default_id="Wan-AI/Wan2.1-T2V-14B-Diffusers",
        heads=40,
    ),
    "tiny": ModelSpec(
        name="tiny",
        family="hunyuanvideo",
        height=32,
        width=32,
        frames=9,
        steps=12,
        fps=8,
        preset="tiny-dit",
        head_dim=64,
        text_tokens=3,  # motion, photo, direction
        heads=4,
    ),
    "tiny-hunyuan": ModelSpec(
        name="tiny-hunyuan",
        family="hunyuanvideo",
        height=32,
        width=32,
        frames=9,
        steps=4,
        fps=8,
        preset="tiny",
        head_dim=16,
        call_kwargs={"prompt_template": TINY_PROMPT_TEMPLATE, "max_sequence_length": 32},
        heads=2,
        random_weights=True,
    ),
    "tiny-wan": ModelSpec(
        name="tiny-wan",
        family="wan",
        height=64,
        width=64,
        frames=9,
        steps=4,
        fps=8,
        preset="tiny",
        head_dim=16,
        call_kwargs={"max_sequence_length": 32},
        heads=2,
        random_weights=True,
    ),
}
"""Known model names. ``tiny`` is the trained tiny DiT (HunyuanVideo's transformer, pixel space,
3 condition tokens), ``tiny-hunyuan`` a random-weight tiny HunyuanVideo (joint text attention),
``tiny-wan`` a random-weight tiny Wan 2.1 (video self-attention + text cross-attention)."""


def get_model_spec(model: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``model``; ``ValueError`` listing the known names otherwise."""
    spec = MODELS.get(str(model).lower())
    if spec is None:
        raise ValueError(f"unknown model {model!r}; known models: {', '.join(MODELS)}")
    return spec


_TINY_BUILDERS = {
    "tiny-hunyuan": build_tiny_hunyuan_pipeline,
    "tiny-wan": build_tiny_wan_pipeline,
}


# ---------------------------------------------------------------------------------------------
# Real-weight loading
# ---------------------------------------------------------------------------------------------


def _half_or(dtype: torch.dtype) -> torch.dtype:
    """fp16 for the non-transformer parts when the transformer runs in half precision."""
    return torch.float16 if dtype in (torch.bfloat16, torch.float16) else dtype


def _load_hunyuan(source: str, dtype: torch.dtype) -> Any:
    """diffusers' recipe: transformer in ``dtype`` (bf16), text encoders and VAE in fp16."""
    from diffusers import HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

    transformer = HunyuanVideoTransformer3DModel.from_pretrained(
        source, subfolder="transformer", dtype=dtype
    )
    pipe = HunyuanVideoPipeline.from_pretrained(
        source, transformer=transformer, dtype=_half_or(dtype)
    )
    pipe.vae.enable_tiling()
    return pipe


def _load_wan(source: str, dtype: torch.dtype) -> Any:
    """diffusers' recipe: VAE in fp32, everything else in ``dtype`` (bf16)."""
    from diffusers import AutoencoderKLWan, WanPipeline

    vae = AutoencoderKLWan.from_pretrained(source, subfolder="vae", dtype=torch.float32)
    return WanPipeline.from_pretrained(source, vae=vae, dtype=dtype)


_LOADERS = {"hunyuanvideo": _load_hunyuan, "wan": _load_wan}
_PIPELINE_CLASSES = {"hunyuanvideo": "HunyuanVideoPipeline", "wan": "WanPipeline"}
"""The diffusers pipeline class (``model_index.json``'s ``_class_name``) each loader loads."""


def _offline_reason(error: BaseException) -> str | None:
    """Why the hub could not be asked, if ``error`` (diffusers' ``OSError``) comes from an
    offline hub or a missing network rather than from a repo without the file: diffusers words
    both as "does not appear to have a file named config.json"."""
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    names = {type(e).__name__ for e in chain}
    if "OfflineModeIsEnabled" in names:
        return "the Hugging Face Hub is in offline mode (HF_HUB_OFFLINE is set)"
    if names & {"LocalEntryNotFoundError", "ConnectError"} or any(
        isinstance(e, ConnectionError) for e in chain
    ):
        return "the Hugging Face Hub could not be reached"
    return None


def _check_pipeline_folder(path: Path, spec: ModelSpec) -> None:
    """``ValueError`` unless ``path`` is a diffusers folder of the pipeline ``spec`` loads."""
    index = path / "model_index.json"
    if not index.is_file():
        raise ValueError(
            f"model_path {str(path)!r} is not a diffusers pipeline folder "
            "(no model_index.json; create one with pipe.save_pretrained(path))"
        )
    try:
        listed = json.loads(index.read_text(encoding="utf-8"))
        found = listed.get("_class_name")
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"model_path {str(path)!r}: unreadable model_index.json ({e})") from None
    _check_class(found, f"model_path {str(path)!r}", spec)
    # diffusers' own error named no component ("no file named config.json found in directory")
    missing = [
        name
        for name, entry in listed.items()
        if not name.startswith("_")
        and isinstance(entry, list)
        and None not in entry
        and not (path / name).is_dir()
    ]
    if missing:
        raise ValueError(
            f"model_path {str(path)!r} lists {', '.join(missing)} in model_index.json but has no "
            "such folder: an incomplete copy? Save the whole pipeline with pipe.save_pretrained"
        )


def _check_class(found: Any, where: str, spec: ModelSpec) -> None:
    """``ValueError`` unless ``found`` (a model_index.json's ``_class_name``) is ``spec``'s."""
    want = _PIPELINE_CLASSES[spec.family]
    if found != want:
        raise ValueError(
            f"{where} holds a {found} (model_index.json), not the {want} that --model "
            f"{spec.name} loads"
        )


def _check_repo(model_id: str, spec: ModelSpec) -> None:
    """:func:`_check_class` for a repo id (or local folder) given as ``model_id``, from its
    model_index.json when it is on this machine (never a download: an unreachable hub would
    cost its timeouts twice); else nothing. A repo of another family crashed inside diffusers
    with a TypeError, exit 1."""
    from diffusers import DiffusionPipeline

    try:
        config = DiffusionPipeline.load_config(model_id, local_files_only=True)
    except (OSError, ValueError):
        return
    _check_class(config.get("_class_name"), f"model_id {model_id!r}", spec)


def load_pipeline(
    model: str,
    *,
    model_path: str | os.PathLike[str] | None = None,
    model_id: str | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cuda",
    seed: int = 0,
    progress: bool = True,
) -> Any:
    """Load (or, for random-weight tiny models, build) the pipeline of ``model`` on ``device``.

    Args:
        model: a name in ``MODELS`` (``hunyuanvideo``, ``wan``, ``tiny``, ``tiny-hunyuan``,
            ``tiny-wan``).
        model_path: a local pipeline folder. For ``tiny``, one written by
            ``TinyVideoPipeline.save_pretrained`` (default: the shipped
            ``pipelines/tiny/assets/tiny_dit/``); for the others a diffusers ``save_pretrained``
            folder (``model_index.json``), which for ``tiny-hunyuan`` / ``tiny-wan`` loads a
            saved tiny pipeline instead of building one.
        model_id: a Hugging Face repo id (default: the model's ``default_id``); not for ``tiny``.
        dtype: the transformer's dtype; None: bfloat16, except ``tiny`` on a CPU device
            (float32). HunyuanVideo keeps text encoders and VAE in fp16 when ``dtype`` is a
            half type (else in ``dtype``); Wan keeps its VAE in fp32. Tiny pipelines are
            entirely in ``dtype`` (built ones keep their classes' fp32 modules).
        device: where the whole pipeline goes.
        seed: weight seed of built tiny pipelines (ignored otherwise).
        progress: show diffusers' and transformers' loading bars ("Loading pipeline
            components", "Loading weights").

    Raises:
        ValueError: unknown model, both ``model_path`` and ``model_id`` given, ``model_id``
            for ``tiny``, a ``model_path`` that is not a pipeline folder of that kind, or a
            source diffusers / the Hugging Face hub cannot load (its ``OSError``: a repo id
            that does not exist, a folder missing a component; a repo id not in the local cache
            while the hub is offline or unreachable says so and how to get it).
        FileNotFoundError: the shipped ``tiny`` weights are missing (the message says how to
            train them).
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libs = [
        lib for lib in (diffusers_logging, transformers_logging) if lib.is_progress_bar_enabled()
    ]
    for lib in libs if not progress else ():  # their bars showed under generate --no-progress
        lib.disable_progress_bar()
    try:
        return _load(model, model_path, model_id, dtype, device, seed)
    finally:
        for lib in libs:
            lib.enable_progress_bar()


def _load(model, model_path, model_id, dtype, device, seed) -> Any:
    """:func:`load_pipeline`'s work (same arguments)."""
    spec = get_model_spec(model)
    if model_path is not None and model_id is not None:
        raise ValueError("pass either model_path or model_id, not both")
    if spec.name == "tiny":
        return _load_tiny(model_path, model_id, dtype, device)
    dtype = torch.bfloat16 if dtype is None else dtype
    if model_path is not None:
        path = Path(model_path)
        _check_pipeline_folder(path, spec)
        source: str | None = str(path)
    else:
        source = model_id or spec.default_id
        if model_id is not None:
            _check_repo(model_id, spec)
    if source is None:
        pipe = _TINY_BUILDERS[spec.name](seed=seed, device=device, dtype=dtype)
    else:
        try:
            pipe = _LOADERS[spec.family](source, dtype)
        except OSError as e:  # diffusers' and the hub's errors for a source they cannot load
            why = _offline_reason(e) if model_path is None else None
            if why is not None:
                raise ValueError(
                    f"could not load a {spec.family} pipeline from {source!r}: {why}, and the "
                    "model is not in the local Hugging Face cache. Download it where there is "
                    f"network (`hf download {source}`) and copy the cache over, or pass "
                    "--model-path with a pipeline folder (pipe.save_pretrained(path))"
                ) from e
            raise ValueError(f"could not load a {spec.family} pipeline from {source!r}: {e}") from e
        except Exception:
            if model_id is not None:  # fetched just now: another family's model_index.json?
                _check_repo(model_id, spec)
            raise
        pipe = pipe.to(device)
    return pipe


def _load_tiny(
    model_path: str | os.PathLike[str] | None,
    model_id: str | None,
    dtype: torch.dtype | None,
    device: str | torch.device,
) -> Any:
    """The trained ``TinyVideoPipeline`` (progress bar off; ``set_progress_bar_config`` turns it
    back on)."""
    from .tiny.pipeline import PIPELINE_FILE, load_tiny_pipeline

    if model_id is not None:
        raise ValueError(
            "the trained tiny model loads local folders only: pass model_path (--model-path), "
            "not model_id"
        )
    if model_path is not None and not (Path(model_path) / PIPELINE_FILE).is_file():
        raise ValueError(
            f"model_path {str(model_path)!r} is not a tiny DiT pipeline folder (no "
            f"{PIPELINE_FILE}; create one with TinyVideoPipeline.save_pretrained(path))"
        )
    if dtype is None:
        dtype = torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    return load_tiny_pipeline(model_path, device=device, dtype=dtype)
