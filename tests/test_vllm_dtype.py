"""The real vLLM replicas run in the dtype the CPU is fast at (vllm_replicas/start.py)."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "vllm_start", os.path.join(ROOT, "vllm_replicas", "start.py"))
start = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(start)

INTEL = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AMD = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2 fma\n"


def test_bfloat16_only_where_the_cpu_computes_it():
    dtype, why = start.cpu_dtype(INTEL)
    assert dtype == "bfloat16" and "avx512_bf16" in why and "amx_bf16" in why
    dtype, why = start.cpu_dtype(AMD)
    assert dtype == "float32" and "emulate" in why
    assert start.cpu_dtype("")[0] == "float32"


def test_auto_is_the_default_and_a_dtype_can_be_given():
    args = start.parse_args([])
    assert args.dtype == "auto"
    assert start.parse_args(["--dtype", "float32"]).dtype == "float32"
