"""The `rt3c.SparseLinear` op: its attributes, and a model-local ONNX function that implements it.

    Y = X @ W^T + bias,  W [out, in] rebuilt from the encoded arrays of docs/FORMAT.md

Inputs: X (float32 [..., in]), tile_run_ptr ([R*C+1]), tile_col ([T]), values (float32, the flat
section-major buffer), bias (float32 [out]); with int8 weights, values is int8 and a sixth input `scale`
(float32 [out]) holds each output channel's scale, which the body applies with DequantizeLinear. A model's
weights are all float32 or all int8, so its one local function has the body of its weight type. The function body is the reference implementation, in
standard ops only, so onnxruntime runs an encoded model as it is; the kernels of `rt3c.codegen` replace it
with code that never materialises W. Every layer-specific number is a node attribute; the body reads them
through attribute references, so one function serves every layer and level.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from rt3c.core.quantize import WeightType

DOMAIN = "rt3c"
OP_TYPE = "SparseLinear"
OPSET = 1
INPUTS = ("X", "tile_run_ptr", "tile_col", "values", "bias")
INT8_INPUTS = (*INPUTS, "scale")

INT_ATTRIBUTES = (
    "level",
    "out_features",
    "in_features",
    "tile_rows",
    "tile_cols",
    "grid_rows",
    "grid_cols",
    "n_tiles",
    "nnz",
    "n_patterns",
    "n_chains",
)


def node_attributes(
    *,
    layer: str,
    level: int,
    shape: tuple[int, int],
    tile: tuple[int, int],
    grid: tuple[int, int],
    n_tiles: int,
    pattern_table: np.ndarray,
    chain_pattern: np.ndarray,
    value_sections: list[int],
) -> dict[str, object]:
    """Attributes of one SparseLinear node (one layer at one level)."""
    return {
        "layer": layer,
        "level": level,
        "out_features": shape[0],
        "in_features": shape[1],
        "tile_rows": tile[0],
        "tile_cols": tile[1],
        "grid_rows": grid[0],
        "grid_cols": grid[1],
        "n_tiles": n_tiles,
        "nnz": int(pattern_table.shape[1]),
        "n_patterns": int(pattern_table.shape[0]),
        "n_chains": len(chain_pattern),
        # The masks, as in-tile positions in value order: row p holds pattern p's `nnz` positions.
        # Typed explicitly: a layer whose tiles were all pruned has an empty table.
        "pattern_table": ir.AttrInt64s("pattern_table", [int(v) for v in pattern_table.reshape(-1)]),
        # Each chain's row of the table (the run a tile sits in gives its chain).
        "chain_pattern": ir.AttrInt64s("chain_pattern", [int(v) for v in chain_pattern]),
        # Widths of the sections of `values` this level reads, sparsest first (they sum to nnz).
        "value_sections": ir.AttrInt64s("value_sections", [int(v) for v in value_sections]),
    }


def _ref_constant(output: str, attribute: str, kind: str) -> onnx.NodeProto:
    node = helper.make_node("Constant", [], [output])
    node.attribute.append(helper.make_attribute_ref(kind, _ATTR_TYPES[kind], ref_attr_name=attribute))
    return node


_ATTR_TYPES = {"value_int": onnx.AttributeProto.INT, "value_ints": onnx.AttributeProto.INTS}


def _const(output: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [output], value_ints=values)


def function_proto(opset: int, weights: WeightType = "float32") -> onnx.FunctionProto:
    """The reference body of SparseLinear for `weights`, in standard ops of the model's `opset` (13 or later)."""
    n = helper.make_node
    int8 = weights == "int8"
    inputs = INT8_INPUTS if int8 else INPUTS
    stored_type = TensorProto.INT8 if int8 else TensorProto.FLOAT
    nodes = [
        # Each integer attribute as a scalar (name_s) and as a 1-D tensor of one element (name).
        *(_ref_constant(f"{name}_s", name, "value_int") for name in INT_ATTRIBUTES if name != "level"),
        *(n("Unsqueeze", [f"{name}_s", "zero"], [name]) for name in INT_ATTRIBUTES if name != "level"),
        _ref_constant("table_flat", "pattern_table", "value_ints"),
        _const("zero", [0]),
        _const("one", [1]),
        _const("minus_one", [-1]),
        _ref_constant("chain_pattern", "chain_pattern", "value_ints"),
        n("Cast", ["tile_run_ptr"], ["run_ptr"], to=TensorProto.INT64),
        n("Cast", ["tile_col"], ["col"], to=TensorProto.INT64),
        n("Squeeze", ["zero"], ["zero_s"]),
        # The run of each tile: mark the first tile of every non-empty run with the step from the previous
        # non-empty run's index, then a prefix sum gives each tile its run index (O(T), no T x runs table).
        n("Mul", ["grid_rows", "n_chains"], ["n_runs"]),
        n("Slice", ["run_ptr", "zero", "n_runs"], ["run_starts"]),
        n("Slice", ["run_ptr", "one", "n_runs_plus_one"], ["run_ends"]),
        n("Add", ["n_runs", "one"], ["n_runs_plus_one"]),
        n("Greater", ["run_ends", "run_starts"], ["non_empty"]),
        n("NonZero", ["non_empty"], ["non_empty_runs_2d"]),
        n("Squeeze", ["non_empty_runs_2d", "zero"], ["non_empty_runs"]),
        n("Gather", ["run_starts", "non_empty_runs"], ["first_tiles"], axis=0),
        n("Slice", ["non_empty_runs", "zero", "minus_one"], ["previous_runs_tail"]),
        n("Concat", ["zero", "previous_runs_tail"], ["previous_runs"], axis=0),
        n("Sub", ["non_empty_runs", "previous_runs"], ["run_steps"]),
        n(
            "ConstantOfShape",
            ["n_tiles"],
            ["no_steps"],
            value=helper.make_tensor("v", TensorProto.INT64, [1], [0]),
        ),
        n("Unsqueeze", ["first_tiles", "one"], ["first_tiles_column"]),
        n("ScatterND", ["no_steps", "first_tiles_column", "run_steps"], ["steps"]),
        n("CumSum", ["steps", "zero_s"], ["tile_run"]),
        n("Div", ["tile_run", "n_chains"], ["tile_row"]),
        n("Mod", ["tile_run", "n_chains"], ["chain"]),
        # Positions of each tile's values: pattern_table[chain_pattern[chain]] -> [T, nnz].
        n("Gather", ["chain_pattern", "chain"], ["ids"], axis=0),
        n("Concat", ["n_patterns", "nnz"], ["table_shape"], axis=0),
        n("Reshape", ["table_flat", "table_shape"], ["table"]),
        n("Gather", ["table", "ids"], ["positions"], axis=0),
        # Flat index of each value in the padded [R*rows, C*cols] weight.
        n("Div", ["positions", "tile_cols"], ["in_tile_row"]),
        n("Mod", ["positions", "tile_cols"], ["in_tile_col"]),
        n("Unsqueeze", ["tile_row", "one"], ["tile_row_c"]),
        n("Unsqueeze", ["col", "one"], ["col_c"]),
        n("Mul", ["tile_row_c", "tile_rows"], ["row_base"]),
        n("Add", ["row_base", "in_tile_row"], ["row"]),
        n("Mul", ["col_c", "tile_cols"], ["col_base"]),
        n("Add", ["col_base", "in_tile_col"], ["column"]),
        n("Mul", ["grid_cols", "tile_cols"], ["padded_in"]),
        n("Mul", ["row", "padded_in"], ["row_offset"]),
        n("Add", ["row_offset", "column"], ["flat"]),
        n("Reshape", ["flat", "minus_one_pair"], ["scatter_index"]),
        _const("minus_one_pair", [-1, 1]),
        # This level's values, [T, nnz] flattened: slot s of tile t sits in the section that holds s, at
        # n_tiles * (section start) + t * (section width) + (s - section start).
        _ref_constant("widths", "value_sections", "value_ints"),
        n("CumSum", ["widths", "zero_s"], ["section_ends"]),
        n("Sub", ["section_ends", "widths"], ["section_starts"]),
        n("Squeeze", ["one"], ["one_s"]),
        n("Range", ["zero_s", "nnz_s", "one_s"], ["slots"]),
        n("Unsqueeze", ["slots", "one"], ["slots_column"]),
        n("GreaterOrEqual", ["slots_column", "section_ends"], ["slot_past_section"]),
        n("Cast", ["slot_past_section"], ["slot_past_count"], to=TensorProto.INT64),
        n("ReduceSum", ["slot_past_count", "one"], ["slot_section"], keepdims=0),
        n("Gather", ["section_starts", "slot_section"], ["slot_start"], axis=0),
        n("Gather", ["widths", "slot_section"], ["slot_stride"], axis=0),
        n("Sub", ["slots", "slot_start"], ["slot_offset"]),
        n("Mul", ["slot_start", "n_tiles"], ["slot_base"]),
        n("Add", ["slot_base", "slot_offset"], ["slot_fixed"]),
        n("Range", ["zero_s", "n_tiles_s", "one_s"], ["tiles"]),
        n("Unsqueeze", ["tiles", "one"], ["tiles_column"]),
        n("Mul", ["tiles_column", "slot_stride"], ["tile_offsets"]),
        n("Add", ["tile_offsets", "slot_fixed"], ["addresses"]),
        n("Reshape", ["addresses", "minus_one"], ["address_list"]),
        n("Gather", ["values", "address_list"], ["updates"], axis=0),
        n("Mul", ["grid_rows", "tile_rows"], ["padded_out"]),
        n("Mul", ["padded_out", "padded_in"], ["padded_size"]),
        n(
            "ConstantOfShape",
            ["padded_size"],
            ["zeros"],
            value=helper.make_tensor("v", stored_type, [1], [0]),
        ),
        n("ScatterND", ["zeros", "scatter_index", "updates"], ["dense_flat"]),
        n("Concat", ["padded_out", "padded_in"], ["padded_shape"], axis=0),
        n("Reshape", ["dense_flat", "padded_shape"], ["padded_weight"]),
        n("Concat", ["out_features", "in_features"], ["weight_end"], axis=0),
        _const("zero_pair", [0, 0]),
        n("Slice", ["padded_weight", "zero_pair", "weight_end"], ["weight_q" if int8 else "weight"]),
        *([n("DequantizeLinear", ["weight_q", "scale"], ["weight"], axis=0)] if int8 else []),
        n("Transpose", ["weight"], ["weight_t"], perm=[1, 0]),
        n("MatMul", ["X", "weight_t"], ["product"]),
        n("Add", ["product", "bias"], ["Y"]),
    ]
    return helper.make_function(
        DOMAIN,
        OP_TYPE,
        list(inputs),
        ["Y"],
        _topological(nodes, set(inputs)),
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=[*INT_ATTRIBUTES, "pattern_table", "chain_pattern", "value_sections", "layer"],
    )


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Order the body so every node follows its producers (the list above reads top-down by purpose)."""
    ordered, pending, known = [], list(nodes), set(available)
    while pending:
        ready = [node for node in pending if all(name in known for name in node.input if name)]
        if not ready:
            raise AssertionError(f"SparseLinear body has a cycle or a missing value near {pending[0].output}")
        for node in ready:
            ordered.append(node)
            known.update(node.output)
            pending.remove(node)
    return ordered
