"""exec, eval and compile of source text, answered from build-time bytecode:
the VM links no Python compiler (host_shim/no_compiler.c, build/precompile.py).

The standard library compiles a little source at import (dataclasses' methods,
namedtuple's __new__); the build ran those imports, compiled each string and
froze the code as `_precompiled_code`. These builtins look a string up there
and run its code; any other string goes to CPython's own builtin, which raises
SystemError ("this VM has no Python compiler"). Code objects pass through.

The shim imports this module first of all (shim.c); natively, in tests, it is
not installed and nothing changes.
"""

import builtins
import marshal
import sys
from _sha1 import sha1

try:
    from _precompiled_code import DATA  # {key: marshalled code}
except ImportError:  # a build that links the compiler
    DATA = {}

_exec, _eval, _compile = builtins.exec, builtins.eval, builtins.compile


def _precompiled(source, filename, mode, flags):
    """The build's code for this compilation, or None (as build/precompile.key)."""
    if type(source) is not str:
        return None
    text = f"{mode}\0{filename}\0{flags}\0{source}".encode("utf-8", "surrogatepass")
    data = DATA.get(sha1(text).digest()[:8])
    return None if data is None else marshal.loads(data)


def _caller_namespaces(globals, locals):
    """exec's and eval's defaults: the namespaces of whoever called them."""
    if globals is None:
        frame = sys._getframe(2)
        globals = frame.f_globals
        if locals is None:
            locals = frame.f_locals
    return globals, locals


def exec(source, globals=None, locals=None, /, **kwargs):  # the builtin it stands in for
    globals, locals = _caller_namespaces(globals, locals)
    code = _precompiled(source, "<string>", "exec", 0) or source
    return _exec(code, globals, locals, **kwargs)


def eval(source, globals=None, locals=None, /):
    globals, locals = _caller_namespaces(globals, locals)
    return _eval(_precompiled(source, "<string>", "eval", 0) or source, globals, locals)


def compile(source, filename, mode, flags=0, dont_inherit=False, optimize=-1, **kwargs):
    return (_precompiled(source, filename, mode, flags)
            or _compile(source, filename, mode, flags, dont_inherit, optimize, **kwargs))


builtins.exec, builtins.eval, builtins.compile = exec, eval, compile
