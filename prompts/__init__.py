"""Prompt suites by name: VBench standard, GPT-augmented and Hunyuan-augmented lists, user files.

Public API: ``Prompt``, ``load_prompts``, ``SUITES`` (plus ``PromptDataMissing``,
``ENV_PROMPTS_DIR``, ``all_dimensions``). Prompt texts are never shipped with the package: they are
read from a local directory or downloaded once into a cache (see ``xattn_video.prompts.fetch``).

Not supported: VBench's per-dimension files and other augmented sets as suite names (pass them as
``.txt`` paths).
"""

from .fetch import ENV_PROMPTS_DIR, PromptDataMissing, cache_dir
from .loader import all_dimensions, load_prompts
from .prompt import Prompt
from .suites import SUITES

__all__ = [
    "ENV_PROMPTS_DIR",
    "SUITES",
    "Prompt",
    "PromptDataMissing",
    "all_dimensions",
    "cache_dir",
    "load_prompts",
]
