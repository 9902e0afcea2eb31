"""Builds the compiled reference filter (round_robin.c) with PyPI ziglang's
wasm32-wasi C compiler; prints the .wasm path.

    .venv/bin/python bench/compiled_reference/build.py [OUT.wasm]
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def build(out):
    """Compiles and links round_robin.c into `out`; returns `out`."""
    subprocess.run([sys.executable, "-m", "ziglang", "cc", "-target", "wasm32-wasi",
                    "-mexec-model=reactor", "-O2", "-s", os.path.join(HERE, "round_robin.c"),
                    "-o", out], check=True)
    return out


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else
                os.path.join(HERE, "..", "..", "dist", "compiled-reference.wasm")))
