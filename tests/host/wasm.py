"""Wasm transport: the built .wasm runs in wasmtime against the emulator.

Every `env.proxy_*` import of the target is defined from abi_table, with wasm
types derived from the parameter kinds, and marshals memory to the SAME
emulator methods the native transport calls:

    in              (ptr, size)          -> bytes read from linear memory
    out             (ptr_ptr, size_ptr)  <- bytes copied into memory from the
                                            module's malloc; pointer and size
                                            written as little-endian u32
    out_u32/out_u64 (ptr)                <- the integer written little-endian
    u32 i32 / u64 i64                    -> i32 / i64 by value

Outs are written only when the status is Ok (Envoy does the same), so the
shim's defaults (NULL, 0) hold otherwise.

A module is compiled once per process (and by wasmtime's cache across runs);
each WasmPlugin is a new Store + Instance: a fresh VM. `_initialize` runs once,
then callbacks are the exports named by abi_table.CALLBACKS.
"""

import atexit
import ctypes
import os
import shutil
import struct
import tempfile
import threading
import weakref

import wasmtime
from wasmtime import _ffi as ffi

from proxywasm import abi_table

I32, I64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
_WASM_TYPES = {"in": (I32, I32), "out": (I32, I32), "out_u32": (I32,), "out_u64": (I32,),
               "u32": (I32,), "i32": (I32,), "u64": (I64,), "i64": (I64,)}
U32_MASK, U64_MASK = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF

_engine = None
_modules = {}  # (path, mtime, size) -> wasmtime.Module
_export_names = {}  # id(module) -> frozenset of export names
_checked = set()    # (id(module), target) that passed check_module
_lock = threading.Lock()


_stdio_directory = None


def _stdio_dir():
    global _stdio_directory
    if _stdio_directory is None:
        _stdio_directory = tempfile.mkdtemp(prefix="ailb-wasm-stdio-")
        atexit.register(shutil.rmtree, _stdio_directory, True)
    return _stdio_directory


def engine():
    """The process's wasmtime Engine (compile cache on when the API allows)."""
    global _engine
    if _engine is None:
        config = wasmtime.Config()
        try:
            config.cache = True
        except wasmtime.WasmtimeError:
            pass  # no cache directory: compile each run
        _engine = wasmtime.Engine(config)
    return _engine


def load_module(path):
    """The compiled module for a .wasm file, compiled once per process."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    with _lock:
        module = _modules.get(key)
        if module is None:
            module = _modules[key] = wasmtime.Module.from_file(engine(), path)
            _export_names[id(module)] = frozenset(e.name for e in module.exports)
    return module


def export_names(module):
    """The names a module exports (listed once per module: it takes milliseconds)."""
    names = _export_names.get(id(module))
    if names is None:
        names = _export_names[id(module)] = frozenset(e.name for e in module.exports)
    return names


def check_module(module, target):
    """Raises unless the module fits `target` as Envoy would load it: it exports
    memory, an allocator, _initialize, every callback of the target and its ABI
    marker, and imports no host function the target lacks (a hard load failure
    in Envoy)."""
    exports = export_names(module)
    wanted = {name for name, _, _ in abi_table.callbacks(target)}
    wanted |= {"memory", "_initialize", abi_table.TARGETS[target][1]}
    problems = [f"no export {name}" for name in sorted(wanted - exports)]
    if not exports & {"malloc", "proxy_on_memory_allocate"}:
        problems.append("no export malloc")
    offered = {name for name, _ in abi_table.host_functions(target)}
    problems += [f"imports env.{i.name}, which {target} does not offer"
                 for i in module.imports if i.module == "env" and i.name not in offered]
    if problems:
        raise ValueError(f"module does not fit target {target!r}: {'; '.join(problems)}")


class WasmPlugin:
    """Transport with `call(callback_name, *int_args) -> int | None`."""

    def __init__(self, emulator, wasm_path, capture_stdio=True):
        self.emulator = emulator
        self.target = emulator.target
        self.module = load_module(wasm_path)
        if (id(self.module), self.target) not in _checked:
            check_module(self.module, self.target)
            _checked.add((id(self.module), self.target))
        self.store = wasmtime.Store(engine())
        wasi = wasmtime.WasiConfig()
        self._stdio_paths = None
        if capture_stdio:
            # Files, not stdout_custom: a custom-output callback into Python makes
            # wasmtime's tokio thread abort the process at interpreter exit.
            directory = _stdio_dir()
            self._stdio_paths = tuple(os.path.join(directory, f"{id(self)}-{n}.txt")
                                      for n in ("stdout", "stderr"))
            wasi.stdout_file, wasi.stderr_file = self._stdio_paths
        else:
            wasi.inherit_stdout()
            wasi.inherit_stderr()
        self.store.set_wasi(wasi)
        linker = wasmtime.Linker(engine())
        linker.define_wasi()
        for name, params in abi_table.host_functions(self.target):
            wasm_params = [t for kind, _ in params for t in _WASM_TYPES[kind]]
            linker.define_func("env", name, wasmtime.FuncType(wasm_params, [I32]),
                               self._import(name, params))
        self.instance = linker.instantiate(self.store, self.module)
        # Exports are looked up by name through the linker: Instance.exports()
        # wraps every export in Python, 67 ms for a module with 1700 of them.
        linker.define_instance(self.store, "plugin", self.instance)
        export = lambda name: linker.get(self.store, "plugin", name)  # noqa: E731
        names = export_names(self.module)
        self.memory = export("memory")
        self._malloc = export("malloc" if "malloc" in names else "proxy_on_memory_allocate")
        self._callbacks = {name: export(name) for name, _, _ in abi_table.callbacks(self.target)}
        self._context = self.store._context()
        export("_initialize")(self.store)

    def read_stdio(self):
        """(stdout, stderr) text the module wrote through WASI so far."""
        if self._stdio_paths is None:
            return "", ""
        texts = []
        for path in self._stdio_paths:
            with open(path, "rb") as f:
                texts.append(f.read().decode("utf-8", "replace"))
        return tuple(texts)

    def call(self, callback, *args):
        result = self._callbacks[callback](self.store, *args)
        return None if result is None else result & U32_MASK

    def close(self):
        """Frees the VM (its store and linear memory) now."""
        self._callbacks = {}
        self.memory = self._malloc = None
        if self.store is not None:
            self.store.close()
            self.store = None
        for path in self._stdio_paths or ():
            try:
                os.unlink(path)
            except OSError:
                pass

    # --- memory ------------------------------------------------------------------

    def _base(self):
        """(address, size) of linear memory now (it moves when it grows)."""
        mem = self.memory._memory
        base = ffi.wasmtime_memory_data(self._context, ctypes.byref(mem))
        return ctypes.addressof(base.contents), ffi.wasmtime_memory_data_size(
            self._context, ctypes.byref(mem))

    def read(self, ptr, size):
        if not size:
            return b""
        address, length = self._base()
        if ptr + size > length:
            raise IndexError(f"plugin passed bytes [{ptr}, {ptr + size}) outside memory")
        return ctypes.string_at(address + ptr, size)

    def write(self, ptr, data):
        address, length = self._base()
        if ptr + len(data) > length:
            raise IndexError(f"write [{ptr}, {ptr + len(data)}) outside memory")
        ctypes.memmove(address + ptr, data, len(data))

    def allocate(self, data):
        """Copies bytes into memory from the module's malloc; returns the pointer."""
        ptr = self._malloc(self.store, len(data)) & U32_MASK
        if ptr == 0:
            return 0
        self.write(ptr, data)
        return ptr

    # --- host function imports ---------------------------------------------------

    def _import(self, name, params):
        # Weak references only: wasmtime keeps host functions in a global table
        # until their store dies, so a strong reference to this plugin (or its
        # emulator) would keep the store, and its memory, alive for ever.
        plugin_ref, emulator_ref = weakref.ref(self), weakref.ref(self.emulator)
        kinds = [kind for kind, _ in params]
        has_outs = any(k.startswith("out") for k in kinds)
        pack32, pack64 = struct.Struct("<I").pack, struct.Struct("<Q").pack

        def host_function(*raw):
            plugin, emulator = plugin_ref(), emulator_ref()
            if plugin is None or emulator is None:
                return abi_table.INTERNAL_FAILURE
            args, outs, i = [], [], 0
            for kind in kinds:
                if kind == "in":
                    args.append(plugin.read(raw[i] & U32_MASK, raw[i + 1] & U32_MASK))
                    i += 2
                elif kind == "out":
                    outs.append((kind, raw[i] & U32_MASK, raw[i + 1] & U32_MASK))
                    i += 2
                elif kind in ("out_u32", "out_u64"):
                    outs.append((kind, raw[i] & U32_MASK, 0))
                    i += 1
                elif kind == "u32":
                    args.append(raw[i] & U32_MASK)
                    i += 1
                elif kind == "u64":
                    args.append(raw[i] & U64_MASK)
                    i += 1
                else:  # i32, i64: signed as wasmtime gives them
                    args.append(raw[i])
                    i += 1
            result = getattr(emulator, name)(*args)
            if not has_outs:
                return result
            status = result[0]
            if status != abi_table.OK:
                return status
            write = plugin.write
            for (kind, ptr, size_ptr), value in zip(outs, result[1:]):
                if kind == "out":
                    data = bytes(value)
                    address = plugin.allocate(data) if data else 0
                    if data and not address:
                        return abi_table.INVALID_MEMORY_ACCESS
                    write(ptr, pack32(address))
                    write(size_ptr, pack32(len(data)))
                elif kind == "out_u32":
                    write(ptr, pack32(value & U32_MASK))
                else:
                    write(ptr, pack64(value & U64_MASK))
            return status

        host_function.__name__ = name
        return host_function
