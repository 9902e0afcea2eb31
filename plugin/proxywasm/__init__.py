"""A proxy-wasm SDK for Python: knows nothing about LLMs.

    from proxywasm import RootContext, HttpContext, set_root_context

Layers: abi_table (the raw ABI, data) -> abi (binding, statuses) -> hostcalls
(typed calls) -> context (RootContext/HttpContext) <- dispatcher (callbacks in).
"""

from . import hostcalls  # noqa: F401
from .context import CONTINUE, PAUSE, HttpContext, RootContext  # noqa: F401
from .dispatcher import set_root_context  # noqa: F401
