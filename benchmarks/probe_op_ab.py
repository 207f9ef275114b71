"""Probe (GPU): the whole op ``xv.xattention`` timed against cuDNN dense, for A/B runs of two
source trees in alternating processes (an older tree on PYTHONPATH ahead of the installed one).

Per run: cuDNN SDPA dense (8 timings) and the op at ratio 0.3, S=8, B=1, 24 heads, head dim
128, kv_len = N - 192 (HunyuanVideo-like text padding), median of 25 CUDA-event timings, for
fp8 attention + fp8 estimate, fp8 attention + bf16 estimate, bf16 attention + fp8 estimate,
bf16 attention + bf16 estimate.
Prints one ``AB {json}`` line (N, tag, GPU, ms and the ratio to cuDNN). An optional third
argument is the op's ``estimate_kernel`` for every call (e.g. ``prefer-gluon``; left out, the
op's default, so trees without the argument run too).

Usage: python benchmarks/probe_op_ab.py 119056 new [prefer-gluon]
       PYTHONPATH=/tmp/old:$PYTHONPATH python benchmarks/probe_op_ab.py 119056 old
(the old tree e.g. from ``git archive <rev> xattn_video | tar -x -C /tmp/old``; the H200 runs
used a copy of this script outside the repository, with the same timing).

Not supported: other shapes or selections (edit the constants), a statistic across runs (run
it several times, alternating the trees).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import xattn_video as xv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_ms  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
ap.add_argument("n", type=int, help="sequence length")
ap.add_argument("tag", help="the tree's name in the AB line (old / new)")
ap.add_argument("estimate_kernel", nargs="?", help="the op's estimate_kernel (default: the op's)")
cli = ap.parse_args()
n, tag = cli.n, cli.tag
extra = {} if cli.estimate_kernel is None else {"estimate_kernel": cli.estimate_kernel}
H, D = 24, 128
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (
    torch.randn(1, H, n, D, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3)
)
kv_len = torch.tensor([n - 192], device="cuda")


def dense():
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v)


kw = dict(ratio=0.3, stride=8, block_size=128, kv_len=kv_len)
res = {"tag": tag, "n": n, "gpu": torch.cuda.get_device_name(), **extra}
res["cudnn_ms"] = median_ms(dense, 8, warmup=3)
for name, prec, est in [
    ("fp8+fp8est", "fp8", "fp8"),
    ("fp8", "fp8", "bf16"),
    ("bf16+fp8est", "bf16", "fp8"),
    ("bf16", "bf16", "bf16"),
]:
    res[name + "_ms"] = median_ms(
        lambda prec=prec, est=est: xv.xattention(
            q, k, v, precision=prec, estimate_precision=est, **kw, **extra
        ),
        25,
        warmup=3,
    )
    res[name + "_x"] = res["cudnn_ms"] / res[name + "_ms"]
print("AB", json.dumps(res), flush=True)
