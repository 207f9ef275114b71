"""The README's op snippet ("The op itself"), executed as printed, on the CPU.

The block is read from README.md, so the README cannot drift from code that runs. Beyond running,
it must be sparse (the density it prints, which the README quotes) and exact inside its mask.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

from ._tolerance import assert_fa_close, naive_attention

README = Path(__file__).resolve().parents[1] / "README.md"


def op_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("The op itself")
    m = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert m is not None, "no python block after 'The op itself' in README.md"
    return m.group(1)


@pytest.fixture(scope="module")
def ran() -> tuple[dict, str]:
    ns: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(op_snippet(), "README.md (op snippet)", "exec"), ns)
    return ns, out.getvalue()


def test_snippet_defines_its_inputs_and_is_cpu_only() -> None:
    code = op_snippet()
    for name in ("q, k, v =", "lens ="):
        assert name in code
    assert "cuda" not in code


def test_snippet_prints_the_density_the_readme_quotes(ran) -> None:
    ns, printed = ran
    m = re.search(r"density (\d\.\d\d)", printed)
    assert m is not None, printed
    density = float(m.group(1))
    assert 0.05 < density < 0.6  # actually sparse at block_size 64
    assert f"It prints `density {m.group(1)}`" in README.read_text(encoding="utf-8")
    assert "torch.Size([2, 4, 1024, 64]) torch.Size([2, 4, 16, 16])" in printed


def test_snippet_block_sparse_output_is_exact_inside_its_mask(ran) -> None:
    ns, _ = ran
    q, k, v, mask, out = (ns[n] for n in ("q", "k", "v", "mask", "out"))
    block = 64
    assert mask.dtype == torch.bool and mask.shape == (2, 4, 16, 16)
    assert 0 < mask.float().mean() < 1
    tokens = mask.repeat_interleave(block, -1).repeat_interleave(block, -2)
    exact = naive_attention(q, k, v, tokens, dtype=torch.float64)
    lowp = naive_attention(q, k, v, tokens, dtype=torch.float32)
    assert_fa_close(out, exact, lowp, "README block_sparse_attention")
