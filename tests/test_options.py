"""``generate``'s options checks through the Python API (the CLI refuses most of these values in
its parser already): what ``resolve_options`` refuses, the default dtype per device, and which
CUDA device a process gets (CUDA mocked: two visible GPUs)."""

from __future__ import annotations

import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import xattn_video as xv
from xattn_video.pipelines import options
from xattn_video.pipelines.options import GenerateOptions, SetupError, resolve_options


def _opts(**kw) -> GenerateOptions:
    return GenerateOptions(model="tiny-hunyuan", prompts="p.txt", out="out", **kw)


@pytest.mark.parametrize("kw, message", [
    ({"ulysses": 0}, "ulysses must be a positive integer"),
    ({"ulysses": True}, "ulysses must be a positive integer"),
    ({"dtype": "float64"}, "dtype must be one of"),
    ({"height": 24}, "height must be a positive multiple of 16"),  # a multiple of 8 only
    ({"width": 8}, "width must be a positive multiple of 16"),
    ({"frames": True}, "frames must be a positive integer"),
    ({"steps": True}, "steps must be a positive integer"),
    ({"seed": True}, "seed must be an integer"),
    ({"frames": 7}, r"frames must be 4k\+1"),
    ({"attention": "dense", "config": xv.XAttentionConfig()}, "config was given for a dense run"),
    ({"model_path": "a", "model_id": "b"}, "either --model-path or --model-id"),
    ({"device": "nonsense:x"}, "is not a torch device"),
    # numpy ints passed every check and crashed writing run.json after the pipeline loaded;
    # 2.0 failed slicing the prompts; True was 1
    ({"limit": np.int64(2)}, r"limit must be a positive integer, got np.int64\(2\)"),
    ({"limit": 2.0}, "limit must be a positive integer, got 2.0"),
    ({"limit": 0}, "limit must be a positive integer, got 0"),
    ({"sample": True}, "sample must be a positive integer, got True"),
])  # fmt: skip
def test_resolve_options_refuses(kw, message):
    with pytest.raises(SetupError, match=message):
        resolve_options(_opts(**kw))


@pytest.mark.parametrize("cmd", [["generate", "--model", "tiny", "--prompts", "p.txt"],
                                 ["compare", "a", "b"], ["demo"], ["calibrate", "--model", "tiny"]])  # fmt: skip
def test_an_empty_out_is_a_usage_error(cmd, capsys, tmp_path, monkeypatch):
    """--out "$OUT" with OUT unset was Path(""), the working directory: generate wrote .lock,
    run.json and 00000/ there (exit 0), compare its report."""
    from xattn_video.pipelines.cli import main

    monkeypatch.chdir(tmp_path)  # what a regression would write, it writes here

    with pytest.raises(SystemExit) as e:
        main([*cmd, "--out", " "])
    assert e.value.code == 2 and "argument --out: is empty" in capsys.readouterr().err
    with pytest.raises(SetupError, match="out is empty"):
        resolve_options(GenerateOptions(model="tiny", prompts="p.txt", out=""))


@pytest.mark.parametrize("name", options.SIZE_FIELDS)
def test_resolve_options_rejects_zero_instead_of_using_the_default(name):
    with pytest.raises(SetupError, match=f"{name} must be a positive integer, got 0"):
        resolve_options(_opts(**{name: 0}))


def test_resolve_options_fills_in_the_models_sizes_and_preset():
    spec, resolved = resolve_options(_opts(attention="xattn", height=48))
    assert resolved["height"] == 48 and resolved["width"] == spec.width
    assert resolved["config"] == xv.XAttentionConfig.from_preset(spec.preset)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_options(_opts())[1]["config"] is None  # dense


@pytest.mark.parametrize("device, want", [
    ("cuda", "bfloat16"), (torch.device("cuda:0"), "bfloat16"), ("cuda:1", "bfloat16"),
    ("cpu", "float32"), (torch.device("cpu"), "float32"),
])  # fmt: skip
def test_the_default_dtype_is_bf16_on_every_cuda_device(device, want):
    assert options.dtype_name_for(None, device) == want
    assert options.dtype_name_for("float16", device) == "float16"


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.parametrize("asked, process, want", [
    ("cuda", "cuda:1", "cuda:1"),  # "cuda" under a launcher: this process's GPU
    ("cuda:0", "cuda:1", "cuda:0"),  # an index is taken as given
    (None, "cuda:1", "cuda:1"),
    ("cpu", "cuda:1", "cpu"),
])  # fmt: skip
def test_the_device_a_process_gets(two_gpus, asked, process, want):
    state = SimpleNamespace(device=process)
    assert options.resolve_device(_opts(device=asked), state) == torch.device(want)


def test_a_gpu_index_past_the_visible_ones_is_refused(two_gpus):
    options.check_device(torch.device("cuda:1"), "cuda:1")
    with pytest.raises(SetupError, match="device 'cuda:2': only 2 CUDA GPU"):
        options.check_device(torch.device("cuda:2"), "cuda:2")
    # no --device: the launcher's device is named, not "None"
    with pytest.raises(SetupError, match=r"device cuda:2 \(the launcher's; no --device given\)"):
        options.check_device(torch.device("cuda:2"), None)


@pytest.mark.parametrize("fields, want", [
    ({"warmup_steps": 4}, "warmup_steps=4 >= steps=4"),
    ({"warmup_steps": 2, "dense_last_steps": 2}, "warmup_steps=2 + dense_last_steps=2 >= steps=4"),
    ({"warmup_steps": 0, "dense_last_steps": 9}, "warmup_steps=0 + dense_last_steps=9 >= steps=4"),
])  # fmt: skip
def test_a_config_dense_at_every_step_is_warned_about(fields, want):
    """dense_last_steps was left out: an xattn run dense at every step ran without a word."""
    with pytest.warns(UserWarning, match=re.escape(want + ": every step runs dense attention")):
        resolve_options(_opts(attention="xattn", steps=4, config=xv.XAttentionConfig(**fields)))


def test_a_config_sparse_at_one_step_is_not_warned_about():
    cfg = xv.XAttentionConfig(warmup_steps=2, dense_last_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_options(_opts(attention="xattn", steps=4, config=cfg))
