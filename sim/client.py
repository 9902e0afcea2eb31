"""A small blocking client for vLLM-compatible replicas (standard library only).

Used by the tests, `sim.calibrate` and benchmarks; works against real vLLM too.
"""

import http.client
import json
import random
import re
import time

WORDS = ("the a of to and in is it you that he was for on are with as his they be at one "
         "have this from or had by word but what some we can out other were all there when "
         "up use your how said an each she which do their time if will way about many then "
         "them write would like so these her long make thing see him two has look more day "
         "could go come did number sound no most people my over know water than call first "
         "who may down side been now find any new work part take get place made live where "
         "system user assistant request reply model answer question document context").split()


def words(n, seed):
    rnd = random.Random(seed)
    return " ".join(rnd.choice(WORDS) for _ in range(n))


def split(endpoint):
    host, port = endpoint.rsplit(":", 1)
    return host, int(port)


def request(endpoint, method, path, body=None, timeout=60, headers=None):
    """(status, headers dict (lower-case), body bytes)."""
    host, port = split(endpoint)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        h = {"content-type": "application/json"} if data is not None else {}
        h.update(headers or {})
        conn.request(method, path, body=data, headers=h)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def post_json(endpoint, path, body, timeout=60):
    status, headers, data = request(endpoint, "POST", path, body, timeout)
    return status, headers, json.loads(data) if data else None


def models(endpoint):
    status, _, data = request(endpoint, "GET", "/v1/models")
    return [m["id"] for m in json.loads(data)["data"]]


def tokenize(endpoint, model, text):
    """Token count by the server's tokenizer (POST /tokenize), or None."""
    try:
        status, _, data = request(endpoint, "POST", "/tokenize", {"model": model, "prompt": text})
    except OSError:
        return None
    return json.loads(data).get("count") if status == 200 else None


def prompt_of(endpoint, model, tokens, seed):
    """About `tokens` tokens of text (by the server's tokenizer when it has /tokenize)."""
    n_words = tokens
    text = words(n_words, seed)
    for _ in range(3):  # bounded
        count = tokenize(endpoint, model, text)
        if not count or abs(count - tokens) <= max(2, tokens // 50):
            return text
        n_words = max(1, int(n_words * tokens / count))
        text = words(n_words, seed)
    return text


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text -> list of (name, labels dict, value)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            labels = dict(_LABEL.findall(m.group(3) or ""))
            samples.append((m.group(1), labels, float(m.group(4))))
    return samples


def metrics(endpoint):
    status, _, data = request(endpoint, "GET", "/metrics")
    return parse_metrics(data.decode())


def metric_value(samples, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for n, sample_labels, v in samples
               if n == name and all(sample_labels.get(k) == str(x) for k, x in labels.items()))


def chat_stream(endpoint, model, messages, max_tokens=8, timeout=300, extra=None,
                path="/v1/chat/completions"):
    """Streams one completion. Returns a dict: ttft_s (to the first chunk with
    a choice), itl_s (gaps between later chunks), total_s, usage, replica,
    text, finish_reason, status, headers (lower-cased names)."""
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": max_tokens, "temperature": 0}
    if path.endswith("chat/completions"):
        body["messages"] = messages
    else:
        body["prompt"] = messages
    body.update(extra or {})
    host, port = split(endpoint)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    result = {"ttft_s": None, "itl_s": [], "usage": None, "text": "", "finish_reason": None}
    try:
        start = time.perf_counter()
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={"content-type": "application/json"})
        response = conn.getresponse()
        result["status"] = response.status
        result["headers"] = {k.lower(): v for k, v in response.getheaders()}
        result["replica"] = result["headers"].get("x-replica")
        if response.status != 200:
            result["error"] = response.read()[:500].decode(errors="replace")
            return result
        pieces = []
        last = None
        for _ in range(1_000_000):  # bounded
            line = response.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            chunk = json.loads(payload)
            choices = chunk.get("choices") or []
            if choices:
                # The first chunk comes with the first token (vLLM sends the
                # role chunk then); a token may decode to no text, so time chunks.
                now = time.perf_counter()
                if result["ttft_s"] is None:
                    result["ttft_s"] = now - start
                if (choices[0].get("delta") or {}).get("role") is None:  # a token's chunk
                    if last is not None:
                        result["itl_s"].append(now - last)
                    last = now
            for choice in choices:
                text = (choice.get("delta") or {}).get("content") or choice.get("text")
                if text:
                    pieces.append(text)
                if choice.get("finish_reason"):
                    result["finish_reason"] = choice["finish_reason"]
            if chunk.get("usage"):
                result["usage"] = chunk["usage"]
        result["total_s"] = time.perf_counter() - start
        result["text"] = "".join(pieces)
        return result
    finally:
        conn.close()
