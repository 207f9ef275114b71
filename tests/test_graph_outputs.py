"""xattn_video.graph_outputs on the CPU: which compile arguments capture CUDA graphs, and that in
those modes each call's outputs are clones of the graph's static memory (a compiled function
stands in that writes into one buffer, as a graph replay does). The real CUDA-graph case, two
forwards per step, runs in tests/test_gpu_compile.py."""

from __future__ import annotations

import pytest
import torch

from xattn_video import graph_outputs
from xattn_video.graph_outputs import captures_cuda_graphs, compile_forward


@pytest.mark.parametrize(
    "kwargs, want",
    [
        ({}, False),
        ({"mode": "default"}, False),
        ({"mode": "reduce-overhead"}, True),
        ({"mode": "max-autotune"}, True),
        ({"mode": "max-autotune-no-cudagraphs"}, False),
        ({"mode": "reduce-overhead", "options": {"triton.cudagraphs": False}}, False),
        ({"options": {"triton.cudagraphs": True}}, True),
        ({"backend": "cudagraphs"}, True),  # dynamo's backend: the same CUDA graph trees
        ({"backend": "aot_eager", "mode": None}, False),
    ],
)
def test_which_compiles_capture_cuda_graphs(kwargs, want):
    assert captures_cuda_graphs(kwargs) is want


@pytest.mark.parametrize("mode, cloned", [("reduce-overhead", True), ("default", False)])
def test_graph_outputs_outlive_the_next_call(monkeypatch, mode, cloned):
    static = torch.zeros(3)
    seen = {}

    def fake_compile(fn, **kwargs):
        seen.update(kwargs)

        def replay(x):  # a graph replay: the output is the same static tensor every call
            static.copy_(fn(x))
            return {"sample": static, "steps": 1}

        return replay

    monkeypatch.setattr(graph_outputs.torch, "compile", fake_compile)
    forward = compile_forward(lambda x: 2 * x, mode=mode, fullgraph=True)
    assert seen == {"mode": mode, "fullgraph": True}
    cond = forward(torch.ones(3))  # classifier-free guidance: two forwards, then both read
    uncond = forward(torch.full((3,), 3.0))
    assert torch.equal(uncond["sample"], torch.full((3,), 6.0)) and uncond["steps"] == 1
    if cloned:
        assert torch.equal(cond["sample"], torch.full((3,), 2.0))
        assert cond["sample"].data_ptr() != static.data_ptr()
    else:  # no graph: the compiled function's own outputs, not copied
        assert cond["sample"] is static
