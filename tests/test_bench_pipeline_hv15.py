"""CPU tests of ``benchmarks/bench_pipeline_hv15.py`` (the timing needs a GPU): the model it
builds is HunyuanVideo 1.5's shape, its inputs are what the pipeline hands the transformer at
720p x 121 frames, and a small model runs them with XAttention."""

from types import SimpleNamespace

import pytest
import torch

import xattn_video as xv

from ._benchmarks import load_benchmark

bench = load_benchmark("bench_pipeline_hv15")

TINY = dict(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16,
            num_layers=1, num_refiner_layers=1, mlp_ratio=2.0, text_embed_dim=32,
            text_embed_2_dim=24, image_embed_dim=12, rope_axes_dim=(4, 6, 6))  # fmt: skip


def test_default_config_is_hunyuanvideo_15():
    """Built on the meta device (no memory): 54 blocks of 16 heads x 128, ~8.3 B parameters."""
    from diffusers import HunyuanVideo15Transformer3DModel

    with torch.device("meta"):
        model = HunyuanVideo15Transformer3DModel()
    n_params = sum(p.numel() for p in model.parameters())
    assert len(model.transformer_blocks) == 54 and model.transformer_blocks[0].attn.heads == 16
    assert 8.2e9 < n_params < 8.4e9, n_params


def test_inputs_are_720p_121_frames_with_the_pipelines_text_slots():
    inputs = bench.make_inputs(720, 1280, 121, 256, 8, device="cpu")
    assert inputs["hidden_states"].shape == (1, 65, 31, 45, 80)  # 111,600 tokens, patch 1
    assert inputs["encoder_hidden_states"].shape == (1, 1000, 3584)
    assert int(inputs["encoder_attention_mask"].sum()) == 256
    assert inputs["encoder_hidden_states_2"].shape == (1, 256, 1472)
    assert int(inputs["encoder_attention_mask_2"].sum()) == 8
    assert inputs["image_embeds"].shape == (1, 729, 1152) and not inputs["image_embeds"].any()


@torch.no_grad()
def test_a_small_model_runs_the_inputs_with_xattention():
    """The inputs' shapes and dtypes are what the transformer takes: a small bf16 model built
    like the full one runs them, dense and with XAttention at every layer (torch backend)."""
    model = bench.build_transformer(TINY, device="cpu")
    assert not model.training and all(p.dtype == torch.bfloat16 for p in model.parameters())
    inputs = bench.make_inputs(64, 64, 5, 5, 2, config=TINY, device="cpu")
    dense = model(**inputs)[0]
    assert dense.shape == (1, 4, 2, 4, 4)
    cfg = xv.XAttentionConfig(block_size=16, stride=4, warmup_steps=0, selection="ratio",
                              ratio=0.5, backend="torch", auto_dense=False)  # fmt: skip
    with xv.apply_xattention(model, cfg) as handle:
        out = model(**inputs)[0]
        assert handle.stats.summary()["num_sparse_calls"] == 1
    assert out.shape == dense.shape and torch.isfinite(out).all()


def test_rows_are_dense_then_every_precision_pair(monkeypatch):
    seen = []

    def fake_dense(model, inputs, n_layers, repeats, add):
        assert n_layers == 3
        for method in ("dense, diffusers default", "dense, XAttention kernel"):
            add(method, 10.0)

    def fake_sparse(model, inputs, cfg, repeats):
        seen.append((cfg.precision, cfg.estimate_precision, cfg.ratio))
        return 4.0, {"effective_density": cfg.ratio}

    monkeypatch.setattr(bench, "time_dense", fake_dense)
    monkeypatch.setattr(bench, "time_xattention", fake_sparse)
    monkeypatch.setattr(
        bench, "make_inputs", lambda *a: {"hidden_states": torch.zeros(1, 1, 2, 4, 4)}
    )
    args = SimpleNamespace(height=0, width=0, frames=0, text_valid=1, byt5_valid=0, repeats=1,
                           ratios=[0.3], stride=8, precisions=["bf16", "fp8"],
                           estimate_precisions=["bf16"], steps=50, warmup_steps=5)  # fmt: skip
    rows = bench.run(SimpleNamespace(transformer_blocks=[None] * 3), args)
    assert [r["method"] for r in rows[2:]] == [
        "xattn ratio=0.3", "xattn ratio=0.3 fp8 + bf16 estimate",
    ]  # fmt: skip
    assert seen == [("bf16", "bf16", 0.3), ("fp8", "bf16", 0.3)]
    assert rows[2]["speedup_vs_default"] == 2.5
    assert rows[2]["tokens"] == 32 + 1000 + 256 + 729  # video + every text slot


@pytest.mark.parametrize(
    "argv",
    [["--frames", "120"], ["--text-valid", "0"], ["--byt5-valid", "300"], ["--height", "700"]],
)
def test_usage_errors_before_the_model_is_built(argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2
