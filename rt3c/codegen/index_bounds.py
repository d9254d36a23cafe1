"""Indices the model's inputs decide (token ids into an embedding table): no kernel bounds its reads, so
each indexing node's indices are either checked by the runtime before any kernel runs (`index_limits`, when
they are a graph input passed on unchanged) or clamped to the table in the graph (`clamp_indices`)."""

from __future__ import annotations

import numpy as np
import onnx

from rt3c.codegen.onnx_ops import TensorInfo
from rt3c.core.errors import UserError

# Ops that pass their first input's values through unchanged (only moved or retyped), so a bound on the
# values of a graph input still holds after them; and the ops that read a table row per index value.
_VALUE_PRESERVING = frozenset(
    {"Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Transpose"}
)


_INDEXING = frozenset({"Gather", "GatherElements", "GatherND"})


def index_limits(
    model: onnx.ModelProto, constants: set[str], infos: dict[str, TensorInfo]
) -> tuple[dict[str, int], list[tuple[int, int]]]:
    """Per graph input whose values become table indices (token ids into an embedding Gather): the table's
    row count along the gathered axis, the least over all the tables it indexes; and the indexing nodes
    whose indices are computed from the inputs (their positions in the graph), with their table's row
    count.

    The runtime checks those inputs before it runs a kernel (no kernel bounds its reads). Indices that
    are constants need no check; indices computed from the inputs by anything but value-preserving ops
    (Cast between integers, Reshape, ...: RoBERTa's position ids, a cumulative sum of the padding mask)
    cannot be checked up front, so the node reads them clamped to its table (`clamp_indices`).
    """
    producers = {output: node for node in model.graph.node for output in node.output}
    graph_inputs = {value.name for value in model.graph.input} - constants
    limits: dict[str, int] = {}
    computed: list[tuple[int, int]] = []
    for position, node in enumerate(model.graph.node):
        if node.op_type not in _INDEXING or node.domain not in ("", "ai.onnx") or node.input[1] in constants:
            continue
        where = f"node {node.name or node.output[0]} ({node.op_type})"
        if node.op_type == "GatherND":
            raise UserError(
                f"{where}: its indices depend on the model's inputs, which the C runtime cannot bound"
            )
        axis = next((attribute.i for attribute in node.attribute if attribute.name == "axis"), 0)
        rows = infos[node.input[0]].shape[axis]
        source = node.input[1]
        while source not in graph_inputs:
            producer = producers.get(source)
            if producer is None or producer.op_type not in _VALUE_PRESERVING:
                computed.append((position, rows))
                break
            source = producer.input[0]
        else:
            if not np.issubdtype(np.dtype(infos[source].dtype), np.integer):
                raise UserError(
                    f"{where}: its indices come from input {source} of type {infos[source].dtype}, "
                    "not an integer"
                )
            limits[source] = min(limits.get(source, rows), rows)
    return limits, computed


def clamp_indices(
    model: onnx.ModelProto,
    computed: list[tuple[int, int]],
    values: dict[str, np.ndarray],
    constants: set[str],
    infos: dict[str, TensorInfo],
) -> None:
    """Each node of `computed` (its position, its table's rows) reads its indices through
    Max(Min(indices, rows - 1), -rows): inside its table whatever the inputs (ONNX's negative indices count
    from the end). On indices in range, as every valid input of the exported models gives, nothing
    changes."""
    guards: dict[int, list[onnx.NodeProto]] = {}
    for position, rows in computed:
        node = model.graph.node[position]
        indices = node.input[1]
        dtype = values[indices].dtype
        high, low, clamped_high, clamped = (f"{indices}.{role}" for role in ("high", "low", "min", "clamped"))
        for name, bound in ((high, rows - 1), (low, -rows)):
            values[name] = np.array(bound, dtype=dtype)
            model.graph.initializer.append(onnx.numpy_helper.from_array(values[name], name))
            constants.add(name)
            infos[name] = TensorInfo((), str(dtype))
        for name in (clamped_high, clamped):
            values[name] = np.clip(values[indices], -rows, rows - 1)
            infos[name] = infos[indices]
        guards[position] = [
            onnx.helper.make_node("Min", [indices, high], [clamped_high], name=f"{node.name}.clamp_high"),
            onnx.helper.make_node("Max", [clamped_high, low], [clamped], name=f"{node.name}.clamp_low"),
        ]
        node.input[1] = clamped
    nodes = [
        guarded
        for position, node in enumerate(model.graph.node)
        for guarded in [*guards.get(position, []), node]
    ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
