"""int8 weights for what stays dense: linear layers outside the plan, and embedding tables.

Each such weight initializer becomes an int8 initializer and a float32 scale per channel (per output
channel of a linear layer, per row of a table; rt3c.core.quantize), joined by a standard DequantizeLinear
node in front of its consumer. The model stays a plain ONNX model that onnxruntime runs as it is, and the
code generator (`rt3c.stages.lower`) recognises the pair and gives the consumer a kernel that reads the int8
weights and dequantizes them in registers, so no float copy of the weight reaches the C project.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult

from rt3c.core.errors import UserError
from rt3c.core.quantize import quantize_channels
from rt3c.passes.encode import add_initializer
from rt3c.passes.linear_layers import LinearLayer


def embedding_gathers(graph: ir.Graph) -> list[ir.Node]:
    """Gather nodes that read rows (axis 0) of a constant 2-D float32 table at indices computed at run time."""
    found = []
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type != "Gather" or len(node.inputs) != 2:
            continue
        table, indices = node.inputs
        axis = node.attributes["axis"].value if "axis" in node.attributes else 0
        if (
            axis == 0
            and table is not None
            and table.const_value is not None
            and table.const_value.dtype == ir.DataType.FLOAT
            and len(table.const_value.shape) == 2
            and indices is not None
            and indices.const_value is None
        ):
            found.append(node)
    return found


class QuantizeWeightsPass(InPlacePass):
    """The weights of `layers` (dense linear layers) and of every embedding Gather as int8 + DequantizeLinear."""

    def __init__(self, layers: list[LinearLayer], source: str) -> None:
        super().__init__()
        self.layers = layers
        self.source = source

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        for layer in self.layers:
            where = f"{self.source}: layer {layer.name}"
            quantized = quantize_channels(layer.weight(), where)
            # The initializer keeps its orientation: [out, in] for Gemm(transB=1), else [in, out].
            values = quantized.values if layer.weight_is_out_in else np.ascontiguousarray(quantized.values.T)
            self._dequantize(
                graph, layer.node, 1, values, quantized.scale, 0 if layer.weight_is_out_in else 1
            )
        tables: dict[str, ir.Value] = {}
        for node in embedding_gathers(graph):
            table = node.inputs[0]
            if table.name not in tables:
                quantized = quantize_channels(
                    table.const_value.numpy(), f"{self.source}: table {table.name}", zero_channels=True
                )
                tables[table.name] = self._dequantize(graph, node, 0, quantized.values, quantized.scale, 0)
            else:
                node.replace_input_with(0, tables[table.name])
        return PassResult(model, modified=bool(self.layers or tables))

    @staticmethod
    def _dequantize(
        graph: ir.Graph, consumer: ir.Node, index: int, values: np.ndarray, scale: np.ndarray, axis: int
    ) -> ir.Value:
        """Feed input `index` of `consumer` from DequantizeLinear(values, scale) instead; returns its output."""
        weight = consumer.inputs[index]
        if weight is None or weight.name is None:
            raise UserError(f"node {consumer.name}: input {index} has no name")
        stem = f"rt3c.{weight.name}"
        node = ir.Node(
            "",
            "DequantizeLinear",
            [add_initializer(graph, f"{stem}.int8", values), add_initializer(graph, f"{stem}.scale", scale)],
            ir.convenience.convert_attributes({"axis": axis}),
            name=f"{stem}.dequantize",
        )
        node.outputs[0].name = f"{stem}.dequantized"
        node.outputs[0].shape, node.outputs[0].type = weight.shape, weight.type
        graph.insert_before(consumer, node)
        consumer.replace_input_with(index, node.outputs[0])
        return node.outputs[0]
