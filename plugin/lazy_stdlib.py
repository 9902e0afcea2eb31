"""Standard modules that imports pull in but the plugin does not use, run on
first use instead of at start.

`dataclasses` imports `inspect` for one fallback (the __doc__ of a class
without a docstring), and `inspect` imports `ast`, `dis` and `tokenize`, which
compile regular expressions and build hundreds of classes: in every VM, at
every start, for nothing. Imported through DeferredFinder, such a module is
an empty module object until an attribute of it is first read (a traceback
that reads source lines, a dataclass without a docstring); then its code runs
and it works as usual.

The shim imports this module first, before the plugin and its SDK (a
top-level module, so that no package __init__ runs before it; shim.c);
natively, in tests,
it is not installed and nothing changes.
"""

import sys
import types

DEFERRED = frozenset({"inspect", "ast", "dis", "tokenize"})


class _Deferred(types.ModuleType):
    """A module whose code has not run yet: the first missing attribute runs it."""

    def __getattr__(self, name):
        loader = self.__spec__.loader = self.__loader__ = self.__spec__.loader.loader
        self.__class__ = types.ModuleType
        loader.exec_module(self)
        return getattr(self, name)


class _DeferredLoader:
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return None  # the usual module object

    def exec_module(self, module):
        module.__class__ = _Deferred


class DeferredFinder:
    """A meta-path finder that hands DEFERRED modules to the next finder and
    defers their loader."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name not in DEFERRED:
            return None
        for finder in sys.meta_path:
            if finder is DeferredFinder:
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                spec.loader = _DeferredLoader(spec.loader)
                return spec
        return None


if DeferredFinder not in sys.meta_path:
    sys.meta_path.insert(0, DeferredFinder)
