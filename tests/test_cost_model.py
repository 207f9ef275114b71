"""The cost model's arithmetic, its disk cache and where it applies (CPU; the measuring half runs
in the GPU tests)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from xattn_video import cost_model as cm

# A made-up calibration (ms): dense grows 4x per doubling; the sparse path has a fixed 0.2 ms
# overhead and its kernel is 1.1x dense at full density, 0.05x at one block per row.
CAL = cm.Calibration(
    n=[1024, 2048, 4096],
    dense=[0.1, 0.4, 1.6],
    overhead=[0.2, 0.2, 0.2],
    attn_min=[0.005, 0.02, 0.08],
    attn_full=[0.11, 0.44, 1.76],
    gather=[0.01, 0.02, 0.04],
    dense_padded=[0.14, 0.58, 2.3],
    cluster=[0.1, 0.4, 1.6],  # the cluster order's k-means: as long as dense attention
)
# CAL with CUDA-graph times: the same kernels, a fixed overhead of 0.02 ms instead of 0.2
GRAPH_CAL = cm.Calibration(
    **{f: list(getattr(CAL, f)) for f in cm.Calibration.__dataclass_fields__ if "graph" not in f},
    **{f: [0.02] * 3 if f.startswith("overhead") else list(getattr(CAL, f.removesuffix("_graph")))
       for f in cm.GRAPH_FIELDS},
)  # fmt: skip


def test_a_padded_call_is_predicted_against_masked_sdpa():
    """A call with key padding sent dense runs SDPA with a mask (one H200, 119k tokens: 1.44x the
    unmasked time); predicting it against unmasked SDPA sent calls dense that were faster sparse."""
    padded = cm.Calibration(**{**CAL.__dict__, "dense_padded": [0.15, 0.6, 2.4]})
    plain = cm.predict(padded, 4096, 0.75, block_size=128)
    masked = cm.predict(padded, 4096, 0.75, block_size=128, padded=True)
    assert plain.dense_ms == pytest.approx(1.6) and masked.dense_ms == pytest.approx(2.4)
    assert plain.sparse_ms == pytest.approx(masked.sparse_ms)  # the sparse path: same cost
    assert not plain.sparse_wins and masked.sparse_wins
    with pytest.raises(ValueError, match="no dense_padded times; calibrate again"):
        cm.predict(cm.Calibration(**{**CAL.__dict__, "dense_padded": []}), 4096, 0.75,
                   block_size=128, padded=True)  # fmt: skip


def test_dense_call_is_sdpa_over_the_valid_keys():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 16, generator=g) for _ in range(3))
    kv_len = torch.tensor([40, 29])
    got = cm.dense_call(q, k, v, kv_len)
    for b, n in enumerate(kv_len.tolist()):
        want = torch.nn.functional.scaled_dot_product_attention(
            q[b : b + 1], k[b : b + 1, :, :n], v[b : b + 1, :, :n]
        )
        torch.testing.assert_close(got[b : b + 1], want)
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(cm.dense_call(q, k, v, None), plain, rtol=0, atol=0)


def test_predict_is_linear_in_density_between_min_and_full():
    p0 = cm.predict(CAL, 4096, 1 / 32, block_size=128)
    p1 = cm.predict(CAL, 4096, 1.0, block_size=128)
    ph = cm.predict(CAL, 4096, (1 / 32 + 1.0) / 2, block_size=128)
    assert p0.dense_ms == pytest.approx(1.6)
    assert p0.sparse_ms == pytest.approx(0.2 + 0.08)
    # mask_refresh=4: the estimate's overhead is paid once in four calls (was not pinned)
    p4 = cm.predict(CAL, 4096, 1 / 32, block_size=128, refresh=4)
    assert p4.sparse_ms == pytest.approx(0.2 / 4 + 0.08)
    assert p1.sparse_ms == pytest.approx(0.2 + 1.76)
    assert ph.sparse_ms == pytest.approx(0.2 + (0.08 + 1.76) / 2)
    assert p0.sparse_wins and not p1.sparse_wins


def test_the_cluster_orders_kmeans_counts_once_per_estimate():
    """The cluster order's k-means (``cal.cluster``, relative to dense) runs with each estimate,
    so it counts 1/refresh like the estimate's overhead; eager times in graph mode too."""
    base = cm.predict(CAL, 4096, 1 / 32, block_size=128, gathers=4)
    for refresh in (1, 2):
        for graph in (False, True):
            cal = GRAPH_CAL if graph else CAL
            plain = cm.predict(cal, 4096, 1 / 32, block_size=128, gathers=4, refresh=refresh,
                               graph=graph)  # fmt: skip
            kmeans = cm.predict(cal, 4096, 1 / 32, block_size=128, gathers=4, refresh=refresh,
                                graph=graph, clusters=True)  # fmt: skip
            assert kmeans.sparse_ms == pytest.approx(plain.sparse_ms + 1.6 / refresh)
    assert base.sparse_wins and not cm.predict(CAL, 4096, 1 / 32, block_size=128, gathers=4,
                                               clusters=True).sparse_wins  # fmt: skip
    no_kmeans = cm.Calibration(**{**CAL.__dict__, "cluster": []})
    with pytest.raises(ValueError, match="no cluster times; calibrate again"):
        cm.predict(no_kmeans, 4096, 0.5, block_size=128, clusters=True)


def test_small_inputs_run_dense_even_when_nearly_empty():
    # at 1024 tokens the fixed overhead alone is twice the dense time
    assert not cm.predict(CAL, 1024, 1 / 8, block_size=128).sparse_wins
    # reusing the mask for 4 calls amortises it (0.05 + 0.005..) but the kernel must still win
    assert cm.predict(CAL, 4096, 0.5, block_size=128, refresh=4).sparse_wins


def test_interpolation_in_log_n_and_clamping():
    mid = cm.predict(CAL, 2896, 1.0, block_size=128, dense_ms=1.0)  # ~ 2^11.5
    lo = cm.predict(CAL, 2048, 1.0, block_size=128, dense_ms=1.0)
    hi = cm.predict(CAL, 4096, 1.0, block_size=128, dense_ms=1.0)
    assert lo.sparse_ms > mid.sparse_ms > hi.sparse_ms
    far = cm.predict(CAL, 1 << 20, 1.0, block_size=128, dense_ms=1.0)
    assert far.sparse_ms == pytest.approx(cm.predict(CAL, 4096, 1.0, block_size=128,
                                                     dense_ms=1.0).sparse_ms, rel=1e-3)  # fmt: skip
    # tile order: four gathers of the permuted tensors are charged
    g = cm.predict(CAL, 4096, 0.5, block_size=128, gathers=4, dense_ms=1.6)
    assert g.sparse_ms == pytest.approx(
        cm.predict(CAL, 4096, 0.5, block_size=128, dense_ms=1.6).sparse_ms + 4 * 0.04
    )


def test_disk_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("XATTN_VIDEO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cm, "_MEMO", {})
    key = cm.CostKey("Some GPU", "2.x", "3.x", "bfloat16", 4, 64, 128, 8)
    assert cm.lookup(key) is None
    cm.store(key, CAL)
    assert cm.cache_path().parent == tmp_path and cm.cache_path().exists()
    monkeypatch.setattr(cm, "_MEMO", {})  # a new process
    assert cm.lookup(key) == CAL


def test_a_calibration_of_other_kernel_code_is_not_reused(tmp_path, monkeypatch):
    """The key held GPU, versions and call parameters only: a calibration made before a kernel
    change (estimates 12-23% faster since) was reused for good, deciding from the old times."""
    monkeypatch.setenv("XATTN_VIDEO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cm, "_MEMO", {})
    key = cm.CostKey("Some GPU", "2.x", "3.x", "bfloat16", 4, 64, 128, 8)
    assert key.code == cm.code_fingerprint() and len(key.code) == 12
    cm.store(key, CAL)
    # the sources hashed: the kernels, the op and the timing method; edit one byte of a copy
    pkg = tmp_path / "pkg"
    for rel in ("kernels/fp8.py", "kernels/tuning.py", "attention.py", "library.py", "layout.py"):
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_bytes((cm.Path(cm.__file__).parent / rel).read_bytes())
    (pkg / "cost_model.py").write_bytes(cm.Path(cm.__file__).read_bytes())
    (pkg / "stats.py").write_text("not timed\n")
    monkeypatch.setattr(cm, "__file__", str(pkg / "cost_model.py"))

    def fingerprint() -> str:
        cm.code_fingerprint.cache_clear()
        return cm.code_fingerprint()

    here = fingerprint()
    (pkg / "stats.py").write_text("changed, still not timed\n")
    assert fingerprint() == here
    (pkg / "layout.py").write_bytes((pkg / "layout.py").read_bytes() + b"#")  # the k-means
    assert fingerprint() != here
    (pkg / "kernels/tuning.py").write_bytes((pkg / "kernels/tuning.py").read_bytes() + b"#")
    changed = fingerprint()
    assert changed != here
    monkeypatch.setattr(cm, "_MEMO", {})  # a new process after the upgrade
    upgraded = cm.CostKey("Some GPU", "2.x", "3.x", "bfloat16", 4, 64, 128, 8)
    assert upgraded.code == changed and cm.lookup(upgraded) is None
    cm.code_fingerprint.cache_clear()


def test_calibrating_leaves_the_global_rng_alone(monkeypatch):
    """The calibration's token permutation drew from the device's global generator, mid
    denoising loop: a stochastic scheduler seeded with ``torch.manual_seed`` then made another
    video in the process that calibrated than in one that found the cache. Timing and the
    kernels are stubbed so the measuring loop runs on the CPU."""
    monkeypatch.setattr(cm, "store", lambda key, cal: None)
    monkeypatch.setattr(cm, "_time_ms", lambda fn, reps=5: (fn(), 1.0)[1])
    monkeypatch.setattr(cm, "_graph_ms", lambda fn, reps=5: None)
    for name in ("estimate_block_mask", "block_csr", "sparse_attention", "dense_call"):
        monkeypatch.setattr(cm, name, lambda *a, **k: None)
    monkeypatch.setattr(cm, "mask_to_indices", lambda m: (None, None))
    monkeypatch.setattr(cm, "N_GRID", (1024, 2048))
    monkeypatch.setattr(cm, "_MEMO", {})
    key = cm.CostKey("Fake", "t", "tr", "float32", 2, 16, 128, 8)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    cal = cm._calibrate(key, "cpu")
    assert cal.n == [1024, 2048]
    assert torch.equal(torch.get_rng_state(), before)


def test_an_empty_cache_dir_variable_counts_as_unset(tmp_path, monkeypatch):
    """XATTN_VIDEO_CACHE_DIR="" put the cache in the working directory (a relative path: one
    cache, and one GPU calibration, per directory); "~" was not expanded."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XATTN_VIDEO_CACHE_DIR", "")
    assert cm.cache_path().parent == tmp_path / "xdg" / "xattn_video"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XATTN_VIDEO_CACHE_DIR", "~/costs")
    assert cm.cache_path().parent == tmp_path / "home" / "costs"
    other = cm.CostKey("Some GPU", "2.x", "3.x", "bfloat16", 4, 128, 128, 8)
    assert cm.lookup(other) is None


@pytest.mark.parametrize(
    "text",
    [
        "[]",  # valid JSON, not an object: lookup raised AttributeError, store TypeError
        "null",
        '{"KEY": {"n": [1024]}}',  # fields missing: Calibration(**raw) raised TypeError
        '{"KEY": "not a dict"}',
        '{"KEY": {**CAL, "newer_field": [1.0, 2.0, 3.0]}}',  # a newer schema, same version
        '{"KEY": {**CAL, "dense": [0.1, 0.4]}}',  # a list shorter than n: IndexError later
        '{"KEY": {**CAL, "n": [], "dense": [], "overhead": [], "attn_min": [], '
        '"attn_full": [], "gather": []}}',  # empty: IndexError in predict
        '{"KEY": {**CAL, "dense": [0.1, "0.4", 1.6]}}',
        '{"KEY": {**CAL, "dense": [0.1, 0.0, 1.6]}}',  # a zero divides
        '{"KEY": {**CAL, "dense": [0.1, -0.4, 1.6]}}',
        '{"KEY": {**CAL, "dense": [0.1, NaN, 1.6]}}',  # Python's json reads NaN and Infinity
        '{"KEY": {**CAL, "dense": [0.1, Infinity, 1.6]}}',
        '{"KEY": {**CAL, "dense": [0.1, true, 1.6]}}',  # a bool is an int to isinstance
        '{"KEY": {**CAL, "dense_graph": [0.1]}}',  # graph lists: empty or one per point
        # graph times at every point for some calls only: zip(strict=True) failed in predict
        '{"KEY": {**CAL, "dense_graph": [0.1, 0.4, 1.6]}}',
        # dense_padded empty: every padded call raised "calibrate again", never recalibrated
        '{"KEY": {**CAL, "dense_padded": []}}',
        '{"KEY": {**CAL, "n": [4096, 2048, 1024]}}',  # unsorted grid
    ],
)
def test_a_malformed_cache_is_a_miss_not_a_crash(tmp_path, monkeypatch, caplog, text):
    """A cache file that is valid JSON of the wrong shape escaped AutoDense's first decision."""
    import json

    monkeypatch.setenv("XATTN_VIDEO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cm, "_MEMO", {})
    key = cm.CostKey("Some GPU", "2.x", "3.x", "bfloat16", 4, 64, 128, 8)
    cal = json.dumps(CAL.__dict__)[1:-1]
    text = text.replace("KEY", key.id()).replace("**CAL", cal)
    # a later field overrides an earlier one of the same name, as in a dict display
    cm.cache_path().parent.mkdir(parents=True, exist_ok=True)
    cm.cache_path().write_text(text)
    with caplog.at_level("WARNING", logger=cm.logger.name):
        assert cm.lookup(key) is None
    assert "ignoring" in caplog.text
    cm.store(key, CAL)  # the measurement replaces it
    monkeypatch.setattr(cm, "_MEMO", {})
    assert cm.lookup(key) == CAL


def test_applies_only_to_triton_on_cuda():
    assert not cm.applies("torch", torch.device("cpu"))
    assert not cm.applies("triton", torch.device("cpu"))  # the interpreter
    assert not cm.applies("torch", torch.device("cuda"))
    assert cm.applies("triton", torch.device("cuda"))


def test_graph_times_decide_when_asked_and_measured():
    """Under CUDA graphs the fixed overhead is device time only: the same call that loses on
    eager times (launch-bound overhead) wins on graph times; without graph times the eager ones
    are used."""
    eager = cm.predict(GRAPH_CAL, 2048, 0.5, block_size=128)
    graph = cm.predict(GRAPH_CAL, 2048, 0.5, block_size=128, graph=True)
    assert not eager.sparse_wins and graph.sparse_wins
    assert graph.sparse_ms == pytest.approx(0.02 + 0.02 + (0.5 - 1 / 16) / (1 - 1 / 16) * 0.42)
    assert cm.predict(CAL, 2048, 0.5, block_size=128, graph=True) == eager  # none measured


@pytest.mark.parametrize(
    "kwargs, graphs",
    [({}, False), ({"mode": "default"}, False), ({"mode": "reduce-overhead"}, True),
     ({"mode": "max-autotune"}, True), ({"options": {"triton.cudagraphs": True}}, True)],
)  # fmt: skip
def test_compile_below_hook_picks_the_timing(kwargs, graphs, monkeypatch):
    import xattn_video as xv
    from xattn_video.hook import compile_below_hook, step_hook

    from ._tiny_models import tiny_wan_transformer

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # only the bookkeeping here
    model = tiny_wan_transformer()
    xv.apply_xattention(model, xv.XAttentionConfig())
    auto = step_hook(model).controller.auto_dense
    auto.decisions[0] = True
    compile_below_hook(model, **kwargs)
    assert auto.graph_timing is graphs
    assert auto.decisions == ({} if graphs else {0: True})  # re-decided on the new timing


def test_the_key_holds_the_precisions(monkeypatch):
    """fp8 attention or an fp8 estimate is measured on its own: its times go under another key
    (and another cache file version than the bf16-only keys had)."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    major = [8]
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(major=major[0]))  # fmt: skip
    args = (torch.device("cuda", 0), torch.bfloat16, 48, 128, 128, 8)
    bf16 = cm.cost_key(*args)
    fp8 = cm.cost_key(*args, precision="fp8", estimate_precision="bf16")
    both = cm.cost_key(*args, precision="fp8", estimate_precision="fp8")
    mixed = cm.cost_key(*args, estimate_precision="fp8")
    assert (bf16.precision, bf16.estimate_precision) == ("bf16", "bf16")
    assert (fp8.precision, fp8.estimate_precision) == ("fp8", "bf16")
    assert (both.precision, both.estimate_precision) == ("fp8", "fp8")
    assert (mixed.precision, mixed.estimate_precision) == ("bf16", "fp8")
    assert len({bf16.id(), fp8.id(), both.id(), mixed.id()}) == 4
    # "auto" (the default) is the attention's precision off Hopper, under the same key as when
    # explicit, and on Hopper the fp8 estimate for bf16 attention too
    assert cm.cost_key(*args, precision="fp8") == both
    assert cm.cost_key(*args, estimate_precision="auto") == bf16
    major[0] = 9
    assert cm.cost_key(*args) == mixed
    assert cm.cost_key(*args, precision="fp8") == both
    assert cm.cache_path().name == "cost_model_v5.json"
    with pytest.raises(ValueError, match="estimate_precision must be one of"):
        cm.cost_key(*args, estimate_precision="fp16")


@pytest.mark.parametrize("precision, estimate_precision, resolved, major", [
    ("bf16", "bf16", "bf16", 9), ("fp8", "fp8", "fp8", 9), ("bf16", "fp8", "fp8", 9),
    ("fp8", "bf16", "bf16", 9), ("bf16", "auto", "bf16", 8), ("bf16", "auto", "fp8", 9),
    ("fp8", "auto", "fp8", 9),
])  # fmt: skip
def test_auto_dense_asks_for_the_configs_precisions(
    precision, estimate_precision, resolved, major, monkeypatch
):
    """The decision for a config with fp8 attention / estimate uses that calibration, not the
    bf16 one (which over-states the fp8 sparse path's cost); "auto" as the op resolves it on
    the GPU (sm``major``)."""
    import xattn_video as xv
    from xattn_video.auto_dense import AutoDense

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(major=major))  # fmt: skip
    keys = []
    monkeypatch.setattr(cm, "lookup", lambda key: keys.append(key) or CAL)
    cfg = xv.XAttentionConfig(precision=precision, estimate_precision=estimate_precision)
    auto = AutoDense(cfg, SimpleNamespace(feedback={}))
    auto._shapes[3] = ("bfloat16", 24, 128, 4096, 0, False)
    auto._decide(3)
    assert [(k.precision, k.estimate_precision, k.heads, k.head_dim) for k in keys] == [
        (precision, resolved, 24, 128)
    ]
    assert 3 in auto.decisions


def _store_keys(first: int, count: int) -> None:
    for heads in range(first, first + count):
        cm.store(cm.CostKey("Some GPU", "2.x", "3.x", "bfloat16", heads, 64, 128, 8), CAL)


def test_processes_storing_at_once_lose_no_entry(tmp_path, monkeypatch):
    """Each store reads the file, adds its entry and replaces the file: two processes doing that
    at once kept only one of their entries (a lost update). Stores now hold a lock file."""
    import multiprocessing

    monkeypatch.setenv("XATTN_VIDEO_CACHE_DIR", str(tmp_path))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_store_keys, args=(100 * i, 25)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    monkeypatch.setattr(cm, "_MEMO", {})
    want = {100 * i + j for i in range(4) for j in range(25)}
    for heads in want:
        assert cm.lookup(cm.CostKey("Some GPU", "2.x", "3.x", "bfloat16", heads, 64, 128, 8)) == CAL


def test_a_file_system_without_locks_still_gets_the_entry(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setenv("XATTN_VIDEO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fcntl, "flock", no_locks)
    key = cm.CostKey("Some GPU", "2.x", "3.x", "bfloat16", 4, 64, 128, 8)
    cm.store(key, CAL)
    monkeypatch.setattr(cm, "_MEMO", {})
    assert cm.lookup(key) == CAL


@pytest.mark.parametrize("cfg_kw, shape, graph, want", [
    # one key block per row without a measured density: 1 / ceil(n / block)
    ({}, (2, 3, 1800, 8), False, ((1800, 1 / 15, 0, False, False), 6, False)),
    ({}, (1, 2, 100, 8), False, ((100, 1.0, 0, False, False), 2, True)),
    ({"selection": "ratio", "ratio": 0.9}, (1, 2, 2000, 8), False,
     ((2000, 0.9, 0, False, False), 2, True)),
    ({"token_order": "tile", "tile_size": (1, 4, 4)}, (1, 2, 1800, 8), False,
     ((1800, 1 / 15, 4, False, False), 2, True)),  # a tile order: 4 more passes over q, k, v
    ({}, (1, 2, 1024, 8), False, ((1024, 0.125, 0, False, False), 2, True)),
    # graph times: sparse wins
    ({}, (1, 2, 1024, 8), True, ((1024, 0.125, 0, True, False), 2, False)),
    ({"token_order": "tile"}, (1, 2, 4096, 8), False, ((4096, 1 / 32, 4, False, False), 2, False)),
    # the cluster order's k-means was not charged: priced as tile, it ran sparse and slower
    ({"token_order": "cluster"}, (1, 2, 4096, 8), False, ((4096, 1 / 32, 4, False, True), 2, True)),
])  # fmt: skip
def test_auto_dense_gives_the_cost_model_the_calls_inputs(cfg_kw, shape, graph, want, monkeypatch):
    """What a decision asks the cost model: the calibration of B*H heads, the density it expects
    (ratio mode: the ratio), the token order's gathers and k-means, the timing (eager or CUDA
    graph); ``want``: (predict's n, density, gathers, graph, clusters), lookup's heads, the call
    runs dense."""
    import xattn_video as xv
    from xattn_video.auto_dense import AutoDense
    from xattn_video.stats import XAttentionStats

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(cm, "applies", lambda backend, device: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(major=8))  # fmt: skip
    heads, calls = [], []
    monkeypatch.setattr(cm, "lookup", lambda key: heads.append(key.heads) or GRAPH_CAL)
    real_predict = cm.predict

    def predict(cal, n, density, **kw):
        calls.append((n, pytest.approx(density), kw["gathers"], kw["graph"], kw["clusters"]))
        return real_predict(cal, n, density, **kw)

    monkeypatch.setattr(cm, "predict", predict)
    auto = AutoDense(xv.XAttentionConfig(**cfg_kw), XAttentionStats())
    auto.use_graph_timing(graph)
    dense = auto.run_dense(0, torch.zeros(shape), "triton")
    assert (calls, heads, dense) == ([want[0]], [want[1]], want[2])


def test_ratio_selection_assumes_the_max_density_budget():
    """With selection="ratio" the decision assumed ``ratio`` even when ``max_density`` caps
    every call far lower, so a layer that wins sparse went dense for the rest of the run."""
    import xattn_video as xv
    from xattn_video.auto_dense import AutoDense

    cfg = xv.XAttentionConfig(selection="ratio", ratio=0.9, max_density=0.1)
    assert AutoDense(cfg, SimpleNamespace(feedback={})).expected_density(0, 4096) == 0.1
    cfg = xv.XAttentionConfig(selection="ratio", ratio=0.3)
    assert AutoDense(cfg, SimpleNamespace(feedback={})).expected_density(0, 4096) == 0.3
