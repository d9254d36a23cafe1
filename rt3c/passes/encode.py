"""Passes that turn planned linear layers into `rt3c.SparseLinear` nodes, pick one level, or mask weights.

- `EncodeSparseLinearPass(plan, source, weights)`: every planned layer becomes one SparseLinear node per level over shared
  initializers (block index with its pattern runs, value buffer(s)), and the levels' outputs are joined
  by `Gather(stack, rt3c_level)`, marked with LEVEL_SELECT_METADATA_KEY (its layer's name), where `rt3c_level` is a graph input whose initializer makes level 0 the
  default: onnxruntime runs any level by feeding it. With int8 weights the value buffers are int8 and each
  node takes a sixth input, the layer's scale per output channel. A plan whose masks are not nested
  still encodes (each level stores its own values): the pass says so in its `warnings`, for the caller.
- `SelectLevelPass(level)`: keep only `level`'s SparseLinear nodes (a single-level model): each marked
  Gather is replaced by the output of its layer's node at that level.
- `MaskWeightsPass(plan, level, source, weights)`: the masked dense reference: each planned weight times
  its mask (with int8 weights, the weight quantized as the encoding does it, then dequantized).
- `RemoveUnusedPass`: drop nodes, initializers and functions that nothing uses any more.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult, PreconditionError, Sequential
from onnx_ir.passes.common import RemoveUnusedFunctionsPass, RemoveUnusedNodesPass, RemoveUnusedOpsetsPass

from rt3c.core.errors import SettingError, UserError
from rt3c.core.onnx_io import LEVEL_SELECT_METADATA_KEY, LEVELS_METADATA_KEY
from rt3c.core.plan import Plan
from rt3c.core.quantize import WeightType
from rt3c.core.sparse_format import EncodedLayer, encode_layer, quantize_layer, section_widths
from rt3c.passes.linear_layers import LinearLayer, find_linear_layers
from rt3c.passes.sparse_linear_op import DOMAIN, OP_TYPE, OPSET, function_proto, node_attributes

LEVEL_INPUT = "rt3c_level"


class ModelPreconditionError(UserError, PreconditionError):
    """A model a pass cannot run on: onnx-ir's precondition failure (raised from `requires`, which onnx-ir
    passes on as it is) and a UserError, so the CLI names the model's fault in one line and exits 2."""


class LevelPreconditionError(SettingError, ModelPreconditionError):
    """A level the model does not have: a setting's fault (the CLI names the option that gave it) found as
    a pass's precondition."""


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(
        name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype))
    )
    value.const_value = ir.tensor(array, name=name)
    graph.register_initializer(value)
    return value


def _check_layers(model: ir.Model, plan: Plan, source: str) -> dict[str, LinearLayer]:
    layers = find_linear_layers(model, source)
    if not layers:
        raise UserError(f"{source}: has no linear layer with a constant weight")
    plan.check_shapes({name: layer.weight().shape for name, layer in layers.items()}, source)
    return layers


class EncodeSparseLinearPass(InPlacePass):
    def __init__(self, plan: Plan, source: str, weights: WeightType = "float32") -> None:
        super().__init__()
        self.plan = plan
        self.source = source
        self.weights = weights
        # Said to the user by the caller (the stage prints them), not raised: such a plan encodes correctly,
        # it only costs more flash.
        self.warnings: list[str] = []

    def requires(self, model: ir.Model) -> None:
        opset = model.opset_imports.get("", 18)
        if opset < 13:
            raise ModelPreconditionError(
                f"{self.source}: opset {opset} is older than 13, which SparseLinear's body needs"
            )

    def call(self, model: ir.Model) -> PassResult:
        self.warnings = []
        graph = model.graph
        layers = _check_layers(model, self.plan, self.source)
        opset = model.opset_imports.get("", 18)
        level_value = add_initializer(graph, LEVEL_INPUT, np.array(0, dtype=np.int64))
        graph.inputs.append(level_value)
        zero_axis = add_initializer(graph, "rt3c_axis0", np.array([0], dtype=np.int64))
        for name, layer_plan in self.plan.layers.items():
            layer = layers[name]
            try:
                encoded = encode_layer(layer.weight(), layer_plan, self.weights)
            except UserError as exc:
                raise UserError(f"{self.source}: {exc}") from None
            if not encoded.nested:
                self.warnings.append(
                    f"plan layer {name}: masks are not nested across levels, so each level stores its own "
                    f"values ({encoded.value_bytes()} bytes instead of {encoded.values[0].nbytes})"
                )
            self._replace(graph, layer, encoded, level_value, zero_axis)
        model.opset_imports[DOMAIN] = OPSET
        function = ir.serde.deserialize_function(function_proto(opset, self.weights))
        model.functions[function.identifier()] = function
        model.metadata_props[LEVELS_METADATA_KEY] = ",".join(level.name for level in self.plan.levels)
        return PassResult(model, modified=True)

    def _replace(
        self,
        graph: ir.Graph,
        layer: LinearLayer,
        encoded: EncodedLayer,
        level_value: ir.Value,
        zero_axis: ir.Value,
    ) -> None:
        prefix = f"rt3c.{layer.name}"
        run_ptr = add_initializer(graph, f"{prefix}.tile_run_ptr", encoded.tile_run_ptr)
        col = add_initializer(graph, f"{prefix}.tile_col", encoded.tile_col)
        buffers = [
            add_initializer(graph, f"{prefix}.values" + (f".{i}" if not encoded.nested else ""), values)
            for i, values in enumerate(encoded.values)
        ]
        bias = layer.bias()
        bias_value = add_initializer(
            graph,
            f"{prefix}.bias",
            bias if bias is not None else np.zeros(encoded.shape[0], dtype=np.float32),
        )
        scale = [] if encoded.scale is None else [add_initializer(graph, f"{prefix}.scale", encoded.scale)]
        outputs = []
        for level, encoding in enumerate(encoded.levels):
            attributes = node_attributes(
                layer=layer.name,
                level=level,
                shape=encoded.shape,
                tile=encoded.tile,
                grid=encoded.grid,
                n_tiles=encoded.n_tiles,
                pattern_table=encoding.pattern_table,
                chain_pattern=encoding.chain_pattern,
                value_sections=section_widths(encoded.value_cuts(level)),
            )
            # The node's input as it is now, not as found: an earlier layer feeding this one directly
            # (ALBERT's embedding projection) has had its output replaced.
            node = ir.Node(
                DOMAIN,
                OP_TYPE,
                [layer.node.inputs[0], run_ptr, col, buffers[encoding.buffer], bias_value, *scale],
                ir.convenience.convert_attributes(attributes),
                name=f"{prefix}.L{level}",
            )
            node.outputs[0].name = f"{prefix}.L{level}.out"
            graph.insert_before(layer.node, node)
            unsqueeze = ir.Node(
                "", "Unsqueeze", [node.outputs[0], zero_axis], name=f"{prefix}.L{level}.stack"
            )
            graph.insert_before(layer.node, unsqueeze)
            outputs.append(unsqueeze.outputs[0])
        concat = ir.Node(
            "", "Concat", outputs, ir.convenience.convert_attributes({"axis": 0}), name=f"{prefix}.levels"
        )
        select = ir.Node(
            "",
            "Gather",
            [concat.outputs[0], level_value],
            ir.convenience.convert_attributes({"axis": 0}),
            name=f"{prefix}.select",
        )
        select.metadata_props[LEVEL_SELECT_METADATA_KEY] = layer.name
        graph.insert_before(layer.node, concat)
        graph.insert_before(layer.node, select)
        old_output, new_output = layer.output, select.outputs[0]
        new_output.shape, new_output.type = old_output.shape, old_output.type
        _take_over(graph, old_output, new_output)
        for node in (layer.add, layer.node):
            if node is not None:
                graph.remove(node, safe=True)


def _take_over(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    """Make every user of `old` use `new`; a graph output keeps its name, so the model's interface stays."""
    if old.is_graph_output():
        name = old.name
        old.name = f"{name}.replaced"
        graph.outputs[graph.outputs.index(old)] = new
        new.name = name
    ir.convenience.replace_all_uses_with(old, new)


def sparse_linear_nodes(graph: ir.Graph) -> list[ir.Node]:
    return [node for node in graph if node.domain == DOMAIN and node.op_type == OP_TYPE]


def level_selects(graph: ir.Graph, level: int) -> list[tuple[ir.Node, ir.Node | None]]:
    """Per node marked as a layer's level select (LEVEL_SELECT_METADATA_KEY), that layer's SparseLinear node
    at `level` (None if it has none)."""
    at_level = {
        node.attributes["layer"].value: node
        for node in sparse_linear_nodes(graph)
        if node.attributes["level"].value == level
    }
    return [
        (node, at_level.get(node.metadata_props[LEVEL_SELECT_METADATA_KEY]))
        for node in graph
        if LEVEL_SELECT_METADATA_KEY in node.metadata_props
    ]


class SelectLevelPass(InPlacePass):
    """Keep one level: each marked level-select Gather is replaced by its layer's SparseLinear output at
    that level."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def requires(self, model: ir.Model) -> None:
        levels = model.metadata_props.get(LEVELS_METADATA_KEY, "").split(",")
        if LEVEL_INPUT not in model.graph.initializers:
            raise ModelPreconditionError(
                f"model {model.graph.name}: has no levels to select (is it an all-levels rt3c model?)"
            )
        if not 0 <= self.level < len(levels):
            raise LevelPreconditionError(
                "level", f"the model has levels 0..{len(levels) - 1} ({', '.join(levels)})", self.level
            )
        selects = level_selects(model.graph, self.level)
        if not selects:
            raise ModelPreconditionError(
                f"model {model.graph.name}: has no node marked {LEVEL_SELECT_METADATA_KEY} (encoded by an "
                "older rt3c? encode it again)"
            )
        for select, chosen in selects:
            if chosen is None:
                raise ModelPreconditionError(
                    f"model {model.graph.name}: node {select.name} selects the levels of layer "
                    f"{select.metadata_props[LEVEL_SELECT_METADATA_KEY]}, which has no SparseLinear node "
                    f"at level {self.level}"
                )

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        levels = model.metadata_props.get(LEVELS_METADATA_KEY, "").split(",")
        for select, node in level_selects(graph, self.level):
            assert node is not None  # checked in requires
            chosen = node.outputs[0]
            chosen.shape, chosen.type = select.outputs[0].shape, select.outputs[0].type
            _take_over(graph, select.outputs[0], chosen)
        level_value = graph.initializers[LEVEL_INPUT]
        graph.inputs.remove(level_value)
        model.metadata_props[LEVELS_METADATA_KEY] = levels[self.level]
        return PassResult(model, modified=True)


class MaskWeightsPass(InPlacePass):
    """The reference an encoding must equal: every planned weight multiplied by its mask at `level`."""

    def __init__(self, plan: Plan, level: int, source: str, weights: WeightType = "float32") -> None:
        super().__init__()
        self.plan = plan
        self.level = level
        self.source = source
        self.weights = weights

    def call(self, model: ir.Model) -> PassResult:
        layers = _check_layers(model, self.plan, self.source)
        modified = False
        for name, layer_plan in self.plan.layers.items():
            layer = layers[name]
            mask = layer_plan.mask(self.level)
            if (
                mask.all() and self.weights == "float32"
            ):  # a layer kept whole at this level is its own reference
                continue
            stored = layer.weight_value.const_value.numpy()
            if self.weights == "int8":
                weight = quantize_layer(layer.weight(), layer_plan).dequantized()
                stored = weight if layer.weight_is_out_in else weight.T
            masked = stored * (mask if layer.weight_is_out_in else mask.T)
            layer.weight_value.const_value = ir.tensor(
                masked.astype(stored.dtype), name=layer.weight_value.name
            )
            modified = True
        return PassResult(model, modified=modified)


class RemoveUnusedPass(Sequential):
    """Drop what no output depends on any more (the dense weights, unselected levels, helper constants);
    modified when any of its three passes removed something."""

    def __init__(self) -> None:
        super().__init__(RemoveUnusedNodesPass(), RemoveUnusedFunctionsPass(), RemoveUnusedOpsetsPass())
