"""print() inside the VM: whole lines of sys.stdout / sys.stderr go to proxy_log,
so they carry the plugin's name in Envoy's log like every other plugin line."""

import sys

from . import hostcalls


class LogStream:
    """A text stream that logs each complete line at one level."""

    def __init__(self, level):
        self._level = level
        self._partial = ""

    def write(self, text):
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            hostcalls.log(self._level, line)
        return len(text)

    def flush(self):
        if self._partial:
            hostcalls.log(self._level, self._partial)
            self._partial = ""


def route_to_log():
    """Replaces sys.stdout and sys.stderr. Only inside the VM."""
    sys.stdout = LogStream(hostcalls.INFO)
    sys.stderr = LogStream(hostcalls.ERROR)
