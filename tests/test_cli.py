"""The command line: help everywhere, exit codes, and one-line errors for every bad input of the export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rt3c.cli import app, main


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


def test_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("--help") == 0
    commands = [command.name for command in app.registered_commands]
    assert {"models", "boards", "export", "demo"} <= set(commands)
    for command in commands:
        assert run_cli(command, "--help") == 0
        assert "Usage" in capsys.readouterr().out


def test_models_lists_the_zoo(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("models") == 0
    out = capsys.readouterr().out
    for name in ("rt3-lm", "bert-tiny", "minilm-l6"):
        assert name in out


def test_unknown_option_is_usage_error() -> None:
    assert run_cli("export", "--no-such-option") == 2


def test_export_writes_model_and_sidecar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    assert run_cli("export", "--model", "bert-tiny", "--out", str(out), "--seq-len", "8") == 0
    assert out.is_file()
    assert json.loads(out.with_suffix(".json").read_text())["inputs"][0]["shape"] == [1, 8]


def _bad_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    not_a_model = tmp_path / "empty-dir"
    not_a_model.mkdir()
    unknown_arch = tmp_path / "unknown-arch"
    unknown_arch.mkdir()
    (unknown_arch / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("x")
    out = str(tmp_path / "out" / "m.onnx")
    good_out = str(tmp_path / "m.onnx")
    return {
        "unknown model name": (["--model", "no-such-model", "--out", good_out], "no-such-model"),
        "missing path": (["--model", str(tmp_path / "missing"), "--out", good_out], "missing"),
        "directory that is not a model": (["--model", str(not_a_model), "--out", good_out], "empty-dir"),
        "a file that is not a model": (["--model", str(a_file), "--out", good_out], "a-file.txt"),
        "unsupported architecture": (["--model", str(unknown_arch), "--out", good_out], "unknown-arch"),
        "unsupported op": (["--model", "model_factories:histogram_model", "--out", good_out], "histc"),
        "factory returns no model": (
            ["--model", "model_factories:not_a_model", "--out", good_out],
            "not_a_model",
        ),
        "missing factory": (["--model", "model_factories:nothing_here", "--out", good_out], "nothing_here"),
        "unwritable output directory": (["--model", "bert-tiny", "--out", out], str(tmp_path / "out")),
        "output is a directory": (["--model", "bert-tiny", "--out", str(not_a_model)], "empty-dir"),
        "output not .onnx": (["--model", "bert-tiny", "--out", str(tmp_path / "m.txt")], "m.txt"),
        "sequence too long": (["--model", "bert-tiny", "--out", good_out, "--seq-len", "4096"], "--seq-len"),
        "bad batch": (["--model", "bert-tiny", "--out", good_out, "--batch", "0"], "--batch"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unknown model name",
        "missing path",
        "directory that is not a model",
        "a file that is not a model",
        "unsupported architecture",
        "unsupported op",
        "factory returns no model",
        "missing factory",
        "unwritable output directory",
        "output is a directory",
        "output not .onnx",
        "sequence too long",
        "bad batch",
    ],
)
def test_export_bad_input(
    case: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    repo_root: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(repo_root / "tests")
    args, culprit = _bad_cases(tmp_path)[case]
    before = set(tmp_path.rglob("*"))
    assert run_cli("export", *args) == 2
    err = capsys.readouterr().err
    message = [line for line in err.splitlines() if line.strip()]
    assert len(message) == 1 and message[0].startswith("rt3c: error:"), err
    assert culprit in message[0]
    assert "Traceback" not in err
    assert set(tmp_path.rglob("*")) == before  # nothing half-written


def test_console_script_exit_code(tmp_path: Path) -> None:
    """The installed `rt3c` entry point turns a bad input into exit code 2 in a real process."""
    rt3c = Path(sys.executable).with_name("rt3c")
    result = subprocess.run(
        [str(rt3c), "export", "--model", "no-such-model", "--out", str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("rt3c: error: --model no-such-model")
