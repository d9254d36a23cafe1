"""Errors the CLI turns into exit codes: `UserError` (bad usage or input) exits 2, anything else 1."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message names the file, node, layer or setting at fault and is shown as one line."""


class SettingError(UserError):
    """A setting out of range, unknown or inconsistent with the input.

    `setting` is its Python name, as `rt3c.api` and the config classes spell it (`block_ratio`); the message
    reads `block_ratio 1.5: must be in [0, 1)`. The CLI shows the option that sets it instead
    (`--block-ratio 1.5: ...`, see `rt3c.cli.options.option_name`), so the library never speaks of options.
    """

    def __init__(self, setting: str, problem: str, value: object = None) -> None:
        self.setting = setting
        self.value = value
        self.problem = problem
        super().__init__(self.render(setting))

    def render(self, name: str) -> str:
        """The message with the setting called `name`."""
        return f"{name}: {self.problem}" if self.value is None else f"{name} {self.value}: {self.problem}"


class VerificationError(Exception):
    """An artifact was built but does not compute what its source computes (an internal failure)."""
