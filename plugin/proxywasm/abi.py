"""The raw host binding: the only module that sees status codes.

Inside the .wasm the host is the builtin `_proxywasm_host` module the shim
generates from abi_table; in native tests a fake host object with the same
methods is bound with bind(). call() turns a bad status into a HostError.
"""

from . import abi_table

_host = None
IN_VM = False  # True inside the .wasm, where the host is the shim's builtin module


class HostError(Exception):
    """A host function answered with a status other than Ok."""

    def __init__(self, function, status):
        super().__init__(f"{function}: {abi_table.STATUS_NAMES.get(status, status)}")
        self.function = function
        self.status = status


class NotFound(HostError):
    """No such header, property, shared-data key or queue."""


class Empty(HostError):
    """A shared queue has nothing to dequeue."""


class CasMismatch(HostError):
    """A shared-data write lost a compare-and-swap race."""


class Unimplemented(HostError):
    """The host does not implement this function."""


_ERRORS = {abi_table.NOT_FOUND: NotFound, abi_table.EMPTY: Empty,
           abi_table.CAS_MISMATCH: CasMismatch, abi_table.UNIMPLEMENTED: Unimplemented}


def bind(host):
    """Binds the host functions to `host` (the builtin module, or a test fake)."""
    global _host
    _host = host


def bound():
    """True once a host is bound (always inside the .wasm)."""
    return _host is not None


def has(function):
    """True when the host provides `function`: how the SDK tells Higress from Envoy."""
    return hasattr(_host, function)


def enable_callback(name):
    """Makes the host enter Python for callback `name` from now on (one the
    plugin left to the host at start). A no-op where every callback enters."""
    enable = getattr(_host, "enable_callback", None)
    if enable is not None:
        enable(name)


def enable_callback_for(name, context_id):
    """Makes the host enter Python for every later call of callback `name` (left
    to the host) for context `context_id`, until it is deleted. A no-op where
    every callback enters."""
    enable = getattr(_host, "enable_callback_for", None)
    if enable is not None:
        enable(name, context_id)


def wait_for_body(context_id, limit):
    """Makes the host answer the request body chunks of `context_id` that are
    not the last with StopIterationAndBuffer, without entering Python, while the
    body is at most `limit` bytes. A no-op where every callback enters."""
    wait = getattr(_host, "wait_for_body", None)
    if wait is not None:
        wait(context_id, min(limit, 0xFFFFFFFF))  # body sizes are 32-bit


def enable_callback_once(name, context_id):
    """Makes the host enter Python for the next call of callback `name` (left
    to the host) for context `context_id`, once. A no-op where every callback
    enters."""
    enable = getattr(_host, "enable_callback_once", None)
    if enable is not None:
        enable(name, context_id)


def call(function, *args):
    """Calls a host function; returns its outs (None, one value, or a tuple).

    Raises HostError (or a subclass) for any status but Ok.
    """
    result = getattr(_host, function)(*args)
    if result.__class__ is int:
        if result:
            raise _ERRORS.get(result, HostError)(function, result)
        return None
    status = result[0]
    if status:
        raise _ERRORS.get(status, HostError)(function, status)
    return result[1] if len(result) == 2 else result[1:]


try:
    import _proxywasm_host
except ImportError:  # native: the tests bind a fake host
    pass
else:
    bind(_proxywasm_host)
    IN_VM = True
