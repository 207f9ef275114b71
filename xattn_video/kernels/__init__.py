"""Triton kernels and their PyTorch references (private layer: use ``xattn_video.attention``).

- ``estimate``: strided antidiagonal block scores (fused; the score matrix is never written).
- ``select``: threshold / ratio block selection and CSR index lists (batched tensor code).
- ``sparse_attention``: FlashAttention-style forward over the index lists, with LSE.
"""
