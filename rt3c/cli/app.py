"""The `rt3c` application: the typer app the command modules register on, and `main`, which maps errors
and signals to exit codes.

Exit codes: 0 success, 2 bad usage or bad input (one line naming the culprit), 1 internal failure.
Set RT3C_DEBUG=1 to see tracebacks of internal failures.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from rt3c.cli.options import option_name
from rt3c.core.errors import SettingError, UserError, VerificationError

app = typer.Typer(
    name="rt3c",
    help="Compile sparse Transformers (RT3 block + pattern pruning, DVFS levels) to C for ARM boards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: rich markup would eat text in brackets such as "[out, in]".
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Zoo name (see `rt3c models`), HF model directory, or module:factory: a torch model (an ONNX "
        "file is planned with `rt3c plan`).",
    ),
]


def _print_version(value: bool) -> None:
    if value:
        from rt3c import __version__

        typer.echo(f"rt3c {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """Compile sparse Transformers (RT3 block + pattern pruning, DVFS levels) to C for ARM boards."""


STOP_SIGNALS = {"SIGINT": ("interrupted", 130), "SIGTERM": ("terminated", 143)}
"""The message and exit code (128 + the signal's number, as a shell reports it) of each signal that stops
a command."""


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns (and exits with) the process exit code.

    Ctrl-C exits 130 and SIGTERM 143, each with one line, wherever it lands: the handler raises
    KeyboardInterrupt, so staging folders and locks are removed on the way out as on any failure. typer
    turns a KeyboardInterrupt into an exit code that it returns (not raises) here, and one raised in a
    Python callback of TVM comes out of TVM as a bare RuntimeError, so the handler records which signal
    came.
    """
    import signal

    received: list[str] = []

    def on_signal(signal_number: int, frame: object) -> None:
        received.append(signal.Signals(signal_number).name)
        if len(received) == 1:  # a second signal would cut short the cleanup the first one started
            raise KeyboardInterrupt

    # Only over Python's defaults: a shell starts background jobs with Ctrl-C ignored, and so they stay.
    defaults = {"SIGINT": signal.default_int_handler, "SIGTERM": signal.SIG_DFL}
    previous = {name: signal.getsignal(getattr(signal, name)) for name in STOP_SIGNALS}
    taken = [name for name in STOP_SIGNALS if previous[name] is defaults[name]]
    for name in taken:
        signal.signal(getattr(signal, name), on_signal)
    message = None
    try:
        code = app(args=argv, standalone_mode=False)
    except typer.Abort:
        code = 130
    except typer.TyperException as exc:  # usage errors (bad option, missing argument) exit 2
        exc.show()
        code = exc.exit_code
    except SettingError as exc:
        message, code = f"error: {exc.render(option_name(exc.setting))}", 2
    except UserError as exc:
        message, code = f"error: {exc}", 2
    except (VerificationError, Exception) as exc:
        if os.environ.get("RT3C_DEBUG") and not received:
            raise
        message, code = f"internal error: {type(exc).__name__}: {exc}", 1
    finally:
        for name in taken:
            signal.signal(getattr(signal, name), previous[name])
    if received or code == 130:
        message, code = STOP_SIGNALS[received[0] if received else "SIGINT"]
    if message is not None:
        _error(message)
    return _exit(code if isinstance(code, int) else 0)


def _error(message: str) -> None:
    # Plain print, not rich: an error is one line however wide the terminal is.
    print(f"rt3c: {message}", file=sys.stderr)


def _exit(code: int) -> int:
    sys.exit(code)
