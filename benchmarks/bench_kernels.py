"""Host wall time of one linear layer: rt3c's SparseLinear kernel vs dense TVM, onnxruntime and torch.

    .venv/bin/python benchmarks/bench_kernels.py [--quick]

For each shape (out x in), token count and sparsity s, a random weight is planned one-shot (4x4 tiles, 8
patterns, one level) and each contender computes Y = X W^T + b; the table gives milliseconds (median of
repeated runs) and the speedup of the sparse kernel over onnxruntime's dense MatMul next to the ideal
1 / (1 - s). The dense TVM kernel is TVM's legalized MatMul with rt3c's register-blocked schedule
(`rt3c.codegen.schedules`), the kernel rt3c uses for layers left dense; "ORT/dense" checks it against
onnxruntime (goal: >= 1/1.5).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
import tvm
from onnx import TensorProto, helper
from rich.console import Console
from rich.table import Table

from rt3c.codegen.onnx_ops import TensorInfo, lower_node
from rt3c.codegen.sparse_kernel import kernel_arguments, sparse_linear_kernel
from rt3c.codegen.targets import get_target
from rt3c.codegen.tvm_build import build_kernels
from rt3c.core.plan import Level
from rt3c.core.sparse_format import encode_layer
from rt3c.core.sparsify import one_shot_plan


def _median_ms(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _onnxruntime_matmul(x: np.ndarray, w_in_out: np.ndarray, b: np.ndarray, tmp: Path):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.shape[0], w_in_out.shape[1]])],
        [onnx.numpy_helper.from_array(w_in_out, "w"), onnx.numpy_helper.from_array(b, "b")],
    )
    path = tmp / "linear.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"x": x})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="768x768 only, 16 and 128 tokens")
    args = parser.parse_args()
    shapes = [(768, 768)] if args.quick else [(768, 768), (3072, 768), (768, 3072), (1536, 384)]
    tokens_list = [16, 128] if args.quick else [1, 16, 128]
    torch.set_num_threads(1)
    host = get_target("host")
    rng = np.random.default_rng(0)
    table = Table(
        "out x in",
        "tokens",
        "s",
        "sparse ms",
        "dense TVM ms",
        "ORT ms",
        "torch ms",
        "ORT/dense",
        "ORT/sparse",
        "ideal",
    )
    with tempfile.TemporaryDirectory() as tmp:
        for n, k in shapes:
            w = rng.standard_normal((n, k)).astype(np.float32)
            b = rng.standard_normal(n).astype(np.float32)
            for tokens in tokens_list:
                x = rng.standard_normal((tokens, k)).astype(np.float32)
                ort_ms = _median_ms(_onnxruntime_matmul(x, np.ascontiguousarray(w.T), b, Path(tmp)), 20)
                wt, xt, bt = torch.from_numpy(w), torch.from_numpy(x), torch.from_numpy(b)
                torch_ms = _median_ms(lambda wt=wt, xt=xt, bt=bt: torch.nn.functional.linear(xt, wt, bt), 20)
                node = helper.make_node("MatMul", ["x", "w"], ["y"])
                infos = {
                    "x": TensorInfo((tokens, k), "float32"),
                    "w": TensorInfo((k, n), "float32"),
                    "y": TensorInfo((tokens, n), "float32"),
                }
                dense = lower_node(node, "dense", infos, {"w": np.ascontiguousarray(w.T)}, 18)
                dense_module = build_kernels(dense.functions, host)
                symbol = next(iter(dense.functions))
                dense_args = [
                    tvm.runtime.tensor(a)
                    for a in (x, np.ascontiguousarray(w.T), np.zeros((tokens, n), np.float32))
                ]
                dense_ms = _median_ms(lambda m=dense_module, s=symbol, a=dense_args: m[s](*a), 20)
                for s in (0.5, 0.75, 0.9):
                    plan = one_shot_plan({"w": w}, [Level("L0")], [s], (4, 4), 8)
                    layer = encode_layer(w, plan.layers["w"])
                    module = build_kernels(
                        {"sparse": sparse_linear_kernel("sparse", layer, 0, tokens, host)}, host
                    )
                    arrays = [x, *kernel_arguments(layer, 0, b), np.zeros((tokens, n), np.float32)]
                    tensors = [tvm.runtime.tensor(a) for a in arrays]
                    sparse_ms = _median_ms(lambda m=module, t=tensors: m["sparse"](*t), 20)
                    table.add_row(
                        f"{n}x{k}", str(tokens), f"{plan.sparsity(0):.2f}", f"{sparse_ms:.3f}", f"{dense_ms:.3f}",
                        f"{ort_ms:.3f}", f"{torch_ms:.3f}", f"{ort_ms / dense_ms:.2f}", f"{ort_ms / sparse_ms:.2f}", f"{1 / (1 - plan.sparsity(0)):.2f}",
                    )  # fmt: skip
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
