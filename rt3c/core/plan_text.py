"""The plan file's text forms (docs/PLAN.md): a pattern as its rows of 0/1 joined by '/', and a tile row as
one character per tile: '.' for a tile that block pruning removed, else the tile's pattern id in base 36."""

from __future__ import annotations

import numpy as np

PRUNED = -1
"""The pattern id of a pruned tile."""
DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def pattern_to_text(pattern: np.ndarray) -> str:
    return "/".join("".join("1" if bit else "0" for bit in row) for row in pattern)


def pattern_from_text(text: str, layer: str) -> np.ndarray:
    if not isinstance(text, str):
        raise TypeError(f"layer {layer}: pattern {text!r:.40} is not a string")
    rows = text.split("/")
    if any(len(row) != len(rows[0]) or set(row) - {"0", "1"} for row in rows):
        raise ValueError(f"layer {layer}: pattern {text!r} is not rows of 0/1 of equal length")
    return np.array([[char == "1" for char in row] for row in rows], dtype=bool)


def row_to_text(row: np.ndarray) -> str:
    return "".join("." if value == PRUNED else DIGITS[value] for value in row)


def row_from_text(text: str, layer: str) -> np.ndarray:
    if not isinstance(text, str):
        raise TypeError(f"layer {layer}: tile row {text!r:.40} is not a string")
    if set(text) - set(DIGITS) - {"."}:
        raise ValueError(f"layer {layer}: tile row {text[:40]!r} has characters other than '.', 0-9, a-z")
    return np.array([PRUNED if char == "." else DIGITS.index(char) for char in text], dtype=np.int16)
