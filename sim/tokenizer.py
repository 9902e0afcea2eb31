"""The simulator's deterministic tokenizer: about one token per 4 characters.

1. Tokens are cut the way GPT-2-style byte-level BPE pre-tokenizes, with each
   piece cut into chunks of at most 4 characters: an optional leading space
   with 1-4 letters (" word" is one token, " wonderful" is " wond", "erfu",
   "l"), or with 1-4 digits, or with 1-4 other symbols; 1-4 whitespace
   characters (leaving the space before a word to that word); 1-4 underscores.
   One regular expression does it, and the tokens concatenate back to the text.
2. A token's id is the CRC-32 of its UTF-8 bytes modulo VOCAB_SIZE (so the same
   text always gives the same ids, in every process).

English prose comes out at about 4 characters per token (real BPE tokenizers
of 7B models: 3.5 to 4.5), and equal text prefixes give equal token prefixes,
which is what prefix caching needs. Generated text is made of words that
tokenize back to exactly the tokens generated (`GENERATED_WORDS`), so a chat
history that quotes the assistant's earlier answers hits its cached blocks.
"""

import re
import zlib

VOCAB_SIZE = 32000
CHUNK = 4

BOS = "<s>"

# Each is one token (a space and at most 4 letters), so generated text
# re-tokenizes to the same tokens.
GENERATED_WORDS = tuple(
    " " + w for w in (
        "the of and to in is was for on are as with his be at by had not but "
        "from or have an they one you all her she there new two may any way use man "
        "day get has him how now old see who did its let put say too yes set end "
        "why ask men run own few off big out low far sun sea air dog cat car red "
        "map top key net web box job law war art arm leg eye ear tea ice"
    ).split())


# The same cut in one pass: each match is a token.
_TOKENS = re.compile(r" ?[^\W\d_]{1,4}| ?\d{1,4}| ?[^\s\w]{1,4}|\s{1,4}(?!\S)|\s{1,4}|_{1,4}",
                     re.UNICODE)


def token_strings(text):
    return _TOKENS.findall(text)


def token_id(s):
    return zlib.crc32(s.encode("utf-8", "surrogatepass")) % VOCAB_SIZE


_IDS = {}


def encode(text, add_bos=False):
    """Token ids; a leading "<s>" (the chat template's BOS) is the one token 1,
    and add_bos puts one there (vLLM's completions prompt; chat: the template)."""
    bos = text.startswith(BOS)
    if bos:
        text = text[len(BOS):]
    strings = _TOKENS.findall(text)
    ids = _IDS
    try:
        out = [ids[s] for s in strings]
    except KeyError:
        if len(ids) > 1_000_000:  # bounded memory
            ids.clear()
        for s in strings:
            if s not in ids:
                ids[s] = token_id(s)
        out = [ids[s] for s in strings]
    if bos or add_bos:
        out.insert(0, 1)
    return out


def count(text):
    return len(token_strings(text))


GENERATED_IDS = tuple(token_id(w) for w in GENERATED_WORDS)


def generated_token(request_seed, index):
    """The index-th generated token (text, id) of a request: deterministic."""
    k = (request_seed * 1_000_003 + index * 7919) % len(GENERATED_WORDS)
    return GENERATED_WORDS[k], GENERATED_IDS[k]


def render_chat(messages, add_generation_prompt=True):
    """The chat template (the same one vllm_replicas/build_model.py gives the tiny model):
    <s><|role|>\\ncontent\\n per message, then <|assistant|>\\n."""
    parts = [BOS]
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(f"<|{m.get('role', 'user')}|>\n{content or ''}\n")
    if add_generation_prompt:
        parts.append("<|assistant|>\n")
    return "".join(parts)
