"""CPU tests of ``benchmarks/bench_pipeline.py``'s projections (the timing needs a GPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ._benchmarks import load_benchmark

bench = load_benchmark("bench_pipeline")


def _rows(with_kernel: bool = True) -> list[dict]:
    methods = [("dense, diffusers default", 30.0), ("dense, cuDNN SDPA", 32.0)]
    if with_kernel:
        methods.append((bench.KERNEL_DENSE, 20.0))
    methods.append(("xattn ratio=0.3", 10.0))
    return [{"method": m, "s": s} for m, s in methods]


def test_projections_use_each_kind_of_dense_warmup_step():
    rows = _rows()
    bench.add_projections(rows, steps=50, warm=5)
    default, cudnn, kernel, sparse = rows
    assert default["projected_steps_s"] == 1500.0 and cudnn["projected_steps_s"] == 1600.0
    assert kernel["projected_steps_kernel_dense_s"] == 1000.0
    # stock warm-up: the faster SDPA row (default here); kernel warm-up: the kernel's row
    assert sparse["projected_steps_s"] == 5 * 30.0 + 45 * 10.0
    assert sparse["projected_steps_kernel_dense_s"] == 5 * 20.0 + 45 * 10.0
    assert sparse["projected_speedup_vs_default"] == pytest.approx(1500 / 600)
    assert sparse["projected_speedup_kernel_dense_vs_default"] == pytest.approx(1500 / 550)
    # "best dense" is the fastest dense row, the kernel's included
    assert sparse["speedup_vs_best_dense"] == pytest.approx(2.0)
    assert sparse["projected_speedup_kernel_dense_vs_best_dense"] == pytest.approx(1000 / 550)
    assert kernel["speedup_vs_default"] == pytest.approx(1.5)


def test_projections_without_the_kernel_row():
    rows = _rows(with_kernel=False)
    bench.add_projections(rows, steps=50, warm=5)
    sparse = rows[-1]
    assert sparse["projected_steps_s"] == 600.0
    assert "projected_steps_kernel_dense_s" not in sparse
    assert sparse["projected_speedup_vs_best_dense"] == pytest.approx(1500 / 600)


def test_projection_headers_and_rows_name_the_steps_projected():
    """--steps 30 --warmup-steps 3 projected 30 steps under headers and keys that said 50 / 5."""
    rows = _rows()
    bench.add_projections(rows, steps=30, warm=3)
    sparse = rows[-1]
    assert sparse["projected_steps_s"] == 3 * 30.0 + 27 * 10.0
    assert (sparse["projected_steps"], sparse["projected_warmup_steps"]) == (30, 3)
    columns = bench.projection_columns(30, 3)
    headers = [h for _, h, _ in columns]
    assert (
        headers[0] == "30 steps (3 stock dense) s" and headers[2] == "30 steps (3 kernel dense) s"
    )
    assert all(h.startswith("30") and "50" not in h for h in headers)
    assert {k for k, _, _ in columns} <= set(sparse)


def test_stock_warmup_steps_take_the_faster_sdpa_row_and_best_dense_counts_the_kernel():
    """cuDNN faster than diffusers' default: the stock dense steps are cuDNN's, and the
    best-dense projection divides by the fastest dense row, the kernel's (20 s)."""
    rows = [{"method": m, "s": s} for m, s in [("dense, diffusers default", 32.0),
            ("dense, cuDNN SDPA", 30.0), (bench.KERNEL_DENSE, 20.0), ("xattn ratio=0.3", 10.0)]]  # fmt: skip
    bench.add_projections(rows, steps=50, warm=5)
    sparse = rows[-1]
    assert sparse["projected_steps_s"] == 5 * 30.0 + 45 * 10.0
    assert sparse["projected_speedup_vs_best_dense"] == pytest.approx(50 * 20.0 / 600.0)
    assert sparse["projected_speedup_vs_default"] == pytest.approx(50 * 32.0 / 600.0)


def test_make_inputs_marks_the_first_text_slots_valid():
    inputs = bench.make_inputs(64, 48, 9, 3, device="cpu")
    assert inputs["encoder_attention_mask"].tolist() == [[True] * 3 + [False] * 253]
    assert inputs["hidden_states"].shape == (1, 16, 3, 8, 6)  # (frames - 1) / 4 + 1, pixels / 8


def test_resolution_rows_record_tokens_densities_and_a_kernel_dense_run_of_every_layer(
    monkeypatch,
):
    """run_resolution with its timings faked: tokens are the video's plus 256 text slots, each
    density lands under its own key, and the kernel-dense row runs all layers dense."""
    seen = {}

    def fake_xattention(model, inputs, cfg, repeats):
        if cfg.dense_kernel == "xattn" and cfg.dense_layers:
            seen["dense_layers"] = cfg.dense_layers
        return 1.0, {"effective_density": 0.35, "sparse_density": 0.3}

    class Model:
        transformer_blocks, single_transformer_blocks = [None] * 2, [None] * 3

        def __call__(self, **inputs):
            seen["mask"] = inputs["encoder_attention_mask"]

        def set_attention_backend(self, name):
            pass

        def reset_attention_backend(self):
            pass

    real_inputs = bench.make_inputs
    monkeypatch.setattr(bench, "make_inputs", lambda *a: real_inputs(*a, device="cpu"))
    monkeypatch.setattr(bench, "time_xattention", fake_xattention)
    monkeypatch.setattr(bench, "time_forward", lambda model, inputs, repeats: 2.0)
    monkeypatch.setitem(bench.RESOLUTIONS, "test", (64, 64))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    args = SimpleNamespace(frames=5, text_valid=3, ratios=[0.3], taus=[], precisions=["bf16"],
                           estimate_precisions=["auto"], stride=8, repeats=1, steps=50,
                           warmup_steps=5)  # fmt: skip
    sink = [{"method": "an earlier resolution's row"}]
    rows = bench.run_resolution(Model(), "test", args, sink=sink)
    assert sink[1:] == rows  # each row reached the run's list too (kept on an error)
    assert {r["tokens"] for r in rows} == {2 * 8 * 8 // 4 + 256}  # 2 latent frames, patch 2x2
    sparse = rows[-1]
    assert (sparse["effective_density"], sparse["sparse_density"]) == (0.35, 0.3)
    assert seen["dense_layers"] == (0, 1, 2, 3, 4)
    assert seen["mask"][0, :3].all() and not seen["mask"][0, 3:].any()


@pytest.mark.parametrize("name", ["bench_pipeline", "bench_pipeline_wan"])
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "4"], "--warmup-steps must be between 0 and --steps (4)"),
        (["--warmup-steps", "-1"], "--warmup-steps must be between 0 and --steps (50)"),
        (["--steps", "0", "--warmup-steps", "0"], "--steps and --repeats must be at least 1"),
    ],
)
def test_a_projection_with_more_warmup_than_steps_is_a_usage_error(name, argv, message, capsys):
    """--steps 4 with the default 5 warm-up steps projected a sparse row slower than dense
    (a negative count of sparse steps), after the whole GPU run."""
    script = bench if name == "bench_pipeline" else load_benchmark(name)
    with pytest.raises(SystemExit) as e:
        script.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("name", ["bench_pipeline", "bench_pipeline_wan"])
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--stride", "3"], "stride must be one of (2, 4, 8, 16) and divide block_size=128"),
        (["--ratios", "1.5"], "ratio must be in (0, 1], got 1.5"),
        (["--ratios", "0"], "ratio must be in (0, 1], got 0.0"),
    ],
)
def test_a_sparse_setting_the_config_refuses_is_a_usage_error(name, argv, message, capsys):
    """They passed the argument checks and failed at the first sparse row, after the 12.8 B
    model was built and its dense rows timed (and, before the rows reached the run's list, with
    no JSON written)."""
    script = bench if name == "bench_pipeline" else load_benchmark(name)
    with pytest.raises(SystemExit) as e:
        script.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("precisions", [["fp8"], ["bf16", "--estimate-precisions", "fp8"]])
def test_fp8_rows_on_a_gpu_before_hopper_stop_before_the_model_is_built(monkeypatch, precisions):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100")
    monkeypatch.setattr(bench, "build_transformer", lambda *a: pytest.fail("model built"))
    with pytest.raises(SystemExit, match="fp8 rows need an sm90\\+ GPU .* NVIDIA A100"):
        bench.main(["--precisions", *precisions])


@pytest.mark.parametrize("name, argv, message", [
    ("bench_pipeline", ["--text-valid", "-5"], "--text-valid must be in 1..256, got -5"),
    ("bench_pipeline", ["--text-valid", "300"], "--text-valid must be in 1..256, got 300"),
    ("bench_pipeline", ["--frames", "0"], "--frames must be 4k+1 (1, 5, ..., 129), got 0"),
    ("bench_pipeline_wan", ["--frames", "80"], "--frames must be 4k+1 and --height / --width"),
    ("bench_pipeline_wan", ["--height", "721"], "--frames must be 4k+1 and --height / --width"),
])  # fmt: skip
def test_input_sizes_the_model_cannot_take_are_usage_errors(name, argv, message, capsys):
    """--text-valid -5 marked 251 of 256 text slots valid (a slice from the end) and was
    recorded as given; --frames 0 failed inside the 12.8 B model after it was built."""
    script = bench if name == "bench_pipeline" else load_benchmark(name)
    with pytest.raises(SystemExit) as e:
        script.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
