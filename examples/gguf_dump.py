"""Prints a GGUF file as the Python `gguf` package reads it, as JSON: metadata (scalars
and strings; arrays by length) and every tensor's name, type, outermost-first shape and
values dequantized to float32. Used by tests/export_formats.rs to check neft's GGUF
export against an independent reader.

    python3 examples/gguf_dump.py FILE.gguf
"""

import json
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize


def field_value(field):
    if field.types and field.types[0] == GGUFValueType.ARRAY:
        return {"array": len(field.data)}
    value = field.contents()
    return value


def main(path):
    reader = GGUFReader(path)
    metadata = {name: field_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = []
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).astype(np.float32)
        tensors.append(
            {
                "name": t.name,
                "type": t.tensor_type.name,
                # The package lists dims innermost first, as the file does.
                "shape": [int(d) for d in reversed(t.shape.tolist())],
                "values": values.reshape(-1).tolist(),
            }
        )
    json.dump({"metadata": metadata, "tensors": tensors}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
