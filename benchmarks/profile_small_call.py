"""Where the time of one XAttention call goes at the tiny DiT's size, eager and in a CUDA graph.

Shape: B=1, H=4, D=64, bf16, N = 17,408 video tokens + 3 condition tokens (the trained tiny
DiT at its training size; the condition tokens are joint "text", kept dense). Per stage: the
median time run eagerly (``do_bench`` with CUDA events: includes the gaps while the host
launches, which is what an eager forward pays) and replayed from a CUDA graph (device time
only: what ``mode="reduce-overhead"`` pays). Stages: dense SDPA (the baseline), the whole
``xattention`` op (tau 0.97, ``max_density`` 0.4, S=8), the estimate per launch config, the
selection, the index lists, the non-finite checks, the sparse kernel per launch config at the
selected mask, and the tile-order permutation. Launch configs whose output differs from the
default's are marked (``same``: masks equal / outputs within 1e-2).

Prints tables and writes JSON (GPU, versions, git SHA). Used to fill the small-N rows of
``xattn_video/kernels/tuning.py``; not a test.

Usage (GPU): python benchmarks/profile_small_call.py [--out results/profile_small_call.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_ms, print_table, save_json  # noqa: E402

from xattn_video import attention as A  # noqa: E402
from xattn_video.cost_model import capture_graph  # noqa: E402
from xattn_video.kernels.estimate import estimate_block_scores  # noqa: E402
from xattn_video.kernels.nonfinite import (  # noqa: E402
    nonfinite_flags,
    nonfinite_rows_ref,
    propagate_nan,
)
from xattn_video.kernels.select import mask_to_indices, select_blocks  # noqa: E402
from xattn_video.kernels.select_fused import mask_to_csr, select_blocks_fused  # noqa: E402
from xattn_video.kernels.sparse_attention_hopper import block_sparse_attention_hopper  # noqa: E402
from xattn_video.kernels.tuning import hopper_attention_config  # noqa: E402
from xattn_video.op_checks import propagate_nonfinite  # noqa: E402

ESTIMATE_CONFIGS = [  # (BLOCK_M, BLOCK_N, warps, stages), flatten
    ((128, 128, 8, 3), True), ((128, 128, 8, 3), False), ((64, 128, 4, 4), True),
    ((64, 128, 4, 3), True), ((64, 64, 4, 3), True), ((32, 128, 4, 3), True),
    ((32, 64, 4, 3), True), ((32, 64, 2, 3), True), ((16, 128, 4, 3), True),
    ((16, 64, 2, 3), True),
]  # fmt: skip
ATTN_CONFIGS = [  # overrides of the table's config
    {}, {"BLOCK_M": 64}, {"BLOCK_M": 64, "BLOCK_N": 64}, {"num_stages": 3},
    {"BLOCK_M": 64, "num_stages": 3}, {"num_warps": 8}, {"BLOCK_N": 64, "num_stages": 3},
]  # fmt: skip


def graph_ms(fn) -> float | None:
    """Median ms of ``fn`` replayed from a CUDA graph (None when capture fails)."""
    graph = capture_graph(fn)
    return None if graph is None else bench_ms(graph.replay)


def timed(name: str, fn, rows: list, **extra) -> None:
    row = {"stage": name, "eager_ms": bench_ms(fn), "graph_ms": graph_ms(fn), **extra}
    rows.append(row)
    print(f"  {name}: eager {row['eager_ms']:.4f} ms, graph {row['graph_ms']} ms", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--video", type=int, default=17408)
    ap.add_argument("--text", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--threshold", type=float, default=0.97)
    ap.add_argument("--max-density", type=float, default=0.4)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--sweep", action="store_true", help="also time other launch configs")
    ap.add_argument("--out", default="results/profile_small_call.json")
    a = ap.parse_args()
    torch.manual_seed(0)
    n = a.video + a.text
    shape = (1, a.heads, n, a.dim)
    # structured inputs (not iid noise): a low-rank signal per head gives a peaked attention
    base = torch.randn(1, a.heads, n, 8, device="cuda")
    mix = torch.randn(1, a.heads, 8, a.dim, device="cuda")
    q, k, v = ((base @ mix + 0.5 * torch.randn(shape, device="cuda")).to(torch.bfloat16)
               for _ in range(3))  # fmt: skip
    bs, S = 128, a.stride
    # the estimate pinned to bf16 (what the stages below time; "auto" is fp8 on Hopper)
    kw = dict(threshold=a.threshold, stride=S, block_size=bs, dense_from=a.video,
              max_density=a.max_density)  # fmt: skip
    op_kw = dict(kw, estimate_precision="bf16")
    rows: list[dict] = []
    print(f"[small] B=1 H={a.heads} D={a.dim} N={n} ({torch.cuda.get_device_name()})")

    timed("dense SDPA", lambda: F.scaled_dot_product_attention(q, k, v), rows)
    timed("xattention op", lambda: A.xattention(q, k, v, **op_kw), rows)
    mask = A.estimate_block_mask(q, k, **kw)
    density = A.block_density(mask, block_size=bs)
    print(f"  mask density {density:.3f}")
    timed(
        "estimate_block_mask (estimate + select)", lambda: A.estimate_block_mask(q, k, **kw), rows
    )

    lens = torch.full((1,), n, dtype=torch.int32, device="cuda")
    ref_scores = estimate_block_scores(q, k, stride=S, block_size=bs, kv_len=lens)
    sel_kw = dict(block_size=bs, threshold=a.threshold, kv_len=lens, max_density=a.max_density,
                  force_rows=A.dense_blocks(a.video, 1, n, bs, q.device),
                  force_cols=A.dense_blocks(a.video, 1, n, bs, q.device))  # fmt: skip
    ref_mask = select_blocks(ref_scores, **sel_kw)
    est_rows: list[dict] = []
    for launch, flat in ESTIMATE_CONFIGS if a.sweep else ():
        try:
            fn = lambda launch=launch, flat=flat: estimate_block_scores(  # noqa: E731
                q, k, stride=S, block_size=bs, kv_len=lens, launch=launch, flatten=flat
            )
            sc = fn()
            same = bool(torch.equal(select_blocks(sc, **sel_kw), ref_mask))
            timed(f"estimate {launch} flatten={flat}", fn, est_rows, launch=list(launch),
                  flatten=flat, same_mask=same)  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            print(f"  estimate {launch}: {type(exc).__name__}: {str(exc)[:120]}")
            est_rows.append({"stage": f"estimate {launch}", "error": str(exc)[:200]})
    timed("estimate (tuned launch)", lambda: estimate_block_scores(
        q, k, stride=S, block_size=bs, kv_len=lens), rows)  # fmt: skip
    timed("select torch (threshold + budget)", lambda: select_blocks(ref_scores, **sel_kw), rows)
    fused_kw = dict(block_size=bs, threshold=a.threshold, kv_len=lens, dense_from=a.video,
                    max_density=a.max_density)  # fmt: skip
    same = bool(torch.equal(select_blocks_fused(ref_scores, **fused_kw), ref_mask))
    timed("select fused (threshold + budget)", lambda: select_blocks_fused(ref_scores, **fused_kw),
          rows, same_mask=same)  # fmt: skip
    nb_kw = {k: v for k, v in fused_kw.items() if k != "max_density"}
    timed("select fused (threshold only)", lambda: select_blocks_fused(ref_scores, **nb_kw), rows)
    timed("mask_to_indices torch", lambda: mask_to_indices(ref_mask), rows)
    csr = mask_to_csr(ref_mask, block_size=bs, kv_len=lens, n_k=n)
    same = all(torch.equal(x, y) for x, y in zip(csr, mask_to_indices(ref_mask), strict=True))
    timed("mask_to_csr fused", lambda: mask_to_csr(ref_mask, block_size=bs, kv_len=lens, n_k=n),
          rows, same=same)  # fmt: skip
    timed("non-finite checks torch", lambda: propagate_nonfinite(
        q, nonfinite_rows_ref(q, k, v, lens, bs), False), rows)  # fmt: skip
    out_buf = torch.empty_like(q)
    timed("non-finite flags + propagate fused", lambda: propagate_nan(
        out_buf, None, *nonfinite_flags(q, k, v, lens), nan_block=bs), rows)  # fmt: skip
    perm = torch.randperm(n, device="cuda")
    timed("permute q, k, v + inverse out", lambda: [x.index_select(2, perm) for x in (q, k, v, q)],
          rows)  # fmt: skip

    counts, idx = mask_to_indices(ref_mask)
    default = hopper_attention_config(q, bs)
    ref_out = block_sparse_attention_hopper(q, k, v, counts, idx, block_size=bs, kv_len=lens)
    attn_rows: list[dict] = []
    for over in ATTN_CONFIGS if a.sweep else ATTN_CONFIGS[:1]:
        cfg = {**default, **over}
        try:
            fn = lambda cfg=cfg: block_sparse_attention_hopper(  # noqa: E731
                q, k, v, counts, idx, block_size=bs, kv_len=lens, config=cfg
            )
            err = float((fn().float() - ref_out.float()).abs().max())
            timed(f"sparse kernel {over or 'table'}", fn, attn_rows, config=cfg,
                  max_diff=err, same=err < 1e-2)  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            print(f"  sparse {over}: {type(exc).__name__}: {str(exc)[:120]}")
            attn_rows.append({"stage": f"sparse {over}", "error": str(exc)[:200]})
    cols = [("stage", "stage", "{}"), ("eager_ms", "eager ms", "{:.4f}"),
            ("graph_ms", "graph ms", "{:.4f}")]  # fmt: skip
    for title, rs in (("stages", rows), ("estimate configs", est_rows), ("sparse", attn_rows)):
        print(f"\n{title}")
        print_table([r for r in rs if "error" not in r], cols)
    save_json(a.out, {"benchmark": "profile_small_call", "args": vars(a), "density": density,
                      "stages": rows, "estimate": est_rows, "sparse": attn_rows})  # fmt: skip


if __name__ == "__main__":
    main()
