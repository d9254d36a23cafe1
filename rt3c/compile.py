"""Stage 3: encoded ONNX -> kernels -> a C project, built and verified level by level.

Entry point: `compile_model` (the `rt3c compile` command). The level-0 graph is the skeleton: constant
subgraphs are folded, every other node is lowered to TVM kernels (`rt3c.codegen.onnx_ops`), and every
SparseLinear node gets one kernel per level (`rt3c.codegen.sparse_kernel`) reading the same weights. The
result is a `Program` that `rt3c.runtime_c` renders; the host build then runs every level on a seeded
input and must match onnxruntime on the encoded model of that level.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import tvm
import tvm_ffi

from rt3c.codegen.kernel_cache import write_kernels
from rt3c.codegen.onnx_ops import LoweredNode, TensorInfo, lower_node
from rt3c.codegen.sparse_kernel import kernel_arguments, sparse_linear_kernel
from rt3c.codegen.targets import TARGETS, Target, get_target, workspace_bytes
from rt3c.core.boards import Board, load_board
from rt3c.core.checks import UNREADABLE_JSON
from rt3c.core.errors import UserError, VerificationError
from rt3c.core.files import exclusive_lock
from rt3c.core.onnx_io import LEVELS_METADATA_KEY, deterministic_feeds, load_onnx
from rt3c.core.plan import MAX_FREQUENCY_KHZ, Plan
from rt3c.core.progress import step
from rt3c.core.sparse_format import EncodedLayer, encode_layer
from rt3c.encode import encode_model, read_encoded_layers
from rt3c.inspect_model import inspect_model
from rt3c.instruction_count import count_instructions
from rt3c.passes.encode import LEVEL_INPUT, RemoveUnusedPass, SelectLevelPass
from rt3c.passes.sparse_linear_op import DOMAIN, OP_TYPE
from rt3c.reference import run_onnx
from rt3c.runtime_c.program import C_TYPES, Call, Program, Tensor
from rt3c.runtime_c.project import (
    MAIN_EXIT_INPUT_OUT_OF_RANGE,
    PREFIX_PATTERN,
    WEIGHTS_FORMATS,
    check_prefix,
    default_prefix,
    project_files,
    render_build_files,
    render_project,
)
from rt3c.runtime_c.report import (
    DenseReference,
    LevelReport,
    board_latencies,
    measure_stack,
    memory,
    onnxruntime_us,
    section_sizes,
    write_report,
)

TOLERANCE = 1e-4


def _level_model(encoded: ir.Model, level: int) -> onnx.ModelProto:
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


def _constant_names(model: onnx.ModelProto) -> set[str]:
    """Initializers, and outputs of nodes that depend on nothing else (folded at compile time)."""
    constants = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        if all(name in constants for name in node.input if name) and node.domain != DOMAIN:
            constants.update(node.output)
    return constants


# Ops that pass their first input's values through unchanged (only moved or retyped), so a bound on the
# values of a graph input still holds after them; and the ops that read a table row per index value.
_VALUE_PRESERVING = frozenset(
    {"Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Transpose"}
)
_INDEXING = frozenset({"Gather", "GatherElements", "GatherND"})


def index_limits(model: onnx.ModelProto, constants: set[str], infos: dict[str, TensorInfo]) -> dict[str, int]:
    """Per graph input whose values become table indices (token ids into an embedding Gather): the table's
    row count along the gathered axis, the least over all the tables it indexes.

    The runtime checks these inputs before it runs a kernel (no kernel bounds its reads). Indices that
    are constants need no check; indices computed from the inputs by anything but value-preserving ops
    (Cast between integers, Reshape, ...) could not be checked up front, so such a model is refused.
    """
    producers = {output: node for node in model.graph.node for output in node.output}
    graph_inputs = {value.name for value in model.graph.input} - constants
    limits: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in _INDEXING or node.domain not in ("", "ai.onnx") or node.input[1] in constants:
            continue
        where = f"node {node.name or node.output[0]} ({node.op_type})"
        if node.op_type == "GatherND":
            raise UserError(
                f"{where}: its indices depend on the model's inputs, which the C runtime cannot bound"
            )
        source = node.input[1]
        while source not in graph_inputs:
            producer = producers.get(source)
            if producer is None or producer.op_type not in _VALUE_PRESERVING:
                raise UserError(
                    f"{where}: its indices are computed from the model's inputs"
                    f"{f' by {producer.op_type}' if producer is not None else ''}; the C runtime bounds only "
                    f"indices that are inputs (passed through {', '.join(sorted(_VALUE_PRESERVING))})"
                )
            source = producer.input[0]
        if not np.issubdtype(np.dtype(infos[source].dtype), np.integer):
            raise UserError(
                f"{where}: its indices come from input {source} of type {infos[source].dtype}, not an integer"
            )
        axis = next((attribute.i for attribute in node.attribute if attribute.name == "axis"), 0)
        rows = infos[node.input[0]].shape[axis]
        limits[source] = min(limits.get(source, rows), rows)
    return limits


@dataclass
class CompiledProgram:
    program: Program
    functions: dict[str, tvm.tirx.PrimFunc]


def lower_model(
    encoded_path: Path, target: Target, frequencies_khz: list[int] | None = None
) -> CompiledProgram:
    """The Program of an encoded model for `target`: tensors, kernels, one call list per level.

    The kernels are target-neutral TIR (the host check builds them too), but the sparse kernels block
    tokens to fit `target`'s registers. `frequencies_khz` (per level, see `level_frequencies`) goes into
    the runtime's table for rt3_on_frequency; without it the table holds zeros (measurement builds only).
    """
    encoded = load_onnx(encoded_path)
    level_names = encoded.metadata_props.get(LEVELS_METADATA_KEY, "L0").split(",")
    layers = read_encoded_layers(encoded_path, required=False)
    skeleton = _level_model(encoded, 0)
    opset = next(o.version for o in skeleton.opset_import if o.domain in ("", "ai.onnx"))
    feeds = deterministic_feeds(skeleton)
    values = _all_values(skeleton, feeds)
    constants = _constant_names(skeleton)
    infos = {
        name: TensorInfo(tuple(int(d) for d in array.shape), str(array.dtype))
        for name, array in values.items()
    }

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
        name=encoded.metadata_props.get("rt3c.source", encoded_path.stem),
        levels=level_names,
        frequencies_khz=list(frequencies_khz) if frequencies_khz else [None] * n_levels,
        tensors=tensors,
        inputs=graph_inputs,
        outputs=graph_outputs,
        steps=[],
        index_limits=index_limits(skeleton, constants, infos),
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
                    f"{encoded_path}: layer {layer_name}: input {list(infos[x].shape)} and output "
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


class InputOutOfRange(VerificationError):
    """rt3_main's rt3_invoke refused an index input outside its table (RT3_ERROR_INPUT_OUT_OF_RANGE)."""


def _run_binary(target: Target, binary: Path, args: list[str], cwd: Path) -> None:
    command = target.command(str(binary) if target.board else str((cwd / binary).resolve()), args)
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        raise VerificationError(f"{binary} {' '.join(args)}: no answer within 600 s") from None
    if result.returncode == MAIN_EXIT_INPUT_OUT_OF_RANGE:
        raise InputOutOfRange(result.stderr.strip())
    if result.returncode != 0:
        raise VerificationError(
            f"{binary} {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[:500]}"
        )


def run_level(
    project: Path, target: Target, level: int, inputs: list[np.ndarray], outputs: list[Tensor]
) -> list[np.ndarray]:
    """Run the built example program of `project` at `level` on `inputs` (in the program's input order)."""
    # Paths relative to the project: semihosting passes at most a short command line to bare metal.
    with tempfile.TemporaryDirectory(prefix="run-", dir=project) as tmp:
        tmp_path = Path(tmp).relative_to(project)
        args = [str(level)]
        for array in inputs:
            path = tmp_path / f"in{len(args)}.bin"
            (project / path).write_bytes(np.ascontiguousarray(array).tobytes())
            args.append(str(path))
        out_paths = [tmp_path / f"out{i}.bin" for i in range(len(outputs))]
        args.extend(str(p) for p in out_paths)
        _run_binary(target, Path("rt3_main"), args, project)
        out_paths = [project / p for p in out_paths]
        return [
            np.frombuffer(p.read_bytes(), dtype=t.dtype).reshape(t.shape)
            for p, t in zip(out_paths, outputs, strict=True)
        ]


@dataclass(frozen=True)
class CompileResult:
    out_dir: Path
    max_abs_diff: list[float]
    arena_bytes: int
    arena_lower_bound: int
    weight_bytes: int
    report: dict[str, object]
    """report.json of the project (rt3c.runtime_c.report)."""


def compile_model(
    encoded_path: Path,
    out_dir: Path,
    *,
    target_name: str = "host",
    plan_path: Path | None = None,
    board: str | None = None,
    frequencies_khz: list[int] | None = None,
    prefix: str | None = None,
    verify: bool = True,
    mcpu: str | None = None,
    weights_format: str = "incbin",
) -> CompileResult:
    """Lower, generate C, build for `target_name` (and the host), and verify every level of both builds.

    `encoded_path` is an encoded model (`rt3c encode`), or an exported model with `plan_path` (encoded
    here), or a dense model (compiled as one level). A model of several levels needs their frequencies
    (`level_frequencies`): from `frequencies_khz`, from `board`, or from the plan. Every external name of
    the generated library starts with `prefix` (default: the model's name made an identifier). Without
    `verify`, the project is generated and its library built for the target only: no emulator is needed,
    and the qemu board's memory does not bound the weights. `mcpu` builds a Cortex-M target for another
    Cortex-M part (`cortex_m_part`). `weights_format` is one of `WEIGHTS_FORMATS`.
    """
    if prefix is not None:
        check_prefix(prefix)
    if weights_format not in WEIGHTS_FORMATS:
        raise UserError(
            f"--weights-format {weights_format!r:.40}: choose one of {', '.join(WEIGHTS_FORMATS)}"
        )
    target = get_target(target_name)
    if mcpu is not None:
        target = cortex_m_part(target, mcpu, verify)
    if verify:
        target.check_tools()
        get_target("host").check_tools()  # the host build is verified too
    elif shutil.which(target.cc) is None:
        raise UserError(
            f"--target {target.name}: {target.cc} not found; install it with "
            f"`apt-get install {target.tools[target.cc]}`"
        )
    plan = Plan.load(plan_path) if plan_path else None
    # Held until the project is in place or the compile failed: a second compile into the same --out
    # is refused, not mixed in.
    with exclusive_lock(out_dir):
        if out_dir.exists() and any(out_dir.iterdir()):
            raise UserError(f"--out {out_dir}: exists and is not empty")
        encoded_layers = read_encoded_layers(encoded_path, required=False) if plan is not None else {}
        if plan is not None and plan_path is not None and encoded_layers:
            _check_plan_matches(plan, plan_path, encoded_path, encoded_layers)
        if plan is not None and not encoded_layers:
            level_names = [level.name for level in plan.levels]  # the encoding below keeps every level
        else:
            level_names = load_onnx(encoded_path).metadata_props.get(LEVELS_METADATA_KEY, "L0").split(",")
        frequencies = level_frequencies(
            level_names, plan, plan_path, board, frequencies_khz, source=str(encoded_path)
        )
        source = encoded_path
        with tempfile.TemporaryDirectory(prefix="rt3c-compile-") as scratch:
            if plan is not None and plan_path is not None and not encoded_layers:
                # An exported model and its plan: run the encoding passes first (they verify every level).
                encoded_path = encode_model(encoded_path, plan_path, Path(scratch) / "model.rt3.onnx").path
            with step("lower the model to TVM kernels"):
                compiled = lower_model(encoded_path, target, frequencies)
            compiled.program.prefix = prefix or default_prefix(compiled.program.name)
            compiled.program.weights_format = weights_format
            board_profile = None if board is None else load_board(board)
            dense = _dense_reference(source, plan is not None and not encoded_layers)
            return _generate_and_verify(compiled, encoded_path, out_dir, target, verify, board_profile, dense)


# The -mfpu of each Cortex-M part arm-none-eabi-gcc 12 knows; None: no FPU (soft-float ABI).
CORTEX_M_FPU = {
    "cortex-m0plus": None,
    "cortex-m3": None,
    "cortex-m23": None,
    "cortex-m4": "fpv4-sp-d16",
    "cortex-m7": "fpv5-d16",
    "cortex-m33": "fpv5-sp-d16",
    "cortex-m35p": "fpv5-sp-d16",
    "cortex-m55": "auto",
}


def cortex_m_part(target: Target, mcpu: str, verify: bool) -> Target:
    """`target` (cortex-m4 or cortex-m7: TVM's C kernels, bare metal) built for the part `mcpu`.

    Only the qemu board's own CPU can be verified; any other part needs `verify` off, and gets no
    startup file or linker script (those are qemu's MPS2 boards'): the library is what it is for.
    """
    if target.board is None:
        raise UserError(
            f"--mcpu {mcpu}: only with a Cortex-M target (cortex-m4, cortex-m7), not {target.name}"
        )
    if mcpu not in CORTEX_M_FPU:
        raise UserError(
            f"--mcpu {mcpu!r:.40}: not a Cortex-M part rt3c builds for; choose one of {', '.join(CORTEX_M_FPU)}"
        )
    if f"-mcpu={mcpu}" in target.cflags:
        return target
    if verify:
        raise UserError(
            f"--mcpu {mcpu}: qemu's {target.board} (--target {target.name}) cannot run it; add --no-verify to "
            "generate and build the project without running it"
        )
    fpu = CORTEX_M_FPU[mcpu]
    kept = [flag for flag in target.cflags if not flag.startswith(("-mcpu=", "-mfpu=", "-mfloat-abi="))]
    float_flags = [f"-mfpu={fpu}", "-mfloat-abi=hard"] if fpu else ["-mfloat-abi=soft"]
    return dataclasses.replace(target, cflags=(f"-mcpu={mcpu}", *float_flags, *kept), board=None)


FREQUENCY_OPTIONS = "--board BOARD or --frequencies KHZ,KHZ,... (kHz, one per level, densest first)"


def level_frequencies(
    level_names: list[str],
    plan: Plan | None,
    plan_path: Path | None,
    board: str | None,
    frequencies_khz: list[int] | None,
    source: str,
) -> list[int]:
    """Per level, the lowest CPU frequency (kHz) at which rt3_on_frequency picks it.

    `--frequencies` wins, then `--board`, then the plan's `frequency_khz`. A model of several levels
    without them is refused: the runtime's table would hold zeros, and rt3_on_frequency would pick the
    same level at every frequency. The frequencies must fall from level to level (densest first), or
    some level could never be picked. A one-level model runs at every frequency (0: no lower bound).
    """
    if board is not None and frequencies_khz is not None:
        raise UserError("--board and --frequencies: give the levels' frequencies with one of them")
    count = len(level_names)
    if frequencies_khz is not None:
        given, where = list(frequencies_khz), "--frequencies " + ",".join(map(str, frequencies_khz))
        if len(given) != count:
            raise UserError(
                f"{where}: {len(given)} values for the model's {count} levels ({','.join(level_names)})"
            )
    elif board is not None:
        given, where = [level.frequency_khz for level in load_board(board).levels], f"--board {board}"
        if len(given) != count:
            raise UserError(f"{where}: has {len(given)} frequency levels, the model has {count}")
    else:
        by_name = {level.name: level.frequency_khz for level in plan.levels} if plan is not None else {}
        planned = [by_name.get(name) for name in level_names]
        if count == 1:
            return [planned[0] or 0]
        where = f"--plan {plan_path}" if plan_path is not None else source
        missing = [name for name, khz in zip(level_names, planned, strict=True) if khz is None]
        if missing:
            raise UserError(
                f"{where}: level{'s' if len(missing) > 1 else ''} {','.join(missing)} "
                f"{'have' if len(missing) > 1 else 'has'} no frequency, so rt3_on_frequency could not "
                f"choose a level; give the frequencies with {FREQUENCY_OPTIONS}"
            )
        given = [int(khz) for khz in planned if khz is not None]
    for index, khz in enumerate(given):
        if isinstance(khz, bool) or not isinstance(khz, int) or not 1 <= khz <= MAX_FREQUENCY_KHZ:
            raise UserError(
                f"{where}: level {index}: expected a frequency in [1, {MAX_FREQUENCY_KHZ}] kHz, got {khz!r:.40}"
            )
        if index and khz >= given[index - 1]:
            raise UserError(
                f"{where}: level {index} ({khz} kHz) is not below level {index - 1} ({given[index - 1]} kHz); "
                "the frequencies must fall from the densest level to the sparsest, or a level is never chosen"
            )
    return given


def _check_plan_matches(
    plan: Plan, plan_path: Path, encoded_path: Path, layers: dict[str, EncodedLayer]
) -> None:
    """An encoded model compiled with --plan (for the levels' frequencies) must be that plan's encoding:
    the same layers, levels (all of them, or the one `encode --level` kept), tiles, kept tiles and pattern
    ids. The first difference is named."""
    plan.check_shapes({name: layer.shape for name, layer in layers.items()}, str(encoded_path))
    unplanned = sorted(set(layers) - set(plan.layers))
    if unplanned:
        raise UserError(f"--plan {plan_path}: has no layer {unplanned[0]}, which {encoded_path} encodes")
    plan_levels = [level.name for level in plan.levels]
    model_levels = load_onnx(encoded_path).metadata_props.get(LEVELS_METADATA_KEY, "L0").split(",")
    unknown = [name for name in model_levels if name not in plan_levels]
    if unknown or (len(model_levels) > 1 and model_levels != plan_levels):
        raise UserError(
            f"--plan {plan_path}: has levels {','.join(plan_levels)}, but {encoded_path} has "
            + (f"level {unknown[0]}" if unknown else f"levels {','.join(model_levels)}")
        )
    for name, layer in sorted(layers.items()):
        where = f"--plan {plan_path}: layer {name}"
        planned = encode_layer(np.zeros(layer.shape, np.float32), plan.layers[name])
        if tuple(planned.tile) != tuple(layer.tile):
            raise UserError(
                f"{where}: tiles {planned.tile[0]}x{planned.tile[1]}, but {encoded_path} encodes "
                f"{layer.tile[0]}x{layer.tile[1]}"
            )
        for model_level, level_name in enumerate(model_levels):
            expected = planned.levels[plan_levels.index(level_name)]
            encoded = layer.levels[model_level]
            same_ids = (
                np.array_equal(planned.tile_col, layer.tile_col)
                and np.array_equal(planned.tile_run_ptr, layer.tile_run_ptr)
                and np.array_equal(expected.pattern_table, encoded.pattern_table)
                and np.array_equal(expected.chain_pattern, encoded.chain_pattern)
            )
            if not same_ids:
                raise UserError(
                    f"{where}: level {level_name}: other kept tiles or pattern ids than {encoded_path} encodes"
                )


def _generate_and_verify(
    compiled: CompiledProgram,
    encoded_path: Path,
    out_dir: Path,
    target: Target,
    verify: bool,
    board: Board | None,
    dense: Path | str,
) -> CompileResult:
    """`dense`: the dense model to time onnxruntime on for the report, or why there is none."""
    host = get_target("host")
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent if str(out_dir.parent) else ".")
    )
    try:
        with step(f"generate the C project and compile {len(compiled.functions)} kernels"):
            info = render_project(compiled.program, staging)
            check_dir = staging if target.name == "host" else staging / "host-check"
            builds = [(target, staging)] + ([(host, check_dir)] if verify and target.name != "host" else [])
            for build_target, build_dir in builds:
                build_project(compiled, build_target, build_dir, sources_dir=staging, example=verify)
        diffs: list[float] = []
        costs: list[float | int | None] = [None] * len(compiled.program.levels)
        host_costs: list[float | int | None] = costs
        dense_us: float | str = "not verified (--no-verify)"
        if verify:
            diffs, host_costs = _verify_builds(compiled, encoded_path, staging, check_dir, target)
            with step(f"measure every level of the {target.name} build"):
                costs = _measure_levels(compiled.program, encoded_path, staging, target)
            if target.name == "host":
                host_costs = costs
            dense_us = dense if isinstance(dense, str) else _time_dense(dense, encoded_path)
        program = compiled.program
        host_us = [None if cost is None else float(cost) for cost in host_costs]
        report = _report(
            program, encoded_path, staging, target, info, diffs, costs, board, (host_us, dense_us)
        )
        (staging / "rt3c-build.json").write_text(
            json.dumps(
                {
                    "target": target.name,
                    "cflags": list(target.cflags),
                    "prefix": program.prefix,
                    "weights_format": program.weights_format,
                    "levels": program.levels,
                    "inputs": [
                        {**_tensor_json(program.tensors[name]), "index_limit": program.index_limits.get(name)}
                        for name in program.inputs
                    ],
                    "outputs": [_tensor_json(program.tensors[name]) for name in program.outputs],
                    "verified": verify,
                    "max_abs_diff": diffs,
                    "arena_bytes": info["arena"].size,
                    "arena_lower_bound": info["arena"].lower_bound,
                    "weight_bytes": info["weight_bytes"],
                    "workspace_bytes": program.workspace_bytes,
                    "memory_bytes": info["memory_bytes"],
                },
                indent=1,
            )
        )
        staging.rename(out_dir) if not out_dir.exists() else _move_into(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    arena = info["arena"]
    return CompileResult(out_dir, diffs, arena.size, arena.lower_bound, info["weight_bytes"], report)


TIMED_REPEATS = 20
"""Inferences per level whose processor time is measured (host), after a first one."""
TIMED_RUNS = 3
"""Runs of TIMED_REPEATS inferences per level (host); the report takes the fastest."""
COUNTED_REPEATS = 2
"""Inferences per level whose instructions are counted (qemu), after a first one. Counts are exact, so
two suffice; the timing line `rt3_main` prints after repeats adds a few thousand (about 0.1 % of
bert-tiny's inference on Cortex-M4, less for larger models)."""


def _measure_levels(
    program: Program, encoded_path: Path, build_dir: Path, target: Target
) -> list[float | int | None]:
    """Per level, processor µs per inference of a native build, or executed instructions per inference
    of a qemu target (the count with COUNTED_REPEATS more inferences minus the count without)."""
    feeds = deterministic_feeds(_level_model(load_onnx(encoded_path), 0))
    costs: list[float | int | None] = []
    with tempfile.TemporaryDirectory(prefix="measure-", dir=build_dir) as tmp:
        directory = Path(tmp).relative_to(build_dir)
        files = []
        for index, name in enumerate(program.inputs):
            (build_dir / directory / f"i{index}").write_bytes(np.ascontiguousarray(feeds[name]).tobytes())
            files.append(str(directory / f"i{index}"))
        files += [str(directory / f"o{index}") for index in range(len(program.outputs))]
        for level in range(len(program.levels)):
            args = [str(level), *files]
            if target.board is None and not target.run_prefix:
                command = [str((build_dir / "rt3_main").resolve()), *args, str(TIMED_REPEATS)]
                runs = []
                for _ in range(TIMED_RUNS):
                    result = subprocess.run(
                        command, cwd=build_dir, capture_output=True, text=True, check=True
                    )
                    runs.append(float(result.stdout.split(":")[1].split()[0]))
                costs.append(min(runs) / TIMED_REPEATS)
            else:
                once = count_instructions(target, Path("rt3_main"), args, {}, build_dir).total
                repeated = count_instructions(
                    target, Path("rt3_main"), [*args, str(COUNTED_REPEATS)], {}, build_dir
                ).total
                costs.append(round((repeated - once) / COUNTED_REPEATS))
    return costs


def _report(
    program: Program,
    encoded_path: Path,
    project: Path,
    target: Target,
    info: dict[str, object],
    diffs: list[float],
    costs: list[float | int | None],
    board: Board | None,
    host_speed: tuple[list[float | None], float | str],
) -> dict[str, object]:
    """report.json and REPORT.md in `project` (rt3c.runtime_c.report); `board`: the one of `--board`;
    `host_speed`: per level the host build's µs, and onnxruntime's µs on the dense model (or why none)."""
    host_us, dense_us = host_speed
    sections = section_sizes(project / f"{program.prefix}.o", target)
    memory_bytes = int(info["memory_bytes"])  # type: ignore[call-overload]
    flash, ram = memory(program, sections, memory_bytes - program.workspace_bytes)
    sparsity = None
    if read_encoded_layers(encoded_path, required=False):
        totals = inspect_model(encoded_path).level_totals()
        sparsity = [float(totals[level]["sparsity"]) for level in range(len(program.levels))]
    native = target.board is None and not target.run_prefix
    instructions = [None if native else cost for cost in costs]
    latencies, deadlines, no_latency = board_latencies(instructions, board, target)  # type: ignore[arg-type]
    levels = [
        LevelReport(
            name=name,
            frequency_khz=program.frequencies_khz[index],
            sparsity=None if sparsity is None else sparsity[index],
            max_abs_diff=diffs[index] if diffs else None,
            host_us=costs[index] if native else None,
            instructions=instructions[index],  # type: ignore[arg-type]
            latency_ms=latencies[index],
            deadline_ms=deadlines[index],
            speedup_vs_dense=None
            if isinstance(dense_us, str) or not host_us[index]
            else dense_us / host_us[index],  # type: ignore[operator]
        )
        for index, name in enumerate(program.levels)
    ]
    stack = measure_stack(project, program.prefix, target)
    return write_report(
        project,
        program,
        target,
        flash,
        ram,
        levels,
        verified=bool(diffs),
        board=board,
        no_latency=no_latency,
        stack=stack,
        dense=DenseReference(None, dense_us) if isinstance(dense_us, str) else DenseReference(dense_us),
    )


def _verify_builds(
    compiled: CompiledProgram, encoded_path: Path, staging: Path, check_dir: Path, target: Target
) -> tuple[list[float], list[float | int | None]]:
    """Every level of the host build, then of the target's (under its emulator), against onnxruntime:
    per level the larger difference; and, for a cross target, per level the host build's µs per
    inference (for the speedup against onnxruntime in the report; a host target's are measured after)."""
    levels = len(compiled.program.levels)
    with step(f"verify {levels} levels of the host build against onnxruntime"):
        diffs = verify_project(encoded_path, check_dir, get_target("host"), compiled.program)
    if check_dir == staging:
        return diffs, [None] * levels
    with step("measure every level of the host build"):
        host_costs = _measure_levels(compiled.program, encoded_path, check_dir, get_target("host"))
    shutil.rmtree(check_dir)
    runner = target.board or " ".join(target.run_prefix)
    with step(f"verify {levels} levels of the {target.name} build under {runner}"):
        target_diffs = verify_project(encoded_path, staging, target, compiled.program)
    return [max(a, b) for a, b in zip(diffs, target_diffs, strict=True)], host_costs


def _dense_reference(source: Path, exported_with_plan: bool) -> Path | str:
    """The dense model behind what compile got, or why there is none: an exported model with its plan,
    or a dense model alone, is its own; an encoded model does not carry its dense source."""
    if exported_with_plan or not read_encoded_layers(source, required=False):
        return source
    return "no_dense_reference: compiled from an encoded model, whose dense source compile did not get"


def _time_dense(dense: Path, encoded_path: Path) -> float | str:
    """µs per inference of onnxruntime on the dense model, one thread, on the inputs the C build is
    timed on; or why it cannot run them."""
    feeds = deterministic_feeds(_level_model(load_onnx(encoded_path), 0))
    with step("time onnxruntime on the dense model (1 thread)"):
        return onnxruntime_us(dense, feeds, TIMED_REPEATS, TIMED_RUNS)


def _tensor_json(tensor: Tensor) -> dict[str, object]:
    return {"name": tensor.name, "shape": list(tensor.shape), "dtype": tensor.dtype}


def run_project(project: Path, level: int, inputs: list[Path]) -> dict[str, np.ndarray]:
    """Run a compiled project's example program (natively or under qemu) on .npy inputs."""
    manifest = _read_manifest(project)
    target, prefix = get_target(manifest["target"]), manifest["prefix"]
    if not (project / "rt3_main").is_file():
        raise UserError(
            f"{project}: has no example program rt3_main (compiled with --no-verify); "
            f"build it with `make -C {project} rt3_main`"
        )
    target.check_tools()
    if not 0 <= level < len(manifest["levels"]):
        raise UserError(f"--level {level}: the model has levels 0..{len(manifest['levels']) - 1}")
    if len(inputs) != len(manifest["inputs"]):
        names = ", ".join(t["name"] for t in manifest["inputs"])
        raise UserError(
            f"--input: the model takes {len(manifest['inputs'])} inputs ({names}), got {len(inputs)}"
        )
    arrays = [read_input(path, spec) for path, spec in zip(inputs, manifest["inputs"], strict=True)]
    outputs = [Tensor(t["name"], tuple(t["shape"]), t["dtype"], "output") for t in manifest["outputs"]]
    try:
        results = run_level(project, target, level, arrays, outputs)
    except InputOutOfRange as refusal:
        # Name the file: rt3_main only knows that some index input was out of range.
        refused = [
            f"--input {path}: {spec['name']} takes values in [0, {spec['index_limit']})"
            for path, spec, array in zip(inputs, manifest["inputs"], arrays, strict=True)
            if spec.get("index_limit") is not None
            and not np.all((array >= 0) & (array < spec["index_limit"]))
        ]
        raise UserError(
            f"{'; '.join(refused) or refusal}; {prefix}_invoke refused it "
            f"({prefix.upper()}_ERROR_INPUT_OUT_OF_RANGE)"
        ) from None
    return {tensor.name: result for tensor, result in zip(outputs, results, strict=True)}


def read_input(path: Path, spec: dict) -> np.ndarray:
    """The .npy file at `path` as the model input `spec` of the manifest (name, shape, dtype), or a
    UserError naming the file."""
    try:
        # Mapped, not read: a header may claim more elements than the file (or memory) holds.
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, OverflowError) as exc:  # mmap: a length past the address space
        raise UserError(f"--input {path}: cannot read a .npy array ({exc})") from None
    if list(array.shape) != spec["shape"]:
        raise UserError(f"--input {path}: shape {list(array.shape)}, {spec['name']} needs {spec['shape']}")
    return _as_input_dtype(array, np.dtype(spec["dtype"]), f"--input {path}: {spec['name']}")


def _read_manifest(project: Path) -> dict:
    """rt3c-build.json of a compiled project, checked as far as `run_project` relies on it."""
    path = project / "rt3c-build.json"
    if not path.is_file():
        raise UserError(f"{project}: not an rt3c project (no rt3c-build.json); make one with `rt3c compile`")
    try:
        manifest = json.loads(path.read_text())
        target, levels = manifest["target"], manifest["levels"]
        specs = [
            (f"{kind}[{index}]", spec)
            for kind in ("inputs", "outputs")
            for index, spec in enumerate(manifest[kind])
        ]
    except (*UNREADABLE_JSON, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not an rt3c project manifest ({type(exc).__name__}: {exc})") from None
    if not isinstance(target, str) or target not in TARGETS:
        raise UserError(f"{path}: target {target!r:.40} is none of {', '.join(TARGETS)}")
    if not isinstance(manifest.get("prefix"), str) or not PREFIX_PATTERN.match(manifest["prefix"]):
        raise UserError(
            f"{path}: prefix {manifest.get('prefix')!r:.40} is not a prefix `rt3c compile` writes"
        )
    if not isinstance(levels, list) or not levels:
        raise UserError(f"{path}: levels: expected a non-empty list, got {levels!r:.40}")
    for where, spec in specs:
        if not _is_tensor_spec(spec):
            raise UserError(f"{path}: {where}: expected name, shape and dtype as `rt3c compile` writes them")
    return manifest


def _is_tensor_spec(spec: object) -> bool:
    def positive(value: object) -> bool:
        return type(value) is int and value >= 1

    return (
        isinstance(spec, dict)
        and isinstance(spec.get("name"), str)
        and isinstance(spec.get("dtype"), str)
        and spec["dtype"] in C_TYPES
        and isinstance(spec.get("shape"), list)
        and all(positive(dim) for dim in spec["shape"])
        and (spec.get("index_limit") is None or positive(spec["index_limit"]))
    )


def _as_input_dtype(array: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """`array` as `dtype`. Token ids and masks are integers: a float id would be truncated (3.7 -> 3) and
    a value past the type would wrap, so an integer input takes only integers that its type holds."""
    if np.issubdtype(dtype, np.integer):
        if array.dtype.kind not in "biu":
            raise UserError(f"{what} takes {dtype} integers, got {array.dtype} values")
        info = np.iinfo(dtype)
        if array.size and not info.min <= int(array.min()) <= int(array.max()) <= info.max:
            raise UserError(f"{what} takes {dtype} integers, got values outside [{info.min}, {info.max}]")
    return array.astype(dtype)


def _move_into(staging: Path, out_dir: Path) -> None:
    for item in staging.iterdir():
        item.rename(out_dir / item.name)
    staging.rmdir()


def build_project(
    compiled: CompiledProgram, target: Target, build_dir: Path, sources_dir: Path, example: bool = True
) -> None:
    """Compile the kernels for `target` into `build_dir` and make the rendered project's library there,
    and with `example` its rt3_main (on a qemu board: for that board's memory)."""
    build_dir.mkdir(exist_ok=True)
    kernel_file = "kernels.o" if target.kernel_output == "object" else "kernels.c"
    write_kernels(compiled.functions, target, build_dir / kernel_file)
    render_build_files(
        compiled.program, build_dir, target, kernel_file, sources_dir=sources_dir, check_board_memory=example
    )
    _make(build_dir, "rt3_main" if example else project_files(compiled.program.prefix).library)


def _make(build_dir: Path, goal: str) -> None:
    result = subprocess.run(["make", "-s", goal], cwd=build_dir, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise VerificationError(
            f"building {build_dir} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )


def verify_project(encoded_path: Path, build_dir: Path, target: Target, program: Program) -> list[float]:
    encoded = load_onnx(encoded_path)
    diffs = []
    for level in range(len(program.levels)):
        reference = _level_model(encoded, level)
        feeds = deterministic_feeds(reference)
        with tempfile.TemporaryDirectory(prefix="rt3c-ref-") as tmp:
            path = Path(tmp) / "level.onnx"
            onnx.save(reference, path)
            expected = run_onnx(path, feeds)
        got = run_level(
            build_dir,
            target,
            level,
            [feeds[name] for name in program.inputs],
            [program.tensors[name] for name in program.outputs],
        )
        diff = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected, strict=True))
        if not diff <= TOLERANCE:
            raise VerificationError(f"level {level}: the C build differs from onnxruntime by {diff:.3g}")
        diffs.append(diff)
    return diffs
