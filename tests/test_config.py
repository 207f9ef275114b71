"""``XAttentionConfig``: field validation (types and ranges), serialisation, presets, docs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from xattn_video.config import PRESETS, XAttentionConfig, config_fields, field_docs


def test_defaults_and_every_preset_are_valid():
    """The defaults users read in the README and the field docs (the paper's threshold 0.9,
    S=8, 128 blocks and 5 of 50 warm-up steps): only ``threshold`` was pinned, and a bare
    config without its dense warm-up passed every test."""
    assert dataclasses.asdict(XAttentionConfig()) == dict(
        threshold=0.9, stride=8, block_size=128, selection="threshold", ratio=0.3,
        warmup_steps=5, dense_last_steps=0, dense_layers=(), text_policy="dense",
        token_order="raster", tile_size=(2, 8, 8), max_density=1.0, thresholds_file="",
        mask_refresh=1, backend="auto", precision="bf16", estimate_precision="auto",
        estimate_kernel="auto", dense_kernel="stock", collect_stats=True, auto_dense=True,
    )  # fmt: skip
    for name in PRESETS:
        assert isinstance(XAttentionConfig.from_preset(name), XAttentionConfig)
    assert XAttentionConfig.from_preset("HunyuanVideo", warmup_steps=2).warmup_steps == 2
    with pytest.raises(ValueError, match="unknown model preset 'bogus'"):
        XAttentionConfig.from_preset("bogus")


@pytest.mark.parametrize(
    "field, value",
    [
        ("warmup_steps", 1.5),
        ("warmup_steps", "3"),
        ("warmup_steps", True),
        ("dense_last_steps", 2.0),
        ("mask_refresh", "2"),
        ("block_size", 128.0),
        ("stride", None),
        ("threshold", "0.9"),
        ("threshold", True),
        ("ratio", None),
        ("collect_stats", "no"),
        ("collect_stats", 1),
        ("dense_layers", (1.5,)),
        ("dense_layers", "1"),
        ("dense_layers", (True,)),
        ("tile_size", (2.0, 8, 8)),
        ("backend", 1),
        ("token_order", None),
    ],
)
def test_wrong_types_raise_value_error_naming_the_field(field, value):
    """Issue 11: warmup_steps=1.5 / '3' and collect_stats='no' were accepted."""
    with pytest.raises(ValueError, match=f"^{field} must be"):
        XAttentionConfig(**{field: value})


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(threshold=0.0), "threshold"),
        (dict(threshold=1.5), "threshold"),
        (dict(ratio=0.0), "ratio"),
        (dict(block_size=48), "block_size"),
        (dict(stride=3), "stride"),
        (dict(stride=32, block_size=16), "stride"),
        (dict(selection="top"), "selection"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(dense_last_steps=-2), "dense_last_steps"),
        (dict(mask_refresh=0), "mask_refresh"),
        (dict(text_policy="none"), "text_policy"),
        (dict(token_order="zigzag"), "token_order"),
        (dict(tile_size=(2, 8)), "tile_size"),
        (dict(tile_size=(0, 8, 8)), "tile_size"),
        (dict(backend="cuda"), "backend"),
        (dict(dense_layers=(-1,)), "dense_layers"),
        # ints too large for a float: the field's ValueError (an OverflowError before)
        (dict(threshold=10**400), r"threshold must be in \(0, 1\], got inf"),
        (dict(ratio=-(10**400)), "ratio"),
        (dict(max_density=10**400), "max_density"),
    ],
)
def test_out_of_range_values_raise_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        XAttentionConfig(**kw)


def test_numpy_scalars_and_lists_are_normalised():
    cfg = XAttentionConfig(
        warmup_steps=np.int64(3), threshold=np.float32(0.5), ratio=1, dense_layers=[2, 0],
        tile_size=[1, 4, 4], auto_dense=np.False_,
    )  # fmt: skip
    assert type(cfg.auto_dense) is bool and cfg.auto_dense is False  # np.bool_ was refused
    assert type(cfg.warmup_steps) is int and cfg.warmup_steps == 3
    assert type(cfg.threshold) is float and cfg.threshold == 0.5
    assert type(cfg.ratio) is float and cfg.ratio == 1.0
    assert cfg.dense_layers == (2, 0) and cfg.tile_size == (1, 4, 4)
    json.dumps(cfg.to_dict())  # plain Python types only


def test_dict_round_trip_and_unknown_fields():
    cfg = XAttentionConfig(threshold=0.8, dense_layers=(1, 3), token_order="tile")
    d = json.loads(json.dumps(cfg.to_dict()))
    assert XAttentionConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match=r"unknown XAttentionConfig fields: \['bogus'\]"):
        XAttentionConfig.from_dict({**d, "bogus": 1})


def test_frozen_and_replace_validates_again():
    cfg = XAttentionConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.threshold = 0.5
    assert cfg.replace(threshold=0.5).threshold == 0.5 and cfg.threshold == 0.9
    with pytest.raises(ValueError, match="warmup_steps"):
        cfg.replace(warmup_steps=0.5)


def test_every_field_has_a_docstring():
    docs = field_docs()
    missing = [f.name for f in config_fields() if not docs.get(f.name)]
    assert missing == []


@pytest.mark.parametrize("field, value, want", [
    ("token_order", "tiles", r"token_order must be one of .* got 'tiles'"),
    ("text_policy", "sparsest", r"text_policy must be one of .* got 'sparsest'"),
    ("tile_size", (2, 8), r"tile_size must be 3 positive ints"),
])  # fmt: skip
def test_a_bad_field_is_named_before_the_thresholds_file_is_compared(field, value, want):
    """A misspelt token_order with a thresholds file was reported as the file having been
    "calibrated with token_order='raster'"; the file's check now comes after the fields'."""
    from pathlib import Path

    thr = str(Path(__file__).resolve().parent / "data" / "thresholds_tiny.json")
    XAttentionConfig(stride=4, block_size=16, thresholds_file=thr)  # matches the file
    with pytest.raises(ValueError, match=want):
        XAttentionConfig(stride=4, block_size=16, thresholds_file=thr, **{field: value})
