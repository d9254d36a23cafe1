"""ONNX models that `rt3c export` did not write (no rt3c metadata): from onnx.helper and from torch's
TorchScript and dynamo exporters, with dynamic axes. Planned with three levels (layers named by their weight
initializer), compiled, and checked at every level against onnxruntime; and their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from test_cli import run_cli

from rt3c.core.onnx_io import deterministic_feeds, load_onnx
from rt3c.stages.lower import level_model
from rt3c.stages.reference import run_onnx
from rt3c.stages.run import run_project

FREQUENCIES = "1400000,1000000,800000"


def _helper_model(path: Path) -> Path:
    """x[batch, 8, 16] -> MatMul+Add -> Relu -> MatMul -> Reshape to 2-D (its shape from Shape, Slice and
    Concat) -> Gemm(transB=1) -> Tanh -> Gemm(transB=0) -> y: every linear form, 3-D and 2-D."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    initializers = [
        *(weight("enc.w0", 16, 32), weight("enc.b0", 32), weight("enc.w1", 32, 32)),
        *(weight("head.w2", 24, 32), weight("head.b2", 24), weight("head.w3", 24, 10)),
        weight("head.b3", 10),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        numpy_helper.from_array(np.array([2], np.int64), "two"),
        numpy_helper.from_array(np.array([3], np.int64), "three"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "enc.w0"], ["h0"]),
        helper.make_node("Add", ["h0", "enc.b0"], ["h0b"]),
        helper.make_node("Relu", ["h0b"], ["h1"]),
        helper.make_node("MatMul", ["h1", "enc.w1"], ["h2"]),
        helper.make_node("Shape", ["h2"], ["h2_shape"]),
        helper.make_node("Slice", ["h2_shape", "two", "three"], ["features"]),
        helper.make_node("Concat", ["minus_one", "features"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["h2", "flat_shape"], ["h3"]),
        helper.make_node("Gemm", ["h3", "head.w2", "head.b2"], ["h4"], transB=1),
        helper.make_node("Tanh", ["h4"], ["h5"]),
        helper.make_node("Gemm", ["h5", "head.w3", "head.b3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 10])],
        initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


class _TorchModel(torch.nn.Module):
    """nn.Linear on a 3-D input (MatMul + Add in the TorchScript export) and on a 2-D one (Gemm)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(16, 32)
        self.down = torch.nn.Linear(32, 16)
        self.head = torch.nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.down(torch.nn.functional.gelu(self.up(x)))
        return self.head(torch.tanh(hidden.mean(dim=1)))


def _torch_model(path: Path, dynamo: bool) -> Path:
    """`_TorchModel` exported by torch itself (not `rt3c export`: no rt3c metadata), batch dynamic."""
    torch.manual_seed(0)
    model = _TorchModel().eval()
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=64)
        program = torch.onnx.export(
            model, (torch.randn(2, 8, 16),), dynamo=True, input_names=["x"], output_names=["y"],
            dynamic_shapes={"x": {0: batch}},
        )  # fmt: skip
        program.save(str(path))
    else:
        torch.onnx.export(
            model, (torch.randn(1, 8, 16),), str(path), dynamo=False, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17,
        )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def foreign_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("foreign")
    return {
        "onnx.helper": _helper_model(directory / "helper.onnx"),
        "torchscript": _torch_model(directory / "torchscript.onnx", dynamo=False),
        "dynamo": _torch_model(directory / "dynamo.onnx", dynamo=True),
    }


def _plan(model: Path, out: Path) -> dict:
    """Every linear layer, the output layer too (its Gemm with transB=0 is the one form left otherwise)."""
    assert run_cli("plan", str(model), "--sparsity", "0.5,0.7,0.8", "--layers", ".", "--out", str(out)) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("source", ["onnx.helper", "torchscript", "dynamo"])
def test_planned_by_initializer_names(source: str, foreign_models: dict[str, Path], tmp_path: Path) -> None:
    """No rt3c metadata: the plan names each layer by its weight initializer, every one of them in the
    model, and the planner needs no fixed shapes (it reads weights only)."""
    initializers = set(load_onnx(foreign_models[source]).graph.initializers)
    plan = _plan(foreign_models[source], tmp_path / "plan.json")
    assert len(plan["levels"]) == 3 and plan["model"] is None
    assert set(plan["layers"]) <= initializers
    if source == "onnx.helper":
        assert set(plan["layers"]) == {"enc.w0", "enc.w1", "head.w2", "head.w3"}
    else:  # the exporters' names: transposed weights are onnx::MatMul_N or val_N, Gemm's keep torch's
        prefix = "onnx::MatMul" if source == "torchscript" else "val_"
        matmuls = {name for name in plan["layers"] if name.startswith(prefix)}
        assert len(matmuls) == 2 and set(plan["layers"]) == {*matmuls, "head.weight"}


@pytest.mark.parametrize("source", ["onnx.helper", "torchscript", "dynamo"])
def test_compiled_at_every_level(source: str, foreign_models: dict[str, Path], tmp_path: Path) -> None:
    """`encode --shape` keeps the bound shape in the encoded model, which then compiles without it; the
    compile verifies every level against onnxruntime, and `rt3c run` agrees on fresh inputs."""
    plan = tmp_path / "plan.json"
    _plan(foreign_models[source], plan)
    encoded, project = tmp_path / "model.rt3.onnx", tmp_path / "project"
    argv = ["encode", str(foreign_models[source]), "--plan", str(plan), "--out", str(encoded)]
    assert run_cli(*argv, "--shape", "x=2x8x16") == 0
    assert run_cli("compile", str(encoded), "--frequencies", FREQUENCIES, "-o", str(project)) == 0
    _check_levels(project, encoded)


def test_compiled_for_aarch64_with_shape_at_compile(
    foreign_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exported model and its plan straight to an aarch64 project (verified and measured under
    qemu-aarch64, into a relative --out), its dynamic axis bound by `compile --shape`."""
    plan, project = tmp_path / "plan.json", tmp_path / "project"
    _plan(foreign_models["onnx.helper"], plan)
    model = str(foreign_models["onnx.helper"])
    monkeypatch.chdir(tmp_path)
    argv = ["compile", model, "--plan", str(plan), "--frequencies", FREQUENCIES, "-t", "aarch64"]
    assert run_cli(*argv, "--shape", "x=1x8x16", "-o", "project") == 0
    report = json.loads((project / "rt3c-build.json").read_text())
    assert report["inputs"][0]["shape"] == [1, 8, 16] and len(report["max_abs_diff"]) == 3


def _check_levels(project: Path, encoded: Path) -> None:
    model = load_onnx(encoded)
    for level in range(3):
        reference = level_model(model, level)
        feeds = deterministic_feeds(reference, seed=5)
        np.save(project.parent / "x.npy", feeds["x"])
        got = run_project(project, level, [project.parent / "x.npy"])["y"]
        onnx.save(reference, project.parent / f"level{level}.onnx")
        (expected,) = run_onnx(project.parent / f"level{level}.onnx", feeds)
        assert np.max(np.abs(got - expected)) <= 1e-4, level


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ([], "input x [batch, 8, 16]: dimension 0 (batch) is dynamic; give the input a fixed shape"),
        (["--shape", "x=2x9x16"], "input x is [batch, 8, 16]; the shape [2, 9, 16] does not fit it"),
        (["--shape", "x=2x8"], "input x is [batch, 8, 16]; the shape [2, 8] does not fit it"),
        (["--shape", "ids=2x8x16"], "has no input 'ids' to give a shape (inputs: x)"),
        (["--shape", "x=2x8x16", "--shape", "x=1x8x16"], "--shape 'x=1x8x16': input x is given twice"),
        (["--shape", "x=2,8,16"], "--shape 'x=2,8,16': expected NAME=DIMS with DIMS such as 1x16"),
        (["--shape", "x=0x8x16"], "--shape [0, 8, 16]: input x: each size must be in [1, 1048576]"),
    ],
)
def test_dynamic_dimensions_bad_input(
    options: list[str],
    message: str,
    foreign_models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 2 with one line naming the input and dimension, and no encoded file written."""
    plan, out = tmp_path / "plan.json", tmp_path / "model.rt3.onnx"
    _plan(foreign_models["onnx.helper"], plan)
    capsys.readouterr()
    model = str(foreign_models["onnx.helper"])
    assert run_cli("encode", model, "--plan", str(plan), "--out", str(out), *options) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_prune_says_it_needs_a_torch_module(
    foreign_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pruning trains the model: an ONNX file is refused in one line that points to one-shot planning."""
    out = tmp_path / "pruned"
    model = str(foreign_models["onnx.helper"])
    assert run_cli("prune", "--model", model, "--data", "synthetic", "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an ONNX file, not a torch model" in err[0] and "`rt3c plan`" in err[0]
    assert not out.exists()


def test_api_binds_shapes(foreign_models: dict[str, Path], tmp_path: Path) -> None:
    """`rt3c.api.encode(..., shapes=)` as `rt3c encode --shape`: the encoded model keeps the shape."""
    from rt3c import api

    plan = api.plan(foreign_models["onnx.helper"], tmp_path / "plan.json", sparsities=[0.5, 0.8])
    out = tmp_path / "model.rt3.onnx"
    result = api.encode(foreign_models["onnx.helper"], tmp_path / "plan.json", out, shapes={"x": (3, 8, 16)})
    assert len(result.max_abs_diff) == len(plan.levels) == 2
    assert [dim.dim_value for dim in onnx.load(out).graph.input[0].type.tensor_type.shape.dim] == [3, 8, 16]
