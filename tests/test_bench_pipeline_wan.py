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


def test_rows_cover_every_precision_and_time_the_torch_q_k_prep_once(monkeypatch):
    """The sparse rows: every (precision, estimate precision), the all-bf16 one also with the
    processor's torch q / k preparation (the kernel switched off for exactly that row), each
    timed with the config its label names; projections added."""
    from types import SimpleNamespace

    from xattn_video import qk_prep

    real = qk_prep.fused_available
    seen = []

    def fake_dense(model, inputs, n_layers, repeats, add):
        for method in ("dense, diffusers default", "dense, XAttention kernel"):
            add(method, 10.0)

    def fake_sparse(model, inputs, cfg, repeats):
        seen.append((cfg.precision, cfg.estimate_precision, qk_prep.fused_available is real))
        return 4.0, {"effective_density": cfg.ratio}

    monkeypatch.setattr(bench, "time_dense", fake_dense)
    monkeypatch.setattr(bench, "time_xattention", fake_sparse)
    monkeypatch.setattr(
        bench, "make_inputs", lambda *a: {"hidden_states": torch.zeros(1, 1, 2, 4, 4)}
    )
    args = SimpleNamespace(height=0, width=0, frames=0, repeats=1, ratios=[0.3], stride=8,
                           precisions=["bf16", "fp8"], estimate_precisions=["bf16", "fp8"],
                           compare_unfused=True, steps=50, warmup_steps=5)  # fmt: skip
    rows = bench.run(SimpleNamespace(blocks=[None] * 3), args)
    assert [r["method"] for r in rows[2:]] == [
        "xattn ratio=0.3 (q / k prep: torch code)",
        "xattn ratio=0.3",
        "xattn ratio=0.3 bf16 + fp8 estimate",
        "xattn ratio=0.3 fp8 + bf16 estimate",
        "xattn ratio=0.3 fp8 + fp8 estimate",
    ]
    assert seen == [("bf16", "bf16", False), ("bf16", "bf16", True), ("bf16", "fp8", True),
                    ("fp8", "bf16", True), ("fp8", "fp8", True)]  # fmt: skip
    assert qk_prep.fused_available is real
    # the default "auto": each attention precision with its own estimate, no repeated rows
    seen.clear()
    args.estimate_precisions, args.compare_unfused = ["auto", "bf16"], False
    rows = bench.run(SimpleNamespace(blocks=[None] * 3), args)
    assert [r["method"] for r in rows[2:5]] == [
        "xattn ratio=0.3", "xattn ratio=0.3 fp8 + fp8 estimate", "xattn ratio=0.3 fp8 + bf16 estimate",
    ]  # fmt: skip
    assert seen == [("bf16", "bf16", True), ("fp8", "fp8", True), ("fp8", "bf16", True)]
    assert rows[3]["speedup_vs_default"] == 2.5 and rows[3]["effective_density"] == 0.3
    assert rows[3]["tokens"] == 8  # 2 x 4 x 4 latents over the 1 x 2 x 2 patch
