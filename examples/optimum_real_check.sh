#!/usr/bin/env bash
# A real-size Hugging Face export trains like neft's own build of the same model:
# SmolLM2-135M-Instruct (from the demo's GGUF) is written as a transformers checkpoint
# (`neft export --hf`), exported by optimum-onnx (`text-generation`, opset 18, the
# TorchScript path), then both ONNX graphs are compiled with the same activation
# selection (6% of the MLP units, from the same calibration verses) and trained 10 steps
# on the same batches. Prints each side's losses and the largest relative difference.
#
#   cargo build --release --bin neft && ./target/release/neft demo   # model and task files
#   python3 -m venv /tmp/optimum-venv && /tmp/optimum-venv/bin/pip install \
#       optimum-onnx==0.1.0 transformers==4.57.6 torch onnx
#   OPTIMUM_PYTHON=/tmp/optimum-venv/bin/python bash examples/optimum_real_check.sh [WORK_DIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-"$repo/neft-optimum-check"}
py=${OPTIMUM_PYTHON:?set OPTIMUM_PYTHON to a Python with optimum-onnx installed}
neft="$repo/target/release/neft"
demo=${DEMO_DIR:-"$repo/neft-demo"}
steps=${STEPS:-10}
for f in "$demo/smollm2/model.onnx" "$demo/data/calibration.jsonl" "$demo/data/train.jsonl" "$demo/data/eval.jsonl"; do
  [ -f "$f" ] || { echo "$f is missing: run neft demo first" >&2; exit 1; }
done
mkdir -p "$work" && cd "$work"
model="$demo/smollm2/model.onnx" data="$demo/data" tokenizer="$demo/smollm2/tokenizer.json"

if [ ! -f hf/model.safetensors ]; then
  "$neft" compile "$model" -o base-art --budget 1 --strategy random --unit mlp-unit >/dev/null
  "$neft" export base-art --state base-art/state.safetensors --hf hf
fi
if [ ! -f optimum/model.onnx ]; then
  "$py" -m optimum.exporters.onnx --model hf --task text-generation --opset 18 optimum
fi

run() { # name model
  rm -rf "$1"
  "$neft" compile "$2" -o "$1" --data "$data/calibration.jsonl" --tokenizer "$tokenizer" \
    --budget 6% --unit mlp-unit --lr 4e-3 | grep -E "^  (neurons|nodes|data inputs)"
  "$neft" train "$1" --data "$data/train.jsonl" --eval "$data/eval.jsonl" --tokenizer "$tokenizer" \
    --steps "$steps" --batch 8 --seq-len 256 --json > "$1.summary.json"
}
run own "$model"
run optimum-art optimum/model.onnx
python3 - <<'EOF'
import json
def load(d):
    return [json.loads(l) for l in open(f"{d}/metrics.jsonl")], json.load(open(f"{d}.summary.json"))
(a, sa), (b, sb) = load("own"), load("optimum-art")
worst = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(a, b))
print(f"{'step':>4} {'neft build':>12} {'optimum':>12}")
for x, y in zip(a, b):
    print(f"{x['step']:>4} {x['loss']:>12.6f} {y['loss']:>12.6f}")
print(f"eval loss: neft build {sa['eval_loss_start']:.6f} -> {sa['eval_loss']:.6f}, "
      f"optimum {sb['eval_loss_start']:.6f} -> {sb['eval_loss']:.6f}")
print(f"largest relative difference of the step losses: {worst:.2e}")
print(f"seconds for {len(a)} steps: neft build {a[-1]['seconds']:.1f}, optimum {b[-1]['seconds']:.1f}")
raise SystemExit(0 if worst < 1e-4 else 1)
EOF
