"""Reweighted group lasso over plan tiles: λ·Σ_g ‖W_g‖₂ / (‖W_g‖₂⁽ᵒˡᵈ⁾ + ε).

The denominator is a constant refreshed on a schedule (`refresh`), which makes the penalty approximate
the count of nonzero groups (the reweighted-ℓ1 trick RT3 uses): small groups are pushed hardest, so the
groups BP is about to remove are driven towards zero while the loss still sees them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Keeps the gradient of a norm finite at an all-zero group.
_NORM_FLOOR = 1e-12


def tile_norms(weight: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    """float [R, C]: the L2 norm of every tile of a torch `[out, in]` weight, zero-padded to whole tiles."""
    rows, cols = tile
    grid_rows, grid_cols = math.ceil(weight.shape[0] / rows), math.ceil(weight.shape[1] / cols)
    padded = F.pad(weight, (0, grid_cols * cols - weight.shape[1], 0, grid_rows * rows - weight.shape[0]))
    tiles = padded.reshape(grid_rows, rows, grid_cols, cols).transpose(1, 2)
    return torch.sqrt(tiles.pow(2).sum(dim=(2, 3)) + _NORM_FLOOR)


class ReweightedGroupLasso:
    """The penalty over `weights` (name -> parameter); call it for the loss term, `refresh` to reweight."""

    def __init__(
        self, weights: dict[str, nn.Parameter], tile: tuple[int, int], strength: float, epsilon: float
    ) -> None:
        self.weights = weights
        self.tile = tile
        self.strength = strength
        self.epsilon = epsilon
        self.refresh()

    def refresh(self) -> None:
        with torch.no_grad():
            self.reweights = {
                name: 1.0 / (tile_norms(weight, self.tile) + self.epsilon)
                for name, weight in self.weights.items()
            }

    def __call__(self) -> torch.Tensor:
        return self.strength * sum(
            (tile_norms(weight, self.tile) * self.reweights[name]).sum()
            for name, weight in self.weights.items()
        )
