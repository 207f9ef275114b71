"""Building diffusers video pipelines: real weights (HunyuanVideo, Wan 2.1) and tiny offline ones.

``load_pipeline(model, ...)`` returns a ready pipeline on the requested device; ``MODELS`` holds
each model's defaults (resolution, frames, steps, fps, the ``XAttentionConfig`` preset name and
the extra pipeline-call arguments). Three tiny models need nothing downloaded:

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
    * Image-to-video pipelines, Wan 2.2 (``transformer_2``), HunyuanVideo 1.5 and LoRA loading.
    * CPU offload and quantised weights (``load_pipeline`` moves the whole pipeline to one
      device; an 80 GB GPU holds HunyuanVideo in bf16/fp16).
    * ``model_id`` downloads go through the Hugging Face cache as usual; set
      ``HF_HUB_OFFLINE=1`` to forbid them. The trained ``tiny`` loads local folders only.
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MODELS",
    "ModelSpec",
    "build_tiny_hunyuan_pipeline",
    "build_tiny_wan_pipeline",
    "get_model_spec",
    "load_pipeline",
]

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
        call_kwargs={"prompt_template": TINY_PROMPT_TEMPLATE, "max_sequence_length": 32},
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
        call_kwargs={"max_sequence_length": 32},
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


# ---------------------------------------------------------------------------------------------
# Tiny tokenizers (built locally, character level)
# ---------------------------------------------------------------------------------------------

_CHARS = string.ascii_lowercase + string.digits + " .,;:!?'\"-()/&"


def _char_tokenizer(specials: list[str], **special_kw: str) -> Any:
    """A ``PreTrainedTokenizerFast`` with one token per (lower-cased) character."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*specials, *_CHARS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **special_kw)


def _tiny_llama_tokenizer() -> Any:
    return _char_tokenizer(
        ["<s>", "<pad>", "</s>", "<unk>"], bos_token="<s>", pad_token="<pad>", eos_token="</s>"
    )


def _tiny_t5_tokenizer() -> Any:
    return _char_tokenizer(["<pad>", "</s>", "<unk>"], pad_token="<pad>", eos_token="</s>")


def _tiny_clip_tokenizer() -> Any:
    """``CLIPTokenizer`` from a temporary letters-only vocab and an empty merges file."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase:
            vocab[c + suffix] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer(
            str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), pad_token="!"
        )


# ---------------------------------------------------------------------------------------------
# Tiny pipelines
# ---------------------------------------------------------------------------------------------


def build_tiny_hunyuan_pipeline(
    *, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Any:
    """A fully offline ``HunyuanVideoPipeline`` with random weights (about 0.2 M parameters).

    Transformer: 2 heads x head dim 16, 2 double-stream + 2 single-stream blocks, 1 refiner
    block, patch 1x1x1, 4 latent channels; VAE 8x spatial / 4x temporal compression; Llama and
    CLIP text encoders with 2 layers. 32x32x9 pixels give 3x4x4 = 48 video tokens. Call it with
    ``MODELS["tiny-hunyuan"].call_kwargs`` (no chat template, 32 text tokens).

    The weights depend only on ``seed`` (the global RNG state is left untouched).
    """
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    tokenizer, tokenizer_2 = _tiny_llama_tokenizer(), _tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = HunyuanVideoTransformer3DModel(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=2,
            num_single_layers=2,
            num_refiner_layers=1,
            patch_size=1,
            patch_size_t=1,
            guidance_embeds=True,
            text_embed_dim=16,
            pooled_projection_dim=8,
            rope_axes_dim=(4, 6, 6),
        )
        vae = AutoencoderKLHunyuanVideo(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            down_block_types=("HunyuanVideoDownBlock3D",) * 4,
            up_block_types=("HunyuanVideoUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            act_fn="silu",
            norm_num_groups=4,
            scaling_factor=0.476986,
            spatial_compression_ratio=8,
            temporal_compression_ratio=4,
            mid_block_add_attention=True,
        )
        text_encoder = LlamaModel(
            LlamaConfig(
                bos_token_id=0,
                pad_token_id=1,
                eos_token_id=2,
                hidden_size=16,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                vocab_size=len(tokenizer),
                hidden_act="gelu",
            )
        )
        text_encoder_2 = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=2,
                hidden_size=8,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                vocab_size=len(tokenizer_2),
                hidden_act="gelu",
                projection_dim=32,
            )
        )
    pipe = HunyuanVideoPipeline(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
    )
    return _finish(pipe, device, dtype)


def build_tiny_wan_pipeline(
    *, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Any:
    """A fully offline ``WanPipeline`` (Wan 2.1 text-to-video) with random weights.

    Transformer: 2 heads x head dim 16, 2 blocks, patch 1x2x2, 16 latent channels; Wan VAE
    with base dim 3; a 2-layer UMT5 encoder. 64x64x9 pixels give 3x4x4 = 48 video tokens. Call
    it with ``MODELS["tiny-wan"].call_kwargs`` (32 text tokens). Classifier-free guidance is on
    (the pipeline's default ``guidance_scale=5.0``): two transformer forwards per step.

    The weights depend only on ``seed`` (the global RNG state is left untouched).
    """
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _tiny_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tokenizer),
                d_model=32,
                d_kv=8,
                d_ff=37,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        )
        vae = AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=16,
            out_channels=16,
            text_dim=32,
            freq_dim=256,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        transformer=transformer,
    )
    return _finish(pipe, device, dtype)


def _finish(pipe: Any, device: str | torch.device, dtype: torch.dtype) -> Any:
    """Inference mode (no dropout), on ``device``, floating point weights in ``dtype`` except the
    modules each class keeps in fp32 (``_keep_in_fp32_modules``), as ``from_pretrained`` does."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
            _cast(component, device, dtype)
    return pipe


def _cast(module: torch.nn.Module, device: str | torch.device, dtype: torch.dtype) -> None:
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    keep = [keep] if isinstance(keep, str) else list(keep)
    torch.nn.Module.to(module, device=device)
    if dtype == torch.float32:  # built in fp32
        return
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_floating_point() and not any(k in name.split(".") for k in keep):
            t.data = t.data.to(dtype)


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


def load_pipeline(
    model: str,
    *,
    model_path: str | os.PathLike[str] | None = None,
    model_id: str | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cuda",
    seed: int = 0,
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

    Raises:
        ValueError: unknown model, both ``model_path`` and ``model_id`` given, ``model_id``
            for ``tiny``, or a ``model_path`` that is not a pipeline folder of that kind.
        FileNotFoundError: the shipped ``tiny`` weights are missing (the message says how to
            train them).
    """
    spec = get_model_spec(model)
    if model_path is not None and model_id is not None:
        raise ValueError("pass either model_path or model_id, not both")
    if spec.name == "tiny":
        return _load_tiny(model_path, model_id, dtype, device)
    dtype = torch.bfloat16 if dtype is None else dtype
    if model_path is not None:
        path = Path(model_path)
        if not (path / "model_index.json").is_file():
            raise ValueError(
                f"model_path {str(path)!r} is not a diffusers pipeline folder "
                "(no model_index.json; create one with pipe.save_pretrained(path))"
            )
        source: str | None = str(path)
    else:
        source = model_id or spec.default_id
    if source is None:
        pipe = _TINY_BUILDERS[spec.name](seed=seed, device=device, dtype=dtype)
    else:
        pipe = _LOADERS[spec.family](source, dtype).to(device)
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
