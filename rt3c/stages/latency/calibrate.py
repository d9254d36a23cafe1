"""Building the latency model: calibration kernels of the model's layer shapes, the reference model's
other kernels, each measured once and cached by what it depends on."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from rt3c.codegen import sparse_kernel
from rt3c.codegen.targets import Target
from rt3c.core.cache import cache_dir, read_entry, write_entry
from rt3c.core.plan import LayerPlan, Level
from rt3c.core.progress import step
from rt3c.core.sparse_format import encode_layer
from rt3c.core.sparsify import block_prune, one_shot_plan, pattern_sets
from rt3c.stages.kernel_program import LinearStep, dense_linear_step, linear_program, sparse_linear_step
from rt3c.stages.latency.cost_model import (
    CalibrationPoint,
    LatencyModel,
    LinearCostModel,
    kernel_features,
    shape_key,
)
from rt3c.stages.latency.measure import measure_model, measure_program
from rt3c.stages.latency.units import SPARSE_PREFIX, ProgramCost, check_source

CACHE_VERSION = 3


CALIBRATION_PATTERNS = (2, 8)
CALIBRATION_BLOCK_RATIOS = (0.2, 0.5)
CALIBRATION_NONZEROS = (14, 10, 6, 2)
"""Per kept 4x4 tile; scaled to the tile size for other tiles."""


def _calibration_layers(
    weights: dict[str, np.ndarray], tile: tuple[int, int]
) -> list[tuple[LayerPlan, np.ndarray]]:
    """For one real weight of each distinct shape: nested pattern sets over several pattern counts and
    block ratios, one level per nonzero count; each with the weight it prunes."""
    size = tile[0] * tile[1]
    nonzeros = sorted({max(1, round(n * size / 16)) for n in CALIBRATION_NONZEROS}, reverse=True)
    layers = []
    for shape, weight in sorted(_one_weight_per_shape(weights).items()):
        for patterns in CALIBRATION_PATTERNS:
            for ratio in CALIBRATION_BLOCK_RATIOS:
                levels = pattern_sets(weight, block_prune(weight, tile, ratio), tile, patterns, nonzeros)
                label = f"{SPARSE_PREFIX}{shape_key(shape)}_k{patterns}_b{round(ratio * 100)}"
                layers.append((LayerPlan(label, shape, tile, levels), weight))
    return layers


def _one_weight_per_shape(weights: dict[str, np.ndarray]) -> dict[tuple[int, int], np.ndarray]:
    by_shape: dict[tuple[int, int], np.ndarray] = {}
    for weight in weights.values():
        by_shape.setdefault(tuple(weight.shape), weight.astype(np.float64))
    return by_shape


def calibrate(
    weights: dict[str, np.ndarray], tile: tuple[int, int], tokens: int, target: Target, source: str
) -> LinearCostModel:
    """Build SparseLinear kernels of the model's layer shapes at several sparsities and pattern counts,
    and the dense kernel of each shape, measure each, and fit the cost model."""
    layers = _calibration_layers(weights, tile)
    n_levels = len(layers[0][0].levels)
    by_shape: dict[str, list[LinearStep]] = {}
    for layer, weight in layers:
        by_shape.setdefault(shape_key(layer.shape), []).append(
            sparse_linear_step(layer.name, encode_layer(weight, layer), None, tokens, target)
        )
    dense_names = {}
    for shape, weight in _one_weight_per_shape(weights).items():
        dense_names[shape_key(shape)] = f"dense_{shape_key(shape)}"
        by_shape[shape_key(shape)].append(
            dense_linear_step(dense_names[shape_key(shape)], weight.astype(np.float32), tokens, n_levels)
        )
    # One program; on a microcontroller board one per shape, so each fits the board's memory.
    groups = list(by_shape.values()) if target.board else [[s for g in by_shape.values() for s in g]]
    per_symbol: dict[str, float] = {}
    for group in groups:
        compiled = linear_program("calibration", [f"L{i}" for i in range(n_levels)], tokens, group, target)
        per_symbol.update((k.symbol, k.units) for k in measure_program(compiled, target, source).kernels)
    points = [
        CalibrationPoint(
            shape_key(layer.shape),
            tuple(kernel_features(layer, level, tokens, target)),
            per_symbol[f"{layer.name}_L{level}"],
        )
        for layer, _ in layers
        for level in range(n_levels)
    ]
    # The dense steps' symbol is the lowered MatMul's, named after the step's output.
    dense = {
        shape: next(units for symbol, units in per_symbol.items() if symbol.startswith(name))
        for shape, name in dense_names.items()
    }
    return LinearCostModel.fit(target.name, source, tokens, points, dense)


def code_digest() -> str:
    """rt3c's kernel generation and build code: a change to it changes what kernels cost. Every module and
    template of `rt3c.codegen`, so that a new kernel template is covered without being listed here."""
    digest = hashlib.sha256()
    codegen = Path(sparse_kernel.__file__).parent
    for path in sorted([*codegen.glob("*.py"), *codegen.glob("templates/*.j2")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def cached(kind: str, key_parts: list[str], compute: Callable[[], dict]) -> tuple[dict, bool]:
    """`compute()`'s JSON, stored once per key; returns (value, whether it came from the cache)."""
    digest = hashlib.sha256()
    for part in [kind, str(CACHE_VERSION), code_digest(), *key_parts]:
        digest.update(part.encode() + b"\0")
    directory = cache_dir("latency")
    path = directory / f"{kind}-{digest.hexdigest()[:24]}.json"
    stored = read_entry(path)
    if stored is not None:
        return json.loads(stored), True
    value = compute()
    write_entry(path, (json.dumps(value) + "\n").encode())
    return value, False


def structure_digest(onnx_path: Path) -> str:
    """The model file without the values of its floating-point initializers (weights, biases): kernels do
    not branch on them, so what they cost depends on the graph, the shapes and the integer constants
    (shape tensors, indices) only."""
    model = onnx.load(str(onnx_path))
    floats = {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.BFLOAT16,
    }
    for initializer in model.graph.initializer:
        if initializer.data_type in floats:
            for field in ("raw_data", "float_data", "int32_data", "double_data"):
                initializer.ClearField(field)
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def linear_cost_model(
    weights: dict[str, np.ndarray], tile: tuple[int, int], tokens: int, target: Target, source: str
) -> tuple[LinearCostModel, bool]:
    """The calibrated cost model for these layers' shapes, tokens, target and source (cached by the shapes:
    the weights' values only shape the calibration plans' pattern structure, which the features count)."""
    shapes = sorted({tuple(weight.shape) for weight in weights.values()})
    value, hit = cached(
        "calibration",
        [str(shapes), str(tile), str(tokens), target.name, source],
        lambda: calibrate(weights, tile, tokens, target, source).to_json(),
    )
    return LinearCostModel.from_json(value), hit


REFERENCE_SPARSITY = 0.5


def reference_cost(
    onnx_path: Path, weights: dict[str, np.ndarray], tile: tuple[int, int], target: Target, source: str
) -> tuple[ProgramCost, bool]:
    """The kernels of the model compiled with a one-level one-shot plan over exactly these layers
    (cached by the model's structure): its other kernels cost what they cost under any plan of them."""

    def compile_reference() -> dict:
        plan = one_shot_plan(
            {name: w.astype(np.float64) for name, w in weights.items()},
            [Level("L0")],
            [REFERENCE_SPARSITY],
            tile,
            patterns=4,
        )
        return measure_model(onnx_path, plan, target, source).to_json()

    value, hit = cached(
        "reference",
        [structure_digest(onnx_path), ",".join(sorted(weights)), str(tile), target.name, source],
        compile_reference,
    )
    return ProgramCost.from_json(value), hit


def build_latency_model(
    onnx_path: Path,
    weights: dict[str, np.ndarray],
    tile: tuple[int, int],
    tokens: int,
    target: Target,
    source: str,
) -> tuple[LatencyModel, ProgramCost]:
    """Calibrate (or load from the cache) the latency model of the planned layers `weights` (torch names,
    `[out, in]`) of the exported model `onnx_path`; also returns the reference model's kernel costs."""
    check_source(source, target)
    with step(f"latency model: calibration kernels ({source}, {target.name})"):
        linear, _ = linear_cost_model(weights, tile, tokens, target, source)
    with step(f"latency model: the reference model's other kernels ({source}, {target.name})"):
        reference, _ = reference_cost(onnx_path, weights, tile, target, source)
    shapes = {name: (int(w.shape[0]), int(w.shape[1])) for name, w in weights.items()}
    return LatencyModel(
        target.name, source, linear, reference.level_units(0, sparse=False), shapes
    ), reference
