"""An encoded model read back: its SparseLinear layers as `EncodedLayer`s, checked against what encode
writes, so that lower, inspect and compile never act on a tampered file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from rt3c.core.checks import integer
from rt3c.core.errors import UserError
from rt3c.core.onnx_io import LEVELS_METADATA_KEY, load_onnx
from rt3c.core.plan_limits import MAX_LAYER_ELEMENTS, MAX_LEVELS, MAX_TILE_ELEMENTS
from rt3c.core.quantize import WeightType
from rt3c.core.sparse_format import MAX_CHAINS, EncodedLayer, LevelEncoding, section_widths
from rt3c.passes.encode import sparse_linear_nodes
from rt3c.passes.sparse_linear_op import node_attributes

ENCODED_ATTRIBUTES = (
    *("level", "out_features", "in_features", "tile_rows", "tile_cols"),
    *("n_patterns", "pattern_table", "chain_pattern"),
)
"""What `read_encoded_layers` builds a layer from; the node's other attributes are checked against it."""


@dataclass(frozen=True)
class EncodedModel:
    """A model file loaded and fully checked once, with its encoded layers (none for a dense model): what
    lowering, verification, measurement and the report of one compile share."""

    path: Path
    model: ir.Model
    layers: dict[str, EncodedLayer]

    @property
    def weights(self) -> WeightType:
        """int8 when the encoded layers hold int8 values (encode quantizes all or none)."""
        return "int8" if any(layer.scale is not None for layer in self.layers.values()) else "float32"

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
            or len(node.inputs) not in (5, 6)
            or len(node.inputs) != len(nodes[0].inputs)
            or any(v is None or v.const_value is None for v in node.inputs[1:])
        ):
            raise UserError(
                f"node {node.name}: expected the attributes {', '.join(ENCODED_ATTRIBUTES)} and four constant "
                "inputs after X (tile_run_ptr, tile_col, values, bias), and a fifth (scale) with int8 values"
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
        scale=nodes[0].inputs[5].const_value.numpy() if len(nodes[0].inputs) == 6 else None,
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
        if any(node.inputs[i] is not nodes[0].inputs[i] for i in (1, 2, 4, 5)[: len(node.inputs) - 2]):
            raise UserError(f"level {level}: reads other index, bias or scale arrays than level 0")
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
