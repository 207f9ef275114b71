"""``benchmarks/probe_select.py`` on CPU (interpreter): every timed call it builds returns the
torch code's masks and lists, for the installed kernels and for a variant loaded from a file."""

import torch

from xattn_video.kernels import select_fused

from ._benchmarks import BENCHMARKS, load_benchmark


def test_probe_cases_equal_the_torch_code(tmp_path):
    probe = load_benchmark("probe_select")
    copy = tmp_path / "select_fused_copy.py"
    copy.write_text((BENCHMARKS.parent / "xattn_video/kernels/select_fused.py").read_text())
    import argparse

    mods = {"installed": select_fused}
    mods.update(probe.load_variants(argparse.ArgumentParser(), [f"copy={copy}"], prefix="t_",
                                    module="select_fused"))  # fmt: skip
    g = torch.Generator().manual_seed(0)
    n = 9 * 128 - 99
    scores = torch.rand(1, 2, 9, 9, generator=g) ** 4
    cases = probe._cases(mods, scores, torch.tensor([n], dtype=torch.int32), n)
    want = {f"select {m}, {w}" for m in probe.MODES for w in ("torch", "fused installed",
                                                               "fused copy")}  # fmt: skip
    assert set(cases) == want | {"csr, torch", "csr, fused installed", "csr, fused copy"}
    assert all(same for _, same in cases.values())
