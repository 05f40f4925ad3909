"""The one exception type that means "the caller gave us something wrong"."""
from __future__ import annotations

from typing import Any


class UserError(ValueError):
    """A mistake in the caller's input: the CLI prints it as one line and exits with status 2.

    A ValueError, so ``except ValueError`` in a caller's code catches it. ``parameters`` are the
    names of the arguments the message quotes in backticks (```input_shape```); the message
    itself speaks of those library parameters, ``for_cli`` of the command line's flags.
    """

    def __init__(self, message: str, *parameters: str) -> None:
        super().__init__(message)
        self.parameters = parameters

    def for_cli(self) -> str:
        """The message with each quoted parameter as its command-line flag (input_shape -> --input-shape)."""
        message = str(self)
        for name in self.parameters:
            message = message.replace(f"`{name}`", "--" + name.replace("_", "-"))
        return message


def short_repr(value: Any, width: int = 60) -> str:
    """``repr(value)`` cut to ``width`` characters, for quoting a bad value in a one-line message."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."
