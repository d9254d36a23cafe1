"""Generated C as a firmware engineer embeds it: two models with their own prefixes and a main of our own,
linked into one program for the host, aarch64 (qemu-aarch64) and Cortex-M4 (qemu-system-arm), both run
and checked against onnxruntime."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_cli import run_cli

from rt3c.codegen.targets import get_target
from rt3c.core.onnx_io import deterministic_feeds, load_onnx
from rt3c.runtime_c.project import TEMPLATES, check_prefix, default_prefix
from rt3c.stages.compile import compile_model
from rt3c.stages.encode import encode_model, plan_model
from rt3c.stages.export import ExportResult
from rt3c.stages.lower import level_model
from rt3c.stages.reference import run_onnx

# Two plans of one model: the same kernel names (`__tvm_ffi_op3_add`, `sparse_5_L0`, ...) with other
# patterns baked in, the same TVM globals, and levels of their own; one with int8 weights as C arrays, which
# its compile also verifies against onnxruntime at every level (the other is checked by the firmware only).
MODELS = {
    "bert_tiny": {"sparsities": [0.5, 0.7, 0.8], "tile": (4, 4), "frequencies": [1_400_000, 1_000_000, 800_000]},
    "sparse_bert": {"sparsities": [0.6, 0.9], "tile": (8, 8), "frequencies": [1_000_000, 500_000],
                    "weights_format": "c", "weights": "int8", "verify": True},
}  # fmt: skip
SEED = 3


@pytest.fixture(scope="module")
def encoded_models(
    bert_tiny_export: ExportResult, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("firmware")
    encoded = {}
    for prefix, settings in MODELS.items():
        plan = directory / f"{prefix}.plan.json"
        plan_model(
            bert_tiny_export.onnx_path,
            plan,
            sparsities=settings["sparsities"],
            tile=settings["tile"],
            patterns=4,
            frequencies_khz=settings["frequencies"],
        )
        encoded[prefix] = encode_model(
            bert_tiny_export.onnx_path,
            plan,
            directory / f"{prefix}.rt3.onnx",
            weights=settings.get("weights", "float32"),
        ).path
    return encoded


def _references(encoded: Path) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The seeded inputs, and onnxruntime's logits at every level of the encoded model."""
    model = load_onnx(encoded)
    expected = []
    for level in range(len(model.metadata_props["rt3c.levels"].split(","))):
        reference = level_model(model, level)
        feeds = deterministic_feeds(reference, seed=SEED)
        path = encoded.with_suffix(f".L{level}.onnx")
        onnx.save(reference, path)
        expected.append(run_onnx(path, feeds)[0])
    return feeds, expected


def _c_array(name: str, array: np.ndarray) -> str:
    return f"static const int64_t {name}[] = {{{', '.join(str(int(v)) for v in array.reshape(-1))}}};\n"


def _main(feeds: dict[str, np.ndarray]) -> str:
    """Both models at every level, interleaved (each keeps its own level and arena), logits printed."""
    source = '#include <stdio.h>\n#include "bert_tiny_model.h"\n#include "sparse_bert_model.h"\n'
    source += _c_array("ids", feeds["input_ids"]) + _c_array("mask", feeds["attention_mask"])
    source += "static float logits[BERT_TINY_OUTPUT_LOGITS_ELEMENTS];\n"
    # The second model runs in memory of ours (aligned by hand: C99 has no alignment specifier).
    source += (
        "static double memory[(SPARSE_BERT_ARENA_BYTES + SPARSE_BERT_ARENA_ALIGNMENT) / sizeof(double)];\n"
    )
    source += """
static void print(const char *model, int level) {
  size_t i;
  printf("%s %d", model, level);
  for (i = 0; i < BERT_TINY_OUTPUT_LOGITS_ELEMENTS; ++i) printf(" %.9g", (double)logits[i]);
  printf("\\n");
}

int main(void) {
  int level;
  void *ours = (void *)(((uintptr_t)memory + SPARSE_BERT_ARENA_ALIGNMENT - 1) & ~(uintptr_t)(SPARSE_BERT_ARENA_ALIGNMENT - 1));
  if (bert_tiny_init() != BERT_TINY_OK) return 1;
  if (sparse_bert_init_with_arena(ours, SPARSE_BERT_ARENA_BYTES) != SPARSE_BERT_OK) return 1;
  for (level = 0; level < BERT_TINY_NUM_LEVELS; ++level) {
    if (bert_tiny_set_level(level) != BERT_TINY_OK) return 2;
    if (sparse_bert_set_level(level % SPARSE_BERT_NUM_LEVELS) != SPARSE_BERT_OK) return 3;
    if (bert_tiny_invoke(ids, mask, logits) != BERT_TINY_OK) return 4;
    print("bert_tiny", bert_tiny_active_level());
    if (sparse_bert_invoke(ids, mask, logits) != SPARSE_BERT_OK) return 5;
    print("sparse_bert", sparse_bert_active_level());
  }
  return 0;
}
"""
    return source


def _link(target_name: str, projects: dict[str, Path], out: Path) -> list[str]:
    """Compile our main and link it with both libraries; the command that runs the program."""
    target = get_target(target_name)
    main = out / "main.c"
    command = [target.cc, *target.cflags, "-Wall", "-Wextra", "-Werror", str(main)]
    command += [f"-I{project}" for project in projects.values()]
    if target.board is not None:
        # Our own linker script: the MPS2 example's, with the second model's weights in PSRAM too.
        script = (projects["bert_tiny"] / "mps2.ld").read_text()
        script = script.replace(
            "*(.rodata.bert_tiny_weights)", "*(.rodata.bert_tiny_weights)\n    *(.rodata.sparse_bert_weights)"
        )
        (out / "two_models.ld").write_text(script)
        command += [str(TEMPLATES / "cortex_m" / "startup.c"), f"-T{out / 'two_models.ld'}"]
    command += [str(project / f"lib{prefix}.a") for prefix, project in projects.items()]
    command += [*target.ldflags, "-o", str(out / "firmware")]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return target.command(str(out / "firmware"), [])


@pytest.mark.parametrize("target", ["host", "aarch64", "cortex-m4"])
def test_two_models_in_one_program(target: str, encoded_models: dict[str, Path], tmp_path: Path) -> None:
    projects = {}
    for prefix, encoded in encoded_models.items():
        projects[prefix] = tmp_path / prefix
        compile_model(
            encoded, projects[prefix], target_name=target, prefix=prefix,
            frequencies_khz=MODELS[prefix]["frequencies"], verify=MODELS[prefix].get("verify", False),
            weights_format=MODELS[prefix].get("weights_format", "incbin"),
        )  # fmt: skip
        # Only the API is global: nothing else of one model can meet the other's.
        nm = get_target(target).cc.removesuffix("gcc") + "nm" if target != "host" else "nm"
        symbols = subprocess.run(
            [nm, "-g", "--defined-only", str(projects[prefix] / f"lib{prefix}.a")],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        defined = re.findall(r"^[0-9a-f]+ [A-Z] (\S+)$", symbols, re.MULTILINE)
        assert defined and all(name.startswith(f"{prefix}_") for name in defined), defined
    feeds, _ = _references(encoded_models["bert_tiny"])
    (tmp_path / "main.c").write_text(_main(feeds))
    run = subprocess.run(
        _link(target, projects, tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    expected = {prefix: _references(encoded)[1] for prefix, encoded in encoded_models.items()}
    lines = run.stdout.split("\n")[:-1]
    assert len(lines) == 2 * len(MODELS["bert_tiny"]["sparsities"])
    for line in lines:
        prefix, level, *values = line.split()
        got = np.array(values, np.float32).reshape(expected[prefix][int(level)].shape)
        assert np.max(np.abs(got - expected[prefix][int(level)])) <= 1e-4, (prefix, level)
    assert {line.split()[:2][0] for line in lines} == set(MODELS)
    if target == "cortex-m4":  # linked with --gc-sections: sparse_bert's unused default arena is dropped
        symbols = subprocess.run(
            ["arm-none-eabi-nm", str(tmp_path / "firmware")], capture_output=True, text=True, check=True
        ).stdout
        assert symbols.count(" rt3_default_arena\n") == 1


@pytest.mark.parametrize(
    ("model_name", "prefix"),
    [("bert-tiny", "bert_tiny"), ("MiniLM L6 v2", "minilm_l6_v2"), ("2-layer", "m_2_layer"), ("int", "int_model"),
     ('*/ system("x"); /*' * 4, "system_x_system_x_system_x_syste"), ("", "m")],
)  # fmt: skip
def test_the_default_prefix_is_a_c_identifier_made_of_the_model_name(model_name: str, prefix: str) -> None:
    assert default_prefix(model_name) == prefix == check_prefix(prefix)


@pytest.mark.parametrize("prefix", ["Bert", "bert-tiny", "_x", "9x", "static", "x" * 33, "é"])
def test_a_bad_prefix_is_refused(prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "project"
    assert run_cli("compile", str(tmp_path / "none.onnx"), "--prefix", prefix, "--out", str(out)) == 2
    assert f"--prefix {prefix!r:.40}: expected a lower-case C identifier" in capsys.readouterr().err
    assert not out.exists()
