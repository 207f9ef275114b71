"""``benchmarks/sweep_quality.py`` (the script behind the fp8-vs-bf16 quality claim) on the CPU:
its settings grid, the fp8 / bf16 comparison, the attention-level view's invariants, and one
whole run on a random-weight tiny DiT (fp8 asked for and skipped with its reason off sm90)."""

import argparse
import json

import pytest
import torch

from ._benchmarks import load_benchmark

sq = load_benchmark("sweep_quality")
view = load_benchmark("_attention_view")
quality = load_benchmark("_quality")
precisions = load_benchmark("_precisions")


def _args(*extra: str) -> argparse.Namespace:
    return sq.parse_args(["--out", "unused", *extra])


def test_one_at_a_time_grid_is_the_base_then_each_factor_alone():
    a = _args("--quick", "--steps", "4", "--block-size", "16")
    labels = [sq._label(s) for s in sq.build_settings(a)]
    assert labels == [
        "tau=0.9 w=2 S=8 raster r=1",
        "tau=0.8 w=2 S=8 raster r=1",
        "tau=0.95 w=2 S=8 raster r=1",
        "tau=0.9 w=0 S=8 raster r=1",
        "tau=0.9 w=2 S=16 raster r=1",
        "tau=0.9 w=2 S=8 tile r=1",
        "tau=0.9 w=2 S=8 raster r=3",
    ]
    # warm-up steps past the schedule are dropped, strides that do not divide the block too
    a = _args("--quick", "--steps", "3", "--block-size", "16", "--warmups", "0", "5",
              "--strides", "8", "32")  # fmt: skip
    settings = sq.build_settings(a)
    assert {s["stride"] for s in settings} == {8}
    assert {s["warmup_steps"] for s in settings} == {0, 2}
    full = sq.build_settings(_args("--grid", "full", "--steps", "30"))
    assert len(full) == 3 * 3 * 2 * 2 * 2


def test_num_videos_default_and_quick_and_an_empty_full_grid(capsys):
    """--quick took an explicit --num-videos 8 for the default and ran 4 (fewer than the fp8
    check's 8); --grid full with an axis left empty swept nothing and failed at the end."""
    assert (_args().num_videos, _args("--quick").num_videos) == (8, 4)
    assert _args("--quick", "--num-videos", "8").num_videos == 8
    with pytest.raises(SystemExit):
        _args("--grid", "full", "--steps", "2", "--warmups", "5")
    assert "--warmups: no value below --steps 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _args("--grid", "full", "--block-size", "16", "--strides", "32")
    assert "--strides: none divides --block-size 16" in capsys.readouterr().err


def test_the_attention_panel_plots_every_order(tmp_path, monkeypatch):
    """Only raster and tile were plotted: hilbert's rows, in the table and the JSON, were not."""
    import matplotlib.pyplot as plt

    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    row = dict(density=0.3, mass_kept=0.9, oracle_mass=0.95, threshold=0.9, stride=8)
    attn = [dict(row, order=o) for o in ("raster", "hilbert")]
    sq.plot([], attn, 30.0, tmp_path / "p.png")
    labels = figs[0].axes[1].get_legend_handles_labels()[1]
    assert labels == ["raster: estimated mask", "raster: oracle, same block count",
                      "hilbert: estimated mask", "hilbert: oracle, same block count"]  # fmt: skip
    assert (tmp_path / "p.png").is_file()


def test_preset_setting_carries_the_preset_fields_but_not_the_command_lines():
    s = sq.build_settings(_args("--preset", "tiny-dit", "--steps", "30"))
    assert len(s) == 1
    cfg = sq.make_config(s[0], _args("--block-size", "16"), "bf16", "fp8")
    ref = sq.xv.XAttentionConfig.from_preset("tiny-dit")
    for key in ("threshold", "stride", "token_order", "max_density", "warmup_steps"):
        assert getattr(cfg, key) == getattr(ref, key), key
    assert cfg.block_size == 16 and cfg.auto_dense is False
    assert (cfg.precision, cfg.estimate_precision) == ("bf16", "fp8")
    with pytest.raises(SystemExit):
        _args("--preset", "no-such-preset")
    with pytest.raises(SystemExit):
        _args("--precision", "bf16,bf16")
    with pytest.raises(SystemExit):
        _args("--estimate-precision", "e4m3")


@pytest.mark.parametrize("prec, est, want", [
    ("bf16", "auto", [("bf16", "bf16")]),
    ("bf16,fp8", "auto", [("bf16", "bf16"), ("fp8", "fp8")]),
    ("bf16,fp8", "bf16,fp8", [("bf16", "bf16"), ("bf16", "fp8"), ("fp8", "bf16"), ("fp8", "fp8")]),
    ("fp8", "auto,fp8,bf16", [("fp8", "fp8"), ("fp8", "bf16")]),
])  # fmt: skip
def test_precision_pairs_resolve_auto_and_drop_repeats(prec, est, want):
    a = _args("--precision", prec, "--estimate-precision", est)
    assert precisions.precision_pairs(a.precision, a.estimate_precision) == want
    labels = {sq._row_label(sq.BASE, p, e).removeprefix(sq._label(sq.BASE)) for p, e in want}
    names = {
        ("bf16", "bf16"): "",
        ("bf16", "fp8"): " bf16 + fp8 estimate",
        ("fp8", "fp8"): " fp8 + fp8 estimate",
        ("fp8", "bf16"): " fp8 + bf16 estimate",
    }
    assert labels == {names[pair] for pair in want}


def test_an_fp8_sweep_on_hopper_gets_its_all_bf16_baseline(monkeypatch):
    """On Hopper "auto" is the fp8 estimate for bf16 attention too: the documented
    ``--precision bf16,fp8`` ran (bf16, fp8 estimate) and (fp8, fp8) only, and vs_bf16 came out
    empty without a word. The all-bf16 run is added first."""
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(major=9))  # fmt: skip
    a = _args("--precision", "bf16,fp8")
    pairs = precisions.precision_pairs(a.precision, a.estimate_precision, "cuda", 64)
    assert pairs == [("bf16", "fp8"), ("fp8", "fp8")]
    asked = [*a.precision, *a.estimate_precision]
    assert precisions.with_baseline(pairs, asked) == [
        ("bf16", "bf16"),
        ("bf16", "fp8"),
        ("fp8", "fp8"),
    ]
    assert precisions.with_baseline([("bf16", "bf16")], asked) == [
        ("bf16", "bf16")
    ]  # nothing to compare
    both = [("bf16", "bf16"), ("fp8", "fp8")]
    assert precisions.with_baseline(both, asked) == both


def _hopper_pipe(monkeypatch, why: dict[str, str]):
    """A pipe stand-in of head dim 64 on a simulated Hopper GPU where ``why`` says what of fp8
    does not run."""
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(major=9))  # fmt: skip
    monkeypatch.setattr(precisions, "fp8_unavailable", lambda pipe, a, device: why)
    return SimpleNamespace(transformer=SimpleNamespace(config=SimpleNamespace(
        attention_head_dim=64)))  # fmt: skip


def test_the_default_sweep_on_hopper_runs_each_setting_once(monkeypatch):
    """The default --precision bf16 (estimate "auto": fp8 on Hopper) got the all-bf16 run
    added as well: every setting ran twice, and the recommendation could pick the non-default
    all-bf16 row."""
    pipe = _hopper_pipe(monkeypatch, {})
    said = []
    assert precisions.runnable_pairs(pipe, _args(), "cuda", said.append) == [("bf16", "fp8")]
    assert said == []
    got = precisions.runnable_pairs(pipe, _args("--estimate-precision", "fp8"), "cuda", said.append)
    assert got == [("bf16", "bf16"), ("bf16", "fp8")]  # fp8 asked for: its baseline added


def test_an_fp8_only_sweep_where_fp8_attention_cannot_run_leaves_nothing(monkeypatch):
    """The baseline was added before the fp8 runs that cannot run were dropped: an fp8-only
    sweep ran the all-bf16 run it never asked for and exited 0 with an empty vs_bf16."""
    pipe = _hopper_pipe(monkeypatch, {"attention": "no fp8 attention here"})
    said = []
    assert precisions.runnable_pairs(pipe, _args("--precision", "fp8"), "cuda", said.append) == []
    assert said == ["[sweep] skipping the runs with fp8 attention: no fp8 attention here"]
    got = precisions.runnable_pairs(pipe, _args("--precision", "bf16,fp8"), "cuda", said.append)
    assert got == [("bf16", "bf16"), ("bf16", "fp8")]


@pytest.mark.parametrize("block", ["128", "16"])
def test_fp8_probe_runs_the_estimate_at_every_block_size(block):
    """The probe of the fp8 estimate must itself be a valid call (it once asked for stride 64 at
    the default block of 128, so every fp8-estimate run was skipped on the H200). On CPU the fp8
    estimate is emulated (it runs), the fp8 attention is not."""
    from types import SimpleNamespace

    tr = SimpleNamespace(config=SimpleNamespace(attention_head_dim=16), dtype=torch.float32)
    why = precisions.fp8_unavailable(SimpleNamespace(transformer=tr), _args("--block-size", block),
                             torch.device("cpu"))  # fmt: skip
    assert "estimate" not in why
    if not torch.cuda.is_available():
        assert "fp8" in why["attention"]


def test_compare_precisions_pairs_each_setting_and_its_per_video_differences():
    def row(setting, prec, psnr, est=None):
        return {"kind": "xattention", "setting": setting, "precision": prec,
                "estimate_precision": est or prec, "psnr": sum(psnr) / len(psnr),
                "per_video": {"psnr": psnr}, "ssim": 0.9, "effective_density": 0.3,
                "attn_s": 1.0}  # fmt: skip

    rows = [
        {"kind": "dense"},
        row("a", "fp8", [29.0, 32.5]),  # before its bf16 run: still compared with it
        row("a", "bf16", [30.0, 32.0]),
        row("a", "bf16", [30.5, 32.0], est="fp8"),
        row("b", "bf16", [40.0, 40.0]),  # no other run: no comparison
        row("c", "fp8", [20.0, 20.0]),  # no all-bf16 run: no comparison
    ]
    c, c2 = sq.compare_precisions(rows)
    assert (c["setting"], c["precision"], c["estimate_precision"]) == ("a", "fp8", "fp8")
    assert c["num_videos"] == 2
    assert c["delta_psnr_per_video"] == [-1.0, 0.5]
    assert c["delta_psnr"] == pytest.approx(-0.25)
    assert c["max_abs_delta_per_video"] == 1.0
    assert c["within_0p5_db"] is True  # issue 8's criterion is the mean over the videos
    assert c["every_video_within_0p5_db"] is False and c["enough_videos"] is False
    assert (c2["precision"], c2["estimate_precision"]) == ("bf16", "fp8")
    assert c2["delta_psnr_per_video"] == [0.5, 0.0]
    assert c2["every_video_within_0p5_db"] is True
    rows[1] = row("a", "fp8", [29.0, 31.0])
    assert sq.compare_precisions(rows)[0]["within_0p5_db"] is False
    # exactly 0.5 dB over exactly MIN_VIDEOS videos meets both; each side keeps its own numbers
    bf16 = dict(row("d", "bf16", [30.0] * 8), effective_density=0.30, attn_s=2.0)
    fp8 = dict(row("d", "fp8", [29.5] * 8), effective_density=0.32, attn_s=1.5)
    (c,) = sq.compare_precisions([bf16, fp8])
    assert c["within_0p5_db"] is True and c["enough_videos"] is True and c["num_videos"] == 8
    assert (c["effective_density_bf16"], c["effective_density"]) == (0.30, 0.32)
    assert (c["attn_s_bf16"], c["attn_s"]) == (2.0, 1.5)
    (c,) = sq.compare_precisions([dict(bf16, per_video={"psnr": [30.0] * 7}),
                                  dict(fp8, per_video={"psnr": [29.5] * 7})])  # fmt: skip
    assert c["enough_videos"] is False


def test_conditions_are_fixed_and_cycle_through_the_motions():
    conds = quality.conditions(12)
    assert conds == quality.conditions(12)
    assert {c.motion_name for c in conds} == set(quality.MOTIONS)
    assert len({c.describe() for c in conds}) == 12  # 12 different videos


def test_conditions_do_not_repeat_every_32():
    """Condition i + 32 was condition i: the README's held-out run (conditions 40-55) had the
    selection run's conditions (8-23). The first 32 stay as published."""
    conds = quality.conditions(256)
    first = [(i % 4, (3 * i + i // 4) % 8, (5 * i + 1) % (2 if i % 4 in (1, 2) else 8))
             for i in range(32)]  # fmt: skip
    assert [(c.motion, c.image, c.direction) for c in conds[:32]] == first
    assert len({c.canonical() for c in conds[:64]}) == 64
    assert len({c.canonical() for c in conds}) == 160  # every canonical condition
    assert not {c.canonical() for c in conds[40:56]} & {c.canonical() for c in conds[8:24]}


def test_sweep_methods_refuses_held_out_conditions_equal_to_calibration_ones(tmp_path):
    """The overlap check compared indices; zoom / rotate conditions repeat at other indices.
    It applies only where a calibrated method runs (64 held-out videos always overlapped)."""
    methods = load_benchmark("sweep_methods")
    with pytest.raises(SystemExit, match=r"--eval-start 80: held-out conditions overlap the "
                       r"calibration conditions 24..27: \['rotate clockwise on motorcycle', "
                       r"'zoom in on coffee'\]"):  # fmt: skip
        methods.main(["--out", str(tmp_path), "--random-weights", "--device", "cpu",
                      "--eval-start", "80", "--no-lpips"])  # fmt: skip
    rc = methods.main(["--out", str(tmp_path), "--random-weights", "--device", "cpu",
                       "--frames", "1", "--height", "16", "--width", "16", "--steps", "1",
                       "--block-size", "16", "--eval-start", "80", "--no-lpips",
                       "--points", "uniform:0.9"])  # fmt: skip
    assert rc == 0


def test_attention_view_scores_the_mask_against_the_true_attention():
    torch.manual_seed(0)
    B, H, N, D, bs = 1, 2, 96, 16, 16
    q, k, v = (torch.randn(B, H, N, D) for _ in range(3))
    kv_len = torch.tensor([80], dtype=torch.int32)
    a = argparse.Namespace(orders=["raster", "tile", "cluster"], taus=[0.5, 1.0], strides=[4, 5],
                           block_size=bs, tile=(1, 4, 4))  # fmt: skip
    rows = view.attention_view({(1, 0): (q, k, v, kv_len)}, a, n_video=96, grid=(6, 4, 4))
    # cluster skipped, stride 5 does not divide the block: 2 orders x 2 taus x stride 4
    assert {(r["order"], r["threshold"], r["stride"]) for r in rows} == {
        (o, t, 4) for o in ("raster", "tile") for t in (0.5, 1.0)
    }
    for r in rows:
        # the oracle keeps the most mass any mask with as many blocks per row can
        assert r["mass_kept"] <= r["oracle_mass"] + 1e-9
        assert 0.0 < r["density"] <= 1.0
    full = [r for r in rows if r["threshold"] == 1.0]
    for r in full:  # tau 1: every block with a valid key, so all the mass and dense's output
        assert r["mass_kept"] == pytest.approx(1.0, abs=1e-6)
        assert r["rel_l2"] < 1e-5
    agg = view.aggregate_attention(rows + rows)
    assert len(agg) == len(rows) and all(g["n"] == 2 for g in agg)


def test_a_whole_run_on_a_random_tiny_dit(tmp_path, capsys):
    out = tmp_path / "sweep"
    rc = sq.main(["--out", str(out), "--random-weights", "--device", "cpu", "--frames", "5",
                  "--height", "32", "--width", "32", "--steps", "3", "--block-size", "16",
                  "--num-videos", "1", "--preset", "tiny-dit", "--precision", "bf16,fp8",
                  "--estimate-precision", "auto,fp8", "--no-lpips", "--attn-layers", "0", "--attn-steps", "1", "--taus", "0.9",
                  "--strides", "8"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    no_fp8 = "skipping the runs with fp8 attention" in printed
    if not torch.cuda.is_available():  # the fp8 estimate is emulated, the fp8 attention is not
        assert no_fp8 and "skipping the runs with fp8 estimate" not in printed
    res = json.loads((out / "sweep_quality.json").read_text())
    assert (out / "sweep_quality.png").stat().st_size > 0
    want = [("bf16", "bf16"), ("bf16", "fp8")] + ([] if no_fp8 else [("fp8", "fp8")])
    assert res["precisions"] == [list(p) for p in want]
    assert [r["kind"] for r in res["rows"]] == ["dense", "dense repeat"] + ["xattention"] * len(
        want
    )
    assert [(r["precision"], r["estimate_precision"]) for r in res["rows"][2:]] == want
    assert [(c["precision"], c["estimate_precision"]) for c in res["vs_bf16"]] == want[1:]
    assert res["vs_bf16"][0]["psnr"] == res["rows"][3]["psnr"]
    repeat = res["rows"][1]
    assert repeat["psnr"] == 100.0 and repeat["ssim"] == pytest.approx(1.0)
    sparse = res["rows"][2]
    assert sparse["precision"] == "bf16" and sparse["num_sparse_calls"] > 0
    assert 0.0 < sparse["sparse_density"] <= 1.0
    assert sparse["effective_density"] >= sparse["sparse_density"]
    assert res["recommended"]["label"] in {r["label"] for r in res["rows"][2:]}
    # the view scores the preset's own setting (it scored the default grid: raster / tile at the
    # --taus and --strides given, none of them the preset's hilbert, 0.97, budget 0.357)
    view = res["attention_view"]["per_capture"]
    assert {(r["order"], r["threshold"], r["stride"]) for r in view} == {("hilbert", 0.97, 8)}
    assert all(r["density"] == pytest.approx(0.357, abs=0.02) for r in view)  # its budget


def test_sweep_methods_loads_with_the_shared_measurement_helpers():
    methods = load_benchmark("sweep_methods")
    # one owner: both sweeps measure with the same helpers
    assert methods.Metrics is sq.Metrics and methods.conditions is sq.conditions


def test_sweep_methods_points_parse_to_exact_settings():
    """A point with modifiers is its own curve, named by the method and its modifiers."""
    methods = load_benchmark("sweep_methods")
    assert methods.parse_point("budget:0.35:w2:r3:hilbert") == {
        "method": "budget[w2:r3:hilbert]", "order": "hilbert", "knob": "budget", "value": 0.35,
        "warmup_steps": 2, "mask_refresh": 3,
    }  # fmt: skip
    assert methods.parse_point("uniform:0.9:s16") == {
        "method": "uniform[s16]", "order": "tile", "knob": "tau", "value": 0.9, "stride": 16,
    }  # fmt: skip
    for bad in ("nope:0.9", "uniform:0.9:x3", "budget", "budget:abc"):  # the last two: raw
        with pytest.raises(SystemExit, match="--points: "):  # ValueErrors once the model loaded
            methods.parse_point(bad)


def test_sweep_methods_quick_keeps_the_methods_asked_for():
    """--quick --methods hilbert budget ran the fixed quick set (uniform, cluster, budget,
    cal-density): hilbert dropped, a calibration added."""
    methods = load_benchmark("sweep_methods")
    a = methods.parse_args(["--out", "unused", "--quick", "--methods", "hilbert", "budget"])
    assert [(s["method"], s["value"]) for s in methods.settings(a)] == [
        ("hilbert", 0.9),
        ("budget", 0.35),
    ]
    a = methods.parse_args(["--out", "unused", "--quick"])
    assert [s["method"] for s in methods.settings(a)] == list(methods.QUICK)


def test_sweep_methods_plot_gives_every_curve_its_own_look(tmp_path, monkeypatch):
    """14 curves had 10 looks (colour cycle, one marker), and both panels said "held-out"
    also for the run whose choice was made on those videos."""
    import matplotlib.axes

    methods = load_benchmark("sweep_methods")
    looks, titles = [], []
    real_plot, real_title = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.set_title
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "plot",
        lambda ax, *a, **k: (
            looks.append((k.get("color"), k.get("marker"))),
            real_plot(ax, *a, **k),
        )[1],
    )
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "set_title",
        lambda ax, t, *a, **k: (titles.append(t), real_title(ax, t, *a, **k))[1],
    )
    rows = [{"kind": "xattention", "method": f"m{i:02d}", "effective_density": 0.3,
             "psnr": 30.0, "psnr_min": 25.0} for i in range(14)]  # fmt: skip
    methods.plot(rows, tmp_path / "p.png", "videos of conditions 8..23")
    assert len(looks) == 28 and len(set(looks[:14])) == 14
    assert titles == [
        "mean PSNR, videos of conditions 8..23",
        "worst video, videos of conditions 8..23",
    ]


def test_sweep_methods_whole_run_writes_every_setting(tmp_path):
    methods = load_benchmark("sweep_methods")
    out = tmp_path / "methods"
    rc = methods.main(["--out", str(out), "--random-weights", "--device", "cpu", "--frames", "5",
                       "--height", "32", "--width", "32", "--steps", "3", "--block-size", "16",
                       "--eval-videos", "1", "--calib-videos", "1", "--no-lpips", "--points",
                       "uniform:0.9", "cal-density:0.35", "cal-density:0.35:s4"])  # fmt: skip
    assert rc == 0
    res = json.loads((out / "sweep_methods.json").read_text())
    assert (out / "sweep_methods.png").stat().st_size > 0
    # s<N> on a calibrated point: calibrated at stride 8, refused by the file's stride check
    assert res["skipped"] == [] and set(res["calibration"]) == {"tile", "tile_s4"}
    assert not any("error" in c for c in res["calibration"].values())
    rows = {r["label"]: r for r in res["rows"]}
    cal_s4 = "cal-density[s4] density=0.35"
    assert set(rows) == {"dense", "uniform tau=0.9", "cal-density density=0.35", cal_s4}
    for label in ("uniform tau=0.9", "cal-density density=0.35", cal_s4):
        assert 0.0 < rows[label]["effective_density"] <= 1.0
        assert rows[label]["psnr"] > 0.0


def test_the_sweeps_default_to_the_gpu_only_where_there_is_one():
    methods = load_benchmark("sweep_methods")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert _args().device == want
    assert methods.parse_args(["--out", "unused"]).device == want


@pytest.mark.parametrize("extra, message", [
    (["--taus", "0.8", "1.5"], "threshold must be in (0, 1], got 1.5"),
    (["--refresh", "0"], "mask_refresh must be >= 1, got 0"),
    (["--orders", "zigzag"], "token_order must be one of"),
    (["--warmups", "-1"], "warmup_steps must be >= 0, got -1"),
])  # fmt: skip
def test_a_grid_value_no_config_takes_is_a_usage_error(extra, message, capsys):
    """They parsed and failed in make_config after the model load, the warm-up and both dense
    references (and every setting before the bad one), which the JSON then did not keep."""
    with pytest.raises(SystemExit) as exc:
        _args(*extra)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_an_error_mid_sweep_keeps_the_rows_measured(tmp_path, monkeypatch):
    """The JSON was written only at the very end: a crash or Ctrl-C part way through a long
    sweep (the full grid is 72 settings) left nothing on disk."""
    calls = []
    real = sq.generate

    def generate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # dense, dense repeat, then the first setting
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sq, "generate", generate)
    out = tmp_path / "sweep"
    with pytest.raises(KeyboardInterrupt):
        sq.main(["--out", str(out), "--random-weights", "--device", "cpu", "--frames", "5",
                 "--height", "32", "--width", "32", "--steps", "2", "--block-size", "16",
                 "--num-videos", "1", "--preset", "tiny-dit", "--no-lpips",
                 "--no-attention-view"])  # fmt: skip
    res = json.loads((out / "sweep_quality.json").read_text())
    assert [r["kind"] for r in res["rows"]] == ["dense", "dense repeat"]
    assert res["complete"] is False and res["error"] == "KeyboardInterrupt: "
    assert res["config"]["preset"] == "tiny-dit"
