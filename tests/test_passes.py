"""The passes on one-layer models: every matched linear form, random plans, the ONNX reference body in
onnxruntime, and `read_encoded_layers` reading back exactly what `encode_layer` made."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from test_sparse_format import layer_plans

from rt3c.core.errors import UserError
from rt3c.core.onnx_io import (
    LEVEL_SELECT_METADATA_KEY,
    WEIGHTS_METADATA_KEY,
    checked_proto,
    load_onnx,
    save_onnx_atomically,
)
from rt3c.core.plan import LayerLevel, LayerPlan, Level, Plan
from rt3c.core.sparse_format import encode_layer
from rt3c.passes.encode import (
    LEVEL_INPUT,
    EncodeSparseLinearPass,
    MaskWeightsPass,
    RemoveUnusedPass,
    SelectLevelPass,
)
from rt3c.passes.linear_layers import find_linear_layers, untie_weights
from rt3c.stages.encoded_model import read_encoded_layers

FORMS = ("matmul+add", "matmul", "gemm transB=1", "gemm transB=0", "gemm no bias")


def _linear_model(
    form: str, weight: np.ndarray, bias: np.ndarray, batch_shape: tuple[int, ...]
) -> onnx.ModelProto:
    """Y = X @ weight.T + bias as the exporter writes it in `form`; `weight` is torch `[out, in]`."""
    out_features, in_features = weight.shape
    transposed = form != "gemm transB=1"
    stored = numpy_helper.from_array(weight.T.copy() if transposed else weight, "w")
    initializers = [stored, numpy_helper.from_array(bias, "b")]
    if form == "matmul+add":
        nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    elif form == "matmul":
        nodes, initializers = [helper.make_node("MatMul", ["x", "w"], ["y"])], initializers[:1]
    elif form == "gemm no bias":
        nodes, initializers = [helper.make_node("Gemm", ["x", "w"], ["y"], transB=0)], initializers[:1]
    else:
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=int(not transposed))]
    x_shape = [*batch_shape, in_features]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*batch_shape, out_features])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.add(
        key=WEIGHTS_METADATA_KEY, value=json.dumps({"w": {"param": "w", "transposed": transposed}})
    )
    return model


def _batch_shape(form: str, rank_3: bool) -> tuple[int, ...]:
    """Gemm takes rank-2 inputs only; MatMul layers take any rank."""
    return (2, 3) if rank_3 and form.startswith("matmul") else (3,)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # not the note that `rt3c_level` is an overridable initializer
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)[0]


def _encode(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    ir_model = ir.serde.deserialize_model(model)
    EncodeSparseLinearPass(plan, "test")(ir_model)
    RemoveUnusedPass()(ir_model)
    encoded = ir.serde.serialize_model(ir_model)
    onnx.checker.check_model(encoded, full_check=True)
    return encoded


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer_plans(nested=True), st.sampled_from(FORMS), st.booleans())
def test_random_plans_run_in_onnxruntime(case, form: str, rank_3: bool) -> None:
    weight, layer_plan = case
    batch_shape = _batch_shape(form, rank_3)
    rng = np.random.default_rng(weight.shape[0] * 31 + weight.shape[1])
    bias = rng.standard_normal(weight.shape[0]).astype(np.float32)
    model = _linear_model(form, weight, bias, batch_shape)
    plan = Plan([Level(f"L{i}") for i in range(len(layer_plan.levels))], {"w": layer_plan})
    encoded = _encode(model, plan)
    # Nothing of the dense weight is left in the encoded model.
    assert "w" not in {init.name for init in encoded.graph.initializer}
    x = rng.standard_normal((*batch_shape, weight.shape[1])).astype(np.float32)
    has_bias = form not in ("matmul", "gemm no bias")
    for level in range(len(plan.levels)):
        got = _run(encoded, {"x": x, LEVEL_INPUT: np.array(level, dtype=np.int64)})
        masked = weight * layer_plan.mask(level)
        expected = _run(_linear_model(form, masked, bias, batch_shape), {"x": x})
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
        if has_bias:
            np.testing.assert_allclose(expected, x @ masked.T + bias, atol=1e-4, rtol=1e-4)


@settings(max_examples=30, deadline=None)
@given(layer_plans(nested=False))
def test_read_encoded_layers_gives_back_the_encoding(tmp_path_factory, case) -> None:
    weight, layer_plan = case
    model = _linear_model("matmul+add", weight, np.zeros(weight.shape[0], np.float32), (2,))
    plan = Plan([Level(f"L{i}") for i in range(len(layer_plan.levels))], {"w": layer_plan})
    path = tmp_path_factory.mktemp("passes") / "m.rt3.onnx"
    onnx.save(_encode(model, plan), path)
    (read,) = read_encoded_layers(path).values()
    expected = encode_layer(weight, layer_plan)
    np.testing.assert_array_equal(read.tile_run_ptr, expected.tile_run_ptr)
    np.testing.assert_array_equal(read.tile_col, expected.tile_col)
    assert len(read.values) == len(expected.values)
    for got_values, want_values in zip(read.values, expected.values, strict=True):
        np.testing.assert_array_equal(got_values, want_values)
    for level, (got, want) in enumerate(zip(read.levels, expected.levels, strict=True)):
        assert got.buffer == want.buffer
        np.testing.assert_array_equal(got.pattern_table, want.pattern_table)
        np.testing.assert_array_equal(got.chain_pattern, want.chain_pattern)
        np.testing.assert_array_equal(read.dense_weight(level), weight * layer_plan.mask(level))


@pytest.mark.parametrize("form", FORMS)
def test_finder_matches_every_form(form: str) -> None:
    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    model = ir.serde.deserialize_model(
        _linear_model(form, weight, np.ones(3, np.float32), _batch_shape(form, rank_3=True))
    )
    (layer,) = find_linear_layers(model, "test").values()
    np.testing.assert_array_equal(layer.weight(), weight)
    assert (layer.bias() is not None) == (form not in ("matmul", "gemm no bias"))


def test_gemm_with_alpha_is_not_a_plain_linear_layer(tmp_path: Path) -> None:
    model = _linear_model("gemm transB=1", np.ones((3, 4), np.float32), np.ones(3, np.float32), (2,))
    model.graph.node[0].attribute.append(helper.make_attribute("alpha", 2.0))
    assert find_linear_layers(ir.serde.deserialize_model(model), "test") == {}


def test_twenty_chains_on_a_non_multiple_shape() -> None:
    rng = np.random.default_rng(5)
    families, tile, shape = 20, (4, 4), (9, 30)  # 3 x 8 = 24 tiles, non-multiple shape
    orders = [rng.permutation(16) for _ in range(families)]
    ids = (np.arange(24) % families).reshape(3, 8).astype(np.int16)
    levels = []
    for nnz in (10, 5):
        masks = np.zeros((families, 16), dtype=bool)
        for family, order in enumerate(orders):
            masks[family, order[:nnz]] = True
        levels.append(LayerLevel(masks.reshape(families, *tile), ids.copy()))
    layer_plan = LayerPlan("w", shape, tile, levels)
    weight = rng.standard_normal(shape).astype(np.float32)
    plan = Plan([Level("L0"), Level("L1")], {"w": layer_plan})
    encoded = _encode(_linear_model("matmul+add", weight, np.zeros(9, np.float32), (3,)), plan)
    chains = {attr.i for node in encoded.graph.node for attr in node.attribute if attr.name == "n_chains"}
    assert chains == {families}
    x = rng.standard_normal((3, 30)).astype(np.float32)
    for level in range(2):
        got = _run(encoded, {"x": x, LEVEL_INPUT: np.array(level, dtype=np.int64)})
        np.testing.assert_allclose(got, x @ (weight * layer_plan.mask(level)).T, atol=1e-5, rtol=1e-5)


def test_passes_say_whether_they_modified_the_model() -> None:
    """`modified` is true exactly when the model changed, so a pass manager may skip or repeat work."""
    tile_masks = np.ones((1, 2, 2), dtype=bool)
    sparse = tile_masks.copy()
    sparse[0, 0, 0] = False
    layer_plan = LayerPlan(
        "w",
        (4, 4),
        (2, 2),
        [LayerLevel(tile_masks, np.zeros((2, 2), np.int16)), LayerLevel(sparse, np.zeros((2, 2), np.int16))],
    )
    plan = Plan([Level("L0"), Level("L1")], {"w": layer_plan})
    weight = np.arange(1, 17, dtype=np.float32).reshape(4, 4)

    def model() -> ir.Model:
        return ir.serde.deserialize_model(_linear_model("matmul+add", weight, np.ones(4, np.float32), (2,)))

    assert not MaskWeightsPass(plan, 0, "test")(model()).modified  # level 0 keeps every weight
    assert MaskWeightsPass(plan, 1, "test")(model()).modified
    assert not RemoveUnusedPass()(model()).modified  # nothing unused in the dense model
    encoded = model()
    assert EncodeSparseLinearPass(plan, "test")(encoded).modified
    assert RemoveUnusedPass()(encoded).modified  # the dense weight and Add are gone
    assert not RemoveUnusedPass()(encoded).modified
    assert SelectLevelPass(1)(encoded).modified


def test_level_selects_are_marked_and_the_mark_survives_a_file(tmp_path: Path) -> None:
    """Each encoded layer's level-select Gather carries `rt3c.level_select` = the layer's name: it is kept
    through save and load (NodeProto.metadata_props), onnxruntime runs the marked model, SelectLevelPass
    finds the Gathers by it, and refuses an all-levels model without it rather than guessing."""
    tile_masks = np.ones((1, 2, 2), dtype=bool)
    sparse = tile_masks.copy()
    sparse[0, 0, 0] = False
    levels = [
        LayerLevel(tile_masks, np.zeros((2, 2), np.int16)),
        LayerLevel(sparse, np.zeros((2, 2), np.int16)),
    ]
    plan = Plan([Level("L0"), Level("L1")], {"w": LayerPlan("w", (4, 4), (2, 2), levels)})
    weight = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
    bias = np.ones(4, np.float32)
    encoded = ir.serde.deserialize_model(_linear_model("matmul+add", weight, bias, (2,)))
    EncodeSparseLinearPass(plan, "test")(encoded)
    path = tmp_path / "marked.rt3.onnx"
    save_onnx_atomically(checked_proto(encoded), path)
    loaded = load_onnx(path)
    marked = [node for node in loaded.graph if LEVEL_SELECT_METADATA_KEY in node.metadata_props]
    assert [(node.op_type, node.metadata_props[LEVEL_SELECT_METADATA_KEY]) for node in marked] == [
        ("Gather", "w")
    ]
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for level in (0, 1):
        dense = weight * plan.layers["w"].mask(level)
        (y,) = session.run(None, {"x": x, LEVEL_INPUT: np.array(level, np.int64)})
        np.testing.assert_allclose(y, x @ dense.T + bias, rtol=1e-5)
    assert SelectLevelPass(1)(loaded).modified
    RemoveUnusedPass()(loaded)
    assert not any(LEVEL_SELECT_METADATA_KEY in node.metadata_props for node in loaded.graph)
    assert [node.attributes["level"].value for node in loaded.graph if node.op_type == "SparseLinear"] == [1]
    unmarked = load_onnx(path)
    for node in unmarked.graph:
        node.metadata_props.pop(LEVEL_SELECT_METADATA_KEY, None)
    with pytest.raises(UserError, match=f"has no node marked {LEVEL_SELECT_METADATA_KEY}"):
        SelectLevelPass(0)(unmarked)


def test_a_failed_precondition_leaves_the_model_alone() -> None:
    """Preconditions run in `requires`, before the pass touches anything, and are UserErrors."""
    weight = np.ones((4, 4), np.float32)
    proto = _linear_model("matmul+add", weight, np.zeros(4, np.float32), (2,))
    proto.opset_import[0].version = 12
    model = ir.serde.deserialize_model(proto)
    layer_plan = LayerPlan(
        "w", (4, 4), (2, 2), [LayerLevel(np.ones((1, 2, 2), bool), np.zeros((2, 2), np.int16))]
    )
    with pytest.raises(UserError, match="opset 12 is older than 13"):
        EncodeSparseLinearPass(Plan([Level("L0")], {"w": layer_plan}), "test")(model)
    assert ir.serde.serialize_model(model) == ir.serde.serialize_model(ir.serde.deserialize_model(proto))
    with pytest.raises(UserError, match="has no levels to select"):
        SelectLevelPass(0)(model)


def _shared_weight_model() -> ir.Model:
    """y = relu(x @ w) @ w: one initializer (no rt3c metadata) used by two linear layers, as ALBERT's."""
    weight = numpy_helper.from_array(np.random.default_rng(2).standard_normal((8, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w"], ["y"]),
        ],
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 8])],
        [weight],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_a_shared_weight_is_one_layer_per_use() -> None:
    """Uses are named NAME, NAME#1 in graph order, before and after encode unties them into initializers
    of their own; a plan that lists only NAME (as prune's, by torch parameter) covers NAME#1 too, and a
    plan of one use masks only that use (the other's reference weight stays whole)."""
    from rt3c.core.sparsify import one_shot_plan
    from rt3c.stages.encode import encode

    model = _shared_weight_model()
    first, second = (node for node in model.graph if node.op_type == "MatMul")
    layers = find_linear_layers(model, "m")
    assert list(layers) == ["w", "w#1"] and layers["w#1"].node is second
    untie_weights(model, "m")
    assert first.inputs[1].name == "w" and second.inputs[1].name == "w#1"
    assert {name: layer.node for name, layer in find_linear_layers(model, "m").items()} == {
        "w": first,
        "w#1": second,
    }
    weight = layers["w"].weight()
    plan = one_shot_plan({"w": weight}, [Level("L0"), Level("L1")], [0.5, 0.75], (4, 4), 4)
    covered = plan.with_shared_uses(["w", "w#1", "v#1"])
    assert list(covered.layers) == ["w", "w#1"] and covered.layers["w#1"].name == "w#1"
    assert np.array_equal(covered.layers["w#1"].mask(1), plan.layers["w"].mask(1))
    result = encode(_shared_weight_model(), plan, "m")
    assert result.dense_layers == [] and len(result.max_abs_diff) == 2
    only_second = Plan(plan.levels, {"w#1": dataclasses.replace(plan.layers["w"], name="w#1")})
    assert encode(_shared_weight_model(), only_second, "m").dense_layers == ["w"]
