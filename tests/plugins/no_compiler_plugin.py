"""A test plugin for the VM without a compiler: GET / answers JSON of what
works (a dataclass and a namedtuple defined at import, whose generated code
the build compiled; a private __slots__ name, mangled) and what raises
(compiling, exec-ing or eval-ing source the build did not see)."""

import collections
import dataclasses
import json

from proxywasm import CONTINUE, HttpContext, RootContext, set_root_context


@dataclasses.dataclass(frozen=True, slots=True)
class Point:
    """A point."""
    x: int
    y: int = 2


Pair = collections.namedtuple("Pair", "left right")


class Ham:
    __slots__ = ("__spam",)


def raised(action):
    try:
        action()
    except SystemError as exc:
        return str(exc)
    return None


def report():
    point = dataclasses.replace(Point(1), y=5)
    return {
        "dataclass": [repr(point), point == Point(1, 5), hash(point) == hash(Point(1, 5))],
        "namedtuple": list(Pair(3, right=4)._asdict().items()),
        "mangled": [name for name in dir(Ham) if "spam" in name],
        "compile": raised(lambda: compile("1 + 1", "<test>", "eval")),
        "exec": raised(lambda: exec("x = 1", {})),
        "eval": raised(lambda: eval("2 * 3")),
    }


class NoCompilerStream(HttpContext):
    def on_request_headers(self, num_headers, end_of_stream):
        self.send_local_response(200, json.dumps(report()), [], "answered")
        return CONTINUE


class NoCompilerRoot(RootContext):
    http_context = NoCompilerStream


set_root_context(NoCompilerRoot)
