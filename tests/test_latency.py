"""The latency model: counted instructions of real kernels under qemu, host timing, the fitted cost model."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rt3c.codegen.targets import get_target
from rt3c.core.errors import UserError
from rt3c.core.plan import Level
from rt3c.core.sparse_format import encode_layer
from rt3c.core.sparsify import one_shot_plan
from rt3c.stages.kernel_program import dense_linear_step, linear_program, sparse_linear_step
from rt3c.stages.latency.calibrate import linear_cost_model
from rt3c.stages.latency.cost_model import LatencyModel
from rt3c.stages.latency.measure import measure_plan, measure_program
from rt3c.stages.latency.units import check_source, cycles_per_unit, host_clock_hz
from rt3c.stages.models import load_model

TOKENS = 16


def _bert_tiny_weights() -> dict[str, np.ndarray]:
    module = load_model("bert-tiny").module
    return {
        name: p.detach().numpy()
        for name, p in module.named_parameters()
        if re.search(r"encoder\.layer\.\d+\..*\.weight$", name) and p.ndim == 2
    }


@pytest.mark.slow
def test_cost_model_predicts_counted_kernels_it_was_not_fitted_on() -> None:
    weights = _bert_tiny_weights()
    target = get_target("aarch64")
    model, _ = linear_cost_model(weights, (4, 4), TOKENS, target, "qemu")
    assert max(model.relative_errors()) < 0.1
    again, hit = linear_cost_model(weights, (4, 4), TOKENS, target, "qemu")
    assert hit and again == model
    # A plan unlike the calibration ones (other block ratio, pattern count and nonzeros per tile).
    plan = one_shot_plan(
        {name: w.astype(np.float64) for name, w in weights.items()},
        [Level("L0"), Level("L1"), Level("L2")],
        [0.45, 0.65, 0.85],
        (4, 4),
        patterns=4,
        block_ratio=0.3,
    )
    shapes = {name: (w.shape[0], w.shape[1]) for name, w in weights.items()}
    latency = LatencyModel("aarch64", "qemu", model, 0.0, shapes)
    measured = measure_plan(latency, plan.layers, weights)
    assert measured.source == "qemu" and measured.unit == "instructions"
    for level in range(3):
        predicted = latency.predict_units(plan.layers, level)
        assert predicted == pytest.approx(measured.level_units(level), rel=0.08)
    # Sparser levels execute fewer instructions; the dense kernel of a shape more than any sparse level.
    units = [measured.level_units(level) for level in range(3)]
    assert units == sorted(units, reverse=True)
    assert latency.dense_units() > units[0]


def test_host_timing_of_each_kernel() -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 64)).astype(np.float32)
    target = get_target("host")
    plan = one_shot_plan({"w": weight.astype(np.float64)}, [Level("L0"), Level("L1")], [0.5, 0.8], (4, 4), 4)
    steps = [
        sparse_linear_step("sparse_w", encode_layer(weight, plan.layers["w"]), None, TOKENS, target),
        dense_linear_step("dense_w", weight, TOKENS, levels=2),
    ]
    cost = measure_program(linear_program("t", ["L0", "L1"], TOKENS, steps, target), target, "host")
    assert cost.unit == "seconds" and {k.sparse for k in cost.kernels} == {True, False}
    assert all(0 < k.units < 1e-2 for k in cost.kernels)
    # Each level calls its own sparse kernel and the shared dense one once.
    for level in range(2):
        assert sum(k.calls[level] for k in cost.kernels) == 2
        assert cost.level_units(level) == pytest.approx(
            cost.level_units(level, sparse=True) + cost.level_units(level, sparse=False)
        )
    assert cycles_per_unit("host", 1.0) == host_clock_hz() > 1e8
    assert cycles_per_unit("qemu", 1.3) == 1.3


def test_bad_latency_source() -> None:
    with pytest.raises(UserError, match=r"^latency fast: "):
        check_source("fast", get_target("aarch64"))
    with pytest.raises(UserError, match=r"^latency qemu: "):
        check_source("qemu", get_target("host"))
