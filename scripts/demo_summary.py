"""Print the demo's summary table from the files scripts/demo.sh wrote."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from pscompress.board.ladder import load_manifest
from pscompress.board.onnx_reader import read_onnx
from pscompress.core.metadata import decode_onnx_metadata


def main(out: Path) -> None:
    conversion = json.loads((out / "convert.json").read_text())["total"]
    results = {name: json.loads((out / f"eval-{name}.json").read_text()) for name in ("dense", "4of9", "4of9-tuned",
                                                                                       "4of9-int8-tuned")}
    rows = []
    for label, name, macs, nonzero in (
        ("dense ResNet-20", "dense", conversion["macs_dense"], conversion["params"]),
        ("4-of-9 pSConv ResNet-20", "4of9", conversion["macs"], conversion["nonzero"]),
        ("  the same, tuned for this CPU", "4of9-tuned", conversion["macs"], conversion["nonzero"]),
        ("  the same in int8, tuned", "4of9-int8-tuned", conversion["macs"], conversion["nonzero"]),
    ):
        result = results[name]
        rows.append((label, f"{result['top1']:.2%}", f"{result['model']['size_bytes'] / 1024:.0f} KB",
                     f"{macs / 1e6:.1f} M", f"{nonzero:,}", f"{result['latency']['image_p50']:.2f} ms"))
    header = ("model (ONNX export)", "top-1 (10k test)", "file size", "MACs/image", "non-zero params", "latency/image")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    print(f"\nMACs {conversion['mac_reduction']:.2f}x fewer; outputs in {out}/")
    print(speed_line(out / "resnet20-4of9-tuned.onnx", "dense kernels", "the untuned pSConv export"))
    print(speed_line(out / "resnet20-4of9-int8-tuned.onnx", "onnxruntime's int8 dense kernels (what quantize_static "
                     "gives)", "the untuned int8 pSConv file"))
    print("The latency column comes from separate eval runs, so the machine's load moves it too.")


def speed_line(tuned_path: Path, dense: str, native: str) -> str:
    """What tune measured here, in interleaved runs: the tuned model against every layer dense
    (the ``dense`` kernels, docs/tune.md) and every layer native (the ``native`` file)."""
    plan = decode_onnx_metadata(read_onnx(tuned_path).metadata, str(tuned_path))["tune"]
    times = plan["model_ms"]
    tuned = times[plan["plan"]]
    dense_layers = sum(node["choice"] == "dense" for node in plan["nodes"])
    threads = plan["threads"] or "onnxruntime's default"
    return (f"{tuned_path.name} on this {plan['cpu']} ({plan['isa']} kernels, onnxruntime {plan['onnxruntime']}, "
            f"batch {plan['batch']}, threads: {threads}), from tune's interleaved runs: {times['dense'] / tuned:.2f}x "
            f"the speed of {dense} and {times['native'] / tuned:.2f}x that of {native}, with {dense_layers} of "
            f"{len(plan['nodes'])} layers dense (> 1 is faster).")


def ladder_deadline(folder: Path) -> float:
    """The demo's frame budget: 2x the most accurate kept rung's median time on this machine: room to
    decode a frame and run that rung, unless decoding or the machine is slow for once."""
    manifest = load_manifest(folder)
    best = max((r for r in manifest.rungs if r.kept), key=lambda r: r.accuracy)
    return round(2 * best.latency_ms["p50"], 3)


if __name__ == "__main__":
    if sys.argv[1] == "--deadline":
        print(ladder_deadline(Path(sys.argv[2])))
    else:
        main(Path(sys.argv[1]))
