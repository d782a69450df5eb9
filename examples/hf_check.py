"""Checks neft's exports against the tools that load them, on SmolLM2-135M-Instruct:

1. NeFT (2% of the MLP units, a few steps) exported with `--hf`: transformers'
   AutoModelForCausalLM gives the merged ONNX model's logits; AutoTokenizer loads the
   tokenizer with the same end token neft trains with.
2. The same run exported with `--gguf` (F32): the gguf package reads tensors equal to
   the checkpoint's (q/k rows in llama.cpp's order, undone here).
3. LoRA (r = 8 on gate/up/down) exported with `--peft`: PeftModel.from_pretrained on
   the base model's `--hf` checkpoint gives the merged ONNX model's logits.

    bash .ci/setup --demo && cargo build --release --bin neft
    python3 examples/hf_check.py [--work neft-hf-check] [--steps 8]

It makes its own virtual environment (.cache/bench-venv: torch, transformers, peft,
gguf, onnxruntime) on first use and re-runs itself there. Prints one line per check
with the largest difference, and exits 1 if any exceeds its tolerance.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".cache", "bench-venv")
PACKAGES = ["torch==2.15.0", "transformers==5.24.0", "peft==0.21.2", "gguf==0.19.0", "onnxruntime==1.32.0"]
NEFT = os.path.join(ROOT, "target", "release", "neft")
GGUF = os.path.join(ROOT, ".cache", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
TOLERANCE = 1e-4


def in_venv():
    python = os.path.join(VENV, "bin", "python3")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", *PACKAGES], check=True)
    os.execv(python, [python, *sys.argv])


def neft(*args, cwd):
    print("$ neft " + " ".join(args), file=sys.stderr)
    subprocess.run([NEFT, *args], cwd=cwd, check=True, stdout=sys.stderr)


def write_data(work):
    """English verses as plain text lines: calibration and training data."""
    lines = []
    with open(os.path.join(ROOT, ".cache", "bible", "kjv.jsonl")) as f:
        for line in f:
            verse = json.loads(line)
            text = verse.get("text") or verse.get("verse") or ""
            if text:
                lines.append(json.dumps({"text": text}))
            if len(lines) == 64:
                break
    path = os.path.join(work, "verses.jsonl")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def prepare(work, steps):
    os.makedirs(work, exist_ok=True)
    model = os.path.join(work, "smollm2")
    if not os.path.exists(os.path.join(model, "model.onnx")):
        neft("build-model", "llama", "--gguf", GGUF, "-o", "smollm2", cwd=work)
    write_data(work)
    tok = "smollm2/tokenizer.json"
    train = ["--data", "verses.jsonl", "--tokenizer", tok, "--steps", str(steps), "--batch", "4", "--seq-len", "64"]
    neft("compile", "smollm2/model.onnx", "-o", "neft", "--data", "verses.jsonl", "--tokenizer", tok,
         "--budget", "2%", "--unit", "mlp-unit", "--lr", "2e-3", cwd=work)
    neft("train", "neft", *train, cwd=work)
    neft("export", "neft", "--merged", "neft-merged.onnx", "--hf", "hf-neft", "--gguf", "neft.gguf",
         "--gguf-type", "f32", cwd=work)
    # The untrained state of the same artifacts: the base model as a checkpoint.
    neft("export", "neft", "--state", "neft/state.safetensors", "--hf", "hf-base", cwd=work)
    neft("compile", "smollm2/model.onnx", "-o", "lora", "--mode", "lora", "--rank", "8", "--alpha", "16",
         "--targets", "mlp", "--lr", "2e-3", cwd=work)
    neft("train", "lora", *train, cwd=work)
    neft("export", "lora", "--peft", "peft", "--merged", "lora-merged.onnx", cwd=work)


def batch(tokenizer):
    texts = ["In the beginning God created the heaven and the earth.", "Mulungu anati, Pakhale kuwala."]
    ids = [tokenizer(t)["input_ids"][:12] for t in texts]
    n = min(len(i) for i in ids)
    return [i[:n] for i in ids]


def ort_logits(path, ids):
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input_ids": np.array(ids, dtype=np.int64)})[0]


def torch_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits.numpy()


def report(name, diff, failures):
    ok = diff <= TOLERANCE
    print(f"{name:<58} max |diff| = {diff:.2e}  {'ok' if ok else 'FAIL'}")
    if not ok:
        failures.append(name)


def check(work):
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    torch.set_num_threads(2)
    failures = []
    hf = os.path.join(work, "hf-neft")
    tokenizer = AutoTokenizer.from_pretrained(hf)
    ids = batch(tokenizer)
    print(f"tokenizer: eos {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}), bos {tokenizer.bos_token!r}, "
          f"pad {tokenizer.pad_token!r}; generation_config eos {GenerationConfig.from_pretrained(hf).eos_token_id}")
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    report("transformers(--hf) vs merged ONNX, NeFT", float(np.abs(torch_logits(model, ids) - ort_logits(os.path.join(work, "neft-merged.onnx"), ids)).max()), failures)

    base = AutoModelForCausalLM.from_pretrained(os.path.join(work, "hf-base"), dtype=torch.float32).eval()
    report("transformers(--hf of the base) vs the base ONNX", float(np.abs(torch_logits(base, ids) - ort_logits(os.path.join(work, "smollm2", "model.onnx"), ids)).max()), failures)

    peft_model = PeftModel.from_pretrained(base, os.path.join(work, "peft")).eval()
    report("PEFT(--peft on the base) vs merged ONNX, LoRA", float(np.abs(torch_logits(peft_model, ids) - ort_logits(os.path.join(work, "lora-merged.onnx"), ids)).max()), failures)

    # GGUF: every tensor against the checkpoint (llama.cpp names, q/k rows permuted).
    weights = load_file(os.path.join(hf, "model.safetensors"))
    cfg = json.load(open(os.path.join(hf, "config.json")))
    reader = GGUFReader(os.path.join(work, "neft.gguf"))
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    parts = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
             "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    worst, seen = 0.0, 0
    for t in reader.tensors:
        if t.name in names:
            hf_name = names[t.name]
        else:
            _, layer, part, _ = t.name.split(".")
            hf_name = f"model.layers.{layer}.{parts[part]}.weight"
        ours = weights[hf_name]
        theirs = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(ours.shape)
        heads = {"attn_q": cfg["num_attention_heads"], "attn_k": cfg["num_key_value_heads"]}.get(t.name.split(".")[2] if t.name.count(".") == 3 else "")
        if heads:
            out, inp = theirs.shape
            theirs = theirs.reshape(heads, out // heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)
        worst = max(worst, float(np.abs(ours - theirs).max()))
        seen += 1
    report(f"gguf package(--gguf F32) vs the checkpoint, {seen} tensors", worst, failures)
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=os.path.join(ROOT, "neft-hf-check"))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--skip-neft", action="store_true", help="reuse the exports already in --work")
    args = parser.parse_args()
    in_venv()
    work = os.path.abspath(args.work)
    if not args.skip_neft:
        prepare(work, args.steps)
    failures = check(work)
    if failures:
        print("failed: " + ", ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
