"""What ``generate`` needs from ``torch.distributed`` beyond accelerate's process state.

- :func:`process_state`: accelerate's process state, refused when it disagrees with the
  launch's ``WORLD_SIZE``; :func:`data_parallel`: this process's ``--ulysses`` group.
- :func:`finish_group` / :func:`wait_for_everyone`: the last barrier of a multi-process run
  (the main process keeps the run directory's lock until every process is done) on its own
  CPU (gloo) group with a long timeout. The default group's timeout (NCCL: 10 minutes) is
  shorter than the time a process with one prompt fewer waits for the others: a whole video,
  26 minutes for HunyuanVideo 720p on one H200, and the job would abort on that wait.
- :func:`anyone_has_work`: with ``--ulysses``, setting up sequence parallelism (the device mesh,
  diffusers' ``enable_parallelism``) is collective over all processes, so a data-parallel
  group whose prompts are all finished (fewer prompts than groups, or a resume) still sets up
  when any other group has prompts to run, instead of leaving the others waiting forever.
- :func:`check_ulysses_sizes`: head, video-token and (HunyuanVideo-style transformers, whose
  text tokens are split too) text-token counts that the Ulysses degree does not divide, refused
  before the first video (``ValueError``; ``generate`` turns it into a setup error); the
  transformer's own check hook checks every forward's inputs again. Before the model loads,
  :func:`heads_refusal` (the default weights' head count) and :func:`padded_text_refusal`
  (HunyuanVideo's padded text) refuse what that check would, from the model's spec.
- :func:`dense_layout_config`: the XAttention configuration that runs every step dense. Dense
  HunyuanVideo runs under ``--ulysses`` install the XAttention processors with it: diffusers'
  own processor applies the whole-sequence key-padding mask to the rank-interleaved keys,
  which is exact only when the padding fits in the last rank's text share.

Not supported: process groups other than the default one (accelerate's), elastic launches.
"""

from __future__ import annotations

import datetime
import math
import os
from typing import Any

import torch
import torch.distributed as dist

from xattn_video.config import XAttentionConfig

from .options import SetupError

FINISH_TIMEOUT = datetime.timedelta(days=7)
"""How long the last barrier waits for the slowest process."""


def finish_group(num_processes: int) -> Any:
    """A gloo group over every process for :func:`wait_for_everyone` (collective: every
    process calls it, at set-up); None for one process."""
    if num_processes < 2:
        return None
    return dist.new_group(backend="gloo", timeout=FINISH_TIMEOUT)


def wait_for_everyone(group: Any) -> None:
    """Barrier on :func:`finish_group`'s group (no-op for None)."""
    if group is not None:
        dist.barrier(group=group)


def anyone_has_work(n_todo: int, num_processes: int) -> bool:
    """Whether any process has prompts to run (collective over all processes; ``n_todo``:
    this process's count)."""
    if num_processes < 2:
        return n_todo > 0
    from accelerate.utils import gather_object

    return any(count > 0 for count in gather_object([n_todo]))


def text_length(pipe: Any, call_kwargs: dict[str, Any]) -> int | None:
    """Text tokens per prompt that ``pipe`` gives its transformer: the tiny DiT's condition
    tokens, else ``max_sequence_length`` (the call's, else the pipeline's default: HunyuanVideo
    pads every prompt to it); None where the pipeline has neither."""
    import inspect

    embedder = getattr(pipe, "condition_embedder", None)  # the tiny DiT's: a token per table
    if embedder is not None and hasattr(embedder, "tables"):
        return len(embedder.tables)
    param = inspect.signature(pipe.__call__).parameters.get("max_sequence_length")
    length = call_kwargs.get("max_sequence_length", None if param is None else param.default)
    return length if isinstance(length, int) else None


def check_ulysses_sizes(
    pipe: Any, *, height: int, width: int, frames: int, call_kwargs: dict[str, Any]
) -> None:
    """``ValueError`` when the transformer's Ulysses degree (after ``enable_context_parallel``)
    does not divide its head count, the video token count of ``height`` x ``width`` x
    ``frames`` (the VAE's scale factors, none without a VAE, and the transformer's patch size
    give the grid) or, for a transformer that splits its text tokens too, :func:`text_length`
    (``call_kwargs``: the pipeline call's own arguments)."""
    from xattn_video.parallel import check_parallel_inputs, ulysses_group

    tr = pipe.transformer
    vae = getattr(pipe, "vae", None) is not None  # the tiny DiT denoises pixels
    t_scale = int(getattr(pipe, "vae_scale_factor_temporal", 4 if vae else 1))
    s_scale = int(getattr(pipe, "vae_scale_factor_spatial", 8 if vae else 1))
    grid = ((frames - 1) // t_scale + 1, height // s_scale, width // s_scale)
    latents = torch.empty((1, int(tr.config.in_channels), *grid), device="meta")
    length = text_length(pipe, call_kwargs)
    text = None if length is None else torch.empty((1, length, 1), device="meta")
    try:
        check_parallel_inputs(tr, latents, text)
    except ValueError as e:
        tables = getattr(getattr(pipe, "condition_embedder", None), "tables", None)
        group = ulysses_group(getattr(tr, "_parallel_config", None))
        if tables is None or group is None or len(tables) % group[1] == 0:
            raise
        # the tiny DiT: its text is a fixed count of condition tokens, no max_sequence_length
        raise ValueError(fixed_text_refusal(len(tables), group[1])) from e


def parallel_degree(transformer: Any) -> int:
    """The Ulysses degree a transformer's context parallelism already runs with (1: none)."""
    config = getattr(transformer, "_parallel_config", None)
    cp = getattr(config, "context_parallel_config", None)
    return int(getattr(cp, "ulysses_degree", None) or 1) if cp is not None else 1


def experts_to_parallelize(experts: list[Any], ulysses: int) -> list[Any]:
    """Of a pipeline's transformers, those ``--ulysses`` still has to make context-parallel:
    none when they already run with that degree (a pipeline passed to ``generate`` again, whose
    second ``enable_parallelism`` raised diffusers' "cannot be called twice"). SetupError when
    one runs with another degree, or with any under ``--ulysses 1`` (whose data-parallel split
    would exchange tokens between processes running different prompts: wrong frames)."""
    degrees = {parallel_degree(tr) for tr in experts}
    if degrees == {ulysses}:
        return []
    if degrees != {1}:
        raise SetupError(
            f"the pipeline's transformer already runs Ulysses sequence parallelism of degree "
            f"{'/'.join(map(str, sorted(degrees)))}, and this run asks for --ulysses {ulysses}: "
            "load the pipeline again (diffusers cannot undo enable_parallelism)"
        )
    return experts


def fixed_text_refusal(tokens: int, degree: int) -> str:
    """Why a model whose text is ``tokens`` fixed tokens can't run at Ulysses ``degree``."""
    return (
        f"this model's text is {tokens} condition tokens, a fixed count that the Ulysses degree "
        f"{degree} does not divide: run it without --ulysses, or use --model tiny-hunyuan"
    )


HUNYUAN_TEXT_TOKENS = 256
"""``HunyuanVideoPipeline``'s default ``max_sequence_length``: every prompt is padded to it."""


def padded_text_refusal(spec: Any, degree: int) -> str | None:
    """Why ``spec``'s model can't run at Ulysses ``degree`` because of its padded text length
    (HunyuanVideo splits its text tokens over the ranks; Wan does not), None when it can: said
    before the model loads, with a degree the command line can give."""
    if spec.family != "hunyuanvideo" or spec.text_tokens:
        return None
    length = spec.call_kwargs.get("max_sequence_length", HUNYUAN_TEXT_TOKENS)
    if length % degree == 0:
        return None
    heads = ""
    if spec.heads:
        common = math.gcd(length, spec.heads)
        ok = [str(d) for d in range(2, common + 1) if common % d == 0] or ["none"]
        heads = f" ({spec.name}'s {spec.heads} heads: {_or(ok)})"
    return (
        f"{spec.name} pads every prompt to {length} text tokens, which Ulysses splits over the "
        f"ranks and {degree} does not divide: use a degree that divides both {length} and the "
        f"head count{heads}"
    )


def heads_refusal(spec: Any, degree: int, *, custom_weights: bool) -> str | None:
    """Why ``spec``'s default weights can't run at Ulysses ``degree`` (each rank takes
    heads / degree heads), None when they can or the weights are the user's own
    (``custom_weights``: ``--model-path`` / ``--model-id``, other head counts): said before the
    model loads."""
    if custom_weights or not spec.heads or spec.heads % degree == 0:
        return None
    ok = [str(d) for d in range(2, spec.heads + 1) if spec.heads % d == 0]
    return (
        f"{spec.name}'s transformer has {spec.heads} attention heads, which Ulysses splits over "
        f"the ranks and {degree} does not divide: use {_or(ok)}"
    )


def _or(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def dense_layout_config(steps: int) -> XAttentionConfig:
    """Every one of ``steps`` steps dense (diffusers' attention inside the XAttention
    processors, which put the Ulysses ranks' tokens in one-GPU order first), no statistics,
    no cost model."""
    return XAttentionConfig(warmup_steps=steps, collect_stats=False, auto_dense=False)


def process_state() -> Any:
    """accelerate's process state. Without CUDA, ``cpu=True`` makes a torchrun-style launch
    (``accelerate launch --multi_gpu``, ``torchrun``) a gloo multi-CPU group instead of several
    independent single processes that would all generate every prompt."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != world:
        raise SetupError(
            f"launched as {world} processes (WORLD_SIZE) but accelerate sees "
            f"{state.num_processes}; refusing to run, every process would generate every prompt"
        )
    return state


def data_parallel(ulysses: int, state: Any) -> tuple[int, int, int]:
    """(group, number of groups, rank in the group) for ``--ulysses`` = P consecutive
    processes per prompt (the layout of ``xattn_video.parallel.make_mesh``)."""
    P = ulysses
    if state.num_processes % P:
        raise SetupError(
            f"--ulysses {P} needs a process count that is a multiple of {P}, got "
            f"{state.num_processes}"
        )
    return state.process_index // P, state.num_processes // P, state.process_index % P
