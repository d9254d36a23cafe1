"""The generated C runtime: level-switch cost, end-to-end latency per level, flash and RAM per target.

    .venv/bin/python benchmarks/bench_runtime.py [--tables switch,latency,sizes] [--work DIR]

Every model is exported at 64 tokens, planned one-shot (3 levels, 4x4 tiles, 8 patterns) and compiled with
`rt3c compile --prefix bench` (each build verified at every level against onnxruntime), all in this run.

- switch: bert-tiny's runtime (`level_switch_bench.c`). Host wall time per call of `bench_set_level` and
  `bench_on_frequency`, and the median time of an inference right after a level switch minus one at the
  same level without a switch (boundary and cache effects). On aarch64 (qemu-aarch64) the executed
  instructions of the same calls, and of `bench_invoke`'s own code per inference (the inference boundary,
  the input/output copies and the step loop; the kernels are functions of their own) with a switch at
  every boundary minus without. Goal: <= 1 us.
- latency: minilm-l6, per level, the CPU time of one inference of the host build (`rt3_main LEVEL ...
  REPEATS`, clock()) vs onnxruntime (one thread, CPU time) on the dense model and on the encoded model of
  that level; median of interleaved rounds of `--repeats` back-to-back inferences each. Goal (issue 18):
  the sparsest level (>= 0.8) >= 3.0x faster than onnxruntime dense (the first goal was 2.5x).
- sizes: per model, plan and target, the project's report (`report.json`, from the sections of the
  prelinked library object `bench.o`): bytes of code (runtime and kernels, incl. their read-only tables),
  weights (float constants) and indices (integer constants), flash (all three, with alignment), the
  activations and kernel scratch of the arena, and the library's RAM (arena and descriptors). Cortex-M builds
  link the weights into the MPS2 boards' 16 MiB PSRAM; larger models are listed as not fitting.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from rich.console import Console
from rich.table import Table

from rt3c.codegen.targets import Target, get_target
from rt3c.core.onnx_io import deterministic_feeds, load_onnx
from rt3c.core.plan import Plan
from rt3c.runtime_c.build_files import PSRAM_MIB
from rt3c.stages.compile import compile_model
from rt3c.stages.encode import encode_model, plan_model
from rt3c.stages.export import export_model
from rt3c.stages.instruction_count import count_instructions
from rt3c.stages.lower import level_model
from rt3c.stages.models import load_model

TOKENS = 64
PREFIX = "bench"
"""The projects' prefix (`rt3c compile --prefix`): files bench_model.c, bench.o, libbench.a; API bench_*."""
HARNESS = Path(__file__).resolve().parent / "level_switch_bench.c"
CORTEX_M = ("cortex-m4", "cortex-m7")


@dataclass(frozen=True)
class Case:
    model: str
    sparsities: tuple[float, ...]
    layers: str | None
    """Plan layers (regex); None: every linear layer but the output layer."""
    targets: tuple[str, ...]

    @property
    def label(self) -> str:
        levels = "/".join(f"{s:g}" for s in self.sparsities)
        return f"{self.model} {levels}" + (" all layers" if self.layers else "")


BERT_TINY = Case("bert-tiny", (0.5, 0.7, 0.8), None, ("host", "aarch64", *CORTEX_M))
MINILM = Case("minilm-l6", (0.5, 0.7, 0.8), None, ("host", "aarch64"))
SIZE_CASES = [
    BERT_TINY,
    Case("rt3-lm", (0.5, 0.7, 0.8), None, ("host", "aarch64")),
    # rt3-lm fits the MPS2 PSRAM once its 800x2000 output layer is planned too, at sparser levels.
    Case("rt3-lm", (0.7, 0.8, 0.9), ".", ("host", "aarch64", *CORTEX_M)),
    MINILM,
]


class Workspace:
    """Exports, plans, encoded models and compiled projects under one folder, each made once."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def exported(self, model: str) -> Path:
        path = self.root / model / "model.onnx"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            export_model(load_model(model), path, seq_len=TOKENS)
        return path

    def _case_dir(self, case: Case) -> Path:
        return self.root / case.model / re.sub(r"\W+", "_", case.label)

    def encoded(self, case: Case) -> tuple[Path, Path]:
        """(encoded model, plan) of `case`."""
        directory = self._case_dir(case)
        plan, encoded = directory / "plan.json", directory / "model.rt3.onnx"
        if not encoded.is_file():
            directory.mkdir(parents=True, exist_ok=True)
            plan_model(
                self.exported(case.model), plan, sparsities=list(case.sparsities), tile=(4, 4), patterns=8,
                layers=case.layers, frequencies_khz=[1_400_000, 1_000_000, 800_000],
            )  # fmt: skip
            encode_model(self.exported(case.model), plan, encoded)
        return encoded, plan

    def project(self, case: Case, target: str) -> Path:
        out = self._case_dir(case) / target
        if not (out / "rt3c-build.json").is_file():
            encoded, plan = self.encoded(case)
            compile_model(encoded, out, target_name=target, plan_path=plan, prefix=PREFIX)
        return out


# -- switch ----------------------------------------------------------------------------------------


def _build_harness(project: Path, target: Target) -> Path:
    binary = project / "level_switch_bench"
    command = [target.cc, *target.cflags, "-Wall", "-Wextra", "-Werror", f"-I{project}", str(HARNESS)]
    library = project / f"lib{PREFIX}.a"
    subprocess.run([*command, str(library), *target.ldflags, "-o", str(binary)], check=True)
    return binary


def _run_harness(binary: Path, mode: str, n: int) -> str:
    return subprocess.run([str(binary), mode, str(n)], capture_output=True, text=True, check=True).stdout


def switch_table(work: Workspace, rounds: int) -> Table:
    host_binary = _build_harness(work.project(BERT_TINY, "host"), get_target("host"))
    set_ns = statistics.median(float(_run_harness(host_binary, "set", 10_000_000)) for _ in range(rounds))
    freq_ns = statistics.median(float(_run_harness(host_binary, "freq", 10_000_000)) for _ in range(rounds))
    pairs = [_run_harness(host_binary, "pairs", 2000).split() for _ in range(rounds)]
    switched, same = (statistics.median(float(pair[i]) for pair in pairs) for i in (0, 1))

    aarch64 = get_target("aarch64")
    project = work.project(BERT_TINY, "aarch64")
    binary = _build_harness(project, aarch64).relative_to(project)
    set_level, on_frequency, invoke = (f"{PREFIX}_{name}" for name in ("set_level", "on_frequency", "invoke"))
    counts = {}
    for mode, n in (("set", 1000), ("freq", 1000), ("same", 20), ("switch", 20)):
        regions = count_instructions(
            aarch64, binary, [mode, str(n)], {f: [f] for f in (set_level, on_frequency, invoke)}, cwd=project
        )
        counts[mode] = {name: total / n for name, total in regions.regions.items()}

    table = Table("bert-tiny runtime", "host ns", "aarch64 instructions", title="(a) level switch")
    table.add_row(set_level, f"{set_ns:.1f}", f"{counts['set'][set_level]:.0f}")
    table.add_row(on_frequency, f"{freq_ns:.1f}", f"{counts['freq'][on_frequency]:.0f}")
    table.add_row(
        "inference right after a switch - without one",
        f"{switched - same:+.0f}",
        f"{counts['switch'][invoke] - counts['same'][invoke]:+.0f} (in {invoke})",
    )
    table.add_row(
        f"{invoke}'s own code per inference",
        "",
        f"{counts['same'][invoke]:.0f} (boundary, copies, {_steps(project)} steps)",
    )
    table.add_row("one inference without a switch (for scale)", f"{same:.0f}", "")
    return table


def _steps(project: Path) -> int:
    source = (project / f"{PREFIX}_model.c").read_text()
    return int(re.search(r"#define RT3_NUM_STEPS (\d+)", source).group(1))


# -- latency ---------------------------------------------------------------------------------------


def _c_inference_ms(project: Path, level: int, repeats: int) -> tuple[float, list[np.ndarray]]:
    manifest = json.loads((project / "rt3c-build.json").read_text())
    ins = [str(project / f"bench_in{i}.bin") for i in range(len(manifest["inputs"]))]
    outs = [str(project / f"bench_out{i}.bin") for i in range(len(manifest["outputs"]))]
    command = [str(project / "rt3_main"), str(level), *ins, *outs, str(repeats)]
    line = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    count, micros = re.fullmatch(r"(\d+) inferences: (\d+) us\s*", line).groups()
    outputs = [
        np.fromfile(path, dtype=spec["dtype"]).reshape(spec["shape"])
        for path, spec in zip(outs, manifest["outputs"], strict=True)
    ]
    return int(micros) / 1e3 / int(count), outputs


def _onnxruntime_session(model: onnx.ModelProto) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _onnxruntime_ms(session: onnxruntime.InferenceSession, feeds: dict, repeats: int) -> float:
    start = time.process_time()
    for _ in range(repeats):
        session.run(None, feeds)
    return (time.process_time() - start) * 1e3 / repeats


def latency_table(work: Workspace, rounds: int, repeats: int) -> tuple[Table, float]:
    """The table, and the speedup of the sparsest level over onnxruntime dense."""
    project = work.project(MINILM, "host")
    encoded_path, plan_path = work.encoded(MINILM)
    plan = Plan.load(plan_path)
    dense = onnx.load(work.exported(MINILM.model))
    feeds = deterministic_feeds(dense)
    manifest = json.loads((project / "rt3c-build.json").read_text())
    for i, spec in enumerate(manifest["inputs"]):
        feeds[spec["name"]].astype(spec["dtype"]).tofile(project / f"bench_in{i}.bin")
    encoded = load_onnx(encoded_path)
    dense_session = _onnxruntime_session(dense)
    dense_session.run(None, feeds)
    table = Table(
        "level", "sparsity", "C ms", "ORT dense ms", "ORT encoded ms", "dense / C", "encoded / C", "|C-ORT|",
        title=f"(b) minilm-l6, {TOKENS} tokens, host, one thread",
    )  # fmt: skip
    speedup = 0.0
    for level in range(len(plan.levels)):
        session = _onnxruntime_session(level_model(encoded, level))
        (expected,) = session.run(None, feeds)
        c_ms, ort_dense_ms, ort_encoded_ms = [], [], []
        _, (got,) = _c_inference_ms(project, level, 1)
        for _ in range(rounds):
            c_ms.append(_c_inference_ms(project, level, repeats)[0])
            ort_dense_ms.append(_onnxruntime_ms(dense_session, feeds, repeats))
            ort_encoded_ms.append(_onnxruntime_ms(session, feeds, 3))
        c, d, e = (statistics.median(v) for v in (c_ms, ort_dense_ms, ort_encoded_ms))
        speedup = d / c
        table.add_row(
            f"L{level}", f"{plan.sparsity(level):.3f}", f"{c:.2f}", f"{d:.2f}", f"{e:.2f}",
            f"{d / c:.2f}x", f"{e / c:.2f}x", f"{float(np.max(np.abs(got - expected))):.1e}",
        )  # fmt: skip
    return table, speedup


# -- sizes -----------------------------------------------------------------------------------------


def _size_cells(project: Path) -> list[str]:
    """Code, weights, indices, flash, activations, scratch and RAM bytes from the project's report.json."""
    report = json.loads((project / "report.json").read_text())
    flash, ram = report["flash_bytes"], report["ram_bytes"]
    values = [flash["code"], flash["weights"], flash["indices"], flash["total"]]
    return [f"{value:,}" for value in (*values, ram["activations"], ram["scratch"], ram["total"])]


def sizes_table(work: Workspace) -> Table:
    table = Table(
        "model, plan", "target", "code B", "weights B", "indices B", "flash B", "activations B",
        "scratch B", "RAM B", title=f"(c) flash and RAM, {TOKENS} tokens",
    )  # fmt: skip
    for case in SIZE_CASES:
        for target_name in case.targets:
            table.add_row(case.label, target_name, *_size_cells(work.project(case, target_name)))
        if not set(CORTEX_M) & set(case.targets):
            _, weights, indices, *_ = _size_cells(work.project(case, case.targets[0]))
            table.add_row(
                case.label, "cortex-m4/m7", "", weights, indices, f"> {PSRAM_MIB} MiB PSRAM", "does not fit"
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="switch,latency,sizes", help="Which tables, comma-separated.")
    parser.add_argument("--rounds", type=int, default=7, help="Timing rounds (medians are reported).")
    parser.add_argument(
        "--repeats",
        type=int,
        default=30,
        help="Back-to-back inferences per round and engine: the first after the other engine ran refills "
        "the caches it evicted, so few repeats measure partly cold inferences.",
    )
    parser.add_argument("--work", type=Path, help="Keep exports and projects here (reused when rerun).")
    args = parser.parse_args()
    tables = args.tables.split(",")
    console = Console(width=150)
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        work = Workspace(args.work or Path(tmp))
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        console.print(f"commit {commit}")
        if "switch" in tables:
            console.print(switch_table(work, args.rounds))
        if "latency" in tables:
            table, speedup = latency_table(work, args.rounds, args.repeats)
            console.print(table)
            console.print(f"sparsest level vs onnxruntime dense: {speedup:.2f}x (goal >= 3.0x)")
        if "sizes" in tables:
            console.print(sizes_table(work))


if __name__ == "__main__":
    main()
