#!/usr/bin/env bash
# One GPU check, run on a CUDA 13 machine from the repository root, after the
# onnxruntime-gpu 1.31.1 libraries have been unpacked into $ORTDIR (see BENCHMARKS.md
# for how they travel) and a release `neft` binary into $NEFT.
#   1. the CUDA execution provider registers and runs a PyTorch-exported Llama;
#   2. the same training run on CPU and CUDA (tiny Llama): losses side by side;
#   3. SmolLM2-135M-shaped training throughput on CUDA: full MLP, paper masks, split rows,
#      with ONNX Runtime's default arena growth and again with NEFT_CUDA_ARENA=same-as-requested;
#   4. neft profile on CUDA vs CPU (tiny Llama, every layer, all statistics): largest difference;
#   5. if Nsight Systems (nsys) is installed: a trace of 10 split-6% steps (GPU kernel times,
#      unlike ONNX Runtime's profile, which charges a node with any wait it hits);
#   6. which nodes of the split-6% training step ONNX Runtime places on the CPU, and the
#      copies it adds between host and device (a copy waits for the GPU: a suspect for
#      the per-step stall in BENCHMARKS.md).
set -euo pipefail
: "${ORTDIR:?}" "${NEFT:?}" "${WORK:=/tmp/neftgpu}"
export ORT_DYLIB_PATH=$ORTDIR/libonnxruntime.so.1.31.1
nv=$(python3 -c 'import nvidia, os; print(":".join(sorted({os.path.join(r, "lib") for p in nvidia.__path__ for r, d, f in os.walk(p) if "lib" in d})))')
export LD_LIBRARY_PATH=$ORTDIR:$nv:${LD_LIBRARY_PATH:-}
mkdir -p "$WORK" && cd "$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

echo "== 1. CUDA execution provider"
$NEFT inspect "$OLDPWD/models/fixtures/tiny_llama.onnx" --check --ep cuda | tail -3

python3 - <<'PY'
import json, random
random.seed(0)
with open("tiny.jsonl", "w") as f:
    for _ in range(64):
        a = random.randrange(1, 100); f.write(json.dumps({"input_ids": [(a + 3 * i) % 128 for i in range(24)]}) + "\n")
PY
if [ -z "${SKIP_TINY:-}" ]; then
echo "== 2. tiny Llama: CPU vs CUDA, 30 steps, split rows"
cat > tiny_neurons.json <<'J'
{"format":"neft.neurons/1","layers":{"val_242":{"axis":1,"rows":[0,4,8,12,16,20,24,28]},"val_244":{"axis":1,"rows":[1,5,9,13]},"val_386":{"axis":1,"rows":[0,8,16,24,32,40,48,56,64,72,80,88,96,104,112,120]}}}
J
for ep in cpu cuda; do
  $NEFT compile "$OLDPWD/models/fixtures/tiny_llama.onnx" -o tiny_$ep --neurons tiny_neurons.json --lr 0.02 > /dev/null
  $NEFT train tiny_$ep --data tiny.jsonl --steps 30 --batch 8 --seed 1 --ep $ep --checkpoint-every 30 --json > tiny_$ep.json
done
python3 - <<'PY'
import json
rows = {ep: [json.loads(l)["loss"] for l in open(f"tiny_{ep}/metrics.jsonl") if "loss" in json.loads(l)] for ep in ("cpu", "cuda")}
print("step  cpu       cuda      |diff|")
for i in range(0, len(rows["cpu"]), 5):
    a, b = rows["cpu"][i], rows["cuda"][i]
    print(f"{i+1:>4}  {a:.6f}  {b:.6f}  {abs(a-b):.2e}")
print("max |cpu - cuda| over", len(rows["cpu"]), "steps:", max(abs(a - b) for a, b in zip(rows["cpu"], rows["cuda"])))
PY
fi

echo "== 3. SmolLM2-135M shape, random weights, batch 8 x seq 256 on CUDA"
cat > smol.json <<'J'
{"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": true}
J
$NEFT build-model llama --config smol.json -o smol > /dev/null
python3 - <<'PY'
import json, random
random.seed(1)
with open("smol.jsonl", "w") as f:
    for _ in range(512):
        f.write(json.dumps({"input_ids": [random.randrange(49152) for _ in range(256)]}) + "\n")
PY
$NEFT inspect smol/model.onnx --json > smol_inspect.json
python3 - <<'PY'
import json
layers = json.load(open("smol_inspect.json"))["layers"]
def units(frac):
    sel = {}
    for l in layers:
        if l["role"].endswith("mlp.up"):
            n = l["neurons"]; k = max(1, round(n * frac))
            sel[l["weight"]] = {"axis": 1, "rows": sorted({i * n // k for i in range(k)})}
    return {"format": "neft.neurons/1", "layers": sel}
json.dump(units(0.06), open("units6.json", "w"))
json.dump(units(0.01), open("units1.json", "w"))
mlp = {l["weight"]: {"axis": l["axis"], "rows": [0]} for l in layers if "mlp." in l["role"]}
json.dump({"format": "neft.neurons/1", "layers": mlp}, open("mlp.json", "w"))
PY
run() { # name, compile args...
  local name=$1; shift
  $NEFT compile smol/model.onnx -o "art_$name" "$@" > /dev/null
  $NEFT train "art_$name" --data smol.jsonl --steps 25 --batch 8 --seq-len 256 --ep cuda --checkpoint-every 1000 --json > "train_$name.json"
  python3 - "$name" <<'PY'
import json, sys
name = sys.argv[1]
m = [json.loads(l) for l in open(f"art_{name}/metrics.jsonl")]
m = [r for r in m if "seconds" in r and "tokens" in r]
# Steps 6..25: after warm-up (CUDA kernels tuned, arena grown).
a, b = m[4], m[-1]
tok = sum(r["tokens"] for r in m[5:])
sec = b["seconds"] - a["seconds"]
print(f"| {name} | {json.load(open(f'art_{name}/plan.json'))['counts']['trainable_params']} | {1000*sec/len(m[5:]):.1f} | {tok/sec:,.0f} |")
PY
}
table() {
  echo "| configuration | trainable params | ms/step | label tokens/s |"
  echo "|---|---:|---:|---:|"
  run full-mlp --neurons mlp.json --mode full
  run mask-6 --neurons units6.json --unit mlp-unit --mode mask
  run split-6 --neurons units6.json --unit mlp-unit
  run split-1 --neurons units1.json --unit mlp-unit
  nvidia-smi --query-gpu=memory.used --format=csv,noheader
}
echo "arena: ONNX Runtime's default (next power of two)"
table
echo "arena: same as requested"
rm -rf art_*
NEFT_CUDA_ARENA=same-as-requested table

echo "== 4. neft profile: CUDA vs CPU"
for ep in cpu cuda; do
  $NEFT profile "$OLDPWD/models/fixtures/tiny_llama.onnx" --data tiny.jsonl --ep $ep -o prof_$ep.safetensors > /dev/null
done
python3 - <<'PY'
import json, struct
def tensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n]); body = raw[8 + n:]
    out = {}
    for k, v in head.items():
        if k == "__metadata__" or v["dtype"] != "F32":
            continue
        a, b = v["data_offsets"]
        out[k] = struct.unpack(f"<{(b - a) // 4}f", body[a:b])
    return out
cpu, cuda = tensors("prof_cpu.safetensors"), tensors("prof_cuda.safetensors")
worst = max((abs(x - y) / max(1.0, abs(x)), k) for k in cpu for x, y in zip(cpu[k], cuda[k]))
print(f"{len(cpu)} tensors; largest relative difference {worst[0]:.2e} in {worst[1]}")
PY

if command -v nsys > /dev/null; then
  echo "== 5. Nsight Systems trace of split-6%"
  rm -rf art_trace
  $NEFT compile smol/model.onnx -o art_trace --neurons units6.json --unit mlp-unit > /dev/null
  nsys profile -o trace --force-overwrite true --trace cuda,nvtx \
    $NEFT train art_trace --data smol.jsonl --steps 10 --batch 8 --seq-len 256 --ep cuda --checkpoint-every 1000 > /dev/null
  nsys stats --report cuda_gpu_kern_sum,cuda_api_sum --format csv trace.nsys-rep | head -60
fi

echo "== 6. node placement of the split-6% training step"
rm -rf art_place
$NEFT compile smol/model.onnx -o art_place --neurons units6.json --unit mlp-unit > /dev/null
NEFT_ORT_LOG=verbose $NEFT train art_place --data smol.jsonl --steps 2 --batch 8 --seq-len 256 --ep cuda \
  --checkpoint-every 1000 > /dev/null 2> place.log || true
grep -E "placed on|Memcpy|not assigned" place.log | head -40
