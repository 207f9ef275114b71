"""The ``Prompt`` record shared by every prompt suite.

Not supported: per-prompt seeds or negative prompts (the generator owns those).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    """One prompt of a suite.

    Attributes:
        index: stable 0-based position of the prompt in its suite (or user file). It survives
            filtering and sampling, and output folders are named after it (``00012/``).
        text: the prompt text, surrounding whitespace stripped.
        dimensions: VBench dimension tags (e.g. ``("scene",)``); empty when the source has none.
    """

    index: int
    text: str
    dimensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"Prompt index must be >= 0, got {self.index}")
        if not self.text:
            raise ValueError(f"Prompt {self.index} has empty text")
