"""Every file the tool reads is checked where its format is defined, and a bad one is one line, exit 2.

The corpus under tests/bad_inputs/ holds board files, plans and DVFS traces that must be refused, each
naming its file (and the key at fault); tampered encoded models and NaN weights are made here from
bert-tiny, and count and size options of every command are bounded before work starts (the plan's in
tests/test_encode.py). tests/test_fuzz_readers.py feeds the same readers generated input.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_cli import run_cli

from rt3c.core.battery import load_trace
from rt3c.core.boards import load_board, parse_board
from rt3c.core.errors import UserError
from rt3c.core.plan import Plan
from rt3c.stages.encode import encode_model, plan_model
from rt3c.stages.encoded_model import read_encoded_layers
from rt3c.stages.export import ExportResult

BAD_INPUTS = Path(__file__).parent / "bad_inputs"
LAYER = "bert.encoder.layer.0.attention.self.query.weight"


def _corpus(kind: str) -> list[Path]:
    return sorted((BAD_INPUTS / kind).iterdir())


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rt3c: error: "), err
    return err


# -- board files, traces, latency files ---------------------------------------------------------------


@pytest.mark.parametrize("path", _corpus("boards"), ids=lambda path: path.stem)
def test_bad_board_is_refused_naming_the_file(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UserError, match=f"^{path}: "):
        load_board(path)
    search_dir = tmp_path / "search"
    search_dir.mkdir()
    (search_dir / "latency.json").write_text(
        json.dumps(
            {"target": "aarch64", "source": "qemu", "dense_units": 1e6, "levels": [{"units": 5e5}] * 2}
        )
    )
    assert run_cli("simulate", str(search_dir), "--board", str(path)) == 2
    assert str(path) in _one_line_error(capsys)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"battery_joules": float("nan")},
            "key 'battery_joules': expected a finite number in (0, 1e+12], got nan",
        ),
        ({"cycles_per_instruction": float("inf")}, "key 'cycles_per_instruction': expected a finite number"),
        ({"battery_joules": 10**400}, "key 'battery_joules': expected a finite number"),
        ({"levels": [{"frequency_mhz": 1000 - i, "voltage": 1.0} for i in range(100_000)]}, "100000 levels"),
    ],
    ids=["nan", "inf", "huge-int", "100000-levels"],
)
def test_board_values_are_checked_as_numbers_they_become(change: dict, message: str) -> None:
    data = {
        "name": "b",
        "target": "host",
        "battery_joules": 1.0,
        "latency_ms": 10.0,
        "power": {"capacitance_nf": 1.0},
        "levels": [{"frequency_mhz": 1000, "voltage": 1.0}],
        **change,
    }
    start = time.monotonic()
    with pytest.raises(UserError, match=f"^board: .*{re.escape(message)}"):
        parse_board(data, "board")
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("path", _corpus("traces"), ids=lambda path: path.stem)
def test_bad_trace_is_refused_naming_the_line(path: Path) -> None:
    board = load_board("rt3-default")
    with pytest.raises(UserError, match=f"^{re.escape(str(path))}:"):
        load_trace(path, board)


@pytest.mark.parametrize("units", [float("nan"), float("inf"), -1.0, 0.0, "fast"])
def test_latency_file_units_must_be_positive_numbers(
    units: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    latency = {"target": "aarch64", "source": "qemu", "dense_units": 1e6, "levels": [{"units": units}] * 3}
    (tmp_path / "latency.json").write_text(json.dumps(latency))
    assert run_cli("simulate", str(tmp_path), "--board", "rt3-default") == 2
    assert f"{tmp_path / 'latency.json'}: levels[0].units" in _one_line_error(capsys)


# -- plans --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _corpus("plans"), ids=lambda path: path.stem)
def test_bad_plan_is_refused_naming_the_file(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UserError, match=f"^{path}: "):
        Plan.load(path)
    # `rt3c encode` reads the plan before the model: the plan's error is the one shown.
    out = tmp_path / "m.rt3.onnx"
    assert run_cli("encode", str(tmp_path / "m.onnx"), "--plan", str(path), "--out", str(out)) == 2
    assert str(path) in _one_line_error(capsys)
    assert not out.exists()


def _with_weight(export: ExportResult, path: Path, change: Callable[[np.ndarray], None]) -> Path:
    """A copy of the exported model whose LAYER weight initializer is changed in place by `change`."""
    model = onnx.load(str(export.onnx_path))
    names = json.loads(next(p.value for p in model.metadata_props if p.key == "rt3c.weights"))
    initializer = next(i for i in model.graph.initializer if names.get(i.name, {}).get("param") == LAYER)
    array = numpy_helper.to_array(initializer).copy()
    change(array)
    initializer.CopyFrom(numpy_helper.from_array(array, initializer.name))
    onnx.save(model, path)
    shutil.copy(export.sidecar_path, path.with_suffix(".json"))
    return path


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_weights_are_refused_when_planning_naming_the_tensor(
    value: float, bert_tiny_export: ExportResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def spoil(array: np.ndarray) -> None:
        array[3, 5] = value

    model = _with_weight(bert_tiny_export, tmp_path / "spoilt.onnx", spoil)
    plan = tmp_path / "plan.json"
    assert run_cli("plan", str(model), "--out", str(plan)) == 2
    err = _one_line_error(capsys)
    assert f"{model}: tensor " in err and f"(layer {LAYER}): 1 NaN or infinite values" in err
    assert not plan.exists()
    # A plan made from clean weights does not let `encode` through with the spoilt ones either.
    plan_model(bert_tiny_export.onnx_path, plan, sparsities=[0.5], tile=(4, 4), patterns=2)
    out = tmp_path / "m.rt3.onnx"
    assert run_cli("encode", str(model), "--plan", str(plan), "--out", str(out)) == 2
    assert f"(layer {LAYER}): 1 NaN or infinite values" in _one_line_error(capsys)
    assert not out.exists()


# -- encoded models -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_layer_encoded(bert_tiny_export: ExportResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bert-tiny with one layer encoded at two levels (64x64 in 2x4 tiles: a grid of 32 x 16)."""
    directory = tmp_path_factory.mktemp("one-layer")
    plan = directory / "plan.json"
    layers = LAYER.replace(".", r"\.")
    plan_model(
        bert_tiny_export.onnx_path, plan, sparsities=[0.5, 0.75], tile=(2, 4), patterns=4, layers=layers
    )
    return encode_model(bert_tiny_export.onnx_path, plan, directory / "m.rt3.onnx").path


def _sparse_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.domain == "rt3c"]


def _change_ints(node: onnx.NodeProto, name: str, index: int, value: int) -> None:
    """Set element `index` of the node's ints attribute `name`, or its int attribute `name`."""
    attribute = next(attribute for attribute in node.attribute if attribute.name == name)
    if attribute.type == onnx.AttributeProto.INTS:
        attribute.ints[index] = value
    else:
        attribute.i = value


def _drop_last_int(node: onnx.NodeProto, name: str) -> None:
    del next(attribute for attribute in node.attribute if attribute.name == name).ints[-1]


def _set_levels(model: onnx.ModelProto, names: str) -> None:
    next(entry for entry in model.metadata_props if entry.key == "rt3c.levels").value = names


def _set_initializer(model: onnx.ModelProto, suffix: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
    initializer = next(i for i in model.graph.initializer if i.name.endswith(suffix))
    initializer.CopyFrom(
        numpy_helper.from_array(change(numpy_helper.to_array(initializer)), initializer.name)
    )


def _column_past_grid(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array[0] = 200  # the grid has 16 tile columns
    return array


def _negative_count(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array[1] = array[-1] + 1  # past every tile: the next run's count is negative
    return array


def _nan_value(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array[7] = np.nan
    return array


TAMPERINGS: dict[str, tuple[Callable[[onnx.ModelProto], None], str]] = {
    "pattern-id-99": (
        lambda m: _change_ints(_sparse_nodes(m)[1], "chain_pattern", 0, 99),
        "level 1: chain_pattern: expected 4 pattern ids in [0, 4)",
    ),
    "position-past-the-tile": (
        lambda m: _change_ints(_sparse_nodes(m)[0], "pattern_table", 0, 8),
        "level 0: pattern_table: in-tile positions must be in [0, 8)",
    ),
    "tile-column-past-the-grid": (
        lambda m: _set_initializer(m, ".tile_col", _column_past_grid),
        "tile_col: tile columns must be in [0, 16)",
    ),
    "negative-tile-count": (
        lambda m: _set_initializer(m, ".tile_run_ptr", _negative_count),
        "tile_run_ptr: expected counts rising from 0",
    ),
    "nan-weight": (lambda m: _set_initializer(m, ".values", _nan_value), "value buffer 0: 1 NaN or infinite"),
    "n-tiles-attribute": (
        lambda m: _change_ints(_sparse_nodes(m)[0], "n_tiles", 0, -5),
        "level 0: attribute n_tiles is -5, its arrays give",
    ),
    "in-features": (
        lambda m: _change_ints(_sparse_nodes(m)[0], "in_features", 0, 10**12),
        "attribute in_features: expected an integer in [1, 268435456]",
    ),
    "level-count": (
        lambda m: _set_levels(m, "A,B,C"),
        "has nodes of levels [0, 1], but the model's rt3c.levels metadata names 3 levels",
    ),
    "pattern-table-cut-short": (
        lambda m: _drop_last_int(_sparse_nodes(m)[0], "pattern_table"),
        "level 0: pattern_table is not 4 rows of integers",
    ),
}


@pytest.mark.parametrize("case", TAMPERINGS, ids=str)
def test_tampered_encoded_model_is_refused_by_inspect_and_compile(
    case: str, one_layer_encoded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper, message = TAMPERINGS[case]
    model = onnx.load(str(one_layer_encoded))
    tamper(model)
    path = tmp_path / "tampered.rt3.onnx"
    onnx.save(model, path)
    with pytest.raises(UserError) as refusal:
        read_encoded_layers(path)
    assert str(refusal.value).startswith(f"{path}: ")
    assert run_cli("inspect", str(path)) == 2
    err = _one_line_error(capsys)
    assert capsys.readouterr().out == ""  # nothing printed as if it were valid
    assert f"{path}: layer {LAYER}: {message}" in err, err
    out = tmp_path / "project"
    args = ["compile", str(path), "--out", str(out), "--no-verify", "--frequencies", "2000000,1000000"]
    assert run_cli(*args) == 2
    compile_err = _one_line_error(capsys)
    # With metadata naming 3 levels, the 2 frequencies given are the first thing found wrong.
    assert compile_err == err or (case == "level-count" and "3 levels" in compile_err)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["tampered.rt3.onnx"]


def test_untampered_one_layer_model_reads(one_layer_encoded: Path) -> None:
    """The tampering cases above start from a model that reads and inspects."""
    (layer,) = read_encoded_layers(one_layer_encoded).values()
    assert layer.grid == (32, 16) and len(layer.levels) == 2
    assert run_cli("inspect", str(one_layer_encoded), "--json") == 0


# -- numeric options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["export", "--model", "bert-tiny", "--batch", "1000000"],
            "--batch 1000000: must be between 1 and 256",
        ),
        (
            ["prune", "--steps", "1,1,1,1000000000"],
            "--steps '1,1,1,1000000000': each count must be between 0",
        ),
        (["prune", "--steps", "1,1,1,-5"], "--steps '1,1,1,-5': expected comma-separated integers"),
        (["prune", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
        (
            ["prune", "--lasso-strength", "nan"],
            "--lasso-strength: expected a finite number in [0, inf], got nan",
        ),
        (
            ["prune", "--lasso-strength", "-1"],
            "--lasso-strength: expected a finite number in [0, inf], got -1.0",
        ),
        (["search", "--board", "rt3-default", "--steps", "0,0,0,0,0,1000000000"], "each count must be"),
    ],
    ids=[
        "export-batch",
        "prune-steps-huge",
        "prune-steps-negative",
        "prune-batch",
        "lasso-nan",
        "lasso-negative",
        "search-steps",
    ],
)
def test_count_and_size_options_are_bounded_before_work_starts(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command, *options = args
    if command != "export":
        options += ["--model", "bert-tiny", "--data", "synthetic"]
    out = tmp_path / ("m.onnx" if command == "export" else "out")
    start = time.monotonic()
    assert run_cli(command, *options, "--out", str(out)) == 2
    assert time.monotonic() - start < 10.0
    assert message in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []
