"""Stage 3: the generated C project on every target, level semantics, sanitizers, and bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_cli import run_cli

from rt3c.core.onnx_io import deterministic_feeds, load_onnx
from rt3c.stages.compile import compile_model
from rt3c.stages.encode import encode_model, plan_model
from rt3c.stages.export import ExportResult
from rt3c.stages.lower import level_model
from rt3c.stages.reference import run_onnx
from rt3c.stages.run import run_project

HARNESS = Path(__file__).resolve().parent / "c" / "level_switch.c"
FUZZ_HARNESS = Path(__file__).resolve().parent / "c" / "fuzz_runtime.c"
RUNTIME_CORPUS = Path(__file__).resolve().parent / "bad_inputs" / "runtime"


@pytest.fixture(scope="module")
def bert_tiny_encoded(
    bert_tiny_export: ExportResult, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("encoded")
    plan = directory / "plan.json"
    # No frequencies in the plan: `rt3c plan` without --board, as the README's first steps do.
    plan_model(bert_tiny_export.onnx_path, plan, sparsities=[0.5, 0.7, 0.8], tile=(4, 4), patterns=8)
    encoded = directory / "model.rt3.onnx"
    encode_model(bert_tiny_export.onnx_path, plan, encoded)
    return encoded, plan


FREQUENCIES_KHZ = [1_400_000, 1_000_000, 800_000]


@pytest.fixture(scope="module")
def host_project(bert_tiny_encoded: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("host") / "project"
    compile_model(
        bert_tiny_encoded[0], out, target_name="host", plan_path=bert_tiny_encoded[1],
        frequencies_khz=FREQUENCIES_KHZ, prefix="rt3",  # the API tests/c/level_switch.c calls
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def c_weights_project(bert_tiny_encoded: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """host_project with its weights as const C arrays (`--weights-format c`)."""
    out = tmp_path_factory.mktemp("c-weights") / "project"
    compile_model(
        bert_tiny_encoded[0], out, plan_path=bert_tiny_encoded[1], frequencies_khz=FREQUENCIES_KHZ,
        prefix="rt3", weights_format="c",
    )  # fmt: skip
    return out


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_weights_as_c_arrays(
    compiler: str,
    c_weights_project: Path,
    host_project: Path,
    bert_tiny_encoded: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """No assembler, no binary file: the C arrays build with gcc and clang (-pedantic) and give the incbin
    project's outputs bit for bit at every level."""
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed")
    assert not list(c_weights_project.glob("*.S")) and not list(c_weights_project.glob("*.bin"))
    sources = [c_weights_project / name for name in ("main.c", "rt3_model.c", "rt3_weights.c", "kernels.o")]
    for source in sources[:3]:
        assert not re.search(r"\.incbin|\basm\b|__asm", source.read_text()), source
    flags = ["-std=c99", "-pedantic", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{c_weights_project}"]
    binary = tmp_path / "rt3_main"
    subprocess.run([compiler, *flags, *map(str, sources), "-o", str(binary), "-lm"], check=True)
    feeds = deterministic_feeds(level_model(load_onnx(bert_tiny_encoded[0]), 0), seed=2)
    inputs = []
    for name in ("input_ids", "attention_mask"):
        (tmp_path / f"{name}.bin").write_bytes(feeds[name].tobytes())
        inputs.append(str(tmp_path / f"{name}.bin"))
    for level in range(3):
        for program, out in ((binary, "c.out"), (host_project / "rt3_main", "incbin.out")):
            subprocess.run([str(program), str(level), *inputs, str(tmp_path / out)], check=True)
        assert (tmp_path / "c.out").read_bytes() == (tmp_path / "incbin.out").read_bytes(), level


def test_frequencies_reach_the_runtime_table(host_project: Path) -> None:
    assert (
        "rt3_level_khz[RT3_NUM_LEVELS] = { 1400000u, 1000000u, 800000u };"
        in (host_project / "rt3_model.c").read_text()
    )


def test_levels_without_frequencies_are_refused(
    bert_tiny_export: ExportResult,
    bert_tiny_encoded: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without frequencies the runtime's table would be zeros and rt3_on_frequency would pick one level at
    every frequency: compile says which options give them, and writes nothing."""
    encoded, plan = bert_tiny_encoded
    out = tmp_path / "project"
    fix = "give the frequencies with --board BOARD or --frequencies KHZ,KHZ,..."
    err = _fails_cleanly([str(bert_tiny_export.onnx_path), "--plan", str(plan)], out, capsys)
    assert f"{plan}: levels L0,L1,L2 have no frequency" in err and fix in err
    err = _fails_cleanly([str(encoded)], out, capsys)  # an encoded model alone has no frequencies either
    assert f"{encoded}: levels L0,L1,L2 have no frequency" in err and fix in err
    bad = {
        "--frequencies 1400000,1000000": "2 values for the model's 3 levels (L0,L1,L2)",
        "--frequencies 800000,1000000,1400000": "level 1 (1000000 kHz) is not below level 0 (800000 kHz)",
        "--frequencies 1400000,1000000,0": "level 2: expected a frequency in [1, 4294967295] kHz, got 0",
        "--frequencies 1.4e6,1e6,8e5": "expected comma-separated integers",
        "--board cortex-m7 --frequencies 3,2,1": "--board and --frequencies: give the levels' frequencies",
    }
    for options, message in bad.items():
        assert message in _fails_cleanly([str(encoded), *options.split()], out, capsys), options


def _check_against_onnxruntime(project: Path, encoded: Path, seed: int) -> None:
    """`rt3c run` on fresh inputs equals onnxruntime on the encoded model of each level."""
    model = load_onnx(encoded)
    for level in range(3):
        reference = level_model(model, level)
        feeds = deterministic_feeds(reference, seed=seed)
        paths = []
        for name, array in feeds.items():
            path = project.parent / f"{name}.{seed}.npy"
            np.save(path, array)
            paths.append(path)
        got = run_project(project, level, paths)["logits"]
        ref_path = project.parent / f"ref{level}.onnx"
        onnx.save(reference, ref_path)
        (expected,) = run_onnx(ref_path, feeds)
        assert np.max(np.abs(got - expected)) <= 1e-4, (project, level)


def test_memory_and_speed_report(host_project: Path) -> None:
    report = json.loads((host_project / "report.json").read_text())
    manifest = json.loads((host_project / "rt3c-build.json").read_text())
    flash, ram = report["flash_bytes"], report["ram_bytes"]
    assert flash["weights"] + flash["indices"] + flash["padding"] == manifest["weight_bytes"]
    assert flash["weights"] > 10 * flash["indices"] > 0 and flash["code"] > 0
    assert flash["total"] == flash["code"] + manifest["weight_bytes"]
    assert (
        ram["activations"]
        == manifest["memory_bytes"] - manifest["workspace_bytes"]
        >= manifest["arena_bytes"]
    )
    assert ram["scratch"] == manifest["workspace_bytes"] and 0 < ram["descriptors"] < 16_384
    levels = report["levels"]
    assert [level["frequency_khz"] for level in levels] == FREQUENCIES_KHZ
    assert levels[0]["sparsity"] < levels[1]["sparsity"] < levels[2]["sparsity"]
    assert all(level["host_us"] > 0 and level["instructions"] is None for level in levels)
    assert all(level["max_abs_diff"] <= 1e-4 for level in levels)
    text = (host_project / "REPORT.md").read_text()
    assert "| **total** | **" in text and "| L2 | 800,000 | 0.812 |" in text


def test_host_every_level(host_project: Path, bert_tiny_encoded: tuple[Path, Path]) -> None:
    manifest = json.loads((host_project / "rt3c-build.json").read_text())
    assert max(manifest["max_abs_diff"]) <= 1e-4
    assert manifest["arena_bytes"] >= manifest["arena_lower_bound"] > 0
    _check_against_onnxruntime(host_project, bert_tiny_encoded[0], seed=11)


def _build_with_cmake(project: Path, build: Path) -> None:
    """Build `project` with its CMakeLists.txt and put that rt3_main in place of the Makefile's."""
    for command in (["cmake", "-S", str(project), "-B", str(build)], ["cmake", "--build", str(build)]):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    shutil.copyfile(build / "rt3_main", project / "rt3_main")


@pytest.mark.parametrize("target", ["aarch64", "cortex-m4", "cortex-m7"])
def test_cross_targets_every_level(target: str, bert_tiny_encoded: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "project"
    result = compile_model(
        bert_tiny_encoded[0], out, target_name=target, plan_path=bert_tiny_encoded[1], board="rt3-default"
    )
    assert max(result.max_abs_diff) <= 1e-4  # the Makefile's build, on the host and on the target under qemu
    # The report counts executed instructions per inference under qemu: fewer at the sparser levels.
    instructions = [level["instructions"] for level in result.report["levels"]]
    assert instructions[0] > instructions[2] > 100_000
    # The CMake build of the same project (toolchain file, startup, linker script) on fresh inputs.
    _build_with_cmake(out, tmp_path / "cmake-build")
    _check_against_onnxruntime(out, bert_tiny_encoded[0], seed=5)


def test_library_uses_no_heap_and_no_stdio(host_project: Path) -> None:
    symbols = subprocess.run(
        ["nm", "-u", "librt3.a"], cwd=host_project, capture_output=True, text=True, check=True
    )
    undefined = {line.split()[-1] for line in symbols.stdout.splitlines() if line.strip() and ":" not in line}
    forbidden = {"malloc", "calloc", "realloc", "free", "printf", "fprintf", "puts", "fopen"}
    assert not undefined & forbidden, undefined & forbidden


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_runtime_is_warning_free(host_project: Path, compiler: str, tmp_path: Path) -> None:
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed")
    flags = ["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-c", "-I", str(host_project)]
    subprocess.run(
        [compiler, *flags, str(host_project / "rt3_model.c"), "-o", str(tmp_path / "m.o")], check=True
    )


def _build_harness(
    project: Path, out: Path, extra: list[str], harness: Path = HARNESS, compiler: str = "gcc"
) -> Path:
    binary = out / harness.stem
    sources = [
        str(harness),
        str(project / "rt3_model.c"),
        str(project / "rt3_weights.S"),
        str(project / "kernels.o"),
    ]
    command = [
        compiler,
        "-std=c99",
        "-O1",
        "-g",
        "-Wall",
        "-Wextra",
        "-Werror",
        f"-I{project}",
        f"-Wa,-I{project}",
    ]
    subprocess.run([*command, *extra, *sources, "-o", str(binary), "-lm"], check=True)
    return binary


def test_level_switches_between_inferences_and_from_a_signal(host_project: Path, tmp_path: Path) -> None:
    binary = _build_harness(host_project, tmp_path, ["-DSTRESS_INFERENCES=3000"])
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    _, inferences, switches = result.stdout.split()
    assert int(inferences) == 3000
    assert int(switches) > 10  # the signal really changed levels while inferences ran


def test_sanitizers_run_clean(host_project: Path, tmp_path: Path) -> None:
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-DSTRESS_INFERENCES=300"]
    binary = _build_harness(host_project, tmp_path, sanitize)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "halt_on_error=1"}
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "runtime error" not in result.stderr


def test_runtime_api_under_libfuzzer(host_project: Path, tmp_path: Path) -> None:
    """tests/c/fuzz_runtime.c: libFuzzer drives set_level, on_frequency, invoke (ids and mask from the bytes),
    NULL arguments and bad arenas, each call checked against its contract, under ASan + UBSan: 20,000
    inputs from the seeds in tests/bad_inputs/runtime/ (about a second; run the binary longer by hand)."""
    clang = shutil.which("clang")
    runtime = (
        subprocess.run([clang, "--print-runtime-dir"], capture_output=True, text=True) if clang else None
    )
    if runtime is None or not (Path(runtime.stdout.strip()) / "libclang_rt.fuzzer-x86_64.a").is_file():
        pytest.skip("clang's libFuzzer runtime is not installed (apt-get install libclang-rt-dev)")
    sanitize = ["-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all"]
    binary = _build_harness(host_project, tmp_path, sanitize, FUZZ_HARNESS, "clang")
    found = tmp_path / "corpus"  # libFuzzer adds what it finds to the first folder, not to the seeds
    found.mkdir()
    result = subprocess.run(
        [str(binary), "-runs=20000", "-max_len=1024", "-seed=1", "-max_total_time=120", str(found), str(RUNTIME_CORPUS)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 20000 runs" in result.stderr


# -- bad input ---------------------------------------------------------------------------------------


def test_unsupported_op_names_the_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mod", ["x", "x"], ["y"], name="the_mod_node", fmod=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "mod.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    out = tmp_path / "project"
    assert run_cli("compile", str(path), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "the_mod_node" in err and "Mod" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["mod.onnx"]


def _add_model(path: Path, elem_type: int, shape: list[int | str]) -> Path:
    """y = x + 1 with input x of `elem_type` and `shape` (a string is a symbolic dimension)."""
    from onnx import helper, numpy_helper

    ones = numpy_helper.from_array(np.ones(shape[-1], helper.tensor_dtype_to_np_dtype(elem_type)), "one")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"], name="add")],
        "g",
        [helper.make_tensor_value_info("x", elem_type, shape)],
        [helper.make_tensor_value_info("y", elem_type, shape)],
        [ones],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def _fails_cleanly(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`rt3c compile ... --out out` exits 2 with a one-line error, and `out` and its folder are as before."""
    before = sorted(p.name for p in out.parent.iterdir())
    inside = sorted(p.name for p in out.iterdir()) if out.exists() else None
    assert run_cli("compile", *args, "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("rt3c: error: ") and "Traceback" not in err
    assert sorted(p.name for p in out.parent.iterdir()) == before  # no staging folder left behind
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == inside
    return err.splitlines()[-1]


def test_relative_out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _add_model(tmp_path / "add.onnx", onnx.TensorProto.FLOAT, [1, 4])
    monkeypatch.chdir(tmp_path)
    assert run_cli("compile", "add.onnx", "--out", "project") == 0
    np.save("x.npy", np.arange(4, dtype=np.float32).reshape(1, 4))
    assert run_cli("run", "project", "-i", "x.npy", "--output", "y.npy") == 0
    assert np.array_equal(np.load("y.npy"), np.arange(1, 5, dtype=np.float32).reshape(1, 4))


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_unsupported_input_dtype(dtype: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    elem_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    model = _add_model(tmp_path / "add.onnx", elem_type, [1, 4])
    (tmp_path / "project").mkdir()  # an empty --out stays empty
    err = _fails_cleanly([str(model)], tmp_path / "project", capsys)
    assert f"input x: dtype {dtype} is not supported" in err


def test_unbound_dynamic_dimension(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _add_model(tmp_path / "add.onnx", onnx.TensorProto.FLOAT, ["batch", 4])
    err = _fails_cleanly([str(model)], tmp_path / "project", capsys)
    assert "add.onnx: input x [batch, 4]: dimension 0 (batch) is dynamic; give the input a fixed shape" in err
    # --shape fixes it (tests/test_foreign_onnx.py has the rest)
    assert run_cli("compile", str(model), "--shape", "x=2x4", "--out", str(tmp_path / "project")) == 0


def test_plan_that_does_not_match_the_model(
    bert_tiny_export: ExportResult,
    bert_tiny_encoded: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    encoded, plan_path = bert_tiny_encoded
    plan = json.loads(plan_path.read_text())
    first = next(iter(plan["layers"]))
    renamed = {**plan, "layers": {"no.such.layer" if k == first else k: v for k, v in plan["layers"].items()}}
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    two_levels = {**plan, "levels": plan["levels"][:2]}
    two_levels["layers"] = {
        name: {**layer, "levels": layer["levels"][:2]} for name, layer in plan["layers"].items()
    }
    (tmp_path / "two_levels.json").write_text(json.dumps(two_levels))
    out = tmp_path / "project"
    # An exported model: the plan names a layer the model does not have.
    args = [
        str(bert_tiny_export.onnx_path),
        "--plan",
        str(tmp_path / "renamed.json"),
        "--board",
        "rt3-default",
    ]
    assert "plan layer no.such.layer: not a linear layer" in _fails_cleanly(args, out, capsys)
    # An encoded model with the plan of other layers, or of other levels.
    args = [str(encoded), "--plan", str(tmp_path / "renamed.json")]
    assert "plan layer no.such.layer: not a linear layer" in _fails_cleanly(args, out, capsys)
    args = [str(encoded), "--plan", str(tmp_path / "two_levels.json")]
    assert f"two_levels.json: has levels L0,L1, but {encoded} has level L2" in _fails_cleanly(
        args, out, capsys
    )


def test_encoded_model_and_plan_must_match(
    bert_tiny_export: ExportResult,
    bert_tiny_encoded: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An encoded model with another plan (its frequencies would be taken for levels it does not have)
    is refused, naming the first difference; a model encoded with --level L goes with its full plan."""
    encoded, plan = bert_tiny_encoded
    out = tmp_path / "project"
    other = {
        "tiles": {"tile": (1, 8), "patterns": 8},
        "ids": {"tile": (4, 4), "patterns": 4},
    }
    layer = "bert.encoder.layer.0.attention.output.dense.weight"
    for kind, settings in other.items():
        other_plan = tmp_path / f"{kind}.json"
        plan_model(bert_tiny_export.onnx_path, other_plan, sparsities=[0.5, 0.7, 0.8], **settings)
        err = _fails_cleanly([str(encoded), "--plan", str(other_plan), "--board", "rt3-default"], out, capsys)
        expected = (
            f"layer {layer}: tiles 1x8, but {encoded} encodes 4x4"
            if kind == "tiles"
            else f"layer {layer}: level L0: other kept tiles or pattern ids than {encoded} encodes"
        )
        assert f"{other_plan}: " in err and expected in err, err
    # Level 1 keeps two sections of the shared buffer (level 2's values, then what level 1 adds).
    level_one = encode_model(bert_tiny_export.onnx_path, plan, tmp_path / "l1.rt3.onnx", level=1).path
    result = compile_model(level_one, out, plan_path=plan, verify=True)
    assert len(result.max_abs_diff) == 1 and result.max_abs_diff[0] <= 1e-4


@pytest.mark.parametrize(
    ("target", "present", "package"),
    [
        ("aarch64", ["aarch64-linux-gnu-gcc"], "qemu-user"),
        ("cortex-m4", ["arm-none-eabi-gcc"], "qemu-system-arm"),
    ],
)
def test_missing_qemu_names_the_package(
    target: str,
    present: list[str],
    package: str,
    bert_tiny_encoded: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ["gcc", "make", *present]:
        (tools / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(tools))  # the compilers, but no emulator
    err = _fails_cleanly([str(bert_tiny_encoded[0]), "--target", target], tmp_path / "project", capsys)
    assert f"--target {target}:" in err and f"apt-get install {package}`" in err


def test_missing_cross_compiler_names_the_package(
    bert_tiny_encoded: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to find
    assert (
        run_cli("compile", str(bert_tiny_encoded[0]), "--out", str(tmp_path / "p"), "--target", "aarch64")
        == 2
    )
    assert "gcc-aarch64-linux-gnu" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_bad_target_and_non_empty_out(
    bert_tiny_encoded: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run_cli("compile", str(bert_tiny_encoded[0]), "--out", str(tmp_path / "p"), "--target", "riscv") == 2
    )
    assert "--target riscv" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert run_cli("compile", str(bert_tiny_encoded[0]), "--out", str(tmp_path / "full")) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_run_bad_input(host_project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3), np.int64))
    assert (
        run_cli(
            "run",
            str(host_project),
            "--level",
            "0",
            "-i",
            str(tmp_path / "wrong.npy"),
            "-i",
            str(tmp_path / "wrong.npy"),
        )
        == 2
    )
    assert "shape" in capsys.readouterr().err
    assert run_cli("run", str(host_project), "--level", "7") == 2
    assert "--level 7" in capsys.readouterr().err
    assert run_cli("run", str(tmp_path)) == 2
    assert "not an rt3c project" in capsys.readouterr().err


# A cross compile also builds and verifies the host program, so the aarch64 cases cover the host too.
# On Cortex-M rt3-lm's weights must fit the MPS2 boards' 16 MiB PSRAM: its output layer (800x2000, as
# large as the embedding) is planned too, at sparser levels (14.8 MiB; the default plan needs 23.5 MiB).
@pytest.mark.slow
@pytest.mark.parametrize(
    ("fixture", "target", "sparsities", "layers"),
    [
        ("rt3_lm_export", "aarch64", [0.5, 0.7, 0.8], None),
        ("rt3_lm_export", "cortex-m4", [0.7, 0.8, 0.9], "."),
        ("rt3_lm_export", "cortex-m7", [0.7, 0.8, 0.9], "."),
        ("minilm_export", "aarch64", [0.5, 0.7, 0.8], None),
    ],
    ids=["rt3-lm-aarch64", "rt3-lm-cortex-m4", "rt3-lm-cortex-m7", "minilm-l6-aarch64"],
)
def test_zoo_models_compile_from_export_and_plan(
    fixture: str,
    target: str,
    sparsities: list[float],
    layers: str | None,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """`rt3c compile model.onnx --plan plan.json`: encode, kernels, C, verified at every level."""
    exported: ExportResult = request.getfixturevalue(fixture)
    plan = tmp_path / "plan.json"
    plan_model(exported.onnx_path, plan, sparsities=sparsities, tile=(8, 8), patterns=8, layers=layers)
    result = compile_model(
        exported.onnx_path, tmp_path / target, target_name=target, plan_path=plan, board="rt3-default"
    )
    assert len(result.max_abs_diff) == 3 and max(result.max_abs_diff) <= 1e-4
    assert result.arena_bytes >= result.arena_lower_bound


def _big_model(tmp_path: Path) -> Path:
    """y = x @ w with 17 MiB of weights."""
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((2048, 2176), np.float32), "w")  # 17 MiB
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="big")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2048])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2176])],
        [weight],
    )
    model = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), model)
    return model


def test_weights_beyond_the_board_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _big_model(tmp_path)
    err = _fails_cleanly([str(model), "--target", "cortex-m7"], tmp_path / "project", capsys)
    assert "--target cortex-m7: the weights take 17.0 MiB, but qemu's mps2-an500 holds 16 MiB" in err


def test_no_verify_needs_no_emulator_and_no_board_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--no-verify` generates and builds the library only: no qemu, and 17 MiB of weights are fine (the
    16 MiB bound is the qemu board's, for verification)."""
    model = _big_model(tmp_path)
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ["make", "rm", *(f"arm-none-eabi-{name}" for name in ("gcc", "ar", "objcopy", "size"))]:
        (tools / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(tools))  # a cross compiler, no emulator and no host compiler
    out = tmp_path / "project"
    args = ["compile", str(model), "--target", "cortex-m7", "--no-verify", "--out", str(out)]
    assert run_cli(*args) == 0
    assert "not verified (--no-verify)" in capsys.readouterr().out
    manifest = json.loads((out / "rt3c-build.json").read_text())
    assert manifest["verified"] is False and manifest["max_abs_diff"] == []
    assert (out / "libbig.a").is_file() and not (out / "rt3_main").exists()
    assert (out / "big_weights.bin").stat().st_size > 16 << 20
    report = json.loads((out / "report.json").read_text())  # sizes without measurements
    assert report["verified"] is False and report["flash_bytes"]["weights"] == 2048 * 2176 * 4
    assert report["levels"] == [
        {"name": "L0", "frequency_khz": 0, "sparsity": None, "max_abs_diff": None, "host_us": None,
         "instructions": None, "latency_ms": None, "deadline_ms": None, "speedup_vs_dense": None}
    ]  # fmt: skip


def test_another_cortex_m_part(
    bert_tiny_encoded: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--mcpu: a Cortex-M part beyond qemu's two boards, generated and built (not run: no board runs it)."""
    encoded, _ = bert_tiny_encoded
    common = [str(encoded), "--frequencies", ",".join(map(str, FREQUENCIES_KHZ)), "--target", "cortex-m4"]
    out = tmp_path / "project"
    refused = {
        "--mcpu cortex-m33": "--mcpu cortex-m33: qemu's mps2-an386 (target cortex-m4) cannot run it; turn verification off",
        "--mcpu cortex-a53 --no-verify": "--mcpu 'cortex-a53': not a Cortex-M part rt3c builds for",
    }
    for options, message in refused.items():
        assert message in _fails_cleanly([*common, *options.split()], out, capsys), options
    host = [str(encoded), "--frequencies", "3,2,1", "--mcpu", "cortex-m4", "--no-verify"]
    assert "--mcpu cortex-m4: only with a Cortex-M target" in _fails_cleanly(host, out, capsys)
    assert run_cli("compile", *common, "--mcpu", "cortex-m33", "--no-verify", "--out", str(out)) == 0
    attributes = subprocess.run(
        ["arm-none-eabi-readelf", "-A", str(out / "libbert_tiny.a")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Tag_CPU_arch: v8-M.mainline" in attributes and "Tag_ABI_VFP_args: VFP registers" in attributes
    assert not (out / "mps2.ld").exists() and "-mcpu=cortex-m33" in (out / "toolchain.cmake").read_text()
    assert run_cli("run", str(out)) == 2
    assert "has no example program rt3_main (compiled without verification)" in capsys.readouterr().err


def test_demo_runs_the_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("demo", "--out", str(tmp_path), "--target", "host") == 0
    out = capsys.readouterr().out
    assert "L2" in out and "|C-ORT|" in out
    assert (tmp_path / "c-host" / "bert_tiny_model.h").is_file()  # the prefix comes from the model
    assert (tmp_path / "model.rt3.onnx").is_file()
