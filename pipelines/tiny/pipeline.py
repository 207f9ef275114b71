"""Sampling pipeline of the tiny video DiT, its save / load format and the shipped weights.

- :class:`TinyVideoPipeline`: rectified flow sampling with ``FlowMatchEulerDiscreteScheduler``
  (shift 3.0: the clip has ~209k pixel values, about as many as SD3's 1024^2 latents, where
  shift 3 was chosen; it spends more of the steps at high noise, where the global layout and
  motion are decided). One transformer forward per step (two with ``guidance_scale > 1``:
  conditional, then unconditional), ``scheduler.set_timesteps`` + ``scheduler.step`` as in
  diffusers, so ``scheduler.step_index`` counts the steps for the XAttention hook. A text
  prompt is only keyword-matched / hashed to the 3 condition tokens
  (:func:`~xattn_video.pipelines.tiny.synthetic.condition_from_prompt`).
- Weights: ``pipelines/tiny/assets/tiny_dit/`` (:func:`load_tiny_pipeline`), written by
  ``python -m xattn_video.pipelines.tiny.train``. The architecture is in
  :mod:`~xattn_video.pipelines.tiny.model`; random-weight copies for tests come from
  :func:`~xattn_video.pipelines.tiny.factory.random_tiny_pipeline`.

Not supported: text understanding (prompts are mapped to 3 tokens), image-to-video, a VAE /
latent space, frame sizes that are not multiples of 2, LoRA, model CPU offload, videos longer
than the model saw in training with any quality guarantee.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoTransformer3DModel,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from .model import DEFAULT_STEPS, TRAIN_FRAMES, TRAIN_HEIGHT, TRAIN_WIDTH, ConditionEmbedder
from .synthetic import IMAGES, MOTIONS, NUM_DIRECTIONS, Condition, condition_from_prompt

__all__ = [
    "ASSETS_DIR",
    "PIPELINE_FILE",
    "TinyVideoPipeline",
    "TinyVideoPipelineOutput",
    "load_tiny_pipeline",
]

ASSETS_DIR = Path(__file__).parent / "assets" / "tiny_dit"
"""Where the trained weights ship (``load_tiny_pipeline()`` with no path reads them)."""

PIPELINE_FILE = "tiny_dit.json"
TRAIN_COMMAND = "python -m xattn_video.pipelines.tiny.train"


@dataclass
class TinyVideoPipelineOutput(BaseOutput):
    """``frames``: (B, T, H, W, 3) float in [0, 1] (``output_type="np"``), uint8 (``"uint8"``),
    a torch tensor (``"pt"``), or the raw (B, 3, T, H, W) sample in [-1, 1] (``"latent"``)."""

    frames: Any


class TinyVideoPipeline(DiffusionPipeline):
    """Sampling pipeline of the tiny video DiT (see the module docstring).

    Components: ``transformer`` (``HunyuanVideoTransformer3DModel``), ``scheduler``
    (``FlowMatchEulerDiscreteScheduler``), ``condition_embedder`` (:class:`ConditionEmbedder`).
    """

    model_cpu_offload_seq = "condition_embedder->transformer"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer: HunyuanVideoTransformer3DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        condition_embedder: ConditionEmbedder,
    ) -> None:
        super().__init__()
        self.register_modules(
            transformer=transformer, scheduler=scheduler, condition_embedder=condition_embedder
        )

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _conditions(prompt, condition, num_videos_per_prompt: int) -> list[Condition]:
        if condition is not None:
            conds = [condition] if isinstance(condition, Condition) else list(condition)
            if not all(isinstance(c, Condition) for c in conds):
                raise ValueError("condition must be a Condition or a list of Conditions")
        elif prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not all(isinstance(p, str) for p in prompts):
                raise ValueError("prompt must be a str or a list of str")
            conds = [condition_from_prompt(p) for p in prompts]
        else:
            raise ValueError("give a prompt or a condition")
        if not conds:
            raise ValueError("empty prompt / condition list")
        if num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be >= 1, got {num_videos_per_prompt}")
        return [c for c in conds for _ in range(num_videos_per_prompt)]

    def _check_size(self, height: int, width: int, num_frames: int) -> None:
        p = int(self.transformer.config.patch_size)
        pt = int(self.transformer.config.patch_size_t)
        if height < p or width < p or height % p or width % p:
            raise ValueError(f"height and width must be positive multiples of {p}, "
                             f"got {height}x{width}")  # fmt: skip
        if num_frames < 1 or num_frames % pt:
            raise ValueError(f"num_frames must be a positive multiple of {pt}, got {num_frames}")

    def encode_conditions(
        self, conditions: list[Condition], device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(encoder_hidden_states, encoder_attention_mask, pooled_projections) for conditions."""
        tokens = torch.tensor([c.tokens() for c in conditions], dtype=torch.long, device=device)
        ehs, mask, pooled = self.condition_embedder(tokens)
        return ehs.to(dtype), mask, pooled.to(dtype)

    @property
    def num_timesteps(self) -> int:
        return getattr(self, "_num_timesteps", 0)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        height: int = TRAIN_HEIGHT,
        width: int = TRAIN_WIDTH,
        num_frames: int = TRAIN_FRAMES,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = 1.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] | list[str] = ("latents",),
        condition: Condition | list[Condition] | None = None,
    ) -> TinyVideoPipelineOutput | tuple:
        """Generate videos.

        prompt: text, mapped to condition tokens by ``condition_from_prompt`` (ignored when
        ``condition`` is given). guidance_scale: > 1 runs classifier-free guidance (two
        forwards per step); 1 (default) one forward. generator: a torch.Generator or one per
        video; the initial noise is drawn on the generator's device (CPU generators give the
        same video on any device up to kernel rounding). output_type: ``"np"`` (float32 in
        [0, 1]), ``"uint8"``, ``"pt"`` (float tensor (B, T, H, W, 3)) or ``"latent"``.
        callback_on_step_end(pipe, i, t, kwargs) -> dict, called after each scheduler step
        with the tensors named in ``callback_on_step_end_tensor_inputs``; it may return a
        replacement ``latents``, or set ``pipe._interrupt = True`` to skip the remaining steps
        (diffusers' way; the latents so far are returned).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        bad = [
            k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs
        ]
        if bad:
            raise ValueError(f"callback tensor inputs must be in {self._callback_tensor_inputs}, "
                             f"got {bad}")  # fmt: skip
        if output_type not in ("np", "uint8", "pt", "latent"):
            raise ValueError(f"output_type must be np, uint8, pt or latent, got {output_type!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        self._check_size(height, width, num_frames)
        conds = self._conditions(prompt, condition, num_videos_per_prompt)
        batch = len(conds)
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(
                f"generator list of length {len(generator)} for {batch} videos "
                "(one generator per video, or a single generator)"
            )
        device = self._execution_device
        dtype = self.transformer.dtype

        ehs, mask, pooled = self.encode_conditions(conds, device, dtype)
        do_cfg = guidance_scale > 1.0
        if do_cfg:
            null = self.condition_embedder.null_tokens(batch, device)
            u_ehs, u_mask, u_pooled = self.condition_embedder(null)
            u_ehs, u_pooled = u_ehs.to(dtype), u_pooled.to(dtype)

        shape = (batch, 3, num_frames, height, width)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
            latents = latents.to(device=device, dtype=torch.float32)

        # diffusers' loop state: the step hook tells a call stopped part-way (a raising callback,
        # ``pipe._interrupt``) by them, so another pipeline sharing the transformer is not
        # counted at this call's step
        self._current_timestep = None
        self._interrupt = False
        sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
        self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        self.scheduler.set_begin_index(0)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)

        with self.progress_bar(total=len(timesteps)) as bar:
            for i, t in enumerate(timesteps):
                if self._interrupt:
                    continue
                self._current_timestep = t
                x_in = latents.to(dtype)
                timestep = t.expand(batch).to(torch.float32)

                def velocity(cond_ehs, cond_mask, cond_pooled, x_in=x_in, timestep=timestep):
                    return self.transformer(
                        hidden_states=x_in,
                        timestep=timestep,
                        encoder_hidden_states=cond_ehs,
                        encoder_attention_mask=cond_mask,
                        pooled_projections=cond_pooled,
                        return_dict=False,
                    )[0].float()

                v = velocity(ehs, mask, pooled)
                if do_cfg:  # unconditional second forward of the same step
                    v_u = velocity(u_ehs, u_mask, u_pooled)
                    v = v_u + guidance_scale * (v - v_u)
                latents = self.scheduler.step(v, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    local = {"latents": latents}
                    kw = {k: local[k] for k in callback_on_step_end_tensor_inputs}
                    out = callback_on_step_end(self, i, t, kw) or {}
                    latents = out.pop("latents", latents)
                bar.update()

        self._current_timestep = None
        self.maybe_free_model_hooks()
        if output_type == "latent":
            frames: Any = latents
        else:
            video = ((latents.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1)  # (B, T, H, W, 3)
            if output_type == "pt":
                frames = video
            elif output_type == "uint8":
                frames = (video * 255).round().to(torch.uint8).cpu().numpy()
            else:
                frames = video.cpu().numpy().astype(np.float32)
        if not return_dict:
            return (frames,)
        return TinyVideoPipelineOutput(frames=frames)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(  # type: ignore[override]
        self,
        save_directory: str | Path,
        *,
        dtype: torch.dtype | None = torch.float16,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Write ``tiny_dit.json``, ``transformer/``, ``condition_embedder/`` (safetensors, in
        ``dtype``; None keeps the current one) and ``scheduler/``. ``tiny_dit.json`` keeps the
        entries a loaded pipeline read (its ``training`` record), then ``extra``'s."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("transformer", "condition_embedder"):
            module = getattr(self, name)
            if dtype is not None and dtype != module.dtype:
                # cast a copy: casting the live module and back would round its weights.
                # nn.Module.to: ModelMixin.to warns on every dtype cast in diffusers 0.42
                module = nn.Module.to(copy.deepcopy(module), dtype)
            module.save_pretrained(out / name, safe_serialization=True)
        self.scheduler.save_pretrained(out / "scheduler")
        meta = {
            "format": "xattn-video tiny_dit v1",
            "train_size": {"frames": TRAIN_FRAMES, "height": TRAIN_HEIGHT, "width": TRAIN_WIDTH},
            "default_steps": DEFAULT_STEPS,
            "motions": list(MOTIONS),
            "images": list(IMAGES),
            "num_directions": NUM_DIRECTIONS,
        }
        loaded = getattr(self, "meta", None) or {}  # set by from_pretrained
        meta |= {k: v for k, v in loaded.items() if k not in meta}
        meta |= extra or {}
        trained = (meta.get("training") or {}).get("config") or {}  # the run that made them
        if all(k in trained for k in ("frames", "height", "width")):  # not the default size
            meta["train_size"] = {k: trained[k] for k in ("frames", "height", "width")}
        (out / PIPELINE_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        path: str | Path,
        *,
        torch_dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> TinyVideoPipeline:
        """Load what :meth:`save_pretrained` wrote (weights cast to ``torch_dtype``)."""
        path = Path(path)
        missing = [
            str(path / p)
            for p in (PIPELINE_FILE, "transformer/config.json", "condition_embedder/config.json",
                      "scheduler/scheduler_config.json")
            if not (path / p).is_file()
        ]  # fmt: skip
        if missing:
            raise FileNotFoundError(
                f"tiny DiT weights not found ({', '.join(missing)} missing). Train them with: "
                f"{TRAIN_COMMAND} --out {path} --minutes 8.5"
            )
        tr = HunyuanVideoTransformer3DModel.from_pretrained(path / "transformer",
                                                            torch_dtype=torch_dtype)  # fmt: skip
        emb = ConditionEmbedder.from_pretrained(
            path / "condition_embedder", torch_dtype=torch_dtype
        )
        sched = FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler")
        pipe = cls(transformer=tr.eval(), scheduler=sched, condition_embedder=emb.eval())
        pipe.meta = json.loads((path / PIPELINE_FILE).read_text())
        return pipe.to(device)


def load_tiny_pipeline(
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TinyVideoPipeline:
    """The trained tiny pipeline (default: the shipped ``pipelines/tiny/assets/tiny_dit/``).

    Raises ``FileNotFoundError`` with the training command when the weights are absent.
    """
    pipe = TinyVideoPipeline.from_pretrained(path or ASSETS_DIR, torch_dtype=dtype, device=device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
