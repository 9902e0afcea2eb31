"""Where every host callback enters Python, and the exception boundary.

The shim calls the proxy_on_* functions here by their ABI names (abi_table's
CALLBACKS). They own the context table and route callout answers. No exception
leaves this module: it is logged with its traceback, and the stream continues
on the service's own load balancing (a paused request is resumed).
"""

import gc

from . import abi, callouts, hostcalls, stdio
from .context import (CONTINUE, PAUSE, STOP_ALL_AND_BUFFER, STOP_ALL_AND_WATERMARK,
                      HttpContext, RootContext)

_root_factory = None
_roots = {}   # context id -> RootContext
_https = {}   # context id -> HttpContext
_failed = set()  # HTTP context ids whose plugin code raised: passed through from then on
_PAUSING = (PAUSE, STOP_ALL_AND_BUFFER, STOP_ALL_AND_WATERMARK)


def set_root_context(factory):
    """Registers the plugin: `factory(context_id)` returns its RootContext.
    Call once, at import of the plugin's entry module."""
    global _root_factory
    _root_factory = factory


# Callbacks the host may answer with abi_table.RESULT_WITHOUT_PYTHON when the plugin
# leaves these context methods at the SDK's default (which returns exactly that).
_DEFAULTED = {"proxy_on_request_body": "on_request_body",
              "proxy_on_response_headers": "on_response_headers",
              "proxy_on_response_body": "on_response_body",
              "proxy_on_response_trailers": "on_response_trailers",
              "proxy_on_done": "on_done", "proxy_on_log": "on_log"}


def handler(name):
    """The function to call for callback `name`, or None when the registered plugin
    leaves it at the SDK's default, or lists it in its stream class's `on_demand`,
    so the host answers it without entering Python (a streamed answer's chunks
    then cost no Python call each). Call after the entry module registered the
    plugin."""
    method = _DEFAULTED.get(name)
    if method is not None and (not _overridden(method) or method in _on_demand()):
        return None
    return globals()[name]


_body_answers = {}  # root factory -> whether the host answers request body chunks


def _body_left_to_host():
    """Whether the host answers request body chunks without entering Python
    (Continue) unless asked: then a stream paused in its headers asks, since
    its body must stay paused (or is what it waits for)."""
    if _root_factory not in _body_answers:
        _body_answers.clear()
        _body_answers[_root_factory] = handler("proxy_on_request_body") is None
    return _body_answers[_root_factory]


def enable(method):
    """From now on the host enters Python for this stream method (one of the
    stream class's `on_demand`), in this VM. Any callback, e.g. on_configure
    once a configuration needs it."""
    abi.enable_callback(f"proxy_{method}")


def _on_demand():
    root = _root_factory
    stream = getattr(root, "http_context", None) if isinstance(root, type) else None
    return getattr(stream, "on_demand", ()) if stream else ()


def _overridden(method):
    """Whether the registered plugin's contexts may run their own `method`."""
    root = _root_factory
    if not isinstance(root, type) or root.new_http_context is not RootContext.new_http_context:
        return True  # contexts made by code: cannot tell
    pairs = [(root, RootContext)] + ([(root.http_context, HttpContext)]
                                     if root.http_context else [])
    return any(getattr(cls, method) is not getattr(base, method)
               for cls, base in pairs if hasattr(base, method))


def describe_exception(exc):
    """A traceback as text, without the traceback module (no source files here)."""
    lines = []
    while exc is not None:
        chunk = ["Traceback (most recent call last):"]
        tb = exc.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            chunk.append(f'  File "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name}')
            tb = tb.tb_next
        chunk.append(f"{type(exc).__name__}: {exc}")
        lines[:0] = chunk + ([""] if lines else [])
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return "\n".join(lines)


def _report(where, exc, scope="this stream"):
    try:
        hostcalls.log(hostcalls.ERROR, f"plugin error in {where}; continuing without the "
                                       f"plugin for {scope}\n{describe_exception(exc)}")
    except BaseException:  # the log call itself failed: nothing else is left to try
        pass


# --- root context callbacks ------------------------------------------------------

def proxy_on_context_create(context_id, parent_context_id):
    try:
        if parent_context_id == 0:
            if _root_factory is not None:
                _roots[context_id] = _root_factory(context_id)
            return
        root = _roots.get(parent_context_id)
        if root is None or parent_context_id in _failed:
            return
        http = root.new_http_context(context_id)
        if http is not None:
            _https[context_id] = http
    except BaseException as exc:
        _failed.add(context_id)
        _report("context creation", exc)


def proxy_on_vm_start(root_context_id, vm_config_size):
    root = _roots.get(root_context_id)
    if root is None:
        return 1
    try:
        config = hostcalls.get_buffer(hostcalls.VM_CONFIGURATION, 0, vm_config_size)
        return 1 if root.on_vm_start(config) else 0
    except BaseException as exc:
        _report("on_vm_start", exc)
        return 0


def proxy_on_configure(root_context_id, plugin_config_size):
    root = _roots.get(root_context_id)
    if root is None:
        return 1
    try:
        config = hostcalls.get_buffer(hostcalls.PLUGIN_CONFIGURATION, 0, plugin_config_size)
        ok = root.on_configure(config)
        _failed.discard(root_context_id)
        # What configure built lives as long as the VM: keep the collector off it.
        gc.collect()
        gc.freeze()
        return 1 if ok else 0
    except BaseException as exc:
        # A bug, not a bad configuration: keep Envoy up, pass every stream through.
        _failed.add(root_context_id)
        _report("on_configure", exc, "every stream of this configuration")
        return 1


def _root_call(root_context_id, method, *args):
    root = _roots.get(root_context_id)
    if root is None:
        return
    try:
        getattr(root, method)(*args)
    except BaseException as exc:
        _report(method, exc, "this event")


def proxy_on_tick(root_context_id):
    if callouts.HTTP or callouts.REDIS:
        try:
            _expire_callouts()
        except BaseException as exc:
            _report("expiring callouts", exc, "this tick")
    _root_call(root_context_id, "on_tick")


def proxy_on_queue_ready(root_context_id, queue_id):
    _root_call(root_context_id, "on_queue_ready", queue_id)


def proxy_on_foreign_function(root_context_id, function_id, data_size):
    _root_call(root_context_id, "on_foreign_function", function_id, data_size)


# --- stream callbacks -------------------------------------------------------------

def _stream_call(context_id, method, *args):
    """Runs a stream callback; on an exception, fail open for the rest of the stream."""
    http = _https.get(context_id)
    if http is None or context_id in _failed:
        return CONTINUE
    try:
        action = getattr(http, method)(*args)
        if method.startswith("on_request"):
            http.request_paused = action in _PAUSING
            if http.request_paused and method == "on_request_headers" and _body_left_to_host():
                http.want_from_now("on_request_body")  # it stays paused, or waits for it
        return action
    except BaseException as exc:
        _failed.add(context_id)
        http.request_paused = False
        _report(method, exc)
        return CONTINUE


def proxy_on_request_headers(context_id, num_headers, end_of_stream):
    return _stream_call(context_id, "on_request_headers", num_headers, end_of_stream)


def proxy_on_request_body(context_id, body_size, end_of_stream):
    return _stream_call(context_id, "on_request_body", body_size, end_of_stream)


def proxy_on_request_trailers(context_id, num_trailers):
    return _stream_call(context_id, "on_request_trailers", num_trailers)


def proxy_on_response_headers(context_id, num_headers, end_of_stream):
    return _stream_call(context_id, "on_response_headers", num_headers, end_of_stream)


def proxy_on_response_body(context_id, body_size, end_of_stream):
    return _stream_call(context_id, "on_response_body", body_size, end_of_stream)


def proxy_on_response_trailers(context_id, num_trailers):
    return _stream_call(context_id, "on_response_trailers", num_trailers)


# --- callout answers ----------------------------------------------------------------

def _answer(pending, token, what, *args):
    callout = pending.take(token)
    if callout is None:
        return  # its context is gone, or the token is not ours
    caller = callout.context.context_id
    if caller in _https and caller in _failed:
        return  # a failed stream's own callouts: it was passed through already
    _run_for(callout.stream, caller, what, callout.callback, *args)


def _run_for(stream, effective_id, what, fn, *args):
    """Runs fn(*args) with `effective_id` effective. On an exception, the stream
    waiting on it (if any) fails open: resumed once, passed through from then on."""
    try:
        hostcalls.set_effective_context(effective_id)
        fn(*args)
    except BaseException as exc:
        _report(what, exc, "this stream" if stream is not None else "this event")
        if stream is not None:
            _fail_stream(stream)


def _fail_stream(http):
    _failed.add(http.context_id)
    try:
        hostcalls.set_effective_context(http.context_id)
        http.resume_request()
    except BaseException as exc:
        _report("resuming the request", exc)


def _expire_callouts():
    """Runs the timeout of every callout whose deadline passed; a stream waiting
    on one without a timeout handler is resumed (its answer was lost)."""
    now_ms = hostcalls.now_ns() // 1_000_000
    for callout in callouts.REDIS.overdue(now_ms) + callouts.HTTP.overdue(now_ms):
        stream = callout.stream
        if callout.on_timeout is not None:
            effective = stream if stream is not None else callout.context
            _run_for(stream, effective.context_id, "callout timeout", callout.on_timeout)
        elif stream is not None and stream.request_paused:
            hostcalls.log(hostcalls.WARN, "no answer to a callout in time; the stream goes "
                                          "on without the plugin")
            _fail_stream(stream)


def run_isolated(what, fn, *args):
    """Runs fn(*args); an exception is logged with its traceback and goes no
    further (the caller goes on with its next step). Any callback."""
    try:
        return fn(*args)
    except Exception as exc:
        _report(what, exc, "this step")
        return None


def proxy_on_http_call_response(context_id, token, num_headers, body_size, num_trailers):
    _answer(callouts.HTTP, token, "http call response", num_headers, body_size, num_trailers)


def proxy_on_redis_call_response(context_id, token, status, response_size):
    try:
        reply = hostcalls.get_buffer(hostcalls.REDIS_CALL_RESPONSE, 0, response_size)
    except BaseException as exc:
        _report("reading a redis reply", exc)
        reply = b""
    _answer(callouts.REDIS, token, "redis call response", status, reply)


# --- end of a context: always delivered, even to failed streams -----------------

def _context(context_id):
    return _https.get(context_id) or _roots.get(context_id)


def proxy_on_done(context_id):
    context = _context(context_id)
    if context is None:
        return 1
    try:
        return 1 if context.on_done() else 0
    except BaseException as exc:
        _report("on_done", exc)
        return 1


def proxy_on_log(context_id):
    context = _context(context_id)
    if context is None:
        return
    try:
        context.on_log()
    except BaseException as exc:
        _report("on_log", exc)


def proxy_on_delete(context_id):
    context = _https.pop(context_id, None) or _roots.pop(context_id, None)
    _failed.discard(context_id)
    if context is None:
        return
    if callouts.HTTP or callouts.REDIS:
        callouts.HTTP.drop_context(context_id)
        callouts.REDIS.drop_context(context_id)
    try:
        context.on_delete()
    except BaseException as exc:
        _report("on_delete", exc)


if abi.IN_VM:
    stdio.route_to_log()
