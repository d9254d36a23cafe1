"""Stage 2: `model.onnx` + `plan.json` -> `model.rt3.onnx`, verified level by level with onnxruntime.

Entry points: `encode_model` (the `rt3c encode` command), `plan_model` (`rt3c plan`, the one-shot
planner over the exported weights) and `read_encoded_layers` (what codegen reads back).
"""

from __future__ import annotations

import dataclasses
import re
import sys
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from rt3c.core.checks import finite_array, integer
from rt3c.core.errors import UserError, VerificationError
from rt3c.core.onnx_io import (
    LEVELS_METADATA_KEY,
    SOURCE_METADATA_KEY,
    checked_proto,
    deterministic_feeds,
    load_onnx,
    save_onnx_atomically,
)
from rt3c.core.plan import MAX_LAYER_ELEMENTS, MAX_LEVELS, MAX_TILE_ELEMENTS, Level, Plan
from rt3c.core.progress import step
from rt3c.core.sparse_format import MAX_CHAINS, EncodedLayer, LevelEncoding, section_widths
from rt3c.core.sparsify import one_shot_plan
from rt3c.passes.encode import (
    LEVEL_INPUT,
    EncodeSparseLinearPass,
    MaskWeightsPass,
    RemoveUnusedPass,
    SelectLevelPass,
    sparse_linear_nodes,
)
from rt3c.passes.linear_layers import LinearLayer, find_linear_layers
from rt3c.passes.sparse_linear_op import node_attributes
from rt3c.reference import run_onnx

TOLERANCE = 1e-5
ENCODED_ATTRIBUTES = (
    *("level", "out_features", "in_features", "tile_rows", "tile_cols"),
    *("n_patterns", "pattern_table", "chain_pattern"),
)
"""What `read_encoded_layers` builds a layer from; the node's other attributes are checked against it."""


def _level_count(model: onnx.ModelProto) -> int:
    metadata = {p.key: p.value for p in model.metadata_props}
    return len(metadata.get(LEVELS_METADATA_KEY, "").split(","))


@dataclass(frozen=True)
class EncodeResult:
    model: ir.Model
    """The encoded model, checked (`checked_proto`) and verified."""
    max_abs_diff: list[float]
    """Per verified level: max |ORT(encoded) - ORT(masked dense)|."""
    dense_layers: list[str]
    """Linear layers of the model that the plan does not list: they stay dense."""
    path: Path | None = None
    """Where `encode_model` wrote it."""


def encode_model(onnx_path: Path, plan_path: Path, out: Path, level: int | None = None) -> EncodeResult:
    """`encode` on files: the exported model at `onnx_path` with the plan at `plan_path`, written to `out`
    only once checked and verified."""
    result = encode(load_onnx(onnx_path), Plan.load(plan_path), str(onnx_path), level)
    save_onnx_atomically(checked_proto(result.model), out)
    return dataclasses.replace(result, path=out)


def encode(exported: ir.Model, plan: Plan, source: str, level: int | None = None) -> EncodeResult:
    """Encode every planned layer of `exported` (left as it is); with `level`, keep only that level.
    Verified level by level against the masked dense model; `source` names the model in errors."""
    with step(f"encode {len(plan.layers)} layers x {len(plan.levels)} levels"):
        model = _copy(exported)
        found = find_linear_layers(model, source)
        dense_layers = sorted(set(found) - set(plan.layers))
        planned_weights({name: layer for name, layer in found.items() if name in plan.layers}, source)
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
        encoded = checked_proto(model)
    with step("verify every level against the masked dense model with onnxruntime"):
        diffs = verify_encoding(
            exported, plan, source, encoded, [level] if level is not None else range(len(plan.levels))
        )
    return EncodeResult(model, diffs, dense_layers)


def _copy(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


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


def verify_encoding(
    exported: ir.Model, plan: Plan, source: str, encoded: onnx.ModelProto, levels: Iterable[int]
) -> list[float]:
    feeds = deterministic_feeds(ir.serde.serialize_model(exported))
    all_levels = any(i.name == LEVEL_INPUT for i in encoded.graph.input)
    diffs = []
    with tempfile.TemporaryDirectory(prefix="rt3c-verify-") as tmp:
        encoded_path = Path(tmp) / "encoded.onnx"
        onnx.save(encoded, encoded_path)
        for level in levels:
            reference = _copy(exported)
            MaskWeightsPass(plan, level, source)(reference)
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
    if not 1 <= len(sparsities) <= MAX_LEVELS:
        raise UserError(f"--sparsity: {len(sparsities)} levels, expected 1 to {MAX_LEVELS}")
    weights = planned_weights(chosen, str(onnx_path))
    for name, weight in weights.items():
        # As `rt3c prune` does: a tile may be padded but not exceed the weight (tiles larger than every
        # layer only pad it with zeros, and cost time and memory in proportion).
        if tile[0] > weight.shape[0] or tile[1] > weight.shape[1]:
            raise UserError(
                f"--tile {tile[0]}x{tile[1]}: larger than layer {name} {list(weight.shape)}; "
                "a tile may be padded but not exceed the weight"
            )
    levels = [Level(f"L{i}", frequencies_khz[i] if frequencies_khz else None) for i in range(len(sparsities))]
    plan = one_shot_plan(
        weights,
        levels,
        sparsities,
        tile,
        patterns,
        block_ratio,
        model=model.metadata_props.get(SOURCE_METADATA_KEY),
    )
    plan.save(out)
    return plan


def planned_weights(layers: dict[str, LinearLayer], source: str) -> dict[str, np.ndarray]:
    """The weights of `layers`; NaN or inf in one is refused, naming its tensor (a plan or encoding of it
    would rank, mask and verify garbage)."""
    weights = {}
    for name, layer in layers.items():
        weights[name] = layer.weight()
        finite_array(weights[name], f"{source}: tensor {layer.weight_value.name} (layer {name})")
    return weights


@dataclass(frozen=True)
class EncodedModel:
    """A model file loaded and fully checked once, with its encoded layers (none for a dense model): what
    lowering, verification, measurement and the report of one compile share."""

    path: Path
    model: ir.Model
    layers: dict[str, EncodedLayer]

    @property
    def level_names(self) -> list[str]:
        return self.model.metadata_props.get(LEVELS_METADATA_KEY, "L0").split(",")


def load_encoded(path: Path) -> EncodedModel:
    model = load_onnx(path)
    return EncodedModel(Path(path), model, encoded_layers(model, str(path), required=False))


def read_encoded_layers(path: Path, required: bool = True) -> dict[str, EncodedLayer]:
    """The encoded layers of an rt3c model file (all levels, or the one it keeps), by torch parameter name."""
    return encoded_layers(load_onnx(path), str(path), required)


def encoded_layers(model: ir.Model, source: str, required: bool = True) -> dict[str, EncodedLayer]:
    """The encoded layers of an rt3c model (all levels, or the one it keeps), by torch parameter name;
    `source` names the model in errors.

    A tampered model is refused, naming the layer and what is wrong: the arrays must be a well-formed
    encoding (`EncodedLayer.validate`), every node's attributes must be the ones its arrays give, and each
    layer must have one node per level of the model's `rt3c.levels` metadata."""
    level_names = model.metadata_props.get(LEVELS_METADATA_KEY, "L0").split(",")
    by_layer: dict[str, list[ir.Node]] = {}
    for node in sparse_linear_nodes(model.graph):
        layer = node.attributes.get("layer")
        if layer is None or not isinstance(layer.value, str):
            raise UserError(f"{source}: node {node.name}: SparseLinear without a string attribute 'layer'")
        by_layer.setdefault(layer.value, []).append(node)
    if not by_layer and required:
        raise UserError(f"{source}: has no rt3c.SparseLinear node; encode it with `rt3c encode`")
    layers = {}
    for name, nodes in by_layer.items():
        try:
            layers[name] = _encoded_layer(name, nodes, len(level_names))
        except UserError as exc:
            raise UserError(f"{source}: layer {name}: {exc}") from None
    return layers


def _encoded_layer(name: str, nodes: list[ir.Node], n_levels: int) -> EncodedLayer:
    attributes = []
    for node in nodes:
        attrs = {key: attr.value for key, attr in node.attributes.items()}
        missing = [key for key in ENCODED_ATTRIBUTES if key not in attrs]
        if (
            missing
            or len(node.inputs) != 5
            or any(v is None or v.const_value is None for v in node.inputs[1:])
        ):
            raise UserError(
                f"node {node.name}: expected the attributes {', '.join(ENCODED_ATTRIBUTES)} and four constant "
                "inputs after X (tile_run_ptr, tile_col, values, bias)"
                + (f"; missing {', '.join(missing)}" if missing else "")
            )
        attributes.append(attrs)
    for attrs in attributes:
        integer(attrs["level"], "attribute level", 0, MAX_LEVELS - 1)
    order = sorted(range(len(nodes)), key=lambda index: attributes[index]["level"])
    nodes, attributes = [nodes[i] for i in order], [attributes[i] for i in order]
    node_levels = [attrs["level"] for attrs in attributes]
    # A model that `encode --level L` made keeps level L's node, attribute level L, and names one level.
    if node_levels != list(range(n_levels)) and not (n_levels == len(node_levels) == 1):
        raise UserError(
            f"has nodes of levels {node_levels}, but the model's "
            f"{LEVELS_METADATA_KEY} metadata names {n_levels} levels"
        )
    first = attributes[0]
    for key in ("out_features", "in_features", "tile_rows", "tile_cols"):
        integer(first[key], f"attribute {key}", 1, MAX_LAYER_ELEMENTS)
    buffers: list[ir.Value] = []
    levels = []
    for attrs, node in zip(attributes, nodes, strict=True):
        table, chains = attrs["pattern_table"], attrs["chain_pattern"]
        rows = integer(attrs["n_patterns"], f"level {attrs['level']}: attribute n_patterns", 1, MAX_CHAINS)
        if not isinstance(table, list | tuple) or len(table) % rows or not isinstance(chains, list | tuple):
            raise UserError(f"level {attrs['level']}: pattern_table is not {rows} rows of integers")
        values = node.inputs[3]
        if values not in buffers:
            buffers.append(values)
        levels.append(
            LevelEncoding(
                buffers.index(values),
                np.array(table, dtype=np.int64).reshape(rows, -1).astype(np.int16),
                np.array(chains, dtype=np.int64),
            )
        )
        if np.any(np.array(table, dtype=np.int64) != levels[-1].pattern_table.reshape(-1)):
            raise UserError(f"level {attrs['level']}: pattern_table holds values past int16")
    layer = EncodedLayer(
        name=name,
        shape=(first["out_features"], first["in_features"]),
        tile=(first["tile_rows"], first["tile_cols"]),
        tile_run_ptr=nodes[0].inputs[1].const_value.numpy(),
        tile_col=nodes[0].inputs[2].const_value.numpy(),
        values=[buffer.const_value.numpy() for buffer in buffers],
        levels=levels,
        kept_level_cuts=_kept_level_cuts(first) if len(nodes) == 1 else None,
    )
    layer.validate()
    bias = nodes[0].inputs[4].const_value
    if bias.dtype != ir.DataType.FLOAT or tuple(bias.shape.numpy()) != (layer.shape[0],):
        raise UserError(f"bias: is {bias.dtype}{list(bias.shape.numpy())}, expected FLOAT[{layer.shape[0]}]")
    for level, (attrs, node) in enumerate(zip(attributes, nodes, strict=True)):
        expected = node_attributes(
            layer=name,
            level=attrs["level"],
            shape=layer.shape,
            tile=layer.tile,
            grid=layer.grid,
            n_tiles=layer.n_tiles,
            pattern_table=layer.levels[level].pattern_table,
            chain_pattern=layer.levels[level].chain_pattern,
            value_sections=section_widths(layer.value_cuts(level)),
        )
        for attribute in ir.convenience.convert_attributes(expected):
            key, value = attribute.name, attribute.value
            if _as_list(attrs.get(key)) != _as_list(value):
                raise UserError(
                    f"level {level}: attribute {key} is {attrs.get(key)!r:.60}, its arrays give {value!r:.60}"
                )
        if any(node.inputs[i] is not nodes[0].inputs[i] for i in (1, 2, 4)):
            raise UserError(f"level {level}: reads other index or bias arrays than level 0")
    return layer


def _kept_level_cuts(attributes: dict[str, object]) -> list[int]:
    """The value cuts of a one-level model's level, from its `value_sections` (positive widths summing to
    its nnz; the comparison with the arrays' nnz follows in `_encoded_layer`)."""
    widths = _as_list(attributes.get("value_sections"))
    if not all(type(width) is int and 1 <= width <= MAX_TILE_ELEMENTS for width in widths):
        raise UserError(f"attribute value_sections: expected positive widths, got {widths!r:.60}")
    return [int(cut) for cut in np.cumsum(widths)]


def _as_list(value: object) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]
