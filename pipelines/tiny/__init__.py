"""The tiny-model yardstick: small video DiTs that run offline on a CPU.

Installed as ``xattn_video.pipelines.tiny``. Modules:

- ``synthetic``: synthetic training clips (camera moves over scikit-image photos, sprites) and
  the prompt -> condition-token mapping;
- ``pipeline``: the trained tiny DiT's sampling pipeline (``TinyVideoPipeline``), its save /
  load format and the shipped weights (``assets/tiny_dit/``, ``load_tiny_pipeline``);
- ``train``: rectified-flow training (``python -m xattn_video.pipelines.tiny.train``).

Nothing is imported here, so importing the package does not import diffusers.

Not supported: text understanding (prompts map to 3 condition tokens), image-to-video, a VAE.
"""
