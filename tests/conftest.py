"""Shared fixtures: models exported once per test worker and reused by every stage's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from rt3c.export import ExportResult, export_model
from rt3c.models import load_model


def _export(tmp_path_factory: pytest.TempPathFactory, name: str, seq_len: int) -> ExportResult:
    out = tmp_path_factory.mktemp(f"export-{name}") / f"{name}.onnx"
    return export_model(load_model(name), out, seq_len=seq_len)


@pytest.fixture(scope="session")
def bert_tiny_export(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    return _export(tmp_path_factory, "bert-tiny", seq_len=16)


@pytest.fixture(scope="session")
def rt3_lm_export(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    return _export(tmp_path_factory, "rt3-lm", seq_len=16)


@pytest.fixture(scope="session")
def minilm_export(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    return _export(tmp_path_factory, "minilm-l6", seq_len=16)


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
