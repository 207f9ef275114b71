"""The VBench prompt subset shipped for tests (``tests/data/vbench_subset``, see its README).

The four files hold VBench's prompts number 0, 22, 44, ..., 924 and 945 (44 of 946, all 16
dimensions), under VBench's own file names. The suite loader refuses a standard list that does not
hold 946 prompts; ``use_vbench_subset`` points it at the subset and sets that count to 44 for the
current test only (in-process; a subprocess gets the subset as a user file instead:
``SUBSET_INFO_JSON`` in VBench's JSON format).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from xattn_video.prompts import ENV_PROMPTS_DIR
from xattn_video.prompts import loader as loader_mod

VBENCH_SUBSET_DIR = Path(__file__).resolve().parent / "data" / "vbench_subset"
SUBSET_INDICES = tuple(range(0, 946, 22)) + (945,)
"""The original VBench index of each subset prompt, in order."""
SUBSET_INFO_JSON = VBENCH_SUBSET_DIR / "VBench_full_info.json"


def use_vbench_subset(monkeypatch: pytest.MonkeyPatch, *, env: bool = True) -> Path:
    """Let the suite loader accept the 44-prompt subset; optionally set $XATTN_VIDEO_PROMPTS_DIR.

    Returns:
        The subset directory (pass it as ``data_dir=`` / ``--prompts-dir``).
    """
    monkeypatch.setattr(loader_mod, "VBENCH_NUM_PROMPTS", len(SUBSET_INDICES))
    if env:
        monkeypatch.setenv(ENV_PROMPTS_DIR, str(VBENCH_SUBSET_DIR))
    return VBENCH_SUBSET_DIR
