"""Profile (GPU, under Nsight Compute): one launch of the Gluon attention kernel, for ncu.

The inputs of ``probe_gluon.py`` (B=1, 24 heads, head dim 128, random block scores pinned to
a density); the kernel runs once to compile, then once between ``cudaProfilerStart`` /
``cudaProfilerStop``, so ``ncu --profile-from-start off`` sees exactly that launch (and the
fp8 path's quantization kernels, which run inside it).

Usage: ncu --clock-control none --profile-from-start off --section SpeedOfLight ... \\
           python benchmarks/profile_gluon_ncu.py --density 0.1 --precision bf16
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import profile_one_call  # noqa: E402

from xattn_video.kernels.select import mask_to_indices, select_blocks
from xattn_video.kernels.sparse_attention_gluon import block_sparse_attention_gluon
from xattn_video.kernels.tuning import gluon_stages, gpu_name
from xattn_video.op_checks import PRECISIONS


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=119056)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--precision", choices=PRECISIONS, default="bf16")
    p.add_argument(
        "--stages",
        type=int,
        default=None,
        help="ring depth (default: what the op runs on this GPU)",
    )
    args = p.parse_args(argv)
    n, H = args.n, args.heads
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, H, n, 128, device="cuda", generator=g).bfloat16() for _ in range(3))
    nb = math.ceil(n / 128)
    scores = torch.rand(1, H, nb, nb, device="cuda", generator=g)
    counts, idx = mask_to_indices(select_blocks(scores, block_size=128, ratio=args.density, n_k=n))
    stages = args.stages or gluon_stages(gpu_name(q), 128, args.precision)  # as the op does
    kw = dict(block_size=128, stages=stages, precision=args.precision)
    profile_one_call(lambda: block_sparse_attention_gluon(q, k, v, counts, idx, **kw))


if __name__ == "__main__":
    main()
