"""The README quickstart, line for line, on a tiny HunyuanVideo checkpoint saved to a temp dir.

Real weights cannot be downloaded here; this runs the same loading code (``from_pretrained`` of
the transformer subfolder, then the pipeline with it) and both XAttention routes on a
checkpoint written with ``save_pretrained``.
"""

import numpy as np
import pytest
import torch
from diffusers import HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

import xattn_video as xv
from xattn_video.pipelines.models import MODELS, build_tiny_hunyuan_pipeline

from ._block_masks import pinned

CALL = dict(height=64, width=64, num_frames=9, num_inference_steps=3, output_type="np",
            **MODELS["tiny-hunyuan"].call_kwargs)  # fmt: skip
CFG = xv.XAttentionConfig(threshold=0.5, stride=4, block_size=16, warmup_steps=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-hunyuanvideo")
    build_tiny_hunyuan_pipeline(seed=0).save_pretrained(path)
    return path


def _load(model_id):
    transformer = HunyuanVideoTransformer3DModel.from_pretrained(
        model_id, subfolder="transformer", torch_dtype=torch.float32
    )
    return HunyuanVideoPipeline.from_pretrained(
        model_id, transformer=transformer, torch_dtype=torch.float32
    )


def _run(pipe):
    g = torch.Generator().manual_seed(0)
    return pipe("A cat walks on the grass, realistic style.", generator=g, **CALL).frames[0]


def test_apply_xattention_route(checkpoint, monkeypatch):
    pipe = _load(checkpoint)
    dense = _run(pipe)
    handle = xv.apply_xattention(pipe, CFG)
    sparse = _run(pipe)
    summary = handle.stats.summary()
    handle.remove()
    assert sparse.shape == dense.shape
    assert summary["num_dense_calls"] > 0 and summary["num_sparse_calls"] > 0
    assert 0.0 < summary["sparse_density"] < 1.0
    assert np.array_equal(_run(pipe), dense)  # stock processors back, bit-identical
    # text encoders and VAE included, the video equals the stock pipeline whose attention is
    # restricted to the block masks XAttention used (tolerance rule)
    pinned(monkeypatch, pipe, CFG, lambda dtype: torch.from_numpy(_run(pipe)))


def test_set_attn_processor_route(checkpoint):
    pipe = _load(checkpoint)
    with xv.apply_xattention(pipe, CFG):
        applied = _run(pipe)
    procs = xv.xattention_processors(pipe.transformer, CFG, pipe=pipe)
    pipe.transformer.set_attn_processor(procs)
    assert np.array_equal(_run(pipe), applied)  # the same video as the pinned apply route
    assert procs.stats.summary()["num_sparse_calls"] > 0


def test_every_public_name_is_listed_by_dir():
    """The names imported lazily (apply_xattention, xattention_processors, XAttentionHandle,
    context_parallel_plan) were missing from dir(xattn_video), so from tab completion."""
    import xattn_video as xv

    assert set(xv.__all__) <= set(dir(xv))
    assert all(getattr(xv, name) is not None for name in xv.__all__)
