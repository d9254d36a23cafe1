"""Vocabulary trimming (`--vocab DATA`): the embedding tables keep a data set's token ids behind a const id
map; the encoded model under onnxruntime, the C build against it, the data side, and bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_cli import run_cli

from rt3c.core.errors import UserError
from rt3c.core.onnx_io import checked_proto, deterministic_feeds, load_onnx, save_onnx_atomically
from rt3c.core.plan import Plan
from rt3c.passes.encode import LEVEL_INPUT
from rt3c.passes.trim_vocabulary import KeptVocabulary
from rt3c.stages.compile import compile_model
from rt3c.stages.data_vocabulary import data_vocabulary
from rt3c.stages.encode import encode, plan_model
from rt3c.stages.export import ExportResult
from rt3c.stages.reference import run_onnx

UNKNOWN = 100
# Every third id of bert-tiny's 1024 and the "unknown" one: most ids the feeds draw are dropped.
KEPT = KeptVocabulary(
    np.union1d(np.arange(0, 1024, 3), [UNKNOWN]).astype(np.int64), 1024, UNKNOWN, "every third id"
)


def test_id_map() -> None:
    id_map = KEPT.id_map()
    assert id_map.dtype == np.int32 and id_map.shape == (1024,)
    np.testing.assert_array_equal(id_map[KEPT.ids], np.arange(len(KEPT.ids)))
    unknown_row = int(np.flatnonzero(KEPT.ids == UNKNOWN)[0])
    dropped = np.setdiff1d(np.arange(1024), KEPT.ids)
    assert len(dropped) > 600 and np.all(id_map[dropped] == unknown_row)


@pytest.fixture(scope="module")
def trimmed(
    bert_tiny_export: ExportResult, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, Path]:
    """bert-tiny's plan, and the model encoded with int8 weights, with and without the vocabulary trimmed."""
    directory = tmp_path_factory.mktemp("vocab")
    plan_path = directory / "plan.json"
    plan_model(bert_tiny_export.onnx_path, plan_path, sparsities=[0.5, 0.7, 0.8], tile=(4, 4), patterns=8)
    paths = []
    for name, vocab in (("trimmed", KEPT), ("full", None)):
        model = load_onnx(bert_tiny_export.onnx_path)
        result = encode(model, Plan.load(plan_path), "bert-tiny", weights="int8", vocab=vocab)
        paths.append(directory / f"{name}.rt3.onnx")
        save_onnx_atomically(checked_proto(result.model), paths[-1])
    return plan_path, paths[0], paths[1]


def test_trimmed_model_under_onnxruntime(trimmed: tuple[Path, Path, Path]) -> None:
    """The word table shrinks to the kept rows; a kept id gives what the untrimmed model gives, a dropped
    id what the unknown token gives."""
    _, trimmed_path, full_path = trimmed
    model = onnx.load(str(trimmed_path))
    tables = [tuple(i.dims) for i in model.graph.initializer if "word_embeddings" in i.name]
    assert sorted(tables) == [(len(KEPT.ids),), (len(KEPT.ids), 64)], tables  # int8 rows, a scale per row
    feeds = deterministic_feeds(model, seed=1)
    assert feeds["input_ids"].max() > 900  # the ids span the tokenizer's vocabulary, not the table's rows
    kept_ids = np.isin(feeds["input_ids"], KEPT.ids)
    assert 0 < kept_ids.sum() < kept_ids.size
    as_unknown = {**feeds, "input_ids": np.where(kept_ids, feeds["input_ids"], UNKNOWN)}
    only_kept = {**feeds, "input_ids": np.where(kept_ids, feeds["input_ids"], 3)}
    for level in range(3):
        select = {LEVEL_INPUT: np.array(level, dtype=np.int64)}
        (got,) = run_onnx(trimmed_path, {**feeds, **select})
        (unknown,) = run_onnx(full_path, {**as_unknown, **select})
        np.testing.assert_allclose(got, unknown, atol=1e-6)
        (got_kept,), (full_kept,) = (
            run_onnx(trimmed_path, {**only_kept, **select}),
            run_onnx(full_path, {**only_kept, **select}),
        )
        np.testing.assert_allclose(got_kept, full_kept, atol=1e-6)
        assert not np.allclose(got, run_onnx(full_path, {**feeds, **select})[0], atol=1e-6)


@pytest.mark.parametrize("target", ["host", pytest.param("cortex-m7", marks=pytest.mark.slow)])
def test_trimmed_model_in_c(target: str, trimmed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """The C build (verified at every level against onnxruntime on ids across the tokenizer's vocabulary,
    most of them dropped) keeps the tokenizer's id bound and carries the id map, an int32 per id."""
    plan, trimmed_path, full_path = trimmed
    board = target if target != "host" else None
    frequencies = None if board else [1_400_000, 1_000_000, 800_000]
    results = {
        name: compile_model(
            path,
            tmp_path / name,
            target_name=target,
            plan_path=plan,
            board=board,
            frequencies_khz=frequencies,
        )
        for name, path in (("trimmed", trimmed_path), ("full", full_path))
    }
    assert max(results["trimmed"].max_abs_diff) <= 1e-4
    if board is not None:  # the STM32H7-class part's memories hold it
        assert results["trimmed"].report["board"]["memory"]["fits"]  # type: ignore[index]
    header = (tmp_path / "trimmed" / "bert_tiny_model.h").read_text()
    assert "#define BERT_TINY_INPUT_INPUT_IDS_LIMIT 1024\n" in header
    flash = {name: result.report["flash_bytes"] for name, result in results.items()}
    dropped_rows = 1024 - len(KEPT.ids)
    # Each dropped row saves 64 int8 values and a float scale; the map costs an int32 per tokenizer id
    # (and the two int32 bounds the embedding's computed indices are clamped to, with their alignment).
    assert flash["full"]["weights"] - flash["trimmed"]["weights"] == dropped_rows * (64 + 4)
    assert 1024 * 4 <= flash["trimmed"]["indices"] - flash["full"]["indices"] <= 1024 * 4 + 32


def test_data_vocabulary_of_minilm_on_rotten_tomatoes() -> None:
    found = data_vocabulary("minilm-l6", "rotten-tomatoes")
    kept = found.vocabulary
    assert kept.size == 30522 and kept.unknown_id == 100
    assert {0, 100, 101, 102, 103} <= set(kept.ids.tolist())  # [PAD] [UNK] [CLS] [SEP] [MASK]
    assert np.all(np.diff(kept.ids) > 0) and 10_000 < len(kept.ids) < 20_000
    assert 0.95 < found.test_coverage < 1.0


def test_bad_vocab_input(
    bert_tiny_export: ExportResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan, out = tmp_path / "plan.json", tmp_path / "out.rt3.onnx"
    plan_model(bert_tiny_export.onnx_path, plan, sparsities=[0.5], tile=(4, 4), patterns=8)
    model = str(bert_tiny_export.onnx_path)
    # bert-tiny has no tokenizer, so no unknown token for the ids a trimmed table drops.
    assert run_cli("encode", model, "-p", str(plan), "-o", str(out), "--vocab", "synthetic") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rt3c: error: --vocab synthetic: bert-tiny's vocabulary has no special tokens"), err
    assert len(err.splitlines()) == 1 and not out.exists()
    # The vocabulary is trimmed when encoding: an encoded model keeps its own.
    assert run_cli("encode", model, "-p", str(plan), "-o", str(out)) == 0
    capsys.readouterr()
    project = tmp_path / "project"
    assert run_cli("compile", str(out), "-o", str(project), "--vocab", "rotten-tomatoes", "--no-verify") == 2
    err = capsys.readouterr().err.strip()
    assert "--vocab rotten-tomatoes: the vocabulary is trimmed when a model is encoded with its plan" in err
    assert len(err.splitlines()) == 1 and (not project.exists() or not any(project.iterdir()))


@pytest.mark.parametrize(
    ("vocabulary", "message"),
    [
        (KeptVocabulary(KEPT.ids, 2048, UNKNOWN, "v"), "has 1024 rows, but the tokenizer of v has 2048 ids"),
        (
            KeptVocabulary(np.array([1, 2], np.int64), 1024, UNKNOWN, "v"),
            "include the unknown token's id 100",
        ),
        (KeptVocabulary(np.array([100, 5000], np.int64), 1024, UNKNOWN, "v"), "must lie in [0, 1024)"),
    ],
    ids=["wrong-size", "no-unknown", "out-of-range"],
)
def test_vocabulary_that_does_not_fit_the_model(
    vocabulary: KeptVocabulary, message: str, bert_tiny_export: ExportResult, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.json"
    plan_model(bert_tiny_export.onnx_path, plan, sparsities=[0.5], tile=(4, 4), patterns=8)
    with pytest.raises(UserError, match=re.escape(message)):
        encode(load_onnx(bert_tiny_export.onnx_path), Plan.load(plan), "bert-tiny", vocab=vocabulary)
