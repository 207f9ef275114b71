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
