"""ONNX files in and out, and the metadata keys rt3c writes into them.

Every stage reads and writes models through here, so a missing or corrupt file gives the same one-line
error wherever it is met, and nothing half-written is ever left behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from rt3c.core.errors import SettingError, UserError
from rt3c.core.files import atomic_output

WEIGHTS_METADATA_KEY = "rt3c.weights"
"""JSON: initializer name -> torch parameter name (written by export, so passes need only the ONNX)."""
SOURCE_METADATA_KEY = "rt3c.source"
"""The model reference the file was exported from (a zoo name, a directory, module:factory)."""
LEVELS_METADATA_KEY = "rt3c.levels"
"""Comma-separated level names of an encoded model, densest first."""
LEVEL_SELECT_METADATA_KEY = "rt3c.level_select"
"""On a node (NodeProto.metadata_props): marks the Gather that picks an encoded layer's output by
`rt3c_level` from its levels' outputs; the value is the layer's name (the SparseLinear nodes' `layer`)."""


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


def checked_proto(model: ir.Model) -> onnx.ModelProto:
    """`model` serialized and fully checked (`onnx.checker`, full check), as rt3c writes and runs models."""
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def save_onnx_atomically(proto: onnx.ModelProto, out: Path) -> None:
    """Write a checked model (`checked_proto`); on any failure nothing is left at `out`."""
    with atomic_output(out) as tmp:
        onnx.save(proto, str(tmp))


MAX_DIMENSION = 1 << 20
"""Largest size `bind_input_shapes` gives a dimension (the C runtime holds every activation statically)."""


def _dims_text(shape: ir.Shape | None) -> str:
    return "[?]" if shape is None else "[" + ", ".join(str(dim) for dim in shape) + "]"


def bind_input_shapes(model: ir.Model, shapes: Mapping[str, Sequence[int]], source: str) -> None:
    """Fix the shapes of `model`'s inputs named in `shapes` (each must fit the input's declared shape,
    its fixed dimensions kept), then check that every input has a fixed shape: a dynamic dimension left
    is a UserError naming the input and the dimension. Exporters with dynamic axes (batch, sequence)
    leave them symbolic; the compiled runtime holds every tensor at a fixed size."""
    graph = model.graph
    inputs = {
        value.name: value
        for value in graph.inputs
        if value.name is not None and value.name not in graph.initializers
    }
    for name, dims in shapes.items():
        value = inputs.get(name)
        if value is None:
            raise UserError(f"{source}: has no input {name!r} to give a shape (inputs: {', '.join(inputs)})")
        if not all(type(dim) is int and 1 <= dim <= MAX_DIMENSION for dim in dims):
            raise SettingError(
                "shapes", f"input {name}: each size must be in [1, {MAX_DIMENSION}]", list(dims)
            )
        declared = value.shape
        if declared is not None and (
            len(declared) != len(dims)
            or any(isinstance(old, int) and old != new for old, new in zip(declared, dims, strict=True))
        ):
            raise UserError(
                f"{source}: input {name} is {_dims_text(declared)}; the shape {list(dims)} does not fit it"
            )
        value.shape = ir.Shape(list(dims))
    for name, value in inputs.items():
        if value.shape is None:
            raise UserError(f"{source}: input {name} has no declared shape; give it a fixed shape")
        for axis, dim in enumerate(value.shape):
            if not isinstance(dim, int):
                raise UserError(
                    f"{source}: input {name} {_dims_text(value.shape)}: dimension {axis} "
                    f"({dim.value if dim.value is not None else 'unnamed'}) is dynamic; give the input a "
                    "fixed shape"
                )


def deterministic_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input: token ids below the size of the table they index (a float or a
    dequantized int8 table), masks of ones."""
    initializers = {init.name: init for init in model.graph.initializer}
    # A table is an initializer, or an int8 one dequantized in front of its Gather (an int8 model's
    # embeddings, rt3c.passes.quantize_weights): either way its first dimension bounds the ids.
    rows = {name: init.dims[0] for name, init in initializers.items() if init.dims}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input and node.input[0] in rows:
            rows[node.output[0]] = rows[node.input[0]]
    vocab: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[0] in rows:
            vocab[node.input[1]] = rows[node.input[0]]
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape = [dim.dim_value for dim in tensor_type.shape.dim]
        if any(d <= 0 for d in shape):  # `bind_input_shapes` names the dimension; this is its backstop
            raise UserError(f"input {value.name}: has a dynamic dimension; give the input a fixed shape")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.integer):
            high = vocab.get(value.name, 2)
            feeds[value.name] = (
                rng.integers(0, high, size=shape).astype(dtype) if high > 2 else np.ones(shape, dtype)
            )
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds
