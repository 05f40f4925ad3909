"""What an export returns: one typed summary for every format (no PyTorch needed to read it)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExportSummary:
    """The file an exporter wrote, its size and how it was checked against PyTorch.

    ``dense_bytes``: the size of the same export with every filter dense (None where not
    computed). ``max_rel_diff``: the verification's largest relative difference (None when the
    format's runtime is not installed, so nothing was run). ``kept_conv_weights`` and
    ``conv_weights``: the convolution weights stored and in total, where the format counts them.
    """

    path: str
    bytes: int
    input_shape: tuple[int, int, int]
    psconv_layers: int
    max_rel_diff: float | None
    dense_bytes: int | None = None
    fp16: bool = False
    kept_conv_weights: int | None = None
    conv_weights: int | None = None
