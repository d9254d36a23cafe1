"""rt3c prune on bert-tiny and a synthetic task: group lasso, exact BP ratios, nested levels, masks that
hold through training, a plan and checkpoint the rest of the toolchain accepts, resume, and bad input."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from rt3c.cli import main
from rt3c.core.errors import SettingError
from rt3c.core.files import exclusive_lock
from rt3c.core.plan import Plan
from rt3c.stages.datasets import load_dataset
from rt3c.stages.models import load_model
from rt3c.stages.prune.lasso import ReweightedGroupLasso, tile_norms
from rt3c.stages.prune.layers import select_layers
from rt3c.stages.prune.pipeline import PruneConfig, PruneResult, prune_model
from rt3c.stages.prune.stages import layer_masks
from rt3c.stages.prune.training import (
    Teacher,
    TrainSettings,
    distillation_loss,
    evaluate,
    hidden_state_loss,
    learning_rate_factor,
    native_bfloat16,
    resolve_precision,
    run,
    run_with_hidden_states,
    train,
)

SMALL_STEPS = {"dense_steps": 150, "lasso_steps": 40, "finetune_steps": 40, "joint_steps": 40}
SPARSITIES = [0.5, 0.65, 0.8]
FFN_RATIO = 0.375


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PruneConfig, PruneResult]]:
    config = PruneConfig(
        model="bert-tiny",
        data="synthetic",
        out=tmp_path_factory.mktemp("prune") / "out",
        sparsities=SPARSITIES,
        layer_ratios={r"intermediate": FFN_RATIO},
        lasso_strength=1e-3,
        **SMALL_STEPS,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RT3C_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield config, prune_model(config)


def test_group_lasso_shrinks_the_targeted_groups() -> None:
    def trained_norms(strength: float) -> tuple[float, float]:
        model = load_model("bert-tiny")
        data = load_dataset("synthetic", model)
        weights = select_layers(model, r"layer\.0\.intermediate", (4, 4))
        penalty = ReweightedGroupLasso(weights, (4, 4), strength, 1e-3)
        train(model, data.train, TrainSettings(30, 1e-3), "lasso", penalty=penalty)
        with torch.no_grad():
            target = weights["bert.encoder.layer.0.intermediate.dense.weight"]
            other = dict(model.module.named_parameters())["bert.encoder.layer.1.intermediate.dense.weight"]
            return float(tile_norms(target, (4, 4)).sum()), float(tile_norms(other, (4, 4)).sum())

    plain_target, plain_other = trained_norms(0.0)
    lasso_target, lasso_other = trained_norms(1e-3)
    assert lasso_target < 0.7 * plain_target
    assert lasso_other == pytest.approx(plain_other, rel=0.1)  # untargeted layers barely change


def test_hard_prune_hits_the_requested_ratios_exactly(pruned) -> None:
    _, result = pruned
    for name, layer in result.plan.layers.items():
        ratio = FFN_RATIO if "intermediate" in name else SPARSITIES[0] / 2
        kept = layer.kept_tiles
        assert kept.size - kept.sum() == round(ratio * kept.size), name


def test_masks_are_nested_and_levels_increase_in_sparsity(pruned) -> None:
    _, result = pruned
    assert result.plan.is_nested()
    achieved = [result.plan.sparsity(level) for level in range(3)]
    assert achieved == sorted(achieved) and len(set(achieved)) == 3
    assert all(abs(a - s) < 0.04 for a, s in zip(achieved, SPARSITIES, strict=True))


def test_fine_tuning_never_revives_pruned_weights(pruned) -> None:
    _, result = pruned
    model = load_model(str(result.checkpoint))
    weights = dict(model.module.named_parameters())
    for name, layer in result.plan.layers.items():
        assert not torch.any(weights[name].detach()[~torch.from_numpy(layer.mask(0))] != 0), name
        assert torch.count_nonzero(weights[name]) > 0


def test_plan_and_checkpoint_fit_the_model(pruned) -> None:
    _, result = pruned
    plan = Plan.load(result.plan_path)
    model = load_model("bert-tiny")
    shapes = {name: tuple(p.shape) for name, p in model.module.named_parameters() if p.ndim == 2}
    plan.check_shapes(shapes, "bert-tiny")
    assert all(".encoder.layer." in name for name in plan.layers)
    # The checkpoint loads through the zoo resolver and computes what the pruned module computed.
    reloaded = load_model(str(result.checkpoint))
    inputs = model.example_inputs(2, 8)
    data = load_dataset("synthetic", reloaded)
    evaluation = json.loads(result.eval_path.read_text())
    assert (
        evaluate(reloaded, data.test, layer_masks(plan.layers, 0))["accuracy"]
        == evaluation["levels"][0]["accuracy"]
    )
    assert run(reloaded.module, inputs).shape == (2, 2)


def test_pruned_checkpoint_exports_and_encodes(pruned, tmp_path: Path) -> None:
    from rt3c.stages.encode import encode_model
    from rt3c.stages.export import export_model

    _, result = pruned
    exported = export_model(load_model(str(result.checkpoint)), tmp_path / "model.onnx")
    encoded = encode_model(exported.onnx_path, result.plan_path, tmp_path / "model.rt3.onnx")
    assert len(encoded.max_abs_diff) == 3
    assert max(encoded.max_abs_diff) < 1e-4


def test_tiny_model_keeps_its_accuracy(pruned) -> None:
    _, result = pruned
    evaluation = result.evaluation
    assert evaluation["dense"]["accuracy"] > 0.75  # the task was learnt
    for row in evaluation["levels"]:
        assert row["accuracy"] >= evaluation["dense"]["accuracy"] - 0.05, row["level"]
    assert len(evaluation["one_shot"]) == 3


def test_a_rerun_resumes_from_the_finished_stages(pruned) -> None:
    config, result = pruned
    stage_files = sorted((Path(config.out) / "stages").glob("*.pt"))
    assert [f.stem for f in stage_files] == sorted(["dense", "lasso", "block", "patterns", "joint"])
    before = {f: f.stat().st_mtime_ns for f in stage_files}
    again = prune_model(config)
    assert {f: f.stat().st_mtime_ns for f in stage_files} == before
    assert again.evaluation["levels"] == result.evaluation["levels"]


def test_cli_prune_writes_checkpoint_plan_and_table(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RT3C_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    code = run_cli(
        "prune", "--model", "bert-tiny", "--data", "synthetic", "--out", str(out),
        "--sparsity", "0.5,0.6,0.7", "--steps", "20,5,5,5", "--layer-ratio", "query=0.1",
        "--board", "rt3-default", "--precision", "bfloat16", "--hidden-distill", "0.5",
    )  # fmt: skip
    assert code == 0
    settings = json.loads((out / "eval.json").read_text())["settings"]
    assert settings["precision"] == "bfloat16" and settings["hidden_distill"] == 0.5
    printed = capsys.readouterr().out
    assert "one-shot" in printed and "L2" in printed
    plan = Plan.load(out / "plan.json")
    assert [level.frequency_khz for level in plan.levels] == [1_400_000, 1_000_000, 800_000]  # the board's
    query = plan.layers["bert.encoder.layer.0.attention.self.query.weight"]
    assert np.mean(~query.kept_tiles) == pytest.approx(0.1, abs=1 / query.kept_tiles.size)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "imdb"], "unknown dataset"),
        (["--data", "synthetic", "--layers", "no_such_layer"], "matches no linear layer"),
        (["--data", "synthetic", "--sparsity", "0.5,0.7,1.2"], "[0, 1)"),
        (["--data", "synthetic", "--sparsity", "0.7,0.5,0.8"], "increase in sparsity"),
        (["--data", "synthetic", "--block-ratio", "-0.1"], "--block-ratio"),
        (["--data", "synthetic", "--layer-ratio", "query=1.5"], "[0, 1)"),
        (["--data", "synthetic", "--tile", "128x4"], "larger than layer"),
        (["--data", "hamlet"], "language model"),
        (["--data", "synthetic", "--precision", "float16"], "--precision 'float16': choose one of auto"),
        (["--data", "synthetic", "--hidden-distill", "-1"], "--hidden-distill -1.0: must be >= 0"),
        (
            ["--model", "rt3-lm", "--data", "hamlet", "--hidden-distill", "1"],
            "--hidden-distill 1.0: model rt3-lm returns no hidden states",
        ),
        (
            ["--data", "synthetic", "--levels", "2", "--sparsity", "0.5,0.7", "--board", "rt3-default"],
            "--board",
        ),
    ],
)
def test_bad_input_exits_2_without_output(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    assert run_cli("prune", "--model", "bert-tiny", "--out", str(out), "--steps", "1,1,1,1", *args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("rate", [0.0, -3e-5, float("nan"), float("inf")])
def test_a_learning_rate_that_is_not_positive_is_refused(tmp_path: Path, rate: float) -> None:
    out = tmp_path / "out"
    config = PruneConfig(model="bert-tiny", data="synthetic", out=out, sparsities=SPARSITIES, joint_lr=rate)
    with pytest.raises(SettingError, match=r"^joint_lr .*: must be a positive finite number$"):
        prune_model(config)
    assert not out.exists()


def test_signed_sum_ranking_loses_weights_whose_signs_cancel() -> None:
    from rt3c.core.sparsify import pattern_sets

    # Position 0 is large with alternating signs across tiles (its signed sum is zero); position 1 is
    # small and positive. One pattern keeping one weight per tile: magnitudes keep position 0.
    rng = np.random.default_rng(0)
    weight = rng.normal(0.0, 0.01, (16, 2))
    weight[0::2, 0] = 1.0
    weight[1::2, 0] = -1.0
    weight[:, 1] = 0.1
    kept = np.ones((16, 1), dtype=bool)
    magnitude, signed = (
        pattern_sets(weight, kept, (1, 2), 1, [1], signed_ranking=flag)[0] for flag in (False, True)
    )
    assert magnitude.patterns[0].tolist() == [[True, False]]
    assert signed.patterns[0].tolist() == [[False, True]]


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    settings = TrainSettings(steps=100, learning_rate=1e-3, warmup=0.1)
    factors = [learning_rate_factor(step, settings) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert factors[-1] == pytest.approx(1 / 90)


def test_distillation_loss_is_zero_only_when_student_matches_teacher() -> None:
    teacher = torch.randn(8, 2)
    assert float(distillation_loss(teacher.clone(), teacher, temperature=2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(torch.randn(8, 2), teacher, temperature=2.0)) > 0.0


def test_hidden_state_loss_is_relative_and_ignores_padding() -> None:
    teacher = (torch.randn(2, 5, 8), torch.randn(2, 5, 8))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert float(hidden_state_loss(teacher, teacher, mask)) == pytest.approx(0.0)
    zeros = tuple(torch.zeros_like(t) for t in teacher)
    assert float(hidden_state_loss(zeros, teacher, mask)) == pytest.approx(1.0)
    # What the student puts at padded positions does not count.
    padded = tuple(t.clone() for t in teacher)
    for t in padded:
        t[0, 3:] += 100.0
    assert float(hidden_state_loss(padded, teacher, mask)) == pytest.approx(0.0)
    assert float(hidden_state_loss(padded, teacher, None)) > 1.0


def test_hidden_state_distillation_brings_a_pruned_student_closer_to_its_teacher() -> None:
    def trained(hidden_distill: float) -> float:
        torch.manual_seed(0)
        model = load_model("bert-tiny")
        data = load_dataset("synthetic", model)
        teacher = Teacher(model.module)
        masks = {
            name: torch.rand(weight.shape) < 0.3
            for name, weight in model.module.named_parameters()
            if name.startswith("bert.encoder.") and weight.dim() == 2
        }
        settings = TrainSettings(40, 1e-3, distill=0.7, hidden_distill=hidden_distill)
        train(model, data.train, settings, "student", level_masks=[masks], keep=masks, teacher=teacher)
        inputs, _ = data.validation.batch(torch.arange(64))
        with torch.no_grad():
            _, hidden = run_with_hidden_states(model.module, inputs)
            _, teacher_hidden = teacher.logits_and_hidden_states(inputs)
        return float(hidden_state_loss(hidden, teacher_hidden, inputs[1]))

    logits_only, with_hidden_states = trained(0.0), trained(1.0)
    assert with_hidden_states < 0.7 * logits_only


def test_hidden_state_distillation_needs_a_teacher_and_a_weight_of_at_least_0() -> None:
    model = load_model("bert-tiny")
    data = load_dataset("synthetic", model)
    with pytest.raises(
        SettingError, match=r"^hidden_distill .*: cannot distill hidden states without a teacher$"
    ):
        train(model, data.train, TrainSettings(2, 1e-3, hidden_distill=1.0), "no teacher")
    with pytest.raises(SettingError, match=r"^hidden_distill .*: must be >= 0$"):
        TrainSettings(2, 1e-3, hidden_distill=-1.0)


def test_a_second_prune_into_the_same_out_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    with exclusive_lock(out):  # another prune, still writing
        assert run_cli("prune", "--model", "bert-tiny", "--data", "synthetic", "--out", str(out)) == 2
    assert "another rt3c process is writing it" in capsys.readouterr().err
    assert not out.exists()


def test_teacher_runs_each_training_row_once_and_gives_its_own_logits() -> None:
    model = load_model("bert-tiny")
    data = load_dataset("synthetic", model)
    teacher = Teacher(model.module)
    rows_run: list[int] = []
    teacher.module.register_forward_hook(lambda module, inputs, output: rows_run.append(len(inputs[0])))
    first, overlapping = torch.arange(0, 8), torch.arange(4, 12)
    for index in (first, overlapping, first):
        inputs, _ = data.train.batch(index)
        expected = run(teacher.module, inputs)  # counted too: one full batch per call
        assert torch.allclose(teacher.logits(data.train, index, inputs), expected, atol=1e-5)
    # Besides the three direct runs of 8 rows: rows 0-7, then only the new rows 8-11, then nothing.
    assert rows_run == [8, 8, 8, 4, 8]
    # Another split's rows are other rows, even at the same indices.
    inputs, _ = data.test.batch(first)
    assert torch.allclose(teacher.logits(data.test, first, inputs), run(teacher.module, inputs), atol=1e-5)
    assert rows_run[5:] == [8, 8]


def test_a_precision_that_is_not_one_of_the_two_is_refused() -> None:
    with pytest.raises(SettingError, match=r"^precision .*: choose one of float32, bfloat16$"):
        TrainSettings(10, 1e-3, precision="bf16")
    with pytest.raises(SettingError, match=r"^precision .*: choose one of auto, float32, bfloat16$"):
        resolve_precision("bf16")
    with pytest.raises(SettingError, match="precision"):
        TrainSettings(10, 1e-3, precision="auto")  # a stage runs one arithmetic: auto is resolved first


# /proc/cpuinfo lines of three CPUs (flags shortened): bfloat16 instructions on the first and the third.
ZEN4_FLAGS = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni"
ZEN3_FLAGS = "flags\t\t: fpu sse2 avx2 fma bmi2 sha_ni"
NEOVERSE_V1_FEATURES = "Features\t: fp asimd aes sha2 asimddp sve i8mm bf16"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [(ZEN4_FLAGS, True), (ZEN3_FLAGS, False), (NEOVERSE_V1_FEATURES, True), ("processor\t: 0", False)],
)
def test_bfloat16_instructions_are_read_from_cpuinfo(cpuinfo: str, native: bool) -> None:
    assert native_bfloat16("processor\t: 0\n" + cpuinfo + "\n") is native


def test_auto_precision_is_bfloat16_only_on_a_cpu_with_bfloat16_instructions() -> None:
    assert resolve_precision("auto") == ("bfloat16" if native_bfloat16() else "float32")
    assert [resolve_precision(p) for p in ("float32", "bfloat16")] == ["float32", "bfloat16"]


def test_bfloat16_training_runs_the_linear_layers_in_bfloat16_and_learns_like_float32() -> None:
    def trained(precision: str) -> tuple[set[torch.dtype], set[torch.dtype], float]:
        torch.manual_seed(0)
        model = load_model("bert-tiny")
        data = load_dataset("synthetic", model)
        before = evaluate(model, data.validation)["accuracy"]
        outputs: set[torch.dtype] = set()
        layer = model.module.bert.encoder.layer[0].intermediate.dense
        hook = layer.register_forward_hook(lambda module, inputs, output: outputs.add(output.dtype))
        train(model, data.train, TrainSettings(60, 1e-3, precision=precision), precision)
        hook.remove()
        weights = {p.dtype for p in model.module.parameters()}
        gained = evaluate(model, data.validation)["accuracy"] - before
        return outputs, weights, gained

    float32_outputs, float32_weights, float32_gain = trained("float32")
    bfloat16_outputs, bfloat16_weights, bfloat16_gain = trained("bfloat16")
    assert float32_outputs == {torch.float32} and bfloat16_outputs == {torch.bfloat16}
    assert float32_weights == bfloat16_weights == {torch.float32}  # the weights themselves stay float32
    assert float32_gain > 0.2 and bfloat16_gain > float32_gain - 0.05
