"""Pipelines: building diffusers video pipelines and the ``xattn-video`` command line.

Installed as ``xattn_video.pipelines`` (the folder sits at the repo root). Modules:

- ``models``: the model registry: ``load_pipeline`` (HunyuanVideo, Wan 2.1, the trained
  ``tiny`` DiT and the random-weight ``tiny-hunyuan`` / ``tiny-wan``), ``MODELS`` (per-model
  defaults and XAttention preset);
- ``tiny``: the tiny-model yardstick: synthetic clips, the trained tiny DiT, its training, and
  ``tiny.factory``, the one factory of random-weight tiny models (``build_tiny_hunyuan_pipeline``,
  ``build_tiny_wan_pipeline``, bare transformers for tests);
- ``generate``: ``generate(GenerateOptions(...))``, one video per prompt into a resumable run
  directory (split over processes under ``accelerate launch``);
- ``options``: ``GenerateOptions`` and every check made before any work (``SetupError``);
- ``runinfo``: environment facts for run.json (GPU, versions, git SHA, command); the run
  directory format itself is ``xattn_video.rundir``;
- ``cli``: ``xattn-video generate | compare | demo`` and ``generate-video`` (argument parsing
  in ``cli_args``).

Not supported: image-to-video, Wan 2.2 two-expert checkpoints, CPU offload (see ``models``).
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
