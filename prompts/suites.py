"""Named prompt suites and the VBench data files they are built from.

Every file is pinned: the standard list comes from the ``vbench`` wheel on PyPI at a fixed version,
the augmented lists from VBench's GitHub repository at a fixed commit, and each file's sha256 is
checked whenever it is downloaded.

Not supported: VBench's per-dimension prompt files (``prompts/prompts_per_dimension/``) and the
other augmented sets (CogVideoX, etc.); pass such a file as a user ``.txt`` path instead.
"""

from __future__ import annotations

from dataclasses import dataclass

VBENCH_COMMIT = "45e79ec14e69a2187202c675d2dbce1a71843d53"
"""VBench repository commit the augmented prompt lists are read from."""

VBENCH_WHEEL_VERSION = "0.1.5"
"""Version of the ``vbench`` wheel (PyPI) that ships ``vbench/VBench_full_info.json``."""

VBENCH_RAW_BASE = f"https://raw.githubusercontent.com/Vchitect/VBench/{VBENCH_COMMIT}/"

VBENCH_NUM_PROMPTS = 946
"""Number of prompts in every VBench list (standard and augmented)."""


@dataclass(frozen=True)
class DataFile:
    """A prompt data file that can be looked up in a local directory or downloaded.

    Attributes:
        name: file name inside a data directory or the cache.
        sha256: expected hex digest of the file's bytes (checked on download).
        url: raw download URL, or ``None`` when the file comes out of a PyPI wheel.
        wheel_member: path inside the ``vbench`` wheel when ``url`` is ``None``.
        repo_path: path inside a clone of the VBench repository (a data directory may be one).
    """

    name: str
    sha256: str
    url: str | None = None
    wheel_member: str | None = None
    repo_path: str = ""

    @property
    def source(self) -> str:
        """Human-readable origin, for error messages."""
        if self.url is not None:
            return self.url
        return (
            f"member {self.wheel_member!r} of the wheel 'vbench=={VBENCH_WHEEL_VERSION}' on PyPI "
            f"(https://pypi.org/project/vbench/{VBENCH_WHEEL_VERSION}/)"
        )


STANDARD_FILE = DataFile(
    name="VBench_full_info.json",
    sha256="5dd2de80ee43cda750b2b72ea7023657c0b90d3702041c7e4608c65dbe50dccd",
    wheel_member="vbench/VBench_full_info.json",
    repo_path="vbench/VBench_full_info.json",
)
LONGER_FILE = DataFile(
    name="all_dimension_longer.txt",
    sha256="58ed0665de52c1bdb4820af01327f5cc1138bedbeedcc63902751056f6bf5768",
    url=VBENCH_RAW_BASE + "prompts/augmented_prompts/gpt_enhanced_prompts/all_dimension_longer.txt",
    repo_path="prompts/augmented_prompts/gpt_enhanced_prompts/all_dimension_longer.txt",
)
HUNYUAN_FILE = DataFile(
    name="hunyuan_all_dimension.txt",
    sha256="bb1f6c7c27390eb268ef1e25faa196169ee7dc8a30741290bdd9c30c5970d9fe",
    url=VBENCH_RAW_BASE + "prompts/augmented_prompts/hunyuan_all_dimension.txt",
    repo_path="prompts/augmented_prompts/hunyuan_all_dimension.txt",
)
STANDARD_TXT_FILE = DataFile(
    name="all_dimension.txt",
    sha256="f9b50654f81ab732b9235d5bb91f0c3a4d152fac19249ce3a3a9185b2d80d8c3",
    url=VBENCH_RAW_BASE + "prompts/all_dimension.txt",
    repo_path="prompts/all_dimension.txt",
)
"""The standard list as plain text (same order as ``VBench_full_info.json``); not used by a suite."""

DATA_FILES: dict[str, DataFile] = {
    f.name: f for f in (STANDARD_FILE, LONGER_FILE, HUNYUAN_FILE, STANDARD_TXT_FILE)
}


@dataclass(frozen=True)
class Suite:
    """A named prompt suite.

    Attributes:
        name: suite name accepted by ``load_prompts``.
        text_file: the augmented list whose line i replaces standard prompt i, or ``None`` for the
            standard prompts themselves. Dimension tags always come from the standard list.
        description: one line for ``--help`` texts.
    """

    name: str
    text_file: DataFile | None
    description: str


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("vbench", None, "VBench's 946 standard prompts with their dimension tags"),
        Suite(
            "vbench-augmented",
            LONGER_FILE,
            "VBench's 946 GPT-augmented ('longer') prompts, the XAttention paper's set",
        ),
        Suite("vbench-hunyuan", HUNYUAN_FILE, "VBench's 946 HunyuanVideo-augmented prompts"),
    )
}
"""Suite name -> ``Suite``."""
