"""Triton kernels and their PyTorch references (private layer: use ``xattn_video.attention``).

- ``estimate``: strided antidiagonal block scores (fused; the score matrix is never written).
- ``select``: threshold / ratio block selection and CSR index lists (batched tensor code; the
  reference of ``select_fused``).
- ``select_fused``: the threshold selection (+ budget) and the CSR lists as Triton kernels.
- ``nonfinite``: the op's NaN / Inf policy as two Triton kernels (flags, then NaN rows).
- ``sparse_attention``: FlashAttention-style forward over the index lists, with LSE (portable).
- ``sparse_attention_hopper``: the same contract for sm90 (TMA, wgmma, fp8 option).
- ``sparse_attention_gluon``: the same contract for sm90 in Gluon (warp-specialized, ping-pong),
  with ``gluon_attention_parts`` (what its loops share), ``gluon_attention_pairs`` (fp8's loop
  over pairs of key blocks) and ``gluon_ptx`` (inline PTX); ``estimate_gluon``: the estimate.
- ``fp8``: e4m3 quantization with per-block / per-head scales.
- ``tuning``: which attention kernel runs, and measured launch tables per GPU.
"""
