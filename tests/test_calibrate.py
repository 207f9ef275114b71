"""Per-(layer, head) threshold calibration: the true block mass and the tau -> (mass kept,
blocks kept) curves against first principles and the op's own selection, the choice of
thresholds for a mass or a density target, and the thresholds file (validation, round trip)."""

import json
import os

import pytest
import torch

import xattn_video as xv
from xattn_video.calibrate import (
    Calibrator,
    calibrate_pipeline,
    calibration_config,
    mass_curves,
    true_block_mass,
)
from xattn_video.kernels.select import select_blocks
from xattn_video.thresholds import (
    FORMAT,
    check_matches,
    choose_thresholds,
    expected_density,
    file_family,
    load_thresholds,
    retarget,
    save_thresholds,
    validate,
)


def _qk(B, H, N, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, D, generator=g) * 1.5
    k = torch.randn(B, H, N, D, generator=g) * 1.5
    return q, k


def test_true_block_mass_matches_the_softmax_summed_per_block():
    B, H, N, D, bs = 2, 2, 45, 8, 16
    q, k = _qk(B, H, N, D)
    kv_len = torch.tensor([45, 30])
    got = true_block_mass(q, k, block_size=bs, kv_len=kv_len, chunk_rows=16)
    nb = 3
    want = torch.zeros(B, H, nb, nb, dtype=torch.float64)
    for b in range(B):
        logits = (q[b].double() @ k[b].double().transpose(-1, -2)) * D**-0.5
        logits[..., int(kv_len[b]) :] = float("-inf")
        p = torch.softmax(logits, dim=-1)  # (H, N, N)
        for i in range(nb):
            for j in range(nb):
                want[b, :, i, j] = p[:, i * bs : (i + 1) * bs, j * bs : (j + 1) * bs].sum((-1, -2))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert float(got[1, :, :, 2].sum()) == pytest.approx(0.0, abs=1e-12)  # padding: no mass


def test_the_mass_chunks_fit_a_memory_budget(monkeypatch):
    """2048 query rows per chunk whatever the size: at HunyuanVideo 720p (24 heads x 119,056
    keys) 22 GiB of fp32 logits each, ~67 GiB with the softmax and its padding, past an H100
    with the model loaded. The default now holds the logits at 4 GiB, in whole blocks."""
    from xattn_video import calibrate

    assert calibrate.mass_chunk_rows(24, 119056, 128) == 256  # 2.7 GiB of logits
    assert 24 * 119056 * 256 * 4 <= calibrate.MASS_CHUNK_BYTES
    assert calibrate.mass_chunk_rows(2, 64, 16) == 8388608  # small calls: one chunk
    assert calibrate.mass_chunk_rows(10**9, 10**9, 16) == 16  # at least one block
    q, k = _qk(2, 2, 45, 8)
    kv_len = torch.tensor([45, 30])
    want = true_block_mass(q, k, block_size=16, kv_len=kv_len, chunk_rows=10_000)
    monkeypatch.setattr(calibrate, "MASS_CHUNK_BYTES", 4 * 4 * 45 * 16)  # 16 rows a chunk
    assert calibrate.mass_chunk_rows(4, 45, 16) == 16
    torch.testing.assert_close(true_block_mass(q, k, block_size=16, kv_len=kv_len), want)


@pytest.mark.parametrize("dense_from", [None, 40])
def test_mass_curves_match_the_ops_selection_at_every_tau(dense_from):
    B, H, nb, bs = 2, 3, 6, 8
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(B, H, nb, nb, generator=g) ** 3
    true = torch.rand(B, H, nb, nb, generator=g, dtype=torch.float64) ** 2
    kv_len = torch.tensor([48, 37])
    taus = [0.3, 0.5, 0.77, 0.9, 0.99, 1.0]
    cur = mass_curves(scores, true, taus, block_size=bs, kv_len=kv_len, dense_from=dense_from)
    valid = (torch.arange(nb) * bs)[None, :] < kv_len[:, None]
    forced = torch.zeros(B, nb, dtype=torch.bool)
    if dense_from is not None:
        forced = (torch.arange(nb) + 1) * bs > dense_from
        forced = forced[None, :].expand(B, nb)
    t = true.masked_fill(~valid[:, None, None, :], 0.0)
    counted = ~forced[:, None, :].expand(B, H, nb)  # rows that are not forced
    # the density counts the forced (dense) rows too, with every valid block, as the run does
    for g_i, tau in enumerate(taus):
        mask = select_blocks(scores, block_size=bs, threshold=tau, kv_len=kv_len,
                             force_rows=forced, force_cols=forced & valid)  # fmt: skip
        share = (t * mask).sum(-1) / t.sum(-1)
        kept = torch.where(counted, share, 0.0).sum(dim=(0, 2))
        blocks = mask.sum(-1).double().sum(dim=(0, 2))
        torch.testing.assert_close(cur["kept"][:, g_i], kept)
        torch.testing.assert_close(cur["blocks"][:, g_i], blocks)
    assert cur["rows"].tolist() == [float(counted[:, 0].sum())] * H
    assert cur["pairs"].tolist() == [float(nb * valid.sum())] * H
    # more tau never keeps less
    assert bool((cur["kept"].diff(dim=-1) >= -1e-12).all())


def _layers():
    taus = [0.5, 0.8, 0.9, 1.0]
    layers = [
        {"layer": 0, "mass": [[0.80, 0.90, 0.95, 1.0], [0.50, 0.70, 0.85, 1.0]],
         "density": [[0.10, 0.20, 0.30, 1.0], [0.30, 0.50, 0.70, 1.0]]},
        {"layer": 3, "mass": [[0.96, 0.98, 0.99, 1.0], [0.60, 0.93, 0.97, 1.0]],
         "density": [[0.05, 0.08, 0.12, 1.0], [0.20, 0.40, 0.55, 1.0]]},
    ]  # fmt: skip
    return taus, layers


def test_curves_average_every_observed_call():
    """Two calls give the mean of their curves (equal row counts), not the last call's: the
    sums were overwritten once and no test noticed."""
    cfg = xv.XAttentionConfig(stride=4, block_size=16, backend="torch")
    calls = [_qk(1, 2, 64, 16, seed=0), tuple(3.0 * t for t in _qk(1, 2, 64, 16, seed=1))]

    def curve(observed):
        cal = Calibrator(cfg, taus=[0.3, 0.6, 0.9])
        for step, (q, k) in enumerate(observed):
            cal.observe(0, step, q, k, None, None)
        return torch.tensor(cal.curves()[0]["mass"]), torch.tensor(cal.curves()[0]["density"])

    (ma, da), (mb, db), (both_m, both_d) = curve(calls[:1]), curve(calls[1:]), curve(calls)
    assert not torch.allclose(ma, mb, atol=1e-3)
    torch.testing.assert_close(both_m, (ma + mb) / 2, rtol=0, atol=2e-6)
    torch.testing.assert_close(both_d, (da + db) / 2, rtol=0, atol=2e-6)


def test_target_mass_takes_per_head_the_smallest_tau_reaching_it():
    taus, layers = _layers()
    assert choose_thresholds(layers, taus, target_mass=0.9) == [[0.8, 1.0], [0.5, 0.8]]
    assert choose_thresholds(layers, taus, target_mass=0.5) == [[0.5, 0.5], [0.5, 0.5]]


def test_a_head_that_never_reaches_the_target_mass_gets_tau_1():
    """Off a grid without 1.0 such a head got taus[1] (a bool -1 fill read as index 1): the head
    needing the most blocks got nearly the fewest. Its expected density is then 1.0."""
    taus = [0.5, 0.7, 0.9]
    layers = [{"layer": 0, "mass": [[0.6, 0.8, 0.95], [0.3, 0.5, 0.7]],
               "density": [[0.1, 0.2, 0.3], [0.2, 0.3, 0.4]]}]  # fmt: skip
    assert choose_thresholds(layers, taus, target_mass=0.9) == [[0.9, 1.0]]
    data = {"taus": taus, "layers": [dict(layers[0], thresholds=[0.9, 1.0])]}
    assert expected_density(data) == pytest.approx((0.3 + 1.0) / 2)


def test_a_target_density_below_the_reachable_one_warns():
    """It was silently exceeded: every head at its sparsest tau is still denser."""
    taus, layers = _layers()
    with pytest.warns(UserWarning, match=r"target_density 0.05 is below the lowest density .*"
                      r"\(0.16\d+, every head at its sparsest\).*calibrate_pipeline\(taus=.*"
                      r"the command line's grid is default_taus\(\)"):  # fmt: skip
        thr = choose_thresholds(layers, taus, target_density=0.05)
    assert thr == [[0.5, 0.5], [0.5, 0.5]]


def test_the_reachable_density_is_printed_finely_enough_to_show_the_gap():
    """A target of 0.2 against a lowest reachable 0.20026 said "0.2 is below ... (0.200)"."""
    taus = [0.5, 0.9]
    layers = [{"layer": 0, "mass": [[0.9, 0.99]], "density": [[0.20026, 0.5]]}]
    with pytest.warns(UserWarning, match=r"target_density 0.2 is below .* \(0.2003, every"):
        choose_thresholds(layers, taus, target_density=0.2)


def test_calibrated_target_density_is_the_density_the_run_measures(tmp_path):
    """The density curves left out HunyuanVideo's forced (dense) text rows, which the run keeps
    and counts: tiny HunyuanVideo at target 0.5 expected 0.500 and measured 0.539."""
    from ._tiny_models import hv_inputs, tiny_cfg, tiny_hv_pipeline

    pipe = tiny_hv_pipeline(num_single_layers=1)
    cfg = tiny_cfg(warmup_steps=0, mask_refresh=1, auto_dense=False)
    inputs = lambda: [hv_inputs(lengths=[8], steps=3, seed=i) for i in (0, 1)]  # noqa: E731
    data = calibrate_pipeline(pipe, cfg, inputs(), model="tiny", target_density=0.5)
    save_thresholds(tmp_path / "thr.json", data)
    with xv.apply_xattention(pipe, cfg.replace(thresholds_file=str(tmp_path / "thr.json"))) as h:
        for kw in inputs():
            pipe(**kw)
        measured = h.stats.summary()["sparse_density"]
    assert data["expected_density"] <= 0.5
    assert measured == pytest.approx(data["expected_density"], abs=2e-3)


def test_target_density_meets_the_budget_and_keeps_more_mass_than_one_tau():
    taus, layers = _layers()
    thr = choose_thresholds(layers, taus, target_density=0.3)
    flat = [(li, h, taus.index(t)) for li, ts in enumerate(thr) for h, t in enumerate(ts)]
    dens = sum(layers[li]["density"][h][g] for li, h, g in flat) / 4
    mass = sum(layers[li]["mass"][h][g] for li, h, g in flat) / 4
    assert dens <= 0.3
    for g in range(len(taus)):  # every uniform tau within the same budget keeps less mass
        u_dens = sum(layers[li]["density"][h][g] for li in range(2) for h in range(2)) / 4
        u_mass = sum(layers[li]["mass"][h][g] for li in range(2) for h in range(2)) / 4
        if u_dens <= 0.3:
            assert mass >= u_mass


def _file(taus=None, layers=None):
    t, ls = _layers()
    taus, layers = taus or t, layers or ls
    thr = choose_thresholds(layers, taus, target_mass=0.9)
    for layer, th in zip(layers, thr, strict=True):
        layer["thresholds"] = th
    return {
        "format": FORMAT,
        "model": "tiny",
        "config": {"stride": 8, "block_size": 128, "token_order": "tile",
                   "tile_size": [2, 8, 8], "text_policy": "dense", "backend": "auto"},
        "taus": taus,
        "layers": layers,
        "prompts": ["zoom in on cat"],
        "seeds": [0],
        "steps": 30,
    }  # fmt: skip


def test_thresholds_file_round_trips(tmp_path):
    data = _file()
    path = tmp_path / "thr.json"
    save_thresholds(path, data)
    assert load_thresholds(path) == json.loads(json.dumps(data))
    again = retarget(load_thresholds(path), target_mass=0.95)
    assert again["layers"][0]["thresholds"] == [0.9, 1.0]
    assert again["target"] == {"mass": 0.95, "density": None}
    assert retarget(again, target_density=0.3)["target"] == {"mass": None, "density": 0.3}
    assert again["expected_density"] == pytest.approx(expected_density(again))
    assert again["layers"][0]["mass"] == data["layers"][0]["mass"]  # curves kept


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.pop("taus"), "taus"),
        (lambda d: d.update(taus=[0.9, 0.5, 0.8, 1.0]), "taus"),
        (lambda d: d["layers"][1].update(layer=0), "layer index"),
        (lambda d: d["layers"][0].update(thresholds=[0.0, 0.9]), "thresholds"),
        (lambda d: d["layers"][0]["mass"].pop(), "curves|mass"),
        # a NaN in a curve chose thresholds far above the target, without a word
        (lambda d: d["layers"][0]["density"][1].__setitem__(0, float("nan")), "finite"),
        (lambda d: d["layers"][1]["mass"][0].__setitem__(2, float("inf")), "finite"),
        (lambda d: d.pop("config"), "missing key 'config'"),  # was a KeyError at apply
        (lambda d: d.pop("model"), "missing key 'model'"),
        (lambda d: d.pop("layers"), "missing key 'layers'"),
        (lambda d: d.update(config=[8, 128]), "config must be an object"),
        (lambda d: d["layers"][0].update(layer=-1), "layer index -1"),
        (lambda d: d["layers"][0].update(layer=True), "layer index True"),
        (lambda d: d["layers"][0]["density"].pop(), "differ in H"),
        (lambda d: d["layers"][0].update(thresholds=["0.5", 0.9]), "thresholds must be"),
        (lambda d: d["layers"][0].update(mass=[0.5, 0.9]), "mass must be H lists"),
        # these raised AttributeError / TypeError, or (no layers) divided by zero later
        (lambda d: d.update(layers=[1]), "layers must be a non-empty list"),
        (lambda d: d.update(layers=[]), "layers must be a non-empty list"),
        (lambda d: d.update(taus=["x"]), "taus"),
        (lambda d: d.update(taus=None), "taus"),
    ],
)
def test_invalid_thresholds_files_raise_naming_the_problem(edit, match):
    data = _file()
    edit(data)
    with pytest.raises(ValueError, match=match):
        validate(data)


def test_saving_an_invalid_file_raises_and_writes_nothing(tmp_path):
    data = _file()
    data["layers"][0]["thresholds"] = [0.0, 0.9]
    with pytest.raises(ValueError, match="thresholds must be in"):
        save_thresholds(tmp_path / "thr.json", data)
    assert list(tmp_path.iterdir()) == []


def test_a_loaded_dict_edited_by_its_caller_does_not_change_later_loads(tmp_path):
    """Loads are cached per path and modification time, and the cache's own dict was returned:
    an edit by one caller was what every later load of the unchanged file got."""
    path = tmp_path / "thr.json"
    save_thresholds(path, _file())
    first = load_thresholds(path)
    first["layers"][0]["thresholds"] = [0.99, 0.99]
    first["model"] = "edited"
    again = load_thresholds(path)
    assert again == json.loads(json.dumps(_file()))


def test_the_sparse_paths_per_layer_thresholds_are_cached_until_the_file_changes(tmp_path):
    """The per-layer cache compares the loaded dict by identity; with load_thresholds copying
    on every call it never hit, and every sparse attention call deep-copied the whole file
    and rebuilt the layer's tensor (~57 ms per call for a HunyuanVideo-sized file)."""
    import os

    from xattn_video.sparse_path import layer_threshold

    path = tmp_path / "thr.json"
    save_thresholds(path, _file())
    cfg = xv.XAttentionConfig(
        threshold=0.9,
        thresholds_file=str(path),
        stride=8,
        block_size=128,
        token_order="tile",
        tile_size=(2, 8, 8),
    )  # the file's settings
    first = layer_threshold(cfg, 0, 2, torch.device("cpu"))
    assert torch.equal(first, torch.tensor(_file()["layers"][0]["thresholds"], dtype=torch.float64))
    assert layer_threshold(cfg, 0, 2, torch.device("cpu")) is first  # a cache hit
    half = layer_threshold(cfg, 0, 1, torch.device("cpu"), first_head=1, total_heads=2)
    assert half.tolist() == first.tolist()[1:]
    data = _file()
    data["layers"][0]["thresholds"] = [0.5, 0.6]
    save_thresholds(path, data)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new mtime, however coarse
    assert layer_threshold(cfg, 0, 2, torch.device("cpu")).tolist() == [0.5, 0.6]


@pytest.mark.parametrize("target", [0.0, -0.1, 1.5])
def test_targets_outside_0_1_are_refused(target):
    taus, layers = _layers()
    with pytest.raises(ValueError, match=r"target_density must be in \(0, 1\]"):
        choose_thresholds(layers, taus, target_density=target)
    with pytest.raises(ValueError, match=r"target_mass must be in \(0, 1\]"):
        choose_thresholds(layers, taus, target_mass=target)


@pytest.mark.parametrize(
    "data, family",
    [({"model": "tiny-wan"}, "wan"), ({"model": "Wan2.2-T2V"}, "wan"),
     ({"model": "wan"}, "wan"), ({"model": "swan-net"}, None), ({"model": "tiny"}, None),
     ({"model": "HunyuanVideo"}, "hunyuanvideo"), ({}, None),
     ({"model": "tiny-wan", "family": "hunyuanvideo"}, "hunyuanvideo"),
     ({"model": "tiny-wan", "family": ""}, "wan")],
)  # fmt: skip
def test_file_family_reads_the_family_key_else_the_model_name(data, family):
    assert file_family(data) == family


def test_missing_or_mismatched_file_raises(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not exist"):
        load_thresholds(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="is a directory, not a file"):  # said "does not exist"
        load_thresholds(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_thresholds(bad)
    video = tmp_path / "video.mp4"  # a binary file given by mistake: named, as bad JSON is
    video.write_bytes(b"\x00\x00\x00 ftypisom\xf0\x28\x8c\x28")
    with pytest.raises(ValueError, match=f"thresholds file '{video}' is not a JSON text file"):
        load_thresholds(video)
    unreadable = tmp_path / "unreadable.json"  # a PermissionError traceback, not the CLI's line
    unreadable.write_text("{}")
    unreadable.chmod(0)
    if os.access(unreadable, os.R_OK):  # root reads it anyway: make open() fail as it would
        import builtins

        real_open = builtins.open

        def denied(file, *args, **kwargs):
            if str(file) == str(unreadable):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", denied)
    with pytest.raises(ValueError, match=f"'{unreadable}' can't be read: Permission denied"):
        load_thresholds(unreadable)
    data = _file()
    cfg = dict(data["config"], stride=16)
    with pytest.raises(ValueError, match="stride"):
        check_matches(data, cfg)
    check_matches(data, dict(data["config"]))


def test_a_file_replaced_within_one_clock_tick_is_read_again(tmp_path):
    """The loaded file is cached by its version: a rewrite that kept the modification time (a
    coarse file-system clock; here os.utime) was served from the cache, old thresholds and
    all. Atomic writes give the new file a new inode, part of the version now."""
    path = tmp_path / "thr.json"
    data = _file()
    save_thresholds(path, data)
    stamp = path.stat().st_mtime_ns
    first = load_thresholds(path)
    data["layers"][0]["thresholds"] = [0.5 for _ in data["layers"][0]["thresholds"]]
    save_thresholds(path, data)
    os.utime(path, ns=(stamp, stamp))
    assert load_thresholds(path)["layers"][0]["thresholds"] != first["layers"][0]["thresholds"]
    assert load_thresholds(path)["layers"][0]["thresholds"][0] == 0.5


def test_tile_size_counts_for_the_orders_built_from_tiles():
    """cluster's k-means starts from the tile order, so its thresholds depend on tile_size too
    (a file calibrated with cluster at (2, 8, 8) was accepted at (1, 4, 4))."""
    data = _file()
    for order in ("tile", "cluster"):
        data["config"] = dict(data["config"], token_order=order, tile_size=[2, 8, 8])
        with pytest.raises(ValueError, match="tile_size"):
            check_matches(data, dict(data["config"], tile_size=[1, 4, 4]))
        check_matches(data, dict(data["config"], tile_size=(2, 8, 8)))
    for order in ("raster", "hilbert"):  # orders that ignore the tile size
        data["config"] = dict(data["config"], token_order=order, tile_size=[2, 8, 8])
        check_matches(data, dict(data["config"], tile_size=[1, 4, 4]))


def test_text_policy_counts_only_where_there_are_text_tokens():
    """A Wan file (no text tokens in its self-attention) was refused for another text_policy,
    "calibrate again", though a new calibration gives the same curves."""
    data = dict(_file(), family="wan")
    data["config"] = dict(data["config"], text_policy="dense")
    check_matches(data, dict(data["config"], text_policy="sparse"))
    data["family"] = "hunyuanvideo"
    with pytest.raises(ValueError, match="text_policy='dense', the config has text_policy="):
        check_matches(data, dict(data["config"], text_policy="sparse"))


def test_calibration_runs_every_call_through_the_sparse_path():
    # the cost model must not turn calibration calls dense (they would not be measured)
    cal = calibration_config(xv.XAttentionConfig(threshold=0.8, warmup_steps=3, max_density=0.3))
    assert cal.auto_dense is False and cal.warmup_steps == 0 and cal.threshold == 1.0
    assert cal.max_density == 1.0 and cal.thresholds_file == "" and cal.dense_layers == ()


def test_calibration_measures_only_the_steps_that_run_sparse():
    """dense_last_steps' steps run dense at inference; they were measured too (steps 1-3 of 4
    with warmup 1 and 2 dense last steps: only step 1 runs sparse)."""
    from ._tiny_models import hv_inputs, tiny_cfg, tiny_hv_pipeline

    pipe = tiny_hv_pipeline(num_single_layers=1)
    cfg = tiny_cfg(warmup_steps=1, dense_last_steps=2)
    data = calibrate_pipeline(pipe, cfg, [hv_inputs(steps=4)], model="tiny", target_mass=0.9)
    assert data["steps_measured"] == [1]
    with pytest.raises(ValueError, match="no step runs sparse: warmup_steps=2 and dense_last"):
        calibrate_pipeline(pipe, tiny_cfg(warmup_steps=2, dense_last_steps=2),
                           [hv_inputs(steps=4)], model="tiny", target_mass=0.9)  # fmt: skip


def test_calibrate_command_writes_a_loadable_file_and_retargets(tmp_path, capsys):
    from xattn_video.pipelines.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat on a mat\na dog running\na bird\na fish\n")
    out = tmp_path / "thr.json"
    argv = ["calibrate", "--model", "tiny-hunyuan", "--prompts", str(prompts), "--num-prompts",
            "2", "--steps", "2", "--measure-every", "1", "--device", "cpu", "--no-progress",
            "--out", str(out)]  # fmt: skip
    assert main([*argv, "--ratio", "0.3", "--max-density", "0.5"]) == 0  # they were silent
    std = capsys.readouterr()
    assert ("xattn-video: warning: calibrate ignores --ratio, --max-density: a calibration keeps "
            "every block on every layer and step") in std.err and "wrote" in std.out  # fmt: skip
    data = load_thresholds(out)
    assert data["prompts"] == ["a cat on a mat", "a bird"]  # a strided sample, as generate's
    # the tiny preset has 1 warm-up step: only the sparse step 1 is measured
    assert data["steps_measured"] == [1] and data["target"] == {"mass": 0.95, "density": None}
    assert data["dtype"] == "torch.float32"  # the CPU default, as generate's (it was bf16)
    cfg = xv.XAttentionConfig.from_preset("tiny", thresholds_file=str(out))  # loads, matches
    assert cfg.thresholds_file == str(out)
    again = tmp_path / "thr2.json"
    assert main(["calibrate", "--retarget", str(out), "--target-density", "0.8",
                 "--out", str(again)]) == 0  # fmt: skip
    assert load_thresholds(again)["expected_density"] <= 0.8
    assert "re-targeted" in capsys.readouterr().out
    # at this size the dense text row alone keeps the density above 0.5: said, not hidden
    assert main(["calibrate", "--retarget", str(out), "--target-density", "0.5",
                 "--out", str(again)]) == 0  # fmt: skip
    assert "target_density 0.5 is below the lowest density" in capsys.readouterr().err
    assert load_thresholds(again)["expected_density"] > 0.5
    # --retarget runs no model: flags it cannot honour are refused, not silently ignored (a
    # "--token-order tile" file came out in the source file's raster order, exit 0)
    before = again.read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--retarget", str(out), "--out", str(again), "--token-order", "tile",
              "--measure-every", "0", "--model", "tiny"])  # fmt: skip
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert (f"--retarget re-chooses the thresholds of {out} from its stored curves without "
            "running the model: it keeps that file's settings and takes only --out and "
            "--target-mass / --target-density, not --model, --measure-every, --token-order"
            ) in err  # fmt: skip
    assert again.read_bytes() == before


# ---------------------------------------------------------------------------------------------
# two-expert pipelines (Wan 2.2 A14B's transformer_2): refused, never merged
# ---------------------------------------------------------------------------------------------


def _wan_thresholds(tmp_path, cfg, heads, layers=range(2), model="tiny-wan"):
    """A thresholds file for the 2-layer tiny Wan transformer under ``cfg``."""
    taus = [0.5, 0.9, 1.0]
    conf = {k: cfg.to_dict()[k] for k in ("stride", "block_size", "token_order", "tile_size",
                                          "text_policy", "backend")}  # fmt: skip
    layers = [{"layer": i, "thresholds": [0.5] * heads, "mass": [[0.5, 0.9, 1.0]] * heads,
               "density": [[0.3, 0.6, 1.0]] * heads} for i in layers]  # fmt: skip
    path = tmp_path / f"wan{len(list(layers))}x{heads}.json"
    save_thresholds(path, {"format": FORMAT, "model": model, "config": conf,
                           "taus": taus, "layers": layers})  # fmt: skip
    return path


def test_a_failed_thresholds_write_leaves_the_old_file_intact(tmp_path):
    """save_thresholds opened the file for writing before encoding it: a value JSON cannot
    hold (or a full disk) left a truncated, unreadable file in place of a costly calibration."""
    import numpy as np

    path = _wan_thresholds(tmp_path, xv.XAttentionConfig(), heads=2)
    before = path.read_text()
    data = json.loads(before)
    with pytest.raises(TypeError, match="not JSON serializable"):
        save_thresholds(path, {**data, "prompts": ["a cat", np.float32(1.0)]})
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left


def test_calibrating_two_experts_is_refused_instead_of_merging_their_heads():
    """Both experts number their layers 0..N-1: the file listed layers [0, 1] of a 2 + 2 layer
    model, each head the average of the two experts' heads."""
    from ._tiny_models import tiny_cfg, tiny_wan_pipeline, wan_inputs

    pipe = tiny_wan_pipeline(two_stage=True)
    before = [dict(t.attn_processors) for t in (pipe.transformer, pipe.transformer_2)]
    with pytest.raises(ValueError, match=r"pipe\.transformer_2.*per-expert thresholds are not"):
        calibrate_pipeline(pipe, tiny_cfg(warmup_steps=0), [wan_inputs(steps=4)],
                           model="wan2.2", target_mass=0.9)  # fmt: skip
    after = [dict(t.attn_processors) for t in (pipe.transformer, pipe.transformer_2)]
    assert after == before  # nothing applied
    pipe.transformer_2 = None  # one expert: calibrates as before
    pipe.register_to_config(boundary_ratio=None)
    data = calibrate_pipeline(pipe, tiny_cfg(warmup_steps=0), [wan_inputs(steps=2)],
                              model="tiny-wan", target_mass=0.9)  # fmt: skip
    assert [layer["layer"] for layer in data["layers"]] == [0, 1]
    assert data["family"] == "wan"  # what apply_xattention compares the model with


def test_a_thresholds_file_on_two_experts_is_refused_at_apply(tmp_path):
    from ._tiny_models import tiny_cfg, tiny_wan_pipeline

    pipe = tiny_wan_pipeline(two_stage=True)
    cfg = tiny_cfg(warmup_steps=0)
    path = _wan_thresholds(tmp_path, cfg, pipe.transformer.blocks[0].attn1.heads)
    with pytest.raises(ValueError, match=r"second expert \(transformer_2\).*layers 0-1"):
        xv.apply_xattention(pipe, cfg.replace(thresholds_file=str(path)))
    assert not any(type(p).__name__.startswith("XAttention")
                   for p in pipe.transformer_2.attn_processors.values())  # fmt: skip
    xv.apply_xattention(pipe, cfg).remove()  # without the file: both experts as before
    xv.apply_xattention(pipe.transformer, cfg.replace(thresholds_file=str(path))).remove()


def test_calibrate_command_refuses_two_experts_with_exit_2(tmp_path, capsys, monkeypatch):
    from xattn_video.pipelines import models as models_mod

    from ._tiny_models import tiny_wan_pipeline
    from .test_cli_robustness import _fail

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat on a mat\n")
    argv = ["calibrate", "--model", "tiny-wan", "--prompts", str(prompts), "--num-prompts", "1",
            "--steps", "2", "--measure-every", "1", "--device", "cpu", "--no-progress",
            "--out", str(tmp_path / "thr.json")]  # fmt: skip
    monkeypatch.setattr(models_mod, "load_pipeline", lambda *a, **k: tiny_wan_pipeline(
        two_stage=True))  # fmt: skip
    line = _fail(argv, capsys)
    assert "pipe.transformer_2" in line and "per-expert thresholds are not supported" in line
    assert not (tmp_path / "thr.json").exists()
    # a saved two-expert folder: refused before the model loads
    folder = tmp_path / "wan22"
    folder.mkdir()
    index = {"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"],
             "transformer_2": ["diffusers", "WanTransformer3DModel"]}  # fmt: skip
    (folder / "model_index.json").write_text(json.dumps(index))

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(models_mod, "load_pipeline", no_load)
    line = _fail([*argv, "--model-path", str(folder)], capsys)
    assert "two-expert pipeline (transformer_2" in line and "--thresholds-file" in line


# ---------------------------------------------------------------------------------------------
# a thresholds file that does not fit the model: refused at apply, before any step
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layers, extra_heads, match",
    [
        (range(40), 0, r"lists 38 layer\(s\) that WanTransformer3DModel does not have "
                       r"\(\[2, 3, 4, 5, 6, 7, 8, 9, \.\.\.\]; it has 2 attention layers: 0-1\)"),
        ([1, 5], 0, r"lists 1 layer\(s\) .* \(\[5\]; it has 2 attention layers: 0-1\)"),
        (range(2), 1, "has 3 heads for layer 0, WanTransformer3DModel has 2; calibrate this"),
        (range(2), -1, "has 1 heads for layer 0, WanTransformer3DModel has 2; calibrate this"),
    ],
)  # fmt: skip
def test_a_thresholds_file_that_does_not_fit_fails_at_apply(tmp_path, layers, extra_heads, match):
    """It was accepted: extra layers silently, other head counts only after the warm-up."""
    from ._tiny_models import tiny_cfg, tiny_wan_pipeline

    pipe = tiny_wan_pipeline()
    heads = pipe.transformer.blocks[0].attn1.heads
    assert heads == 2
    cfg = tiny_cfg(warmup_steps=2)
    path = _wan_thresholds(tmp_path, cfg, heads + extra_heads, layers)
    before = dict(pipe.transformer.attn_processors)
    with pytest.raises(ValueError, match=match):
        xv.apply_xattention(pipe, cfg.replace(thresholds_file=str(path)))
    assert dict(pipe.transformer.attn_processors) == before  # nothing installed
    with pytest.raises(ValueError, match=match):
        xv.xattention_processors(pipe.transformer, cfg.replace(thresholds_file=str(path)))
    fits = _wan_thresholds(tmp_path, cfg, heads, [1])  # fewer layers: the rest use threshold
    xv.apply_xattention(pipe, cfg.replace(thresholds_file=str(fits))).remove()


@pytest.mark.parametrize(
    "model, family, warns",
    [("hunyuanvideo", None, True), ("tiny-hunyuan", None, True), ("tiny", "hunyuanvideo", True),
     ("wan2.2", None, False), ("tiny", None, False), ("tiny-wan", "wan", False)],
)  # fmt: skip
def test_a_thresholds_file_of_another_model_family_warns(tmp_path, recwarn, model, family, warns):
    from ._tiny_models import tiny_cfg, tiny_wan_pipeline

    pipe = tiny_wan_pipeline()
    cfg = tiny_cfg(warmup_steps=2)
    path = _wan_thresholds(tmp_path, cfg, 2, model=model)
    if family is not None:  # another path: files are cached per path and modification time
        data = load_thresholds(path)
        path = tmp_path / "with_family.json"
        save_thresholds(path, {**data, "family": family})
    xv.apply_xattention(pipe, cfg.replace(thresholds_file=str(path))).remove()
    hits = [w for w in recwarn if "calibrated on" in str(w.message)]
    if not warns:
        assert hits == []
        return
    assert len(hits) == 1 and hits[0].filename == __file__  # points at the caller
    assert (f"thresholds file {str(path)!r} was calibrated on {model!r} (hunyuanvideo), not on "
            "WanTransformer3DModel (wan)") in str(hits[0].message)  # fmt: skip


class _NoCallPipe:
    """A pipeline that must not be called: the checks come first."""

    def __call__(self, prompt=None, num_inference_steps=7):
        raise AssertionError("the pipeline ran before the error")


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give exactly one of target_mass and target_density"),
    ({"target_mass": 1.5}, r"target_mass must be in \(0, 1\], got 1.5"),
    ({"target_mass": 0.9, "taus": [0.9, 0.5]}, r"taus must be increasing values in \(0, 1\]"),
    ({"target_mass": 0.9, "calls": []}, "calls is empty"),
])  # fmt: skip
def test_calibrate_pipeline_checks_its_arguments_before_any_call(kwargs, message):
    """They were checked only after every pipeline call had run (minutes on a real model)."""
    calls = kwargs.pop("calls", [{"prompt": "a", "num_inference_steps": 10}])
    with pytest.raises(ValueError, match=message):
        calibrate_pipeline(_NoCallPipe(), xv.XAttentionConfig(), calls, model="m", **kwargs)


def test_calibrate_pipeline_takes_the_pipelines_default_step_count():
    """Without num_inference_steps in the calls, steps=None measured every step, warm-up ones
    included, though the docstring says the sparse ones; the pipeline's default (here 7) now
    counts: warm-up 5 + 2 dense last steps leave none."""
    cfg = xv.XAttentionConfig(warmup_steps=5, dense_last_steps=2)
    with pytest.raises(ValueError, match="no step runs sparse: .* cover all 7 steps"):
        calibrate_pipeline(_NoCallPipe(), cfg, [{"prompt": "a"}], model="m", target_mass=0.9)

    class NoDefault:
        def __call__(self, prompt=None, **kwargs):
            raise AssertionError("the pipeline ran before the error")

    with pytest.raises(ValueError, match="NoDefault has no default num_inference_steps"):
        calibrate_pipeline(NoDefault(), cfg, [{"prompt": "a"}], model="m", target_mass=0.9)
