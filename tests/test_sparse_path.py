"""The model-independent sparse path: mask cache and tile orders (CPU, no model)."""

from __future__ import annotations

import pytest
import torch

from xattn_video.sparse_path import MaskCache, TileOrders


def test_tile_orders_keep_text_at_the_end_and_cache():
    orders = TileOrders((2, 8, 8))
    perm, inv = orders.permutation((5, 6, 10), 300, 310, torch.device("cpu"))
    assert perm.shape == (310,) and torch.equal(perm[300:], torch.arange(300, 310))
    assert torch.equal(perm[inv], torch.arange(310))
    assert orders.permutation((5, 6, 10), 300, 310, torch.device("cpu"))[0] is perm  # cached
    # another text length on the same grid: its own permutation (the cache key had no n_total
    # once, and the second length then got the first's, 8 tokens short)
    longer, inv2 = orders.permutation((5, 6, 10), 300, 318, torch.device("cpu"))
    assert longer.shape == (318,) and torch.equal(longer[:300], perm[:300])
    assert torch.equal(longer[300:], torch.arange(300, 318)) and torch.equal(
        longer[inv2], torch.arange(318)
    )
    with pytest.raises(ValueError, match="token_order='tile'"):
        orders.permutation((5, 6, 10), 299, 310, torch.device("cpu"))
    with pytest.raises(ValueError, match="grid=None"):
        orders.permutation(None, 300, 310, torch.device("cpu"))


def test_mask_cache_serves_steps_that_reuse():
    cache = MaskCache(refresh=3)
    attn = torch.nn.Identity()
    m = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    kv = torch.tensor([30])
    cache.prepare([attn], "cond")
    assert cache.get(attn, m.shape, kv) is None
    cache.put(attn, m, kv)
    assert cache.get(attn, m.shape, kv) is m
    assert cache.get(attn, m.shape, kv, reuse=False) is None  # an estimating step
    assert cache.get(attn, (1, 1, 3, 3), kv) is None  # another shape
    assert cache.get(attn, m.shape, torch.tensor([20])) is None  # other padding
    assert cache.get(attn, m.shape, None) is None  # no padding
    assert cache.get(attn, m.shape, kv) is m  # as often as the controller says
    cache.prepare([attn], "uncond")
    assert cache.get(attn, m.shape, kv) is None  # per branch
    cache.prepare([attn], "cond")
    assert cache.get(attn, m.shape, kv) is m
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0
    one = MaskCache(refresh=1)
    one.prepare([attn], "cond")
    one.put(attn, m, kv)
    assert len(one) == 0  # nothing kept (no memory) when masks are never reused


def test_the_branch_is_chosen_outside_a_compiled_graph():
    """get / put took the branch name and keyed entries by (module id, branch): a compiled
    forward was guarded on the name, so guidance compiled the estimate and reuse variants once
    per branch (5 graphs, and 9 for Wan 2.2's two experts, past dynamo's recompile limit of 8:
    a fullgraph compile failed mid-run). The lookups now take no branch."""
    import inspect

    for method in (MaskCache.get, MaskCache.put, MaskCache.aux):
        assert "branch" not in inspect.signature(method).parameters


def test_mask_cache_owns_masks_a_compiled_graph_stored(monkeypatch):
    """Bug (H200, reduce-overhead + mask_refresh=2): the cache held the estimate graph's output,
    which the next compiled call overwrote ("accessing tensor output of CUDAGraphs that has been
    overwritten"). A mask put while compiling is copied into its own memory by ``own()`` (the
    controller calls it eagerly before every forward); an eager mask is left as it is."""
    cache = MaskCache(refresh=2)
    attn, other = torch.nn.Identity(), torch.nn.Identity()
    m, kv, order = torch.eye(3, dtype=torch.bool)[None, None], torch.tensor([40]), torch.arange(5)
    cache.prepare([attn, other], "cond")
    cache.put(other, m, kv)  # eager
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    cache.put(attn, m, kv, aux=(order, order))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    cache.own()
    got = cache.get(attn, m.shape, kv)
    assert torch.equal(got, m) and got.data_ptr() != m.data_ptr()
    assert all(a.data_ptr() != order.data_ptr() and torch.equal(a, order)
               for a in cache.aux(attn))  # fmt: skip
    assert cache.get(other, m.shape, kv) is m
    cache.own()  # once: owned masks are not copied again
    assert cache.get(attn, m.shape, kv) is got


def test_a_file_calibrated_again_with_other_settings_during_a_run_is_refused(tmp_path):
    """The file is read again when it changes, but only the config's construction checked it:
    a file calibrated again in place with stride 8 was used silently by a stride-4 config."""
    import dataclasses

    from xattn_video import sparse_path
    from xattn_video import thresholds as th
    from xattn_video.config import XAttentionConfig

    config = {k: v for k, v in dataclasses.asdict(XAttentionConfig()).items()
              if k in th.MATCH_FIELDS}  # fmt: skip
    path = tmp_path / "thr.json"

    def write(stride: int, tau: float) -> None:
        th.save_thresholds(path, {
            "format": th.FORMAT, "model": "tiny", "config": {**config, "stride": stride},
            "taus": [0.5, 1.0], "layers": [{"layer": 0, "thresholds": [tau, tau],
            "mass": [[0.5, 1.0]] * 2, "density": [[0.5, 1.0]] * 2}],
        })  # fmt: skip

    write(config["stride"], 0.5)
    cfg = XAttentionConfig(thresholds_file=str(path))
    assert sparse_path.file_thresholds(cfg) == {0: (0.5, 0.5)}
    write(config["stride"], 0.25)  # same settings: taken
    assert sparse_path.file_thresholds(cfg) == {0: (0.25, 0.25)}
    write(2 * config["stride"], 0.125)
    with pytest.raises(ValueError, match=r"calibrated with stride=16, the config has stride=8"):
        sparse_path.file_thresholds(cfg)


def test_layer_thresholds_follow_a_rewritten_file(tmp_path, monkeypatch):
    """The cache was keyed by id() of the loaded dict; once the file cache (16 versions) freed an
    old version, a new one could get its id and the old thresholds came back (40 of 60
    rewrites here). ``id`` always 0 below stands for that reuse."""
    import dataclasses
    import os

    from xattn_video import sparse_path
    from xattn_video import thresholds as th
    from xattn_video.config import XAttentionConfig

    monkeypatch.setattr(sparse_path, "id", lambda obj: 0, raising=False)
    config = {k: v for k, v in dataclasses.asdict(XAttentionConfig()).items()
              if k in th.MATCH_FIELDS}  # fmt: skip
    path = tmp_path / "thr.json"
    cfg = None
    for i in range(40):
        tau = round(0.30 + 0.01 * i, 2)
        th.save_thresholds(path, {
            "format": th.FORMAT, "model": "tiny", "config": config, "taus": [0.5, 1.0],
            "layers": [{"layer": 0, "thresholds": [tau, tau], "mass": [[0.5, 1.0]] * 2,
                        "density": [[0.5, 1.0]] * 2}],
        })  # fmt: skip
        os.utime(path, ns=(10**18 + i, 10**18 + i))  # a distinct modification time
        cfg = cfg or XAttentionConfig(thresholds_file=str(path))
        got = sparse_path.layer_threshold(cfg, 0, 2, torch.device("cpu"))
        assert got.tolist() == [tau, tau]
        assert sparse_path.layer_threshold(cfg, 1, 2, torch.device("cpu")) == cfg.threshold
