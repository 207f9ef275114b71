"""The Gluon A/B probe (benchmarks/probe_gluon_ab.py) on CPU: a variant of the kernel source
loads as its own module inside the kernels package (its relative imports resolve, its
functions are its own), and a variant that names no file is refused before any GPU work."""

import sys
from pathlib import Path

import pytest

from ._benchmarks import load_benchmark


def _probe():
    return load_benchmark("probe_gluon_ab")


def test_variant_loads_as_its_own_module(tmp_path):
    """A variant of sparse_attention_gluon.py (here: its fp8 default back to the one-block
    loop) is its own module with its own kernel; the parts it imports are the installed ones."""
    import inspect

    import xattn_video.kernels.sparse_attention_gluon as installed

    src = Path(installed.__file__).read_text()
    old = "        pairs = fp8 and stages == 2\n"
    assert old in src
    path = tmp_path / "sag_one_block.py"
    path.write_text(src.replace(old, "        pairs = False\n"))
    variant = _probe().load_variant("one_block", str(path))
    assert variant.__name__ == "xattn_video.kernels._ab_one_block"
    assert "pairs = False" in inspect.getsource(variant.block_sparse_attention_gluon)
    assert "pairs = False" not in inspect.getsource(installed.block_sparse_attention_gluon)
    assert variant.block_sparse_attention_gluon is not installed.block_sparse_attention_gluon
    assert variant.TAU is installed.TAU  # from gluon_attention_parts, not copied


def test_a_kernels_directory_loads_as_its_own_package(tmp_path):
    """A copy of the whole kernels directory whose parts module differs (the lazy-max TAU) is
    its own package: the kernel module's TAU is the copy's, the installed one keeps its own,
    and the copies import each other, not the installed modules."""
    import shutil

    import xattn_video.kernels.gluon_attention_parts as installed_parts
    import xattn_video.kernels.sparse_attention_gluon as installed

    src_dir = Path(installed.__file__).parent
    kernels = tmp_path / "kernels"
    shutil.copytree(src_dir, kernels, ignore=shutil.ignore_patterns("__pycache__"))
    parts = kernels / "gluon_attention_parts.py"
    old = 'TAU = {"bf16": 8.0, "fp8": 2.0}'
    assert old in parts.read_text()
    parts.write_text(parts.read_text().replace(old, 'TAU = {"bf16": 4.0, "fp8": 2.0}'))
    variant = _probe().load_variant("tau4_dir", str(kernels))
    assert variant.__name__ == "xattn_video._ab_tau4_dir.sparse_attention_gluon"
    assert variant.TAU == {"bf16": 4.0, "fp8": 2.0}
    assert installed.TAU == installed_parts.TAU == {"bf16": 8.0, "fp8": 2.0}
    assert sys.modules["xattn_video._ab_tau4_dir.gluon_attention_parts"].TAU is variant.TAU
    est = _probe().load_variant("tau4_dir_est", str(kernels), module="estimate")
    assert est.__name__ == "xattn_video._ab_tau4_dir_est.estimate"
    assert callable(est.estimate_block_scores)


def test_a_directory_without_the_kernel_module_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _probe().main([f"old={tmp_path}"])
    assert "expected name=path to an existing file or kernels directory" in capsys.readouterr().err


def test_variant_without_a_file_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _probe().main([f"old={tmp_path / 'missing.py'}"])
    assert "expected name=path to an existing file or kernels directory" in capsys.readouterr().err


def test_estimate_probe_loads_an_estimate_variant_and_refuses_a_missing_file(tmp_path):
    """benchmarks/probe_estimate_ab.py loads a copy of estimate.py through the same loader and
    refuses a variant that names no file before any GPU work."""
    import xattn_video.kernels.estimate as installed

    path = tmp_path / "estimate_old.py"
    path.write_text(Path(installed.__file__).read_text())
    variant = _probe().load_variant("est_old", str(path))
    assert variant.__name__ == "xattn_video.kernels._ab_est_old"
    assert variant.estimate_block_scores is not installed.estimate_block_scores
    probe = load_benchmark("probe_estimate_ab")
    with pytest.raises(SystemExit):
        probe.main(["old=" + str(tmp_path / "missing.py")])
