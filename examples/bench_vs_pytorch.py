#!/usr/bin/env python3
"""A training step side by side: PyTorch and neft on the same model shape and batch.

    python3 examples/bench_vs_pytorch.py [--shapes 4x64,8x128] [--steps 5] [--warmup 2]
        [--threads 2] [--fraction 0.06] [--seed 0]
    python3 examples/bench_vs_pytorch.py --matmuls [--threads 2]

The model is SmolLM2-135M's shape (Llama: 30 layers, hidden 576, MLP 1536, 9 query and 3
key/value heads, vocabulary 49,152, tied embeddings) with random weights: step time and
memory do not depend on the values. Configurations, each in its own process so that its
peak resident memory (VmHWM) is its own:

- PyTorch full fine-tuning (AdamW, every parameter);
- PyTorch dense-mask NeFT, the paper's method: the MLP weights train, gradient hooks zero
  every row outside the selected units (gate and up rows, down columns);
- PyTorch + PEFT LoRA, r = 25 on gate/up/down (4.75M parameters, about 6% units' worth);
- neft split, the same units; neft full MLP (`examples/bench_train`, ONNX Runtime CPU).

The units are a seeded random `--fraction` of each block's MLP units, written to a file
that both sides read. Step time: median (and min) of `--steps` steps after `--warmup`.
The script makes its own virtual environment (.cache/bench-venv: torch, transformers,
peft) and builds the neft side in release mode.
"""

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".cache", "bench-venv")
PACKAGES = ["torch==2.15.0", "transformers==5.24.0", "peft==0.21.2"]
SMOLLM2 = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
)
PYTORCH_CONFIGS = ["pytorch full", "pytorch dense-mask NeFT", "pytorch + PEFT LoRA r=25"]


def venv_python():
    python = os.path.join(VENV, "bin", "python3")
    if not os.path.exists(python):
        print(f"bench: making {VENV} ({', '.join(PACKAGES)})", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", *PACKAGES], check=True)
    return python


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(args):
    """Runs one PyTorch configuration; prints one JSON line."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2, attn_implementation="sdpa"))
    model.train()
    units = json.load(open(args.units))
    if args.child == "pytorch full":
        params = list(model.parameters())
    elif args.child == "pytorch dense-mask NeFT":
        for p in model.parameters():
            p.requires_grad_(False)
        params = []
        for layer, rows in zip(model.model.layers, units):
            mlp = layer.mlp
            keep = torch.zeros(SMOLLM2["intermediate_size"])
            keep[rows] = 1.0
            for lin, mask in [(mlp.gate_proj, keep[:, None]), (mlp.up_proj, keep[:, None]), (mlp.down_proj, keep[None, :])]:
                lin.weight.requires_grad_(True)
                lin.weight.register_hook(lambda g, m=mask: g * m)
                params.append(lin.weight)
    else:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=25, lora_alpha=50, lora_dropout=0.0, target_modules=["gate_proj", "up_proj", "down_proj"])
        )
        params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    times = []
    for k in range(args.warmup + args.steps):
        ids = torch.randint(0, SMOLLM2["vocab_size"], (args.batch, args.seq), generator=gen)
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        if k >= args.warmup:
            times.append(time.perf_counter() - t)
    print(json.dumps({"config": args.child, "trainable": trainable, "times": times, "peak_mb": peak_rss_mb()}))


MATMUL_SHAPES = [(576, 1536), (1536, 576), (576, 576), (576, 49152)]


def torch_matmul_rates(threads, rows=256, reps=30):
    """Child: PyTorch's GFLOP/s for X·W and X·Wᵀ at each shape; prints one JSON line."""
    import torch

    torch.set_num_threads(threads)
    out = []
    for k, n in MATMUL_SHAPES:
        x = torch.randn(rows, k)
        rates = []
        for w in (torch.randn(k, n), torch.randn(n, k).t()):
            times = []
            for i in range(reps + 3):
                t = time.perf_counter()
                x @ w
                if i >= 3:
                    times.append(time.perf_counter() - t)
            rates.append(2 * rows * k * n / statistics.median(times) / 1e9)
        out.append(rates)
    print(json.dumps(out))


def matmul_rates(python, threads):
    """The floor under a step's products: PyTorch's and ONNX Runtime's rates, one table."""
    cmd = [python, os.path.abspath(__file__), "--child", "matmuls", "--threads", str(threads)]
    torch_rates = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())
    cmd = ["cargo", "run", "--quiet", "--release", "--example", "matmul_rate", "--", "--threads", str(threads)]
    ort_table = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    ort_rows = [line for line in ort_table.splitlines() if line.startswith("| [")]
    print(f"256 rows, {threads} threads, GFLOP/s (median of 30)\n")
    print("| product | PyTorch X·W | PyTorch X·Wᵀ | ONNX Runtime X·W | ONNX Runtime X·Wᵀ |")
    print("|---|---:|---:|---:|---:|")
    for (t_plain, t_trans), row in zip(torch_rates, ort_rows):
        cells = [c.strip() for c in row.strip("|").split("|")]
        print(f"| {cells[0]} | {t_plain:.0f} | {t_trans:.0f} | {cells[1]} | {cells[2]} |")


def run_pytorch(python, config, args, batch, seq, units):
    cmd = [python, os.path.abspath(__file__), "--child", config, "--units", units, "--batch", str(batch)]
    cmd += ["--seq", str(seq), "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_neft(args, batch, seq, units, tmp):
    out_json = os.path.join(tmp, f"neft_{batch}x{seq}.json")
    cmd = ["cargo", "run", "--quiet", "--release", "--example", "bench_train", "--"]
    cmd += ["--layers", "30", "--hidden", "576", "--ffn", "1536", "--vocab", "49152", "--kv-heads", "3"]
    cmd += ["--batch", str(batch), "--seq", str(seq), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--threads", str(args.threads), "--units", units, "--only", "full,split", "--json", out_json]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    rows = json.load(open(out_json))
    return [
        {
            "config": "neft " + r["config"],
            "trainable": r["trainable_params"],
            "median_s": r["step_ms_median"] / 1e3,
            "min_s": r["step_ms_min"] / 1e3,
            "peak_mb": r["peak_rss_mb"],
        }
        for r in rows
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4x64,8x128")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fraction", type=float, default=0.06)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child")
    ap.add_argument("--units")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--seq", type=int)
    ap.add_argument("--matmuls", action="store_true",
                    help="only the rate of single matrix products, PyTorch beside ONNX Runtime (examples/matmul_rate.rs)")
    args = ap.parse_args()
    if args.child == "matmuls":
        return torch_matmul_rates(args.threads)
    if args.child:
        return child(args)

    python = venv_python()
    if args.matmuls:
        return matmul_rates(python, args.threads)
    tmp = os.path.join(ROOT, "target", "bench_vs_pytorch")
    os.makedirs(tmp, exist_ok=True)
    rng = random.Random(args.seed)
    n = SMOLLM2["intermediate_size"]
    k = round(n * args.fraction)
    units = os.path.join(tmp, "units.json")
    with open(units, "w") as f:
        json.dump([sorted(rng.sample(range(n), k)) for _ in range(SMOLLM2["num_hidden_layers"])], f)
    print(f"SmolLM2-135M shape, random weights; {k} of {n} MLP units per block (seed {args.seed}); "
          f"{args.threads} threads; median of {args.steps} steps after {args.warmup} warm-up, each configuration in its own process")
    for shape in args.shapes.split(","):
        batch, seq = map(int, shape.split("x"))
        rows = []
        for config in PYTORCH_CONFIGS:
            r = run_pytorch(python, config, args, batch, seq, units)
            rows.append({"config": r["config"], "trainable": r["trainable"], "median_s": statistics.median(r["times"]),
                         "min_s": min(r["times"]), "peak_mb": r["peak_mb"]})
            print(f"  [{shape}] {config}: {rows[-1]['median_s']:.3f} s", file=sys.stderr)
        rows += run_neft(args, batch, seq, units, tmp)
        by = {r["config"]: r for r in rows}
        mask, lora = by[PYTORCH_CONFIGS[1]]["median_s"], by[PYTORCH_CONFIGS[2]]["median_s"]
        full_mem = by[PYTORCH_CONFIGS[0]]["peak_mb"]
        print(f"\n### batch {batch} x seq {seq}\n")
        print("| configuration | trainable | step (s, median) | min | vs PyTorch dense-mask | vs PEFT LoRA | peak RSS (GiB) | vs PyTorch full |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['config']} | {r['trainable'] / 1e6:.2f}M | {r['median_s']:.3f} | {r['min_s']:.3f} | "
                  f"{r['median_s'] / mask:.2f}x | {r['median_s'] / lora:.2f}x | {r['peak_mb'] / 1024:.2f} | {r['peak_mb'] / full_mem:.2f}x |")


if __name__ == "__main__":
    main()
