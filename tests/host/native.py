"""Native transport: the plugin's Python runs in this CPython against the emulator.

Each NativePlugin is a fresh "VM": the SDK (`proxywasm`), the load balancer
(`ai_load_balancer`) and the entry module are purged from sys.modules and
imported again after `proxywasm.abi.bind()` got an object that exposes exactly
the target's host functions (so `abi.has("proxy_redis_call")` is False for
"envoy", as in the .wasm, whose `_proxywasm_host` module lacks it too).

Several NativePlugins may live at once (VMs sharing data): each keeps its own
module objects and puts them back into sys.modules before each callback, so an
import done lazily inside the plugin still finds its own VM's modules.
"""

import importlib
import os
import sys

from proxywasm import abi_table

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGIN_DIR = os.path.join(ROOT, "plugin")
TEST_PLUGIN_DIR = os.path.join(ROOT, "tests", "plugins")
VM_PACKAGES = ("proxywasm", "ai_load_balancer")


class HostNamespace:
    """The object bound as the host: only the target's functions are attributes."""

    def __init__(self, functions):
        self.__dict__.update(functions)

    def __repr__(self):
        return f"<host functions: {', '.join(sorted(self.__dict__))}>"


class NativePlugin:
    """Transport with `call(callback_name, *int_args) -> int | None`."""

    _active = None  # the NativePlugin whose modules sys.modules holds now

    def __init__(self, emulator, entry="ai_load_balancer.main"):
        for path in (TEST_PLUGIN_DIR, PLUGIN_DIR):
            if path not in sys.path:
                sys.path.insert(0, path)
        self.entry = entry
        self.target = emulator.target
        self._roots = VM_PACKAGES + (entry.split(".")[0],)
        self._purge()
        abi = importlib.import_module("proxywasm.abi")
        abi.bind(HostNamespace({**emulator.host_functions(),
                                "enable_callback": self._enable_callback,
                                "enable_callback_once": self._enable_callback_once,
                                "enable_callback_for": self._enable_callback_for,
                                "wait_for_body": self._wait_for_body}))
        self._once = set()  # (callback, context id): one call enters Python
        self._kept = set()  # (callback, context id): every call enters Python
        self._waits = {}  # context id -> body limit: chunks before the last answered here
        self.module = importlib.import_module(entry)
        self.dispatcher = importlib.import_module("proxywasm.dispatcher")
        self.abi = abi
        self._modules = {name: mod for name, mod in sys.modules.items() if self._owned(name)}
        NativePlugin._active = self
        # As the shim: a callback the plugin leaves at its default is answered here.
        self._callbacks = {name: self.dispatcher.handler(name)
                           for name, _, _ in abi_table.callbacks(self.target)}

    def _enable_callback(self, name):
        """As the shim's _proxywasm_host.enable_callback: `name` enters Python now."""
        self._callbacks[name] = getattr(self.dispatcher, name)

    def _enable_callback_once(self, name, context_id):
        """As the shim's _proxywasm_host.enable_callback_once."""
        self._once.add((name, context_id))

    def _enable_callback_for(self, name, context_id):
        """As the shim's _proxywasm_host.enable_callback_for."""
        self._kept.add((name, context_id))

    def _wait_for_body(self, context_id, limit):
        """As the shim's _proxywasm_host.wait_for_body."""
        self._waits[context_id] = limit

    def _owned(self, name):
        return any(name == root or name.startswith(root + ".") for root in self._roots)

    def _purge(self):
        for name in [n for n in sys.modules if self._owned(n)]:
            del sys.modules[name]

    def _activate(self):
        if NativePlugin._active is not self:
            self._purge()
            sys.modules.update(self._modules)
            NativePlugin._active = self

    def answered_without_python(self):
        """The callbacks the plugin leaves at the SDK's default, in ABI table order."""
        return [name for name, handler in self._callbacks.items() if handler is None]

    def call(self, callback, *args):
        if args and args[0] in self._waits and callback in ("proxy_on_request_body",
                                                            "proxy_on_delete"):
            if callback == "proxy_on_request_body" and not args[2] \
                    and args[1] <= self._waits[args[0]]:
                return abi_table.STOP_AND_BUFFER  # as the shim: a chunk before the last
            del self._waits[args[0]]
        handler = self._callbacks[callback]
        if self._once or self._kept:  # as the shim: a deleted context's pairs are forgotten
            if callback == "proxy_on_delete":
                self._once = {(n, c) for n, c in self._once if c != args[0]}
                self._kept = {(n, c) for n, c in self._kept if c != args[0]}
            elif handler is None and (callback, args[0]) in self._kept:
                handler = getattr(self.dispatcher, callback)
            elif handler is None and (callback, args[0]) in self._once:
                self._once.discard((callback, args[0]))
                handler = getattr(self.dispatcher, callback)
        if handler is None:
            return abi_table.RESULT_WITHOUT_PYTHON.get(callback, 0)
        self._activate()
        return handler(*args)

    def close(self):
        if NativePlugin._active is self:
            NativePlugin._active = None
