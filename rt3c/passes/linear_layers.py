"""Find the linear layers of an exported model: a weight initializer multiplied into an activation.

Matched forms (any batch/sequence rank of X):
- `MatMul(X, W)` with W an initializer `[in, out]`, optionally followed by `Add(_, b)` with b a constant `[out]`;
- `Gemm(X, W, b?)` with `transB=1` (W `[out, in]`) or `transB=0` (W `[in, out]`), alpha = beta = 1, no transA.
Each layer gets its torch parameter name from the `rt3c.weights` metadata that `rt3c export` writes; a model
without that metadata (any other exporter) names each layer by its weight initializer. A weight used by
several layers (tied or shared weights, e.g. ALBERT's shared layers) names one layer per use, in graph
order: `NAME`, `NAME#1`, `NAME#2`, ... (docs/PLAN.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from rt3c.core.checks import UNREADABLE_JSON
from rt3c.core.errors import UserError
from rt3c.core.onnx_io import WEIGHTS_METADATA_KEY
from rt3c.core.plan import SHARED_USE


@dataclass
class LinearLayer:
    name: str
    """Torch parameter name of the weight (its initializer's name in a model without rt3c metadata), with
    `#N` for the N-th further use of a shared weight."""
    node: ir.Node
    """The MatMul or Gemm."""
    add: ir.Node | None
    """The Add that applies the bias after a MatMul, if any."""
    activation: ir.Value
    weight_value: ir.Value
    bias_value: ir.Value | None
    weight_is_out_in: bool

    @property
    def output(self) -> ir.Value:
        return (self.add or self.node).outputs[0]

    def weight(self) -> np.ndarray:
        """float32 `[out, in]` (torch orientation)."""
        array = self.weight_value.const_value.numpy()
        return np.ascontiguousarray(array if self.weight_is_out_in else array.T, dtype=np.float32)

    def bias(self) -> np.ndarray | None:
        return None if self.bias_value is None else self.bias_value.const_value.numpy().astype(np.float32)


def weight_names(model: ir.Model, source: str) -> dict[str, str]:
    """Initializer name -> torch parameter name, from the export metadata; without it (a model from
    another exporter) each initializer is its own name."""
    raw = model.metadata_props.get(WEIGHTS_METADATA_KEY)
    if raw is None:
        return {name: name for name in model.graph.initializers}
    try:
        names = {init: entry["param"] for init, entry in json.loads(raw).items()}
    except (*UNREADABLE_JSON, AttributeError, KeyError, TypeError) as exc:
        raise UserError(
            f"{source}: metadata '{WEIGHTS_METADATA_KEY}' is not what `rt3c export` writes "
            f"({type(exc).__name__}: {exc})"
        ) from None
    if not all(isinstance(name, str) for name in names.values()):
        raise UserError(f"{source}: metadata '{WEIGHTS_METADATA_KEY}': every param must be a string")
    return names


def _constant(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None


def _bias_add(node: ir.Node, out_features: int) -> tuple[ir.Node, ir.Value] | None:
    uses = list(node.outputs[0].uses())
    if len(uses) != 1 or uses[0].node.op_type != "Add" or uses[0].node.domain not in ("", "ai.onnx"):
        return None
    add = uses[0].node
    other = add.inputs[1 - uses[0].idx]
    if _constant(other) and tuple(other.const_value.shape) == (out_features,):
        return add, other
    return None


def find_linear_layers(model: ir.Model, source: str) -> dict[str, LinearLayer]:
    """Every linear layer of `model` with a named constant weight, by that name (see the module's doc)."""
    names = weight_names(model, source)
    layers: dict[str, LinearLayer] = {}
    uses: dict[str, int] = {}
    for node in model.graph:
        if (
            node.domain not in ("", "ai.onnx")
            or node.op_type not in ("MatMul", "Gemm")
            or len(node.inputs) < 2
        ):
            continue
        activation, weight = node.inputs[0], node.inputs[1]
        if not _constant(weight) or weight.name not in names or len(weight.const_value.shape) != 2:
            continue
        if _constant(activation):
            continue
        bias_value, add = None, None
        if node.op_type == "MatMul":
            out_in = False
            found = _bias_add(node, weight.const_value.shape[1])
            if found:
                add, bias_value = found
        else:
            attributes = {name: attr.value for name, attr in node.attributes.items()}
            if (
                attributes.get("transA", 0)
                or attributes.get("alpha", 1.0) != 1.0
                or attributes.get("beta", 1.0) != 1.0
            ):
                continue
            out_in = bool(attributes.get("transB", 0))
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                out_features = weight.const_value.shape[0 if out_in else 1]
                if not _constant(node.inputs[2]) or tuple(node.inputs[2].const_value.shape) != (
                    out_features,
                ):
                    continue
                bias_value = node.inputs[2]
        # Each use of a shared weight is a layer of its own (the encoding passes replace one node each);
        # equal plans of equal weights give equal arrays, which the C project stores once.
        weight_name = names[weight.name]
        count = uses.get(weight_name, 0)
        uses[weight_name] = count + 1
        name = f"{weight_name}{SHARED_USE}{count}" if count else weight_name
        if name in layers:
            raise UserError(f"{source}: two linear layers are named {name}; rename initializer {weight.name}")
        layers[name] = LinearLayer(name, node, add, activation, weight, bias_value, out_in)
    return layers


def untie_weights(model: ir.Model, source: str) -> None:
    """Give each further use of a weight shared by several MatMul/Gemm nodes its own initializer, a copy
    named `NAME#N`, so that masking one use's weight (the reference of a plan that masks the uses
    differently) leaves the others' as they were. `find_linear_layers` names the layers as before: the
    copy maps to the same parameter, in the same graph order (or, without metadata, is named `NAME#N`)."""
    graph = model.graph
    names = weight_names(model, source)
    metadata = model.metadata_props.get(WEIGHTS_METADATA_KEY)
    entries = json.loads(metadata) if metadata is not None else None
    seen: dict[str, int] = {}
    for node in list(graph):
        if (
            node.domain not in ("", "ai.onnx")
            or node.op_type not in ("MatMul", "Gemm")
            or len(node.inputs) < 2
        ):
            continue
        weight = node.inputs[1]
        if not _constant(weight) or weight.name not in names:
            continue
        count = seen.get(weight.name, 0)
        seen[weight.name] = count + 1
        if not count:
            continue
        name = f"{weight.name}{SHARED_USE}{count}"
        copy = ir.Value(name=name, shape=weight.shape, type=weight.type)
        copy.const_value = ir.tensor(weight.const_value.numpy().copy(), name=name)
        graph.register_initializer(copy)
        node.replace_input_with(1, copy)
        if entries is not None:
            entries[name] = entries[weight.name]  # the same parameter: its uses keep their numbers
    if entries is not None:
        model.metadata_props[WEIGHTS_METADATA_KEY] = json.dumps(entries, sort_keys=True)
