"""benchmarks/goals.py reads issue 8's goals off benchmark JSON: each value pinned on a small
hand-made file (ratios to that file's first cuDNN row), the default estimate taken from the
file's ``auto_estimate_of_bf16``, and the Markdown cells' met / missed text."""

from __future__ import annotations

import json

import pytest

from ._benchmarks import load_benchmark

goals = load_benchmark("goals")


def _attention(auto: str | None = "fp8", n: int = 67576) -> dict:
    rows = [
        ("sdpa cuDNN dense", 100.0, 1.0),
        ("ours sparse d=1.0", 90.0, 1.0),
        ("ours sparse d=0.1", 9.5, 0.1),
        ("ours sparse fp8 d=1.0", 60.0, 1.0),
        ("ours sparse fp8 d=0.3", 20.0, 0.3),
        ("ours sparse fp8 d=0.1", 8.0, 0.1),
        ("ours sparse fp8 hopper d=0.1", 50.0, 0.1),  # another kernel: not the goal's row
        ("ours estimate S=8", 8.0, 0.0625),
        ("ours estimate fp8 S=8", 4.0, 0.0625),
        ("ours estimate S=16", 5.0, 0.03125),
        ("ours estimate fp8 S=16", 2.5, 0.03125),
        ("ours whole op xattention ratio=0.3 S=8", 40.0, 0.3),
        ("ours whole op xattention bf16 + fp8 estimate ratio=0.3 S=8", 32.0, 0.3),
        ("ours whole op xattention fp8 + fp8 estimate ratio=0.3 S=8", 25.0, 0.3),
        ("sdpa cuDNN dense, again at the end", 50.0, 1.0),
    ]
    env = {"gpu": "NVIDIA H200", "git_sha": "abc1234"}
    if auto is not None:
        env["auto_estimate_of_bf16"] = {"64": auto, "128": auto}
    return {
        "environment": env,
        "config": {"seq": [67576]},
        "rows": [{"n": n, "method": m, "ms": ms, "density": d} for m, ms, d in rows],
        "complete": True,
    }


def test_attention_values_are_ratios_to_the_first_cudnn_row():
    got = goals.attention_goals(_attention())
    assert got["bf16_sparse_min"] == pytest.approx(min(100 / 90, 0.1 * 100 / 9.5))
    assert got["fp8_sparse_min_0.3_1.0"] == pytest.approx(0.3 * 100 / 20)  # 1.5 < 100/60
    assert got["fp8_sparse_0.1"] == pytest.approx(0.1 * 100 / 8)
    assert got["estimate_S8"] == pytest.approx(0.04)  # the fp8 estimate: the file's default
    assert got["estimate_S16"] == pytest.approx(0.025)
    assert got["estimate_S8_bf16"] == pytest.approx(0.08)
    assert got["whole_op_bf16"] == pytest.approx(100 / 32)
    assert got["whole_op_all_bf16"] == pytest.approx(100 / 40)
    assert got["whole_op_fp8"] == pytest.approx(4.0)


def test_the_default_follows_the_files_record_and_is_unknown_without_it():
    bf16 = goals.attention_goals(_attention("bf16"))
    assert bf16["estimate_S8"] == pytest.approx(0.08)
    assert bf16["whole_op_bf16"] == pytest.approx(100 / 40)
    old = goals.attention_goals(_attention(None))
    assert old["estimate_S8"] is None and old["whole_op_bf16"] is None
    assert old["whole_op_bf16_fp8_estimate"] == pytest.approx(100 / 32)


def test_a_file_without_cudnn_is_refused():
    data = _attention()
    data["rows"] = data["rows"][1:-1]
    with pytest.raises(ValueError, match="cuDNN"):
        goals.attention_goals(data)


def test_cells_say_met_or_by_how_much_missed():
    assert goals.cell(1.5, 1.5, "min", "{:.2f}x") == "1.50x met"
    assert goals.cell(1.35, 1.5, "min", "{:.2f}x") == "1.35x **missed** by 10.0%"
    assert goals.cell(0.06, 0.05, "max", "{:.1%}") == "6.0% **missed** by 20.0%"
    assert goals.cell(None, 1.0, "min", "{:.2f}x") == "-"
    assert goals.cell(3.1, None, "min", "{:.2f}x") == "3.10x"


def test_pipeline_projection_per_estimate():
    rows = [
        ("dense, diffusers default", 1.0),
        ("xattn ratio=0.3 bf16 + fp8 estimate", 2.7),
        ("xattn ratio=0.3", 2.6),
        ("xattn ratio=0.3 fp8 + fp8 estimate", 3.1),
    ]
    data = {
        "environment": {"auto_estimate_of_bf16": {"128": "fp8"}},
        "config": {"ratios": [0.3]},
        "rows": [{"method": m, "projected_speedup_vs_default": v} for m, v in rows],
    }
    assert goals.pipeline_goals(data) == {
        "pipeline_default": 2.7,
        "pipeline_all_bf16": 2.6,
        "pipeline_bf16_fp8_estimate": 2.7,
        "pipeline_fp8": 3.1,
    }


def test_main_prints_one_column_per_file(tmp_path, capsys):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(_attention()))
    out_json = tmp_path / "v.json"
    assert goals.main([str(path), "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "| 67,576 tokens (NVIDIA H200, git abc1234) |" in text
    assert "| fp8 sparse, same, density 0.1 | ≥ 1.50x | 1.25x **missed** by 16.7% |" in text
    assert "pipeline" not in text  # no pipeline file: its goals' rows are left out
    (saved,) = json.loads(out_json.read_text())
    assert (saved["file"], saved["title"]) == (
        str(path),
        "67,576 tokens (NVIDIA H200, git abc1234)",
    )
    assert saved["values"]["whole_op_fp8"] == pytest.approx(4.0)


def test_each_length_and_resolution_of_a_file_is_its_own_column(tmp_path, capsys):
    """A default run holds two lengths (two resolutions, two ratios): only the first length's
    rows were read, under a title naming both, and the pipeline goal at 544p ratio 0.5."""
    a, b = _attention(n=119056), _attention(n=67576)
    for row in b["rows"]:
        row["ms"] = row["ms"] / 2 if row["method"] == "ours sparse fp8 d=0.1" else row["ms"]
    path = tmp_path / "a.json"
    path.write_text(json.dumps({**a, "rows": a["rows"] + b["rows"]}))
    pipe = {
        "environment": {"auto_estimate_of_bf16": {"128": "fp8"}},
        "rows": [
            {"res": res, "method": f"xattn ratio={r} bf16 + fp8 estimate",
             "projected_speedup_vs_default": v}
            for res, r, v in (("544p", 0.5, 1.5), ("544p", 0.3, 2.2), ("720p", 0.5, 2.0),
                              ("720p", 0.3, 2.6))
        ] + [{"res": res, "method": "dense, diffusers default"} for res in ("544p", "720p")],
    }  # fmt: skip
    pipe_path = tmp_path / "p.json"
    pipe_path.write_text(json.dumps(pipe))
    out = tmp_path / "v.json"
    assert goals.main([str(path), "--pipeline", str(pipe_path), "--json", str(out)]) == 0
    saved = {c["title"]: c["values"] for c in json.loads(out.read_text())}
    assert list(saved) == [
        "119,056 tokens (NVIDIA H200, git abc1234)", "67,576 tokens (NVIDIA H200, git abc1234)",
        "544p (?, git ?)", "720p (?, git ?)",
    ]  # fmt: skip
    fp8 = [v["fp8_sparse_0.1"] for v in saved.values() if "fp8_sparse_0.1" in v]
    assert fp8 == pytest.approx([1.25, 2.5])
    assert [v["pipeline_default"] for k, v in saved.items() if "p (" in k] == [2.2, 2.6]


def test_main_refuses_files_it_cannot_read(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="cannot read"):
        goals.main([str(bad)])
    bad.write_text("[]")
    with pytest.raises(SystemExit, match="not a benchmark JSON"):
        goals.main([str(bad)])


def test_rows_table_shows_each_row_against_its_lengths_cudnn(tmp_path, capsys):
    data = _attention()
    data["rows"][1]["tflops"] = 123.4
    lines = goals.rows_table(data).splitlines()
    assert lines[2] == "| 67,576 | sdpa cuDNN dense | 100.0 | 1.000 | 1.00 |  | 1.00 |"
    assert lines[3] == "| 67,576 | ours sparse d=1.0 | 90.00 | 0.900 | 1.00 | 123 | 1.11 |"
    assert "| 67,576 | ours estimate S=8 | 8.00 | 0.080 | 0.06 |  |  |" in lines
    assert (
        "| 67,576 | ours whole op xattention fp8 + fp8 estimate ratio=0.3 S=8 | 25.00 | 0.250 "
        "| 0.30 |  | **4.00x faster** |"
    ) in lines
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    assert goals.main(["--rows", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[3] == lines[3]
    with pytest.raises(SystemExit):
        goals.main(["--rows", "--pipeline", str(path)])


def test_two_runs_of_one_commit_keep_their_own_values_in_the_json(tmp_path):
    """--json was a dict keyed by the column title (length, GPU, SHA): a second run of the same
    commit on the same GPU overwrote the first."""
    a, b = _attention(), _attention()
    b["rows"][0]["ms"] = 200.0  # cuDNN twice as slow: every ratio doubles
    paths = [tmp_path / "a.json", tmp_path / "a_run2.json"]
    for path, data in zip(paths, (a, b), strict=True):
        path.write_text(json.dumps(data))
    out = tmp_path / "v.json"
    assert goals.main([*map(str, paths), "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert [c["file"] for c in saved] == list(map(str, paths))
    assert saved[0]["title"] == saved[1]["title"]
    first, second = (c["values"]["whole_op_fp8"] for c in saved)
    assert second == pytest.approx(2 * first)


def test_the_default_estimate_is_read_at_the_files_head_dim():
    """A --dim 32 run on Hopper records {"32": "bf16", "128": "fp8"}; the default was read at
    128 whatever the file's dim, so its fp8 estimate rows were called the default."""
    data = _attention()
    data["environment"]["auto_estimate_of_bf16"] = {"32": "bf16", "128": "fp8"}
    data["config"] = {"dim": 32}
    values = goals.attention_goals(data)
    assert values["estimate_S8"] == values["estimate_S8_bf16"]
    assert values["whole_op_bf16"] == values["whole_op_all_bf16"]
    data["config"] = {"dim": 128}
    assert (
        goals.attention_goals(data)["estimate_S8"] == goals.attention_goals(data)["estimate_S8_fp8"]
    )


def test_a_file_given_in_the_wrong_role_is_refused(tmp_path):
    """An attention file given as --pipeline printed an empty column titled "None (...)"; a
    pipeline file given to --rows died with KeyError: 'ms'."""
    attention = tmp_path / "a.json"
    attention.write_text(json.dumps(_attention()))
    pipeline = tmp_path / "p.json"
    pipeline.write_text(json.dumps({"rows": [{"res": "720p", "method": "xattn ratio=0.3"}]}))
    with pytest.raises(SystemExit, match="not a bench_pipeline.py file"):
        goals.main(["--pipeline", str(attention)])
    with pytest.raises(SystemExit, match="not a bench_attention.py file"):
        goals.main(["--rows", str(pipeline)])
