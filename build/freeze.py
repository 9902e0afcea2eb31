"""Embeds Python modules into the .wasm as frozen bytecode.

There is no filesystem inside Envoy, so the plugin and every stdlib module it
imports are compiled here and written as C arrays into CPython's
PyImport_FrozenModules table. The module set is the import closure of the entry
module, found by reading import statements (every import counts, including
those inside functions and try blocks; a missing optional one is skipped).
"""

import ast
import importlib.util
import marshal
import os
import sys

# The bytecode format must be the wasm CPython's: 3.11 (magic 3495 for all 3.11.x).
PYTHON_VERSION = (3, 11)
BYTECODE_MAGIC = (3495).to_bytes(2, "little") + b"\r\n"

# CPython 3.11 keeps these deep-frozen inside libpython itself.
DEEP_FROZEN = {
    "_frozen_importlib", "_frozen_importlib_external", "zipimport", "abc", "codecs",
    "io", "_collections_abc", "_sitebuiltins", "genericpath", "ntpath", "posixpath",
    "os", "os.path", "site", "stat", "importlib.util", "importlib.machinery", "runpy",
}

# Never embedded even when some import names them: they need a filesystem,
# processes or a terminal, none of which exist in a proxy-wasm VM.
EXCLUDED = {
    "subprocess", "tempfile", "shutil", "glob", "fnmatch", "doctest", "unittest", "pdb",
    "pydoc", "tkinter", "turtle", "idlelib", "lib2to3", "multiprocessing", "concurrent",
    "asyncio", "email", "http", "urllib", "xml", "ssl", "socket", "selectors", "logging",
    "argparse", "gettext", "locale", "zipfile", "tarfile", "bz2", "lzma", "gzip", "zlib",
    "pickle", "_pickle", "_compat_pickle", "ctypes", "sqlite3", "curses", "readline",
    "getpass", "platform", "sysconfig", "_sysconfigdata", "pathlib",
    "importlib.metadata", "importlib.resources",
    "_strptime", "datetime", "calendar", "decimal", "_pydecimal", "fractions", "statistics",
    "uuid", "_aix_support", "_bootsubprocess", "__main__", "_osx_support", "nturl2path",
    "_winapi", "winreg", "nt", "msvcrt", "_posixsubprocess", "threading",
}


def check_python():
    """Fails unless this Python writes the bytecode the wasm CPython reads."""
    if (sys.version_info[:2] != PYTHON_VERSION
            or importlib.util.MAGIC_NUMBER != BYTECODE_MAGIC):
        raise SystemExit(
            f"build: bytecode must be compiled by Python {PYTHON_VERSION[0]}.{PYTHON_VERSION[1]} "
            f"(the wasm CPython's version); this is {sys.version.split()[0]}")


def _imports(tree, package):
    """Names a module may import, absolute, with `from x import y` as x and x.y."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1] if node.level > 1 else parts
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    # Each dotted name also imports its parents.
    for name in list(found):
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return {name for name in found if name}


def _locate(name, search_path):
    """(source path, is_package) for a pure-Python module, or None."""
    rel = name.replace(".", os.sep)
    for root in search_path:
        pkg = os.path.join(root, rel, "__init__.py")
        if os.path.isfile(pkg):
            return pkg, True
        mod = os.path.join(root, rel + ".py")
        if os.path.isfile(mod):
            return mod, False
    return None


def _excluded(name):
    return any(name == e or name.startswith(e + ".") for e in EXCLUDED)


def collect(entry_modules, search_path, builtins):
    """Import closure: {module name: (source path, is_package, source root)}."""
    found, queue = {}, list(entry_modules)
    while queue:
        name = queue.pop()
        if (name in found or name in builtins or name in DEEP_FROZEN or _excluded(name)):
            continue
        located = _locate(name, search_path)
        if located is None:
            continue  # optional or platform-specific import; at run time it raises ImportError
        path, is_package = located
        found[name] = (path, is_package)
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
        package = name if is_package else name.rpartition(".")[0]
        queue.extend(_imports(tree, package))
        if "." in name:
            queue.append(name.rpartition(".")[0])  # importing a submodule imports its package
    missing = [m for m in entry_modules if m not in found]
    if missing:
        raise SystemExit(f"build: entry modules not found: {missing}")
    return found


def compile_module(name, path, display_root, optimize):
    """Marshalled code object; filenames in tracebacks are relative paths."""
    with open(path, "rb") as f:
        source = f.read()
    display = os.path.relpath(path, display_root)
    code = compile(source, display, "exec", dont_inherit=True, optimize=optimize)
    return marshal.dumps(code)


def frozen_c(modules, search_path, stdlib):
    """C source of the frozen table for `modules` (from collect()). Without
    asserts; the standard library (under `stdlib`) also without docstrings, the
    plugin's kept: a dataclass without one has dataclasses build its __doc__
    with inspect.signature, which would import inspect, ast, dis and tokenize
    at start (lazy_stdlib.py)."""
    lines = ["/* Generated by build/freeze.py: do not edit. */", "#include <Python.h>", ""]
    rows = []
    for index, name in enumerate(sorted(modules)):
        path, is_package = modules[name]
        root = next(r for r in search_path if path.startswith(r + os.sep))
        data = compile_module(name, path, root, 2 if root == stdlib else 1)
        lines.append(f"static const unsigned char m{index}[{len(data)}] = \"{_c_bytes(data)}\";")
        rows.append(f'    {{"{name}", m{index}, {len(data)}, {int(is_package)}, NULL}},')
    lines.append("const struct _frozen shim_frozen_modules[] = {")
    lines += rows
    lines += ["    {NULL, NULL, 0, 0, NULL},", "};", ""]
    return "\n".join(lines)


def _c_bytes(data):
    return "".join(f"\\x{b:02x}" for b in data)


def find_stdlib(wasi_python):
    stdlib = os.path.join(wasi_python, "lib", "python3.11")
    if not os.path.isfile(os.path.join(stdlib, "json", "__init__.py")):
        raise SystemExit(f"build: no Python stdlib at {stdlib}")
    return stdlib
