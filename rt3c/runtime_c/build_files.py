"""The build files of a rendered project for one target: Makefile and CMakeLists.txt (+ a toolchain file
when cross compiling), and for a qemu board its startup file and linker script."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rt3c.codegen.targets import Target
from rt3c.core.errors import SettingError
from rt3c.runtime_c.program import Program
from rt3c.runtime_c.project import TEMPLATES, environment, project_files, render_all, weights_bytes

# qemu 7.2's MPS2 boards (hw/arm/mps2.c) map 16 MiB of PSRAM, where the weights go (mps2.ld.j2).
PSRAM_ORIGIN = {"mps2-an386": 0x21000000, "mps2-an500": 0x60000000}


PSRAM_MIB = 16


def render_build_files(
    program: Program,
    build_dir: Path,
    target: Target,
    kernel_file: str,
    sources_dir: Path,
    check_board_memory: bool = True,
) -> None:
    """Write the Makefile and CMakeLists.txt (+ a toolchain file when cross compiling) that build
    `sources_dir`'s project for `target` in `build_dir`; for a board, also its startup file and linker script
    (and, with `check_board_memory`, refuse weights that the board's PSRAM cannot hold).
    """
    sources = Path(os.path.relpath(sources_dir, build_dir))
    c_kernels = kernel_file.endswith(".c")
    cross = target.name != "host"
    # CPU selection goes to the toolchain file (it is needed when linking too); the rest to the project.
    arch_flags = [flag for flag in target.cflags if cross and flag.startswith("-m")]
    context = {
        "name": program.name,
        "prefix": program.prefix,
        "target": target,
        "ar": binutil(target, "ar"),
        "objcopy": binutil(target, "objcopy"),
        "sources_dir": str(sources),
        "weights_source": project_files(program.prefix, program.weights_format).weights_source,
        "weights_binary": project_files(program.prefix, program.weights_format).weights_binary,
        "kernel_file": kernel_file,
        "tokenizer": program.tokenizer is not None,
        "c_kernels": c_kernels,
        "tvm_headers_dir": TVM_HEADERS_DIR,
        "startup": None,
        "toolchain": "toolchain.cmake" if cross else None,
        "processor": "aarch64" if target.name == "aarch64" else "arm",
        "bare_metal": target.name.startswith("cortex-m"),
        "arch_flags": arch_flags,
        "cflags": [flag for flag in target.cflags if flag not in arch_flags],
        "link_options": [flag for flag in target.ldflags if not flag.startswith("-l")],
        "link_libraries": [flag[2:] for flag in target.ldflags if flag.startswith("-l")],
    }
    files: dict[Path, tuple[str, dict[str, object]]] = {
        build_dir / "Makefile": ("Makefile.j2", context),
        build_dir / "CMakeLists.txt": ("CMakeLists.txt.j2", context),
    }
    if cross:
        files[build_dir / "toolchain.cmake"] = ("toolchain.cmake.j2", context)
    if target.board is not None:
        if check_board_memory:
            _check_weights_fit(weights_bytes(program), target)
        context["startup"] = {"source": "startup.c", "linker_script": "mps2.ld"}
        board = {
            "board": target.board,
            "prefix": program.prefix,
            "psram_origin": PSRAM_ORIGIN[target.board],
            "psram_mib": PSRAM_MIB,
        }
        files[sources_dir / "mps2.ld"] = ("cortex_m/mps2.ld.j2", board)
    texts = render_all(environment(), files)
    if c_kernels:
        _copy_tvm_headers(sources_dir)
    if target.board is not None:
        shutil.copyfile(TEMPLATES / "cortex_m" / "startup.c", sources_dir / "startup.c")
    for path, text in texts.items():
        path.write_text(text)


def binutil(target: Target, tool: str) -> str:
    """`tool` of the target's binutils: `aarch64-linux-gnu-ar`, `arm-none-eabi-objcopy`, `objcopy`."""
    return target.cc[: -len("gcc")] + tool if target.cc.endswith("gcc") else tool


def _check_weights_fit(size: int, target: Target) -> None:
    if size > PSRAM_MIB << 20:
        raise SettingError(
            "target",
            f"the weights take {size / 2**20:.1f} MiB, but qemu's {target.board} holds {PSRAM_MIB} MiB of them "
            "(PSRAM); use a sparser plan or plan more layers",
            target.name,
        )


TVM_HEADERS_DIR = "tvm_include"


def _copy_tvm_headers(out_dir: Path) -> None:
    """The headers TVM's C target includes, from the tvm and tvm-ffi wheels (Apache-2.0)."""
    import tvm
    import tvm_ffi

    destination = out_dir / TVM_HEADERS_DIR
    for package in (tvm_ffi, tvm):
        include = Path(package.__file__).resolve().parent / "include"
        shutil.copytree(include, destination, dirs_exist_ok=True)
