"""``benchmarks/probe_norm_rope.py`` on CPU: the blocks it times build q / k / v the way the
processors do (joint [video, text] sequences, RoPE on the video only), and its comparison
reports zero for identical outputs and the right ulps for a one-ulp change."""

import torch

from xattn_video.kernels.norm_rope import rms_norm_rope_ref

from ._benchmarks import load_benchmark


def test_probe_blocks_build_the_processors_tensors():
    probe = load_benchmark("probe_norm_rope")
    s = probe._setup(video=12, text=4, heads=2, dim=16, device="cpu")
    q, k, v = probe.double_block(s)
    assert q.shape == k.shape == v.shape == (1, 16, 2, 16)
    nq, naq = s["norms"][0], s["norms"][2]
    want_video = rms_norm_rope_ref(s["video"][0], nq.weight, nq.eps, *s["rotary"], 12)
    assert torch.equal(q[:, :12], want_video)
    assert torch.equal(q[:, 12:], rms_norm_rope_ref(s["text"][0], naq.weight, naq.eps))
    assert torch.equal(v, torch.cat([s["video"][2], s["text"][2]], dim=1))
    sq, sk = probe.single_block(s)
    joint_q = s["joint"][0]
    assert torch.equal(sq, rms_norm_rope_ref(joint_q, nq.weight, nq.eps, *s["rotary"], 12))
    assert sk.shape == (1, 16, 2, 16)
    same = probe._compare((q,), (q,))
    assert same == dict(max_abs_diff=0.0, max_row_ulps=0.0, frac_differ=0.0)
    bumped = q.clone()
    top = int(q[0, 0, 0].float().abs().argmax())  # the vector's largest value
    bumped.view(torch.int16)[0, 0, 0, top] += 1  # one bf16 ulp further from 0
    got = probe._compare((bumped,), (q,))
    assert 0.5 <= got["max_row_ulps"] <= 1.0 and got["frac_differ"] == 1 / q.numel()


def test_probe_wan_setup_is_the_wan_processors_input(monkeypatch):
    """``--model wan``: a (1, N, H*D) projection output, an RMSNorm across heads and Wan-layout
    tables (1, N, 1, D) in fp32 / bf16 / fp64, each a pair-repeated cos / sin of one angle; its
    rows time the Wan processor's helper, here on CPU with a stand-in timer."""
    probe = load_benchmark("probe_norm_rope")
    s = probe.wan_setup(tokens=6, heads=3, dim=8, device="cpu")
    assert s["x"].shape == (1, 6, 24) and s["norm"].normalized_shape == (24,)
    assert sorted(s["tables"]) == ["bfloat16", "float32", "float64"]
    cos, sin = s["tables"]["float64"]
    assert cos.shape == (1, 6, 1, 8) and cos.dtype == torch.float64
    assert torch.equal(cos[..., 0::2], cos[..., 1::2]) and torch.equal(
        sin[..., 0::2], sin[..., 1::2]
    )
    assert torch.allclose(cos**2 + sin**2, torch.ones_like(cos))
    assert s["tables"]["bfloat16"][0].dtype == torch.bfloat16
    monkeypatch.setattr(probe, "bench_ms", lambda fn: (fn(), 1.0)[1])
    monkeypatch.setattr(probe, "WAN_CONFIGS", [(1, 8, 4), (2, 4, 2)])
    rows = probe.wan_rows(s)
    assert [r["what"] for r in rows[:3]] == [
        f"Wan q prep, {name} tables" for name in ("float32", "bfloat16", "float64")
    ]
    assert rows[3]["same_as_default"] is True  # the default config against itself
