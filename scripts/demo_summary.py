"""Print the demo's summary table from the files scripts/demo.sh wrote."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path) -> None:
    conversion = json.loads((out / "convert.json").read_text())["total"]
    rows = []
    for label, name, macs, nonzero in (
        ("dense ResNet-20", "dense", conversion["macs_dense"], conversion["params"]),
        ("4-of-9 pSConv ResNet-20", "4of9", conversion["macs"], conversion["nonzero"]),
    ):
        result = json.loads((out / f"eval-{name}.json").read_text())
        rows.append((label, f"{result['top1']:.2%}", f"{result['model']['size_bytes'] / 1024:.0f} KB",
                     f"{macs / 1e6:.1f} M", f"{nonzero:,}", f"{result['latency']['image_p50']:.2f} ms"))
    header = ("model (ONNX export)", "top-1 (10k test)", "file size", "MACs/image", "non-zero params", "latency/image")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    print(f"\nMACs {conversion['mac_reduction']:.2f}x fewer; outputs in {out}/")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
