"""Writing a command's record: to a file atomically, or to stdout for '-'."""
from __future__ import annotations

import click

from pscompress.board.evaluate import AgreementResult, EvalResult
from pscompress.core.files import write_text_atomic


def write_json(result: EvalResult | AgreementResult, target: str) -> None:
    text = result.dumps()
    if target == "-":
        click.echo(text, nl=False)
    else:
        write_text_atomic(target, text)
