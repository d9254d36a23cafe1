"""Hugging Face model directories of every supported family, built here from small random configs (no
downloads): exported by `rt3c export`, planned with three levels, compiled for aarch64 (which verifies the
host build and the qemu-aarch64 build at every level against onnxruntime); labels from the config; and
the architectures rt3c refuses."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from test_cli import run_cli

SMALL = {"vocab_size": 128, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Random init leaves biases zero and LayerNorm scales one, which the exporter folds away; perturbed,
    the graph has a trained model's shape (as bert-tiny in the zoo)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.02)
    return model


FAMILIES: dict[str, Callable[[], torch.nn.Module]] = {
    "bert": lambda: transformers.BertForSequenceClassification(
        transformers.BertConfig(**SMALL, num_hidden_layers=1, max_position_embeddings=32, num_labels=3)
    ),
    "distilbert": lambda: transformers.DistilBertForSequenceClassification(
        transformers.DistilBertConfig(
            vocab_size=128, dim=32, n_layers=1, n_heads=4, hidden_dim=64, max_position_embeddings=32
        )
    ),
    "roberta": lambda: transformers.RobertaForSequenceClassification(
        transformers.RobertaConfig(**SMALL, num_hidden_layers=1, max_position_embeddings=34, pad_token_id=1)
    ),
    # Two layers in one group: the second runs the first's weights again (layers named NAME#1).
    "albert": lambda: transformers.AlbertForSequenceClassification(
        transformers.AlbertConfig(**SMALL, embedding_size=16, num_hidden_layers=2, max_position_embeddings=32)
    ),
    "electra": lambda: transformers.ElectraForSequenceClassification(
        transformers.ElectraConfig(
            **SMALL, embedding_size=16, num_hidden_layers=1, max_position_embeddings=32
        )
    ),
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=128, n_embd=32, n_layer=1, n_head=4, n_positions=32)
    ),
}


def _save(name: str, directory: Path) -> Path:
    torch.manual_seed(0)
    _perturbed(FAMILIES[name]()).save_pretrained(directory)
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_exports_plans_and_compiles(family: str, tmp_path: Path) -> None:
    model = _save(family, tmp_path / family)
    exported, plan, project = tmp_path / "model.onnx", tmp_path / "plan.json", tmp_path / "project"
    assert run_cli("export", "--model", str(model), "--out", str(exported), "--seq-len", "8") == 0
    assert run_cli("plan", str(exported), "--sparsity", "0.5,0.7,0.8", "--out", str(plan)) == 0
    layers = json.loads(plan.read_text())["layers"]
    if family == "albert":
        assert sum(name.endswith("#1") for name in layers) == 6  # q, k, v, dense, ffn, ffn_output again
    argv = ["compile", str(exported), "--plan", str(plan), "--frequencies", "3,2,1", "-t", "aarch64"]
    assert run_cli(*argv, "--out", str(project)) == 0
    build = json.loads((project / "rt3c-build.json").read_text())
    assert len(build["max_abs_diff"]) == 3 and max(build["max_abs_diff"]) <= 1e-4
    levels = json.loads((project / "report.json").read_text())["levels"]
    sparsity = [level["sparsity"] for level in levels]
    assert 0.4 < sparsity[0] < sparsity[1] < sparsity[2]  # every level runs its own sparse kernels
    assert all(level["instructions"] for level in levels)  # and was counted under qemu-aarch64
    sidecar = json.loads(exported.with_suffix(".json").read_text())
    if family == "gpt2":  # logits for every position over the vocabulary, no cache
        assert build["outputs"][0]["shape"] == [1, 8, 128] and [i["name"] for i in build["inputs"]] == [
            "input_ids"
        ]
    else:
        labels = 3 if family == "bert" else 2
        assert build["outputs"][0]["shape"] == [1, labels] and len(sidecar["model"]["labels"]) == labels


def test_labels_and_problem_type_from_the_config(tmp_path: Path) -> None:
    """A 3-label BERT with named labels and a problem type: the export keeps its three logits, the names
    and the problem type."""
    config = transformers.BertConfig(
        **SMALL,
        num_hidden_layers=1,
        max_position_embeddings=32,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        problem_type="single_label_classification",
    )
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "bert3")
    out = tmp_path / "m.onnx"
    assert run_cli("export", "--model", str(tmp_path / "bert3"), "--out", str(out), "--seq-len", "8") == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["model"]["labels"] == ["negative", "neutral", "positive"]
    assert sidecar["model"]["problem_type"] == "single_label_classification"
    assert sidecar["outputs"][0]["shape"] == [1, 3]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]},
            "architecture T5ForConditionalGeneration (model_type 't5') is not supported",
        ),
        ({"model_type": "llama"}, "architecture no 'architectures' (model_type 'llama') is not supported"),
        ([1, 2], "config.json: expected a JSON object"),
    ],
)
def test_unsupported_architectures_are_refused(
    config: object, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    out = tmp_path / "m.onnx"
    assert run_cli("export", "--model", str(tmp_path / "model"), "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(tmp_path / "model") in err[0], err
    assert not out.exists()


def test_prune_covers_the_families_blocks(tmp_path: Path) -> None:
    """prune's default layers are the linear layers inside each family's blocks (DistilBERT's
    transformer.layer.N, ALBERT's albert_layers.N too)."""
    from rt3c.stages.models import load_model
    from rt3c.stages.prune.layers import DEFAULT_LAYERS, select_layers

    for family in ("distilbert", "albert", "roberta"):
        chosen = select_layers(load_model(str(_save(family, tmp_path / family))), DEFAULT_LAYERS, (4, 4))
        assert len(chosen) == 6 and not any("classifier" in name for name in chosen), family


def test_prune_refuses_gpt2_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, out = _save("gpt2", tmp_path / "gpt2"), tmp_path / "pruned"
    assert run_cli("prune", "--model", str(model), "--data", "synthetic", "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Conv1D modules (GPT-2), which prune does not train" in err[0], err
    assert not out.exists()


@pytest.mark.parametrize(
    ("settings", "found"),
    [
        ({"num_labels": 1}, "has 1 labels and problem type None"),
        ({"num_labels": 3, "problem_type": "multi_label_classification"}, "problem type multi_label"),
    ],
)
def test_two_class_data_needs_a_single_label_classifier(settings: dict, found: str, tmp_path: Path) -> None:
    """The classification data sets label examples 0 or 1: a regression or multi-label head from the
    config is refused by name instead of trained with the wrong loss."""
    from rt3c.core.errors import UserError
    from rt3c.stages.datasets import load_dataset
    from rt3c.stages.models import load_model

    config = transformers.BertConfig(**SMALL, num_hidden_layers=1, max_position_embeddings=32, **settings)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(UserError, match="data synthetic: labels examples 0 or 1") as error:
        load_dataset("synthetic", load_model(str(tmp_path / "bert")))
    assert found in str(error.value)
