"""Compiling a Gluon kernel for sm90 on a machine without a GPU, for the kernel tests.

The suite runs with TRITON_INTERPRET=1, under which Gluon functions cannot compile, so the
compile runs in a subprocess without it; the PTX is then assembled by the ptxas that ships with
Triton for its register / spill report.
"""

import json
import os
import re
import subprocess
import sys

import pytest

LOCAL = ("LDL", "STL")  # local-memory (spill) loads and stores in SASS
SM90_SMEM = 232448  # Hopper's 227 KB of shared memory per block
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tensordesc(shape: list[int], dtype: str) -> str:
    """The signature type of a TMA descriptor of ``shape`` in "bf16" or "fp8e4nv", with the
    NVMMA shared layout the kernels' wrappers give it."""
    from triton.experimental.gluon import language as gl

    dt = gl.float8e4nv if dtype == "fp8e4nv" else gl.bfloat16
    layout = gl.NVMMASharedLayout.get_default_for(shape, dt)
    return f"tensordesc<{dtype}[{','.join(map(str, shape))}],{layout!r}>"


def compile_kernel(fn, sig: dict, consts: dict, maxnreg: int, out: str) -> None:
    """Compile the Gluon kernel ``fn`` for sm90 (4 warps per partition, ``maxnreg``) and write
    ``out.ptx`` and ``out.json`` (shared memory bytes, warps). Run inside the subprocess."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    sig = dict(sig, **{name: "constexpr" for name in consts})
    k = triton.compile(GluonASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": 4, "maxnreg": maxnreg})  # fmt: skip
    with open(out + ".ptx", "w") as f:
        f.write(k.asm["ptx"])
    with open(out + ".json", "w") as f:
        json.dump({"smem_bytes": k.metadata.shared, "warps": k.metadata.num_warps}, f)


def compile_sm90(tmp_path, script: str, *args) -> tuple[str, dict]:
    """Run ``script`` (which writes ``<out>.ptx`` and ``<out>.json``, ``out`` its last argument)
    with ``args``; returns (PTX text, metadata)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # the script imports this module as tests._gluon_compile
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_REPO, env.get("PYTHONPATH")]))
    out = str(tmp_path / "k")
    subprocess.run([sys.executable, "-c", script, *map(str, args), out],
                   env=env, check=True, capture_output=True, text=True)  # fmt: skip
    with open(out + ".json") as f:
        meta = json.load(f)
    with open(out + ".ptx") as f:
        return f.read(), meta


def assert_ws_partitions(ptx_text: str, meta: dict) -> None:
    """Two consumer warpgroups and a producer warp (12 warps, padded), registers moved from the
    producer (24) to the consumers (240), only partition-scoped (128-thread) barriers, and the
    shared memory within sm90's."""
    assert meta["smem_bytes"] <= SM90_SMEM
    assert meta["warps"] == 12
    assert "setmaxnreg.dec.sync.aligned.u32 \t24;" in ptx_text
    assert "setmaxnreg.dec.sync.aligned.u32 \t240;" in ptx_text
    assert "bar.sync \t0;" not in ptx_text and "bar.sync \t0, 128;" in ptx_text


def assert_no_spills(tmp_path, allow_bytes: int = 0) -> None:
    """ptxas (sm_90a) assembles the compiled ``k.ptx`` with at most ``allow_bytes`` of register
    spill stores, and without serializing its wgmmas (ptxas's C7512 / C7515: not enough
    registers, or accumulators written by other instructions while a wgmma is in flight)."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("this Triton ships no ptxas")
    res = subprocess.run([ptxas, "-arch=sm_90a", "-v", str(tmp_path / "k.ptx"), "-o", os.devnull],
                         capture_output=True, text=True, check=True)  # fmt: skip
    spilled = re.search(r"(\d+) bytes spill stores", res.stderr)
    assert spilled and int(spilled.group(1)) <= allow_bytes, res.stderr
    assert "serialized" not in res.stderr, res.stderr


def _sass_lines(tmp_path) -> list[tuple[int, str]]:
    """(address, instruction) of ``k.ptx`` assembled for sm_90a and disassembled."""
    import triton

    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    ptxas, cuobjdump = (os.path.join(bin_dir, name) for name in ("ptxas", "cuobjdump"))
    if not (os.path.exists(ptxas) and os.path.exists(cuobjdump)):
        pytest.skip("this Triton ships no ptxas / cuobjdump")
    cubin = str(tmp_path / "k.cubin")
    subprocess.run([ptxas, "-arch=sm_90a", str(tmp_path / "k.ptx"), "-o", cubin], check=True,
                   capture_output=True)  # fmt: skip
    # cuobjdump prints branch targets as addresses (nvdisasm as labels)
    sass = subprocess.run([cuobjdump, "-sass", cubin], check=True, capture_output=True, text=True)
    found = re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass.stdout)
    return [(int(addr, 16), text.strip()) for addr, text in found]


def loops_and_local_accesses(tmp_path) -> tuple[list[tuple[int, int]], list[tuple[int, str]]]:
    """The kernel's loops -- conditional backward branches over more than 64 instructions
    before its last EXIT (after it sit the mbarrier retry stubs, which branch back into the
    code) -- as (first, last address), and the addresses of its local-memory (spill) loads and
    stores as (address, "LDL" / "STL")."""
    ins = _sass_lines(tmp_path)
    last_exit = max(addr for addr, text in ins if text.endswith("EXIT"))
    loops = []
    for addr, text in ins:
        m = re.match(r"@!?U?P\d+\s+BRA\s+(0x[0-9a-f]+)", text)
        if m and addr < last_exit and addr - int(m.group(1), 16) > 0x400:
            loops.append((int(m.group(1), 16), addr))
    ops = [(addr, text.split()[1 if text.startswith("@") else 0][:3]) for addr, text in ins]
    return loops, [(addr, op) for addr, op in ops if op in LOCAL]
