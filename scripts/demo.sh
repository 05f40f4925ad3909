#!/usr/bin/env bash
# The main job, end to end on the bundled sample: convert -> fine-tune -> export -> run -> tune ->
# quantize to int8 -> evaluate -> gate, a summary table, then a small deadline-aware ladder. Installs what it needs first (scripts/bootstrap.sh).
# Outputs go to out/demo/ (override with PSCOMPRESS_DEMO_DIR). Under 10 minutes on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
out="${PSCOMPRESS_DEMO_DIR:-out/demo}"
mkdir -p "$out"
pscompress() { .venv/bin/pscompress "$@"; }
step() { printf '\n== %s\n' "$*"; }

step "1/10 convert the dense sample to 4-of-9 pSConv (patterns aligned to the trained weights, batch norm recalibrated)"
pscompress convert samples/fashion_resnet20.pt --pattern 4of9 --data fashion-mnist -o "$out/resnet20-4of9.pt" \
  --report-json "$out/convert.json"

step "2/10 fine-tune with the masks fixed (1 short epoch on 12,000 images, distilled from the dense model)"
pscompress finetune "$out/resnet20-4of9.pt" --data fashion-mnist --epochs 1 --limit 12000 \
  --distill-from samples/fashion_resnet20.pt -o "$out/resnet20-4of9-ft.pt"

step "3/10 export to ONNX: the pSConv model, and the dense sample for comparison"
pscompress export "$out/resnet20-4of9-ft.pt" -o "$out/resnet20-4of9.onnx"
pscompress export samples/fashion_resnet20.pt --dense -o "$out/resnet20-dense.onnx"

step "4/10 inspect the exported model"
pscompress info "$out/resnet20-4of9.onnx"

step "5/10 run it on an image (native PSConv kernel; no PyTorch involved)"
pscompress run "$out/resnet20-4of9.onnx" --input samples/images/ankle-boot.png -k 3

step "6/10 tune it for this CPU: each layer native or dense, whichever is faster at eval's batch of 100"
pscompress tune "$out/resnet20-4of9.onnx" --batch 100 -o "$out/resnet20-4of9-tuned.onnx"

step "7/10 quantize it to int8 (calibrated on 100 training images: sparse int8 layers) and tune that too"
pscompress quantize "$out/resnet20-4of9.onnx" --data fashion-mnist -o "$out/resnet20-4of9-int8.onnx"
pscompress tune "$out/resnet20-4of9-int8.onnx" --batch 100 -o "$out/resnet20-4of9-int8-tuned.onnx" | tail -2

step "8/10 evaluate the exports on the 10,000 Fashion-MNIST test images"
for name in dense 4of9 4of9-tuned 4of9-int8-tuned; do
  pscompress eval "$out/resnet20-$name.onnx" --data fashion-mnist --json "$out/eval-$name.json" > /dev/null
done
echo "wrote $out/eval-dense.json, eval-4of9.json, eval-4of9-tuned.json and eval-4of9-int8-tuned.json"

step "9/10 gate: the pSConv export may lose at most 2 points against the dense export"
pscompress check "$out/resnet20-4of9.onnx" --baseline "$out/eval-dense.json" --max-drop 2 \
  --summary "$out/gate.md" --junit "$out/gate.xml"

step "summary"
.venv/bin/python scripts/demo_summary.py "$out"

step "10/10 a deadline-aware ladder: dense, dense int8 and 4-of-9 int8 (fine-tuned on 3,000 images), timed at 1 thread"
pscompress ladder build samples/fashion_resnet20.pt --data fashion-mnist --patterns dense,dense-int8,4of9-int8 \
  --epochs 1 --limit 3000 --threads 1 --runs 100 -o "$out/ladder"
pscompress ladder plot "$out/ladder" -o "$out/ladder/tradeoff.png" --html "$out/ladder/tradeoff.html"
# A frame budget of 2x the dense rung's median time here: decoding the frame eats into it.
deadline=$(.venv/bin/python scripts/demo_summary.py --deadline "$out/ladder")
pscompress run --ladder "$out/ladder" --deadline-ms "$deadline" --input samples/frames --threads 1
