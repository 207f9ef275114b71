"""The one tiny-model factory (``pipelines/tiny/factory.py``): weights depend only on the seed,
the caller's RNG is untouched, the CLI pipelines and the tests build the same architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xattn_video.pipelines.models import MODELS, load_pipeline
from xattn_video.pipelines.tiny import factory

from ._tiny_models import tiny_hv_transformer, tiny_wan_transformer

pytestmark = pytest.mark.usefixtures("one_thread")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


BUILDERS = {
    "hunyuan_transformer": lambda seed: factory.hunyuan_transformer(seed, num_layers=1),
    "framepack_transformer": factory.framepack_transformer,
    "wan_transformer": lambda seed: factory.wan_transformer(seed, num_layers=1, freq_dim=32),
    "wan_vae": factory.wan_vae,
    "random_tiny_pipeline": lambda seed: (
        factory.random_tiny_pipeline(
            seed, num_layers=1, num_single_layers=1, num_attention_heads=1
        ).transformer
    ),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_weights_depend_only_on_the_seed_and_leave_the_global_rng(name):
    build = BUILDERS[name]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build(0)
    assert torch.equal(torch.rand(3), expected)  # caller's RNG stream untouched
    torch.manual_seed(999)  # a different global state must not matter
    assert _same_weights(a, build(0))
    assert not _same_weights(a, build(1))
    assert not a.training


def test_seed_none_draws_from_the_current_rng():
    torch.manual_seed(5)
    a = factory.wan_vae(None)
    torch.manual_seed(5)
    assert _same_weights(a, factory.wan_vae(None))
    assert _same_weights(a, factory.wan_vae(5))


def test_cli_pipeline_transformer_is_the_factory_transformer():
    """``tiny-hunyuan`` builds its transformer first from the seed: the same weights as the bare
    factory transformer with the CLI's depth (2 + 2 blocks)."""
    pipe = load_pipeline("tiny-hunyuan", device="cpu", dtype=torch.float32, seed=3)
    assert _same_weights(pipe.transformer, factory.hunyuan_transformer(3))
    assert pipe.transformer.config.num_layers == 2
    assert pipe.transformer.config.num_single_layers == 2


def test_test_helpers_are_the_factory():
    assert _same_weights(tiny_hv_transformer(2), factory.hunyuan_transformer(2, num_layers=1))
    assert _same_weights(
        tiny_wan_transformer(2, head_dim=64),
        factory.wan_transformer(2, head_dim=64, freq_dim=32),
    )


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="head_dim"):
        factory.hunyuan_transformer(0, head_dim=32)
    with pytest.raises(ValueError, match="init"):
        factory.build_tiny_pipeline(0, init="xavier")


def test_tiny_hunyuan_empty_prompt_has_a_valid_token_and_a_finite_video():
    """The char-level Llama tokenizer starts every sequence with ``<s>`` like the real one: an
    empty prompt (or ``negative_prompt=""``) keeps one valid text token, not an all-False mask
    that HunyuanVideo's token refiner would average over (0 / 0 = NaN video)."""
    pipe = factory.build_tiny_hunyuan_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    spec = MODELS["tiny-hunyuan"]
    mask = pipe.encode_prompt(
        "", prompt_template=spec.call_kwargs["prompt_template"], max_sequence_length=32
    )[2]
    assert tuple(mask.shape) == (1, 32)
    assert int(mask.sum()) == 1  # <s>
    kw = dict(
        height=spec.height,
        width=spec.width,
        num_frames=spec.frames,
        num_inference_steps=2,
        output_type="np",
        **spec.call_kwargs,
    )
    gen = torch.Generator().manual_seed(0)
    assert np.isfinite(pipe("", generator=gen, **kw).frames).all()
    gen = torch.Generator().manual_seed(0)
    out = pipe("a cat", negative_prompt="", true_cfg_scale=2.0, generator=gen, **kw).frames
    assert np.isfinite(out).all()
    tok = pipe.tokenizer
    assert tok("").input_ids == [tok.bos_token_id]
    assert tok("ab").input_ids == [tok.bos_token_id, *tok("ab", add_special_tokens=False).input_ids]
