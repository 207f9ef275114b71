"""Probe (GPU): dense attention over text-padded keys, the call of a dense HunyuanVideo step.

HunyuanVideo's processors pass the text padding as a [B, 1, 1, N] bool key mask, and PyTorch's
SDPA with a mask cannot use its fastest kernels. Per case, at 119,056 and 67,576 tokens (B=1,
kv_len = N - 192) and 67,576 tokens with B=2 of unequal lengths, 24 heads, head dim 128, bf16,
q / k / v as the processors hand them over ((B, N, H, D) transposed to (B, H, N, D) views):

- ``masked_default`` / ``masked_cudnn`` / ``masked_efficient``: SDPA with the key mask, default
  backend choice (what diffusers' stock processor runs) and forced backends;
- ``sliced_default`` / ``sliced_cudnn`` / ``sliced_flash``: SDPA without a mask on each
  sample's valid keys (``k[:, :, :kv_len]``; one call per sample), what an exact dense call
  could run if the lengths were known on the host;
- ``xattn_every_block``: :func:`xattn_video.sparse_path.dense_attention`, the call a dense step
  makes with ``dense_kernel="xattn"`` (the kernel with every block selected and ``kv_len``;
  the H200 run in docs/results called ``xv.block_sparse_attention`` with that mask directly).

Median of 5 CUDA-event timings after 2 warm-up calls; the max |error| of the first two heads
against an fp32 masked SDPA at 67,576 tokens. Prints a table and writes JSON with GPU,
versions and git SHA.

Usage: python benchmarks/probe_dense_padded.py [--out results/probe_dense_padded.json]

Not supported: other head counts or dims (edit the constants).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, median_ms, report  # noqa: E402

import xattn_video as xv  # noqa: E402
from xattn_video.sparse_path import dense_attention  # noqa: E402

H, D = 24, 128
SHAPES = [(119056, [119056 - 192]), (67576, [67576 - 192]), (67576, [67576 - 192, 67576 - 100])]
BACKENDS = {
    "default": None,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
}


def _sdpa(q, k, v, mask, backend):
    if backend is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def cases(q, k, v, lens: list[int]) -> tuple[dict, torch.Tensor]:
    """(name -> a call computing dense attention over the valid keys, the key mask [B, 1, 1, N]).
    q, k, v: (B, H, N, D)."""
    n = q.shape[2]
    kv_len = torch.tensor(lens, device=q.device)
    mask = (torch.arange(n, device=q.device)[None] < kv_len[:, None])[:, None, None, :]

    def sliced(backend):
        sl = [slice(b, b + 1) for b in range(len(lens))]
        return torch.cat([_sdpa(q[s], k[s, :, :L], v[s, :, :L], None, backend)
                          for s, L in zip(sl, lens, strict=True)])  # fmt: skip

    out = {f"masked_{name}": (lambda b=b: _sdpa(q, k, v, mask, b))
           for name, b in BACKENDS.items() if name != "flash"}  # fmt: skip
    out |= {f"sliced_{name}": (lambda b=b: sliced(b))
            for name, b in BACKENDS.items() if name != "efficient"}  # fmt: skip
    cfg = xv.XAttentionConfig(dense_kernel="xattn")

    def kernel():  # takes and returns the processors' [B, N, H, D]; (B, H, N, D) views here
        return dense_attention(cfg, *(x.transpose(1, 2) for x in (q, k, v)), kv_len=kv_len)

    out["xattn_every_block"] = lambda: kernel().transpose(1, 2)
    return out, mask


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="results/probe_dense_padded.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("probe_dense_padded needs a CUDA GPU")
    print(environment(), flush=True)
    rows = []
    for n, lens in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(len(lens), n, H, D, device="cuda", generator=g,
                               dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))  # fmt: skip
        fns, mask = cases(q, k, v, lens)
        ref = None
        if n < 100_000:
            ref = F.scaled_dot_product_attention(*(x[:, :2].float() for x in (q, k, v)),
                                                 attn_mask=mask)  # fmt: skip
        base = None
        for name, fn in fns.items():
            row = {"n": n, "B": len(lens), "kv_len": lens, "method": name}
            try:
                o = fn()
                if ref is not None:
                    row["max_err"] = float((o[:, :2].float() - ref).abs().max())
                row["ms"] = median_ms(fn, 5, warmup=2)
            except RuntimeError as exc:  # a backend that refuses the case: reported
                row["error"] = str(exc).splitlines()[0][:160]
            if name == "masked_default":
                base = row.get("ms")
            if base and row.get("ms"):
                row["x_vs_masked_default"] = base / row["ms"]
            print(row, flush=True)
            rows.append(row)
    columns = [("n", "tokens", "{}"), ("B", "B", "{}"), ("method", "method", "{}"),
               ("ms", "ms", "{:.1f}"), ("x_vs_masked_default", "x vs masked", "{:.2f}"),
               ("max_err", "max err vs fp32", "{:.2e}")]  # fmt: skip
    report(rows, columns, args.out, vars(args))


if __name__ == "__main__":
    main()
