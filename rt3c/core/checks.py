"""Small checks shared by the readers of user files (boards, plans, encoded models, .npy inputs).

Each raises UserError with the place it is given (`file: key`), so a bad value is one line naming where it
came from. JSON and TOML hand over NaN, inf, booleans and huge numbers as readily as good ones, so a value
is checked as the type and range that it becomes, not as whatever the file held.
"""

from __future__ import annotations

import json
import math

import numpy as np

from rt3c.core.errors import UserError

UNREADABLE_JSON = (json.JSONDecodeError, UnicodeDecodeError, RecursionError)
"""What `json.loads` raises on text that is not JSON, not UTF-8, or nested deeper than Python's stack."""


def real_number(
    value: object, where: str, *, low: float = -math.inf, high: float = math.inf, low_open: bool = False
) -> float:
    """`value` as a float: an int or float (not a bool), finite, in [low, high] (in (low, high] with
    `low_open`)."""
    bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{where}: expected a number in {bounds}, got {value!r:.40}")
    number = float(value) if abs(value) < 2**1023 else math.inf  # a huge int would raise OverflowError
    if not math.isfinite(number) or number > high or number < low or (low_open and number == low):
        raise UserError(f"{where}: expected a finite number in {bounds}, got {value!r:.40}")
    return number


def integer(value: object, where: str, low: int, high: int) -> int:
    """`value` if it is an int (not a bool, not a float such as 4.0) in [low, high]."""
    if type(value) is not int or not low <= value <= high:
        raise UserError(f"{where}: expected an integer in [{low}, {high}], got {value!r:.40}")
    return value


def finite_array(array: np.ndarray, where: str) -> None:
    """Refuse NaN and inf in a float array, naming how many and the first one's index."""
    if array.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(array)
    if np.any(bad):
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise UserError(
            f"{where}: {int(bad.sum())} NaN or infinite values (the first at index {list(first)}: "
            f"{array[first]})"
        )
