"""The one exception type that means "the user gave us something wrong"."""


class UserError(Exception):
    """A mistake in the user's input: the CLI prints it as one line and exits with status 2."""
