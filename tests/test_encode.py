"""Stage 2: plan + encode, checked with onnxruntime against the masked dense model, and every bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from test_cli import run_cli

from rt3c.core.onnx_io import deterministic_feeds, load_onnx
from rt3c.core.plan import Plan
from rt3c.passes.encode import LEVEL_INPUT, MaskWeightsPass
from rt3c.passes.linear_layers import find_linear_layers
from rt3c.stages.encode import encode_model, plan_model
from rt3c.stages.encoded_model import read_encoded_layers
from rt3c.stages.export import ExportResult
from rt3c.stages.reference import run_onnx

SPARSITIES = [0.5, 0.7, 0.8]


def _masked_reference(onnx_path: Path, plan: Plan, level: int, tmp: Path) -> Path:
    model = load_onnx(onnx_path)
    MaskWeightsPass(plan, level, str(onnx_path))(model)
    path = tmp / f"masked-{level}.onnx"
    onnx.save(ir.serde.serialize_model(model), path)
    return path


def _check_all_levels(exported: ExportResult, tmp_path: Path, tile: tuple[int, int], patterns: int) -> None:
    plan_path, out = tmp_path / "plan.json", tmp_path / "model.rt3.onnx"
    plan = plan_model(exported.onnx_path, plan_path, sparsities=SPARSITIES, tile=tile, patterns=patterns)
    encode_model(exported.onnx_path, plan_path, out)
    onnx.checker.check_model(str(out), full_check=True)
    feeds = deterministic_feeds(
        onnx.load(str(exported.onnx_path)), seed=7
    )  # not the seed encode verified with
    for level in range(len(SPARSITIES)):
        (got,) = run_onnx(out, {**feeds, LEVEL_INPUT: np.array(level, dtype=np.int64)})
        (expected,) = run_onnx(_masked_reference(exported.onnx_path, plan, level, tmp_path), feeds)
        assert np.max(np.abs(got - expected)) <= 1e-5, level
    weights = {
        name: layer.weight() for name, layer in find_linear_layers(load_onnx(exported.onnx_path), "m").items()
    }
    for name, encoded in read_encoded_layers(out).items():
        for level in range(len(SPARSITIES)):
            np.testing.assert_array_equal(
                encoded.dense_weight(level), weights[name] * plan.layers[name].mask(level)
            )


def test_bert_tiny_every_level(bert_tiny_export: ExportResult, tmp_path: Path) -> None:
    _check_all_levels(bert_tiny_export, tmp_path, (4, 4), 8)


def test_rt3_lm_every_level_odd_tiles(rt3_lm_export: ExportResult, tmp_path: Path) -> None:
    # 800 is not a multiple of 3 or 7: edge tiles are padded.
    _check_all_levels(rt3_lm_export, tmp_path, (3, 7), 6)


@pytest.mark.slow
def test_minilm_every_level(minilm_export: ExportResult, tmp_path: Path) -> None:
    _check_all_levels(minilm_export, tmp_path, (8, 8), 16)


def _all_levels(exported: ExportResult, plan_path: Path) -> Path:
    return encode_model(exported.onnx_path, plan_path, plan_path.with_name("all.rt3.onnx")).path


def test_single_level_model(
    bert_tiny_export: ExportResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_path = tmp_path / "plan.json"
    plan = plan_model(bert_tiny_export.onnx_path, plan_path, sparsities=SPARSITIES, tile=(4, 4), patterns=4)
    out = tmp_path / "l1.rt3.onnx"
    assert (
        run_cli(
            "encode",
            str(bert_tiny_export.onnx_path),
            "--plan",
            str(plan_path),
            "--out",
            str(out),
            "--level",
            "1",
        )
        == 0
    )
    proto = onnx.load(str(out))
    assert LEVEL_INPUT not in [i.name for i in proto.graph.input]
    assert {n.attribute[0].name for n in proto.graph.node if n.domain == "rt3c"}  # SparseLinear nodes remain
    feeds = deterministic_feeds(onnx.load(str(bert_tiny_export.onnx_path)), seed=3)
    (got,) = run_onnx(out, feeds)
    (expected,) = run_onnx(_masked_reference(bert_tiny_export.onnx_path, plan, 1, tmp_path), feeds)
    assert np.max(np.abs(got - expected)) <= 1e-5
    # The single-level file holds only level 1's pattern ids and values, and no dense copy of planned weights.
    layers = read_encoded_layers(out)
    assert {len(layer.levels) for layer in layers.values()} == {1}
    exported = find_linear_layers(load_onnx(bert_tiny_export.onnx_path), "export")
    for name, layer in layers.items():  # each layer's values: its kept tiles times level 1's nonzeros
        assert layer.value_bytes() == layer.n_tiles * plan.layers[name].levels[1].nonzeros_per_tile * 4
        # read back in the shared buffer's sections (read as one section, 0.14 off: compile got it wrong)
        np.testing.assert_array_equal(
            layer.dense_weight(0), exported[name].weight() * plan.layers[name].mask(1)
        )
    assert sum(layer.value_bytes() for layer in layers.values()) < 0.75 * sum(
        layer.value_bytes()
        for layer in read_encoded_layers(_all_levels(bert_tiny_export, plan_path)).values()
    )
    # inspect names the level the file keeps.
    capsys.readouterr()
    assert run_cli("inspect", str(out), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert {row["level_name"] for row in report["layers"]} == {"L1"}
    assert report["stored"]["value_bytes"] == sum(layer.value_bytes() for layer in layers.values())
    bad = tmp_path / "l9.rt3.onnx"
    args = ("encode", str(bert_tiny_export.onnx_path), "--plan", str(plan_path), "--out", str(bad))
    assert run_cli(*args, "--level", "9") == 2
    assert "--level 9" in capsys.readouterr().err
    assert not bad.exists()


def test_output_layer_and_gemm_can_be_planned(bert_tiny_export: ExportResult, tmp_path: Path) -> None:
    plan_path, out = tmp_path / "plan.json", tmp_path / "m.rt3.onnx"
    plan = plan_model(
        bert_tiny_export.onnx_path,
        plan_path,
        sparsities=[0.3, 0.6],
        tile=(2, 4),
        patterns=3,
        layers="classifier|pooler",
    )
    assert set(plan.layers) == {"classifier.weight", "bert.pooler.dense.weight"}
    result = encode_model(bert_tiny_export.onnx_path, plan_path, out)
    assert max(result.max_abs_diff) <= 1e-5
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["logits"]
    # The encoder's layers are not in the plan: the result says they stay dense.
    found = find_linear_layers(load_onnx(bert_tiny_export.onnx_path), "m")
    assert result.dense_layers == sorted(set(found) - set(plan.layers))
    assert "bert.encoder.layer.0.attention.self.query.weight" in result.dense_layers


def test_non_nested_plan_warns_and_stores_values_per_level(
    bert_tiny_export: ExportResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_path = tmp_path / "plan.json"
    plan = plan_model(bert_tiny_export.onnx_path, plan_path, sparsities=[0.4, 0.7], tile=(4, 4), patterns=4)
    name = next(iter(plan.layers))
    # Level 1 of one layer takes the complement-first order: no longer a subset of level 0.
    sparse = plan.layers[name].levels[1]
    sparse.patterns = sparse.patterns[:, ::-1, ::-1].copy()
    plan.save(plan_path)
    result = encode_model(bert_tiny_export.onnx_path, plan_path, tmp_path / "m.rt3.onnx")
    assert max(result.max_abs_diff) <= 1e-5
    assert "not nested" in capsys.readouterr().err
    assert not read_encoded_layers(tmp_path / "m.rt3.onnx")[name].nested


def test_inspect_reports_bytes(
    bert_tiny_export: ExportResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_path, out = tmp_path / "plan.json", tmp_path / "m.rt3.onnx"
    plan_model(bert_tiny_export.onnx_path, plan_path, sparsities=SPARSITIES, tile=(4, 4), patterns=8)
    encode_model(bert_tiny_export.onnx_path, plan_path, out)
    capsys.readouterr()
    assert run_cli("inspect", str(out), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    levels = report["levels"]
    assert [round(levels[str(i)]["sparsity"], 3) for i in range(3)] == sorted(
        round(levels[str(i)]["sparsity"], 3) for i in range(3)
    )
    # Nested levels share one value buffer: storing all three costs what level 0 costs.
    stored = report["stored"]["value_bytes"] + report["stored"]["index_bytes"]
    assert stored <= 1.05 * (levels["0"]["value_bytes"] + levels["0"]["index_bytes"])
    assert levels["0"]["index_over_value"] <= 0.05
    # Every constant is counted: the sparse layers' values and indices, and all others (embeddings, the
    # classifier the plan leaves dense, biases, norms), which add up to the file's initializers.
    others = {tensor["name"]: tensor for tensor in report["others"]}
    assert others["model.bert.embeddings.word_embeddings.weight"]["bytes"] == 1024 * 64 * 4
    assert report["stored"]["other_bytes"] == sum(tensor["bytes"] for tensor in others.values())
    initializers = [init for init in onnx.load(str(out)).graph.initializer if init.name != LEVEL_INPUT]
    assert sum(report["stored"].values()) == sum(onnx.numpy_helper.to_array(i).nbytes for i in initializers)
    assert run_cli("inspect", str(out)) == 0
    table = capsys.readouterr().out
    # Piped, the table keeps whole layer names and numbers instead of cutting them to 80 columns.
    assert all(row["layer"] in table for row in report["layers"])
    assert "total" in table and str(int(levels["0"]["value_bytes"])) in table
    assert "the largest model.bert.embeddings.word_embeddings.weight float32[1024, 64] 262144 bytes" in table


# -- bad input ---------------------------------------------------------------------------------------


def _edit_plan(plan_path: Path, edit) -> None:
    data = json.loads(plan_path.read_text())
    edit(data)
    plan_path.write_text(json.dumps(data))


def _first(data: dict) -> dict:
    return next(iter(data["layers"].values()))


BAD_PLANS = {
    "missing layer": (lambda d: d["layers"].update({"no.such.weight": _first(d)}), "no.such.weight"),
    "wrong shape": (lambda d: _first(d).update({"shape": [64, 65]}), "shape"),
    "grid does not match tiles": (lambda d: _first(d)["levels"][0]["tiles"].pop(), "tile grid"),
    "pattern id outside the set": (
        lambda d: _first(d)["levels"][1].update({"patterns": _first(d)["levels"][1]["patterns"][:1]}),
        "pattern id",
    ),
    "mask of wrong tile size": (
        lambda d: _first(d)["levels"][0]["patterns"].__setitem__(0, "1/1"),
        "pattern 0 is 2x1",
    ),
    "not a plan": (lambda d: d.update({"format": "something-else"}), "not an rt3c plan"),
}


@pytest.mark.parametrize("case", list(BAD_PLANS))
def test_bad_plan(
    case: str, bert_tiny_export: ExportResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_path = tmp_path / "plan.json"
    plan_model(bert_tiny_export.onnx_path, plan_path, sparsities=[0.5, 0.7], tile=(4, 4), patterns=4)
    edit, culprit = BAD_PLANS[case]
    _edit_plan(plan_path, edit)
    out = tmp_path / "m.rt3.onnx"
    capsys.readouterr()
    assert (
        run_cli("encode", str(bert_tiny_export.onnx_path), "--plan", str(plan_path), "--out", str(out)) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("rt3c: error:") and culprit in err and len(err.splitlines()) == 1, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_corrupt_and_truncated_onnx(
    bert_tiny_export: ExportResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_path = tmp_path / "plan.json"
    plan_model(bert_tiny_export.onnx_path, plan_path, sparsities=[0.5], tile=(4, 4), patterns=2)
    data = bert_tiny_export.onnx_path.read_bytes()
    for name, payload in (
        ("truncated.onnx", data[: len(data) // 2]),
        ("garbage.onnx", b"not a model at all"),
    ):
        bad = tmp_path / name
        bad.write_bytes(payload)
        out = tmp_path / f"{name}.rt3.onnx"
        assert run_cli("encode", str(bad), "--plan", str(plan_path), "--out", str(out)) == 2
        assert name in capsys.readouterr().err
        assert not out.exists()
        assert run_cli("plan", str(bad), "--out", str(tmp_path / "p2.json")) == 2
        assert not (tmp_path / "p2.json").exists()


def test_model_without_linear_layers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.add(key="rt3c.weights", value="{}")
    path = tmp_path / "relu.onnx"
    onnx.save(model, path)
    assert run_cli("plan", str(path), "--out", str(tmp_path / "p.json")) == 2
    assert "no linear layer" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["--sparsity", "0.7,0.5,0.8"], "--sparsity"),
        (["--sparsity", "0.5,x,0.8"], "--sparsity"),
        (["--tile", "4by4"], "--tile"),
        (["--levels", "2"], "--levels"),
        (["--patterns", "0"], "--patterns"),
        (["--layers", "("], "--layers"),
        (["--board", "no-such-board"], "--board"),
        (["--tile", "1000x1000"], "--tile 1000x1000: larger than layer"),
        (["--tile", "129x1"], "--tile 129x1: larger than layer"),
        (
            ["--sparsity", ",".join(f"0.{i:02d}" for i in range(1, 20))],
            "--sparsity: 19 levels, expected 1 to 16",
        ),
        (["--patterns", "37"], "--patterns 37: must be between 1 and 36"),
        (["--sparsity", "0.5,nan"], "--sparsity"),
        (["--block-ratio", "inf"], "--block-ratio inf"),
    ],
)
def test_bad_plan_options(
    args: list[str],
    culprit: str,
    bert_tiny_export: ExportResult,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Refused before work starts, in one line (`--tile 1000x1000` ran past 300 s)."""
    out = tmp_path / "p.json"
    start = time.monotonic()
    assert run_cli("plan", str(bert_tiny_export.onnx_path), "--out", str(out), *args) == 2
    assert time.monotonic() - start < 10.0
    err = capsys.readouterr().err.strip()
    assert culprit in err and len(err.splitlines()) == 1
    assert not out.exists()
