"""The search space of `rt3c search`: per layer, the size of its pattern sets, and per layer and level, the
fraction of each kept tile that the level's patterns keep.

A candidate is a list of integer decisions in a fixed order (for each layer: the pattern count, then one
density per level). Densities must not rise with the level (levels are nested, densest first), so the
choice at level l > 0 is restricted to densities at or below level l-1's; `allowed` says which choices
are legal given the decisions so far, and both the controller and random search sample only those.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Decision:
    layer: str
    kind: str
    """"patterns" (the set size k) or "density" (kept fraction of a tile at `level`)."""
    level: int
    options: tuple[float, ...]


@dataclass(frozen=True)
class SearchSpace:
    layers: tuple[str, ...]
    n_levels: int
    pattern_counts: tuple[int, ...] = (2, 4, 8)
    densities: tuple[float, ...] = (0.75, 0.5, 0.375, 0.25, 0.125)
    """Kept fraction of a BP-kept tile, densest first (multiples of 1/16 suit 4x4 tiles)."""

    @property
    def decisions(self) -> list[Decision]:
        out = []
        for layer in self.layers:
            out.append(Decision(layer, "patterns", -1, tuple(float(k) for k in self.pattern_counts)))
            out.extend(Decision(layer, "density", level, self.densities) for level in range(self.n_levels))
        return out

    def allowed(self, position: int, chosen: list[int]) -> np.ndarray:
        """bool mask over the options of decision `position`, given the earlier choices `chosen`."""
        decision = self.decisions[position]
        mask = np.ones(len(decision.options), dtype=bool)
        if decision.kind == "density" and decision.level > 0:
            # Options are ordered densest first: a sparser level may not pick a denser option.
            mask[: chosen[position - 1]] = False
        return mask

    def densest(self) -> list[int]:
        """The candidate that keeps the most: the largest pattern sets, the densest choice at every level."""
        largest = self.pattern_counts.index(max(self.pattern_counts))
        return [largest if d.kind == "patterns" else 0 for d in self.decisions]

    def describe(self, choices: list[int]) -> dict[str, dict[str, object]]:
        """{layer: {"patterns": k, "density": [per level]}} for a full list of choices."""
        out: dict[str, dict[str, object]] = {}
        for decision, choice in zip(self.decisions, choices, strict=True):
            entry = out.setdefault(decision.layer, {"patterns": 0, "density": []})
            value = decision.options[choice]
            if decision.kind == "patterns":
                entry["patterns"] = int(value)
            else:
                entry["density"].append(value)
        return out
