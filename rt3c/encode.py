"""Stage 2: `model.onnx` + `plan.json` -> `model.rt3.onnx`, verified level by level with onnxruntime.

Entry points: `encode_model` (the `rt3c encode` command), `plan_model` (`rt3c plan`, the one-shot
planner over the exported weights) and `read_encoded_layers` (what codegen reads back).
"""

from __future__ import annotations

import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from rt3c.errors import UserError, VerificationError
from rt3c.export import SOURCE_METADATA_KEY, run_onnx
from rt3c.files import atomic_output
from rt3c.passes.encode import (
    LEVEL_INPUT,
    LEVELS_METADATA_KEY,
    EncodeSparseLinearPass,
    MaskWeightsPass,
    RemoveUnusedPass,
    SelectLevelPass,
    sparse_linear_nodes,
)
from rt3c.passes.linear_layers import find_linear_layers
from rt3c.plan import Level, Plan
from rt3c.progress import step
from rt3c.sparse_format import EncodedLayer, LevelEncoding
from rt3c.sparsify import one_shot_plan

TOLERANCE = 1e-5


def load_onnx(path: Path) -> ir.Model:
    """Load and fully check an ONNX file; a missing, corrupt or truncated file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
    # protobuf DecodeError, checker ValidationError, ...: all mean "not a valid model".
    except Exception as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UserError(f"{path}: not a valid ONNX model ({first})") from None
    return ir.serde.deserialize_model(proto)


def save_onnx_atomically(model: ir.Model, out: Path) -> None:
    """Check the model fully, then write it; on any failure nothing is left at `out`."""
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    with atomic_output(out) as tmp:
        onnx.save(proto, str(tmp))


def deterministic_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input: token ids below the size of the table they index, masks of ones."""
    initializers = {init.name: init for init in model.graph.initializer}
    vocab: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[0] in initializers:
            vocab[node.input[1]] = initializers[node.input[0]].dims[0]
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape = [dim.dim_value for dim in tensor_type.shape.dim]
        if any(d <= 0 for d in shape):
            raise UserError(f"input {value.name}: has a dynamic dimension; export with static shapes")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.integer):
            high = vocab.get(value.name, 2)
            feeds[value.name] = (
                rng.integers(0, high, size=shape).astype(dtype) if high > 2 else np.ones(shape, dtype)
            )
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _level_count(model: onnx.ModelProto) -> int:
    metadata = {p.key: p.value for p in model.metadata_props}
    return len(metadata.get(LEVELS_METADATA_KEY, "").split(","))


@dataclass(frozen=True)
class EncodeResult:
    path: Path
    max_abs_diff: list[float]
    """Per verified level: max |ORT(encoded) - ORT(masked dense)|."""
    dense_layers: list[str]
    """Linear layers of the model that the plan does not list: they stay dense."""


def encode_model(onnx_path: Path, plan_path: Path, out: Path, level: int | None = None) -> EncodeResult:
    """Encode every planned layer; with `level`, keep only that level. Verified before anything is written."""
    plan = Plan.load(plan_path)
    source = str(onnx_path)
    with step(f"encode {len(plan.layers)} layers x {len(plan.levels)} levels"):
        model = load_onnx(onnx_path)
        dense_layers = sorted(set(find_linear_layers(model, source)) - set(plan.layers))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            EncodeSparseLinearPass(plan, source)(model)
        for warning in caught:  # on stderr: stdout carries the result line
            print(f"rt3c: warning: {warning.message}", file=sys.stderr)
        if level is not None:
            SelectLevelPass(level)(model)
        RemoveUnusedPass()(model)
        if level is not None:
            _keep_read_values(model)
        encoded = ir.serde.serialize_model(model)
    with step("verify every level against the masked dense model with onnxruntime"):
        diffs = verify_encoding(
            onnx_path, plan, encoded, [level] if level is not None else range(len(plan.levels))
        )
    save_onnx_atomically(model, out)
    return EncodeResult(out, diffs, dense_layers)


def _keep_read_values(model: ir.Model) -> None:
    """Cut each SparseLinear node's value buffer to what it reads: its tiles' first `nnz` values, which
    section-major storage puts first (docs/FORMAT.md). After SelectLevelPass the rest of a shared buffer
    belongs to denser levels that are gone."""
    for node in sparse_linear_nodes(model.graph):
        values = node.inputs[3]
        read = node.inputs[2].const_value.numpy().shape[0] * node.attributes["nnz"].value
        array = values.const_value.numpy()
        if array.size > read:
            values.const_value = ir.tensor(np.ascontiguousarray(array[:read]), name=values.name)
            values.shape = ir.Shape([read])


def verify_encoding(onnx_path: Path, plan: Plan, encoded: onnx.ModelProto, levels) -> list[float]:
    original = load_onnx(onnx_path)
    feeds = deterministic_feeds(ir.serde.serialize_model(original))
    all_levels = any(i.name == LEVEL_INPUT for i in encoded.graph.input)
    diffs = []
    with tempfile.TemporaryDirectory(prefix="rt3c-verify-") as tmp:
        encoded_path = Path(tmp) / "encoded.onnx"
        onnx.save(encoded, encoded_path)
        for level in levels:
            reference = load_onnx(onnx_path)
            MaskWeightsPass(plan, level, str(onnx_path))(reference)
            reference_path = Path(tmp) / f"masked-{level}.onnx"
            onnx.save(ir.serde.serialize_model(reference), reference_path)
            level_feeds = {**feeds, LEVEL_INPUT: np.array(level, dtype=np.int64)} if all_levels else feeds
            got = run_onnx(encoded_path, level_feeds)
            expected = run_onnx(reference_path, feeds)
            diff = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected, strict=True))
            if not diff <= TOLERANCE:
                raise VerificationError(
                    f"level {level}: encoded model differs from the masked one by {diff:.3g}"
                )
            diffs.append(diff)
    return diffs


def plan_model(
    onnx_path: Path,
    out: Path,
    *,
    sparsities: list[float],
    tile: tuple[int, int],
    patterns: int,
    block_ratio: float | None = None,
    frequencies_khz: list[int] | None = None,
    layers: str | None = None,
) -> Plan:
    """The one-shot plan for the exported model's linear layers (all but the output layer by default)."""
    model = load_onnx(onnx_path)
    found = find_linear_layers(model, str(onnx_path))
    if not found:
        raise UserError(f"{onnx_path}: has no linear layer with a constant weight")
    graph_outputs = set(model.graph.outputs)
    if layers is None:
        chosen = {name: layer for name, layer in found.items() if layer.output not in graph_outputs}
    else:
        try:
            pattern = re.compile(layers)
        except re.error as exc:
            raise UserError(f"--layers {layers!r}: not a regular expression ({exc})") from None
        chosen = {name: layer for name, layer in found.items() if pattern.search(name)}
    if not chosen:
        raise UserError(f"--layers {layers!r}: matches none of {onnx_path}'s linear layers")
    if frequencies_khz is not None and len(frequencies_khz) != len(sparsities):
        raise UserError(f"--frequencies: {len(frequencies_khz)} values for {len(sparsities)} levels")
    levels = [Level(f"L{i}", frequencies_khz[i] if frequencies_khz else None) for i in range(len(sparsities))]
    plan = one_shot_plan(
        {name: layer.weight() for name, layer in chosen.items()},
        levels,
        sparsities,
        tile,
        patterns,
        block_ratio,
        model=model.metadata_props.get(SOURCE_METADATA_KEY),
    )
    plan.save(out)
    return plan


def read_encoded_layers(path: Path, required: bool = True) -> dict[str, EncodedLayer]:
    """The encoded layers of an rt3c model (all levels, or the one it keeps), by torch parameter name."""
    model = load_onnx(path)
    graph = model.graph
    by_layer: dict[str, list[ir.Node]] = {}
    for node in sparse_linear_nodes(graph):
        by_layer.setdefault(node.attributes["layer"].value, []).append(node)
    if not by_layer and required:
        raise UserError(f"{path}: has no rt3c.SparseLinear node; encode it with `rt3c encode`")
    layers = {}
    for name, nodes in by_layer.items():
        nodes.sort(key=lambda n: n.attributes["level"].value)
        first = {key: attr.value for key, attr in nodes[0].attributes.items()}
        buffers: list[ir.Value] = []
        levels = []
        for node in nodes:
            attrs = {key: attr.value for key, attr in node.attributes.items()}
            table = np.array(attrs["pattern_table"], dtype=np.int16).reshape(
                attrs["n_patterns"], attrs["nnz"]
            )
            chain_pattern = np.array(attrs["chain_pattern"], dtype=np.int64)
            values = node.inputs[3]
            if values not in buffers:
                buffers.append(values)
            levels.append(LevelEncoding(buffers.index(values), table, chain_pattern))
        layers[name] = EncodedLayer(
            name=name,
            shape=(first["out_features"], first["in_features"]),
            tile=(first["tile_rows"], first["tile_cols"]),
            tile_run_ptr=nodes[0].inputs[1].const_value.numpy(),
            tile_col=nodes[0].inputs[2].const_value.numpy(),
            values=[buffer.const_value.numpy() for buffer in buffers],
            levels=levels,
        )
    return layers
