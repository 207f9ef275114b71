"""diffusers attention processors that run XAttention in the sparse phase and the stock code
otherwise.

- :class:`HunyuanVideoXAttnProcessor` subclasses ``HunyuanVideoAttnProcessor2_0`` (same
  ``__call__`` signature, keeps ``_attention_backend`` / ``_parallel_config``) for the 20
  double- and 40 single-stream blocks. The joint sequence is [video (t-major raster), text];
  the key-padding mask ``attention_mask`` [B, 1, 1, N] (True = attend, a valid prefix) becomes
  ``kv_len`` (B,), so padded text keys are never attended. ``text_policy="dense"`` passes
  ``dense_from = N_video``: every block holding a text token stays dense as a query row and as
  a key column; ``"sparse"`` lets text blocks compete (padded query rows are zeroed for the
  estimate so padding cannot steer the selection). Called with ``encoder_hidden_states=None``
  (the token refiner, when a single instance was given to ``set_attn_processor``) it runs the
  refiner's stock ``AttnProcessor2_0``.
- :class:`HunyuanVideo15XAttnProcessor` subclasses ``HunyuanVideo15AttnProcessor2_0`` the same
  way (HunyuanVideo 1.5's double-stream blocks): its [B, L] text mask becomes ``kv_len``, and
  padded text query rows come out as zeros, as the parent's query-and-key mask makes them.
- :class:`WanXAttnProcessor` subclasses ``WanAttnProcessor``; only video self-attention
  (``attn1``: ``encoder_hidden_states is None``) goes sparse, cross-attention is the parent's.

This module holds only the model-specific part. Dense phase (warm-up, ``dense_last_steps``,
``dense_layers``, no step hook attached; a processor built without ``layer`` whose attention
module no step hook registered runs dense and records no stats, nor does one given ``layer``
before a step hook began a forward): with
``dense_kernel="stock"`` (the default) exactly ``super().__call__`` -- bit-identical to the
stock processor. Sparse phase: the parent's
projections, QK norms and RoPE are reproduced to build q/k/v [B, N, H, D] (video first, then
text; on eager CUDA the QK norm and RoPE run as one fused kernel per tensor,
:mod:`xattn_video.processor_qk`, within one rounding of the parent's values: HunyuanVideo's
per-head ``RMSNorm``, written straight into the joint sequence, and Wan's ``torch.nn.RMSNorm``
across heads), handed to the model-independent
:func:`xattn_video.sparse_path.sparse_attention` (token order, mask reuse, the op, stats), then
the parent's output projections. The dense phase with
``dense_kernel="xattn"`` takes the same route to :func:`xattn_video.sparse_path.dense_attention`
(the kernel with every block; padded queries are not zeroed there). Which layers get these
processors: :mod:`xattn_video.targets`.

Processors decide dense vs sparse from bools (``controller.sparse`` set by the step hook, see
:mod:`xattn_video.hook`, and the per-layer ``auto_dense`` decisions), never from the step
number, so ``torch.compile`` sees a dense and a sparse variant, not one per step. Neither branch
reads values back to the host: the key-padding prefix check runs on the device on CUDA and under
compile (``torch._assert_async``), and stats are added as device tensors without a step number
(the hook stamps them), so a sparse forward traces as one graph and can be captured in a CUDA
graph (:func:`xattn_video.hook.compile_below_hook`).

Context parallelism (diffusers' ``enable_parallelism`` with Ulysses degree P, before or after
these processors are installed; plan: :func:`xattn_video.parallel.context_parallel_plan`): the
sparse phase runs the all-to-alls of :mod:`xattn_video.parallel` around the sparse path (each
rank: all tokens of H/P heads, in the one-GPU order). Wan's stock dense phase is the stock
processor (diffusers' own Ulysses); HunyuanVideo's under context parallelism reproduces the
parent's projections and runs ``dispatch_attention_fn`` between the same all-to-alls, because
the stock processor would apply the whole-sequence key-padding mask to rank-interleaved keys.
With ``dense_kernel="xattn"`` both run the dense kernel between the all-to-alls.

Not supported: gradients / training (the op is forward-only); ring attention and
``ulysses_anything`` (``ValueError``); attention masks other than HunyuanVideo's
[B, 1, 1, N] bool key-padding prefix mask and HunyuanVideo 1.5's [B, L] text mask (raise);
Wan I2V image keys of ``attn2`` and cross-attention in general stay dense; SkyReels-V2 and
Wan Animate (classes of their own, refused by name), CogVideoX, Mochi, LTX; context
parallelism for HunyuanVideo 1.5 and Wan VACE (no plan).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
from diffusers.models.transformers.transformer_hunyuan_video15 import (
    HunyuanVideo15AttnProcessor2_0,
)
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, _get_qkv_projections

from . import parallel
from .config import XAttentionConfig
from .hook import XAttentionController
from .op_checks import require
from .processor_qk import joint_norm_rope, norm_rope, wan_norm_rope
from .sparse_path import dense_attention, sparse_attention, xattn_dense

logger = logging.getLogger(__name__)


class _XAttnMixin:
    """Shared sparse path: (B, N, H, D) q/k/v -> XAttention -> (B, N, H, D)."""

    controller: XAttentionController
    layer: int | None
    _parallel_config: Any

    def _init_xattn(
        self,
        cfg: XAttentionConfig | None,
        controller: XAttentionController | None,
        layer: int | None,
        preset: str,
    ) -> None:
        if controller is None:
            controller = XAttentionController(cfg or XAttentionConfig.from_preset(preset))
        elif cfg is not None and cfg != controller.cfg:
            raise ValueError("give either cfg or controller (their configs differ)")
        self.controller = controller
        self.layer = layer

    @property
    def cfg(self) -> XAttentionConfig:
        return self.controller.cfg

    @property
    def stats(self):
        return self.controller.stats

    def _layer_index(self, attn: torch.nn.Module) -> int:
        return self.layer if self.layer is not None else self.controller.layer_of(attn)

    def _record_dense(self, layer: int) -> None:
        """Record a dense call; none for an unregistered module (layer -1: no step hook yet)."""
        ctl = self.controller
        if ctl.stats.enabled and layer >= 0:  # stamped with (run, step, branch) and its reason
            ctl.stats.add(layer)  # by the step hook: no guard on the step number or the reason

    def _sparse_attention(
        self,
        attn: torch.nn.Module,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        *,
        n_video: int,
        kv_len: torch.Tensor | None,
        dense_from: int | None,
        n_text: int = 0,
        sparse: bool = True,
        zero_padded_queries: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query/key/value: [B, N, H, D] (video first); kv_len: (B,) int; returns [B, N, H, D].

        ``sparse=False``: a dense call (:func:`xattn_video.sparse_path.dense_attention`, or
        the stock dense attention under Ulysses with ``dense_kernel="stock"``). Under context
        parallelism (Ulysses) q/k/v hold this rank's tokens ([video_r, text_r], ``n_text`` of
        them text), kv_len / dense_from the whole sequence's values, and the call runs between
        the all-to-alls.
        """
        ulysses = parallel.ulysses_group(self._parallel_config)
        if ulysses is not None:
            return parallel.processor_attention(
                self.controller, attn, layer, query, key, value, group=ulysses[0],
                degree=ulysses[1], n_text=n_text, sparse=sparse, kv_len=kv_len,
                dense_from=dense_from, zero_padded_queries=zero_padded_queries,
                attention_mask=attention_mask, backend=self._attention_backend,
            )  # fmt: skip
        if not sparse:
            return dense_attention(self.cfg, query, key, value, kv_len=kv_len)
        return sparse_attention(
            self.controller, attn, layer, query, key, value,
            n_video=n_video, kv_len=kv_len, dense_from=dense_from,
        )  # fmt: skip


def _key_padding_lengths(attention_mask: torch.Tensor | None, batch: int, n: int):
    """kv_len (B,) int32 from a [B, 1, 1, N] bool key-padding mask (a valid prefix), or None."""
    if attention_mask is None:
        return None
    m = attention_mask
    if (
        m.dtype != torch.bool
        or m.ndim != 4
        or m.shape[1] != 1
        or m.shape[2] != 1
        or m.shape[-1] != n
    ):
        raise ValueError(
            "XAttention expects HunyuanVideo's key-padding mask: bool [B, 1, 1, N] with "
            f"N={n}, got {tuple(m.shape)} {m.dtype}"
        )  # fmt: skip
    m = m.reshape(m.shape[0], n).expand(batch, n)
    kv_len = m.sum(dim=-1, dtype=torch.int32)
    prefix = m.to(torch.int32).cumprod(dim=-1).sum(dim=-1, dtype=torch.int32)
    # on the device on CUDA and under compile (no host read), a ValueError on the CPU
    require(
        (kv_len == prefix).all(),
        "XAttention expects right-padded text: the key mask must be a prefix",
    )
    return kv_len


class _JointXAttnMixin(_XAttnMixin):
    """The sparse / ``dense_kernel="xattn"`` path of HunyuanVideo-style joint attention over
    [video, text] (double-stream blocks: text projected apart; single-stream: projected
    together), shared by :class:`HunyuanVideoXAttnProcessor` and
    :class:`HunyuanVideo15XAttnProcessor` (each names its default preset, ``PRESET``), with
    their constructor and the token refiner's stock attention."""

    PRESET = ""

    def __init__(
        self,
        cfg: XAttentionConfig | None = None,
        *,
        controller: XAttentionController | None = None,
        layer: int | None = None,
    ) -> None:
        super().__init__()
        self._init_xattn(cfg, controller, layer, self.PRESET)
        self._refiner_processor = AttnProcessor2_0()

    def _refiner(self, attn, hidden_states, attention_mask) -> torch.Tensor:
        """The token refiner's call (``encoder_hidden_states is None``, when a single instance
        was given to ``set_attn_processor``): plain self-attention over text, stock."""
        return self._refiner_processor(attn, hidden_states, None, attention_mask)

    def _joint_attention(
        self,
        attn: torch.nn.Module,
        layer: int,
        sparse: bool,
        degree: int,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None,
        zero_padded_rows: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_states: [B, N_v, C], encoder_hidden_states: [B, L, C] (this rank's under
        Ulysses degree > 1); attention_mask: [B, 1, 1, N_v + L] bool key padding (a valid
        prefix) or None. Returns (video_out [B, N_v, C], text_out [B, L, C]) as the parents.
        zero_padded_rows: padded text query rows come out as zeros (HunyuanVideo 1.5's stock
        mask also masks them as queries, and SDPA gives a row without keys zeros)."""
        n_video, n_text = hidden_states.shape[1], encoder_hidden_states.shape[1]
        single = attn.add_q_proj is None
        if single:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)

        # 1-4. QKV projections, per-head QK norms, RoPE on the video tokens, the text stream
        #      (double-stream blocks) after the video: the parent's arithmetic, with the norm
        #      and RoPE fused where they can be (:func:`~xattn_video.processor_qk.norm_rope`)
        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if single:  # [video, text] projected together: RoPE on the video tokens
            query = norm_rope(attn.norm_q, query, image_rotary_emb, n_video)
            key = norm_rope(attn.norm_k, key, image_rotary_emb, n_video)
        else:  # video and text projected apart: each written into one [video, text] buffer
            enc_q = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            enc_k = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            enc_v = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            query = joint_norm_rope(query, enc_q, attn.norm_q, attn.norm_added_q, image_rotary_emb)
            key = joint_norm_rope(key, enc_k, attn.norm_k, attn.norm_added_k, image_rotary_emb)
            value = torch.cat([value, enc_v], dim=1)

        # 5. XAttention over [video, text] with text padding as kv_len (whole-sequence values
        #    under Ulysses degree > 1: this rank holds 1/degree of the video and of the text)
        B, N = query.shape[0], query.shape[1] * degree
        kv_len = _key_padding_lengths(attention_mask, B, N)
        cfg = self.controller.cfg
        zero_rows = cfg.text_policy == "sparse" and kv_len is not None
        dense_from = n_video * degree if (cfg.text_policy == "dense" and n_text > 0) else None
        if zero_rows and degree == 1 and sparse:
            # padded query rows get zeros so their content cannot steer the block selection
            valid = torch.arange(N, device=query.device)[None, :] < kv_len[:, None]
            query = query * valid[:, :, None, None].to(query.dtype)
        out = self._sparse_attention(
            attn, layer, query, key, value, n_video=n_video, kv_len=kv_len, dense_from=dense_from,
            n_text=n_text, sparse=sparse, zero_padded_queries=zero_rows,
            attention_mask=attention_mask,
        )  # fmt: skip
        hidden_states = out.flatten(2, 3).to(query.dtype)

        # 6. Output projections (as the parent)
        hidden_states, encoder_hidden_states = (
            hidden_states[:, :-n_text],
            hidden_states[:, -n_text:],
        )
        if zero_padded_rows and kv_len is not None:
            text_valid = (
                torch.arange(n_text, device=query.device)[None, :] < (kv_len - n_video)[:, None]
            )
            encoder_hidden_states = encoder_hidden_states * text_valid[:, :, None].to(query.dtype)
        if getattr(attn, "to_out", None) is not None:
            hidden_states = attn.to_out[0](hidden_states)
            hidden_states = attn.to_out[1](hidden_states)
        if getattr(attn, "to_add_out", None) is not None:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


class HunyuanVideoXAttnProcessor(_JointXAttnMixin, HunyuanVideoAttnProcessor2_0):
    """XAttention for HunyuanVideo's double- and single-stream blocks.

    cfg: the configuration (default: the ``hunyuanvideo`` preset) -- or controller: a shared
    :class:`XAttentionController`; layer: this processor's layer index (None: looked up from
    the attention module, see ``attach_step_hook``). Returns ``(video_out [B, N_v, C],
    text_out [B, L, C])`` like the parent; for the token refiner (``encoder_hidden_states is
    None``) the refiner's stock ``AttnProcessor2_0`` output [B, L, C].
    """

    PRESET = "hunyuanvideo"

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        if encoder_hidden_states is None:
            return self._refiner(attn, hidden_states, attention_mask)
        layer = self._layer_index(attn)
        sparse = self.controller.is_sparse(layer)
        ulysses = parallel.ulysses_group(self._parallel_config)
        degree = 1 if ulysses is None else ulysses[1]
        if not sparse:
            self._record_dense(layer)
            if degree == 1 and not xattn_dense(self.controller, layer):
                return super().__call__(
                    attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb
                )

        return self._joint_attention(
            attn, layer, sparse, degree, hidden_states, encoder_hidden_states, attention_mask,
            image_rotary_emb,
        )  # fmt: skip


class HunyuanVideo15XAttnProcessor(_JointXAttnMixin, HunyuanVideo15AttnProcessor2_0):
    """XAttention for HunyuanVideo 1.5's (double-stream) blocks.

    cfg / controller / layer: as :class:`HunyuanVideoXAttnProcessor` (default preset
    ``hunyuanvideo15``). attention_mask: [B, L] over the text tokens (the transformer sorts the
    valid ones first, so a valid prefix); the stock processor masks padded text both as keys
    and as queries, so here they are kv_len and their output rows are zeros, as SDPA gives the
    parent. Returns ``(video_out [B, N_v, C], text_out [B, L, C])`` like the parent; for the
    token refiner (``encoder_hidden_states is None``, when a single instance was given to
    ``set_attn_processor``) the refiner's stock ``AttnProcessor2_0`` output [B, L, C].
    Context parallelism (diffusers ships no plan for this model) raises ``ValueError``.
    """

    PRESET = "hunyuanvideo15"

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        if encoder_hidden_states is None:
            return self._refiner(attn, hidden_states, attention_mask)
        layer = self._layer_index(attn)
        sparse = self.controller.is_sparse(layer)
        if not sparse:
            self._record_dense(layer)
            if not xattn_dense(self.controller, layer):
                return super().__call__(
                    attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb
                )
        if parallel.ulysses_group(self._parallel_config) is not None:
            raise ValueError("XAttention does not support context parallelism for HunyuanVideo 1.5")
        if attention_mask is None:
            raise ValueError(
                "XAttention for HunyuanVideo 1.5 expects its blocks' joint call: text states "
                "and their [B, L] attention mask"
            )
        n_video, n_text = hidden_states.shape[1], encoder_hidden_states.shape[1]
        if attention_mask.ndim != 2 or attention_mask.shape[1] != n_text:
            raise ValueError(
                f"XAttention expects HunyuanVideo 1.5's text mask [B, {n_text}], got "
                f"{tuple(attention_mask.shape)}"
            )
        key_mask = torch.nn.functional.pad(attention_mask.bool(), (n_video, 0), value=True)
        return self._joint_attention(
            attn, layer, sparse, 1, hidden_states, encoder_hidden_states,
            key_mask[:, None, None, :], image_rotary_emb, zero_padded_rows=True,
        )  # fmt: skip


class WanXAttnProcessor(_XAttnMixin, WanAttnProcessor):
    """XAttention for Wan 2.1 / 2.2 (and Wan VACE) self-attention (``attn1``); cross-attention
    (``encoder_hidden_states`` given) is delegated to ``WanAttnProcessor`` unchanged.

    cfg / controller / layer: as :class:`HunyuanVideoXAttnProcessor` (default preset ``wan``).
    hidden_states: [B, N, C] video tokens in (t, h, w) raster order; returns [B, N, C].
    """

    def __init__(
        self,
        cfg: XAttentionConfig | None = None,
        *,
        controller: XAttentionController | None = None,
        layer: int | None = None,
    ) -> None:
        super().__init__()
        self._init_xattn(cfg, controller, layer, "wan")

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        args = (attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if encoder_hidden_states is not None or attn.add_k_proj is not None:
            return super().__call__(*args)  # cross-attention: stock
        layer = self._layer_index(attn)
        sparse = self.controller.is_sparse(layer)
        if not sparse:
            self._record_dense(layer)
            if not xattn_dense(self.controller, layer):
                return super().__call__(*args)
        if attention_mask is not None:
            raise ValueError("XAttention for Wan self-attention takes no attention_mask")

        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = wan_norm_rope(attn.norm_q, query, attn.heads, rotary_emb)
        key = wan_norm_rope(attn.norm_k, key, attn.heads, rotary_emb)
        value = value.unflatten(2, (attn.heads, -1))

        out = self._sparse_attention(
            attn, layer, query, key, value, n_video=query.shape[1], kv_len=None, dense_from=None,
            sparse=sparse,
        )  # fmt: skip
        hidden_states = out.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states


PROCESSOR_CLASSES: dict[str, type] = {
    "hunyuanvideo": HunyuanVideoXAttnProcessor,
    "hunyuanvideo15": HunyuanVideo15XAttnProcessor,
    "wan": WanXAttnProcessor,
}
"""Model family (:data:`xattn_video.targets.TARGETS`) -> its XAttention processor class."""
