"""Generate one video per prompt, dense or with XAttention, into a resumable run directory.

``generate(GenerateOptions(...))`` loads the prompts and the pipeline, optionally applies
XAttention (``xattn_video.apply_xattention``), and writes per prompt ``video.mp4``,
``frames.npy`` and, last and atomically, ``meta.json`` (the layout and records are owned by
``xattn_video.rundir``).

Determinism: every prompt is generated with the same seed, ``seed``, through a
``torch.Generator`` on the pipeline's device, so a dense and a sparse run (and a one-process
and a multi-process run) start every prompt from the same noise. CPU and CUDA generators give
different noise for the same seed: compare runs made on the same device type.

Timings (``meta.json["timings"]``): ``total_s`` is the whole pipeline call (text encoding,
denoising, VAE decoding); ``per_step_s`` are the denoising steps, from the first transformer
forward to each ``callback_on_step_end``; ``denoise_s`` is their sum. The device is
synchronised before every clock read. The first prompt of each process also pays for kernel
compilation / autotuning (``meta.json["first_in_process"]`` is true): leave it out of speed
comparisons. ``compile`` (``--compile``) compiles the transformer after XAttention is applied
(dense runs too); run.json records the mode (``pipelines.compiling``).

Several processes (``accelerate launch``): the selected prompts are split by position,
``prompts[rank::world]``, before finished ones are skipped, so each prompt belongs to exactly
one process and the split does not depend on timing. Only the main process writes run.json,
once the pipeline is set up (a setup error leaves none behind).
With ``ulysses=P`` (sequence parallelism, :func:`xattn_video.parallel.enable_context_parallel`)
the processes form world/P data-parallel groups of P consecutive ranks: group g takes
``prompts[g::world/P]``, all P processes of a group run each of its prompts together, and only
the group's first process writes the prompt's files. A group with nothing left to run still
sets up when another group has prompts (the set-up is collective); sizes the degree does not
divide are refused before the first video; dense HunyuanVideo runs use the XAttention
processors with every step dense (see ``pipelines.multiprocess``). Every process waits for the
others at the end on a barrier with a 7-day timeout.

Resume and interruption: a prompt is skipped when its ``meta.json`` exists, its
``frames.npy`` is intact (length from its header, size and SHA-256 recorded in meta.json) and
its prompt text equals this run's; otherwise it is generated again and the reason is logged
(logger ``xattn_video.pipelines.resume``, which owns these checks). Every file is written to a
temporary name and renamed, so an interrupted prompt is never marked finished.
``KeyboardInterrupt`` stops after cleaning up the current prompt and returns
``interrupted=True``. A video with NaN / inf values (a broken kernel or an overflow) is not
written: its prompt is listed in ``failed`` and left unfinished, so a rerun retries it; the
other prompts go on. A finished run is not written to at all (it resumes from a read-only
directory).

Concurrency: the (main) process holds ``RUN_DIR/.lock`` (``flock``) while the run writes the
directory; a second ``generate`` on the same directory fails at once with ``SetupError``
(exit 2) naming the holder's pid: wait for the first one, then rerun to resume.

Not supported: batching several prompts into one pipeline call, several videos per prompt,
negative prompts, changing the guidance scale (the pipelines' defaults are used), CPU offload.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xattn_video import rundir, runlock
from xattn_video.atomic import WriteFailed
from xattn_video.config import XAttentionConfig

from . import runinfo
from .compiling import compile_label, compile_transformer
from .models import ModelSpec, load_pipeline
from .multiprocess import (
    anyone_has_work,
    check_ulysses_sizes,
    data_parallel,
    dense_layout_config,
    experts_to_parallelize,
    finish_group,
    fixed_text_refusal,
    heads_refusal,
    padded_text_refusal,
    process_state,
    wait_for_everyone,
)
from .options import (
    ATTENTIONS,
    DTYPES,
    GenerateOptions,
    SetupError,
    check_backend,
    check_compile_options,
    check_model_path,
    check_out,
    dtype_name_for,
    load_prompts_or_fail,
    resolve_device,
    resolve_options,
)
from .resume import (
    check_resume,
    config_record,
    prompts_label,
    prompts_to_do,
    restore_videos,
    thresholds_changed,
    thresholds_digest,
)
from .steptimer import StepTimer, sync

__all__ = [
    "ATTENTIONS",
    "DTYPES",
    "GenerateOptions",
    "GenerateResult",
    "SetupError",
    "generate",
    "resolve_options",
]

_log = logging.getLogger(__name__)


@dataclass
class GenerateResult:
    """What one process did."""

    out: Path
    total: int
    """Prompts selected (all processes)."""
    assigned: int
    """Prompts of this process."""
    generated: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    redone: dict[int, str] = field(default_factory=dict)
    """Prompts that had a meta.json but were generated again, with the reason."""
    reencoded: dict[int, str] = field(default_factory=dict)
    """Skipped prompts whose video.mp4 was missing or cut, with the reason: encoded again from
    frames.npy where the directory is writable."""
    failed: dict[int, str] = field(default_factory=dict)
    """Prompts whose video had NaN / inf values, with the count: nothing written for them."""
    interrupted: bool = False
    compile: str = "eager"
    """The mode that ran (``RunRecord.compile``)."""
    process_index: int = 0
    num_processes: int = 1
    writer: int | None = None
    """``--ulysses`` peers: the process that writes this group's files (``generated`` are
    the prompts this one ran with it); None where this process writes its own."""


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) floats in [0, 1] -> uint8, rounded to nearest."""
    return np.clip(np.rint(np.asarray(frames, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def _lock(out: Path, state: Any) -> tuple[runlock.RunLock | None, bool]:
    """Main process: create ``out`` and take its lock; every process learns whether the
    directory is writable. Raises SetupError (all processes) when another run holds it."""
    lock, status, failed = None, "ok", False
    if state.is_main_process:
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock = runlock.RunLock(out)
            # an old .lock file may stay writable in a directory that is not (chmod a-w)
            status = "ok" if lock.acquire() and runlock.writable_dir(out) else "read-only"
        except rundir.RunDirLocked as e:
            status = str(e)
        except WriteFailed as e:  # the folder is there, its .lock could not be written
            status, failed = e.strerror or str(e), True
        except OSError as e:
            status = f"can't create the run directory {out}: {e.strerror or e}"
        if status == "ok":  # no live writer under the lock: leftovers of a killed run
            rundir.remove_leftovers(out)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        status, failed = broadcast_object_list([status, failed])
    if failed:
        raise WriteFailed(status)
    if status not in ("ok", "read-only"):
        raise SetupError(status)
    return lock, status == "ok"


def generate(opts: GenerateOptions, *, pipe: Any = None) -> GenerateResult:
    """Run ``opts`` (this process's share of the prompts); see the module docstring.

    Args:
        opts: the run settings.
        pipe: an already loaded pipeline to use instead of ``load_pipeline`` (tests, notebooks);
            ``--ulysses P`` leaves it context-parallel: pass it again only with the same P.

    Raises:
        SetupError: bad options, prompts, model, device or config, ``out`` is a file, holds a
            run with other settings, is locked by another process, or is read-only while
            prompts remain (all found before the first video).
        xattn_video.prompts.PromptDataMissing: the prompt suite is not available.
    """
    spec, r = resolve_options(opts)
    if pipe is None:  # else model_path is only recorded
        check_model_path(opts.model_path)
    state = process_state()
    device = resolve_device(opts, state)
    config: XAttentionConfig | None = r["config"]
    check_backend(config, device)
    P, fixed = opts.ulysses, spec.text_tokens
    if P > 1 and fixed and fixed % P:  # first: the preset's refusals would not make it run
        raise SetupError(f"--ulysses {P}: {fixed_text_refusal(fixed, P)}")
    custom = pipe is not None or opts.model_path is not None or opts.model_id is not None
    refusal = heads_refusal(spec, P, custom_weights=custom) if P > 1 else None
    refusal = refusal or (padded_text_refusal(spec, P) if P > 1 else None)
    if refusal:
        raise SetupError(f"--ulysses {P}: {refusal}")
    if opts.ulysses > 1 and config is not None:
        from xattn_video.parallel import check_parallel_config

        try:
            check_parallel_config(config)
        except ValueError as e:
            raise SetupError(f"--ulysses {opts.ulysses}: {e}") from None
    check_compile_options(opts, device)
    dtype_name = dtype_name_for(opts.dtype, device)
    prompts = load_prompts_or_fail(
        opts.prompts,
        data_dir=opts.prompts_dir,
        dimension=opts.dimension,
        limit=opts.limit,
        sample=opts.sample,
    )
    out = Path(opts.out)
    old = check_out(out)
    source = opts.model_id or (str(Path(opts.model_path).resolve()) if opts.model_path else None)
    env = {
        "gpu": runinfo.gpu_name(device),
        "versions": runinfo.versions(),
        "git_sha": runinfo.git_sha(),
    }
    run = rundir.RunRecord(
        model=spec.name,
        model_source=source or spec.default_id,
        attention=opts.attention,
        config=config_record(config, device, spec.head_dim),
        height=r["height"],
        width=r["width"],
        frames=r["frames"],
        steps=r["steps"],
        seed=opts.seed,
        fps=r["fps"],
        dtype=dtype_name,
        prompts=prompts_label(opts.prompts),
        selection={"dimension": opts.dimension, "sample": opts.sample, "limit": opts.limit},
        num_prompts=len(prompts),
        num_processes=state.num_processes,
        command=runinfo.command_line(),
        compile=compile_label(opts.compile, opts.compile_backend),
        ulysses=opts.ulysses,
        thresholds_sha256=thresholds_digest(config),
        **env,
    )
    lock, writable = _lock(out, state)
    finish = finish_group(state.num_processes)
    try:  # under the lock: another run can't change what is checked, nor be told it was replaced
        old = check_out(out)
        check_resume(out, old, run, [p.index for p in prompts], warn=state.is_main_process)
        group, groups, peer = data_parallel(opts.ulysses, state)
        mine = prompts[group::groups]
        result = GenerateResult(
            out=out,
            total=len(prompts),
            assigned=len(mine),
            compile=run.compile,
            process_index=state.process_index,
            num_processes=state.num_processes,
            writer=state.process_index - peer if peer else None,
        )
        todo = prompts_to_do(out, mine, result, progress=opts.progress and state.is_main_process)
        if peer == 0:  # sequence-parallel peers write nothing
            restore_videos(out, result.reencoded, r["fps"], writable)
        if not writable:
            if todo:
                raise SetupError(
                    f"{out} is not writable and {len(todo)} prompt(s) are not finished"
                )
            return result  # a finished run: nothing to write, not even run.json
        pending = bool(todo) or any(
            not (out / rundir.prompt_dir_name(p.index) / rundir.META_FILE).is_file()
            for p in prompts
        )
        # run.json once the pipeline is set up: a setup error leaves nothing that blocks the rerun
        write_run = state.is_main_process and (old is None or pending)
        # --ulysses: setting up sequence parallelism is collective over every process, so a
        # group with nothing left to run sets up too when another group has prompts (every
        # process takes part in finding out: it is a collective too)
        busy = anyone_has_work(len(todo), state.num_processes) if opts.ulysses > 1 else False
        if todo or busy:
            _generate_prompts(opts, spec, r, run, env, todo, device, state, result, pipe, write_run)
        elif write_run:
            run.write(out)
        if not result.interrupted:
            wait_for_everyone(finish)  # the lock stays held until every process is done
        return result
    finally:
        if lock is not None:
            lock.release()


def _generate_prompts(
    opts: GenerateOptions,
    spec: ModelSpec,
    r: dict[str, Any],
    run: rundir.RunRecord,
    env: dict[str, Any],
    todo: list[Any],
    device: torch.device,
    state: Any,
    result: GenerateResult,
    pipe: Any,
    write_run: bool,
) -> None:
    from tqdm.auto import tqdm

    from xattn_video.metrics import save_frames, write_video

    show = opts.progress and state.is_main_process
    if pipe is None:
        try:
            pipe = load_pipeline(
                spec.name,
                model_path=opts.model_path,
                model_id=opts.model_id,
                dtype=DTYPES[run.dtype],
                device=device,
                progress=show,
            )
        except (ValueError, FileNotFoundError) as e:
            raise SetupError(str(e)) from e
    if spec.random_weights and spec.family == "hunyuanvideo":
        # tiny-hunyuan's character-level CLIP truncates nearly every prompt at 77 tokens
        logging.getLogger("diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video").setLevel(
            logging.ERROR
        )
    # the pipeline's own bar over the steps: only for real models (tiny steps are short)
    pipe.set_progress_bar_config(disable=not show or spec.is_tiny, leave=False, position=1)
    writer = data_parallel(opts.ulysses, state)[2] == 0  # sequence-parallel peers write nothing
    experts = [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t]
    todo_cp = experts_to_parallelize(experts, opts.ulysses)  # a pipe passed in may already be
    if opts.ulysses > 1:
        from xattn_video.parallel import enable_context_parallel, make_mesh

        try:
            mesh = make_mesh(opts.ulysses) if todo_cp else None  # Wan 2.2 A14B: one mesh
            for tr in todo_cp:
                enable_context_parallel(tr, opts.ulysses, mesh=mesh)
            check_ulysses_sizes(pipe, height=r["height"], width=r["width"], frames=r["frames"],
                                call_kwargs=spec.call_kwargs)  # fmt: skip
        except ValueError as e:
            raise SetupError(f"--ulysses {opts.ulysses}: {e}") from e
    handle = None
    config = r["config"]
    if config is None and opts.ulysses > 1 and spec.family == "hunyuanvideo":
        config = dense_layout_config(r["steps"])  # diffusers' processor: exact without padding
    if config is not None:
        from xattn_video import apply_xattention

        try:
            handle = apply_xattention(pipe, config)
        except ValueError as e:
            raise SetupError(f"XAttention can't be applied: {e}") from e
    # Wan 2.2: both experts (transformer_2 ran eagerly in a run.json said to be compiled)
    undo = [compile_transformer(tr, opts.compile, opts.compile_backend) for tr in experts]
    if write_run:
        run.write(result.out)
    timer = StepTimer(device)
    hook = pipe.transformer.register_forward_pre_hook(timer.pre_forward)
    bar = tqdm(total=len(todo), desc=f"{run.attention} {spec.name}", unit="video", disable=not show)
    current: Path | None = None
    try:
        for n, prompt in enumerate(todo):
            current = result.out / rundir.prompt_dir_name(prompt.index) if writer else None
            if current is not None:
                rundir.start_prompt_dir(current)  # redone: meta.json (finished) removed
            if handle is not None:
                handle.forget_history()  # auto_dense decided from the prompt before: not ours
            timer.reset()
            generator = torch.Generator(device=device).manual_seed(opts.seed)
            sync(device)
            t0 = time.perf_counter()
            frames = pipe(
                prompt.text,
                height=r["height"],
                width=r["width"],
                num_frames=r["frames"],
                num_inference_steps=r["steps"],
                generator=generator,
                output_type="np",
                callback_on_step_end=timer.callback,
                **spec.call_kwargs,
            ).frames[0]
            sync(device)
            total_s = time.perf_counter() - t0
            changed = thresholds_changed(config, run.thresholds_sha256)
            if changed:  # the processors re-read the file at every sparse step: a mix
                raise SetupError(f"{changed}; prompt {prompt.index:05d} not written")
            bad = int(frames.size - np.isfinite(frames).sum())
            if bad:  # to_uint8 would write NaN as black and mark the prompt finished
                result.failed[prompt.index] = f"{bad} of {frames.size} values are NaN or inf"
                _log.error(
                    "prompt %05d: %s; nothing written", prompt.index, result.failed[prompt.index]
                )
                bar.update(1)
                continue
            video = to_uint8(frames)
            if current is None:  # a sequence-parallel peer: the group's first process writes
                result.generated.append(prompt.index)
                bar.update(1)
                continue
            write_video(current / rundir.VIDEO_FILE, video, r["fps"])
            frames_file = current / rundir.FRAMES_FILE
            save_frames(frames_file, video)
            per_step = timer.per_step()
            rundir.VideoRecord(
                prompt_index=prompt.index,
                prompt=prompt.text,
                dimensions=list(prompt.dimensions),
                seed=opts.seed,
                attention=run.attention,
                config=run.config,
                timings={
                    "total_s": total_s,
                    "denoise_s": sum(per_step),
                    "per_step_s": per_step,
                },
                density=handle.stats.summary() if r["config"] is not None else None,
                shape=list(video.shape),
                frames_bytes=frames_file.stat().st_size,
                frames_sha256=rundir.file_sha256(frames_file),
                video_bytes=(current / rundir.VIDEO_FILE).stat().st_size,
                first_in_process=n == 0,
                process={
                    "index": state.process_index,
                    "count": state.num_processes,
                    "ulysses": opts.ulysses,
                },  # fmt: skip
                **env,
            ).write(current)
            result.generated.append(prompt.index)
            bar.set_postfix(last=f"{total_s:.1f}s")
            bar.update(1)
            current = None
    except KeyboardInterrupt:
        result.interrupted = True
        if current is not None:
            rundir.remove_partial_files(current)
    finally:
        bar.close()
        hook.remove()
        for uncompile in undo:
            uncompile()
        if handle is not None:
            handle.remove()
