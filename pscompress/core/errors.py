"""The one exception type that means "the user gave us something wrong"."""
from __future__ import annotations

from typing import Any


class UserError(Exception):
    """A mistake in the user's input: the CLI prints it as one line and exits with status 2."""


def short_repr(value: Any, width: int = 60) -> str:
    """``repr(value)`` cut to ``width`` characters, for quoting a bad value in a one-line message."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."
