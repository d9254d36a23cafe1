"""int8 weights (`--weights int8`): quantization, the encoded model under onnxruntime, the C build on every
target against onnxruntime on the quantized model, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_cli import run_cli

from rt3c.core.boards import load_board
from rt3c.core.errors import UserError
from rt3c.core.onnx_io import deterministic_feeds, load_onnx
from rt3c.core.plan import Plan
from rt3c.core.quantize import INT8_LIMIT, MAX_RELATIVE_ERROR, quantize_channels
from rt3c.core.sparse_format import quantize_layer
from rt3c.passes.encode import LEVEL_INPUT
from rt3c.passes.linear_layers import find_linear_layers
from rt3c.stages.compile import compile_model
from rt3c.stages.encode import encode_model, plan_model
from rt3c.stages.encoded_model import read_encoded_layers
from rt3c.stages.export import ExportResult
from rt3c.stages.inspect_model import inspect_model
from rt3c.stages.reference import run_onnx

FREQUENCIES_KHZ = [1_400_000, 1_000_000, 800_000]


def test_quantize_channels() -> None:
    weight = np.random.default_rng(0).normal(size=(16, 64)).astype(np.float32)
    quantized = quantize_channels(weight, "w")
    assert quantized.values.dtype == np.int8 and np.abs(quantized.values).max() == INT8_LIMIT
    np.testing.assert_allclose(quantized.scale, np.abs(weight).max(axis=1) / INT8_LIMIT, rtol=1e-6)
    # Every weight is within half a step of its channel.
    assert np.all(np.abs(quantized.dequantized() - weight) <= quantized.scale[:, None] / 2 * (1 + 1e-6))
    kept = np.zeros_like(weight, dtype=bool)
    kept[:, :8] = True
    partial = quantize_channels(weight, "w", kept=kept)
    assert not partial.values[:, 8:].any()
    np.testing.assert_allclose(partial.scale, np.abs(weight[:, :8]).max(axis=1) / INT8_LIMIT, rtol=1e-6)


@pytest.mark.parametrize(
    ("weight", "options", "message"),
    [
        (np.zeros((3, 4), np.float32), {}, r"^layer x: channel 0 is all zeros \(3 such channels\)"),
        (np.array([[1, np.nan]], np.float32), {}, r"^layer x: 1 NaN or infinite values"),
        # One weight per channel dwarfs the others, which all round to zero.
        (
            np.tile(np.float32([1] + [0.0039] * 255), (4, 1)),
            {},
            rf"off by 0\.06\d of .*bound {MAX_RELATIVE_ERROR}",
        ),
    ],
    ids=["zero-channel", "nan", "error-bound"],
)
def test_quantize_refuses(weight: np.ndarray, options: dict[str, bool], message: str) -> None:
    with pytest.raises(UserError, match=message):
        quantize_channels(weight, "layer x", **options)


def test_zero_rows_of_a_table_are_allowed() -> None:
    table = np.ones((3, 4), np.float32)
    table[0] = 0  # a padding row
    quantized = quantize_channels(table, "t", zero_channels=True)
    assert not quantized.values[0].any() and quantized.scale[0] == 1


@pytest.fixture(scope="module")
def int8_encoded(
    bert_tiny_export: ExportResult, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, Path]:
    """bert-tiny's plan, and the model encoded with int8 and with float32 weights (through the CLI)."""
    directory = tmp_path_factory.mktemp("int8")
    plan, int8, float32 = directory / "plan.json", directory / "int8.rt3.onnx", directory / "f32.rt3.onnx"
    plan_model(bert_tiny_export.onnx_path, plan, sparsities=[0.5, 0.7, 0.8], tile=(4, 4), patterns=8)
    assert (
        run_cli(
            "encode", str(bert_tiny_export.onnx_path), "-p", str(plan), "-o", str(int8), "--weights", "int8"
        )
        == 0
    )
    encode_model(bert_tiny_export.onnx_path, plan, float32)
    return plan, int8, float32


def test_encoded_int8_model(int8_encoded: tuple[Path, Path, Path], bert_tiny_export: ExportResult) -> None:
    plan_path, int8, float32 = int8_encoded
    onnx.checker.check_model(str(int8), full_check=True)
    plan = Plan.load(plan_path)
    weights = {
        name: layer.weight()
        for name, layer in find_linear_layers(load_onnx(bert_tiny_export.onnx_path), "m").items()
    }
    int8_layers, float_layers = read_encoded_layers(int8), read_encoded_layers(float32)
    for name, layer in int8_layers.items():
        # One int8 buffer that every level reads a prefix of: 3 levels cost what level 0 alone costs,
        # a quarter of the float32 buffer, plus a float per output channel.
        assert len(layer.values) == 1 and layer.values[0].dtype == np.int8
        assert layer.values[0].size == layer.n_tiles * layer.levels[0].nnz
        assert layer.value_bytes() * 4 == float_layers[name].value_bytes()
        expected = quantize_layer(weights[name], plan.layers[name]).dequantized()
        for level in range(3):
            np.testing.assert_array_equal(layer.dense_weight(level), expected * plan.layers[name].mask(level))
    # rt3c inspect counts int8 bytes, and the same sparsity as float32's.
    int8_report, float_report = inspect_model(int8), inspect_model(float32)
    assert int8_report.stored_value_bytes * 4 == float_report.stored_value_bytes
    assert [row.sparsity for row in int8_report.rows] == [row.sparsity for row in float_report.rows]
    model = onnx.load(str(int8))
    dequantized = [node.input[0] for node in model.graph.node if node.op_type == "DequantizeLinear"]
    assert any("word_embeddings" in name for name in dequantized)  # the embedding table
    assert any("classifier" in name for name in dequantized)  # the dense linear layer
    # onnxruntime runs it as it is; int8 moves the outputs by a little, differently at each level.
    feeds = deterministic_feeds(model, seed=3)
    # The ids span the vocabulary as for the float32 model (the int8 table is DequantizeLinear's output,
    # not an initializer): the C build is verified on these feeds, not on ids that are all 1.
    np.testing.assert_array_equal(
        feeds["input_ids"], deterministic_feeds(onnx.load(str(float32)), seed=3)["input_ids"]
    )
    assert len(np.unique(feeds["input_ids"])) > 2
    for level in range(3):
        level_feeds = {**feeds, LEVEL_INPUT: np.array(level, dtype=np.int64)}
        (got,), (reference,) = run_onnx(int8, level_feeds), run_onnx(float32, level_feeds)
        assert 0 < np.max(np.abs(got - reference)) <= 0.05 * np.max(np.abs(reference))


@pytest.mark.slow
# Every cross compile verifies the host build of the same project too, so the host needs no compile of its own.
@pytest.mark.parametrize("target", ["aarch64", "cortex-m4", "cortex-m7"])
def test_int8_every_target_every_level(
    target: str, int8_encoded: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """The C build (and, for a cross target, the host check build) matches onnxruntime on the int8 model at
    every level, with a quarter of the float32 build's weight bytes or less. The Cortex-M builds take their
    board profile (its DVFS levels), whose latencies the report gives from the counted instructions."""
    plan, int8, _ = int8_encoded
    board = target if target.startswith("cortex-m") else None
    result = compile_model(
        int8,
        tmp_path / "project",
        target_name=target,
        plan_path=plan,
        frequencies_khz=None if board else FREQUENCIES_KHZ,
        board=board,
    )
    assert len(result.max_abs_diff) == 3 and max(result.max_abs_diff) <= 1e-4
    if board is not None:
        levels = result.report["levels"]
        frequencies = [level.frequency_khz for level in load_board(board).levels]
        assert [level["frequency_khz"] for level in levels] == frequencies
        assert all(0 < level["latency_ms"] <= level["deadline_ms"] for level in levels)
    program = json.loads((tmp_path / "project" / "rt3c-build.json").read_text())
    assert program["max_abs_diff"] == result.max_abs_diff
    flash = result.report["flash_bytes"]
    assert flash["weights"] < 160_000  # float32: 489,492 B


def test_compile_keeps_the_models_weight_type(
    int8_encoded: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, float32 = int8_encoded
    out = tmp_path / "project"
    assert run_cli("compile", str(float32), "-o", str(out), "--weights", "int8", "--no-verify") == 2
    assert "its weights are float32, not int8" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def _export_with(bert_tiny_export: ExportResult, tmp_path: Path, layer: str, change: str) -> Path:
    """A copy of the bert-tiny export whose weight of torch name `layer` has row 1 zeroed or a NaN."""
    model = onnx.load(str(bert_tiny_export.onnx_path))
    names = json.loads(next(p.value for p in model.metadata_props if p.key == "rt3c.weights"))
    initializer = next(i for i in model.graph.initializer if names.get(i.name, {}).get("param") == layer)
    array = onnx.numpy_helper.to_array(initializer).copy()
    row = (slice(None), 1) if names[initializer.name]["transposed"] else (1, slice(None))
    array[row] = 0 if change == "zero" else np.nan
    initializer.CopyFrom(onnx.numpy_helper.from_array(array, initializer.name))
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("layer", "change", "message"),
    [
        ("classifier.weight", "zero", "layer classifier.weight: channel 1 is all zeros"),
        ("classifier.weight", "nan", "layer classifier.weight: 64 NaN or infinite values"),
    ],
    ids=["dense-zero-channel", "dense-nan"],
)
def test_bad_weights_are_refused_naming_the_layer(
    layer: str,
    change: str,
    message: str,
    int8_encoded: tuple[Path, Path, Path],
    bert_tiny_export: ExportResult,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan = int8_encoded[0]
    model = _export_with(bert_tiny_export, tmp_path, layer, change)
    out = tmp_path / "out.rt3.onnx"
    assert run_cli("encode", str(model), "-p", str(plan), "-o", str(out), "--weights", "int8") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob("out*"))
    assert run_cli("encode", str(model), "-p", str(plan), "-o", str(out), "--weights", "int4") == 2
    assert "--weights int4: unknown weight type; expected one of float32, int8" in capsys.readouterr().err


def test_a_planned_layer_with_a_zero_channel_encodes(
    int8_encoded: tuple[Path, Path, Path], bert_tiny_export: ExportResult, tmp_path: Path
) -> None:
    """Block pruning zeroes whole rows of tiles: a pruned model's planned layers have all-zero output
    channels by design (a searched minilm-l6 has 26 in one layer), so int8 encodes them (scale 1, no values)
    and the encoded model still equals its reference at every level (encode verifies it)."""
    plan = int8_encoded[0]
    model = _export_with(bert_tiny_export, tmp_path, QUERY, "zero")
    out = tmp_path / "out.rt3.onnx"
    assert run_cli("encode", str(model), "-p", str(plan), "-o", str(out), "--weights", "int8") == 0
    assert out.is_file()


QUERY = "bert.encoder.layer.0.attention.self.query.weight"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("negative-scale", f"layer {QUERY}: scale: channel 3 has a scale <= 0"),
        ("nan-scale", f"layer {QUERY}: scale: 1 NaN or infinite values"),
        # The ONNX checker's type inference already refuses these: the function body's types disagree.
        ("short-scale", "not a valid ONNX model"),
        ("float-values", "not a valid ONNX model"),
    ],
)
def test_tampered_int8_model_is_refused(
    change: str, message: str, int8_encoded: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """A reader of an int8 model checks its scales and value type as it checks the index arrays."""
    model = onnx.load(str(int8_encoded[1]))
    name = f"rt3c.{QUERY}.values" if change == "float-values" else f"rt3c.{QUERY}.scale"
    initializer = next(i for i in model.graph.initializer if i.name == name)
    array = onnx.numpy_helper.to_array(initializer).copy()
    if change == "negative-scale":
        array[3] = -array[3]
    elif change == "nan-scale":
        array[5] = np.nan
    elif change == "short-scale":
        array = array[:-1]
    else:
        array = array.astype(np.float32)
    initializer.CopyFrom(onnx.numpy_helper.from_array(array, name))
    path = tmp_path / "tampered.rt3.onnx"
    onnx.save(model, path)
    with pytest.raises(UserError, match=re.escape(message)):
        read_encoded_layers(path)


def test_dense_int8_matmul_matches_onnxruntime_computing_what_the_model_says(
    rt3_lm_export, tmp_path: Path
) -> None:
    """rt3-lm's output layer, left dense, is an int8 DequantizeLinear -> MatMul. onnxruntime's QDQ fusion
    would run it as a MatMulIntegerToFloat that quantizes the activations too (every logit 0.02-0.03 off);
    the reference keeps that fusion off, so the C build (which dequantizes the weight only) verifies."""
    plan = tmp_path / "plan.json"
    plan_model(rt3_lm_export.onnx_path, plan, sparsities=[0.7, 0.8, 0.9], tile=(4, 4), patterns=8)
    assert not any("decoder" in name for name in Plan.load(plan).layers)
    result = compile_model(
        rt3_lm_export.onnx_path,
        tmp_path / "project",
        plan_path=plan,
        weights="int8",
        frequencies_khz=FREQUENCIES_KHZ,
    )
    assert len(result.max_abs_diff) == 3 and max(result.max_abs_diff) <= 1e-4
