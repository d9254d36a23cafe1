"""The SparseLinear cost model fitted on calibration kernels, and the latency model of a plan built on it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from rt3c.codegen.targets import Target, get_target, token_block
from rt3c.core.plan import LayerPlan
from rt3c.stages.latency.units import UNITS

FEATURES = (
    "weight visits (kept tiles x nonzeros per tile x token blocks)",
    "tile visits (kept tiles x token blocks)",
    "chain loops (tile rows x chains x token blocks)",
)
"""Shared by every shape; each layer shape (out x in) adds an intercept of its own (the activation
transpose, the accumulator blocks and the writes of y, which do not depend on the plan)."""


def shape_key(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def kernel_features(layer: LayerPlan, level: int, tokens: int, target: Target) -> np.ndarray:
    """What the SparseLinear kernel of `layer` at `level` does that depends on the plan, by the loop nest
    of its template: per token block and tile row it runs one loop per chain, per kept tile it loads a
    column, and per kept weight it issues one multiply-add per vector of the block's tokens."""
    kept = layer.kept_tiles
    tiles = int(kept.sum())
    ids = np.stack([plan_level.tile_patterns[kept] for plan_level in layer.levels], axis=1)
    chains = max(len(np.unique(ids, axis=0)), 1)
    blocks = math.ceil(tokens / token_block(target, layer.tile[0], tokens))
    nonzeros = layer.levels[level].nonzeros_per_tile
    return np.array(
        [tiles * nonzeros * blocks, tiles * blocks, layer.grid[0] * chains * blocks], dtype=np.float64
    )


@dataclass(frozen=True)
class CalibrationPoint:
    shape: str
    features: tuple[float, ...]
    measured: float


@dataclass(frozen=True)
class LinearCostModel:
    """Cost per call of a SparseLinear kernel = intercept[shape] + coefficients . kernel_features, fitted by
    relative least squares on calibration kernels; and the measured cost of the dense kernel per shape."""

    target: str
    source: str
    tokens: int
    intercepts: dict[str, float]
    coefficients: tuple[float, ...]
    dense: dict[str, float]
    """Per shape: one call of the dense linear kernel (TVM's MatMul, scheduled) that rt3c uses for
    layers left dense."""
    points: tuple[CalibrationPoint, ...]

    def predict(self, shape: tuple[int, int], features: np.ndarray) -> float:
        return self.intercepts[shape_key(shape)] + float(np.dot(self.coefficients, features))

    def relative_errors(self) -> list[float]:
        return [
            abs(self.intercepts[p.shape] + float(np.dot(self.coefficients, p.features)) - p.measured)
            / p.measured
            for p in self.points
        ]

    @classmethod
    def fit(
        cls,
        target: str,
        source: str,
        tokens: int,
        points: list[CalibrationPoint],
        dense: dict[str, float],
    ) -> LinearCostModel:
        shapes = sorted({p.shape for p in points})
        design = np.array([[float(p.shape == shape) for shape in shapes] + list(p.features) for p in points])
        measured = np.array([p.measured for p in points])
        # Relative least squares: small kernels count as much as large ones.
        solution, *_ = np.linalg.lstsq(design / measured[:, None], np.ones(len(points)), rcond=None)
        return cls(
            target,
            source,
            tokens,
            {shape: float(a) for shape, a in zip(shapes, solution, strict=False)},
            tuple(float(c) for c in solution[len(shapes) :]),
            dense,
            tuple(points),
        )

    def to_json(self) -> dict[str, object]:
        errors = self.relative_errors()
        return {
            "target": self.target,
            "source": self.source,
            "unit": UNITS[self.source],
            "tokens": self.tokens,
            "features": list(FEATURES),
            "intercepts": self.intercepts,
            "coefficients": list(self.coefficients),
            "dense": self.dense,
            "points": [asdict(p) for p in self.points],
            "mean_relative_error": float(np.mean(errors)),
            "max_relative_error": float(np.max(errors)),
        }

    @classmethod
    def from_json(cls, data: dict) -> LinearCostModel:
        points = tuple(
            CalibrationPoint(p["shape"], tuple(p["features"]), float(p["measured"])) for p in data["points"]
        )
        return cls(
            data["target"],
            data["source"],
            int(data["tokens"]),
            dict(data["intercepts"]),
            tuple(data["coefficients"]),
            dict(data["dense"]),
            points,
        )


@dataclass(frozen=True)
class LatencyModel:
    """What a plan costs per inference at each level, for one model, target and source, before compiling
    it: the fitted SparseLinear cost of its layers plus the measured cost of everything else."""

    target: str
    source: str
    linear: LinearCostModel
    other_units: float
    """Every kernel of the reference compiled model but its SparseLinear ones (any plan of these layers)."""
    layer_shapes: dict[str, tuple[int, int]]
    """The planned layers (torch `[out, in]`)."""

    @property
    def unit(self) -> str:
        return UNITS[self.source]

    def predict_units(self, layers: dict[str, LayerPlan], level: int) -> float:
        target = get_target(self.target)
        return self.other_units + sum(
            self.linear.predict(layer.shape, kernel_features(layer, level, self.linear.tokens, target))
            for layer in layers.values()
        )

    def dense_units(self) -> float:
        """The dense model: the other kernels and the dense kernel of every planned layer (the dense
        model's separate bias additions, tokens x out elementwise, are not counted)."""
        return self.other_units + sum(self.linear.dense[shape_key(s)] for s in self.layer_shapes.values())

    def to_json(self) -> dict[str, object]:
        return {
            "target": self.target,
            "source": self.source,
            "unit": self.unit,
            "other_units": self.other_units,
            "dense_units": self.dense_units(),
            "layer_shapes": {name: list(shape) for name, shape in self.layer_shapes.items()},
            "linear": self.linear.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict) -> LatencyModel:
        return cls(
            data["target"],
            data["source"],
            LinearCostModel.from_json(data["linear"]),
            float(data["other_units"]),
            {name: (int(s[0]), int(s[1])) for name, s in data["layer_shapes"].items()},
        )
