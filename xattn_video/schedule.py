"""Where a diffusers pipeline is in its denoising schedule, read from its scheduler.

:func:`scheduler_getter_for` reads ``pipe.scheduler`` at call time (pipelines may swap their
scheduler between calls) with the pipeline's loop ``t``, from which :class:`StoppedCalls` tells
a call stopped part-way (its scheduler left mid-run) from a running one (its state kept per
scheduler, :func:`stopped_call`);
:func:`scheduler_index` is the scheduler's position in its
``timesteps`` for the transformer forward about to run; :func:`timestep_value` the one number
a forward's timestep stands for. The step hook (:mod:`xattn_video.hook`) counts a call's steps
from them, from the call's start (:func:`call_start`), which is shared per scheduler: a
controller whose first forward comes after ``scheduler.step`` ran (Wan 2.2's ``transformer_2``
with processors of its own) counts from where the other controller saw the call start.

Not supported: schedulers whose ``timesteps`` are not the values the pipeline passes to the
transformer (before their first ``step``, without a ``begin_index``, the position is then
unknown: None, and the hook counts from the first ``step_index`` instead).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from .scalars import is_json_int

_UNSET = object()
ENDED = object()
"""The loop ``t`` :func:`scheduler_getter_for` gives for a pipeline whose call is over."""


def scheduler_getter_for(pipe: Any) -> Callable[[], tuple[Any, Any]] | None:
    """A callable returning ``(pipe.scheduler, loop t)`` at call time (weakly referenced; None if
    no pipe). The loop ``t`` is ``pipe._current_timestep``: diffusers pipelines set it to the
    loop's ``t`` before a step's forwards and to None when the call ends (also when a callback
    stopped it with ``pipe._interrupt``), given as :data:`ENDED`; None when the pipeline does
    not set it (see :class:`StoppedCalls`)."""
    if pipe is None:
        return None
    ref = weakref.ref(pipe)

    def get() -> tuple[Any, Any]:
        p = ref()
        if p is None:
            return None, None
        loop_t = getattr(p, "_current_timestep", _UNSET)
        if loop_t is None:
            loop_t = ENDED
        elif loop_t is _UNSET:
            loop_t = None
        return getattr(p, "scheduler", None), loop_t

    return get


class StoppedCalls:
    """Tells whether a pipeline's scheduler describes the forward about to run when the
    pipeline's call was stopped part-way, without a device read.

    A running denoising loop sets ``pipe._current_timestep`` to a new tensor object every step.
    A call stopped with ``pipe._interrupt`` ends it (None, :data:`ENDED`) with its scheduler
    mid-run; one that raised keeps its last ``t``. Either way the forwards of another pipeline
    object sharing the transformer would be counted as that step. The scheduler is stale

    - after the call ended, while its ``timesteps`` are still the ones of the last forward of a
      running call (another pipeline sharing the scheduler set up a new run: not stale; the
      same for a call that raised, whose ``t`` stays behind: once the scheduler's
      ``timesteps`` are new, that ``t`` no longer says anything);
    - when the loop's ``t`` is the object of the last forward but the scheduler's
      ``step_index`` moved on (it raised after ``scheduler.step``) or the cache context's
      branch (``"cond"``) already ran at it (it raised during the step).

    Not detected: a call that raised during a step, for a pipeline that sets no cache context
    names; a call of another pipeline object sharing this scheduler, stopped part-way, when a
    third one with a scheduler of its own runs the transformer next: its forwards are counted
    at the stopped call's next step (this pipeline's ``t`` is :data:`ENDED` throughout, and
    only the forward's timestep values, a device read, would tell the two apart).
    """

    def __init__(self) -> None:
        self._t: Any = None  # the loop's t of the last forward, its step_index and branches
        self._index: int | None = None
        self._branches: set[str] = set()
        self._timesteps: Any = None  # the scheduler's timesteps then
        self._stopped: Any = None

    def stopped(self, loop_t: Any, scheduler: Any, branch: str | None) -> bool:
        """Whether ``scheduler`` is a stopped call's; ``loop_t``: from
        :func:`scheduler_getter_for` (None: unknown, never stopped)."""
        timesteps = getattr(scheduler, "timesteps", None)
        if loop_t is ENDED:
            return timesteps is self._timesteps
        if loop_t is None:
            return False
        if (loop_t is self._stopped or loop_t is self._t) and timesteps is not self._timesteps:
            # set_timesteps ran since that t's forward: a call of another pipeline sharing the
            # scheduler runs now, and the scheduler is its (a raised call's t stays behind)
            return False
        if loop_t is self._stopped:
            return True
        index = getattr(scheduler, "step_index", None)
        if loop_t is self._t and (index != self._index or branch in self._branches):
            self._stopped = loop_t
            return True
        if loop_t is not self._t:
            self._t, self._index, self._branches = loop_t, index, set()
        if branch is not None:
            self._branches.add(branch)
        self._timesteps = timesteps
        return False


_stopped_calls: weakref.WeakKeyDictionary[Any, StoppedCalls] = weakref.WeakKeyDictionary()
"""scheduler -> the :class:`StoppedCalls` of its forwards, whichever controller saw them."""


def stopped_call(loop_t: Any, scheduler: Any, branch: str | None, own: StoppedCalls) -> bool:
    """:meth:`StoppedCalls.stopped` on the state kept for ``scheduler``, shared by every
    controller (a controller applied after the call stopped, or one per Wan 2.2 expert, has not
    seen the stopped call's last forward itself); ``own``: the caller's, for a scheduler that
    cannot be weakly referenced."""
    try:
        calls = _stopped_calls.get(scheduler)
        if calls is None:
            calls = _stopped_calls[scheduler] = StoppedCalls()
    except TypeError:  # not weakly referenceable
        calls = own
    return calls.stopped(loop_t, scheduler, branch)


def finished(scheduler: Any) -> bool:
    """Whether ``scheduler``'s ``step_index`` is past the end of its ``timesteps``: its run is
    over, so it says nothing about a forward now (the transformer is being run by another
    pipeline object with a scheduler of its own). Python ints only: no device read."""
    index = getattr(scheduler, "step_index", None)
    timesteps = getattr(scheduler, "timesteps", None)
    return index is not None and timesteps is not None and int(index) >= len(timesteps)


def unstarted(scheduler: Any) -> bool:
    """Whether ``scheduler`` was never set up for a run: no ``num_inference_steps`` (diffusers'
    schedulers set it in ``set_timesteps``), ``step_index`` or ``begin_index``, and its
    ``timesteps`` are the ``config.num_train_timesteps`` defaults of its construction. A
    forward's timestep can match one of those at a position that is not its step, so it says
    nothing about a forward now: another pipeline object, with a scheduler of its own, runs the
    transformer. A scheduler without that config is never taken as unstarted. Attributes only."""
    if any(getattr(scheduler, n, None) is not None for n in _RUN_ATTRIBUTES):
        return False
    train = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None)
    timesteps = getattr(scheduler, "timesteps", None)
    return train is not None and timesteps is not None and len(timesteps) == int(train)


_RUN_ATTRIBUTES = ("num_inference_steps", "step_index", "begin_index")


def idle(scheduler: Any) -> bool:
    """Whether ``scheduler`` is outside a run (:func:`finished` or :func:`unstarted`): it says
    nothing about a forward now."""
    return finished(scheduler) or unstarted(scheduler)


def timestep_value(timestep: Any) -> float:
    """One number for a forward's timestep: its max (scalar, (B,) or Wan 2.2's per-token
    (B, N), whose first-frame tokens keep 0)."""
    return float(torch.as_tensor(timestep).max())


def scheduler_index(scheduler: Any, timestep: Any = None) -> int | None:
    """The scheduler's position in its ``timesteps`` for the forward about to run, or None.

    ``step_index`` once ``scheduler.step`` has run; before that its ``begin_index`` when the
    pipeline set one, else the index of ``timestep`` (:func:`timestep_value`) in
    ``timesteps`` when it is there (the nearest, to 1e-3 relative): video-to-video pipelines run
    ``timesteps[t_start:]`` with neither set, so their first forward is not at index 0 (a
    timestep held twice -- Heun's -- at the second, as diffusers starts there).
    """
    index = getattr(scheduler, "step_index", None)
    if index is not None:
        return int(index)
    begin = getattr(scheduler, "begin_index", None)
    if begin is not None:
        return int(begin)
    timesteps = getattr(scheduler, "timesteps", None)
    if timestep is None or not isinstance(timesteps, torch.Tensor) or timesteps.numel() == 0:
        return None
    t = timestep_value(timestep)
    gap = (timesteps.detach().float().cpu() - t).abs()
    # the nearest within the tolerance: a shifted flow schedule of many steps holds its first
    # timesteps closer than 1e-3 (1000.0, 999.04, ... at shift 7 and 150 steps)
    match = ((gap <= 1e-3 * max(1.0, abs(t))) & (gap == gap.min())).nonzero().flatten().tolist()
    # a repeated timestep (Heun's two evaluations): the second, as diffusers'
    # index_for_timestep starts a call part-way through the schedule
    return match[1] if len(match) > 1 else (match[0] if match else None)


def evaluations_per_step(scheduler: Any) -> int:
    """Transformer forwards per denoising step: the scheduler's ``order`` as diffusers'
    pipelines read it (2 for Heun and KDPM2, whose ``timesteps`` hold each step's two
    evaluations and whose ``step_index`` moves at each; 1 for Euler and the multistep solvers,
    whatever their solver order), 1 when it is not a positive int."""
    order = getattr(scheduler, "order", 1)
    return order if is_json_int(order) and order > 0 else 1


_starts: weakref.WeakKeyDictionary[Any, tuple[Any, int]] = weakref.WeakKeyDictionary()
"""scheduler -> (its ``timesteps`` tensor of the call, the call's start index)."""


def call_start(scheduler: Any, index: int, *, first: bool) -> int:
    """Where the call ``scheduler`` runs started, from ``index``, the position of a controller's
    first forward of the call whose position is known (``first``: its first forward at all), and
    noted for the other controllers of the call (by ``scheduler`` and its ``timesteps`` tensor):

    - not ``first`` (forwards at an unknown position came before): one position before
      ``index`` (the first known ``step_index`` follows one ``scheduler.step``);
    - ``first``, ``step_index`` None (no ``scheduler.step`` yet): ``index``;
    - ``first`` after a ``scheduler.step`` (another transformer's controller ran the call's first
      steps: Wan 2.2's ``transformer_2`` with processors of its own): the start noted for the
      same ``timesteps``, else ``begin_index``, else 0 (at most ``index``).

    A scheduler that cannot be weakly referenced is not noted.
    """
    if not first:
        start = index - 1  # one scheduler.step since: one position (Heun: half a step)
    elif getattr(scheduler, "step_index", None) is None:
        start = index
    else:
        timesteps, start = _noted(scheduler) or (None, None)
        if start is None or timesteps is not getattr(scheduler, "timesteps", None):
            start = getattr(scheduler, "begin_index", None) or 0
        start = min(index, int(start))
    try:
        _starts[scheduler] = (getattr(scheduler, "timesteps", None), start)
    except TypeError:
        pass
    return start


def _noted(scheduler: Any) -> tuple[Any, int] | None:
    try:
        return _starts.get(scheduler)
    except TypeError:  # not weakly referenceable
        return None
