"""What the processors spend preparing q and k, with and without the fused norm + RoPE kernel.

Per HunyuanVideo block at 720p x 129 frames (118,800 video + 256 text tokens, 24 heads x 128,
bf16), after the QKV projections: per-head ``RMSNorm`` of q and k, RoPE on the video tokens,
and the [video, text] joint sequence -- for a double-stream block (video and text projected
apart: norms, RoPE, then ``torch.cat`` of q, k and v) and a single-stream one (projected
together: norms, RoPE on the video slice, ``torch.cat`` of the pieces). Timed through the
processors' own helpers (``processor_qk.norm_rope`` / ``joint_norm_rope``), once with
diffusers' torch code (what the processors ran before) and once fused, plus the kernel alone per
launch config (GB/s: x read once, written once; whether its output equals the default
config's bit for bit: the tile's layout sets the order of the mean's sum). Outputs are checked:
fused vs torch, max difference in bf16 ulps and the share of values that differ.

``--model wan``: the same for Wan 2.1 14B at 720p x 81 frames (75,600 tokens, 40 heads x 128):
the Wan processor's q (or k) preparation from the projection's output (``torch.nn.RMSNorm``
across heads, its interleaved RoPE on every token; ``processor_qk.wan_norm_rope``), torch code
against fused, with the rotary tables in fp32, bf16 (a model cast with ``.to(dtype)``) and fp64
(a ``rope`` module kept out of the cast; the processor hands fp32 to the kernel), then the
kernel's launch configs.

Usage (GPU): python benchmarks/probe_norm_rope.py [--model wan] [--video N] [--out results/x.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_ms, qk_prep_fused, report  # noqa: E402

from xattn_video import processor_qk  # noqa: E402
from xattn_video.kernels.norm_rope import rms_norm_rope  # noqa: E402

# (tokens per program, heads per program, num_warps); the first is the kernel's default
CONFIGS = [(1, 4, 2), (1, 8, 4), (1, 8, 2), (1, 16, 4), (1, 32, 4), (1, 4, 4), (1, 2, 2),
           (1, 4, 1), (2, 8, 4), (4, 8, 4)]  # fmt: skip
# Wan: (tokens per program, heads per step of its sweep, num_warps); the first is the default
WAN_CONFIGS = [
    (1, 4, 2),
    (1, 8, 4),
    (1, 8, 2),
    (1, 16, 4),
    (1, 2, 2),
    (1, 4, 1),
    (2, 4, 2),
    (2, 8, 4),
]


def _setup(video: int, text: int, heads: int, dim: int, device: str = "cuda"):
    from diffusers.models.normalization import RMSNorm

    g = torch.Generator(device=device).manual_seed(0)

    def t(*shape, scale=1.0, dtype=torch.bfloat16):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    norms = []
    for _ in range(4):
        n = RMSNorm(dim, eps=1e-6).to(device, torch.bfloat16)
        n.weight.data.copy_(t(dim, scale=0.3) + 1)
        norms.append(n)
    angle = torch.rand(video, dim // 2, generator=g, device=device) * 6.28
    rotary = (angle.cos().repeat_interleave(2, -1), angle.sin().repeat_interleave(2, -1))
    return dict(
        norms=norms, rotary=rotary,
        video=[t(1, video, heads, dim, scale=3.0) for _ in range(3)],
        text=[t(1, text, heads, dim, scale=3.0) for _ in range(3)],
        joint=[t(1, video + text, heads, dim, scale=3.0) for _ in range(3)],
    )  # fmt: skip


def double_block(s) -> tuple[torch.Tensor, ...]:
    """q, k, v of a double-stream block as the processor builds them."""
    (vq, vk, vv), (tq, tk, tv), (nq, nk, naq, nak) = s["video"], s["text"], s["norms"]
    q = processor_qk.joint_norm_rope(vq, tq, nq, naq, s["rotary"])
    k = processor_qk.joint_norm_rope(vk, tk, nk, nak, s["rotary"])
    return q, k, torch.cat([vv, tv], dim=1)


def single_block(s) -> tuple[torch.Tensor, ...]:
    """q, k of a single-stream block ([video, text] projected together)."""
    (q, k, _), (nq, nk, _, _), n_video = s["joint"], s["norms"], s["video"][0].shape[1]
    rot = s["rotary"]
    return processor_qk.norm_rope(nq, q, rot, n_video), processor_qk.norm_rope(nk, k, rot, n_video)


def _compare(got, want) -> dict:
    """Largest difference, in absolute terms and in bf16 ulps of the largest value of its
    (token, head) vector (a rotated value near 0 can differ by an ulp of its inputs), and the
    share of values that differ."""
    diff, ulps, frac = 0.0, 0.0, 0.0
    for a, b in zip(got, want, strict=True):
        d = (a.float() - b.float()).abs()
        ulp = (b.float().abs().amax(-1, keepdim=True) * 2.0**-7).clamp_min(1e-30)
        diff = max(diff, d.max().item())
        ulps = max(ulps, (d / ulp).max().item())
        frac = max(frac, (d > 0).float().mean().item())
    return dict(max_abs_diff=diff, max_row_ulps=ulps, frac_differ=frac)


def torch_vs_fused(fn) -> tuple[dict, dict]:
    """({fused: ms}, {fused: output}) of ``fn()`` with the processors' torch q / k code (False)
    and with the fused kernel (True)."""
    times, outs = {}, {}
    for fused in (False, True):
        with qk_prep_fused(fused):
            outs[fused] = fn()
            times[fused] = bench_ms(fn)
    return times, outs


def wan_setup(tokens: int, heads: int, dim: int, device: str = "cuda") -> dict:
    """A Wan q (or k) projection's output (1, tokens, heads * dim) bf16, its RMSNorm across heads
    and the rotary tables (1, tokens, 1, dim) per table dtype, as ``WanRotaryPosEmbed`` makes
    them (one angle per pair, repeated)."""
    g = torch.Generator(device=device).manual_seed(0)
    x = (torch.randn(1, tokens, heads * dim, generator=g, device=device) * 3).to(torch.bfloat16)
    norm = torch.nn.RMSNorm(heads * dim, eps=1e-6).to(device, torch.bfloat16)
    norm.weight.data.normal_(1.0, 0.3, generator=g)
    angle = torch.rand(tokens, dim // 2, generator=g, device=device, dtype=torch.float64) * 6.28
    cos, sin = (f(angle).repeat_interleave(2, -1)[None, :, None] for f in (torch.cos, torch.sin))
    tables = {str(dt).removeprefix("torch."): (cos.to(dt), sin.to(dt))
              for dt in (torch.float32, torch.bfloat16, torch.float64)}  # fmt: skip
    return dict(x=x, norm=norm, heads=heads, tables=tables)


def wan_rows(s: dict) -> list[dict]:
    """Torch code vs fused per table dtype, then the kernel's launch configs (fp32 tables)."""
    rows = []
    x, norm, heads = s["x"], s["norm"], s["heads"]
    for name, rotary in s["tables"].items():
        times, outs = torch_vs_fused(lambda r=rotary: processor_qk.wan_norm_rope(norm, x, heads, r))
        rows.append(dict(what=f"Wan q prep, {name} tables", torch_ms=times[False],
                         fused_ms=times[True], speedup=times[False] / times[True],
                         **_compare((outs[True],), (outs[False],))))  # fmt: skip
        print(f"  {rows[-1]['what']}: torch {times[False]:.3f} ms, fused {times[True]:.3f} ms")
    xh = x.unflatten(2, (heads, -1))
    cos, sin = (t[0, :, 0] for t in s["tables"]["float32"])
    args = (xh, norm.weight, norm.eps, cos, sin, x.shape[1])
    return rows + config_rows("Wan kernel", WAN_CONFIGS, args, style="wan")


def config_rows(label: str, configs, args: tuple, **kw) -> list[dict]:
    """The kernel alone on ``args`` per (block_n, block_h, num_warps): ms, GB/s (x read once,
    written once) and whether its output equals the default config's bit for bit."""
    rows, x = [], args[0]
    moved = 2 * x.numel() * x.element_size()
    want = rms_norm_rope(*args, **kw)
    for bn, bh, warps in configs:
        fn = lambda b=bn, h=bh, w=warps: rms_norm_rope(  # noqa: E731
            *args, **kw, block_n=b, block_h=h, num_warps=w
        )
        same = bool(torch.equal(fn(), want))
        ms = bench_ms(fn)
        name = f"{label} block_n={bn} block_h={bh} warps={warps}"
        rows.append(dict(what=name, fused_ms=ms, gbps=moved / (ms * 1e-3) / 1e9,
                         same_as_default=same))  # fmt: skip
        print(f"  {name}: {ms:.3f} ms", flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("hunyuanvideo", "wan"), default="hunyuanvideo")
    p.add_argument("--video", type=int, default=None,
                   help="video tokens (default 118,800; Wan: 75,600)")  # fmt: skip
    p.add_argument("--text", type=int, default=256)
    p.add_argument("--heads", type=int, default=None, help="default 24 (Wan: 40)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--out", default="results/probe_norm_rope.json")
    args = p.parse_args(argv)
    wan = args.model == "wan"
    args.video = args.video or (75_600 if wan else 118_800)
    args.heads = args.heads or (40 if wan else 24)
    cols = [("what", "what", "{}"), ("torch_ms", "torch code ms", "{:.3f}"),
            ("fused_ms", "fused ms", "{:.3f}"), ("speedup", "x", "{:.1f}"),
            ("max_row_ulps", "max ulps (row)", "{:.2f}"), ("frac_differ", "share differing", "{:.1e}"),
            ("gbps", "GB/s", "{:.0f}"), ("same_as_default", "same", "{}")]  # fmt: skip
    if wan:
        report(wan_rows(wan_setup(args.video, args.heads, args.dim)), cols, args.out, vars(args))
        return
    s = _setup(args.video, args.text, args.heads, args.dim)
    rows: list[dict] = []
    for name, fn in (("double-stream block", double_block), ("single-stream block", single_block)):
        times, outs = torch_vs_fused(lambda f=fn: f(s))
        row = dict(what=name, torch_ms=times[False], fused_ms=times[True],
                   speedup=times[False] / times[True], **_compare(outs[True], outs[False]))  # fmt: skip
        rows.append(row)
        print(f"  {name}: torch {times[False]:.3f} ms, fused {times[True]:.3f} ms", flush=True)
    x, norm = s["joint"][0], s["norms"][0]
    rows += config_rows("kernel", CONFIGS, (x, norm.weight, norm.eps, *s["rotary"], args.video))
    report(rows, cols, args.out, vars(args))


if __name__ == "__main__":
    main()
