"""Stage 1: export to ONNX, verified against torch, with a sidecar and the initializer map."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from rt3c.core.onnx_io import WEIGHTS_METADATA_KEY
from rt3c.stages.export import ExportResult, export_model
from rt3c.stages.models import load_model
from rt3c.stages.reference import run_onnx


def _check_export(result: ExportResult, model_name: str) -> dict:
    sidecar = json.loads(result.sidecar_path.read_text())
    assert sidecar["format"] == "rt3c-export"
    assert sidecar["model"]["source"] == model_name
    assert set(sidecar["versions"]) >= {"torch", "onnx", "onnxruntime"}
    assert sidecar["verification"]["max_abs_diff"] == result.max_abs_diff <= 1e-4
    proto = onnx.load(str(result.onnx_path))
    assert [i.name for i in proto.graph.input] == [i["name"] for i in sidecar["inputs"]]
    assert [o.name for o in proto.graph.output] == [o["name"] for o in sidecar["outputs"]]
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(metadata[WEIGHTS_METADATA_KEY]) == sidecar["weights"]
    return sidecar


def _check_weight_map(result: ExportResult, model_name: str) -> None:
    """Every mapped initializer holds exactly its torch parameter (transposed where it says so)."""
    params = dict(load_model(model_name).module.named_parameters())
    proto = onnx.load(str(result.onnx_path))
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    transposed = 0
    for init_name, entry in result.weights.items():
        expected = params[entry["param"]].detach().numpy()
        if entry["transposed"]:
            expected = expected.T
            transposed += 1
        np.testing.assert_array_equal(initializers[init_name], expected)
    assert transposed > 0  # Linear layers are exported as MatMul with pre-transposed weights


@pytest.mark.parametrize("model_name", ["bert-tiny", "rt3-lm", "minilm-l6"])
def test_zoo_models_export_and_match_torch(model_name: str, request: pytest.FixtureRequest) -> None:
    fixture = {"bert-tiny": "bert_tiny_export", "rt3-lm": "rt3_lm_export", "minilm-l6": "minilm_export"}
    result: ExportResult = request.getfixturevalue(fixture[model_name])
    sidecar = _check_export(result, model_name)
    _check_weight_map(result, model_name)
    linear_weights = [e["param"] for e in sidecar["weights"].values() if e["transposed"]]
    assert any("query" in name for name in linear_weights)


def test_bert_tiny_keeps_biases(bert_tiny_export: ExportResult) -> None:
    mapped = {entry["param"] for entry in bert_tiny_export.weights.values()}
    assert "bert.encoder.layer.0.attention.self.query.bias" in mapped
    assert "bert.encoder.layer.0.attention.output.LayerNorm.weight" in mapped


def test_export_batch_and_seq_len_are_baked_in(tmp_path) -> None:
    model = load_model("bert-tiny")
    result = export_model(model, tmp_path / "m.onnx", seq_len=8, batch=3)
    sidecar = json.loads(result.sidecar_path.read_text())
    assert sidecar["inputs"][0]["shape"] == [3, 8]
    assert sidecar["outputs"][0]["shape"] == [3, 2]
    inputs = model.example_inputs(3, 8, seed=5)
    (got,) = run_onnx(result.onnx_path, {"input_ids": inputs[0].numpy(), "attention_mask": inputs[1].numpy()})
    with torch.no_grad():
        expected = model.module(*inputs).logits.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_factory_model_exports(tmp_path, monkeypatch, repo_root) -> None:
    monkeypatch.chdir(repo_root / "tests")
    result = export_model(load_model("model_factories:tiny_lm"), tmp_path / "tiny.onnx", seq_len=4)
    assert result.max_abs_diff <= 1e-5
    assert {e["param"] for e in result.weights.values()} >= {"proj.weight", "embed.weight"}


def test_local_hf_directory_exports(tmp_path) -> None:
    model = load_model("bert-tiny")
    model.module.save_pretrained(tmp_path / "hf")
    result = export_model(load_model(str(tmp_path / "hf")), tmp_path / "hf.onnx", seq_len=8)
    assert result.max_abs_diff <= 1e-4
