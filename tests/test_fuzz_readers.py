"""Fuzzing that stays: every reader of user files (boards, DVFS traces and latency files, plans, encoded
models, .npy inputs, tokenizer vocabularies), fed generated input, either accepts it (and then what it
returns holds the reader's promises) or refuses it with UserError (the CLI's one line, exit 2). Any other
exception fails the test.

Hypothesis runs a bounded number of examples, derandomized so CI sees the same ones each run (seconds per
reader); the corpus in tests/bad_inputs/ seeds the text fuzzers. Set RT3C_FUZZ_EXAMPLES to run longer.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper
from test_input_validation import BAD_INPUTS, one_layer_encoded  # noqa: F401 (a fixture)

from rt3c.core.battery import RT3_DEFAULT_TRACE, load_trace, simulate
from rt3c.core.boards import load_board, parse_board
from rt3c.core.errors import UserError
from rt3c.core.plan import Plan
from rt3c.core.plan_limits import MAX_LEVELS
from rt3c.runtime_c.vocab import MAX_WORD_CHARS, read_vocab
from rt3c.stages.encoded_model import read_encoded_layers
from rt3c.stages.run import read_input
from rt3c.stages.simulate import level_cycles

EXAMPLES = int(os.environ.get("RT3C_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Values a hostile or careless file holds where a number, a string or a table belongs.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(['1; system("id")', "*/", "\n#include", "0x10", "1e400", "", "L0,L1"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


def _paths(data: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path into nested dicts and lists."""
    paths = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            paths += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            paths += _paths(value, (*prefix, index))
    return paths


@st.composite
def mutated(draw: st.DrawFn, base: dict) -> dict:
    """`base` with one to three values, anywhere in it, replaced by arbitrary ones (or removed)."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(data)[1:]))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(VALUES)
        if not _paths(data)[1:]:
            break
    return data


# -- boards -------------------------------------------------------------------------------------------

BOARD = {
    "name": "b",
    "target": "aarch64",
    "battery_joules": 100.0,
    "cycles_per_instruction": 1.0,
    "latency_ms": 10,
    "power": {"capacitance_nf": 1.0, "static_watts": 0.1},
    "levels": [{"frequency_mhz": 1000, "voltage": 1.0}, {"frequency_mhz": 500, "voltage": 0.8}],
}


def _check_board(data: object) -> None:
    try:
        board = parse_board(data, "board")
    except UserError as refusal:
        assert str(refusal).startswith("board") and "\n" not in str(refusal)
        return
    numbers = [board.battery_joules, board.cycles_per_instruction, board.capacitance_f, board.static_watts]
    for level in board.levels:
        numbers += [level.frequency_hz, level.voltage, level.deadline_s]
    assert all(math.isfinite(n) and n >= 0 for n in numbers)
    assert 1 <= len(board.levels) <= MAX_LEVELS
    assert all(math.isfinite(board.power_watts(level)) for level in range(len(board.levels)))


@FUZZ
@given(mutated(BOARD))
def test_fuzz_board_values(data: dict) -> None:
    _check_board(data)


@FUZZ
@given(st.text(max_size=400))
@example((BAD_INPUTS / "boards" / "frequency-nan.toml").read_text())
@example((BAD_INPUTS / "boards" / "100-levels.toml").read_text())
def test_fuzz_board_text(text: str) -> None:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # load_board's own refusal, tested with the corpus
    _check_board(data)


# -- DVFS traces and latency files of a search --------------------------------------------------------

LATENCY = {"target": "aarch64", "source": "qemu", "dense_units": 1e6, "levels": [{"units": 5e5}] * 3}


NUMBER_TEXT = st.one_of(
    st.sampled_from(["1400", "1000", "800", "0", "-1", "nan", "inf", "1e308", "1e400"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
TRACE_LINES = st.lists(st.tuples(NUMBER_TEXT, NUMBER_TEXT), max_size=6).map(
    lambda lines: "".join(f"{mhz} {seconds}\n" for mhz, seconds in lines)
)


@FUZZ
@given(st.one_of(TRACE_LINES, st.text(max_size=200)), mutated(LATENCY))
@example((BAD_INPUTS / "traces" / "seconds-inf.txt").read_text(), LATENCY)
def test_fuzz_trace_and_latency_file(trace_text: str, latency: dict) -> None:
    """Whatever a trace and latency.json hold, each is refused in one line or the battery simulation on
    it (with the other one's good values) is finite."""
    board = load_board("rt3-default")
    fractions, dense, levels = RT3_DEFAULT_TRACE, 1e6, [5e5] * 3
    with tempfile.TemporaryDirectory() as directory:
        trace = Path(directory) / "trace.txt"
        trace.write_text(trace_text)
        try:
            fractions = load_trace(trace, board)
        except UserError as refusal:
            assert str(refusal).startswith(str(trace)) and "\n" not in str(refusal)
    try:
        dense, levels = level_cycles(latency, board, "latency.json")
    except UserError as refusal:
        assert "latency.json" in str(refusal) and "\n" not in str(refusal)
    sim = simulate(board, dense, levels, fractions)
    for scenario in sim.scenarios:
        assert math.isfinite(scenario.inferences_per_charge) and scenario.inferences_per_charge > 0
        assert math.isfinite(scenario.joules_per_inference)
    assert math.isfinite(sim.battery_ratio)


# -- plans --------------------------------------------------------------------------------------------

PLAN = {
    "format": "rt3c-plan",
    "version": 1,
    "model": "m",
    "levels": [{"name": "L0", "frequency_khz": 1000000}, {"name": "L1", "frequency_khz": 500000}],
    "layers": {
        "fc.weight": {
            "shape": [8, 8],
            "tile": [4, 4],
            "levels": [
                {"patterns": ["1100/1100/1100/1100", "0011/0011/0011/0011"], "tiles": ["01", ".1"]},
                {"patterns": ["1000/1000/1000/1000", "0001/0001/0001/0001"], "tiles": ["10", ".0"]},
            ],
        }
    },
}


def _check_plan(data: object) -> None:
    try:
        plan = Plan.from_json(data, "plan.json")
    except UserError as refusal:
        assert str(refusal).startswith("plan.json: ") and "\n" not in str(refusal)
        return
    plan.validate()
    for level in range(len(plan.levels)):
        assert 0.0 <= plan.sparsity(level) <= 1.0
    Plan.from_json(json.loads(json.dumps(plan.to_json())), "again")  # what is accepted saves and reloads


@FUZZ
@given(mutated(PLAN))
def test_fuzz_plan_values(data: dict) -> None:
    _check_plan(data)


@FUZZ
@given(st.binary(max_size=300))
@example((BAD_INPUTS / "plans" / "deeply-nested.json").read_bytes())
@example(json.dumps(PLAN).encode())
def test_fuzz_plan_bytes(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "plan.json"
        path.write_bytes(raw)
        try:
            Plan.load(path)
        except UserError as refusal:
            assert str(refusal).startswith(f"{path}: ")


# -- encoded models -----------------------------------------------------------------------------------


TAMPERED_ATTRIBUTES = (
    *("pattern_table", "chain_pattern", "n_tiles", "nnz", "grid_rows", "grid_cols", "level"),
    *("out_features", "in_features", "tile_rows", "tile_cols", "n_patterns", "value_sections"),
)
TAMPERED_ARRAYS = (".tile_run_ptr", ".tile_col", ".values", ".bias")


@st.composite
def tampering(draw: st.DrawFn) -> list[tuple[str, str, int, int]]:
    """One to three changes: (kind, name, index, value) of an int attribute element, an index array
    element or the level metadata."""
    changes = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["attribute", "initializer", "levels"]))
        name = draw(st.sampled_from(TAMPERED_ATTRIBUTES if kind == "attribute" else TAMPERED_ARRAYS))
        index = draw(st.integers(0, 40))
        value = draw(st.one_of(st.integers(-(2**40), 2**40), st.sampled_from([-1, 0, 1, 255, 256, 2**31])))
        changes.append((kind, name, index, value))
    return changes


def _tamper(model: onnx.ModelProto, kind: str, name: str, index: int, value: int) -> None:
    nodes = [node for node in model.graph.node if node.domain == "rt3c"]
    if kind == "levels":
        entry = next(entry for entry in model.metadata_props if entry.key == "rt3c.levels")
        entry.value = ",".join(f"L{i}" for i in range(value % 20)) if value % 7 else "L0,,L0"
    elif kind == "attribute":
        attribute = next(a for a in nodes[index % len(nodes)].attribute if a.name == name)
        if attribute.type == onnx.AttributeProto.INTS:
            if attribute.ints:
                attribute.ints[index % len(attribute.ints)] = value
        else:
            attribute.i = value
    else:
        initializer = next(i for i in model.graph.initializer if i.name.endswith(name))
        array = numpy_helper.to_array(initializer).copy()
        if array.size:
            flat = array.reshape(-1)
            if array.dtype.kind == "f":
                flat[index % flat.size] = [np.nan, np.inf, value][value % 3]
            else:
                flat[index % flat.size] = value % (np.iinfo(array.dtype).max + 1)
        initializer.CopyFrom(numpy_helper.from_array(array, initializer.name))


@settings(FUZZ, max_examples=max(10, EXAMPLES // 3))  # each example writes and checks bert-tiny
@given(tampering())
def test_fuzz_encoded_model_metadata(one_layer_encoded: Path, changes: list) -> None:  # noqa: F811
    model = onnx.load(str(one_layer_encoded))
    for change in changes:
        _tamper(model, *change)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "tampered.rt3.onnx"
        onnx.save(model, path)
        try:
            layers = read_encoded_layers(path)
        except UserError as refusal:
            assert str(refusal).startswith(f"{path}: ") and "\n" not in str(refusal)
            return
    for layer in layers.values():  # accepted: every level computes a weight inside its shape
        for level in range(len(layer.levels)):
            assert np.all(np.isfinite(layer.dense_weight(level)))


# -- .npy inputs --------------------------------------------------------------------------------------

SPEC = {"name": "input_ids", "shape": [1, 4], "dtype": "int64"}


@st.composite
def npy_files(draw: st.DrawFn) -> bytes:
    """A .npy file with an arbitrary header (dtype, shape, order) and body, often truncated or padded."""
    descr = draw(
        st.sampled_from(["<i8", "<i4", "<u8", "<f8", "<c16", "|b1", "|O", "<U4", "|V8", ">i8", "bogus"])
    )
    shape = tuple(draw(st.lists(st.integers(0, 10**12), max_size=3)))
    header = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(
            header, {"descr": descr, "fortran_order": draw(st.booleans()), "shape": shape}
        )
    except ValueError:
        header = io.BytesIO(b"\x93NUMPY\x01\x00" + draw(st.binary(max_size=40)))
    body = draw(st.binary(max_size=64))
    return header.getvalue() + body


@FUZZ
@given(npy_files() | st.binary(max_size=200))
def test_fuzz_npy_input(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "ids.npy"
        path.write_bytes(raw)
        try:
            array = read_input(path, SPEC)
        except UserError as refusal:
            assert str(refusal).startswith(f"{path}: ")
            return
    assert array.shape == (1, 4) and array.dtype == np.int64


@pytest.mark.parametrize("dtype", ["int64", "int32", "float64", "bool"])
def test_npy_input_of_the_right_shape_is_read_or_refused_by_type(dtype: str, tmp_path: Path) -> None:
    """The fuzzer's well-formed end: integer and bool arrays of the spec's shape are read, floats refused."""
    path = tmp_path / "ids.npy"
    np.save(path, np.ones((1, 4), dtype))
    if dtype == "float64":
        with pytest.raises(UserError, match="takes int64 integers, got float64 values"):
            read_input(path, SPEC)
    else:
        assert read_input(path, SPEC).tolist() == [[1, 1, 1, 1]]


# -- tokenizer vocabularies (compile --tokenizer) ----------------------------------------------------

TOKENIZER_JSON = {
    "normalizer": {"type": "BertNormalizer", "lowercase": True},
    "pre_tokenizer": {"type": "BertPreTokenizer"},
    "model": {
        "type": "WordPiece",
        "unk_token": "[UNK]",
        "continuing_subword_prefix": "##",
        "max_input_chars_per_word": 100,
        "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "##b": 5},
    },
}


def _check_vocab(path: Path) -> None:
    try:
        vocab = read_vocab(path)
    except UserError as refusal:
        assert str(refusal).startswith(f"tokenizer {path}") and "\n" not in str(refusal)
        return
    assert set(vocab.special_ids) == {"unk", "cls", "sep", "pad"}
    assert all(0 <= index < len(vocab.tokens) and vocab.tokens[index] for index in vocab.special_ids.values())
    assert 1 <= len(vocab.continuation) <= 8 and vocab.continuation.isascii()
    assert 1 <= vocab.max_word_chars <= MAX_WORD_CHARS and isinstance(vocab.lowercase, bool)


@FUZZ
@given(mutated(TOKENIZER_JSON))
def test_fuzz_tokenizer_json_values(data: dict) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "tokenizer.json"
        path.write_text(json.dumps(data))
        _check_vocab(path)


@FUZZ
@given(st.binary(max_size=300))
@example(b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n##s\n")
@example(json.dumps(TOKENIZER_JSON).encode())
def test_fuzz_vocab_bytes(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        for name in ("vocab.txt", "tokenizer.json"):
            path = Path(directory) / name
            path.write_bytes(raw)
            _check_vocab(path)
