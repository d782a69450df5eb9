#!/usr/bin/env python3
"""What a CUDA session of a train step would place where, worked out on the CPU.

    python3 examples/step_tensors.py ART_DIR [--batch 8] [--seq 128] [--top 12]

ART_DIR is a `neft compile` (or `bench_train --keep`) folder. The script runs its
`train_step.onnx` once with ONNX Runtime's CPU provider on a random batch, fetching every
integer and boolean tensor the step computes, and prints:

- each operator with its input element types, and whether ONNX Runtime's CUDA provider
  has a kernel for those types at the graph's opset (from ONNX Runtime's published kernel
  table, copied below for the operators neft emits; an operator missing there is reported
  as unknown). A node without a CUDA kernel runs on the CPU, and every float tensor it
  reads or writes crosses between host and device;
- the integer and boolean tensors by size. ONNX Runtime keeps shape arithmetic on the CPU
  (a `Shape` writes host memory, and kernels such as `Reshape` read their shape input from
  host memory), so these are where host-device copies can arise; their sizes bound what
  such copies move.

The script makes its own virtual environment (.cache/step-venv: onnx, onnxruntime,
numpy) unless it already runs in one that has them.
"""

import argparse
import collections
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".cache", "step-venv")
PACKAGES = ["onnx==1.23.2", "onnxruntime==1.32.0", "numpy"]

FLOATS = {"FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE"}
INTS = {"INT32", "INT64"}
ALL = FLOATS | INTS | {"BOOL", "INT8", "UINT8", "INT16", "UINT16", "UINT32", "UINT64"}
# Element types of the CUDA provider's kernels at opset 18, for the operators neft's
# train steps contain (ONNX Runtime's OperatorKernels.md, CUDAExecutionProvider). A
# type listed for an operator is accepted for every one of its type-constrained inputs
# except where noted (index inputs are INT64 throughout).
CUDA = {
    "Add": FLOATS | INTS | {"UINT32", "UINT64"}, "Sub": FLOATS | INTS | {"UINT32", "UINT64"},
    "Mul": FLOATS | INTS | {"UINT32", "UINT64"}, "Div": FLOATS | INTS | {"UINT32", "UINT64"},
    "Pow": FLOATS | INTS, "Neg": FLOATS | INTS | {"INT8", "INT16"}, "Max": FLOATS | INTS, "Min": FLOATS | INTS,
    "Sum": FLOATS, "Sqrt": FLOATS, "Reciprocal": FLOATS - {"BFLOAT16"}, "Exp": FLOATS, "Log": FLOATS - {"BFLOAT16"},
    "Sigmoid": FLOATS, "Tanh": FLOATS, "Sin": FLOATS - {"BFLOAT16"}, "Cos": FLOATS - {"BFLOAT16"},
    "Softmax": FLOATS, "LogSoftmax": FLOATS - {"BFLOAT16"}, "MatMul": FLOATS, "Gemm": FLOATS,
    "ReduceSum": FLOATS | INTS, "ReduceMean": FLOATS - {"BFLOAT16"} | {"INT32"},
    "Equal": FLOATS - {"BFLOAT16"} | INTS | {"BOOL"}, "Greater": FLOATS - {"BFLOAT16"} | INTS,
    "Less": FLOATS - {"BFLOAT16"} | INTS, "Not": {"BOOL"}, "And": {"BOOL"}, "Or": {"BOOL"},
    "Where": {"BOOL"} | FLOATS | INTS | {"UINT8"}, "NonZero": {"BOOL", "FLOAT", "FLOAT16", "INT32", "INT64", "UINT8"},
    "Range": {"DOUBLE", "FLOAT", "INT16", "INT32", "INT64"}, "Pad": {"BOOL", "DOUBLE", "FLOAT", "FLOAT16", "INT64"},
    "CumSum": FLOATS - {"BFLOAT16"} | INTS | {"UINT32", "UINT64"},
    **{op: ALL for op in ["Cast", "Concat", "ConstantOfShape", "Expand", "Gather", "GatherElements", "Identity",
                          "Reshape", "ScatterElements", "ScatterND", "Shape", "Size", "Slice", "Split", "Squeeze",
                          "Unsqueeze", "Transpose", "Flatten", "Tile"]},
}
# Inputs the CUDA kernels read from host memory (shape arithmetic).
HOST_INPUTS = {"Reshape": {1}, "Expand": {1}, "Slice": {1, 2, 3, 4}, "ConstantOfShape": {0}, "Squeeze": {1},
               "Unsqueeze": {1}, "ReduceSum": {1}, "ReduceMean": {1}, "Split": {1}, "Pad": {1, 3},
               "Range": {0, 1, 2}, "Tile": {1}, "CumSum": {1}}


def ensure_venv():
    try:
        import numpy, onnx, onnxruntime  # noqa: F401
        return
    except ImportError:
        pass
    python = os.path.join(VENV, "bin", "python3")
    if not os.path.exists(python):
        print(f"step_tensors: making {VENV} ({', '.join(PACKAGES)})", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", *PACKAGES], check=True)
    os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:]])


def read_state(path):
    """The tensors of a safetensors file (F32 and I64, as neft writes them)."""
    import numpy as np
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    kinds = {"F32": np.float32, "I64": np.int64}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=kinds[t["dtype"]]).reshape(t["shape"])
    return out


def main():
    ensure_venv()
    import numpy as np
    import onnx
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("art")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    path = os.path.join(args.art, "train_step.onnx")
    model = onnx.load(path, load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    name_of = onnx.TensorProto.DataType.Name
    types = {v.name: name_of(v.type.tensor_type.elem_type) for v in [*g.input, *g.value_info, *g.output]}
    types.update({t.name: name_of(t.data_type) for t in g.initializer})

    print(f"{path}: {len(g.node)} nodes, opset {opset}\n")
    print("| operator | input types | nodes | CUDA kernel |\n|---|---|---:|---|")
    inventory = collections.Counter()
    for n in g.node:
        inventory[(n.op_type, tuple(types.get(i, "?") if i else "-" for i in n.input))] += 1
    missing = 0
    for (op, ins), count in sorted(inventory.items()):
        known = CUDA.get(op)
        typed = [t for k, t in enumerate(ins) if t != "-" and k not in HOST_INPUTS.get(op, ())]
        verdict = "unknown" if known is None else ("yes" if all(t in known for t in typed) else "NO")
        missing += verdict != "yes"
        print(f"| {op} | {', '.join(ins)} | {count} | {verdict} |")
    print(f"\noperators without a known CUDA kernel for their types: {missing}\n")

    # Every integer and boolean tensor the step computes becomes an output.
    wanted = [n for n, t in types.items() if t in (INTS | {"BOOL"}) and n not in {i.name for i in g.input}]
    produced = {o for node in model.graph.node for o in node.output}
    wanted = [n for n in wanted if n in produced]
    known_outputs = {o.name for o in model.graph.output}
    for n in wanted:
        if n not in known_outputs:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    state = read_state(os.path.join(args.art, "state.safetensors"))
    rng = np.random.default_rng(0)
    feed = {}
    for i in model.graph.input:
        if i.name in state:
            feed[i.name] = state[i.name]
            continue
        elem = i.type.tensor_type.elem_type
        rank = len(i.type.tensor_type.shape.dim)
        if rank == 0:
            feed[i.name] = np.array(1e-4, dtype=np.float32)
        elif elem == onnx.TensorProto.INT64 and "mask" in i.name:
            feed[i.name] = np.ones((args.batch, args.seq), dtype=np.int64)
        elif elem == onnx.TensorProto.INT64:
            feed[i.name] = rng.integers(0, 100, size=(args.batch, args.seq), dtype=np.int64)
        else:
            sys.exit(f"step_tensors: no value for input '{i.name}'")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    tmp = os.path.join(args.art, ".step_tensors.onnx")
    onnx.save(model, tmp)
    try:
        session = ort.InferenceSession(tmp, opts, providers=["CPUExecutionProvider"])
        values = session.run(wanted, feed)
    finally:
        os.remove(tmp)
    producer = {o: n for n in model.graph.node for o in n.output}
    readers = collections.defaultdict(list)
    for n in model.graph.node:
        for k, i in enumerate(n.input):
            readers[i].append((n.op_type, k in HOST_INPUTS.get(n.op_type, ())))
    rows = sorted(zip(wanted, values), key=lambda nv: -nv[1].nbytes)
    total = sum(v.nbytes for _, v in rows)
    print(f"integer and boolean tensors at batch {args.batch} x {args.seq}: {len(rows)}, "
          f"{total / 1e3:.1f} kB in all; the largest:\n")
    print("| tensor | made by | read by (host input?) | shape | bytes |\n|---|---|---|---|---:|")
    for name, v in rows[:args.top]:
        read = ", ".join(f"{op}{' (host)' if host else ''}" for op, host in readers[name]) or "graph output"
        print(f"| {name} | {producer[name].op_type} | {read} | {list(v.shape)} | {v.nbytes:,} |")


if __name__ == "__main__":
    main()
