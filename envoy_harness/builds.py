"""Plugin builds for the tests and benchmarks: build/make.py loaded once, each
module built once per process into a private folder."""

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
import threading

from .common import PRODUCTION_ENTRY, PRODUCTION_NAME, ROOT, TEST_PLUGINS_DIR, TMP_DIR


_builds = {}
_build_lock = threading.Lock()
_build_dir = None
_make = None


def _private_build_dir():
    """A build folder of this process only (removed at exit): a concurrent test run
    must not rewrite a module while this run's Envoy loads it."""
    global _build_dir
    if _build_dir is None:
        os.makedirs(TMP_DIR, exist_ok=True)
        _build_dir = tempfile.mkdtemp(prefix=f"build-{os.getpid()}-", dir=TMP_DIR)
        atexit.register(shutil.rmtree, _build_dir, True)
    return _build_dir


def load_make():
    """build/make.py as a module (it puts build/ and plugin/ on sys.path while
    importing; only plugin/ is left there, the package the tests import anyway)."""
    global _make
    if _make is None:
        saved = list(sys.path)
        spec = importlib.util.spec_from_file_location("ailb_build_make",
                                                      os.path.join(ROOT, "build", "make.py"))
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path[:] = saved
        module.freeze.check_python()
        _make = module
    return _make


def build_plugin(entry=PRODUCTION_ENTRY, name=PRODUCTION_NAME, target="envoy", extra_path=(),
                 opt="-O2", out_dir=None, work_dir=None):
    """Builds a plugin .wasm once per process (later calls return the same path),
    by default into a private folder removed when the process exits.
    $AILB_WASM, if set, is used as the production envoy module instead of building."""
    if entry == PRODUCTION_ENTRY and target == "envoy" and os.environ.get("AILB_WASM"):
        return os.environ["AILB_WASM"]
    key = (entry, name, target, tuple(extra_path), opt)
    with _build_lock:
        if key not in _builds:
            make = load_make()
            out_dir = out_dir or os.path.join(_private_build_dir(), "wasm")
            work_dir = work_dir or os.path.join(_private_build_dir(), "work")
            _builds[key] = make.build(target, entry, name, out_dir, work_dir, opt,
                                      [os.path.abspath(p) for p in extra_path])
        return _builds[key]


def build_test_plugin(module, name=None, target="envoy"):
    """A plugin from tests/plugins/<module>.py, e.g. build_test_plugin("faulty_plugin")."""
    return build_plugin(module, name or module.replace("_plugin", ""), target, [TEST_PLUGINS_DIR])
