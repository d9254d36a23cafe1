"""ONNX files in and out, and the metadata keys rt3c writes into them.

Every stage reads and writes models through here, so a missing or corrupt file gives the same one-line
error wherever it is met, and nothing half-written is ever left behind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from rt3c.core.errors import UserError
from rt3c.core.files import atomic_output

WEIGHTS_METADATA_KEY = "rt3c.weights"
"""JSON: initializer name -> torch parameter name (written by export, so passes need only the ONNX)."""
SOURCE_METADATA_KEY = "rt3c.source"
"""The model reference the file was exported from (a zoo name, a directory, module:factory)."""
LEVELS_METADATA_KEY = "rt3c.levels"
"""Comma-separated level names of an encoded model, densest first."""


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
