"""What the load balancer needs to know about an OpenAI-style LLM request.

Pure: bytes of a request body in, an LLMRequest out. Handles chat completions
(`messages`, string content or content-part arrays, optional `tools`) and
completions (`prompt` as a string, a list of strings, or token ids).
"""

import json
from dataclasses import dataclass

try:  # in the VM: the common chat body read in C without building it (host_shim/fast_chat.c)
    from _ailb_fast import chat_prompt
except ImportError:  # natively: always the Python parser below
    chat_prompt = None


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """What routing needs from an LLM request body."""

    model: str
    # The prompt as the replica's KV cache sees it: earlier turns first, so a
    # conversation's next request extends the previous one's prompt.
    prompt: bytes
    # vLLM isolates caches by `cache_salt`; requests with different salts never share.
    cache_salt: str = ""

    @property
    def cache_namespace(self):
        """The hash seed: prompts only match within one model/adapter and salt.
        (JSON can carry lone surrogates, "\\ud800": kept, never raised about.)"""
        return f"{self.model}\0{self.cache_salt}".encode("utf-8", "surrogatepass")


class NotAnLLMRequest(ValueError):
    """The body is not JSON, or carries neither messages nor prompt."""


def parse(body):
    """LLMRequest for a request body; raises NotAnLLMRequest with the reason."""
    fast = chat_prompt(body) if chat_prompt is not None else None
    if fast is not None:  # the C reader answers only where it agrees with parse_json
        model, salt, prompt = fast
        return LLMRequest(model, prompt, salt)
    return parse_json(body)


def parse_json(body):
    """parse, by decoding the whole JSON document: the reference."""
    try:
        doc = json.loads(body)
    except (ValueError, LookupError) as exc:
        # LookupError: a BOM or UTF-16/32 body in wasm, which embeds no codec for them
        raise NotAnLLMRequest(f"body is not JSON ({exc.__class__.__name__})") from None
    except RecursionError:
        raise NotAnLLMRequest("body is nested too deeply") from None
    if not isinstance(doc, dict):
        raise NotAnLLMRequest("body is not a JSON object")
    model = doc.get("model")
    model = model if isinstance(model, str) else ""
    salt = doc.get("cache_salt")
    salt = salt if isinstance(salt, str) else ""
    if isinstance(doc.get("messages"), list):
        prompt = _chat_prompt(doc["messages"], doc.get("tools"))
    elif "prompt" in doc:
        prompt = _completion_prompt(doc["prompt"])
    else:
        raise NotAnLLMRequest("body has neither messages nor prompt")
    return LLMRequest(model, prompt.encode("utf-8", "replace"), salt)


def _chat_prompt(messages, tools):
    parts = []
    if tools:
        # vLLM renders tool definitions ahead of the conversation.
        parts.append("<|tools|>" + json.dumps(tools, sort_keys=True, separators=(",", ":")))
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        parts.append(f"<|{role if isinstance(role, str) else ''}|>"
                     f"{_content(message.get('content'))}")
    return "\n".join(parts)


def _content(content):
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_content_part(part) for part in content)
    return ""


def _content_part(part):
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        return ""
    if isinstance(part.get("text"), str):
        return part["text"]
    kind = part.get("type")
    media = part.get(kind) if isinstance(kind, str) else None
    url = media.get("url") if isinstance(media, dict) else None
    # An image or audio part: its reference stands in for its tokens.
    return f"<|{kind}:{url}|>" if isinstance(url, str) else ""


def _completion_prompt(prompt):
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, str):
            return first  # a batch: route by its first prompt
        if isinstance(first, int):
            return " ".join(str(t) for t in prompt if isinstance(t, int))
        if isinstance(first, list):
            return " ".join(str(t) for t in first if isinstance(t, int))
    return ""
