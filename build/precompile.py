"""The Python source the frozen modules compile at import, compiled at build
time: the VM links no compiler (host_shim/no_compiler.c).

The standard library builds some functions from source text when a module is
imported: dataclasses each generated method (`exec`), namedtuple its __new__
(`eval`). record() imports every module to be frozen in a child Python 3.11,
with the VM's standard library first on its path, and notes each string
compiled, exec'd or eval'd; module_source() writes them, compiled, as the frozen
module `_precompiled_code`, which plugin/precompiled_exec.py reads in the VM.
The bytecode is this Python's: the build runs only on a Python 3.11, whose
bytecode the VM's CPython 3.11 reads (freeze.check_python).
"""

import ast
import hashlib
import marshal
import subprocess
import sys

MODULE = "_precompiled_code"

# Runs in the child: it imports nothing before its hooks are in (json would
# import functools, which builds a namedtuple), and reads its arguments from
# argv: paths, then "--", then module names.
_RECORDER = r"""
import builtins, sys
split = sys.argv.index("--")
sys.path[:0] = sys.argv[1:split]
seen = set()
real = {"exec": builtins.exec, "eval": builtins.eval, "compile": builtins.compile}

def noted(source, filename, mode, flags=0):
    if isinstance(source, str):
        seen.add((source, filename, mode, flags))

def namespaces(globals, locals):
    if globals is None:
        frame = sys._getframe(2)
        globals, locals = frame.f_globals, frame.f_locals if locals is None else locals
    return globals, locals

def exec(source, globals=None, locals=None, /, **kwargs):
    noted(source, "<string>", "exec")
    return real["exec"](source, *namespaces(globals, locals), **kwargs)

def eval(source, globals=None, locals=None, /):
    noted(source, "<string>", "eval")
    return real["eval"](source, *namespaces(globals, locals))

def compile(source, filename, mode, flags=0, *args, **kwargs):
    noted(source, filename, mode, flags)
    return real["compile"](source, filename, mode, flags, *args, **kwargs)

builtins.exec, builtins.eval, builtins.compile = exec, eval, compile
for name in sys.argv[split + 1:]:
    try:
        __import__(name)
    except Exception:  # not importable here (the VM's builtins): nothing to record
        pass
print(repr(sorted(seen)))
"""


def record(search_path, modules):
    """[(source, filename, mode, flags)] that importing `modules` compiles."""
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _RECORDER, *search_path, "--", *sorted(modules)],
        capture_output=True, text=True, check=True)
    return ast.literal_eval(result.stdout)


def key(source, filename, mode, flags):
    """The table's key for a compilation: 8 bytes of SHA-1 (precompiled_exec.py
    computes the same in the VM)."""
    text = f"{mode}\0{filename}\0{flags}\0{source}".encode("utf-8", "surrogatepass")
    return hashlib.sha1(text).digest()[:8]


def module_source(compiled):
    """Source of the module holding DATA: {key: marshalled code} for each
    compilation of `compiled` (from record()); each is unmarshalled when used."""
    table = {key(*item): marshal.dumps(compile(*item, dont_inherit=True)) for item in compiled}
    return f"DATA = {table!r}\n"
