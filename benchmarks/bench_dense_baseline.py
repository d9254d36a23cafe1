"""rt3c's dense TVM kernel against independent GEMM libraries on ARM, in executed instructions under qemu.

    .venv/bin/python benchmarks/bench_dense_baseline.py [--target aarch64|cortex-m4] [--cmsis-dsp DIR]

Every sparse speedup and battery ratio rt3c reports on ARM is relative to its own dense kernel (TVM's
legalized MatMul with rt3c's register-blocked schedule), so that kernel is checked here against libraries
built from registry packages, on minilm-l6's three linear-layer shapes (out x in: 384x384, 1536x384,
384x1536) at 16 tokens (the exported sequence length) and at 1 token (a GEMV: decoding, streaming):

- aarch64 (qemu-aarch64): Eigen 3 (Debian `libeigen3-dev`, header only, its packed GEBP kernel with NEON
  packets; compiled by `aarch64-linux-gnu-g++` from `g++-aarch64-linux-gnu`) and CMSIS-DSP's
  `arm_mat_mult_f32` in its NEON variant (also packed and blocked);
- Cortex-M4 (qemu-system-arm -M mps2-an386): CMSIS-DSP's `arm_mat_mult_f32`, its scalar loop-unrolled
  variant (`ARM_MATH_LOOPUNROLL`), the matrix multiply Arm ships for that core.

CMSIS-DSP's C sources come from PyPI's `cmsisdsp` sdist (downloaded with pip when --cmsis-dsp is not
given); CMSIS Core's headers are not in it, so it is built with `__GNUC_PYTHON__`, the switch its own
Python build uses to drop them (it only turns off the integer DSP intrinsics, which fp32 matmul does not use).

A library's count is that of one call: the program (benchmarks/dense_baseline/gemm_main.c) runs the GEMM
1 and 3 times and the difference of the two totals is halved, so startup, file I/O and any first-call
setup cancel out. The TVM kernel's count covers its own functions (`kernel_functions`), as in
bench_arm_kernels.py. Every output is checked against numpy. Library flags: -O3 and the CPU rt3c's TVM
target names (cortex-a72) on aarch64; the target's own C flags on the Cortex-M4.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from bench_arm_kernels import measure_steps
from rich.console import Console
from rich.table import Table

from rt3c.codegen.targets import Target, get_target
from rt3c.runtime_c.build_files import PSRAM_MIB, PSRAM_ORIGIN
from rt3c.runtime_c.project import TEMPLATES, environment
from rt3c.stages.instruction_count import count_instructions
from rt3c.stages.kernel_program import dense_linear_step

SHAPES = ((384, 384), (1536, 384), (384, 1536))
"""minilm-l6's linear layers, out x in: attention projections, FFN up, FFN down."""
TOKENS = (1, 16)
SOURCES = Path(__file__).resolve().parent / "dense_baseline"
EIGEN_INCLUDE = Path("/usr/include/eigen3")
CMSIS_DSP_VERSION = "1.10.3"
TOLERANCE = 1e-3  # float32 sums over up to 1536 products in another order than numpy's
REPS = (1, 3)


LIBRARY_PACKAGES = {"aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu", "eigen3": "libeigen3-dev"}
"""What the aarch64 libraries need beyond rt3c's own tools -> the Debian package that provides it."""


def check_library_tools() -> None:
    """Exit naming the Debian packages to install when Eigen or the aarch64 C++ compiler is missing."""
    missing = [
        package
        for tool, package in LIBRARY_PACKAGES.items()
        if not (EIGEN_INCLUDE.is_dir() if tool == "eigen3" else shutil.which(tool))
    ]
    if missing:
        raise SystemExit(f"the aarch64 libraries need `apt-get install {' '.join(missing)}`")


def cmsis_dsp_sources(directory: Path) -> Path:
    """CMSIS-DSP's source tree from PyPI's cmsisdsp sdist, downloaded and unpacked into `directory`."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "cmsisdsp", f"cmsisdsp=={CMSIS_DSP_VERSION}",
         "-d", str(directory), "-q"],
        check=True,
    )  # fmt: skip
    subprocess.run(["tar", "xzf", f"cmsisdsp-{CMSIS_DSP_VERSION}.tar.gz"], cwd=directory, check=True)
    return directory / f"cmsisdsp-{CMSIS_DSP_VERSION}"


def _cmsis_flags(cmsis: Path) -> list[str]:
    return ["-D__GNUC_PYTHON__", f"-I{cmsis / 'Include'}", f"-I{cmsis / 'PrivateInclude'}", f"-I{SOURCES}"]


def _compile(command: list[str], output: Path) -> Path:
    result = subprocess.run([*command, "-o", str(output)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"building {output.name} failed:\n{result.stderr.strip()}")
    return output


def build_aarch64_libraries(cmsis: Path, directory: Path) -> dict[str, Path]:
    """The GEMM program linked with Eigen and with CMSIS-DSP's NEON matmul: library name -> binary."""
    cc, cxx = "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++"
    flags = ["-O3", "-mcpu=cortex-a72", f"-I{SOURCES}"]
    main = _compile([cc, *flags, "-c", str(SOURCES / "gemm_main.c")], directory / "gemm_main.o")
    eigen = _compile(
        [cxx, *flags, "-DEIGEN_DONT_PARALLELIZE", f"-I{EIGEN_INCLUDE}", "-c", str(SOURCES / "gemm_eigen.cc")],
        directory / "gemm_eigen.o",
    )
    neon = [*flags, "-DARM_MATH_NEON", *_cmsis_flags(cmsis)]
    matrix = cmsis / "Source" / "MatrixFunctions"
    cmsis_objects = [
        _compile([cc, *neon, "-c", str(source)], directory / f"{source.stem}.o")
        for source in (SOURCES / "gemm_cmsis.c", matrix / "arm_mat_mult_f32.c", matrix / "_arm_mat_mult_neon_buffers.c")
    ]  # fmt: skip
    return {
        "Eigen 3.4": _compile([cxx, "-static", str(main), str(eigen)], directory / "gemm_eigen"),
        "CMSIS-DSP (NEON)": _compile(
            [cc, "-static", str(main), *map(str, cmsis_objects), "-lm"], directory / "gemm_cmsis"
        ),
    }


def build_cortex_m_library(cmsis: Path, target: Target, directory: Path) -> dict[str, Path]:
    """The GEMM firmware for the target's qemu board, linked with CMSIS-DSP's scalar matmul."""
    board = {
        "board": target.board, "prefix": "bench", "psram_origin": PSRAM_ORIGIN[target.board or ""],
        "psram_mib": PSRAM_MIB,
    }  # fmt: skip
    linker_script = directory / "mps2.ld"
    linker_script.write_text(environment().get_template("cortex_m/mps2.ld.j2").render(**board))
    sources = [
        SOURCES / "gemm_main.c", SOURCES / "gemm_cmsis.c",
        cmsis / "Source" / "MatrixFunctions" / "arm_mat_mult_f32.c", TEMPLATES / "cortex_m" / "startup.c",
    ]  # fmt: skip
    command = [
        target.cc, *target.cflags, "-DARM_MATH_LOOPUNROLL", *_cmsis_flags(cmsis), *map(str, sources),
        *target.ldflags, f"-T{linker_script}",
    ]  # fmt: skip
    return {"CMSIS-DSP (scalar)": _compile(command, directory / "gemm_cmsis")}


def library_instructions(
    target: Target, binary: Path, x: np.ndarray, weight_in_out: np.ndarray, directory: Path
) -> int:
    """Executed instructions of one call of `binary`'s GEMM on x and the [in, out] weight, output checked."""
    (directory / "x.bin").write_bytes(x.tobytes())
    (directory / "w.bin").write_bytes(weight_in_out.tobytes())
    m, k = x.shape
    n = weight_in_out.shape[1]
    expected = x.astype(np.float64) @ weight_in_out.astype(np.float64)
    totals = []
    for reps in REPS:
        args = [str(m), str(k), str(n), str(reps), "x.bin", "w.bin", "y.bin"]
        # Semihosting passes a bare-metal program a short command line: paths relative to the directory.
        totals.append(count_instructions(target, Path(binary.name), args, {}, directory).total)
        got = np.fromfile(directory / "y.bin", np.float32).reshape(m, n)
        if not np.allclose(got, expected, rtol=TOLERANCE, atol=TOLERANCE):
            raise SystemExit(
                f"{binary.name} on {target.name}: differs from numpy by {np.abs(got - expected).max()}"
            )
    return (totals[1] - totals[0]) // (REPS[1] - REPS[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["aarch64", "cortex-m4"], action="append", help="default: both")
    parser.add_argument(
        "--cmsis-dsp", type=Path, help="an unpacked cmsisdsp sdist (default: pip download it)"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-dense-baseline-") as tmp:
        work = Path(tmp)
        cmsis = args.cmsis_dsp or cmsis_dsp_sources(work)
        for target_name in args.target or ["aarch64", "cortex-m4"]:
            target = get_target(target_name)
            target.check_tools()
            build_dir = work / target_name
            build_dir.mkdir()
            if target.board is None:
                check_library_tools()
                libraries = build_aarch64_libraries(cmsis, build_dir)
            else:
                libraries = build_cortex_m_library(cmsis, target, build_dir)
            table = Table(
                "out x in", "tokens", "TVM dense insns", *(f"{name} insns" for name in libraries),
                *(f"TVM / {name}" for name in libraries), title=f"{target_name} (qemu instruction counts)",
            )  # fmt: skip
            for n, k in SHAPES:
                weight = rng.standard_normal((n, k)).astype(np.float32)
                weight_in_out = np.ascontiguousarray(weight.T)
                for tokens in TOKENS:
                    x = rng.standard_normal((tokens, k)).astype(np.float32)
                    step = dense_linear_step("dense", weight, tokens)
                    with tempfile.TemporaryDirectory(dir=work) as project:
                        references = {"dense": (weight, np.zeros(n))}
                        tvm_count, _ = measure_steps([step], references, x, target, Path(project))["dense"]
                    counts = [
                        library_instructions(target, binary, x, weight_in_out, build_dir)
                        for binary in libraries.values()
                    ]
                    table.add_row(
                        f"{n}x{k}", str(tokens), f"{tvm_count:,}", *(f"{count:,}" for count in counts),
                        *(f"{tvm_count / count:.3f}" for count in counts),
                    )  # fmt: skip
            Console(width=160).print(table)


if __name__ == "__main__":
    main()
