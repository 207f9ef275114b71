"""The shared scalar checks: bools refused everywhere, NumPy scalars only for arguments."""

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from xattn_video.scalars import is_integer, is_json_int, is_json_number, is_real

CASES = [
    # value, is_real, is_integer, is_json_number, is_json_int
    (3, True, True, True, True),
    (0, True, True, True, True),
    (-2, True, True, True, True),
    (2.5, True, False, True, False),
    (64.0, True, False, True, False),
    (float("inf"), True, False, True, False),
    (True, False, False, False, False),
    (False, False, False, False, False),
    (np.bool_(True), False, False, False, False),
    (np.int64(8), True, True, False, False),
    (np.int32(8), True, True, False, False),
    (np.float32(0.5), True, False, False, False),
    (np.float64(0.5), True, False, True, False),  # a float subclass: json.dumps writes it
    (Fraction(1, 2), True, False, False, False),
    (1 + 0j, False, False, False, False),
    ("3", False, False, False, False),
    (None, False, False, False, False),
    (torch.tensor(3), False, False, False, False),
    ([3], False, False, False, False),
]


@pytest.mark.parametrize("value, real, integer, json_number, json_int", CASES, ids=repr)
def test_scalar_checks(value, real, integer, json_number, json_int):
    assert is_real(value) is real
    assert is_integer(value) is integer
    assert is_json_number(value) is json_number
    assert is_json_int(value) is json_int


@pytest.mark.parametrize("value", [v for v, *_, json_number, _ in CASES if json_number])
def test_json_numbers_round_trip(value):
    """What the JSON checks accept is what a JSON file can hold and gives back."""
    assert json.loads(json.dumps(value)) == value


def test_np_float32_is_not_json():
    """Why the file checks refuse NumPy scalars: the write would fail instead of the check."""
    with pytest.raises(TypeError):
        json.dumps(np.float32(0.5))
