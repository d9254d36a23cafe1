"""Kernels of rt3c.codegen run on the host against numpy (the targets are covered end to end in test_compile)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import tvm
from onnx import helper

from rt3c.codegen.kernel_cache import write_kernels
from rt3c.codegen.onnx_ops import TensorInfo, lower_node
from rt3c.codegen.schedules import schedule_matmul
from rt3c.codegen.sparse_kernel import kernel_arguments, sparse_linear_kernel
from rt3c.codegen.targets import get_target
from rt3c.codegen.tvm_build import build_kernels
from rt3c.core.plan import Level
from rt3c.core.sparse_format import encode_layer
from rt3c.core.sparsify import one_shot_plan


def _run(module: tvm.runtime.Module, symbol: str, arrays: list[np.ndarray]) -> np.ndarray:
    tensors = [tvm.runtime.tensor(array) for array in arrays]
    module[symbol](*tensors)
    return tensors[-1].numpy()


@pytest.mark.parametrize(
    ("shape", "tile", "patterns", "sparsities", "tokens"),
    [
        ((24, 40), (4, 4), 8, [0.5, 0.75, 0.9], 3),  # multiples of the tile, three nested levels
        ((19, 13), (4, 4), 4, [0.6, 0.8], 5),  # edge tiles padded in both directions
        ((10, 33), (2, 8), 20, [0.7], 1),  # 20 chains (20 unrolled run loops), one token
        ((36, 20), (4, 4), 8, [0.5, 0.8], 75),  # token blocks of 32 and a partial last block
        ((12, 27), (1, 8), 8, [0.6, 0.7, 0.8], 4),  # row-segment tiles (RT3's shape), padded columns
        # row-segment tiles taken two at a time: runs of several tiles (odd and even), two sections
        ((20, 203), (1, 8), 4, [0.5, 0.7], 40),
        ((9, 64), (1, 4), 2, [0.4], 16),
        # one token (the GEMV template): three sections at the densest level, edge tiles both ways
        ((19, 13), (4, 4), 8, [0.4, 0.6, 0.8], 1),
        ((12, 27), (1, 8), 8, [0.3, 0.5, 0.7], 1),
    ],
)
def test_sparse_linear_matches_numpy_at_every_level(shape, tile, patterns, sparsities, tokens):
    rng = np.random.default_rng(sum(shape) + tokens)
    weight = rng.standard_normal(shape).astype(np.float32)
    bias = rng.standard_normal(shape[0]).astype(np.float32)
    x = rng.standard_normal((tokens, shape[1])).astype(np.float32)
    levels = [Level(f"L{index}") for index in range(len(sparsities))]
    plan = one_shot_plan({"w": weight}, levels, sparsities, tile, patterns)
    layer = encode_layer(weight, plan.layers["w"])
    functions = {
        f"sparse_l{level}": sparse_linear_kernel(f"sparse_l{level}", layer, level, tokens, get_target("host"))
        for level in range(len(levels))
    }
    module = build_kernels(functions, get_target("host"))
    outputs = []
    for level in range(len(levels)):
        arguments = [x, *kernel_arguments(layer, level, bias), np.zeros((tokens, shape[0]), np.float32)]
        got = _run(module, f"sparse_l{level}", arguments)
        expected = x @ layer.dense_weight(level).T + bias
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        outputs.append(got)
    # The levels differ (they prune different weights) although they read the same value buffer.
    assert all(not np.allclose(a, b) for a, b in itertools.pairwise(outputs))


@pytest.mark.parametrize(
    ("x_shape", "w_shape"),
    # blocked, one row (16-vector j tile), odd, batched
    [((128, 96), (96, 64)), ((1, 40), (40, 512)), ((5, 13), (13, 7)), ((2, 3, 9, 8), (2, 3, 8, 10))],
)
def test_scheduled_matmul_matches_numpy(x_shape, w_shape):
    rng = np.random.default_rng(x_shape[0])
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    expected = x @ w
    infos = {
        "x": TensorInfo(x_shape, "float32"),
        "w": TensorInfo(w_shape, "float32"),
        "y": TensorInfo(expected.shape, "float32"),
    }
    lowered = lower_node(helper.make_node("MatMul", ["x", "w"], ["y"]), "mm", infos, {}, 18)
    (symbol, func), *_ = lowered.functions.items()
    host = get_target("host")
    scheduled = schedule_matmul(func, host.vector_floats)
    assert not scheduled.same_as(func)  # the schedule applied: this is the register-blocked kernel
    got = _run(build_kernels({symbol: func}, host), symbol, [x, w, np.zeros_like(expected)])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("tokens", "attributes", "constant_weight", "kernels"),
    [
        (1, {"transB": 1}, True, 1),  # a pooler or classifier head: one scheduled kernel, bias fused
        (16, {"transB": 1}, True, 1),
        (3, {"transB": 1, "alpha": 0.5, "beta": 2.0}, True, 2),  # a scaled bias: TVM's kernels as they were
        (4, {"transB": 1}, False, 2),  # B computed at run time: transposed by a kernel of TVM's
    ],
)
def test_gemm_with_a_constant_weight_is_transposed_once_and_scheduled(
    tokens: int, attributes: dict[str, float], constant_weight: bool, kernels: int
) -> None:
    """TVM's import transposed a Gemm's constant B in a kernel of its own at every inference, and its fused
    matmul + bias kernel ran unscheduled (minilm-l6's pooler on aarch64: 0.84 M instructions)."""
    rng = np.random.default_rng(tokens)
    x = rng.standard_normal((tokens, 24)).astype(np.float32)
    w = rng.standard_normal((32, 24)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    expected = attributes.get("alpha", 1.0) * x @ w.T + attributes.get("beta", 1.0) * b
    infos = {
        "x": TensorInfo(x.shape, "float32"),
        "w": TensorInfo(w.shape, "float32"),
        "b": TensorInfo(b.shape, "float32"),
        "y": TensorInfo(expected.shape, "float32"),
    }
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], **attributes)
    constants = {"w": w, "b": b} if constant_weight else {"b": b}
    lowered = lower_node(node, "gemm", infos, constants, 18)
    assert len(lowered.calls) == kernels
    host = get_target("host")
    if kernels == 1:
        ((symbol, func),) = lowered.functions.items()
        assert not schedule_matmul(func, host.vector_floats).same_as(func)
    module = build_kernels(lowered.functions, host)
    arrays = {"x": x, "w": w, "b": b, **lowered.constants}
    for symbol, arguments, written in lowered.calls:
        info = lowered.temporaries.get(written) or infos[written]
        arrays[written] = _run(
            module, symbol, [*(arrays[a] for a in arguments[:-1]), np.zeros(info.shape, np.float32)]
        )
    np.testing.assert_allclose(arrays["y"], expected, rtol=1e-5, atol=1e-4)


def test_kernel_cache_reuses_a_build_until_a_kernel_or_the_target_changes(tmp_path):
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((12, 8)).astype(np.float32)
    plan = one_shot_plan({"w": weight}, [Level("L0"), Level("L1")], [0.5, 0.75], (4, 4), 4)
    layer = encode_layer(weight, plan.layers["w"])

    def kernels(level: int) -> dict:
        return {"sparse": sparse_linear_kernel("sparse", layer, level, 2, get_target("host"))}

    cache = tmp_path / "cache"
    first, second = tmp_path / "first.o", tmp_path / "second.o"
    assert not write_kernels(kernels(0), get_target("host"), first, cache)
    assert write_kernels(kernels(0), get_target("host"), second, cache)
    assert first.read_bytes() == second.read_bytes()
    # Another pattern table (level 1) and another target are new entries, compiled once each.
    assert not write_kernels(kernels(1), get_target("host"), tmp_path / "level1.o", cache)
    assert not write_kernels(kernels(0), get_target("cortex-m4"), tmp_path / "m4.c", cache)
    assert write_kernels(kernels(0), get_target("cortex-m4"), tmp_path / "m4_again.c", cache)
    assert "sparse" in (tmp_path / "m4_again.c").read_text()
    assert len(list(cache.iterdir())) == 6  # 3 entries, each with its record of size and digest


@pytest.mark.parametrize("damage", ["truncated", "altered", "no-record"])
def test_a_damaged_kernel_cache_entry_is_detected_and_rebuilt(
    damage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncated entry used to be copied as it was, and every later compile of the model failed until
    the cache was deleted by hand."""
    weight = np.random.default_rng(4).standard_normal((8, 8)).astype(np.float32)
    plan = one_shot_plan({"w": weight}, [Level("L0")], [0.5], (4, 4), 2)
    kernels = {
        "sparse": sparse_linear_kernel(
            "sparse", encode_layer(weight, plan.layers["w"]), 0, 2, get_target("host")
        )
    }
    cache = tmp_path / "cache"
    first = tmp_path / "first.o"
    assert not write_kernels(kernels, get_target("host"), first, cache)
    (entry,) = cache.glob("*.o")
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    elif damage == "altered":
        entry.write_bytes(entry.read_bytes().replace(b"sparse", b"SPARSE"))
    else:
        entry.with_name(entry.name + ".sha256").unlink()
    again = tmp_path / "again.o"
    assert not write_kernels(kernels, get_target("host"), again, cache)  # rebuilt, not copied
    problem = "has no size and digest record" if damage == "no-record" else "is damaged"
    assert f"rt3c: warning: cache entry {entry} {problem}" in capsys.readouterr().err
    assert again.read_bytes() == first.read_bytes() == entry.read_bytes()
    assert write_kernels(kernels, get_target("host"), tmp_path / "third.o", cache)  # and cached again
