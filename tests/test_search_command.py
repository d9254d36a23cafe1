"""`rt3c search` as users run it (bert-tiny, synthetic data, tiny budgets): every candidate on one trained
BP backbone, outputs that agree with each other, a plan that compiles, resume after a kill, the Ray backend
against local processes, and bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from search_helpers import SEARCH_EPISODES, SEARCH_STEPS, run_cli, search_argv

from rt3c.cli.options import stage_steps
from rt3c.cli.training import SEARCH_STAGES
from rt3c.core.battery import simulate
from rt3c.core.boards import load_board
from rt3c.core.errors import SettingError
from rt3c.core.files import exclusive_lock
from rt3c.core.plan import LayerPlan, Plan
from rt3c.core.sparsify import block_prune
from rt3c.stages.datasets import load_dataset
from rt3c.stages.models import load_model
from rt3c.stages.prune.layers import DEFAULT_LAYERS, select_layers
from rt3c.stages.prune.stages import DenseRecipe, dense_baseline
from rt3c.stages.prune.training import TrainSettings, native_bfloat16
from rt3c.stages.search.evaluate import CandidateEvaluator, EvaluatorSpec, evaluation_pool
from rt3c.stages.search.space import SearchSpace

EVAL_LEVEL_KEYS = {
    "level",
    "frequency_mhz",
    "sparsity",
    "test_accuracy",
    "loss_points",
    "latency_ms",
    "deadline_ms",
    "meets_deadline",
}


@pytest.mark.slow
def test_eval_json_agrees_with_latency_json(searched: tuple[Path, Path]) -> None:
    out, board_path = searched
    board = load_board(board_path)
    evaluation = json.loads((out / "eval.json").read_text())
    latency = json.loads((out / "latency.json").read_text())
    search = json.loads((out / "search.json").read_text())
    assert {"dense", "levels", "battery_ratio", "objective"} <= set(evaluation)
    assert evaluation["objective"] == "accuracy"
    assert evaluation["dense"]["test_accuracy"] == pytest.approx(100 * search["dense"]["test_accuracy"])
    for row, measured, board_level in zip(evaluation["levels"], latency["levels"], board.levels, strict=True):
        assert set(row) == EVAL_LEVEL_KEYS
        assert row["latency_ms"] == pytest.approx(1e3 * measured["latency_s"])
        assert row["deadline_ms"] == pytest.approx(1e3 * board_level.deadline_s)
        assert row["frequency_mhz"] == pytest.approx(board_level.frequency_hz / 1e6)
        assert row["meets_deadline"] == (row["latency_ms"] <= row["deadline_ms"]) is True
        assert row["loss_points"] == pytest.approx(
            evaluation["dense"]["test_accuracy"] - row["test_accuracy"]
        )
        # The whole compiled model was measured: its SparseLinear kernels and every other one.
        assert measured["units"] == pytest.approx(measured["sparse_units"] + measured["other_units"])
    expected = simulate(
        board, latency["dense_units"], [level["units"] for level in latency["levels"]], (0.5, 0.3, 0.2)
    )
    assert evaluation["battery_ratio"] == pytest.approx(expected.battery_ratio)
    sparsity = [row["sparsity"] for row in evaluation["levels"]]
    assert sparsity == sorted(sparsity)
    # Both methods are summarised for the comparison the docs report.
    assert set(search["comparison"]) == {"reinforce", "random"}
    # The default precision, "auto", is recorded as the arithmetic that ran on this machine.
    assert search["settings"]["precision"] == ("bfloat16" if native_bfloat16() else "float32")


@pytest.mark.slow
def test_candidates_share_the_trained_backbone(searched: tuple[Path, Path]) -> None:
    out, _ = searched
    backbone = torch.load(out / "stages" / "backbone.pt", map_location="cpu", weights_only=False)
    kept_tiles = backbone["payload"]
    plan = Plan.load(out / "plan.json")
    assert set(plan.layers) == set(kept_tiles)
    search = json.loads((out / "search.json").read_text())
    ratio = search["space"]["block_ratio"]
    for name, layer in plan.layers.items():
        assert np.array_equal(layer.kept_tiles, kept_tiles[name])  # the winner stands on the backbone
        assert np.mean(~layer.kept_tiles) == pytest.approx(ratio, abs=1 / layer.kept_tiles.size)
        # The backbone was trained with its blocks removed: they are exactly zero in its weights.
        assert not np.any(backbone["state"][name].numpy()[_removed_by_bp(layer)])
    checkpoint = torch.load(out / "checkpoint" / "weights.pt", map_location="cpu", weights_only=True)
    for name, layer in plan.layers.items():
        assert not np.any(checkpoint[name].numpy()[~layer.mask(0)])  # joint training kept the union mask


def _removed_by_bp(layer: LayerPlan) -> np.ndarray:
    """bool [out, in]: the weights inside the tiles BP removed."""
    rows, cols = layer.tile
    full = np.repeat(np.repeat(~layer.kept_tiles, rows, axis=0), cols, axis=1)
    return full[: layer.shape[0], : layer.shape[1]]


@pytest.mark.slow
def test_the_searched_plan_compiles(searched: tuple[Path, Path], tmp_path: Path) -> None:
    out, _ = searched
    argv = [
        "compile",
        str(out / "model.onnx"),
        "--plan",
        str(out / "plan.json"),
        "--out",
        str(tmp_path / "c"),
    ]
    assert run_cli(argv) == 0
    assert (tmp_path / "c" / "bert_tiny_model.c").is_file()  # the default prefix: the model's name


@pytest.mark.slow
def test_a_killed_search_resumes(tight_board: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [*search_argv(tight_board, out), "--backend", "serial"]
    command = [sys.executable, "-c", "import sys; from rt3c.cli import main; main(sys.argv[1:])", *argv]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    backbone = out / "stages" / "backbone.pt"
    deadline = time.monotonic() + 300
    while not backbone.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert backbone.exists() and not (out / "eval.json").exists()
    trained_at = backbone.stat().st_mtime_ns
    assert run_cli(argv) == 0
    assert backbone.stat().st_mtime_ns == trained_at  # resumed: the backbone was not trained again
    assert (out / "eval.json").is_file() and (out / "stages" / "joint.pt").is_file()


@pytest.mark.slow
def test_a_new_joint_learning_rate_retrains_only_the_joint_stage(
    searched: tuple[Path, Path], tmp_path: Path
) -> None:
    from rt3c.api import search

    searched_out, board = searched
    out = tmp_path / "out"
    shutil.copytree(searched_out, out)
    stages = {name: (out / "stages" / f"{name}.pt").stat().st_mtime_ns for name in ("search", "joint")}
    # The settings of `search_argv`, through the Python API (the joint rate is not a command-line option).
    counts = stage_steps(SEARCH_STEPS, SEARCH_STAGES)
    steps = {f"{stage}_steps": count for stage, count in zip(SEARCH_STAGES, counts, strict=True)}
    result = search(
        "bert-tiny", "synthetic", str(board), out, episodes=SEARCH_EPISODES, validation_size=120,
        workers=2, joint_learning_rate=5e-4, **steps,
    )  # fmt: skip
    assert (out / "stages" / "search.pt").stat().st_mtime_ns == stages["search"]  # reused
    assert (out / "stages" / "joint.pt").stat().st_mtime_ns != stages["joint"]  # trained at the new rate
    saved = torch.load(out / "stages" / "joint.pt", map_location="cpu", weights_only=False)
    assert saved["settings"]["lr"] == 5e-4
    assert result.evaluation["levels"][0]["test_accuracy"] > 0


@pytest.mark.slow
def test_ray_backend_matches_local_processes(searched: tuple[Path, Path]) -> None:
    ray = pytest.importorskip("ray")
    out, board_path = searched
    model = load_model("bert-tiny")
    data = load_dataset("synthetic", model)
    weights = {
        name: p.detach().numpy().astype(np.float64)
        for name, p in select_layers(model, DEFAULT_LAYERS, (4, 4)).items()
    }
    space = SearchSpace(tuple(weights), 3, (2, 4), (1.0, 0.5, 0.25))
    spec = EvaluatorSpec(
        model="bert-tiny",
        backbone_state=model.module.state_dict(),
        kept_tiles={name: block_prune(w, (4, 4), 0.3) for name, w in weights.items()},
        tile=(4, 4),
        space=space,
        validation=data.validation,
        latency=json.loads((out / "latency.json").read_text())["model"],
        board=load_board(board_path),
        cycles_per_unit=1.0,
        train=data.train,
        recovery=TrainSettings(3, 1e-3, 16, distill=0.5),
        teacher_state=model.module.state_dict(),
    )
    rng = np.random.default_rng(0)
    candidates = []
    for _ in range(4):
        choices: list[int] = []
        for position in range(len(space.decisions)):
            choices.append(int(rng.choice(np.flatnonzero(space.allowed(position, choices)))))
        candidates.append(tuple(choices))
    local = CandidateEvaluator(spec, model)
    with evaluation_pool(spec, "process", 2, local) as (evaluate, map_fn):
        by_processes = list(map_fn(evaluate, candidates))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with evaluation_pool(spec, "ray", 2, local) as (evaluate, map_fn):
            by_ray = list(map_fn(evaluate, candidates))
    finally:
        ray.shutdown()
    assert by_ray == by_processes
    assert len({e.sparsity for e in by_ray}) > 1  # different candidates, not one evaluation repeated


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "board_text", "culprit"),
    [
        (["--objective", "fastest"], None, "--objective"),
        (["--objective", "energy", "--max-loss", "1,2"], None, "--max-loss"),
        (["--max-loss", "1,2,3"], None, "--max-loss"),
        (["--loss-reference", "dense"], None, "--loss-reference"),
        (["--loss-reference", "densest"], None, "--loss-reference"),
        (["--objective", "energy", "--loss-reference", "best"], None, "--loss-reference"),
        (["--steps", "60,-5,12,12,3,12"], None, "--steps"),
        (["--steps", "60,12"], None, "--steps"),
        (["--validation-size", "2000000"], None, "--validation-size"),
        (["--seq-len", "100000"], None, "--seq-len"),
        (["--workers", "5000"], None, "--workers"),
        (["--precision", "float16"], None, "--precision"),
        (["--hidden-distill", "-0.5"], None, "--hidden-distill"),
        (["--one-shot", "--hidden-distill", "1"], None, "--hidden-distill"),
        (["--objective", "energy"], "two-levels", "--max-loss"),
        ([], "impossible", "L2"),
    ],
)
def test_bad_input(
    tight_board: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    board_text: str | None,
    culprit: str,
) -> None:
    board = tight_board
    if board_text == "two-levels":  # a board whose levels do not match the default loss budgets
        board = tmp_path / "two.toml"
        board.write_text(tight_board.read_text().rsplit("[[levels]]", 1)[0])
    elif board_text == "impossible":  # the slowest level's deadline is beyond any candidate
        board = tmp_path / "impossible.toml"
        text = tight_board.read_text().rstrip() + "\nlatency_ms = 0.9\n"
        board.write_text(text)
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_cli([*search_argv(board, out), *extra]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines of the checks
    assert error.startswith("rt3c: error: ") and culprit in error, error
    assert not out.exists()


@pytest.mark.parametrize("rate", [0.0, -1e-4, math.nan, math.inf])
def test_a_learning_rate_that_is_not_positive_is_refused(
    tight_board: Path, tmp_path: Path, rate: float
) -> None:
    from rt3c.api import search

    out = tmp_path / "out"
    with pytest.raises(SettingError, match=r"^joint_learning_rate .*: must be a positive finite number$"):
        search("bert-tiny", "synthetic", str(tight_board), out, joint_learning_rate=rate)
    assert not out.exists()


@pytest.mark.slow
def test_one_shot_trains_nothing_after_the_dense_baseline(tight_board: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [*search_argv(tight_board, out), "--one-shot", "--episodes", "2", "--backend", "serial"]
    assert run_cli([*argv, "--objective", "energy", "--max-loss", "5,10,20"]) == 0
    dense = load_model("bert-tiny")
    dense_baseline(dense, load_dataset("synthetic", dense), DenseRecipe("bert-tiny", "synthetic", steps=60))
    dense_weights = dense.module.state_dict()
    checkpoint = torch.load(out / "checkpoint" / "weights.pt", map_location="cpu", weights_only=True)
    plan = Plan.load(out / "plan.json")
    for name, tensor in checkpoint.items():
        expected = dense_weights[name]
        if name in plan.layers:  # the dense weights, masked by the densest level
            expected = expected * torch.from_numpy(plan.layers[name].mask(0).copy())
        assert torch.equal(tensor, expected), name
    assert json.loads((out / "eval.json").read_text())["levels"][0]["meets_deadline"]
    # The energy objective's budgets were measured against the densest candidate, evaluated like the others.
    search = json.loads((out / "search.json").read_text())
    reference = search["loss_reference"]
    assert reference["kind"] == "densest"
    space = SearchSpace(tuple(search["space"]["layers"]), 3, tuple(search["space"]["pattern_counts"]))
    assert reference["choices"] == space.densest()
    assert all(0.0 < a <= search["dense"]["validation_accuracy"] for a in reference["accuracy"])


def test_a_second_search_into_the_same_out_is_refused(
    tight_board: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with exclusive_lock(out):  # another search, still writing
        assert run_cli(search_argv(tight_board, out)) == 2
    assert "another rt3c process is writing it" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()
