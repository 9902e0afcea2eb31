"""The fake host's stubs, generated from the one ABI table.

`HostStubs` gets one method per host function of plugin/proxywasm/abi_table.py,
with the Python-level calling convention the table's docstring defines: the
non-out parameters in order (bytes for `in`, int for the integer kinds), and as
result the status alone when the function has no outs, else (status, *outs).
Every stub answers UNIMPLEMENTED (with empty outs): a subclass overrides the
functions it implements, and a function added to the table is at once known to
the test host (as unimplemented) instead of silently missing.
"""

from proxywasm import abi_table

# What an unimplemented function's outs hold, by kind.
OUT_DEFAULTS = {"out": b"", "out_u32": 0, "out_u64": 0}

# name -> ((kind, name), ...) for every host function of every target.
HOST_FUNCTIONS = {name: params for name, _, params in abi_table.HOST_FUNCTIONS}


def target_functions(target):
    """Names of the host functions a build target imports, in table order."""
    return [name for name, _ in abi_table.host_functions(target)]


def _make_stub(name, params):
    ins = [pname for _, pname in abi_table.in_params(params)]
    outs = abi_table.out_kinds(params)
    result = (abi_table.UNIMPLEMENTED, *(OUT_DEFAULTS[k] for k in outs)) if outs \
        else abi_table.UNIMPLEMENTED
    # A real signature, so a wrong argument count fails like the shim's arity check.
    source = f"def {name}(self, {', '.join(ins)}):\n    return _result\n" if ins \
        else f"def {name}(self):\n    return _result\n"
    namespace = {"_result": result}
    exec(source, namespace)  # noqa: S102 - generated from the ABI table, not input
    stub = namespace[name]
    shape = ", ".join(f"{pname}: {kind}" for kind, pname in params if not kind.startswith("out"))
    returns = "status" if not outs else "(status, " + ", ".join(
        pname for kind, pname in params if kind.startswith("out")) + ")"
    stub.__doc__ = f"{name}({shape}) -> {returns}. Stub: answers Unimplemented."
    stub.__qualname__ = f"HostStubs.{name}"
    stub.is_stub = True
    return stub


class HostStubs:
    """Base class of the test host: every ABI host function, unimplemented."""


for _name, _params in HOST_FUNCTIONS.items():
    setattr(HostStubs, _name, _make_stub(_name, _params))
del _name, _params


def is_implemented(host, name):
    """True when `host` overrides the generated stub for `name`."""
    return not getattr(getattr(type(host), name), "is_stub", False)
