"""Probe (GPU): the Gluon attention kernel against variants of its source, interleaved.

Each variant is a copy of ``xattn_video/kernels/sparse_attention_gluon.py`` (e.g. the file at
an older commit, or with one feature removed to see what it costs), loaded as a module next to
the installed one so its relative imports resolve, or a copy of the whole ``xattn_video/kernels``
directory (``git archive <rev> xattn_video/kernels | tar -x -C /tmp/old``, then
``old=/tmp/old/xattn_video/kernels``), loaded as its own package, for changes to the modules
the kernel imports (``gluon_attention_parts``, ``gluon_attention_pairs``, ``gluon_ptx``). Per (precision, ring depth, density): the
outputs' relative L2 against the installed kernel (0.0: bit-identical) and the fastest of
``--reps`` interleaved median timings, so clock drift hits every variant alike. B=1, 24 heads,
head dim 128, random block scores at pinned densities, cuDNN dense timed in the same run.

Usage: python benchmarks/probe_gluon_ab.py old=/tmp/sag_old.py noexp=/tmp/sag_noexp.py
       [--n 119056] [--densities 0.1 0.3 0.5 1.0] [--reps 2] [--out results/probe_gluon_ab.json]

Not supported: variants whose wrapper signature differs from the installed kernel's; a
single-file variant takes what the kernel imports from the installed package (use a directory).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_ms, save_json  # noqa: E402

import xattn_video.kernels.sparse_attention_gluon as installed  # noqa: E402
from xattn_video.kernels.select import mask_to_indices, select_blocks  # noqa: E402


def load_variant(name: str, path: str, module: str = "sparse_attention_gluon"):
    """The kernel source at ``path`` as its own module. A file (a copy of one kernel module):
    ``xattn_video.kernels._ab_<name>``, its relative imports resolving to the installed
    package. A directory (a copy of the whole ``xattn_video/kernels``, e.g. from ``git archive``):
    the package ``xattn_video._ab_<name>``, whose modules import each other's copies, so a
    variant may change any of them (the Gluon kernel's parts and pair loop included); returns
    its ``module``."""
    if Path(path).is_dir():
        pkg = f"xattn_video._ab_{name}"
        spec = importlib.util.spec_from_file_location(
            pkg, Path(path) / "__init__.py", submodule_search_locations=[str(path)]
        )
        sys.modules[pkg] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[pkg])
        return importlib.import_module(f"{pkg}.{module}")
    spec = importlib.util.spec_from_file_location(f"xattn_video.kernels._ab_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_variants(
    p: argparse.ArgumentParser, specs: list[str], prefix: str = "",
    module: str = "sparse_attention_gluon",
) -> dict:  # fmt: skip
    """``name=path`` specs -> {name: the variant's ``module``} (:func:`load_variant`, loaded as
    ``_ab_<prefix><name>``); a spec that names neither a file nor a kernels directory holding
    ``<module>.py`` is a usage error (``p.error``), raised before any GPU work."""
    mods = {}
    for v in specs:
        name, _, path = v.partition("=")
        ok = path and (Path(path).is_file() or (Path(path) / f"{module}.py").is_file())
        if not ok:
            p.error(f"variant {v!r}: expected name=path to an existing file or kernels directory")
        mods[name] = load_variant(prefix + name, path, module)
    return mods


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("variants", nargs="*",
                   help="name=path of a kernel source variant (file or kernels directory)")  # fmt: skip
    p.add_argument("--n", type=int, default=119056)
    p.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.3, 0.5, 1.0])
    p.add_argument("--configs", nargs="+", default=["fp8:2", "bf16:3"],
                   help="precision:stages pairs")  # fmt: skip
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--out", default="results/probe_gluon_ab.json")
    args = p.parse_args(argv)
    mods = {"installed": installed, **load_variants(p, args.variants)}
    n, H, D = args.n, 24, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, H, n, D, device="cuda", generator=g).bfloat16() for _ in range(3))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cudnn = bench_ms(lambda: F.scaled_dot_product_attention(q, k, v))
    print(f"cuDNN dense {cudnn:.2f} ms", flush=True)
    nb = math.ceil(n / 128)
    scores = torch.rand(1, H, nb, nb, device="cuda", generator=g)
    rows = []
    for d in args.densities:
        mask = select_blocks(scores, block_size=128, ratio=d, n_k=n)
        counts, idx = mask_to_indices(mask)
        dens = float(mask.float().mean())
        for cfg in args.configs:
            prec, stages = cfg.split(":")
            fns = {m: partial(mod.block_sparse_attention_gluon, q, k, v, counts, idx,
                              block_size=128, stages=int(stages), precision=prec)
                   for m, mod in mods.items()}  # fmt: skip
            ref = fns["installed"]().float()
            rel = {m: float((fn().float() - ref).norm() / ref.norm()) for m, fn in fns.items()}
            times: dict[str, list[float]] = {m: [] for m in fns}
            for _ in range(args.reps):
                for m, fn in fns.items():
                    times[m].append(bench_ms(fn))
            best = {m: min(t) for m, t in times.items()}
            rows.append(dict(density=dens, precision=prec, stages=int(stages), cudnn_ms=cudnn,
                             ms=best, all_ms=times, rel_l2_vs_installed=rel,
                             x_cudnn={m: dens * cudnn / t for m, t in best.items()}))  # fmt: skip
            print(f"d={d} {cfg}: " + ", ".join(
                f"{m} {t:.2f} ms ({dens * cudnn / t:.3f}x cuDNN, rel {rel[m]:.1e})"
                for m, t in best.items()), flush=True)  # fmt: skip
    save_json(args.out, {"benchmark": "probe_gluon_ab", "config": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
