"""The tiny video DiT's architecture: transformer config, condition embedder, DiT init.

- Transformer: diffusers' ``HunyuanVideoTransformer3DModel`` with a small config
  (:func:`tiny_transformer_config`): RGB pixels in and out (no VAE), patch 1x2x2, 4 heads x 64,
  2 double-stream + 4 single-stream blocks, 1 refiner block, no guidance embedding; 10.2 M
  parameters (20 MB in fp16). The toolkit's HunyuanVideo processors apply to it unchanged.
  Trained at 17 frames x 64 x 64 pixels = 17 x 32 x 32 = 17,408 video tokens (+3 condition
  tokens); RoPE lets it run at other sizes, with quality only at the training size.
- Conditioning: :class:`ConditionEmbedder` turns the three integer tokens of a
  :class:`~xattn_video.pipelines.tiny.synthetic.Condition` (motion, photo, direction) into
  ``encoder_hidden_states`` (B, 3, 64), an all-valid ``encoder_attention_mask`` (B, 3) and
  ``pooled_projections`` (B, 64).
- :func:`dit_initialize_`: the training start point (every block the identity).

Sampling lives in :mod:`~xattn_video.pipelines.tiny.pipeline`, building (random or DiT init)
in :mod:`~xattn_video.pipelines.tiny.factory`.

Not supported: text embeddings (only the 3 condition tokens), guidance embedding, a VAE.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import HunyuanVideoTransformer3DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .synthetic import IMAGES, MOTIONS, NUM_DIRECTIONS

__all__ = [
    "DEFAULT_SHIFT",
    "DEFAULT_STEPS",
    "TRAIN_FRAMES",
    "TRAIN_HEIGHT",
    "TRAIN_WIDTH",
    "ConditionEmbedder",
    "dit_initialize_",
    "tiny_transformer_config",
]

TRAIN_FRAMES, TRAIN_HEIGHT, TRAIN_WIDTH = 17, 64, 64
"""The training clip size (frames, pixels): the size the model has quality at."""
DEFAULT_STEPS = 30
"""Default number of sampling steps."""
DEFAULT_SHIFT = 3.0
"""Flow-matching shift of training sigmas and of the sampler (see ``pipeline``)."""


def tiny_transformer_config(**overrides: Any) -> dict[str, Any]:
    """Config of the tiny ``HunyuanVideoTransformer3DModel`` (overrides for tests)."""
    cfg: dict[str, Any] = {
        "in_channels": 3,
        "out_channels": 3,
        "num_attention_heads": 4,
        "attention_head_dim": 64,
        "num_layers": 2,
        "num_single_layers": 4,
        "num_refiner_layers": 1,
        "mlp_ratio": 4.0,
        "patch_size": 2,
        "patch_size_t": 1,
        "qk_norm": "rms_norm",
        "guidance_embeds": False,
        "text_embed_dim": 64,
        "pooled_projection_dim": 64,
        "rope_theta": 256.0,
        "rope_axes_dim": (16, 24, 24),
    }
    cfg.update(overrides)
    return cfg


class ConditionEmbedder(ModelMixin, ConfigMixin):
    """Integer condition tokens -> the transformer's text inputs.

    tokens: (B, K) int64, column k in ``[0, vocab_sizes[k])``, or ``vocab_sizes[k]`` = the
    "null" token (unconditional, for classifier-free guidance). Returns
    ``(encoder_hidden_states (B, K, text_embed_dim), encoder_attention_mask (B, K) bool, all
    True, pooled_projections (B, pooled_projection_dim))``.
    """

    @register_to_config
    def __init__(
        self,
        vocab_sizes: tuple[int, ...] = (len(MOTIONS), len(IMAGES), NUM_DIRECTIONS),
        text_embed_dim: int = 64,
        pooled_projection_dim: int = 64,
    ) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(int(n) + 1, text_embed_dim) for n in vocab_sizes)
        self.slot = nn.Parameter(torch.zeros(len(vocab_sizes), text_embed_dim))
        self.pooled = nn.Sequential(
            nn.Linear(len(vocab_sizes) * text_embed_dim, pooled_projection_dim),
            nn.SiLU(),
            nn.Linear(pooled_projection_dim, pooled_projection_dim),
        )
        for t in self.tables:
            nn.init.normal_(t.weight, std=1.0)
        nn.init.normal_(self.slot, std=0.5)

    def null_tokens(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """(batch, K) tokens of the unconditional "prompt"."""
        nulls = torch.tensor(self.config.vocab_sizes, dtype=torch.long, device=device)
        return nulls.expand(batch, -1).clone()

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if tokens.ndim != 2 or tokens.shape[1] != len(self.tables):
            raise ValueError(f"tokens must be (B, {len(self.tables)}), got {tuple(tokens.shape)}")
        emb = torch.stack([t(tokens[:, i]) for i, t in enumerate(self.tables)], dim=1)
        emb = emb + self.slot[None]
        pooled = self.pooled(emb.flatten(1))
        mask = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
        return emb, mask, pooled


@torch.no_grad()
def dit_initialize_(transformer: HunyuanVideoTransformer3DModel) -> None:
    """DiT-style init for training from scratch: xavier linears, zero adaLN modulations, zero
    refiner gates and a zero output projection, so every block starts as the identity."""
    for m in transformer.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    zero = []
    for block in transformer.transformer_blocks:
        zero += [block.norm1.linear, block.norm1_context.linear]
    for block in transformer.single_transformer_blocks:
        zero.append(block.norm.linear)
    for block in transformer.context_embedder.token_refiner.refiner_blocks:
        zero.append(block.norm_out.linear)
    zero += [transformer.norm_out.linear, transformer.proj_out]
    for lin in zero:
        nn.init.zeros_(lin.weight)
        if lin.bias is not None:
            nn.init.zeros_(lin.bias)
