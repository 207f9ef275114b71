"""CPU tests of ``benchmarks/bench_pipeline_wan.py`` (the timing needs a GPU): the model it
builds is Wan 2.1 14B's shape, and its inputs are 720p x 81 frames (75,600 video tokens)."""

import torch

from ._benchmarks import load_benchmark

bench = load_benchmark("bench_pipeline_wan")


def test_config_is_wan_14b():
    """Built on the meta device (no memory): 40 blocks of 40 heads x 128 and ~14.3 B parameters,
    the published size of Wan 2.1 T2V 14B."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(**bench.WAN_14B)
    n_params = sum(p.numel() for p in model.parameters())
    assert len(model.blocks) == 40 and model.blocks[0].attn1.heads == 40
    assert 14.0e9 < n_params < 14.5e9, n_params


def test_inputs_are_720p_81_frames():
    inputs = bench.make_inputs(720, 1280, 81, device="cpu")
    assert inputs["hidden_states"].shape == (1, 16, 21, 90, 160)
    assert inputs["hidden_states"][0, 0].numel() // 4 == 75_600  # tokens after the 1x2x2 patch
    assert inputs["encoder_hidden_states"].shape == (1, 512, 4096)


def test_build_transformer_makes_a_bf16_eval_model():
    tiny = dict(bench.WAN_14B, num_attention_heads=2, attention_head_dim=16, ffn_dim=32,
                num_layers=1, text_dim=32, freq_dim=32)  # fmt: skip
    model = bench.build_transformer(tiny, device="cpu")
    assert not model.training and all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert not any(p.requires_grad for p in model.parameters())
