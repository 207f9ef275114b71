"""Input checks of the XAttention op (:mod:`xattn_video.attention`) and its non-finite policy.

Every check raises ``ValueError`` naming the argument (``TypeError`` for a q, k or v that is
not a tensor). Value checks of tensors (``kv_len``, per-head thresholds, ``dense_from``) read the
host on CPU; on CUDA and under ``torch.compile`` they run on the device
(``torch._assert_async``: no sync, the error surfaces at the next synchronising call, as
torch's ``RuntimeError``, not ``ValueError``). The non-finite policy (documented in
:mod:`xattn_video.attention`): :func:`xattn_video.kernels.nonfinite.nonfinite_rows_ref` says
which output rows must be NaN (its Triton kernels run the policy on the Triton path),
:func:`propagate_nonfinite` sets them, :func:`.kernels._common.zero_padding` (used by the op)
keeps padding out of the torch references.

Not supported: checks that need the data on the host on CUDA (they are deferred, see above).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor

from .kernels._common import HAS_TENSOR_DESC, PRECISIONS, check_precision, interpreter_enabled
from .kernels.sparse_attention import FP8_NEEDS
from .kernels.tuning import AUTOMATIC_ESTIMATE_KERNELS, attention_kernel_for
from .scalars import is_integer, is_real

BLOCK_SIZES = (16, 32, 64, 128)
STRIDES = (2, 4, 8, 16)
TRITON_HEAD_DIMS = (16, 32, 64, 128)
ESTIMATE_PRECISIONS = ("auto", *PRECISIONS)
"""The op's and the config's ``estimate_precision`` (:func:`resolve_estimate_precision`)."""


INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The dtypes q / k / v may have (the Triton kernels take the first two, see
:func:`check_triton_dtype`)."""


def check_qk(q: torch.Tensor, k: torch.Tensor, name_k: str = "k") -> None:
    for name, t in (("q", q), (name_k, k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (B, H, N, D), got {type(t).__name__}")
    if q.ndim != 4:
        raise ValueError(f"q must have rank 4 (B, H, N, D), got shape {tuple(q.shape)}")
    if k.ndim != 4:
        raise ValueError(f"{name_k} must have rank 4 (B, H, N, D), got shape {tuple(k.shape)}")
    if k.shape[0] != q.shape[0] or k.shape[1] != q.shape[1] or k.shape[3] != q.shape[3]:
        gqa = "GQA/MQA is not supported: repeat the key/value heads first"
        hints = [h for i, h in ((0, "one batch"), (1, gqa), (3, "one head dim"))
                 if k.shape[i] != q.shape[i]]  # fmt: skip
        raise ValueError(f"q {tuple(q.shape)} and {name_k} {tuple(k.shape)} must agree on B, H "
                         f"and D ({'; '.join(hints)})")  # fmt: skip
    if k.dtype != q.dtype or k.device != q.device:
        raise ValueError(
            f"q and {name_k} must share dtype and device, got q {q.dtype} on {q.device} and "
            f"{name_k} {k.dtype} on {k.device}"
        )
    if q.dtype not in INPUT_DTYPES:
        hint = (" (pass bf16 / fp16 tensors with precision='fp8' for fp8 arithmetic)"
                if q.is_floating_point() and q.element_size() == 1 else "")  # fmt: skip
        raise ValueError(f"q must be float16, bfloat16, float32 or float64, got {q.dtype}{hint}")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError("q and k need at least one token")
    if q.shape[0] == 0 or q.shape[1] == 0 or q.shape[3] == 0:
        raise ValueError(f"q needs at least one sample, head and channel, got {tuple(q.shape)}")


def as_ints(*xs: Any) -> tuple[Any, ...]:
    """Each integer scalar as a Python int (a NumPy int from a sweep grid passed the checks and
    then failed inside a Triton launch), anything else as given, for the checks to refuse."""
    return tuple(int(x) if is_integer(x) else x for x in xs)


def check_block_stride(block_size: int, stride: int | None, *, estimate: bool = False) -> None:
    """``stride``: None for the attention alone; the estimate (``estimate=True``) needs one."""
    if not is_integer(block_size) or block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size must be an int, one of {BLOCK_SIZES}, got {block_size!r}")
    if stride is not None or estimate:
        if not is_integer(stride) or stride not in STRIDES:
            raise ValueError(f"stride must be an int, one of {STRIDES}, got {stride!r}")
        if block_size % stride:
            raise ValueError(f"stride ({stride}) must divide block_size ({block_size})")


def on_device(t: torch.Tensor) -> bool:
    """Whether a value check of ``t`` runs on its device rather than reading it on the host: on
    CUDA (an attention call never waits on a host read), under ``torch.compile``, and for
    tensors without values (meta, fake), whose shapes are all a call can infer."""
    return t.is_cuda or t.is_meta or isinstance(t, FakeTensor) or torch.compiler.is_compiling()


def require(cond: torch.Tensor, msg: str) -> None:
    """``ValueError(msg)`` unless the bool tensor ``cond`` holds. Where :func:`on_device`, the
    check runs on the device (``torch._assert_async``, failing the next synchronising call;
    a no-op without values)."""
    if on_device(cond):
        torch._assert_async(cond, msg)
    elif not bool(cond):
        raise ValueError(msg)


def _is_int_dtype(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def check_selection(threshold, ratio, heads: int) -> None:
    if (threshold is None) == (ratio is None):
        raise ValueError("give exactly one of `threshold` and `ratio`")
    if threshold is not None:
        if isinstance(threshold, bool) or (
            isinstance(threshold, torch.Tensor) and not threshold.is_floating_point()
        ):
            raise ValueError(f"threshold must be a float or a float (H,) tensor, got {threshold}")
        if not isinstance(threshold, torch.Tensor) and not is_real(threshold):
            raise ValueError(f"threshold must be a float or a float (H,) tensor, got {threshold!r}")
        if not isinstance(threshold, torch.Tensor):  # a Python number: no tensor, no read
            if not (0.0 < float(threshold) <= 1.0):
                raise ValueError(f"threshold must be in (0, 1], got {threshold}")
            return
        thr = threshold
        if thr.ndim > 1 or (thr.ndim == 1 and thr.shape[0] != heads):
            raise ValueError(
                f"threshold must be a float or a per-head tensor of shape ({heads},) for "
                f"{heads} heads, got shape {tuple(thr.shape)}"
            )
        require(((thr > 0) & (thr <= 1)).all(), "threshold must be in (0, 1] (an (H,) tensor)")
    if ratio is not None:
        if not is_real(ratio):
            raise ValueError(f"ratio must be a float in (0, 1], got {ratio!r}")
        if not (0.0 < float(ratio) <= 1.0):
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")


def check_max_density(max_density) -> None:
    if max_density is not None and not (is_real(max_density) and 0.0 < max_density <= 1.0):
        raise ValueError(f"max_density must be a float in (0, 1], got {max_density!r}")


def check_scale(scale) -> None:
    """The softmax scale: None (1/sqrt(D)) or a finite number > 0. The kernels mask padded keys
    with -inf before scaling, so 0 or a negative scale would give NaN rows there."""
    # comparisons, not math.isfinite: a SymFloat (the second scale torch.compile sees) traces
    if scale is not None and not (is_real(scale) and 0 < scale < math.inf):
        raise ValueError(f"scale must be a finite number > 0 (or None), got {scale!r}")


def check_kv_len(kv_len: torch.Tensor | None, batch: int, n_k: int) -> None:
    if kv_len is None:
        return
    if not isinstance(kv_len, torch.Tensor) or kv_len.shape != (batch,):
        raise ValueError(f"kv_len must be an int tensor of shape ({batch},)")
    if not _is_int_dtype(kv_len):
        raise ValueError(f"kv_len must be an integer tensor, got {kv_len.dtype}")
    if on_device(kv_len):
        require(((kv_len >= 1) & (kv_len <= n_k)).all(), f"kv_len values must be in [1, {n_k}]")
        return
    lo, hi = int(kv_len.min()), int(kv_len.max())
    if lo < 1 or hi > n_k:
        raise ValueError(f"kv_len values must be in [1, {n_k}], got [{lo}, {hi}]")


def check_dense_from(dense_from, batch: int, n_tokens: int) -> None:
    """dense_from: None, an int or an int tensor of shape () / (B,), each in [0, n_tokens]."""
    if dense_from is None:
        return
    if isinstance(dense_from, torch.Tensor):
        if not _is_int_dtype(dense_from) or dense_from.shape not in ((), (1,), (batch,)):
            raise ValueError(
                f"dense_from must be an int or an int tensor of shape ({batch},), got "
                f"{dense_from.dtype} {tuple(dense_from.shape)}"
            )
        if on_device(dense_from):
            ok = ((dense_from >= 0) & (dense_from <= n_tokens)).all()
            require(ok, f"dense_from must be in [0, {n_tokens}]")
            return
        lo, hi = int(dense_from.min()), int(dense_from.max())
    elif is_integer(dense_from):
        lo = hi = int(dense_from)
    else:
        raise ValueError(f"dense_from must be an int or an int tensor, got {dense_from!r}")
    if lo < 0 or hi > n_tokens:
        raise ValueError(f"dense_from must be in [0, {n_tokens}], got [{lo}, {hi}]")


def check_triton_dtype(backend: str, t: torch.Tensor, *, attention: bool = True) -> None:
    """On CUDA the Triton kernels take fp16/bf16 (the estimate alone, ``attention=False``, also
    fp32); under the interpreter not bf16."""
    if backend == "triton" and t.is_cuda:
        ok = (torch.float16, torch.bfloat16) + (() if attention else (torch.float32,))
        if t.dtype not in ok:
            what = "attention kernels take" if attention else "estimate takes"
            raise ValueError(
                f"on CUDA the Triton {what} {'/'.join(str(d)[6:] for d in ok)}, got "
                f"{t.dtype}: cast q, k, v first or use backend='torch'"
            )
    if backend == "triton" and t.dtype == torch.bfloat16 and not t.is_cuda:
        raise ValueError(
            "bf16 with backend='triton' under the Triton interpreter (TRITON_INTERPRET=1) gives "
            "wrong results (the interpreter's bf16 tl.dot is broken upstream): cast q, k, v to "
            "float32 or float16, or use backend='torch'"
            + ("" if interpreter_enabled() else " (the interpreter is not even enabled)")
        )


def check_fp8_attention(backend: str, q, k, v, block_size: int) -> None:
    """``precision="fp8"`` runs on the Hopper / Gluon kernels only: refuse what they cannot take
    before the estimate runs. Inputs with a strided last dim are copied later, so the kernel
    layer checks those; so it does under torch.compile, where the pick (it reads data
    pointers) cannot be traced and the registered op refuses at run time."""
    if torch.compiler.is_compiling():
        return
    if backend == "triton" and not q.is_cuda:  # the interpreter: CUDA's capability query raised
        raise ValueError(FP8_NEEDS)
    if backend == "triton" and q.is_cuda and all(t.stride(-1) == 1 for t in (q, k, v)):
        if attention_kernel_for(q, k, v, block_size, "auto", "fp8") == "portable":
            raise ValueError(FP8_NEEDS)


FP8_ESTIMATE_GPU = (
    "an fp8 estimate on the Triton backend needs an sm90+ GPU (the torch backend emulates it)"
)


FP8_ESTIMATE_AUTO_HEAD_DIMS = (64, 128)
"""Head dims at which "auto" picks the fp8 estimate on Hopper: those its GPU tests run (e4m3
tensor-core dots need a head dim of at least 32; 16 cannot compile)."""
FP8_ESTIMATE_MIN_HEAD_DIM = 32
FP8_ESTIMATE_AUTO_MAJOR = 9
"""Compute capability major of the GPUs where ``estimate_precision="auto"`` estimates in fp8
under bf16 attention too: Hopper (H100 / H200), where the fp8 estimate was measured to keep the
masks (0.13% of block pairs decided differently on the trained tiny DiT, the same attention
mass kept), the videos' quality (+0.02 dB PSNR against dense) and 25-42% of the estimate's time
(docs/attention-kernels.md). Other GPUs are not measured and keep the attention's precision."""


def fp8_estimate_by_default(
    backend: str, device: torch.device | str | None, head_dim: int | None
) -> bool:
    """Whether "auto" picks the fp8 estimate for bf16 attention: the Triton backend
    (``backend`` resolved, or "auto") on a CUDA ``device`` of compute capability
    :data:`FP8_ESTIMATE_AUTO_MAJOR`.x, at a head dim of :data:`FP8_ESTIMATE_AUTO_HEAD_DIMS`.
    ``device`` None: no GPU (False); ``head_dim`` None: not known (False)."""
    if device is None or backend == "torch" or head_dim not in FP8_ESTIMATE_AUTO_HEAD_DIMS:
        return False
    device = torch.device(device)
    if device.type != "cuda":
        return False
    # get_device_properties, not get_device_capability: torch.compile folds the former
    return torch.cuda.get_device_properties(device).major == FP8_ESTIMATE_AUTO_MAJOR


def fp8_kernels_missing() -> str | None:
    """Why this Triton has no fp8 attention kernel on any GPU (the Hopper kernels need TMA
    tensor descriptors, Triton >= 3.4), None when it has one."""
    if HAS_TENSOR_DESC:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        this = f"this is Triton {version('triton')}"
    except PackageNotFoundError:
        this = "Triton is not installed"
    return f"precision='fp8' needs Triton >= 3.4 (TMA descriptors); {this}"


def resolve_estimate_precision(
    estimate_precision: str,
    precision: str,
    *,
    backend: str,
    device: torch.device | str | None,
    head_dim: int | None,
) -> str:
    """The estimate's arithmetic, "bf16" or "fp8": ``estimate_precision``, or for "auto" fp8
    with fp8 attention (which then quantizes Q and K once for both) and with bf16 attention
    where :func:`fp8_estimate_by_default` (``backend`` on ``device``, the GPU the call runs
    on, at ``head_dim``: Hopper, head dim 64 or 128), bf16 elsewhere. ValueError on anything
    else."""
    if estimate_precision == "auto":
        check_precision(precision)
        if precision == "fp8" or fp8_estimate_by_default(backend, device, head_dim):
            return "fp8"
        return "bf16"
    if estimate_precision not in ESTIMATE_PRECISIONS:
        raise ValueError(
            f"estimate_precision must be one of {ESTIMATE_PRECISIONS}, got {estimate_precision!r}"
        )
    return estimate_precision


def check_estimate_precision(precision: str, backend: str, q: torch.Tensor) -> None:
    """ValueError unless ``precision`` is "bf16", or "fp8" on the torch backend (emulated) or
    on the Triton backend with q on a GPU (the estimate op checks for sm90+ when it runs)."""
    check_precision(precision, "estimate precision")
    if precision == "fp8" and backend == "triton" and not q.is_cuda:
        raise ValueError(FP8_ESTIMATE_GPU)
    if precision == "fp8" and backend == "triton" and q.shape[-1] < FP8_ESTIMATE_MIN_HEAD_DIM:
        raise ValueError(
            f"the fp8 estimate needs a head dim of at least {FP8_ESTIMATE_MIN_HEAD_DIM} (e4m3 "
            f"tensor-core dots), got {q.shape[-1]}: use estimate_precision='bf16'"
        )


def check_estimate_kernel(kernel: str, name: str = "estimate_kernel") -> None:
    """The op's estimate kernel choices, :data:`.kernels.tuning.AUTOMATIC_ESTIMATE_KERNELS`:
    "auto" (the Triton estimate; the tuning module keeps the Gluon one out of it) or
    "prefer-gluon" (the experimental Gluon estimate wherever ``tuning.GLUON_ESTIMATE`` measured
    it faster on this GPU, the Triton one elsewhere)."""
    if kernel not in AUTOMATIC_ESTIMATE_KERNELS:
        raise ValueError(f"{name} must be one of {AUTOMATIC_ESTIMATE_KERNELS}, got {kernel!r}")


def check_triton_head_dim(backend: str, head_dim: int) -> None:
    if backend == "triton" and head_dim not in TRITON_HEAD_DIMS:
        raise ValueError(
            f"head dim {head_dim} is not supported by the Triton kernels "
            f"(supported: {TRITON_HEAD_DIMS}); use backend='torch'"
        )


def propagate_nonfinite(res, bad: torch.Tensor, return_lse: bool):
    """Set the rows flagged in ``bad`` (B, H, Nq) bool -- those of
    :func:`xattn_video.kernels.nonfinite.nonfinite_rows_ref` -- to NaN in out (and lse)."""
    out, lse = res if return_lse else (res, None)
    out = out.masked_fill(bad[..., None], float("nan"))
    if lse is None:
        return out
    return out, lse.masked_fill(bad, float("nan"))
