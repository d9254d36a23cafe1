"""Errors the CLI turns into exit codes: `UserError` (bad usage or input) exits 2, anything else 1."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message names the file, node, layer or option at fault and is shown as one line."""


class VerificationError(Exception):
    """An artifact was built but does not compute what its source computes (an internal failure)."""
