"""benchmarks/estimate_fp8_masks.py's observer and pooling on small random inputs (CPU)."""

import torch

import xattn_video as xv
from xattn_video.calibrate import true_block_mass

from ._benchmarks import load_benchmark


def _load():
    return load_benchmark("estimate_fp8_masks")


def test_observer_measures_both_masks_and_pooling_weights_by_block_pairs():
    bench = _load()
    cfg = xv.XAttentionConfig(threshold=0.6, stride=4, block_size=16, backend="torch")
    obs = bench.MaskCompare(cfg, steps={1})
    assert obs.wants(1) and not obs.wants(0)
    g = torch.Generator().manual_seed(3)
    for n in (64, 128):
        q, k = (torch.randn(1, 2, n, 16, generator=g) for _ in range(2))
        obs.observe(0, 1, q, k, None, None)
        kw = dict(threshold=0.6, stride=4, block_size=16, backend="torch")
        m16 = xv.estimate_block_mask(q, k, **kw)
        m8 = xv.estimate_block_mask(q, k, precision="fp8", **kw)
        row = obs.rows[-1]
        assert row["pairs"] == m16.numel() and row["differ"] == int((m16 != m8).sum())
        assert row["density_fp8"] == float(m8.float().mean())
        true = true_block_mass(q, k, block_size=16)
        assert row["kept_mass_bf16"] == float((true * m16).sum()) / float(true.sum())
    a, b = obs.rows
    s = bench.pooled(obs.rows)
    assert s["calls"] == 2
    assert s["differ_share"] == (a["differ"] + b["differ"]) / (a["pairs"] + b["pairs"])
    want = (a["density_bf16"] * a["pairs"] + b["density_bf16"] * b["pairs"]) / (
        a["pairs"] + b["pairs"]
    )
    assert abs(s["density_bf16"] - want) < 1e-12
