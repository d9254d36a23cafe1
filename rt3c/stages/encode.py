"""Stage 2: `model.onnx` + `plan.json` -> `model.rt3.onnx`, verified level by level with onnxruntime.

Entry points: `encode` (in memory) and `encode_model` (files: the `rt3c encode` command), and
`plan_model` (`rt3c plan`, the one-shot planner over the exported weights). Reading an encoded model back
is `rt3c.stages.encoded_model`.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from rt3c.core.checks import finite_array
from rt3c.core.errors import SettingError, UserError, VerificationError
from rt3c.core.onnx_io import (
    SOURCE_METADATA_KEY,
    bind_input_shapes,
    checked_proto,
    deterministic_feeds,
    load_onnx,
    save_onnx_atomically,
)
from rt3c.core.plan import Level, Plan
from rt3c.core.plan_limits import MAX_LEVELS, check_tile_fits
from rt3c.core.progress import step
from rt3c.core.quantize import WeightType
from rt3c.core.sparsify import one_shot_plan
from rt3c.passes.encode import (
    LEVEL_INPUT,
    EncodeSparseLinearPass,
    MaskWeightsPass,
    RemoveUnusedPass,
    SelectLevelPass,
    sparse_linear_nodes,
)
from rt3c.passes.linear_layers import LinearLayer, find_linear_layers, untie_weights
from rt3c.passes.quantize_weights import QuantizeWeightsPass
from rt3c.passes.trim_vocabulary import KeptVocabulary, TrimVocabularyPass
from rt3c.stages.reference import reference_session, run_onnx

TOLERANCE = 1e-5


@dataclass(frozen=True)
class EncodeResult:
    model: ir.Model
    """The encoded model, checked (`checked_proto`) and verified."""
    max_abs_diff: list[float]
    """Per verified level: max |ORT(encoded) - ORT(masked dense)|."""
    dense_layers: list[str]
    """Linear layers of the model that the plan does not list: they stay dense."""
    path: Path | None = None
    """Where `encode_model` wrote it."""
    vocab_coverage: float | None = None
    """With a vocabulary trimmed to a data set's (`encode_model`'s `vocab`): the share of its test split's
    tokens that the kept ids cover."""


def encode_model(
    onnx_path: Path,
    plan_path: Path,
    out: Path,
    level: int | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    weights: WeightType = "float32",
    vocab: str | None = None,
) -> EncodeResult:
    """`encode` on files: the exported model at `onnx_path` with the plan at `plan_path`, written to `out`
    only once checked and verified. `shapes` fixes the model's dynamic input dimensions (by input name;
    the encoded model keeps them fixed). `vocab` names a data set whose training split's token ids (and the
    special tokens) are all the embedding tables keep (`data_vocabulary`)."""
    plan = Plan.load(plan_path)  # first: given a bad plan and a bad model, the plan's error is shown
    model = load_onnx(onnx_path)
    bind_input_shapes(model, shapes or {}, str(onnx_path))
    kept, coverage = (None, None) if vocab is None else vocabulary_of(model, str(onnx_path), vocab)
    result = encode(model, plan, str(onnx_path), level, weights, kept)
    save_onnx_atomically(checked_proto(result.model), out)
    return dataclasses.replace(result, path=out, vocab_coverage=coverage)


def vocabulary_of(model: ir.Model, source: str, data: str) -> tuple[KeptVocabulary, float]:
    """The vocabulary that the data set `data` uses, tokenized by the tokenizer of the model `model` was
    exported from (its `rt3c.source` metadata), and the share of the test split it covers."""
    origin = model.metadata_props.get(SOURCE_METADATA_KEY)
    if origin is None:
        raise SettingError(
            "vocab",
            f"{source} was not exported by rt3c (no {SOURCE_METADATA_KEY}), so its tokenizer is unknown",
            data,
        )
    from rt3c.stages.data_vocabulary import data_vocabulary  # tokenizing the data loads torch

    with step(f"keep the token ids of the {data} training split (tokenizer of {origin})"):
        found = data_vocabulary(origin, data)
    return found.vocabulary, found.test_coverage


def encode(
    exported: ir.Model,
    plan: Plan,
    source: str,
    level: int | None = None,
    weights: WeightType = "float32",
    vocab: KeptVocabulary | None = None,
) -> EncodeResult:
    """Encode every planned layer of `exported` (left as it is) with `weights` (int8: also the dense linear
    layers and the embedding tables); with `level`, keep only that level; with `vocab`, the input embedding
    tables keep only its ids' rows (`TrimVocabularyPass`). Verified level by level against
    the masked dense model (with int8, its weights quantized alike); `source` names the model in errors.
    Every input must have a fixed shape (`bind_input_shapes`). The plan's entry for a shared weight also
    covers the weight's further uses it does not list (`Plan.with_shared_uses`)."""
    bind_input_shapes(exported, {}, source)
    with step(f"encode {len(plan.layers)} layers x {len(plan.levels)} levels, {weights} weights"):
        model = _copy(exported)
        untie_weights(model, source)
        found = find_linear_layers(model, source)
        plan = plan.with_shared_uses(found)
        dense_layers = sorted(set(found) - set(plan.layers))
        planned_weights({name: layer for name, layer in found.items() if name in plan.layers}, source)
        if vocab is not None:
            TrimVocabularyPass(vocab, source)(model)
        if weights == "int8":
            QuantizeWeightsPass([found[name] for name in dense_layers], source)(model)
        encode_pass = EncodeSparseLinearPass(plan, source, weights)
        encode_pass(model)
        for warning in encode_pass.warnings:  # on stderr: stdout carries the result line
            print(f"rt3c: warning: {warning}", file=sys.stderr)
        if level is not None:
            SelectLevelPass(level)(model)
        RemoveUnusedPass()(model)
        if level is not None:
            _keep_read_values(model)
        encoded = checked_proto(model)
    with step("verify every level against the masked dense model with onnxruntime"):
        diffs = verify_encoding(
            exported,
            plan,
            source,
            encoded,
            [level] if level is not None else range(len(plan.levels)),
            weights,
            vocab,
        )
    return EncodeResult(model, diffs, dense_layers)


def _copy(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def _keep_read_values(model: ir.Model) -> None:
    """Cut each SparseLinear node's value buffer to what it reads: its tiles' first `nnz` values, which
    section-major storage puts first (docs/FORMAT.md). After SelectLevelPass the rest of a shared buffer
    belongs to denser levels that are gone."""
    for node in sparse_linear_nodes(model.graph):
        values = node.inputs[3]
        read = node.inputs[2].const_value.numpy().shape[0] * node.attributes["nnz"].value
        array = values.const_value.numpy()
        if array.size > read:
            values.const_value = ir.tensor(np.ascontiguousarray(array[:read]), name=values.name)
            values.shape = ir.Shape([read])


def verify_encoding(
    exported: ir.Model,
    plan: Plan,
    source: str,
    encoded: onnx.ModelProto,
    levels: Iterable[int],
    weights: WeightType = "float32",
    vocab: KeptVocabulary | None = None,
) -> list[float]:
    """Per level, max |ORT(encoded) - ORT(reference)|, refused above TOLERANCE. The reference is the
    exported model with the level's masks applied, with `vocab` its tables trimmed alike, and with int8 its
    weights quantized and dequantized as the encoding does (independently of the tile format), so this
    checks the encoding, not int8's error nor the dropped tokens'."""
    feeds = deterministic_feeds(ir.serde.serialize_model(exported))
    all_levels = any(i.name == LEVEL_INPUT for i in encoded.graph.input)
    diffs = []
    with tempfile.TemporaryDirectory(prefix="rt3c-verify-") as tmp:
        encoded_path = Path(tmp) / "encoded.onnx"
        onnx.save(encoded, encoded_path)
        encoded_session = reference_session(encoded_path)  # one load for every level
        for level in levels:
            reference = _copy(exported)
            untie_weights(reference, source)
            if vocab is not None:
                TrimVocabularyPass(vocab, source)(reference)
            if weights == "int8":
                found = find_linear_layers(reference, source)
                QuantizeWeightsPass(
                    [layer for name, layer in found.items() if name not in plan.layers], source
                )(reference)
            MaskWeightsPass(plan, level, source, weights)(reference)
            reference_path = Path(tmp) / f"masked-{level}.onnx"
            onnx.save(ir.serde.serialize_model(reference), reference_path)
            level_feeds = {**feeds, LEVEL_INPUT: np.array(level, dtype=np.int64)} if all_levels else feeds
            got = encoded_session.run(None, level_feeds)
            expected = run_onnx(reference_path, feeds)
            diff = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected, strict=True))
            if not diff <= TOLERANCE:
                raise VerificationError(
                    f"level {level}: encoded model differs from the masked one by {diff:.3g}"
                )
            diffs.append(diff)
    return diffs


def plan_model(onnx_path: Path, out: Path, **settings: Any) -> Plan:
    """`one_shot` on files: the plan of the exported model at `onnx_path`, written to `out`; `settings` are
    `one_shot`'s."""
    plan = one_shot(load_onnx(onnx_path), str(onnx_path), **settings)
    plan.save(out)
    return plan


def one_shot(
    model: ir.Model,
    source: str,
    *,
    sparsities: list[float],
    tile: tuple[int, int],
    patterns: int,
    block_ratio: float | None = None,
    frequencies_khz: list[int] | None = None,
    layers: str | None = None,
) -> Plan:
    """The one-shot plan for the exported model's linear layers (all but the output layer by default);
    `source` names the model in errors."""
    found = find_linear_layers(model, source)
    if not found:
        raise UserError(f"{source}: has no linear layer with a constant weight")
    graph_outputs = set(model.graph.outputs)
    if layers is None:
        chosen = {name: layer for name, layer in found.items() if layer.output not in graph_outputs}
    else:
        try:
            pattern = re.compile(layers)
        except re.error as exc:
            raise SettingError("layers", f"not a regular expression ({exc})", f"{layers!r}") from None
        chosen = {name: layer for name, layer in found.items() if pattern.search(name)}
    if not chosen:
        raise SettingError("layers", f"matches none of {source}'s linear layers", f"{layers!r}")
    if frequencies_khz is not None and len(frequencies_khz) != len(sparsities):
        raise SettingError("frequencies_khz", f"{len(frequencies_khz)} values for {len(sparsities)} levels")
    if not 1 <= len(sparsities) <= MAX_LEVELS:
        raise SettingError("sparsities", f"{len(sparsities)} levels, expected 1 to {MAX_LEVELS}")
    weights = planned_weights(chosen, source)
    check_tile_fits(tile, {name: weight.shape for name, weight in weights.items()})
    levels = [Level(f"L{i}", frequencies_khz[i] if frequencies_khz else None) for i in range(len(sparsities))]
    return one_shot_plan(
        weights,
        levels,
        sparsities,
        tile,
        patterns,
        block_ratio,
        model=model.metadata_props.get(SOURCE_METADATA_KEY),
    )


def planned_weights(layers: dict[str, LinearLayer], source: str) -> dict[str, np.ndarray]:
    """The weights of `layers`; NaN or inf in one is refused, naming its tensor (a plan or encoding of it
    would rank, mask and verify garbage)."""
    weights = {}
    for name, layer in layers.items():
        weights[name] = layer.weight()
        finite_array(weights[name], f"{source}: tensor {layer.weight_value.name} (layer {name})")
    return weights
