"""Profile (GPU, under Nsight Compute): one call of the estimate, for ncu.

B=1, 24 heads, head dim 128, the last 99 keys padded (``probe_estimate_ab.py``'s inputs). The
estimate runs once to compile, then once between ``cudaProfilerStart`` / ``cudaProfilerStop``,
so ``ncu --profile-from-start off`` sees exactly that call's kernels (the estimate, and with
``--precision fp8`` the quantization). docs/results/ncu_estimate_*_h200_206fc29.txt came from it
at git ``206fc29``, whose Triton estimate could also split its key sweep (``--split``; removed
since: no faster, see docs/attention-kernels.md).

Usage: ncu --clock-control none --profile-from-start off --section SpeedOfLight ... \\
           python benchmarks/profile_estimate_ncu.py --stride 8 --precision bf16 --kernel gluon
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import profile_one_call  # noqa: E402

from xattn_video.kernels.estimate import estimate_block_scores
from xattn_video.op_checks import PRECISIONS


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=119056)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--precision", choices=PRECISIONS, default="bf16")
    p.add_argument("--kernel", choices=["triton", "gluon"], default="triton")
    args = p.parse_args(argv)
    n = args.n
    g = torch.Generator(device="cuda").manual_seed(n)
    q, k = (torch.randn(1, args.heads, n, 128, device="cuda", generator=g).bfloat16()
            for _ in range(2))  # fmt: skip
    kw = dict(stride=args.stride, block_size=128, precision=args.precision, kernel=args.kernel,
              kv_len=torch.tensor([n - 99], device="cuda"))  # fmt: skip
    profile_one_call(lambda: estimate_block_scores(q, k, **kw))


if __name__ == "__main__":
    main()
