"""Prometheus text exposition format 0.0.4: a pure, forgiving reader.

    parse(text, wanted=None) -> {metric name: [(labels dict, value), ...]}

Comments (# HELP, # TYPE, anything after '#') and blank lines are skipped;
label values may hold escaped quotes, backslashes and newlines; an optional
timestamp after the value is accepted and dropped; values may be NaN, +Inf,
-Inf. A malformed line is skipped, never raised about. Samples keep the order
of the text.

With `wanted` (a set of metric names) only those are parsed, and the rest of
the text is never split into lines: each wanted name is looked up at line
starts with str.find (C speed), so the cost grows with the number of wanted
names and their samples, not with the ~50 KB a vLLM replica exposes. This runs
in wasm, where every Python-level step counts. Pure: no host calls.
"""

_BLANKS = " \t"


def parse(text, wanted=None):
    """Samples of `text` (str, or bytes decoded as UTF-8) by metric name; only
    names in `wanted` when given. Never raises for bad input."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", "replace")
    elif not isinstance(text, str):
        return {}
    if wanted is None:
        return _parse_all(text)
    return _parse_wanted(text, wanted)


def _parse_all(text):
    found = {}
    for line in text.split("\n"):
        if not line or line[0] == "#":
            continue
        try:
            sample = _sample(line, None)
        except Exception:  # a case the checks missed: still just a bad line
            continue
        if sample is not None:
            name, labels, value = sample
            samples = found.get(name)
            if samples is None:
                found[name] = [(labels, value)]
            else:
                samples.append((labels, value))
    return found


def _parse_wanted(text, wanted):
    found = {}
    find = text.find
    for name in wanted:
        if not name or not isinstance(name, str):
            continue
        samples = []
        needle = "\n" + name
        size = len(name)
        # A line starts at 0 or after "\n"; `start` is where the name begins.
        start = 0 if text.startswith(name) else -1
        if start < 0:
            hit = find(needle)
            start = hit + 1 if hit >= 0 else -1
        while start >= 0:
            end = find("\n", start + size)
            line = text[start:] if end < 0 else text[start:end]
            try:
                sample = _sample(line, size)
            except Exception:  # a case the checks missed: still just a bad line
                sample = None
            if sample is not None:
                samples.append((sample[1], sample[2]))
            if end < 0:
                break
            hit = find(needle, end)
            start = hit + 1 if hit >= 0 else -1
        if samples:
            found[name] = samples
    return found


def _sample(line, name_size):
    """(name, labels, value) of one sample line, or None when it is malformed.
    `name_size`: the line is known to start with a wanted name this long
    (checked here to end there); None: find the name's end."""
    if line[-1:] == "\r":
        line = line[:-1]
    if name_size is None:
        end = len(line)
        for stop in ("{", " ", "\t"):
            at = line.find(stop, 0, end)
            if at >= 0:
                end = at
        name = line[:end]
        if end == len(line) or not _valid_name(name):
            return None
    else:
        end = name_size
        if len(line) <= end or line[end] not in "{ \t":
            return None  # a longer name that starts with the wanted one
        name = line[:end]
    if line[end] == "{":
        parsed = _labels(line, end + 1)
        if parsed is None:
            return None
        labels, end = parsed
    else:
        labels = {}
    value = _value(line[end:])
    if value is None:
        return None
    return name, labels, value


def _valid_name(name):
    # [a-zA-Z_:][a-zA-Z0-9_:]* without a per-character Python loop.
    return (name != "" and name.isascii() and not name[0].isdigit()
            and name.replace(":", "_").isidentifier())


def _labels(line, i):
    """({name: value}, index after '}') for the label set starting at `i`
    (just after '{'), or None when it is malformed."""
    labels = {}
    n = len(line)
    while True:
        while i < n and line[i] in " \t,":
            i += 1
        if i >= n:
            return None
        if line[i] == "}":
            return labels, i + 1
        eq = line.find("=", i)
        if eq < 0:
            return None
        name = line[i:eq].strip(_BLANKS)
        if not _valid_name(name) or ":" in name:
            return None
        q = eq + 1
        while q < n and line[q] in _BLANKS:
            q += 1
        if q >= n or line[q] != '"':
            return None
        start = q + 1
        close = line.find('"', start)
        while close > 0 and line[close - 1] == "\\" and _escaped(line, close, start):
            close = line.find('"', close + 1)
        if close < 0:
            return None
        value = line[start:close]
        if "\\" in value:
            value = _unescape(value)
        labels[name] = value
        i = close + 1
        if i < n and line[i] not in ",} \t":
            return None  # e.g. a="x"b="y"


def _escaped(line, quote, start):
    """True when the quote at `quote` follows an odd run of backslashes."""
    count = 0
    i = quote - 1
    while i >= start and line[i] == "\\":
        count += 1
        i -= 1
    return count % 2 == 1


def _unescape(value):
    out = []
    i = 0
    n = len(value)
    while i < n:
        at = value.find("\\", i)
        if at < 0 or at == n - 1:
            out.append(value[i:])
            break
        out.append(value[i:at])
        nxt = value[at + 1]
        out.append("\n" if nxt == "n" else nxt if nxt in '\\"' else "\\" + nxt)
        i = at + 2
    return "".join(out)


def _value(rest):
    """The sample value from what follows the name / label set: "value" or
    "value timestamp" (an OpenMetrics exemplar after " # " is dropped)."""
    hash_at = rest.find("#")
    if hash_at >= 0:
        rest = rest[:hash_at]
    tokens = rest.split()
    if not tokens or len(tokens) > 2:
        return None
    try:
        value = float(tokens[0])
        if len(tokens) == 2:
            float(tokens[1])  # the timestamp must at least be a number
    except ValueError:
        return None
    if "_" in tokens[0]:
        return None  # Python's float() takes "1_000"; Prometheus does not
    return value
