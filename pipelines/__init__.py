"""Pipelines: building diffusers video pipelines and the ``xattn-video`` command line.

Installed as ``xattn_video.pipelines`` (the folder sits at the repo root). Modules:

- ``models``: the model registry: ``load_pipeline`` (HunyuanVideo, Wan 2.1, the trained
  ``tiny`` DiT and the random-weight ``tiny-hunyuan`` / ``tiny-wan``), ``MODELS`` (per-model
  defaults and XAttention preset);
- ``tiny``: the tiny-model yardstick: synthetic clips, the trained tiny DiT, its training, and
  ``tiny.factory``, the one factory of random-weight tiny models (``build_tiny_hunyuan_pipeline``,
  ``build_tiny_wan_pipeline``, bare transformers for tests);
- ``options``: ``GenerateOptions`` and every check that can fail before work starts;
- ``generate``: ``generate(GenerateOptions(...))``, one video per prompt into a resumable run
  directory (format: ``xattn_video.rundir``; split over processes under ``accelerate launch``);
- ``runinfo``: environment facts recorded in a run directory (GPU, versions, git SHA);
- ``cli``, ``cli_args``, ``calibrate_cli``: ``xattn-video generate | compare | demo |
  calibrate`` and ``generate-video``, with flags generated from ``XAttentionConfig``.

Not supported: image-to-video, CPU offload (see ``models``). A two-expert Wan 2.2 text-to-video
folder loads with ``--model wan --model-path DIR`` (both experts get XAttention, sequence
parallelism and ``--compile``; per-head thresholds files are refused for it), without a preset
or a default checkpoint of its own.
"""

from .models import MODELS, ModelSpec, get_model_spec, load_pipeline
from .tiny.factory import build_tiny_hunyuan_pipeline, build_tiny_wan_pipeline

__all__ = [
    "MODELS",
    "ModelSpec",
    "build_tiny_hunyuan_pipeline",
    "build_tiny_wan_pipeline",
    "get_model_spec",
    "load_pipeline",
]
