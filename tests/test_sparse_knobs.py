"""The quality knobs in a pipeline (tiny HunyuanVideo, CPU): the Hilbert and cluster token orders
are exact with all blocks kept (the permutations are undone, text stays put), the cluster
order survives mask reuse, the per-call density budget caps every sparse call, and per-head
thresholds from a calibration file reach the op (listed layers only)."""

from __future__ import annotations

import json

import pytest
import torch

import xattn_video as xv
from xattn_video import attention as attention_mod
from xattn_video import sparse_path
from xattn_video import thresholds as th
from xattn_video.calibrate import calibrate_pipeline

from ._spy import record_kwarg
from ._tiny_models import hv_inputs, tiny_hv_pipeline
from ._tiny_models import tiny_cfg as cfg_
from ._tolerance import assert_fa_close

pytestmark = pytest.mark.usefixtures("one_thread")

CFG_KW = dict(true_cfg=True, lengths=[5, 8], neg_lengths=[3, 6])  # batch 2, unequal lengths


def run(pipe, **kw) -> torch.Tensor:
    return pipe(**hv_inputs(**kw)).frames


@pytest.mark.parametrize(
    "kw",
    [
        dict(token_order="hilbert"),
        dict(token_order="cluster"),
        dict(token_order="cluster", mask_refresh=2),
        dict(token_order="tile", max_density=1.0),
    ],
    ids=["hilbert", "cluster", "cluster-reuse", "budget1"],
)
def test_orders_with_all_blocks_match_stock_within_tolerance(kw):
    pipe = tiny_hv_pipeline()
    stock32 = run(pipe, **CFG_KW)
    pipe.transformer.double()
    ref64 = run(pipe, **CFG_KW)
    pipe.transformer.float()
    with xv.apply_xattention(pipe, cfg_(threshold=1.0, warmup_steps=0, **kw)) as handle:
        ours = run(pipe, **CFG_KW)
        assert handle.stats.summary()["sparse_density"] == 1.0
    assert_fa_close(ours, ref64, stock32, what="latents")


def test_cluster_orders_are_per_head_permutations_reused_with_the_mask(monkeypatch):
    pipe = tiny_hv_pipeline()
    made = []
    orig = sparse_path.cluster_orders

    def spy(state, q, k, n_video):
        perms = orig(state, q, k, n_video)
        made.append(perms)
        return perms

    monkeypatch.setattr(sparse_path, "cluster_orders", spy)
    cfg = cfg_(threshold=0.6, warmup_steps=0, token_order="cluster", mask_refresh=2)
    with xv.apply_xattention(pipe, cfg) as handle:
        run(pipe, steps=4)
        summ = handle.stats.summary()
    # 3 layers x 4 steps; with refresh 2 the orders are computed every other step only
    assert summ["num_sparse_calls"] == 12 and len(made) == 6
    perm_q, perm_k = made[0]
    B, H, N = perm_q.shape
    assert torch.equal(torch.sort(perm_k, dim=-1).values, torch.arange(N).expand(B, H, N))
    assert torch.equal(perm_q[..., 192:], torch.arange(192, N).expand(B, H, N - 192))  # text


def test_budget_caps_every_sparse_call():
    pipe = tiny_hv_pipeline()
    cfg = cfg_(threshold=0.99, warmup_steps=0, token_order="tile", tile_size=(1, 4, 4),
               max_density=0.4)  # fmt: skip
    with xv.apply_xattention(pipe, cfg) as handle:
        run(pipe, steps=2, lengths=[5, 8])
        records = handle.stats.to_dict()["records"]
    dens = [r["density"] for r in records if r["sparse"]]
    assert len(dens) == 6 and max(dens) <= 0.4 and min(dens) > 0.35
    with xv.apply_xattention(pipe, cfg.replace(max_density=1.0)) as handle:
        run(pipe, steps=2, lengths=[5, 8])
        assert handle.stats.summary()["sparse_density"] > 0.6  # tau alone keeps more


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A thresholds file calibrated on the tiny pipeline (random weights, 2 steps)."""
    pipe = tiny_hv_pipeline()
    cfg = cfg_(threshold=0.9, warmup_steps=0, token_order="tile", tile_size=(1, 4, 4))
    data = calibrate_pipeline(pipe, cfg, [hv_inputs(steps=2, lengths=[5])], model="tiny-test",
                              target_mass=0.9, meta={"prompts": ["embeds seed 1"]})  # fmt: skip
    path = tmp_path_factory.mktemp("thr") / "thresholds.json"
    th.save_thresholds(path, data)
    return path, cfg


def test_calibration_file_round_trips_and_loads_into_the_config(calibrated):
    path, cfg = calibrated
    data = th.load_thresholds(path)
    assert data["format"] == th.FORMAT and data["model"] == "tiny-test"
    assert [layer["layer"] for layer in data["layers"]] == [0, 1, 2]
    assert all(len(layer["thresholds"]) == 2 for layer in data["layers"])  # 2 heads
    assert data["calls_measured"] == 3 * 2  # 3 layers x 2 steps
    assert data["steps_measured"] == [0, 1] and data["prompts"] == ["embeds seed 1"]
    # every head's calibrated threshold keeps >= 0.9 of the true mass, one step less does not
    for layer in data["layers"]:
        for h, t in enumerate(layer["thresholds"]):
            g = data["taus"].index(t)
            assert layer["mass"][h][g] >= 0.9 and (g == 0 or layer["mass"][h][g - 1] < 0.9)
    loaded = cfg.replace(thresholds_file=str(path))
    assert xv.XAttentionConfig.from_dict(json.loads(json.dumps(loaded.to_dict()))) == loaded
    with pytest.raises(ValueError, match="stride"):
        loaded.replace(stride=8)
    with pytest.raises(ValueError, match="token_order"):
        loaded.replace(token_order="raster")
    # ratio mode uses no threshold: the file was loaded, recorded in run.json and never used
    with pytest.raises(ValueError, match="selection='ratio' does not use"):
        loaded.replace(selection="ratio")


def test_per_head_thresholds_reach_the_op(calibrated, monkeypatch, tmp_path):
    path, cfg = calibrated
    data = th.load_thresholds(path)
    data["layers"] = data["layers"][:1]  # only layer 0 listed: the others use cfg.threshold
    data["layers"][0]["thresholds"] = [0.55, 0.85]
    one = tmp_path / "one.json"
    th.save_thresholds(one, data)
    seen = record_kwarg(monkeypatch, attention_mod, "xattention", "threshold", None)
    pipe = tiny_hv_pipeline()
    with xv.apply_xattention(pipe, cfg.replace(thresholds_file=str(one))):
        run(pipe, steps=1)
    assert len(seen) == 3
    assert torch.equal(seen[0], torch.tensor([0.55, 0.85], dtype=torch.float64))
    assert seen[1] == seen[2] == cfg.threshold
