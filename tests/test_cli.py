"""The command line: help everywhere, exit codes, and one-line errors for every bad input of the export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer

import rt3c
from rt3c.cli import app, main
from rt3c.core.errors import SettingError


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


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from rt3c import __version__

    assert run_cli("--version") == 0
    assert capsys.readouterr().out == f"rt3c {__version__}\n"


def test_help_keeps_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    """Help text is not read as markup: `[out, in]` survives (rich markup would drop it)."""
    for command in ("prune", "plan"):
        assert run_cli(command, "--help") == 0
        assert "[out, in]" in " ".join(capsys.readouterr().out.split())


def test_one_option_name_one_meaning() -> None:
    """An option name has one type in every command, and the names that differ between the planner and
    the search say so: k is `--patterns` (plan, prune), the search's choices of k `--pattern-choices`."""
    typer_types: dict[str, dict[str, str]] = {}
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for name, command in commands.items():
        for param in command.params:
            for option in param.opts:
                typer_types.setdefault(option, {})[name] = str(param.type_descriptor.annotation)
    mixed = {option: types for option, types in typer_types.items() if len(set(types.values())) > 1}
    assert not mixed
    assert set(typer_types["--patterns"]) == {"plan", "prune"}
    assert set(typer_types["--pattern-choices"]) == {"search"}
    assert set(typer_types["--batch"]) == {"export"}
    assert set(typer_types["--batch-size"]) == {"prune", "search"}
    assert set(typer_types["-b"]) == set(typer_types["--board"])
    assert set(typer_types["--vocab"]) == {"encode", "compile"}  # a data set, as --data names one


def test_settings_errors_name_the_option() -> None:
    """The library's errors name settings as Python spells them (`block_ratio`) and the CLI shows the
    option that sets each: every setting a library `SettingError` names maps to an option of the CLI,
    except those only the Python API can set."""
    import ast

    from rt3c.cli.options import option_name

    api_only = {"max_len", "level_weights"}
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    options = {option for command in commands.values() for param in command.params for option in param.opts}
    named = set()
    for source in Path(rt3c.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            # `_check_range(setting, ...)` raises a SettingError for the setting it is given.
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None)
                in (
                    "SettingError",
                    "_check_range",
                    "LevelPreconditionError",
                )
                and isinstance(node.args[0], ast.Constant)
            ):
                named.add(node.args[0].value)
    assert len(named) > 20
    assert {option_name(setting) for setting in named - api_only} <= options
    error = SettingError("block_ratio", "must be in [0, 1)", 1.5)
    assert str(error) == "block_ratio 1.5: must be in [0, 1)"
    assert error.render(option_name(error.setting)) == "--block-ratio 1.5: must be in [0, 1)"


class _FakePlan:
    def __init__(self, sparsities: list[float]) -> None:
        self.levels, self.layers = sparsities, {}

    def sparsity(self, level: int) -> float:
        return self.levels[level]


@pytest.mark.parametrize(
    ("args", "sparsities", "frequencies"),
    [
        (["--sparsity", "0.5,0.8"], [0.5, 0.8], None),
        (["--levels", "2", "--sparsity", "0.5,0.8"], [0.5, 0.8], None),
        (["--board", "rt3-default"], [0.5, 0.7, 0.8], "rt3-default"),
    ],
)
def test_plan_levels_follow_the_lists(
    args: list[str],
    sparsities: list[float],
    frequencies: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--levels` is the number of `--sparsity` values unless given; `--board` gives its frequencies."""
    from rt3c.core.boards import load_board
    from rt3c.stages import encode

    calls: list[dict] = []

    def fake_plan_model(model: Path, out: Path, **kwargs: object) -> _FakePlan:
        calls.append(kwargs)
        return _FakePlan(kwargs["sparsities"])  # type: ignore[arg-type]

    monkeypatch.setattr(encode, "plan_model", fake_plan_model)
    assert run_cli("plan", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "p.json"), *args) == 0
    expected = None if frequencies is None else [lv.frequency_khz for lv in load_board(frequencies).levels]
    assert calls[0]["sparsities"] == sparsities
    assert calls[0]["frequencies_khz"] == expected


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rt3c: error:"), err
    return lines[0]


LEVEL_MISMATCHES = [
    (["--levels", "2"], ("--levels 2", "--sparsity")),
    (["--levels", "3", "--sparsity", "0.5,0.8"], ("--levels 3", "--sparsity 0.5,0.8")),
    (["--board", "rt3-default", "--sparsity", "0.5,0.8"], ("--board rt3-default", "--sparsity 0.5,0.8")),
]


@pytest.mark.parametrize(("args", "culprits"), LEVEL_MISMATCHES)
@pytest.mark.parametrize("command", ["plan", "prune"])
def test_level_count_mismatch(
    command: str,
    args: list[str],
    culprits: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = str(tmp_path / "out")
    inputs = (
        [str(tmp_path / "m.onnx"), "--out", out]
        if command == "plan"
        else ["--model", "bert-tiny", "--data", "synthetic", "--out", out]
    )
    assert run_cli(command, *inputs, *args) == 2
    line = _one_line_error(capsys)
    assert all(culprit in line for culprit in culprits), line
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("command", "steps", "culprit"),
    [
        ("prune", "1,2,3", "4 counts (dense,lasso,finetune,joint)"),
        ("prune", "1.5,1,1,1", "integers"),
        ("search", "1,2,3,4", "6 counts (dense,lasso,finetune,warm,recovery,joint)"),
        ("search", "1,2,3,4,5,-6", "integers"),
    ],
)
def test_steps_name_the_stages(
    command: str, steps: str, culprit: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--model", "bert-tiny", "--data", "synthetic", "--out", str(tmp_path / "out"), "--steps", steps]
    if command == "search":
        args += ["--board", "rt3-default"]
    assert run_cli(command, *args) == 2
    line = _one_line_error(capsys)
    assert f"--steps {steps!r}" in line and culprit in line, line


def test_search_pattern_choices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The search's choices of k are `--pattern-choices` (integers); `--patterns` is the planner's k."""
    args = ["search", "--model", "bert-tiny", "--data", "synthetic", "--board", "rt3-default"]
    args += ["--out", str(tmp_path / "out")]
    assert run_cli(*args, "--pattern-choices", "2,x") == 2
    assert "--pattern-choices '2,x'" in _one_line_error(capsys)
    assert run_cli(*args, "--patterns", "2,4") == 2
    assert "--patterns" in capsys.readouterr().err
