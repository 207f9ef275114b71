"""Run a function in several CPU processes over gloo (the multi-GPU code paths, tested on CPU).

``run_distributed(fn, world_size, *args)`` spawns ``world_size`` processes (torch.multiprocessing,
``spawn``), initialises the default process group (gloo, a file store in a temp dir) and calls
``fn(rank, world_size, *args)`` in each; every return value is saved with ``torch.save`` and the
list (by rank) comes back. ``fn`` must be a module-level function (it is pickled by reference).
A failing rank fails the call with that rank's traceback.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, init_file: str, out_dir: str, fn, args) -> None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world_size: int, *args: Any) -> list[Any]:
    """[fn(0, world, *args), ..., fn(world-1, world, *args)], each run in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        try:
            mp.spawn(_worker, args=(world_size, init_file, tmp, fn, args), nprocs=world_size)
        except Exception as exc:
            errs = [
                open(os.path.join(tmp, f)).read()
                for f in sorted(os.listdir(tmp))
                if f.endswith(".err")
            ]
            raise AssertionError("distributed run failed:\n" + "\n".join(errs)) from exc
        return [
            torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False)
            for r in range(world_size)
        ]
