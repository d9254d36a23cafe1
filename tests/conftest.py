"""Shared fixtures: models exported once per test worker and reused by every stage's tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from filelock import FileLock
from search_helpers import TIGHT_BOARD, run_cli, search_argv

from rt3c.stages.export import ExportResult, export_model
from rt3c.stages.models import load_model


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


@pytest.fixture(scope="session")
def tight_board(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("boards") / "tight.toml"
    path.write_text(TIGHT_BOARD)
    return path


@pytest.fixture(scope="session")
def searched(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> tuple[Path, Path]:
    """`rt3c search` on bert-tiny and the tight board: (DIR, board file). The search takes a minute or two:
    under pytest-xdist the workers share one run (the session's temporary root is common to them), the
    first to take the lock runs it, as pytest-xdist's docs suggest."""
    shared = (
        tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    )
    root = shared / "search"
    board, out = root / "tight.toml", root / "out"
    with FileLock(f"{root}.lock"):
        if not (root / "done").exists():
            root.mkdir(exist_ok=True)
            board.write_text(TIGHT_BOARD)
            assert run_cli([*search_argv(board, out), "--workers", "2"]) == 0
            (root / "done").touch()
    return out, board
