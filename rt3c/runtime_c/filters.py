"""Typed jinja2 filters: the only way a value reaches the generated C, assembly, linker script, Make or CMake.

Model names, tensor names, plan fields and file names come from files a user hands in, so none of them
may become code. Every `{{ ... }}` in the templates ends in one of these filters (tests/test_untrusted_input.py
checks each template), and each filter either returns text that is inert where it lands or raises a
UserError naming the template and the value:

- integers (`c_int`, `c_uint8`, `c_uint32`, `c_int64`, `c_size`) must be Python or numpy integers (not
  bool, not float, not str) inside the range of their C type; they print as decimal digits;
- `c_ident` accepts an ASCII C identifier that is not a keyword (names are mapped to identifiers before
  rendering, `c_identifier`); `c_type` one of the runtime's C type names;
- `comment` turns any text into a comment body that is safe in C (`/* */`), assembly, linker scripts,
  Make and CMake (`#`): printable ASCII only, everything else (newlines, backslashes, non-ASCII) written
  as `<hex>`, and the sequences that end or nest a C comment (`*/`, `/*`) or start a trigraph (`??`) split;
- `build_word` accepts a word of a Make or CMake command line made of `[A-Za-z0-9_.,+=/:-]` only (compiler
  names, flags, file names, relative paths): no spaces, quotes, `$`, `#`, `;` or newlines to interpret.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jinja2
import numpy as np

from rt3c.core.errors import UserError
from rt3c.runtime_c.program import C_TYPES

C_KEYWORDS = frozenset(
    {
        "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else", "enum",
        "extern", "float", "for", "goto", "if", "inline", "int", "long", "register", "restrict", "return",
        "short", "signed", "sizeof", "static", "struct", "switch", "typedef", "union", "unsigned", "void",
        "volatile", "while", "_Alignas", "_Alignof", "_Atomic", "_Bool", "_Complex", "_Generic", "_Imaginary",
        "_Noreturn", "_Static_assert", "_Thread_local",
    }
)  # fmt: skip
# Names the generated code itself uses unprefixed: a parameter of that name would shadow them.
RESERVED_NAMES = frozenset(
    {"NULL", "memcpy", "size_t", "sig_atomic_t", "DLTensor", "main"}
    | {f"{sign}int{bits}_t" for sign in ("", "u") for bits in (8, 16, 32, 64)}
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_BUILD_WORD = re.compile(r"[A-Za-z0-9_.,+=/:-]+\Z")
_COMMENT_SAFE = re.compile(r"[ -\[\]-~]")  # printable ASCII except the backslash


def _refuse(
    context: jinja2.runtime.Context, value: object, expected: str, field: str | None = None
) -> UserError:
    if isinstance(value, jinja2.Undefined):
        str(value)  # a missing name is a template bug: StrictUndefined raises UndefinedError naming it
    where = f"{context.name}: {field}" if field else context.name
    return UserError(f"{where}: expected {expected}, got {value!r:.80}")


def _integer_filter(low: int, high: int, c_type: str) -> Callable[..., int]:
    @jinja2.pass_context
    def check(context: jinja2.runtime.Context, value: object, field: str | None = None) -> int:
        """`field` names a value that comes from the user's files (e.g. a plan's frequency) in the error."""
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
            raise _refuse(context, value, f"an integer in [{low}, {high}] ({c_type})", field)
        return int(value)

    return check


@jinja2.pass_context
def c_ident(context: jinja2.runtime.Context, value: object) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.match(value) or value in C_KEYWORDS:
        raise _refuse(context, value, "a C identifier")
    return value


@jinja2.pass_context
def c_type(context: jinja2.runtime.Context, value: object) -> str:
    if value not in set(C_TYPES.values()):
        raise _refuse(context, value, f"one of the C types {sorted(set(C_TYPES.values()))}")
    return str(value)


@jinja2.pass_context
def build_word(context: jinja2.runtime.Context, value: object) -> str:
    if not isinstance(value, str) or not _BUILD_WORD.match(value):
        raise _refuse(context, value, "a Make/CMake word of letters, digits and _.,+=/:-")
    return value


def comment(value: object) -> str:
    text = "".join(char if _COMMENT_SAFE.match(char) else f"<{ord(char):02x}>" for char in str(value))
    # After the first pass no newline or backslash is left, so no line splice can pull code into a
    # comment; these splits keep the text from closing a C comment, opening a nested one (-Wcomment), or
    # forming a trigraph.
    for sequence, split in (("*/", "* /"), ("/*", "/ *"), ("??", "?<3f>")):
        while sequence in text:
            text = text.replace(sequence, split)
    return text


VALUES_PER_LINE = 8


@jinja2.pass_context
def c_values(context: jinja2.runtime.Context, value: object) -> str:
    """The elements of a numpy array as the initializer list of a C array of its type: decimal integers,
    floats with 9 significant digits (which give back the same float32), INFINITY and NAN from math.h."""
    if not isinstance(value, np.ndarray) or value.dtype.name not in C_TYPES or value.size == 0:
        raise _refuse(context, value, f"a non-empty numpy array of {', '.join(C_TYPES)}")
    flat = value.reshape(-1)
    if flat.dtype.kind == "f":
        wide = flat.astype(np.float64)
        finite = np.isfinite(wide)
        text = np.char.mod("%.9g", np.where(finite, wide, 0.0)).astype(object)
        text[np.isnan(wide)] = "NAN"
        text[np.isposinf(wide)] = "INFINITY"
        text[np.isneginf(wide)] = "-INFINITY"
        text[(wide == 0) & np.signbit(wide)] = "-0.0"  # "-0" would be the integer 0
    else:
        numbers = flat.astype(np.int64) if flat.dtype.kind == "b" else flat
        text = np.char.mod("%d", numbers).astype(object)
        if flat.dtype == np.int64:
            # -9223372036854775808 is not a literal: 9223372036854775808 does not fit any C99 integer type.
            text = text + "LL"
            text[flat == np.iinfo(np.int64).min] = "(-9223372036854775807LL - 1)"
    lines = [", ".join(text[i : i + VALUES_PER_LINE]) for i in range(0, len(text), VALUES_PER_LINE)]
    return ",\n".join(f"  {line}" for line in lines)


FILTERS: dict[str, Callable[..., object]] = {
    "c_int": _integer_filter(-(2**31), 2**31 - 1, "int"),
    "c_uint8": _integer_filter(0, 2**8 - 1, "uint8_t"),
    "c_uint32": _integer_filter(0, 2**32 - 1, "uint32_t"),
    "c_int64": _integer_filter(-(2**63), 2**63 - 1, "int64_t"),
    # size_t is 32 bits on the Cortex-M targets: sizes must fit there too.
    "c_size": _integer_filter(0, 2**32 - 1, "size_t"),
    "c_ident": c_ident,
    "c_type": c_type,
    "comment": comment,
    "build_word": build_word,
    "c_values": c_values,
}
"""Every filter a template may end a `{{ ... }}` with."""


def c_identifier(name: str, taken: set[str], prefix: str = "rt3") -> str:
    """An ASCII C identifier for `name`, unused in `taken` (compared case-insensitively, as the
    identifier is also used upper-cased in macro names), which it is added to.

    Characters outside [A-Za-z0-9_] become `_`; a name that would not start with a letter, is a keyword or
    a name the generated code uses, or starts with the runtime's internal prefix `rt3_` or the library's
    `prefix` followed by `_`, gets the prefix `t_`.
    """
    identifier = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if (
        not identifier[:1].isalpha()
        or identifier in C_KEYWORDS
        or identifier in RESERVED_NAMES
        or identifier.lower().startswith(("rt3_", f"{prefix.lower()}_"))
    ):
        identifier = f"t_{identifier}"
    unique, suffix = identifier, 2
    while unique.lower() in taken:
        unique, suffix = f"{identifier}_{suffix}", suffix + 1
    taken.add(unique.lower())
    return unique
