"""XAttention on Wan VACE (``WanVACETransformer3DModel``): the video blocks' and the VACE
blocks' self-attention are both targets, on a tiny random-weight ``WanVACEPipeline``."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

import xattn_video as xv
from xattn_video.processors import WanXAttnProcessor
from xattn_video.targets import model_family, target_layers

from ._block_masks import pinned
from ._tiny_models import one_thread, tiny_wan_vace_pipeline, wan_inputs  # noqa: F401
from ._tiny_models import tiny_cfg as cfg_


def run(pipe, **kw) -> torch.Tensor:
    return pipe(**wan_inputs(**kw)).frames


def test_vace_blocks_are_targets_after_the_video_blocks():
    """Before, WanVACETransformer3DModel was refused by name although its control branch is
    Wan self-attention over the video's own token grid."""
    pipe = tiny_wan_vace_pipeline()
    tr = pipe.transformer
    assert model_family(tr) == "wan"
    assert [(path, layer) for path, _, layer in target_layers(tr)] == [
        ("blocks.0.attn1", 0), ("blocks.1.attn1", 1),
        ("vace_blocks.0.attn1", 2), ("vace_blocks.1.attn1", 3),
    ]  # fmt: skip
    before = dict(tr.attn_processors)
    with xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=1)):
        procs = tr.attn_processors
        for name, proc in procs.items():
            want = WanXAttnProcessor if ".attn1." in name else WanAttnProcessor
            assert type(proc) is want, name
        layers = {name: procs[name]._layer_index(tr.get_submodule(name[: -len(".processor")]))
                  for name in procs if ".attn1." in name}  # fmt: skip
        assert layers == {
            "blocks.0.attn1.processor": 0, "blocks.1.attn1.processor": 1,
            "vace_blocks.0.attn1.processor": 2, "vace_blocks.1.attn1.processor": 3,
        }  # fmt: skip
    assert all(tr.attn_processors[k] is v for k, v in before.items())


def test_vace_warmup_covering_all_steps_is_bit_identical():
    pipe = tiny_wan_vace_pipeline()
    ref = run(pipe, steps=2)
    with xv.apply_xattention(pipe, cfg_(threshold=0.3, warmup_steps=2)) as handle:
        out = run(pipe, steps=2)
        assert handle.stats.summary()["num_sparse_calls"] == 0
    assert torch.equal(out, ref)


@pytest.mark.parametrize(
    "kw",
    [dict(threshold=0.5), dict(threshold=0.5, token_order="tile", tile_size=(1, 4, 4))],
    ids=["raster", "tile"],
)
def test_vace_sparse_output_equals_stock_attention_with_the_same_mask(monkeypatch, kw):
    """CFG, one dense warm-up step of three: every sparse call of the video blocks and the VACE
    blocks equals stock attention restricted to its block mask (tolerance rule), and the stats
    count the VACE layers."""
    pipe = tiny_wan_vace_pipeline()
    summary = pinned(monkeypatch, pipe, cfg_(warmup_steps=1, **kw), lambda d: run(pipe, steps=3))
    assert 0.0 < summary["sparse_density"] < 1.0
    assert summary["num_sparse_calls"] == 2 * 4 * 2  # 2 sparse steps x 4 layers x 2 branches
    assert sorted(row["layer"] for row in summary["per_layer"]) == [0, 1, 2, 3]


def test_vace_context_parallelism_is_refused_by_name():
    pipe = tiny_wan_vace_pipeline(num_layers=1)
    with pytest.raises(ValueError, match="WanVACETransformer3DModel"):
        xv.context_parallel_plan(pipe.transformer)
