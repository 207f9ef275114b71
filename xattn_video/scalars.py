"""Scalar type checks shared by the argument and file checks: numbers that are not bools.

``True`` is an ``int`` to Python and would pass as one step, layer or process; every check here
refuses it. Two families, because the values go different places:

- :func:`is_real` / :func:`is_integer`: *arguments* used in-process (the op's ``block_size``,
  ``threshold``, ``XAttentionConfig`` fields). Python and NumPy scalars pass (``np.int64(8)``
  from a sweep grid is an int); callers that store the value convert it with ``int()`` /
  ``float()``.
- :func:`is_json_number` / :func:`is_json_int`: values that come from, or are written to, a JSON
  file (thresholds files, the cost model's calibration, run records, ``generate``'s options,
  which go into ``meta.json``). Only Python ``int`` / ``float`` pass: ``json.load`` gives
  nothing else, and ``json.dumps`` cannot write ``np.float32``, so accepting it would move the
  error from the check to the write.

Not supported: tensors (0-d tensors are not scalars here; the op checks them on their own);
NumPy scalars inside ``torch.compile`` (dynamo traces them as 0-d arrays, which these checks
refuse: pass ``float()`` / ``int()`` of them to a compiled function).
"""

from __future__ import annotations

import numbers
import types
import typing
from typing import Any


def is_real(x: Any) -> bool:
    """A real number that is not a bool: a Python or NumPy scalar, not a tensor."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def is_integer(x: Any) -> bool:
    """An integer that is not a bool: a Python or NumPy integer (``64.0`` is not one)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_json_number(x: Any) -> bool:
    """A Python ``int`` or ``float`` that is not a bool (what JSON holds as a number)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def is_json_int(x: Any) -> bool:
    """A Python ``int`` that is not a bool (``1.0`` and ``np.int64(1)`` are not one)."""
    return isinstance(x, int) and not isinstance(x, bool)


def json_matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a record field's annotation: ``str``, ``int`` / ``float`` /
    ``bool`` (as :func:`is_json_int` / :func:`is_json_number`; a bool is no number),
    ``list[X]`` (each item), ``dict[...]``, ``X | None``; other annotations are not checked."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(json_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is int:
        return is_json_int(value)
    if hint is float:
        return is_json_number(value)
    if hint in (bool, str):
        return isinstance(value, hint)
    if origin is list or hint is list:
        args = typing.get_args(hint)
        return isinstance(value, list) and all(json_matches(v, args[0]) for v in value if args)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True
