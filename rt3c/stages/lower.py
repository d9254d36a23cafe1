"""Stage: encoded ONNX -> a `Program` (tensors, one call list per level) and its TVM kernels.

The level-0 graph is the skeleton: constant subgraphs are folded, every other node is lowered to TVM
kernels (`rt3c.codegen.onnx_ops`), and every SparseLinear node gets one kernel per level
(`rt3c.codegen.sparse_kernel`) reading the same weights. `rt3c.runtime_c` renders the result.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import tvm
import tvm_ffi

from rt3c.codegen.dequantized_ops import dequantized_call
from rt3c.codegen.index_bounds import clamp_indices, index_limits
from rt3c.codegen.onnx_ops import LoweredNode, TensorInfo, lower_node
from rt3c.codegen.sparse_kernel import kernel_arguments, sparse_linear_kernel
from rt3c.codegen.targets import Target, get_target
from rt3c.codegen.tvm_build import workspace_bytes
from rt3c.core.errors import UserError
from rt3c.core.onnx_io import deterministic_feeds
from rt3c.passes.encode import LEVEL_INPUT, RemoveUnusedPass, SelectLevelPass
from rt3c.passes.sparse_linear_op import DOMAIN, OP_TYPE
from rt3c.runtime_c.program import Call, Program, Tensor
from rt3c.stages.encoded_model import EncodedModel, load_encoded
from rt3c.stages.reference import run_onnx


def level_model(encoded: ir.Model, level: int) -> onnx.ModelProto:
    model = ir.serde.deserialize_model(ir.serde.serialize_model(encoded))
    if LEVEL_INPUT in model.graph.initializers:
        SelectLevelPass(level)(model)
        RemoveUnusedPass()(model)
    return ir.serde.serialize_model(model)


def _all_values(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every value of the graph on `feeds`, by onnxruntime: shapes, dtypes and constants in one run."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    known = {o.name for o in exposed.graph.output}
    for node in exposed.graph.node:
        for name in node.output:
            if name and name not in known:
                exposed.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    with tempfile.TemporaryDirectory(prefix="rt3c-values-") as tmp:
        path = Path(tmp) / "exposed.onnx"
        onnx.save(exposed, path)
        results = run_onnx(path, feeds)
    values = {output.name: result for output, result in zip(exposed.graph.output, results, strict=True)}
    values.update({init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer})
    values.update(feeds)
    return values


# Ops whose output depends only on their input's shape, which is fixed once the graph inputs' are: the shape
# arithmetic of exporters with dynamic axes (Shape -> Gather -> Concat -> Reshape) folds away with them.
_SHAPE_OPS = frozenset({"Shape", "Size"})


def _constant_names(model: onnx.ModelProto) -> set[str]:
    """Initializers, and outputs of nodes that depend on nothing else or only on shapes (folded at compile
    time)."""
    constants = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        if node.domain == DOMAIN:
            continue
        if node.op_type in _SHAPE_OPS or all(name in constants for name in node.input if name):
            constants.update(node.output)
    return constants


def _split_to_slices(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> None:
    """Each Split node becomes one Slice per output (the code generator's kernels write one tensor each);
    the output sizes are read from the values onnxruntime computed, so every form of Split is covered."""
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.op_type != "Split" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        axis = next((attribute.i for attribute in node.attribute if attribute.name == "axis"), 0)
        rank = values[node.input[0]].ndim
        base = node.name or node.input[0]
        start = 0
        for number, output in enumerate(node.output):
            size = values[output].shape[axis] if output else 0
            bounds = []
            for role, bound in (("starts", start), ("ends", start + size), ("axes", axis % rank)):
                name = f"{base}.slice{number}.{role}"
                array = np.array([bound], dtype=np.int64)
                model.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
                values[name] = array
                bounds.append(name)
            if output:
                nodes.append(
                    onnx.helper.make_node(
                        "Slice", [node.input[0], *bounds], [output], name=f"{base}.slice{number}"
                    )
                )
            start += size
    del model.graph.node[:]
    model.graph.node.extend(nodes)


@dataclass
class CompiledProgram:
    program: Program
    functions: dict[str, tvm.tirx.PrimFunc]


def lower_model(
    encoded_path: Path, target: Target, frequencies_khz: list[int] | None = None
) -> CompiledProgram:
    """`lower` on an encoded model file."""
    return lower(load_encoded(encoded_path), target, frequencies_khz)


def lower(encoded: EncodedModel, target: Target, frequencies_khz: list[int] | None = None) -> CompiledProgram:
    """The Program of an encoded model for `target`: tensors, kernels, one call list per level.

    The kernels are target-neutral TIR (the host check builds them too), but the sparse kernels block
    tokens to fit `target`'s registers. `frequencies_khz` (per level, see `level_frequencies`) goes into
    the runtime's table for rt3_on_frequency; without it the table holds zeros (measurement builds only).
    """
    level_names = encoded.level_names
    layers = encoded.layers
    skeleton = level_model(encoded.model, 0)
    opset = next(o.version for o in skeleton.opset_import if o.domain in ("", "ai.onnx"))
    feeds = deterministic_feeds(skeleton)
    values = _all_values(skeleton, feeds)
    _split_to_slices(skeleton, values)
    constants = _constant_names(skeleton)
    infos = {
        name: TensorInfo(tuple(int(d) for d in array.shape), str(array.dtype))
        for name, array in values.items()
    }

    limits, computed = index_limits(skeleton, constants, infos)
    clamp_indices(skeleton, computed, values, constants, infos)
    graph_inputs = [i.name for i in skeleton.graph.input if i.name not in constants]
    graph_outputs = [o.name for o in skeleton.graph.output]
    tensors: dict[str, Tensor] = {}
    for name in graph_inputs:
        tensors[name] = Tensor(name, infos[name].shape, infos[name].dtype, "input")
    for name in graph_outputs:
        tensors[name] = Tensor(name, infos[name].shape, infos[name].dtype, "output")

    def use(name: str) -> str:
        if name not in tensors:
            storage = "constant" if name in constants else "activation"
            data = values[name] if storage == "constant" else None
            tensors[name] = Tensor(name, infos[name].shape, infos[name].dtype, storage, data)
        return name

    n_levels = len(level_names)
    program = Program(
        name=encoded.model.metadata_props.get("rt3c.source", encoded.path.stem),
        levels=level_names,
        frequencies_khz=list(frequencies_khz) if frequencies_khz else [None] * n_levels,
        tensors=tensors,
        inputs=graph_inputs,
        outputs=graph_outputs,
        steps=[],
        index_limits=limits,
    )
    functions: dict[str, tvm.tirx.PrimFunc] = {}
    by_hash: dict[int, str] = {}

    def add_function(symbol: str, func: tvm.tirx.PrimFunc) -> str:
        # Identical kernels (the same op on the same shapes) are compiled once.
        key = tvm_ffi.structural_hash(func.without_attr("global_symbol"))
        if key not in by_hash:
            by_hash[key] = symbol
            functions[symbol] = func
        return by_hash[key]

    constant_by_digest: dict[str, str] = {}
    producers = {output: node for node in skeleton.graph.node for output in node.output}

    def add_constant(name: str, array: np.ndarray) -> str:
        digest = hashlib.sha1(
            array.tobytes() + str(array.dtype).encode() + str(array.shape).encode()
        ).hexdigest()
        if digest not in constant_by_digest:
            constant_by_digest[digest] = name
            tensors[name] = Tensor(name, tuple(array.shape), str(array.dtype), "constant", array)
        return constant_by_digest[digest]

    for index, node in enumerate(skeleton.graph.node):
        if all(name in constants for name in node.output):
            continue
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            layer_name = next(a.s.decode() for a in node.attribute if a.name == "layer")
            layer = layers[layer_name]
            x, y = use(node.input[0]), use(node.output[0])
            if infos[x].shape[-1:] != (layer.shape[1],) or infos[y].shape[-1:] != (layer.shape[0],):
                # The kernel reads in_features per row of X and writes out_features per row of Y.
                raise UserError(
                    f"{encoded.path}: layer {layer_name}: input {list(infos[x].shape)} and output "
                    f"{list(infos[y].shape)} do not end in its in_features {layer.shape[1]} and "
                    f"out_features {layer.shape[0]}"
                )
            rows = int(np.prod(infos[x].shape[:-1]))
            bias = values[node.input[4]]
            calls = []
            for level in range(n_levels):
                symbol = f"sparse_{index}_L{level}"
                kernel = sparse_linear_kernel(symbol, layer, level, rows, target)
                symbol = add_function(symbol, kernel)
                arguments = [
                    add_constant(f"rt3c.{layer_name}.arg{i}.L{level}", array)
                    for i, array in enumerate(kernel_arguments(layer, level, bias))
                ]
                calls.append(Call(symbol, (x, *arguments, y)))
            program.add_step(calls, (y,))
            continue
        dequantized = dequantized_call(node, index, producers, constants, values, infos)
        if dequantized is not None:
            symbol, kernel, arguments = dequantized
            argument_names = [
                use(argument)
                if isinstance(argument, str)
                else add_constant(f"op{index}.arg{number}", argument)
                for number, argument in enumerate(arguments)
            ]
            program.add_step(
                [Call(add_function(symbol, kernel), (*argument_names, use(node.output[0])))] * n_levels,
                (node.output[0],),
            )
            continue
        lowered = _lower_with_plain_names(
            node, f"op{index}_{node.op_type.lower()}", infos, {n: values[n] for n in constants}, opset
        )
        for name, info in lowered.temporaries.items():
            infos[name] = info
        for name, array in lowered.constants.items():
            values[name] = array
            constants.add(name)
            infos[name] = TensorInfo(tuple(array.shape), str(array.dtype))
        for symbol, arguments, written in lowered.calls:
            symbol = add_function(symbol, lowered.functions[symbol])
            call = Call(symbol, tuple(use(name) for name in arguments))
            program.add_step([call] * n_levels, (written,))
    # The host check build shares the project's sources (and its scratch area), with the host's schedules.
    builds = {target.name: target, "host": get_target("host")}.values()
    program.workspace_bytes = max(
        (workspace_bytes(func, build) for func in functions.values() for build in builds), default=0
    )
    return CompiledProgram(program, functions)


def _lower_with_plain_names(
    node: onnx.NodeProto,
    prefix: str,
    infos: dict[str, TensorInfo],
    constants: dict[str, np.ndarray],
    opset: int,
) -> LoweredNode:
    """`lower_node` on a copy of `node` whose tensors are named `v0`, `v1`, ..., with the model's names put
    back into the calls. TVM's ONNX importer keeps most characters of a tensor name and its C target
    makes C variables of them, so a model's names must not reach TVM: they would be code in kernels.c."""
    names = list(dict.fromkeys(name for name in [*node.input, *node.output] if name))
    plain = {name: f"v{number}" for number, name in enumerate(names)}
    model_name = dict(zip(plain.values(), plain.keys(), strict=True))
    renamed = onnx.NodeProto()
    renamed.CopyFrom(node)  # the node keeps its name, which errors show (TVM's import does not use it)
    for field in (renamed.input, renamed.output):
        field[:] = [plain.get(name, name) for name in field]
    lowered = lower_node(
        renamed,
        prefix,
        {plain[name]: infos[name] for name in names if name in infos},
        {plain[name]: constants[name] for name in names if name in constants},
        opset,
    )
    lowered.calls = [
        (symbol, tuple(model_name.get(arg, arg) for arg in args), model_name.get(out, out))
        for symbol, args, out in lowered.calls
    ]
    return lowered
