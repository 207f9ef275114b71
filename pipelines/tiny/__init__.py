"""The tiny-model yardstick: small video DiTs that run offline, on a CPU if need be.

Installed as ``xattn_video.pipelines.tiny``. Modules, in dependency order:

- ``synthetic``: synthetic training clips (camera moves over scikit-image photos, sprites) and
  the prompt -> condition-token mapping;
- ``model``: the tiny DiT's architecture (transformer config, ``ConditionEmbedder``, DiT init);
- ``pipeline``: its sampling pipeline (``TinyVideoPipeline``), save / load format and the
  shipped trained weights (``assets/tiny_dit/``, ``load_tiny_pipeline``);
- ``char_tokenizers``: character-level tokenizers for the random-weight pipelines;
- ``factory``: the one factory of random-weight tiny models, used by the CLI (``tiny-hunyuan``,
  ``tiny-wan``), the tests and training (``build_tiny_pipeline``, ``random_tiny_pipeline``,
  tiny HunyuanVideo / Framepack / Wan transformers and pipelines);
- ``train``, ``train_plots``: rectified-flow training
  (``python -m xattn_video.pipelines.tiny.train``) and its figures.

Nothing is imported here, so importing the package does not import diffusers.

Not supported: text understanding (prompts map to 3 condition tokens), image-to-video, a VAE
for the trained DiT.
"""
