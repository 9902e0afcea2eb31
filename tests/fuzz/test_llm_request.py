"""llm_request.parse: any request body gives an LLMRequest or NotAnLLMRequest."""

import json

import pytest
from hypothesis import given, strategies as st

from ai_load_balancer import llm_request
from tests.fuzz.common import JSON, TEXT, fuzz, nested


def check(body):
    """parse() returns an LLMRequest whose fields are usable, or raises
    NotAnLLMRequest; nothing else escapes."""
    try:
        request = llm_request.parse(body)
    except llm_request.NotAnLLMRequest:
        return None
    assert isinstance(request.model, str) and isinstance(request.cache_salt, str)
    assert isinstance(request.prompt, bytes)
    assert isinstance(request.cache_namespace, bytes)  # the prefix hash seed
    return request


@fuzz(1500)
@given(st.binary(max_size=200))
def test_any_bytes(body):
    check(body)


CONTENT = st.one_of(JSON, st.lists(st.one_of(
    JSON, st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_audio"])},
                                optional={"text": JSON, "image_url": JSON, "input_audio": JSON,
                                          "url": JSON}))))
MESSAGE = st.one_of(JSON, st.fixed_dictionaries({}, optional={"role": JSON, "content": CONTENT}))
CHAT = st.fixed_dictionaries({"messages": st.one_of(st.lists(MESSAGE, max_size=4), JSON)},
                             optional={"model": JSON, "tools": JSON, "cache_salt": JSON,
                                       "prompt": JSON, "stream": JSON})
COMPLETION = st.fixed_dictionaries({"prompt": st.one_of(
    JSON, st.lists(st.integers(min_value=-10**30, max_value=10**30)),
    st.lists(st.lists(st.one_of(st.integers(), JSON))))}, optional={"model": JSON})


@fuzz(800)
@given(st.one_of(CHAT, COMPLETION, JSON))
def test_near_valid_documents(doc):
    check(json.dumps(doc).encode())


@fuzz(400)
@given(st.one_of(CHAT, COMPLETION), st.data())
def test_cut_and_flipped_documents(doc, data):
    body = bytearray(json.dumps(doc).encode())
    cut = data.draw(st.integers(0, len(body)))
    if cut < len(body) and data.draw(st.booleans()):
        body[cut] = data.draw(st.integers(0, 255))  # one byte changed
    else:
        del body[cut:]  # or the body cut short
    check(bytes(body))


@fuzz(1000)
@given(TEXT, st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), TEXT),
                      min_size=1, max_size=5))
def test_chat_round_trips_model_and_text(model, turns):
    messages = [{"role": role, "content": text} for role, text in turns]
    request = check(json.dumps({"model": model, "messages": messages}).encode())
    assert request.model == model
    prompt = request.prompt
    for role, text in turns:  # every turn, in order
        at = prompt.find(f"<|{role}|>{text}".encode("utf-8", "replace"))
        assert at >= 0
        prompt = prompt[at:]


@fuzz(500)
@given(TEXT, st.one_of(TEXT.map(lambda t: [t]), st.lists(st.integers(0, 2**40), min_size=1)))
def test_completion_round_trips_prompt(model, prompt):
    request = check(json.dumps({"model": model, "prompt": prompt}).encode())
    text = prompt[0] if isinstance(prompt[0], str) else " ".join(map(str, prompt))
    assert request.model == model and request.prompt == text.encode("utf-8", "replace")


@pytest.mark.parametrize("where", ["tools", "content", "message", "prompt"])
def test_nesting_around_the_recursion_limit(where):
    for depth in range(800, 1100):  # where json.loads starts to refuse, wherever that is
        inner = nested(depth)
        body = {"tools": f'{{"messages":[],"tools":{inner}}}',
                "content": f'{{"messages":[{{"role":"user","content":{inner}}}]}}',
                "message": f'{{"messages":{inner}}}',
                "prompt": f'{{"prompt":{inner}}}'}[where]
        check(body.encode())
