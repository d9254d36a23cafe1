"""Untrusted models, plans and inputs never become code, and token ids never read outside their table.

1. Every value rendered into C, assembly, linker scripts, Make or CMake passes a typed filter: a model and
   plan whose every string carries C, Make and preprocessor syntax give the same project as clean ones
   apart from escaped comment text, and it builds and runs without the payload running; a plan whose
   frequency is code or out of range is refused before anything is written.
2. rt3_invoke refuses token ids outside the embedding table (RT3_ERROR_INPUT_OUT_OF_RANGE) on the host
   (also under ASan + UBSan), on aarch64 (qemu-aarch64) and on Cortex-M4 (qemu-system-arm); ids at the
   table's edges still match onnxruntime. `rt3c run` names the file, and refuses ids it would truncate
   or wrap, a tampered project manifest and a .npy header claiming more than its file holds.
3. Ctrl-C and SIGTERM are never taken for success: `rt3c` exits 130 or 143 with one line and leaves
   nothing behind (--out absent or as it was, no staging folder); a second compile into the same --out is
   refused by the first one's lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import jinja2
import numpy as np
import onnx
import pytest
from jinja2 import nodes
from onnx import helper, numpy_helper
from test_cli import run_cli
from test_compile import _fails_cleanly
from test_runtime_c import CFLAGS, MAIN, _toy_kernels, _toy_program

from rt3c.codegen.kernel_cache import write_kernels
from rt3c.codegen.targets import get_target
from rt3c.core.errors import UserError
from rt3c.core.files import exclusive_lock
from rt3c.core.onnx_io import WEIGHTS_METADATA_KEY, deterministic_feeds, load_onnx
from rt3c.core.plan import Plan
from rt3c.core.processes import run_process_group
from rt3c.runtime_c.build_files import render_build_files
from rt3c.runtime_c.filters import FILTERS, comment
from rt3c.runtime_c.program import Program, Tensor
from rt3c.runtime_c.project import MAIN_EXIT_INPUT_OUT_OF_RANGE, TEMPLATES, environment, render_project
from rt3c.stages.compile import compile_model
from rt3c.stages.encode import encode_model, plan_model
from rt3c.stages.export import ExportResult
from rt3c.stages.lower import level_model, lower_model
from rt3c.stages.reference import run_onnx
from rt3c.stages.run import run_project

VOCAB = 1024  # bert-tiny's embedding rows
INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)
OUT_OF_RANGE_IDS = [VOCAB, VOCAB + 1000, -1, INT32_MAX, INT32_MIN]


def _payload(marker: Path) -> str:
    """Text that would run `touch marker` if it escaped a C comment, a Make or CMake line, or a string.

    No commas: a plan's level names may not hold one (they are joined by commas in encoded models).
    """
    return (
        f'*/ __attribute__((constructor)) static void pwn(void) {{ system("touch {marker}"); }} /* \\\n'
        f'#include "/etc/passwd"\n\'single\' "double" ??/\nall:\n\ttouch {marker}\n$(shell touch {marker})'
        f" ) execute_process(COMMAND touch {marker}) \\"
    )


# -- the templates -----------------------------------------------------------------------------------


def _is_typed(expression: nodes.Node) -> bool:
    """A typed filter call, or `values | map("typed filter") | join(...)`, or constant text."""
    if isinstance(expression, nodes.Const):
        return True
    if not isinstance(expression, nodes.Filter):
        return False
    if expression.name in FILTERS:
        return True
    inner = expression.node
    return (
        expression.name == "join"
        and isinstance(inner, nodes.Filter)
        and inner.name == "map"
        and isinstance(inner.args[0], nodes.Const)
        and inner.args[0].value in FILTERS
    )


def test_every_rendered_value_passes_a_typed_filter() -> None:
    env = environment()
    templates = sorted(TEMPLATES.rglob("*.j2"))
    assert len(templates) == 13
    for path in templates:
        for output in env.parse(path.read_text()).find_all(nodes.Output):
            for expression in output.nodes:
                if not isinstance(expression, nodes.TemplateData):
                    assert _is_typed(expression), f"{path.name}:{expression.lineno}: {expression}"


def _renamed(program: Program, names: dict[str, str], name: str) -> Program:
    """`program` with its tensors renamed by `names` and the model named `name`."""
    renamed = Program(
        name=name,
        levels=program.levels,
        frequencies_khz=program.frequencies_khz,
        tensors={
            names[key]: Tensor(names[key], t.shape, t.dtype, t.storage, t.data)
            for key, t in program.tensors.items()
        },
        inputs=[names[key] for key in program.inputs],
        outputs=[names[key] for key in program.outputs],
        steps=[],
    )
    for calls, writes in zip(program.steps, program.writes, strict=True):
        renamed.add_step(
            [type(call)(call.symbol, tuple(names[a] for a in call.args)) for call in calls],
            tuple(names[w] for w in writes),
        )
    return renamed


@pytest.mark.parametrize(
    ("input_name", "output_name"),
    [("int", "rt3_init"), ("memcpy", "NULL"), ("a.b", "a_b"), ("0x", "é */ y"), ("steps", "STEPS")],
)
def test_input_and_output_names_become_safe_distinct_identifiers(
    input_name: str, output_name: str, tmp_path: Path
) -> None:
    """Names that are keywords, library or runtime names, collide, or hold anything else still compile."""
    marker = tmp_path / "PWNED"
    hostile = _payload(marker)
    names = {"x": input_name, "y": output_name, "bias": f"bias {hostile}", "t": f"t {hostile}"}
    kernels = _toy_kernels(tmp_path)
    render_project(_renamed(_toy_program(), names, hostile), tmp_path)
    (tmp_path / "main.c").write_text(MAIN)
    sources = ["main.c", "rt3_model.c", "rt3_weights.S", "-Wa,-I.", str(kernels)]
    subprocess.run(["gcc", *CFLAGS, "-pedantic", *sources, "-o", "main"], cwd=tmp_path, check=True)
    output = subprocess.run(["./main"], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    assert output.splitlines()[:2] == ["0 4 6 8 10", "1 6 9 12 15"]
    assert not marker.exists()
    header = (tmp_path / "rt3_model.h").read_text()
    parameters = re.search(r"rt3_status_t rt3_invoke\(const float \*(\w+), float \*(\w+)\);", header)
    assert parameters is not None and parameters[1].lower() != parameters[2].lower()


def test_a_value_of_the_wrong_type_is_refused_and_nothing_written(tmp_path: Path) -> None:
    program = _toy_program()
    program.frequencies_khz = ['1; system("touch PWNED")', 500_000]
    with pytest.raises(
        UserError, match=r"rt3_model.c.j2: frequencies_khz\[0\]: expected an integer in \[0, 4294967295\]"
    ):
        render_project(program, tmp_path / "project")
    assert not (tmp_path / "project").exists()
    env = environment()
    for value in (True, 1.0, "1", -1, 2**32):
        with pytest.raises(UserError, match="uint32_t"):
            env.from_string("{{ v | c_uint32 }}").render(v=value)
    for value in ("int", "a b", "x;y", "é", 5):
        with pytest.raises(UserError, match="a C identifier"):
            env.from_string("{{ v | c_ident }}").render(v=value)
    for value in ("1, 2", [1, 2], np.array(["1; x"]), np.array([1.0], np.float16), np.zeros(0, np.float32)):
        with pytest.raises(UserError, match="a non-empty numpy array of"):
            env.from_string("{{ v | c_values }}").render(v=value)
    for value in ("-O2 -lfoo", "$(shell id)", "a;b", "a\nb", "#x", '"'):
        with pytest.raises(UserError, match="Make/CMake word"):
            env.from_string("{{ v | build_word }}").render(v=value)
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ missing | c_int }}").render()


@pytest.mark.parametrize(
    "text", ["*/", "/*", "**/", "/*/", "a\\", "a\nb", "??/", "???/", "x\r\n#include <a>", "\x00é\u2028"]
)
def test_comment_text_is_inert(text: str) -> None:
    escaped = comment(text)
    assert escaped.isascii() and escaped.isprintable()
    assert not any(sequence in escaped for sequence in ("*/", "/*", "??", "\\"))


# -- a hostile model and plan ------------------------------------------------------------------------


def _hostile_copy(exported: Path, plan_path: Path, payload: str, out: Path) -> tuple[Path, Path]:
    """The model with the payload in its name, producer, graph, nodes, initializers, activations and
    parameter names, and its plan with the payload in the model, metadata, level and layer names."""
    model = onnx.load(exported)
    inputs_and_outputs = {value.name for value in [*model.graph.input, *model.graph.output]}
    renamed: dict[str, str] = {}
    for number, node in enumerate(model.graph.node):
        node.name = f"{payload} node{number}"
        for names in (node.input, node.output):
            for index, name in enumerate(names):
                if name and name not in inputs_and_outputs:
                    names[index] = renamed.setdefault(name, f"{payload} {name}")
    for initializer in model.graph.initializer:
        initializer.name = renamed.setdefault(initializer.name, f"{payload} {initializer.name}")
    for value in model.graph.value_info:
        value.name = renamed.get(value.name, value.name)
    model.producer_name = model.graph.name = model.doc_string = payload
    metadata = {prop.key: prop for prop in model.metadata_props}
    metadata["rt3c.source"].value = payload
    weights = json.loads(metadata[WEIGHTS_METADATA_KEY].value)
    metadata[WEIGHTS_METADATA_KEY].value = json.dumps(
        {renamed[name]: {**entry, "param": f"{payload} {entry['param']}"} for name, entry in weights.items()}
    )
    model_path = out / "hostile.onnx"
    onnx.save(model, model_path)
    plan = json.loads(plan_path.read_text())
    plan["model"] = payload
    plan["metadata"] = {payload: payload}
    for number, level in enumerate(plan["levels"]):
        level["name"] = f"{payload} L{number}"
    plan["layers"] = {f"{payload} {name}": layer for name, layer in plan["layers"].items()}
    hostile_plan = out / "hostile-plan.json"
    hostile_plan.write_text(json.dumps(plan))
    return model_path, hostile_plan


def _render(model: Path, plan: Path, out: Path) -> dict[str, str]:
    """Every text file of the project: sources, build files for the host, aarch64 and Cortex-M4, and the
    Cortex-M4 kernels' C source (TVM's C target names variables after the tensors it is given)."""
    encoded = encode_model(model, plan, out.parent / f"{out.name}.rt3.onnx").path
    frequencies = [level.frequency_khz for level in Plan.load(plan).levels]
    compiled = lower_model(encoded, get_target("host"), frequencies)
    render_project(compiled.program, out)
    for target, kernel_file in (("host", "kernels.o"), ("aarch64", "kernels.o"), ("cortex-m4", "kernels.c")):
        build = out / target
        build.mkdir()
        render_build_files(compiled.program, build, get_target(target), kernel_file, sources_dir=out)
    write_kernels(compiled.functions, get_target("cortex-m4"), out / "cortex-m4" / "kernels.c")
    files = [
        p for p in out.rglob("*") if p.is_file() and "tvm_include" not in p.parts and "dlpack" not in p.parts
    ]
    return {str(p.relative_to(out)): p.read_text() for p in files if p.suffix != ".bin"}


def _without_comments(path: str, text: str) -> str:
    if path.endswith((".c", ".h", ".S", ".ld")):
        return re.sub(r"/\*.*?\*/", "/**/", text, flags=re.DOTALL)
    return re.sub(r"#.*", "#", text)  # Makefile, CMakeLists.txt, toolchain.cmake


@pytest.fixture(scope="module")
def bert_tiny_plan(bert_tiny_export: ExportResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    plan = tmp_path_factory.mktemp("plan") / "plan.json"
    plan_model(
        bert_tiny_export.onnx_path, plan, sparsities=[0.5, 0.7, 0.8], tile=(4, 4), patterns=8,
        frequencies_khz=[1_400_000, 1_000_000, 800_000],
    )  # fmt: skip
    return plan


def test_hostile_names_change_only_comment_text(
    bert_tiny_export: ExportResult, bert_tiny_plan: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "PWNED"
    payload = _payload(marker)
    model, plan = _hostile_copy(bert_tiny_export.onnx_path, bert_tiny_plan, payload, tmp_path)
    clean = _render(bert_tiny_export.onnx_path, bert_tiny_plan, tmp_path / "clean")
    hostile = _render(model, plan, tmp_path / "hostile")
    assert sorted(clean) == sorted(hostile)
    assert {"rt3_model.c", "main.c", "mps2.ld", "host/Makefile", "cortex-m4/kernels.c"} <= set(clean)
    for path, text in clean.items():
        assert hostile[path].count("\n") == text.count("\n"), path  # no line was added
        assert _without_comments(path, hostile[path]) == _without_comments(path, text), path
    escaped = comment(payload)
    assert escaped in hostile["rt3_model.c"] and escaped in hostile["host/Makefile"]  # it got there, inert
    assert escaped in hostile["host/CMakeLists.txt"]

    # The real thing: encode, lower, build and run every level against onnxruntime, twice (C and Make).
    out = tmp_path / "project"
    assert run_cli("compile", str(model), "--plan", str(plan), "--out", str(out)) == 0
    assert (out / "rt3_main").is_file() and not marker.exists()


@pytest.mark.parametrize(
    "frequency", ['1; system("touch PWNED")', -5, 1e300, float("nan"), 0, 1_400_000.0, 2**32, True]
)
def test_a_plan_frequency_that_is_not_a_uint32_is_refused(
    frequency: object,
    bert_tiny_export: ExportResult,
    bert_tiny_plan: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan = json.loads(bert_tiny_plan.read_text())
    plan["levels"][1]["frequency_khz"] = frequency
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps(plan))  # NaN is written as JSON's NaN, which Python's reader accepts
    err = _fails_cleanly([str(bert_tiny_export.onnx_path), "--plan", str(bad)], tmp_path / "project", capsys)
    assert f"{bad}: levels[1].frequency_khz: expected an integer in [1, 4294967295]" in err


# -- token ids out of range ----------------------------------------------------------------------------


TARGETS = ["host", "aarch64", "cortex-m4"]


@pytest.fixture(scope="module")
def bert_tiny_project(
    bert_tiny_export: ExportResult, bert_tiny_plan: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """The bert-tiny project for a target, compiled (and verified) once per module on first use."""
    projects: dict[str, Path] = {}

    def project(target: str) -> Path:
        if target not in projects:
            out = tmp_path_factory.mktemp(target) / "project"
            compile_model(bert_tiny_export.onnx_path, out, target_name=target, plan_path=bert_tiny_plan)
            projects[target] = out
        return projects[target]

    return project


def _save_inputs(directory: Path, ids: np.ndarray) -> list[Path]:
    paths = [directory / "ids.npy", directory / "mask.npy"]
    np.save(paths[0], ids)
    np.save(paths[1], np.ones_like(ids))
    return paths


@pytest.mark.parametrize("target", TARGETS)
def test_out_of_range_token_ids_are_refused(
    target: str,
    bert_tiny_project: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = bert_tiny_project(target)
    manifest = json.loads((project / "rt3c-build.json").read_text())
    assert manifest["inputs"][0]["index_limit"] == VOCAB
    runner = get_target(target)
    ids = np.arange(16, dtype=np.int64).reshape(1, 16)
    for number, bad in enumerate(OUT_OF_RANGE_IDS):
        ids[0, 3 + number] = bad
        paths = _save_inputs(tmp_path, ids)
        # rt3_main itself: the status, reported as such, and no output written.
        (project / "ids.bin").write_bytes(ids.tobytes())
        (project / "mask.bin").write_bytes(np.ones_like(ids).tobytes())
        binary = "rt3_main" if runner.board else str(project / "rt3_main")
        result = subprocess.run(
            runner.command(binary, ["0", "ids.bin", "mask.bin", "out.bin"]),
            cwd=project, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert result.returncode == MAIN_EXIT_INPUT_OUT_OF_RANGE, (bad, result.stderr)
        assert "BERT_TINY_ERROR_INPUT_OUT_OF_RANGE): input_ids takes values in [0, 1024)" in result.stderr
        assert not (project / "out.bin").exists()
        # rt3c run: exit 2, naming the file.
        assert run_cli("run", str(project), "-i", str(paths[0]), "-i", str(paths[1])) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err == (
            f"rt3c: error: {paths[0]}: input_ids takes values in [0, 1024); "
            "bert_tiny_invoke refused it (BERT_TINY_ERROR_INPUT_OUT_OF_RANGE)"
        )
        ids[0, 3 + number] = number  # one bad id at a time


@pytest.mark.parametrize("target", TARGETS)
def test_ids_at_the_table_edges_match_onnxruntime(
    target: str,
    bert_tiny_project: Callable[[str], Path],
    bert_tiny_export: ExportResult,
    bert_tiny_plan: Path,
    tmp_path: Path,
) -> None:
    encoded = encode_model(bert_tiny_export.onnx_path, bert_tiny_plan, tmp_path / "m.rt3.onnx").path
    reference = level_model(load_onnx(encoded), 2)
    feeds = deterministic_feeds(reference, seed=3)
    feeds["input_ids"][0, :4] = [0, VOCAB - 1, 0, VOCAB - 1]
    onnx.save(reference, tmp_path / "level.onnx")
    (expected,) = run_onnx(tmp_path / "level.onnx", feeds)
    paths = [tmp_path / "ids.npy", tmp_path / "mask.npy"]
    np.save(paths[0], feeds["input_ids"])
    np.save(paths[1], feeds["attention_mask"])
    assert run_cli("run", str(bert_tiny_project(target)), "-l", "2", "-i", str(paths[0]), "-i", str(paths[1]),
                   "--output", str(tmp_path / "y.npy")) == 0  # fmt: skip
    assert np.max(np.abs(np.load(tmp_path / "y.npy") - expected)) <= 1e-4


def test_out_of_range_ids_under_sanitizers(bert_tiny_project: Callable[[str], Path]) -> None:
    """The example program and runtime built with ASan + UBSan: refused ids exit cleanly, good ones run."""
    project = bert_tiny_project("host")
    sources = [project / name for name in ("main.c", "bert_tiny_model.c", "bert_tiny_weights.S", "kernels.o")]
    flags = ["-std=c99", "-O1", "-g", "-Wall", "-Wextra", "-Werror", f"-I{project}", f"-Wa,-I{project}"]
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    binary = project / "rt3_main_asan"
    subprocess.run(["gcc", *flags, *sanitize, *map(str, sources), "-o", str(binary), "-lm"], check=True)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "halt_on_error=1"}
    (project / "mask.bin").write_bytes(np.ones((1, 16), np.int64).tobytes())
    for bad in [*OUT_OF_RANGE_IDS, 2**63 - 1, -(2**63), None]:
        ids = np.arange(16, dtype=np.int64).reshape(1, 16)
        if bad is not None:
            ids[0, 15] = bad
        (project / "ids.bin").write_bytes(ids.tobytes())
        result = subprocess.run(
            [str(binary), "1", "ids.bin", "mask.bin", "out.bin"],
            cwd=project, capture_output=True, text=True, timeout=300, env=env, check=False,
        )  # fmt: skip
        assert result.returncode == (0 if bad is None else MAIN_EXIT_INPUT_OUT_OF_RANGE), result.stderr
        assert "runtime error" not in result.stderr and "AddressSanitizer" not in result.stderr


def test_out_of_range_ids_under_valgrind(bert_tiny_project: Callable[[str], Path]) -> None:
    """The same program without sanitizers under valgrind's memcheck: no invalid read or write, no use of
    uninitialised memory and no leak when ids are refused. (Valgrind 3.19 cannot run a whole inference:
    it does not decode the AVX-512 instructions of the host kernels, built for this CPU.)"""
    project = bert_tiny_project("host")
    sources = [project / name for name in ("main.c", "bert_tiny_model.c", "bert_tiny_weights.S", "kernels.o")]
    flags = ["-std=c99", "-O1", "-g", "-Wall", "-Wextra", "-Werror", f"-I{project}", f"-Wa,-I{project}"]
    binary = project / "rt3_main_plain"
    subprocess.run(["gcc", *flags, *map(str, sources), "-o", str(binary), "-lm"], check=True)
    (project / "mask.bin").write_bytes(np.ones((1, 16), np.int64).tobytes())
    for bad in (VOCAB, VOCAB + 1000, -1):
        ids = np.arange(16, dtype=np.int64).reshape(1, 16)
        ids[0, 15] = bad
        (project / "ids.bin").write_bytes(ids.tobytes())
        result = subprocess.run(
            ["valgrind", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=all",
             str(binary), "1", "ids.bin", "mask.bin", "out.bin"],
            cwd=project, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert result.returncode == MAIN_EXIT_INPUT_OUT_OF_RANGE, result.stderr
        assert "ERROR SUMMARY: 0 errors" in result.stderr, result.stderr


# -- index inputs the runtime could not bound ------------------------------------------------------------


GATHER_TABLE = np.arange(30, dtype=np.float32).reshape(10, 3)
GATHER_SCALE = np.arange(1, 11, dtype=np.float32) / 4
"""An int8 table's scale per row (exact in float32, as are the products)."""


def _gather_model(path: Path, index_ops: list[str], int8: bool = False) -> Path:
    """y = table[f(ids)] with a 10-row table and f the chain of `index_ops` applied to int64 ids [1, 4];
    with `int8`, the table is DequantizeLinear(GATHER_TABLE as int8, GATHER_SCALE), as an int8 model's
    embeddings are (rt3c.passes.quantize_weights)."""
    one = numpy_helper.from_array(np.array(1, np.int64), "one")
    shape = numpy_helper.from_array(np.array([4], np.int64), "shape")
    node_list, value = [], "ids"
    if int8:
        constants = [
            numpy_helper.from_array(GATHER_TABLE.astype(np.int8), "table.int8"),
            numpy_helper.from_array(GATHER_SCALE, "table.scale"),
        ]
        node_list.append(
            helper.make_node("DequantizeLinear", ["table.int8", "table.scale"], ["table"], name="dq", axis=0)
        )
    else:
        constants = [numpy_helper.from_array(GATHER_TABLE, "table")]
    for number, op in enumerate(index_ops):
        inputs = {"Add": [value, "one"], "Reshape": [value, "shape"]}.get(op, [value])
        attributes = {"to": onnx.TensorProto.INT32} if op == "Cast" else {}
        node_list.append(helper.make_node(op, inputs, [f"v{number}"], name=f"index_{number}", **attributes))
        value = f"v{number}"
    node_list.append(helper.make_node("Gather", ["table", value], ["y"], name="the_gather"))
    graph = helper.make_graph(
        node_list,
        "g",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1, 4])],
        [
            helper.make_tensor_value_info(
                "y", onnx.TensorProto.FLOAT, [4, 3] if "Reshape" in index_ops else [1, 4, 3]
            )
        ],
        [*constants, one, shape],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_ids_through_cast_and_reshape_are_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _gather_model(tmp_path / "gather.onnx", ["Reshape", "Cast"])
    out = tmp_path / "project"
    assert run_cli("compile", str(model), "--out", str(out)) == 0
    assert "#define GATHER_INPUT_IDS_LIMIT 10" in (out / "gather_model.h").read_text()
    np.save(
        tmp_path / "ids.npy", np.array([[9, 0, 2**32 + 1, 3]], np.int64)
    )  # int32 would wrap 2^32 + 1 to 1
    assert run_cli("run", str(out), "-i", str(tmp_path / "ids.npy")) == 2
    assert "ids takes values in [0, 10)" in capsys.readouterr().err


@pytest.mark.parametrize("int8", [False, True])
def test_computed_indices_are_read_clamped(int8: bool, tmp_path: Path) -> None:
    """Indices computed from the inputs (here ids + 1) cannot be checked before the kernels run: the Gather
    reads them clamped to its table, so no input makes it read outside (ids 9 + 1 reads row 9, -20 + 1
    row 0 counted from the end, -10), and indices in range give onnxruntime's rows. An int8 table is read
    by its own kernel (int8 rows scaled in registers), which must count a negative index from the end too."""
    model = _gather_model(tmp_path / "gather.onnx", ["Add"], int8)
    out = tmp_path / "project"
    assert run_cli("compile", str(model), "--out", str(out)) == 0
    assert "_LIMIT " not in (out / "gather_model.h").read_text()  # no input to check against a table
    assert ("dequantized_gather" in (out / "gather_model.c").read_text()) == int8
    np.save(tmp_path / "ids.npy", np.array([[9, 0, -20, 3]], np.int64))
    table = GATHER_TABLE * GATHER_SCALE[:, None] if int8 else GATHER_TABLE
    got = run_project(out, 0, [tmp_path / "ids.npy"])["y"]
    np.testing.assert_array_equal(got, table[[[9, 1, 0, 4]]])


# -- interrupted commands --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "after", ["verify every level against the masked dense model", "lower the model to TVM kernels"]
)
def test_ctrl_c_exits_130_with_one_line_and_leaves_nothing(
    after: str, bert_tiny_export: ExportResult, bert_tiny_plan: Path, tmp_path: Path
) -> None:
    """SIGINT while `rt3c compile` lowers the model (Python and TVM's importer) or builds kernels (inside
    TVM's passes, whose callbacks turn the KeyboardInterrupt into a RuntimeError)."""
    with _compile_until(after, bert_tiny_export, bert_tiny_plan, tmp_path / "project") as process:
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
    assert process.returncode == 130, rest
    assert rest.strip().splitlines() == ["rt3c: interrupted"]
    assert {path.name for path in tmp_path.iterdir()} <= {"cache"}  # no --out, no staging folder


def test_an_interrupted_build_leaves_no_compiler_running(tmp_path: Path) -> None:
    """`make`'s own children die with it: a compiler left running would write into a staging folder that
    the interrupted rt3c has just removed (seen as a `.project.*` folder left after Ctrl-C)."""
    script = "sleep 60 & echo $! > grandchild; wait"
    with pytest.raises(subprocess.TimeoutExpired):
        run_process_group(["sh", "-c", script], tmp_path, timeout=1.0)
    stat = Path(f"/proc/{(tmp_path / 'grandchild').read_text().strip()}/stat")
    assert not stat.exists() or stat.read_text().split(")")[1].split()[0] == "Z"  # gone, or dead unreaped


@contextlib.contextmanager
def _compile_until(
    after: str, export: ExportResult, plan: Path, out: Path
) -> Iterator[subprocess.Popen[str]]:
    """`rt3c compile` of bert-tiny into `out` as a child process, yielded once step `after` is done.
    The kernel cache is a new folder next to `out`, so the kernel build is slow enough to interrupt."""
    command = [str(Path(sys.executable).with_name("rt3c")), "compile", str(export.onnx_path)]
    command += ["--plan", str(plan), "--out", str(out)]
    env = {**os.environ, "RT3C_CACHE_DIR": str(out.parent / "cache")}
    with subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not ignored even if ours is
    ) as process:
        assert process.stderr is not None
        for line in process.stderr:
            if after in line:  # that step is done, the next one runs
                break
        yield process


@pytest.mark.parametrize("out_exists", [False, True], ids=["new-out", "empty-out"])
def test_a_second_compile_is_refused_and_sigterm_exits_143_leaving_out_as_it_was(
    out_exists: bool,
    bert_tiny_export: ExportResult,
    bert_tiny_plan: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two compiles into one --out: the second is refused by the first's lock (before, both built, and the
    project mixed their files). SIGTERM then stops the first: exit 143, one line, --out as it was."""
    out = tmp_path / "project"
    if out_exists:
        out.mkdir()
    with _compile_until("lower the model to TVM kernels", bert_tiny_export, bert_tiny_plan, out) as first:
        assert (tmp_path / ".project.lock").is_file()
        assert (
            run_cli(
                "compile", str(bert_tiny_export.onnx_path), "--plan", str(bert_tiny_plan), "--out", str(out)
            )
            == 2
        )
        assert capsys.readouterr().err.strip().splitlines() == [
            f"rt3c: error: --out {out}: another rt3c process is writing it (it holds {tmp_path / '.project.lock'}); "
            "wait for it to end or choose another output folder"
        ]
        assert first.poll() is None  # the first compile goes on
        first.send_signal(signal.SIGTERM)
        rest = first.stderr.read()
    assert first.returncode == 143, rest
    assert rest.strip().splitlines() == ["rt3c: terminated"]
    # No staging folder or lock file left, and --out as it was.
    assert {path.name for path in tmp_path.iterdir()} - {"cache"} == ({"project"} if out_exists else set())
    assert not out.exists() or not any(out.iterdir())


def test_the_out_lock_is_exclusive_and_removed_on_release(tmp_path: Path) -> None:
    out = tmp_path / "project"
    second = exclusive_lock(out)
    with exclusive_lock(out), pytest.raises(UserError, match="another rt3c process is writing it"), second:
        pass
    assert list(tmp_path.iterdir()) == []
    with exclusive_lock(out):  # free again
        pass
    with (
        pytest.raises(UserError, match="does not exist or is not writable"),
        exclusive_lock(tmp_path / "no" / "x"),
    ):
        pass


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (np.full((1, 16), 3.7), "takes int64 integers, got float64 values"),
        (np.full((1, 16), 3 + 0j), "takes int64 integers, got complex128 values"),
        (
            np.full((1, 16), 2**63, np.uint64),
            "takes int64 integers, got values outside [-9223372036854775808, 9223372036854775807]",
        ),
    ],
    ids=["float", "complex", "uint64-past-int64"],
)
def test_run_refuses_ids_it_would_truncate_or_wrap(
    ids: np.ndarray,
    message: str,
    bert_tiny_project: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = _save_inputs(tmp_path, ids)
    np.save(paths[1], np.ones((1, 16), np.int64))
    assert run_cli("run", str(bert_tiny_project("host")), "-i", str(paths[0]), "-i", str(paths[1])) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"rt3c: error: {paths[0]}: input_ids {message}"


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("{", "not an rt3c project manifest (JSONDecodeError"),
        ("[]", "not an rt3c project manifest (TypeError"),
        ('{"target": ["host"], "levels": ["L0"], "inputs": [], "outputs": []}', "target ['host'] is none of"),
        (
            '{"target": "host", "prefix": "m; rm", "levels": ["L0"], "inputs": [], "outputs": []}',
            "prefix 'm; rm' is not a prefix `rt3c compile` writes",
        ),
        (
            '{"target": "host", "prefix": "m", "levels": [], "inputs": [], "outputs": []}',
            "levels: expected a non-empty list",
        ),
        (
            '{"target": "host", "prefix": "m", "levels": ["L0"], "outputs": [],'
            ' "inputs": [{"name": "x", "shape": [1, -4], "dtype": "int64"}]}',
            "inputs[0]: expected name, shape and dtype",
        ),
        (
            '{"target": "host", "prefix": "m", "levels": ["L0"], "inputs": [],'
            ' "outputs": [{"name": "y", "shape": [2], "dtype": ["float32"]}]}',
            "outputs[0]: expected name, shape and dtype",
        ),
    ],
    ids=["not-json", "a-list", "target", "prefix", "levels", "negative-shape", "dtype-list"],
)
def test_run_refuses_a_tampered_manifest(
    manifest: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rt3c-build.json").write_text(manifest)
    assert run_cli("run", str(tmp_path)) == 2
    assert (
        capsys.readouterr().err.strip().startswith(f"rt3c: error: {tmp_path / 'rt3c-build.json'}: {message}")
    )


def test_run_refuses_a_npy_header_larger_than_its_file(
    bert_tiny_project: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lying = tmp_path / "ids.npy"
    with lying.open("wb") as handle:  # claims 10^12 ids (8 TB), holds 16
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "<i8", "fortran_order": False, "shape": (10**12,)}
        )
        handle.write(np.zeros(16, np.int64).tobytes())
    mask = tmp_path / "mask.npy"
    np.save(mask, np.ones((1, 16), np.int64))
    assert run_cli("run", str(bert_tiny_project("host")), "-i", str(lying), "-i", str(mask)) == 2
    assert f"{lying}: cannot read a .npy array" in capsys.readouterr().err
