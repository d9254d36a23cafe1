"""The latency model: per DVFS level, latency = cycles / frequency, from the kernels of the compiled model.

Every kernel of a compiled model (`rt3c.compile.lower_model`) gets a cost per call in one of two units,
and every number says which (`source`):

- `qemu`: executed instructions, counted under qemu for the board's target (aarch64 under qemu-aarch64,
  Cortex-M under qemu-system-arm) with rt3c's TCG plugin (`rt3c.instruction_count`), over the kernel's
  own functions; cycles = instructions x the board's `cycles_per_instruction` (docs/BOARDS.md).
- `host`: processor time of each kernel built for the host and run alone on its real shapes under TVM's
  runtime (least of 5 runs); cycles = seconds x the host's clock (`cpu MHz` in /proc/cpuinfo).

A level's cost is the sum over its calls. The search needs it for plans it has not compiled, so the
SparseLinear kernel gets a linear cost model fitted on calibration kernels of the model's own layer
shapes (`LinearCostModel`, features in `kernel_features`), and the rest of the model (attention,
LayerNorm, GELU, embeddings, layers left dense) is the measured cost of the non-SparseLinear kernels of
a compiled reference plan, which does not depend on the plan. Measurements are cached by what they
depend on (layer shapes or model structure, target, source, rt3c's kernel code) under the kernel cache
directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import tvm

from rt3c.codegen import onnx_ops, schedules, sparse_kernel, targets
from rt3c.codegen.sparse_kernel import token_block
from rt3c.codegen.targets import Target, build_kernels, get_target
from rt3c.compile import CompiledProgram, build_project, lower_model
from rt3c.core.cache import cache_dir, read_entry, write_entry
from rt3c.core.errors import UserError
from rt3c.core.plan import LayerPlan, Level, Plan
from rt3c.core.progress import step
from rt3c.core.sparse_format import encode_layer
from rt3c.core.sparsify import block_prune, one_shot_plan, pattern_sets
from rt3c.encode import encode_model
from rt3c.instruction_count import count_instructions, kernel_functions
from rt3c.kernel_program import LinearStep, dense_linear_step, linear_program, sparse_linear_step
from rt3c.runtime_c.project import render_project

SOURCES = ("qemu", "host")
UNITS = {"qemu": "instructions", "host": "seconds"}
SPARSE_PREFIX = "sparse_"
"""`lower_model` names every SparseLinear kernel `sparse_<node>_L<level>`; every other kernel is `op...`."""
CACHE_VERSION = 3


def host_clock_hz() -> float:
    """The host CPU's clock, from /proc/cpuinfo (the highest `cpu MHz` of any core)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        raise UserError("--latency host: cannot read /proc/cpuinfo for the host's clock") from None
    clocks = [float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    if not clocks:
        raise UserError("--latency host: /proc/cpuinfo has no 'cpu MHz' line for the host's clock")
    return max(clocks) * 1e6


def check_source(source: str, target: Target) -> None:
    if source not in SOURCES:
        raise UserError(f"--latency {source}: choose one of {', '.join(SOURCES)}")
    if source == "qemu" and target.name == "host":
        raise UserError("--latency qemu: the board's target is host, which runs natively; use --latency host")


def default_source(target: Target) -> str:
    """Count instructions for the ARM targets (deterministic), time the host."""
    return "host" if target.name == "host" else "qemu"


# -- measuring the kernels of one compiled program ---------------------------------------------------


@dataclass(frozen=True)
class KernelCost:
    symbol: str
    calls: tuple[int, ...]
    """Per level: how often that level's inference calls the kernel."""
    units: float
    """Per call, in the program's unit (instructions or seconds)."""

    @property
    def sparse(self) -> bool:
        return self.symbol.startswith(SPARSE_PREFIX)


@dataclass(frozen=True)
class ProgramCost:
    target: str
    source: str
    levels: tuple[str, ...]
    kernels: tuple[KernelCost, ...]

    @property
    def unit(self) -> str:
        return UNITS[self.source]

    def level_units(self, level: int, sparse: bool | None = None) -> float:
        """Cost of one inference at `level`; only the SparseLinear kernels (True) or the others (False)."""
        return sum(k.units * k.calls[level] for k in self.kernels if sparse is None or k.sparse == sparse)

    def to_json(self) -> dict[str, object]:
        return {
            "target": self.target,
            "source": self.source,
            "unit": self.unit,
            "levels": list(self.levels),
            "level_units": [self.level_units(level) for level in range(len(self.levels))],
            "kernels": [asdict(kernel) for kernel in self.kernels],
        }

    @classmethod
    def from_json(cls, data: dict) -> ProgramCost:
        kernels = tuple(
            KernelCost(k["symbol"], tuple(k["calls"]), float(k["units"])) for k in data["kernels"]
        )
        return cls(data["target"], data["source"], tuple(data["levels"]), kernels)


def _calls_per_level(compiled: CompiledProgram) -> dict[str, list[int]]:
    program = compiled.program
    calls = {symbol: [0] * len(program.levels) for symbol in compiled.functions}
    for per_level in program.steps:
        for level, call in enumerate(per_level):
            calls[call.symbol][level] += 1
    return calls


def _zeros_for(compiled: CompiledProgram, name: str) -> np.ndarray:
    """A constant's data, or zeros for anything else: kernels do not branch on values, and zero indices
    are in range for every Gather."""
    tensor = compiled.program.tensors[name]
    return tensor.data if tensor.data is not None else np.zeros(tensor.shape, tensor.dtype)


def count_program(compiled: CompiledProgram, target: Target) -> dict[str, float]:
    """Executed instructions per call of every kernel, each level run once under qemu."""
    program = compiled.program
    calls = _calls_per_level(compiled)
    units: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="rt3c-latency-") as tmp:
        directory = Path(tmp)
        render_project(program, directory)
        build_project(compiled, target, directory, sources_dir=directory)
        args = []
        for index, name in enumerate(program.inputs):
            (directory / f"i{index}.bin").write_bytes(_zeros_for(compiled, name).tobytes())
            args.append(f"i{index}.bin")
        args += [f"o{index}.bin" for index in range(len(program.outputs))]
        binary = Path("rt3_main")
        for level in range(len(program.levels)):
            todo = [symbol for symbol, per_level in calls.items() if per_level[level] and symbol not in units]
            if not todo:
                continue
            regions = {symbol: kernel_functions(directory / binary, target, symbol) for symbol in todo}
            counts = count_instructions(target, binary, [str(level), *args], regions, directory)
            for symbol in todo:
                units[symbol] = counts.regions[symbol] / calls[symbol][level]
    return units


def _processor_seconds(timer: Callable, arguments: list, calls: int) -> float:
    """Processor time per call of `timer` (a TVM time evaluator running `calls` calls plus one warm-up
    call in this thread)."""
    start = time.thread_time()
    timer(*arguments)
    return (time.thread_time() - start) / (calls + 1)


def time_program(compiled: CompiledProgram, repeat_seconds: float = 0.02) -> dict[str, float]:
    """Seconds per call of every kernel, built for the host and run with TVM's runtime on the arguments of
    its first call: the least of 5 runs of about `repeat_seconds` each.

    Processor time of this thread, not wall time: on a machine shared with other jobs, wall time counts
    the time the scheduler gives to them (measured: 5x the end-to-end processor time of a compiled
    bert-tiny at a load average of 9 on 2 cores). The generated program times itself the same way."""
    module = build_kernels(compiled.functions, get_target("host"))
    device = tvm.cpu()
    first_call = {}
    for per_level in compiled.program.steps:
        for call in per_level:
            first_call.setdefault(call.symbol, call)
    seconds = {}
    for symbol, call in first_call.items():
        arguments = [tvm.runtime.tensor(_zeros_for(compiled, name), device) for name in call.args]
        estimate = _processor_seconds(module.time_evaluator(symbol, device, number=10), arguments, 10)
        number = min(max(round(repeat_seconds / max(estimate, 1e-8)), 10), 1_000_000)
        timer = module.time_evaluator(symbol, device, number=number)
        seconds[symbol] = min(_processor_seconds(timer, arguments, number) for _ in range(5))
    return seconds


def measure_program(compiled: CompiledProgram, target: Target, source: str) -> ProgramCost:
    """The cost of every kernel of `compiled`, counted under qemu for `target` or timed on the host."""
    units = count_program(compiled, target) if source == "qemu" else time_program(compiled)
    calls = _calls_per_level(compiled)
    kernels = tuple(KernelCost(symbol, tuple(calls[symbol]), units[symbol]) for symbol in sorted(units))
    return ProgramCost(target.name, source, tuple(compiled.program.levels), kernels)


# -- the linear-layer cost model ----------------------------------------------------------------------

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


# -- the cache ----------------------------------------------------------------------------------------


def code_digest() -> str:
    """rt3c's kernel generation and build code: a change to it changes what kernels cost."""
    digest = hashlib.sha256()
    for module in (onnx_ops, schedules, sparse_kernel, targets):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(sparse_kernel.TEMPLATE.read_bytes())
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


# -- latency of a plan --------------------------------------------------------------------------------


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


def measure_model(onnx_path: Path, plan: Plan, target: Target, source: str) -> ProgramCost:
    """Every kernel of the model compiled with `plan` (encoded and lowered as `rt3c compile` does), measured
    per call and level."""
    with tempfile.TemporaryDirectory(prefix="rt3c-measure-") as tmp:
        plan.save(Path(tmp) / "plan.json")
        encoded = encode_model(onnx_path, Path(tmp) / "plan.json", Path(tmp) / "model.rt3.onnx").path
        with step(f"lower the model with its {len(plan.levels)}-level plan for {target.name}"):
            compiled = lower_model(encoded, target)
        with step(f"measure its {len(compiled.functions)} kernels ({source})"):
            return measure_program(compiled, target, source)


def measure_plan(
    model: LatencyModel, layers: dict[str, LayerPlan], weights: dict[str, np.ndarray]
) -> ProgramCost:
    """The plan's SparseLinear kernels, built as the compiler builds them and measured, all levels."""
    target = get_target(model.target)
    n_levels = len(next(iter(layers.values())).levels)
    steps = [
        sparse_linear_step(
            f"{SPARSE_PREFIX}{index}", encode_layer(weights[name], layer), None, model.linear.tokens, target
        )
        for index, (name, layer) in enumerate(layers.items())
    ]
    compiled = linear_program("plan", [f"L{i}" for i in range(n_levels)], model.linear.tokens, steps, target)
    return measure_program(compiled, target, model.source)


def cycles_per_unit(source: str, cycles_per_instruction: float, host_hz: float | None = None) -> float:
    """Instructions -> cycles with the board's CPI; seconds -> cycles with the host's clock."""
    if source == "qemu":
        return cycles_per_instruction
    return host_hz if host_hz is not None else host_clock_hz()
